//! Sidecar injection, in one place for both injectors: `palisadectl inject`
//! rewrites manifests with [`inject_doc`], and the control plane's mutating
//! admission webhook answers an `AdmissionReview` with the same changes as a
//! JSON Patch ([`admission`]). Pure: no I/O.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
mod pod;

pub use pod::{inject_doc, Injection, Settings};

/// Set on an injected pod; a pod carrying it is left alone (idempotence).
pub const INJECTED_ANNOTATION: &str = "palisade.dev/injected";
/// `disabled` opts a pod out.
pub const INJECT_ANNOTATION: &str = "palisade.dev/inject";
/// The namespace label the webhook configuration selects (`enabled`).
pub const INJECT_NAMESPACE_LABEL: &str = "palisade.dev/inject";
pub const SKIP_INBOUND_ANNOTATION: &str = "palisade.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_ANNOTATION: &str = "palisade.dev/skip-outbound-ports";
/// `enabled` mounts the sidecar's SPIFFE Workload API socket into the app's
/// containers.
pub const SPIFFE_WORKLOAD_API_ANNOTATION: &str = "palisade.dev/spiffe-workload-api";
/// Where the sidecar serves the SPIFFE Workload API.
pub const SPIFFE_SOCKET_DIR: &str = "/run/palisade/spiffe";
pub const SPIFFE_SOCKET_PATH: &str = "/run/palisade/spiffe/workload.sock";
pub const PROXY_UID: u64 = 2102;

pub const DEFAULT_PROXY_IMAGE: &str = "ghcr.io/palisade/palisade-proxy:0.1.0";
pub const DEFAULT_INIT_IMAGE: &str = "ghcr.io/palisade/palisade-init:0.1.0";
/// The control plane's workload API, as pods reach it through its Service.
pub const DEFAULT_CONTROL_PLANE: &str = "palisade-control-plane.palisade-system.svc:8443";
/// The Service DNS name the webhook's serving certificate is issued for.
pub const DEFAULT_WEBHOOK_DNS: &str = "palisade-control-plane.palisade-system.svc";
/// The control plane's Service and namespace, which the webhook
/// configuration calls (`DEFAULT_WEBHOOK_DNS` is their DNS name).
pub const SERVICE: &str = "palisade-control-plane";
pub const NAMESPACE: &str = "palisade-system";
