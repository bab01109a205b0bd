//! `report`: runs the searches, the half-rate runs and the ceilings, and writes
//! `docs/perf/results.md` (with `results.json` and `latency-vs-rate.svg` beside it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::ceilings::{self, CeilingArgs, Ceilings};
use crate::find_max::{self, Search};
use crate::load::{self, Mode, Report};
use crate::overhead::{FreshSentinel, Sentinels};

/// Report settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub ceilings: CeilingArgs,
    /// Where results.md, results.json and the plot go.
    #[arg(long, default_value = "docs/perf")]
    pub out_dir: PathBuf,
    /// Seconds of each run at half the maximum rate.
    #[arg(long, default_value_t = 20)]
    pub half_rate_seconds: u64,
    /// The command that produced the report, quoted in it.
    #[arg(long, default_value = "infra/dev bench")]
    pub command_line: String,
    /// The `sentinel` binary: with it, every search and run gets a fresh Sentinel of its own
    /// (new database, new topics), so that none inherits the tables and topics an earlier one
    /// filled, and the observability-overhead runs are made; without it, everything runs
    /// against `--url` and the overhead runs are skipped.
    #[arg(long)]
    pub sentinel_bin: Option<PathBuf>,
    /// With `--sentinel-bin`: the command (run by `sh`) that starts a fresh broker listening on
    /// 127.0.0.1:{port}, `{port}` replaced by a free port; every fresh Sentinel then gets a
    /// broker of its own. Without it, every Sentinel uses `KAFKA_BROKERS`.
    #[arg(long)]
    pub broker_command: Option<String>,
    /// With `--sentinel-bin`: windows of `--step-seconds` for which each maximum is held on one
    /// fresh Sentinel, one after the other.
    #[arg(long, default_value_t = 4)]
    pub hold_windows: u64,
    /// Seconds of each observability-overhead run.
    #[arg(long, default_value_t = 15)]
    pub overhead_seconds: u64,
}

/// The throughput targets on this 2-core machine, events/s (the report's text spells
/// them out as 20,000 and 60,000).
const SINGLE_TARGET: f64 = 20_000.0;
const BATCH_TARGET: f64 = 60_000.0;

/// Most rates tried when holding a maximum, each the one before divided by the step factor.
const HOLD_ATTEMPTS: usize = 3;

/// Seconds of each overload burst.
const BURST_SECONDS: u64 = 10;

/// How often the consumer lag is read during and after a burst.
const LAG_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// A 2× overload burst and the recovery after it.
#[derive(Serialize)]
struct Burst {
    mode: Mode,
    burst_rate: u64,
    burst_seconds: u64,
    gateway_p99_ms_during_burst: f64,
    achieved_events_per_second: f64,
    /// Every connection of the generator was busy: requests queued in it.
    pool_saturated: bool,
    unexpected_by_status: std::collections::BTreeMap<u16, u64>,
    /// Seconds after the burst's last intended send until its last request was answered: the
    /// backlog the gateway (and the requests queued for a connection) had to work off.
    backlog_seconds: f64,
    /// Received → visible of the burst's events: how far behind the dataflow fell.
    freshness_ms: load::Percentiles,
    freshness_source: load::FreshnessSource,
    /// Connection attempts the kernel dropped on a full listen queue during the burst.
    dropped_connects: Option<u64>,
    peak_lag_seconds: f64,
    /// Seconds after the burst's last intended send until `processor_lag_seconds` was back
    /// under 1 s for good (0 when it never passed 1 s after the burst ended).
    recovery_seconds: Option<f64>,
    rows_exact: bool,
}

/// Max of `processor_lag_seconds` over partitions, from Sentinel's metrics.
async fn lag(client: &reqwest::Client, url: &str) -> f64 {
    load::scrape(client, url)
        .await
        .iter()
        .filter(|(name, _)| name.starts_with("processor_lag_seconds{"))
        .map(|(_, value)| *value)
        .fold(0.0, f64::max)
}

/// Seconds after `burst_end` until the lag stayed at or under 1 s, from `(seconds since the
/// burst started, lag)` samples in time order; `None` when the last sample is still above it.
fn lag_recovery(samples: &[(f64, f64)], burst_end: f64) -> Option<f64> {
    match samples.iter().rposition(|&(_, lag)| lag > 1.0) {
        None => Some(0.0),
        Some(last_above) => samples
            .get(last_above + 1)
            .map(|&(at, _)| (at - burst_end).max(0.0)),
    }
}

/// Twice `max` events/s in `mode` for [`BURST_SECONDS`], with the consumer lag read every
/// [`LAG_SAMPLE_INTERVAL`] from the burst's start until it is back under 1 s (at most 60 s
/// after the burst's end).
async fn burst(
    base: &load::LoadArgs,
    mode: Mode,
    max: Option<f64>,
) -> anyhow::Result<Option<Burst>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let Some(max) = max else {
        return Ok(None);
    };
    let client = reqwest::Client::new();
    let url = base.url.clone();
    let samples = Arc::new(Mutex::new(Vec::<(f64, f64)>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let sampler = {
        let (client, url, samples, sampling) = (
            client.clone(),
            url.clone(),
            samples.clone(),
            sampling.clone(),
        );
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let now = lag(&client, &url).await;
                let at = started.elapsed().as_secs_f64();
                samples.lock().expect("lag samples").push((at, now));
                tokio::time::sleep(LAG_SAMPLE_INTERVAL).await;
            }
        })
    };
    let mut load = base.clone();
    load.mode = mode;
    load.rate = (2.0 * max).round() as u64;
    load.duration = BURST_SECONDS;
    eprintln!(
        "report: 2x burst of {} at {} events/s",
        mode.name(),
        load.rate
    );
    let during = load::run(&load, true).await?;
    let burst_end = BURST_SECONDS as f64;
    let sending = during.events_sent as f64 / during.achieved_events_per_second;
    // The row check has waited for every event to be stored; the lag may still read high until
    // the next commit of each partition sets it again.
    let deadline = started + Duration::from_secs(BURST_SECONDS + 60);
    while Instant::now() < deadline {
        let settled = samples
            .lock()
            .expect("lag samples")
            .last()
            .is_some_and(|&(at, lag)| at > sending && lag <= 1.0);
        if settled {
            break;
        }
        tokio::time::sleep(LAG_SAMPLE_INTERVAL).await;
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let samples = samples.lock().expect("lag samples").clone();
    Ok(Some(Burst {
        mode,
        burst_rate: load.rate,
        burst_seconds: load.duration,
        gateway_p99_ms_during_burst: during.gateway_latency_ms.p99,
        achieved_events_per_second: during.achieved_events_per_second,
        pool_saturated: during.pool_saturated(),
        unexpected_by_status: during.unexpected_by_status.clone(),
        backlog_seconds: (sending - burst_end).max(0.0),
        freshness_ms: during.freshness_ms.clone(),
        freshness_source: during.freshness_source,
        dropped_connects: during.dropped_connects,
        peak_lag_seconds: samples.iter().map(|&(_, lag)| lag).fold(0.0, f64::max),
        recovery_seconds: lag_recovery(&samples, burst_end),
        rows_exact: during.rows_exact,
    }))
}

/// The same loads as two shipped runs, with one timely worker instead of two.
#[derive(Serialize)]
struct OneWorker {
    /// Single events at half their maximum; compared with the overhead run.
    single: crate::what_if::SettingRun,
    /// Batches at their maximum; compared with the batch profile run.
    batch: crate::what_if::SettingRun,
}

#[derive(Serialize)]
struct Results {
    machine: String,
    /// The commit measured, and whether the checkout held changes not committed.
    code: String,
    single: Search,
    batch: Search,
    single_at_half: Option<Report>,
    batch_at_half: Option<Report>,
    single_hold: Option<find_max::Holding>,
    batch_hold: Option<find_max::Holding>,
    bursts: Vec<Burst>,
    ceilings: Ceilings,
    overhead: Vec<crate::overhead::Variant>,
    batch_profile: Option<crate::overhead::Profile>,
    /// Where inside Sentinel and PostgreSQL the CPU goes at the batch maximum (`perf`).
    code_profile: Option<crate::profile::CodeProfile>,
    /// Why there is no code profile, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    code_profile_missing: Option<String>,
    /// PostgreSQL's checkpoint settings, as the hold section quotes them.
    checkpoint_settings: Option<String>,
    /// Single events at half their maximum with one linger shorter, or why not run.
    lingers: Result<Vec<crate::what_if::SettingRun>, String>,
    /// Single events at half their maximum and batches at their maximum with one timely worker,
    /// or why not run.
    one_worker: Result<OneWorker, String>,
    /// Batches at their maximum without the read indexes of `events`, or why not run.
    index_cost: Result<crate::what_if::Run, String>,
    /// The de-duplication's memory alone (`bench dedup-memory`) at each rate it ran at, or why
    /// not run.
    dedup_memory: Result<Vec<crate::dedup_memory::DedupMemory>, String>,
}

/// The commit of the checkout this `bench` was built from (the binaries a report measures are
/// built from the same one: `infra/dev bench` builds both), noting changes not committed outside
/// `out_dir`, where earlier reports are written: without this a report cannot be told apart from
/// one of other code.
fn measured_code(out_dir: &Path) -> String {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(checkout)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (Some(commit), Some(root)) = (
        git(&["rev-parse", "--short=12", "HEAD"]),
        git(&["rev-parse", "--show-toplevel"]),
    ) else {
        return "unknown (bench was not built in a git checkout)".into();
    };
    let (commit, root) = (commit.trim(), PathBuf::from(root.trim()));
    let Some(status) = git(&["status", "--porcelain", "--untracked-files=no"]) else {
        return format!("commit `{commit}` (whether changed is unknown)");
    };
    let out_dir = std::fs::canonicalize(out_dir).unwrap_or_else(|_| out_dir.to_owned());
    let changed = changed_paths(&status)
        .into_iter()
        .filter(|path| !root.join(path).starts_with(&out_dir))
        .collect::<Vec<_>>();
    match changed.as_slice() {
        [] => format!("commit `{commit}`"),
        paths => format!(
            "commit `{commit}` with changes not committed, in {}",
            paths.join(", ")
        ),
    }
}

/// The paths `git status --porcelain` (v1: relative to the repository's root) lists, a
/// renamed file by its new path.
fn changed_paths(status: &str) -> Vec<String> {
    status
        .lines()
        .filter_map(|line| line.get(3..))
        .map(|path| path.rsplit(" -> ").next().unwrap_or(path).to_owned())
        .collect()
}

/// The cores this process may run on (1 when unknown).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cores();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("unknown memory".into(), |kb| {
            format!("{:.0} GiB", kb / 1024.0 / 1024.0)
        });
    format!("{cores} cores ({cpu}), {memory}; generator, Sentinel, tansu 0.6.0 and PostgreSQL on the same machine")
}

async fn half_rate(
    args: &ReportArgs,
    base: &load::LoadArgs,
    mode: Mode,
    max: Option<f64>,
) -> anyhow::Result<Option<Report>> {
    let Some(max) = max else {
        return Ok(None);
    };
    let mut load = base.clone();
    load.mode = mode;
    load.rate = (max / 2.0).round() as u64;
    load.duration = args.half_rate_seconds;
    eprintln!(
        "report: {mode:?} at half the maximum, {} events/s",
        load.rate
    );
    Ok(Some(load::run(&load, true).await?))
}

/// A named, coloured line of (rate, latency) points.
type Series = (&'static str, Vec<(f64, f64)>, RGBColor);

fn plot(path: &std::path::Path, results: &Results) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    // In order of rate: the bisections after the first broken step run between earlier rates.
    let points = |search: &Search, pick: fn(&Report) -> f64| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = search
            .steps
            .iter()
            .map(|step| {
                (
                    step.report.achieved_events_per_second,
                    pick(&step.report).max(0.01),
                )
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let series: Vec<Series> = vec![
        (
            "single p50",
            points(&results.single, |r| r.gateway_latency_ms.p50),
            BLUE,
        ),
        (
            "single p99",
            points(&results.single, |r| r.gateway_latency_ms.p99),
            RED,
        ),
        (
            "batch p50",
            points(&results.batch, |r| r.gateway_latency_ms.p50),
            GREEN,
        ),
        (
            "batch p99",
            points(&results.batch, |r| r.gateway_latency_ms.p99),
            MAGENTA,
        ),
    ];
    let max_x = series
        .iter()
        .flat_map(|(_, p, _)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let max_y = series
        .iter()
        .flat_map(|(_, p, _)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("Gateway latency against achieved rate", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x * 1.05, (0.01f64..max_y * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("events/s")
        .y_desc("latency, ms (log)")
        .draw()?;
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

fn verdict(measured: f64, target: f64, higher_is_better: bool) -> String {
    let met = if higher_is_better {
        measured >= target
    } else {
        measured <= target
    };
    if met {
        "met".into()
    } else if higher_is_better {
        format!("missed by {:.0}%", (1.0 - measured / target) * 100.0)
    } else if measured < 2.0 * target {
        format!(
            "missed: {:.0}% over the bound",
            (measured / target - 1.0) * 100.0
        )
    } else {
        format!("missed: {:.1}× the bound", measured / target)
    }
}

/// Why a search that stopped short of the CPU stopped: the waits its steps measured at the
/// maximum and at the lowest rate that broke a bound.
fn stopped_at_stalls(search: &Search) -> String {
    let waits = |step: &find_max::Step| {
        format!(
            "broker acknowledgement {} ms, idempotency claim {} ms",
            load::bucket_bound(step.report.server.broker_ack_p99_ms),
            load::bucket_bound(step.report.server.claim_wait_p99_ms)
        )
    };
    let steps = &search.steps;
    let held = steps
        .iter()
        .filter(|step| step.broke.is_none())
        .max_by_key(|step| step.report.target_events_per_second);
    // The lowest rate that broke its bounds for good (not a first run that ran again).
    let broke = steps.iter().rev().find(|step| {
        step.broke.is_some()
            && Some(step.report.target_events_per_second) == search.lowest_broken_rate
    });
    match (held, broke) {
            (Some(held), Some(broke)) => format!(
                "the search stopped before the CPU ran out, at stalls in what a request waits for. At p99, the highest search step that held waited for the {}; the lowest step that broke a bound ({} events/s) for the {}",
                waits(held),
                broke.report.target_events_per_second,
                waits(broke)
            ),
            _ => "the search stopped before the CPU ran out".into(),
        }
}

/// The CPU each part of the machine spends per event, single events at half their maximum and
/// batches at theirs, and what that says about the limit.
fn what_limits(md: &mut String, results: &Results) {
    let Some(shipped) = results.overhead.first() else {
        let _ = writeln!(
            md,
            "Where the CPU goes is measured with the observability overhead (run with `--sentinel-bin`).\n"
        );
        return;
    };
    let batch = results.batch_profile.as_ref();
    let _ = writeln!(
        md,
        "Everything shares the machine's cores: what one event costs is the sum of what each part spends on it. CPU time per event sent, from `/proc/*/stat`, over each run and its drain, each against a fresh Sentinel as shipped: single events at half their maximum ({} events/s, the overhead run below){}.\n",
        shipped.report.target_events_per_second,
        batch.map_or(String::new(), |b| format!(
            ", and batches at their maximum ({} events/s)",
            b.report.target_events_per_second
        )),
    );
    let share = |parts: &[(String, f64)]| -> (f64, Vec<(String, f64, f64)>) {
        let total = cpu_total(parts);
        let rows = parts
            .iter()
            .map(|(part, us)| (part.clone(), *us, 100.0 * us / total.max(f64::MIN_POSITIVE)))
            .collect();
        (total, rows)
    };
    let (single_total, single_rows) = share(&shipped.cpu_by_process);
    let batch_rows = batch.map(|b| share(&b.cpu_by_process));
    let _ = writeln!(
        md,
        "| part of the machine | single: CPU µs per event | share | batch: CPU µs per event | share |\n|---|---|---|---|---|"
    );
    for (index, (part, us, pct)) in single_rows.iter().enumerate() {
        let batch_cells = batch_rows
            .as_ref()
            .and_then(|(_, rows)| rows.get(index))
            .map_or("— | —".into(), |(_, us, pct)| {
                format!("{us:.0} | {pct:.0}%")
            });
        let _ = writeln!(md, "| {part} | {us:.0} | {pct:.0}% | {batch_cells} |");
    }
    let batch_total = batch_rows
        .as_ref()
        .map_or("—".into(), |(total, _)| format!("{total:.0}"));
    let _ = writeln!(
        md,
        "| all | {single_total:.0} | 100% | {batch_total} | 100% |\n"
    );
    if let (Some(batch), Some((batch_total, _))) = (batch, &batch_rows) {
        let cores = cores();
        let rate = batch.report.achieved_events_per_second;
        let busy = batch_total * rate / (cores as f64 * 1e6);
        let verdict = if busy < 0.85 {
            stopped_at_stalls(&results.batch)
        } else {
            "the CPU ran out: a higher rate needs a cheaper event".into()
        };
        let _ = writeln!(
            md,
            "At the batch maximum the machine was about {:.0}% busy ({batch_total:.0} µs × {rate:.0} events/s over {cores} cores): {verdict}.\n",
            100.0 * busy
        );
    }
    memory_section(md, shipped, batch, &results.dedup_memory);
    connection_section(
        md,
        &shipped.postgres_by_connection,
        batch.map_or(&[][..], |b| &b.postgres_by_connection),
    );
    code_profile_section(md, results);
    index_cost_section(md, results);
    let _ = writeln!(
        md,
        "Sentinel's part is the gateway (HTTP, validation, canonical hashing, the idempotency claim, the producer) and the dataflow (consumer, operators, writer); PostgreSQL's is the idempotency claims and completions (one pipelined transaction per group, a group forming while the previous one is written) and the writer's COPY into `events` with its seven B-tree indexes and one block-range index. Most of the cost is per request and per round trip, not per byte: a batch shares one HTTP exchange, one claim statement and one produce request among its events, which is why a batched event costs a fraction of a single one. Costs per unit of time (timers, the consumer's fetches, PostgreSQL's background work) are spread over fewer events at lower rates, so the single-event column overstates the cost at the single-event maximum. The broker's part falls as records share produce requests: `SENTINEL_PRODUCE_LINGER_MS` (default 5) trades gateway latency for broker CPU. Freshness is bounded below by the consumer's `fetch.wait.max.ms` (50 ms, which tansu waits out even when records are ready; tunable with `SENTINEL_KAFKA_OPTIONS`) and includes the live feed's read of each commit."
    );
    let c = &results.ceilings;
    let mut beyond = Vec::new();
    let http_below_target = c
        .http_single
        .filter(|http| *http < SINGLE_TARGET && !c.http_single_unbroken);
    if let Some(http) = http_below_target {
        beyond.push(format!(
            "20,000 single events/s is above the HTTP ceiling ({http:.0}): a handler that does nothing cannot answer that many here"
        ));
    }
    if c.postgres_copy < BATCH_TARGET {
        beyond.push(format!(
            "60,000 batched events/s is above the PostgreSQL COPY ceiling ({:.0} rows/s): the rows alone cannot be stored that fast here",
            c.postgres_copy
        ));
    }
    if !beyond.is_empty() {
        let _ = writeln!(md, "\nOn this machine, in this run: {}.", beyond.join("; "));
    }
}

/// The rates of receive time `bench dedup-memory` runs at for the report, events/s: the hash
/// tables grow in doubling steps, so what an event costs depends on where the retention's count
/// falls between two steps.
const DEDUP_MEMORY_RATES: [u64; 3] = [600, 1_000, 1_500];

/// What Sentinel's memory grows by per event: the de-duplication remembers every event for its
/// retention, so this is what a steady rate costs until the first events expire.
fn memory_section(
    md: &mut String,
    single: &crate::overhead::Variant,
    batch: Option<&crate::overhead::Profile>,
    dedup: &Result<Vec<crate::dedup_memory::DedupMemory>, String>,
) {
    const RETENTION_SECONDS: f64 = 86_400.0;
    let _ = write!(
        md,
        "Sentinel's resident memory grew by {:.0} bytes per event sent in the single-event run ({} events) and {} in the batch run; a run this short also fills buffers, caches and connection pools that stop growing. ",
        single.resident_growth_per_event,
        single.report.events_sent,
        batch.map_or("—".into(), |b| format!(
            "{:.0} bytes per event ({} events)",
            b.resident_growth_per_event, b.report.events_sent
        )),
    );
    let _ = write!(
        md,
        "What keeps growing with the rate is the de-duplication's memory of each event, kept for `SENTINEL_DEDUP_RETENTION_SECONDS` (24 h by default) and then dropped a quarter of a retention at a time. "
    );
    match dedup {
        Ok(runs) if !runs.is_empty() => {
            let peak = |f: fn(f64, f64) -> f64| {
                runs.iter()
                    .map(|run| run.peak_bytes_per_retained_event)
                    .reduce(f)
                    .unwrap_or_default()
            };
            let (low, high) = (peak(f64::min), peak(f64::max));
            let rates: Vec<String> = runs.iter().map(|run| run.rate.to_string()).collect();
            let retention = runs[0].retention_seconds;
            let _ = writeln!(
                md,
                "Measured alone (`cargo run -p bench --release -- dedup-memory --rate R --retention-seconds {retention}`: unique events judged at receive times a steady rate apart for three retentions, at R = {} events/s), its resident memory at its peak was {low:.0}-{high:.0} bytes per event of one retention (the hash tables grow in doubling steps, so it depends on where the count falls between two). So 1,000 events/s for the default retention needs about {:.0}-{:.0} GB. Size the machine, or the retention, for it; the `dedup_state_entries` metric tells how many events each worker holds.\n",
                rates.join(", "),
                1_000.0 * RETENTION_SECONDS * low / 1e9,
                1_000.0 * RETENTION_SECONDS * high / 1e9,
            );
        }
        Ok(_) => {}
        Err(why) => {
            let _ = writeln!(md, "Its memory alone was not measured: {why}.\n");
        }
    }
}

/// Inside Sentinel and PostgreSQL: the named code paths' shares of each one's CPU samples.
/// PostgreSQL's part told apart by the connection it served (Sentinel names each by its role).
fn connection_section(md: &mut String, single: &[(String, f64)], batch: &[(String, f64)]) {
    if single.is_empty() && batch.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "PostgreSQL's part by the connection it served, in the same runs: Sentinel names each of its connections by its role in `application_name`, and each backend's CPU comes from its `/proc/<pid>/stat`.\n\n| connection | single: CPU µs per event | batch: CPU µs per event |\n|---|---|---|"
    );
    let mut names: Vec<&str> = batch.iter().map(|(name, _)| name.as_str()).collect();
    for (name, _) in single {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let cost = |parts: &[(String, f64)], name: &str| {
        parts
            .iter()
            .find(|(part, _)| part == name)
            .map(|(_, us)| *us)
    };
    let cell = |us: Option<f64>| us.map_or("—".into(), |us| format!("{us:.1}"));
    for name in &names {
        let _ = writeln!(
            md,
            "| `{name}` | {} | {} |",
            cell(cost(single, name)),
            cell(cost(batch, name))
        );
    }
    let _ = writeln!(md);
    let claims = ingress::idempotency::CLAIMS_APPLICATION;
    let writers = sinks::postgres::WRITER_APPLICATION;
    for (mode, parts) in [("single", single), ("batched", batch)] {
        let total = cpu_total(parts);
        if let (Some(claim_us), Some(writer_us)) = (cost(parts, claims), cost(parts, writers)) {
            let _ = writeln!(
                md,
                "Per {mode} event, the gateway's idempotency claims and completions (`{claims}`) cost PostgreSQL {claim_us:.1} µs ({:.0}% of what its backends of this database spent), the dataflow's writers (`{writers}`: COPY into `events`, the views, the offsets) {writer_us:.1} µs.",
                100.0 * claim_us / total.max(f64::MIN_POSITIVE)
            );
        }
    }
    let reads = queries::pool::READ_APPLICATION;
    if cost(single, reads).is_some() || cost(batch, reads).is_some() {
        let _ = writeln!(
            md,
            "`{reads}` is the readers' pool: here the live feed reading each commit's rows once for the run's own subscriptions (Sentinel renders their JSON messages), which is what a reader watching the feed costs PostgreSQL."
        );
    }
    let _ = writeln!(md);
}

fn code_profile_section(md: &mut String, results: &Results) {
    let Some(profile) = &results.code_profile else {
        let why = results.code_profile_missing.as_deref().unwrap_or("not run");
        let _ = writeln!(md, "No code profile in this run: {why}.\n");
        return;
    };
    let _ = writeln!(
        md,
        "Inside Sentinel and PostgreSQL, from Linux `perf` sampling both (499 Hz; Sentinel with DWARF call graphs, PostgreSQL with frame pointers) during one more run of batches at their maximum against a fresh Sentinel ({:.0} events/s achieved; CPU µs per event in that run: {}). A path's share is inclusive (it counts what the path calls), so the shares of nested paths overlap and do not add up to 100%; the µs column is that share of the part's CPU per event.\n",
        profile.report.achieved_events_per_second,
        profile
            .cpu_by_process
            .iter()
            .take(2)
            .map(|(part, us)| format!("{part} {us:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let _ = writeln!(
        md,
        "| part | code path | frame | share of the part's CPU | µs per event |\n|---|---|---|---|---|"
    );
    for path in &profile.paths {
        let _ = writeln!(
            md,
            "| {:?} | {} | `{}` | {:.1}% | {:.1} |",
            path.part, path.what, path.frame, path.percent, path.us_per_event
        );
    }
    let _ = writeln!(md);
}

/// What the read indexes of `events` cost: batches at their maximum as shipped and without them.
fn index_cost_section(md: &mut String, results: &Results) {
    let (without, shipped) = match (&results.index_cost, &results.batch_profile) {
        (Ok(without), Some(shipped)) => (without, shipped),
        (Err(why), _) => {
            let _ = writeln!(md, "No run without the read indexes of `events`: {why}.\n");
            return;
        }
        (Ok(_), None) => return,
    };
    let dropped = crate::what_if::DROPPED
        .iter()
        .map(|(name, serves)| format!("`{name}` ({serves})"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "What the indexes of `events` that serve reads cost the writer: the same batches at their maximum ({} events/s) against one more fresh Sentinel, after dropping {dropped} (one run each; `events` kept its primary key, `events_position`, which the running pipeline reads itself, and `events_received_brin`, the block-range index de-duplication seeds its memory with at restart, which costs the writer next to nothing).\n",
        without.report.target_events_per_second
    );
    let _ = writeln!(
        md,
        "| part of the machine | as shipped: CPU µs per event | without those {} indexes |\n|---|---|---|",
        crate::what_if::DROPPED.len()
    );
    for ((part, us), (_, without_us)) in shipped.cpu_by_process.iter().zip(&without.cpu_by_process)
    {
        let _ = writeln!(md, "| {part} | {us:.0} | {without_us:.0} |");
    }
    let (all, all_without) = (
        cpu_total(&shipped.cpu_by_process),
        cpu_total(&without.cpu_by_process),
    );
    let _ = writeln!(md, "| all | {all:.0} | {all_without:.0} |\n");
    if all_without < all {
        let _ = write!(
            md,
            "Without them an event would cost {:.0} µs less ({:.0}% of all it costs here), so the same CPU would carry about {:+.0}% events/s.",
            all - all_without,
            100.0 * (all - all_without) / all.max(f64::MIN_POSITIVE),
            100.0 * (all / all_without.max(f64::MIN_POSITIVE) - 1.0),
        );
    } else {
        let database = |cpu: &[(String, f64)]| part_us(cpu, crate::overhead::POSTGRES_PART);
        let _ = write!(
            md,
            "Without them PostgreSQL spent {:.0} µs per event where it spent {:.0}, but the whole machine spent {:.0} µs more, not less: with one run each, the difference is within this machine's variance from run to run, so this run does not tell what the indexes cost.",
            database(&without.cpu_by_process),
            database(&shipped.cpu_by_process),
            all_without - all,
        );
    }
    let _ = writeln!(
        md,
        " Gateway p99 {:.1} → {:.1} ms, freshness p99 {:.1} → {:.1} ms.\n",
        shipped.report.gateway_latency_ms.p99,
        without.report.gateway_latency_ms.p99,
        shipped.report.freshness_ms.p99,
        without.report.freshness_ms.p99,
    );
}

/// Runs `single` and `batch` against fresh Sentinels with one timely worker.
async fn one_worker(
    sentinels: &crate::overhead::Sentinels,
    single: &crate::load::LoadArgs,
    batch: &crate::load::LoadArgs,
) -> anyhow::Result<OneWorker> {
    use crate::what_if::{with_settings, WORKERS};
    let mut single = with_settings(sentinels, single, &[(WORKERS, 1)]).await?;
    let mut batch = with_settings(sentinels, batch, &[(WORKERS, 1)]).await?;
    match (single.pop(), batch.pop()) {
        (Some(single), Some(batch)) => Ok(OneWorker { single, batch }),
        _ => anyhow::bail!("a run with one worker returned nothing"),
    }
}

/// What one timely worker instead of two costs and answers, against the shipped runs of the
/// same loads.
fn one_worker_section(md: &mut String, results: &Results) {
    use crate::overhead::{BROKER_PART, POSTGRES_PART, SENTINEL_PART};
    let one = match &results.one_worker {
        Ok(one) => one,
        Err(why) => {
            let _ = writeln!(md, "No runs with one timely worker: {why}.\n");
            return;
        }
    };
    let pairs = [
        (
            "single",
            results
                .overhead
                .first()
                .map(|v| (&v.report, &v.cpu_by_process)),
            &one.single,
        ),
        (
            "batch",
            results
                .batch_profile
                .as_ref()
                .map(|p| (&p.report, &p.cpu_by_process)),
            &one.batch,
        ),
    ];
    let _ = writeln!(md, "### One timely worker or two\n");
    let _ = writeln!(
        md,
        "Sentinel ships with `{}=2`: two timely workers, each reading its own partition with a consumer of its own and committing through a PostgreSQL writer of its own. On this machine the two workers share 2 cores with the gateway, the broker, PostgreSQL and the generator. The same loads as two runs above, single events at half their maximum (the overhead run) and batches at their maximum (the CPU run), each once more against a fresh Sentinel with `{}=1` (its topics then have one partition). CPU is per event sent, from `/proc/*/stat`.\n",
        crate::what_if::WORKERS,
        crate::what_if::WORKERS,
    );
    let _ = writeln!(
        md,
        "| mode | rate | workers | gateway p50 | p99 | freshness p99 | CPU µs/event: Sentinel | PostgreSQL | tansu | all |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let row =
        |md: &mut String, mode: &str, workers: &str, report: &Report, cpu: &[(String, f64)]| {
            let _ = writeln!(
            md,
            "| {mode} | {} | {workers} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
            report.target_events_per_second,
            report.gateway_latency_ms.p50,
            report.gateway_latency_ms.p99,
            report.freshness_ms.p99,
            part_us(cpu, SENTINEL_PART),
            part_us(cpu, POSTGRES_PART),
            part_us(cpu, BROKER_PART),
            cpu_total(cpu),
        );
        };
    let mut changes = Vec::new();
    for (mode, shipped, one) in &pairs {
        let Some((report, cpu)) = shipped else {
            continue;
        };
        row(md, mode, "2 (shipped)", report, cpu);
        row(md, mode, "1", &one.run.report, &one.run.cpu_by_process);
        let (all, all_one) = (cpu_total(cpu), cpu_total(&one.run.cpu_by_process));
        changes.push(format!(
            "{mode} events {:+.0}% ({all:.0} → {all_one:.0} µs)",
            100.0 * (all_one / all.max(f64::MIN_POSITIVE) - 1.0)
        ));
    }
    let _ = writeln!(
        md,
        "\nWhat one worker changed in the whole machine's CPU per event: {}. One run each: a difference of a few percent is within this machine's variance from run to run. A worker with a partition of its own also means fewer, larger produce batches for the broker and one PostgreSQL transaction per tick instead of two. Where the dataflow does not need a second core, `{}=1` is the cheaper choice; a machine with more cores than the gateway needs gives the dataflow more workers.\n",
        changes.join("; "),
        crate::what_if::WORKERS,
    );
}

/// The sum of CPU costs per event, µs.
fn cpu_total(parts: &[(String, f64)]) -> f64 {
    parts.iter().map(|(_, us)| us).sum()
}

/// One part's CPU µs per event in a `cpu_by_process` (indexed as `overhead`'s parts are).
fn part_us(parts: &[(String, f64)], index: usize) -> f64 {
    parts.get(index).map_or(0.0, |(_, us)| *us)
}

/// Gateway latency against the two lingers: single events at half their maximum, as shipped
/// (the overhead run) and with one linger shorter.
fn linger_section(md: &mut String, results: &Results) {
    use crate::overhead::{BROKER_PART, POSTGRES_PART, SENTINEL_PART};
    use crate::what_if::{CLAIM_LINGER, PRODUCE_LINGER};
    let (runs, shipped) = match (&results.lingers, results.overhead.first()) {
        (Ok(runs), Some(shipped)) if !runs.is_empty() => (runs, shipped),
        (Err(why), _) => {
            let _ = writeln!(md, "No runs with other lingers: {why}.\n");
            return;
        }
        _ => return,
    };
    let _ = writeln!(md, "### Gateway latency and the two lingers\n");
    let _ = writeln!(
        md,
        "A request waits for its idempotency claim, then for the broker's acknowledgement. Each wait has a linger that trades gateway latency for CPU: a claim group of fewer than {} claims waits `{CLAIM_LINGER}` (shipped: 1 ms) for more, so that more claims share one transaction and its commit; the producer waits up to `{PRODUCE_LINGER}` (shipped: 5 ms) to put more records in each produce request. Single events at half their maximum ({} events/s, {} s), each against a fresh Sentinel: as shipped (the overhead run below) and with one linger shorter. CPU is per event sent, from `/proc/*/stat`.\n",
        ingress::idempotency::LINGER_BELOW_CLAIMS,
        shipped.report.target_events_per_second,
        shipped.report.duration_seconds
    );
    let _ = writeln!(
        md,
        "| Sentinel | gateway p50 | p99 | broker ack p99 | claim wait p99 | claims per statement | CPU µs/event: Sentinel | PostgreSQL | tansu | all |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let row = |md: &mut String, label: &str, report: &Report, cpu: &[(String, f64)]| {
        let _ = writeln!(
            md,
            "| {label} | {:.2} | {:.2} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
            report.gateway_latency_ms.p50,
            report.gateway_latency_ms.p99,
            load::bucket_bound(report.server.broker_ack_p99_ms),
            load::bucket_bound(report.server.claim_wait_p99_ms),
            report.idempotency.claims_per_statement,
            part_us(cpu, SENTINEL_PART),
            part_us(cpu, POSTGRES_PART),
            part_us(cpu, BROKER_PART),
            cpu_total(cpu),
        );
    };
    row(md, "as shipped", &shipped.report, &shipped.cpu_by_process);
    for run in runs {
        row(md, &run.label(), &run.run.report, &run.run.cpu_by_process);
    }
    let _ = writeln!(md);
    let shipped_all = cpu_total(&shipped.cpu_by_process);
    for run in runs {
        let part = if run.variable == CLAIM_LINGER {
            ("PostgreSQL", POSTGRES_PART)
        } else {
            ("the broker", BROKER_PART)
        };
        let all = cpu_total(&run.run.cpu_by_process);
        let _ = writeln!(
            md,
            "With {}: gateway p50 {:.2} ms (as shipped {:.2}), p99 {:.2} ms (as shipped {:.2}); {} spent {:.0} µs per event (as shipped {:.0}), the whole machine {:.0} (as shipped {:.0}, {:+.0}%).",
            run.label(),
            run.run.report.gateway_latency_ms.p50,
            shipped.report.gateway_latency_ms.p50,
            run.run.report.gateway_latency_ms.p99,
            shipped.report.gateway_latency_ms.p99,
            part.0,
            part_us(&run.run.cpu_by_process, part.1),
            part_us(&shipped.cpu_by_process, part.1),
            all,
            shipped_all,
            (all / shipped_all.max(f64::MIN_POSITIVE) - 1.0) * 100.0,
        );
    }
    let _ = writeln!(
        md,
        "\nCPU saved per event is headroom for a higher rate on this shared machine, where every request waits for the same two cores.\n"
    );
}

/// A run's achieved rate, gateway p50 and p99, freshness p99, and the broker's and the claim's
/// p99 waits, as table cells.
fn run_cells(r: &Report) -> String {
    format!(
        "{:.0} | {:.2} | {:.2} | {:.1} | {} | {}",
        r.achieved_events_per_second,
        r.gateway_latency_ms.p50,
        r.gateway_latency_ms.p99,
        r.freshness_ms.p99,
        load::bucket_bound(r.server.broker_ack_p99_ms),
        load::bucket_bound(r.server.claim_wait_p99_ms),
    )
}

/// The maxima held on one Sentinel, window after window, and where the CPU went in each.
fn hold_section(md: &mut String, args: &ReportArgs, results: &Results) {
    let holds = [
        ("single", &results.single_hold),
        ("batch", &results.batch_hold),
    ];
    let Some(shape) = holds.iter().find_map(|(_, hold)| hold.as_ref()) else {
        return;
    };
    let _ = writeln!(md, "## Holding the maximum\n");
    let _ = writeln!(
        md,
        "Each step of a search starts from a fresh Sentinel{}, so that what a step measures does not depend on how much data the steps before it left behind. Here the rate a step held for {} s from a fresh start is held on one fresh Sentinel for {} windows of {} s in a row, under the same bounds, while its tables, state and topics fill; where a window breaks a bound, the next attempt runs at the rate divided by {} (at most {HOLD_ATTEMPTS} attempts). CPU is per event sent in the window, from `/proc/*/stat`.\n",
        if args.broker_command.is_some() { " and broker" } else { "" },
        shape.window_seconds,
        shape.windows,
        shape.window_seconds,
        args.ceilings.search.step_factor,
    );
    let _ = writeln!(
        md,
        "| mode | rate | window | achieved | p50 | p99 | freshness p99 | broker ack p99 | claim wait p99 | CPU µs/event: Sentinel | PostgreSQL | tansu | checkpoints | peak disk writes MB/s | events answered otherwise than expected | rows | outcome |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let cpu = |window: &find_max::HoldWindow, part: usize| {
        window
            .cpu_by_process
            .get(part)
            .map_or("—".into(), |(_, us)| format!("{us:.0}"))
    };
    let mut growth = Vec::new();
    for (name, hold) in holds {
        let Some(hold) = hold else { continue };
        for attempt in &hold.attempts {
            let last = attempt.windows.len();
            for (index, window) in attempt.windows.iter().enumerate() {
                let r = &window.report;
                let outcome = match (&attempt.broke, index + 1 == last) {
                    (Some(broke), true) => broke.clone(),
                    _ => "held".into(),
                };
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {} | {outcome} |",
                    attempt.rate,
                    index + 1,
                    run_cells(r),
                    cpu(window, 0),
                    cpu(window, 1),
                    cpu(window, 2),
                    window.io.checkpoints.map_or("—".into(), |n| n.to_string()),
                    window
                        .io
                        .peak_disk_write_mb_per_s
                        .map_or("—".into(), |mb| format!("{mb:.0}")),
                    r.unexpected_answers,
                    load::statuses(&r.unexpected_by_status),
                    if r.rows_exact { "exact" } else { "MISMATCH" }
                );
            }
            if let (Some(first), Some(last)) = (attempt.windows.first(), attempt.windows.last()) {
                if attempt.windows.len() > 1 {
                    growth.push(format!(
                        "{name} at {} events/s, window 1 → {}: Sentinel {} → {}, PostgreSQL {} → {}, tansu {} → {} µs",
                        attempt.rate,
                        attempt.windows.len(),
                        cpu(first, 0),
                        cpu(last, 0),
                        cpu(first, 1),
                        cpu(last, 1),
                        cpu(first, 2),
                        cpu(last, 2)
                    ));
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "\nRows are exact when every event the gateway accepted was stored once; an event refused (429: past the in-flight budget; 503: broker or idempotency store unavailable) stores nothing and is the client's to retry.\n"
    );
    if !growth.is_empty() {
        let _ = writeln!(
            md,
            "CPU per event as data accumulates: {}.\n",
            growth.join("; ")
        );
    }
    let windows: Vec<(&find_max::HoldWindow, bool)> = holds
        .iter()
        .filter_map(|(_, hold)| hold.as_ref())
        .flat_map(|hold| &hold.attempts)
        .flat_map(|attempt| {
            let last = attempt.windows.len();
            attempt
                .windows
                .iter()
                .enumerate()
                .map(move |(index, window)| (window, attempt.broke.is_some() && index + 1 == last))
        })
        .collect();
    let with_checkpoint = |broke: bool| {
        let of_kind: Vec<_> = windows.iter().filter(|(_, b)| *b == broke).collect();
        let checkpointed = of_kind
            .iter()
            .filter(|(window, _)| window.io.checkpoints.is_some_and(|n| n > 0))
            .count();
        (checkpointed, of_kind.len())
    };
    let ((broke_checkpointed, broke_all), (held_checkpointed, held_all)) =
        (with_checkpoint(true), with_checkpoint(false));
    let _ = writeln!(
        md,
        "Every request's claim and every transaction of the writer commit only once PostgreSQL's write-ahead log is on disk, so they wait behind whatever else the disks are writing. Checkpoints are those PostgreSQL started in the window (its checkpoint statistics; this server: {}); after each, the first change to every page writes the whole page to the log. Peak disk writes is the machine's highest one-second write rate (`/proc/diskstats`).{}\n",
        results
            .checkpoint_settings
            .as_deref()
            .unwrap_or("settings unreadable"),
        if broke_all > 0 {
            format!(" A checkpoint started in {broke_checkpointed} of the {broke_all} windows that broke a bound, and in {held_checkpointed} of the {held_all} that held.")
        } else {
            String::new()
        },
    );
    let _ = writeln!(
        md,
        "tansu's in-memory engine (the development broker) stores each produce request's batch as one object and lists all of a partition's objects on every fetch (tansu-storage 0.6.0, `dynostore.rs`, `fetch`), so its cost per fetch grows with everything the topic holds; it also rewrites one metadata document of every producer on every idempotent produce. A broker that indexes its log (Apache Kafka, Redpanda) does not slow down as it fills. This is why each search step gets a fresh broker.\n"
    );
}

/// How the report's freshness was observed, which runs had to fall back, and which runs had
/// connection attempts dropped on a full listen queue (a one-second tail for each).
fn observation_notes(md: &mut String, results: &Results) {
    let mut sources: Vec<(String, load::FreshnessSource, Option<u64>)> = Vec::new();
    for (mode, search) in [("single", &results.single), ("batch", &results.batch)] {
        for step in &search.steps {
            let name = format!(
                "the {mode} search's step at {}",
                step.report.target_events_per_second
            );
            sources.push((
                name,
                step.report.freshness_source,
                step.report.dropped_connects,
            ));
        }
    }
    for (mode, hold) in [
        ("single", &results.single_hold),
        ("batch", &results.batch_hold),
    ] {
        for attempt in hold.iter().flat_map(|hold| &hold.attempts) {
            for (window, run) in attempt.windows.iter().enumerate() {
                let name = format!(
                    "window {} of the {mode} hold at {}",
                    window + 1,
                    attempt.rate
                );
                sources.push((
                    name,
                    run.report.freshness_source,
                    run.report.dropped_connects,
                ));
            }
        }
    }
    for (name, run) in [
        ("single", &results.single_at_half),
        ("batch", &results.batch_at_half),
    ] {
        if let Some(run) = run {
            sources.push((
                format!("the {name} run at half the maximum"),
                run.freshness_source,
                run.dropped_connects,
            ));
        }
    }
    for burst in &results.bursts {
        sources.push((
            format!("the {} burst", burst.mode.name()),
            burst.freshness_source,
            burst.dropped_connects,
        ));
    }
    let fell_back: Vec<&str> = sources
        .iter()
        .filter(|(_, source, _)| *source != load::FreshnessSource::Feed)
        .map(|(name, _, _)| name.as_str())
        .collect();
    let _ = writeln!(
        md,
        "- Freshness: received → seen on the live feed, as a reader sees it. Each run subscribes to `GET /v1/stream` for each of its tenants before it sends, and times each event's arrival against its `receivedUtc` (the generator and Sentinel share the machine's clock). {}\n",
        if fell_back.is_empty() {
            format!("All {} runs below saw every stored event on the feed.", sources.len())
        } else {
            format!(
                "The feed did not deliver every stored event in {} of {} runs, whose freshness is received → `processed_utc` instead: {}.",
                fell_back.len(),
                sources.len(),
                fell_back.join(", ")
            )
        }
    );
    let dropped: Vec<String> = sources
        .iter()
        .filter_map(|(name, _, dropped)| match dropped {
            Some(n) if *n > 0 => Some(format!("{name} ({n})")),
            _ => None,
        })
        .collect();
    let unread = sources.iter().filter(|(_, _, d)| d.is_none()).count();
    let _ = writeln!(
        md,
        "- New connections: a connection attempt the kernel drops on a full listen queue is retried by the client only a second later (Linux's `ListenOverflows`, counted machine-wide during each run). {}\n",
        if !dropped.is_empty() {
            format!("Dropped in {} of {} runs, whose latency tails include those retries: {}.", dropped.len(), sources.len(), dropped.join(", "))
        } else if unread > 0 {
            format!("Not readable in {unread} of {} runs; none dropped in the others.", sources.len())
        } else {
            format!("None was dropped in any of the {} runs.", sources.len())
        }
    );
}

/// The commands that reproduce the report, and each of its runs on its own.
fn reproduce_section(md: &mut String, args: &ReportArgs, results: &Results) {
    let bench = "cargo run -p bench --release --";
    let _ = writeln!(md, "## Reproducing it\n");
    let _ = writeln!(
        md,
        "`{}` builds the release binaries, starts a database{} of its own and runs `target/release/bench report --sentinel-bin target/release/sentinel{}` against them. Each run on its own, against one Sentinel as shipped started by `infra/dev run` in another shell, from the clone's root after `. .dev/env` (on one long-lived Sentinel and broker a run also measures what the runs before it left behind; the report's runs each start fresh):\n",
        args.command_line,
        if args.broker_command.is_some() { " and a fresh tansu" } else { "" },
        if args.broker_command.is_some() { " --broker-command '…'" } else { "" },
    );
    let search = &args.ceilings.search;
    let _ = writeln!(
        md,
        "- the searches: `{bench} find-max --mode single --start-rate {}` and `{bench} find-max --mode batch --start-rate {}`",
        search.start_rate,
        4 * search.start_rate
    );
    for (mode, max) in [
        (Mode::Single, results.single.max_sustained),
        (Mode::Batch, results.batch.max_sustained),
    ] {
        if let Some(max) = max {
            let _ = writeln!(
                md,
                "- {} at half their maximum: `{bench} load --mode {} --rate {} --duration {}`",
                if mode == Mode::Single {
                    "single events"
                } else {
                    "batches"
                },
                mode.name(),
                (max / 2.0).round() as u64,
                args.half_rate_seconds
            );
        }
    }
    if let Some(max) = results.batch.max_sustained {
        let _ = writeln!(
            md,
            "- the code profile: `{bench} profile --sentinel-bin target/release/sentinel --mode batch --rate {}` (needs Linux `perf`; it starts a Sentinel of its own)",
            max.round() as u64
        );
    }
    let _ = writeln!(
        md,
        "- the ceilings: `{bench} ceilings` (HTTP against a trivial handler, COPY into a copy of `events`, raw produce to `KAFKA_BROKERS`)\n- the de-duplication's memory alone: `{bench} dedup-memory --rate 1000` (no broker or database; this process only)\n"
    );
}

fn markdown(args: &ReportArgs, results: &Results) -> String {
    let mut md = String::new();
    let rate = |value: Option<f64>| value.map_or("—".into(), |v| format!("{v:.0}"));
    let ratio = |value: Option<f64>, ceiling: Option<f64>| match (value, ceiling) {
        (Some(v), Some(c)) if c > 0.0 => format!("{:.0}%", v / c * 100.0),
        _ => "—".into(),
    };
    let _ = writeln!(md, "# Performance results\n");
    let _ = writeln!(
        md,
        "Produced by `{}` (which runs `bench report`); every number below comes from that run.\n",
        args.command_line
    );
    let _ = writeln!(md, "- Machine: {}", results.machine);
    let _ = writeln!(md, "- Code: {}", results.code);
    let load = &args.ceilings.search.load;
    let _ = writeln!(
        md,
        "- Load: {} tenants × {} streams, ~{}-byte payloads, {} connections, batches of {}; each step {} s, the rate ×{} per step until a bound breaks, then {} bisections between the highest rate held and the lowest broken; bounds: gateway p99 ≤ {} ms, freshness p99 ≤ {} ms, exact rows (a step that breaks only a latency bound runs once more){}\n",
        load.tenants, load.streams, load.payload_bytes, load.connections, load.batch_size,
        args.ceilings.search.step_seconds, args.ceilings.search.step_factor, args.ceilings.search.refine_steps, args.ceilings.search.p99_bound_ms, args.ceilings.search.freshness_p99_bound_ms,
        if args.sentinel_bin.is_some() {
            format!(
                "; each search step and each run below against a fresh Sentinel as shipped (its defaults, JSON logs at `info` included), with a database and topics{} of its own, warmed by {} s at {} events/s",
                if args.broker_command.is_some() { " and a broker" } else { "" },
                crate::overhead::WARM_UP_SECONDS,
                crate::overhead::WARM_UP_RATE
            )
        } else {
            String::new()
        }
    );
    observation_notes(&mut md, results);
    reproduce_section(&mut md, args, results);
    let _ = writeln!(md, "## Maximum sustained rate\n");
    let held_for = results
        .single_hold
        .as_ref()
        .or(results.batch_hold.as_ref())
        .map_or(0, |hold| hold.windows * hold.window_seconds);
    let _ = writeln!(md, "| mode | Sentinel events/s | held {held_for} s on one Sentinel | HTTP ceiling | Sentinel / HTTP | PostgreSQL COPY ceiling rows/s | Sentinel / COPY | broker ceiling records/s | Sentinel / broker |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let c = &results.ceilings;
    for (name, search, hold, http, http_unbroken) in [
        (
            "single",
            &results.single,
            &results.single_hold,
            c.http_single,
            c.http_single_unbroken,
        ),
        (
            "batch",
            &results.batch,
            &results.batch_hold,
            c.http_batch,
            c.http_batch_unbroken,
        ),
    ] {
        // A search that never broke a bound found a floor, not the maximum.
        let floor = |unbroken: bool| if unbroken { "≥ " } else { "" };
        let unbroken = search.lowest_broken_rate.is_none();
        let max = search.max_sustained;
        let held = match hold {
            Some(hold) => match hold.max_held {
                Some(held) => format!("{held:.0}"),
                None => format!(
                    "< {}",
                    hold.attempts.last().map_or(0, |attempt| attempt.rate)
                ),
            },
            None => "—".into(),
        };
        let _ = writeln!(
            md,
            "| {name} | {}{} | {held} | {}{} | {}{} | {:.0} | {} | {:.0} | {} |",
            floor(unbroken),
            rate(max),
            floor(http_unbroken),
            rate(http),
            // Against a ceiling that is only a floor, the ratio is an upper bound.
            if http_unbroken { "≤ " } else { "" },
            ratio(max, http),
            c.postgres_copy,
            ratio(max, Some(c.postgres_copy)),
            c.broker_produce,
            ratio(max, Some(c.broker_produce)),
        );
    }
    let _ = writeln!(
        md,
        "\nAn HTTP ceiling marked ≥ held every bound up to the search's last step: the trivial \
         handler was not saturated, so the ceiling is higher and the ratio lower than shown.\n"
    );
    if let Some(hold) = results.single_hold.as_ref().or(results.batch_hold.as_ref()) {
        let _ = writeln!(
            md,
            "Sentinel events/s is the highest rate a search step held for {} s from a fresh start ([Steps of the searches](#steps-of-the-searches)); the ratios are of it. Held {} s is the highest rate one Sentinel held for {} windows of {} s in a row, or below which rate that was not found ([Holding the maximum](#holding-the-maximum)): on the development broker, that is a measure of tansu's growth as much as of Sentinel.\n",
            hold.window_seconds, hold.windows * hold.window_seconds, hold.windows, hold.window_seconds
        );
    }
    let _ = writeln!(md, "## What limits Sentinel here\n");
    what_limits(&mut md, results);
    let _ = writeln!(md, "\n## At half the maximum rate\n");
    let _ = writeln!(md, "| mode | rate | gateway p50 | p90 | p95 | p99 | p99.9 | freshness p50 | p95 | p99 | rows |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, report) in [
        ("single", &results.single_at_half),
        ("batch", &results.batch_at_half),
    ] {
        if let Some(r) = report {
            let (g, f) = (&r.gateway_latency_ms, &r.freshness_ms);
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
                r.achieved_events_per_second, g.p50, g.p90, g.p95, g.p99, g.p999, f.p50, f.p95, f.p99,
                if r.rows_exact { "exact" } else { "MISMATCH" }
            );
        }
    }
    let _ = writeln!(md, "\n![latency against rate](latency-vs-rate.svg)\n");
    linger_section(&mut md, results);
    one_worker_section(&mut md, results);
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | verdict |\n|---|---|---|");
    if let Some(max) = results.single.max_sustained {
        let _ = writeln!(
            md,
            "| ≥ 20,000 events/s single | {max:.0} | {} |",
            verdict(max, SINGLE_TARGET, true)
        );
    }
    if let Some(max) = results.batch.max_sustained {
        let _ = writeln!(
            md,
            "| ≥ 60,000 events/s batch | {max:.0} | {} |",
            verdict(max, BATCH_TARGET, true)
        );
        let _ = writeln!(
            md,
            "| batch ≥ 50% of the COPY ceiling | {:.0}% | {} |",
            max / c.postgres_copy * 100.0,
            verdict(max / c.postgres_copy, 0.5, true)
        );
    }
    for (name, report) in [
        ("single", &results.single_at_half),
        ("batch", &results.batch_at_half),
    ] {
        if let Some(r) = report {
            let _ = writeln!(
                md,
                "| {name}, half max: gateway p99 < 5 ms | {:.2} ms | {} |",
                r.gateway_latency_ms.p99,
                verdict(r.gateway_latency_ms.p99, 5.0, false)
            );
            let _ = writeln!(
                md,
                "| {name}, half max: freshness p99 < 250 ms | {:.1} ms | {} |",
                r.freshness_ms.p99,
                verdict(r.freshness_ms.p99, 250.0, false)
            );
        }
    }
    let _ = writeln!(
        md,
        "\nWhat limits each, from the sections above: the rates are the machine's CPU, shared by the generator, Sentinel, the broker and PostgreSQL, and what each spends per event ([What limits Sentinel here](#what-limits-sentinel-here)); the gateway's latency is a request's two waits, the idempotency claim's durable commit and the broker's acknowledgement, each behind a linger that trades latency for CPU ([Gateway latency and the two lingers](#gateway-latency-and-the-two-lingers)); freshness is the consumer's fetch wait, which tansu waits out before it answers (`fetch.wait.max.ms`, 50 ms: a record produced while a fetch waits is read by the next one, so it waits 1.5 fetch waits on average), then the writer's commit and the feed's read of the committed rows. A broker that answers a fetch as soon as records are ready (Apache Kafka, Redpanda) takes the fetch wait out of freshness; on tansu a shorter wait (`SENTINEL_KAFKA_OPTIONS=fetch.wait.max.ms=…`) buys freshness with more, smaller fetches and commits, which is CPU the rates above would lose."
    );
    let _ = writeln!(md, "\n## Steps of the searches\n");
    let _ = writeln!(
        md,
        "Broker ack p99 and claim wait p99 come from Sentinel's own histograms over the step \
         (`broker_produce_duration_ms`, `idempotency_claim_duration_ms`; the upper bound of the \
         bucket holding the 99th percentile): the two waits inside a request's gateway latency. \
         Most requests in flight reaching the connection count means requests queued for a \
         connection during a stall. Rows are in the order run: after the first step that broke, \
         the search bisects between the highest rate held and the lowest broken.\n"
    );
    for (name, search) in [("single", &results.single), ("batch", &results.batch)] {
        let _ = writeln!(md, "{name}:\n\n| target | achieved | p50 | p99 | freshness p99 | broker ack p99 | claim wait p99 | most requests in flight | idempotency claims per statement | outcome |\n|---|---|---|---|---|---|---|---|---|---|");
        for step in &search.steps {
            let r = &step.report;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {} |",
                r.target_events_per_second,
                run_cells(r),
                r.peak_in_flight,
                r.idempotency.claims_per_statement,
                step.broke.as_deref().unwrap_or("held")
            );
        }
        let _ = writeln!(md);
    }
    hold_section(&mut md, args, results);
    if !results.bursts.is_empty() {
        let _ = writeln!(md, "## A 2× overload burst\n");
        let _ = writeln!(
            md,
            "Twice each maximum for {BURST_SECONDS} s against a fresh Sentinel, open loop: a request's gateway latency counts from when it was due, so requests queued for one of the generator's connections count their wait. The backlog is the time after the burst's last intended send until its last request was answered; freshness is received → visible of the burst's events, that is how far behind the dataflow fell; the consumer lag is Sentinel's own `processor_lag_seconds` (whole seconds, per partition, the highest), read every {} ms, and its recovery the time after the burst's end until it stayed under 1 s.\n",
            LAG_SAMPLE_INTERVAL.as_millis()
        );
        let _ = writeln!(md, "| mode | rate | events/s sent | gateway p99 ms | refused | backlog s | freshness p50 ms | p99 | max | peak consumer lag s | lag back under 1 s after | rows |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for b in &results.bursts {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0}{} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} |",
                b.mode.name(),
                b.burst_rate,
                b.achieved_events_per_second,
                if b.pool_saturated { " (every connection busy)" } else { "" },
                b.gateway_p99_ms_during_burst,
                if b.unexpected_by_status.is_empty() { "none".into() } else { load::statuses(&b.unexpected_by_status).trim().trim_start_matches('(').trim_end_matches(')').to_owned() },
                b.backlog_seconds,
                b.freshness_ms.p50,
                b.freshness_ms.p99,
                b.freshness_ms.max,
                b.peak_lag_seconds,
                b.recovery_seconds.map_or("not within 60 s".into(), |s| format!("{s:.1} s")),
                if b.rows_exact { "exact" } else { "MISMATCH" }
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Observability overhead\n");
    match results.overhead.first() {
        None => {
            let _ = writeln!(
                md,
                "Not measured in this run (`bench report` was given no `--sentinel-bin`).\n"
            );
        }
        Some(shipped) => {
            let _ = writeln!(
                md,
                "The same single-event load ({} events/s, {} s) against {} fresh Sentinels, one after the other. CPU is Sentinel's own (all its threads, from `/proc/<pid>/task/*/schedstat`) over the run and its drain, per event sent; the broker and PostgreSQL are not counted.\n",
                shipped.report.target_events_per_second,
                shipped.report.duration_seconds,
                results.overhead.len()
            );
            let _ = writeln!(
                md,
                "| Sentinel | achieved events/s | gateway p50 | p99 | freshness p99 | CPU µs per event | CPU vs as shipped | OTLP bytes exported | rows |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
            for variant in &results.overhead {
                let r = &variant.report;
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.0} | {:+.0}% | {} | {} |",
                    variant.name,
                    r.achieved_events_per_second,
                    r.gateway_latency_ms.p50,
                    r.gateway_latency_ms.p99,
                    r.freshness_ms.p99,
                    variant.cpu_us_per_event,
                    100.0 * (variant.cpu_us_per_event / shipped.cpu_us_per_event - 1.0),
                    variant.otlp_bytes,
                    if r.rows_exact { "exact" } else { "MISMATCH" }
                );
            }
            let _ = writeln!(md);
            if let Some(again) = results
                .overhead
                .iter()
                .find(|variant| variant.name == crate::overhead::AS_SHIPPED_AGAIN)
            {
                let _ = writeln!(
                    md,
                    "{}\n",
                    run_to_run_variation(
                        (shipped.cpu_us_per_event, again.cpu_us_per_event),
                        (
                            shipped.report.gateway_latency_ms.p99,
                            again.report.gateway_latency_ms.p99
                        ),
                        (
                            shipped.report.freshness_ms.p99,
                            again.report.freshness_ms.p99
                        ),
                    )
                );
            }
        }
    }
    md
}

/// What the two runs as shipped tell of the machine's run-to-run variation, from their (first,
/// again) CPU µs per event, gateway p99 and freshness p99.
fn run_to_run_variation(
    (cpu_first, cpu_again): (f64, f64),
    (p99_first, p99_again): (f64, f64),
    (freshness_first, freshness_again): (f64, f64),
) -> String {
    let cpu = 100.0 * (cpu_again / cpu_first.max(f64::MIN_POSITIVE) - 1.0);
    let p99 = (p99_again - p99_first).abs();
    let freshness = (freshness_again - freshness_first).abs();
    format!(
        "The first and the last run are the same Sentinel as shipped under the same load: they differ by {:.0}% in CPU per event, {p99:.2} ms in gateway p99 and {freshness:.1} ms in freshness p99. A difference between the rows no larger than that is within this machine's run-to-run variation, not an effect of what was switched on or off; one repeated run shows only part of that variation, so a larger difference (one stall moves a p99) is not yet an effect either.",
        cpu.abs()
    )
}

/// A fresh Sentinel for the next run, with `load` aimed at it, when there are `sentinels` to
/// start; otherwise `load` keeps pointing at the Sentinel it names.
async fn start_fresh(
    sentinels: Option<&Sentinels>,
    load: &mut load::LoadArgs,
) -> anyhow::Result<Option<FreshSentinel>> {
    let Some(sentinels) = sentinels else {
        return Ok(None);
    };
    let sentinel = sentinels.start(&[]).await?;
    sentinel.aim(load);
    Sentinels::warm_up(load).await?;
    Ok(Some(sentinel))
}

async fn stop_fresh(sentinels: Option<&Sentinels>, sentinel: Option<FreshSentinel>) {
    if let (Some(sentinels), Some(sentinel)) = (sentinels, sentinel) {
        sentinels.stop(sentinel).await;
    }
}

/// The load of one run beside the searches (profile, what-ifs): `mode` at `rate` for
/// `--overhead-seconds`.
fn extra_run(args: &ReportArgs, mode: Mode, rate: u64) -> load::LoadArgs {
    let mut load = args.ceilings.search.load.clone();
    load.mode = mode;
    load.rate = rate;
    load.duration = args.overhead_seconds;
    load
}

/// `bench report`.
pub async fn command(args: &ReportArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)?;
    // The code measured is the checkout the binaries were built from, read before the run
    // writes anything.
    let code = measured_code(&args.out_dir);
    let sentinels = match &args.sentinel_bin {
        Some(bin) => Some(
            Sentinels::connect(bin, &args.ceilings.search.load, &std::env::temp_dir())
                .await?
                .with_broker_command(args.broker_command.clone()),
        ),
        None => None,
    };
    let sentinels = sentinels.as_ref();
    let mut single_args = args.ceilings.search.clone();
    single_args.load.mode = Mode::Single;
    eprintln!("report: searching the single-event maximum");
    let single = find_max::search(&single_args, sentinels).await?;
    let mut batch_args = args.ceilings.search.clone();
    batch_args.load.mode = Mode::Batch;
    batch_args.start_rate = batch_args
        .start_rate
        .max(4 * args.ceilings.search.start_rate);
    eprintln!("report: searching the batch maximum");
    let batch = find_max::search(&batch_args, sentinels).await?;
    let hold = |search: &find_max::FindMaxArgs, found: &find_max::Search| {
        let (search, max) = (search.clone(), found.max_sustained);
        async move {
            match (sentinels, max) {
                (Some(sentinels), Some(max)) => {
                    find_max::hold(&search, sentinels, max, args.hold_windows, HOLD_ATTEMPTS)
                        .await
                        .map(Some)
                }
                _ => Ok(None),
            }
        }
    };
    eprintln!("report: holding the single-event maximum");
    let single_hold = hold(&single_args, &single).await?;
    eprintln!("report: holding the batch maximum");
    let batch_hold = hold(&batch_args, &batch).await?;
    let (single_max, batch_max) = (single.max_sustained, batch.max_sustained);
    let mut base = args.ceilings.search.load.clone();
    let fresh = start_fresh(sentinels, &mut base).await?;
    let single_at_half = half_rate(args, &base, Mode::Single, single_max).await;
    stop_fresh(sentinels, fresh).await;
    let fresh = start_fresh(sentinels, &mut base).await?;
    let batch_at_half = half_rate(args, &base, Mode::Batch, batch_max).await;
    stop_fresh(sentinels, fresh).await;
    let mut bursts = Vec::new();
    for (mode, max) in [(Mode::Single, single_max), (Mode::Batch, batch_max)] {
        let fresh = start_fresh(sentinels, &mut base).await?;
        let burst = burst(&base, mode, max).await;
        stop_fresh(sentinels, fresh).await;
        bursts.extend(burst?);
    }
    let (single_at_half, batch_at_half) = (single_at_half?, batch_at_half?);
    if let Some(sentinels) = sentinels {
        // The COPY ceiling copies into a table shaped like `events`.
        sentinels.migrate_base()?;
    }
    let ceilings = ceilings::measure(&args.ceilings).await?;
    let (overhead, batch_profile) = match sentinels {
        Some(sentinels) => {
            let rate = single_max.map_or(args.ceilings.search.start_rate, |max| {
                (max / 2.0).round() as u64
            });
            crate::overhead::measure(
                sentinels,
                &args.ceilings.search.load,
                rate,
                args.overhead_seconds,
                (Mode::Batch, batch_max.map(|max| max.round() as u64)),
            )
            .await?
        }
        None => (Vec::new(), None),
    };
    let code_profile = match (sentinels, batch_max) {
        (Some(sentinels), Some(max)) if crate::profile::available() => {
            let load = extra_run(args, Mode::Batch, max.round() as u64);
            eprintln!("report: perf profile, batches at {} events/s", load.rate);
            // A profile that fails (perf refused, say) costs its section, not the report.
            crate::profile::measure(sentinels, &load)
                .await
                .map_err(|err| format!("the profiled run failed: {err:#}"))
        }
        (Some(_), Some(_)) => Err("`perf` is not on the PATH".into()),
        (None, _) => Err("it needs `--sentinel-bin`".into()),
        (_, None) => Err("the batch search found no maximum to profile at".into()),
    };
    let (code_profile, code_profile_missing) = match code_profile {
        Ok(profile) => (Some(profile), None),
        Err(why) => (None, Some(why)),
    };
    let index_cost = match (sentinels, batch_max) {
        (Some(sentinels), Some(max)) => {
            let load = extra_run(args, Mode::Batch, max.round() as u64);
            eprintln!(
                "report: batches at {} events/s without the read indexes of events",
                load.rate
            );
            // Like the profile: a failed run costs its section, not the report.
            crate::what_if::without_read_indexes(sentinels, &load)
                .await
                .map_err(|err| format!("the run failed: {err:#}"))
        }
        (None, _) => Err("it needs `--sentinel-bin`".into()),
        (_, None) => Err("the batch search found no maximum to run at".into()),
    };
    let lingers = match (sentinels, single_max) {
        (Some(sentinels), Some(max)) => {
            let load = extra_run(args, Mode::Single, (max / 2.0).round() as u64);
            eprintln!(
                "report: single events at {} events/s with the claims' linger at 0 ms and the producer's at 1 and 0 ms",
                load.rate
            );
            use crate::what_if::{CLAIM_LINGER, PRODUCE_LINGER};
            crate::what_if::with_settings(
                sentinels,
                &load,
                &[(CLAIM_LINGER, 0), (PRODUCE_LINGER, 1), (PRODUCE_LINGER, 0)],
            )
            .await
            .map_err(|err| format!("a run failed: {err:#}"))
        }
        (None, _) => Err("they need `--sentinel-bin`".into()),
        (_, None) => Err("the single-event search found no maximum".into()),
    };
    let one_worker = match (sentinels, single_max, batch_max) {
        (Some(sentinels), Some(single_max), Some(batch_max)) => {
            let single = extra_run(args, Mode::Single, (single_max / 2.0).round() as u64);
            let batch = extra_run(args, Mode::Batch, batch_max.round() as u64);
            eprintln!(
                "report: one timely worker: single events at {} events/s, batches at {} events/s",
                single.rate, batch.rate
            );
            one_worker(sentinels, &single, &batch)
                .await
                .map_err(|err| format!("a run failed: {err:#}"))
        }
        (None, _, _) => Err("they need `--sentinel-bin`".into()),
        _ => Err("a search found no maximum".into()),
    };
    let checkpoint_settings =
        crate::io_meter::checkpoint_settings(&args.ceilings.search.load.database_url).await;
    eprintln!("report: the de-duplication's memory alone");
    let dedup_memory = crate::dedup_memory::in_child_processes(&DEDUP_MEMORY_RATES)
        .map_err(|err| format!("{err:#}"));
    let results = Results {
        one_worker,
        dedup_memory,
        checkpoint_settings,
        lingers,
        index_cost,
        overhead,
        batch_profile,
        code_profile,
        code_profile_missing,
        bursts,
        machine: machine(),
        code,
        single,
        batch,
        single_at_half,
        batch_at_half,
        single_hold,
        batch_hold,
        ceilings,
    };
    std::fs::write(
        args.out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    plot(&args.out_dir.join("latency-vs-rate.svg"), &results)?;
    std::fs::write(args.out_dir.join("results.md"), markdown(args, &results))?;
    eprintln!(
        "report: wrote {}",
        args.out_dir.join("results.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests are built in the repository's checkout, whose commit the report names.
    #[test]
    fn the_report_names_the_commit_it_measures() {
        let code = measured_code(Path::new("docs/perf"));
        let commit = code
            .strip_prefix("commit `")
            .and_then(|rest| rest.split('`').next())
            .unwrap_or_else(|| panic!("no commit in {code:?}"));
        assert!(commit.len() >= 12, "{code:?}");
        assert!(commit.bytes().all(|b| b.is_ascii_hexdigit()), "{code:?}");
    }

    #[test]
    fn changed_paths_are_read_from_porcelain_status() {
        assert_eq!(
            changed_paths(" M bench/src/report.rs\nR  old.md -> docs/new.md\nM  README.md\n"),
            vec!["bench/src/report.rs", "docs/new.md", "README.md"]
        );
    }

    fn parts(costs: &[(&str, f64)]) -> Vec<(String, f64)> {
        costs
            .iter()
            .map(|(name, us)| (name.to_string(), *us))
            .collect()
    }

    #[test]
    fn postgres_is_told_apart_by_connection() {
        let single = parts(&[("sentinel-claims", 30.0), ("sentinel-writer", 20.0)]);
        let batch = parts(&[
            ("sentinel-writer", 12.0),
            ("sentinel-claims", 6.0),
            ("sentinel-read", 2.0),
        ]);
        let mut md = String::new();
        connection_section(&mut md, &single, &batch);
        assert!(md.contains("| `sentinel-writer` | 20.0 | 12.0 |"), "{md}");
        assert!(md.contains("| `sentinel-read` | — | 2.0 |"), "{md}");
        let writer_row = md.find("`sentinel-writer` |").unwrap();
        let claims_row = md.find("`sentinel-claims` |").unwrap();
        assert!(writer_row < claims_row, "rows follow the batch costs: {md}");
        assert!(
            md.contains("(`sentinel-claims`) cost PostgreSQL 30.0 µs (60%"),
            "{md}"
        );
        assert!(md.contains("cost PostgreSQL 6.0 µs (30%"), "{md}");
        assert!(md.contains("`sentinel-read` is the readers' pool"), "{md}");
    }

    #[test]
    fn the_repeated_run_gives_the_variation_both_ways() {
        let lower = run_to_run_variation((60.0, 54.0), (18.8, 21.3), (247.2, 251.0));
        assert!(lower.contains("differ by 10% in CPU per event, 2.50 ms in gateway p99 and 3.8 ms in freshness p99"), "{lower}");
        let higher = run_to_run_variation((50.0, 55.0), (21.3, 18.8), (251.0, 247.2));
        assert!(
            higher.contains("differ by 10% in CPU per event, 2.50 ms"),
            "{higher}"
        );
    }

    #[test]
    fn no_connections_no_section() {
        let mut md = String::new();
        connection_section(&mut md, &[], &[]);
        assert!(md.is_empty());
    }

    #[test]
    fn lag_recovers_at_the_first_sample_after_its_last_high_one() {
        let samples = [
            (5.0, 0.0),
            (9.0, 3.0),
            (11.0, 2.0),
            (12.5, 1.0),
            (13.0, 0.0),
        ];
        assert_eq!(lag_recovery(&samples, 10.0), Some(2.5));
        // A lag that dips under 1 s and rises again has not recovered at the dip.
        let samples = [(9.0, 3.0), (10.5, 0.0), (11.0, 4.0), (14.0, 0.0)];
        assert_eq!(lag_recovery(&samples, 10.0), Some(4.0));
        // Back under it before the burst's end: no time to recover after it.
        assert_eq!(lag_recovery(&[(4.0, 2.0), (6.0, 0.0)], 10.0), Some(0.0));
        assert_eq!(lag_recovery(&[(4.0, 0.0), (12.0, 1.0)], 10.0), Some(0.0));
        assert_eq!(lag_recovery(&[(9.0, 0.0), (12.0, 5.0)], 10.0), None);
    }

    #[test]
    fn a_bound_missed_by_little_says_by_how_much() {
        assert_eq!(verdict(256.3, 250.0, false), "missed: 3% over the bound");
        assert_eq!(verdict(27.2, 5.0, false), "missed: 5.4× the bound");
        assert_eq!(verdict(240.0, 250.0, false), "met");
        assert_eq!(verdict(9023.0, 20_000.0, true), "missed by 55%");
    }
}
