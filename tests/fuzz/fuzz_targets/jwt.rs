//! Kubernetes service-account tokens against a fixed test JWKS. Input that
//! starts with 0x01 is a claims set the harness signs with the test key (so
//! the fuzzer reaches the claim checks); 0x02 is `nbf` and `exp` as offsets
//! from now (two little-endian i32) and then a `sub`, signed into an
//! otherwise valid token; anything else is a token string as a client
//! sends it. Verification never panics, and a token it accepts has
//! a valid time window (`exp`, `nbf`, with the leeway) and maps to exactly
//! the namespace and service account its `sub` names.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use palisade_control_plane::attest::k8s::K8sVerifier;
use palisade_fuzz::now;
use palisade_policy::TrustDomain;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const JWKS: &str = include_str!("../fixtures/jwks.json");
const EC_KEY: &str = include_str!("../fixtures/jwt-ec.pem");
/// The verifier's clock-skew allowance, plus two seconds: the check below
/// reads the clock a little after the verifier did.
const LEEWAY: f64 = 32.0;

fn verifier() -> &'static K8sVerifier {
    static V: OnceLock<K8sVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("palisade-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, JWKS).expect("write the test JWKS");
        let v = K8sVerifier::load(&path, ISSUER, TrustDomain::new("cluster.local").unwrap())
            .expect("the test JWKS loads");
        let _ = std::fs::remove_file(&path);
        v
    })
}

fn signed(claims: &[u8]) -> String {
    static KEY: OnceLock<EncodingKey> = OnceLock::new();
    let key = KEY.get_or_init(|| EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"fuzz-ec"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let token = match data.split_first() {
        Some((1, claims)) => signed(claims),
        Some((2, rest)) if rest.len() >= 8 => {
            let offset = |b: &[u8]| i64::from(i32::from_le_bytes(b.try_into().unwrap()));
            let claims = serde_json::json!({
                "iss": ISSUER,
                "aud": "palisade",
                "sub": String::from_utf8_lossy(&rest[8..]),
                "nbf": now() + offset(&rest[..4]),
                "exp": now() + offset(&rest[4..8]),
            });
            signed(claims.to_string().as_bytes())
        }
        _ => match std::str::from_utf8(data) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
    };
    let Ok(id) = verifier().verify(&token) else {
        return;
    };
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .unwrap(),
    )
    .unwrap();
    let now = now() as f64;
    let time = |name: &str| claims.get(name).and_then(serde_json::Value::as_f64);
    let exp = time("exp").expect("an accepted token has exp");
    assert!(
        exp.round() + LEEWAY > now,
        "accepted a token that expired at {exp}"
    );
    if let Some(nbf) = time("nbf") {
        assert!(
            nbf.round() <= now + LEEWAY,
            "accepted a token not valid before {nbf}"
        );
    }
    let sub = claims["sub"]
        .as_str()
        .expect("an accepted token has a string sub");
    let (ns, sa) = id
        .ns_sa()
        .unwrap_or_else(|| panic!("sub {sub:?} gave {id}, not /ns/<ns>/sa/<sa>"));
    assert_eq!(
        sub,
        format!("system:serviceaccount:{ns}:{sa}"),
        "sub and {id} disagree"
    );
});
