//! Reads a request body under a byte limit; an over-limit body is read to its end and dropped
//! (within [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`]) before the 413 is sent, so that a client
//! still writing it reads the problem instead of a connection reset.
//!
//! Refusing an over-limit body without reading it (axum's `DefaultBodyLimit`) makes the server
//! close a connection that still has unread bytes in its receive buffer; the kernel then sends
//! a reset, and a client that had not finished writing gets `EPIPE` or `ECONNRESET` and never
//! sees the answer. Reading the rest first (a lingering close, as web servers do) keeps the
//! answer deliverable and the connection reusable. The bounds keep a client from holding the
//! connection open with an endless body: past them the answer is sent anyway. A client that
//! declared an over-limit length and waits for `100 Continue` has sent nothing: it is refused
//! at once, and never asked for the body. A body of a request refused before it is needed (by
//! authentication) is discarded the same way, never buffered.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use operators::error_text::error_chain;

use crate::problem::ApiError;

/// Most bytes of an over-limit body read and dropped before the 413 is sent.
pub const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Longest time spent reading and dropping an over-limit body before the 413 is sent.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than the limit (by its `Content-Length`, or by what was read).
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The connection failed while the body was read (the client went away, or sent a body
    /// that does not match its framing).
    #[error("request body could not be read: {0}")]
    Unreadable(String),
}

impl BodyError {
    /// Neither is retriable as sent: a body over the limit stays over it, and a broken body
    /// must be sent again whole.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::TooLarge { .. } => ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                err.to_string(),
            ),
            BodyError::Unreadable(_) => ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Request body could not be read",
                err.to_string(),
            ),
        }
    }
}

/// Reads `body` whole when it is at most `limit` bytes. A longer body is drained (see the
/// module doc) and refused with [`BodyError::TooLarge`].
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        // A client that asked to be told before it sends (`Expect: 100-continue`) has sent
        // nothing yet: refuse at once, so that it never sends the body at all.
        if !expects_continue(headers) {
            drain(body).await;
        }
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = body;
    let mut buffer = BytesMut::with_capacity(declared.map_or(0, |length| length as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Unreadable(error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buffer.len() + data.len() > limit {
            drain(body).await;
            return Err(BodyError::TooLarge { limit });
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("100-continue"))
}

/// Refuses `body` unread, for a request answered before its body is needed (one that failed
/// authentication): nothing of it is kept. A client waiting for `100 Continue` is never asked
/// for it; otherwise what it sends is read and dropped like an over-limit body's, so that it
/// reads the answer rather than a reset.
pub async fn discard(headers: &HeaderMap, body: Body) {
    if !expects_continue(headers) {
        drain(body).await;
    }
}

/// Reads and drops what is left of `body`, up to [`DRAIN_MAX_BYTES`] or [`DRAIN_MAX_TIME`],
/// whichever comes first; a read error ends it (the client is gone).
async fn drain(mut body: Body) {
    let read_to_end = async {
        let mut dropped = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                dropped += data.len() as u64;
                if dropped > DRAIN_MAX_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, read_to_end).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use axum::http::HeaderValue;
    use futures::stream;

    /// A body of `chunks` chunks of `size` bytes (endless when `None`), produced lazily, and
    /// how many bytes of it were produced so far.
    fn counted(chunks: Option<usize>, size: usize) -> (Body, Arc<AtomicU64>) {
        let produced = Arc::new(AtomicU64::new(0));
        let counter = produced.clone();
        let chunk = move || {
            counter.fetch_add(size as u64, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![b' '; size]))
        };
        let body = match chunks {
            Some(n) => Body::from_stream(stream::repeat_with(chunk).take(n)),
            None => Body::from_stream(stream::repeat_with(chunk)),
        };
        (body, produced)
    }

    use futures::StreamExt;

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = Body::from_stream(stream::iter(
            [b"{\"a\":".as_slice(), b"1}"]
                .map(|chunk| Ok::<_, std::io::Error>(Bytes::from_static(chunk))),
        ));
        let read = read_limited(&HeaderMap::new(), body, 7).await.unwrap();
        assert_eq!(&read[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_refused_after_draining_every_byte() {
        let (body, produced) = counted(Some(3), 5);
        let err = read_limited(&HeaderMap::new(), body, 8).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 8 }), "{err:?}");
        assert_eq!(
            produced.load(Ordering::SeqCst),
            15,
            "the whole body was read"
        );
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_after_draining_every_byte() {
        let (body, produced) = counted(Some(4), 1024);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
        let err = read_limited(&headers, body, 1000).await.unwrap_err();
        assert!(
            matches!(err, BodyError::TooLarge { limit: 1000 }),
            "{err:?}"
        );
        assert_eq!(
            produced.load(Ordering::SeqCst),
            4096,
            "the whole body was read"
        );
    }

    #[tokio::test]
    async fn a_client_waiting_for_100_continue_is_refused_before_it_sends() {
        let (body, produced) = counted(Some(4), 1024);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        let err = read_limited(&headers, body, 1000).await.unwrap_err();
        assert!(
            matches!(err, BodyError::TooLarge { limit: 1000 }),
            "{err:?}"
        );
        assert_eq!(produced.load(Ordering::SeqCst), 0, "nothing was asked for");
    }

    #[tokio::test]
    async fn draining_stops_at_its_byte_bound() {
        let (body, produced) = counted(None, 1 << 20);
        let err = read_limited(&HeaderMap::new(), body, 10).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err:?}");
        let drained = produced.load(Ordering::SeqCst);
        assert!(
            drained > DRAIN_MAX_BYTES && drained <= DRAIN_MAX_BYTES + 2 * (1 << 20),
            "drained {drained} bytes"
        );
    }

    #[tokio::test]
    async fn a_failing_body_is_unreadable() {
        let body = Body::from_stream(stream::iter(vec![
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer reset",
            )),
        ]));
        let err = read_limited(&HeaderMap::new(), body, 100)
            .await
            .unwrap_err();
        match err {
            BodyError::Unreadable(detail) => assert!(detail.contains("peer reset"), "{detail}"),
            other => panic!("expected Unreadable, got {other:?}"),
        }
    }
}
