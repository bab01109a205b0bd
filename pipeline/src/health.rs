//! The `pipeline_health` view's maintainer: every few seconds, per raw-topic partition, the
//! committed position, the broker's high watermark, the lag in records and seconds, the record
//! rate, the dead letters so far and the share of records dead-lettered since the last sample;
//! and the partitions the broker has that no worker reads (added after the workers started).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
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
    partitions_read: Arc<AtomicI32>,
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
    let mut unread: Vec<i32> = Vec::new();
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = sinks::postgres::connect(&database_url).await.ok();
        }
        let Some(db) = &client else { continue };
        let read = partitions_read.load(Ordering::Acquire);
        let refreshed = refresh(
            db,
            consumer.clone(),
            &raw_topic,
            read,
            &mut unread,
            &mut previous,
        );
        if let Err(err) = refreshed.await {
            tracing::warn!(error = format!("{err:#}"), "pipeline_health not refreshed");
        }
    }
}

async fn refresh(
    db: &Client,
    consumer: Option<std::sync::Arc<BaseConsumer>>,
    raw_topic: &str,
    partitions_read: i32,
    unread: &mut Vec<i32>,
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
    let (described, watermarks): (Option<Vec<i32>>, BTreeMap<i32, i64>) = match consumer {
        Some(consumer) => {
            let topic = raw_topic.to_owned();
            tokio::task::spawn_blocking(move || {
                // Every partition the broker knows, read or not yet.
                let described: Option<Vec<i32>> = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .ok()
                    .map(|metadata| {
                        metadata
                            .topics()
                            .iter()
                            .filter(|t| t.name() == topic)
                            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                            .collect()
                    });
                let mut partitions: std::collections::BTreeSet<i32> =
                    committed.into_iter().collect();
                partitions.extend(described.iter().flatten().copied());
                let watermarks = partitions
                    .into_iter()
                    .filter_map(|p| {
                        consumer
                            .fetch_watermarks(&topic, p, Duration::from_secs(2))
                            .ok()
                            .map(|(_, high)| (p, high))
                    })
                    .collect();
                (described, watermarks)
            })
            .await
            .context("fetching high watermarks")?
        }
        None => (None, BTreeMap::new()),
    };
    if let Some(described) = described.filter(|_| partitions_read > 0) {
        report_unread(
            raw_topic,
            unread_partitions(partitions_read, &described),
            unread,
        );
    }
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

/// The partitions of `described` (the broker's, by its metadata) at or past `read`, the count
/// the workers found when they started: no worker reads them.
fn unread_partitions(read: i32, described: &[i32]) -> Vec<i32> {
    let mut unread: Vec<i32> = described.iter().copied().filter(|&p| p >= read).collect();
    unread.sort_unstable();
    unread.dedup();
    unread
}

/// Sets `source_partitions_unread`, and logs once each time the unread partitions change.
fn report_unread(topic: &str, now: Vec<i32>, reported: &mut Vec<i32>) {
    sinks::telemetry::PartitionsUnread {
        topic,
        partitions: now.len(),
    }
    .emit();
    if now == *reported {
        return;
    }
    if now.is_empty() {
        tracing::info!(topic, "every partition of the topic is read again");
    } else {
        tracing::error!(
            topic,
            partitions = ?now,
            "partitions were added to the topic after the workers started: no worker reads them, \
             so the events the gateway writes there wait unprocessed until every Sentinel \
             process restarts (see the lag runbook)"
        );
    }
    *reported = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, migrated database on the PostgreSQL of `DATABASE_URL` (the one `infra/dev`
    /// starts); its URL.
    async fn fresh_database(name: &str) -> String {
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sentinel".to_owned());
        let server = &base[..base.rfind('/').expect("a database URL")];
        let database = format!("health_{name}_{}", std::process::id());
        let admin = sinks::postgres::connect(&format!("{server}/postgres"))
            .await
            .expect("PostgreSQL of DATABASE_URL (run infra/dev up)");
        for statement in [
            format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            format!("CREATE DATABASE {database}"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        let url = format!("{server}/{database}");
        let mut client = sinks::postgres::connect(&url).await.unwrap();
        sinks::postgres::migrate(&mut client).await.unwrap();
        url
    }

    /// What `source_partitions_unread` holds for `topic`, if it is exported.
    fn unread_gauge(topic: &str) -> Option<f64> {
        prometheus::gather()
            .into_iter()
            .find(|family| family.name() == "source_partitions_unread")
            .and_then(|family| {
                family
                    .get_metric()
                    .iter()
                    .find(|m| m.get_label().iter().any(|l| l.value() == topic))
                    .map(|m| m.get_gauge().get_value())
            })
    }

    /// The health maintainer reads the broker's metadata: partitions past those the workers
    /// started with (here 2 of the topic's 4, as after partitions were added to a running
    /// topic) are exported as unread, and the lag of each is in `pipeline_health`. Against the
    /// real broker (tansu cannot add partitions to a topic, so the topic is created with 4) and
    /// the real database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_the_broker_has_past_those_read_are_reported_unread() {
        let kafka = ingress::KafkaSettings {
            brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
            options: Vec::new(),
        };
        let topic = format!("health-{}.events.raw.v1", uuid::Uuid::new_v4().simple());
        crate::topics::ensure_topics(&kafka, &[&topic], 4, 1)
            .await
            .expect("creating the topic on the broker of KAFKA_BROKERS (run infra/dev up)");
        let url = fresh_database("unread").await;
        let db = sinks::postgres::connect(&url).await.unwrap();
        let consumer: Arc<BaseConsumer> = Arc::new(
            kafka
                .client_config()
                .set("group.id", "sentinel-health-test")
                .create()
                .unwrap(),
        );
        let (mut unread, mut previous) = (Vec::new(), BTreeMap::new());
        let deadline = Instant::now() + Duration::from_secs(30);
        // The broker may take a moment to describe a topic just created.
        while unread.is_empty() {
            refresh(
                &db,
                Some(Arc::clone(&consumer)),
                &topic,
                2,
                &mut unread,
                &mut previous,
            )
            .await
            .expect("a refresh");
            assert!(Instant::now() < deadline, "no unread partition reported");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(unread, vec![2, 3]);
        assert_eq!(unread_gauge(&topic), Some(2.0));
        let rows = db
            .query(
                "SELECT partition FROM pipeline_health WHERE topic = $1 ORDER BY partition",
                &[&topic],
            )
            .await
            .unwrap();
        let partitions: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(partitions, vec![0, 1, 2, 3]);

        // Workers started with all four read them all: nothing unread.
        refresh(&db, Some(consumer), &topic, 4, &mut unread, &mut previous)
            .await
            .unwrap();
        assert!(unread.is_empty());
        assert_eq!(unread_gauge(&topic), Some(0.0));
        drop(db);
        let (server, database) = url.rsplit_once('/').expect("a database URL");
        sinks::postgres::connect(&format!("{server}/postgres"))
            .await
            .unwrap()
            .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
            .await
            .unwrap();
    }

    #[test]
    fn partitions_at_or_past_the_count_read_at_start_are_unread() {
        assert_eq!(unread_partitions(2, &[0, 1]), Vec::<i32>::new());
        assert_eq!(unread_partitions(2, &[3, 0, 2, 1]), vec![2, 3]);
        // The broker's metadata lists no partition (a topic it does not know): nothing unread.
        assert_eq!(unread_partitions(2, &[]), Vec::<i32>::new());
    }

    #[test]
    fn the_unread_count_is_exported_and_remembered_until_it_changes() {
        let topic = "health-test.events.raw.v1";
        let gauge = || unread_gauge(topic);
        let mut reported = Vec::new();
        report_unread(topic, unread_partitions(2, &[0, 1, 2, 3]), &mut reported);
        assert_eq!(reported, vec![2, 3]);
        assert_eq!(gauge(), Some(2.0));
        report_unread(topic, unread_partitions(4, &[0, 1, 2, 3]), &mut reported);
        assert!(reported.is_empty());
        assert_eq!(gauge(), Some(0.0));
    }
}
