//! YAML documents to validated `PolicyDoc`s. Every mistake becomes a located
//! diagnostic; parsing carries on so one run reports them all.

use std::collections::HashSet;
use std::sync::Arc;

use crate::diag::{quoted_list, unknown_name, Diagnostic};
use crate::model::{Action, Direction, Mode, PolicyDoc, Rule, Target, API_VERSION, KIND};
use crate::values;
use crate::yaml::{self, Kind, Node, Pos};

/// The fields each mapping accepts (the JSON Schema is checked against these).
pub(crate) mod fields {
    pub const DOC: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
    pub const METADATA: &[&str] = &["name", "namespace", "labels", "annotations"];
    pub const SPEC: &[&str] = &["targets", "mode", "ingress", "egress", "baseline"];
    pub const BASELINE: &[&str] = &["mode"];
    pub const TARGET: &[&str] = &["identity", "namespace"];
    pub const RULE: &[&str] = &["name", "action", "from", "to", "ports", "http"];
    /// `kubectl get -o yaml` output: `kind: List` and its `items`.
    pub const LIST: &[&str] = &["apiVersion", "kind", "metadata", "items"];
    /// A policy as the API server prints it: the document plus `status`.
    pub const SERVER_DOC: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
    /// Its metadata: the document's plus what the API server adds.
    pub const SERVER_METADATA: &[&str] = &[
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "finalizers",
        "ownerReferences",
        "generateName",
        "selfLink",
    ];
}
use fields::{
    BASELINE as BASELINE_FIELDS, DOC as DOC_FIELDS, METADATA as METADATA_FIELDS,
    RULE as RULE_FIELDS, SPEC as SPEC_FIELDS, TARGET as TARGET_FIELDS,
};

/// Parses and validates every document in `text`. `source_name` (usually
/// the file path) prefixes each diagnostic. On success, warnings are not
/// returned here; `compile` reports them.
pub fn parse_documents(source_name: &str, text: &str) -> Result<Vec<PolicyDoc>, Vec<Diagnostic>> {
    let mut cx = Cx::new(source_name);
    let mut docs = Vec::new();
    let parsed = yaml::parse_stream(text, |node| docs.extend(cx.document(&node)));
    if let Err(e) = parsed {
        cx.error(e.pos, e.message);
    }
    if cx.diags.is_empty() {
        Ok(docs)
    } else {
        cx.diags.sort_by_key(|d| d.pos);
        Err(cx.diags)
    }
}

/// Whether a document is `kind: List`.
fn is_list(node: &Node) -> bool {
    let Kind::Map(entries) = &node.kind else {
        return false;
    };
    entries.iter().any(|(k, v)| {
        matches!(&k.kind, Kind::Str(k) if k == "kind")
            && matches!(&v.kind, Kind::Str(v) if v == "List")
    })
}

/// Parsing context: the source name and the diagnostics found so far.
pub(crate) struct Cx {
    pub source: Arc<str>,
    pub diags: Vec<Diagnostic>,
}

impl Cx {
    pub fn new(source_name: &str) -> Self {
        Cx {
            source: source_name.into(),
            diags: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(&self.source, pos, message));
    }

    /// The entries of a mapping whose keys are all in `allowed`; reports
    /// unknown keys (with the nearest valid name) and non-mappings.
    pub fn fields<'n>(
        &mut self,
        node: &'n Node<'n>,
        what: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let Kind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                format!("{what} must be a mapping, found {}", node.kind.describe()),
            );
            return None;
        };
        let mut fields = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match &k.kind {
                Kind::Str(name) if allowed.contains(&name.as_ref()) => {
                    fields.push((name.as_ref(), k, v))
                }
                Kind::Str(name) => self.error(k.pos, unknown_name("field", name, allowed)),
                other => self.error(
                    k.pos,
                    format!("field names must be strings, found {}", other.describe()),
                ),
            }
        }
        Some(Fields {
            pos: node.pos,
            fields,
        })
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Str(s) => Some(s.clone().into_owned()),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, found {}", other.describe()),
                );
                None
            }
        }
    }

    /// A non-empty list; `what` names the field for the message.
    pub fn list<'n>(&mut self, node: &'n Node<'n>, what: &str) -> Option<&'n [Node<'n>]> {
        match &node.kind {
            Kind::Seq(items) if items.is_empty() => {
                self.error(
                    node.pos,
                    format!("`{what}` is empty; omit it or list at least one entry"),
                );
                None
            }
            Kind::Seq(items) => Some(items),
            other => {
                self.error(
                    node.pos,
                    format!("`{what}` must be a list, found {}", other.describe()),
                );
                None
            }
        }
    }

    /// A policy document, or a `List` of them as `kubectl get -o yaml`
    /// prints (each with the API server's metadata and `status`).
    fn document(&mut self, node: &Node) -> Vec<PolicyDoc> {
        if is_list(node) {
            return self.list_items(node);
        }
        self.policy(node, false).into_iter().collect()
    }

    fn list_items(&mut self, node: &Node) -> Vec<PolicyDoc> {
        let Some(f) = self.fields(node, "a List", fields::LIST) else {
            return Vec::new();
        };
        match f.get("apiVersion") {
            Some(v) => {
                if let Some(s) = self.string(v, "`apiVersion`") {
                    if s != "v1" {
                        self.error(
                            v.pos,
                            format!("unsupported apiVersion `{s}` for a List, expected `v1`"),
                        );
                    }
                }
            }
            None => self.error(f.pos, "missing field `apiVersion` (`v1`)"),
        }
        let Some(items) = f.require(self, "items") else {
            return Vec::new();
        };
        match &items.kind {
            Kind::Seq(items) => items.iter().filter_map(|i| self.policy(i, true)).collect(),
            // `items: null` is how an empty list can print.
            Kind::Null => Vec::new(),
            other => {
                self.error(
                    items.pos,
                    format!("`items` must be a list, found {}", other.describe()),
                );
                Vec::new()
            }
        }
    }

    /// One policy; `from_server` allows the fields the API server adds.
    fn policy(&mut self, node: &Node, from_server: bool) -> Option<PolicyDoc> {
        let (doc_fields, metadata_fields) = if from_server {
            (fields::SERVER_DOC, fields::SERVER_METADATA)
        } else {
            (DOC_FIELDS, METADATA_FIELDS)
        };
        let f = self.fields(node, "a policy document", doc_fields)?;
        let before = self.diags.len();
        match f.get("apiVersion") {
            Some(v) => {
                if let Some(s) = self.string(v, "`apiVersion`") {
                    if s != API_VERSION {
                        self.error(
                            v.pos,
                            format!("unsupported apiVersion `{s}`, expected `{API_VERSION}`"),
                        );
                    }
                }
            }
            None => self.error(
                f.pos,
                format!("missing field `apiVersion` (`{API_VERSION}`)"),
            ),
        }
        match f.get("kind") {
            Some(v) => {
                if let Some(s) = self.string(v, "`kind`") {
                    if s != KIND {
                        self.error(v.pos, format!("unsupported kind `{s}`, expected `{KIND}`"));
                    }
                }
            }
            None => self.error(f.pos, format!("missing field `kind` (`{KIND}`)")),
        }
        let (namespace, name) = self.metadata(&f, metadata_fields)?;
        let spec = f.require(self, "spec")?;
        let spec = self.fields(spec, "`spec`", SPEC_FIELDS)?;
        let targets = self.targets(&spec);
        let mode = spec
            .get("mode")
            .map(|m| self.mode(m))
            .unwrap_or(Some(Mode::Enforce));
        let ingress = spec
            .get("ingress")
            .map(|n| self.rules(n, Direction::Ingress));
        let egress = spec.get("egress").map(|n| self.rules(n, Direction::Egress));
        let baseline = spec.get("baseline").map(|n| self.baseline(n));
        if self.diags.len() > before {
            return None;
        }
        Some(PolicyDoc {
            source: self.source.clone(),
            pos: node.pos,
            namespace,
            name,
            targets: targets?,
            mode: mode?,
            ingress: ingress.map(Option::unwrap),
            egress: egress.map(Option::unwrap),
            baseline: baseline.flatten(),
        })
    }

    /// `baseline: {mode: off|learn|monitor|protect}`.
    fn baseline(&mut self, node: &Node) -> Option<crate::baseline::BaselineMode> {
        let f = self.fields(node, "`baseline`", BASELINE_FIELDS)?;
        let mode = f.require(self, "mode")?;
        let word = self.string(mode, "`baseline.mode`")?;
        match word.parse() {
            Ok(m) => Some(m),
            Err(_) => {
                let names = crate::baseline::BaselineMode::ALL.map(|m| m.as_str());
                self.error(mode.pos, unknown_name("baseline mode", &word, &names));
                None
            }
        }
    }

    fn metadata(&mut self, doc: &Fields, allowed: &[&str]) -> Option<(String, String)> {
        let meta = doc.require(self, "metadata")?;
        let meta = self.fields(meta, "`metadata`", allowed)?;
        let name = meta
            .require(self, "name")
            .and_then(|n| self.object_name(n, "`metadata.name`"));
        let ns = meta
            .require(self, "namespace")
            .and_then(|n| self.object_name(n, "`metadata.namespace`"));
        Some((ns?, name?))
    }

    /// A Kubernetes-style object name: lowercase letters, digits, `-` and `.`.
    fn object_name(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        match values::object_name(&s) {
            Ok(()) => Some(s),
            Err(e) => {
                self.error(node.pos, format!("{what} `{s}` {e}"));
                None
            }
        }
    }

    fn targets(&mut self, spec: &Fields) -> Option<Vec<Target>> {
        let Some(node) = spec.get("targets") else {
            self.error(
                spec.pos,
                "missing field `targets`: list the workloads this policy selects",
            );
            return None;
        };
        let items = match &node.kind {
            Kind::Seq(items) if items.is_empty() => {
                self.error(
                    node.pos,
                    "empty target list: a policy must select at least one workload",
                );
                return None;
            }
            _ => self.list(node, "targets")?,
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.target(item) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn target(&mut self, node: &Node) -> Option<Target> {
        let f = self.fields(node, "a target", TARGET_FIELDS)?;
        let (key, value) = f.exactly_one(self, "a target", TARGET_FIELDS)?;
        match key {
            "identity" => values::id_match(self, value).map(Target::Identity),
            _ => values::namespace(self, value).map(Target::Namespace),
        }
    }

    fn mode(&mut self, node: &Node) -> Option<Mode> {
        match self.string(node, "`mode`")?.as_str() {
            "enforce" => Some(Mode::Enforce),
            "audit" => Some(Mode::Audit),
            other => {
                self.error(node.pos, unknown_name("mode", other, &["enforce", "audit"]));
                None
            }
        }
    }

    fn rules(&mut self, node: &Node, direction: Direction) -> Option<Vec<Rule>> {
        let items = match &node.kind {
            // An empty list is meaningful: selected, nothing allowed.
            Kind::Seq(items) => items,
            Kind::Null => &[][..],
            other => {
                self.error(
                    node.pos,
                    format!(
                        "`{direction}` must be a list of rules, found {}",
                        other.describe()
                    ),
                );
                return None;
            }
        };
        let mut out: Vec<Rule> = Vec::with_capacity(items.len());
        let mut names: HashSet<String> = HashSet::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.rule(item, direction) {
                Some(r) => {
                    if !names.insert(r.name.clone()) {
                        self.error(
                            item.pos,
                            format!(
                                "duplicate {direction} rule name `{}` in this policy",
                                r.name
                            ),
                        );
                        ok = false;
                    }
                    out.push(r);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn rule(&mut self, node: &Node, direction: Direction) -> Option<Rule> {
        let (peers_key, wrong_key) = match direction {
            Direction::Ingress => ("from", "to"),
            Direction::Egress => ("to", "from"),
        };
        let before = self.diags.len();
        let f = self.fields(node, "a rule", RULE_FIELDS)?;
        if let Some(wrong) = f.key(wrong_key) {
            self.error(
                wrong.pos,
                format!("{direction} rules name their peers with `{peers_key}`, not `{wrong_key}`"),
            );
        }
        let name = f.require(self, "name").and_then(|n| self.rule_name(n));
        let action = f.require(self, "action").and_then(|n| self.action(n));
        let peers = f.get(peers_key).map(|n| values::peers(self, n, peers_key));
        let ports = f.get("ports").map(|n| values::ports(self, n));
        let http = f.get("http").map(|n| values::http(self, n));
        if self.diags.len() > before {
            return None;
        }
        Some(Rule {
            pos: node.pos,
            name: name?,
            action: action?,
            peers: peers.map(Option::unwrap),
            ports: ports.map(Option::unwrap),
            http: http.map(Option::unwrap),
        })
    }

    fn rule_name(&mut self, node: &Node) -> Option<String> {
        let s = self.string(node, "a rule `name`")?;
        let valid = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            self.error(
                node.pos,
                format!("rule name `{s}` may hold only letters, digits, `-`, `_` and `.`"),
            );
            return None;
        }
        Some(s)
    }

    fn action(&mut self, node: &Node) -> Option<Action> {
        match self.string(node, "`action`")?.as_str() {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            other => {
                self.error(node.pos, unknown_name("action", other, &["allow", "deny"]));
                None
            }
        }
    }
}

/// The known fields of one mapping.
pub(crate) struct Fields<'n> {
    pub pos: Pos,
    fields: Vec<(&'n str, &'n Node<'n>, &'n Node<'n>)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node<'n>> {
        self.fields
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, _, v)| *v)
    }

    /// The key node of field `name`, for errors about the field itself.
    pub fn key(&self, name: &str) -> Option<&'n Node<'n>> {
        self.fields
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, k, _)| *k)
    }

    pub fn require(&self, cx: &mut Cx, name: &str) -> Option<&'n Node<'n>> {
        let v = self.get(name);
        if v.is_none() {
            cx.error(self.pos, format!("missing field `{name}`"));
        }
        v
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'n str, &'n Node<'n>)> + '_ {
        self.fields.iter().map(|(k, _, v)| (*k, *v))
    }

    /// For one-of mappings (`identity` | `namespace` | `cidr`).
    pub fn exactly_one(
        &self,
        cx: &mut Cx,
        what: &str,
        allowed: &[&str],
    ) -> Option<(&'n str, &'n Node<'n>)> {
        let list = || quoted_list(allowed);
        match self.fields.as_slice() {
            [(k, _, v)] => Some((k, v)),
            [] => {
                cx.error(self.pos, format!("{what} needs exactly one of {}", list()));
                None
            }
            [_, (_, second, _), ..] => {
                cx.error(
                    second.pos,
                    format!(
                        "{what} takes exactly one of {}; split it into separate entries",
                        list()
                    ),
                );
                None
            }
        }
    }
}
