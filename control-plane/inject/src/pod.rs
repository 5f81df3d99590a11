//! The changes injection makes to a pod template: the init container that
//! redirects traffic, the sidecar, their volumes and the annotations.

use serde_json::{json, Map, Value};

use crate::{
    INJECTED_ANNOTATION, INJECT_ANNOTATION, PROXY_UID, SKIP_INBOUND_ANNOTATION,
    SKIP_OUTBOUND_ANNOTATION, SPIFFE_SOCKET_DIR, SPIFFE_SOCKET_PATH,
    SPIFFE_WORKLOAD_API_ANNOTATION,
};

/// What an injected pod is given: images, where the control plane is, and
/// how the sidecar is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub proxy_image: String,
    pub init_image: String,
    pub control_plane: String,
    pub trust_domain: String,
    /// The proxy first in `containers` instead of a native sidecar (an init
    /// container with `restartPolicy: Always`, Kubernetes 1.29+).
    pub legacy_sidecar: bool,
}

/// What [`inject_doc`] did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    Injected,
    /// `palisade.dev/inject: disabled`.
    OptedOut,
    /// `palisade.dev/injected: "true"`: injected before, left as it is.
    AlreadyInjected,
    /// `hostNetwork: true`: redirecting its traffic would redirect the node's.
    HostNetwork,
    /// Not a kind with a pod template, or a template without a `spec`.
    NoPodTemplate,
}

impl Injection {
    pub fn as_str(self) -> &'static str {
        match self {
            Injection::Injected => "injected",
            Injection::OptedOut => "opted_out",
            Injection::AlreadyInjected => "already_injected",
            Injection::HostNetwork => "host_network",
            Injection::NoPodTemplate => "no_pod_template",
        }
    }
}

/// Where a kind keeps its pod template (the object with `metadata` and
/// `spec`): Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
/// CronJobs.
fn pod_template(doc: &mut Value) -> Option<&mut Value> {
    let kind = doc.get("kind")?.as_str()?;
    match kind {
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

/// The object at `key` in `map`, created empty if missing; `None` if `key`
/// holds something else.
fn object<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = json!({});
    }
    slot.as_object_mut()
}

/// The list at `key` in `map`, created empty if missing (or null).
fn list<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Vec<Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = json!([]);
    }
    slot.as_array_mut()
}

/// Injects one document in place. Running it again on its own output
/// changes nothing.
pub fn inject_doc(doc: &mut Value, settings: &Settings) -> Injection {
    let Some(template) = pod_template(doc) else {
        return Injection::NoPodTemplate;
    };
    if annotation(template, INJECT_ANNOTATION) == Some("disabled") {
        return Injection::OptedOut;
    }
    if annotation(template, INJECTED_ANNOTATION) == Some("true") {
        return Injection::AlreadyInjected;
    }
    let spiffe = annotation(template, SPIFFE_WORKLOAD_API_ANNOTATION) == Some("enabled");
    let skip_in = annotation(template, SKIP_INBOUND_ANNOTATION).map(str::to_owned);
    let skip_out = annotation(template, SKIP_OUTBOUND_ANNOTATION).map(str::to_owned);
    let Some(template) = template.as_object_mut() else {
        return Injection::NoPodTemplate;
    };
    let Some(spec) = template.get("spec").and_then(Value::as_object) else {
        return Injection::NoPodTemplate;
    };
    if spec.get("hostNetwork") == Some(&json!(true)) {
        return Injection::HostNetwork;
    }

    if let Some(annotations) = object(template, "metadata").and_then(|m| object(m, "annotations")) {
        annotations.insert(INJECTED_ANNOTATION.into(), json!("true"));
        annotations.insert("prometheus.io/scrape".into(), json!("true"));
        annotations.insert("prometheus.io/port".into(), json!("4191"));
    }
    let spec = template
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .expect("checked above");

    let mut proxy = proxy_container(settings, spiffe);
    if let Some(inits) = list(spec, "initContainers") {
        inits.insert(0, init_container(settings, skip_in, skip_out));
        if !settings.legacy_sidecar {
            // A native sidecar starts (and is ready) before the app's
            // containers and stops after them: safe start and drain.
            proxy["restartPolicy"] = json!("Always");
            inits.insert(1, proxy.clone());
        }
    }
    if spiffe {
        if let Some(containers) = list(spec, "containers") {
            containers.iter_mut().for_each(mount_workload_api);
        }
    }
    if settings.legacy_sidecar {
        if let Some(containers) = list(spec, "containers") {
            containers.insert(0, proxy);
        }
    }
    if let Some(volumes) = list(spec, "volumes") {
        volumes.push(json!({"name": "palisade-trust-bundle", "configMap": {"name": "palisade-trust-bundle"}}));
        volumes.push(json!({
            "name": "palisade-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": "palisade", "expirationSeconds": 3600, "path": "token"
            }}]},
        }));
        if spiffe {
            volumes.push(json!({"name": "palisade-spiffe", "emptyDir": {"medium": "Memory"}}));
        }
    }
    Injection::Injected
}

fn init_container(settings: &Settings, skip_in: Option<String>, skip_out: Option<String>) -> Value {
    let mut args = vec![
        json!("install"),
        json!("--proxy-uid"),
        json!(PROXY_UID.to_string()),
    ];
    if let Some(p) = skip_in {
        args.extend([json!("--skip-inbound-ports"), json!(p)]);
    }
    if let Some(p) = skip_out {
        args.extend([json!("--skip-outbound-ports"), json!(p)]);
    }
    json!({
        "name": "palisade-init",
        "image": settings.init_image,
        "args": args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
    })
}

fn proxy_container(settings: &Settings, spiffe: bool) -> Value {
    let mut env = vec![
        ("PALISADE_MODE", "transparent"),
        ("PALISADE_CONTROL_PLANE", settings.control_plane.as_str()),
        ("PALISADE_TRUST_DOMAIN", settings.trust_domain.as_str()),
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
    if spiffe {
        // The sidecar serves the Workload API only when asked to.
        env.push(("PALISADE_WORKLOAD_API_SOCKET", SPIFFE_SOCKET_PATH));
    }
    let mut mounts = vec![
        json!({"name": "palisade-trust-bundle", "mountPath": "/var/run/palisade/bundle", "readOnly": true}),
        json!({"name": "palisade-token", "mountPath": "/var/run/palisade/token", "readOnly": true}),
    ];
    if spiffe {
        mounts.push(json!({"name": "palisade-spiffe", "mountPath": SPIFFE_SOCKET_DIR}));
    }
    json!({
        "name": "palisade-proxy",
        "image": settings.proxy_image,
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
        "volumeMounts": mounts,
    })
}

/// Gives an app container the Workload API socket's directory, read-only,
/// and `SPIFFE_ENDPOINT_SOCKET`, unless it sets that variable itself.
fn mount_workload_api(container: &mut Value) {
    let Some(c) = container.as_object_mut() else {
        return;
    };
    if let Some(mounts) = list(c, "volumeMounts") {
        mounts.push(
            json!({"name": "palisade-spiffe", "mountPath": SPIFFE_SOCKET_DIR, "readOnly": true}),
        );
    }
    if let Some(env) = list(c, "env") {
        let set = env
            .iter()
            .any(|e| e.get("name").and_then(Value::as_str) == Some("SPIFFE_ENDPOINT_SOCKET"));
        if !set {
            env.push(json!({"name": "SPIFFE_ENDPOINT_SOCKET", "value": format!("unix://{SPIFFE_SOCKET_PATH}")}));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn settings() -> Settings {
        Settings {
            proxy_image: "proxy:test".into(),
            init_image: "init:test".into(),
            control_plane: "cp:8443".into(),
            trust_domain: "cluster.local".into(),
            legacy_sidecar: false,
        }
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [
                {"name": "app", "image": "x"},
                {"name": "helper", "image": "y", "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///own.sock"}]},
            ]},
        })
    }

    #[test]
    fn workload_api_opt_in_mounts_the_socket_into_the_sidecar_and_every_app_container() {
        let mut p = pod(json!({SPIFFE_WORKLOAD_API_ANNOTATION: "enabled"}));
        assert_eq!(inject_doc(&mut p, &settings()), Injection::Injected);
        let spec = &p["spec"];
        let proxy = &spec["initContainers"][1];
        assert!(proxy["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "palisade-spiffe", "mountPath": "/run/palisade/spiffe"})));
        assert!(proxy["env"].as_array().unwrap().contains(
            &json!({"name": "PALISADE_WORKLOAD_API_SOCKET", "value": "/run/palisade/spiffe/workload.sock"})
        ));
        for c in spec["containers"].as_array().unwrap() {
            assert_eq!(c["volumeMounts"][0]["mountPath"], "/run/palisade/spiffe");
            assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        }
        assert_eq!(
            spec["containers"][0]["env"],
            json!([{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///run/palisade/spiffe/workload.sock"}])
        );
        // An app that names its own socket keeps it.
        assert_eq!(spec["containers"][1]["env"].as_array().unwrap().len(), 1);
        assert!(names(&spec["volumes"]).contains(&"palisade-spiffe"));
    }

    #[test]
    fn without_the_opt_in_no_app_container_changes() {
        let mut p = pod(json!({}));
        let before = p["spec"]["containers"].clone();
        assert_eq!(inject_doc(&mut p, &settings()), Injection::Injected);
        assert_eq!(p["spec"]["containers"], before);
        assert!(!names(&p["spec"]["volumes"]).contains(&"palisade-spiffe"));
        let proxy_env = p["spec"]["initContainers"][1]["env"].as_array().unwrap();
        assert!(!proxy_env
            .iter()
            .any(|e| e["name"] == "PALISADE_WORKLOAD_API_SOCKET"));
    }

    #[test]
    fn opted_out_and_injected_pods_and_other_kinds_are_left_alone() {
        let s = settings();
        let mut out = pod(json!({INJECT_ANNOTATION: "disabled"}));
        let mut done = pod(json!({INJECTED_ANNOTATION: "true"}));
        let mut svc = json!({"kind": "Service", "spec": {"ports": []}});
        let mut no_spec = json!({"kind": "Pod", "metadata": {}});
        let mut host = json!({"kind": "Pod", "spec": {"hostNetwork": true, "containers": []}});
        let copies = [
            out.clone(),
            done.clone(),
            svc.clone(),
            no_spec.clone(),
            host.clone(),
        ];
        assert_eq!(inject_doc(&mut out, &s), Injection::OptedOut);
        assert_eq!(inject_doc(&mut done, &s), Injection::AlreadyInjected);
        assert_eq!(inject_doc(&mut svc, &s), Injection::NoPodTemplate);
        assert_eq!(inject_doc(&mut no_spec, &s), Injection::NoPodTemplate);
        assert_eq!(inject_doc(&mut host, &s), Injection::HostNetwork);
        assert_eq!([out, done, svc, no_spec, host], copies);
    }

    #[test]
    fn odd_shapes_do_not_panic() {
        let s = settings();
        for mut doc in [
            json!({"kind": "Pod", "metadata": {"annotations": null}, "spec": {"containers": null, "volumes": 3}}),
            json!({"kind": "Pod", "metadata": 7, "spec": {"initContainers": "x"}}),
            json!({"kind": "Deployment", "spec": {"template": []}}),
            json!({"kind": "Pod", "metadata": {"annotations": {SPIFFE_WORKLOAD_API_ANNOTATION: "enabled"}}, "spec": {"containers": [1, {"env": {}}]}}),
        ] {
            inject_doc(&mut doc, &s);
        }
    }
}
