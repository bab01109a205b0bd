//! Broker connection settings, shared by every Sentinel role, and the producer that answers
//! only once the broker has acknowledged a record (acks=all, idempotent).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use operators::headers::RecordHeaders;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// How to reach the Kafka-protocol cluster. Nothing here is specific to one broker product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Extra librdkafka properties (security.protocol, sasl.*, ssl.*, …), applied last.
    pub options: Vec<(String, String)>,
}

impl KafkaSettings {
    /// A librdkafka configuration with the brokers and the extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }
}

/// Why a record could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker is unreachable, busy, or did not acknowledge in time: retry later.
    #[error("the broker did not acknowledge the record")]
    Unavailable(#[source] KafkaError),
    /// The broker refused the record itself (too large, not authorised, invalid).
    #[error("the broker refused the record")]
    Rejected(#[source] KafkaError),
    /// The producer could not be created from its configuration.
    #[error("invalid producer configuration")]
    Config(#[source] KafkaError),
}

impl PublishError {
    /// Whether retrying the same record later can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether the record was too large for the broker.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::Rejected(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge))
    }

    fn classify(err: KafkaError) -> Self {
        use RDKafkaErrorCode::*;
        match err.rdkafka_error_code() {
            Some(
                MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidTopic
                | InvalidRequiredAcks
                | TopicAuthorizationFailed
                | UnsupportedVersion
                | InvalidArgument,
            ) => Self::Rejected(err),
            _ => Self::Unavailable(err),
        }
    }
}

/// Errors after which an idempotent producer instance can never produce again.
fn breaks_the_producer(err: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        err.rdkafka_error_code(),
        Some(
            ProducerFenced
                | InvalidProducerEpoch
                | OutOfOrderSequenceNumber
                | UnknownProducerId
                | InvalidProducerIdMapping
                | Fatal
        )
    )
}

/// Producer tuning that is Sentinel's to choose; security and the rest come from [`KafkaSettings`].
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// How long a record may wait in the client before it counts as failed (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How long the client may hold records to build batches (`linger.ms`).
    pub linger: Duration,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            delivery_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(5),
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledged {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The gateway's producer: idempotent, acks=all; `publish` resolves on the broker's ack.
///
/// An idempotent producer that hits a fatal error (e.g. fenced after a delivery timeout) can
/// never produce again; the gateway then replaces it with a new instance, so one outage does not
/// leave the gateway answering 503 forever.
#[derive(Clone)]
pub struct EventProducer {
    current: Arc<RwLock<(u64, FutureProducer)>>,
    config: ClientConfig,
    delivery_timeout: Duration,
}

impl EventProducer {
    /// Creates the producer (connections are opened lazily by librdkafka).
    pub fn new(kafka: &KafkaSettings, settings: &ProducerSettings) -> Result<Self, PublishError> {
        let mut config = kafka.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                settings.delivery_timeout.as_millis().to_string(),
            );
        // Sentinel's defaults above; the operator's explicit options win, save those the
        // guarantees rest on, which the configuration refuses to take.
        for (key, value) in &kafka.options {
            config.set(key, value);
        }
        let producer: FutureProducer = config.create().map_err(PublishError::Config)?;
        Ok(Self {
            current: Arc::new(RwLock::new((0, producer))),
            config,
            delivery_timeout: settings.delivery_timeout,
        })
    }

    /// The producer instance in use (and its generation), replaced first if it failed fatally.
    fn producer(&self) -> (u64, FutureProducer) {
        let (generation, current) = self.current.read().expect("producer lock").clone();
        if let Some((code, reason)) = current.client().fatal_error() {
            tracing::error!(?code, reason, "producer failed fatally");
            self.replace(generation);
            return self.current.read().expect("producer lock").clone();
        }
        (generation, current)
    }

    /// Replaces the producer of `generation` with a new instance (once, however many requests
    /// saw it fail).
    fn replace(&self, generation: u64) {
        let mut slot = self.current.write().expect("producer lock");
        if slot.0 != generation {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(
                    generation = generation + 1,
                    "producer replaced with a new instance"
                );
                *slot = (generation + 1, fresh);
            }
            Err(err) => tracing::error!(error = %err, "the producer cannot be recreated"),
        }
    }

    /// Produces one record and waits for the broker's acknowledgement.
    pub async fn publish(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        headers: &RecordHeaders,
    ) -> Result<Acknowledged, PublishError> {
        let pairs = headers.to_pairs();
        let pairs: Vec<(&str, &[u8])> = pairs
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        self.publish_with_headers(topic, key, value, &pairs).await
    }

    /// Produces one record with arbitrary headers and waits for the broker's acknowledgement.
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Acknowledged, PublishError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, header_value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*header_value),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(value)
            .headers(owned);
        let (generation, producer) = self.producer();
        let started = std::time::Instant::now();
        let outcome = match producer.send(record, self.delivery_timeout).await {
            Ok(delivery) => Ok(Acknowledged {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((err, _message)) => {
                if breaks_the_producer(&err) {
                    self.replace(generation);
                }
                Err(PublishError::classify(err))
            }
        };
        crate::telemetry::RecordProduced {
            duration: started.elapsed(),
            error: match &outcome {
                Ok(_) => None,
                Err(err) if err.is_retriable() => Some("unavailable"),
                Err(_) => Some("rejected"),
            },
        }
        .emit();
        outcome
    }

    /// Whether the cluster answers a metadata request for `topic` within `timeout`.
    pub async fn check_broker(&self, topic: &str, timeout: Duration) -> Result<(), PublishError> {
        let (_, producer) = self.producer();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
                .map_err(PublishError::Unavailable)
        })
        .await
        .unwrap_or_else(|join| {
            Err(PublishError::Unavailable(KafkaError::Canceled)).inspect_err(|_| {
                tracing::error!(error = %join, "broker check task failed");
            })
        })
    }

    /// Waits up to `timeout` for records still in flight to be acknowledged.
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.producer().1.flush(timeout) {
            tracing::warn!(error = %err, "records still unacknowledged at shutdown");
        }
    }
}
