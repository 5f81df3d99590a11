//! The mutating admission webhook's logic: an `admission.k8s.io/v1`
//! `AdmissionReview` in, the review's response out. A Pod being created
//! gets exactly [`inject_doc`]'s changes, as an RFC 6902 JSON Patch (the
//! diff of the pod before and after). Anything else is admitted unchanged:
//! this webhook never refuses a pod, and a pod it cannot read is admitted
//! with a warning saying why it was not injected.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::pod::{inject_doc, Injection, Settings};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";
/// The path the webhook is served at.
pub const PATH: &str = "/inject";

/// A request that is not an `AdmissionReview` this webhook can answer: the
/// server replies 400 with this message (the API server then applies the
/// webhook's `failurePolicy`).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported AdmissionReview `{0}`, expected `{API_VERSION}`")]
    Version(String),
    #[error("kind is `{0}`, expected `{KIND}`")]
    Kind(String),
    #[error("the AdmissionReview has no `request`")]
    NoRequest,
    #[error("`request.uid` is empty")]
    NoUid,
}

impl ReviewError {
    /// A metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ReviewError::Json(_) => "bad_json",
            ReviewError::Version(_) => "bad_version",
            ReviewError::Kind(_) => "bad_kind",
            ReviewError::NoRequest => "no_request",
            ReviewError::NoUid => "no_uid",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Option<GroupVersionKind>,
    sub_resource: Option<String>,
    operation: Option<String>,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// The answer to one review.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The `AdmissionReview` to send back.
    pub review: Value,
    /// What happened, for the metric: an [`Injection`]'s name, or
    /// `not_a_pod`, `not_create`, `bad_object`.
    pub outcome: &'static str,
    /// The JSON Patch sent (empty when nothing changed).
    pub patch: json_patch::Patch,
}

/// Answers one `AdmissionReview` body.
pub fn review(body: &[u8], settings: &Settings) -> Result<Answer, ReviewError> {
    // Read whole first, so bytes that are not JSON anywhere (also in the
    // fields this webhook ignores) are refused, not half-read.
    let review: Review = serde_json::from_value(serde_json::from_slice(body)?)?;
    if review.api_version != API_VERSION {
        return Err(ReviewError::Version(review.api_version));
    }
    if review.kind != KIND {
        return Err(ReviewError::Kind(review.kind));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    let (outcome, patch, warning) = decide(&request, settings);
    let mut response = json!({"uid": request.uid, "allowed": true});
    if !patch.0.is_empty() {
        let text = serde_json::to_vec(&patch).expect("a patch serializes");
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if let Some(w) = warning {
        response["warnings"] = json!([w]);
    }
    Ok(Answer {
        review: json!({"apiVersion": API_VERSION, "kind": KIND, "response": response}),
        outcome,
        patch,
    })
}

/// What to do with a request: the outcome, the patch and a warning.
fn decide(
    request: &Request,
    settings: &Settings,
) -> (&'static str, json_patch::Patch, Option<String>) {
    let none = json_patch::Patch::default;
    let pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    if !pod {
        let what = request
            .kind
            .as_ref()
            .map_or("an object", |k| k.kind.as_str());
        let warning = format!("palisade: only Pods are injected; {what} admitted unchanged");
        return ("not_a_pod", none(), Some(warning));
    }
    if let Some(sub) = request.sub_resource.as_deref().filter(|s| !s.is_empty()) {
        let warning = format!("palisade: only Pods are injected, not pods/{sub}");
        return ("not_a_pod", none(), Some(warning));
    }
    if request.operation.as_deref() != Some("CREATE") {
        return ("not_create", none(), None);
    }
    let original = match &request.object {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => {
            let warning = "palisade: not injected: the request carries no pod object".to_owned();
            return ("bad_object", none(), Some(warning));
        }
    };
    let mut original = original;
    match original.get("kind").and_then(Value::as_str) {
        // The API server always sets it; the pod is read the same without.
        None => original["kind"] = json!("Pod"),
        Some("Pod") => {}
        Some(other) => {
            let warning = format!("palisade: not injected: the object's kind is {other}, not Pod");
            return ("bad_object", none(), Some(warning));
        }
    }
    let mut injected = original.clone();
    let outcome = inject_doc(&mut injected, settings);
    match outcome {
        Injection::Injected => {
            let patch = json_patch::diff(&original, &injected);
            (outcome.as_str(), patch, None)
        }
        Injection::NoPodTemplate => {
            let warning = "palisade: not injected: the pod has no spec".to_owned();
            ("bad_object", none(), Some(warning))
        }
        Injection::HostNetwork => {
            let warning = "palisade: not injected: hostNetwork pods share the node's network, which a sidecar must not redirect".to_owned();
            (outcome.as_str(), none(), Some(warning))
        }
        Injection::OptedOut | Injection::AlreadyInjected => (outcome.as_str(), none(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::tests::settings;

    fn request(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "request": {
                "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": "CREATE", "object": object,
            }
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "api-", "namespace": "shop", "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "shop/api:1"}]}})
    }

    fn patched(original: &Value, answer: &Answer) -> Value {
        let mut doc = original.clone();
        json_patch::patch(&mut doc, &answer.patch).unwrap();
        doc
    }

    #[test]
    fn a_pod_gets_a_patch_that_makes_it_what_inject_makes_it() {
        let p = pod(json!({}));
        let a = review(&request(p.clone()), &settings()).unwrap();
        assert_eq!(a.outcome, "injected");
        let r = &a.review["response"];
        assert_eq!(r["uid"], "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let sent = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let sent: json_patch::Patch = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent, a.patch);
        let mut expected = p.clone();
        inject_doc(&mut expected, &settings());
        assert_eq!(patched(&p, &a), expected);
    }

    #[test]
    fn reinvocation_on_the_patched_pod_sends_no_patch() {
        let p = pod(json!({}));
        let first = review(&request(p.clone()), &settings()).unwrap();
        let again = review(&request(patched(&p, &first)), &settings()).unwrap();
        assert_eq!(again.outcome, "already_injected");
        assert!(again.patch.0.is_empty());
        assert!(again.review["response"].get("patch").is_none());
        assert_eq!(again.review["response"]["allowed"], true);
    }

    #[test]
    fn opted_out_and_odd_requests_are_admitted_unchanged() {
        let s = settings();
        let out = review(
            &request(pod(json!({"palisade.dev/inject": "disabled"}))),
            &s,
        )
        .unwrap();
        assert_eq!(out.outcome, "opted_out");
        let bad = review(&request(json!("not a pod")), &s).unwrap();
        assert_eq!(bad.outcome, "bad_object");
        assert!(bad.review["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no pod object"));
        for a in [out, bad] {
            assert_eq!(a.review["response"]["allowed"], true);
            assert!(a.review["response"].get("patch").is_none());
        }
    }

    #[test]
    fn garbage_is_an_error_that_says_what_is_wrong() {
        let s = settings();
        let cases: [(&[u8], &str); 5] = [
            (b"\x00\xff", "not an AdmissionReview"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#, "v1beta1"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#, "expected `AdmissionReview`"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "no `request`"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#, "uid"),
        ];
        // Invalid UTF-8 in a field the webhook does not read is still not JSON.
        let bad_utf8 = b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"extra\":\"\xe1\"}}";
        assert!(matches!(review(bad_utf8, &s), Err(ReviewError::Json(_))));
        for (body, message) in cases {
            let e = review(body, &s).unwrap_err().to_string();
            assert!(e.contains(message), "{e}");
        }
    }
}
