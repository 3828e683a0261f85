//! Serving the API's router over HTTP/1.1 with the timeouts `axum::serve`
//! does not set: a client that does not finish sending its request headers
//! within [`HEADER_READ`] is disconnected, so slow or idle connections
//! cannot hold the server's sockets (a slow body is bounded by the handler
//! that reads it: see [`crate::api`]).

use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// The longest a client may take to send a request's headers.
pub(crate) const HEADER_READ: Duration = Duration::from_secs(10);

/// Accepts connections and serves `router` on each until `stop` turns
/// true; then asks every connection to finish its current request and
/// close, and returns once they have (or after `drain`).
pub(crate) async fn serve(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>, drain: Duration) {
    let (closed_tx, closed_rx) = watch::channel(());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors, say: wait a little rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(|r: Request<Incoming>| r.map(axum::body::Body::new));
        let service = TowerToHyperService::new(service);
        let mut stop = stop.clone();
        let closed = closed_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(closed);
        });
    }
    drop(closed_rx);
    // Every connection task holds a receiver; `closed()` resolves when all are gone.
    let _ = tokio::time::timeout(drain, closed_tx.closed()).await;
}
