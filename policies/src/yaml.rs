//! A located YAML tree: every node remembers its line and column, so that
//! validation can point at the exact place a mistake was made.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

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

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Kind {
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

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Kind>::deserialize(d)?;
        Ok(Node {
            pos: Pos {
                line: spanned.referenced.line() as u32,
                column: spanned.referenced.column() as u32,
            },
            kind: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(Kind::Int(i128::try_from(v).unwrap_or(i128::MAX)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(Kind::Map(entries))
    }
}

/// A YAML syntax error, located.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses every document of a (possibly multi-document) YAML stream.
/// Empty documents are skipped.
pub(crate) fn parse_stream(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let options = serde_saphyr::options! { with_snippet: false, strict_booleans: true };
    serde_saphyr::from_str_multiple_with_options::<Node, Vec<Node>>(text, options).map_err(|e| {
        let pos = e
            .location()
            .map(|l| Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            })
            .unwrap_or_default();
        let mut message = e.without_snippet().to_string();
        // The caller prefixes `file:line:col`; drop the library's own suffix.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        SyntaxError { pos, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_absolute_positions_across_documents() {
        let docs = parse_stream("a: 1\n---\n---\nfoo: [1, \"9000-9010\"]\n").unwrap();
        assert_eq!(docs.len(), 2);
        let Kind::Map(entries) = &docs[1].kind else {
            panic!("map expected")
        };
        let Kind::Seq(items) = &entries[0].1.kind else {
            panic!("seq expected")
        };
        assert_eq!(
            items[0],
            Node {
                pos: Pos { line: 4, column: 7 },
                kind: Kind::Int(1)
            }
        );
        assert_eq!(
            items[1].pos,
            Pos {
                line: 4,
                column: 10
            }
        );
        assert_eq!(items[1].kind, Kind::Str("9000-9010".into()));
    }

    #[test]
    fn syntax_errors_are_located_without_repeating_the_location() {
        let err = parse_stream("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 1 });
        assert!(
            err.message.starts_with("duplicate mapping key: a"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("at line"), "{}", err.message);
    }

    #[test]
    fn only_true_and_false_are_booleans() {
        let docs = parse_stream("a: on\nb: true\n").unwrap();
        let Kind::Map(entries) = &docs[0].kind else {
            panic!("map expected")
        };
        assert_eq!(entries[0].1.kind, Kind::Str("on".into()));
        assert_eq!(entries[1].1.kind, Kind::Bool(true));
    }
}
