//! Freshness as a reader sees it: each event's arrival on Sentinel's live feed
//! (`GET /v1/stream`, one subscription per tenant of the run), less its receive time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Deserialize;

/// The one field of a feed event the watch reads.
#[derive(Deserialize)]
struct FeedEvent {
    #[serde(rename = "receivedUtc")]
    received_utc: DateTime<Utc>,
}

/// What the subscriptions have seen so far.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
    /// A subscription ended before the watch did: the server closed it (`lagged`, shutdown) or
    /// it sent what the watch could not read.
    broken: AtomicBool,
}

/// Live-feed subscriptions of a run's tenants, recording the freshness of every event they
/// deliver.
pub struct FeedWatch {
    seen: Arc<Seen>,
    /// Microseconds from receive time to arrival on the feed.
    freshness: Arc<Mutex<Histogram<u64>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl FeedWatch {
    /// Subscribes to the feed of every tenant, one read token each; `Ok(None)` when `url` serves
    /// no feed (anything but `200 text/event-stream`), so that freshness falls back to the rows'
    /// `processed_utc`. Returns once every subscription is open: events the run sends later
    /// are all delivered to it.
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        read_tokens: &[String],
    ) -> anyhow::Result<Option<Self>> {
        let seen = Arc::new(Seen::default());
        let freshness = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
            1,
            3_600_000_000,
            3,
        )?));
        let mut readers: Vec<tokio::task::JoinHandle<()>> = Vec::with_capacity(read_tokens.len());
        for token in read_tokens {
            let response = client
                .get(format!("{url}/v1/stream"))
                .bearer_auth(token)
                .send()
                .await
                .context("opening the live feed")?;
            let is_feed = response.status() == reqwest::StatusCode::OK
                && response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
            if !is_feed {
                for reader in &readers {
                    reader.abort();
                }
                return Ok(None);
            }
            let (seen, freshness) = (Arc::clone(&seen), Arc::clone(&freshness));
            readers.push(tokio::spawn(read(response, seen, freshness)));
        }
        Ok(Some(Self {
            seen,
            freshness,
            readers,
        }))
    }

    /// Waits until the feed delivered `expected` events, a subscription broke, or `timeout`
    /// passed; true when every expected event arrived.
    pub async fn wait_for(&self, expected: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.seen.events.load(Ordering::Relaxed);
            if events >= expected {
                return true;
            }
            if self.seen.broken.load(Ordering::Relaxed) || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Events the feed delivered so far.
    pub fn events_seen(&self) -> u64 {
        self.seen.events.load(Ordering::Relaxed)
    }

    /// Closes the subscriptions; the freshness of what they delivered, in microseconds.
    pub fn finish(self) -> Histogram<u64> {
        for reader in &self.readers {
            reader.abort();
        }
        let histogram = self.freshness.lock().expect("freshness histogram");
        histogram.clone()
    }
}

async fn read(
    mut response: reqwest::Response,
    seen: Arc<Seen>,
    freshness: Arc<Mutex<Histogram<u64>>>,
) {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => break,
        };
        // Every message completed by this chunk became visible now.
        let arrived = Utc::now();
        buffer.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(end) = find(&buffer[consumed..], b"\n\n") {
            let message = &buffer[consumed..consumed + end];
            consumed += end + 2;
            match parse(message) {
                Message::Event(received) => {
                    let micros = (arrived - received).num_microseconds().unwrap_or(i64::MAX);
                    freshness
                        .lock()
                        .expect("freshness histogram")
                        .saturating_record(micros.max(1) as u64);
                    seen.events.fetch_add(1, Ordering::Relaxed);
                }
                Message::Other => {}
                Message::Closing | Message::Unreadable => {
                    seen.broken.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        buffer.drain(..consumed);
    }
    seen.broken.store(true, Ordering::Relaxed);
}

/// One message of the feed, as the watch needs it.
#[derive(Debug, PartialEq)]
enum Message {
    /// A stored event, with its receive time.
    Event(DateTime<Utc>),
    /// The server's last message before it closes a subscriber that fell behind.
    Closing,
    /// A dead letter, an SLO window, a comment.
    Other,
    /// An event whose data the watch cannot read.
    Unreadable,
}

fn parse(message: &[u8]) -> Message {
    let mut event = &b"message"[..];
    let mut data: &[u8] = &[];
    for line in message.split(|&byte| byte == b'\n') {
        if let Some(value) = line.strip_prefix(b"event:") {
            event = value.trim_ascii_start();
        } else if let Some(value) = line.strip_prefix(b"data:") {
            data = value.trim_ascii_start();
        }
    }
    match event {
        b"event" => match serde_json::from_slice::<FeedEvent>(data) {
            Ok(feed_event) => Message::Event(feed_event.received_utc),
            Err(_) => Message::Unreadable,
        },
        b"lagged" => Message::Closing,
        _ => Message::Other,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_give_their_receive_time_and_lagged_closes() {
        let event = b"id: v1:0=5\nevent: event\ndata: {\"eventId\":\"e\",\"payload\":{\"receivedUtc\":1},\"receivedUtc\":\"2026-11-25T10:00:00.250+00:00\"}";
        let received = "2026-11-25T10:00:00.250Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse(event), Message::Event(received));
        assert_eq!(
            parse(b"id: v1:0=5\nevent: lagged\ndata: {}"),
            Message::Closing
        );
        assert_eq!(
            parse(b"event: slo\ndata: {\"windowStartUtc\":\"x\"}"),
            Message::Other
        );
        assert_eq!(parse(b": keep-alive"), Message::Other);
        assert_eq!(
            parse(b"event: event\ndata: {\"eventId\":\"e\"}"),
            Message::Unreadable
        );
    }

    #[test]
    fn messages_end_at_a_blank_line() {
        assert_eq!(find(b"a\nb\n\nc", b"\n\n"), Some(3));
        assert_eq!(find(b"a\nb\n", b"\n\n"), None);
    }
}
