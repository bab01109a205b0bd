//! `bench`: Sentinel's benchmarks — an open-loop load generator (`load`), the search for the
//! highest sustained rate (`find-max`), the machine's ceilings measured with the same tools
//! (`ceilings`), the cost of observability (`overhead`, part of the report), the de-duplication's
//! memory per event (`dedup-memory`), and the performance report that runs them all (`report`).

mod ceilings;
mod dedup_memory;
mod feed;
mod find_max;
mod http;
mod io_meter;
mod load;
mod overhead;
mod profile;
mod report;
mod what_if;

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates per event, and glibc malloc was a tenth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sentinel's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One open-loop run at a constant rate.
    Load(load::LoadArgs),
    /// Steps the rate up until p99 latency or freshness passes its bound.
    FindMax(find_max::FindMaxArgs),
    /// Measures the HTTP, PostgreSQL and broker ceilings of this machine.
    Ceilings(ceilings::CeilingArgs),
    /// Runs everything and writes docs/perf/results.md.
    Report(report::ReportArgs),
    /// One run against a fresh Sentinel under Linux `perf`: where inside Sentinel and
    /// PostgreSQL the CPU goes.
    Profile(profile::ProfileArgs),
    /// The de-duplication's resident memory per remembered event, in this process alone.
    DedupMemory(dedup_memory::DedupMemoryArgs),
}

/// Runs `work` on a connection of its own to `database_url`, closed once `work` is done.
pub(crate) async fn on_one_connection<T>(
    database_url: &str,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> T,
) -> Result<T, tokio_postgres::Error> {
    let (db, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = work(&db).await;
    drop(db);
    let _ = driver.await;
    Ok(result)
}

/// One thread: the generator hands requests to its connections without cross-thread wake-ups,
/// so it takes little of the CPU it shares with the server under test.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => load::load_command(&args).await,
        Command::FindMax(args) => find_max::command(&args).await,
        Command::Ceilings(args) => ceilings::command(&args).await,
        Command::Report(args) => report::command(&args).await,
        Command::Profile(args) => profile::command(&args).await,
        Command::DedupMemory(args) => dedup_memory::command(&args),
    }
}
