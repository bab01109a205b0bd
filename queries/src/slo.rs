//! `GET /v1/slo`: for SLO A (ingestion availability) and SLO B (freshness), the compliance over
//! the objective's window, the error budget remaining, and burn rates over 5m, 30m, 1h, 6h, 1d
//! and 3d — all computed from `slo_samples`, the dataflow's exact per-window counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ingress::{ApiError, Authenticator, Role};
use serde::Serialize;

/// The objectives, configurable.
#[derive(Debug, Clone)]
pub struct SloObjectives {
    /// SLO A: share of write answers that are not 5xx (default 0.999).
    pub ingestion: f64,
    /// SLO A's window, in days (default 30).
    pub ingestion_window_days: i64,
    /// SLO B: share of events processed within the freshness threshold (default 0.99).
    pub freshness: f64,
    /// SLO B's window, in days (default 7).
    pub freshness_window_days: i64,
}

impl Default for SloObjectives {
    fn default() -> Self {
        Self {
            ingestion: 0.999,
            ingestion_window_days: 30,
            freshness: 0.99,
            freshness_window_days: 7,
        }
    }
}

/// State of the SLO endpoint.
#[derive(Clone)]
pub struct SloState {
    /// Read connections (shared with the other read endpoints): a flood of status requests
    /// waits for one rather than opening connections PostgreSQL would run out of.
    pub pool: crate::ReadPool,
    /// Token verification (the `read` role is required).
    pub auth: Arc<Authenticator>,
    /// The objectives.
    pub objectives: SloObjectives,
}

/// One SLO's status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloStatus {
    /// `ingestion_availability` or `freshness`.
    pub name: &'static str,
    /// The objective, e.g. 0.999.
    pub objective: f64,
    /// The objective's window, e.g. `30d`.
    pub window: String,
    /// Good events in the window.
    pub good: i64,
    /// All events in the window.
    pub total: i64,
    /// good / total over the window; null without events.
    pub compliance: Option<f64>,
    /// 1 − (bad share / allowed bad share); negative once the budget is spent; null without events.
    pub error_budget_remaining: Option<f64>,
    /// Bad share over each window divided by the allowed bad share; null without events.
    pub burn_rates: BTreeMap<&'static str, Option<f64>>,
}

/// The answer of `GET /v1/slo`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SloReport {
    /// SLO A then SLO B.
    pub objectives: Vec<SloStatus>,
}

const BURN_WINDOWS: [(&str, &str); 6] = [
    ("5m", "5 minutes"),
    ("30m", "30 minutes"),
    ("1h", "1 hour"),
    ("6h", "6 hours"),
    ("1d", "1 day"),
    ("3d", "3 days"),
];

fn status(
    name: &'static str,
    objective: f64,
    window_days: i64,
    window: (i64, i64),
    burns: &[(i64, i64)],
) -> SloStatus {
    let allowed = 1.0 - objective;
    let bad_share =
        |(good, total): (i64, i64)| (total > 0).then(|| (total - good) as f64 / total as f64);
    let compliance = bad_share(window).map(|bad| 1.0 - bad);
    SloStatus {
        name,
        objective,
        window: format!("{window_days}d"),
        good: window.0,
        total: window.1,
        compliance,
        error_budget_remaining: bad_share(window).map(|bad| 1.0 - bad / allowed),
        burn_rates: BURN_WINDOWS
            .iter()
            .zip(burns)
            .map(|((label, _), counts)| (*label, bad_share(*counts).map(|bad| bad / allowed)))
            .collect(),
    }
}

async fn compute(state: &SloState) -> Result<SloReport, crate::ReadError> {
    let client = state.pool.get().await?;
    let objectives = &state.objectives;
    // One pass over the samples: sums per window with FILTER, capped at bigint's maximum (a
    // window saturates there, and sums of several could pass it). A window starting in the
    // future (only a foreign outcomes record writes one) counts in none of them.
    let mut columns = vec![
        format!("least(coalesce(sum(ingestion_good) FILTER (WHERE window_start_utc >= now() - interval '{} days'), 0), 9223372036854775807)::bigint", objectives.ingestion_window_days),
        format!("least(coalesce(sum(ingestion_total) FILTER (WHERE window_start_utc >= now() - interval '{} days'), 0), 9223372036854775807)::bigint", objectives.ingestion_window_days),
        format!("least(coalesce(sum(freshness_good) FILTER (WHERE window_start_utc >= now() - interval '{} days'), 0), 9223372036854775807)::bigint", objectives.freshness_window_days),
        format!("least(coalesce(sum(freshness_total) FILTER (WHERE window_start_utc >= now() - interval '{} days'), 0), 9223372036854775807)::bigint", objectives.freshness_window_days),
    ];
    for (_, interval) in BURN_WINDOWS {
        for column in [
            "ingestion_good",
            "ingestion_total",
            "freshness_good",
            "freshness_total",
        ] {
            columns.push(format!(
                "least(coalesce(sum({column}) FILTER (WHERE window_start_utc >= now() - interval '{interval}'), 0), 9223372036854775807)::bigint"
            ));
        }
    }
    let row = client
        .query_one(
            &format!(
                "SELECT {} FROM slo_samples WHERE window_start_utc <= now()",
                columns.join(", ")
            ),
            &[],
        )
        .await?;
    let value = |i: usize| row.get::<_, i64>(i);
    let burns = |offset: usize| -> Vec<(i64, i64)> {
        (0..BURN_WINDOWS.len())
            .map(|w| (value(4 + w * 4 + offset), value(4 + w * 4 + offset + 1)))
            .collect()
    };
    Ok(SloReport {
        objectives: vec![
            status(
                "ingestion_availability",
                objectives.ingestion,
                objectives.ingestion_window_days,
                (value(0), value(1)),
                &burns(0),
            ),
            status(
                "freshness",
                objectives.freshness,
                objectives.freshness_window_days,
                (value(2), value(3)),
                &burns(2),
            ),
        ],
    })
}

/// Handler of `GET /v1/slo`.
#[utoipa::path(get, path = "/v1/slo", tag = "slo",
    responses(
        (status = 200, description = "Both SLOs", body = SloReport),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read role", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL unavailable", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get_slo(State(state): State<SloState>, headers: HeaderMap) -> Response {
    if let Err(response) = crate::authorize(&state.auth, &headers, Role::Read) {
        return response;
    }
    match compute(&state).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "SLO status unavailable");
            crate::database_unavailable("the SLO samples could not be read; retry shortly")
                .into_response()
        }
    }
}

/// The SLO routes.
pub fn router(state: SloState) -> Router {
    Router::new()
        .route("/v1/slo", get(get_slo))
        .with_state(state)
}

/// The SLO endpoint's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(get_slo), components(schemas(SloReport, SloStatus)), tags((name = "slo", description = "Service level objectives")))]
pub struct SloApi;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_burn_rates_follow_the_sre_workbook() {
        // 0.2% bad against a 0.1% allowance: compliance 99.8%, budget overspent by 100%, burn 2×.
        let s = status("x", 0.999, 30, (998, 1000), &[(998, 1000); 6]);
        assert!((s.compliance.unwrap() - 0.998).abs() < 1e-9);
        assert!((s.error_budget_remaining.unwrap() - -1.0).abs() < 1e-9);
        assert!((s.burn_rates["1h"].unwrap() - 2.0).abs() < 1e-9);
        let quiet = status("x", 0.99, 7, (0, 0), &[(0, 0); 6]);
        assert_eq!(quiet.compliance, None, "no events, no compliance");
        assert_eq!(quiet.burn_rates["5m"], None);
    }
}
