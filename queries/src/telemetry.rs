//! The read side's telemetry: typed events for the live feed (subscriptions, evictions,
//! broadcasts) and the query endpoint, whose `emit()` updates the metrics. Labels are bounded.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns this crate's metrics on or off (`SENTINEL_METRICS=off`, to measure what they cost):
/// `/metrics` still answers, with the values left where they were.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

static SSE_SUBSCRIBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("sse_subscribers", "Open GET /v1/stream subscriptions")
        .expect("registering sse_subscribers")
});

static SSE_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sse_evictions_total",
        "Subscribers closed with `event: lagged` because they fell behind"
    )
    .expect("registering sse_evictions_total")
});

static SSE_BROADCAST: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sse_broadcast_messages_total",
        "Feed messages (events and dead letters) read once and broadcast to subscribers"
    )
    .expect("registering sse_broadcast_messages_total")
});

static QUERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "query_requests_total",
        "POST/GET /v1/query requests by outcome (ok, rejected, timeout, error)",
        &["outcome"]
    )
    .expect("registering query_requests_total")
});

static QUERY_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "query_duration_ms",
        "Time to plan and run a query, in milliseconds",
        &["outcome"],
        vec![1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]
    )
    .expect("registering query_duration_ms")
});

/// Registers every read-side metric up front, so that dashboards see zeros rather than nothing.
pub fn register() {
    LazyLock::force(&SSE_SUBSCRIBERS);
    LazyLock::force(&SSE_EVICTIONS);
    LazyLock::force(&SSE_BROADCAST);
    for outcome in QueryOutcome::ALL {
        QUERIES.with_label_values(&[outcome.label()]);
        QUERY_DURATION.with_label_values(&[outcome.label()]);
    }
}

/// A live subscription: counted while this guard lives.
pub struct Subscribed(());

impl Subscribed {
    /// Counts one more subscriber until dropped.
    pub fn new() -> Self {
        SSE_SUBSCRIBERS.inc();
        Self(())
    }
}

impl Default for Subscribed {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        SSE_SUBSCRIBERS.dec();
    }
}

/// A subscriber was evicted for lagging.
pub struct SubscriberEvicted;

impl SubscriberEvicted {
    /// Records it.
    pub fn emit(self) {
        tracing::info!("live feed subscriber evicted: it fell behind");
        if enabled() {
            SSE_EVICTIONS.inc();
        }
    }
}

/// The hub broadcast one batch of messages.
pub struct FeedBroadcast {
    /// Events and dead letters in it.
    pub messages: usize,
}

impl FeedBroadcast {
    /// Records it.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        SSE_BROADCAST.inc_by(self.messages as u64);
    }
}

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOutcome {
    /// Rows returned.
    Ok,
    /// Outside the subset, or refused by PostgreSQL as invalid.
    Rejected,
    /// Stopped by the statement timeout.
    Timeout,
    /// The database was unavailable.
    Error,
    /// Not run: the tenant ran as many queries at once as it may.
    Refused,
}

impl QueryOutcome {
    const ALL: [QueryOutcome; 5] = [
        Self::Ok,
        Self::Rejected,
        Self::Timeout,
        Self::Error,
        Self::Refused,
    ];

    fn label(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::Refused => "refused",
        }
    }
}

/// One query answered.
pub struct QueryAnswered {
    /// How it ended.
    pub outcome: QueryOutcome,
    /// How long it took.
    pub duration: std::time::Duration,
}

impl QueryAnswered {
    /// Records it.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        let label = self.outcome.label();
        QUERIES.with_label_values(&[label]).inc();
        QUERY_DURATION
            .with_label_values(&[label])
            .observe(self.duration.as_secs_f64() * 1000.0);
    }
}
