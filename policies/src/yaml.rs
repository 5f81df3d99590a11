//! A located YAML tree: every node remembers its line and column, so that
//! validation can point at the exact place a mistake was made.

use std::fmt;

use std::borrow::Cow;
use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Marker, Options as ParserOptions, Parser, ScalarStyle};

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node and where it starts. Strings borrow from the source text
/// where YAML allows (no escapes or folding).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node<'a> {
    pub pos: Pos,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Cow<'a, str>),
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

impl Kind<'_> {
    /// What a user would call this kind of value, for "expected X, found Y".
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "a number",
            Kind::Float(_) => "a decimal number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error, located.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Caps the nodes one stream may produce, aliases expanded: a YAML alias
/// bomb stops here instead of exhausting memory. A rule takes about 15
/// nodes, so this allows some 300,000 rules per file.
const MAX_NODES: usize = 5_000_000;

/// Parses a (possibly multi-document) YAML stream, handing each non-empty
/// document to `on_document` as soon as it is complete, so a large stream
/// is never held as one tree.
///
/// This drives serde-saphyr's event parser directly rather than going
/// through serde with `Spanned` values: the tree is what validation walks
/// anyway, and skipping the serde layer halves the time to load a large
/// policy set.
pub(crate) fn parse_stream<'a>(
    text: &'a str,
    mut on_document: impl FnMut(Node<'a>),
) -> Result<(), SyntaxError> {
    let mut options = ParserOptions::default();
    options.emit_comments = false;
    let mut builder = Builder::default();
    for item in Parser::new_from_str_with_options(text, options) {
        let (event, span) = item.map_err(|e| SyntaxError {
            pos: marker_pos(e.marker()),
            message: e.info().to_owned(),
        })?;
        if let Some(doc) = builder.event(event, marker_pos(&span.start))? {
            on_document(doc);
        }
    }
    Ok(())
}

fn marker_pos(m: &Marker) -> Pos {
    Pos {
        line: m.line() as u32,
        column: m.col() as u32 + 1,
    }
}

/// Builds nodes from parser events with an explicit stack.
#[derive(Default)]
struct Builder<'a> {
    /// Open collections: the node being filled, its anchor, and for
    /// mappings a key waiting for its value.
    stack: Vec<(Node<'a>, usize, Option<Node<'a>>)>,
    /// Anchored nodes and their sizes in nodes.
    anchors: HashMap<usize, (Node<'a>, usize)>,
    nodes: usize,
}

impl<'a> Builder<'a> {
    /// Consumes one event; returns a document when one is complete.
    fn event(&mut self, event: Event<'a>, pos: Pos) -> Result<Option<Node<'a>>, SyntaxError> {
        match event {
            Event::Scalar(value, style, anchor, tag) => {
                let kind = if style == ScalarStyle::Plain
                    && !tag.is_some_and(|t| t.is_yaml_core_schema_tag("str"))
                {
                    resolve_plain(value)
                } else {
                    Kind::Str(value)
                };
                self.finish(Node { pos, kind }, anchor, pos)
            }
            Event::SequenceStart(_, anchor, _) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Seq(Vec::new()),
                    },
                    anchor,
                    None,
                ));
                Ok(None)
            }
            Event::MappingStart(_, anchor, _) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Map(Vec::new()),
                    },
                    anchor,
                    None,
                ));
                Ok(None)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (mut node, anchor, _) =
                    self.stack.pop().expect("the parser balances collections");
                // Most collections hold one or two items: without this, a
                // large policy's tree is mostly spare capacity.
                match &mut node.kind {
                    Kind::Seq(items) => items.shrink_to_fit(),
                    Kind::Map(entries) => entries.shrink_to_fit(),
                    _ => {}
                }
                self.finish(node, anchor, pos)
            }
            Event::Alias(id) => {
                let Some((target, size)) = self.anchors.get(&id) else {
                    return Err(SyntaxError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                // Count before copying, so an alias bomb fails before it allocates.
                self.nodes += size;
                if self.nodes > MAX_NODES {
                    return Err(too_many_nodes(pos));
                }
                let mut node = target.clone();
                node.pos = pos;
                self.finish(node, 0, pos)
            }
            Event::DocumentEnd => {
                self.anchors.clear();
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Places a completed node in its parent, or returns it as a document.
    fn finish(
        &mut self,
        node: Node<'a>,
        anchor: usize,
        pos: Pos,
    ) -> Result<Option<Node<'a>>, SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(too_many_nodes(pos));
        }
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), count(&node)));
        }
        let Some((parent, _, pending_key)) = self.stack.last_mut() else {
            return Ok((node.kind != Kind::Null).then_some(node));
        };
        match &mut parent.kind {
            Kind::Seq(items) => items.push(node),
            Kind::Map(entries) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.kind == key.kind) {
                        let message = format!(
                            "duplicate key {} (first at {})",
                            describe_key(&key),
                            first.pos
                        );
                        return Err(SyntaxError {
                            pos: key.pos,
                            message,
                        });
                    }
                    entries.push((key, node));
                }
            },
            _ => unreachable!("only collections are pushed on the stack"),
        }
        Ok(None)
    }
}

fn too_many_nodes(pos: Pos) -> SyntaxError {
    SyntaxError {
        pos,
        message: format!(
            "more than {MAX_NODES} YAML nodes; split the policies across several files"
        ),
    }
}

fn describe_key(key: &Node<'_>) -> String {
    match &key.kind {
        Kind::Str(s) => format!("`{s}`"),
        other => other.describe().to_owned(),
    }
}

fn count(node: &Node<'_>) -> usize {
    match &node.kind {
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(value: Cow<'_, str>) -> Kind<'_> {
    let s: &str = &value;
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
        "true" | "True" | "TRUE" => return Kind::Bool(true),
        "false" | "False" | "FALSE" => return Kind::Bool(false),
        _ => {}
    }
    let int = if let Some(hex) = s.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = s.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()
    } else if s
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'+')
    {
        s.parse().ok()
    } else {
        None
    };
    if let Some(n) = int {
        return Kind::Int(n);
    }
    let floaty = s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    match floaty.then(|| s.parse::<f64>()) {
        Some(Ok(f)) => Kind::Float(f),
        _ => Kind::Str(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &str) -> Result<Vec<Node<'_>>, SyntaxError> {
        let mut docs = Vec::new();
        parse_stream(text, |d| docs.push(d)).map(|()| docs)
    }

    fn map<'n>(node: &'n Node<'n>) -> &'n [(Node<'n>, Node<'n>)] {
        match &node.kind {
            Kind::Map(entries) => entries,
            other => panic!("mapping expected, found {other:?}"),
        }
    }

    fn seq<'n>(node: &'n Node<'n>) -> &'n [Node<'n>] {
        match &node.kind {
            Kind::Seq(items) => items,
            other => panic!("sequence expected, found {other:?}"),
        }
    }

    #[test]
    fn nodes_carry_absolute_positions_across_documents() {
        let docs = parse_all("a: 1\n---\n---\nfoo: [1, \"9000-9010\"]\n").unwrap();
        assert_eq!(docs.len(), 2);
        let items = seq(&map(&docs[1])[0].1);
        assert_eq!(
            items[0],
            Node {
                pos: Pos { line: 4, column: 7 },
                kind: Kind::Int(1)
            }
        );
        assert_eq!(
            items[1],
            Node {
                pos: Pos {
                    line: 4,
                    column: 10
                },
                kind: Kind::Str("9000-9010".into())
            }
        );
    }

    #[test]
    fn duplicate_keys_are_errors_pointing_at_both() {
        let err = parse_all("a: 1\na: 2\n").unwrap_err();
        let want = SyntaxError {
            pos: Pos { line: 2, column: 1 },
            message: "duplicate key `a` (first at 1:1)".into(),
        };
        assert_eq!(err, want);
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse_all("a: [1,\nb: 2\n").unwrap_err();
        assert_eq!(
            err,
            SyntaxError {
                pos: Pos { line: 1, column: 4 },
                message: "unclosed bracket '['".into()
            }
        );
    }

    #[test]
    fn aliases_expand_to_copies_of_their_anchor() {
        let docs = parse_all("a: &peers [{namespace: x}]\nb: *peers\n").unwrap();
        let entries = map(&docs[0]);
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
        assert_eq!(entries[1].1.pos, Pos { line: 2, column: 4 });
    }

    #[test]
    fn alias_bombs_stop_at_the_node_limit() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = format!("*a{}", i - 1);
            let list = [p.as_str(); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{list}]\n"));
        }
        let err = parse_all(&text).unwrap_err();
        assert!(
            err.message.starts_with("more than 5000000 YAML nodes"),
            "{}",
            err.message
        );
    }

    #[test]
    fn plain_scalars_resolve_per_the_core_schema() {
        let docs =
            parse_all("[8080, -1, 0x1F, 1.5, null, ~, true, \"80\", 9000-9010, v1, on]").unwrap();
        let kinds: Vec<&Kind> = seq(&docs[0]).iter().map(|n| &n.kind).collect();
        let want = [
            Kind::Int(8080),
            Kind::Int(-1),
            Kind::Int(31),
            Kind::Float(1.5),
            Kind::Null,
            Kind::Null,
            Kind::Bool(true),
            Kind::Str("80".into()),
            Kind::Str("9000-9010".into()),
            Kind::Str("v1".into()),
            Kind::Str("on".into()),
        ];
        assert_eq!(kinds, want.iter().collect::<Vec<_>>());
    }
}
