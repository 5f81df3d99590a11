//! Validated documents to a `CompiledPolicy`: merged, checked for duplicate
//! names, versioned by content hash and indexed for `decide()`.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::decision::DefaultPolicy;
use crate::diag::Diagnostic;
use crate::index::{Atom, Cidr, DirBuilder, DirIndex, PeerKey, RuleKind, TargetKey};
use crate::model::{
    Action, Direction, HttpMatch, IdMatch, Mode, PeerMatch, PolicyDoc, PortRange, Target,
};
use crate::shadow;

/// The proxy's configuration that compilation bakes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// What applies to workloads that no policy selects in a direction.
    pub default_policy: DefaultPolicy,
}

impl Defaults {
    pub fn new(default_policy: DefaultPolicy) -> Self {
        Defaults { default_policy }
    }
}

/// One rule as `decide()` reports and evaluates it.
#[derive(Debug)]
pub(crate) struct RuleMeta {
    pub policy: u32,
    pub name: Arc<str>,
    pub action: Action,
    pub mode: Mode,
    pub http: Option<Box<[HttpMatch]>>,
}

/// A merged, validated and indexed set of policies. Cheap to share behind
/// an `Arc`; immutable once built.
#[derive(Debug)]
pub struct CompiledPolicy {
    docs: Vec<PolicyDoc>,
    default_policy: DefaultPolicy,
    version: String,
    pub(crate) policy_ids: Vec<Arc<str>>,
    pub(crate) rules: Vec<RuleMeta>,
    pub(crate) index: [DirIndex; 2],
}

/// An alias for readers who think of it as "the policy set".
pub type PolicySet = CompiledPolicy;

impl CompiledPolicy {
    /// No policies at all: every decision falls back to `default_policy`.
    pub fn empty(default_policy: DefaultPolicy) -> Self {
        compile(Vec::new(), Defaults::new(default_policy))
            .map(|(p, _)| p)
            .expect("an empty policy set always compiles")
    }

    /// A content hash of the documents and the default, e.g. `sha256:3fa2…`
    /// (16 hex digits). Equal inputs give equal versions whatever the file
    /// layout, order or formatting.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn default_policy(&self) -> DefaultPolicy {
        self.default_policy
    }

    /// The merged documents, sorted by `namespace/name`.
    pub fn docs(&self) -> &[PolicyDoc] {
        &self.docs
    }

    /// The number of rules across all documents and directions.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub(crate) fn dir(&self, direction: Direction) -> &DirIndex {
        &self.index[direction as usize]
    }
}

/// Merges and indexes validated documents. Fails when two documents share a
/// `namespace/name`; on success also returns warnings (rules shadowed by a
/// deny, policies without rules).
pub fn compile(
    mut docs: Vec<PolicyDoc>,
    defaults: Defaults,
) -> Result<(CompiledPolicy, Vec<Diagnostic>), Vec<Diagnostic>> {
    docs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let errors: Vec<Diagnostic> = docs
        .windows(2)
        .filter(|w| w[0].namespace == w[1].namespace && w[0].name == w[1].name)
        .map(|w| {
            let (first, dup) = (&w[0], &w[1]);
            Diagnostic::error(
                &dup.source,
                dup.pos,
                format!(
                    "duplicate policy `{}`: already defined at {}:{}",
                    dup.id(),
                    first.source,
                    first.pos
                ),
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut warnings = shadow::warnings(&docs);
    for doc in &docs {
        // A policy that only sets its targets' baseline mode still acts.
        if doc.ingress.is_none() && doc.egress.is_none() && doc.baseline.is_none() {
            warnings.push(Diagnostic::warning(
                &doc.source,
                doc.pos,
                format!(
                    "policy `{}` has neither `ingress` nor `egress`, so it has no effect",
                    doc.id()
                ),
            ));
        }
    }

    let mut policy_ids = Vec::with_capacity(docs.len());
    let mut rules = Vec::new();
    let mut kinds = Vec::new();
    let mut builders = [DirBuilder::default(), DirBuilder::default()];
    for (p, doc) in docs.iter().enumerate() {
        let p = p as u32;
        policy_ids.push(Arc::<str>::from(doc.id()));
        let targets: Vec<TargetKey> = doc.targets.iter().map(target_key).collect();
        for direction in Direction::ALL {
            let Some(doc_rules) = doc.rules(direction) else {
                continue;
            };
            let builder = &mut builders[direction as usize];
            for &t in &targets {
                builder.select(t, p, doc.mode);
            }
            for rule in doc_rules {
                let ordinal = rules.len() as u32;
                rules.push(RuleMeta {
                    policy: p,
                    name: rule.name.as_str().into(),
                    action: rule.action,
                    mode: doc.mode,
                    http: rule.http.clone().map(Vec::into_boxed_slice),
                });
                kinds.push(RuleKind {
                    action: rule.action,
                    mode: doc.mode,
                    has_http: rule.http.is_some(),
                });
                let ports = rule.ports.as_deref().unwrap_or(&[PortRange::ALL]);
                let mut add = |peer| {
                    for &t in &targets {
                        for r in ports {
                            let atom = Atom {
                                lo: r.lo,
                                hi: r.hi,
                                rule: ordinal,
                            };
                            builder.add(t, peer, atom);
                        }
                    }
                };
                match &rule.peers {
                    None => add(PeerKey::Any),
                    Some(list) => list.iter().map(peer_key).for_each(add),
                }
            }
        }
    }
    let [ingress, egress] = builders;
    let index = [ingress.build(&kinds), egress.build(&kinds)];
    let version = version_of(&docs, defaults.default_policy);
    let compiled = CompiledPolicy {
        docs,
        default_policy: defaults.default_policy,
        version,
        policy_ids,
        rules,
        index,
    };
    Ok((compiled, warnings))
}

fn target_key(t: &Target) -> TargetKey<'_> {
    match t {
        Target::Identity(IdMatch::Exact(id)) => TargetKey::Exact(id.as_str()),
        Target::Identity(IdMatch::Prefix(p)) => TargetKey::Prefix(p),
        Target::Namespace(ns) => TargetKey::Namespace(ns),
    }
}

fn peer_key(p: &PeerMatch) -> PeerKey<'_> {
    match p {
        PeerMatch::Identity(IdMatch::Exact(id)) => PeerKey::Exact(id.as_str()),
        PeerMatch::Identity(IdMatch::Prefix(p)) => PeerKey::Prefix(p),
        PeerMatch::Namespace(ns) => PeerKey::Namespace(ns),
        PeerMatch::Cidr(net) => PeerKey::Cidr(Cidr::from_net(net)),
    }
}

fn version_of(docs: &[PolicyDoc], default_policy: DefaultPolicy) -> String {
    let mut hasher = HashWriter(Sha256::new());
    hasher.0.update(default_policy.as_str());
    hasher.0.update([0]);
    // Streamed: a large set's JSON is never held whole.
    serde_json::to_writer(&mut hasher, docs).expect("policy documents serialize");
    let digest = hasher.0.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The documents that select `workload` (in either direction): what a
/// control plane streams to that workload's proxy.
pub fn docs_selecting<'a>(
    policy: &'a CompiledPolicy,
    workload: &'a crate::SpiffeId,
) -> impl Iterator<Item = &'a PolicyDoc> + 'a {
    policy.docs.iter().filter(move |d| d.selects(workload))
}

// The proxy shares one compiled policy across threads.
const _: fn() = || {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<CompiledPolicy>();
};
