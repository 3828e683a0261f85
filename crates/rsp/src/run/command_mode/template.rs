//! Command templates: a command line split into words the way a shell
//! would, with GNU parallel's replacement strings in it.
//!
//! `{}` the input, `{.}` without its extension, `{/}` its basename, `{//}`
//! its directory, `{/.}` the basename without extension, `{#}` the job's
//! sequence number (from 1), `{%}` its slot (a mark the runner replaces:
//! only the runspace running it knows the slot), `{N}` (and `{N.}`, `{N/}`, `{N//}`, `{N/.}`)
//! column N of the input. Like GNU parallel, a template without any
//! replacement string gets the input appended as its last arguments.

use std::fmt::Write as _;

/// What a replacement string does to an input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    /// `{}`: the value as it is.
    Whole,
    /// `{.}`: without the extension of its last path component.
    NoExt,
    /// `{/}`: the last path component.
    Base,
    /// `{//}`: the directory, as `dirname` says it.
    Dir,
    /// `{/.}`: the last path component without its extension.
    BaseNoExt,
}

/// One piece of a word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A column (from 1), or all columns.
    Arg {
        column: Option<usize>,
        edit: Edit,
    },
    /// `{#}`.
    Seq,
    /// `{%}`.
    Slot,
}

/// A parsed command template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The words, for running without a shell.
    words: Vec<Vec<Piece>>,
    /// The whole line, for `sh -c`.
    line: Vec<Piece>,
    /// Whether any replacement string occurs (else the input is appended).
    replaces: bool,
}

/// A template filled in for one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled {
    /// Program and arguments, run directly.
    Argv(Vec<String>),
    /// A line for `sh -c`, each input quoted.
    Shell(String),
}

impl Filled {
    /// The command as a shell would read it (for `--dry-run` and messages).
    pub fn display(&self) -> String {
        match self {
            Filled::Argv(words) => words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "),
            Filled::Shell(line) => line.clone(),
        }
    }
}

impl Template {
    /// Whether `{%}` occurs.
    pub fn uses_slot(&self) -> bool {
        self.line.contains(&Piece::Slot)
    }

    /// Parses `text`; an unclosed quote or an empty command is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let words: Vec<Vec<Piece>> = split_words(text)?.iter().map(|w| pieces(w)).collect();
        if words.is_empty() {
            return Err("the command is empty".to_string());
        }
        let line = pieces(text);
        let replaces = line.iter().any(|p| !matches!(p, Piece::Text(_)));
        Ok(Template { words, line, replaces })
    }

    /// The command for the input `columns`, the `seq`th job (from 1).
    /// `{%}` becomes `slot_mark`, for the runner to replace.
    pub fn fill(&self, columns: &[String], seq: u64, shell: bool, slot_mark: &str) -> Filled {
        if shell {
            let mut line = String::new();
            for piece in &self.line {
                match piece {
                    Piece::Text(t) => line.push_str(t),
                    Piece::Seq => {
                        let _ = write!(line, "{seq}");
                    }
                    Piece::Slot => line.push_str(slot_mark),
                    Piece::Arg { column, edit } => {
                        let values = select(columns, *column, *edit);
                        line.push_str(&values.iter().map(|v| shell_quote(v)).collect::<Vec<_>>().join(" "));
                    }
                }
            }
            if !self.replaces {
                for c in columns {
                    line.push(' ');
                    line.push_str(&shell_quote(c));
                }
            }
            return Filled::Shell(line);
        }
        let mut argv = Vec::with_capacity(self.words.len() + columns.len());
        for word in &self.words {
            // Several columns in one word split it, as GNU parallel's quoting of each
            // argument does: `x{}y` with `a`, `1` gives `xa` and `1y`.
            let mut text = String::new();
            for piece in word {
                match piece {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Seq => {
                        let _ = write!(text, "{seq}");
                    }
                    Piece::Slot => text.push_str(slot_mark),
                    Piece::Arg { column, edit } => {
                        for (i, value) in select(columns, *column, *edit).into_iter().enumerate() {
                            if i > 0 {
                                argv.push(std::mem::take(&mut text));
                            }
                            text.push_str(&value);
                        }
                    }
                }
            }
            argv.push(text);
        }
        if !self.replaces {
            argv.extend(columns.iter().cloned());
        }
        Filled::Argv(argv)
    }
}

/// The columns a replacement string picks, edited.
fn select(columns: &[String], column: Option<usize>, edit: Edit) -> Vec<String> {
    match column {
        None => columns.iter().map(|c| apply(edit, c)).collect(),
        // A column past the input's last is empty, as in GNU parallel.
        Some(n) => vec![columns.get(n - 1).map_or_else(String::new, |c| apply(edit, c))],
    }
}

fn apply(edit: Edit, value: &str) -> String {
    match edit {
        Edit::Whole => value.to_string(),
        Edit::NoExt => no_ext(value).to_string(),
        Edit::Base => base(value).to_string(),
        Edit::Dir => dirname(value),
        Edit::BaseNoExt => no_ext(base(value)).to_string(),
    }
}

/// Everything after the last `/` (GNU parallel's `s:.*/::`).
fn base(value: &str) -> &str {
    value.rsplit_once('/').map_or(value, |(_, b)| b)
}

/// Drops a final `.ext` that holds no `/` or `.` (GNU parallel's `s:\.[^/.]*$::`).
fn no_ext(value: &str) -> &str {
    match value.rfind('.') {
        Some(dot) if !value[dot + 1..].contains('/') => &value[..dot],
        _ => value,
    }
}

/// POSIX `dirname`: `a.txt` → `.`, `/x/y` → `/x`, `a/` → `.`, `/a` → `/`.
fn dirname(value: &str) -> String {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        return if value.starts_with('/') { "/" } else { "." }.to_string();
    }
    match trimmed.rfind('/') {
        None => ".".to_string(),
        Some(slash) => {
            let dir = trimmed[..slash].trim_end_matches('/');
            if dir.is_empty() { "/" } else { dir }.to_string()
        }
    }
}

/// Splits text into pieces at replacement strings; anything else that
/// looks like braces stays text.
fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let after = &rest[open..];
        match after.find('}').and_then(|close| replacement(&after[1..close]).map(|p| (p, close))) {
            Some((piece, close)) => {
                if !literal.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut literal)));
                }
                out.push(piece);
                rest = &after[close + 1..];
            }
            None => {
                literal.push('{');
                rest = &after[1..];
            }
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        out.push(Piece::Text(literal));
    }
    out
}

/// The replacement string between `{` and `}`, if `inner` is one.
fn replacement(inner: &str) -> Option<Piece> {
    if inner == "#" {
        return Some(Piece::Seq);
    }
    if inner == "%" {
        return Some(Piece::Slot);
    }
    let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
    let column = match &inner[..digits] {
        "" => None,
        n => Some(n.parse::<usize>().ok().filter(|&n| n > 0)?),
    };
    let edit = match &inner[digits..] {
        "" => Edit::Whole,
        "." => Edit::NoExt,
        "/" => Edit::Base,
        "//" => Edit::Dir,
        "/." => Edit::BaseNoExt,
        _ => return None,
    };
    Some(Piece::Arg { column, edit })
}

/// Splits a command line into words as `sh` would, without expanding
/// anything: blanks separate words, `'…'` is literal, `"…"` keeps its
/// text with `\"`, `\\`, `\$` and `` \` `` unescaped, `\x` outside quotes is `x`.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unclosed ' in the command".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unclosed \" in the command".to_string()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unclosed \" in the command".to_string()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => word.push(c),
                    None => word.push('\\'),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Quotes `value` for `sh` the way GNU parallel does: bare when it is
/// made of safe characters, else in single quotes (`'` as `'"'"'`).
pub fn shell_quote(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.+/".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', "'\"'\"'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(template: &str, columns: &[&str], seq: u64) -> Vec<String> {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        match Template::parse(template).unwrap().fill(&columns, seq, false, "") {
            Filled::Argv(words) => words,
            Filled::Shell(_) => unreachable!(),
        }
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words(r#"a  'b c' "d \"e\" \$f" g\ h ''"#).unwrap(), ["a", "b c", "d \"e\" $f", "g h", ""]);
        assert!(split_words("echo 'oops").is_err());
        assert!(split_words("echo \"oops").is_err());
        assert!(Template::parse("  ").is_err());
    }

    #[test]
    fn path_edits_match_gnu_parallel() {
        // Expected values are what GNU parallel 20221122 prints for {//} {/} {.} {/.}.
        let cases = [
            ("a.txt", [".", "a.txt", "a", "a"]),
            ("/x/b.c.txt", ["/x", "b.c.txt", "/x/b.c", "b.c"]),
            (".bashrc", [".", ".bashrc", "", ""]),
            ("a/", [".", "", "a/", ""]),
            ("a.", [".", "a.", "a", "a"]),
            ("a.b/c", ["a.b", "c", "a.b/c", "c"]),
            ("/a", ["/", "a", "/a", "a"]),
        ];
        for (input, want) in cases {
            assert_eq!(argv("{//} {/} {.} {/.}", &[input], 1), want, "{input}");
        }
    }

    #[test]
    fn columns_sequence_and_appending() {
        assert_eq!(argv("echo {2} {1} {#}", &["a", "b"], 7), ["echo", "b", "a", "7"]);
        assert_eq!(argv("echo {3}x", &["a"], 1), ["echo", "x"]);
        assert_eq!(argv("echo {1.} {2/}", &["a.b/c.d", "e/f.g"], 1), ["echo", "a.b/c", "f.g"]);
        assert_eq!(argv("gzip -k", &["a b.txt"], 1), ["gzip", "-k", "a b.txt"]);
        assert_eq!(argv("echo", &["a", "1"], 1), ["echo", "a", "1"]);
        assert_eq!(argv("echo {}", &["a", "1"], 1), ["echo", "a", "1"]);
        assert_eq!(argv("echo x{}y", &["a", "1"], 1), ["echo", "xa", "1y"]);
        // Braces that are not replacement strings stay as they are.
        assert_eq!(argv("echo {x} {0} {} {", &["v"], 1), ["echo", "{x}", "{0}", "v", "{"]);
        assert_eq!(argv("echo '{}'", &["$(x)"], 1), ["echo", "$(x)"]);
    }

    #[test]
    fn shell_lines_quote_every_input() {
        let t = Template::parse("echo {} | wc -c").unwrap();
        let hostile = "'; touch pwned; echo '$(touch pwned)";
        let Filled::Shell(line) = t.fill(&[hostile.to_string()], 1, true, "") else { panic!() };
        assert_eq!(line, format!("echo {} | wc -c", shell_quote(hostile)));
        let out =
            std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote(hostile))).output();
        assert_eq!(out.unwrap().stdout, hostile.as_bytes());
        let Filled::Shell(line) = Template::parse("echo").unwrap().fill(&["a b".into()], 1, true, "") else { panic!() };
        assert_eq!(line, "echo 'a b'");
        assert_eq!(shell_quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(shell_quote(""), "''");
        assert_eq!(Filled::Argv(vec!["echo".into(), "a b".into()]).display(), "echo 'a b'");
    }
}
