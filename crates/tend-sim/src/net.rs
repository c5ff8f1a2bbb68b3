//! The simulated network between agents and the control plane: every agent request goes through
//! the real `AgentProtocol` of the control plane that is up (none while it is crashed), and may be
//! delayed, duplicated (so also reordered) or lost in either direction by a partition.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tend_control::Control;
use tokio::sync::watch;

use crate::clock::SimClock;
use crate::rng::Rng;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum NetError {
    /// The request did not arrive (partition, or no control plane up).
    Unreachable,
    /// The answer did not arrive (partition, or the control plane crashed meanwhile).
    Lost,
    /// The control plane answered with an error.
    Refused(u16, String),
}

/// A cut link: requests (up) and/or answers (down) are lost until these times (simulated ms).
#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    pub up_cut_until: u64,
    pub down_cut_until: u64,
}

/// The network and the control plane behind it.
pub struct Net {
    clock: SimClock,
    server: Mutex<Option<Control>>,
    crashes: watch::Sender<u64>,
    links: Mutex<BTreeMap<String, Link>>,
    rng: Mutex<Rng>,
    /// Delays and duplicates messages.
    pub messy: std::sync::atomic::AtomicBool,
}

impl Net {
    pub fn new(clock: SimClock, rng: Rng, messy: bool) -> Net {
        Net {
            clock,
            server: Mutex::new(None),
            crashes: watch::channel(0).0,
            links: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(rng),
            messy: std::sync::atomic::AtomicBool::new(messy),
        }
    }

    /// The control plane that is up, if any.
    pub fn server(&self) -> Option<Control> {
        self.server.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a control plane up (Some) or crashes the current one (None): its loops stop and
    /// every request in flight loses its answer.
    pub fn set_server(&self, s: Option<Control>) {
        let old = std::mem::replace(&mut *self.server.lock().unwrap_or_else(|e| e.into_inner()), s);
        if let Some(old) = old {
            old.stop();
            self.crashes.send_modify(|g| *g += 1);
        }
    }

    /// Cuts an agent's link: requests and/or answers are lost for `for_ms`.
    pub fn cut(&self, agent: &str, up: bool, down: bool, for_ms: u64) {
        let until = self.clock.elapsed_ms() + for_ms;
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let l = links.entry(agent.to_string()).or_default();
        if up {
            l.up_cut_until = l.up_cut_until.max(until);
        }
        if down {
            l.down_cut_until = l.down_cut_until.max(until);
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether an agent's link is cut in some direction now.
    pub fn is_cut(&self, agent: &str) -> bool {
        let now = self.clock.elapsed_ms();
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .is_some_and(|l| l.up_cut_until > now || l.down_cut_until > now)
    }

    fn link(&self, agent: &str) -> Link {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).get(agent).copied().unwrap_or_default()
    }

    fn delay(&self) -> Option<Duration> {
        if !self.messy.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let mut r = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let ms = if r.chance(0.05) { r.range(100, 800) } else { r.range(0, 20) };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Whether to deliver a message twice.
    pub fn duplicate(&self) -> bool {
        self.messy.load(std::sync::atomic::Ordering::Relaxed)
            && self.rng.lock().unwrap_or_else(|e| e.into_inner()).chance(0.03)
    }

    /// One request of `agent` to the control plane that is up.
    pub async fn call<T, F, Fut>(&self, agent: &str, f: F) -> Result<T, NetError>
    where
        F: FnOnce(Control) -> Fut,
        Fut: Future<Output = Result<T, tend_control::services::Refusal>>,
    {
        if let Some(d) = self.delay() {
            tokio::time::sleep(d).await;
        }
        if self.link(agent).up_cut_until > self.clock.elapsed_ms() {
            // A request into a partition hangs until the client gives up.
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            return Err(NetError::Unreachable);
        }
        let Some(server) = self.server() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(NetError::Unreachable);
        };
        let mut crashes = self.crashes.subscribe();
        crashes.borrow_and_update();
        let r = tokio::select! {
            biased;
            _ = crashes.changed() => return Err(NetError::Lost),
            r = f(server) => r,
        };
        if let Some(d) = self.delay() {
            tokio::time::sleep(d).await;
        }
        if self.link(agent).down_cut_until > self.clock.elapsed_ms() {
            return Err(NetError::Lost);
        }
        r.map_err(|(code, _, msg)| NetError::Refused(code, msg))
    }
}
