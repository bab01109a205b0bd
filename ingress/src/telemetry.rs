//! The gateway's telemetry: one typed event per thing that happens, whose `emit()` updates the
//! metrics (and logs where a human should hear of it). Label sets are fixed and bounded.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    Histogram, HistogramVec, IntCounter, IntCounterVec,
};

const LATENCY_MS_BUCKETS: &[f64] = &[
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
    2500.0, 5000.0, 10000.0,
];

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns this crate's metrics on or off (`SENTINEL_METRICS=off`, to measure what they cost):
/// `/metrics` still answers, with the values left where they were.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_requests_total",
        "HTTP requests answered by the gateway, by status code",
        &["status"]
    )
    .expect("registering gateway_requests_total")
});

static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gateway_request_duration_ms",
        "Time from receiving a request to answering it, in milliseconds",
        &["route"],
        LATENCY_MS_BUCKETS.to_vec()
    )
    .expect("registering gateway_request_duration_ms")
});

static PRODUCE_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "broker_produce_duration_ms",
        "Time from handing a record to the producer to the broker's acknowledgement, in milliseconds",
        LATENCY_MS_BUCKETS.to_vec()
    )
    .expect("registering broker_produce_duration_ms")
});

static PRODUCE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "broker_produce_errors_total",
        "Records the broker did not acknowledge, by kind (unavailable, rejected)",
        &["kind"]
    )
    .expect("registering broker_produce_errors_total")
});

static CLAIM_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "idempotency_claim_duration_ms",
        "Time a request waits for its idempotency claim, in milliseconds",
        LATENCY_MS_BUCKETS.to_vec()
    )
    .expect("registering idempotency_claim_duration_ms")
});

static CLAIM_STATEMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "idempotency_statements_total",
        "Statements sent to the idempotency store, by kind (claim, complete, release)",
        &["kind"]
    )
    .expect("registering idempotency_statements_total")
});

static CLAIM_OPERATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "idempotency_operations_total",
        "Idempotency operations group-committed, by kind (claim, complete, release)",
        &["kind"]
    )
    .expect("registering idempotency_operations_total")
});

static CLAIM_DEADLOCKS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "idempotency_deadlocks_total",
        "Claim groups PostgreSQL aborted to break a deadlock with another gateway instance's"
    )
    .expect("registering idempotency_deadlocks_total")
});

/// Registers every gateway metric, so that `/metrics` lists them before they first change.
pub fn register() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&PRODUCE_DURATION);
    LazyLock::force(&PRODUCE_ERRORS);
    LazyLock::force(&CLAIM_DURATION);
    LazyLock::force(&CLAIM_STATEMENTS);
    LazyLock::force(&CLAIM_OPERATIONS);
    LazyLock::force(&CLAIM_DEADLOCKS);
    // Every label value that can occur, so that rates and sums exist (as 0) before it does.
    for kind in ["unavailable", "rejected"] {
        PRODUCE_ERRORS.with_label_values(&[kind]);
    }
    for kind in ["claim", "complete", "release", "forget"] {
        CLAIM_STATEMENTS.with_label_values(&[kind]);
        CLAIM_OPERATIONS.with_label_values(&[kind]);
    }
}

/// Route label values: the two write endpoints, and everything else.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/events" => "events",
        "/v1/events:batch" => "events_batch",
        _ => "other",
    }
}

/// A request was answered.
pub struct RequestAnswered {
    /// HTTP status.
    pub status: u16,
    /// Bounded route label.
    pub route: &'static str,
    /// Time to answer.
    pub duration: Duration,
}

impl RequestAnswered {
    /// Records the event.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        REQUESTS
            .with_label_values(&[&self.status.to_string()])
            .inc();
        REQUEST_DURATION
            .with_label_values(&[self.route])
            .observe(self.duration.as_secs_f64() * 1000.0);
    }
}

/// The broker acknowledged (or did not acknowledge) a record.
pub struct RecordProduced {
    /// Time to the acknowledgement (or the failure).
    pub duration: Duration,
    /// `None` when acknowledged, else `unavailable` or `rejected`.
    pub error: Option<&'static str>,
}

impl RecordProduced {
    /// Records the event.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        match self.error {
            None => PRODUCE_DURATION.observe(self.duration.as_secs_f64() * 1000.0),
            Some(kind) => PRODUCE_ERRORS.with_label_values(&[kind]).inc(),
        }
    }
}

/// A request got its idempotency claim answered.
pub struct ClaimAnswered {
    /// Time waited.
    pub duration: Duration,
}

impl ClaimAnswered {
    /// Records the event.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        CLAIM_DURATION.observe(self.duration.as_secs_f64() * 1000.0);
    }
}

/// One group-committed statement of the idempotency store.
pub struct ClaimStatementRun {
    /// `claim`, `complete` or `release`.
    pub kind: &'static str,
    /// Operations it carried.
    pub operations: usize,
}

impl ClaimStatementRun {
    /// Records the event.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        CLAIM_STATEMENTS.with_label_values(&[self.kind]).inc();
        CLAIM_OPERATIONS
            .with_label_values(&[self.kind])
            .inc_by(self.operations as u64);
    }
}

/// PostgreSQL aborted a claim group to break a deadlock.
pub struct ClaimGroupDeadlocked {
    /// Which attempt at writing the group it was (1 for the first).
    pub attempt: usize,
    /// Whether the group is written again; else its claims are answered 503.
    pub retried: bool,
}

impl ClaimGroupDeadlocked {
    /// Records the event, and logs it: deadlocks are rare, and each one stalled its group for
    /// PostgreSQL's `deadlock_timeout`.
    pub fn emit(self) {
        if enabled() {
            CLAIM_DEADLOCKS.inc();
        }
        if self.retried {
            tracing::info!(
                attempt = self.attempt,
                "a claim group was a deadlock's victim; writing it again"
            );
        } else {
            tracing::warn!(
                attempt = self.attempt,
                "a claim group was a deadlock's victim again; its claims are answered 503"
            );
        }
    }
}
