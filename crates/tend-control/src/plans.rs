//! A spec's compiled plans (one step per pod instance) and its pods' config identities.

use std::collections::BTreeMap;

use tend_plan::{Plan, PlanDef};
use tend_spec::ServiceSpec;

/// Digests `(pod → config identity)` of a spec, with uploaded artifact digests.
pub fn identities(spec: &ServiceSpec, artifacts: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    spec.pods.iter().map(|p| (p.name.clone(), tend_spec::pod_config_identity(p, artifacts))).collect()
}

/// Compiles a spec's plans: one step per pod instance.
pub fn compile_plans(spec: &ServiceSpec) -> anyhow::Result<BTreeMap<String, Plan>> {
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
        out.insert(p.name.clone(), plan);
    }
    Ok(out)
}
