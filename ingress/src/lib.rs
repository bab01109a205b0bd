//! Sentinel's HTTP gateway: the front door where clients send events.
//!
//! | module | owns |
//! | --- | --- |
//! | [`auth`] | bearer JWTs (HS256, RS256/ES256 from a JWKS file), tenants and roles |
//! | [`body`] | request bodies read under a byte limit, drained before a 413 |
//! | [`idempotency`] | group-committed idempotency claims in PostgreSQL, purged after retention |
//! | [`kafka`] | broker connection settings and the acknowledged event producer |
//! | [`problem`] | RFC 9457 problem+json errors with stable problem types |
//! | [`openapi`] | the OpenAPI 3.1 description generated from the handlers |
//! | [`outcomes`] | per-window answer counts published to the outcomes topic for the ingestion SLO |
//! | [`telemetry`] | typed telemetry events and the gateway's metrics |
//! | [`events`] | `POST /v1/events` and `POST /v1/events:batch`: the write path |
//!
//! [`router`] builds the gateway's routes; the `sentinel` binary mounts them on its one listener.

pub mod auth;
pub mod body;
pub mod events;
pub mod idempotency;
pub mod kafka;
pub mod openapi;
pub mod outcomes;
pub mod problem;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use tokio::sync::Semaphore;

pub use auth::{Authenticator, Principal, Role};
pub use events::IngressSettings;
pub use idempotency::ClaimStore;
pub use kafka::{EventProducer, KafkaSettings, PublishError};
pub use problem::{ApiError, SourceLocation};

/// Shared state of the gateway's handlers.
#[derive(Clone)]
pub struct IngressState {
    inner: Arc<IngressInner>,
}

struct IngressInner {
    producer: EventProducer,
    raw_topic: String,
    settings: IngressSettings,
    auth: Arc<Authenticator>,
    claims: ClaimStore,
    local: Arc<events::LocalClaims>,
    in_flight: Arc<Semaphore>,
    lease: Duration,
    outcomes: Option<Arc<outcomes::OutcomeRecorder>>,
}

impl IngressState {
    /// State producing accepted events to `raw_topic` through `producer`, with claims in
    /// `claims` whose lease is `lease`.
    pub fn new(
        producer: EventProducer,
        raw_topic: String,
        settings: IngressSettings,
        auth: Arc<Authenticator>,
        claims: ClaimStore,
        lease: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(IngressInner {
                producer,
                raw_topic,
                in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
                settings,
                auth,
                claims,
                local: Arc::default(),
                lease,
                outcomes: None,
            }),
        }
    }

    /// Counts the write endpoints' answers in `recorder` (for the ingestion SLO).
    pub fn with_outcomes(mut self, recorder: Arc<outcomes::OutcomeRecorder>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_outcomes is called before the state is shared")
            .outcomes = Some(recorder);
        self
    }

    /// The authenticator, shared with the other HTTP surfaces.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.inner.auth
    }

    /// The producer, e.g. for readiness checks.
    pub fn producer(&self) -> &EventProducer {
        &self.inner.producer
    }

    /// At shutdown, once no request comes in: waits up to `patience` for the requests still
    /// being written (those whose clients went away included; each holds its share of the
    /// in-flight budget until it is done), then for their claims' completions and releases to
    /// be written. Else a key whose event was written would stay in flight until its lease
    /// ends, and its retry would send the event again. Whether everything was written in time.
    pub async fn drain(&self, patience: Duration) -> bool {
        let everything = u32::try_from(self.inner.settings.max_in_flight).unwrap_or(u32::MAX);
        let drained = async {
            // Every permit back: no request is being written. Kept, so none starts.
            let _all = self.inner.in_flight.acquire_many(everything).await;
            self.inner.claims.flush().await;
        };
        tokio::time::timeout(patience, drained).await.is_ok()
    }
}

/// The gateway's routes.
pub fn router(state: IngressState) -> Router {
    Router::new()
        .route("/v1/events", post(events::post_event))
        .route("/v1/events:batch", post(events::post_batch))
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(state, record_request))
}

/// Emits one [`telemetry::RequestAnswered`] per request of the gateway's routes, and counts the
/// answer for the ingestion SLO.
async fn record_request(
    axum::extract::State(state): axum::extract::State<IngressState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = telemetry::route_label(request.uri().path());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    telemetry::RequestAnswered {
        status,
        route,
        duration: started.elapsed(),
    }
    .emit();
    if let Some(outcomes) = &state.inner.outcomes {
        outcomes.record(status, chrono::Utc::now());
    }
    response
}
