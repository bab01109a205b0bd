//! RFC 9457 problem details: one error type for every HTTP surface, rendered as
//! `application/problem+json` with a stable `type` per kind of problem.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use operators::envelope::Violation;
use serde::Serialize;

/// Media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An HTTP error as RFC 9457 problem details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ApiError {
    /// Stable problem type URI (`/problems/<slug>`), documented in `docs/api.md`.
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::ProblemType)]
    pub problem_type: String,
    /// Short, stable summary of the problem type.
    #[schema(value_type = String)]
    pub title: &'static str,
    /// HTTP status code.
    pub status: u16,
    /// What exactly went wrong with this request.
    pub detail: String,
    /// Seconds after which a retry may succeed (sent as `Retry-After` too).
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
    /// Every violation, each with its JSON pointer (for invalid events).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::openapi::ViolationDoc>)]
    pub errors: Vec<Violation>,
    /// Where in the submitted text the problem is (invalid queries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
}

/// A place in a submitted text, e.g. the offending token of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SourceLocation {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
    /// The offending token, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ApiError {
    /// A problem of type `/problems/<slug>`.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            problem_type: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            retry_after_seconds: None,
            errors: Vec::new(),
            location: None,
        }
    }

    /// Points at a place in the submitted text.
    pub fn with_location(mut self, location: SourceLocation) -> Self {
        self.location = Some(location);
        self
    }

    /// Attaches the list of violations.
    pub fn with_errors(mut self, errors: Vec<Violation>) -> Self {
        self.errors = errors;
        self
    }

    /// Marks the problem as transient: clients may retry after `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// 404 for a path no route serves.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such resource",
            format!("no resource at {path}"),
        )
    }

    /// 405 for a method a route does not serve.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{method} is not allowed on {path}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read: tell the client not to reuse the connection.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
