//! Wire types of maintenance jobs: job-instance statuses, run history, run policies (windows in
//! which no job starts), and the bodies and answers of the calls that change them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A job-instance's status (`GET /v1/services/{name}/jobs`, `GET /v1/jobs/alarms`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobStatusInfo {
    pub service: String,
    pub job: String,
    pub instance: String,
    /// `COMPLETED` (succeeded within its interval), `ON_TIME` (due, not yet late), `LATE`,
    /// `OVERDUE` or `BLOCKED` (due but held back: `reason` says by what).
    pub status: String,
    /// What holds a `BLOCKED` job-instance back (a window, backoff, a health gate, a lease).
    pub reason: Option<String>,
    /// The alarm raised for it, if any: `warning` (late) or `error` (overdue).
    pub alarm: Option<String>,
    pub priority: Option<i64>,
    pub last_success_ms: Option<u64>,
    /// When its next run is due (ms since the epoch).
    pub due_ms: u64,
    pub running: bool,
    /// Whether an on-demand run is queued or running.
    pub on_demand: bool,
}

/// How a job run ended (or that it still runs).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobRunStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Its lease was lost: stopped, result not trusted.
    Aborted,
}

/// One run of a job on a pod instance (`GET /v1/services/{name}/jobs/{job}/history`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobRunInfo {
    pub run_id: String,
    pub job: String,
    pub instance: String,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    pub status: JobRunStatus,
    #[serde(default)]
    pub output_tail: String,
    pub agent: String,
    /// The fencing token of the lease the run held.
    pub token: i64,
    #[serde(default)]
    pub on_demand: bool,
}

/// A window in which matching jobs must not start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RunPolicy {
    pub id: String,
    /// The job it applies to; None: every job.
    #[serde(default)]
    pub job: Option<String>,
    /// The pods it applies to; empty: every pod.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Start of the window, minutes since midnight (wall clock at `utc_offset_minutes`).
    #[schema(maximum = 1439)]
    pub start: u32,
    /// End of the window, minutes since midnight; a window may wrap midnight, and
    /// `start == end` covers the whole day.
    #[schema(maximum = 1439)]
    pub end: u32,
    /// Minutes east of UTC of the wall clock `start` and `end` are in.
    #[schema(minimum = -840, maximum = 840)]
    pub utc_offset_minutes: i32,
}

/// `POST /v1/jobs/windows`: a window in which no matching job starts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct WindowRequest {
    /// The window's id (default: `w<now in ms>`); a window with the same id is replaced.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")]
    pub id: Option<String>,
    /// The job it applies to; None: every job.
    #[serde(default)]
    pub job: Option<String>,
    /// The pods it applies to; empty: every pod.
    #[serde(default)]
    pub pods: Vec<String>,
    /// `HH:MM`, 00:00 to 23:59.
    #[schema(pattern = "^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start: String,
    /// `HH:MM`, 00:00 to 23:59.
    #[schema(pattern = "^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub end: String,
    /// `UTC` (the default), `Z`, or an offset `±HH:MM` of at most 14 hours.
    #[serde(default)]
    #[schema(pattern = "^(?:UTC|Z|[+-](?:0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)$")]
    pub timezone: Option<String>,
}

/// `POST /v1/services/{name}/jobs/{job}/run` (the body may be empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RunJobRequest {
    /// Run it on this instance only (default: every instance of the job's pod).
    #[serde(default)]
    pub instance: Option<String>,
}

/// The answer to `POST /v1/services/{name}/jobs/{job}/run`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobQueued {
    pub job: String,
    /// The instances a run was queued on.
    pub queued: Vec<String>,
}

/// The answer to `DELETE /v1/jobs/windows/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct WindowRemoved {
    pub removed: String,
}
