//! One shape for every error: `{"error": message, "status": code}`, also
//! for what axum answers by itself (no such route, a method the route does
//! not take, a body over the limit, a query or path it cannot decode), so a
//! client never has to parse text. `405` keeps its `Allow` header.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::limits::MAX_REQUEST_BODY;

/// The most bytes of a text error body kept as the message.
const MAX_MESSAGE: usize = 4096;

/// The answer for a path no route serves.
pub(super) async fn no_route(method: Method, uri: axum::http::Uri) -> Response {
    ApiError(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {}", uri.path())).into_response()
}

/// Turns any error answer that is not JSON into the JSON shape.
pub(super) async fn json_errors(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, MAX_MESSAGE).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let message = match status {
        // axum adds the `Allow` header outside this layer, so it is not
        // named here; the client finds it in the answer's headers.
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path} (see the Allow header)"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body too large (limit {})", runspace::units::format_size(MAX_REQUEST_BODY))
        }
        _ => match text {
            Ok(text) if !text.is_empty() => text,
            _ => status.canonical_reason().unwrap_or("error").to_string(),
        },
    };
    let body = serde_json::json!({"error": message, "status": status.as_u16()}).to_string();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, Body::from(body))
}
