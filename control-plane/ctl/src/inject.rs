//! `palisadectl inject`: adds the Palisade init container and sidecar to the
//! pod templates in Kubernetes manifests (Pods, Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, Jobs, CronJobs). Everything else passes through.
//! The changes are `palisade_inject`'s, as the admission webhook makes them.
//! Running it twice changes nothing; `palisade.dev/inject: disabled` opts out.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use palisade_inject::{inject_doc, Settings};
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Manifest file (YAML, one or more documents); `-` reads standard input.
    pub file: PathBuf,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// What injected pods are given (the control plane's webhook takes the
/// same settings as `--inject-*` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    /// Image of palisade-proxy.
    #[arg(long, default_value = palisade_inject::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Image of the init program (deploy/init/palisade-init).
    #[arg(long, default_value = palisade_inject::DEFAULT_INIT_IMAGE)]
    pub init_image: String,
    /// The control plane's workload API, as the pods reach it: `host:port`,
    /// or several replicas comma-separated (a name that resolves to every
    /// replica, such as a headless Service, works too).
    #[arg(
        long,
        default_value = palisade_inject::DEFAULT_CONTROL_PLANE,
        value_parser = control_plane_addrs
    )]
    pub control_plane: String,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Put the proxy in `containers` instead of as a native sidecar
    /// (an init container with `restartPolicy: Always`, Kubernetes 1.29+).
    #[arg(long)]
    pub legacy_sidecar: bool,
}

impl From<&SettingsArgs> for Settings {
    fn from(a: &SettingsArgs) -> Settings {
        Settings {
            proxy_image: a.proxy_image.clone(),
            init_image: a.init_image.clone(),
            control_plane: a.control_plane.clone(),
            trust_domain: a.trust_domain.clone(),
            legacy_sidecar: a.legacy_sidecar,
        }
    }
}

/// Checks a `--control-plane` value as the sidecar will read it, and writes
/// it in the sidecar's form (`a:1,b:2`).
fn control_plane_addrs(text: &str) -> Result<String, String> {
    palisade_identity::client::ControlPlaneAddrs::parse(text)
        .map(|a| a.to_string())
        .map_err(|e| e.to_string())
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
    let settings = Settings::from(&args.settings);
    print!(
        "{}",
        inject_yaml(&text, &settings).with_context(|| args.file.display().to_string())?
    );
    Ok(0)
}

/// Inject every pod template in a (multi-document) YAML text.
pub fn inject_yaml(text: &str, settings: &Settings) -> anyhow::Result<String> {
    let mut docs: Vec<Value> = serde_saphyr::from_str_multiple(text).context("parsing YAML")?;
    docs.retain(|d| !d.is_null());
    for doc in &mut docs {
        inject_doc(doc, settings);
    }
    Ok(serde_saphyr::to_string_multiple(&docs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use palisade_inject::INJECTED_ANNOTATION;
    use serde_json::json;

    fn args() -> Settings {
        Settings {
            proxy_image: "proxy:test".into(),
            init_image: "init:test".into(),
            control_plane: "cp:8443".into(),
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
        let out = inject_yaml(DEPLOYMENT, &Settings::from(&cli.inject.settings)).unwrap();
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
