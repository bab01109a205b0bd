//! Where inside Sentinel and PostgreSQL the CPU goes under load: Linux `perf` samples both
//! during one run against a fresh Sentinel, and the report gives the share of each part's CPU
//! spent in a few named code paths (inclusive: a path's share counts everything it calls).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::load::{self, LoadArgs};
use crate::overhead::{metered_run_by_connection, Sentinels, POSTGRES_PART, SENTINEL_PART};

/// Samples per second and process (a prime, so that sampling does not beat with timers).
const FREQUENCY: &str = "499";

/// The part of the machine a code path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Part {
    Sentinel,
    PostgreSQL,
}

/// A code path the report names, and how to recognise it in `perf report`.
struct CodePath {
    part: Part,
    /// The frame (a symbol exactly as `perf report` prints it); `None` with `self_prefixes`.
    frame: Option<&'static str>,
    /// Symbols whose own (self) samples are summed instead of one frame's inclusive share.
    self_prefixes: &'static [&'static str],
    what: &'static str,
}

const PATHS: &[CodePath] = &[
    CodePath {
        part: Part::Sentinel,
        frame: Some("axum::serve::handle_connection::{{closure}}::{{closure}}"),
        self_prefixes: &[],
        what: "gateway: HTTP connections (hyper, axum, the handlers' own code)",
    },
    CodePath {
        part: Part::Sentinel,
        frame: Some("ingress::events::submission"),
        self_prefixes: &[],
        what: "gateway: parse, validate and canonically hash each event",
    },
    CodePath {
        part: Part::Sentinel,
        frame: Some("ingress::events::ingest::{{closure}}"),
        self_prefixes: &[],
        what: "gateway: each event's task (claim, produce, complete)",
    },
    CodePath {
        part: Part::Sentinel,
        frame: Some("ingress::idempotency::run_batches::{{closure}}"),
        self_prefixes: &[],
        what: "gateway: grouping the idempotency claims into statements",
    },
    CodePath {
        part: Part::Sentinel,
        frame: Some("rd_kafka_broker_serve"),
        self_prefixes: &[],
        what: "librdkafka's broker threads (produce and fetch I/O)",
    },
    CodePath {
        part: Part::Sentinel,
        frame: Some("sentinel::dataflow::run_worker"),
        self_prefixes: &[],
        what: "dataflow workers (decode, de-duplicate, stream state, SLO, commit batches)",
    },
    CodePath {
        part: Part::Sentinel,
        frame: Some("operators::decode::decode_record"),
        self_prefixes: &[],
        what: "of which: decoding each record (JSON parse, validation)",
    },
    CodePath {
        part: Part::Sentinel,
        frame: Some("sinks::postgres::writer::run_writer::{{closure}}"),
        self_prefixes: &[],
        what: "the writer (COPY encoding, transactions)",
    },
    CodePath {
        part: Part::Sentinel,
        frame: None,
        self_prefixes: &["mi_", "_mi_"],
        what: "allocating and freeing (mimalloc, own samples)",
    },
    CodePath {
        part: Part::Sentinel,
        frame: None,
        self_prefixes: &["__memmove", "__memcpy"],
        what: "copying memory (memmove, own samples)",
    },
    CodePath {
        part: Part::PostgreSQL,
        frame: Some("CopyFrom"),
        self_prefixes: &[],
        what: "the writer's COPY into `events`",
    },
    CodePath {
        part: Part::PostgreSQL,
        frame: Some("ExecInsertIndexTuples"),
        self_prefixes: &[],
        what: "index maintenance, every statement (`events` has seven B-tree indexes)",
    },
    CodePath {
        part: Part::PostgreSQL,
        frame: Some("standard_ExecutorRun"),
        self_prefixes: &[],
        what: "every other statement (claims, completions, stream state, SLO, offsets)",
    },
    CodePath {
        part: Part::PostgreSQL,
        frame: Some("XLogFlush"),
        self_prefixes: &[],
        what: "flushing the WAL at commit",
    },
];

/// One named code path's share of its part's CPU samples.
#[derive(Debug, Clone, Serialize)]
pub struct PathShare {
    pub part: Part,
    /// The frame, or the symbol prefixes whose own samples were summed.
    pub frame: String,
    pub what: &'static str,
    /// Percent of the part's samples.
    pub percent: f64,
    /// The same share of the part's CPU µs per event in the profiled run.
    pub us_per_event: f64,
}

/// What the profiled run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CodeProfile {
    pub report: load::Report,
    /// CPU µs per event of each part of the machine (`/proc`), during the profiled run.
    pub cpu_by_process: Vec<(String, f64)>,
    /// PostgreSQL's part by connection (`application_name`), µs per event.
    pub postgres_by_connection: Vec<(String, f64)>,
    pub paths: Vec<PathShare>,
}

/// Whether `perf` can be run here.
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What `perf record` samples.
enum Target {
    /// One process, with DWARF call graphs (Rust code built without frame pointers).
    Process(u32),
    /// The whole machine, with frame-pointer call graphs (PostgreSQL's many processes come and
    /// go; one buffer per CPU instead of one per thread).
    Machine,
}

/// Starts `perf record` of `target` for `seconds`.
fn record(target: Target, seconds: u64, out: &Path) -> anyhow::Result<std::process::Child> {
    let mut command = Command::new("perf");
    command.args(["record", "-F", FREQUENCY]);
    match target {
        Target::Process(pid) => command
            .args(["--call-graph", "dwarf,16384", "-p"])
            .arg(pid.to_string()),
        Target::Machine => command.args(["-g", "-a"]),
    };
    command
        .arg("-o")
        .arg(out)
        .args(["--", "sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record")
}

/// Waits for a `perf record` started by [`record`]; fails with what it said if it failed.
fn finish(perf: std::process::Child) -> anyhow::Result<()> {
    let output = perf.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "perf record exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Inclusive (`children`) and own (`self`) percent of the samples of processes named `comm`
/// (all when `None`) by symbol, from `perf report`.
fn symbol_shares(data: &Path, comm: Option<&str>) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let mut command = Command::new("perf");
    command
        .args([
            "report",
            "--stdio",
            "--children",
            "--sort",
            "sym",
            "-g",
            "none",
        ])
        .args(["--percent-limit", "0", "--percentage", "relative"]);
    if let Some(comm) = comm {
        command.args(["--comms", comm]);
    }
    let output = command
        .arg("-i")
        .arg(data)
        .output()
        .context("running perf report")?;
    if !output.status.success() {
        bail!(
            "perf report on {} exited with {}: {}",
            data.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(parse_report(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `perf report --children --sort sym -g none` lines: `children% self% [.] symbol`.
fn parse_report(text: &str) -> Vec<(String, f64, f64)> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let children = fields.next()?.strip_suffix('%')?.parse().ok()?;
            let own = fields.next()?.strip_suffix('%')?.parse().ok()?;
            let _kind = fields.next()?;
            let symbol = fields.collect::<Vec<_>>().join(" ");
            Some((symbol, children, own))
        })
        .collect()
}

/// The named paths of `part` found in `shares`, scaled to `us_per_event` of that part.
fn path_shares(part: Part, shares: &[(String, f64, f64)], us_per_event: f64) -> Vec<PathShare> {
    PATHS
        .iter()
        .filter(|path| path.part == part)
        .map(|path| {
            let (frame, percent) = match path.frame {
                // A symbol may be listed more than once (inlined copies); its largest inclusive
                // share is the frame's (the copies are nested or disjoint, never to be summed
                // blindly).
                Some(frame) => (
                    frame.to_owned(),
                    shares
                        .iter()
                        .filter(|(symbol, _, _)| symbol == frame)
                        .map(|(_, children, _)| *children)
                        .fold(0.0, f64::max),
                ),
                None => (
                    path.self_prefixes.join(", "),
                    shares
                        .iter()
                        .filter(|(symbol, _, _)| {
                            path.self_prefixes.iter().any(|p| symbol.starts_with(p))
                        })
                        .map(|(_, _, own)| *own)
                        .sum(),
                ),
            };
            PathShare {
                part,
                frame,
                what: path.what,
                percent,
                us_per_event: percent / 100.0 * us_per_event,
            }
        })
        .collect()
}

/// Runs `load` against a fresh Sentinel while `perf` samples it and PostgreSQL.
pub async fn measure(sentinels: &Sentinels, load: &LoadArgs) -> anyhow::Result<CodeProfile> {
    let dir = scratch_dir()?;
    let result = sentinels
        .on_fresh(load, async |load: &LoadArgs, pid: u32| {
            let (sentinel_data, machine_data) =
                (dir.join("sentinel.perf"), dir.join("machine.perf"));
            let sentinel_perf = record(Target::Process(pid), load.duration, &sentinel_data)?;
            let machine_perf = record(Target::Machine, load.duration, &machine_data)?;
            let (report, cpu_by_process, postgres_by_connection) =
                metered_run_by_connection(load, pid).await?;
            finish(sentinel_perf)?;
            finish(machine_perf)?;
            let us = |index: usize| cpu_by_process.get(index).map_or(0.0, |(_, us)| *us);
            let mut paths = path_shares(
                Part::Sentinel,
                &symbol_shares(&sentinel_data, None)?,
                us(SENTINEL_PART),
            );
            paths.extend(path_shares(
                Part::PostgreSQL,
                &symbol_shares(&machine_data, Some("postgres"))?,
                us(POSTGRES_PART),
            ));
            Ok(CodeProfile {
                report,
                cpu_by_process,
                postgres_by_connection,
                paths,
            })
        })
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Settings of `bench profile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    /// The load (its `--url` is replaced by the fresh Sentinel's).
    #[command(flatten)]
    pub load: LoadArgs,
    /// The `sentinel` binary to start fresh.
    #[arg(long)]
    pub sentinel_bin: PathBuf,
    /// The command (run by `sh`) that starts a fresh broker on 127.0.0.1:{port}; without it,
    /// the Sentinel uses `KAFKA_BROKERS`.
    #[arg(long)]
    pub broker_command: Option<String>,
}

/// `bench profile`: one run against a fresh Sentinel under `perf`; prints the code paths.
pub async fn command(args: &ProfileArgs) -> anyhow::Result<()> {
    if !available() {
        bail!("perf is not on the PATH (Debian: apt-get install linux-perf)");
    }
    let sentinels = Sentinels::connect(&args.sentinel_bin, &args.load, &std::env::temp_dir())
        .await?
        .with_broker_command(args.broker_command.clone());
    let profile = measure(&sentinels, &args.load).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:.0} events/s achieved; CPU µs per event: {}",
        profile.report.achieved_events_per_second,
        costs_line(&profile.cpu_by_process)
    )?;
    writeln!(
        out,
        "PostgreSQL by connection, CPU µs per event: {}",
        costs_line(&profile.postgres_by_connection)
    )?;
    for path in &profile.paths {
        writeln!(
            out,
            "{:?}\t{:5.1}%\t{:5.1} µs\t{}\t{}",
            path.part, path.percent, path.us_per_event, path.frame, path.what
        )?;
    }
    Ok(())
}

/// `name µs, name µs, …` of CPU costs per event.
fn costs_line(costs: &[(String, f64)]) -> String {
    costs
        .iter()
        .map(|(name, us)| format!("{name} {us:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sentinel-bench-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
# Children      Self  Symbol
# ........  ........  ......
#
    29.08%     0.02%  [.] sentinel::dataflow::run_worker
    12.64%     0.63%  [.] ingress::events::ingest::{{closure}}
     1.12%     0.02%  [.] ingress::events::ingest
     8.49%     8.20%  [.] _mi_page_malloc_zero
     1.95%     1.93%  [.] mi_free
     2.00%     1.00%  [.] ingress::events::ingest::{{closure}}
";

    #[test]
    fn a_frame_is_its_largest_inclusive_share_and_own_samples_add_up() {
        let shares = parse_report(REPORT);
        assert_eq!(shares.len(), 6);
        let paths = path_shares(Part::Sentinel, &shares, 50.0);
        let find = |frame: &str| paths.iter().find(|p| p.frame == frame).unwrap();
        let task = find("ingress::events::ingest::{{closure}}");
        assert_eq!(task.percent, 12.64);
        assert!((task.us_per_event - 6.32).abs() < 1e-9);
        assert_eq!(find("sentinel::dataflow::run_worker").percent, 29.08);
        assert!((find("mi_, _mi_").percent - 10.13).abs() < 1e-9);
        assert_eq!(find("rd_kafka_broker_serve").percent, 0.0);
        assert!(paths.iter().all(|p| p.part == Part::Sentinel));
    }
}
