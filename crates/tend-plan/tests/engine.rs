//! Plan engine tests over the in-memory store and a simulated world: compile rules, idempotent
//! re-runs, failure isolation, logic-error detection, propagation, resume after a kill, operator
//! actions, concurrency, and a property test over random DAGs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use proptest::prelude::*;
use tend_model::ManualClock;
use tend_plan::Strategy as St;
use tend_plan::*;
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

/// A fake world: a step's work marks it done; some steps fail, lie, or publish a version.
#[derive(Default)]
struct World {
    done: Mutex<BTreeMap<String, u64>>,
    fail: Mutex<BTreeSet<String>>,
    lying_check: BTreeSet<String>,
    publishes: BTreeSet<String>,
    applies: Mutex<Vec<String>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    slow: BTreeSet<String>,
}

#[async_trait]
impl StepWork for World {
    async fn check(&self, step: &StepNode) -> Result<CheckResult, String> {
        if self.lying_check.contains(&step.id) {
            return Ok(CheckResult::Needed);
        }
        Ok(if self.done.lock().unwrap().contains_key(&step.id) {
            CheckResult::Done
        } else {
            CheckResult::Needed
        })
    }
    async fn apply(&self, step: &StepNode, _: &ApplyReason) -> Result<Applied, String> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        if self.slow.contains(&step.id) {
            if let Some(g) = &self.gate {
                let _permit = g.acquire().await.map_err(|e| e.to_string())?;
            }
        }
        tokio::task::yield_now().await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.applies.lock().unwrap().push(step.id.clone());
        if self.fail.lock().unwrap().contains(&step.id) {
            return Err(format!("{} failed on purpose", step.id));
        }
        *self.done.lock().unwrap().entry(step.id.clone()).or_default() += 0;
        Ok(Applied::Done)
    }
    async fn fingerprint(&self, step: &StepNode) -> Result<Option<String>, String> {
        if self.publishes.contains(&step.id) {
            return Ok(self.done.lock().unwrap().get(&step.id).map(|v| format!("v{v}")));
        }
        Ok(None)
    }
}

impl World {
    fn applies(&self) -> Vec<String> {
        std::mem::take(&mut *self.applies.lock().unwrap())
    }
}

fn engine() -> (Engine, Arc<dyn StateStore>) {
    let clock = ManualClock::new(0);
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(clock.clone()));
    (Engine::new(store.clone(), Arc::new(clock), "test"), store)
}

fn phase(name: &str, strategy: St, deps: &[&str], steps: &[(&str, &[&str])]) -> PhaseDef {
    PhaseDef {
        name: name.into(),
        strategy,
        depends_on: deps.iter().map(|s| s.to_string()).collect(),
        steps: steps
            .iter()
            .map(|(n, needs)| StepDef {
                name: n.to_string(),
                needs: needs.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    }
}

fn plan(strategy: St, phases: Vec<PhaseDef>) -> Plan {
    Plan::compile(PlanDef { name: "p".into(), strategy, phases }).unwrap()
}

/// The deps of every step, by id, for compile checks.
fn deps_of(p: &Plan) -> BTreeMap<String, Vec<String>> {
    p.steps
        .iter()
        .map(|s| {
            // Its own phase's steps, and every step of the phases its phase waits for.
            let upstream = p.phases[s.phase].deps.iter().flat_map(|u| p.phases[*u].steps.clone());
            let mut d: Vec<String> =
                s.deps.iter().copied().chain(upstream).map(|d| p.steps[d].id.clone()).collect();
            d.sort();
            (s.id.clone(), d)
        })
        .collect()
}

#[test]
fn compile_orders_steps_by_strategy() {
    use St::*;
    let check = |p: Plan, want: &[(&str, &[&str])]| {
        let got = deps_of(&p);
        let want: BTreeMap<String, Vec<String>> =
            want.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect();
        let want: BTreeMap<String, Vec<String>> = want
            .into_iter()
            .map(|(k, mut v): (String, Vec<String>)| {
                v.sort();
                (k, v)
            })
            .collect();
        assert_eq!(got, want);
    };
    check(
        plan(
            Serial,
            vec![
                phase("a", Serial, &[], &[("1", &[]), ("2", &[])]),
                phase("b", Parallel, &[], &[("1", &[]), ("2", &[])]),
            ],
        ),
        &[("a/1", &[]), ("a/2", &["a/1"]), ("b/1", &["a/1", "a/2"]), ("b/2", &["a/1", "a/2"])],
    );
    check(
        plan(
            Parallel,
            vec![phase("a", Parallel, &[], &[("1", &[])]), phase("b", Serial, &[], &[("1", &[])])],
        ),
        &[("a/1", &[]), ("b/1", &[])],
    );
    check(
        plan(
            Dependency,
            vec![
                phase("x", Dependency, &["y"], &[("1", &["2"]), ("2", &[])]),
                phase("y", Parallel, &[], &[("1", &[])]),
            ],
        ),
        &[("y/1", &[]), ("x/2", &["y/1"]), ("x/1", &["x/2", "y/1"])],
    );
    // Topological order: every dep comes first.
    let p = plan(Dependency, vec![phase("x", Dependency, &[], &[("c", &["b"]), ("b", &["a"]), ("a", &[])])]);
    assert_eq!(p.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
}

#[test]
fn compile_refuses_bad_plans() {
    use St::*;
    let bad = |phases: Vec<PhaseDef>| {
        Plan::compile(PlanDef { name: "p".into(), strategy: Dependency, phases }).unwrap_err()
    };
    assert!(matches!(
        bad(vec![phase("a", Dependency, &[], &[("1", &["2"]), ("2", &["1"])])]),
        PlanError::Cycle { .. }
    ));
    assert!(matches!(
        bad(vec![phase("a", Serial, &["b"], &[("1", &[])]), phase("b", Serial, &["a"], &[("1", &[])])]),
        PlanError::Cycle { .. }
    ));
    assert!(matches!(bad(vec![phase("a", Serial, &["zz"], &[("1", &[])])]), PlanError::Unknown { .. }));
    assert!(matches!(bad(vec![phase("a", Dependency, &[], &[("1", &["zz"])])]), PlanError::Unknown { .. }));
    assert!(matches!(
        bad(vec![phase("a", Serial, &[], &[("1", &[]), ("1", &[])])]),
        PlanError::Duplicate { .. }
    ));
    let e = bad(vec![phase("a", Dependency, &[], &[("1", &["3"]), ("2", &["1"]), ("3", &["2"])])]);
    assert_eq!(e.to_string(), "plan `p`: dependency cycle a/1 → a/2 → a/3 → a/1");
}

fn chain() -> Plan {
    plan(
        St::Serial,
        vec![phase("main", St::Dependency, &[], &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &[])])],
    )
}

#[tokio::test]
async fn second_run_does_no_work() {
    let (e, _) = engine();
    let w = World::default();
    let p = chain();
    let s1 = e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(s1.complete());
    assert_eq!(w.applies().len(), 4);
    let s2 = e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(s2.complete());
    assert!(w.applies().is_empty(), "nothing applied the second time");
    assert_eq!(s2.skipped.len(), 4);
    assert_eq!(e.view(&p).await.unwrap().status, Status::Complete);
}

#[tokio::test]
async fn a_failure_stops_only_its_dependants() {
    let (e, _) = engine();
    let w = World::default();
    w.fail.lock().unwrap().insert("main/a".into());
    let p = chain();
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert_eq!(s.failed.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), vec!["main/a"]);
    assert_eq!(s.blocked, vec!["main/b", "main/c"]);
    assert_eq!(s.applied, vec!["main/d"]);
    let v = e.view(&p).await.unwrap();
    assert_eq!(v.status, Status::Error);
    assert_eq!(v.phases[0].steps[0].1.last_error.as_deref(), Some("main/a failed on purpose"));
    // Fixed: the next run picks up from the failed step.
    w.fail.lock().unwrap().clear();
    w.applies();
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(s.complete());
    assert_eq!(w.applies(), vec!["main/a", "main/b", "main/c"]);
}

#[tokio::test]
async fn a_check_that_still_fails_after_apply_is_a_logic_error() {
    let (e, _) = engine();
    let w = World { lying_check: ["main/b".to_string()].into(), ..Default::default() };
    let s = e.run(&chain(), &w, &NoObserver).await.unwrap();
    assert_eq!(s.failed.len(), 1);
    assert!(s.failed[0].1.contains("logic error"), "{:?}", s.failed);
    assert_eq!(s.blocked, vec!["main/c"]);
}

#[tokio::test]
async fn a_changed_fingerprint_reruns_dependants_only() {
    let (e, _) = engine();
    let w = World { publishes: ["main/a".to_string()].into(), ..Default::default() };
    let p = chain();
    e.run(&p, &w, &NoObserver).await.unwrap();
    w.applies();
    // a's product changes (e.g. the uploaded file): a itself is fine, but b and c must redo.
    w.done.lock().unwrap().insert("main/a".into(), 7);
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(s.complete());
    assert_eq!(w.applies(), vec!["main/b", "main/c"], "b re-runs for its input, c for b's");
    // Without change, nothing.
    e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(w.applies().is_empty());
}

fn three_phases() -> Plan {
    use St::*;
    plan(
        Serial,
        vec![
            phase("a", Parallel, &[], &[("x", &[]), ("y", &[])]),
            phase("b", Parallel, &[], &[("z", &[])]),
            phase("c", Parallel, &[], &[("w", &[])]),
        ],
    )
}

#[tokio::test]
async fn a_change_upstream_reruns_the_phases_after_it() {
    let (e, _) = engine();
    let w = World { publishes: ["a/x".to_string()].into(), ..Default::default() };
    let p = three_phases();
    assert!(e.run(&p, &w, &NoObserver).await.unwrap().complete());
    assert_eq!(w.applies().len(), 4);
    w.done.lock().unwrap().insert("a/x".into(), 7);
    assert!(e.run(&p, &w, &NoObserver).await.unwrap().complete());
    assert_eq!(w.applies(), vec!["b/z", "c/w"], "b sees phase a's combined fingerprint change, c sees b's");
    e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(w.applies().is_empty());
}

#[tokio::test]
async fn an_empty_phase_is_still_a_barrier() {
    use St::*;
    let (e, _) = engine();
    let w = World { fail: Mutex::new(["a/x".to_string()].into()), ..Default::default() };
    let p = plan(
        Serial,
        vec![
            phase("a", Parallel, &[], &[("x", &[])]),
            phase("b", Parallel, &[], &[]),
            phase("c", Parallel, &[], &[("y", &[])]),
        ],
    );
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert_eq!(s.blocked, vec!["c/y"], "c waits for a through the empty b");
    assert_eq!(w.applies(), vec!["a/x"]);
}

/// A record written when every step of a phase depended on every step of the phases before it
/// (inputs keyed by upstream step ids, and the default fingerprint of that map) is not a change.
#[tokio::test]
async fn inputs_recorded_in_the_older_form_are_not_a_change() {
    let (e, store) = engine();
    let w = World { publishes: ["a/x".to_string()].into(), ..Default::default() };
    let p = three_phases();
    assert!(e.run(&p, &w, &NoObserver).await.unwrap().complete());
    w.applies();
    let mut legacy_fp = BTreeMap::new();
    for (id, upstream) in [("b/z", vec!["a/x", "a/y"]), ("c/w", vec!["b/z"])] {
        let mut inputs = BTreeMap::new();
        for u in upstream {
            let v = match legacy_fp.get(u) {
                Some(v) => String::clone(v),
                None => fp_of(&e, &p, u).await,
            };
            inputs.insert(u.to_string(), v);
        }
        let mut rec = e.record(&p, id).await.unwrap();
        rec.fingerprint = Some(tend_plan::state::inputs_fingerprint(&inputs));
        legacy_fp.insert(id, rec.fingerprint.clone().unwrap());
        rec.inputs = inputs;
        store.put(&format!("test/plans/p/steps/{id}"), &serde_json::to_vec(&rec).unwrap()).await.unwrap();
    }
    assert!(e.run(&p, &w, &NoObserver).await.unwrap().complete());
    assert!(w.applies().is_empty(), "an upgrade re-runs nothing");
    assert_eq!(
        e.record(&p, "c/w").await.unwrap().fingerprint.as_deref(),
        legacy_fp.get("c/w").map(|s| s.as_str())
    );
    // A real change upstream still flows through the rewritten records.
    w.done.lock().unwrap().insert("a/x".into(), 7);
    assert!(e.run(&p, &w, &NoObserver).await.unwrap().complete());
    assert_eq!(w.applies(), vec!["b/z", "c/w"]);
}

async fn fp_of(e: &Engine, p: &Plan, id: &str) -> String {
    e.record(p, id).await.unwrap().fingerprint.unwrap_or_default()
}

#[test]
fn a_plan_costs_its_steps_and_phases_not_their_product() {
    let steps: Vec<String> = (0..20_000).map(|i| format!("i-{i}")).collect();
    let phases = ["a", "b", "c"]
        .iter()
        .map(|n| PhaseDef {
            name: n.to_string(),
            strategy: St::Parallel,
            depends_on: vec![],
            steps: steps.iter().map(|s| StepDef { name: s.clone(), needs: vec![] }).collect(),
        })
        .collect();
    let p = Plan::compile(PlanDef { name: "p".into(), strategy: St::Serial, phases }).unwrap();
    let step_edges: usize = p.steps.iter().map(|s| s.deps.len()).sum();
    let phase_edges: usize = p.phases.iter().map(|s| s.deps.len()).sum();
    assert_eq!((p.steps.len(), step_edges, phase_edges), (60_000, 0, 2));
    assert_eq!(p.dependants(0).len(), 40_000, "every step of b and c still waits for a's");
}

#[tokio::test]
async fn a_killed_run_resumes_at_the_interrupted_step() {
    let (e, _) = engine();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let w = World { gate: Some(gate.clone()), slow: ["main/b".to_string()].into(), ..Default::default() };
    let p = plan(St::Serial, vec![phase("main", St::Serial, &[], &[("a", &[]), ("b", &[]), ("c", &[])])]);
    // "Kill" the run while b is working: drop the future.
    let r = tokio::time::timeout(std::time::Duration::from_millis(200), e.run(&p, &w, &NoObserver)).await;
    assert!(r.is_err(), "the run was cut off");
    let v = e.view(&p).await.unwrap();
    let statuses: Vec<Status> = v.phases[0].steps.iter().map(|(_, r)| r.status()).collect();
    assert_eq!(statuses, vec![Status::Complete, Status::Starting, Status::Pending], "intent was persisted");
    w.applies();
    gate.add_permits(10);
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(s.complete());
    assert_eq!(s.resumed, vec!["main/b"]);
    assert_eq!(s.skipped, vec!["main/a"]);
    assert_eq!(w.applies(), vec!["main/b", "main/c"]);
}

#[tokio::test]
async fn operator_actions() {
    let (e, _) = engine();
    let w = World::default();
    let p = plan(
        St::Serial,
        vec![
            phase("one", St::Serial, &[], &[("a", &[]), ("b", &[])]),
            phase("two", St::Serial, &[], &[("c", &[])]),
        ],
    );
    // Interrupt a phase: its steps are held, and so is what follows.
    e.interrupt(&p, Some("two")).await.unwrap();
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert_eq!(s.applied, vec!["one/a", "one/b"]);
    assert_eq!(s.held, vec!["two/c"]);
    let v = e.view(&p).await.unwrap();
    assert_eq!(
        (v.phases[1].status, v.phases[1].interrupted, v.status),
        (Status::Waiting, true, Status::Waiting)
    );
    e.proceed(&p, Some("two")).await.unwrap();
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert_eq!(s.applied, vec!["two/c"]);
    w.applies();
    // Restart a step: it does its work although its check passes.
    assert_eq!(e.restart(&p, &Target::Step("b".into())).await.unwrap(), vec!["one/b"]);
    e.run(&p, &w, &NoObserver).await.unwrap();
    assert_eq!(w.applies(), vec!["one/b"]);
    // Restart a phase.
    e.restart(&p, &Target::Phase("one".into())).await.unwrap();
    e.run(&p, &w, &NoObserver).await.unwrap();
    assert_eq!(w.applies(), vec!["one/a", "one/b"]);
    // Interrupt the whole plan: nothing starts.
    e.restart(&p, &Target::Plan).await.unwrap();
    assert!(e.interrupt(&p, None).await.unwrap(), "a running plan is interrupted");
    assert!(!e.interrupt(&p, None).await.unwrap(), "interrupting it again changes nothing");
    let s = e.run(&p, &w, &NoObserver).await.unwrap();
    assert!(s.applied.is_empty() && s.held == vec!["one/a"]);
    assert!(e.proceed(&p, None).await.unwrap());
    assert!(!e.proceed(&p, None).await.unwrap(), "continuing a running plan writes nothing");
    // Force-complete a failing step: its dependants proceed without it doing work.
    let (e2, _) = engine();
    let w2 = World::default();
    w2.fail.lock().unwrap().insert("one/a".into());
    let s = e2.run(&p, &w2, &NoObserver).await.unwrap();
    assert_eq!(s.failed.len(), 1);
    e2.force_complete(&p, &Target::Step("one/a".into())).await.unwrap();
    w2.applies();
    w2.fail.lock().unwrap().clear();
    let s = e2.run(&p, &w2, &NoObserver).await.unwrap();
    assert!(s.complete());
    assert_eq!(w2.applies(), vec!["one/a", "one/b", "two/c"], "a's check still fails, so a runs once it can");
    // Unknown targets are refused and change nothing.
    assert!(matches!(e.restart(&p, &Target::Step("nope".into())).await, Err(EngineError::NotFound { .. })));
    assert!(matches!(e.interrupt(&p, Some("nope")).await, Err(EngineError::NotFound { .. })));
    assert!(!e.view(&p).await.unwrap().interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_concurrently() {
    let (e, _) = engine();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let w = Arc::new(World {
        gate: Some(gate.clone()),
        slow: names.iter().map(|n| format!("all/{n}")).collect(),
        ..Default::default()
    });
    let steps: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
    let p = plan(St::Serial, vec![phase("all", St::Parallel, &[], &steps)]);
    let w2 = w.clone();
    let h = tokio::spawn(async move {
        let (e, p, w) = (e, p, w2);
        e.run(&p, w.as_ref(), &NoObserver).await.unwrap()
    });
    // All six must be in apply at once before any may finish.
    for _ in 0..500 {
        if w.running.load(Ordering::SeqCst) == 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert_eq!(w.max_running.load(Ordering::SeqCst), 6);
    gate.add_permits(6);
    assert!(h.await.unwrap().complete());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random DAGs over three phases with random failures: a step is applied only after its
    /// deps (its phase's steps it needs, and every step of the phases its phase waits for)
    /// completed, every dependant of a failure is blocked, everything else completes, and a
    /// rerun after fixing applies exactly the steps that had not completed.
    #[test]
    fn random_dags(
        edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30),
        phase_of in proptest::collection::vec(0usize..3, 12),
        phase_edges in proptest::collection::vec((0usize..3, 0usize..3), 0..4),
        fails in proptest::collection::btree_set(0usize..12, 0..3),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let n = 12;
            let name = |i: usize| format!("g{}/s{i}", phase_of[i]);
            let mut needs: Vec<Vec<String>> = vec![Vec::new(); n];
            for (a, b) in edges {
                if a < b && phase_of[a] == phase_of[b] && !needs[b].contains(&format!("s{a}")) {
                    needs[b].push(format!("s{a}"));
                }
            }
            let mut phases: Vec<PhaseDef> = (0..3)
                .map(|g| PhaseDef { name: format!("g{g}"), strategy: St::Dependency, depends_on: vec![], steps: vec![] })
                .collect();
            for (a, b) in phase_edges {
                if a < b && !phases[b].depends_on.contains(&format!("g{a}")) {
                    phases[b].depends_on.push(format!("g{a}"));
                }
            }
            for i in 0..n {
                phases[phase_of[i]].steps.push(StepDef { name: format!("s{i}"), needs: needs[i].clone() });
            }
            let p = Plan::compile(PlanDef { name: "p".into(), strategy: St::Dependency, phases }).unwrap();
            let all_deps = deps_of(&p);
            let (e, _) = engine();
            let w = World::default();
            for f in &fails {
                w.fail.lock().unwrap().insert(name(*f));
            }
            let s = e.run(&p, &w, &NoObserver).await.unwrap();
            let order = w.applies();
            // Deps before dependants.
            for (pos, id) in order.iter().enumerate() {
                for d in &all_deps[id] {
                    let dpos = order.iter().position(|x| x == d);
                    prop_assert!(dpos.is_some_and(|dp| dp < pos), "{id} ran before its dep {d}");
                }
            }
            let failed: BTreeSet<usize> = fails.iter().map(|f| p.index(&name(*f)).unwrap()).collect();
            let mut must_block = BTreeSet::new();
            for f in &failed {
                must_block.extend(p.dependants(*f));
            }
            let blocked: BTreeSet<usize> = s.blocked.iter().map(|id| p.index(id).unwrap()).collect();
            let really_failed: BTreeSet<usize> = s.failed.iter().map(|(id, _)| p.index(id).unwrap()).collect();
            prop_assert!(really_failed.is_subset(&failed));
            let mut expect_block = BTreeSet::new();
            for f in &really_failed {
                expect_block.extend(p.dependants(*f));
            }
            prop_assert_eq!(&blocked, &expect_block);
            prop_assert!(blocked.is_subset(&must_block));
            prop_assert_eq!(s.applied.len() + s.failed.len() + s.blocked.len(), n);
            // Fix and rerun: exactly the failed and blocked ones run.
            w.fail.lock().unwrap().clear();
            let s2 = e.run(&p, &w, &NoObserver).await.unwrap();
            prop_assert!(s2.complete());
            let rerun: BTreeSet<usize> = w.applies().iter().map(|id| p.index(id).unwrap()).collect();
            let expected: BTreeSet<usize> = really_failed.union(&blocked).copied().collect();
            prop_assert_eq!(rerun, expected);
            Ok(())
        })?;
    }
}
