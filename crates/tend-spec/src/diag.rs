//! Located diagnostics: file:line:column, a snippet with the place underlined, and a hint.

use std::fmt;

use crate::node::Pos;

/// One problem in a spec file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// A stable, greppable name for the kind of problem (`unknown-field`, `cyclic-dependency`, …).
    pub code: &'static str,
    pub message: String,
    pub pos: Pos,
    /// How many characters to underline.
    pub width: usize,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Every problem of one file, ready to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub file: String,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// The diagnostics as text, in file order, each with its snippet.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let lines: Vec<&str> = self.source.lines().collect();
        for d in &self.diagnostics {
            out.push_str(&format!("error[{}]: {}\n", d.code, d.message));
            out.push_str(&format!("  --> {}:{}:{}\n", self.file, d.pos.line, d.pos.col));
            if d.pos.line >= 1 {
                if let Some(text) = lines.get(d.pos.line as usize - 1) {
                    let num = d.pos.line.to_string();
                    let pad = " ".repeat(num.len());
                    let text = text.trim_end();
                    let shown: String = text.chars().take(160).collect();
                    out.push_str(&format!("{pad} |\n{num} | {shown}\n"));
                    let col = (d.pos.col.max(1) as usize - 1).min(shown.chars().count());
                    let leading: String =
                        shown.chars().take(col).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
                    let room = shown.chars().count().saturating_sub(col).max(1);
                    out.push_str(&format!("{pad} | {leading}{}\n", "^".repeat(d.width.clamp(1, room))));
                }
            }
            if let Some(h) = &d.hint {
                let pad = " ".repeat(d.pos.line.to_string().len());
                out.push_str(&format!("{pad} = help: {h}\n"));
            }
            out.push('\n');
        }
        let n = self.diagnostics.len();
        out.push_str(&format!("{}: {n} error{}\n", self.file, if n == 1 { "" } else { "s" }));
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for Report {}

/// Edit distance between two short words.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= limit || c.starts_with(word) && !word.is_empty())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let cands = ["cmd", "cpus", "memory_mb", "ports", "goal"];
        let check = |w: &str, want: Option<&str>| assert_eq!(did_you_mean(w, cands), want, "{w}");
        check("cmnd", Some("cmd"));
        check("memory", Some("memory_mb"));
        check("cpu", Some("cpus"));
        check("gaol", Some("goal"));
        check("zzzzzzzz", None);
    }

    #[test]
    fn render_underlines_the_place() {
        let r = Report {
            file: "s.yml".into(),
            source: "name: x\n  cmnd: y\n".into(),
            diagnostics: vec![Diagnostic {
                code: "unknown-field",
                message: "unknown field `cmnd`".into(),
                pos: Pos { line: 2, col: 3 },
                width: 4,
                hint: Some("did you mean `cmd`?".into()),
            }],
        };
        let text = r.render();
        assert!(text.contains("  --> s.yml:2:3\n"), "{text}");
        assert!(text.contains("2 |   cmnd: y\n  |   ^^^^\n"), "{text}");
        assert!(text.contains("\n  = help: did you mean `cmd`?"), "{text}");
    }
}
