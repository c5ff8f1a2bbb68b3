//! Recovery decisions, pure: the LaunchConstrainer's backoff for in-place restarts, the
//! FailureMonitor that judges a stopped or unreachable pod instance failed, and the service-wide
//! limits on replacements.

use std::collections::BTreeSet;

/// Backoff of in-place restarts of one task (the agent applies it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartBackoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// Running this long resets the crash loop.
    pub reset_after_ms: u64,
}

impl RestartBackoff {
    /// The delay before the `n`th consecutive restart (1-based): the first is immediate, then
    /// `initial × 2^(n-2)` capped at `max`, with ±25% jitter from `jitter` in [0, 1), never
    /// above `max`.
    pub fn delay_ms(&self, n: u32, jitter: f64) -> u64 {
        if n <= 1 {
            return 0;
        }
        let exp = (n - 2).min(40);
        let base = self.initial_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        let j = 0.75 + 0.5 * jitter.clamp(0.0, 0.999_999);
        ((base as f64 * j) as u64).min(self.max_ms)
    }
}

/// The crash-loop state of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashLoop {
    /// Consecutive quick exits, including the current one.
    pub consecutive: u32,
}

impl CrashLoop {
    /// Records an exit after running `ran_ms`; returns the number of this consecutive restart.
    pub fn on_exit(&mut self, ran_ms: u64, b: &RestartBackoff) -> u32 {
        self.consecutive = if ran_ms >= b.reset_after_ms { 1 } else { self.consecutive + 1 };
        self.consecutive
    }
}

/// When a stopped or unreachable instance counts as failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureMonitor {
    /// Failed after being down this long.
    Timed { timeout_ms: u64 },
    /// Never failed automatically (operators replace by hand).
    Never,
    /// Failed exactly when a test says so.
    Testing { failed: BTreeSet<String> },
}

/// How an instance looks to recovery right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Its tasks run (or it is being deployed by another plan).
    Up,
    /// Its agent is alive but a task is down (the agent is restarting it in place).
    Stopped { since_ms: u64 },
    /// Its agent is lost.
    Unreachable { since_ms: u64 },
}

impl FailureMonitor {
    /// Whether `instance` in `health` has failed at `now_ms`.
    pub fn failed(&self, instance: &str, health: &Health, now_ms: u64) -> bool {
        let since = match health {
            Health::Up => return false,
            Health::Stopped { since_ms } | Health::Unreachable { since_ms } => *since_ms,
        };
        match self {
            FailureMonitor::Timed { timeout_ms } => now_ms.saturating_sub(since) >= *timeout_ms,
            FailureMonitor::Never => false,
            FailureMonitor::Testing { failed } => failed.contains(instance),
        }
    }

    /// When `instance` will be judged failed if nothing changes (for status displays).
    pub fn deadline_ms(&self, health: &Health) -> Option<u64> {
        match (self, health) {
            (
                FailureMonitor::Timed { timeout_ms },
                Health::Stopped { since_ms } | Health::Unreachable { since_ms },
            ) => Some(since_ms + timeout_ms),
            _ => None,
        }
    }
}

/// One instance as recovery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub instance: String,
    pub health: Health,
    /// A replacement of it is already under way.
    pub replacing: bool,
    /// Another plan (deploy) holds it.
    pub busy: bool,
    /// Fence mode: an unreachable instance is not failed before it has been out of contact this
    /// long (its agent's fence time plus a safety margin), whatever the failure monitor says.
    pub min_unreachable_ms: u64,
}

/// What recovery decides for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Replace it: new placement, fresh volumes.
    Replace { instance: String },
    /// Failed, but the constrainer holds it back.
    Wait { instance: String, reason: String },
}

/// Service-wide limits on replacements (the LaunchConstrainer's rate part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplacementLimits {
    pub max_concurrent: u32,
    /// At least this long between two replacement launches.
    pub min_interval_ms: u64,
}

/// Decides replacements: failed instances in name order, at most `max_concurrent` at once,
/// no two launches closer than `min_interval_ms`.
pub fn decide(
    views: &[InstanceView],
    monitor: &FailureMonitor,
    limits: &ReplacementLimits,
    last_launch_ms: Option<u64>,
    now_ms: u64,
) -> Vec<RecoveryAction> {
    let mut running = views.iter().filter(|v| v.replacing).count() as u32;
    let mut last = last_launch_ms;
    let mut out = Vec::new();
    let fenced_long_enough = |v: &InstanceView| match v.health {
        Health::Unreachable { since_ms } => now_ms.saturating_sub(since_ms) >= v.min_unreachable_ms,
        _ => true,
    };
    let mut failed: Vec<&InstanceView> = views
        .iter()
        .filter(|v| {
            !v.replacing && !v.busy && monitor.failed(&v.instance, &v.health, now_ms) && fenced_long_enough(v)
        })
        .collect();
    failed.sort_by(|a, b| a.instance.cmp(&b.instance));
    for v in failed {
        let wait = if running >= limits.max_concurrent {
            Some(format!(
                "{running} replacement(s) under way (max_concurrent_replacements {})",
                limits.max_concurrent
            ))
        } else {
            last.filter(|t| now_ms < t + limits.min_interval_ms).map(|t| {
                format!("launch rate limit: next replacement at +{} ms", t + limits.min_interval_ms - now_ms)
            })
        };
        match wait {
            Some(reason) => out.push(RecoveryAction::Wait { instance: v.instance.clone(), reason }),
            None => {
                running += 1;
                last = Some(now_ms);
                out.push(RecoveryAction::Replace { instance: v.instance.clone() });
            }
        }
    }
    out
}
