//! The live feed's hub: hears every commit of the dataflow (PostgreSQL `LISTEN`), reads what it
//! made durable once, and fans it out to every subscriber through one bounded broadcast ring.
//!
//! Positions: the feed is ordered per partition of the raw topic by offset, so a resumable
//! position is the vector of next offsets per partition ([`FeedPosition`]). Events and dead
//! letters share that space (both come from raw-topic records); de-duplicated repeats leave gaps
//! in it, which is fine: a position says "everything below this offset has been seen".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use operators::trace_context::TraceContext;

use crate::pool::ReadError;
use crate::telemetry;

/// The `application_name` of the feed's LISTEN connection.
const FEED_APPLICATION: &str = "sentinel-feed";

/// The SSE event name of each kind of feed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// A stored event.
    Event,
    /// A dead letter.
    DeadLetter,
    /// An SLO window's new counts (global, not tenant data).
    Slo,
}

impl FeedKind {
    /// The `event:` field of the SSE message.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::DeadLetter => "dead_letter",
            Self::Slo => "slo",
        }
    }
}

/// One message of the feed, its JSON rendered once for every subscriber.
#[derive(Debug, Clone)]
pub struct FeedItem {
    /// What it is.
    pub kind: FeedKind,
    /// Raw-topic partition of the record (unused for SLO messages).
    pub partition: i32,
    /// Raw-topic offset of the record (unused for SLO messages).
    pub offset: i64,
    /// The tenant it belongs to; `None` for global messages (SLO windows).
    pub tenant_id: Option<String>,
    /// Emitting service, for the `source` filter.
    pub source: Option<String>,
    /// Event type, for the `type` filter.
    pub event_type: Option<String>,
    /// Stream key, for the `streamKey` filter.
    pub stream_key: Option<String>,
    /// The message's `data:` (JSON).
    pub data: Arc<str>,
    /// The sampled event's receive span, under which the broadcast span is recorded.
    pub trace: Option<TraceContext>,
}

/// What one commit made durable, in (partition, offset) order, and how far each partition is
/// durable after it.
#[derive(Debug, Clone, Default)]
pub struct FeedBatch {
    /// The new messages.
    pub items: Vec<FeedItem>,
    /// (partition, next offset) after this batch.
    pub progress: Vec<(i32, i64)>,
}

/// A resumable position: per raw-topic partition, the next offset not yet seen. Partitions it
/// does not name are read from their beginning. Rendered as `v1:<partition>=<offset>,…`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPosition(pub BTreeMap<i32, i64>);

impl FeedPosition {
    /// Whether `item` lies before this position (already seen).
    pub fn has_seen(&self, partition: i32, offset: i64) -> bool {
        self.0.get(&partition).is_some_and(|next| offset < *next)
    }

    /// Moves past `offset` in `partition`; never backwards.
    pub fn advance(&mut self, partition: i32, next_offset: i64) {
        let next = self.0.entry(partition).or_insert(next_offset);
        *next = (*next).max(next_offset);
    }

    /// Parses the rendering of [`FeedPosition`]'s `Display`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text
            .trim()
            .strip_prefix("v1:")
            .ok_or_else(|| format!("{text:?} is not a feed position (it starts with \"v1:\")"))?;
        let mut position = BTreeMap::new();
        for pair in body.split(',').filter(|pair| !pair.is_empty()) {
            let parsed = pair.split_once('=').and_then(|(partition, offset)| {
                Some((partition.parse::<i32>().ok()?, offset.parse::<i64>().ok()?))
            });
            match parsed {
                Some((partition, offset)) if partition >= 0 && offset >= 0 => {
                    position.insert(partition, offset);
                }
                _ => {
                    return Err(format!(
                        "{pair:?} in {text:?} is not <partition>=<offset> with non-negative numbers"
                    ))
                }
            }
        }
        Ok(Self(position))
    }
}

impl std::fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("v1:")?;
        for (i, (partition, offset)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{partition}={offset}")?;
        }
        Ok(())
    }
}

/// An event row as a feed message: partition, offset, tenant, source, type, stream key, then
/// the columns its JSON is rendered from in Rust ([`event_message`]: PostgreSQL only sends them
/// in binary, where `json_build_object` spent its CPU formatting every field), the trace, and a
/// NULL in place of a dead letter's rendered JSON.
pub(crate) const EVENT_MESSAGE: &str = "e.source_partition, e.source_offset, e.tenant_id, \
    e.source, e.type, e.stream_key, e.id, e.timestamp_utc, e.schema_version, e.payload_jsonb, \
    e.received_utc, e.processed_utc, e.trace_id, e.trace_span_id, NULL::text";

/// A dead-letter row as a feed message, in the columns of [`EVENT_MESSAGE`]: its JSON (rare
/// messages) rendered by PostgreSQL in the last column.
pub(crate) const DEAD_LETTER_MESSAGE: &str = "d.source_partition, d.source_offset, d.tenant_id, \
    d.source, d.event_type, d.stream_key, NULL::uuid, NULL::timestamptz, NULL::int4, NULL::jsonb, \
    NULL::timestamptz, NULL::timestamptz, NULL::text, NULL::text, json_build_object('id', d.id, \
    'reason', d.reason_code, 'message', d.message, 'eventId', d.event_id, 'type', d.event_type, \
    'source', d.source, 'streamKey', d.stream_key, 'receivedUtc', d.received_utc, \
    'deadLetteredUtc', d.dead_lettered_utc, 'traceId', d.trace_id)::text";

/// Reads a row of `kind, EVENT_MESSAGE columns…` into a feed item.
pub(crate) fn feed_item(row: &tokio_postgres::Row) -> FeedItem {
    let kind: i32 = row.get(0);
    let (kind, data) = if kind == 0 {
        (FeedKind::Event, event_message(row))
    } else {
        (FeedKind::DeadLetter, row.get::<_, String>(15))
    };
    FeedItem {
        kind,
        partition: row.get(1),
        offset: row.get(2),
        tenant_id: row.get(3),
        source: row.get(4),
        event_type: row.get(5),
        stream_key: row.get(6),
        data: Arc::from(data),
        trace: match (
            row.get::<_, Option<&str>>(13),
            row.get::<_, Option<&str>>(14),
        ) {
            (Some(trace_id), Some(span_id)) => {
                TraceContext::parse(&format!("00-{trace_id}-{span_id}-01"))
            }
            _ => None,
        },
    }
}

/// An event's `data:` from the columns of [`EVENT_MESSAGE`]: the fields of the event contract
/// in camelCase, timestamps as PostgreSQL writes them in JSON (UTC, trailing zeros of the
/// microseconds dropped), the payload as stored.
fn event_message(row: &tokio_postgres::Row) -> String {
    use std::io::Write as _;
    let payload: JsonText<'_> = row.get(10);
    let mut out = Vec::with_capacity(320 + payload.0.len());
    out.extend_from_slice(b"{\"eventId\":\"");
    out.extend_from_slice(
        row.get::<_, uuid::Uuid>(7)
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"tenantId\":");
    push_json_string(&mut out, row.get(3));
    out.extend_from_slice(b",\"source\":");
    push_json_string(&mut out, row.get(4));
    out.extend_from_slice(b",\"type\":");
    push_json_string(&mut out, row.get(5));
    out.extend_from_slice(b",\"streamKey\":");
    push_json_string(&mut out, row.get(6));
    out.extend_from_slice(b",\"timestampUtc\":");
    push_json_timestamp(&mut out, row.get(8));
    out.extend_from_slice(b",\"schemaVersion\":");
    write!(out, "{}", row.get::<_, i32>(9)).expect("writing into a Vec cannot fail");
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.0.as_bytes());
    out.extend_from_slice(b",\"receivedUtc\":");
    push_json_timestamp(&mut out, row.get(11));
    out.extend_from_slice(b",\"processedUtc\":");
    push_json_timestamp(&mut out, row.get(12));
    out.extend_from_slice(b",\"traceId\":");
    match row.get::<_, Option<&str>>(13) {
        Some(trace_id) => push_json_string(&mut out, trace_id),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    String::from_utf8(out)
        .expect("every piece is UTF-8: ASCII, serde_json's strings and the payload's checked text")
}

/// Appends `text` as a JSON string, quoted and escaped.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // A string serializes into memory without fail: neither the value nor the writer can fail.
    serde_json::to_writer(out, text).expect("a string serializes into a Vec");
}

/// Appends `at` as PostgreSQL renders a `timestamptz` in JSON in a UTC session:
/// `"2026-01-01T10:00:00.1234+00:00"`, the fraction of a second only where it is not zero.
fn push_json_timestamp(out: &mut Vec<u8>, at: DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    use std::io::Write as _;
    let micros = at.timestamp_subsec_micros();
    write!(
        out,
        "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
    .expect("writing into a Vec cannot fail");
    if micros != 0 {
        write!(out, ".{micros:06}").expect("writing into a Vec cannot fail");
        while out.last() == Some(&b'0') {
            out.pop();
        }
    }
    out.extend_from_slice(b"+00:00\"");
}

/// A `json` or `jsonb` value's text, borrowed from the row as PostgreSQL sent it in binary
/// (`jsonb`'s binary form is a version byte, 1, before the text).
struct JsonText<'a>(&'a str);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText<'a> {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == tokio_postgres::types::Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => text,
                _ => return Err("unsupported jsonb binary format version".into()),
            }
        } else {
            raw
        };
        Ok(Self(std::str::from_utf8(text)?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(
            *ty,
            tokio_postgres::types::Type::JSON | tokio_postgres::types::Type::JSONB
        )
    }
}

/// How far behind the newest `updated_utc` seen the hub reads SLO windows again: longer than
/// any writer transaction lasts.
const SLO_LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Most SLO windows one check broadcasts, the most recently started first.
const SLO_WINDOWS_PER_CHECK: i64 = 20;

/// The SLO windows the hub broadcast: the newest `updated_utc` it read, and what it sent of
/// each window updated within [`SLO_LOOKBACK`] of it (its stamp and rendering).
#[derive(Debug, Default)]
struct SloSeen {
    newest: Option<DateTime<Utc>>,
    sent: BTreeMap<DateTime<Utc>, (DateTime<Utc>, String)>,
}

/// Most rows the hub reads per query when catching up.
const FETCH_PAGE: i64 = 2_000;

/// About the most bytes of messages one page of the feed holds, the hub's or a back-fill's:
/// events may be large (a payload up to the gateway's body limit), and a page of them is held
/// whole, in the ring too while any subscriber lags behind it. Rows past it wait for the next
/// page (a page holds at least one row).
pub const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Reads the rows of a feed query (the kind, then [`EVENT_MESSAGE`]'s columns) whose `LIMIT` is
/// `max_rows`, up to about [`PAGE_BYTES`] of them; whether they are all it had to give (the page
/// is the last).
pub(crate) async fn read_page<C: tokio_postgres::GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    max_rows: i64,
) -> Result<(Vec<tokio_postgres::Row>, bool), tokio_postgres::Error> {
    let stream = client.query_raw(sql, params.iter().copied()).await?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = futures::TryStreamExt::try_next(&mut stream).await? {
        bytes = bytes.saturating_add(message_bytes(&row));
        rows.push(row);
        if bytes >= PAGE_BYTES {
            return Ok((rows, false));
        }
    }
    let complete = (rows.len() as i64) < max_rows;
    Ok((rows, complete))
}

/// About the bytes a feed row's message takes: its payload or its rendered dead letter, and
/// the envelope around it.
fn message_bytes(row: &tokio_postgres::Row) -> usize {
    let payload = row
        .get::<_, Option<JsonText<'_>>>(10)
        .map_or(0, |payload| payload.0.len());
    let dead_letter = row.get::<_, Option<&str>>(15).map_or(0, str::len);
    payload + dead_letter + 320
}

/// How the hub behaves.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// The raw topic (with its prefix): whose offsets positions are.
    pub raw_topic: String,
    /// Commits a subscriber may fall behind before it is evicted (`event: lagged`).
    pub buffer_batches: usize,
    /// How often the SLO windows are checked for new counts while anyone listens.
    pub slo_interval: Duration,
}

/// The hub: cheap to clone; every clone feeds the same subscribers.
#[derive(Clone)]
pub struct FeedHub {
    sender: broadcast::Sender<Arc<FeedBatch>>,
    settings: Arc<FeedSettings>,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Set once the hub knows from where it broadcasts (its first session read the committed
    /// position); from then on it broadcasts every commit after it, reconnecting or not.
    started: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FeedHub {
    /// Starts listening on `database_url` (a dedicated connection, re-opened after failures,
    /// which also does the hub's reads: queries filling the read pool cannot stall the feed);
    /// must be called inside a Tokio runtime.
    pub fn start(database_url: String, settings: FeedSettings) -> Self {
        let (sender, _) = broadcast::channel(settings.buffer_batches.max(1));
        let hub = Self {
            sender,
            settings: Arc::new(settings),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            started: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let listener = hub.clone();
        tokio::spawn(async move { listener.listen_forever(database_url).await });
        hub
    }

    /// Waits up to `patience` for the hub to start broadcasting; whether it did. A subscriber
    /// must not subscribe before: the hub's first session starts from the position committed
    /// when it reads it, so what committed between a subscriber's back-fill and that read would
    /// reach the subscriber neither way.
    pub async fn wait_started(&self, patience: Duration) -> bool {
        let mut started = self.started.subscribe();
        tokio::time::timeout(patience, started.wait_for(|started| *started))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// A new subscription: every batch broadcast from now on, until it lags.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedBatch>> {
        self.sender.subscribe()
    }

    /// Ends every subscription, present and future (at shutdown: a feed response lasts until
    /// its client leaves, and its client resumes elsewhere with `Last-Event-ID`).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`FeedHub::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            // An error means the hub is gone, which closes the feed as well.
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// The settings.
    pub fn settings(&self) -> &FeedSettings {
        &self.settings
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    async fn listen_forever(self, database_url: String) {
        let mut seen: Option<FeedPosition> = None;
        let mut slo_seen = SloSeen::default();
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.listen(&database_url, &mut seen, &mut slo_seen).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64,
                        "live feed listener lost PostgreSQL");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One listening session: `LISTEN`, catch up from `seen` to what is committed, then follow
    /// notifications until the connection fails. Its one connection both listens and reads,
    /// in UTC like the read pool's, so that timestamps render alike.
    async fn listen(
        &self,
        database_url: &str,
        seen: &mut Option<FeedPosition>,
        slo_seen: &mut SloSeen,
    ) -> Result<(), ReadError> {
        let mut config = sinks::postgres::named_config(database_url, FEED_APPLICATION)?;
        config.options("-c TimeZone=UTC");
        let (client, mut connection) = config.connect(NoTls).await?;
        let (notify_tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(note)) => {
                        if notify_tx.send(note.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(error = %err, "live feed connection ended");
                        break;
                    }
                }
            }
        });
        let _stop_driver = AbortOnDrop(driver);
        client
            .batch_execute(&format!("LISTEN {}", sinks_channel()))
            .await?;
        let committed = committed_position(&client, &self.settings.raw_topic).await?;
        match seen {
            None => {
                *seen = Some(committed);
                self.started.send_replace(true);
            }
            Some(from) => {
                let to: Vec<(i32, i64)> = committed.0.into_iter().collect();
                self.fetch_and_broadcast(&client, from, &to).await?;
            }
        }
        let mut slo_tick = tokio::time::interval(self.settings.slo_interval);
        loop {
            tokio::select! {
                note = notifications.recv() => {
                    let Some(note) = note else { return Ok(()) };
                    let to = parse_progress(&note);
                    let from = seen.get_or_insert_with(FeedPosition::default);
                    if self.subscribers() == 0 {
                        for (partition, next) in to {
                            from.advance(partition, next);
                        }
                        continue;
                    }
                    self.fetch_and_broadcast(&client, from, &to).await?;
                }
                _ = slo_tick.tick() => {
                    if self.subscribers() > 0 {
                        self.broadcast_slo(&client, slo_seen).await?;
                    }
                }
            }
        }
    }

    /// Reads every event and dead letter from `from` up to `to` and broadcasts them in pages.
    async fn fetch_and_broadcast(
        &self,
        client: &Client,
        from: &mut FeedPosition,
        to: &[(i32, i64)],
    ) -> Result<(), ReadError> {
        let sql = format!(
            "SELECT 0, {EVENT_MESSAGE} FROM events e JOIN UNNEST($1::int4[], $2::int8[], $3::int8[]) \
                 AS r(p, lo, hi) ON e.source_partition = r.p AND e.source_offset >= r.lo \
                 AND e.source_offset < r.hi \
             UNION ALL \
             SELECT 1, {DEAD_LETTER_MESSAGE} FROM dead_letter d JOIN UNNEST($1::int4[], \
                 $2::int8[], $3::int8[]) AS r(p, lo, hi) ON d.source_partition = r.p \
                 AND d.source_offset >= r.lo AND d.source_offset < r.hi \
                 WHERE d.source_topic = $4 AND d.tenant_id IS NOT NULL \
             ORDER BY 2, 3 LIMIT $5"
        );
        loop {
            let ranges: Vec<(i32, i64, i64)> = to
                .iter()
                .map(|&(partition, hi)| {
                    (partition, from.0.get(&partition).copied().unwrap_or(0), hi)
                })
                .filter(|(_, lo, hi)| lo < hi)
                .collect();
            if ranges.is_empty() {
                return Ok(());
            }
            let partitions: Vec<i32> = ranges.iter().map(|r| r.0).collect();
            let lows: Vec<i64> = ranges.iter().map(|r| r.1).collect();
            let highs: Vec<i64> = ranges.iter().map(|r| r.2).collect();
            let (rows, complete) = read_page(
                client,
                &sql,
                &[
                    &partitions,
                    &lows,
                    &highs,
                    &self.settings.raw_topic,
                    &FETCH_PAGE,
                ],
                FETCH_PAGE,
            )
            .await?;
            let items: Vec<FeedItem> = rows.iter().map(feed_item).collect();
            for item in &items {
                from.advance(item.partition, item.offset + 1);
            }
            let mut progress = Vec::new();
            if complete {
                for &(partition, next) in to {
                    from.advance(partition, next);
                    progress.push((partition, next));
                }
            }
            telemetry::FeedBroadcast {
                messages: items.len(),
            }
            .emit();
            let read_at = std::time::SystemTime::now();
            let batch = Arc::new(FeedBatch { items, progress });
            // No receivers is not an error: they come and go.
            let _ = self.sender.send(Arc::clone(&batch));
            if operators::spans::enabled() {
                broadcast_spans(&batch, read_at, self.subscribers());
            }
            if complete {
                return Ok(());
            }
        }
    }

    /// Broadcasts the SLO windows whose counts changed since they were last broadcast. A
    /// window's `updated_utc` is its writer's transaction start, so a transaction committing
    /// after a later-started one stamps an older time: the windows updated within
    /// [`SLO_LOOKBACK`] of the newest stamp seen are read again each time, and those whose
    /// rendering is what was sent last are left out.
    async fn broadcast_slo(&self, client: &Client, seen: &mut SloSeen) -> Result<(), ReadError> {
        let since = seen
            .newest
            .map_or(DateTime::<Utc>::UNIX_EPOCH, |newest| newest - SLO_LOOKBACK);
        let rows = client
            .query(
                "SELECT updated_utc, window_start_utc, json_build_object('windowStartUtc', \
                   window_start_utc, 'ingestionGood', ingestion_good, 'ingestionTotal', \
                   ingestion_total, 'freshnessGood', freshness_good, 'freshnessTotal', \
                   freshness_total, 'updatedUtc', updated_utc)::text \
                 FROM slo_samples WHERE updated_utc > $1 \
                 ORDER BY window_start_utc DESC LIMIT $2",
                &[&since, &SLO_WINDOWS_PER_CHECK],
            )
            .await?;
        let mut items = Vec::new();
        for row in rows.iter().rev() {
            let updated: DateTime<Utc> = row.get(0);
            let window: DateTime<Utc> = row.get(1);
            let data: String = row.get(2);
            seen.newest = Some(seen.newest.map_or(updated, |newest| newest.max(updated)));
            if seen
                .sent
                .get(&window)
                .is_some_and(|(_, sent)| *sent == data)
            {
                continue;
            }
            seen.sent.insert(window, (updated, data.clone()));
            items.push(FeedItem {
                kind: FeedKind::Slo,
                partition: -1,
                offset: -1,
                tenant_id: None,
                source: None,
                event_type: None,
                stream_key: None,
                data: Arc::from(data),
                trace: None,
            });
        }
        // What was sent before the look-back is never read again.
        if let Some(newest) = seen.newest {
            seen.sent
                .retain(|_, (updated, _)| *updated > newest - SLO_LOOKBACK);
        }
        if items.is_empty() {
            return Ok(());
        }
        let _ = self.sender.send(Arc::new(FeedBatch {
            items,
            progress: Vec::new(),
        }));
        Ok(())
    }
}

/// One `sse.broadcast` span per sampled event, in its trace, under its receive span.
fn broadcast_spans(batch: &FeedBatch, started: std::time::SystemTime, subscribers: usize) {
    use opentelemetry::KeyValue;
    let ended = std::time::SystemTime::now();
    for item in &batch.items {
        let Some(parent) = item.trace else { continue };
        operators::spans::Hop::new(
            "sse.broadcast",
            opentelemetry::trace::SpanKind::Producer,
            Some(parent),
            started,
            ended,
        )
        .with([
            KeyValue::new("tenant.id", item.tenant_id.clone().unwrap_or_default()),
            KeyValue::new("event.type", item.event_type.clone().unwrap_or_default()),
            KeyValue::new("streamKey", item.stream_key.clone().unwrap_or_default()),
            KeyValue::new("source", item.source.clone().unwrap_or_default()),
            KeyValue::new("sse.subscribers", subscribers as i64),
            KeyValue::new("messaging.batch.message_count", batch.items.len() as i64),
        ])
        .record();
    }
}

fn sinks_channel() -> &'static str {
    sinks::postgres::FEED_CHANNEL
}

/// Everything committed so far: the raw topic's stored source offsets.
pub(crate) async fn committed_position(
    client: &Client,
    raw_topic: &str,
) -> Result<FeedPosition, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT partition, next_offset FROM source_offsets WHERE topic = $1",
            &[&raw_topic],
        )
        .await?;
    Ok(FeedPosition(
        rows.iter().map(|row| (row.get(0), row.get(1))).collect(),
    ))
}

/// Parses a commit notification (`partition:next_offset,…`); malformed pairs are skipped.
fn parse_progress(payload: &str) -> Vec<(i32, i64)> {
    payload
        .split(',')
        .filter_map(|pair| {
            let (partition, next) = pair.split_once(':')?;
            Some((partition.parse().ok()?, next.parse().ok()?))
        })
        .collect()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_reject_garbage() {
        let mut position = FeedPosition::default();
        position.advance(1, 40);
        position.advance(0, 12);
        position.advance(1, 7);
        assert_eq!(position.to_string(), "v1:0=12,1=40");
        assert_eq!(FeedPosition::parse("v1:0=12,1=40").unwrap(), position);
        assert_eq!(FeedPosition::parse("v1:").unwrap(), FeedPosition::default());
        assert!(position.has_seen(1, 39) && !position.has_seen(1, 40) && !position.has_seen(2, 0));
        for bad in ["0=12", "v1:0=x", "v1:0", "v1:-1=3", "v1:0=-3", "v2:0=1"] {
            assert!(FeedPosition::parse(bad).is_err(), "{bad} must not parse");
        }
    }

    #[test]
    fn timestamps_are_written_as_postgresql_writes_them_in_json() {
        let render = |text: &str| {
            let mut out = Vec::new();
            push_json_timestamp(&mut out, text.parse().unwrap());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            render("2026-01-01T10:00:00Z"),
            "\"2026-01-01T10:00:00+00:00\""
        );
        assert_eq!(
            render("2026-01-01T10:00:00.1234Z"),
            "\"2026-01-01T10:00:00.1234+00:00\""
        );
        assert_eq!(
            render("0999-12-31T23:59:59.000001+02:00"),
            "\"0999-12-31T21:59:59.000001+00:00\""
        );
    }

    #[test]
    fn strings_are_escaped_and_jsonb_text_is_read_past_its_version_byte() {
        use tokio_postgres::types::{FromSql, Type};
        let mut out = Vec::new();
        push_json_string(&mut out, "a \"quoted\"\\ line\n");
        assert_eq!(out, br#""a \"quoted\"\\ line\n""#);
        let raw = b"\x01{\"a\": 1}";
        assert_eq!(
            JsonText::from_sql(&Type::JSONB, raw).unwrap().0,
            r#"{"a": 1}"#
        );
        assert_eq!(
            JsonText::from_sql(&Type::JSON, &raw[1..]).unwrap().0,
            r#"{"a": 1}"#
        );
        assert!(JsonText::from_sql(&Type::JSONB, b"\x02{}").is_err());
    }

    #[test]
    fn commit_notifications_parse() {
        assert_eq!(parse_progress("0:10,3:7"), vec![(0, 10), (3, 7)]);
        assert_eq!(parse_progress("0:10,x:7,"), vec![(0, 10)]);
    }
}
