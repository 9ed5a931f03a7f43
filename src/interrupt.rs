//! What Ctrl-C (SIGINT), SIGTERM and SIGHUP do to greve.
//!
//! Inside [`stoppable`] work (a reply) the first signal asks
//! it to stop after the current token ([`cancel`]): the partial reply is
//! printed, and `ask` exits 130 while a chat takes the next message. A
//! second signal quits at once, except in a chat, where a signal only ever
//! stops a reply: quitting would lose the conversation.
//!
//! Anywhere else (waiting for the user's next message or a prompt on stdin,
//! downloading, which resumes where it stopped, loading, a benchmark) nothing would read
//! the request and nothing would be lost: a signal quits at once, exit 130,
//! with the terminal as greve found it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::exit::Failure;

static CANCEL: AtomicBool = AtomicBool::new(false);
static STOPPABLE: AtomicUsize = AtomicUsize::new(0);
static IN_CHAT: AtomicBool = AtomicBool::new(false);

/// Set by a signal inside [`stoppable`] work, for it to stop.
pub fn cancel() -> &'static AtomicBool {
    &CANCEL
}

/// Installs the handler; `chat`: a second signal does not quit.
pub fn install(chat: bool) {
    IN_CHAT.store(chat, Ordering::SeqCst);
    let handler = ctrlc::set_handler(|| {
        let working = STOPPABLE.load(Ordering::SeqCst) > 0;
        let again = CANCEL.swap(true, Ordering::SeqCst);
        if !working || again && !IN_CHAT.load(Ordering::SeqCst) {
            terminal::restore();
            std::process::exit(Failure::Interrupted.code().into());
        }
    });
    if let Err(e) = handler {
        crate::messages::warn(format!("Ctrl-C will not stop generation cleanly: {e}"));
    }
}

/// Runs `work`, which reads [`cancel`], so that a signal stops it rather
/// than quitting; a signal before it began does not count.
pub fn stoppable<T>(work: impl FnOnce() -> T) -> T {
    CANCEL.store(false, Ordering::SeqCst);
    STOPPABLE.fetch_add(1, Ordering::SeqCst);
    let result = work();
    STOPPABLE.fetch_sub(1, Ordering::SeqCst);
    result
}

/// The terminal's settings before a line editor changed them, put back
/// when a signal quits while the editor has it in raw mode.
pub mod terminal {
    use super::*;

    #[cfg(unix)]
    static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

    /// Remembers stdin's terminal settings (when it is a terminal).
    pub fn save() {
        #[cfg(unix)]
        {
            let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
            // SAFETY: tcgetattr fills `t` when it returns 0.
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, t.as_mut_ptr()) } == 0 {
                *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(unsafe { t.assume_init() });
            }
        }
    }

    pub(super) fn restore() {
        #[cfg(unix)]
        if let Some(t) = *SAVED.lock().unwrap_or_else(|e| e.into_inner()) {
            // SAFETY: `t` came from tcgetattr on the same descriptor.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}
