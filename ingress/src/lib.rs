//! Sentinel's HTTP gateway: the front door where clients send events.
//!
//! | module | owns |
//! | --- | --- |
//! | [`kafka`] | broker connection settings and the acknowledged event producer |
//! | [`problem`] | RFC 9457 problem+json errors with stable problem types |
//! | [`events`] | `POST /v1/events`: parse, stamp headers, produce, answer after the broker's ack |
//!
//! [`router`] builds the gateway's routes; the `sentinel` binary mounts them on its one listener.

pub mod events;
pub mod kafka;
pub mod problem;

use std::sync::Arc;

use axum::routing::post;
use axum::Router;

pub use events::IngressSettings;
pub use kafka::{EventProducer, KafkaSettings, PublishError};
pub use problem::ApiError;

/// Shared state of the gateway's handlers.
#[derive(Clone)]
pub struct IngressState {
    inner: Arc<IngressInner>,
}

struct IngressInner {
    producer: EventProducer,
    raw_topic: String,
    settings: IngressSettings,
}

impl IngressState {
    /// State producing accepted events to `raw_topic` through `producer`.
    pub fn new(producer: EventProducer, raw_topic: String, settings: IngressSettings) -> Self {
        Self {
            inner: Arc::new(IngressInner {
                producer,
                raw_topic,
                settings,
            }),
        }
    }

    /// The producer, e.g. for readiness checks.
    pub fn producer(&self) -> &EventProducer {
        &self.inner.producer
    }
}

/// The gateway's routes.
pub fn router(state: IngressState) -> Router {
    let body_limit = state.inner.settings.max_body_bytes;
    Router::new()
        .route("/v1/events", post(events::post_event))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
