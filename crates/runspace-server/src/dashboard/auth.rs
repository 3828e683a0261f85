//! Who may look: the server's token is exchanged once, at the login form,
//! for a session cookie (`HttpOnly`, `SameSite=Strict`: scripts cannot
//! read it and other sites cannot send it), because a browser's
//! `EventSource` cannot send an `Authorization` header and a token must
//! never travel in a URL. Every state-changing request also carries the
//! session's CSRF token (a form field or the `X-CSRF-Token` header), and
//! one whose `Origin` is another site is refused outright.
//!
//! Sessions live in memory: a restart of the server logs everyone out, and
//! their number is bounded (the oldest goes first). A session id is always
//! made by the server at login, never taken from the request, so a cookie
//! planted by someone else never becomes a session.
//!
//! Guessing the token at the form is slowed down for the whole server, by
//! the back-off the API shares ([`crate::guessing`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::{html, Dashboard};

/// The session cookie's name.
pub(super) const COOKIE: &str = "rsp_session";
/// A session unused for this long is gone.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once.
const MAX_SESSIONS: usize = 1024;

/// One logged-in browser.
#[derive(Clone)]
pub(super) struct Session {
    /// The token every state-changing request of this session must carry.
    pub(super) csrf: String,
    last_seen: Instant,
}

/// The sessions of this server.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    /// A new session: its cookie value.
    fn open(&self) -> Result<String, String> {
        let id = random_hex()?;
        let session = Session { csrf: random_hex()?, last_seen: Instant::now() };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.last_seen.elapsed() < IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// The session of this cookie value, if it is live (and marks it used).
    fn find(&self, id: &str) -> Option<Session> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up by equality on a 256-bit random key: a guess costs
        // as much as guessing the key.
        let session = map.get_mut(id)?;
        if session.last_seen.elapsed() >= IDLE {
            map.remove(id);
            return None;
        }
        session.last_seen = Instant::now();
        Some(session.clone())
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// 32 random bytes as hex.
fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compares without an early exit, so timing does not leak a secret.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request says it comes from another site. Browsers send
/// `Origin` with every POST; it must name this very host.
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin != format!("http://{host}") && origin != format!("https://{host}")
}

/// The session of a request, once [`require_session`] has let it through.
#[derive(Clone)]
pub(super) struct Current {
    /// The session's CSRF token.
    pub(super) csrf: String,
}

/// In front of every dashboard route but the login form and the static
/// files: a request without a live session is sent to the login form (a
/// page) or answered 401 (the event streams, downloads, actions).
pub(super) async fn require_session(State(dash): State<Arc<Dashboard>>, mut request: Request, next: Next) -> Response {
    let session = cookie(request.headers(), COOKIE).and_then(|id| dash.sessions.find(id));
    let Some(session) = session else {
        let wants_page = request.method() == Method::GET
            && request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
        if wants_page {
            return Redirect::to("/login").into_response();
        }
        return (StatusCode::UNAUTHORIZED, "log in first: this page needs a session (see /login)").into_response();
    };
    request.extensions_mut().insert(Current { csrf: session.csrf });
    next.run(request).await
}

/// A state-changing request refused by [`check_csrf`]: 403 and why.
pub(super) struct Refused(&'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, self.0).into_response()
    }
}

/// The CSRF check of a state-changing request: the session's token in the
/// `X-CSRF-Token` header or the `csrf` form field, and no foreign `Origin`.
pub(super) fn check_csrf(current: &Current, headers: &HeaderMap, field: Option<&str>) -> Result<(), Refused> {
    if cross_site(headers) {
        return Err(Refused("refused: the request comes from another site"));
    }
    let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).or(field).unwrap_or("");
    if given.is_empty() || !same(given, &current.csrf) {
        return Err(Refused("refused: missing or wrong CSRF token (reload the page)"));
    }
    Ok(())
}

/// The login form.
pub(super) async fn login_form() -> Response {
    page_response(StatusCode::OK, &login_page(None))
}

fn login_page(error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", html::esc(e))).unwrap_or_default();
    html::bare(
        "Log in",
        &format!(
            "<h1>rsp job server</h1>{error}\
             <form method=\"post\" action=\"/login\" class=\"login\">\
             <label for=\"token\">Token</label>\
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
             <p class=\"hint\">The server's token is in the <code>token</code> file of its state directory \
             (<code>cat ~/.local/share/rsp/token</code>).</p>\
             <button type=\"submit\">Log in</button></form>"
        ),
    )
}

/// The login form's fields.
#[derive(Deserialize)]
pub(super) struct Login {
    token: String,
}

/// Checks the token and opens a session.
pub(super) async fn login(State(dash): State<Arc<Dashboard>>, headers: HeaderMap, Form(form): Form<Login>) -> Response {
    if cross_site(&headers) {
        return (StatusCode::FORBIDDEN, "refused: the request comes from another site").into_response();
    }
    match dash.logins.login(|| same(form.token.trim(), &dash.token)) {
        Ok(true) => {}
        Ok(false) => {
            return page_response(StatusCode::UNAUTHORIZED, &login_page(Some("That is not this server's token.")));
        }
        Err(wait) => {
            let secs = crate::guessing::retry_after(wait);
            let message = format!("Too many wrong tokens: try again in {secs} s.");
            let mut response = page_response(StatusCode::TOO_MANY_REQUESTS, &login_page(Some(&message)));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return response;
        }
    }
    let id = match dash.sessions.open() {
        Ok(id) => id,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let mut response = Redirect::to("/").into_response();
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Ends the session (CSRF-checked: a foreign page cannot log you out).
pub(super) async fn logout(
    State(dash): State<Arc<Dashboard>>,
    headers: HeaderMap,
    axum::Extension(current): axum::Extension<Current>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(refused) = check_csrf(&current, &headers, super::actions::form_field(&body, "csrf")) {
        return refused.into_response();
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        dash.sessions.close(id);
    }
    let mut response = Redirect::to("/login").into_response();
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// An HTML answer that no cache keeps.
pub(super) fn page_response(status: StatusCode, body: &str) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The headers every dashboard answer carries: scripts and styles only
/// from this server (no inline script can run, even if escaping failed),
/// no framing, no referrer to other sites (`no-referrer` would make
/// the browser send `Origin: null`, which the CSRF check refuses), no sniffing.
pub(super) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; rsp_session=abc; b=2"));
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        headers.clear();
        headers.append(header::COOKIE, HeaderValue::from_static("xrsp_session=no"));
        assert_eq!(cookie(&headers, COOKIE), None);
    }

    #[test]
    fn a_foreign_origin_is_cross_site() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!cross_site(&headers), "no Origin: not a browser's cross-site POST");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(!cross_site(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(cross_site(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_site(&headers));
    }

    #[test]
    fn sessions_expire_when_closed_and_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open().unwrap();
        assert!(sessions.find(&first).is_some());
        sessions.close(&first);
        assert!(sessions.find(&first).is_none());
        let ids: Vec<String> = (0..MAX_SESSIONS + 5).map(|_| sessions.open().unwrap()).collect();
        assert!(sessions.0.lock().unwrap().len() <= MAX_SESSIONS);
        assert!(sessions.find(ids.last().unwrap()).is_some());
    }
}
