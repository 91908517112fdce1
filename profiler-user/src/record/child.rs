//! The recorded command's process: forked and held before exec until the
//! probes are attached, then released, forwarded signals, and reaped.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use crate::{report::CommandStatus, signals};

/// A child process forked and waiting to exec the command.
pub struct HeldChild {
    pid: libc::pid_t,
    go: Option<OwnedFd>,
    exec_error: OwnedFd,
    reaped: bool,
}

impl HeldChild {
    /// Forks a child that execs `program` with `argv` once released.
    pub fn spawn(program: &Path, argv: &[String]) -> io::Result<Self> {
        let program = CString::new(program.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let args = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        arg_ptrs.push(std::ptr::null());
        let (go_read, go_write) = pipe()?;
        let (error_read, error_write) = pipe()?;
        // SAFETY: heapwatch is single-threaded here; the child only makes
        // async-signal-safe calls (read, execv, write, _exit) before exec.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the child; pointers stay valid until exec or exit.
            unsafe { exec_when_released(&go_read, &error_write, &program, &arg_ptrs) }
        }
        drop((go_read, error_write));
        Ok(Self {
            pid,
            go: Some(go_write),
            exec_error: error_read,
            reaped: false,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Lets the child exec; fails with the exec's error if it could not.
    pub fn release(&mut self) -> io::Result<()> {
        if let Some(go) = self.go.take() {
            write_all(&go, &[1])?;
        }
        let mut errno = [0u8; 4];
        let n = read_full(&self.exec_error, &mut errno)?;
        if n == errno.len() {
            return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
        }
        Ok(())
    }

    /// The command's status once it has ended, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<CommandStatus>> {
        if self.reaped {
            return Ok(None);
        }
        let mut status = 0;
        // SAFETY: waits for our own child; status is a valid out pointer.
        let ret = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        if ret == 0 {
            return Ok(None);
        }
        if libc::WIFEXITED(status) {
            self.reaped = true;
            return Ok(Some(CommandStatus::Exited(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            self.reaped = true;
            return Ok(Some(CommandStatus::Killed(libc::WTERMSIG(status))));
        }
        Ok(None)
    }

    /// Passes on a SIGTERM or SIGHUP that heapwatch received.
    pub fn forward_signals(&self) {
        if let Some(signal) = signals::take_pending() {
            // SAFETY: signals our own unreaped child.
            unsafe { libc::kill(self.pid, signal) };
        }
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: kills and reaps our own child, which is not yet reaped.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// # Safety
/// Must run in a freshly forked child only; never returns.
unsafe fn exec_when_released(
    go: &OwnedFd,
    error: &OwnedFd,
    program: &CString,
    argv: &[*const libc::c_char],
) -> ! {
    let mut byte = 0u8;
    // SAFETY: valid fd and one-byte buffer; execv's arguments are NUL-terminated
    // strings and a null-terminated array; _exit never returns.
    unsafe {
        if libc::read(go.as_raw_fd(), (&raw mut byte).cast(), 1) == 1 {
            libc::execv(program.as_ptr(), argv.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(error.as_raw_fd(), (&raw const errno).cast(), 4);
        }
        libc::_exit(127)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: valid fd and buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: valid fd; the pointer and length stay inside `buf`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[filled..].as_mut_ptr().cast(),
                buf.len() - filled,
            )
        };
        match n {
            0 => break,
            n if n < 0 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            n => filled += n as usize,
        }
    }
    Ok(filled)
}
