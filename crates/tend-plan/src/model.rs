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
    /// Indices of the steps this one waits for.
    pub deps: Vec<usize>,
}

/// A plan compiled to one DAG of steps, in a topological order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub def: PlanDef,
    /// Steps in topological order (every dep comes before its dependant).
    pub steps: Vec<StepNode>,
}

impl Plan {
    /// Compiles a definition, refusing duplicates, unknown references and cycles.
    pub fn compile(def: PlanDef) -> Result<Plan, PlanError> {
        let plan = def.name.clone();
        let mut phase_index = BTreeMap::new();
        for (i, p) in def.phases.iter().enumerate() {
            if phase_index.insert(p.name.clone(), i).is_some() {
                return Err(PlanError::Duplicate { plan, what: "phase", name: p.name.clone() });
            }
        }
        // Phase-level dependencies.
        let mut phase_deps: Vec<Vec<usize>> = vec![Vec::new(); def.phases.len()];
        for (i, p) in def.phases.iter().enumerate() {
            match def.strategy {
                Strategy::Serial if i > 0 => phase_deps[i].push(i - 1),
                Strategy::Dependency => {
                    for d in &p.depends_on {
                        let j = *phase_index.get(d).ok_or_else(|| PlanError::Unknown {
                            plan: plan.clone(),
                            what: "phase",
                            from: p.name.clone(),
                            to: d.clone(),
                        })?;
                        phase_deps[i].push(j);
                    }
                }
                _ => {}
            }
        }
        // Flatten to step nodes (definition order for now).
        let mut nodes: Vec<StepNode> = Vec::new();
        let mut phase_steps: Vec<Vec<usize>> = Vec::new();
        for (pi, p) in def.phases.iter().enumerate() {
            let mut local = BTreeMap::new();
            let first = nodes.len();
            for (si, s) in p.steps.iter().enumerate() {
                if local.insert(s.name.clone(), first + si).is_some() {
                    return Err(PlanError::Duplicate {
                        plan,
                        what: "step",
                        name: format!("{}/{}", p.name, s.name),
                    });
                }
            }
            for (si, s) in p.steps.iter().enumerate() {
                let mut deps = Vec::new();
                match p.strategy {
                    Strategy::Serial if si > 0 => deps.push(first + si - 1),
                    Strategy::Dependency => {
                        for n in &s.needs {
                            deps.push(*local.get(n).ok_or_else(|| PlanError::Unknown {
                                plan: plan.clone(),
                                what: "step",
                                from: format!("{}/{}", p.name, s.name),
                                to: n.clone(),
                            })?);
                        }
                    }
                    _ => {}
                }
                nodes.push(StepNode {
                    id: format!("{}/{}", p.name, s.name),
                    phase: pi,
                    name: s.name.clone(),
                    deps,
                });
            }
            phase_steps.push((first..nodes.len()).collect());
        }
        // Every step of a phase waits for every step of the phases it depends on.
        for (pi, deps) in phase_deps.iter().enumerate() {
            let upstream: Vec<usize> = deps.iter().flat_map(|d| phase_steps[*d].iter().copied()).collect();
            for s in &phase_steps[pi] {
                nodes[*s].deps.extend(upstream.iter().copied());
            }
        }
        for n in &mut nodes {
            n.deps.sort_unstable();
            n.deps.dedup();
        }
        let order = topo_order(&nodes).map_err(|cycle| PlanError::Cycle { plan: plan.clone(), cycle })?;
        // Re-index in topological order.
        let mut new_index = vec![0; nodes.len()];
        for (new, old) in order.iter().enumerate() {
            new_index[*old] = new;
        }
        let steps = order
            .iter()
            .map(|old| {
                let mut n = nodes[*old].clone();
                n.deps = n.deps.iter().map(|d| new_index[*d]).collect();
                n.deps.sort_unstable();
                n
            })
            .collect();
        Ok(Plan { def, steps })
    }

    /// The index of a step by id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Indices of every step that (transitively) depends on `i`.
    pub fn dependants(&self, i: usize) -> Vec<usize> {
        let mut hit = vec![false; self.steps.len()];
        hit[i] = true;
        let mut out = Vec::new();
        for (j, s) in self.steps.iter().enumerate().skip(i + 1) {
            if s.deps.iter().any(|d| hit[*d]) {
                hit[j] = true;
                out.push(j);
            }
        }
        out
    }
}

/// Kahn's algorithm, stable (ties broken by definition order). Err: a cycle, as step ids.
fn topo_order(nodes: &[StepNode]) -> Result<Vec<usize>, Vec<String>> {
    let n = nodes.len();
    let mut indeg = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in nodes.iter().enumerate() {
        for d in &node.deps {
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
        let Some(next) = nodes[cur].deps.iter().copied().find(|d| indeg[*d] > 0) else { break };
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[pos..].iter().rev().map(|i| nodes[*i].id.clone()).collect();
            cycle.insert(0, nodes[next].id.clone());
            return Err(cycle);
        }
        path.push(next);
    }
    Err(left.iter().map(|i| nodes[*i].id.clone()).collect())
}
