//! The HTTP connections of `passpulse serve`: the accept loop, its limits and its shutdown.
//! What the routes answer is `http.rs`'s business; this module only decides how many
//! connections are served and how long a client may take to send a request.
//!
//! - At most `max_connections` connections are served at once. Past that, new connections wait
//!   in the kernel's accept queue (they cost the process no file descriptor) until one closes.
//! - A request's headers must arrive within `header_timeout` of the connection opening or of the
//!   previous response; hyper's timer runs whenever a connection waits for a request head, so
//!   this also closes idle keep-alive connections. Idle sockets therefore cannot hold every
//!   connection slot for long, and `/healthz` answers once the oldest have been closed.
//! - A request's body must arrive whole within `body_timeout` of its headers, or the request is
//!   answered 408 and the connection closed.
//!
//! The server speaks HTTP/1.1 only: every client passpulse has (browsers and curl over plain
//! HTTP, reqwest, BI tools) uses it, and HTTP/1's header timer covers every idle phase of a
//! connection, which hyper offers no equivalent of for cleartext HTTP/2. Put a reverse proxy in
//! front for TLS or HTTP/2.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use passpulse_query::error_response;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Connection limits of the HTTP server (`[server]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// How long shutdown waits for requests in progress before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in progress
/// finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // out of file descriptors, most likely: wait for some to be released
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = http1.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still in progress at shutdown were cut off");
    }
}

/// Gives the request body a deadline; a request whose body missed it is answered 408.
async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + limit;
    let flag = expired.clone();
    let req = req.map(|body| {
        let chunks = futures::stream::unfold(Some(body.into_data_stream()), move |state| {
            let flag = flag.clone();
            async move {
                let mut chunks = state?;
                match tokio::time::timeout_at(deadline, chunks.next()).await {
                    Ok(Some(chunk)) => Some((chunk.map_err(axum::BoxError::from), Some(chunks))),
                    Ok(None) => None,
                    Err(_) => {
                        flag.store(true, Ordering::Relaxed);
                        let e = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request body not received in time",
                        );
                        Some((Err(axum::BoxError::from(e)), None))
                    }
                }
            }
        });
        Body::from_stream(chunks)
    });
    let response = next.run(req).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    let mut r = error_response(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {}: send it faster, or in smaller requests",
            humantime::format_duration(limit)
        ),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
