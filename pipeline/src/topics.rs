//! Topic administration at start: create Sentinel's topics when missing, and learn partition counts.

use std::time::Duration;

use anyhow::{bail, Context};
use ingress::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

/// Creates each topic that does not exist yet; existing topics are left as they are.
pub async fn ensure_topics(
    kafka: &KafkaSettings,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config()
        .create()
        .context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, waiting up to `timeout` for it to appear.
pub fn partition_count(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .create()
        .context("creating a metadata client")?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        match metadata {
            Ok(metadata) => {
                if let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) {
                    if found.error().is_none() && !found.partitions().is_empty() {
                        return Ok(found.partitions().len() as i32);
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, topic, "metadata request failed"),
        }
        if std::time::Instant::now() >= deadline {
            bail!("topic {topic} has no partitions after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
