//! Segmentation-policy metrics: decisions, terminations and reloads.
//! Decision counters are labelled {policy, rule, peer} and cached lock-free
//! by a hash of those labels, so a decision seen before costs one atomic
//! load and no allocation.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use arc_swap::ArcSwap;
use palisade_policy::{Decision, Matched};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use palisade_policy::Direction;

use super::direction_label;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `namespace/name`, or `default` when no policy selects the workload.
    pub policy: String,
    /// The rule name; empty when a selecting policy had no matching rule;
    /// the default's name (`deny`, `all-authenticated`, ...) for `default`.
    pub rule: String,
    /// The peer's SPIFFE ID, or `unauthenticated` (address-only peers are
    /// not labelled by IP, to keep cardinality bounded).
    pub peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TerminateLabels {
    pub direction: &'static str,
    pub policy: String,
    pub rule: String,
    pub peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadErrorLabels {
    /// `file` or `control-plane`.
    pub source: &'static str,
    /// `unreadable`, `invalid`, `emptied` or `path_kind_changed`.
    pub reason: &'static str,
}

type Slot = Vec<(AuthzLabels, Counter)>;

/// One counter family keyed by {policy, rule, peer}, with a lock-free cache.
#[derive(Debug, Default)]
pub struct LabelledCounters {
    family: Family<AuthzLabels, Counter>,
    cache: ArcSwap<HashMap<u64, Slot>>,
    hasher: RandomState,
}

impl LabelledCounters {
    pub fn family(&self) -> Family<AuthzLabels, Counter> {
        self.family.clone()
    }

    /// The counter for these labels.
    pub fn get(&self, matched: &Matched, peer: &str) -> Counter {
        let (policy, rule) = (matched.policy_label(), matched.rule_label());
        let key = self.hasher.hash_one((policy, rule, peer));
        let hit = |slot: &Slot| {
            slot.iter()
                .find(|(l, _)| l.policy == policy && l.rule == rule && l.peer == peer)
                .map(|(_, c)| c.clone())
        };
        if let Some(c) = self.cache.load().get(&key).and_then(hit) {
            return c;
        }
        let labels = AuthzLabels {
            policy: policy.to_owned(),
            rule: rule.to_owned(),
            peer: peer.to_owned(),
        };
        let counter = self.family.get_or_create_owned(&labels);
        self.cache.rcu(|map| {
            let mut map = HashMap::clone(map);
            let slot = map.entry(key).or_default();
            if hit(slot).is_none() {
                slot.push((labels.clone(), counter.clone()));
            }
            map
        });
        counter
    }
}

/// `<prefix>_allow_total`, `<prefix>_deny_total`, `<prefix>_would_deny_total`
/// for one direction and layer, e.g. `inbound_tcp_authz`. Each decision
/// lands in exactly one of the three.
#[derive(Debug, Default)]
pub struct DecisionCounters {
    pub allow: LabelledCounters,
    pub deny: LabelledCounters,
    pub would_deny: LabelledCounters,
}

impl DecisionCounters {
    pub fn register(&self, registry: &mut Registry, prefix: &str, what: &str) {
        // The text encoder appends `_total` to counters itself.
        registry.register(
            format!("{prefix}_allow"),
            format!("{what} allowed, by policy, rule and peer"),
            self.allow.family(),
        );
        registry.register(
            format!("{prefix}_deny"),
            format!("{what} denied, by policy, rule and peer"),
            self.deny.family(),
        );
        registry.register(
            format!("{prefix}_would_deny"),
            format!(
                "{what} an audit-mode policy or the audit default would have denied (let through)"
            ),
            self.would_deny.family(),
        );
    }

    /// Counts one decision under the label of what made it.
    pub fn count(&self, d: &Decision, peer: &str) {
        let counters = if !d.is_allowed() {
            &self.deny
        } else if d.would_deny {
            &self.would_deny
        } else {
            &self.allow
        };
        counters.get(&d.matched, peer).inc();
    }
}

/// Everything about segmentation policy the proxy reports.
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    pub inbound_tcp: DecisionCounters,
    pub outbound_tcp: DecisionCounters,
    terminate: Family<TerminateLabels, Counter>,
    pub reloads: Counter,
    pub reload_errors: Family<ReloadErrorLabels, Counter>,
    pub file_reads: Counter,
}

impl PolicyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        self.inbound_tcp
            .register(registry, "inbound_tcp_authz", "Inbound connections");
        self.outbound_tcp
            .register(registry, "outbound_tcp_authz", "Outbound connections");
        registry.register(
            "tcp_authz_terminate",
            "Open connections closed because a new policy denies them",
            self.terminate.clone(),
        );
        registry.register(
            "policy_reloads",
            "New policy sets swapped in",
            self.reloads.clone(),
        );
        registry.register(
            "policy_reload_errors",
            "Policy updates rejected (the last good policy stays in force), by source and reason",
            self.reload_errors.clone(),
        );
        registry.register(
            "policy_file_reads",
            "Times the policy path was read (at start and after each change event)",
            self.file_reads.clone(),
        );
    }

    /// Counts a rejected policy update.
    pub fn reload_error(&self, source: &'static str, reason: &'static str) {
        self.reload_errors
            .get_or_create(&ReloadErrorLabels { source, reason })
            .inc();
    }

    pub fn tcp(&self, direction: Direction) -> &DecisionCounters {
        match direction {
            Direction::Ingress => &self.inbound_tcp,
            Direction::Egress => &self.outbound_tcp,
        }
    }

    /// Counts a live connection closed after a reload; off the hot path.
    pub fn terminated(&self, direction: Direction, d: &Decision, peer: &str) {
        self.terminate
            .get_or_create(&TerminateLabels {
                direction: direction_label(direction),
                policy: d.matched.policy_label().to_owned(),
                rule: d.matched.rule_label().to_owned(),
                peer: peer.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::{DefaultPolicy, Mode, Verdict};

    fn decision(verdict: Verdict, would_deny: bool, rule: &str) -> Decision {
        Decision {
            verdict,
            would_deny,
            matched: Matched::Rule {
                policy: "shop/db".into(),
                rule: rule.into(),
            },
            mode: Mode::Enforce,
            http_required: false,
        }
    }

    #[test]
    fn each_decision_lands_in_one_counter_with_its_labels() {
        let m = PolicyMetrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let c = &m.inbound_tcp;
        c.count(
            &decision(Verdict::Allow, false, "from-api"),
            "spiffe://td/api",
        );
        c.count(
            &decision(Verdict::Allow, false, "from-api"),
            "spiffe://td/api",
        );
        c.count(&decision(Verdict::Deny, false, "no-fe"), "spiffe://td/fe");
        c.count(
            &decision(Verdict::Allow, true, "audit-x"),
            "unauthenticated",
        );
        let default = Decision {
            matched: Matched::Default(DefaultPolicy::Deny),
            ..decision(Verdict::Deny, false, "")
        };
        m.outbound_tcp.count(&default, "unauthenticated");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for line in [
            r#"inbound_tcp_authz_allow_total{policy="shop/db",rule="from-api",peer="spiffe://td/api"} 2"#,
            r#"inbound_tcp_authz_deny_total{policy="shop/db",rule="no-fe",peer="spiffe://td/fe"} 1"#,
            r#"inbound_tcp_authz_would_deny_total{policy="shop/db",rule="audit-x",peer="unauthenticated"} 1"#,
            r#"outbound_tcp_authz_deny_total{policy="default",rule="deny",peer="unauthenticated"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // A second lookup is the cached series.
        let a = c.allow.get(
            &decision(Verdict::Allow, false, "from-api").matched,
            "spiffe://td/api",
        );
        assert_eq!(a.get(), 2);
    }
}
