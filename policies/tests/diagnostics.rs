//! Every kind of mistake gets a `file:line:col` message that says what is
//! wrong and, where it can, what was meant.

use palisade_policy::{compile, parse_documents, DefaultPolicy, Defaults, Diagnostic, Severity};

const HEADER: &str = "apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: p, namespace: shop}\n";

/// A document whose `spec` is `spec` (indented by the caller).
fn doc(spec: &str) -> String {
    format!("{HEADER}spec:\n{spec}")
}

const TARGETS: &str = "  targets: [{identity: spiffe://td/ns/shop/sa/api}]\n";

fn errors(text: &str) -> Vec<String> {
    parse_documents("shop.yaml", text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn single_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

/// The warnings of a valid document, compiled.
fn warnings(text: &str) -> Vec<Diagnostic> {
    let docs = parse_documents("shop.yaml", text).unwrap();
    compile(docs, Defaults::new(DefaultPolicy::Deny)).unwrap().1
}

#[test]
fn unknown_field_suggests_the_nearest_valid_name() {
    let text = doc(&format!(
        "{TARGETS}  ingress:\n    - name: r\n      action: allow\n      prots: [80]\n"
    ));
    assert_eq!(
        single_error(&text),
        "shop.yaml:9:7: error: unknown field `prots`, did you mean `ports`? expected one of `name`, `action`, `from`, `to`, `ports`, `http`"
    );
}

#[test]
fn unknown_top_level_field_is_located() {
    let text = format!("{HEADER}spec:\n{TARGETS}  ingres: []\n");
    assert_eq!(
        single_error(&text),
        "shop.yaml:6:3: error: unknown field `ingres`, did you mean `ingress`? expected one of `targets`, `mode`, `ingress`, `egress`, `baseline`"
    );
}

#[test]
fn bad_cidr_names_the_value_and_the_fix() {
    let text = doc(&format!("{TARGETS}  ingress:\n    - name: r\n      action: allow\n      from: [{{cidr: 10.1.0.1/16}}]\n"));
    assert_eq!(
        single_error(&text),
        "shop.yaml:9:21: error: bad CIDR `10.1.0.1/16`: host bits are set after the prefix; did you mean `10.1.0.0/16`?"
    );
    let text = doc(&format!("{TARGETS}  ingress:\n    - name: r\n      action: allow\n      from: [{{cidr: 10.1.0/33}}]\n"));
    assert!(single_error(&text).starts_with("shop.yaml:9:21: error: bad CIDR `10.1.0/33`"));
}

#[test]
fn bad_spiffe_id_gives_the_spec_reason() {
    let text =
        doc("  targets: [{identity: spiffe://Cluster.local/ns/shop/sa/api}]\n  ingress: []\n");
    assert_eq!(
        single_error(&text),
        "shop.yaml:5:24: error: bad SPIFFE ID `spiffe://Cluster.local/ns/shop/sa/api`: trust domain may hold only lowercase letters, digits, `.`, `-` and `_` (found 'C')"
    );
    let text = doc("  targets: [{identity: spiffe://td/ns/*/sa/api}]\n  ingress: []\n");
    assert!(single_error(&text).contains("`*` is only allowed as a final `/*` segment"));
}

#[test]
fn port_out_of_range_and_backwards_ranges() {
    let text = doc(&format!("{TARGETS}  ingress:\n    - name: r\n      action: allow\n      ports: [0, 70000, \"9010-9000\", \"80-x\"]\n"));
    assert_eq!(
        errors(&text),
        [
            "shop.yaml:9:15: error: port 0 is out of range 1-65535",
            "shop.yaml:9:18: error: port 70000 is out of range 1-65535",
            "shop.yaml:9:25: error: port range `9010-9000` is backwards; did you mean `9000-9010`?",
            "shop.yaml:9:38: error: bad port range `80-x`: `x` is not a port number",
        ]
    );
}

#[test]
fn empty_target_list_is_an_error() {
    let text = doc("  targets: []\n  ingress: []\n");
    assert_eq!(
        single_error(&text),
        "shop.yaml:5:12: error: empty target list: a policy must select at least one workload"
    );
    let text = doc("  ingress: []\n");
    assert!(single_error(&text).starts_with("shop.yaml:5:3: error: missing field `targets`"));
}

#[test]
fn bad_action_and_mode_suggest_valid_values() {
    let text = doc(&format!(
        "{TARGETS}  mode: enforcing\n  ingress:\n    - name: r\n      action: alow\n"
    ));
    assert_eq!(
        errors(&text),
        [
            "shop.yaml:6:9: error: unknown mode `enforcing`, did you mean `enforce`? expected one of `enforce`, `audit`",
            "shop.yaml:9:15: error: unknown action `alow`, did you mean `allow`? expected one of `allow`, `deny`",
        ]
    );
}

#[test]
fn a_policy_without_rules_warns_unless_it_sets_a_baseline_mode() {
    let bare = warnings(&doc(TARGETS));
    assert_eq!(bare.len(), 1, "{bare:#?}");
    assert!(bare[0].to_string().contains("has no effect"), "{}", bare[0]);
    let moded = warnings(&doc(&format!("{TARGETS}  baseline: {{mode: protect}}\n")));
    assert!(moded.is_empty(), "{moded:#?}");
}

#[test]
fn a_baseline_mode_per_target_is_read_and_a_bad_one_is_located() {
    let ok = doc(&format!("{TARGETS}  baseline: {{mode: protect}}\n"));
    let docs = parse_documents("shop.yaml", &ok).unwrap();
    assert_eq!(
        docs[0].baseline,
        Some(palisade_policy::baseline::BaselineMode::Protect)
    );
    let none = parse_documents("shop.yaml", &doc(TARGETS)).unwrap();
    assert_eq!(none[0].baseline, None);
    assert_eq!(
        single_error(&doc(&format!("{TARGETS}  baseline: {{mode: montor}}\n"))),
        "shop.yaml:6:20: error: unknown baseline mode `montor`, did you mean `monitor`? \
         expected one of `off`, `learn`, `monitor`, `protect`"
    );
    let e = errors(&doc(&format!("{TARGETS}  baseline: {{mdoe: learn}}\n")));
    assert!(
        e.iter()
            .any(|e| e.contains("unknown field `mdoe`, did you mean `mode`?")),
        "{e:?}"
    );
}

#[test]
fn peers_key_for_the_other_direction_is_explained() {
    let text = doc(&format!(
        "{TARGETS}  ingress:\n    - name: r\n      action: allow\n      to: [{{namespace: x}}]\n"
    ));
    assert_eq!(
        single_error(&text),
        "shop.yaml:9:7: error: ingress rules name their peers with `from`, not `to`"
    );
}

#[test]
fn yaml_syntax_errors_are_located() {
    let text = doc(&format!("{TARGETS}  ingress: [\n"));
    let e = single_error(&text);
    assert!(e.starts_with("shop.yaml:6:12: error: "), "{e}");
}

#[test]
fn wrong_api_version_and_missing_metadata() {
    let text = "apiVersion: v1\nkind: SegmentationPolicy\nspec: {}\n";
    assert_eq!(
        errors(text),
        [
            "shop.yaml:1:1: error: missing field `metadata`",
            "shop.yaml:1:13: error: unsupported apiVersion `v1`, expected `palisade.dev/v1alpha1`",
        ]
    );
}

#[test]
fn one_of_entries_take_exactly_one_key() {
    let text = doc("  targets: [{identity: spiffe://td/ns/a/sa/b, namespace: a}]\n  ingress: []\n");
    assert_eq!(
        single_error(&text),
        "shop.yaml:5:47: error: a target takes exactly one of `identity`, `namespace`; split it into separate entries"
    );
}

#[test]
fn http_values_are_checked() {
    let text = doc(&format!(
        "{TARGETS}  ingress:\n    - name: r\n      action: allow\n      http:\n        - methods: [get]\n          paths: [v1, \"/a/*/b\", \"/a/{{id}}/b/{{x_2}}/*\", \"/a/x{{id}}\", \"/a/{{}}\"]\n"
    ));
    assert_eq!(
        errors(&text),
        [
            "shop.yaml:10:21: error: HTTP method `get` must be uppercase: `GET`",
            "shop.yaml:11:19: error: bad HTTP path `v1`: a path starts with `/`",
            "shop.yaml:11:23: error: bad HTTP path `/a/*/b`: `*` is only allowed as a final `/*` (a prefix match); write `{name}` for one segment",
            "shop.yaml:11:54: error: bad HTTP path `/a/x{id}`: `{` and `}` only write a whole-segment placeholder such as `{id}` (letters, digits, `_`), which matches exactly one segment",
            "shop.yaml:11:66: error: bad HTTP path `/a/{}`: `{` and `}` only write a whole-segment placeholder such as `{id}` (letters, digits, `_`), which matches exactly one segment",
        ]
    );
}

#[test]
fn a_path_or_host_that_no_normalized_request_can_match_is_an_error() {
    let text = doc(&format!(
        "{TARGETS}  ingress:\n    - name: r\n      action: deny\n      http:\n        - paths: [\"/a/../admin/*\", \"/%61dmin\", \"/ok/*\"]\n          hosts: [admin.demo.]\n"
    ));
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].contains("bad HTTP path `/a/../admin/*`")
            && errs[0].ends_with("did you mean `/admin/*`?"),
        "{}",
        errs[0]
    );
    assert!(errs[1].ends_with("did you mean `/admin`?"), "{}", errs[1]);
    assert!(errs[2].ends_with("bad host `admin.demo.`: requests are matched without a trailing dot; write `admin.demo`"), "{}", errs[2]);
}

#[test]
fn duplicate_rule_names_within_a_policy_are_rejected() {
    let text = doc(&format!(
        "{TARGETS}  ingress:\n    - {{name: r, action: allow}}\n    - {{name: r, action: deny}}\n"
    ));
    assert_eq!(
        single_error(&text),
        "shop.yaml:8:7: error: duplicate ingress rule name `r` in this policy"
    );
}

#[test]
fn allow_shadowed_by_deny_is_a_warning() {
    let text = doc(&format!(
        "{TARGETS}  ingress:\n    - name: block-shop\n      action: deny\n      from: [{{namespace: shop}}]\n    - name: frontend\n      action: allow\n      from: [{{identity: spiffe://td/ns/shop/sa/frontend}}]\n      ports: [8080]\n"
    ));
    let warnings = warnings(&text);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert_eq!(
        warnings[0].to_string(),
        "shop.yaml:10:7: warning: ingress allow rule `frontend` never applies: deny rule `block-shop` of policy shop/p (shop.yaml:7:7) matches everything it does, and deny wins"
    );
}

#[test]
fn partially_overlapping_deny_is_not_a_shadow() {
    let text = doc(&format!(
        "{TARGETS}  ingress:\n    - name: block\n      action: deny\n      from: [{{namespace: shop}}]\n      ports: [8080]\n    - name: frontend\n      action: allow\n      from: [{{identity: spiffe://td/ns/shop/sa/frontend}}]\n      ports: [8080, 8443]\n"
    ));
    let warnings = warnings(&text);
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn a_deny_with_placeholders_shadows_exactly_the_paths_it_covers() {
    let rules = |deny: &str, allow: &str| {
        doc(&format!(
            "{TARGETS}  ingress:\n    - {{name: d, action: deny, http: [{{paths: [\"{deny}\"]}}]}}\n    \
             - {{name: a, action: allow, http: [{{paths: [\"{allow}\"]}}]}}\n"
        ))
    };
    for (deny, allow) in [
        ("/admin/{id}/*", "/admin/{x}/keys"),
        ("/admin/{id}", "/admin/7"),
        ("/admin/*", "/admin/{id}/keys"),
        ("/{a}/{b}", "/admin/{id}"),
    ] {
        let w = warnings(&rules(deny, allow));
        assert_eq!(w.len(), 1, "{deny} shadows {allow}: {w:#?}");
    }
    for (deny, allow) in [
        ("/admin/{id}", "/admin/{id}/keys"),
        ("/admin/{id}", "/admin/{id}/*"),
        ("/admin/7", "/admin/{id}"),
        ("/admin/{id}/keys", "/admin/{id}/*"),
    ] {
        let w = warnings(&rules(deny, allow));
        assert!(w.is_empty(), "{deny} does not shadow {allow}: {w:#?}");
    }
}

#[test]
fn every_mistake_in_a_file_is_reported_in_one_run() {
    let text = doc("  targets: [{identity: nope}]\n  mode: loud\n  egress:\n    - name: r\n      action: allow\n      ports: [99999]\n");
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn shadows_are_found_among_thousands_of_unrelated_denies() {
    // A thousand denies on the same workload for other peers come first;
    // the covering denies (a namespace on two single ports, a supernet)
    // must still be found.
    let mut spec = format!("{TARGETS}  ingress:\n");
    for i in 0..1000 {
        spec += &format!(
            "    - {{name: d{i}, action: deny, from: [{{identity: spiffe://td/ns/x/sa/p{i}}}], ports: [80]}}\n"
        );
    }
    spec += "    - {name: block-web, action: deny, from: [{namespace: web}], ports: [80, 81]}\n";
    spec += "    - {name: block-net, action: deny, from: [{cidr: 10.0.0.0/8}]}\n";
    spec += "    - {name: web, action: allow, from: [{identity: spiffe://td/ns/web/sa/ui}], ports: [\"80-81\"]}\n";
    spec += "    - {name: net, action: allow, from: [{cidr: 10.1.2.0/24}], ports: [443]}\n";
    spec += "    - {name: open, action: allow, from: [{identity: spiffe://td/ns/web/sa/ui}], ports: [\"80-82\"]}\n";
    let warnings = warnings(&doc(&spec));
    let shadowed: Vec<String> = warnings
        .iter()
        .map(|w| w.to_string())
        .map(|w| w.split(" never applies: ").next().unwrap().to_owned())
        .collect();
    assert_eq!(
        shadowed,
        [
            "shop.yaml:1009:7: warning: ingress allow rule `web`",
            "shop.yaml:1010:7: warning: ingress allow rule `net`",
        ],
        "{warnings:#?}"
    );
    assert!(warnings[0].to_string().contains("deny rule `block-web`"));
    assert!(warnings[1].to_string().contains("deny rule `block-net`"));
}

/// `kubectl get -o yaml` prints a `List`; its items may carry what the API
/// server adds, and nothing else.
#[test]
fn a_list_of_server_objects_parses_and_its_mistakes_are_located() {
    let item = |extra: &str| {
        format!(
            "- apiVersion: palisade.dev/v1alpha1\n  kind: SegmentationPolicy\n  metadata: {{name: p, namespace: shop, uid: u, resourceVersion: \"1\", generation: 2{extra}}}\n  spec:\n    targets: [{{identity: spiffe://td/ns/shop/sa/api}}]\n  status: {{observedGeneration: 2}}\n"
        )
    };
    let list = |items: &str| {
        format!("apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: \"\"}}\nitems:\n{items}")
    };
    let docs = parse_documents("live.yaml", &list(&(item("") + &item("")))).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].pos.line, 11);

    assert_eq!(
        single_error(&list(&item(", colour: red"))),
        "shop.yaml:7:85: error: unknown field `colour`, expected one of `name`, `namespace`, `labels`, `annotations`, `uid`, `resourceVersion`, `generation`, `creationTimestamp`, `deletionTimestamp`, `deletionGracePeriodSeconds`, `managedFields`, `finalizers`, `ownerReferences`, `generateName`, `selfLink`"
    );
    assert_eq!(
        single_error("apiVersion: v2\nkind: List\nitems: []\n"),
        "shop.yaml:1:13: error: unsupported apiVersion `v2` for a List, expected `v1`"
    );
    assert_eq!(
        single_error("apiVersion: v1\nkind: List\nitems: {a: 1}\n"),
        "shop.yaml:3:8: error: `items` must be a list, found a mapping"
    );
    // Outside a List, a policy file takes only the document's own fields.
    let plain = format!("{HEADER}spec:\n{TARGETS}status: {{}}\n");
    assert!(single_error(&plain).contains("unknown field `status`"));
}
