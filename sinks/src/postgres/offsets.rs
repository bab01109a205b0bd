//! Recovery of the positions the dataflow resumes from, stored beside the effects.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::SinkError;

/// The stored next offset of every partition of `topic` that has one.
pub async fn load_offsets(client: &Client, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
    let rows = client
        .query(
            "SELECT partition, next_offset FROM source_offsets WHERE topic = $1",
            &[&topic],
        )
        .await
        .map_err(SinkError::statement("loading source offsets"))?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, i32>(0), row.get::<_, i64>(1)))
        .collect())
}
