//! Sentinel's sinks: where the dataflow's results become durable and visible.
//!
//! | module | owns |
//! | --- | --- |
//! | [`telemetry`] | typed telemetry events of committed and retried batches |
//! | [`postgres`] | schema migrations, the batch writer that commits events, dead letters and source offsets in one transaction, and offset recovery |

pub mod postgres;
pub mod telemetry;
