//! A spec's compiled plans (one step per pod instance) and its pods' config identities. Besides
//! the spec's own plans: `update` (unless the spec defines one), generated from each pod's
//! update policy, and `rollback`, the same in reverse order.

use std::collections::BTreeMap;

use tend_plan::{Plan, PlanDef};
use tend_spec::ServiceSpec;

/// Digests `(pod → config identity)` of a spec, with uploaded artifact digests.
pub fn identities(spec: &ServiceSpec, artifacts: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    spec.pods.iter().map(|p| (p.name.clone(), tend_spec::pod_config_identity(p, artifacts))).collect()
}

/// Compiles a spec's plans: one step per pod instance.
pub fn compile_plans(spec: &ServiceSpec) -> anyhow::Result<BTreeMap<String, std::sync::Arc<Plan>>> {
    let mut out = BTreeMap::new();
    for p in &spec.plans {
        let strategy = |s: tend_spec::Strategy| match s {
            tend_spec::Strategy::Serial => tend_plan::Strategy::Serial,
            tend_spec::Strategy::Parallel => tend_plan::Strategy::Parallel,
            tend_spec::Strategy::Dependency => tend_plan::Strategy::Dependency,
        };
        let phases = p
            .phases
            .iter()
            .map(|ph| {
                let count = spec.pod(&ph.pod).map_or(0, |pod| pod.count);
                tend_plan::PhaseDef {
                    name: ph.name.clone(),
                    strategy: strategy(ph.strategy),
                    depends_on: ph.depends_on.clone(),
                    steps: (0..count)
                        .map(|i| tend_plan::StepDef { name: format!("{}-{i}", ph.pod), needs: vec![] })
                        .collect(),
                }
            })
            .collect();
        let plan = Plan::compile(PlanDef { name: p.name.clone(), strategy: strategy(p.strategy), phases })?;
        out.insert(p.name.clone(), std::sync::Arc::new(plan));
    }
    if !out.contains_key("update") {
        out.insert("update".into(), std::sync::Arc::new(Plan::compile(rollout_plan(spec, "update", false))?));
    }
    if !out.contains_key("rollback") {
        out.insert(
            "rollback".into(),
            std::sync::Arc::new(Plan::compile(rollout_plan(spec, "rollback", true))?),
        );
    }
    Ok(out)
}

/// The phases of a canary plan that wait for `tend plan continue` (every phase after the first
/// canary phase).
pub fn after_canary(plan: &Plan) -> Vec<String> {
    let phases = &plan.def.phases;
    match phases.iter().position(|p| p.name.ends_with(CANARY_SUFFIX)) {
        Some(i) => phases[i + 1..].iter().map(|p| p.name.clone()).collect(),
        None => Vec::new(),
    }
}

const CANARY_SUFFIX: &str = "-canary";

/// A rolling plan from the pods' update policies: pods one after the other (in spec order, or
/// reversed), each pod's instances in a sliding window of `max_parallel` (instance i waits for
/// instance i − max_parallel), its first `canary` instances in a phase of their own.
fn rollout_plan(spec: &ServiceSpec, name: &str, reverse: bool) -> PlanDef {
    let mut phases = Vec::new();
    let mut pods: Vec<&tend_spec::PodSpec> = spec.pods.iter().filter(|p| p.count > 0).collect();
    if reverse {
        pods.reverse();
    }
    for pod in pods {
        let mut indices: Vec<u32> = (0..pod.count).collect();
        if reverse {
            indices.reverse();
        }
        let canary = if reverse { 0 } else { pod.update.canary.min(pod.count) as usize };
        let (first, rest) = indices.split_at(canary);
        for (phase, part) in [(format!("{}{CANARY_SUFFIX}", pod.name), first), (pod.name.clone(), rest)] {
            if part.is_empty() {
                continue;
            }
            let window = pod.update.max_parallel.max(1) as usize;
            let steps = part
                .iter()
                .enumerate()
                .map(|(j, i)| tend_plan::StepDef {
                    name: format!("{}-{i}", pod.name),
                    needs: j
                        .checked_sub(window)
                        .map(|k| format!("{}-{}", pod.name, part[k]))
                        .into_iter()
                        .collect(),
                })
                .collect();
            phases.push(tend_plan::PhaseDef {
                name: phase,
                strategy: tend_plan::Strategy::Dependency,
                depends_on: vec![],
                steps,
            });
        }
    }
    PlanDef { name: name.into(), strategy: tend_plan::Strategy::Serial, phases }
}
