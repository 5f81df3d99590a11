//! `deploy/kubernetes/` against independent tools: every object validates
//! with the official schemas (kubernetes-validate) for Kubernetes 1.29 and
//! the newest version it knows, the policy examples fit the CRD's own
//! schema, and checkov's security scan finds nothing unanswered.

use std::path::PathBuf;

use palisade_tests::kube::{repo, tools};

fn deploy() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The manifests: every YAML file but the kustomization.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_kustomization_installs_every_manifest() {
    let k = std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap();
    let k: serde_json::Value = serde_saphyr::from_str(&k).unwrap();
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut present: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

#[test]
fn every_manifest_validates_for_kubernetes_1_29_and_the_newest() {
    let files: Vec<String> = manifests()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = tools(&args, "").passes();
    let versions = tools(&["versions"], "").passes();
    for version in versions.split_whitespace() {
        for object in [
            "Namespace/palisade-system",
            "CustomResourceDefinition/segmentationpolicies.palisade.dev",
            "ServiceAccount/palisade-control-plane",
            "ClusterRole/palisade-control-plane",
            "ClusterRoleBinding/palisade-control-plane",
            "StatefulSet/palisade-control-plane",
            "Service/palisade-control-plane",
            "NetworkPolicy/palisade-control-plane",
            "MutatingWebhookConfiguration/palisade-sidecar-injector",
        ] {
            assert!(
                out.lines().any(|l| l.starts_with("ok ")
                    && l.contains(object)
                    && l.ends_with(&format!(" on {version}"))),
                "{object} not validated for {version}:\n{out}"
            );
        }
    }
}

#[test]
fn a_manifest_mistake_is_caught_by_the_validator() {
    let bad = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "x"},
        "spec": {"replicas": "one", "selector": {}, "serviceName": "x",
                 "template": {"spec": {"containers": [{"name": "c", "imagePullPolicy": 3}]}}},
    });
    let run = palisade_tests::kube::validate_objects(&[bad]);
    assert!(!run.passed, "{}", run.stdout);
    assert!(run.stdout.contains("FAIL"), "{}", run.stdout);
}

#[test]
fn every_example_policy_fits_the_crds_own_schema() {
    let crd = deploy().join("segmentationpolicy-crd.yaml");
    let examples = repo().join("policies/examples");
    let mut files = vec![crd.display().to_string()];
    for dir in [examples.clone(), examples.join("shop")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml") {
                files.push(p.display().to_string());
            }
        }
    }
    let mut args = vec!["crd-schema"];
    args.extend(files.iter().map(String::as_str));
    let out = tools(&args, "").passes();
    assert!(out.contains("9 policies checked"), "{out}");
}

#[test]
fn the_crds_schema_refuses_what_the_parser_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    let doc = |name: &str, spec: &str| {
        format!("apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  targets: [{{identity: spiffe://cluster.local/ns/shop/sa/api}}]\n{spec}")
    };
    let docs = [
        doc("port", "  ingress: [{name: r, action: allow, ports: [70000]}]\n"),
        doc("field", "  ingress: [{name: r, action: allow, prots: [80]}]\n"),
        doc("mode", "  mode: block\n"),
        doc("peer", "  egress: [{name: r, action: deny, to: [{identity: spiffe://a/b, cidr: 10.0.0.0/8}]}]\n"),
    ];
    std::fs::write(&file, docs.join("---\n")).unwrap();
    let crd = deploy().join("segmentationpolicy-crd.yaml");
    let run = tools(
        &["crd-schema", crd.to_str().unwrap(), file.to_str().unwrap()],
        "",
    );
    assert!(!run.passed, "{}", run.stdout);
    for name in ["port", "field", "mode", "peer"] {
        assert!(
            run.stdout
                .contains(&format!("FAIL {}: {name}:", file.display())),
            "{name} passed:\n{}",
            run.stdout
        );
    }
    // And the parser refuses each of them too.
    let text = std::fs::read_to_string(&file).unwrap();
    let errors = palisade_policy::parse_documents("bad.yaml", &text).unwrap_err();
    assert!(errors.len() >= 4, "{errors:?}");
}

#[test]
fn checkov_finds_nothing_unanswered() {
    let out = tools(&["checkov", deploy().to_str().unwrap()], "").passes();
    assert!(out.contains(" 0 failed"), "{out}");
    // Every skipped check is answered in the install guide.
    let readme = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    let manifests: String = manifests()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for skip in manifests
        .lines()
        .filter_map(|l| l.split_once("checkov.io/skip"))
    {
        let id = skip
            .1
            .split_once(": ")
            .unwrap()
            .1
            .split('=')
            .next()
            .unwrap();
        assert!(
            readme.contains(id),
            "{id} is skipped but not answered in deploy/README.md"
        );
    }
}
