//! Placement: pod instances needing an agent + a snapshot of agents → decisions, pure.
//!
//! Cost does not grow as pods × agents: agents eligible for a pod's static attribute rules are
//! computed once per pod group and cached; each placement then scans from a rotating cursor and
//! stops after `CANDIDATES` feasible agents, choosing the least loaded of them (spread). Only an
//! instance that cannot be placed scans every eligible agent, to explain why.

use std::collections::{BTreeMap, BTreeSet};
use tend_model::hash::HashMap;

use regex::Regex;

/// How many feasible agents are compared before choosing (power-of-k choices).
pub const CANDIDATES: usize = 4;

/// Resources in integral units: milli-cpus, MiB.
/// Resources offered or reserved (the domain's type).
pub use tend_model::Resources;

/// An agent as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSnapshot {
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    /// Total capacity.
    pub capacity: Resources,
    /// Already reserved by pod instances.
    pub reserved: Resources,
    /// Inclusive range of ports tend may hand out.
    pub port_range: (u16, u16),
    /// Ports already reserved.
    pub used_ports: BTreeSet<u16>,
    /// Lost or draining agents get nothing new.
    pub schedulable: bool,
}

/// A rule on an agent attribute.
#[derive(Clone, Debug)]
pub enum AttributeRule {
    Equals(String, String),
    Matches(String, Regex),
}

/// Placement rules of a pod.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub unique_per_agent: bool,
    pub max_per_attribute: BTreeMap<String, u32>,
    pub attributes: Vec<AttributeRule>,
}

impl Rules {
    /// Builds rules from a pod spec's placement; regexes are anchored (full match).
    pub fn from_spec(p: &tend_spec::Placement) -> Rules {
        Rules {
            unique_per_agent: p.unique_per_agent,
            max_per_attribute: p.max_per_attribute.clone(),
            attributes: p
                .attributes
                .iter()
                .filter_map(|a| match (&a.equals, &a.regex) {
                    (Some(v), _) => Some(AttributeRule::Equals(a.name.clone(), v.clone())),
                    (None, Some(r)) => Regex::new(&format!("^(?:{r})$"))
                        .ok()
                        .map(|re| AttributeRule::Matches(a.name.clone(), re)),
                    _ => None,
                })
                .collect(),
        }
    }

    fn admits(&self, a: &AgentSnapshot) -> bool {
        self.attributes.iter().all(|r| match r {
            AttributeRule::Equals(k, v) => a.attributes.get(k) == Some(v),
            AttributeRule::Matches(k, re) => a.attributes.get(k).is_some_and(|v| re.is_match(v)),
        })
    }
}

/// One pod instance to place.
#[derive(Clone, Debug)]
pub struct Request {
    /// e.g. `data-store/data-2`.
    pub instance: String,
    /// Instances of the same group share rules and counts (e.g. `data-store/data`).
    pub group: String,
    pub needs: Resources,
    /// Port numbers the pod asks for by number (fixed ports).
    pub fixed_ports: Vec<u16>,
    /// How many dynamic ports it needs.
    pub dynamic_ports: usize,
}

/// Where an instance goes, or why it cannot go anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Placed { instance: String, agent: String, ports: Vec<u16> },
    Pending { instance: String, reason: String },
}

#[derive(Default)]
struct Group {
    eligible: Vec<usize>,
    per_agent: HashMap<usize, u32>,
    per_attr: HashMap<(String, String), u32>,
    cursor: usize,
}

/// The cluster as placement sees it, updated as instances are placed.
pub struct Cluster {
    agents: Vec<AgentSnapshot>,
    by_id: HashMap<String, usize>,
    groups: HashMap<String, Group>,
    rules: HashMap<String, Rules>,
}

#[derive(Default)]
struct Exclusions {
    cpus: usize,
    memory: usize,
    disk: usize,
    ports: usize,
    unique: usize,
    max_per: BTreeMap<String, usize>,
    best_free: Resources,
}

impl Cluster {
    pub fn new(agents: Vec<AgentSnapshot>) -> Cluster {
        let by_id = agents.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
        Cluster { agents, by_id, groups: HashMap::default(), rules: HashMap::default() }
    }

    /// Declares a group's rules (before placing or counting its instances).
    pub fn set_rules(&mut self, group: &str, rules: Rules) {
        let eligible: Vec<usize> = self
            .agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.schedulable && rules.admits(a))
            .map(|(i, _)| i)
            .collect();
        let g = self.groups.entry(group.to_string()).or_default();
        g.eligible = eligible;
        self.rules.insert(group.to_string(), rules);
    }

    /// Counts an instance of `group` already reserved on `agent` (its resources and ports are
    /// expected in the agent's snapshot already).
    pub fn count_existing(&mut self, group: &str, agent: &str) {
        let Some(&ai) = self.by_id.get(agent) else { return };
        let attrs = self
            .rules
            .get(group)
            .map(|r| r.max_per_attribute.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let g = self.groups.entry(group.to_string()).or_default();
        *g.per_agent.entry(ai).or_default() += 1;
        for k in attrs {
            if let Some(v) = self.agents[ai].attributes.get(&k) {
                *g.per_attr.entry((k, v.clone())).or_default() += 1;
            }
        }
    }

    /// The agents, with reservations made so far.
    pub fn agents(&self) -> &[AgentSnapshot] {
        &self.agents
    }

    fn free(&self, ai: usize) -> Resources {
        self.agents[ai].capacity.minus(&self.agents[ai].reserved)
    }

    /// Why agent `ai` cannot take the request; None if it can.
    fn why_not(&self, ai: usize, req: &Request, rules: &Rules, g: &Group) -> Option<Reason> {
        let a = &self.agents[ai];
        if rules.unique_per_agent && g.per_agent.get(&ai).copied().unwrap_or(0) > 0 {
            return Some(Reason::Unique);
        }
        for (k, max) in &rules.max_per_attribute {
            match a.attributes.get(k) {
                Some(v) if g.per_attr.get(&(k.clone(), v.clone())).copied().unwrap_or(0) >= *max => {
                    return Some(Reason::MaxPer(k.clone()))
                }
                None => return Some(Reason::MaxPer(k.clone())),
                _ => {}
            }
        }
        let free = self.free(ai);
        if req.needs.cpus_milli > free.cpus_milli {
            return Some(Reason::Cpus);
        }
        if req.needs.memory_mb > free.memory_mb {
            return Some(Reason::Memory);
        }
        if req.needs.disk_mb > free.disk_mb {
            return Some(Reason::Disk);
        }
        let range = (a.port_range.1 as usize + 1).saturating_sub(a.port_range.0 as usize);
        if req.fixed_ports.iter().any(|p| a.used_ports.contains(p))
            || range.saturating_sub(a.used_ports.len() + req.fixed_ports.len()) < req.dynamic_ports
        {
            return Some(Reason::Ports);
        }
        None
    }

    /// Places one instance, reserving its resources and ports on the chosen agent.
    pub fn place(&mut self, req: &Request) -> Decision {
        if !self.rules.contains_key(&req.group) {
            self.set_rules(&req.group, Rules::default());
        }
        let Some(rules) = self.rules.get(&req.group).cloned() else {
            return Decision::Pending { instance: req.instance.clone(), reason: "internal: no rules".into() };
        };
        let g = self.groups.remove(&req.group).unwrap_or_default();
        let n = g.eligible.len();
        let mut best: Option<(usize, (u64, u64, usize))> = None;
        let mut found = 0;
        let mut scanned = 0;
        while scanned < n && found < CANDIDATES {
            let ai = g.eligible[(g.cursor + scanned) % n];
            scanned += 1;
            if self.why_not(ai, req, &rules, &g).is_some() {
                continue;
            }
            found += 1;
            // Spread: fewest instances of this group, then most free cpu, then memory.
            let free = self.free(ai);
            let load = (
                g.per_agent.get(&ai).copied().unwrap_or(0) as u64,
                u64::MAX - free.cpus_milli,
                usize::MAX - free.memory_mb as usize,
            );
            if best.as_ref().is_none_or(|(_, l)| load < *l) {
                best = Some((ai, load));
            }
        }
        let mut g = g;
        let decision = match best {
            Some((ai, _)) => {
                g.cursor = (g.cursor + scanned) % n.max(1);
                let ports = self.reserve(ai, req, &rules, &mut g);
                Decision::Placed { instance: req.instance.clone(), agent: self.agents[ai].id.clone(), ports }
            }
            None => {
                Decision::Pending { instance: req.instance.clone(), reason: self.explain(req, &rules, &g) }
            }
        };
        self.groups.insert(req.group.clone(), g);
        decision
    }

    fn reserve(&mut self, ai: usize, req: &Request, rules: &Rules, g: &mut Group) -> Vec<u16> {
        let a = &mut self.agents[ai];
        a.reserved = a.reserved.plus(&req.needs);
        let mut ports = Vec::new();
        for p in &req.fixed_ports {
            a.used_ports.insert(*p);
            ports.push(*p);
        }
        let mut next = a.port_range.0;
        for _ in 0..req.dynamic_ports {
            while a.used_ports.contains(&next) && next < a.port_range.1 {
                next += 1;
            }
            a.used_ports.insert(next);
            ports.push(next);
        }
        *g.per_agent.entry(ai).or_default() += 1;
        for k in rules.max_per_attribute.keys() {
            if let Some(v) = a.attributes.get(k) {
                *g.per_attr.entry((k.clone(), v.clone())).or_default() += 1;
            }
        }
        ports
    }

    fn explain(&self, req: &Request, rules: &Rules, g: &Group) -> String {
        let total = self.agents.len();
        let unschedulable = self.agents.iter().filter(|a| !a.schedulable).count();
        let by_attr = total - unschedulable - g.eligible.len();
        let mut ex = Exclusions::default();
        for &ai in &g.eligible {
            let free = self.free(ai);
            if free.cpus_milli > ex.best_free.cpus_milli {
                ex.best_free.cpus_milli = free.cpus_milli;
            }
            if free.memory_mb > ex.best_free.memory_mb {
                ex.best_free.memory_mb = free.memory_mb;
            }
            match self.why_not(ai, req, rules, g) {
                Some(Reason::Unique) => ex.unique += 1,
                Some(Reason::MaxPer(k)) => *ex.max_per.entry(k).or_default() += 1,
                Some(Reason::Cpus) => ex.cpus += 1,
                Some(Reason::Memory) => ex.memory += 1,
                Some(Reason::Disk) => ex.disk += 1,
                Some(Reason::Ports) => ex.ports += 1,
                None => {}
            }
        }
        if total == 0 {
            return "no agents are registered".into();
        }
        let mut parts = Vec::new();
        if ex.cpus > 0 {
            parts.push(format!(
                "{} agent(s) lack cpus (need {:.1}, most free {:.1})",
                ex.cpus,
                req.needs.cpus_milli as f64 / 1000.0,
                ex.best_free.cpus_milli as f64 / 1000.0
            ));
        }
        if ex.memory > 0 {
            parts.push(format!(
                "{} lack memory (need {} MB, most free {} MB)",
                ex.memory, req.needs.memory_mb, ex.best_free.memory_mb
            ));
        }
        if ex.disk > 0 {
            parts.push(format!("{} lack disk (need {} MB)", ex.disk, req.needs.disk_mb));
        }
        if ex.ports > 0 {
            parts.push(format!("{} lack free ports", ex.ports));
        }
        if ex.unique > 0 {
            parts.push(format!("{} excluded by unique_per_agent", ex.unique));
        }
        for (k, n) in &ex.max_per {
            let max = rules.max_per_attribute.get(k).copied().unwrap_or(0);
            parts.push(format!("{n} excluded by max_per_attribute {k}={max}"));
        }
        if by_attr > 0 {
            parts.push(format!("{by_attr} do not match the attribute rules"));
        }
        if unschedulable > 0 {
            parts.push(format!("{unschedulable} not schedulable (lost or draining)"));
        }
        format!("no agent fits ({} agents): {}", total, parts.join("; "))
    }
}

enum Reason {
    Unique,
    MaxPer(String),
    Cpus,
    Memory,
    Disk,
    Ports,
}

/// Places every request in order; a pure function of its inputs.
pub fn place_all(cluster: &mut Cluster, requests: &[Request]) -> Vec<Decision> {
    requests.iter().map(|r| cluster.place(r)).collect()
}
