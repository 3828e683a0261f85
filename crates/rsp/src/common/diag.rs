//! Messages on stderr that never bring the program down.
//!
//! `eprintln!` panics when stderr is a pipe whose reader has gone (`rsp run
//! 2>&1 | head -1`), which turned a finished run into exit 101. Diagnostics
//! are a courtesy, never a reason to fail: these writes ignore errors, and
//! after the first one (the reader left) nothing more is attempted. A
//! closed stderr (`2>&-`) is already a silent sink in the standard library.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stderr failed: later messages are dropped unread.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stderr, quietly giving up if stderr is gone.
pub fn line(message: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut err = io::stderr().lock();
    if err.write_fmt(message).and_then(|()| err.write_all(b"\n")).is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `eprintln!` that cannot panic: see [`line`].
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::common::diag::line(format_args!($($arg)*))
    };
}

pub(crate) use diag;
