//! Logs: one JSON object per line (`time`, `level`, `msg`, `service`, `target`, the trace and
//! event fields of the enclosing spans, then the event's own fields), with payloads never
//! written and configured fields masked; or human-readable text.
//!
//! Field names are normalised to the log contract: `tenant`/`tenant_id` → `tenantId`,
//! `event_id` → `eventId`, `idempotency_key` → `idempotencyKey`, `stream_key` → `streamKey`.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Field names whose values are never written, whatever the configuration.
const NEVER_LOGGED: [&str; 4] = ["payload", "payload_json", "body", "original"];

/// The JSON-lines layer.
pub struct JsonLogLayer {
    service: String,
    masked: BTreeSet<String>,
}

impl JsonLogLayer {
    /// Logs for `service`, masking the fields named in `masked` (contract names, e.g.
    /// `idempotencyKey`).
    pub fn new(service: impl Into<String>, masked: impl IntoIterator<Item = String>) -> Self {
        Self {
            service: service.into(),
            masked: masked
                .into_iter()
                .map(|name| contract_name(&name).to_owned())
                .collect(),
        }
    }

    /// The field as written: under its contract name, masked when configured; `None` for a
    /// field never written.
    fn written(&self, name: &'static str, value: Value) -> Option<(&'static str, Value)> {
        if NEVER_LOGGED.contains(&name) {
            return None;
        }
        let name = contract_name(name);
        let value = if self.masked.contains(name) {
            Value::String(mask(&value))
        } else {
            value
        };
        Some((name, value))
    }
}

/// Where a visitor puts the fields it is shown.
trait Fields {
    fn put(&mut self, name: &'static str, value: Value);
}

/// A line's fields: the last value of a name wins.
impl Fields for Map<String, Value> {
    fn put(&mut self, name: &'static str, value: Value) {
        self.insert(name.to_owned(), value);
    }
}

/// A span's fields: a later value of a name replaces the earlier one. Kept as a short list under
/// static names: a span is opened for every event, and few of them have a line written under
/// them.
impl Fields for Vec<(&'static str, Value)> {
    fn put(&mut self, name: &'static str, value: Value) {
        match self.iter_mut().find(|(known, _)| *known == name) {
            Some(slot) => slot.1 = value,
            None => self.push((name, value)),
        }
    }
}

/// The contract's name of a field.
fn contract_name(name: &str) -> &str {
    match name {
        "message" => "msg",
        "tenant" | "tenant_id" | "tenant.id" => "tenantId",
        "event_id" | "event.id" => "eventId",
        "idempotency_key" => "idempotencyKey",
        "stream_key" => "streamKey",
        other => other,
    }
}

/// A masked value keeps a short digest, so that equal values still correlate.
fn mask(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("masked:{hex}")
}

/// A span's fields, kept in its extensions.
struct SpanFields(Vec<(&'static str, Value)>);

struct Collector<'a, F> {
    layer: &'a JsonLogLayer,
    fields: &'a mut F,
}

impl<F: Fields> Collector<'_, F> {
    fn insert(&mut self, field: &Field, value: Value) {
        if let Some((name, value)) = self.layer.written(field.name(), value) {
            self.fields.put(name, value);
        }
    }
}

impl<F: Fields> Visit for Collector<'_, F> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::String(value.to_string()));
    }
}

impl<S> Layer<S> for JsonLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Vec::with_capacity(attrs.fields().len());
        attrs.record(&mut Collector {
            layer: self,
            fields: &mut fields,
        });
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            values.record(&mut Collector {
                layer: self,
                fields,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut text = Value::Object(self.line(event, &ctx)).to_string();
        text.push('\n');
        // A log line that cannot be written is dropped: logging never stops the service.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

impl JsonLogLayer {
    /// The JSON object of one event.
    fn line<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> Map<String, Value>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "time".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("msg".into(), Value::String(String::new()));
        line.insert("service".into(), self.service.clone().into());
        line.insert("target".into(), metadata.target().into());
        // Enclosing spans, outermost first, so that the innermost value of a field wins.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    for (name, value) in fields {
                        line.insert((*name).to_owned(), value.clone());
                    }
                }
            }
        }
        event.record(&mut Collector {
            layer: self,
            fields: &mut line,
        });
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Captures the layer's lines by running it against a subscriber writing to a buffer.
    fn lines_of(masked: &[&str], body: impl FnOnce()) -> Vec<Value> {
        // The layer writes to stderr; capture the lines it would write instead.
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        struct Capture {
            inner: JsonLogLayer,
            out: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
        }
        impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
            fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
                self.inner.on_new_span(attrs, id, ctx)
            }
            fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
                self.inner.on_record(id, values, ctx)
            }
            fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
                let line = self.inner.line(event, &ctx);
                self.out.lock().unwrap().push(Value::Object(line));
            }
        }
        let subscriber = tracing_subscriber::registry().with(Capture {
            inner: JsonLogLayer::new("test", masked.iter().map(|m| m.to_string())),
            out: std::sync::Arc::clone(&captured),
        });
        tracing::subscriber::with_default(subscriber, body);
        let lines = captured.lock().unwrap().clone();
        lines
    }

    #[test]
    fn a_field_recorded_later_and_an_inner_span_s_field_win() {
        let lines = lines_of(&[], || {
            let outer = tracing::info_span!("outer", tenant_id = "outer-tenant", stage = "a");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", tenant_id = "inner-tenant", attempt = 1_u64);
            inner.record("attempt", 2_u64);
            inner.record("attempt", 3_u64);
            let _inner = inner.enter();
            tracing::info!("retried");
        });
        let line = &lines[0];
        assert_eq!(line["tenantId"], "inner-tenant");
        assert_eq!(line["stage"], "a");
        assert_eq!(line["attempt"], 3);
    }

    #[test]
    fn span_fields_reach_the_line_under_contract_names_and_payloads_never_do() {
        let lines = lines_of(&["idempotencyKey"], || {
            let span = tracing::info_span!(
                "gateway.receive",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                tenant = "acme",
                event_id = "e-1",
                idempotency_key = "secret-key",
            );
            let _entered = span.enter();
            tracing::info!(
                payload = "{\"card\":\"4111\"}",
                stream_key = "s-1",
                "accepted"
            );
        });
        let line = &lines[0];
        assert_eq!(line["msg"], "accepted");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["tenantId"], "acme");
        assert_eq!(line["eventId"], "e-1");
        assert_eq!(line["streamKey"], "s-1");
        assert!(line.get("payload").is_none(), "payloads are never logged");
        let masked = line["idempotencyKey"].as_str().unwrap();
        assert!(
            masked.starts_with("masked:") && !masked.contains("secret"),
            "{masked}"
        );
        assert_eq!(
            masked,
            mask(&Value::String("secret-key".into())),
            "masking is stable"
        );
    }
}
