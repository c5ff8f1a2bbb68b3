//! A located YAML tree: every scalar, sequence, mapping and key knows its line and column.
//!
//! The spec decoders walk this tree instead of deriving serde structs so that they can report
//! every error of a file in one pass, each at its exact place.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based position in the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// A YAML value.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept so the decoder can report them.
    Map(Vec<(Node, Node)>),
}

/// A YAML value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

impl Node {
    /// What the node is, in words, for error messages ("a mapping", "the string \"x\"").
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Null => "nothing (null)".into(),
            NodeKind::Bool(b) => format!("the boolean {b}"),
            NodeKind::Int(i) => format!("the number {i}"),
            NodeKind::Float(f) => format!("the number {f}"),
            NodeKind::Str(s) => format!("the string {s:?}"),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }

    /// The node as a string key, if it is a scalar.
    pub fn as_key(&self) -> Option<String> {
        match &self.kind {
            NodeKind::Str(s) => Some(s.clone()),
            NodeKind::Int(i) => Some(i.to_string()),
            NodeKind::Bool(b) => Some(b.to_string()),
            NodeKind::Float(f) => Some(f.to_string()),
            NodeKind::Null => None,
            _ => None,
        }
    }

    /// Width of the node's text for underlining (1 for collections).
    pub fn width(&self) -> usize {
        match &self.kind {
            NodeKind::Str(s) => s.chars().count().max(1),
            NodeKind::Seq(_) | NodeKind::Map(_) | NodeKind::Null => 1,
            other => Node { kind: other.clone(), pos: self.pos }.as_key().map_or(1, |k| k.len()),
        }
    }
}

struct Raw(NodeKind);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

fn located(s: Spanned<Raw>) -> Node {
    Node { kind: s.value.0, pos: Pos { line: s.referenced.line() as u32, col: s.referenced.column() as u32 } }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Int(v as i128)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Int(v as i128)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Int(v)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Int(v.min(i128::MAX as u128) as i128)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Str(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Str(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Str(String::from_utf8_lossy(v).into_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw(NodeKind::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut v = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            v.push(located(item));
        }
        Ok(Raw(NodeKind::Seq(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut v = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Raw>>()? {
            let val = map.next_value::<Spanned<Raw>>()?;
            v.push((located(k), located(val)));
        }
        Ok(Raw(NodeKind::Map(v)))
    }
}

/// Largest spec file accepted, in bytes.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;

/// Why a text is not a YAML document we accept.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub message: String,
    pub pos: Option<Pos>,
}

/// Parses YAML text into a located tree, under a budget that rejects YAML bombs.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(SyntaxError {
            message: format!("file is {} bytes; the limit is {} bytes", text.len(), MAX_INPUT_BYTES),
            pos: None,
        });
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_recorded_anchor_events = 20_000;
    budget.max_recorded_anchor_bytes = 1024 * 1024;
    budget.max_depth = 48;
    budget.max_documents = 1;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = MAX_INPUT_BYTES;
    let options = serde_saphyr::options! {
        budget: Some(budget),
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::PassThrough,
    };
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(n) => Ok(located(n)),
        Err(e) => {
            let pos = e.location().map(|l| Pos { line: l.line() as u32, col: l.column() as u32 });
            let mut message = e.to_string();
            // The library's message may embed its own location; keep the first line only.
            if let Some(first) = message.lines().next() {
                message = first.to_string();
            }
            // Drop the library's "error: line L column C: " prefix; the report shows the place.
            let mut m = message.as_str();
            m = m.strip_prefix("error: ").unwrap_or(m);
            if m.starts_with("line ") {
                if let Some((_, rest)) = m.split_once(": ") {
                    m = rest;
                }
            }
            let message = m.to_string();
            Err(SyntaxError { message, pos })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_kinds() {
        let n = parse("a: 1\nb:\n  - x\n  - \"5\"\nc: true\nd: ~\ne: 1.5\n").unwrap();
        let NodeKind::Map(entries) = n.kind else { panic!("map") };
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[0].1.kind, NodeKind::Int(1));
        assert_eq!(entries[0].1.pos, Pos { line: 1, col: 4 });
        let NodeKind::Seq(items) = &entries[1].1.kind else { panic!("seq") };
        assert_eq!(items[0].kind, NodeKind::Str("x".into()));
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
        assert_eq!(items[1].kind, NodeKind::Str("5".into()), "quoted stays a string");
        assert_eq!(entries[2].1.kind, NodeKind::Bool(true));
        assert_eq!(entries[3].1.kind, NodeKind::Null);
        assert_eq!(entries[4].1.kind, NodeKind::Float(1.5));
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_decoder() {
        let n = parse("a: 1\na: 2\n").unwrap();
        let NodeKind::Map(entries) = n.kind else { panic!("map") };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn billion_laughs_is_rejected() {
        let mut s =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let mut prev = 'a';
        for c in 'b'..='j' {
            s.push_str(&format!(
                "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
            prev = c;
        }
        let e = parse(&s).unwrap_err();
        assert!(e.message.to_lowercase().contains("budget") || e.message.contains("limit"), "{e:?}");
    }

    #[test]
    fn syntax_error_has_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.is_some(), "{e:?}");
    }
}
