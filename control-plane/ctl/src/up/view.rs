//! The demo's live view: what each caller saw, and what each sidecar reports
//! on its metrics (peer identities, TLS, authorization decisions, baseline
//! deviations).

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use super::traffic::{Call, Outcome, Tally};

fn verdict(o: &Outcome) -> (&'static str, String) {
    match o {
        Outcome::Answered { reply, took } => (
            "ALLOWED",
            format!("{reply:?} in {:.1} ms", took.as_secs_f64() * 1e3),
        ),
        Outcome::Refused { took } => (
            "DENIED",
            format!(
                "connection closed by the mesh after {:.1} ms",
                took.as_secs_f64() * 1e3
            ),
        ),
        Outcome::Rejected {
            status,
            reason,
            took,
        } => (
            if *status == 429 {
                "THROTTLED"
            } else {
                "DENIED"
            },
            format!(
                "answered {status}{} after {:.1} ms",
                reason
                    .as_ref()
                    .map(|r| format!(" (x-palisade-denied: {r})"))
                    .unwrap_or_default(),
                took.as_secs_f64() * 1e3
            ),
        ),
        Outcome::Failed(e) => ("ERROR", e.clone()),
    }
}

/// One line per call, for logs and pipes.
pub fn line(call: &Call, o: &Outcome) -> String {
    let (v, detail) = verdict(o);
    format!(
        "{:<8} {} -> {}{}  ({} -> {}): {detail}",
        v,
        call.from,
        call.to,
        what(call),
        call.from_id,
        call.to_id
    )
}

/// A burst of requests on one connection: how many passed and how many were
/// throttled.
pub fn burst_line(call: &Call, took: Duration, statuses: &Result<Vec<u16>, String>) -> String {
    let detail = match statuses {
        Err(e) => {
            return format!(
                "{:<8} {} -> {}{} burst: {e}",
                "ERROR",
                call.from,
                call.to,
                what(call)
            )
        }
        Ok(s) => s,
    };
    let ok = detail.iter().filter(|s| (200..300).contains(*s)).count();
    let throttled = detail.iter().filter(|s| **s == 429).count();
    let other = detail.len() - ok - throttled;
    let v = if throttled > 0 {
        "THROTTLED"
    } else {
        "ALLOWED"
    };
    format!(
        "{v:<8} {} -> {}{} burst  ({} -> {}): {} requests in {:.1} s: {ok} answered 2xx, \
         {throttled} throttled (429), {other} other",
        call.from,
        call.to,
        what(call),
        call.from_id,
        call.to_id,
        detail.len(),
        took.as_secs_f64()
    )
}

/// One line for an event file's line when it is a baseline finding (OCSF
/// Detection Finding); `None` for anything else (denials).
pub fn finding(workload: &str, event: &str) -> Option<String> {
    let e: serde_json::Value = serde_json::from_str(event).ok()?;
    if e["class_uid"] != 2004 {
        return None;
    }
    let extra = &e["unmapped"]["palisade"];
    Some(format!(
        "FINDING  {workload:<9} {:<20} {:<8} {}",
        e["finding_info"]["types"][0].as_str()?,
        extra["direction"].as_str().unwrap_or("-"),
        e["message"].as_str()?
    ))
}

/// A call's target after its callee, when it is not the echo service.
fn what(call: &Call) -> String {
    match call.what.as_str() {
        "" => String::new(),
        w => format!(" {w}"),
    }
}

/// A metric sample: name, labels, value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (head, ""),
            };
            let labels = labels
                .split("\",")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.trim(), v.trim_end_matches('"')))
                })
                .collect();
            Some(Sample {
                name,
                labels,
                value,
            })
        })
}

fn label<'a>(s: &Sample<'a>, key: &str) -> &'a str {
    s.labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .unwrap_or("-")
}

/// What the sidecars report: inbound connections by verified peer, every
/// authorization counter, and the baseline's deviations.
fn sidecar_report(seen: &[(&'static str, String)]) -> String {
    let mut out = String::new();
    for (workload, text) in seen {
        for s in samples(text) {
            if s.value == 0.0 {
                continue;
            }
            if s.name == "tcp_open_total" && label(&s, "direction") == "inbound" {
                let _ = writeln!(
                    out,
                    "  {workload:<9} accepted {:>4} connection(s) from {} (mTLS: {})",
                    s.value,
                    label(&s, "peer"),
                    label(&s, "tls")
                );
            } else if s.name.contains("authz") {
                // An empty rule means no rule matched: the policy's default deny.
                let rule = match label(&s, "rule") {
                    "" | "-" => "(no rule matched: default deny)",
                    r => r,
                };
                let _ = writeln!(
                    out,
                    "  {workload:<9} {:<32} {:>4}  peer {}  policy {} rule {rule}",
                    s.name,
                    s.value,
                    label(&s, "peer"),
                    label(&s, "policy"),
                );
            } else if s.name == "baseline_deviation_total" {
                let _ = writeln!(
                    out,
                    "  {workload:<9} {:<32} {:>4}  kind {} action {}",
                    s.name,
                    s.value,
                    label(&s, "kind"),
                    label(&s, "action"),
                );
            }
        }
    }
    out
}

/// The redrawn terminal screen; a scenario's `story` goes between the
/// calls and the sidecars' report.
pub fn screen(
    calls: &[Call],
    tally: &Tally,
    seen: &[(&'static str, String)],
    policy: Option<&Path>,
    story: &str,
) -> String {
    let mut out = String::from("\x1b[2J\x1b[H");
    let _ = writeln!(
        out,
        "Palisade local mesh: trust domain {}, policy {}  (Ctrl-C stops)\n",
        super::TRUST_DOMAIN,
        policy
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into())
    );
    let _ = writeln!(
        out,
        "{:<10} {:<26} {:>8} {:>8} {:>6}  last",
        "from", "to", "allowed", "denied", "errors"
    );
    for (call, c) in calls.iter().zip(&tally.per_call) {
        let last = c.last.as_ref().map(|o| verdict(o).0).unwrap_or("-");
        let _ = writeln!(
            out,
            "{:<10} {:<26} {:>8} {:>8} {:>6}  {last}",
            call.from,
            format!("{}{}", call.to, what(call)),
            c.answered,
            c.refused,
            c.failed
        );
    }
    out.push_str(story);
    let _ = writeln!(
        out,
        "\nAs the sidecars saw it (verified SPIFFE IDs and decisions):"
    );
    out.push_str(&sidecar_report(seen));
    out
}

/// The closing summary.
pub fn summary(calls: &[Call], tally: &Tally, seen: &[(&'static str, String)]) -> String {
    let mut out = String::from("\nsummary:\n");
    for (call, c) in calls.iter().zip(&tally.per_call) {
        let _ = writeln!(
            out,
            "  {} -> {}{}: {} allowed, {} denied, {} errors",
            call.from_id,
            call.to_id,
            what(call),
            c.answered,
            c.refused,
            c.failed
        );
    }
    let _ = writeln!(out, "sidecars:");
    out.push_str(&sidecar_report(seen));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_parsed_into_labelled_samples() {
        let text = "# HELP x\ntcp_open_total{direction=\"inbound\",peer=\"spiffe://cluster.local/ns/demo/sa/api\",tls=\"true\"} 3\n";
        let s: Vec<_> = samples(text).collect();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "tcp_open_total");
        assert_eq!(
            label(&s[0], "peer"),
            "spiffe://cluster.local/ns/demo/sa/api"
        );
        assert_eq!(label(&s[0], "tls"), "true");
        assert_eq!(s[0].value, 3.0);
        let report = sidecar_report(&[("db", text.to_owned())]);
        assert!(
            report.contains("db") && report.contains("sa/api") && report.contains("mTLS: true"),
            "{report}"
        );
    }

    #[test]
    fn a_finding_becomes_one_line_and_a_denial_none() {
        let finding = r#"{"class_uid":2004,"message":"New port 20101 with spiffe://cluster.local/ns/demo/sa/db (monitor mode, allowed)","finding_info":{"types":["baseline.new_port"]},"unmapped":{"palisade":{"kind":"baseline.new_port","direction":"outbound"}}}"#;
        let line = super::finding("api", finding).unwrap();
        assert!(line.starts_with("FINDING  api"), "{line}");
        assert!(
            line.contains("baseline.new_port ") && line.contains("(monitor mode, allowed)"),
            "{line}"
        );
        let denial = r#"{"class_uid":4001,"message":"Denied"}"#;
        assert_eq!(super::finding("api", denial), None);
    }
}
