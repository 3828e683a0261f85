//! The output of external commands, line by line, as it arrives.
//!
//! `exec` keeps a command's stdout and stderr for its result, which the
//! script sees when the command ends. A host that wants to show the lines
//! while the command runs (GNU parallel's line-buffered output) gives the
//! session a [`LiveOutput`] handler, and the script names the command with
//! `exec`'s `live` option: each complete line of the command's output is
//! then handed to the handler the moment it is read, with that name. The
//! result still carries the whole output, under its cap.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// Bytes of one line a handler is given at most: a longer line is handed
/// over in pieces of this size ([`LineEnd::Split`]), so a command writing
/// one endless line holds no more than this.
pub const MAX_LIVE_LINE: usize = 64 << 10;

/// Which stream of a command a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a line handed to a [`LiveOutput`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// With a newline (not part of the text).
    Newline,
    /// It was [`MAX_LIVE_LINE`] bytes long; the rest of it follows.
    Split,
    /// The stream ended without a newline after it (or the command's kept
    /// output reached its cap there).
    End,
}

/// One line of a running command's output.
#[derive(Debug, Clone, Copy)]
pub struct LiveLine<'a> {
    /// What the script named the command (`exec`'s `live` option).
    pub name: &'a Value,
    /// Where the line came from.
    pub stream: LineStream,
    /// The line's bytes, without its newline; any bytes, not only UTF-8.
    pub text: &'a [u8],
    /// How it ended.
    pub end: LineEnd,
}

/// A session's handler of live output lines; see the module docs. It is
/// called on the thread of the runspace running the command, so it should
/// be quick (print the line, or send it on).
///
/// ```
/// # #[cfg(feature = "exec")] {
/// use runspace::{Capability, LiveOutput, Runspace, Script, SessionState};
/// use std::sync::{Arc, Mutex};
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let lines = seen.clone();
/// let live = LiveOutput::new(move |line| {
///     lines.lock().unwrap().push(format!("{} {}", line.name, String::from_utf8_lossy(line.text)))
/// });
/// let session = SessionState::new().allow(Capability::Exec).live_output(live);
/// let mut rs = Runspace::open(&session).unwrap();
/// let script = Script::new("return exec('printf', {'a\\nb\\n'}, {live = 'job1'}).stdout").unwrap();
/// let r = rs.invoke(&script, &[], &[]);
/// assert_eq!(r.result(), serde_json::json!("a\nb\n"));
/// assert_eq!(*seen.lock().unwrap(), ["\"job1\" a", "\"job1\" b"]);
/// # }
/// ```
///
/// Without the `exec` feature a session still takes one (an embedder's
/// code builds either way), but no command runs to call it.
#[derive(Clone)]
#[cfg_attr(not(feature = "exec"), allow(dead_code))]
pub struct LiveOutput(Arc<dyn Fn(&LiveLine<'_>) + Send + Sync>);

impl LiveOutput {
    /// A handler calling `f` with each line.
    pub fn new(f: impl Fn(&LiveLine<'_>) + Send + Sync + 'static) -> LiveOutput {
        LiveOutput(Arc::new(f))
    }

    #[cfg(feature = "exec")]
    pub(crate) fn send(&self, line: &LiveLine<'_>) {
        (self.0)(line)
    }
}

impl fmt::Debug for LiveOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveOutput(..)")
    }
}

/// Cuts a stream's bytes, read in chunks of any size, into lines.
#[cfg(feature = "exec")]
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// The start of a line whose end has not been read yet.
    pending: Vec<u8>,
}

#[cfg(feature = "exec")]
impl Lines {
    /// Hands every line `chunk` completes to `line`, keeping the rest.
    pub(crate) fn push(&mut self, mut chunk: &[u8], mut line: impl FnMut(&[u8], LineEnd)) {
        while !chunk.is_empty() {
            // A line of exactly the cap may still end with its newline.
            let room = MAX_LIVE_LINE - self.pending.len();
            match chunk.iter().take(room + 1).position(|&b| b == b'\n') {
                Some(at) => {
                    if self.pending.is_empty() {
                        line(&chunk[..at], LineEnd::Newline);
                    } else {
                        self.pending.extend_from_slice(&chunk[..at]);
                        line(&self.pending, LineEnd::Newline);
                        self.pending.clear();
                    }
                    chunk = &chunk[at + 1..];
                }
                None if chunk.len() <= room => {
                    self.pending.extend_from_slice(chunk);
                    return;
                }
                None => {
                    self.pending.extend_from_slice(&chunk[..room]);
                    line(&self.pending, LineEnd::Split);
                    self.pending.clear();
                    chunk = &chunk[room..];
                }
            }
        }
    }

    /// The stream ended: hands over a last line without a newline.
    pub(crate) fn finish(&mut self, mut line: impl FnMut(&[u8], LineEnd)) {
        if !self.pending.is_empty() {
            line(&self.pending, LineEnd::End);
            self.pending.clear();
        }
    }
}

#[cfg(all(test, feature = "exec"))]
mod tests {
    use super::*;

    fn cut(chunks: &[&[u8]]) -> Vec<(Vec<u8>, LineEnd)> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, |l, end| out.push((l.to_vec(), end)));
        }
        lines.finish(|l, end| out.push((l.to_vec(), end)));
        out
    }

    fn lengths(lines: Vec<(Vec<u8>, LineEnd)>) -> Vec<(usize, LineEnd)> {
        lines.into_iter().map(|(l, e)| (l.len(), e)).collect()
    }

    #[test]
    fn lines_are_whole_however_the_chunks_fall() {
        use LineEnd::*;
        let expected = vec![(b"ab".to_vec(), Newline), (b"".to_vec(), Newline), (b"cd".to_vec(), End)];
        assert_eq!(cut(&[b"ab\n\ncd"]), expected);
        assert_eq!(cut(&[b"a", b"b", b"\n", b"\nc", b"d"]), expected);
        assert_eq!(cut(&[b"ab\n", b"\n", b"cd"]), expected);
        assert_eq!(cut(&[b"x\n"]), vec![(b"x".to_vec(), Newline)]);
        assert!(cut(&[b"", b""]).is_empty());
        assert_eq!(cut(&[b"\xff\x00\n"]), vec![(b"\xff\x00".to_vec(), Newline)]);
    }

    #[test]
    fn a_line_past_the_cap_comes_in_pieces() {
        let long = vec![b'x'; 2 * MAX_LIVE_LINE + 10];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        for chunk_size in [1000, MAX_LIVE_LINE, 3 * MAX_LIVE_LINE] {
            let chunks: Vec<&[u8]> = input.chunks(chunk_size).collect();
            let lines = cut(&chunks);
            assert_eq!(lines.iter().take(3).flat_map(|(l, _)| l.clone()).collect::<Vec<_>>(), long);
            assert_eq!(
                lengths(lines),
                [
                    (MAX_LIVE_LINE, LineEnd::Split),
                    (MAX_LIVE_LINE, LineEnd::Split),
                    (10, LineEnd::Newline),
                    (4, LineEnd::Newline)
                ],
                "chunks of {chunk_size}"
            );
        }
        // A line of exactly the cap, then its newline: one whole line.
        let mut exact = vec![b'y'; MAX_LIVE_LINE];
        exact.push(b'\n');
        assert_eq!(lengths(cut(&[&exact])), [(MAX_LIVE_LINE, LineEnd::Newline)]);
        assert_eq!(lengths(cut(&[&exact[..MAX_LIVE_LINE], b"\n"])), [(MAX_LIVE_LINE, LineEnd::Newline)]);
    }
}
