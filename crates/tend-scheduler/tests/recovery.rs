//! Recovery logic under a fake clock: backoff bounds (property), crash-loop reset, the failure
//! monitors, and replacement limits (data-driven).

use proptest::prelude::*;
use tend_scheduler::recovery::*;

fn view(name: &str, health: Health, replacing: bool, busy: bool) -> InstanceView {
    InstanceView { instance: name.into(), health, replacing, busy, min_unreachable_ms: 0 }
}

proptest! {
    /// The first restart is immediate; later ones stay within ±25% of initial·2^(n-2) and never
    /// exceed the cap.
    #[test]
    fn backoff_bounds(initial in 0u64..10_000, max in 1u64..600_000, n in 1u32..80, jitter in 0.0f64..1.0) {
        let b = RestartBackoff { initial_ms: initial, max_ms: max, reset_after_ms: 60_000 };
        let d = b.delay_ms(n, jitter);
        if n == 1 {
            prop_assert_eq!(d, 0);
        } else {
            let base = (initial as f64 * 2f64.powi((n - 2).min(40) as i32)).min(max as f64);
            prop_assert!(d <= max);
            prop_assert!(d as f64 >= (base * 0.75).floor() - 1.0, "d={} base={}", d, base);
            prop_assert!(d as f64 <= base * 1.25 + 1.0);
        }
    }

    /// Under the never-monitor nothing is ever replaced; under any monitor at most
    /// max_concurrent replacements run, and busy or replacing instances are never chosen.
    #[test]
    fn replacement_limits_hold(
        downs in proptest::collection::vec((any::<bool>(), 0u64..100_000, any::<bool>(), any::<bool>()), 0..20),
        max in 1u32..4,
        now in 100_000u64..200_000,
    ) {
        let views: Vec<InstanceView> = downs
            .iter()
            .enumerate()
            .map(|(i, (unreach, since, replacing, busy))| {
                let h = if *unreach { Health::Unreachable { since_ms: *since } } else { Health::Stopped { since_ms: *since } };
                view(&format!("p-{i}"), h, *replacing, *busy)
            })
            .collect();
        let limits = ReplacementLimits { max_concurrent: max, min_interval_ms: 0 };
        let never = decide(&views, &FailureMonitor::Never, &limits, None, now);
        prop_assert!(never.is_empty());
        let timed = decide(&views, &FailureMonitor::Timed { timeout_ms: 10_000 }, &limits, None, now);
        let already = views.iter().filter(|v| v.replacing).count() as u32;
        let new = timed.iter().filter(|a| matches!(a, RecoveryAction::Replace { .. })).count() as u32;
        prop_assert!(new + already <= max.max(already));
        for a in &timed {
            let name = match a { RecoveryAction::Replace { instance } | RecoveryAction::Wait { instance, .. } => instance };
            let v = views.iter().find(|v| &v.instance == name).unwrap();
            prop_assert!(!v.busy && !v.replacing);
        }
    }
}

#[test]
fn crash_loop_counts_and_resets() {
    let b = RestartBackoff { initial_ms: 1_000, max_ms: 8_000, reset_after_ms: 30_000 };
    let mut c = CrashLoop::default();
    let delays: Vec<u64> = (0..6).map(|_| b.delay_ms(c.on_exit(100, &b), 0.5)).collect();
    assert_eq!(delays, vec![0, 1_000, 2_000, 4_000, 8_000, 8_000]);
    // A healthy run resets the loop: the next restart is immediate again.
    assert_eq!(b.delay_ms(c.on_exit(30_000, &b), 0.5), 0);
}

/// (case, monitor, health, now, failed?)
#[test]
fn failure_monitors() {
    let timed = FailureMonitor::Timed { timeout_ms: 10_000 };
    let testing = FailureMonitor::Testing { failed: ["p-1".to_string()].into() };
    let cases: Vec<(&str, &FailureMonitor, &str, Health, u64, bool)> = vec![
        ("up is never failed", &timed, "p-0", Health::Up, 1_000_000, false),
        ("stopped, before the timeout", &timed, "p-0", Health::Stopped { since_ms: 1_000 }, 10_999, false),
        ("stopped, at the timeout", &timed, "p-0", Health::Stopped { since_ms: 1_000 }, 11_000, true),
        ("unreachable, after", &timed, "p-0", Health::Unreachable { since_ms: 0 }, 50_000, true),
        ("never", &FailureMonitor::Never, "p-0", Health::Unreachable { since_ms: 0 }, u64::MAX, false),
        ("testing: named", &testing, "p-1", Health::Stopped { since_ms: 5 }, 6, true),
        ("testing: other", &testing, "p-2", Health::Stopped { since_ms: 5 }, u64::MAX, false),
    ];
    for (what, m, inst, h, now, want) in cases {
        assert_eq!(m.failed(inst, &h, now), want, "{what}");
    }
    assert_eq!(timed.deadline_ms(&Health::Stopped { since_ms: 1_000 }), Some(11_000));
}

#[test]
fn replacements_are_limited_and_rate_limited() {
    let m = FailureMonitor::Timed { timeout_ms: 1_000 };
    let down = |n: &str| view(n, Health::Unreachable { since_ms: 0 }, false, false);
    let views = vec![down("c"), down("a"), down("b"), view("d", Health::Up, false, false)];
    let limits = ReplacementLimits { max_concurrent: 2, min_interval_ms: 0 };
    let got = decide(&views, &m, &limits, None, 5_000);
    assert_eq!(
        got,
        vec![
            RecoveryAction::Replace { instance: "a".into() },
            RecoveryAction::Replace { instance: "b".into() },
            RecoveryAction::Wait {
                instance: "c".into(),
                reason: "2 replacement(s) under way (max_concurrent_replacements 2)".into()
            },
        ]
    );
    // Rate limit: one launch per interval.
    let limits = ReplacementLimits { max_concurrent: 10, min_interval_ms: 1_000 };
    let got = decide(&views, &m, &limits, Some(4_500), 5_000);
    assert!(got.iter().all(|a| matches!(a, RecoveryAction::Wait { .. })), "{got:?}");
    let got = decide(&views, &m, &limits, Some(3_000), 5_000);
    assert_eq!(got.iter().filter(|a| matches!(a, RecoveryAction::Replace { .. })).count(), 1);
    // Busy (another plan holds it) and already-replacing instances are left alone.
    let views = vec![
        view("a", Health::Stopped { since_ms: 0 }, false, true),
        view("b", Health::Stopped { since_ms: 0 }, true, false),
    ];
    assert!(decide(&views, &m, &ReplacementLimits { max_concurrent: 5, min_interval_ms: 0 }, None, 9_000)
        .is_empty());
}

#[test]
fn fence_mode_waits_until_the_agent_has_surely_fenced() {
    let m = FailureMonitor::Timed { timeout_ms: 1_000 };
    let limits = ReplacementLimits { max_concurrent: 5, min_interval_ms: 0 };
    let mut v = view("a", Health::Unreachable { since_ms: 10_000 }, false, false);
    v.min_unreachable_ms = 12_000;
    // Failed for the monitor at 11 s, but not replaced before 22 s.
    assert!(decide(&[v.clone()], &m, &limits, None, 21_999).is_empty());
    assert_eq!(
        decide(&[v.clone()], &m, &limits, None, 22_000),
        vec![RecoveryAction::Replace { instance: "a".into() }]
    );
    // A stopped task (agent reachable) is not held back by the fence time.
    v.health = Health::Stopped { since_ms: 10_000 };
    assert_eq!(decide(&[v], &m, &limits, None, 11_000).len(), 1);
}
