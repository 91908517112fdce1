//! Symbolization on a thread of its own: callers send stacks and wait for
//! their symbols, while one [`Symbols`] cache serves every request.

use std::{
    io,
    sync::{Arc, mpsc},
    thread,
};

use super::{Stack, SymFrame, Symbols};

/// One request: stacks in, symbolized frames out.
struct Job {
    stacks: Vec<Arc<Stack>>,
    reply: mpsc::SyncSender<Vec<Vec<SymFrame>>>,
}

/// A handle to the symbolizer thread; the thread ends when the handle is dropped.
pub struct SymbolService {
    jobs: mpsc::Sender<Job>,
}

impl SymbolService {
    /// Starts the thread with a cache of at most `capacity` frames.
    pub fn spawn(capacity: usize) -> io::Result<Self> {
        let (jobs, incoming) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("symbolizer".to_owned())
            .spawn(move || {
                let mut symbols = Symbols::new(capacity);
                for job in incoming {
                    let frames = job.stacks.iter().map(|s| symbols.symbolize(s)).collect();
                    let _ = job.reply.send(frames);
                }
            })?;
        Ok(Self { jobs })
    }

    /// The symbols of each stack, in order; blocks until the thread answers.
    pub fn symbolize(&self, stacks: Vec<Arc<Stack>>) -> io::Result<Vec<Vec<SymFrame>>> {
        let gone = || io::Error::other("the symbolizer thread has stopped");
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs.send(Job { stacks, reply }).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::{Frame, StackStatus};

    #[test]
    fn answers_requests_from_several_threads_in_order() {
        let service = Arc::new(SymbolService::spawn(16).expect("thread"));
        let stack = |address| {
            Arc::new(Stack {
                frames: vec![Frame {
                    address,
                    location: None,
                }],
                status: StackStatus::Full,
            })
        };
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let service = Arc::clone(&service);
                thread::spawn(move || {
                    let stacks = (0..10).map(|i| stack(t * 100 + i)).collect();
                    let frames = service.symbolize(stacks).expect("answer");
                    let addresses: Vec<u64> = frames.iter().map(|f| f[0].address).collect();
                    assert_eq!(addresses, (0..10).map(|i| t * 100 + i).collect::<Vec<_>>());
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker");
        }
    }
}
