//! Recovery at start: the positions the dataflow resumes from, and the identities of recently
//! stored events that seed de-duplication, both stored beside the effects.

use std::collections::BTreeMap;

use futures::TryStreamExt as _;
use operators::dedup::DedupState;
use tokio_postgres::types::ToSql;
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

/// De-duplication's memory of the events of `partitions` received in the last `retention`,
/// built as the rows stream in: a restart after a day of events holds each row only while it is
/// read, not all of them at once, and PostgreSQL does not sort them (the state takes them in any
/// order).
pub async fn load_dedup_state(
    client: &Client,
    partitions: &[i32],
    retention: chrono::TimeDelta,
) -> Result<DedupState, SinkError> {
    let since = chrono::Utc::now() - retention;
    let rows = client
        .query_raw(
            "SELECT id, tenant_id, idempotency_key, payload_hash, received_utc FROM events \
             WHERE source_partition = ANY($1) AND received_utc >= $2 AND payload_hash IS NOT NULL",
            [&partitions as &(dyn ToSql + Sync), &since],
        )
        .await
        .map_err(SinkError::statement("loading recent event identities"))?;
    let mut rows = std::pin::pin!(rows);
    let mut state = DedupState::new(retention);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(SinkError::statement("loading recent event identities"))?
    {
        state.seed(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    }
    Ok(state)
}

/// The stored state of every stream whose latest event came from one of `partitions`.
pub async fn load_stream_states(
    client: &Client,
    partitions: &[i32],
) -> Result<Vec<operators::stream_state::StreamState>, SinkError> {
    let rows = client
        .query(
            "SELECT tenant_id, stream_key, event_count, last_seen_utc, last_offset, source_partition, \
                    last_type, last_event_id, last_payload_jsonb::text \
             FROM stream_state WHERE source_partition = ANY($1)",
            &[&partitions],
        )
        .await
        .map_err(SinkError::statement("loading stream states"))?;
    Ok(rows
        .iter()
        .map(|row| operators::stream_state::StreamState {
            tenant_id: row.get(0),
            stream_key: row.get(1),
            event_count: row.get(2),
            latest: operators::stream_state::LatestEvent {
                timestamp_utc: row.get(3),
                offset: row.get(4),
                partition: row.get(5),
                event_type: row.get(6),
                event_id: row.get(7),
                payload_json: row.get(8),
            },
        })
        .collect())
}
