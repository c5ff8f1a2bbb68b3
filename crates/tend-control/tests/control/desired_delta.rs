//! Desired states by difference, in-process: an agent that takes differences holds after every
//! answer exactly what a full answer says, through a deploy and a rolling update (whose new
//! configs make the next answer a full one); another control plane's state is never the base.

use std::sync::Arc;
use std::time::Duration;

use tend_api::{Assignment, DesiredBook, DesiredState, StatusReport, TaskState, TaskStatus};
use tend_control::agents::AgentProtocol;
use tend_control::services::submit;
use tend_control::{Control, ControlConfig};
use tend_model::{Clock, ManualClock};
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

use crate::common;
use common::{register_req, submission};

const SPEC: &str = "version: 1\nname: s\npods:\n  w:\n    count: 6\n    tasks: { t: { cmd: 'exec sleep 600', env: { V: '1' } } }\n";

/// An agent with room for the 6 instances.
fn register_big(id: &str) -> tend_api::RegisterRequest {
    let mut r = register_req(id, None);
    r.resources.cpus = 16.0;
    r.resources.memory_mb = 65_536;
    r.resources.disk_mb = 100_000;
    r
}

fn sorted(mut v: Vec<Assignment>) -> Vec<Assignment> {
    v.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    v
}

/// Every held assignment's tasks, running for 2 s.
fn report(seq: u64, held: &[Assignment], now: u64) -> StatusReport {
    let tasks = held
        .iter()
        .flat_map(|a| {
            a.tasks.iter().map(move |t| TaskStatus {
                service: a.service.clone(),
                instance: a.instance.clone(),
                incarnation: a.incarnation,
                task: t.name.clone(),
                state: TaskState::Running,
                ready: true,
                healthy: None,
                exit_code: None,
                pid: Some(42),
                message: None,
                since_ms: now - 2_000,
                restarts: 0,
                next_restart_ms: None,
                crash_loop: 0,
            })
        })
        .collect();
    StatusReport {
        seq,
        tasks,
        released_volumes: Vec::new(),
        job_results: Vec::new(),
        conflict: None,
        revision: None,
        base_seq: None,
        gone: Vec::new(),
    }
}

struct Agent {
    book: DesiredBook,
    index: u64,
    held: Vec<Assignment>,
    seq: u64,
    polls: u32,
    differences: u32,
    compared: u32,
}

impl Agent {
    /// One long-poll by difference, checked against a full answer read right after it.
    async fn poll(&mut self, s: &Control) {
        let mut d: DesiredState =
            s.desired("a1", self.index, Duration::from_millis(20), self.book.held_from()).await.unwrap();
        self.polls += 1;
        self.differences += u32::from(d.base_index.is_some());
        assert!(self.book.take(&mut d).is_some(), "a difference on the state held: {:?}", d.base_index);
        self.index = d.index;
        self.held = sorted(d.assignments);
        let full = s.desired("a1", 0, Duration::ZERO, None).await.unwrap();
        assert!(full.base_index.is_none() && full.gone.is_empty(), "index 0 is answered in full");
        // Same index: nothing this agent's state shows changed in between.
        if full.index == self.index {
            assert_eq!(self.held, sorted(full.assignments), "held by difference vs a full answer");
            self.compared += 1;
        }
    }
}

async fn drive(s: &Control, clock: &ManualClock, a: &mut Agent, done: impl Fn(&[Assignment]) -> bool) {
    for _ in 0..400 {
        a.poll(s).await;
        if done(&a.held) {
            return;
        }
        a.seq += 1;
        s.status("a1", report(a.seq, &a.held, clock.now_ms())).await.unwrap();
        clock.advance_ms(500);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not done: {:?}", a.held.iter().map(|x| (&x.instance, x.incarnation)).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_agent_taking_differences_holds_what_a_full_answer_says() {
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let clock = ManualClock::new(1_700_000_000_000);
    let s = Control::new(ControlConfig::default(), store, Arc::new(clock.clone())).await.unwrap();
    s.register(register_big("a1")).await.unwrap();
    submit(&s, submission(SPEC, None)).await.unwrap();
    let mut a = Agent {
        book: DesiredBook::new(),
        index: 0,
        held: Vec::new(),
        seq: 0,
        polls: 0,
        differences: 0,
        compared: 0,
    };
    drive(&s, &clock, &mut a, |held| held.len() == 6).await;
    // How many launches an answer carries depends on how fast the steps move. Every answer is a
    // difference but the first two: the one to index 0, and the one to the first ask by
    // difference (the control plane keeps no log for an agent before it asks by difference).
    assert!(
        a.polls >= 4 && a.differences + 2 == a.polls,
        "{} answers, {} by difference",
        a.polls,
        a.differences
    );
    // A rolling update: every instance gets a new incarnation, one by one.
    submit(&s, submission(&SPEC.replace("V: '1'", "V: '2'"), None)).await.unwrap();
    drive(&s, &clock, &mut a, |held| held.len() == 6 && held.iter().all(|x| x.incarnation == 2)).await;
    assert!(a.compared >= 10, "compared {} times", a.compared);
    assert!(a.held.iter().all(|x| x.tasks[0].env.get("V").map(String::as_str) == Some("2")));
    // A change only the spec shows (the restart backoff): no instance record changes, and
    // every assignment reads differently: the next answer is a full one.
    let before = a.differences;
    let text =
        SPEC.replace("V: '1'", "V: '2'") + "recovery:\n  backoff: { initial_seconds: 7, max_seconds: 60 }\n";
    submit(&s, submission(&text, None)).await.unwrap();
    drive(&s, &clock, &mut a, |held| held.len() == 6 && held.iter().all(|x| x.backoff.initial_ms == 7_000))
        .await;
    a.poll(&s).await;
    assert!(a.differences > before, "differences again after the full answer");

    // Another control plane's state is never a base: the answer is a full one.
    let d = s.desired("a1", a.index, Duration::ZERO, Some("another-control-plane")).await.unwrap();
    assert!(d.base_index.is_none());
    assert_eq!(sorted(d.assignments), a.held);
    // A difference on an index the agent does not hold is not applied, and forgets what it held.
    let mut d = s.desired("a1", a.index, Duration::ZERO, a.book.held_from()).await.unwrap();
    assert_eq!(d.base_index, Some(a.index));
    d.base_index = Some(a.index - 1);
    assert!(a.book.take(&mut d).is_none());
    assert_eq!(a.book.held_from(), None);
}
