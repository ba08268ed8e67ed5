//! The HTTP server inside `walpoints run`: Prometheus metrics, health checks and the read-only
//! points API.
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | Prometheus (OpenMetrics) text: lag, throughput, points, dead letters |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when streaming with lag under the thresholds, else 503 and a JSON reason |
//! | `GET /v1/...` | the points API ([`api`]) |
//! | `GET /`, `/leaderboard`, `/users/...`, `/dead-letters` | the operator console ([`console`]) |
//!
//! It is read-only and defensive, because it is reachable by whoever can reach its port:
//! - GET only (anything else is 405); it binds loopback unless `http.listen` says otherwise;
//! - request heads over [`MAX_HEAD_BYTES`] get 431, request bodies over [`MAX_BODY_BYTES`] 413;
//! - a client must send its request head within [`HEADER_READ_TIMEOUT`] (also the idle limit of
//!   a kept-alive connection), and a request takes at most [`REQUEST_TIMEOUT`];
//! - at most [`MAX_CONNECTIONS`] connections are open at once; more are closed on accept.
//!
//! The API reads the store through a pool of its own and never touches the source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::telemetry::Telemetry;

pub mod api;
pub mod console;
mod pool;

pub use api::Api;

/// Longest time a request may take; a slow store makes the API answer 503, not hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest wait for a request's head, and for the next request on a kept-alive connection: a
/// client that trickles bytes (slowloris) or idles is cut off instead of holding a connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request line plus headers; beyond it the answer is 431 (hyper's smallest buffer).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Largest request body; no route reads one, so anything bigger is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024;

/// Most connections served at once; a client that opens more cannot starve the process of
/// memory or file descriptors. Prometheus and a dashboard need a handful.
pub const MAX_CONNECTIONS: usize = 256;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("http.listen = {addr}: cannot listen: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The rules' epoch calendar is unusable (the configuration refuses it at load).
    #[error("http: the epoch calendar of the rules is invalid: {0}")]
    Calendar(#[source] crate::points::RulesError),
    /// The API's read pool cannot be built.
    #[error("http: the API's store pool: {0}")]
    Pool(#[source] deadpool::managed::BuildError),
}

#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    api: Arc<api::Api>,
}

/// A bound server, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Server {
    /// Binds `addr` (so a taken port fails at start, not later) and builds the routes of the
    /// metrics, health checks and `api`.
    pub async fn bind(
        addr: SocketAddr,
        api: Api,
        telemetry: Arc<Telemetry>,
    ) -> Result<Server, HttpError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "http.listen is not a loopback address: metrics and the points API (read-only, \
                 no authentication) are open to the network"
            );
        }
        if let Ok(bound) = listener.local_addr() {
            telemetry.set_http_addr(bound);
            tracing::info!(addr = %bound, "http: serving the console at /, /metrics, /healthz, /readyz and /v1");
        }
        let state = AppState {
            telemetry,
            api: Arc::new(api),
        };
        Ok(Server {
            listener,
            router: router(state),
        })
    }

    /// Serves until `stop` resolves, then lets open requests finish for a few seconds.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let service = hyper_util::service::TowerToHyperService::new(self.router);
        let mut stop = std::pin::pin!(stop);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "http: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::debug!("http: {MAX_CONNECTIONS} connections open; closing a new one");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                // Errors here are the client's (a reset, a malformed head answered already).
                let _ = connection.await;
                drop(permit);
            });
        }
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api::routes())
        .merge(console::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(well_formed))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Refuses requests that are malformed at the HTTP level but that hyper lets through: no Host or
/// several (RFC 9112 §3.2 asks for 400), a `%` not followed by two hex digits (RFC 3986 §2.1;
/// axum would pass it on literally, so `/v1/users/%zz` would look up a user "%zz"), and chunked
/// bodies, whose size is unknown until read (411: a body, if any, must declare its length, and
/// it is then capped).
async fn well_formed(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or("", |p| p.as_str())
        .as_bytes();
    let bad_escape = target.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !target
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if bad_escape {
        return api::ApiError::BadRequest(
            "bad_request",
            "malformed percent-escape in the request target".into(),
        )
        .into_response();
    }
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && request.version() >= axum::http::Version::HTTP_11) {
        return api::ApiError::BadRequest(
            "bad_request",
            "an HTTP/1.1 request needs exactly one Host header".into(),
        )
        .into_response();
    }
    if request.headers().contains_key(header::TRANSFER_ENCODING) {
        return (
            StatusCode::LENGTH_REQUIRED,
            Json(json!({
                "error": "length_required",
                "message": "request bodies must declare a Content-Length (and none is needed)",
            })),
        )
            .into_response();
    }
    next.run(request).await
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.telemetry.encode(),
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.telemetry.ready() {
        Ok(report) => Json(json!({ "status": "ready", "detail": report })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": reason })),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    api::ApiError::NotFound.into_response()
}
