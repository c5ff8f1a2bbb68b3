//! Recovery assessment: how an instance looks from the facts in the store and the reports
//! actually received, and whether the failure monitor may act on it.
//!
//! Everything the assessment depends on is in the store (the record's down-since, ready config,
//! replacement marker) or in reports, so a restarted control plane judges as the old one did.

use tend_model::Millis;
use tend_scheduler::recovery::Health;

/// Rule: an instance whose current config never became ready on it is a failed update, never
/// replaced by the failure monitor (replacing would start from fresh volumes and fix nothing).
pub const RULE_FAILED_UPDATE_NOT_REPLACED: &str =
    "new config never became ready on this instance; fix the spec or roll back (not replaced: replacing would not fix a config and would leave its data behind)";

/// A config counts as having become ready on an instance only once its tasks have stayed up this
/// long: a config that is ready for a moment and then crashes is still a failed update (blocked,
/// never replaced with fresh volumes).
pub const READY_STABLE_MS: Millis = 10_000;

/// Added to `fence_after_seconds` before a fenced instance is replaced: covers the agent's
/// check interval, the report round trip and clock-rate differences between machines.
pub const FENCE_MARGIN_MS: Millis = 2_000;

/// What the reports say of an instance right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Every task of the target incarnation is up, ready and out of any crash loop.
    Up,
    /// Reported, but not up yet and nothing has failed (preparing, starting, not ready).
    Starting,
    /// Its agent reports it, and a long-running task is down or crash-looping since `since_ms`
    /// (a task caught running inside a crash loop is still down).
    TaskDown { since_ms: Millis },
    /// Its agent is not heard from; `last_seen_ms` is its last report this control plane
    /// received (None: none since this control plane started).
    AgentSilent { last_seen_ms: Option<Millis> },
}

/// The facts recovery needs about one launched, placed instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceFacts {
    pub incarnation: u64,
    /// Config identity of the target incarnation.
    pub config: String,
    /// The config that last became ready on this instance, and in which incarnation.
    pub ready_config: Option<String>,
    pub ready_incarnation: u64,
    /// Since when a task is down, as persisted in the store (the control plane's time).
    pub down_since_ms: Option<Millis>,
    /// Since when its agent is silent, as persisted (never taken from a task's stop: the fence
    /// wait counts from the agent's last report only).
    pub unreachable_since_ms: Option<Millis>,
    pub observed: Observed,
    /// Since when every long-running task of the target incarnation has been up without a
    /// restart, from reports (None: not up).
    pub up_since_ms: Option<Millis>,
}

/// Recovery's judgement of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    pub health: Health,
    /// Down, but the failure monitor must not replace it (the reason).
    pub blocked: Option<&'static str>,
    /// The down-since the store must hold (write when it differs from the record's).
    pub down_since_ms: Option<Millis>,
    /// The unreachable-since the store must hold.
    pub unreachable_since_ms: Option<Millis>,
    /// The target incarnation became ready: record its config as ready.
    pub mark_ready: bool,
}

/// Judges one instance at `now_ms`.
pub fn assess(f: &InstanceFacts, now_ms: Millis) -> Assessment {
    let ready_now = f.ready_config.as_deref() == Some(f.config.as_str());
    let mut unreachable = None;
    let (health, down_since) = match &f.observed {
        Observed::Up => (Health::Up, None),
        Observed::Starting => match f.down_since_ms {
            // Coming back from a stop: still down until it is up again.
            Some(since) => (Health::Stopped { since_ms: since }, Some(since)),
            None => (Health::Up, None),
        },
        Observed::TaskDown { since_ms } => {
            // A stop time from the agent's clock is never later than this control plane's now.
            let since = f.down_since_ms.unwrap_or((*since_ms).min(now_ms));
            (Health::Stopped { since_ms: since }, Some(since))
        }
        Observed::AgentSilent { last_seen_ms } => {
            // From the last report actually received; a control plane that never heard the
            // agent can only vouch for its own time. Never from an earlier task stop: the fence
            // wait must count from the agent's last contact.
            let since = f.unreachable_since_ms.or(*last_seen_ms).unwrap_or(now_ms);
            unreachable = Some(since);
            (Health::Unreachable { since_ms: since }, f.down_since_ms)
        }
    };
    let blocked = match health {
        Health::Stopped { .. } if !ready_now => Some(RULE_FAILED_UPDATE_NOT_REPLACED),
        _ => None,
    };
    let stable = f.up_since_ms.is_some_and(|s| now_ms.saturating_sub(s) >= READY_STABLE_MS);
    let mark_ready =
        f.observed == Observed::Up && stable && (!ready_now || f.ready_incarnation != f.incarnation);
    Assessment { health, blocked, down_since_ms: down_since, unreachable_since_ms: unreachable, mark_ready }
}

/// Whether a replacement of an instance is still under way: it was launched as a replacement
/// and that incarnation has not become ready yet (derived from the record alone).
pub fn replacing(replaced: bool, incarnation: u64, ready_incarnation: u64) -> bool {
    replaced && ready_incarnation < incarnation
}
