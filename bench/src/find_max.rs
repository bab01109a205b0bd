//! `find-max`: steps the arrival rate up until a bound breaks — gateway p99 latency, freshness
//! p99, achieved rate, exact rows or unexpected answers — and reports the highest rate that held.
//! A step that breaks only a latency bound runs once more, and counts as broken if it breaks again.
//! After the first broken step, bisections between it and the highest rate held narrow the maximum.
//! Given fresh Sentinels, every step (and every second run of one) gets one of its own, and
//! [`hold`] then looks for the highest rate one Sentinel holds for several steps in a row.

use std::io::Write;

use serde::Serialize;

use crate::io_meter::{IoMeter, IoSeen};
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
    /// Most steps of the climb.
    #[arg(long, default_value_t = 14)]
    pub max_steps: usize,
    /// Bisections between the highest rate held and the lowest broken, once a step broke:
    /// each halves the gap (geometrically), so 2 narrow a step factor of 1.3 to about 1.07.
    #[arg(long, default_value_t = 2)]
    pub refine_steps: usize,
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
    /// The lowest target rate that broke a bound (twice, if only latency broke); none if the
    /// search ran out of steps first, so that its maximum is a floor.
    pub lowest_broken_rate: Option<u64>,
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
    /// The disks' peak write rate and PostgreSQL's checkpoints in the window.
    pub io: IoSeen,
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
        let io_meter = IoMeter::start(&load.database_url).await;
        let (report, cpu_by_process) = metered_run(load, sentinel).await?;
        let io = io_meter.finish().await;
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
            io,
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
/// against `args.load.url`. The rate climbs by the step factor until a step breaks a bound, then
/// `refine_steps` bisections (geometric) between the highest rate held and the lowest broken
/// narrow the maximum down.
pub async fn search(args: &FindMaxArgs, fresh: Option<&Sentinels>) -> anyhow::Result<Search> {
    let mut steps = Vec::new();
    let (max_sustained, lowest_broken_rate) = climb_and_bisect(args, async |rate| {
        checked_step(args, fresh, rate, &mut steps).await
    })
    .await?;
    Ok(Search {
        steps,
        max_sustained,
        lowest_broken_rate,
    })
}

/// The search's choice of rates: `step` runs one at a rate and returns the achieved events/s
/// if it held. Returns the maximum sustained and the lowest target rate that broke.
async fn climb_and_bisect(
    args: &FindMaxArgs,
    mut step: impl AsyncFnMut(f64) -> anyhow::Result<Option<f64>>,
) -> anyhow::Result<(Option<f64>, Option<u64>)> {
    let mut rate = args.start_rate as f64;
    let mut max_sustained = None;
    let mut held_rate = None;
    let mut broken_rate = None;
    for _ in 0..args.max_steps {
        match step(rate).await? {
            Some(achieved) => {
                max_sustained = Some(achieved);
                held_rate = Some(rate);
                rate *= args.step_factor;
            }
            None => {
                broken_rate = Some(rate);
                break;
            }
        }
    }
    if let (Some(mut held), Some(mut broken)) = (held_rate, broken_rate) {
        for _ in 0..args.refine_steps {
            let Some(middle) = bisect(held, broken) else {
                break;
            };
            match step(middle).await? {
                Some(achieved) => {
                    max_sustained = Some(achieved);
                    held = middle;
                }
                None => broken = middle,
            }
        }
        broken_rate = Some(broken);
    }
    Ok((max_sustained, broken_rate.map(|rate| rate.round() as u64)))
}

/// The geometric middle of a held and a broken rate, if it is a rate of its own (whole events/s
/// apart from both).
fn bisect(held: f64, broken: f64) -> Option<f64> {
    let middle = (held * broken).sqrt();
    let whole = middle.round() as u64;
    (whole > held.round() as u64 && whole < broken.round() as u64).then_some(middle)
}

/// Runs one step at `rate`, and once more if only a latency bound broke, appending both runs
/// to `steps`. Returns the achieved events/s when the step held.
async fn checked_step(
    args: &FindMaxArgs,
    fresh: Option<&Sentinels>,
    rate: f64,
    steps: &mut Vec<Step>,
) -> anyhow::Result<Option<f64>> {
    let mut load = args.load.clone();
    load.rate = rate.round() as u64;
    load.duration = args.step_seconds;
    let mut report = run_step(&load, fresh).await?;
    let mut broke = broken_bound(args, &report);
    log_step(load.rate, &report, &broke);
    if broke.is_some() && only_latency_broke(args, &report) {
        // One percentile over the bound may be a single stall of the shared machine: the step
        // runs again and counts as broken only if it breaks again. Both runs are kept.
        steps.push(Step {
            report,
            broke: broke.map(|b| format!("{b}; run again")),
        });
        report = run_step(&load, fresh).await?;
        broke = broken_bound(args, &report);
        log_step(load.rate, &report, &broke);
    }
    let achieved = broke.is_none().then_some(report.achieved_events_per_second);
    steps.push(Step { report, broke });
    Ok(achieved)
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        search: FindMaxArgs,
    }

    fn args(extra: &[&str]) -> FindMaxArgs {
        let mut argv = vec!["find-max", "--jwt-secret", "s"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).search
    }

    /// Runs the search against a machine that holds every rate up to `limit`, returning the
    /// maximum, the lowest broken rate and the rates tried.
    fn search_up_to(args: &FindMaxArgs, limit: f64) -> (Option<f64>, Option<u64>, Vec<u64>) {
        let mut tried = Vec::new();
        let (max, broken) = futures::executor::block_on(climb_and_bisect(args, async |rate| {
            tried.push(rate.round() as u64);
            Ok((rate <= limit).then_some(rate - 1.0))
        }))
        .expect("the fake steps never fail");
        (max, broken, tried)
    }

    #[test]
    fn bisections_narrow_the_maximum_between_held_and_broken() {
        let (max, broken, tried) = search_up_to(&args(&[]), 19_000.0);
        // The climb: 2000, 2600, 3380, … 16315 held, 21209 broke; then sqrt(16315 × 21209)
        // = 18602 held and sqrt(18602 × 21209) = 19863 broke.
        assert_eq!(&tried[tried.len() - 3..], &[21209, 18602, 19863]);
        assert!(
            max.is_some_and(|max| (max - 18_600.5).abs() < 1.0),
            "{max:?}"
        );
        assert_eq!(broken, Some(19863));
    }

    #[test]
    fn without_refinement_the_climb_alone_decides() {
        let (max, broken, tried) = search_up_to(&args(&["--refine-steps", "0"]), 19_000.0);
        assert_eq!(tried.last(), Some(&21209));
        assert_eq!(broken, Some(21209));
        assert!(
            max.is_some_and(|max| (max - 16314.6).abs() < 1.0),
            "{max:?}"
        );
    }

    #[test]
    fn a_search_that_never_breaks_reports_no_broken_rate() {
        let (max, broken, tried) = search_up_to(&args(&["--max-steps", "3"]), f64::MAX);
        assert_eq!(tried, vec![2000, 2600, 3380]);
        assert_eq!(broken, None);
        assert_eq!(max, Some(3379.0));
    }

    #[test]
    fn a_first_step_that_breaks_leaves_nothing_to_bisect() {
        let (max, broken, tried) = search_up_to(&args(&[]), 1_000.0);
        assert_eq!(tried, vec![2000]);
        assert_eq!((max, broken), (None, Some(2000)));
    }

    #[test]
    fn bisect_stops_when_the_rates_are_adjacent() {
        assert_eq!(bisect(100.0, 101.0), None);
        assert_eq!(bisect(100.0, 102.0).map(f64::round), Some(101.0));
    }
}
