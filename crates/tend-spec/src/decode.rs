//! Typed reading of a located YAML tree that records every problem instead of stopping at the first.

use std::collections::BTreeMap;

use crate::diag::{did_you_mean, Diagnostic};
use crate::node::{Node, NodeKind, Pos};

/// Collects diagnostics while a decoder walks a tree.
#[derive(Default, Debug)]
pub struct Ctx {
    pub diags: Vec<Diagnostic>,
}

/// The fields of one mapping, checked against the allowed names.
pub struct Fields<'a> {
    pub node: &'a Node,
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _, _)| *k == name).map(|(_, _, v)| *v)
    }
    /// The key node of `name`, if present.
    pub fn key(&self, name: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _, _)| *k == name).map(|(_, k, _)| *k)
    }
}

/// A valid name for pods, tasks, plans, phases, steps, volumes, ports: DNS-label-like.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A valid environment variable name.
pub fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Ctx {
    /// Records a problem at `pos`.
    pub fn error(
        &mut self,
        code: &'static str,
        pos: Pos,
        width: usize,
        message: String,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic { code, message, pos, width, hint });
    }

    /// Records a problem at a node.
    pub fn at(&mut self, code: &'static str, node: &Node, message: String, hint: Option<String>) {
        self.error(code, node.pos, node.width(), message, hint);
    }

    /// Reads a mapping whose keys must be among `allowed`; reports other keys and duplicates.
    pub fn fields<'a>(&mut self, node: &'a Node, what: &str, allowed: &[&str]) -> Option<Fields<'a>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.at(
                "wrong-type",
                node,
                format!("{what} must be a mapping, found {}", node.describe()),
                Some(format!("write {what} as `key: value` lines; allowed keys: {}", allowed.join(", "))),
            );
            return None;
        };
        let mut out: Vec<(&'a str, &'a Node, &'a Node)> = Vec::new();
        for (k, v) in entries {
            let NodeKind::Str(name) = &k.kind else {
                self.at(
                    "wrong-type",
                    k,
                    format!("keys of {what} must be names, found {}", k.describe()),
                    None,
                );
                continue;
            };
            if !allowed.contains(&name.as_str()) {
                let hint = match did_you_mean(name, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("allowed fields: {}", allowed.join(", ")),
                };
                self.at("unknown-field", k, format!("unknown field `{name}` in {what}"), Some(hint));
                continue;
            }
            if let Some((_, first, _)) = out.iter().find(|(n, _, _)| *n == name.as_str()) {
                self.at(
                    "duplicate-field",
                    k,
                    format!("field `{name}` appears twice in {what}"),
                    Some(format!("first given at line {}; keep one", first.pos.line)),
                );
                continue;
            }
            out.push((name.as_str(), k, v));
        }
        Some(Fields { node, entries: out })
    }

    /// Reports `name` missing from `fields` (pointing at the mapping) and returns None.
    pub fn require<'a>(&mut self, f: &Fields<'a>, name: &str, what: &str, example: &str) -> Option<&'a Node> {
        let v = f.get(name);
        if v.is_none() {
            self.at(
                "missing-field",
                f.node,
                format!("{what} has no `{name}`"),
                Some(format!("add it, for example `{name}: {example}`")),
            );
        }
        v
    }

    /// Reads a mapping of `name: spec` items, checking names are valid and unique.
    pub fn named<'a>(&mut self, node: &'a Node, what: &str, item: &str) -> Vec<(String, &'a Node, &'a Node)> {
        let NodeKind::Map(entries) = &node.kind else {
            self.at(
                "wrong-type",
                node,
                format!(
                    "{what} must be a mapping of {item} names to {item} specs, found {}",
                    node.describe()
                ),
                Some(format!("write `<{item}-name>:` then the {item}'s fields, indented")),
            );
            return Vec::new();
        };
        let mut out: Vec<(String, &'a Node, &'a Node)> = Vec::new();
        for (k, v) in entries {
            let Some(name) = k.as_key() else {
                self.at(
                    "wrong-type",
                    k,
                    format!("a {item} name must be a string, found {}", k.describe()),
                    None,
                );
                continue;
            };
            if !valid_name(&name) {
                self.at(
                    "invalid-name",
                    k,
                    format!("`{name}` is not a valid {item} name"),
                    Some("use 1 to 63 lowercase letters, digits, `-` or `_`, starting and ending with a letter or digit".into()),
                );
                continue;
            }
            if let Some((_, first, _)) = out.iter().find(|(n, _, _)| *n == name) {
                self.at(
                    "duplicate-name",
                    k,
                    format!("duplicate {item} name `{name}`"),
                    Some(format!(
                        "`{name}` is already defined at line {}; rename one of them",
                        first.pos.line
                    )),
                );
                continue;
            }
            out.push((name, k, v));
        }
        out
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Str(s) => Some(s.clone()),
            NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_) => node.as_key(),
            _ => {
                self.at(
                    "wrong-type",
                    node,
                    format!("{what} must be a string, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    pub fn nonempty_string(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        if s.trim().is_empty() {
            self.at("empty", node, format!("{what} must not be empty"), None);
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.kind {
            NodeKind::Bool(b) => Some(*b),
            _ => {
                self.at(
                    "wrong-type",
                    node,
                    format!("{what} must be true or false, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    /// An integer in `[min, max]`.
    pub fn int(&mut self, node: &Node, what: &str, min: i128, max: i128) -> Option<i128> {
        let v = match &node.kind {
            NodeKind::Int(i) => *i,
            _ => {
                self.at(
                    "wrong-type",
                    node,
                    format!("{what} must be a whole number, found {}", node.describe()),
                    None,
                );
                return None;
            }
        };
        if v < min || v > max {
            let code = if v < 0 && min >= 0 { "negative" } else { "out-of-range" };
            self.at(code, node, format!("{what} must be between {min} and {max}, found {v}"), None);
            return None;
        }
        Some(v)
    }

    /// A number (whole or not) in `(0, max]` or `[0, max]`.
    pub fn number(&mut self, node: &Node, what: &str, allow_zero: bool, max: f64) -> Option<f64> {
        let v = match &node.kind {
            NodeKind::Int(i) => *i as f64,
            NodeKind::Float(f) => *f,
            _ => {
                self.at(
                    "wrong-type",
                    node,
                    format!("{what} must be a number, found {}", node.describe()),
                    None,
                );
                return None;
            }
        };
        if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > max {
            let lo = if allow_zero { "0 or more" } else { "more than 0" };
            self.at("out-of-range", node, format!("{what} must be {lo} and at most {max}, found {v}"), None);
            return None;
        }
        Some(v)
    }

    /// One of a fixed set of words.
    pub fn choice(&mut self, node: &Node, what: &str, options: &[&str]) -> Option<String> {
        let s = self.string(node, what)?;
        if options.contains(&s.as_str()) {
            return Some(s);
        }
        let hint = match did_you_mean(&s, options.iter().copied()) {
            Some(m) => format!("did you mean `{m}`? ({} are allowed)", options.join(", ")),
            None => format!("use one of: {}", options.join(", ")),
        };
        self.at("invalid-value", node, format!("`{s}` is not a valid {what}"), Some(hint));
        None
    }

    /// A mapping of environment variables.
    pub fn env(&mut self, node: &Node, what: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let NodeKind::Map(entries) = &node.kind else {
            self.at(
                "wrong-type",
                node,
                format!("{what} must be a mapping of variable names to values, found {}", node.describe()),
                None,
            );
            return out;
        };
        for (k, v) in entries {
            let Some(name) = k.as_key() else {
                self.at(
                    "wrong-type",
                    k,
                    format!("a variable name must be a string, found {}", k.describe()),
                    None,
                );
                continue;
            };
            if !valid_env_name(&name) {
                self.at(
                    "invalid-name",
                    k,
                    format!("`{name}` is not a valid environment variable name"),
                    Some("use letters, digits and `_`, not starting with a digit".into()),
                );
                continue;
            }
            if name.starts_with("TEND_") || name.starts_with("PORT_") {
                self.at(
                    "reserved-name",
                    k,
                    format!("`{name}`: variables starting with TEND_ or PORT_ are set by tend"),
                    Some("choose another name (tend sets PORT_<NAME> for each named port)".into()),
                );
                continue;
            }
            if out.contains_key(&name) {
                self.at("duplicate-name", k, format!("variable `{name}` is set twice in {what}"), None);
                continue;
            }
            let value = match &v.kind {
                NodeKind::Null => String::new(),
                NodeKind::Seq(_) | NodeKind::Map(_) => {
                    self.at(
                        "wrong-type",
                        v,
                        format!("the value of `{name}` must be a string, found {}", v.describe()),
                        None,
                    );
                    continue;
                }
                _ => v.as_key().unwrap_or_default(),
            };
            out.insert(name, value);
        }
        out
    }

    /// A list of strings (a single string is accepted as a list of one).
    pub fn string_list(&mut self, node: &Node, what: &str) -> Vec<(String, Pos)> {
        match &node.kind {
            NodeKind::Seq(items) => {
                items.iter().filter_map(|i| self.nonempty_string(i, what).map(|s| (s, i.pos))).collect()
            }
            NodeKind::Str(s) => vec![(s.clone(), node.pos)],
            _ => {
                self.at(
                    "wrong-type",
                    node,
                    format!("{what} must be a list of names, found {}", node.describe()),
                    None,
                );
                Vec::new()
            }
        }
    }

    /// The items of a list.
    pub fn list<'a>(&mut self, node: &'a Node, what: &str) -> &'a [Node] {
        match &node.kind {
            NodeKind::Seq(items) => items,
            NodeKind::Null => &[],
            _ => {
                self.at(
                    "wrong-type",
                    node,
                    format!("{what} must be a list (`- item` lines), found {}", node.describe()),
                    None,
                );
                &[]
            }
        }
    }
}

/// Finds a cycle in a dependency graph given as name → needs; returns it as a path a → b → a.
pub fn find_cycle(graph: &[(String, Vec<String>)]) -> Option<Vec<String>> {
    let index: BTreeMap<&str, usize> = graph.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut state = vec![0u8; graph.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn dfs(
        v: usize,
        graph: &[(String, Vec<String>)],
        index: &BTreeMap<&str, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        state[v] = 1;
        stack.push(v);
        for dep in &graph[v].1 {
            let Some(&w) = index.get(dep.as_str()) else { continue };
            if state[w] == 1 {
                let start = stack.iter().position(|x| *x == w).unwrap_or(0);
                let mut path: Vec<String> = stack[start..].iter().map(|i| graph[*i].0.clone()).collect();
                path.push(graph[w].0.clone());
                return Some(path);
            }
            if state[w] == 0 {
                if let Some(p) = dfs(w, graph, index, state, stack) {
                    return Some(p);
                }
            }
        }
        stack.pop();
        state[v] = 2;
        None
    }
    for v in 0..graph.len() {
        if state[v] == 0 {
            if let Some(p) = dfs(v, graph, &index, &mut state, &mut stack) {
                return Some(p);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for (n, ok) in
            [("data", true), ("meta-data", true), ("a1", true), ("-a", false), ("A", false), ("", false)]
        {
            assert_eq!(valid_name(n), ok, "{n}");
        }
    }

    #[test]
    fn cycles() {
        let g = |v: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            v.iter().map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect())).collect()
        };
        assert_eq!(find_cycle(&g(&[("a", &[]), ("b", &["a"])])), None);
        assert_eq!(
            find_cycle(&g(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"])])),
            Some(vec!["a".into(), "c".into(), "b".into(), "a".into()])
        );
        assert_eq!(find_cycle(&g(&[("a", &["a"])])), Some(vec!["a".into(), "a".into()]));
    }
}
