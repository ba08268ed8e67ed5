//! CPU time by role, read from `/proc`: where a drain's cycles go (the walpoints process, the
//! walsender decoding for it, the store backends writing its batches, the server's background
//! processes). CPU time, not wall time, so the split holds on a machine shared with other work.

use std::collections::BTreeMap;
use std::time::Duration;

/// Who spent the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The `walpoints run` process: decode, mapping, rules, COPY encoding.
    Walpoints,
    /// The walsender: reading WAL, logical decoding, pgoutput.
    Walsender,
    /// Backends connected to the store database: COPY, upserts, commit.
    Store,
    /// Everything else of the server: WAL writer, checkpointer, autovacuum, other backends.
    Server,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Walpoints => "walpoints process",
            Role::Walsender => "walsender",
            Role::Store => "store backends",
            Role::Server => "other server processes",
        }
    }
}

/// CPU time of every process of interest at one moment, by pid.
#[derive(Debug, Default)]
pub struct Sample {
    by_pid: BTreeMap<i32, (Role, Duration)>,
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may
/// hold spaces): stat's field N is index N - 3 here.
fn stat_fields(pid: i32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // The state (a letter) parses as 0; only numeric fields are read.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// Clock ticks as a duration.
fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(n * 1_000_000 / hz)
}

/// CPU time of the children a process has reaped (cutime + cstime, stat's fields 16 and 17):
/// for the postmaster, every backend that has exited, such as pg_recvlogical's walsender.
pub fn reaped_children(pid: i32) -> Duration {
    stat_fields(pid)
        .and_then(|f| Some(ticks(f.get(13)? + f.get(14)?)))
        .unwrap_or_default()
}

/// utime + stime (stat's fields 14 and 15), the parent's pid (field 4), and the process's
/// title (its cmdline).
fn read(pid: i32) -> Option<(Duration, i32, String)> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let f = stat_fields(pid)?;
    let ppid = i32::try_from(*f.get(1)?).ok()?;
    Some((ticks(f.get(11)? + f.get(12)?), ppid, title))
}

impl Sample {
    /// Every child of the lab's `postmaster` and `walpoints`, now (other clusters on the
    /// machine are not counted). The store database is named `store_db` in the titles of its
    /// backends.
    pub fn take(walpoints: i32, postmaster: i32, store_db: &str) -> Sample {
        let mut by_pid = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Sample { by_pid };
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Some((cpu, ppid, title)) = read(pid) else {
                continue;
            };
            let role = if pid == walpoints {
                Role::Walpoints
            } else if ppid != postmaster {
                continue;
            } else if title.contains("walsender") {
                Role::Walsender
            } else if title.contains(&format!(" {store_db} ")) {
                Role::Store
            } else {
                Role::Server
            };
            by_pid.insert(pid, (role, cpu));
        }
        Sample { by_pid }
    }

    /// CPU spent by each role between `self` (earlier) and `later`, counting processes that
    /// started in between from zero (processes that ended in between are lost: take `later`
    /// while the run's processes are still alive).
    pub fn spent_until(&self, later: &Sample) -> BTreeMap<Role, Duration> {
        let mut spent = BTreeMap::new();
        for (pid, (role, cpu)) in &later.by_pid {
            let before = self
                .by_pid
                .get(pid)
                .filter(|(r, _)| r == role)
                .map_or(Duration::ZERO, |(_, c)| *c);
            *spent.entry(*role).or_insert(Duration::ZERO) += cpu.saturating_sub(before);
        }
        spent
    }
}
