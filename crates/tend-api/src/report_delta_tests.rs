//! Tests of reports by difference: the control plane's tasks follow the agent's through lost,
//! refused and repeated reports.

use super::*;
use crate::TaskState;
use proptest::prelude::*;

fn task(inst: u8, incarnation: u64, name: &str, state: TaskState, restarts: u32) -> TaskStatus {
    TaskStatus {
        service: "s".into(),
        instance: format!("n-{inst}"),
        incarnation,
        task: name.into(),
        state,
        ready: false,
        healthy: None,
        exit_code: None,
        pid: None,
        message: None,
        since_ms: 0,
        restarts,
        next_restart_ms: None,
        crash_loop: 0,
    }
}

/// The control plane's end of the rule (as `tend-control` applies it).
#[derive(Default)]
struct Server {
    seq: Option<u64>,
    tasks: TaskSet,
}

impl Server {
    /// Applies a report; false: it asks for every task.
    fn receive(&mut self, seq: u64, d: &Delta) -> bool {
        match d.base_seq {
            None => self.tasks.replace(d.tasks.clone()),
            Some(b) if self.seq == Some(b) => self.tasks.apply(d.tasks.clone(), &d.gone),
            Some(_) => return false,
        }
        self.seq = Some(seq);
        true
    }
}

fn sorted(ts: &[TaskStatus]) -> Vec<String> {
    let mut v: Vec<String> = ts.iter().map(|t| format!("{t:?}")).collect();
    v.sort();
    v
}

#[test]
fn a_heartbeat_carries_nothing_and_a_change_only_itself() {
    let mut agent = DeltaReporter::default();
    let mut server = Server::default();
    let mut now = vec![task(0, 1, "a", TaskState::Running, 0), task(1, 1, "a", TaskState::Running, 0)];
    let d = agent.report(1, &now);
    assert_eq!((d.base_seq, d.tasks.len()), (None, 2));
    assert!(server.receive(1, &d));
    agent.acked(1, false);
    let d = agent.report(2, &now);
    assert_eq!((d.base_seq, d.tasks.len(), d.gone.len()), (Some(1), 0, 0));
    assert!(server.receive(2, &d));
    agent.acked(2, false);
    now[1].restarts = 1;
    now.remove(0);
    let d = agent.report(3, &now);
    assert_eq!(d.tasks, vec![now[0].clone()]);
    assert_eq!(d.gone, vec![TaskKey::of(&task(0, 1, "a", TaskState::Running, 0))]);
    assert!(server.receive(3, &d));
    assert_eq!(sorted(server.tasks.all()), sorted(&now));
}

#[test]
fn a_refused_delta_is_followed_by_everything() {
    let mut agent = DeltaReporter::default();
    let mut server = Server::default();
    let now = vec![task(0, 1, "a", TaskState::Running, 0)];
    let d = agent.report(1, &now);
    server.receive(1, &d);
    agent.acked(1, false);
    // The control plane restarted: it knows no base.
    let mut server = Server::default();
    let d = agent.report(2, &now);
    assert!(!server.receive(2, &d));
    agent.acked(2, true);
    let d = agent.report(3, &now);
    assert_eq!(d.base_seq, None);
    assert!(server.receive(3, &d));
}

#[derive(Clone, Debug)]
enum Op {
    /// Sets the state of task `name` of instance `inst` (adds it if missing).
    Set(u8, u8, u8),
    Remove(u8, u8),
    /// Lists a task twice (an agent's bug): reports stay whole until it is gone.
    Repeat(u8),
    /// Reports: delivered or lost, answered or not, delivered again later.
    Report {
        delivered: bool,
        answered: bool,
        duplicate: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u8..2, 0u8..3).prop_map(|(i, t, s)| Op::Set(i, t, s)),
        (0u8..4, 0u8..2).prop_map(|(i, t)| Op::Remove(i, t)),
        (0u8..8).prop_map(Op::Repeat),
        (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(delivered, answered, duplicate)| Op::Report { delivered, answered, duplicate }),
    ]
}

proptest! {
    /// Whatever is lost, refused or delivered twice, every report the control plane applies
    /// leaves it with exactly the tasks the agent had when it sent that report.
    #[test]
    fn the_control_plane_holds_what_the_agent_sent(
        ops in proptest::collection::vec(op(), 1..60),
        counted in any::<bool>(),
    ) {
        let mut agent = DeltaReporter::default();
        // With `counted`, the agent numbers its tasks' generations (`report_at`).
        let mut gen = 0u64;
        let report = |agent: &mut DeltaReporter, seq: u64, gen: u64, now: &[TaskStatus]| {
            if counted { agent.report_at(seq, gen, || now) } else { agent.report(seq, now) }
        };
        let mut server = Server::default();
        let mut now: Vec<TaskStatus> = Vec::new();
        let mut seq = 0;
        let mut late: Vec<(u64, Delta)> = Vec::new();
        for op in ops {
            match op {
                Op::Set(i, t, s) => {
                    let name = ["a", "b"][t as usize];
                    let state = [TaskState::Starting, TaskState::Running, TaskState::Exited][s as usize];
                    let new = task(i, 1, name, state, s as u32);
                    match now.iter_mut().find(|x| x.instance == new.instance && x.task == name) {
                        Some(x) => *x = new,
                        None => now.push(new),
                    }
                    gen += 1;
                }
                Op::Remove(i, t) => {
                    gen += 1;
                    let inst = format!("n-{i}");
                    now.retain(|x| !(x.instance == inst && x.task == ["a", "b"][t as usize]));
                }
                Op::Repeat(i) => {
                    if let Some(x) = now.get(i as usize).cloned() {
                        now.push(x);
                        gen += 1;
                    }
                }
                Op::Report { delivered, answered, duplicate } => {
                    seq += 1;
                    let d = report(&mut agent, seq, gen, &now);
                    // A repeated report arrives late, after what the agent sent next.
                    if let Some((s, old)) = late.pop() {
                        server.receive(s, &old);
                    }
                    if duplicate {
                        late.push((seq, d.clone()));
                    }
                    if !delivered {
                        agent.failed();
                        continue;
                    }
                    let applied = server.receive(seq, &d);
                    if applied {
                        prop_assert_eq!(sorted(server.tasks.all()), sorted(&now));
                    }
                    if answered {
                        agent.acked(seq, !applied);
                    } else {
                        agent.failed();
                    }
                }
            }
        }
        // Faults stop: within two reports the control plane holds the agent's tasks.
        for _ in 0..2 {
            seq += 1;
            let d = report(&mut agent, seq, gen, &now);
            let applied = server.receive(seq, &d);
            agent.acked(seq, !applied);
        }
        prop_assert_eq!(sorted(server.tasks.all()), sorted(&now));
    }

    /// The index finds every task after any sequence of deltas.
    #[test]
    fn the_index_follows_the_tasks(ops in proptest::collection::vec(op(), 1..80)) {
        let mut set = TaskSet::default();
        let mut model: Vec<TaskStatus> = Vec::new();
        for op in ops {
            match op {
                Op::Set(i, t, s) => {
                    let x = task(i, 1, ["a", "b"][t as usize], TaskState::Running, s as u32);
                    model.retain(|m| TaskKey::of(m) != TaskKey::of(&x));
                    model.push(x.clone());
                    set.apply(vec![x], &[]);
                }
                Op::Remove(i, t) => {
                    let k = TaskKey::of(&task(i, 1, ["a", "b"][t as usize], TaskState::Running, 0));
                    model.retain(|m| TaskKey::of(m) != k);
                    set.apply(Vec::new(), &[k]);
                }
                Op::Report { .. } | Op::Repeat(_) => {}
            }
            prop_assert_eq!(sorted(set.all()), sorted(&model));
            for m in &model {
                prop_assert_eq!(set.find(m), Some(m));
                prop_assert!(set.of_instance("s", &m.instance).any(|x| x == m));
            }
        }
    }
}

#[test]
fn a_heartbeat_at_an_acknowledged_generation_is_empty() {
    let mut agent = DeltaReporter::default();
    let now = vec![task(0, 1, "a", TaskState::Running, 0)];
    let d = agent.report_at(1, 7, || &now);
    assert_eq!(d.base_seq, None, "nothing acknowledged yet: everything");
    // Unanswered: the next report at the same generation still differs from nothing.
    agent.failed();
    let d = agent.report_at(2, 7, || &now);
    assert_eq!(d.base_seq, None);
    agent.acked(2, false);
    // The tasks are looked at only to check the caller's promise, in debug builds.
    let looked = std::cell::Cell::new(0);
    let d = agent.report_at(3, 7, || {
        looked.set(looked.get() + 1);
        &now
    });
    assert_eq!(d, Delta { base_seq: Some(2), tasks: vec![], gone: vec![] });
    assert_eq!(looked.get(), u32::from(cfg!(debug_assertions)));
    agent.acked(3, false);
    // A new generation is diffed: what changed goes.
    let later = vec![task(0, 1, "a", TaskState::Exited, 1)];
    let d = agent.report_at(4, 8, || &later);
    assert_eq!((d.base_seq, d.tasks.len()), (Some(3), 1));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "the tasks changed at unchanged generation")]
fn a_caller_that_breaks_its_generation_promise_is_caught_in_debug_builds() {
    let mut agent = DeltaReporter::default();
    let now = vec![task(0, 1, "a", TaskState::Running, 0)];
    agent.report_at(1, 7, || &now);
    agent.acked(1, false);
    let later = vec![task(0, 1, "a", TaskState::Exited, 1)];
    agent.report_at(2, 7, || &later);
}

#[test]
fn a_stamped_report_compares_only_what_changed_since_the_acknowledged_generation() {
    let mut agent = DeltaReporter::default();
    let mut now = vec![
        (task(0, 1, "a", TaskState::Running, 0), 1),
        (task(1, 1, "a", TaskState::Running, 0), 1),
        (task(2, 1, "a", TaskState::Running, 0), 1),
    ];
    let stamped = |now: &[(TaskStatus, u64)]| -> Vec<(TaskStatus, Option<u64>)> {
        now.iter().map(|(t, g)| (t.clone(), Some(*g))).collect()
    };
    let report = |agent: &mut DeltaReporter, seq: u64, gen: u64, now: &[(TaskStatus, Option<u64>)]| {
        agent.report_stamped(seq, gen, || now.iter().map(|(t, g)| (t, *g)))
    };
    let d = report(&mut agent, 1, 1, &stamped(&now));
    assert_eq!((d.base_seq, d.tasks.len()), (None, 3), "nothing acknowledged yet: everything");
    agent.acked(1, false);
    // One task changed at generation 2: it alone goes.
    now[1] = (task(1, 1, "a", TaskState::Exited, 1), 2);
    let d = report(&mut agent, 2, 2, &stamped(&now));
    assert_eq!(d, Delta { base_seq: Some(1), tasks: vec![now[1].0.clone()], gone: vec![] });
    agent.acked(2, false);
    // One gone and one new (not stamped): the count does not add up, every task is compared.
    let gone = now.remove(0).0;
    let mut current = stamped(&now);
    current.push((task(3, 1, "a", TaskState::Starting, 0), None));
    let d = report(&mut agent, 3, 3, &current);
    assert_eq!(d.tasks, vec![current[2].0.clone()]);
    assert_eq!(d.gone, vec![TaskKey::of(&gone)]);
    agent.acked(3, false);
    // Unchanged since: an empty delta.
    let d = report(&mut agent, 4, 4, &current);
    assert_eq!(d, Delta { base_seq: Some(3), tasks: vec![], gone: vec![] });
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "a task changed after its stamp")]
fn a_caller_that_stamps_a_change_too_early_is_caught_in_debug_builds() {
    let mut agent = DeltaReporter::default();
    let now = [task(0, 1, "a", TaskState::Running, 0), task(1, 1, "a", TaskState::Running, 0)];
    agent.report_stamped(1, 1, || now.iter().map(|t| (t, Some(1))));
    agent.acked(1, false);
    let later = [task(0, 1, "a", TaskState::Exited, 1), task(1, 1, "a", TaskState::Exited, 1)];
    agent.report_stamped(2, 2, || later.iter().map(|t| (t, Some(1))));
}
