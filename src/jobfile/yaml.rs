//! The YAML reader: the only place that knows the parser (serde-saphyr). It turns a document into
//! a small tree of [`Node`]s that carry their line and column, so validation can report every
//! problem at its position instead of stopping at the first one as serde would.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// A YAML value with the (1-based) position where it appears.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
    /// The value.
    pub value: Value,
}

/// A YAML value, with untyped scalars already resolved by the YAML core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i128),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<(Node, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<RawValue>::deserialize(d)?;
        // An alias is reported where it is used, which is where the user looks.
        let loc = if spanned.referenced == Location::UNKNOWN {
            spanned.defined
        } else {
            spanned.referenced
        };
        Ok(Node {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            col: u32::try_from(loc.column()).unwrap_or(u32::MAX),
            value: spanned.value.0,
        })
    }
}

struct RawValue(Value);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(RawValue)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Int(i128::try_from(v).unwrap_or(i128::MAX)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        RawValue::deserialize(d).map(|r| r.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(kv) = map.next_entry::<Node, Node>()? {
            entries.push(kv);
        }
        Ok(Value::Map(entries))
    }
}

/// Most YAML nodes (scalars, lists, mappings) a job file may have. A 100,000-item job file of
/// plain prompts has about 100,000; with per-entry mappings a few times that.
pub const MAX_NODES: usize = 1_500_000;
/// Deepest nesting of lists and mappings; a job file needs 5.
pub const MAX_DEPTH: usize = 32;
/// Most nodes that aliases (`*name`) may replay in total: this is what refuses an alias bomb
/// (a few lines that expand to billions of nodes) before it is built in memory.
pub const MAX_ALIAS_REPLAY: usize = 100_000;
/// Most aliases and anchors a job file may use.
const MAX_ALIASES: usize = 10_000;

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line (1 when the parser gave no position).
    pub line: u32,
    /// 1-based column (1 when the parser gave no position).
    pub col: u32,
    /// What the parser said, without position.
    pub message: String,
    /// Whether the document was refused by the parser budget (too large, too deep, alias bomb)
    /// rather than for its syntax.
    pub over_budget: bool,
    /// How to fix it, when the parser's message does not say.
    pub hint: Option<String>,
}

/// Parses one YAML document into a [`Node`] tree, under a budget that refuses oversized
/// documents and alias bombs while they stream through the parser, before they are built.
///
/// Plain scalars follow YAML 1.2: only `true` and `false` are booleans (`yes`, `no`, `on`, `n`
/// stay text), so a prompt or a key is never turned into a boolean by surprise.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_NODES;
    // Every node is at least one event; end-of-collection events add at most as many again.
    budget.max_events = 2 * MAX_NODES + 16;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    budget.max_depth = MAX_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAY;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| to_yaml_error(&e))
}

fn to_yaml_error(err: &serde_saphyr::Error) -> YamlError {
    use serde_saphyr::{Error, MessageFormatter, UserMessageFormatter};
    let err = err.without_snippet();
    let (line, col) = err
        .location()
        .filter(|l| *l != Location::UNKNOWN)
        .map(|l| {
            (
                u32::try_from(l.line()).unwrap_or(u32::MAX).max(1),
                u32::try_from(l.column()).unwrap_or(u32::MAX).max(1),
            )
        })
        .unwrap_or((1, 1));
    // The budget error of an alias bomb arrives wrapped in the alias that replayed it.
    let mut inner = err;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let over_budget = matches!(
        inner,
        Error::Budget { .. }
            | Error::AliasReplayCounterOverflow { .. }
            | Error::AliasReplayLimitExceeded { .. }
            | Error::AliasExpansionLimitExceeded { .. }
            | Error::AliasReplayStackDepthExceeded { .. }
    );
    let hint = matches!(inner, Error::MultipleDocuments { .. })
        .then(|| "a job file is one YAML document: remove the `---` line".to_owned());
    let message = budget_message(inner)
        .unwrap_or_else(|| UserMessageFormatter.format_message(err).into_owned());
    YamlError {
        line,
        col,
        message,
        over_budget,
        hint,
    }
}

/// Says in words which part of the budget a document broke.
fn budget_message(err: &serde_saphyr::Error) -> Option<String> {
    use serde_saphyr::Error;
    use serde_saphyr::budget::BudgetBreach;
    let alias_bomb =
        || format!("aliases (`*name`) repeat more than {MAX_ALIAS_REPLAY} nodes (an alias bomb?)");
    Some(match err {
        Error::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => format!("nesting deeper than {MAX_DEPTH} levels"),
            BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
                format!("more than {MAX_NODES} YAML nodes")
            }
            BudgetBreach::Aliases { .. } => format!("more than {MAX_ALIASES} aliases"),
            BudgetBreach::Anchors { .. } => format!("more than {MAX_ALIASES} anchors"),
            BudgetBreach::AliasAnchorRatio { .. } => {
                "far more aliases than anchors (an alias bomb?)".to_owned()
            }
            BudgetBreach::ScalarBytes { .. } => "more than 64 MiB of text".to_owned(),
            _ => return None,
        },
        Error::AliasReplayCounterOverflow { .. }
        | Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. } => alias_bomb(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(line: u32, col: u32, v: &str) -> Node {
        Node {
            line,
            col,
            value: Value::Str(v.into()),
        }
    }

    #[test]
    fn every_node_carries_its_line_and_column() {
        let n = parse("batch: x\nsizes: [1024x1024, {width: 5}]\nprompts:\n  - 猫\n").unwrap();
        let Value::Map(top) = &n.value else {
            panic!("not a map: {n:?}")
        };
        assert_eq!(top[0], (s(1, 1, "batch"), s(1, 8, "x")));
        let Value::Seq(sizes) = &top[1].1.value else {
            panic!()
        };
        assert_eq!(sizes[0], s(2, 9, "1024x1024"));
        assert_eq!((sizes[1].line, sizes[1].col), (2, 20));
        let Value::Seq(prompts) = &top[2].1.value else {
            panic!()
        };
        // Columns count characters, not bytes.
        assert_eq!(prompts[0], s(4, 5, "猫"));
    }

    #[test]
    fn scalars_follow_yaml_1_2() {
        let n = parse("a: yes\nb: n\nc: true\nd: 12\ne: 1.5\nf: ~\n").unwrap();
        let Value::Map(m) = n.value else { panic!() };
        let values: Vec<Value> = m.into_iter().map(|(_, v)| v.value).collect();
        assert_eq!(
            values,
            [
                Value::Str("yes".into()),
                Value::Str("n".into()),
                Value::Bool(true),
                Value::Int(12),
                Value::Float(1.5),
                Value::Null
            ]
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("a: [1\n").unwrap_err();
        assert!(!e.over_budget);
        assert_eq!((e.line, e.col), (1, 4));
        assert!(e.message.contains("unclosed"), "{}", e.message);
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 1));
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn alias_bomb_is_refused_by_the_budget() {
        let mut doc = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for (name, prev) in [
            ("b", "a"),
            ("c", "b"),
            ("d", "c"),
            ("e", "d"),
            ("f", "e"),
            ("g", "f"),
            ("h", "g"),
            ("i", "h"),
        ] {
            let refs = vec![format!("*{prev}"); 10].join(",");
            doc.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let e = parse(&doc).unwrap_err();
        assert!(e.over_budget, "{e:?}");
    }

    #[test]
    fn too_many_nodes_is_refused_by_the_budget() {
        let doc = format!("a: [{}]\n", "1,".repeat(MAX_NODES + 10));
        let e = parse(&doc).unwrap_err();
        assert!(e.over_budget, "{e:?}");
    }

    #[test]
    fn too_deep_is_refused_by_the_budget() {
        let doc = format!(
            "a: {}{}\n",
            "[".repeat(MAX_DEPTH + 2),
            "]".repeat(MAX_DEPTH + 2)
        );
        let e = parse(&doc).unwrap_err();
        assert!(e.over_budget, "{e:?}");
    }

    #[test]
    fn several_documents_are_refused() {
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(!e.over_budget);
        assert_eq!(e.line, 3);
        assert!(e.hint.is_some());
    }
}
