//! The simulation's trace: one line per thing that happened, stamped with simulated time.
//! Every line feeds a digest (same seed, same digest: the determinism check); the last lines
//! are kept to show what led to a failure.

use std::collections::VecDeque;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::clock::SimClock;

struct Inner {
    digest: Sha256,
    tail: VecDeque<String>,
    lines: u64,
}

/// The trace of one run.
pub struct Trace {
    clock: SimClock,
    keep: usize,
    echo: bool,
    inner: Mutex<Inner>,
}

impl Trace {
    /// Keeps the last `keep` lines; `echo` prints every line to stderr as well.
    pub fn new(clock: SimClock, keep: usize, echo: bool) -> Trace {
        Trace {
            clock,
            keep,
            echo,
            inner: Mutex::new(Inner { digest: Sha256::new(), tail: VecDeque::new(), lines: 0 }),
        }
    }

    /// Records one line.
    pub fn log(&self, line: impl AsRef<str>) {
        let ms = self.clock.elapsed_ms();
        let line = format!("[{:>5}.{:03}] {}", ms / 1000, ms % 1000, line.as_ref());
        if self.echo {
            eprintln!("{line}");
        }
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.digest.update(line.as_bytes());
        i.digest.update(b"\n");
        i.lines += 1;
        if self.keep > 0 {
            if i.tail.len() == self.keep {
                i.tail.pop_front();
            }
            i.tail.push_back(line);
        }
    }

    /// The digest of every line so far (hex) and their number.
    pub fn digest(&self) -> (String, u64) {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (hex::encode(i.digest.clone().finalize()), i.lines)
    }

    /// The last lines kept.
    pub fn tail(&self) -> Vec<String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).tail.iter().cloned().collect()
    }
}
