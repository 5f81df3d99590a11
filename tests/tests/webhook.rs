//! The control plane's sidecar-injecting admission webhook, as the API
//! server calls it: `AdmissionReview`s POSTed over HTTPS to a real
//! `palisade-control-plane`, the server verified against the CA bundle for
//! the Service's DNS name. The returned JSON Patch is applied with Python's
//! `jsonpatch`; the patched pod validates with kubernetes-validate and
//! equals what `palisadectl inject` makes of the same pod.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::http::{Answer, Client};
use palisade_tests::kube::{tools, validate_objects};
use palisade_tests::{bin, eventually};
use serde_json::{json, Value};

struct Webhook {
    cp: ControlPlane,
    addr: SocketAddr,
}

impl Webhook {
    fn start() -> Webhook {
        Self::start_with(ControlPlaneSpec::default())
    }

    fn start_with(spec: ControlPlaneSpec) -> Webhook {
        let addr = palisadectl::local::free_addr().unwrap();
        let mut extra_args = spec.extra_args.clone();
        extra_args.extend(["--webhook-listen".into(), addr.to_string()]);
        let cp = ControlPlane::start_with(ControlPlaneSpec { extra_args, ..spec });
        eventually("the webhook port", Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).ok()
        });
        Webhook { cp, addr }
    }

    /// A TLS connection verified as the API server verifies the webhook:
    /// the bundle as `caBundle`, the Service's DNS name.
    async fn connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in self.cp.bundle() {
            roots.add(ca).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(palisade_inject::DEFAULT_WEBHOOK_DNS)
            .unwrap()
            .to_owned();
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS to the webhook, verified for the Service's name")
    }

    /// The serving certificate the webhook presents now.
    fn serving_cert(&self) -> Vec<u8> {
        palisade_tests::http::runtime().block_on(async {
            let tls = self.connect().await;
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        })
    }

    /// POSTs `body` to /inject over a verified TLS connection.
    fn post(&self, body: &[u8]) -> Answer {
        let body = body.to_vec();
        palisade_tests::http::runtime().block_on(async move {
            let mut client = Client::http1_on(self.connect().await).await;
            client
                .send(
                    "POST",
                    "/inject",
                    &[("content-type", "application/json")],
                    body,
                )
                .await
                .unwrap()
        })
    }

    /// Reviews the creation of `pod`: the answer's `response`.
    fn review(&self, pod: &Value) -> Value {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                             "groups": ["system:serviceaccounts", "system:authenticated"]},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        });
        let a = self.post(review.to_string().as_bytes());
        assert_eq!(a.status, 200, "{}", a.body);
        let answer: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let r = answer["response"].clone();
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true, "{r}");
        r
    }

    fn metric(&self, series: &str) -> f64 {
        self.cp.metric(series)
    }
}

/// `pod` with the response's patch applied by Python's `jsonpatch`.
fn apply(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let input = json!({"object": pod, "patch": response["patch"]});
    let out = tools(&["patch"], &input.to_string()).passes();
    serde_json::from_str(&out).unwrap()
}

/// `palisadectl args…`, successful, its YAML output read back.
fn palisadectl_yaml(args: &[&str]) -> Value {
    let out = std::process::Command::new(bin("palisadectl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

/// `palisadectl inject` of one manifest (JSON is YAML), read back.
fn palisadectl_inject(doc: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, doc.to_string()).unwrap();
    palisadectl_yaml(&["inject", file.to_str().unwrap()])
}

const DEPLOYMENT: &str = r#"{
  "apiVersion": "apps/v1", "kind": "Deployment",
  "metadata": {"name": "api", "namespace": "shop"},
  "spec": {
    "selector": {"matchLabels": {"app": "api"}},
    "template": {
      "metadata": {"labels": {"app": "api"}, "annotations": {"palisade.dev/skip-inbound-ports": "22"}},
      "spec": {"serviceAccountName": "api",
               "containers": [{"name": "app", "image": "shop/api:1", "ports": [{"containerPort": 8080}]}]}
    }
  }
}"#;

/// The pod the ReplicaSet controller creates from `deployment`'s template,
/// after the API server's defaulting: what the webhook is sent.
fn pod_from_template(deployment: &Value) -> Value {
    let t = &deployment["spec"]["template"];
    let mut labels = t["metadata"]["labels"].clone();
    labels["pod-template-hash"] = json!("5d8f7c9b6d");
    let mut spec = t["spec"].clone();
    for c in spec["containers"].as_array_mut().unwrap() {
        c["imagePullPolicy"] = json!("IfNotPresent");
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["terminationMessagePolicy"] = json!("File");
        c["resources"] = json!({});
    }
    spec["restartPolicy"] = json!("Always");
    spec["dnsPolicy"] = json!("ClusterFirst");
    spec["schedulerName"] = json!("default-scheduler");
    spec["terminationGracePeriodSeconds"] = json!(30);
    spec["securityContext"] = json!({});
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "api-5d8f7c9b6d-",
            "namespace": "shop",
            "labels": labels,
            "annotations": t["metadata"]["annotations"],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5d8f7c9b6d",
                                 "uid": "c2bd4a34-1c5e-4b8a-9f43-0c8e8f0f1a6e", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": spec,
        "status": {},
    })
}

fn bare_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker", "namespace": "shop", "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "shop/migrate:1"}],
            "containers": [{"name": "worker", "image": "shop/worker:1"}],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    })
}

#[test]
fn webhook_patches_pods_into_exactly_what_palisadectl_inject_makes() {
    let w = Webhook::start();
    let deployment: Value = serde_json::from_str(DEPLOYMENT).unwrap();
    let from_template = pod_from_template(&deployment);
    let bare = bare_pod(json!({"palisade.dev/spiffe-workload-api": "enabled"}));

    let mut patched = Vec::new();
    for pod in [&from_template, &bare] {
        let response = w.review(pod);
        let after = apply(pod, &response);
        assert_eq!(
            after,
            palisadectl_inject(pod),
            "the webhook and inject differ"
        );
        patched.push(after);
    }
    // The template's pod carries what inject writes into the Deployment.
    let injected = palisadectl_inject(&deployment);
    let template = &injected["spec"]["template"];
    assert_eq!(
        patched[0]["spec"]["initContainers"],
        template["spec"]["initContainers"]
    );
    assert_eq!(patched[0]["spec"]["volumes"], template["spec"]["volumes"]);
    assert_eq!(
        patched[0]["metadata"]["annotations"],
        template["metadata"]["annotations"]
    );
    // The Workload API opt-in reached the app's containers.
    assert_eq!(
        patched[1]["spec"]["containers"][0]["env"][0]["value"],
        "unix:///run/palisade/spiffe/workload.sock"
    );
    assert_eq!(
        patched[1]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["palisade-init", "palisade-proxy", "migrate"]
    );
    validate_objects(&patched).passes();

    // Reinvoked on its own result (or created already injected): no patch.
    let again = w.review(&patched[1]);
    assert!(again.get("patch").is_none(), "{again}");
    // Opted out: admitted unchanged.
    let out = w.review(&bare_pod(json!({"palisade.dev/inject": "disabled"})));
    assert!(out.get("patch").is_none(), "{out}");

    assert_eq!(w.metric("webhook_reviews_total{outcome=\"injected\"}"), 2.0);
    assert_eq!(
        w.metric("webhook_reviews_total{outcome=\"already_injected\"}"),
        1.0
    );
    assert_eq!(
        w.metric("webhook_reviews_total{outcome=\"opted_out\"}"),
        1.0
    );
}

#[test]
fn webhook_answers_garbage_with_a_400_or_admits_with_a_warning() {
    let w = Webhook::start();
    // Not an AdmissionReview: 400 with a message (the API server then
    // applies failurePolicy: Ignore).
    for (body, message, kind) in [
        (&b"{not json"[..], "not an AdmissionReview", "bad_json"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            "expected `admission.k8s.io/v1`",
            "bad_version",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "no `request`",
            "no_request",
        ),
    ] {
        let a = w.post(body);
        assert_eq!(a.status, 400, "{}", a.body);
        let e: Value = serde_json::from_str(&a.body).unwrap();
        assert!(e["message"].as_str().unwrap().contains(message), "{e}");
        assert_eq!(w.metric(&format!("webhook_errors_total{{kind=\"{kind}\"}}")), 1.0);
    }
    // A review the webhook can answer but whose object is not a pod it can
    // read: admitted, unchanged, with a warning saying why.
    let r = w.review(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}));
    assert!(r.get("patch").is_none(), "{r}");
    assert!(
        r["warnings"][0].as_str().unwrap().contains("not injected"),
        "{r}"
    );
    assert_eq!(
        w.metric("webhook_reviews_total{outcome=\"bad_object\"}"),
        1.0
    );
    // The control plane is still serving.
    let again = w.review(&bare_pod(json!({})));
    assert_eq!(again["patchType"], "JSONPatch");
}

#[test]
fn webhook_config_with_the_real_bundle_validates() {
    let w = Webhook::start();
    let bundle_path = w.cp.bundle_path();
    let config = palisadectl_yaml(&[
        "webhook",
        "config",
        "--ca-bundle",
        bundle_path.to_str().unwrap(),
    ]);
    let bundle = &config["webhooks"][0]["clientConfig"]["caBundle"];
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(bundle.as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(pem).unwrap(), w.cp.bundle_pem());
    validate_objects(&[config]).passes();
}

#[test]
fn webhook_certificate_is_renewed_before_it_expires() {
    let w = Webhook::start_with(ControlPlaneSpec {
        svid_ttl: "4s".into(),
        ..ControlPlaneSpec::default()
    });
    let first = w.serving_cert();
    // Past the first certificate's notAfter: a new one, still verified for
    // the Service's name, and still answering reviews.
    std::thread::sleep(Duration::from_secs(5));
    let second = w.serving_cert();
    assert_ne!(first, second);
    let r = w.review(&bare_pod(json!({})));
    assert_eq!(r["patchType"], "JSONPatch");
}
