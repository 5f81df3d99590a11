//! `palisadectl policy check | explain | test | diff`, run as the real binary
//! against real files, the way a network team's CI runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_tests::bin;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn palisadectl(args: &[&str]) -> Run {
    let out = Command::new(bin("palisadectl"))
        .args(args)
        .output()
        .expect("run palisadectl");
    Run {
        code: out.status.code().expect("palisadectl exited normally"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples")
}

fn shop() -> String {
    examples().join("shop").display().to_string()
}

fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{sa}")
}

#[test]
fn check_accepts_the_examples_with_exit_zero() {
    let demo = examples().join("demo.yaml").display().to_string();
    let r = palisadectl(&["policy", "check", &shop(), &demo]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .starts_with("ok: 9 policies, 16 rules in 6 file(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn check_rejects_mistakes_with_file_line_col_and_exit_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: palisade.dev/v1alpha1\n\
         kind: SegmentationPolicy\n\
         metadata: {name: api, namespace: shop}\n\
         spec:\n\
         \x20 targets: [{identity: spiffe://cluster.local/ns/shop/sa/api}]\n\
         \x20 ingress:\n\
         \x20   - name: from-frontend\n\
         \x20     action: allow\n\
         \x20     from: [{cidr: 10.1.0.1/16}]\n\
         \x20     prots: [8080]\n",
    )
    .unwrap();
    let r = palisadectl(&["policy", "check", dir.path().to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let f = file.display();
    assert!(
        r.stdout.contains(&format!(
            "{f}:9:21: error: bad CIDR `10.1.0.1/16`: host bits are set after the prefix; did you mean `10.1.0.0/16`?"
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!(
            "{f}:10:7: error: unknown field `prots`, did you mean `ports`?"
        )),
        "{}",
        r.stdout
    );
}

#[test]
fn check_prints_shadow_warnings_but_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shadow.yaml");
    std::fs::write(
        &file,
        "apiVersion: palisade.dev/v1alpha1\n\
         kind: SegmentationPolicy\n\
         metadata: {name: db, namespace: shop}\n\
         spec:\n\
         \x20 targets: [{namespace: shop}]\n\
         \x20 ingress:\n\
         \x20   - {name: nobody, action: deny}\n\
         \x20   - {name: api, action: allow, from: [{namespace: shop}], ports: [5432]}\n",
    )
    .unwrap();
    let r = palisadectl(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "{}:8:7: warning: ingress allow rule `api` never applies",
            file.display()
        )),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("1 warning(s)"), "{}", r.stdout);
}

#[test]
fn explain_names_the_policy_that_denies_each_side() {
    let r = palisadectl(&[
        "policy",
        "explain",
        "--policy",
        &shop(),
        "--from",
        &id("frontend"),
        "--to",
        &id("db"),
        "--port",
        "5432",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "egress at {} (peer {}): DENY",
            id("frontend"),
            id("db")
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("policy shop/db selects the workload, so it is default-deny"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!(
            "result: DENY (egress at {}: shop/frontend)",
            id("frontend")
        )),
        "{}",
        r.stdout
    );
}

#[test]
fn explain_json_reports_the_allowing_rules_for_a_request() {
    let r = palisadectl(&[
        "policy",
        "explain",
        "--policy",
        &shop(),
        "--from",
        &id("api"),
        "--to",
        &id("payments"),
        "--port",
        "8080",
        "--method",
        "POST",
        "--path",
        "/v1/refunds/42",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
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
    let r = palisadectl(&[
        "policy",
        "explain",
        "--policy",
        &shop(),
        "--from",
        "198.51.100.7",
        "--to",
        &id("frontend"),
        "--port",
        "8080",
        "--direction",
        "ingress",
        "--default",
        "all-unauthenticated",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["checks"].as_array().unwrap().len(), 1);
    assert_eq!(v["checks"][0]["connection"]["matched"], "no-rule");
    assert_eq!(v["checks"][0]["connection"]["policy"], "shop/frontend");
}

#[test]
fn test_passes_the_example_cases() {
    let cases = examples().join("cases.yaml").display().to_string();
    let r = palisadectl(&["policy", "test", "--policy", &shop(), &cases]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("ok: 20 cases passed"), "{}", r.stdout);
}

#[test]
fn test_fails_with_a_table_of_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        format!(
            "- name: api reads the db\n  from: {api}\n  to: {db}\n  port: 5432\n  expect: allow\n\
             - name: frontend reads the db\n  from: {fe}\n  to: {db}\n  port: 5432\n  expect: allow\n\
             - name: api deletes a charge\n  from: {api}\n  to: {pay}\n  port: 8080\n  method: DELETE\n  path: /v1/charge\n  expect: allow\n",
            api = id("api"),
            db = id("db"),
            fe = id("frontend"),
            pay = id("payments"),
        ),
    )
    .unwrap();
    let r = palisadectl(&[
        "policy",
        "test",
        "--policy",
        &shop(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("FAILED: 2 of 3 cases"), "{}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("LOCATION"))
        .expect("a table header");
    assert!(
        lines[header].contains("CASE")
            && lines[header].contains("EXPECTED")
            && lines[header].contains("DECIDED BY")
    );
    let rows = &lines[header + 1..];
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    let c = cases.display();
    assert!(
        rows[0].contains(&format!("{c}:6:3")) && rows[0].contains("frontend reads the db"),
        "{}",
        rows[0]
    );
    assert!(
        rows[0].contains("allow") && rows[0].contains("deny"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains(&format!("{c}:11:3")) && rows[1].contains("api deletes a charge"),
        "{}",
        rows[1]
    );
    assert!(rows[1].contains("shop/payments"), "{}", rows[1]);
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
    edit(
        &new.path().join("frontend.yaml"),
        "  egress:\n",
        &format!("  egress:\n    - name: to-db\n      action: allow\n      to: [{{identity: {}}}]\n      ports: [5432]\n", id("db")),
    );
    let new_path = new.path().to_str().unwrap();
    let r = palisadectl(&["policy", "diff", &shop(), new_path, "--output", "json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let row = |src: &str, dst: &str| serde_json::json!({"source": id(src), "destination": id(dst), "port": "5432", "route": "any"});
    assert_eq!(
        v["opened"],
        serde_json::json!([row("frontend", "db")]),
        "{}",
        r.stdout
    );
    assert_eq!(
        v["closed"],
        serde_json::json!([row("payments", "db")]),
        "{}",
        r.stdout
    );

    let text = palisadectl(&["policy", "diff", &shop(), new_path, "--exit-code"]);
    assert_eq!(
        text.code, 1,
        "--exit-code fails on a change: {}",
        text.stdout
    );
    assert!(
        text.stdout.contains("opened (1):") && text.stdout.contains("closed (1):"),
        "{}",
        text.stdout
    );
}

#[test]
fn diff_reports_a_single_http_route_change() {
    let new = shop_copy();
    edit(
        &new.path().join("payments.yaml"),
        "methods: [POST]",
        "methods: [POST, GET]",
    );
    let r = palisadectl(&[
        "policy",
        "diff",
        &shop(),
        new.path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let routes: Vec<&str> = v["opened"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        ["GET /v1/charge", "GET /v1/refunds/*"],
        "{}",
        r.stdout
    );
    assert!(v["opened"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["source"] == id("api") && p["destination"] == id("payments")));
    assert_eq!(v["closed"], serde_json::json!([]));
}

#[test]
fn diff_of_identical_policies_is_empty() {
    let r = palisadectl(&["policy", "diff", &shop(), &shop(), "--exit-code"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("no change"), "{}", r.stdout);
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
