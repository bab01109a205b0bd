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
pub use offsets::{load_dedup_state, load_offsets, load_stream_states};
pub use writer::{run_writer, DeadLetterPublisher, EventSink, WriterSettings, FEED_CHANNEL};

use tokio_postgres::{Client, Config, NoTls};

/// The `application_name` of Sentinel's connections that have no more precise role.
pub const APPLICATION: &str = "sentinel";
/// The `application_name` of the dataflow's writers (COPY into `events`, the views, offsets).
pub const WRITER_APPLICATION: &str = "sentinel-writer";

/// The connection settings of `url`, named `application` in `pg_stat_activity` unless the URL
/// names an `application_name` itself, so that an operator tells Sentinel's connections apart.
pub fn named_config(url: &str, application: &str) -> Result<Config, tokio_postgres::Error> {
    let mut config: Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name(application);
    }
    Ok(config)
}

/// Opens a connection named [`APPLICATION`] and drives it on the current Tokio runtime.
pub async fn connect(url: &str) -> Result<Client, SinkError> {
    connect_as(url, APPLICATION).await
}

/// Opens a connection named `application` (see [`named_config`]) and drives it on the current
/// Tokio runtime.
pub async fn connect_as(url: &str, application: &str) -> Result<Client, SinkError> {
    let (client, connection) = named_config(url, application)
        .map_err(SinkError::Connect)?
        .connect(NoTls)
        .await
        .map_err(SinkError::Connect)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "postgres connection ended");
        }
    });
    Ok(client)
}
