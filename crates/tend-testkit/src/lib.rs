//! Helpers shared by tend's tests and benches (never by the product): child processes that are
//! stopped and killed by pid when dropped, /proc lookups by command line, and the raw fdatasync
//! rate measured as the reference for store benchmarks.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Child processes that get SIGCONT + SIGTERM, then SIGKILL after `grace`, when dropped.
pub struct Procs {
    pub children: Vec<Child>,
    pub grace: Duration,
}

impl Procs {
    pub fn new(grace: Duration) -> Procs {
        Procs { children: Vec::new(), grace }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &self.children {
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
        }
        for c in &mut self.children {
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pids of the processes whose command line is exactly `args` (e.g. `["sleep", "3601"]`).
pub fn pids_with_cmdline(args: &[&str]) -> Vec<i32> {
    let mut want = Vec::new();
    for a in args {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want) {
            out.push(pid);
        }
    }
    out
}

/// 4 KiB write + fdatasync per iteration in `dir`: the reference rate for durable writes.
pub fn fdatasync_rate(dir: &Path, n: usize) -> f64 {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join("sync.bin"))
        .expect("reference file");
    let buf = [7u8; 4096];
    let t = Instant::now();
    for i in 0..n {
        f.write_all_at(&buf, ((i % 64) * 4096) as u64).expect("write");
        f.sync_data().expect("fdatasync");
    }
    n as f64 / t.elapsed().as_secs_f64()
}
