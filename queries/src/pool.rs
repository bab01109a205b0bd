//! The read side's PostgreSQL connections: one bounded pool (deadpool) whose sessions speak UTC,
//! and the error type of every read, classified retriable or not.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    Config(#[source] tokio_postgres::Error),
    /// Building the pool failed.
    #[error("building the connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    /// No connection could be had (PostgreSQL down, pool exhausted past its wait).
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
}

impl ReadError {
    /// Whether retrying later may succeed (the database is unavailable rather than the request
    /// being wrong).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Build(_) => false,
            Self::Pool(_) => true,
            Self::Database(err) => err.as_db_error().is_none(),
        }
    }
}

/// The `application_name` of the read pool's connections.
pub const READ_APPLICATION: &str = "sentinel-read";

/// A pool of read connections; cheap to clone.
pub type ReadPool = Pool;

/// A pool of at most `size` connections to `database_url`, each session in UTC so that JSON
/// timestamps render as `…+00:00`.
pub fn read_pool(database_url: &str, size: usize) -> Result<ReadPool, ReadError> {
    let mut config =
        sinks::postgres::named_config(database_url, READ_APPLICATION).map_err(ReadError::Config)?;
    config.options("-c TimeZone=UTC");
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}
