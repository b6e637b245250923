//! What /proc says about a process: its memory, descriptors and CPU time,
//! and how busy the machine is. `who` is a pid, `self` or `thread-self`.

use std::fmt::Display;
use std::process::Command;
use std::sync::OnceLock;

/// A `kB` field of `/proc/<who>/status` (VmRSS, RssAnon, VmHWM...), in bytes.
pub fn status_bytes(who: impl Display, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{who}/status"))
        .unwrap_or_else(|e| panic!("/proc/{who}/status: {e}"));
    let kb = kb_field(&status, field)
        .unwrap_or_else(|| panic!("no {field} in kB in /proc/{who}/status"));
    kb * 1024
}

/// The figure of a `Field:   123 kB` line (/proc/<pid>/status, /proc/meminfo).
pub fn kb_field(text: &str, field: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// The open file descriptors of a process.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count() as u64
}

/// user + system CPU seconds of `who` so far (`/proc/<who>/stat`; 0 if it
/// is gone).
#[allow(dead_code)] // used by benches/ only
pub fn cpu_seconds(who: impl Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name: utime is 14th, stime 15th overall.
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Clock ticks a second (`getconf CLK_TCK`, asked once; 100 if it cannot say).
#[allow(dead_code)] // used by benches/ only
fn clock_ticks() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The 1-, 5- and 15-minute load averages: how busy the shared machine was.
#[allow(dead_code)] // used by benches/ only
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
