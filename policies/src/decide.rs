//! `decide()`: the one authorization function the proxy, the CLI and the
//! benches all call. Pure, allocation-free, and independent of rule count.

use crate::compile::CompiledPolicy;
use crate::decision::{Decision, DefaultPolicy, HttpInfo, Matched, Peer, Request, Verdict};
use crate::http::{fit_any, Checked, Fit};
use crate::index::{Best, HttpRules, NONE};
use crate::model::{Action, Mode};

/// Authorizes one connection (`req.http == None`) or one HTTP request.
///
/// For a selected workload: any matching deny rule wins, then any matching
/// allow rule, else deny. A workload no policy selects in `req.direction`
/// gets the compiled default. Audit-mode policies never change the verdict;
/// they set `would_deny`. At L4, rules restricted by `http` do not deny, and
/// allow only pending per-request checks (`http_required`); any enforce-mode
/// `http` rule for this peer and port, allow or deny, makes an allowed
/// connection `http_required`, so opaque bytes never skip it. Per request,
/// a path or host not in normal form makes a deny rule apply and an allow
/// rule not.
pub fn decide(policy: &CompiledPolicy, req: &Request<'_>) -> Decision {
    let mut acc = Acc::default();
    policy.dir(req.direction).for_each(req.local, |slot| {
        for i in 0..2 {
            acc.selected[i] = acc.selected[i].min(slot.selected[i]);
        }
        slot.peers.for_each(req.local, req.peer, |table| {
            let (best, http_rules) = table.lookup(req.port);
            acc.add(best, http_rules, req.http, policy);
        });
    });
    acc.finish(policy, req.peer)
}

/// The lowest-ordinal match of each kind; `[0]` enforce-mode only, `[1]` all.
struct Acc {
    selected: [u32; 2],
    deny: [u32; 2],
    allow: [u32; 2],
    /// At L4: allow rules restricted to HTTP.
    http_allow: [u32; 2],
    /// At L4: an enforce-mode rule restricted to HTTP applies here.
    http_enforced: bool,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            selected: [NONE; 2],
            deny: [NONE; 2],
            allow: [NONE; 2],
            http_allow: [NONE; 2],
            http_enforced: false,
        }
    }
}

/// One evaluation (enforce-only or all policies) of a selected workload.
#[derive(Clone, Copy)]
enum Outcome {
    Rule {
        verdict: Verdict,
        rule: u32,
        http_required: bool,
    },
    NoRule {
        policy: u32,
    },
}

impl Acc {
    fn add(
        &mut self,
        best: Best,
        http_rules: HttpRules<'_>,
        http: Option<HttpInfo<'_>>,
        policy: &CompiledPolicy,
    ) {
        for i in 0..2 {
            self.deny[i] = self.deny[i].min(best.deny[i]);
            self.allow[i] = self.allow[i].min(best.allow[i]);
        }
        let http = http.map(Checked::new);
        for &r in http_rules {
            let meta = &policy.rules[r as usize];
            let enforce = meta.mode == Mode::Enforce;
            let action = meta.action;
            match http {
                // L4: HTTP-restricted allows allow pending per-request checks;
                // HTTP-restricted denies wait for the request.
                None => {
                    self.http_enforced |= enforce;
                    if action == Action::Allow {
                        if enforce {
                            self.http_allow[0] = self.http_allow[0].min(r);
                        }
                        self.http_allow[1] = self.http_allow[1].min(r);
                    }
                }
                Some(ref info) => {
                    let rules = meta.http.as_deref().unwrap_or(&[]);
                    let applies = match fit_any(rules, info) {
                        Fit::Match => true,
                        Fit::Ambiguous => action == Action::Deny,
                        Fit::NoMatch => false,
                    };
                    if !applies {
                        continue;
                    }
                    let slot = if action == Action::Deny {
                        &mut self.deny
                    } else {
                        &mut self.allow
                    };
                    if enforce {
                        slot[0] = slot[0].min(r);
                    }
                    slot[1] = slot[1].min(r);
                }
            }
        }
    }

    fn outcome(&self, i: usize) -> Option<Outcome> {
        if self.selected[i] == NONE {
            return None;
        }
        Some(if self.deny[i] != NONE {
            Outcome::Rule {
                verdict: Verdict::Deny,
                rule: self.deny[i],
                http_required: false,
            }
        } else if self.allow[i] != NONE {
            Outcome::Rule {
                verdict: Verdict::Allow,
                rule: self.allow[i],
                http_required: self.http_enforced,
            }
        } else if self.http_allow[i] != NONE {
            Outcome::Rule {
                verdict: Verdict::Allow,
                rule: self.http_allow[i],
                http_required: true,
            }
        } else {
            Outcome::NoRule {
                policy: self.selected[i],
            }
        })
    }

    fn finish(&self, policy: &CompiledPolicy, peer: Peer<'_>) -> Decision {
        let audit = self.outcome(1);
        let Some(enforced) = self.outcome(0) else {
            return match audit {
                // Only audit-mode policies select the workload: the default
                // decides, the audit policies report.
                Some(a) => from_default_with_audit(policy, peer, a),
                None => from_default(policy.default_policy(), peer),
            };
        };
        let (verdict, matched, http_required) = resolve(policy, enforced);
        if verdict == Verdict::Deny {
            return Decision {
                verdict,
                would_deny: false,
                matched,
                mode: Mode::Enforce,
                http_required: false,
            };
        }
        match audit.map(|a| resolve(policy, a)) {
            Some((Verdict::Deny, audit_matched, _)) => Decision {
                verdict,
                would_deny: true,
                matched: audit_matched,
                mode: Mode::Audit,
                http_required,
            },
            _ => Decision {
                verdict,
                would_deny: false,
                matched,
                mode: Mode::Enforce,
                http_required,
            },
        }
    }
}

fn resolve(policy: &CompiledPolicy, outcome: Outcome) -> (Verdict, Matched, bool) {
    match outcome {
        Outcome::Rule {
            verdict,
            rule,
            http_required,
        } => {
            let meta = &policy.rules[rule as usize];
            let matched = Matched::Rule {
                policy: policy.policy_ids[meta.policy as usize].clone(),
                rule: meta.name.clone(),
            };
            (verdict, matched, http_required)
        }
        Outcome::NoRule { policy: p } => (
            Verdict::Deny,
            Matched::NoRule {
                policy: policy.policy_ids[p as usize].clone(),
            },
            false,
        ),
    }
}

fn from_default(default: DefaultPolicy, peer: Peer<'_>) -> Decision {
    let (verdict, would_deny, mode) = match (default, peer) {
        (DefaultPolicy::Deny, _) | (DefaultPolicy::AllAuthenticated, Peer::Address(_)) => {
            (Verdict::Deny, false, Mode::Enforce)
        }
        (DefaultPolicy::AllAuthenticated, Peer::Identity(_))
        | (DefaultPolicy::AllUnauthenticated, _) => (Verdict::Allow, false, Mode::Enforce),
        (DefaultPolicy::Audit, _) => (Verdict::Allow, true, Mode::Audit),
    };
    Decision {
        verdict,
        would_deny,
        matched: Matched::Default(default),
        mode,
        http_required: false,
    }
}

fn from_default_with_audit(policy: &CompiledPolicy, peer: Peer<'_>, audit: Outcome) -> Decision {
    let base = from_default(policy.default_policy(), peer);
    if base.verdict == Verdict::Deny {
        return base;
    }
    let (audit_verdict, matched, _) = resolve(policy, audit);
    Decision {
        verdict: Verdict::Allow,
        would_deny: audit_verdict == Verdict::Deny,
        matched,
        mode: Mode::Audit,
        http_required: false,
    }
}
