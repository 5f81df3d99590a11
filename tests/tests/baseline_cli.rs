//! `palisadectl baseline show | export | diff | graph`, run as the real
//! binary on baseline files recorded through the model the proxy records
//! with, or on those files reported to a real control plane, then checked
//! by `palisadectl policy check | test` and an XML parser; and a policy
//! exported from a real sidecar's baseline, enforced by that sidecar.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use palisade_policy::Direction;
use palisade_tests::baseline::{learn_traffic, mesh, record, snapshot, Seen};
use palisade_tests::cp::ControlPlane;
use palisade_tests::ctl::{palisadectl, palisadectl_to, Run};
use palisade_tests::eventually;
use palisade_tests::proxy::{http, SERVER_ID};

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
/// 2026-12-01T07:05:00Z.
const T0: u64 = 1_796_108_700_000;

/// The api's baseline, split over two pods' files, and the db's.
struct Shop {
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
}

impl Shop {
    fn new() -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let api_a = record(
            dir.path(),
            "api-a.json",
            API,
            &[
                Seen::Http(FRONTEND, 8080, "GET", "/v1/users/123"),
                Seen::Http(FRONTEND, 8080, "GET", "/v1/users/456"),
                Seen::Tcp(Direction::Egress, DB, 5432),
            ],
            T0,
        );
        let api_b = record(
            dir.path(),
            "api-b.json",
            API,
            &[
                Seen::Http(FRONTEND, 8080, "POST", "/v1/orders"),
                Seen::Http(FRONTEND, 8080, "GET", "/v1/users/789"),
                Seen::Tcp(Direction::Egress, "10.0.0.7", 443),
            ],
            T0,
        );
        let db = record(
            dir.path(),
            "db.json",
            DB,
            &[Seen::Tcp(Direction::Ingress, API, 5432)],
            T0,
        );
        Shop {
            dir,
            files: vec![api_a, api_b, db],
        }
    }

    /// `--file` for each baseline file, then `more`.
    fn args<'a>(&'a self, cmd: &'a str, more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["baseline", cmd];
        for f in &self.files {
            args.extend(["--file", f.to_str().unwrap()]);
        }
        args.extend(more);
        args
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

/// The shop's users flow in `show`'s table: the three users the api's two
/// pods saw, one templated flow counted 3.
fn assert_users_merged(run: &Run) {
    let users = run
        .stdout
        .lines()
        .find(|l| l.contains("/v1/users/{id}"))
        .unwrap_or_else(|| panic!("no users flow in:\n{}", run.stdout));
    let cells: Vec<&str> = users.split_whitespace().collect();
    assert_eq!(
        cells[..7],
        [
            "ingress",
            FRONTEND,
            "8080",
            "http",
            "GET",
            "/v1/users/{id}",
            "3"
        ],
        "{users}"
    );
    assert!(!run.stdout.contains("/v1/users/123"), "{}", run.stdout);
}

#[test]
fn show_lists_each_identitys_flows_with_files_of_one_identity_merged() {
    let shop = Shop::new();
    let run = palisadectl(&shop.args("show", &[])).exits(0);
    run.prints(API)
        .prints(DB)
        .prints("status ")
        .prints("/v1/users/{id}")
        .prints("/v1/orders")
        .prints("10.0.0.0/24")
        .prints("2026-12-01T07:05:00Z");
    // Three users seen across two pods: one templated flow, counted 3.
    assert_users_merged(&run);

    let only_db = palisadectl(&shop.args("show", &["--identity", DB])).exits(0);
    assert!(!only_db.stdout.contains("/v1/orders"), "{}", only_db.stdout);
    only_db.prints("5432");
}

#[test]
fn exported_policy_passes_check_and_its_cases_and_denies_flows_never_seen() {
    let shop = Shop::new();
    let out = shop.path("export");
    palisadectl(&shop.args("export", &["--all", "--output", out.to_str().unwrap()])).exits(0);
    let policy_dir = out.to_str().unwrap();
    palisadectl(&["policy", "check", policy_dir])
        .exits(0)
        .prints("ok: 2 policies");

    for stem in ["ns-shop-sa-api", "ns-shop-sa-db"] {
        let cases = out.join("cases").join(format!("{stem}.yaml"));
        let text = std::fs::read_to_string(&cases).unwrap();
        assert!(text.contains("expect: deny"), "{text}");
        if stem == "ns-shop-sa-api" {
            // `{id}` is one segment: a path below it is a case, denied.
            assert!(
                text.contains("path: \"/v1/users/1/palisade-never-seen\""),
                "{text}"
            );
        }
        palisadectl(&[
            "policy",
            "test",
            "--policy",
            policy_dir,
            cases.to_str().unwrap(),
        ])
        .exits(0);
    }

    // Flows no baseline holds: a known peer on a new port, a new route, a
    // new method, and an address outside the learned bucket.
    let never = shop.path("never.yaml");
    std::fs::write(
        &never,
        format!(
            "cases:\n\
             - {{name: new port, from: {FRONTEND}, to: {API}, port: 9090, direction: ingress, expect: deny}}\n\
             - {{name: new route, from: {FRONTEND}, to: {API}, port: 8080, method: GET, path: /admin, direction: ingress, expect: deny}}\n\
             - {{name: new method, from: {FRONTEND}, to: {API}, port: 8080, method: DELETE, path: /v1/orders, direction: ingress, expect: deny}}\n\
             - {{name: new network, from: {API}, to: 10.9.0.7, port: 443, direction: egress, expect: deny}}\n\
             - {{name: below a template, from: {FRONTEND}, to: {API}, port: 8080, method: GET, path: /v1/users/42/admin, direction: ingress, expect: deny}}\n\
             - {{name: above a template, from: {FRONTEND}, to: {API}, port: 8080, method: GET, path: /v1/users, direction: ingress, expect: deny}}\n\
             - {{name: learned, from: {FRONTEND}, to: {API}, port: 8080, method: GET, path: /v1/users/42, direction: ingress, expect: allow}}\n"
        ),
    )
    .unwrap();
    palisadectl(&[
        "policy",
        "test",
        "--policy",
        policy_dir,
        never.to_str().unwrap(),
    ])
    .exits(0);
}

#[test]
fn export_without_output_prints_the_policy() {
    let shop = Shop::new();
    palisadectl(&shop.args("export", &["--identity", API]))
        .exits(0)
        .prints("kind: SegmentationPolicy")
        .prints("paths: [\"/v1/users/{id}\"]");
}

#[test]
fn diff_reports_a_flow_not_allowed_and_a_rule_never_used_and_exits_1() {
    let shop = Shop::new();
    let policies = shop.path("policies");
    std::fs::create_dir(&policies).unwrap();
    // Allows the frontend's calls and the db, not the 10.0.0.0/24 egress;
    // and allows metrics scrapes the api never saw.
    std::fs::write(
        policies.join("api.yaml"),
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
             metadata: {{name: api, namespace: shop}}\n\
             spec:\n  targets:\n    - identity: {API}\n\
             \x20 ingress:\n\
             \x20   - {{name: frontend-calls, action: allow, from: [{{identity: {FRONTEND}}}], ports: [8080]}}\n\
             \x20   - {{name: metrics-scrape, action: allow, from: [{{identity: {DB}}}], ports: [9090]}}\n\
             \x20 egress:\n\
             \x20   - {{name: to-db, action: allow, to: [{{identity: {DB}}}], ports: [5432]}}\n"
        ),
    )
    .unwrap();
    let p = policies.to_str().unwrap();
    palisadectl(&["policy", "check", p]).exits(0);
    let run = palisadectl(&shop.args("diff", &["--identity", API, "--policy", p])).exits(1);
    run.prints("1 learned flows not allowed, 1 allow rules never used")
        .prints("egress to 10.0.0.0/24 port 443/opaque")
        .prints("metrics-scrape");
    assert!(!run.stdout.contains("frontend-calls"), "{}", run.stdout);

    // Against its own export, nothing differs.
    let out = shop.path("export");
    palisadectl(&shop.args("export", &["--all", "--output", out.to_str().unwrap()])).exits(0);
    palisadectl(&shop.args("diff", &["--policy", out.to_str().unwrap()]))
        .exits(0)
        .prints("ok: the policy allows all");
}

/// Parses `svg` with Python's XML parser and returns the text of every
/// `<title>` and `<text>`, one per line, and each edge's class.
fn parse_svg(svg: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, xml.dom.minidom as m\n\
             d = m.parse(sys.argv[1])\n\
             assert d.documentElement.tagName == 'svg'\n\
             for t in ('title', 'text'):\n\
             \x20   for e in d.getElementsByTagName(t):\n\
             \x20       print(t, ''.join(c.data for c in e.childNodes))\n\
             for g in d.getElementsByTagName('g'):\n\
             \x20   print('class', g.getAttribute('class'))\n",
        )
        .arg(svg)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} is not well-formed XML: {}",
        svg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn graph_writes_a_parseable_svg_naming_each_identity_with_edges_colored_by_policy() {
    let shop = Shop::new();
    let svg = shop.path("graph.svg");
    palisadectl(&shop.args("graph", &["--output", svg.to_str().unwrap()])).exits(0);
    let parsed = parse_svg(&svg);
    for who in [API, FRONTEND, DB, "10.0.0.0/24"] {
        assert!(
            parsed.contains(&format!("title {who}\n")),
            "{who}:\n{parsed}"
        );
    }
    assert!(parsed.contains("text 8080 · 2 routes\n"), "{parsed}");
    // Without a policy every edge is learned-only; api→db is drawn once
    // though both sides learned it.
    let edges: Vec<&str> = parsed
        .lines()
        .filter(|l| l.starts_with("class edge"))
        .collect();
    assert_eq!(edges.len(), 3, "{parsed}");
    assert!(
        edges.iter().all(|l| *l == "class edge learned-only"),
        "{parsed}"
    );

    // Against policies that allow the frontend's users but not its orders,
    // deny the 10.0.0.0/24 egress outright, and let the db take the api.
    let policies = shop.path("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("api.yaml"),
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
             metadata: {{name: api, namespace: shop}}\n\
             spec:\n  targets:\n    - identity: {API}\n\
             \x20 ingress:\n\
             \x20   - {{name: users, action: allow, from: [{{identity: {FRONTEND}}}], ports: [8080], http: [{{paths: [/v1/users/*]}}]}}\n\
             \x20 egress:\n\
             \x20   - {{name: no-net, action: deny, to: [{{cidr: 10.0.0.0/8}}], ports: [443]}}\n\
             \x20   - {{name: to-db, action: allow, to: [{{identity: {DB}}}], ports: [5432]}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        policies.join("db.yaml"),
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
             metadata: {{name: db, namespace: shop}}\n\
             spec:\n  targets:\n    - identity: {DB}\n\
             \x20 ingress:\n\
             \x20   - {{name: from-api, action: allow, from: [{{identity: {API}}}], ports: [5432]}}\n"
        ),
    )
    .unwrap();
    let p = policies.to_str().unwrap();
    palisadectl(&["policy", "check", p]).exits(0);
    let colored = shop.path("colored.svg");
    let args = shop.args(
        "graph",
        &[
            "--output",
            colored.to_str().unwrap(),
            "--policy",
            p,
            "--default",
            "deny",
        ],
    );
    palisadectl(&args).exits(0);
    let parsed = parse_svg(&colored);
    let classes: Vec<&str> = parsed
        .lines()
        .filter_map(|l| l.strip_prefix("class edge "))
        .collect();
    // Edges in (source, destination, port) order: api→10.0.0.0/24 (a deny
    // rule), api→db (allowed on both sides), frontend→api (users allowed,
    // orders not).
    assert_eq!(classes, ["denied", "allowed", "deviating"], "{parsed}");

    // The same baselines always draw the same file.
    let again = shop.path("again.svg");
    let args = shop.args(
        "graph",
        &[
            "--output",
            again.to_str().unwrap(),
            "--policy",
            p,
            "--default",
            "deny",
        ],
    );
    palisadectl(&args).exits(0);
    assert_eq!(
        std::fs::read(&colored).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

#[test]
fn corrupt_baseline_file_is_named_in_the_error_and_exits_2() {
    let shop = Shop::new();
    let bad = shop.path("broken.json");
    std::fs::write(&bad, b"{\"version\": 1, \"identity\": ").unwrap();
    for cmd in ["show", "export", "diff", "graph"] {
        let mut args = vec!["baseline", cmd, "--file", bad.to_str().unwrap()];
        match cmd {
            "export" => args.push("--all"),
            "diff" => args.extend(["--policy", shop.dir.path().to_str().unwrap()]),
            "graph" => args.extend(["--output", "/dev/null"]),
            _ => {}
        }
        let run = palisadectl(&args).exits(2);
        assert!(
            run.stderr.contains(bad.to_str().unwrap()) && run.stderr.contains("corrupt"),
            "{cmd}: {}",
            run.stderr
        );
    }
    let missing = shop.path("missing.json");
    let run = palisadectl(&["baseline", "show", "--file", missing.to_str().unwrap()]).exits(2);
    assert!(run.stderr.contains("missing.json"), "{}", run.stderr);
}

/// A control plane holding the shop's baselines as its sidecars report them:
/// each pod's snapshot POSTed over mTLS with the pod's own SVID.
async fn report(shop: &Shop) -> ControlPlane {
    let cp = ControlPlane::start();
    for (file, identity, instance) in [(0, API, "api-a"), (1, API, "api-b"), (2, DB, "db-0")] {
        let snapshot = std::fs::read(&shop.files[file]).unwrap();
        cp.svid_client(identity)
            .await
            .connect()
            .await
            .unwrap()
            .post_baseline(instance, snapshot)
            .await
            .unwrap();
    }
    cp
}

#[tokio::test]
async fn show_from_the_control_plane_merges_every_instance_and_names_an_unknown_identity() {
    let shop = Shop::new();
    let cp = report(&shop).await;
    let socket = cp.admin_socket();
    let s = socket.to_str().unwrap();
    let run = palisadectl(&["baseline", "show", "--admin-socket", s]).exits(0);
    // api-a's db egress and api-b's orders and 10.0.0.0/24, and their users
    // counted together.
    run.prints(API)
        .prints(DB)
        .prints("5432")
        .prints("/v1/orders")
        .prints("10.0.0.0/24");
    assert_users_merged(&run);

    let run = palisadectl(&[
        "baseline",
        "show",
        "--admin-socket",
        s,
        "--identity",
        FRONTEND,
    ])
    .exits(2);
    assert!(run.stderr.contains(FRONTEND), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[tokio::test]
async fn export_from_the_control_plane_writes_a_policy_check_accepts_allowing_every_instances_flows(
) {
    let shop = Shop::new();
    let cp = report(&shop).await;
    let socket = cp.admin_socket();
    let out = shop.path("export");
    let dir = out.to_str().unwrap();
    #[rustfmt::skip]
    palisadectl(&["baseline", "export", "--admin-socket", socket.to_str().unwrap(),
        "--identity", API, "--output", dir]).exits(0);
    palisadectl(&["policy", "check", dir])
        .exits(0)
        .prints("ok: 1 policies");

    // Flows only api-a saw, only api-b saw, and seen by both are allowed;
    // a route neither saw is not.
    let cases = shop.path("cases.yaml");
    std::fs::write(
        &cases,
        format!(
            "cases:\n\
             - {{name: api-a db, from: {API}, to: {DB}, port: 5432, direction: egress, expect: allow}}\n\
             - {{name: api-b orders, from: {FRONTEND}, to: {API}, port: 8080, method: POST, path: /v1/orders, direction: ingress, expect: allow}}\n\
             - {{name: api-b network, from: {API}, to: 10.0.0.9, port: 443, direction: egress, expect: allow}}\n\
             - {{name: both users, from: {FRONTEND}, to: {API}, port: 8080, method: GET, path: /v1/users/7, direction: ingress, expect: allow}}\n\
             - {{name: never, from: {FRONTEND}, to: {API}, port: 8080, method: GET, path: /admin, direction: ingress, expect: deny}}\n"
        ),
    )
    .unwrap();
    palisadectl(&["policy", "test", "--policy", dir, cases.to_str().unwrap()]).exits(0);
}

#[test]
fn a_closed_stdout_ends_the_output_quietly_and_keeps_the_exit_code() {
    let shop = Shop::new();
    let policies = shop.path("policies");
    std::fs::create_dir(&policies).unwrap();
    let p = policies.to_str().unwrap();
    // As `palisadectl baseline … | head` once head has exited: the reader
    // is gone before the first write.
    let closed = || {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        Stdio::from(writer)
    };
    for (args, code) in [
        (shop.args("show", &[]), 0),
        (shop.args("export", &["--all"]), 0),
        // Nothing allowed: the verdict stays "differs".
        (shop.args("diff", &["--policy", p]), 1),
    ] {
        let run = palisadectl_to(&args, closed());
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert!(run.stderr.is_empty(), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_policy_exported_from_a_sidecars_baseline_serves_its_templates_and_nothing_below() {
    let state = tempfile::tempdir().unwrap();
    let m = mesh("learn", state.path(), "");
    learn_traffic(m.a_out);
    eventually("the learned baseline file", Duration::from_secs(10), || {
        snapshot(state.path()).filter(|s| s.entries.len() == 4)
    });
    let file = state.path().join("baseline.json");
    #[rustfmt::skip]
    let export = palisadectl(&["baseline", "export", "--file", file.to_str().unwrap(),
        "--identity", SERVER_ID]).exits(0);
    export.prints("\"/v1/users/{id}\"");
    // In place of `/v1/*`, under which every request below was allowed.
    m.set_policy(&export.stdout);

    for path in ["/v1/users/5", "/v1/orders/cafebabe12", "/v1/api"] {
        assert_eq!(http(m.a_out, "GET", path).0, 200, "learned {path}");
    }
    for path in [
        "/v1/users/5/admin",
        "/v1/users",
        "/v1/orders/cafebabe12/x",
        "/v1/secret",
    ] {
        assert_eq!(http(m.a_out, "GET", path).0, 403, "never seen {path}");
    }
    assert_eq!(http(m.a_out, "DELETE", "/v1/users/5").0, 403);
    assert!(!m.app.seen().iter().any(|p| p.contains("admin")));
}
