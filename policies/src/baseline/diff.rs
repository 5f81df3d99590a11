//! What was learned against the policy in force: flows the baseline saw
//! that the policy would not allow, and allow rules no learned flow used.

use std::collections::BTreeSet;

use serde::Serialize;

use super::key::{FlowKey, FlowPeer, Protocol};
use super::snapshot::Snapshot;
use super::template::example;
use crate::compile::{docs_selecting, CompiledPolicy};
use crate::decide::decide;
use crate::decision::{Decision, HttpInfo, Matched, Peer, Request};
use crate::model::{Action, Direction};

/// A learned flow the policy does not allow, and the decision that says so.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnallowedFlow {
    pub flow: FlowKey,
    pub count: u64,
    pub decision: Decision,
}

/// An allow rule selecting the workload that decided no learned flow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UnusedRule {
    pub policy: String,
    pub direction: Direction,
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineDiff {
    pub unallowed: Vec<UnallowedFlow>,
    pub unused: Vec<UnusedRule>,
}

impl BaselineDiff {
    pub fn is_empty(&self) -> bool {
        self.unallowed.is_empty() && self.unused.is_empty()
    }
}

/// Decides every learned flow of `snap` as the workload's sidecar would
/// (an HTTP flow's connection, then its request, with `{id}` as `1`), and
/// lists the flows denied and the allow rules that allowed none.
pub fn diff(snap: &Snapshot, policy: &CompiledPolicy) -> BaselineDiff {
    let local = &snap.identity;
    let mut used: BTreeSet<(String, Direction, String)> = BTreeSet::new();
    let mut unallowed = Vec::new();
    for e in &snap.entries {
        let f = &e.flow;
        let peer = match &f.peer {
            FlowPeer::Identity(id) => Peer::Identity(id),
            FlowPeer::Cidr(net) => Peer::Address(net.addr()),
        };
        let path = f.route.as_ref().map(|r| example(&r.template));
        let req = Request {
            direction: f.direction,
            local,
            peer,
            port: f.port,
            http: None,
        };
        let conn = decide(policy, &req);
        // Opaque bytes may not pass where every request must be checked.
        let conn_ok = conn.is_allowed() && !(conn.http_required && f.protocol == Protocol::Opaque);
        let deciding = match (&f.route, &path) {
            (Some(r), Some(path)) if conn_ok => {
                let http = HttpInfo {
                    method: &r.method,
                    path,
                    host: None,
                };
                let d = decide(
                    policy,
                    &Request {
                        http: Some(http),
                        ..req
                    },
                );
                mark(&mut used, &conn, f.direction);
                d
            }
            _ => conn,
        };
        let allowed = deciding.is_allowed() && (f.route.is_some() || conn_ok);
        if allowed {
            mark(&mut used, &deciding, f.direction);
        } else {
            unallowed.push(UnallowedFlow {
                flow: f.clone(),
                count: e.count,
                decision: deciding,
            });
        }
    }
    let mut unused = Vec::new();
    for doc in docs_selecting(policy, local) {
        for direction in Direction::ALL {
            for rule in doc.rules(direction).unwrap_or(&[]) {
                let key = (doc.id(), direction, rule.name.clone());
                if rule.action == Action::Allow && !used.contains(&key) {
                    unused.push(UnusedRule {
                        policy: key.0,
                        direction,
                        rule: key.2,
                    });
                }
            }
        }
    }
    BaselineDiff { unallowed, unused }
}

fn mark(used: &mut BTreeSet<(String, Direction, String)>, d: &Decision, direction: Direction) {
    if let (false, Matched::Rule { policy, rule }) = (d.would_deny, &d.matched) {
        used.insert((policy.to_string(), direction, rule.to_string()));
    }
}
