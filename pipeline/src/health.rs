//! The `pipeline_health` view's maintainer: every few seconds, per raw-topic partition, the
//! committed position, the broker's high watermark, the lag in records and seconds, the record
//! rate, the dead letters so far and the share of records dead-lettered since the last sample.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_postgres::Client;

/// One partition's previous sample, for rates.
struct Previous {
    at: Instant,
    next_offset: i64,
    dlq_total: i64,
}

/// Refreshes `pipeline_health` every `interval` until the process ends; failures are logged
/// and retried at the next tick (health must never stop the pipeline).
pub async fn maintain(
    database_url: String,
    kafka: ingress::KafkaSettings,
    raw_topic: String,
    interval: Duration,
) {
    let consumer: Option<BaseConsumer> = kafka
        .client_config()
        .set("group.id", "sentinel-health")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|err| tracing::warn!(error = %err, "pipeline_health: no broker client; lag in records unknown"))
        .ok();
    let consumer = consumer.map(std::sync::Arc::new);
    let mut previous: BTreeMap<i32, Previous> = BTreeMap::new();
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = sinks::postgres::connect(&database_url).await.ok();
        }
        let Some(db) = &client else { continue };
        if let Err(err) = refresh(db, consumer.clone(), &raw_topic, &mut previous).await {
            tracing::warn!(error = format!("{err:#}"), "pipeline_health not refreshed");
        }
    }
}

async fn refresh(
    db: &Client,
    consumer: Option<std::sync::Arc<BaseConsumer>>,
    raw_topic: &str,
    previous: &mut BTreeMap<i32, Previous>,
) -> anyhow::Result<()> {
    let rows = db
        .query(
            "SELECT s.partition, s.next_offset, \
               (SELECT count(*) FROM dead_letter d WHERE d.source_topic = s.topic \
                  AND d.source_partition = s.partition), \
               (SELECT EXTRACT(EPOCH FROM now() - e.received_utc)::float8 FROM events e \
                  WHERE e.source_partition = s.partition AND e.source_offset < s.next_offset \
                  ORDER BY e.source_offset DESC LIMIT 1) \
             FROM source_offsets s WHERE s.topic = $1",
            &[&raw_topic],
        )
        .await
        .context("reading committed positions")?;
    let committed: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let watermarks: BTreeMap<i32, i64> = match consumer {
        Some(consumer) => {
            let topic = raw_topic.to_owned();
            tokio::task::spawn_blocking(move || {
                // Every partition the broker knows, read or not yet.
                let mut partitions: std::collections::BTreeSet<i32> =
                    committed.into_iter().collect();
                if let Ok(metadata) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(2))
                {
                    for described in metadata.topics().iter().filter(|t| t.name() == topic) {
                        partitions.extend(described.partitions().iter().map(|p| p.id()));
                    }
                }
                partitions
                    .into_iter()
                    .filter_map(|p| {
                        consumer
                            .fetch_watermarks(&topic, p, Duration::from_secs(2))
                            .ok()
                            .map(|(_, high)| (p, high))
                    })
                    .collect()
            })
            .await
            .context("fetching high watermarks")?
        }
        None => BTreeMap::new(),
    };
    let now = Instant::now();
    let mut samples: BTreeMap<i32, (i64, i64, Option<f64>)> = rows
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3))))
        .collect();
    for partition in watermarks.keys() {
        samples.entry(*partition).or_insert((0, 0, None));
    }
    for (partition, (next_offset, dlq_total, last_age)) in samples {
        let high_watermark = watermarks.get(&partition).copied();
        let lag_records = high_watermark.map(|high| (high - next_offset).max(0));
        // Behind means the last committed record is as old as the lag; caught up means none.
        let lag_seconds = match lag_records {
            Some(0) => Some(0.0),
            _ => last_age.map(|age| age.max(0.0)),
        };
        let (rate, error_rate) = match previous.get(&partition) {
            Some(before) => {
                let seconds = now.duration_since(before.at).as_secs_f64().max(1e-3);
                let records = (next_offset - before.next_offset).max(0);
                let dead = (dlq_total - before.dlq_total).max(0);
                let error_rate = if records > 0 {
                    dead as f64 / records as f64
                } else {
                    0.0
                };
                (records as f64 / seconds, error_rate)
            }
            None => (0.0, 0.0),
        };
        previous.insert(
            partition,
            Previous {
                at: now,
                next_offset,
                dlq_total,
            },
        );
        db.execute(
            "INSERT INTO pipeline_health (topic, partition, next_offset, high_watermark, \
               lag_records, lag_seconds, events_per_second, dlq_total, error_rate, updated_utc) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now()) \
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, \
               high_watermark = EXCLUDED.high_watermark, lag_records = EXCLUDED.lag_records, \
               lag_seconds = EXCLUDED.lag_seconds, events_per_second = EXCLUDED.events_per_second, \
               dlq_total = EXCLUDED.dlq_total, error_rate = EXCLUDED.error_rate, \
               updated_utc = EXCLUDED.updated_utc",
            &[
                &raw_topic,
                &partition,
                &next_offset,
                &high_watermark,
                &lag_records,
                &lag_seconds,
                &rate,
                &dlq_total,
                &error_rate,
            ],
        )
        .await
        .context("upserting pipeline_health")?;
    }
    Ok(())
}
