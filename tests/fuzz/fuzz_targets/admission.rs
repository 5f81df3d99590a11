//! AdmissionReviews the API server POSTs to the control plane's injection
//! webhook (`palisade_inject::admission::review`). Never panics; every
//! answer admits the pod under the request's uid; a patch applies to the
//! request's object, and reviewing the patched pod again patches nothing
//! (the webhook is idempotent on reinvocation).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_inject::admission::review;
use palisade_inject::Settings;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let settings = Settings {
        proxy_image: "proxy:fuzz".into(),
        init_image: "init:fuzz".into(),
        control_plane: "cp:8443".into(),
        trust_domain: "cluster.local".into(),
        legacy_sidecar: data.first().is_some_and(|b| b & 1 == 1),
    };
    let Ok(answer) = review(data, &settings) else {
        return;
    };
    let request: Value = serde_json::from_slice(data).expect("an answered review is JSON");
    let response = &answer.review["response"];
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], request["request"]["uid"]);
    if answer.patch.0.is_empty() {
        assert!(response.get("patch").is_none());
        return;
    }
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &answer.patch).expect("the patch applies to the object");
    let mut again = request.clone();
    again["request"]["object"] = pod;
    let second = review(&serde_json::to_vec(&again).unwrap(), &settings)
        .expect("the patched review is still a review");
    assert!(second.patch.0.is_empty(), "reinjected: {:?}", second.patch);
    assert_eq!(second.review["response"]["allowed"], json!(true));
});
