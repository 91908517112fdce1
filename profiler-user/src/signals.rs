//! Signals while heapwatch traces a process: the handlers only note the
//! signal; the tracing loop acts on it (passes it on, or stops early).

use std::sync::atomic::{AtomicI32, Ordering};

/// A signal heapwatch received and has not yet acted on (0: none).
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(signal: libc::c_int) {
    PENDING_SIGNAL.store(signal, Ordering::Relaxed);
}

/// While a command runs under heapwatch, terminal signals reach the command
/// (it is in the same process group) and heapwatch waits for it to end;
/// SIGTERM and SIGHUP sent to heapwatch are noted, to be passed on (see
/// [`take_pending`]).
pub fn delegate_signals() {
    // SAFETY: installs async-signal-safe handlers (one atomic store) or SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        let handler = remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
    }
}

/// While heapwatch traces a process it did not start, SIGINT, SIGTERM and
/// SIGHUP end the tracing early (see [`stop_requested`]) instead of heapwatch.
pub fn stop_on_signals() {
    let handler = remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installs an async-signal-safe handler (one atomic store).
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
    }
}

/// True once a signal handled by [`stop_on_signals`] arrived.
pub fn stop_requested() -> bool {
    PENDING_SIGNAL.load(Ordering::Relaxed) != 0
}

/// The signal noted since the last call, if any.
pub fn take_pending() -> Option<i32> {
    match PENDING_SIGNAL.swap(0, Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}
