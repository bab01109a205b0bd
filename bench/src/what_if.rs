//! What three choices cost, each measured against a fresh Sentinel to compare with the same load
//! as shipped: the B-tree indexes of `events` that serve reads (queries, a live-feed
//! subscriber's resume), which the writer maintains for every event; the two lingers, the
//! producer's and the idempotency claims', which trade gateway latency for the broker's and
//! PostgreSQL's CPU; and the number of timely workers, each with its own consumer, partition
//! and PostgreSQL writer.

use anyhow::Context;
use serde::Serialize;

use crate::load::{LoadArgs, Report};
use crate::overhead::{metered_run, Sentinels};

/// The indexes dropped, and what each one serves. Kept: the primary key (the writer's
/// conflict check), `events_position`, which the running pipeline reads itself (its health
/// view's freshness, the live feed's broadcast), and the block-range index on the receive time
/// (de-duplication's seeding at restart), which costs the writer next to nothing.
pub const DROPPED: &[(&str, &str)] = &[
    (
        "events_tenant_stream_time",
        "queries by stream, newest first",
    ),
    ("events_tenant_type_time", "queries by type, newest first"),
    (
        "events_tenant_source_time",
        "queries by source, newest first",
    ),
    ("events_tenant_time", "queries of a tenant, newest first"),
    (
        "events_tenant_position",
        "a live-feed subscriber resuming from its Last-Event-ID",
    ),
];

/// One run of a variant.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The load's report.
    pub report: Report,
    /// CPU time per event sent, in microseconds, of each part of the machine during the run.
    pub cpu_by_process: Vec<(String, f64)>,
}

/// Runs `load` against a fresh Sentinel, warmed up, after dropping [`DROPPED`] from its
/// database.
pub async fn without_read_indexes(sentinels: &Sentinels, load: &LoadArgs) -> anyhow::Result<Run> {
    sentinels
        .on_fresh(load, async |load: &LoadArgs, pid: u32| {
            drop_indexes(&load.database_url).await?;
            let (report, cpu_by_process) = metered_run(load, pid).await?;
            Ok(Run {
                report,
                cpu_by_process,
            })
        })
        .await
}

/// The producer's linger: how long a produce request waits for more records.
pub const PRODUCE_LINGER: &str = "SENTINEL_PRODUCE_LINGER_MS";
/// The idempotency claims' linger: how long a small claim group waits for more claims.
pub const CLAIM_LINGER: &str = "SENTINEL_IDEMPOTENCY_LINGER_MS";
/// The timely workers of the process (shipped: 2).
pub const WORKERS: &str = "SENTINEL_WORKERS";

/// A run with one setting otherwise than shipped.
#[derive(Debug, Clone, Serialize)]
pub struct SettingRun {
    /// The setting's variable, such as [`PRODUCE_LINGER`], [`CLAIM_LINGER`] or [`WORKERS`].
    pub variable: &'static str,
    /// Its value in the run.
    pub value: u64,
    /// The run.
    pub run: Run,
}

impl SettingRun {
    /// `VARIABLE=value`, as a shell would set it.
    pub fn label(&self) -> String {
        format!("`{}={}`", self.variable, self.value)
    }
}

/// Runs `load` once per (variable, value) in `settings`, each against a fresh Sentinel started
/// with that one setting.
pub async fn with_settings(
    sentinels: &Sentinels,
    load: &LoadArgs,
    settings: &[(&'static str, u64)],
) -> anyhow::Result<Vec<SettingRun>> {
    let mut runs = Vec::new();
    for &(variable, value) in settings {
        let env = [(variable, value.to_string())];
        let (report, cpu_by_process) = sentinels
            .on_fresh_with(&env, load, async |load: &LoadArgs, pid: u32| {
                metered_run(load, pid).await
            })
            .await?;
        runs.push(SettingRun {
            variable,
            value,
            run: Run {
                report,
                cpu_by_process,
            },
        });
    }
    Ok(runs)
}

async fn drop_indexes(database_url: &str) -> anyhow::Result<()> {
    let names: Vec<&str> = DROPPED.iter().map(|(name, _)| *name).collect();
    crate::on_one_connection(database_url, async |db| {
        // Without IF EXISTS: a renamed index must fail the run, not measure nothing.
        db.batch_execute(&format!("DROP INDEX {}", names.join(", ")))
            .await
    })
    .await
    .context("connecting to the fresh Sentinel's database")?
    .context("dropping the secondary indexes of events")
}
