//! The phases of a run: workload and faults for `duration`; then faults stop (links heal,
//! crashed agents and the control plane come back, a bad config is fixed) and the cluster must
//! converge — every plan complete, every instance running and ready on its current config where
//! the store says, nothing else running — within bounded simulated time; then a quiet window in
//! which nothing may be relaunched without a cause.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tend_model::Clock;
use tend_store::StateStore;

use crate::world::World;

/// Workload and faults until `duration`; Err at the first violation.
pub async fn fault_phase(w: &Arc<World>) -> Result<(), String> {
    let end = w.cfg.duration_s * 1_000;
    let any_fault = w.faults != crate::faults::Faults::default();
    let (w1, w2) = (w.clone(), w.clone());
    w.spawn(async move {
        loop {
            let ms = w1.rng(|r| r.range(2_000, 12_000));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            crate::workload::step(&w1).await;
        }
    });
    if any_fault {
        w.spawn(async move {
            loop {
                let ms = w2.rng(|r| r.range(500, 5_000));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                crate::faults::inject(&w2).await;
            }
        });
    }
    while w.clock.elapsed_ms() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(v) = w.checks.first() {
            return Err(v);
        }
    }
    w.stop_spawned();
    Ok(())
}

/// Faults stop; converge, then stay quiet. Ok: simulated ms it took to converge.
pub async fn settle(w: &Arc<World>) -> Result<u64, String> {
    // An operation cut short by the end of the fault phase is a cause until now.
    w.checks.close(w.clock.elapsed_ms() + 1);
    w.calm();
    w.trace.log("faults stop: links heal, crashed agents and the control plane come back");
    w.start_control_plane().await;
    for id in crate::faults::crashed(w) {
        if let Some(ag) = w.agents.iter().find(|a| a.id == id) {
            ag.start(w);
        }
    }
    let fix: Vec<String> = w.services.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
    // The user applies every spec once more (an operation cut short by the end of the fault
    // phase may not have reached the control plane), with a bad config fixed.
    for name in fix.into_iter().filter(|_| !w.cfg.bulk) {
        let changed = w.model(&name, |m| {
            let changed = m.bad || !m.exists;
            if m.bad {
                m.generation += 1;
                m.bad = false;
            }
            m.exists = true;
            changed
        });
        // Only a changed spec may relaunch; re-applying the same spec must relaunch nothing.
        if changed {
            let now = w.clock.elapsed_ms();
            w.checks.cause(crate::checks::Cause::Service(&name), now, now + 1);
        }
        let r = crate::workload::push(w, &name).await;
        w.op("fix", format!("fix {name}: {r:?}"));
    }
    let t0 = w.clock.elapsed_ms();
    let limit = t0 + w.cfg.converge_s * 1_000;
    let mut why;
    loop {
        if let Some(v) = w.checks.first() {
            return Err(v);
        }
        match converged(w).await {
            Ok(()) => break,
            Err(e) => why = e,
        }
        if w.clock.elapsed_ms() >= limit {
            let board = recovery_board(w);
            let models = w.services.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(format!(
                "did not converge within {} s after faults stopped: {why}; recovery: {board}; workload: {models:?}",
                w.cfg.converge_s
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = w.clock.elapsed_ms() - t0;
    w.trace.log(format!("converged {took} ms after faults stopped"));
    if w.cfg.bulk {
        measure_passes(w).await;
        return Ok(took);
    }
    quiet(w).await?;
    Ok(took)
}

/// Nothing is relaunched or restarted in a quiet window after convergence.
async fn quiet(w: &Arc<World>) -> Result<(), String> {
    let before = snapshot(w).await;
    tokio::time::sleep(Duration::from_secs(w.cfg.quiet_s)).await;
    let after = snapshot(w).await;
    if before != after {
        let changed: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {:?} -> {v:?}", before.get(k)))
            .collect();
        return Err(format!("relaunch without a cause in the quiet window: {}", changed.join("; ")));
    }
    if let Some(v) = w.checks.first() {
        return Err(v);
    }
    converged(w).await.map_err(|e| format!("diverged in the quiet window: {e}"))
}

/// Per instance: the store's incarnation and, per agent, the incarnation running and its starts.
async fn snapshot(w: &World) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for kv in w.mem.range("services/").await.map(|r| r.kvs).unwrap_or_default() {
        if let Ok(rec) = tend_control::records::decode_instance(&kv.value) {
            if kv.key.contains("/instances/") {
                out.insert(kv.key.clone(), (rec.incarnation_number(), 0));
            }
        }
    }
    for ag in &w.agents {
        let st = ag.lock();
        for ((s, i), p) in &st.pods {
            out.insert(format!("{}:{s}/{i}", ag.id), (p.a.incarnation, p.starts()));
        }
    }
    out
}

/// Where each instance must run: (service, instance) → (agent, incarnation).
type Expected = BTreeMap<(String, String), (String, u64)>;

/// Whether the cluster has converged: Err says what is still off.
pub async fn converged(w: &World) -> Result<(), String> {
    let server = w.net.server().ok_or("control plane down")?;
    if !*server.inner.reconciled.borrow() {
        return Err("control plane not reconciled with its agents".into());
    }
    let models = w.services.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut expected = Expected::new();
    for (name, m) in models.iter().filter(|(_, m)| m.exists) {
        service_converged(w, &server, (name, m), &mut expected).await?;
    }
    nothing_else_runs(w, &expected)
}

/// One service: its rollout complete (the plan of its current generation), every instance
/// running and ready where the store says.
async fn service_converged(
    w: &World,
    server: &tend_control::Control,
    (name, m): (&str, &crate::workload::SvcModel),
    expected: &mut Expected,
) -> Result<(), String> {
    let rt = server.service(name).ok_or_else(|| format!("service {name} not loaded"))?;
    let (rollout, _) = tend_control::rollout::read(server, name).await.map_err(|e| e.to_string())?;
    let (plan, ids, generation) = {
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        (rt.plans.get(&rollout.plan).cloned(), rt.identities.clone(), rt.record.generation)
    };
    // (A rollback restores configs, never counts: the workload's count stands.)
    let wanted = m.count;
    let plan = plan.ok_or_else(|| format!("{name}: no {} plan", rollout.plan))?;
    // The rollout record first: it is one read, the plan's view reads every step.
    if rollout.generation != generation || rollout.state != tend_control::rollout::RolloutState::Complete {
        return Err(format!(
            "{name}: rollout of generation {} ({} plan) {:?}, service at generation {generation}",
            rollout.generation, rollout.plan, rollout.state
        ));
    }
    let view = tend_control::deploy::engine(server, name).view(&plan).await.map_err(|e| e.to_string())?;
    if view.status.as_str() != "complete" {
        return Err(format!("{name}: {} plan {}", rollout.plan, view.status.as_str()));
    }
    let recs = server.instances(name).await.map_err(|e| e.to_string())?;
    if recs.len() != wanted as usize {
        return Err(format!("{name}: {} instance records, {wanted} wanted", recs.len()));
    }
    for (inst, rec) in recs {
        let agent = rec.agent().map(str::to_string).ok_or_else(|| format!("{name}/{inst} not placed"))?;
        if ids.get(&rec.id.pod).map(String::as_str) != Some(rec.config()) {
            return Err(format!("{name}/{inst} not on the current config"));
        }
        let board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = board.entries.get(&(name.to_string(), inst.clone())) {
            return Err(format!("{name}/{inst}: recovery shows {}: {}", e.state, e.message));
        }
        drop(board);
        instance_runs(w, (name, &inst), &agent, &rec)?;
        expected.insert((name.to_string(), inst), (agent, rec.incarnation_number()));
    }
    Ok(())
}

/// The agent runs the recorded incarnation, alive, ready, out of any crash loop, on its volumes.
fn instance_runs(
    w: &World,
    (name, inst): (&str, &str),
    agent: &str,
    rec: &tend_model::Instance,
) -> Result<(), String> {
    let incarnation = rec.incarnation_number();
    let ag =
        w.agents.iter().find(|a| a.id == agent).ok_or_else(|| format!("{name}/{inst} on unknown agent"))?;
    let st = ag.lock();
    if !st.machine_up || !st.alive {
        return Err(format!("{name}/{inst} on agent {agent}, which is down"));
    }
    let key = (name.to_string(), inst.to_string());
    let pod = st.pods.get(&key);
    let pod = pod.ok_or_else(|| format!("{name}/{inst}#{} not running on {agent}", incarnation))?;
    let now = st.clock.now_ms();
    if st.adoptable.contains(&key) || !pod.processes_alive(now) {
        return Err(format!("{name}/{inst} on {agent} not re-adopted yet"));
    }
    if !pod.settled(now) {
        return Err(format!("{name}/{inst} still inside a crash loop's reset window"));
    }
    if pod.a.incarnation != incarnation || !pod.all_ready() {
        return Err(format!(
            "{name}/{inst}: {agent} runs #{} (ready: {}), the store wants #{}",
            pod.a.incarnation,
            pod.all_ready(),
            incarnation
        ));
    }
    let set = rec.volumes.set.as_ref().map(|v| v.as_str());
    if Some(pod.a.volume_id.as_str()) != set {
        return Err(format!("{name}/{inst} runs on volume set {}, the store says {set:?}", pod.a.volume_id));
    }
    Ok(())
}

/// Every agent is in contact again and runs nothing the store does not give it.
fn nothing_else_runs(w: &World, expected: &Expected) -> Result<(), String> {
    for ag in &w.agents {
        let st = ag.lock();
        if !st.machine_up {
            continue;
        }
        // A fault's after-effects must have played out: the agent is in contact again.
        let silent = st.clock.now_ms().saturating_sub(st.last_contact);
        if !st.alive || silent > 2_000 {
            return Err(format!(
                "agent {} not in contact ({silent} ms since its last acknowledged report)",
                ag.id
            ));
        }
        for ((s, i), p) in &st.pods {
            let k = (s.clone(), i.clone());
            if expected.get(&k) != Some(&(ag.id.clone(), p.a.incarnation)) {
                return Err(format!(
                    "agent {} still runs {s}/{i}#{} that the store does not give it",
                    ag.id, p.a.incarnation
                ));
            }
        }
    }
    Ok(())
}

/// What the control plane's recovery shows (for a failure message).
fn recovery_board(w: &World) -> String {
    let Some(server) = w.net.server() else { return "control plane down".into() };
    let board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
    let v: Vec<String> =
        board.entries.iter().map(|((s, i), e)| format!("{s}/{i} {}: {}", e.state, e.message)).collect();
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join("; ")
    }
}

/// Benchmark mode: the wall-clock cost of one recovery pass and of one agent's desired state at
/// this size (measured, not simulated: these are the control plane's own costs).
#[allow(clippy::disallowed_methods)]
async fn measure_passes(w: &World) {
    use tend_control::agents::AgentProtocol;
    let Some(server) = w.net.server() else { return };
    let probe = w.cfg.probe.map(|read| read());
    let (sim0, wall0) = (w.clock.elapsed_ms(), std::time::Instant::now());
    // Settle first: every instance's config has stayed up long enough to count as ready (and
    // that is recorded), so that the passes measured find nothing due by time.
    tokio::time::sleep(std::time::Duration::from_millis(2 * tend_control::rules::recovery::READY_STABLE_MS))
        .await;
    let _ = tend_control::recovery::tick(&server).await;
    // A full pass, as the first one of a restarted control plane (its cache forgotten).
    server.inner.recovery_cache.lock().await.last_full_ms = None;
    let t = std::time::Instant::now();
    let _ = tend_control::recovery::tick(&server).await;
    let full_us = t.elapsed().as_micros() as u64;
    let _ = tend_control::recovery::tick(&server).await;
    // One agent's report that says something new (a task restarted in place), then the pass
    // it wakes: the cost of what changed, not of the cluster.
    let mut tasks = server
        .inner
        .agents
        .read()
        .ok()
        .and_then(|a| a.get("a0").map(|a| a.tasks.all().to_vec()))
        .unwrap_or_default();
    if let Some(t) = tasks.first_mut() {
        t.restarts += 1;
    }
    let report = tend_api::StatusReport {
        seq: 0,
        tasks,
        released_volumes: Vec::new(),
        job_results: Vec::new(),
        conflict: None,
        revision: None,
        base_seq: None,
        gone: Vec::new(),
    };
    let _ = server.status("a0", report).await;
    let t = std::time::Instant::now();
    let _ = tend_control::recovery::tick(&server).await;
    let one_us = t.elapsed().as_micros() as u64;
    let t = std::time::Instant::now();
    let _ = server.desired("a0", 0, std::time::Duration::ZERO, None).await;
    let desired_us = t.elapsed().as_micros() as u64;
    let passes = crate::world::Passes {
        full_us,
        one_report_us: one_us,
        desired_us,
        probe,
        spent_sim_ms: w.clock.elapsed_ms() - sim0,
        spent_wall_us: wall0.elapsed().as_micros() as u64,
    };
    *w.passes.lock().unwrap_or_else(|e| e.into_inner()) = Some(passes);
}
