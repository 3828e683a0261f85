//! `--line-buffer`: each line of a command's output printed as it comes.
//!
//! The engine hands over each line the moment a command writes it (see
//! [`runspace::LiveOutput`]), on the thread of the runspace running the
//! command. A line is written whole, with one `write_all` while standard
//! output (or error) is locked, so the lines of commands running at once
//! never mix within a line, and they appear in the order they were read.
//! A line longer than [`runspace::MAX_LIVE_LINE`] comes in pieces, each
//! printed as a line of its own; a last line without a newline gets one.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use runspace::{LineStream, LiveOutput};

use crate::common::diag::diag;
use crate::run::output::bare;

/// The handler printing lines, each prefixed with its input and a TAB when
/// `tag`; `closed` is set when writing fails (the reader went away), for
/// the run to stop.
pub fn printer(tag: bool, closed: Arc<AtomicBool>) -> LiveOutput {
    LiveOutput::new(move |line| {
        if closed.load(Ordering::Relaxed) {
            return;
        }
        let mut text = Vec::with_capacity(line.text.len() + 32);
        if tag {
            text.extend_from_slice(bare(line.name).as_bytes());
            text.push(b'\t');
        }
        text.extend_from_slice(line.text);
        text.push(b'\n');
        let written = match line.stream {
            LineStream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&text).and_then(|()| out.flush())
            }
            LineStream::Stderr => io::stderr().lock().write_all(&text),
        };
        if let Err(e) = written {
            if !closed.swap(true, Ordering::Relaxed) && e.kind() != io::ErrorKind::BrokenPipe {
                diag!("rsp: error writing output: {e}");
            }
        }
    })
}
