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
/// Header present when the original bytes were too large for the topic and left out: its value
/// is their size; the dead letter's row in PostgreSQL (`dead_letters`) keeps them whole.
pub const ORIGINAL_OMITTED_HEADER: &str = "sentinel-dlq-original-omitted-bytes";

/// Longest message header, in bytes: a message quoting a client's idempotency key or a refused
/// value is cut (on a character boundary) rather than made larger than the topic takes.
pub const MAX_MESSAGE_HEADER_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

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
                    (
                        MESSAGE_HEADER,
                        cut(&dead.message, MAX_MESSAGE_HEADER_BYTES).as_bytes(),
                    ),
                    (SOURCE_HEADER, source.as_bytes()),
                ];
                if let Some(trace) = &dead.trace_id {
                    headers.push((TRACE_HEADER, trace.as_bytes()));
                }
                let mut sent = self
                    .producer
                    .publish_with_headers(&self.topic, &key, &dead.original, &headers)
                    .await;
                // The record is larger than the topic takes (the message is bounded; the
                // original and its key, from any producer, are not): refusing it again on every
                // retry would stop every commit, so the record goes without the original, keyed
                // by its source, and says so.
                if sent.as_ref().is_err_and(|err| err.is_too_large()) {
                    let size = dead.original.len().to_string();
                    headers.push((ORIGINAL_OMITTED_HEADER, size.as_bytes()));
                    tracing::warn!(
                        partition = dead.partition,
                        offset = dead.offset,
                        bytes = dead.original.len(),
                        key_bytes = dead.key.as_ref().map_or(0, |key| key.len()),
                        "a dead letter is too large for the dead-letter topic; its record goes \
                         without the original bytes, keyed by its source (the dead_letters row \
                         keeps them)"
                    );
                    sent = self
                        .producer
                        .publish_with_headers(&self.topic, &source, &[], &headers)
                        .await;
                }
                // Even that is too large: the topic's limit is below a few kilobytes. The row
                // in PostgreSQL is the dead letter; the topic does without it.
                if sent.as_ref().is_err_and(|err| err.is_too_large()) {
                    tracing::error!(
                        partition = dead.partition,
                        offset = dead.offset,
                        "a dead letter is not published to the dead-letter topic at all: even \
                         without its original bytes it is larger than the topic takes"
                    );
                    return Ok(());
                }
                sent.map(|_| ())
                    .map_err(|err| operators::error_text::error_chain(&err))
            });
            join_all(sends)
                .await
                .into_iter()
                .collect::<Result<Vec<()>, String>>()?;
            Ok(())
        })
    }
}
