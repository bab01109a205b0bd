//! Sentinel's read side: what people ask of the views the dataflow maintains.
//!
//! | module | owns |
//! | --- | --- |
//! | [`slo`] | `GET /v1/slo`: compliance, error budget and burn rates of both SLOs from `slo_samples` |
//!
//! The SQL query endpoint and the live feed (`POST /v1/query`, `GET /v1/stream`) are not built yet.

pub mod slo;

pub use slo::{router, SloObjectives, SloState};
