//! `find-max`: steps the arrival rate up until a bound breaks — gateway p99 latency, freshness
//! p99, achieved rate, exact rows or unexpected answers — and reports the highest rate that held.
//! A step that breaks only a latency bound runs once more, and stops the search if it breaks again.
//! Given fresh Sentinels, every step (and every second run of one) gets one of its own, and
//! [`hold`] then looks for the highest rate one Sentinel holds for several steps in a row.

use std::io::Write;

use serde::Serialize;

use crate::load::{self, LoadArgs, Report};
use crate::overhead::{metered_run, Sentinels};

/// Search settings; the load's own settings shape every step.
#[derive(Debug, Clone, clap::Args)]
pub struct FindMaxArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// First rate tried, events/s.
    #[arg(long, default_value_t = 2_000)]
    pub start_rate: u64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.3)]
    pub step_factor: f64,
    /// Seconds of load per step. A stall of S seconds makes the requests sent in its first
    /// S − 0.1 s wait past a 100 ms bound, and p99 breaks once they are 1% of the step: one
    /// 180 ms stall breaks an 8 s step, a 15 s step takes 250 ms of stalls. Longer steps find
    /// the rate the machine sustains with its stalls rather than one that dodged them.
    #[arg(long, default_value_t = 15)]
    pub step_seconds: u64,
    /// Bound on gateway p99 latency, ms.
    #[arg(long, default_value_t = 100.0)]
    pub p99_bound_ms: f64,
    /// Bound on freshness p99, ms.
    #[arg(long, default_value_t = 1_000.0)]
    pub freshness_p99_bound_ms: f64,
    /// Most steps.
    #[arg(long, default_value_t = 14)]
    pub max_steps: usize,
}

/// One step of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The step's run.
    pub report: Report,
    /// Why the step failed, if it did.
    pub broke: Option<String>,
}

/// The outcome of a search.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// The highest rate that held every bound (events/s achieved).
    pub max_sustained: Option<f64>,
}

/// The first bound `report` broke, noting when every connection of the generator was busy (a
/// larger `--connections` may then hold the rate).
fn broken_bound(args: &FindMaxArgs, report: &Report) -> Option<String> {
    let broke = first_broken_bound(args, report)?;
    Some(if report.pool_saturated() {
        format!("{broke}; all {} connections were busy", report.connections)
    } else {
        broke
    })
}

fn first_broken_bound(args: &FindMaxArgs, report: &Report) -> Option<String> {
    let target = report.target_events_per_second as f64;
    if report.achieved_events_per_second < 0.95 * target {
        return Some(format!(
            "sent only {:.0} of {target:.0} events/s",
            report.achieved_events_per_second
        ));
    }
    if report.gateway_latency_ms.p99 > args.p99_bound_ms {
        return Some(format!(
            "gateway p99 {:.1} ms > {} ms",
            report.gateway_latency_ms.p99, args.p99_bound_ms
        ));
    }
    if !args.load.no_check && report.freshness_ms.p99 > args.freshness_p99_bound_ms {
        return Some(format!(
            "freshness p99 {:.1} ms > {} ms",
            report.freshness_ms.p99, args.freshness_p99_bound_ms
        ));
    }
    let bad = report.unexpected_answers + report.transport_errors;
    if bad * 1000 > report.events_sent {
        return Some(format!(
            "{bad} unexpected answers{} or transport errors",
            load::statuses(&report.unexpected_by_status)
        ));
    }
    if !report.rows_exact {
        return Some(format!(
            "{} rows stored, {} expected",
            report.stored_rows, report.expected_rows
        ));
    }
    None
}

/// One attempt to hold a rate on one fresh Sentinel, window after window.
#[derive(Debug, Clone, Serialize)]
pub struct HoldAttempt {
    /// Target events/s.
    pub rate: u64,
    /// The windows run, in order; the last one broke a bound if the attempt failed.
    pub windows: Vec<HoldWindow>,
    /// The bound the attempt broke, if it did.
    pub broke: Option<String>,
}

/// One window of a hold.
#[derive(Debug, Clone, Serialize)]
pub struct HoldWindow {
    /// The window's run.
    pub report: Report,
    /// CPU time per event sent, in microseconds, of each part of the machine in the window.
    pub cpu_by_process: Vec<(String, f64)>,
}

/// The outcome of [`hold`].
#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    /// Seconds of each window.
    pub window_seconds: u64,
    /// Windows an attempt must hold.
    pub windows: u64,
    /// Every attempt, from the search's maximum down.
    pub attempts: Vec<HoldAttempt>,
    /// The lowest rate achieved in any window of the attempt that held every window.
    pub max_held: Option<f64>,
}

/// Holds the rate the search found on one fresh Sentinel for `windows` steps in a row (what
/// a step measured from a fresh start, held while tables, state and topics fill), measuring
/// what each part of the machine spends per event in each window; while a window breaks a
/// bound, tries again at the rate divided by the step factor, `attempts` times at most. No
/// window runs twice: a stall that breaks one fails the attempt.
pub async fn hold(
    args: &FindMaxArgs,
    fresh: &Sentinels,
    from: f64,
    windows: u64,
    attempts: usize,
) -> anyhow::Result<Holding> {
    let mut holding = Holding {
        window_seconds: args.step_seconds,
        windows,
        attempts: Vec::new(),
        max_held: None,
    };
    let mut rate = from;
    for _ in 0..attempts {
        let mut load = args.load.clone();
        load.rate = rate.round() as u64;
        load.duration = args.step_seconds;
        let attempt = fresh
            .on_fresh(&load, async |load, pid| {
                hold_attempt(args, load, windows, pid).await
            })
            .await?;
        let held = attempt.broke.is_none();
        if held {
            holding.max_held = attempt
                .windows
                .iter()
                .map(|window| window.report.achieved_events_per_second)
                .reduce(f64::min);
        }
        holding.attempts.push(attempt);
        if held {
            break;
        }
        rate /= args.step_factor;
    }
    Ok(holding)
}

/// Runs the windows of one attempt against the warmed-up Sentinel `load` aims at (process
/// `sentinel`) until one breaks a bound.
async fn hold_attempt(
    args: &FindMaxArgs,
    load: &LoadArgs,
    windows: u64,
    sentinel: u32,
) -> anyhow::Result<HoldAttempt> {
    let mut attempt = HoldAttempt {
        rate: load.rate,
        windows: Vec::new(),
        broke: None,
    };
    for window in 1..=windows {
        let (report, cpu_by_process) = metered_run(load, sentinel).await?;
        let broke = broken_bound(args, &report);
        eprintln!(
            "hold: {} events/s, window {window} of {windows} → p99 {:.1} ms, freshness p99 {:.1} ms{}",
            load.rate,
            report.gateway_latency_ms.p99,
            report.freshness_ms.p99,
            broke.as_ref().map(|b| format!(" — {b}")).unwrap_or_default()
        );
        attempt.windows.push(HoldWindow {
            report,
            cpu_by_process,
        });
        if broke.is_some() {
            attempt.broke = broke.map(|b| format!("window {window}: {b}"));
            break;
        }
    }
    Ok(attempt)
}

/// Runs `load`: against a fresh Sentinel of `fresh`, warmed up, when given one; else against
/// `load.url`.
async fn run_step(load: &LoadArgs, fresh: Option<&Sentinels>) -> anyhow::Result<Report> {
    match fresh {
        Some(sentinels) => {
            sentinels
                .on_fresh(load, async |load, _| load::run(load, true).await)
                .await
        }
        None => load::run(load, true).await,
    }
}

/// Runs the search: every step against a fresh Sentinel of `fresh` when given, so that what a
/// step measures does not depend on what the steps before it left behind; else every step
/// against `args.load.url`.
pub async fn search(args: &FindMaxArgs, fresh: Option<&Sentinels>) -> anyhow::Result<Search> {
    let mut steps = Vec::new();
    let mut rate = args.start_rate as f64;
    let mut max_sustained = None;
    for _ in 0..args.max_steps {
        let mut load = args.load.clone();
        load.rate = rate.round() as u64;
        load.duration = args.step_seconds;
        let mut report = run_step(&load, fresh).await?;
        let mut broke = broken_bound(args, &report);
        log_step(load.rate, &report, &broke);
        if broke.is_some() && only_latency_broke(args, &report) {
            // One percentile over the bound may be a single stall of the shared machine: the
            // step runs again and stops the search only if it breaks again. Both runs are kept.
            steps.push(Step {
                report,
                broke: broke.map(|b| format!("{b}; run again")),
            });
            report = run_step(&load, fresh).await?;
            broke = broken_bound(args, &report);
            log_step(load.rate, &report, &broke);
        }
        let stop = broke.is_some();
        if !stop {
            max_sustained = Some(report.achieved_events_per_second);
        }
        steps.push(Step { report, broke });
        if stop {
            break;
        }
        rate *= args.step_factor;
    }
    Ok(Search {
        steps,
        max_sustained,
    })
}

fn log_step(rate: u64, report: &Report, broke: &Option<String>) {
    eprintln!(
        "find-max: {rate:>7} events/s → p99 {:>8.1} ms, freshness p99 {:>8.1} ms{}",
        report.gateway_latency_ms.p99,
        report.freshness_ms.p99,
        broke
            .as_ref()
            .map(|b| format!(" — {b}"))
            .unwrap_or_default()
    );
}

/// Whether the run kept its rate, its answers and its rows, and only a latency percentile
/// passed its bound.
fn only_latency_broke(args: &FindMaxArgs, report: &Report) -> bool {
    let bad = report.unexpected_answers + report.transport_errors;
    report.achieved_events_per_second >= 0.95 * report.target_events_per_second as f64
        && bad * 1000 <= report.events_sent
        && report.rows_exact
        && (report.gateway_latency_ms.p99 > args.p99_bound_ms
            || (!args.load.no_check && report.freshness_ms.p99 > args.freshness_p99_bound_ms))
}

/// `bench find-max`.
pub async fn command(args: &FindMaxArgs) -> anyhow::Result<()> {
    let search = search(args, None).await?;
    let mut out = std::io::stdout().lock();
    match search.max_sustained {
        Some(rate) => writeln!(out, "max sustained: {rate:.0} events/s")?,
        None => writeln!(out, "no step held its bounds")?,
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&search)?)?;
    Ok(())
}
