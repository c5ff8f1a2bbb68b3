//! What an agent must run: its assignments, read from the agent's index of the cluster state,
//! whole or by difference since the answer it holds (`tend_api::DesiredBook` is the agent's end).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tend_api::{Assignment, DesiredState, InstanceKey};
use tend_model::Instance;
use tend_spec::ServiceSpec;

use crate::deploy::assignment;
use crate::Control;

/// Everything `agent` must run now (from the agent's index of the cluster state: the cost
/// follows what the agent runs, not the size of the cluster).
pub async fn desired_for(server: &Control, agent: &str) -> anyhow::Result<Vec<Assignment>> {
    server.inner.state.caught_up(&*server.inner.store).await?;
    let placed = server.inner.state.of_agent(agent).into_iter().map(|(s, i, r)| (s, i, Some(r)));
    Ok(assignments(server, placed).0)
}

/// The assignments of these instances (service, instance, record placed on the agent), and
/// those with none: not placed there any more, no incarnation, or their service not loaded.
fn assignments(
    server: &Control,
    placed: impl IntoIterator<Item = (String, String, Option<Arc<Instance>>)>,
) -> (Vec<Assignment>, Vec<InstanceKey>) {
    let (mut out, mut gone) = (Vec::new(), Vec::new());
    // Per service: its spec and its pod configs (None: not loaded).
    type Loaded = Option<(Arc<ServiceSpec>, Arc<crate::configs::Configs>, BTreeMap<String, String>)>;
    let mut specs: BTreeMap<String, Loaded> = BTreeMap::new();
    for (svc, instance, rec) in placed {
        let Some(rec) = rec.filter(|r| r.incarnation.is_some()) else {
            gone.push(InstanceKey { service: svc, instance });
            continue;
        };
        let loaded = specs.entry(svc.clone()).or_insert_with(|| {
            let rt = server.service(&svc)?;
            let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
            Some((rt.spec.clone(), rt.configs.clone(), rt.record.artifacts.clone()))
        });
        // The config recorded is the one to run (its tasks, env, artifacts): the spec may have
        // moved on while a rolling update has not reached this instance yet.
        // (A config no generation on record has — written before generations were kept — gets
        // the current pod's: never a reason to stop what runs.)
        let asg = loaded.as_ref().and_then(|(spec, configs, artifacts)| match configs.get(rec.config()) {
            Some(c) => Some(assignment(&svc, &c.artifacts, &spec.recovery, &c.pod, &instance, &rec)),
            None => spec
                .pod(&rec.id.pod)
                .map(|pod| assignment(&svc, artifacts, &spec.recovery, pod, &instance, &rec)),
        });
        match asg {
            Some(a) => out.push(a),
            None => gone.push(InstanceKey { service: svc, instance }),
        }
    }
    (out, gone)
}

/// Long-poll helper: the desired state once its generation passes `index` (or at the timeout).
/// `held_from`: the agent holds this control plane's state of `index` and takes a difference.
pub async fn wait_desired(
    server: &Control,
    agent: &str,
    index: u64,
    wait: Duration,
    held_from: Option<&str>,
) -> anyhow::Result<DesiredState> {
    // Only a change this agent's desired state shows wakes it (its instances, its volumes, or
    // something every agent sees), not every change in the cluster.
    let wake = &server.inner.state.wake;
    let gen = wake.wait(agent, index, wait).await;
    // Read the revision first: the state below is at least this new.
    let revision = server.inner.store.revision().await?.max(0) as u64;
    let release_volumes = crate::volumes::releases_for(server, agent).await?;
    // Which instances changed is read after the index the answer carries: every change up to
    // it is among them (more, harmlessly, may be).
    let since = held_from.filter(|h| *h == server.inner.epoch).and_then(|_| wake.changed_since(agent, index));
    server.inner.state.caught_up(&*server.inner.store).await?;
    let (assignments, base_index, gone) = match since {
        Some(keys) => {
            let (a, gone) = assignments(server, server.inner.state.on_agent(agent, keys));
            (a, Some(index), gone)
        }
        None => (desired_for(server, agent).await?, None, Vec::new()),
    };
    Ok(DesiredState {
        index: gen,
        cluster_id: server.inner.cluster_id.clone(),
        revision,
        epoch: server.inner.cfg.leader_epoch,
        assignments,
        release_volumes,
        job_runs: [crate::jobs::runs_for(server, agent), crate::gates::runs_for(server, agent)].concat(),
        source: server.inner.epoch.clone(),
        base_index,
        gone,
    })
}
