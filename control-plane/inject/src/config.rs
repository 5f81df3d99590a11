//! The `MutatingWebhookConfiguration` that sends pod creations in labelled
//! namespaces to the control plane's webhook. `palisadectl webhook config`
//! prints it; `deploy/kubernetes/` holds it with a placeholder `caBundle`.

use serde_json::{json, Value};

use crate::{INJECT_NAMESPACE_LABEL, NAMESPACE, SERVICE};

pub const NAME: &str = "palisade-sidecar-injector";
/// The Service port the webhook is reached on (the Service maps it to the
/// control plane's `--webhook-listen` port).
pub const SERVICE_PORT: u16 = 443;

/// Stands where the CA bundle goes in the committed manifest; decodes to a
/// note saying how to make the real one.
pub const CA_BUNDLE_PLACEHOLDER: &str =
    "cGFsaXNhZGU6IHJlcGxhY2Ugd2l0aCBgcGFsaXNhZGVjdGwgd2ViaG9vayBjb25maWcgLS1jYS1idW5kbGUgYnVuZGxlLnBlbWA=";

/// The configuration, trusting `ca_bundle` (base64 of PEM certificates).
pub fn webhook_configuration(ca_bundle: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/part-of": "palisade"}},
        "webhooks": [{
            "name": "inject.palisade.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            // deploy/README.md: a webhook outage must not stop pods starting.
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 5,
            "matchPolicy": "Equivalent",
            "namespaceSelector": {"matchLabels": {INJECT_NAMESPACE_LABEL: "enabled"}},
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "clientConfig": {
                "service": {"name": SERVICE, "namespace": NAMESPACE, "path": crate::admission::PATH, "port": SERVICE_PORT},
                "caBundle": ca_bundle,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn the_webhook_dns_name_is_the_services() {
        assert_eq!(
            crate::DEFAULT_WEBHOOK_DNS,
            format!("{SERVICE}.{NAMESPACE}.svc")
        );
    }

    #[test]
    fn the_placeholder_says_how_to_replace_it() {
        let note = base64::engine::general_purpose::STANDARD
            .decode(CA_BUNDLE_PLACEHOLDER)
            .unwrap();
        assert!(String::from_utf8(note)
            .unwrap()
            .contains("palisadectl webhook config --ca-bundle"));
    }
}
