//! OpenTelemetry spans of an event's hops, built from the trace context its record carries,
//! with explicit ids and times so that every hop — gateway, broker, dataflow, sink — lands in
//! the event's one trace. Only the API is used here: the binary installs an exporter (and calls
//! [`enable`]); until then nothing is built at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{global, Context, KeyValue};

use crate::trace_context::TraceContext;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span building on; the binary calls it once it installed a tracer provider.
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// Whether spans are built.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The instrumentation scope of every Sentinel span.
const SCOPE: &str = "sentinel";

/// One hop of an event (or a batch), recorded after the fact with its real start and end.
#[derive(Debug, Clone)]
pub struct Hop {
    /// Span name, e.g. `pipeline.validate`.
    pub name: &'static str,
    /// Server, client, producer, consumer or internal.
    pub kind: SpanKind,
    /// The remote parent (the event's trace position); `None` makes a root span.
    pub parent: Option<TraceContext>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
    /// Spans it relates to without being their child (a batch's events).
    pub links: Vec<TraceContext>,
}

impl Hop {
    /// A hop with no attributes and no links.
    pub fn new(
        name: &'static str,
        kind: SpanKind,
        parent: Option<TraceContext>,
        start: SystemTime,
        end: SystemTime,
    ) -> Self {
        Self {
            name,
            kind,
            parent,
            start,
            end,
            attributes: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Adds attributes.
    pub fn with(mut self, attributes: impl IntoIterator<Item = KeyValue>) -> Self {
        self.attributes.extend(attributes);
        self
    }

    /// Records the span; returns its own position (for children and links) when it was sampled.
    pub fn record(self) -> Option<TraceContext> {
        let mut span = start(
            self.name,
            self.kind,
            self.parent,
            None,
            self.start,
            self.attributes,
            self.links,
        )?;
        span.end_with_timestamp(self.end);
        own_context(&span)
    }
}

/// A span that is still open (the gateway's receive span: its sampling decision is needed
/// before the record it describes is produced).
pub struct OpenSpan(global::BoxedSpan);

impl OpenSpan {
    /// Starts `name` with the explicit id of `position` (so that the id the next hop sees as its
    /// parent is this span's), under `parent` when the client sent one; `None` when spans are
    /// off.
    pub fn start(
        name: &'static str,
        kind: SpanKind,
        parent: Option<TraceContext>,
        position: TraceContext,
        start_time: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Option<Self> {
        start(
            name,
            kind,
            parent,
            Some(position),
            start_time,
            attributes,
            Vec::new(),
        )
        .map(Self)
    }

    /// Whether the sampler kept it: the flag the next hops must carry.
    pub fn sampled(&self) -> bool {
        self.0.span_context().is_sampled()
    }

    /// Adds an attribute.
    pub fn set(&mut self, attribute: KeyValue) {
        self.0.set_attribute(attribute);
    }

    /// Ends it now.
    pub fn end(mut self) {
        self.0.end();
    }
}

fn start(
    name: &'static str,
    kind: SpanKind,
    parent: Option<TraceContext>,
    own: Option<TraceContext>,
    start_time: SystemTime,
    attributes: Vec<KeyValue>,
    links: Vec<TraceContext>,
) -> Option<global::BoxedSpan> {
    if !enabled() {
        return None;
    }
    // Unsampled parents are not recorded (parent-based sampling), so do not build them at all.
    if parent.is_some_and(|p| !p.sampled()) {
        return None;
    }
    let tracer = global::tracer(SCOPE);
    let mut builder = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(start_time)
        .with_attributes(attributes);
    if !links.is_empty() {
        builder = builder.with_links(
            links
                .into_iter()
                .map(|l| Link::with_context(remote(&l)))
                .collect(),
        );
    }
    if let Some(own) = own {
        builder = builder.with_span_id(SpanId::from_bytes(own.span_id));
        builder.trace_id = Some(TraceId::from_bytes(own.trace_id));
    }
    let cx = match parent {
        Some(parent) => Context::new().with_remote_span_context(remote(&parent)),
        None => Context::new(),
    };
    Some(builder.start_with_context(&tracer, &cx))
}

fn remote(position: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(position.trace_id),
        SpanId::from_bytes(position.span_id),
        TraceFlags::new(position.flags),
        true,
        TraceState::NONE,
    )
}

fn own_context(span: &global::BoxedSpan) -> Option<TraceContext> {
    let context = span.span_context();
    context.is_sampled().then(|| TraceContext {
        trace_id: context.trace_id().to_bytes(),
        span_id: context.span_id().to_bytes(),
        flags: context.trace_flags().to_u8(),
    })
}

/// The attributes that say which event a span is about.
pub fn event_attributes(
    tenant_id: &str,
    event_id: &str,
    event_type: &str,
    source: &str,
    stream_key: &str,
    idempotency_key: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("tenant.id", tenant_id.to_owned()),
        KeyValue::new("event.id", event_id.to_owned()),
        KeyValue::new("event.type", event_type.to_owned()),
        KeyValue::new("source", source.to_owned()),
        KeyValue::new("streamKey", stream_key.to_owned()),
    ];
    if let Some(key) = idempotency_key {
        attributes.push(KeyValue::new("idempotencyKey", key.to_owned()));
    }
    attributes
}

/// The `messaging.*` attributes of a Kafka record.
pub fn messaging_attributes(
    operation: &'static str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
        KeyValue::new("messaging.destination.partition.id", partition.to_string()),
        KeyValue::new("messaging.kafka.offset", offset),
    ]
}
