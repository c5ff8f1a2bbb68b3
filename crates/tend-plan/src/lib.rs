//! The plan engine (the choochoo model): a plan is phases of steps; a step has a `check` (is the
//! desired state reached?) and an `apply` (reach it); after `apply` the check runs again, and a
//! step whose check still says "work needed" is reported as a logic error.
//!
//! Pure over a [`tend_store::StateStore`] and a clock value: [`model`] compiles plans to a DAG,
//! [`state`] holds the decisions (which step may start, whether work is needed), and
//! [`engine`] drives them, persisting each status before acting so a killed run resumes.

pub mod engine;
pub mod model;
pub mod state;

pub use engine::{
    Applied, Engine, EngineError, Event, NoObserver, Observer, PhaseView, PlanView, RunSummary, StepWork,
    Target,
};
pub use model::{PhaseDef, Plan, PlanDef, PlanError, StepDef, StepNode, Strategy};
pub use state::{ApplyReason, CheckResult, Decision, PlanControl, Status, StepRecord};
