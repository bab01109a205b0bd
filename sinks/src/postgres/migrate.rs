//! Versioned schema migrations (refinery), serialised across processes by an advisory lock.

use tokio_postgres::Client;

use super::SinkError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key that serialises migrations of concurrently starting processes.
const MIGRATION_LOCK: i64 = 0x5e17_1e10;

/// Applies every pending migration; safe to call from several processes at once.
pub async fn migrate(client: &mut Client) -> Result<(), SinkError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(SinkError::statement("taking the migration lock"))?;
    let outcome = embedded::migrations::runner().run_async(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(SinkError::statement("releasing the migration lock"))?;
    let report = outcome.map_err(SinkError::Migration)?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "schema migration applied");
    }
    Ok(())
}
