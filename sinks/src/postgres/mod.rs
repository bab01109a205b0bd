//! PostgreSQL sink: migrations, the transactional batch writer, and source-offset recovery.
//!
//! Invariant: a batch's events, dead letters and the source offsets just past them commit in
//! one transaction, so after any crash the dataflow resumes exactly where the durable effects end.

mod batch;
mod error;
mod migrate;
mod offsets;
mod writer;

pub use batch::{CommitBatch, CommitReport};
pub use error::SinkError;
pub use migrate::migrate;
pub use offsets::{load_offsets, load_recent_events, load_stream_states};
pub use writer::{
    error_chain, run_writer, DeadLetterPublisher, EventSink, WriterSettings, FEED_CHANNEL,
};

use tokio_postgres::{Client, NoTls};

/// Opens a connection and drives it on the current Tokio runtime.
pub async fn connect(url: &str) -> Result<Client, SinkError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(SinkError::Connect)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "postgres connection ended");
        }
    });
    Ok(client)
}
