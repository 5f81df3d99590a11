//! The baseline as JSON: what the proxy persists across restarts and reports
//! to the control plane, with a version, a size bound, clear errors on a
//! corrupt file, and `merge` of a baseline learned by other pods.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::key::{FlowKey, FlowPeer, Protocol, Route, MAX_METHOD};
use super::rate::RateProfile;
use super::template;
use crate::model::Direction;
use crate::normalize::is_normal_path;
use crate::spiffe::SpiffeId;

/// The snapshot format's version; a file with another is refused.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Bytes allowed per entry when reading a snapshot (a long SPIFFE ID and
/// path template fit many times over), on top of a fixed 64 KiB.
const BYTES_PER_ENTRY: usize = 8 * 1024;

/// One workload's baseline at a point in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub identity: SpiffeId,
    /// When it was taken (unix ms).
    pub taken_at: u64,
    /// The bucket length its rate profiles were learned with.
    pub bucket_ms: u64,
    /// When the last new flow was learned; `None` before the first.
    pub last_new_flow: Option<u64>,
    /// New flows not learned because the cap was reached.
    pub overflow: u64,
    /// When `auto_promote` moved the workload from `learn` to `monitor`
    /// (unix ms): kept in the proxy's own file so a restart does not undo
    /// it; never in a report or a merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<u64>,
    /// Sorted by flow.
    pub entries: Vec<Entry>,
}

/// One learned flow and its figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub flow: FlowKey,
    pub count: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    pub rate: RateProfile,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("baseline file is {bytes} bytes, over the {max}-byte bound for {max_entries} entries; it is not a baseline this proxy wrote (raise baseline.max_entries if it is)")]
    TooLarge {
        bytes: usize,
        max: usize,
        max_entries: usize,
    },
    #[error("baseline file is corrupt at line {line}, column {column}: {message}")]
    Corrupt {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("baseline file has version {found}; this Palisade reads version {SNAPSHOT_VERSION}")]
    UnsupportedVersion { found: u32 },
    #[error("baseline file holds {entries} entries, over baseline.max_entries ({max})")]
    TooManyEntries { entries: usize, max: usize },
    #[error("baseline file entry {index}: {reason}")]
    Invalid { index: usize, reason: String },
    #[error(
        "cannot merge the baseline of {theirs} into that of {ours}: baselines merge per identity"
    )]
    OtherIdentity { ours: SpiffeId, theirs: SpiffeId },
    #[error(
        "cannot merge a baseline learned with {theirs}ms buckets into one with {ours}ms buckets"
    )]
    OtherBucket { ours: u64, theirs: u64 },
}

impl From<serde_json::Error> for SnapshotError {
    fn from(e: serde_json::Error) -> Self {
        SnapshotError::Corrupt {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        }
    }
}

impl Snapshot {
    /// An empty baseline.
    pub fn empty(identity: SpiffeId, bucket_ms: u64, now: u64) -> Self {
        Snapshot {
            version: SNAPSHOT_VERSION,
            identity,
            taken_at: now,
            bucket_ms,
            last_new_flow: None,
            overflow: 0,
            promoted_at: None,
            entries: Vec::new(),
        }
    }

    /// The most bytes `from_json` reads for a cap of `max_entries`.
    pub fn max_bytes(max_entries: usize) -> usize {
        max_entries
            .saturating_mul(BYTES_PER_ENTRY)
            .saturating_add(64 * 1024)
    }

    /// Compact JSON, one object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a snapshot always serializes")
    }

    /// Reads a snapshot, refusing one over `max_bytes(max_entries)`, of
    /// another version, malformed (with line and column), or holding more
    /// than `max_entries` entries. Every SPIFFE ID, CIDR, method and path
    /// template is validated; templates are re-derived, so a hand-written
    /// `/users/42` is learned as `/users/{id}`.
    pub fn from_json(bytes: &[u8], max_entries: usize) -> Result<Snapshot, SnapshotError> {
        let max = Self::max_bytes(max_entries);
        if bytes.len() > max {
            return Err(SnapshotError::TooLarge {
                bytes: bytes.len(),
                max,
                max_entries,
            });
        }
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        if probe.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: probe.version,
            });
        }
        let mut snap: Snapshot = serde_json::from_slice(bytes)?;
        if snap.entries.len() > max_entries {
            return Err(SnapshotError::TooManyEntries {
                entries: snap.entries.len(),
                max: max_entries,
            });
        }
        for (index, e) in snap.entries.iter().enumerate() {
            let r = &e.rate;
            let reason = if e.first_seen > e.last_seen {
                "first_seen is after last_seen"
            } else if !(r.mean >= 0.0 && r.variance >= 0.0) {
                "a rate's mean and variance are never negative"
            } else {
                continue;
            };
            return Err(SnapshotError::Invalid {
                index,
                reason: reason.into(),
            });
        }
        // Re-derived templates may now coincide: fold them.
        let entries = std::mem::take(&mut snap.entries);
        snap.add_all(entries, usize::MAX);
        Ok(snap)
    }

    /// Merges a baseline of the same identity, learned elsewhere (other pods
    /// of the service): per flow, counts add, first seen is the earlier,
    /// last seen the later, and rate profiles pool (see
    /// `RateProfile`'s docs: a typical pod's rate, not the sum). Flows new
    /// here are added while fewer than `max_entries`; the rest count as
    /// overflow, and their number is returned. The result carries no
    /// promotion.
    pub fn merge(&mut self, other: &Snapshot, max_entries: usize) -> Result<u64, SnapshotError> {
        if other.identity != self.identity {
            return Err(SnapshotError::OtherIdentity {
                ours: self.identity.clone(),
                theirs: other.identity.clone(),
            });
        }
        if other.bucket_ms != self.bucket_ms {
            return Err(SnapshotError::OtherBucket {
                ours: self.bucket_ms,
                theirs: other.bucket_ms,
            });
        }
        self.taken_at = self.taken_at.max(other.taken_at);
        // A promotion is one pod's; the merge of several is no pod's.
        self.promoted_at = None;
        self.last_new_flow = self.last_new_flow.max(other.last_new_flow);
        self.overflow = self.overflow.saturating_add(other.overflow);
        let dropped = self.add_all(other.entries.iter().cloned(), max_entries);
        self.overflow = self.overflow.saturating_add(dropped);
        Ok(dropped)
    }

    fn add_all(&mut self, entries: impl IntoIterator<Item = Entry>, max_entries: usize) -> u64 {
        let mut at: HashMap<FlowKey, usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.flow.clone(), i))
            .collect();
        let mut dropped = 0;
        for e in entries {
            match at.get(&e.flow) {
                Some(&i) => {
                    let mine = &mut self.entries[i];
                    mine.count = mine.count.saturating_add(e.count);
                    mine.first_seen = mine.first_seen.min(e.first_seen);
                    mine.last_seen = mine.last_seen.max(e.last_seen);
                    mine.rate.merge(&e.rate);
                }
                None if self.entries.len() < max_entries => {
                    at.insert(e.flow.clone(), self.entries.len());
                    self.entries.push(e);
                }
                None => dropped += 1,
            }
        }
        self.entries.sort_by(|a, b| a.flow.cmp(&b.flow));
        dropped
    }
}

/// A flow as written in a snapshot (and in events).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRepr {
    direction: String,
    peer: FlowPeer,
    port: u16,
    protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

impl Serialize for FlowKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        KeyRepr {
            direction: self.direction.as_str().to_owned(),
            peer: self.peer.clone(),
            port: self.port,
            protocol: self.protocol,
            method: self.route.as_ref().map(|r| r.method.clone()),
            path: self.route.as_ref().map(|r| r.template.clone()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for FlowKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = KeyRepr::deserialize(d)?;
        flow_key(r).map_err(serde::de::Error::custom)
    }
}

fn flow_key(r: KeyRepr) -> Result<FlowKey, String> {
    let direction: Direction = r.direction.parse()?;
    if r.port == 0 {
        return Err("port 0 is not a port".into());
    }
    if let FlowPeer::Cidr(net) = r.peer {
        if net.trunc() != net {
            return Err(format!("peer CIDR `{net}` has host bits set"));
        }
    }
    let route = match (r.method, r.path) {
        (None, None) => None,
        (Some(method), Some(path)) => {
            if r.protocol != Protocol::Http {
                return Err("a flow with a method and path has protocol `http`".into());
            }
            if method.len() > MAX_METHOD {
                return Err(format!("method `{method}` is over {MAX_METHOD} bytes"));
            }
            if path != "*" && !is_normal_path(&path) {
                return Err(format!("`{path}` is not a normalized path template"));
            }
            let template = template::template(&path).into_owned();
            Some(Route { method, template })
        }
        _ => return Err("`method` and `path` come together".into()),
    };
    Ok(FlowKey {
        direction,
        peer: r.peer,
        port: r.port,
        protocol: r.protocol,
        route,
    })
}
