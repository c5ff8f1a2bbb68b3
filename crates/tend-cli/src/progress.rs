//! Showing plan progress: a bar per step on a terminal, plain lines otherwise, or JSON events.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tend_plan::{Event, Observer};

/// Display name of a step id (`phase/step` → `step`).
fn short(id: &str) -> &str {
    id.rsplit_once('/').map_or(id, |(_, s)| s)
}

/// How progress is shown.
pub enum Progress {
    Bars(Bars),
    Lines(Lines),
    Json(JsonLines),
}

impl Progress {
    /// Bars on a terminal, plain lines when stdout is not one, JSON when asked.
    pub fn new(json: bool, labels: BTreeMap<String, String>) -> Progress {
        if json {
            Progress::Json(JsonLines { start: Instant::now() })
        } else if std::io::stdout().is_terminal() {
            Progress::Bars(Bars::new(labels))
        } else {
            Progress::Lines(Lines { start: Instant::now(), labels })
        }
    }

    /// Prints a line that is not an event (kept out of JSON output).
    pub fn say(&self, line: &str) {
        match self {
            Progress::Bars(b) => {
                let _ = b.multi.println(line);
            }
            Progress::Lines(_) => outln!("{line}"),
            Progress::Json(_) => {}
        }
    }

    /// Prints a closing line below everything shown so far.
    pub fn last(&self, line: &str) {
        match self {
            Progress::Bars(b) => {
                let _ = b.multi.clear();
                for (id, (mark, msg)) in b.outcomes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    let label = b.labels.get(id).cloned().unwrap_or_default();
                    outln!("{mark} {:<40} {msg}", format!("{} {label}", short(id)));
                }
                outln!("{line}");
            }
            Progress::Lines(_) => outln!("{line}"),
            Progress::Json(_) => {}
        }
    }

    /// Emits a JSON object (only in JSON mode).
    pub fn json(&self, value: serde_json::Value) {
        if let Progress::Json(j) = self {
            j.emit(value);
        }
    }
}

impl Observer for Progress {
    fn on_event(&self, e: &Event) {
        match self {
            Progress::Bars(b) => b.on_event(e),
            Progress::Lines(l) => l.on_event(e),
            Progress::Json(j) => j.on_event(e),
        }
    }
}

/// One spinner per step, finished with its outcome and elapsed time.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    /// Final mark and message per step, in the order they finished.
    outcomes: Mutex<Vec<(String, (String, String))>>,
    labels: BTreeMap<String, String>,
}

impl Bars {
    fn new(labels: BTreeMap<String, String>) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: Mutex::new(BTreeMap::new()),
            outcomes: Mutex::new(Vec::new()),
            labels,
        }
    }

    fn bar(&self, id: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(id.to_string())
            .or_insert_with(|| {
                let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:<40} {msg} {elapsed:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let pb = self.multi.add(ProgressBar::new_spinner().with_style(style));
                let label = self.labels.get(id).cloned().unwrap_or_default();
                pb.set_prefix(format!("{} {}", short(id), label));
                pb.enable_steady_tick(Duration::from_millis(100));
                pb
            })
            .clone()
    }

    fn finish(&self, id: &str, mark: &str, msg: String) {
        let pb = self.bar(id);
        let style = ProgressStyle::with_template(&format!("{mark} {{prefix:<40}} {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        pb.set_style(style);
        pb.finish_with_message(msg.clone());
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id.to_string(), (mark.to_string(), msg)));
    }

    fn on_event(&self, e: &Event) {
        match e {
            Event::Checking { step } => self.bar(step).set_message("checking…"),
            Event::Applying { step, reason, resumed } => {
                let r = if *resumed { " — resuming an interrupted run" } else { "" };
                self.bar(step).set_message(format!("running ({reason}){r}"));
            }
            Event::Skipped { step, .. } => self.finish(step, "↷", "already done".into()),
            Event::Completed { step, elapsed_ms } => {
                self.finish(step, "✔", format!("done in {elapsed_ms} ms"))
            }
            Event::Failed { step, .. } => self.finish(step, "✖", "FAILED".into()),
            Event::Blocked { step, by } => {
                self.finish(step, "·", format!("not run: `{}` did not complete", short(by)))
            }
            Event::Held { step } => self.finish(step, "‖", "held: interrupted".into()),
        }
    }
}

/// Plain lines, one per event, with the time since the start.
pub struct Lines {
    start: Instant,
    labels: BTreeMap<String, String>,
}

impl Lines {
    fn on_event(&self, e: &Event) {
        let t = self.start.elapsed().as_secs_f64();
        let label = |id: &str| {
            let l = self.labels.get(id).map(|s| format!(" ({s})")).unwrap_or_default();
            format!("{}{l}", short(id))
        };
        let line = match e {
            Event::Checking { .. } => return,
            Event::Skipped { step, .. } => format!("skip  {}: already done", label(step)),
            Event::Applying { step, reason, resumed } => {
                let r = if *resumed { ", resuming an interrupted run" } else { "" };
                format!("run   {}: {reason}{r}", label(step))
            }
            Event::Completed { step, elapsed_ms } => format!("done  {} in {elapsed_ms} ms", label(step)),
            Event::Failed { step, .. } => format!("FAIL  {}", label(step)),
            Event::Blocked { step, by } => {
                format!("wait  {}: not run, `{}` did not complete", label(step), short(by))
            }
            Event::Held { step } => format!("held  {}: interrupted", label(step)),
        };
        let mut out = std::io::stdout().lock();
        crate::out::check(writeln!(out, "[{t:>7.2}s] {line}"));
    }
}

/// One JSON object per line.
pub struct JsonLines {
    start: Instant,
}

impl JsonLines {
    fn emit(&self, mut v: serde_json::Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("t_ms".into(), serde_json::json!(self.start.elapsed().as_millis() as u64));
        }
        let mut out = std::io::stdout().lock();
        crate::out::check(writeln!(out, "{v}"));
    }

    fn on_event(&self, e: &Event) {
        let v = match e {
            Event::Checking { step } => serde_json::json!({ "event": "checking", "step": short(step) }),
            Event::Skipped { step, resumed } => {
                serde_json::json!({ "event": "skipped", "step": short(step), "resumed": resumed })
            }
            Event::Applying { step, reason, resumed } => {
                serde_json::json!({ "event": "applying", "step": short(step), "reason": reason, "resumed": resumed })
            }
            Event::Completed { step, elapsed_ms } => {
                serde_json::json!({ "event": "completed", "step": short(step), "elapsed_ms": elapsed_ms })
            }
            Event::Failed { step, error } => {
                serde_json::json!({ "event": "failed", "step": short(step), "error": error })
            }
            Event::Blocked { step, by } => {
                serde_json::json!({ "event": "blocked", "step": short(step), "by": short(by) })
            }
            Event::Held { step } => serde_json::json!({ "event": "held", "step": short(step) }),
        };
        self.emit(v);
    }
}
