//! Building the pages' HTML as strings. Every value that did not come from
//! this file goes through [`esc`] (text and attribute values alike), so a
//! job named `<script>` is text, never markup.
//!
//! Why strings and not a template crate: the pages are small and few, a
//! `format!` with [`esc`] keeps them next to the code that fills them, and
//! the build gains no procedural macro (the machines are shared and slow to
//! compile). The price is that escaping is a rule to follow, not a type:
//! the tests render hostile names and check they come out as text.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `text` with `& < > " '` escaped: safe as element text and as a quoted attribute value.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The escaped start of `text` that fits in `max` bytes (escaping can
/// make a character six), and whether that is the whole of it.
pub(super) fn esc_within(text: &str, max: usize) -> (String, bool) {
    let mut out = String::new();
    for c in text.chars() {
        let escaped = esc(c.encode_utf8(&mut [0u8; 4]));
        if out.len() + escaped.len() > max {
            return (out, false);
        }
        out.push_str(&escaped);
    }
    (out, true)
}

/// `text` percent-encoded for a path segment or a query value.
pub(super) fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub(super) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Who is looking, for the page frame.
pub(super) struct Frame<'a> {
    /// The page's title.
    pub title: &'a str,
    /// Which navigation entry is current (`overview`, `jobs`).
    pub nav: &'a str,
    /// The session's CSRF token (for the logout form and the actions).
    pub csrf: &'a str,
    /// Whether actions are hidden and refused.
    pub read_only: bool,
    /// `data-page` of the body: which script part runs.
    pub page: &'a str,
    /// The URL of the page's event stream, if it has one.
    pub events: Option<String>,
}

/// The whole document around `body`.
pub(super) fn page(frame: &Frame<'_>, body: &str) -> String {
    let nav = |key: &str, href: &str, label: &str| {
        let current = if frame.nav == key { " aria-current=\"page\"" } else { "" };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    };
    let events = frame.events.as_deref().map(|e| format!(" data-events=\"{}\"", esc(e))).unwrap_or_default();
    let mode =
        if frame.read_only { "<span class=\"badge ro\" title=\"actions are disabled\">read-only</span>" } else { "" };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <meta name=\"csrf-token\" content=\"{csrf}\">\
         <title>{title} · rsp</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head>\
         <body data-page=\"{page}\"{events}>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header class=\"top\"><a class=\"brand\" href=\"/\">rsp</a><nav aria-label=\"main\">{overview}{jobs}</nav>{mode}\
         <span class=\"live\" id=\"live\" role=\"status\" aria-live=\"polite\">…</span>\
         <form method=\"post\" action=\"/logout\" class=\"logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Log out</button></form></header>\
         <main id=\"main\" tabindex=\"-1\">{body}</main>\
         <dialog id=\"confirm\"><form method=\"dialog\"><p id=\"confirm-text\"></p>\
         <div class=\"buttons\"><button value=\"cancel\" type=\"submit\">Cancel</button>\
         <button value=\"ok\" type=\"submit\" class=\"danger\" id=\"confirm-ok\">Confirm</button></div></form></dialog>\
         </body></html>",
        csrf = esc(frame.csrf),
        title = esc(frame.title),
        page = esc(frame.page),
        overview = nav("overview", "/", "Overview"),
        jobs = nav("jobs", "/jobs", "Jobs"),
    )
}

/// A bare page without navigation (the login form, errors before login).
pub(super) fn bare(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>{} · rsp</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
         <body data-page=\"bare\"><main id=\"main\" class=\"narrow\">{body}</main></body></html>",
        esc(title)
    )
}

/// A state as a badge, coloured by class.
pub(super) fn state_badge(state: &str) -> String {
    format!("<span class=\"state s-{0}\" data-state>{0}</span>", esc(state))
}

/// A time as `YYYY-MM-DD HH:MM:SS` UTC (seconds since the epoch).
pub(super) fn time(at: Option<f64>) -> String {
    match at {
        Some(s) if s.is_finite() && s > 0.0 => {
            let t = UNIX_EPOCH + Duration::from_secs_f64(s);
            let text = humantime::format_rfc3339_seconds(t).to_string();
            format!("<time datetime=\"{text}\">{}</time>", text.replace('T', " ").trim_end_matches('Z'))
        }
        _ => "—".into(),
    }
}

/// Seconds since the epoch, now.
pub(super) fn now() -> f64 {
    crate::store::secs(SystemTime::now())
}

/// A duration in seconds, short: `850 ms`, `12.3 s`, `4 m 05 s`, `2 h 10 m`.
pub(super) fn duration(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) else { return "—".into() };
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} m {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{} h {:02} m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// A rate in items per second, short.
pub(super) fn rate(per_s: Option<f64>) -> String {
    match per_s.filter(|r| r.is_finite() && *r >= 0.0) {
        None => "—".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
    }
}

/// A progress cell: a `<progress>` and `done/total`.
pub(super) fn progress(done: u64, total: u64) -> String {
    format!(
        "<progress value=\"{done}\" max=\"{}\" aria-label=\"{done} of {total} items\"></progress> \
         <span class=\"count\" data-count>{done}/{total}</span>",
        total.max(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_turns_markup_into_text() {
        assert_eq!(esc("<script>\"'&"), "&lt;script&gt;&quot;&#39;&amp;");
        assert_eq!(url("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
    }

    #[test]
    fn escaping_within_a_budget_counts_the_escaped_bytes() {
        assert_eq!(esc_within("<<<", 8), ("&lt;&lt;".to_string(), false));
        assert_eq!(esc_within("<<", 8), ("&lt;&lt;".to_string(), true));
        assert_eq!(esc_within("ééé", 4), ("éé".to_string(), false));
        assert_eq!(esc_within("", 0), (String::new(), true));
    }

    #[test]
    fn cutting_keeps_whole_characters() {
        assert_eq!(cut("ééé", 2), "éé…");
        assert_eq!(cut("ab", 2), "ab");
    }

    #[test]
    fn durations_and_rates_are_short() {
        assert_eq!(duration(Some(0.25)), "250 ms");
        assert_eq!(duration(Some(65.0)), "1 m 05 s");
        assert_eq!(duration(Some(7800.0)), "2 h 10 m");
        assert_eq!(duration(None), "—");
        assert_eq!(rate(Some(1234.4)), "1234/s");
        assert_eq!(rate(Some(f64::NAN)), "—");
    }
}
