//! The daemon's API on a Unix socket (/run/heapwatch/api.sock,
//! root:heapwatch 0660): one JSON request line, one JSON reply line, then the
//! connection closes. Requests are size- and time-limited; the caller's uid
//! comes from SO_PEERCRED; a bad request gets an error reply.

pub mod protocol;

use std::{
    ffi::CString,
    io,
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, PermissionsExt},
    },
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    time::timeout,
};

use crate::connections::{MAX_CONNECTIONS, Slot, Slots, after_failed_accept};

pub use protocol::{
    Health, MAX_REQUEST_BYTES, ProcessListEntry, Reply, Request, RequestError, UntracedEntry,
    authorize, parse_request,
};

/// Where the daemon listens by default.
pub const DEFAULT_SOCKET: &str = "/run/heapwatch/api.sock";
/// The group whose members may connect.
pub const SOCKET_GROUP: &str = "heapwatch";
/// The longest socket path the kernel takes (`sun_path` holds 108 bytes with
/// the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers a request from the caller with this uid.
pub type Handler = Arc<dyn Fn(Request, u32) -> Reply + Send + Sync>;

/// What is at the socket's path before the daemon binds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Vacancy {
    /// Nothing.
    Empty,
    /// A socket nothing answers at, left by a daemon that was killed: replaced.
    StaleSocket,
}

/// Whether the daemon may bind `path`. Anything there but a stale socket is
/// an error: heapwatch deletes no file but its own socket, and takes no
/// socket from a daemon that answers at it.
pub fn check_vacant(path: &Path) -> io::Result<Vacancy> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a socket's path is at most {MAX_SOCKET_PATH} bytes: name a shorter one with --socket PATH"
            ),
        ));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vacancy::Empty),
        result => result?,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it exists and is not a socket (heapwatch replaces only a socket nothing answers at): name another path with --socket PATH",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a heapwatch daemon already answers there: stop it, or name another path with --socket PATH",
        ));
    }
    Ok(Vacancy::StaleSocket)
}

/// Binds the socket: a stale one is replaced, anything else refused (see
/// [`check_vacant`]); mode 0660, group `heapwatch` when that group exists.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if check_vacant(path)? == Vacancy::StaleSocket {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group_id(SOCKET_GROUP) {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated path; -1 keeps the owner.
        if unsafe { libc::chown(c_path.as_ptr(), u32::MAX, gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer into static storage or null; read at once.
    let group = unsafe { libc::getgrnam(c_name.as_ptr()) };
    // SAFETY: non-null pointers from getgrnam point to a valid group entry.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

/// Serves connections until the task is dropped, at most
/// [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: UnixListener, handler: Handler) {
    let slots = Slots::new(MAX_CONNECTIONS);
    let mut failing = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                after_failed_accept("api", &err, &mut failing).await;
                continue;
            }
        };
        failing = 0;
        // Every connection busy answering: this one is closed.
        let Some(slot) = slots.take() else {
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            tokio::select! {
                () = slot.closed() => tracing::debug!("API connection closed to make room"),
                result = answer(stream, handler, &slot) => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "API connection failed");
                    }
                }
            }
        });
    }
}

async fn answer(stream: UnixStream, handler: Handler, slot: &Slot) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (mut read, mut write) = stream.into_split();
    let line = timeout(REQUEST_TIMEOUT, read_line(&mut read)).await;
    slot.answering();
    let reply = match line {
        Err(_) => Reply::error("request timed out"),
        Ok(Err(err)) => Reply::error(err),
        Ok(Ok(line)) => match parse_request(&line) {
            Err(err) => Reply::error(err),
            Ok(request) => tokio::task::spawn_blocking(move || handler(request, uid))
                .await
                .unwrap_or_else(|e| Reply::error(format!("internal error: {e}"))),
        },
    };
    let mut text = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    text.push(b'\n');
    write.write_all(&text).await?;
    write.shutdown().await?;
    // Read what the client still sends (an oversized request), so that
    // closing does not reset the connection before it reads the reply.
    let mut sink = tokio::io::sink();
    let mut rest = (&mut read).take(16 * MAX_REQUEST_BYTES as u64);
    let _ = timeout(
        Duration::from_secs(1),
        tokio::io::copy(&mut rest, &mut sink),
    )
    .await;
    Ok(())
}

/// One line, at most [`MAX_REQUEST_BYTES`]; a request without a newline ends at EOF.
async fn read_line(read: &mut tokio::net::unix::OwnedReadHalf) -> Result<Vec<u8>, RequestError> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| RequestError::Malformed(e.to_string()))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge);
    }
    Ok(line)
}

/// Sends one request to the daemon's socket and returns its reply.
pub fn call(path: &Path, request: &Request) -> io::Result<Reply> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener as StdUnixListener, path::PathBuf};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("heapwatch-api-{}-{name}", std::process::id()))
    }

    #[test]
    fn only_nothing_or_a_stale_socket_is_vacant() {
        assert_eq!(
            check_vacant(&scratch("none")).expect("vacant"),
            Vacancy::Empty
        );
        let too_long = std::env::temp_dir().join("x".repeat(MAX_SOCKET_PATH));
        let err = check_vacant(&too_long).expect_err("too long");
        assert!(err.to_string().contains("at most 107 bytes"), "{err}");

        let file = scratch("file");
        std::fs::write(&file, "keep me").expect("write");
        let err = check_vacant(&file).expect_err("a file is not vacant");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");
        std::fs::remove_file(&file).expect("remove");

        let socket = scratch("live.sock");
        let listener = StdUnixListener::bind(&socket).expect("bind");
        let err = check_vacant(&socket).expect_err("a daemon answers");
        assert!(err.to_string().contains("already answers"), "{err}");
        drop(listener);
        assert_eq!(check_vacant(&socket).expect("stale"), Vacancy::StaleSocket);
        std::fs::remove_file(&socket).expect("remove");
    }
}
