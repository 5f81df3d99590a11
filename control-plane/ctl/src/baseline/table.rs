//! The text of `baseline show` and `baseline diff`: one block per identity,
//! aligned columns, times in RFC 3339 UTC.

use std::io::{self, Write};
use std::time::Duration;

use palisade_policy::baseline::{Baseline, BaselineDiff, BaselineSettings, Snapshot, Status};

/// The status the proxy would have reported when the snapshot was taken,
/// with the default `stable_after` (the snapshot does not carry it).
pub(super) fn status(snap: &Snapshot) -> Status {
    let settings = BaselineSettings {
        bucket: Duration::from_millis(snap.bucket_ms.max(1)),
        ..BaselineSettings::default()
    };
    let b = Baseline::new(snap.identity.clone(), settings);
    // Same identity and a cap it cannot exceed: nothing to refuse.
    let _ = b.merge(snap);
    b.status(snap.taken_at)
}

pub(super) fn time(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms}ms"))
}

/// Prints rows with each column as wide as its widest cell.
fn columns(out: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "  {}", line.trim_end())?;
    }
    Ok(())
}

fn header(out: &mut dyn Write, snap: &Snapshot) -> io::Result<()> {
    writeln!(out, "{}", snap.identity)?;
    writeln!(
        out,
        "  status {}, {} flows, {} overflow, bucket {}ms, taken {}, last new flow {}",
        status(snap).as_str(),
        snap.entries.len(),
        snap.overflow,
        snap.bucket_ms,
        time(snap.taken_at),
        snap.last_new_flow.map_or_else(|| "never".into(), time)
    )
}

/// `baseline show` for one identity.
pub(super) fn write(out: &mut dyn Write, snap: &Snapshot) -> io::Result<()> {
    header(out, snap)?;
    let mut rows = vec![[
        "DIRECTION",
        "PEER",
        "PORT",
        "PROTOCOL",
        "METHOD",
        "ROUTE",
        "COUNT",
        "FIRST SEEN",
        "LAST SEEN",
        "RATE/BUCKET",
    ]
    .map(String::from)
    .to_vec()];
    for e in &snap.entries {
        let f = &e.flow;
        let (method, route) = match &f.route {
            Some(r) => (r.method.escape_debug().to_string(), r.template.clone()),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            f.direction.to_string(),
            f.peer.to_string(),
            f.port.to_string(),
            f.protocol.as_str().to_owned(),
            method,
            route,
            e.count.to_string(),
            time(e.first_seen),
            time(e.last_seen),
            format!("{:.1} ±{:.1}", e.rate.mean, e.rate.stddev()),
        ]);
    }
    columns(out, &rows)?;
    writeln!(out)
}

/// `baseline diff` for one identity.
pub(super) fn write_diff(out: &mut dyn Write, snap: &Snapshot, d: &BaselineDiff) -> io::Result<()> {
    writeln!(out, "{}", snap.identity)?;
    if d.is_empty() {
        writeln!(
            out,
            "  ok: the policy allows all {} learned flows and uses every allow rule",
            snap.entries.len()
        )?;
        return writeln!(out);
    }
    writeln!(
        out,
        "  {} learned flows not allowed, {} allow rules never used",
        d.unallowed.len(),
        d.unused.len()
    )?;
    if !d.unallowed.is_empty() {
        writeln!(out, "  seen but not allowed:")?;
        let mut rows = vec![["FLOW", "COUNT", "DECIDED BY"].map(String::from).to_vec()];
        for u in &d.unallowed {
            rows.push(vec![
                u.flow.to_string(),
                u.count.to_string(),
                u.decision.to_string(),
            ]);
        }
        columns(out, &rows)?;
    }
    if !d.unused.is_empty() {
        writeln!(out, "  allow rules never used:")?;
        let mut rows = vec![["POLICY", "DIRECTION", "RULE"].map(String::from).to_vec()];
        for u in &d.unused {
            rows.push(vec![
                u.policy.clone(),
                u.direction.to_string(),
                u.rule.clone(),
            ]);
        }
        columns(out, &rows)?;
    }
    writeln!(out)
}
