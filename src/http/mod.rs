//! The HTTP server inside `walpoints run`: Prometheus metrics, health checks and the read-only
//! points API.
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | Prometheus (OpenMetrics) text: lag, throughput, points, dead letters |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when streaming with lag under the thresholds, else 503 and a JSON reason |
//! | `GET /v1/...` | the points API ([`api`]) |
//!
//! It serves GET only, caps request bodies and takes at most [`REQUEST_TIMEOUT`] per request;
//! the API reads the store through a pool of its own and never touches the source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::telemetry::Telemetry;

pub mod api;
mod pool;

/// Longest time a request may take; a slow store makes the API answer 503, not hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// The API's configuration is unusable (e.g. the epoch calendar).
    #[error("http: {0}")]
    Config(String),
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
    /// Binds `addr` (so a taken port fails at start, not later) and builds the routes.
    pub async fn bind(
        addr: SocketAddr,
        config: &Config,
        telemetry: Arc<Telemetry>,
    ) -> Result<Server, HttpError> {
        let api = api::Api::new(config).map_err(HttpError::Config)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        if let Ok(bound) = listener.local_addr() {
            telemetry.set_http_addr(bound);
            tracing::info!(addr = %bound, "http: serving /metrics, /healthz, /readyz and /v1");
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

    /// Serves until the future resolves.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Err(e) = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "http server ended");
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
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
