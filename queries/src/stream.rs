//! `GET /v1/stream`: the tenant's processed events and dead letters as Server-Sent Events, each
//! sent only after its transaction committed, resumable from any message's `id` with no gap and
//! no duplicate (back-fill from PostgreSQL, then live from the hub).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ingress::{ApiError, Role};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::feed::{
    committed_position, feed_item, read_page, FeedItem, FeedKind, FeedPosition,
    DEAD_LETTER_MESSAGE, EVENT_MESSAGE,
};
use crate::pool::ReadError;
use crate::{telemetry, ServingState};

/// Filters and resume position of a subscription.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Only events (and dead letters) of this emitting service.
    pub source: Option<String>,
    /// Only this event type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Only this stream.
    #[serde(rename = "streamKey")]
    #[param(rename = "streamKey")]
    pub stream_key: Option<String>,
    /// Resume after this message id, for clients that cannot set `Last-Event-ID`.
    #[serde(rename = "lastEventId")]
    #[param(rename = "lastEventId")]
    pub last_event_id: Option<String>,
}

/// What one subscriber wants to see.
#[derive(Debug, Clone)]
struct Filter {
    tenant: String,
    source: Option<String>,
    event_type: Option<String>,
    stream_key: Option<String>,
}

impl Filter {
    fn admits(&self, item: &FeedItem) -> bool {
        let matches = |wanted: &Option<String>, actual: &Option<String>| {
            wanted.as_ref().is_none_or(|w| actual.as_ref() == Some(w))
        };
        match item.kind {
            FeedKind::Slo => true,
            FeedKind::Event | FeedKind::DeadLetter => {
                item.tenant_id.as_deref() == Some(self.tenant.as_str())
                    && matches(&self.source, &item.source)
                    && matches(&self.event_type, &item.event_type)
                    && matches(&self.stream_key, &item.stream_key)
            }
        }
    }
}

/// Messages buffered between a subscriber's task and its HTTP response.
const CLIENT_QUEUE: usize = 256;
/// Rows per back-fill query.
const BACKFILL_PAGE: i64 = 1_000;
/// How long a new subscriber waits for a hub that has not started broadcasting yet before it
/// is answered 503.
const FEED_START_PATIENCE: Duration = Duration::from_secs(5);
/// A subscriber whose queue stays full this long is evicted as lagged.
const SEND_PATIENCE: Duration = Duration::from_secs(10);

/// The live feed.
#[utoipa::path(get, path = "/v1/stream", tag = "serving",
    params(StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this message id (the `id:` of any message received)")),
    responses(
        (status = 200, description = "`text/event-stream`: messages named `event`, `dead_letter`, `slo` and, last, `lagged` or `token_expired` (the stream then ends); every one has a resumable `id`; a comment every 15 s keeps the connection alive", body = String, content_type = "text/event-stream"),
        (status = 400, description = "Malformed Last-Event-ID, or malformed parameters", body = ApiError, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read role", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL unavailable", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get_stream(
    State(state): State<ServingState>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let principal = match crate::authorize(&state.auth, &headers, Role::Read) {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let params = match params {
        Ok(Query(params)) => params,
        Err(err) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
                format!(
                    "the parameters are source, type, streamKey and lastEventId, each at most \
                     once: {}",
                    err.body_text()
                ),
            )
            .into_response()
        }
    };
    let resume_from = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("\u{fffd}").to_owned())
        .or(params.last_event_id.clone());
    let resume_from = match resume_from
        .map(|text| FeedPosition::parse(&text))
        .transpose()
    {
        Ok(position) => position,
        Err(detail) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-last-event-id",
                "Invalid Last-Event-ID",
                format!(
                "{detail}; send back the id: of a message this feed sent, or nothing to start live"
            ),
            )
            .into_response()
        }
    };
    let valid_until = principal.valid_until;
    let filter = Filter {
        tenant: principal.tenant,
        source: params.source,
        event_type: params.event_type,
        stream_key: params.stream_key,
    };
    if !state.feed.wait_started(FEED_START_PATIENCE).await {
        return crate::database_unavailable(
            "the live feed has not reached PostgreSQL yet (it is starting or reconnecting); \
             retry shortly",
        )
        .into_response();
    }
    // Subscribe before reading PostgreSQL: whatever commits after the read arrives live.
    let live = state.feed.subscribe();
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(err) => return unavailable(&ReadError::from(err)),
    };
    let position = match resume_from {
        Some(position) => position,
        None => match committed_position(&client, &state.feed.settings().raw_topic).await {
            Ok(position) => position,
            Err(err) => return unavailable(&ReadError::from(err)),
        },
    };
    drop(client);
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    tokio::spawn(serve_subscriber(
        state,
        filter,
        position,
        live,
        tx,
        valid_until,
    ));
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}

fn unavailable(err: &ReadError) -> Response {
    tracing::warn!(error = %err, "live feed unavailable");
    crate::database_unavailable("the feed's position could not be read; retry shortly")
        .into_response()
}

type Outbox = mpsc::Sender<Result<Event, Infallible>>;

/// Why a subscription ended.
enum End {
    /// The client went away.
    Gone,
    /// The client could not keep up.
    Lagged,
    /// The hub stopped.
    Closed,
    /// The subscriber's token expired.
    Expired,
}

/// Sends one message, keeping a slot free for the final `lagged`; a client that does not read
/// for [`SEND_PATIENCE`] is lagged.
async fn send(outbox: &Outbox, event: Event) -> Result<(), End> {
    match tokio::time::timeout(SEND_PATIENCE, outbox.reserve_many(2)).await {
        Ok(Ok(mut permits)) => {
            if let Some(permit) = permits.next() {
                permit.send(Ok(event));
            }
            Ok(())
        }
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Lagged),
    }
}

/// Puts `partition` of `position` back to where it was `before` the item just advanced past,
/// when that item was not sent: the `lagged` message's id must not count it, or a client
/// resuming from that id would never get it.
fn unsent_stays_ahead(
    position: &mut FeedPosition,
    partition: i32,
    before: Option<i64>,
    sent: &Result<(), End>,
) {
    if sent.is_err() {
        match before {
            Some(next) => position.0.insert(partition, next),
            None => position.0.remove(&partition),
        };
    }
}

fn message(item: &FeedItem, position: &FeedPosition) -> Event {
    Event::default()
        .id(position.to_string())
        .event(item.kind.name())
        .data(&*item.data)
}

async fn serve_subscriber(
    state: ServingState,
    filter: Filter,
    mut position: FeedPosition,
    mut live: broadcast::Receiver<std::sync::Arc<crate::feed::FeedBatch>>,
    outbox: Outbox,
    valid_until: u64,
) {
    let _subscribed = telemetry::Subscribed::new();
    let closed = state.feed.closed();
    let expires = token_expiry(valid_until);
    let serve = async {
        backfill(&state, &filter, &mut position, &outbox).await?;
        loop {
            // The token is checked between batches, where the position counts exactly what
            // was sent (receiving is cancel-safe; a send cut short would not be).
            let received = tokio::select! {
                received = live.recv() => received,
                () = tokio::time::sleep_until(expires) => return Err(End::Expired),
            };
            let batch = match received {
                Ok(batch) => batch,
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(End::Lagged),
                Err(broadcast::error::RecvError::Closed) => return Err(End::Closed),
            };
            for item in &batch.items {
                let before = position.0.get(&item.partition).copied();
                if item.kind != FeedKind::Slo {
                    if position.has_seen(item.partition, item.offset) {
                        continue;
                    }
                    position.advance(item.partition, item.offset + 1);
                }
                if filter.admits(item) {
                    let sent = send(&outbox, message(item, &position)).await;
                    unsent_stays_ahead(&mut position, item.partition, before, &sent);
                    sent?;
                }
            }
            for &(partition, next) in &batch.progress {
                position.advance(partition, next);
            }
        }
    };
    let end: Result<(), End> = tokio::select! {
        end = serve => end,
        () = closed => Err(End::Closed),
    };
    if let Err(End::Lagged) = end {
        telemetry::SubscriberEvicted.emit();
        let lagged = Event::default().id(position.to_string()).event("lagged").data(
            r#"{"detail":"this client fell too far behind the feed; reconnect with Last-Event-ID to resume"}"#,
        );
        // A slot is always free for this one (see `send`).
        let _ = outbox.try_send(Ok(lagged));
    }
    if let Err(End::Expired) = end {
        let expired = Event::default().id(position.to_string()).event("token_expired").data(
            r#"{"detail":"the token expired; reconnect with a valid token and Last-Event-ID to resume"}"#,
        );
        let _ = outbox.try_send(Ok(expired));
    }
}

/// When a token valid until `valid_until` (seconds since the epoch) stops being valid.
fn token_expiry(valid_until: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(valid_until).saturating_sub(now);
    tokio::time::Instant::now() + left.min(Duration::from_secs(10 * 365 * 86_400))
}

/// Sends everything stored after `position` that `filter` admits, page by page.
async fn backfill(
    state: &ServingState,
    filter: &Filter,
    position: &mut FeedPosition,
    outbox: &Outbox,
) -> Result<(), End> {
    let sql = format!(
        "WITH pos AS (SELECT s.partition AS p, COALESCE(v.o, 0) AS o FROM source_offsets s \
             LEFT JOIN UNNEST($2::int4[], $3::int8[]) AS v(p, o) ON v.p = s.partition \
             WHERE s.topic = $4) \
         SELECT 0, {EVENT_MESSAGE} FROM events e JOIN pos ON e.source_partition = pos.p \
             AND e.source_offset >= pos.o \
             WHERE e.tenant_id = $1 AND ($5::text IS NULL OR e.source = $5) \
             AND ($6::text IS NULL OR e.type = $6) AND ($7::text IS NULL OR e.stream_key = $7) \
         UNION ALL \
         SELECT 1, {DEAD_LETTER_MESSAGE} FROM dead_letter d JOIN pos ON d.source_partition = pos.p \
             AND d.source_offset >= pos.o \
             WHERE d.source_topic = $4 AND d.tenant_id = $1 AND ($5::text IS NULL OR d.source = $5) \
             AND ($6::text IS NULL OR d.event_type = $6) \
             AND ($7::text IS NULL OR d.stream_key = $7) \
         ORDER BY 2, 3 LIMIT $8"
    );
    let raw_topic = &state.feed.settings().raw_topic;
    loop {
        let page = async {
            let mut client = state.pool.get().await?;
            // One snapshot for the page and the committed positions: when the page is the last,
            // every row below those positions that the filter admits was in it, so the position
            // moves to them, past every row the filter left out. Else a subscriber filtering
            // for a rare kind would scan the same rows again at each resume.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let partitions: Vec<i32> = position.0.keys().copied().collect();
            let offsets: Vec<i64> = position.0.values().copied().collect();
            let (rows, complete) = read_page(
                &*tx,
                &sql,
                &[
                    &filter.tenant,
                    &partitions,
                    &offsets,
                    raw_topic,
                    &filter.source,
                    &filter.event_type,
                    &filter.stream_key,
                    &BACKFILL_PAGE,
                ],
                BACKFILL_PAGE,
            )
            .await?;
            let committed = if complete {
                tx.query(
                    "SELECT partition, next_offset FROM source_offsets WHERE topic = $1",
                    &[raw_topic],
                )
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect()
            } else {
                Vec::new()
            };
            tx.commit().await?;
            Ok::<_, ReadError>((rows, complete, committed))
        }
        .await;
        let (rows, complete, committed): (_, _, Vec<(i32, i64)>) = match page {
            Ok(page) => page,
            Err(err) => {
                // The client reconnects with its last id; nothing is skipped.
                tracing::warn!(error = %err, "live feed back-fill failed; closing the stream");
                return Err(End::Closed);
            }
        };
        for row in &rows {
            let item = feed_item(row);
            let before = position.0.get(&item.partition).copied();
            position.advance(item.partition, item.offset + 1);
            let sent = send(outbox, message(&item, position)).await;
            unsent_stays_ahead(position, item.partition, before, &sent);
            sent?;
        }
        if complete {
            for (partition, next_offset) in committed {
                position.advance(partition, next_offset);
            }
            return Ok(());
        }
    }
}
