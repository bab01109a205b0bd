//! The one HTTP listener: the gateway's routes (when this role runs them), `/health`, `/ready`,
//! and problem+json answers for unknown paths and methods.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{OriginalUri, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ingress::{ApiError, EventProducer, IngressState};
use serde_json::json;
use utoipa::OpenApi;

/// What `/ready` checks.
#[derive(Clone)]
pub struct Readiness {
    /// PostgreSQL URL to probe.
    pub database_url: String,
    /// A client of the cluster, to probe the broker.
    pub producer: EventProducer,
    /// Topic whose metadata the broker must serve.
    pub topic: String,
    /// When this role runs the dataflow: running workers and how many there should be.
    pub dataflow: Option<(Arc<AtomicUsize>, usize)>,
}

/// Binds the HTTP listener at `addr` with room for `backlog` connections not yet accepted (the
/// standard library's bind leaves 128, which a burst of clients connecting at once overflows).
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As the standard library's bind does: a restarted Sentinel can bind while the connections
    // of the one before it are still in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn check_database(url: &str) -> Result<(), String> {
    let probe = async {
        let client = sinks::postgres::connect(url)
            .await
            .map_err(|e| sinks::postgres::SinkError::to_string(&e))?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// Readiness: PostgreSQL, the broker and (for roles that run it) the dataflow.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Every check is up", body = serde_json::Value),
        (status = 503, description = "Some check is down; each check has a status and detail", body = serde_json::Value),
    ))]
async fn ready(State(readiness): State<Readiness>) -> Response {
    let (database, broker) = tokio::join!(
        check_database(&readiness.database_url),
        readiness
            .producer
            .check_broker(&readiness.topic, CHECK_TIMEOUT)
    );
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    let mut record = |name: &str, result: Result<(), String>| {
        ok &= result.is_ok();
        checks.insert(
            name.to_owned(),
            match result {
                Ok(()) => json!({"status": "up"}),
                Err(detail) => json!({"status": "down", "detail": detail}),
            },
        );
    };
    record("database", database);
    record("broker", broker.map_err(|e| e.to_string()));
    if let Some((running, expected)) = &readiness.dataflow {
        let running = running.load(Ordering::Acquire);
        record(
            "dataflow",
            if running == *expected {
                Ok(())
            } else {
                Err(format!("{running} of {expected} workers running"))
            },
        );
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks});
    (status, Json(body)).into_response()
}

/// Liveness: the process runs.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"alive\"}`", body = serde_json::Value)))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics (text/plain; version=0.0.4)", body = String, content_type = "text/plain")))]
async fn metrics() -> Response {
    let families = prometheus::gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = serde_json::Value)))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

#[derive(OpenApi)]
#[openapi(paths(health, ready, metrics, openapi_json), tags((name = "operations", description = "Health and discovery")))]
struct OperationsApi;

/// The whole OpenAPI document: the gateway and the operational endpoints.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ingress::openapi::IngressApi::openapi();
    doc.merge(OperationsApi::openapi());
    doc.merge(queries::slo::SloApi::openapi());
    doc.merge(queries::ServingApi::openapi());
    doc
}

async fn not_found(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// The application: every HTTP surface of this role on one router.
pub fn app(
    ingress: Option<IngressState>,
    serving: Option<(queries::ServingState, queries::SloState)>,
    readiness: Readiness,
) -> Router {
    ingress::telemetry::register();
    sinks::telemetry::register();
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .with_state(readiness);
    if let Some(ingress) = ingress {
        router = router.merge(ingress::router(ingress));
    }
    if let Some((serving, slo)) = serving {
        router = router.merge(queries::router(serving, slo));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::listen;

    /// Connections beyond the standard library's backlog of 128, none accepted yet, all
    /// complete at once: none waits out a dropped connection attempt's one-second retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_connections_waits_in_the_backlog() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..400).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let connected = futures::future::join_all(connects).await;
        let waited = connected.iter().filter(|c| !matches!(c, Ok(Ok(_)))).count();
        assert_eq!(
            waited, 0,
            "{waited} of 400 connections did not complete in 500 ms"
        );
        drop(listener);
    }
}
