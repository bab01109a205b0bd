//! Sentinel's pure core: the event contract, the Kafka record headers every hop shares, and the
//! timely/differential operators of the dataflow. Nothing in this crate performs network or
//! database I/O, so every piece is unit-tested in-process.
//!
//! | module | owns |
//! | --- | --- |
//! | [`envelope`] | the event envelope clients POST and its validation rules, with JSON pointers |
//! | [`canonical`] | RFC 8785 canonical JSON and the SHA-256 payload hash |
//! | [`headers`] | names and encoding of the Kafka record headers (trace, idempotency, received time) |
//! | [`trace_context`] | W3C `traceparent` parsing and minting |
//! | [`spans`] | OpenTelemetry spans of an event's hops, in the event's trace (API only, no exporter) |
//! | [`topics`] | topic names, with the per-deployment prefix |
//! | [`record`] | the shapes that flow through the dataflow: source records, event rows, dead letters |
//! | [`validate`] | JSON Schemas per (tenant or `*`, type, version) and the unknown-type policy |
//! | [`decode`] | operator: raw source records into `(events, dead letters)` |
//! | [`slo_window`] | tumbling SLO windows: gateway outcomes, counted once per publication, and the freshness objective's samples |
//! | [`stream_state`] | operator: per stream, the latest event and the count, in a differential arrangement |
//! | [`dedup`] | operator: drop repeats by event id and idempotency key; dead-letter conflicts |
//! | [`error_text`] | one line of text for an error and its causes |

pub mod canonical;
pub mod decode;
pub mod dedup;
pub mod envelope;
pub mod error_text;
pub mod headers;
pub mod record;
pub mod slo_window;
pub mod spans;
pub mod stream_state;
pub mod topics;
pub mod trace_context;
pub mod validate;
