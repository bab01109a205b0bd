//! One trace per event across every hop: a test OTLP/HTTP receiver (decoding the protobuf with
//! `opentelemetry-proto`) gets the spans of one event from the gateway, the broker hop, the
//! dataflow and the sink under the event's trace id, with the right parents and attributes;
//! the batch write span links to its events; the live feed's broadcast joins the trace; an
//! unsampled request leaves no span.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use support::{envelope, free_port, post_traced, TestEnv};
use uuid::Uuid;

#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    links: Vec<(String, String)>,
    service: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Starts an OTLP/HTTP receiver; returns its base URL and what it received.
async fn receiver() -> (String, Arc<Mutex<Vec<ReceivedSpan>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut spans = sink.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            spans.push(ReceivedSpan {
                                name: span.name.clone(),
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(&a.value)))
                                    .collect(),
                                links: span
                                    .links
                                    .iter()
                                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                                    .collect(),
                                service: service.clone(),
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_of_an_event_lands_in_its_one_trace() {
    let (endpoint, received) = receiver().await;
    let env = TestEnv::new("traces").await;
    let sentinel = env
        .start_with(
            "up",
            "up",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        )
        .await;
    // A live-feed subscriber, so that the event is broadcast.
    let mut feed = support::SseReader::open(
        &reqwest::Client::new(),
        &sentinel.base_url,
        &support::token("acme", &[ingress::Role::Read]),
        "",
        None,
    )
    .await;
    let event_id = Uuid::new_v4();
    let body = envelope(event_id, "acme", "orders-1", 0, "2025-06-15T10:00:00Z");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    post_traced(
        &sentinel.base_url,
        &format!("00-{trace}-{client_span}-01"),
        "key-1",
        &body,
    )
    .await;
    // Unsampled by the client: nothing of it may be recorded.
    let quiet = "11111111111111111111111111111111";
    let other = envelope(
        Uuid::new_v4(),
        "acme",
        "orders-2",
        2,
        "2025-06-15T10:00:00Z",
    );
    post_traced(
        &sentinel.base_url,
        &format!("00-{quiet}-2222222222222222-00"),
        "key-2",
        &other,
    )
    .await;
    // The same event id with another payload, in a third trace: dead-lettered.
    let conflict_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut conflict = body.clone();
    conflict["payload"]["seq"] = serde_json::json!(-1);
    post_traced(
        &sentinel.base_url,
        &format!("00-{conflict_trace}-b7ad6b7169203331-01"),
        "key-3",
        &conflict,
    )
    .await;

    loop {
        let message = feed
            .next(Duration::from_secs(30))
            .await
            .expect("the event on the feed");
        if message.json()["eventId"] == event_id.to_string() {
            break;
        }
    }
    let wanted = [
        "gateway.receive",
        "kafka.produce",
        "pipeline.consume",
        "pipeline.validate",
        "pipeline.dedup",
        "db.write",
        "sse.broadcast",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = received.lock().unwrap().clone();
        let names: Vec<&str> = spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .map(|s| s.name.as_str())
            .collect();
        let dead_written = spans
            .iter()
            .any(|s| s.trace_id == conflict_trace && s.name == "dead_letter.write");
        if wanted.iter().all(|w| names.contains(w)) && dead_written {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace so far: {names:?}; all: {:?}",
            spans
                .iter()
                .map(|s| (&s.name, &s.trace_id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let of = |name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == trace && s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let receive = of("gateway.receive");
    assert_eq!(
        receive.parent_span_id, client_span,
        "under the client's span"
    );
    assert_eq!(receive.service, "sentinel-up");
    for (key, value) in [
        ("tenant.id", "acme".to_owned()),
        ("event.id", event_id.to_string()),
        ("event.type", "order.created".to_owned()),
        ("source", "service-0".to_owned()),
        ("streamKey", "orders-1".to_owned()),
        ("idempotencyKey", "key-1".to_owned()),
        ("http.response.status_code", "202".to_owned()),
    ] {
        assert_eq!(
            receive.attributes.get(key),
            Some(&value),
            "{key}: {receive:?}"
        );
    }
    let produce = of("kafka.produce");
    assert_eq!(produce.parent_span_id, receive.span_id);
    assert_eq!(produce.attributes["messaging.system"], "kafka");
    assert_eq!(
        produce.attributes["messaging.destination.name"],
        env.raw_topic()
    );
    // Every dataflow and sink hop is a child of the gateway's receive span, whose id the record
    // header carried.
    for name in [
        "pipeline.consume",
        "pipeline.validate",
        "pipeline.dedup",
        "db.write",
        "sse.broadcast",
    ] {
        let span = of(name);
        assert_eq!(span.parent_span_id, receive.span_id, "{name} parent");
    }
    assert_eq!(
        of("pipeline.consume").attributes["messaging.kafka.offset"],
        produce.attributes["messaging.kafka.offset"],
        "the consumed record is the produced one"
    );
    assert_eq!(of("pipeline.dedup").attributes["dedup.outcome"], "unique");
    assert_eq!(of("db.write").attributes["db.system.name"], "postgresql");
    assert_eq!(of("db.write").attributes["event.id"], event_id.to_string());

    let db_write = of("db.write");
    let batch = spans
        .iter()
        .find(|s| {
            s.name == "db.write.batch"
                && s.links
                    .contains(&(db_write.trace_id.clone(), db_write.span_id.clone()))
        })
        .expect("a batch write span links to the event's write span");
    assert_ne!(
        batch.trace_id, trace,
        "the batch span is its own trace, linked"
    );

    let dedup_conflict = spans
        .iter()
        .find(|s| s.trace_id == conflict_trace && s.name == "pipeline.dedup")
        .unwrap();
    assert_eq!(dedup_conflict.attributes["dedup.outcome"], "conflict");
    assert!(
        spans.iter().all(|s| s.trace_id != quiet),
        "a trace the client did not sample is not recorded"
    );
}
