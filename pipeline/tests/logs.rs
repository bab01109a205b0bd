//! JSON logs of a running Sentinel: every line is a JSON object with the contract's fields; the
//! gateway's and the dataflow's lines about one event carry that event's trace id; configured
//! fields are masked and payloads never appear.

mod support;

use std::time::{Duration, Instant};

use support::{envelope, post_traced, TestEnv};
use uuid::Uuid;

const PAYLOAD_MARKER: &str = "PAYLOAD-MARKER-7f3a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_their_trace_and_event_and_mask_what_is_configured() {
    let env = TestEnv::new("logs").await;
    let sentinel = env
        .start_with(
            "up",
            "up",
            &[
                ("SENTINEL_LOG_FORMAT", "json"),
                ("RUST_LOG", "info,ingress=debug"),
                ("SENTINEL_LOG_MASK_FIELDS", "idempotencyKey"),
            ],
        )
        .await;
    let event_id = Uuid::new_v4();
    let mut body = envelope(event_id, "acme", "orders-1", 0, "2025-06-15T10:00:00Z");
    body["payload"]["marker"] = serde_json::json!(PAYLOAD_MARKER);
    let first_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let first_parent = "00f067aa0ba902b7";
    post_traced(
        &sentinel.base_url,
        &format!("00-{first_trace}-{first_parent}-01"),
        "key-first",
        &body,
    )
    .await;
    // The same event id with another payload, in another trace: a conflict, dead-lettered.
    let mut conflict = body.clone();
    conflict["payload"]["seq"] = serde_json::json!(-1);
    let second_trace = "0af7651916cd43dd8448eb211c80319c";
    post_traced(
        &sentinel.base_url,
        &format!("00-{second_trace}-b7ad6b7169203331-01"),
        "key-second",
        &conflict,
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let lines: Vec<serde_json::Value> = loop {
        let log = sentinel.log();
        if log.contains("event dead-lettered") {
            break log
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| {
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "no dead letter logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for line in &lines {
        for field in ["time", "level", "msg", "service"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
        assert_eq!(line["service"], "sentinel-up");
        assert!(
            !line.to_string().contains(PAYLOAD_MARKER),
            "a payload was logged: {line}"
        );
    }
    let acknowledged: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["msg"] == "event acknowledged by the broker")
        .collect();
    assert_eq!(acknowledged.len(), 2, "one line per accepted event");
    let first = acknowledged
        .iter()
        .find(|l| l["trace_id"] == first_trace)
        .expect("the first event's line carries its client's trace id");
    assert_eq!(first["eventId"], event_id.to_string());
    assert_eq!(first["tenantId"], "acme");
    assert_eq!(first["streamKey"], "orders-1");
    assert_eq!(first["source"], "service-0");
    let span_id = first["span_id"].as_str().unwrap();
    assert!(
        span_id.len() == 16 && span_id != first_parent,
        "the gateway's own span under the client's: {span_id}"
    );
    let masked = first["idempotencyKey"].as_str().unwrap();
    assert!(
        masked.starts_with("masked:") && !masked.contains("key-first"),
        "the idempotency key is masked: {masked}"
    );

    let dead = lines
        .iter()
        .find(|l| l["msg"] == "event dead-lettered")
        .unwrap();
    assert_eq!(
        dead["trace_id"], second_trace,
        "the dataflow's line carries the trace of the event it is about"
    );
    assert_eq!(dead["eventId"], event_id.to_string());
    assert_eq!(dead["reason"], "duplicate_event_id_conflict");
    assert!(dead["idempotencyKey"]
        .as_str()
        .unwrap()
        .starts_with("masked:"));
}
