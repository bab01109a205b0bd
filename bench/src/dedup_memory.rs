//! `bench dedup-memory`: the resident memory the de-duplication takes per remembered event, in
//! this process, without a broker or database: events are judged as fast as they are made, at
//! receive times a steady rate would give, and `VmRSS` is read as the state fills and once it
//! has held a whole retention for a while (when it stops growing).

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use operators::dedup::{DedupState, Deduplicated};
use operators::record::EventRow;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Arguments of `bench dedup-memory`.
#[derive(Debug, Clone, Args)]
pub struct DedupMemoryArgs {
    /// Events judged per second of receive time.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// The de-duplication's retention, in seconds of receive time.
    #[arg(long, default_value_t = REPORT_RETENTION_SECONDS)]
    pub retention_seconds: u64,
    /// How many retentions of events to judge: memory grows during the first, then holds.
    #[arg(long, default_value_t = 3)]
    pub retentions: u64,
}

/// What the run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DedupMemory {
    /// Events judged per second of receive time.
    pub rate: u64,
    /// Retention, seconds.
    pub retention_seconds: u64,
    /// Events the state held after one retention.
    pub remembered_after_one_retention: usize,
    /// Resident bytes per event held, after one retention.
    pub bytes_per_event_after_one_retention: f64,
    /// Most events the state held at once, over the whole run.
    pub most_remembered: usize,
    /// Most resident bytes the state took, over the whole run.
    pub most_resident_bytes: u64,
    /// The most resident bytes over the events one retention holds (`rate × retention`).
    pub peak_bytes_per_retained_event: f64,
}

/// Runs `bench dedup-memory` and prints its JSON.
pub fn command(args: &DedupMemoryArgs) -> anyhow::Result<()> {
    let measured = measure(args)?;
    use std::io::Write as _;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&measured)?
    )?;
    Ok(())
}

/// The retention the report measures with, seconds: long enough that the tables are large,
/// short enough that a run takes seconds.
pub const REPORT_RETENTION_SECONDS: u64 = 3_600;

/// Runs `bench dedup-memory` once per rate, each in a process of its own (this one's memory
/// already holds what earlier work freed, which new entries would reuse unseen).
pub fn in_child_processes(rates: &[u64]) -> anyhow::Result<Vec<DedupMemory>> {
    let bench = std::env::current_exe()?;
    rates
        .iter()
        .map(|rate| {
            let output = std::process::Command::new(&bench)
                .args(["dedup-memory", "--rate", &rate.to_string()])
                .args(["--retention-seconds", &REPORT_RETENTION_SECONDS.to_string()])
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "`bench dedup-memory --rate {rate}` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            Ok(serde_json::from_slice(&output.stdout)?)
        })
        .collect()
}

/// Judges `rate × retention × retentions` unique events (each with an idempotency key, as the
/// gateway sends them) and reads this process's resident memory as they go.
pub fn measure(args: &DedupMemoryArgs) -> anyhow::Result<DedupMemory> {
    anyhow::ensure!(args.rate > 0 && args.retention_seconds > 0 && args.retentions > 0);
    let pid = std::process::id();
    let per_retention = args.rate * args.retention_seconds;
    let start = DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time");
    let step = TimeDelta::nanoseconds((1_000_000_000 / args.rate) as i64);
    let retention = TimeDelta::seconds(args.retention_seconds as i64);
    let before = crate::overhead::resident_bytes(pid)?;
    let mut state = DedupState::new(retention);
    let mut template = row(start);
    let mut after_one = (0, 0.0);
    let (mut most_remembered, mut most_resident) = (0usize, 0u64);
    // Read memory a few hundred times a retention: often enough to catch the peak before a
    // generation is dropped.
    let sample_every = (per_retention / 256).max(1);
    for n in 1..=per_retention * args.retentions {
        template.event_id = Uuid::from_u128(u128::from(n) * 0x9E37_79B9_7F4A_7C15);
        template.idempotency_key = Some(format!("key-{n}"));
        template.payload_hash = format!("{:064x}", u128::from(n) * 0x2545_F491_4F6C_DD1D);
        template.received_utc = start + step * i32::try_from(n)?;
        match state.judge(template.clone()) {
            Deduplicated::Unique(_) => {}
            other => anyhow::bail!("event {n} was not unique: {other:?}"),
        }
        if n % sample_every == 0 || n == per_retention {
            let grown = crate::overhead::resident_bytes(pid)?.saturating_sub(before);
            most_remembered = most_remembered.max(state.len());
            most_resident = most_resident.max(grown);
            if n == per_retention {
                after_one = (state.len(), grown as f64 / state.len().max(1) as f64);
            }
        }
    }
    Ok(DedupMemory {
        rate: args.rate,
        retention_seconds: args.retention_seconds,
        remembered_after_one_retention: after_one.0,
        bytes_per_event_after_one_retention: after_one.1,
        most_remembered,
        most_resident_bytes: most_resident,
        peak_bytes_per_retained_event: most_resident as f64 / per_retention as f64,
    })
}

/// An event as the dataflow judges it; only its identity matters here.
fn row(received: DateTime<Utc>) -> EventRow {
    EventRow {
        event_id: Uuid::nil(),
        tenant_id: "tenant-1".into(),
        source: "bench".into(),
        event_type: "order.created".into(),
        stream_key: "stream-1".into(),
        timestamp_utc: received,
        schema_version: 1,
        payload_json: "{}".into(),
        received_utc: received,
        trace_id: None,
        trace_parent: None,
        payload_hash: String::new(),
        idempotency_key: None,
        partition: 0,
        offset: 0,
        key: None,
        original: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_holds_one_retention_and_at_most_a_quarter_more() {
        let measured = measure(&DedupMemoryArgs {
            rate: 100,
            retention_seconds: 60,
            retentions: 3,
        })
        .unwrap();
        assert_eq!(measured.remembered_after_one_retention, 6_000);
        assert!(measured.most_remembered > 6_000, "{measured:?}");
        assert!(measured.most_remembered <= 7_501, "{measured:?}");
    }
}
