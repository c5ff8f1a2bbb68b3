//! What a simulated agent does with a desired state (the real agent's `reconcile`: stop what is
//! not desired, delete released volume sets, start or re-adopt what is, sync job runs) and with
//! time (tasks move on, fencing, job runs end).

use std::sync::Arc;
use std::time::Duration;

use tend_api::{Assignment, DesiredBook, DesiredState, JobResult, RunState, Taken, TaskState};
use tend_model::Clock;

use crate::agent::{AgentSt, SimAgent, SimJob};
use crate::pod::SimPod;
use crate::world::World;

type Key = (String, String);

/// Makes the running set equal the desired set held in `book`: every instance (`Taken::All`),
/// or only those an answer by difference changed. (Released volume sets and job runs come whole
/// in every answer.)
pub(crate) async fn reconcile(
    ag: &Arc<SimAgent>,
    w: &Arc<World>,
    d: DesiredState,
    book: &DesiredBook,
    taken: Taken,
) {
    let want = book.held();
    let mut log = Vec::new();
    let mut to_delete = Vec::new();
    {
        let mut st = ag.lock();
        let now = st.clock.now_ms();
        let gen = st.touched();
        st.ghosts.clear();
        // Pods from before a restart are sorted out by a look at everything.
        let scope: Option<Vec<Key>> = match taken {
            Taken::Instances(keys) if st.adoptable.is_empty() => {
                Some(keys.into_iter().map(|k| (k.service, k.instance)).collect())
            }
            _ => None,
        };
        // Stop what is no longer desired, or an older incarnation of what is.
        let stale_of = |st: &AgentSt, k: &Key| {
            st.pods.get(k).is_some_and(|p| {
                !st.adoptable.contains(k) && want.get(k).is_none_or(|a| a.incarnation > p.a.incarnation)
            })
        };
        let stale: Vec<Key> = match &scope {
            None => st.pods.keys().filter(|k| stale_of(&st, k)).cloned().collect(),
            Some(keys) => keys.iter().filter(|k| stale_of(&st, k)).cloned().collect(),
        };
        for k in stale {
            if let Some(p) = st.pods.remove(&k) {
                log.push(format!("stop {}/{}#{} (not desired)", k.0, k.1, p.a.incarnation));
            }
        }
        // Released volume sets, never one an incarnation here (or from before a restart) uses.
        st.released.retain(|r| d.release_volumes.contains(r));
        for r in &d.release_volumes {
            let busy = st.pods.values().any(|p| p.a.volume_id == r.id);
            if busy || st.released.contains(r) {
                continue;
            }
            to_delete.push(r.clone());
        }
        // Start (or re-adopt) what is desired and not running.
        let starts: Vec<(&Key, &Arc<Assignment>)> = match &scope {
            None => want.iter().collect(),
            Some(keys) => keys.iter().filter_map(|k| want.get_key_value(k)).collect(),
        };
        for (key, a) in starts {
            let was_adoptable = st.adoptable.remove(key);
            if let Some(p) = st.pods.get_mut(key) {
                if !was_adoptable {
                    continue;
                }
                if p.a.incarnation == a.incarnation && p.prelude_done() {
                    p.adopt(now);
                    p.changed_gen = gen;
                    log.push(format!("re-adopt {}/{}#{}", key.0, key.1, a.incarnation));
                    continue;
                }
                log.push(format!(
                    "kill stale {}/{}#{} from before the restart",
                    key.0, key.1, p.a.incarnation
                ));
                st.pods.remove(key);
            }
            if !a.volume_id.is_empty() && !a.tasks.is_empty() {
                st.volume_sets.insert(a.volume_id.clone());
            }
            let mut pod = SimPod::launch(a.clone(), now, &mut st.rng);
            pod.changed_gen = gen;
            log.push(format!("launch {}/{}#{} ({})", key.0, key.1, a.incarnation, a.volume_id));
            w.checks.on_launch(&ag.id, a, &st.deleted_sets);
            st.pods.insert(key.clone(), pod);
        }
        // Checkpointed incarnations that are not desired: stale, killed.
        let stale: Vec<(String, String)> = std::mem::take(&mut st.adoptable).into_iter().collect();
        for k in stale {
            if let Some(p) = st.pods.remove(&k) {
                log.push(format!("kill stale {}/{}#{} from before the restart", k.0, k.1, p.a.incarnation));
            }
        }
        sync_jobs(&mut st, &d, now, &mut log);
    }
    delete_released(ag, w, to_delete, &mut log).await;
    for l in log {
        w.trace.log(format!("agent {}: {l}", ag.id));
    }
}

/// Deletes released volume sets (each checked against the store at that moment), unless an
/// incarnation here uses it.
async fn delete_released(
    ag: &SimAgent,
    w: &World,
    to_delete: Vec<tend_api::VolumeRelease>,
    log: &mut Vec<String>,
) {
    for r in to_delete {
        // The check reads the store as it is when the agent acts.
        w.checks.on_volume_delete(w, &ag.id, &r.id).await;
        let mut st = ag.lock();
        if st.pods.values().any(|p| p.a.volume_id == r.id) {
            continue;
        }
        st.volume_sets.remove(&r.id);
        st.deleted_sets.insert(r.id.clone());
        st.released.push(r.clone());
        log.push(format!("deleted released volume set {}", r.id));
    }
}

fn sync_jobs(st: &mut crate::agent::AgentSt, d: &DesiredState, now: u64, log: &mut Vec<String>) {
    st.jobs.retain(|id, j| {
        let keep = d.job_runs.iter().any(|r| &r.run_id == id);
        if !keep && j.result.state == RunState::Running {
            log.push(format!("kill job run {id} (not listed)"));
        }
        keep
    });
    for r in &d.job_runs {
        if st.jobs.contains_key(&r.run_id) {
            continue;
        }
        let here = st.pods.contains_key(&(r.service.clone(), r.instance.clone()));
        let (state, finish_at, tail) = if here {
            let code = if st.rng.chance(0.1) { 1 } else { 0 };
            (RunState::Running, Some((now + st.rng.range(200, 3_000), code)), String::new())
        } else {
            (RunState::Failed, None, format!("{} does not run on this agent", r.instance))
        };
        log.push(format!(
            "job run {} {} on {}",
            r.run_id,
            if here { "starts" } else { "refused" },
            r.instance
        ));
        let result = JobResult {
            run_id: r.run_id.clone(),
            state,
            exit_code: None,
            output_tail: tail,
            started_ms: now,
            ended_ms: (!here).then_some(now),
        };
        st.jobs.insert(r.run_id.clone(), SimJob { run: r.clone(), result, finish_at });
    }
}

/// Time moves on for the agent's pods and job runs; fence mode kills what lost the control plane.
pub(crate) async fn tick_loop(ag: Arc<SimAgent>, w: Arc<World>) {
    loop {
        tokio::time::sleep(Duration::from_millis(w.cfg.tick_ms)).await;
        let mut log = Vec::new();
        {
            let mut st = ag.lock();
            let now = st.clock.now_ms();
            let st = &mut *st;
            let mut moved = false;
            // Only a pod with something due moves (and moves the reported generation).
            let gen = st.next_gen();
            for (k, p) in st.pods.iter_mut() {
                if st.adoptable.contains(k) || !p.due(now) {
                    continue;
                }
                moved = true;
                p.changed_gen = gen;
                for e in p.advance(now, &mut st.rng) {
                    log.push(format!("{}/{}#{}: {e}", k.0, k.1, p.a.incarnation));
                }
            }
            if moved {
                st.touched();
            }
            let silent = now.saturating_sub(st.last_contact);
            let fenced: Vec<(String, String)> = st
                .pods
                .iter()
                .filter(|(k, p)| !st.adoptable.contains(*k) && p.a.fence_after_ms.is_some_and(|f| silent > f))
                .map(|(k, _)| k.clone())
                .collect();
            if !fenced.is_empty() {
                st.refetch = true;
                st.touched();
            }
            for k in fenced {
                if let Some(p) = st.pods.remove(&k) {
                    log.push(format!(
                        "fenced {}/{}#{} after {silent} ms without contact",
                        k.0, k.1, p.a.incarnation
                    ));
                    for mut t in p.statuses() {
                        t.state = TaskState::Killed;
                        t.ready = false;
                        t.next_restart_ms = None;
                        t.since_ms = now;
                        t.message =
                            Some(format!("fenced: no contact with the control plane for {silent} ms"));
                        st.ghosts.push(t);
                    }
                }
            }
            for j in st.jobs.values_mut() {
                if let Some((at, code)) = j.finish_at.filter(|(at, _)| now >= *at) {
                    let _ = at;
                    j.finish_at = None;
                    j.result.state = if code == 0 { RunState::Succeeded } else { RunState::Failed };
                    j.result.exit_code = Some(code);
                    j.result.ended_ms = Some(now);
                    log.push(format!("job run {} ended {code}", j.run.run_id));
                }
            }
        }
        if !log.is_empty() {
            for l in log {
                w.trace.log(format!("agent {}: {l}", ag.id));
            }
            ag.changed.notify_one();
            w.after_step().await;
        }
    }
}
