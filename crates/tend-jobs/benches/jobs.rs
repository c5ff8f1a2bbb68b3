//! Maintenance scheduling bench: the cost of one scheduler tick over 10,000 job-instances
//! (priorities, windows, backoff, queue order, statuses), and lease acquire+release per second
//! on the durable redb store beside the raw fdatasync rate of the same disk.
// A benchmark is an edge: it measures with the real clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Instant;

use tend_jobs::lease::{Acquired, LeaseManager, Scope};
use tend_jobs::schedule::*;
use tend_jobs::window::RunPolicy;
use tend_model::SystemClock;
use tend_store::StateStore;

fn main() {
    const H: u64 = 3_600_000;
    let now = 1_000 * H;
    let weights = [Weight::Low, Weight::Medium, Weight::High, Weight::Highest];
    let jobs: Vec<JobInstance> = (0..10_000)
        .map(|i| JobInstance {
            job: format!("job-{}", i % 10),
            pod: format!("pod-{}", i % 7),
            instance: format!("pod-{}-{}", i % 7, i),
            timing: JobTiming {
                interval_ms: H * (1 + (i % 24) as u64),
                initial_delay_ms: 0,
                weight: weights[i % 4],
                backoff_ms: H / 2,
                warn_after_ms: 8 * 24 * H,
                error_after_ms: 10 * 24 * H,
                granularity_ms: granularity_for(H * (1 + (i % 24) as u64)),
            },
            last_success_ms: Some(now - (i as u64 * 997_331) % (48 * H)),
            last_failure_ms: if i % 13 == 0 { Some(now - H / 4) } else { None },
            created_ms: 0,
            estimate_ms: (i as u64 % 600) * 1000,
            on_demand: i % 1000 == 0,
            running: i % 17 == 0,
        })
        .collect();
    let policies = vec![
        RunPolicy {
            id: "night".into(),
            job: Some("job-3".into()),
            pods: vec![],
            start: 22 * 60,
            end: 6 * 60,
            utc_offset_minutes: 120,
        },
        RunPolicy {
            id: "pod-5".into(),
            job: None,
            pods: vec!["pod-5".into()],
            start: 9 * 60,
            end: 17 * 60,
            utc_offset_minutes: 0,
        },
    ];
    let ticks = 200;
    let t = Instant::now();
    let mut queued = 0;
    for k in 0..ticks {
        let at = now + k * 1_000;
        let q = queue(&jobs, &policies, at);
        queued = q.len();
        for j in &jobs {
            let b = block(j, &policies, at);
            std::hint::black_box(status(j, b.as_ref(), at));
        }
    }
    let per_tick = t.elapsed().as_secs_f64() / ticks as f64;
    println!(
        "scheduler tick over 10,000 job-instances (queue + status of each): {:.2} ms per tick ({} queued)",
        per_tick * 1000.0,
        queued
    );
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let sync = tend_testkit::fdatasync_rate(dir.path(), 1000);
    println!("reference: raw 4 KiB write+fdatasync: {sync:.0} /s");
    rt.block_on(async {
        let store: Arc<dyn StateStore> =
            tend_store_redb::RedbStore::open(dir.path().join("leases.redb"), Arc::new(SystemClock))
                .expect("store");
        let lm = Arc::new(LeaseManager::new(store, "leases", 600));
        // Sequential: one holder, acquire (grant + CAS txn) then release (txn + revoke).
        let n = 300;
        let t = Instant::now();
        for i in 0..n {
            let scopes = [
                Scope { key: "cluster".into(), slots: 1 },
                Scope { key: format!("zone={}", i % 3), slots: 1 },
            ];
            let Acquired::Held(h) = lm.acquire("cp", &scopes).await.expect("acquire") else { panic!("busy") };
            lm.release("cp", &h).await.expect("release");
        }
        let seq = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "redb lease acquire+release (2 scopes), one at a time: {seq:.0} /s ({:.2}x fdatasync)",
            seq / sync
        );
        // Concurrent: 64 job-instances each with its own scope (group commit helps).
        let t = Instant::now();
        let mut hs = Vec::new();
        for w in 0..64 {
            let lm = lm.clone();
            hs.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let s = [Scope { key: format!("inst-{w}"), slots: 1 }];
                    let Acquired::Held(h) = lm.acquire(&format!("w{w}"), &s).await.expect("acquire") else {
                        panic!("busy")
                    };
                    lm.release(&format!("w{w}"), &h).await.expect("release");
                }
            }));
        }
        for h in hs {
            h.await.expect("join");
        }
        let conc = (64 * 20) as f64 / t.elapsed().as_secs_f64();
        println!(
            "redb lease acquire+release, 64 concurrent holders: {conc:.0} /s ({:.2}x fdatasync)",
            conc / sync
        );
    });
}
