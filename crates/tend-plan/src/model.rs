//! What a plan is: phases of steps with their ordering, compiled into one dependency graph.

use std::collections::BTreeMap;

/// How the children of a plan (phases) or of a phase (steps) are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One after the other, in order.
    Serial,
    /// All at once.
    Parallel,
    /// As their `depends_on` / `needs` say (a DAG).
    Dependency,
}

/// A plan definition.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanDef {
    pub name: String,
    pub strategy: Strategy,
    pub phases: Vec<PhaseDef>,
}

/// A phase definition.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseDef {
    pub name: String,
    pub strategy: Strategy,
    /// Phases this one waits for (strategy Dependency of the plan).
    pub depends_on: Vec<String>,
    pub steps: Vec<StepDef>,
}

/// A step definition.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDef {
    pub name: String,
    /// Steps of the same phase this one waits for (strategy Dependency of the phase).
    pub needs: Vec<String>,
}

/// Why a plan definition is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan `{plan}`: {what} `{name}` is defined twice")]
    Duplicate { plan: String, what: &'static str, name: String },
    #[error("plan `{plan}`: `{from}` depends on unknown {what} `{to}`")]
    Unknown { plan: String, what: &'static str, from: String, to: String },
    #[error("plan `{plan}`: dependency cycle {}", .cycle.join(" → "))]
    Cycle { plan: String, cycle: Vec<String> },
}

/// One step in the compiled graph.
#[derive(Clone, Debug, PartialEq)]
pub struct StepNode {
    /// `phase/step`, unique in the plan.
    pub id: String,
    pub phase: usize,
    pub name: String,
    /// Indices of the steps of the same phase this one waits for. A step also waits for every
    /// phase its phase depends on ([`PhaseNode::deps`]): phases are barriers, so a plan costs
    /// its steps plus its phase edges, not the product of neighbouring phases' sizes.
    pub deps: Vec<usize>,
}

/// One phase in the compiled graph, by definition index.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseNode {
    /// Definition indices of the phases this one waits for (all their steps complete).
    pub deps: Vec<usize>,
    /// Its steps: a contiguous range of [`Plan::steps`].
    pub steps: std::ops::Range<usize>,
}

/// A plan compiled to one DAG of steps, in a topological order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub def: PlanDef,
    /// Steps in topological order: grouped by phase, phases in a topological order, and within
    /// a phase every dep before its dependant.
    pub steps: Vec<StepNode>,
    /// Phases by definition index.
    pub phases: Vec<PhaseNode>,
    /// Definition indices of the phases in the order their steps appear in `steps`.
    pub phase_order: Vec<usize>,
}

impl Plan {
    /// Compiles a definition, refusing duplicates, unknown references and cycles.
    pub fn compile(def: PlanDef) -> Result<Plan, PlanError> {
        let plan = def.name.clone();
        let phase_deps = phase_deps(&def)?;
        let names: Vec<String> = def.phases.iter().map(|p| p.name.clone()).collect();
        let phase_order = topo_order(&names, &phase_deps).map_err(|cycle| PlanError::Cycle {
            plan: plan.clone(),
            cycle: cycle.into_iter().map(|i| names[i].clone()).collect(),
        })?;
        let mut steps: Vec<StepNode> = Vec::new();
        let mut ranges = vec![0..0; def.phases.len()];
        for &pi in &phase_order {
            let first = steps.len();
            let (ids, deps) = step_deps(&def, pi)?;
            let order = topo_order(&ids, &deps).map_err(|cycle| PlanError::Cycle {
                plan: plan.clone(),
                cycle: cycle.into_iter().map(|i| ids[i].clone()).collect(),
            })?;
            let mut new_index = vec![0; ids.len()];
            for (new, old) in order.iter().enumerate() {
                new_index[*old] = first + new;
            }
            for old in order {
                let mut d: Vec<usize> = deps[old].iter().map(|x| new_index[*x]).collect();
                d.sort_unstable();
                steps.push(StepNode {
                    id: ids[old].clone(),
                    phase: pi,
                    name: def.phases[pi].steps[old].name.clone(),
                    deps: d,
                });
            }
            ranges[pi] = first..steps.len();
        }
        let phases =
            phase_deps.into_iter().zip(ranges).map(|(deps, steps)| PhaseNode { deps, steps }).collect();
        Ok(Plan { def, steps, phases, phase_order })
    }

    /// The index of a step by id.
    pub fn index(&self, id: &str) -> Option<usize> {
        // Look in the step's own phase first: a phase may hold most of a big plan, but a plan
        // of many phases should not be scanned whole per lookup.
        let in_phase = id.split_once('/').and_then(|(phase, _)| {
            let pi = self.def.phases.iter().position(|p| p.name == phase)?;
            self.phases[pi].steps.clone().find(|i| self.steps[*i].id == id)
        });
        in_phase.or_else(|| self.steps.iter().position(|s| s.id == id))
    }

    /// Definition indices of the phases that wait for phase `pi` directly.
    pub fn phase_dependants(&self, pi: usize) -> Vec<usize> {
        (0..self.phases.len()).filter(|q| self.phases[*q].deps.contains(&pi)).collect()
    }

    /// Indices of every step that (transitively) depends on `i`.
    pub fn dependants(&self, i: usize) -> Vec<usize> {
        let mut hit = vec![false; self.steps.len()];
        let mut phase_hit = vec![false; self.phases.len()];
        hit[i] = true;
        phase_hit[self.steps[i].phase] = true;
        let mut out = Vec::new();
        for (j, s) in self.steps.iter().enumerate().skip(i + 1) {
            // Upstream phases come entirely before a phase's steps, so `phase_hit` is final here.
            let via_phase = self.phases[s.phase].deps.iter().any(|p| phase_hit[*p]);
            if via_phase || s.deps.iter().any(|d| hit[*d]) {
                hit[j] = true;
                phase_hit[s.phase] = true;
                out.push(j);
            }
        }
        out
    }
}

/// Phase-level dependencies, by definition index.
fn phase_deps(def: &PlanDef) -> Result<Vec<Vec<usize>>, PlanError> {
    let plan = &def.name;
    let mut phase_index = BTreeMap::new();
    for (i, p) in def.phases.iter().enumerate() {
        if phase_index.insert(p.name.as_str(), i).is_some() {
            return Err(PlanError::Duplicate { plan: plan.clone(), what: "phase", name: p.name.clone() });
        }
    }
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); def.phases.len()];
    for (i, p) in def.phases.iter().enumerate() {
        match def.strategy {
            Strategy::Serial if i > 0 => deps[i].push(i - 1),
            Strategy::Dependency => {
                for d in &p.depends_on {
                    let j = *phase_index.get(d.as_str()).ok_or_else(|| PlanError::Unknown {
                        plan: plan.clone(),
                        what: "phase",
                        from: p.name.clone(),
                        to: d.clone(),
                    })?;
                    deps[i].push(j);
                }
            }
            _ => {}
        }
        deps[i].sort_unstable();
        deps[i].dedup();
    }
    Ok(deps)
}

/// The ids of phase `pi`'s steps and their deps (local indices), in definition order.
fn step_deps(def: &PlanDef, pi: usize) -> Result<(Vec<String>, Vec<Vec<usize>>), PlanError> {
    let plan = &def.name;
    let p = &def.phases[pi];
    let mut local = BTreeMap::new();
    for (si, s) in p.steps.iter().enumerate() {
        if local.insert(s.name.as_str(), si).is_some() {
            let name = format!("{}/{}", p.name, s.name);
            return Err(PlanError::Duplicate { plan: plan.clone(), what: "step", name });
        }
    }
    let ids = p.steps.iter().map(|s| format!("{}/{}", p.name, s.name)).collect();
    let mut deps = Vec::with_capacity(p.steps.len());
    for (si, s) in p.steps.iter().enumerate() {
        let mut d = Vec::new();
        match p.strategy {
            Strategy::Serial if si > 0 => d.push(si - 1),
            Strategy::Dependency => {
                for n in &s.needs {
                    d.push(*local.get(n.as_str()).ok_or_else(|| PlanError::Unknown {
                        plan: plan.clone(),
                        what: "step",
                        from: format!("{}/{}", p.name, s.name),
                        to: n.clone(),
                    })?);
                }
            }
            _ => {}
        }
        d.sort_unstable();
        d.dedup();
        deps.push(d);
    }
    Ok((ids, deps))
}

/// Kahn's algorithm over nodes named `names` with `deps`, stable (ties broken by definition
/// order). Err: a cycle, as node indices.
fn topo_order(names: &[String], deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = names.len();
    let mut indeg = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for d in ds {
            indeg[i] += 1;
            users[*d].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|i| indeg[*i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for u in &users[i] {
            indeg[*u] -= 1;
            if indeg[*u] == 0 {
                ready.insert(*u);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk back along deps among the leftovers until a node repeats.
    let left: Vec<usize> = (0..n).filter(|i| indeg[*i] > 0).collect();
    let mut path = vec![left[0]];
    loop {
        let cur = *path.last().unwrap_or(&left[0]);
        let Some(next) = deps[cur].iter().copied().find(|d| indeg[*d] > 0) else { break };
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<usize> = path[pos..].iter().rev().copied().collect();
            cycle.insert(0, next);
            return Err(cycle);
        }
        path.push(next);
    }
    Err(left)
}
