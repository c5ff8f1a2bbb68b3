//! Run policies: time windows in which jobs must not start. A window may wrap midnight;
//! `00:00–00:00` covers the whole day (pause). Times are wall-clock in an explicit UTC offset.

use serde::{Deserialize, Serialize};

/// A time of day, minutes since midnight (0..1440).
pub type Minute = u32;

/// Why a window is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("`{0}` is not a time of day: use HH:MM, 00:00 to 23:59")]
    Time(String),
    #[error("`{0}` is not a timezone: use UTC or an offset like +02:00 / -05:30")]
    Zone(String),
}

/// Parses `HH:MM`.
pub fn parse_time(s: &str) -> Result<Minute, WindowError> {
    let bad = || WindowError::Time(s.to_string());
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Parses `UTC`, `Z` or `±HH:MM` into minutes east of UTC.
pub fn parse_zone(s: &str) -> Result<i32, WindowError> {
    let bad = || WindowError::Zone(s.to_string());
    if s == "UTC" || s == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let m = parse_time(rest).map_err(|_| bad())? as i32;
    if m > 14 * 60 {
        return Err(bad());
    }
    Ok(sign * m)
}

/// A window in which matching jobs must not start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPolicy {
    pub id: String,
    /// The job it applies to; None: every job.
    #[serde(default)]
    pub job: Option<String>,
    /// The pods it applies to; empty: every pod.
    #[serde(default)]
    pub pods: Vec<String>,
    pub start: Minute,
    pub end: Minute,
    /// Minutes east of UTC of the wall clock `start` and `end` are in.
    pub utc_offset_minutes: i32,
}

impl RunPolicy {
    /// Whether the policy applies to `job` on `pod`.
    pub fn applies(&self, job: &str, pod: &str) -> bool {
        self.job.as_deref().is_none_or(|j| j == job)
            && (self.pods.is_empty() || self.pods.iter().any(|p| p == pod))
    }

    /// Whether `now_ms` falls inside the window.
    pub fn covers(&self, now_ms: u64) -> bool {
        let local_min = ((now_ms / 60_000) as i64 + self.utc_offset_minutes as i64).rem_euclid(1440) as u32;
        if self.start == self.end {
            return true; // 00:00–00:00 (or any equal pair): the whole day.
        }
        if self.start < self.end {
            self.start <= local_min && local_min < self.end
        } else {
            local_min >= self.start || local_min < self.end // wraps midnight
        }
    }

    /// The first moment after `now_ms` at which the window opens or closes.
    pub fn next_boundary_ms(&self, now_ms: u64) -> u64 {
        let minute = now_ms / 60_000;
        let local = (minute as i64 + self.utc_offset_minutes as i64).rem_euclid(1440);
        let until = |m: Minute| match (m as i64 - local).rem_euclid(1440) {
            0 => 1440,
            d => d,
        } as u64;
        (minute + until(self.start).min(until(self.end))) * 60_000
    }

    /// A short description, e.g. "22:00–06:00 +02:00".
    pub fn describe(&self) -> String {
        let t = |m: Minute| format!("{:02}:{:02}", m / 60, m % 60);
        let z = if self.utc_offset_minutes == 0 {
            "UTC".to_string()
        } else {
            let s = if self.utc_offset_minutes < 0 { '-' } else { '+' };
            let a = self.utc_offset_minutes.unsigned_abs();
            format!("{s}{:02}:{:02}", a / 60, a % 60)
        };
        format!("{}–{} {z}", t(self.start), t(self.end))
    }
}

/// The first policy that blocks `job` on `pod` at `now_ms`, if any.
pub fn blocking<'a>(policies: &'a [RunPolicy], job: &str, pod: &str, now_ms: u64) -> Option<&'a RunPolicy> {
    policies.iter().find(|p| p.applies(job, pod) && p.covers(now_ms))
}
