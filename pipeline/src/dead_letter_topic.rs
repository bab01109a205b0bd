//! The dead-letter topic: every dead letter is also produced to `<prefix>events.dlq.v1`, the
//! original bytes as the value and the reason in headers (the Kafka Connect convention), before
//! its batch commits — so each dead letter reaches the topic at least once.

use futures::future::{join_all, BoxFuture};
use ingress::EventProducer;
use operators::record::DeadLetter;
use sinks::postgres::DeadLetterPublisher;

/// Header with the reason code.
pub const REASON_HEADER: &str = "sentinel-dlq-reason";
/// Header with the human-readable message.
pub const MESSAGE_HEADER: &str = "sentinel-dlq-message";
/// Header with `topic/partition/offset` of the original record.
pub const SOURCE_HEADER: &str = "sentinel-dlq-source";
/// Header with the trace id, when the original had one.
pub const TRACE_HEADER: &str = "sentinel-trace-id";

/// Publishes dead letters to the dead-letter topic.
pub struct DeadLetterTopic {
    producer: EventProducer,
    topic: String,
}

impl DeadLetterTopic {
    /// Publishes to `topic` with `producer`.
    pub fn new(producer: EventProducer, topic: String) -> Self {
        Self { producer, topic }
    }
}

impl DeadLetterPublisher for DeadLetterTopic {
    fn publish<'a>(
        &'a self,
        source_topic: &'a str,
        dead_letters: &'a [DeadLetter],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let sends = dead_letters.iter().map(|dead| async move {
                let source = format!("{source_topic}/{}/{}", dead.partition, dead.offset);
                let key = dead
                    .key
                    .as_deref()
                    .and_then(|key| std::str::from_utf8(key).ok())
                    .unwrap_or(&source)
                    .to_owned();
                let mut headers: Vec<(&str, &[u8])> = vec![
                    (REASON_HEADER, dead.reason.code().as_bytes()),
                    (MESSAGE_HEADER, dead.message.as_bytes()),
                    (SOURCE_HEADER, source.as_bytes()),
                ];
                if let Some(trace) = &dead.trace_id {
                    headers.push((TRACE_HEADER, trace.as_bytes()));
                }
                self.producer
                    .publish_with_headers(&self.topic, &key, &dead.original, &headers)
                    .await
                    .map(|_| ())
                    .map_err(|err| {
                        let cause = std::error::Error::source(&err)
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default();
                        format!("{err}{cause}")
                    })
            });
            join_all(sends)
                .await
                .into_iter()
                .collect::<Result<Vec<()>, String>>()?;
            Ok(())
        })
    }
}
