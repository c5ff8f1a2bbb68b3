//! Maintenance-job logic under a fake clock and the in-memory (and redb) store, data-driven:
//! priorities, queue order, windows, alarms, backoff, history, leases (CAS races, expiry,
//! holder-only renewal and release, slots all-or-nothing, fencing).

use std::sync::Arc;

use tend_jobs::history::{self, HistoryError, RunRecord, RunStatus};
use tend_jobs::lease::{Acquired, LeaseError, LeaseManager, Scope};
use tend_jobs::schedule::*;
use tend_jobs::window::{parse_time, parse_zone, RunPolicy};
use tend_model::ManualClock;
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

const MIN: u64 = 60_000;
const H: u64 = 60 * MIN;

fn timing(weight: Weight) -> JobTiming {
    JobTiming {
        interval_ms: H,
        initial_delay_ms: 0,
        weight,
        backoff_ms: 30 * MIN,
        warn_after_ms: 8 * H,
        error_after_ms: 10 * H,
        granularity_ms: MIN,
    }
}

fn job(name: &str, inst: &str, weight: Weight, last_success: Option<u64>) -> JobInstance {
    JobInstance {
        job: name.into(),
        pod: "data".into(),
        instance: inst.into(),
        timing: timing(weight),
        last_success_ms: last_success,
        last_failure_ms: None,
        created_ms: 0,
        estimate_ms: 0,
        on_demand: false,
        running: false,
    }
}

/// A window `start`–`end` in `zone`, for `job` (None: every job).
fn w(start: &str, end: &str, zone: &str, job: Option<&str>) -> RunPolicy {
    RunPolicy {
        id: "w".into(),
        job: job.map(str::to_string),
        pods: vec![],
        start: parse_time(start).unwrap(),
        end: parse_time(end).unwrap(),
        utc_offset_minutes: parse_zone(zone).unwrap(),
    }
}

/// (case, job, now, expected priority)
#[test]
fn priority_formula() {
    let t0 = 100 * H;
    let mut est = job("r", "data-0", Weight::Low, Some(t0));
    est.estimate_ms = 5 * MIN;
    let mut od = job("r", "data-0", Weight::Low, Some(t0));
    od.on_demand = true;
    let cases: Vec<(&str, JobInstance, u64, Option<i64>)> = vec![
        ("not due yet", job("r", "data-0", Weight::Low, Some(t0)), t0 + H - 1, None),
        ("just due: 0 units overdue", job("r", "data-0", Weight::Low, Some(t0)), t0 + H, Some(1)),
        (
            "59 s overdue is still 0 whole units",
            job("r", "data-0", Weight::Low, Some(t0)),
            t0 + H + 59_999,
            Some(1),
        ),
        ("1 unit", job("r", "data-0", Weight::Low, Some(t0)), t0 + H + MIN, Some(2)),
        ("medium ×2", job("r", "data-0", Weight::Medium, Some(t0)), t0 + H + MIN, Some(4)),
        ("high ×3", job("r", "data-0", Weight::High, Some(t0)), t0 + H + MIN, Some(6)),
        ("highest ×100", job("r", "data-0", Weight::Highest, Some(t0)), t0 + H + MIN, Some(200)),
        ("estimate makes it due earlier", est, t0 + H - 5 * MIN, Some(1)),
        ("never ran: due after the initial delay", job("r", "data-0", Weight::Low, None), 0, Some(1)),
        (
            "saturation",
            job("r", "data-0", Weight::Highest, Some(0)),
            u64::MAX / 2,
            Some((MAX_UNITS + 1) * 100),
        ),
        ("on demand outranks all", od, t0, Some(ON_DEMAND)),
    ];
    for (what, j, now, want) in cases {
        assert_eq!(priority(&j, now), want, "{what}");
    }
}

#[test]
fn queue_order_on_demand_first_then_priority_then_names() {
    let now = 200 * H;
    let mut jobs = vec![
        job("repair", "data-1", Weight::Low, Some(now - 3 * H)), // 121 units overdue → 121 + 1
        job("backup", "data-0", Weight::High, Some(now - 2 * H)), // (60+1)*3 = 183
        job("repair", "data-0", Weight::Low, Some(now - 3 * H)), // tie with data-1, name order
        job("compact", "data-2", Weight::Low, Some(now - 30 * MIN)), // not due
        job("compact", "data-0", Weight::Medium, Some(now - 2 * H)), // on demand below
        job("repair", "data-2", Weight::Highest, Some(now - 5 * H)), // running: skipped
    ];
    jobs[4].on_demand = true;
    jobs[5].running = true;
    let q: Vec<(String, String, i64)> = queue(&jobs, &[], now)
        .into_iter()
        .map(|(i, p)| (jobs[i].job.clone(), jobs[i].instance.clone(), p))
        .collect();
    assert_eq!(
        q,
        vec![
            ("compact".into(), "data-0".into(), ON_DEMAND),
            ("backup".into(), "data-0".into(), 183),
            ("repair".into(), "data-0".into(), 121),
            ("repair".into(), "data-1".into(), 121),
        ]
    );
}

/// (case, window, utc offset, now (minute of the UTC day), covered?)
#[test]
fn windows() {
    let at = |hh: u64, mm: u64| (10 * 24 * 60 + hh * 60 + mm) * MIN;
    let cases: Vec<(&str, RunPolicy, u64, bool)> = vec![
        ("inside, non-wrapping", w("09:00", "17:00", "UTC", None), at(12, 0), true),
        ("start is inside", w("09:00", "17:00", "UTC", None), at(9, 0), true),
        ("end is outside", w("09:00", "17:00", "UTC", None), at(17, 0), false),
        ("wrapping, late evening", w("22:00", "06:00", "UTC", None), at(23, 30), true),
        ("wrapping, early morning", w("22:00", "06:00", "UTC", None), at(5, 59), true),
        ("wrapping, midday", w("22:00", "06:00", "UTC", None), at(12, 0), false),
        ("00:00–00:00 pauses all", w("00:00", "00:00", "UTC", None), at(13, 37), true),
        ("timezone +02:00: 22:30 UTC is 00:30 local", w("00:00", "01:00", "+02:00", None), at(22, 30), true),
        ("timezone -05:00: 04:00 UTC is 23:00 local", w("22:00", "23:30", "-05:00", None), at(4, 0), true),
        ("timezone -05:00: 12:00 UTC is 07:00 local", w("22:00", "23:30", "-05:00", None), at(12, 0), false),
    ];
    for (what, p, now, want) in cases {
        assert_eq!(p.covers(now), want, "{what}");
    }
    let only_backup = w("00:00", "00:00", "UTC", Some("backup"));
    assert!(only_backup.applies("backup", "data") && !only_backup.applies("repair", "data"));
    for bad in ["24:00", "9:00", "12:60", "noon"] {
        assert!(parse_time(bad).is_err(), "{bad}");
    }
    for bad in ["CET", "+15:00", "02:00"] {
        assert!(parse_zone(bad).is_err(), "{bad}");
    }
    // A window blocks a due job; status says why.
    let j = job("repair", "data-0", Weight::Low, Some(0));
    let b = block(&j, &[w("00:00", "00:00", "UTC", None)], at(3, 0)).unwrap();
    assert_eq!(status(&j, Some(&b), at(3, 0)).0, Status::Blocked("run policy window 00:00–00:00 UTC".into()));
    assert!(queue(&[j], &[w("00:00", "00:00", "UTC", None)], at(3, 0)).is_empty());
}

/// Alarms raise, escalate and clear as time passes and a run succeeds.
#[test]
fn alarms_and_statuses() {
    let t0 = 50 * H;
    let mut j = job("repair", "data-0", Weight::Low, Some(t0));
    let cases: Vec<(u64, Status, Option<Alarm>)> = vec![
        (t0 + 30 * MIN, Status::Completed, None),
        (t0 + 2 * H, Status::OnTime, None),
        (t0 + 8 * H, Status::Late, Some(Alarm::Warning)),
        (t0 + 10 * H, Status::Overdue, Some(Alarm::Error)),
    ];
    for (now, st, alarm) in cases {
        assert_eq!(status(&j, None, now), (st, alarm), "at +{} min", (now - t0) / MIN);
    }
    j.last_success_ms = Some(t0 + 10 * H + MIN);
    assert_eq!(
        status(&j, None, t0 + 10 * H + 2 * MIN),
        (Status::Completed, None),
        "a success clears the alarm"
    );
}

#[test]
fn backoff_after_a_failure_and_on_demand_ignores_it() {
    let mut j = job("repair", "data-0", Weight::Low, Some(0));
    j.last_failure_ms = Some(10 * H);
    assert_eq!(block(&j, &[], 10 * H + MIN), Some(Block::Backoff { until_ms: 10 * H + 30 * MIN }));
    assert!(block(&j, &[], 10 * H + 30 * MIN).is_none());
    j.on_demand = true;
    assert!(block(&j, &[], 10 * H + MIN).is_none());
}

fn mem() -> (Arc<dyn StateStore>, ManualClock) {
    let clock = ManualClock::new(1_000_000);
    (MemoryStore::new(Arc::new(clock.clone())), clock)
}

fn scope(key: &str, slots: u32) -> Scope {
    Scope { key: key.into(), slots }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_cas_race_has_exactly_one_winner_per_slot() {
    let (store, _) = mem();
    let lm = Arc::new(LeaseManager::new(store, "leases", 60));
    for round in 0..20 {
        let mut hs = Vec::new();
        for w in 0..6 {
            let lm = lm.clone();
            hs.push(tokio::spawn(async move {
                lm.acquire(&format!("w{w}"), &[scope(&format!("r{round}/cluster"), 2)]).await.unwrap()
            }));
        }
        let mut held = 0;
        for h in hs {
            if let Acquired::Held(_) = h.await.unwrap() {
                held += 1;
            }
        }
        assert!((1..=2).contains(&held), "round {round}: {held} holders of 2 slots");
        assert_eq!(lm.holders(&format!("r{round}/cluster")).await.unwrap().len(), held);
    }
}

#[tokio::test]
async fn slots_all_or_nothing_expiry_renewal_release_and_fencing() {
    let (store, clock) = mem();
    let lm = LeaseManager::new(store.clone(), "leases", 10);
    let both = [scope("cluster", 2), scope("zone=a", 1)];
    let Acquired::Held(a) = lm.acquire("cp-1", &both).await.unwrap() else { panic!("first acquire") };
    // zone=a has no slot left: nothing is taken, not even the free cluster slot.
    assert_eq!(lm.acquire("cp-2", &both).await.unwrap(), Acquired::Busy("zone=a (1 slot(s) taken)".into()));
    assert_eq!(lm.holders("cluster").await.unwrap(), vec!["cp-1"]);
    // Another zone still fits in the cluster scope.
    let Acquired::Held(b) = lm.acquire("cp-2", &[scope("cluster", 2), scope("zone=b", 1)]).await.unwrap()
    else {
        panic!("second acquire")
    };
    assert!(b.token > a.token, "fencing tokens grow");
    // Renewal and release by a non-holder are refused.
    assert!(matches!(lm.renew_as("intruder", &a).await, Err(LeaseError::NotHolder { .. })));
    assert!(matches!(lm.release("intruder", &a).await, Err(LeaseError::NotHolder { .. })));
    // The holder renews every TTL/10; without renewal the lease expires.
    for _ in 0..5 {
        clock.advance_ms(3_000);
        lm.renew(&b).await.unwrap();
    }
    assert!(!lm.still_holds(&a).await.unwrap(), "a was not renewed for 15 s");
    assert!(matches!(lm.renew(&a).await, Err(LeaseError::NotHolder { .. } | LeaseError::Lost(_))));
    // A result written under the expired hold is refused: its fencing token is stale.
    let run = RunRecord {
        run_id: "r1".into(),
        job: "repair".into(),
        instance: "data-0".into(),
        start_ms: 1,
        end_ms: Some(2),
        status: RunStatus::Succeeded,
        output_tail: String::new(),
        agent: "a1".into(),
        token: a.token,
        on_demand: false,
    };
    assert!(matches!(
        history::record(store.as_ref(), "history", &a, &run).await,
        Err(HistoryError::StaleToken(_))
    ));
    assert!(history::runs(store.as_ref(), "history", "repair", "data-0").await.unwrap().is_empty());
    // The current holder's write lands; release frees the slots.
    let run_b = RunRecord { token: b.token, ..run.clone() };
    history::record(store.as_ref(), "history", &b, &run_b).await.unwrap();
    lm.release("cp-2", &b).await.unwrap();
    assert!(lm.holders("cluster").await.unwrap().is_empty());
    assert!(matches!(lm.acquire("cp-3", &both).await.unwrap(), Acquired::Held(_)));
}

#[tokio::test]
async fn history_derives_last_success_failure_and_estimate() {
    let (store, _) = mem();
    let lm = LeaseManager::new(store.clone(), "leases", 60);
    let Acquired::Held(h) = lm.acquire("cp", &[scope("c", 1)]).await.unwrap() else { panic!() };
    let rec = |id: &str, start: u64, end: u64, status: RunStatus, on_demand: bool| RunRecord {
        run_id: id.into(),
        job: "repair".into(),
        instance: "data-0".into(),
        start_ms: start,
        end_ms: Some(end),
        status,
        output_tail: String::new(),
        agent: "a1".into(),
        token: h.token,
        on_demand,
    };
    for r in [
        rec("1", 100, 160, RunStatus::Succeeded, false),
        rec("2", 1_000, 1_090, RunStatus::Succeeded, true), // an on-demand run counts
        rec("3", 2_000, 2_005, RunStatus::Failed, false),
    ] {
        history::record(store.as_ref(), "history", &h, &r).await.unwrap();
    }
    let runs = history::runs(store.as_ref(), "history", "repair", "data-0").await.unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(history::last_success(&runs), Some(1_090));
    assert_eq!(history::last_failure(&runs), Some(2_005));
    assert_eq!(history::estimate(&runs), 90);
}

#[tokio::test]
async fn leases_hold_across_a_restart_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(5_000_000);
    let path = dir.path().join("s.redb");
    let held = {
        let store: Arc<dyn StateStore> =
            tend_store_redb::RedbStore::open(&path, Arc::new(clock.clone())).unwrap();
        let lm = LeaseManager::new(store, "leases", 60);
        let Acquired::Held(h) = lm.acquire("cp", &[scope("cluster", 1)]).await.unwrap() else { panic!() };
        h
    };
    // After a restart of the control plane the lease is still there: no double run.
    let store: Arc<dyn StateStore> =
        tend_store_redb::RedbStore::open(&path, Arc::new(clock.clone())).unwrap();
    let lm = LeaseManager::new(store, "leases", 60);
    assert!(matches!(lm.acquire("cp-restarted", &[scope("cluster", 1)]).await.unwrap(), Acquired::Busy(_)));
    assert!(lm.still_holds(&held).await.unwrap());
    lm.release("cp", &held).await.unwrap();
}

#[test]
fn granularity_scales_with_the_interval_and_ties_go_to_the_longest_due() {
    assert_eq!(granularity_for(2_000), 1_000);
    assert_eq!(granularity_for(H), 6 * MIN);
    assert_eq!(granularity_for(24 * H), H);
    // Equal priority: the one due longest goes first, whatever its name.
    let mut a = job("repair", "data-0", Weight::Low, Some(10 * H));
    let mut b = job("repair", "data-9", Weight::Low, Some(10 * H - 30_000));
    a.timing.granularity_ms = H;
    b.timing.granularity_ms = H;
    let q = queue(&[a, b], &[], 11 * H + MIN);
    assert_eq!(q.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 0]);
}

/// The scheduler sleeps until a job-instance's standing can change by time alone:
/// (case, job, policies, now, expected next change).
#[test]
fn next_change_is_the_earliest_future_deadline() {
    let day = 10 * 24 * H;
    let done_at = |t: u64| job("repair", "data-0", Weight::Low, Some(t));
    let mut failed = done_at(day);
    failed.last_failure_ms = Some(day + 20 * MIN);
    type Case = (&'static str, JobInstance, Vec<RunPolicy>, u64, Option<u64>);
    let cases: Vec<Case> = vec![
        ("not yet due: when it becomes due", done_at(day), vec![], day + MIN, Some(day + H)),
        ("due: the warning threshold", done_at(day), vec![], day + 2 * H, Some(day + 8 * H)),
        ("warned: the error threshold", done_at(day), vec![], day + 9 * H, Some(day + 10 * H)),
        ("in error, nothing else: nothing by time", done_at(day), vec![], day + 11 * H, None),
        ("a failure: when its backoff ends", failed.clone(), vec![], day + 21 * MIN, Some(day + 50 * MIN)),
        (
            "a window that applies: when it opens",
            done_at(day),
            vec![w("03:00", "04:00", "UTC", None)],
            day + 2 * H,
            Some(day + 3 * H),
        ),
        (
            "inside it: when it closes",
            done_at(day),
            vec![w("03:00", "04:00", "UTC", None)],
            day + 3 * H + 5 * MIN,
            Some(day + 4 * H),
        ),
        (
            "in another zone (+02:00): 03:00 local is 01:00 UTC",
            done_at(day),
            vec![w("03:00", "04:00", "+02:00", None)],
            day + 30 * MIN,
            Some(day + H),
        ),
        (
            "a window of another job: ignored",
            done_at(day),
            vec![w("03:00", "04:00", "UTC", Some("backup"))],
            day + 2 * H,
            Some(day + 8 * H),
        ),
        (
            "a whole-day window never changes",
            done_at(day),
            vec![w("00:00", "00:00", "UTC", None)],
            day + 2 * H,
            Some(day + 8 * H),
        ),
    ];
    for (what, j, pols, now, want) in cases {
        assert_eq!(next_change_ms(&j, &pols, now), want, "{what}");
    }
}
