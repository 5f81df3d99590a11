//! Diagnostics: located errors and warnings (`file:line:col: error: ...`),
//! and the "did you mean" suggestion used for misspelt names.

use std::fmt;
use std::sync::Arc;

use crate::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a policy source, pointing at the offending node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub source: Arc<str>,
    pub pos: Pos,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(source: &Arc<str>, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            source: source.clone(),
            pos,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(source: &Arc<str>, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            source: source.clone(),
            pos,
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.source, self.pos, self.severity, self.message
        )
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a plausible typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(&word.to_ascii_lowercase(), c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "unknown field `prots`, did you mean `ports`? expected one of `a`, `b`".
pub(crate) fn unknown_name(what: &str, word: &str, candidates: &[&str]) -> String {
    let list = quoted_list(candidates);
    match nearest(word, candidates) {
        Some(s) => format!("unknown {what} `{word}`, did you mean `{s}`? expected one of {list}"),
        None => format!("unknown {what} `{word}`, expected one of {list}"),
    }
}

/// "`a`, `b`, `c`".
pub(crate) fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_name_for_a_typo() {
        let fields = ["name", "action", "from", "ports", "http"];
        assert_eq!(nearest("prots", &fields), Some("ports"));
        assert_eq!(nearest("acton", &fields), Some("action"));
        assert_eq!(nearest("Ports", &fields), Some("ports"));
        assert_eq!(nearest("zzzzzzzz", &fields), None);
    }

    #[test]
    fn displays_as_file_line_column() {
        let src: Arc<str> = "shop.yaml".into();
        let d = Diagnostic::error(
            &src,
            Pos {
                line: 14,
                column: 9,
            },
            "bad",
        );
        assert_eq!(d.to_string(), "shop.yaml:14:9: error: bad");
    }
}
