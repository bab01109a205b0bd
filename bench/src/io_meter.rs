//! What the machine's disks and PostgreSQL's checkpoints did during a run: the highest one-second
//! write rate of the disks (`/proc/diskstats`) and the checkpoints PostgreSQL started
//! (`pg_stat_bgwriter`), which the commits of every request and of the writer wait behind.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What one run saw.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IoSeen {
    /// The highest write rate of the machine's disks over one second, MB/s (none when
    /// `/proc/diskstats` is unreadable).
    pub peak_disk_write_mb_per_s: Option<f64>,
    /// Checkpoints PostgreSQL started during the run, timed or requested (none when the
    /// statistics are unreadable).
    pub checkpoints: Option<i64>,
}

/// A running meter; [`IoMeter::finish`] stops it.
pub struct IoMeter {
    stop: oneshot::Sender<()>,
    sampler: JoinHandle<Option<f64>>,
    database_url: String,
    checkpoints_before: Option<i64>,
}

impl IoMeter {
    /// Starts sampling the disks every second, and notes PostgreSQL's checkpoint count.
    pub async fn start(database_url: &str) -> Self {
        let (stop, stopped) = oneshot::channel();
        Self {
            stop,
            sampler: tokio::spawn(peak_write_rate(stopped)),
            database_url: database_url.to_owned(),
            checkpoints_before: checkpoints(database_url).await,
        }
    }

    /// Stops the sampling and returns what the run saw.
    pub async fn finish(self) -> IoSeen {
        let _ = self.stop.send(());
        let peak = self.sampler.await.ok().flatten();
        let after = checkpoints(&self.database_url).await;
        IoSeen {
            peak_disk_write_mb_per_s: peak,
            checkpoints: self.checkpoints_before.zip(after).map(|(b, a)| a - b),
        }
    }
}

async fn peak_write_rate(mut stopped: oneshot::Receiver<()>) -> Option<f64> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = sectors_written()?;
    let mut peak: f64 = 0.0;
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => return Some(peak),
            _ = tick.tick() => {
                let now = sectors_written()?;
                // Sectors of /proc/diskstats are 512 bytes, whatever the device's own size.
                peak = peak.max(now.saturating_sub(last) as f64 * 512.0 / 1e6);
                last = now;
            }
        }
    }
}

/// Sectors written so far by the machine's whole disks (not their partitions, loop or RAM
/// devices).
fn sectors_written() -> Option<u64> {
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    Some(sectors_of_disks(&stats, |name| {
        std::path::Path::new("/sys/block").join(name).exists()
    }))
}

fn sectors_of_disks(stats: &str, is_disk: impl Fn(&str) -> bool) -> u64 {
    stats
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = *fields.get(2)?;
            let virtual_device = ["loop", "ram", "zram"]
                .iter()
                .any(|prefix| name.starts_with(prefix));
            if virtual_device || !is_disk(name) {
                return None;
            }
            fields.get(9)?.parse::<u64>().ok()
        })
        .sum()
}

/// Checkpoints started so far: `pg_stat_checkpointer` from PostgreSQL 17, `pg_stat_bgwriter`
/// before.
async fn checkpoints(database_url: &str) -> Option<i64> {
    crate::on_one_connection(database_url, async |db| {
        for sql in [
            "SELECT num_timed + num_requested FROM pg_stat_checkpointer",
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
        ] {
            if let Ok(row) = db.query_one(sql, &[]).await {
                return Some(row.get::<_, i64>(0));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The server settings that decide how often PostgreSQL checkpoints and how much it keeps in
/// its own buffers, as `name value` pairs.
pub async fn checkpoint_settings(database_url: &str) -> Option<String> {
    crate::on_one_connection(database_url, async |db| {
        let mut settings = Vec::new();
        for name in ["max_wal_size", "checkpoint_timeout", "shared_buffers"] {
            let row = db.query_one(&format!("SHOW {name}"), &[]).await.ok()?;
            settings.push(format!("`{name}` {}", row.get::<_, String>(0)));
        }
        Some(settings.join(", "))
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = "\
   7       0 loop0 10 0 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 5000 10 90000 300 7000 20 210895040 900 0 800 1200 0 0 0 0 0 0
 254       1 vda1 4000 10 80000 200 6000 20 200000000 800 0 700 1000 0 0 0 0 0 0
 252       0 zram0 1 0 8 0 5 0 40 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 1 0 8 0 5 0 1000 0 0 0 0 0 0 0 0 0 0
";

    #[test]
    fn only_whole_disks_count() {
        let disks = ["vda", "nvme0n1", "loop0", "zram0"];
        let sectors = sectors_of_disks(DISKSTATS, |name| disks.contains(&name));
        assert_eq!(sectors, 210_895_040 + 1000);
    }
}
