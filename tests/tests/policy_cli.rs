//! `palisadectl policy check | explain | test | diff`, run as the real binary
//! against real files, the way a network team's CI runs it.

use std::path::{Path, PathBuf};

use palisade_tests::ctl::{palisadectl, Run};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples")
}

fn shop() -> String {
    examples().join("shop").display().to_string()
}

/// `palisadectl policy explain` of a flow from `from` to `to` on `port`
/// under `policy`, then `more` flags.
fn explain(policy: &str, from: &str, to: &str, port: &str, more: &[&str]) -> Run {
    let mut args = vec![
        "policy", "explain", "--policy", policy, "--from", from, "--to", to, "--port", port,
    ];
    args.extend_from_slice(more);
    palisadectl(&args)
}

fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{sa}")
}

/// A `shop` policy file with the given `spec:` body lines, in a directory
/// of its own.
fn policy_file(name: &str, spec: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    let text = format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
    );
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

#[test]
fn check_accepts_the_examples_with_exit_zero() {
    let demo = examples().join("demo.yaml").display().to_string();
    palisadectl(&["policy", "check", &shop(), &demo])
        .exits(0)
        .prints("ok: 9 policies, 16 rules in 6 file(s)");
}

#[test]
fn check_rejects_mistakes_with_file_line_col_and_exit_one() {
    let (dir, file) = policy_file(
        "api",
        "  targets: [{identity: spiffe://cluster.local/ns/shop/sa/api}]\n  ingress:\n    - name: from-frontend\n      action: allow\n      from: [{cidr: 10.1.0.1/16}]\n      prots: [8080]\n",
    );
    let f = file.display();
    palisadectl(&["policy", "check", dir.path().to_str().unwrap()])
        .exits(1)
        .prints(&format!("{f}:9:21: error: bad CIDR `10.1.0.1/16`: host bits are set after the prefix; did you mean `10.1.0.0/16`?"))
        .prints(&format!("{f}:10:7: error: unknown field `prots`, did you mean `ports`?"));
}

/// What `kubectl get segmentationpolicies -A -o yaml` prints: a `List`
/// whose items carry the API server's metadata and the control plane's
/// status. `{bad}` goes into the second item's spec.
fn kubectl_list(bad: &str) -> String {
    format!(
        r#"apiVersion: v1
items:
- apiVersion: palisade.dev/v1alpha1
  kind: SegmentationPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {{"apiVersion":"palisade.dev/v1alpha1","kind":"SegmentationPolicy"}}
    creationTimestamp: "2026-11-30T09:12:44Z"
    generation: 3
    managedFields:
    - apiVersion: palisade.dev/v1alpha1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:targets: {{}}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2026-11-30T09:12:44Z"
    name: api
    namespace: shop
    resourceVersion: "48211"
    uid: 6b1c8f0e-2f4c-4b9e-9d55-0c2f4e1b7a10
  spec:
    mode: enforce
    targets:
    - identity: spiffe://cluster.local/ns/shop/sa/api
    ingress:
    - name: from-frontend
      action: allow
      from:
      - identity: spiffe://cluster.local/ns/shop/sa/frontend
      ports: [8080]
  status:
    observedGeneration: 3
    conditions:
    - type: Accepted
      status: "True"
      reason: Valid
      message: ""
      lastTransitionTime: "2026-11-30T09:12:45Z"
- apiVersion: palisade.dev/v1alpha1
  kind: SegmentationPolicy
  metadata:
    creationTimestamp: "2026-11-30T09:13:02Z"
    generation: 1
    name: db
    namespace: shop
    resourceVersion: "48230"
    uid: 0a3e2d71-93b5-4a8f-8f7e-5d0b6f1c2e44
  spec:
    targets:
    - identity: spiffe://cluster.local/ns/shop/sa/db
    egress: []
{bad}kind: List
metadata:
  resourceVersion: ""
"#
    )
}

#[test]
fn check_accepts_what_kubectl_get_prints() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.yaml");
    std::fs::write(&file, kubectl_list("")).unwrap();
    palisadectl(&["policy", "check", file.to_str().unwrap()])
        .exits(0)
        .prints("ok: 2 policies, 1 rules in 1 file(s)");
}

#[test]
fn check_of_a_kubectl_list_names_the_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.yaml");
    let bad = "    ingress:\n    - name: x\n      action: permit\n  spec2: {}\n";
    std::fs::write(&file, kubectl_list(bad)).unwrap();
    let f = file.display();
    palisadectl(&["policy", "check", file.to_str().unwrap()])
        .exits(1)
        .prints(&format!(
            "{f}:57:15: error: unknown action `permit`, expected one of `allow`, `deny`"
        ))
        .prints(&format!("{f}:58:3: error: unknown field `spec2`, did you mean `spec`? expected one of `apiVersion`, `kind`, `metadata`, `spec`, `status`"));
}

#[test]
fn check_of_an_empty_directory_warns_that_a_proxy_refuses_it_without_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    palisadectl(&["policy", "check", path])
        .exits(0)
        .prints("ok: 0 policies")
        .prints("warning: no policy document")
        .prints(".palisade-allow-empty");
    std::fs::write(dir.path().join(".palisade-allow-empty"), "").unwrap();
    palisadectl(&["policy", "check", path])
        .exits(0)
        .prints("note: no policy document, and .palisade-allow-empty is present");
}

#[test]
fn check_prints_shadow_warnings_but_passes() {
    let (_dir, file) = policy_file(
        "db",
        "  targets: [{namespace: shop}]\n  ingress:\n    - {name: nobody, action: deny}\n    - {name: api, action: allow, from: [{namespace: shop}], ports: [5432]}\n",
    );
    palisadectl(&["policy", "check", file.to_str().unwrap()])
        .exits(0)
        .prints(&format!(
            "{}:8:7: warning: ingress allow rule `api` never applies",
            file.display()
        ))
        .prints("1 warning(s)");
}

#[test]
fn explain_names_the_policy_that_denies_each_side() {
    let (fe, db) = (id("frontend"), id("db"));
    explain(&shop(), &fe, &db, "5432", &[])
        .exits(0)
        .prints(&format!("egress at {fe} (peer {db}): DENY"))
        .prints("policy shop/db selects the workload, so it is default-deny")
        .prints(&format!("result: DENY (egress at {fe}: shop/frontend)"));
}

#[test]
fn explain_json_reports_the_allowing_rules_for_a_request() {
    let request = [
        "--method",
        "POST",
        "--path",
        "/v1/refunds/42",
        "--output",
        "json",
    ];
    let v = explain(&shop(), &id("api"), &id("payments"), "8080", &request)
        .exits(0)
        .json();
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["checks"][0]["direction"], "egress");
    assert_eq!(v["checks"][0]["connection"]["rule"], "to-payments");
    assert_eq!(v["checks"][1]["direction"], "ingress");
    assert_eq!(v["checks"][1]["connection"]["http_required"], true);
    assert_eq!(v["checks"][1]["request"]["policy"], "shop/payments");
    assert_eq!(v["checks"][1]["request"]["rule"], "api-charges");
}

#[test]
fn explain_one_direction_with_an_address_peer() {
    let flags = [
        "--direction",
        "ingress",
        "--default",
        "all-unauthenticated",
        "--output",
        "json",
    ];
    let v = explain(&shop(), "198.51.100.7", &id("frontend"), "8080", &flags)
        .exits(0)
        .json();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["checks"].as_array().unwrap().len(), 1);
    assert_eq!(v["checks"][0]["connection"]["matched"], "no-rule");
    assert_eq!(v["checks"][0]["connection"]["policy"], "shop/frontend");
}

/// Allow `frontend` at L4, deny `/admin/*` per request: what the proxy does.
fn admin_deny_policy() -> (tempfile::TempDir, String) {
    let (dir, file) = policy_file(
        "api",
        &format!(
            "  targets: [{{identity: {}}}]\n  ingress:\n    - name: frontend\n      action: allow\n      \
             from: [{{identity: {}}}]\n    - name: no-admin\n      action: deny\n      http:\n        \
             - paths: [\"/admin/*\"]\n",
            id("api"),
            id("frontend")
        ),
    );
    (dir, file.display().to_string())
}

#[test]
fn explain_normalizes_the_request_as_the_proxy_does_and_shows_the_400() {
    let (_dir, policy) = admin_deny_policy();
    let (from, to) = (id("frontend"), id("api"));
    let request = |extra: &[&str]| {
        let args = [&["--direction", "ingress"], extra].concat();
        explain(&policy, &from, &to, "8080", &args).exits(0)
    };
    request(&[
        "--path",
        "/public/%2e%2e//admin/./x?q=1",
        "--host",
        "API.shop.",
    ])
    .prints("normalized: GET /admin/x?q=1 (host api.shop)")
    .prints("request:    deny: rule `no-admin`")
    .prints("result: DENY");
    request(&["--path", "/admin%2fx"])
        .prints("rejected: 400 before any rule (escaped_slash)")
        .prints("result: DENY (rejected with 400: escaped_slash)");
    request(&["--path", "/admin;x=1/y"]).prints("(path_parameters)");
    request(&["--path", "/admin/x#frag"]).prints("(fragment)");
    let v = request(&[
        "--path",
        "/admin%2Fx",
        "--normalize",
        "escaped-slashes",
        "--output",
        "json",
    ])
    .json();
    assert_eq!(v["normalized"]["path"], "/admin/x");
    assert_eq!(v["rejected"], serde_json::Value::Null);
    assert_eq!(v["checks"][0]["request"]["rule"], "no-admin");
    let v = request(&["--path", "/a%00", "--output", "json"]).json();
    assert_eq!(v["rejected"]["reason"], "encoded_nul");
    assert_eq!(v["verdict"], "deny");
}

#[test]
fn explain_shows_that_an_http_deny_rule_makes_the_port_http_only() {
    let (_dir, policy) = admin_deny_policy();
    let ingress = ["--direction", "ingress"];
    explain(&policy, &id("frontend"), &id("api"), "8080", &ingress)
        .exits(0)
        .prints("non-HTTP traffic is denied")
        .prints("result: DENY");
}

#[test]
fn test_passes_the_example_cases() {
    let cases = examples().join("cases.yaml").display().to_string();
    palisadectl(&["policy", "test", "--policy", &shop(), &cases])
        .exits(0)
        .prints("ok: 20 cases passed");
}

#[test]
fn test_fails_with_a_table_of_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    let case = |name: &str, from: &str, to: &str, port: u16, extra: &str| {
        format!(
            "- name: {name}\n  from: {}\n  to: {}\n  port: {port}\n{extra}  expect: allow\n",
            id(from),
            id(to)
        )
    };
    let text = [
        case("api reads the db", "api", "db", 5432, ""),
        case("frontend reads the db", "frontend", "db", 5432, ""),
        case(
            "api deletes a charge",
            "api",
            "payments",
            8080,
            "  method: DELETE\n  path: /v1/charge\n",
        ),
    ]
    .concat();
    std::fs::write(&cases, text).unwrap();
    let r = palisadectl(&[
        "policy",
        "test",
        "--policy",
        &shop(),
        cases.to_str().unwrap(),
    ])
    .exits(1);
    assert!(r.stdout.starts_with("FAILED: 2 of 3 cases"), "{}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("LOCATION"))
        .expect("a table header");
    for column in ["CASE", "EXPECTED", "GOT", "DECIDED BY"] {
        assert!(lines[header].contains(column), "{}", lines[header]);
    }
    let rows = &lines[header + 1..];
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    let c = cases.display();
    for (row, want) in rows.iter().zip([
        [
            format!("{c}:6:3"),
            "frontend reads the db".into(),
            "allow".into(),
            "deny".into(),
        ],
        [
            format!("{c}:11:3"),
            "api deletes a charge".into(),
            "shop/payments".into(),
            "deny".into(),
        ],
    ]) {
        assert!(
            want.iter().all(|w| row.contains(w.as_str())),
            "{want:?} not all in {row}"
        );
    }
}

/// Copies the shop examples to a temp dir, for editing.
fn shop_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(examples().join("shop")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[test]
fn diff_finds_an_opened_and_a_closed_path() {
    let new = shop_copy();
    // The database now takes the frontend instead of payments, and the
    // frontend may dial it.
    edit(&new.path().join("db.yaml"), "sa/payments", "sa/frontend");
    let to_db = format!("  egress:\n    - name: to-db\n      action: allow\n      to: [{{identity: {}}}]\n      ports: [5432]\n", id("db"));
    edit(&new.path().join("frontend.yaml"), "  egress:\n", &to_db);
    let new_path = new.path().to_str().unwrap();
    let v = palisadectl(&["policy", "diff", &shop(), new_path, "--output", "json"])
        .exits(0)
        .json();
    let row = |src: &str, dst: &str| serde_json::json!({"source": id(src), "destination": id(dst), "port": "5432", "route": "any"});
    assert_eq!(v["opened"], serde_json::json!([row("frontend", "db")]));
    assert_eq!(v["closed"], serde_json::json!([row("payments", "db")]));

    palisadectl(&["policy", "diff", &shop(), new_path, "--exit-code"])
        .exits(1)
        .prints("opened (1):")
        .prints("closed (1):");
}

#[test]
fn diff_reports_a_single_http_route_change() {
    let new = shop_copy();
    edit(
        &new.path().join("payments.yaml"),
        "methods: [POST]",
        "methods: [POST, GET]",
    );
    let v = palisadectl(&[
        "policy",
        "diff",
        &shop(),
        new.path().to_str().unwrap(),
        "--output",
        "json",
    ])
    .exits(0)
    .json();
    let opened = v["opened"].as_array().unwrap();
    let routes: Vec<&str> = opened
        .iter()
        .map(|p| p["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["GET /v1/charge", "GET /v1/refunds/*"]);
    assert!(opened
        .iter()
        .all(|p| p["source"] == id("api") && p["destination"] == id("payments")));
    assert_eq!(v["closed"], serde_json::json!([]));
}

#[test]
fn diff_of_identical_policies_is_empty() {
    palisadectl(&["policy", "diff", &shop(), &shop(), "--exit-code"])
        .exits(0)
        .prints("no change");
}

/// The `palisadectl up` demo must show real denials whatever the proxy's
/// default for unselected workloads.
#[test]
fn demo_policy_allows_the_chain_and_denies_the_shortcuts_under_every_default() {
    let demo = examples().join("demo.yaml").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("demo-cases.yaml");
    let d = |sa: &str| format!("spiffe://cluster.local/ns/demo/sa/{sa}");
    let case = |from: &str, to: &str, expect: &str| {
        format!(
            "- {{from: {}, to: {}, port: 18080, expect: {expect}}}\n",
            d(from),
            d(to)
        )
    };
    let text = [
        case("frontend", "api", "allow"),
        case("api", "db", "allow"),
        case("frontend", "db", "deny"),
        case("db", "api", "deny"),
        case("db", "frontend", "deny"),
        case("api", "frontend", "deny"),
    ]
    .concat();
    std::fs::write(&cases, text).unwrap();
    for default in ["deny", "all-authenticated", "all-unauthenticated", "audit"] {
        let r = palisadectl(&[
            "policy",
            "test",
            "--policy",
            &demo,
            cases.to_str().unwrap(),
            "--default",
            default,
        ]);
        assert_eq!(r.code, 0, "default {default}: {}{}", r.stdout, r.stderr);
    }
}
