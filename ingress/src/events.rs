//! `POST /v1/events`: parse the envelope, stamp the shared record headers, produce it keyed
//! `tenantId|streamKey`, and answer 202 only after the broker acknowledged it.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use operators::envelope::{parse_envelope, EnvelopeError};
use operators::headers::{format_received_at, RecordHeaders};
use operators::trace_context::TraceContext;
use serde::Serialize;
use uuid::Uuid;

use crate::kafka::PublishError;
use crate::problem::ApiError;
use crate::IngressState;

/// Gateway limits.
#[derive(Debug, Clone)]
pub struct IngressSettings {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The 202 body: what the client needs to find its event again.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The event's id, as sent.
    pub event_id: Uuid,
    /// When the gateway received it (RFC 3339, UTC, microseconds).
    pub received_at_utc: String,
    /// The trace the event travels in (32 hex digits).
    pub trace_id: String,
}

/// Whether a `Content-Type` value is a JSON media type (`application/json` or `*/*+json`).
fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub(crate) fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match content_type {
        Some(value) if is_json_media_type(value) => Ok(()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "Content-Type must be application/json, got {}",
                other.map_or("none".to_owned(), |v| format!("{v:?}"))
            ),
        )),
    }
}

pub(crate) fn body_or_problem(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("request body exceeds the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Request body could not be read",
                rejection.body_text(),
            )
        }
    })
}

pub(crate) fn envelope_problem(err: EnvelopeError) -> ApiError {
    match err {
        EnvelopeError::MalformedJson { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            err.to_string(),
        ),
        EnvelopeError::Contract { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-event",
            "Invalid event",
            err.to_string(),
        ),
    }
}

pub(crate) fn publish_problem(err: PublishError) -> ApiError {
    if err.is_too_large() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event-too-large",
            "Event too large for the broker",
            "the broker refused the event because it exceeds its maximum record size",
        );
    }
    if err.is_retriable() {
        tracing::warn!(error = %err, cause = ?std::error::Error::source(&err), "publish failed, answering 503");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "Broker unavailable",
            "the event was not acknowledged by the broker in time; it may or may not have been \
             written, so retry with the same eventId",
        )
        .retry_after(1);
    }
    tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "broker refused a record");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "broker-rejected",
        "Broker refused the event",
        "the broker refused the event; this is a gateway configuration problem",
    )
}

/// The trace a request travels in: the client's `traceparent` continued, or a new trace.
pub(crate) fn request_trace(headers: &HeaderMap) -> (TraceContext, Option<String>) {
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    match parent {
        Some(parent) => {
            let state = headers
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (parent.child(), state)
        }
        None => (TraceContext::mint(), None),
    }
}

/// Handler of `POST /v1/events`.
pub async fn post_event(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let received_at = Utc::now();
    check_json_content_type(&headers)?;
    let body = body_or_problem(body, state.inner.settings.max_body_bytes)?;
    let envelope = parse_envelope(&body).map_err(envelope_problem)?;
    let (trace, tracestate) = request_trace(&headers);
    let record_headers = RecordHeaders {
        traceparent: Some(trace),
        tracestate,
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        received_at: Some(received_at),
        payload_hash: None,
    };
    state
        .inner
        .producer
        .publish(
            &state.inner.raw_topic,
            &envelope.record_key(),
            &body,
            &record_headers,
        )
        .await
        .map_err(publish_problem)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            event_id: envelope.event_id,
            received_at_utc: format_received_at(&received_at),
            trace_id: trace.trace_id_hex(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
        ] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "json",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "v=1".parse().unwrap());
        let (trace, state) = request_trace(&headers);
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.span_id, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(state.as_deref(), Some("v=1"));
        headers.insert("traceparent", "garbage".parse().unwrap());
        let (fresh, state) = request_trace(&headers);
        assert_ne!(fresh.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            state, None,
            "tracestate is dropped with an invalid traceparent"
        );
    }
}
