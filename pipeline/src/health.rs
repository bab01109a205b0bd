//! The `pipeline_health` view's maintainer: every few seconds, per raw-topic partition, the
//! committed position, the broker's high watermark, the lag in records and seconds, the record
//! rate, the dead letters so far and the share of records dead-lettered since the last sample;
//! and, in every process running workers, the partitions of the topics they read that the broker
//! has and its workers do not read (added to the topic after they started).

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

/// What a topic's partitions read hold until a worker of the process has started.
pub const NOT_STARTED: i32 = i32::MAX;

/// A topic the workers read, and the fewest of its partitions any worker of this process found
/// at its start ([`NOT_STARTED`] until one has).
pub struct WatchedTopic {
    /// The topic's name.
    pub topic: String,
    /// The fewest partitions a worker found.
    pub partitions_read: Arc<AtomicI32>,
}

/// Every `interval`, compares each watched topic's partitions in the broker's metadata with
/// those the workers of this process read, and reports those no worker reads
/// (`source_partitions_unread`, an error log). Runs in every process with workers: each reads
/// what it found at its own start. A metadata lookup that fails, or a topic the broker does not
/// describe cleanly, leaves that topic's last report as it is.
pub async fn watch_partitions(
    kafka: ingress::KafkaSettings,
    watched: Vec<WatchedTopic>,
    interval: Duration,
) {
    let consumer: BaseConsumer = match kafka
        .client_config()
        .set("group.id", "sentinel-partition-watch")
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(consumer) => consumer,
        Err(err) => {
            tracing::warn!(error = %err, "no broker client: partitions no worker reads go unreported");
            return;
        }
    };
    let consumer = Arc::new(consumer);
    let mut reported: Vec<Vec<i32>> = vec![Vec::new(); watched.len()];
    let mut tick = tokio::time::interval(interval);
    // Lookups of a broker that does not answer take longer than a short interval: the next
    // look comes an interval after the last one ends, not in a burst to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (watch, reported) in watched.iter().zip(&mut reported) {
            let read = watch.partitions_read.load(Ordering::Acquire);
            if read == NOT_STARTED {
                continue;
            }
            let (client, topic) = (Arc::clone(&consumer), watch.topic.clone());
            let described =
                tokio::task::spawn_blocking(move || described_partitions(&client, &topic))
                    .await
                    .ok()
                    .flatten();
            if let Some(described) = described {
                report_unread(&watch.topic, unread_partitions(read, &described), reported);
            }
        }
    }
}

/// The partitions the broker's metadata lists for `topic`; `None` when the metadata cannot be
/// read, or the broker does not describe the topic, describes it with an error, or with no
/// partition: nothing to tell from.
fn described_partitions(consumer: &BaseConsumer, topic: &str) -> Option<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(2))
        .ok()?;
    let described = metadata.topics().iter().find(|t| t.name() == topic)?;
    if described.error().is_some() {
        return None;
    }
    let partitions: Vec<i32> = described.partitions().iter().map(|p| p.id()).collect();
    (!partitions.is_empty()).then_some(partitions)
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
             so the records written there wait unprocessed until every Sentinel \
             process restarts (see the lag runbook)"
        );
    }
    *reported = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    /// The broker the tests run against (`KAFKA_BROKERS`, as `infra/dev up` starts it).
    fn test_broker() -> ingress::KafkaSettings {
        ingress::KafkaSettings {
            brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
            options: Vec::new(),
        }
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

    #[test]
    fn partitions_at_or_past_the_count_read_at_start_are_unread() {
        assert_eq!(unread_partitions(2, &[0, 1]), Vec::<i32>::new());
        assert_eq!(unread_partitions(2, &[3, 0, 2, 1]), vec![2, 3]);
    }

    #[test]
    fn the_unread_partitions_are_exported_and_remembered_until_they_change() {
        let topic = "health-test.events.raw.v1";
        let mut reported = Vec::new();
        report_unread(topic, unread_partitions(2, &[0, 1, 2, 3]), &mut reported);
        assert_eq!(reported, vec![2, 3]);
        assert_eq!(unread_gauge(topic), Some(2.0));
        // The same set again: still exported, remembered as it was.
        report_unread(topic, unread_partitions(2, &[0, 1, 2, 3]), &mut reported);
        assert_eq!(
            (reported.clone(), unread_gauge(topic)),
            (vec![2, 3], Some(2.0))
        );
        report_unread(topic, unread_partitions(4, &[0, 1, 2, 3]), &mut reported);
        assert!(reported.is_empty());
        assert_eq!(unread_gauge(topic), Some(0.0));
    }

    /// Against the real broker (tansu cannot add partitions to a topic, so the topic is created
    /// with 4, as a topic looks after 2 were added to it): its metadata lists the 4 partitions,
    /// 2 of which are past what workers that started with 2 read; a topic the broker does not
    /// have tells nothing, so it leaves the last report as it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_broker_metadata_tells_which_partitions_no_worker_reads() {
        let kafka = test_broker();
        let topic = format!("health-{}.events.raw.v1", uuid::Uuid::new_v4().simple());
        crate::topics::ensure_topics(&kafka, &[&topic], 4, 1)
            .await
            .expect("creating the topic on the broker of KAFKA_BROKERS (run infra/dev up)");
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", "sentinel-health-test")
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The broker may take a moment to describe a topic just created.
        let described = loop {
            if let Some(described) = described_partitions(&consumer, &topic) {
                break described;
            }
            assert!(
                Instant::now() < deadline,
                "the broker never described {topic}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut sorted = described.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        let mut reported = Vec::new();
        report_unread(&topic, unread_partitions(2, &described), &mut reported);
        assert_eq!(reported, vec![2, 3]);
        assert_eq!(unread_gauge(&topic), Some(2.0));

        let missing = format!("health-{}.absent.v1", uuid::Uuid::new_v4().simple());
        assert_eq!(described_partitions(&consumer, &missing), None);

        let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().unwrap();
        let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    }

    /// The watcher itself, against the real broker, over the two topics a process's workers
    /// read: each topic is compared with its own count; a topic no worker has started on yet,
    /// and one the broker does not have, are not reported, and do not keep the others from
    /// being reported. Those two come first in each look, so once the others are reported they
    /// have been looked at.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_reports_each_topic_against_its_own_partitions_read() {
        let kafka = test_broker();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let raw = format!("watch-{run}.events.raw.v1");
        let outcomes = format!("watch-{run}.gateway.outcomes.v1");
        let unstarted = format!("watch-{run}.unstarted.v1");
        let absent = format!("watch-{run}.absent.v1");
        crate::topics::ensure_topics(&kafka, &[&raw, &outcomes, &unstarted], 4, 1)
            .await
            .expect("creating the topics on the broker of KAFKA_BROKERS (run infra/dev up)");
        let watched = vec![
            WatchedTopic {
                topic: unstarted.clone(),
                partitions_read: Arc::new(AtomicI32::new(NOT_STARTED)),
            },
            WatchedTopic {
                topic: absent.clone(),
                partitions_read: Arc::new(AtomicI32::new(2)),
            },
            WatchedTopic {
                topic: raw.clone(),
                partitions_read: Arc::new(AtomicI32::new(3)),
            },
            WatchedTopic {
                topic: outcomes.clone(),
                partitions_read: Arc::new(AtomicI32::new(4)),
            },
        ];
        let watcher = tokio::spawn(watch_partitions(
            kafka.clone(),
            watched,
            Duration::from_millis(100),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while unread_gauge(&raw).is_none() || unread_gauge(&outcomes).is_none() {
            assert!(
                Instant::now() < deadline,
                "the watcher never reported both topics"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        watcher.abort();
        assert_eq!(unread_gauge(&raw), Some(1.0));
        assert_eq!(unread_gauge(&outcomes), Some(0.0));
        assert_eq!(unread_gauge(&unstarted), None);
        assert_eq!(unread_gauge(&absent), None);

        let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().unwrap();
        let _ = admin
            .delete_topics(&[&raw, &outcomes, &unstarted], &AdminOptions::new())
            .await;
    }
}
