//! Keeping a database password out of sight: out of messages
//! ([`redact`]), and out of command lines, by taking it the way libpq
//! does when the URL has none: from `PGPASSWORD`, or from the password
//! file (`PGPASSFILE`, or `~/.pgpass`) — tokio-postgres reads neither.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

/// `spec` (a store URL, or any text that may hold one) with every
/// password replaced by `***`: the password of `scheme://user:password@…`
/// and the value of a `password=` option (of a URL's query or of a
/// `key=value` connection string).
pub fn redact(spec: &str) -> String {
    let mut out = String::with_capacity(spec.len());
    let mut rest = spec;
    // scheme://user:password@host — up to the last '@' before the next blank.
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let (word, after) = tail.split_at(end);
        match word.rfind('@').and_then(|at| word[..at].find(':').map(|colon| (colon, at))) {
            Some((colon, at)) => {
                out.push_str(&word[..=colon]);
                out.push_str("***");
                out.push_str(&word[at..]);
            }
            None => out.push_str(word),
        }
        rest = after;
    }
    out.push_str(rest);
    redact_options(&out)
}

/// Every `password=value` with its value hidden.
fn redact_options(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(at + "password=".len());
        out.push_str(head);
        let end = tail.find(|c: char| c == '&' || c.is_whitespace()).unwrap_or(tail.len());
        out.push_str("***");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Gives `config` a password if its URL had none: `PGPASSWORD`, else the
/// first matching line of the password file.
pub(super) fn fill_password(config: &mut Config) {
    if config.get_password().is_some() {
        return;
    }
    if let Some(password) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
        config.password(password.into_encoded_bytes());
        return;
    }
    let Some(path) = password_file() else { return };
    // As libpq: a file others may read is not trusted with passwords.
    let private = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 == 0);
    let Some(text) = private.then(|| std::fs::read_to_string(&path).ok()).flatten() else { return };
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        // A socket folder: libpq's password file calls it "localhost".
        Some(Host::Unix(_)) | None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let dbname = config.get_dbname().map_or_else(|| user.clone(), str::to_string);
    if let Some(password) = find_password(&text, [&host, &port, &dbname, &user]) {
        config.password(password);
    }
}

fn password_file() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("PGPASSFILE").filter(|f| !f.is_empty()) {
        return Some(file.into());
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|home| PathBuf::from(home).join(".pgpass"))
}

/// The password of the first line of a password file whose
/// `host:port:database:user` fields match `want` (`*` matches anything;
/// `\:` and `\\` are a field's own colon and backslash).
fn find_password(text: &str, want: [&str; 4]) -> Option<String> {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|line| {
        let fields = split_fields(line);
        let [host, port, db, user, password] = <[String; 5]>::try_from(fields).ok()?;
        let matches = [host, port, db, user].iter().zip(want).all(|(field, want)| field == "*" || field == want);
        matches.then_some(password)
    })
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().into_iter().for_each(|f| f.extend(chars.next())),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_wherever_a_url_or_option_carries_one() {
        let cases = [
            ("postgres://rsp:s3cret@db:5432/jobs", "postgres://rsp:***@db:5432/jobs"),
            ("postgres://rsp@db/jobs", "postgres://rsp@db/jobs"),
            ("postgres://db/jobs", "postgres://db/jobs"),
            ("postgres://rsp:p@ss:w@rd@db/jobs", "postgres://rsp:***@db/jobs"),
            ("postgress://u:s3cret@h/d is not a URL", "postgress://u:***@h/d is not a URL"),
            ("postgres://u@h/d?password=s3cret&x=1", "postgres://u@h/d?password=***&x=1"),
            ("host=h PassWord=s3cret user=u", "host=h PassWord=*** user=u"),
            ("a://x:1@y and b://z:2@w", "a://x:***@y and b://z:***@w"),
            ("no url here", "no url here"),
        ];
        for (spec, shown) in cases {
            assert_eq!(redact(spec), shown, "{spec}");
        }
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        let file = "# a comment\n\
                    other:5432:*:rsp:wrong\n\
                    db.example:5432:jobs:rsp:first\n\
                    *:*:*:rsp:any\\:colon\\\\\n\
                    short:line\n";
        assert_eq!(find_password(file, ["db.example", "5432", "jobs", "rsp"]).as_deref(), Some("first"));
        assert_eq!(find_password(file, ["elsewhere", "5433", "x", "rsp"]).as_deref(), Some("any:colon\\"));
        assert_eq!(find_password(file, ["elsewhere", "5433", "x", "bob"]), None);
    }
}
