//! `palisadectl inject`: adds the Palisade init container and sidecar to the
//! pod templates in Kubernetes manifests (Pods, Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, Jobs, CronJobs). Everything else passes through.
//! Running it twice changes nothing; `palisade.dev/inject: disabled` opts out.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use palisade_identity::client::ControlPlaneAddrs;
use serde_json::{json, Value};

pub const INJECTED_ANNOTATION: &str = "palisade.dev/injected";
pub const INJECT_ANNOTATION: &str = "palisade.dev/inject";
pub const SKIP_INBOUND_ANNOTATION: &str = "palisade.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_ANNOTATION: &str = "palisade.dev/skip-outbound-ports";
pub const PROXY_UID: u64 = 2102;

#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Manifest file (YAML, one or more documents); `-` reads standard input.
    pub file: PathBuf,
    /// Image of palisade-proxy.
    #[arg(long, default_value = "ghcr.io/palisade/palisade-proxy:0.1.0")]
    pub proxy_image: String,
    /// Image of the init program (deploy/init/palisade-init).
    #[arg(long, default_value = "ghcr.io/palisade/palisade-init:0.1.0")]
    pub init_image: String,
    /// The control plane's workload API, as the pods reach it: `host:port`,
    /// or several replicas comma-separated (a name that resolves to every
    /// replica, such as a headless Service, works too).
    #[arg(
        long,
        default_value = "palisade-control-plane.palisade-system.svc:8443",
        value_parser = ControlPlaneAddrs::parse
    )]
    pub control_plane: ControlPlaneAddrs,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Put the proxy in `containers` instead of as a native sidecar
    /// (an init container with `restartPolicy: Always`, Kubernetes 1.29+).
    #[arg(long)]
    pub legacy_sidecar: bool,
}

pub fn run(args: InjectArgs) -> anyhow::Result<i32> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    print!(
        "{}",
        inject_yaml(&text, &args).with_context(|| args.file.display().to_string())?
    );
    Ok(0)
}

/// Inject every pod template in a (multi-document) YAML text.
pub fn inject_yaml(text: &str, args: &InjectArgs) -> anyhow::Result<String> {
    let mut docs: Vec<Value> = serde_saphyr::from_str_multiple(text).context("parsing YAML")?;
    docs.retain(|d| !d.is_null());
    for doc in &mut docs {
        inject_doc(doc, args);
    }
    Ok(serde_saphyr::to_string_multiple(&docs)?)
}

/// Where a kind keeps its pod template: (template metadata, pod spec).
fn pod_template(doc: &mut Value) -> Option<&mut Value> {
    let kind = doc.get("kind")?.as_str()?.to_owned();
    match kind.as_str() {
        "Pod" => Some(doc),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.pointer_mut("/spec/template")
        }
        "CronJob" => doc.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn annotation<'a>(template: &'a Value, key: &str) -> Option<&'a str> {
    template
        .pointer("/metadata/annotations")?
        .get(key)?
        .as_str()
}

/// Inject one document in place; returns whether it changed.
pub fn inject_doc(doc: &mut Value, args: &InjectArgs) -> bool {
    let Some(template) = pod_template(doc) else {
        return false;
    };
    if annotation(template, INJECT_ANNOTATION) == Some("disabled")
        || annotation(template, INJECTED_ANNOTATION) == Some("true")
    {
        return false;
    }
    let skip_in = annotation(template, SKIP_INBOUND_ANNOTATION).map(str::to_owned);
    let skip_out = annotation(template, SKIP_OUTBOUND_ANNOTATION).map(str::to_owned);

    let meta = template
        .as_object_mut()
        .unwrap()
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let annotations = meta
        .as_object_mut()
        .unwrap()
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(INJECTED_ANNOTATION.into(), json!("true"));
        a.insert("prometheus.io/scrape".into(), json!("true"));
        a.insert("prometheus.io/port".into(), json!("4191"));
    }

    let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) else {
        return false;
    };
    let mut init_args = vec![
        json!("install"),
        json!("--proxy-uid"),
        json!(PROXY_UID.to_string()),
    ];
    if let Some(p) = skip_in {
        init_args.extend([json!("--skip-inbound-ports"), json!(p)]);
    }
    if let Some(p) = skip_out {
        init_args.extend([json!("--skip-outbound-ports"), json!(p)]);
    }
    let init = json!({
        "name": "palisade-init",
        "image": args.init_image,
        "args": init_args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
    });
    let mut proxy = proxy_container(args);
    let inits = spec.entry("initContainers").or_insert_with(|| json!([]));
    if let Some(list) = inits.as_array_mut() {
        list.insert(0, init);
        if !args.legacy_sidecar {
            // A native sidecar starts (and is ready) before the app's
            // containers and stops after them: safe start and drain.
            proxy["restartPolicy"] = json!("Always");
            list.insert(1, proxy.clone());
        }
    }
    if args.legacy_sidecar {
        let containers = spec.entry("containers").or_insert_with(|| json!([]));
        if let Some(list) = containers.as_array_mut() {
            list.insert(0, proxy);
        }
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(list) = volumes.as_array_mut() {
        list.push(json!({"name": "palisade-trust-bundle", "configMap": {"name": "palisade-trust-bundle"}}));
        list.push(json!({
            "name": "palisade-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": "palisade", "expirationSeconds": 3600, "path": "token"
            }}]},
        }));
    }
    true
}

fn proxy_container(args: &InjectArgs) -> Value {
    let control_plane = args.control_plane.to_string();
    let env = [
        ("PALISADE_MODE", "transparent"),
        ("PALISADE_CONTROL_PLANE", control_plane.as_str()),
        ("PALISADE_TRUST_DOMAIN", args.trust_domain.as_str()),
        (
            "PALISADE_BOOTSTRAP_BUNDLE",
            "/var/run/palisade/bundle/bundle.pem",
        ),
        (
            "PALISADE_K8S_SA_TOKEN_FILE",
            "/var/run/palisade/token/token",
        ),
        ("PALISADE_ADMIN_BIND", "0.0.0.0:4191"),
        ("PALISADE_LOG_JSON", "true"),
    ];
    json!({
        "name": "palisade-proxy",
        "image": args.proxy_image,
        "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "ports": [
            {"name": "palisade-in", "containerPort": 4143},
            {"name": "palisade-admin", "containerPort": 4191},
        ],
        "startupProbe": {"httpGet": {"path": "/ready", "port": 4191}, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 4191}},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 4191}},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "palisade-trust-bundle", "mountPath": "/var/run/palisade/bundle", "readOnly": true},
            {"name": "palisade-token", "mountPath": "/var/run/palisade/token", "readOnly": true},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> InjectArgs {
        InjectArgs {
            file: "-".into(),
            proxy_image: "proxy:test".into(),
            init_image: "init:test".into(),
            control_plane: ControlPlaneAddrs::parse("cp:8443").unwrap(),
            trust_domain: "cluster.local".into(),
            legacy_sidecar: false,
        }
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  template:
    metadata:
      annotations: {palisade.dev/skip-inbound-ports: "22"}
    spec:
      serviceAccountName: api
      containers:
        - name: app
          image: shop/api:1
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec: {ports: [{port: 80}]}
"#;

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn deployment_gets_init_and_native_sidecar_and_service_passes_through() {
        let out = inject_yaml(DEPLOYMENT, &args()).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&out).unwrap();
        assert_eq!(docs.len(), 2);
        let pod = &docs[0]["spec"]["template"];
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            ["palisade-init", "palisade-proxy"]
        );
        assert_eq!(names(&pod["spec"]["containers"]), ["app"]);
        let init = &pod["spec"]["initContainers"][0];
        assert_eq!(
            init["args"],
            json!([
                "install",
                "--proxy-uid",
                "2102",
                "--skip-inbound-ports",
                "22"
            ])
        );
        let proxy = &pod["spec"]["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
        assert_eq!(pod["metadata"]["annotations"][INJECTED_ANNOTATION], "true");
        let token = &pod["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "palisade");
        assert_eq!(docs[1]["kind"], "Service");
        assert!(docs[1].get("spec").unwrap().get("template").is_none());
    }

    #[test]
    fn the_sidecar_is_given_every_control_plane_replica() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            inject: InjectArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "inject",
            "--control-plane=cp-0.cp:8443, cp-1.cp:8443",
            "-",
        ])
        .unwrap();
        let out = inject_yaml(DEPLOYMENT, &cli.inject).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&out).unwrap();
        let env = &docs[0]["spec"]["template"]["spec"]["initContainers"][1]["env"];
        let cp = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "PALISADE_CONTROL_PLANE")
            .unwrap();
        assert_eq!(cp["value"], "cp-0.cp:8443,cp-1.cp:8443");
        let err = <Cli as clap::Parser>::try_parse_from(["inject", "--control-plane=cp", "-"])
            .unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = inject_yaml(DEPLOYMENT, &args()).unwrap();
        let twice = inject_yaml(&once, &args()).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn disabled_annotation_opts_out() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {palisade.dev/inject: disabled}\nspec:\n  containers: [{name: app, image: x}]\n";
        let out = inject_yaml(text, &args()).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&out).unwrap();
        assert!(docs[0]["spec"].get("initContainers").is_none());
    }

    #[test]
    fn legacy_sidecar_goes_first_in_containers() {
        let mut a = args();
        a.legacy_sidecar = true;
        let out = inject_yaml(DEPLOYMENT, &a).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&out).unwrap();
        let spec = &docs[0]["spec"]["template"]["spec"];
        assert_eq!(names(&spec["containers"]), ["palisade-proxy", "app"]);
        assert_eq!(names(&spec["initContainers"]), ["palisade-init"]);
    }

    #[test]
    fn cronjob_template_is_found() {
        let text = "kind: CronJob\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers: [{name: job, image: x}]\n";
        let out = inject_yaml(text, &args()).unwrap();
        assert!(out.contains("palisade-proxy"), "{out}");
    }

    #[test]
    fn malformed_yaml_is_an_error() {
        assert!(inject_yaml("kind: [unclosed", &args()).is_err());
    }
}
