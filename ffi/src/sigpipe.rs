//! SIGPIPE stays away from the host process.
//!
//! A Rust program ignores SIGPIPE; a C program linking libconnect usually does not, and a write
//! to a socket whose peer has gone would then kill it (a denied client writing after the
//! server's alert, an HTTP agent closing a pooled connection). So: the agent's own threads
//! block SIGPIPE, connection I/O on the caller's thread uses `send(MSG_NOSIGNAL)`, and calls
//! that run network futures on the caller's thread hold a [`SigpipeGuard`], which blocks SIGPIPE
//! for the call and discards one that the call raised (the technique libcurl uses).

use std::mem::MaybeUninit;

fn sigpipe_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the set it is given; sigaddset then adds a valid signal.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGPIPE);
        set.assume_init()
    }
}

fn sigpipe_pending() -> bool {
    let mut pending = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set on success; it is read only then.
    unsafe {
        libc::sigpending(pending.as_mut_ptr()) == 0
            && libc::sigismember(pending.as_ptr(), libc::SIGPIPE) == 1
    }
}

/// Blocks SIGPIPE for the rest of this thread's life (the agent's runtime threads).
pub(crate) fn block_on_this_thread() {
    let set = sigpipe_set();
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// While alive, SIGPIPE is blocked on this thread; on drop, a SIGPIPE raised meanwhile is
/// discarded and the caller's signal mask is restored.
#[derive(Debug)]
pub(crate) struct SigpipeGuard {
    old: libc::sigset_t,
    was_pending: bool,
    active: bool,
}

impl SigpipeGuard {
    pub(crate) fn new() -> SigpipeGuard {
        let set = sigpipe_set();
        let was_pending = sigpipe_pending();
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: valid sets; `old` is filled on success and read only then.
        let active = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) == 0 };
        SigpipeGuard {
            // SAFETY: on failure the mask is never restored from it (`active` is false), and an
            // all-zero sigset_t is a valid (empty) value to hold meanwhile.
            old: if active {
                unsafe { old.assume_init() }
            } else {
                // SAFETY: sigset_t is plain data; all zeros is a valid empty set.
                unsafe { std::mem::zeroed() }
            },
            was_pending,
            active,
        }
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if !self.was_pending && sigpipe_pending() {
            let set = sigpipe_set();
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid set and timeout; consumes the pending SIGPIPE this call raised.
            unsafe {
                libc::sigtimedwait(&set, std::ptr::null_mut(), &zero);
            }
        }
        // SAFETY: `old` is the mask saved by `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// A socket writer that never raises SIGPIPE: `write` is `send(MSG_NOSIGNAL)` in std, and the
/// default `write_vectored` goes through it (std's own uses `writev`, which would signal).
#[derive(Debug)]
pub(crate) struct NoSigpipe<'a>(pub(crate) &'a std::net::TcpStream);

impl std::io::Write for NoSigpipe<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::Write::write(&mut self.0, buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
