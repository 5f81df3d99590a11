//! Attestation against the real control plane: join tokens are single-use,
//! time-bounded and bound to one ID; Kubernetes service-account JWTs are
//! verified offline against a JWKS. Every spoofing attempt gets a clear 4xx
//! and a counter that goes up.

use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use palisade_identity::api::{Attestation, SvidRequest};
use palisade_identity::client::ClientError;
use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::pki::csr_pem;
use rcgen::KeyPair;
use serde_json::json;

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

async fn attempt(cp: &ControlPlane, attestation: Attestation) -> Result<String, ClientError> {
    let key = KeyPair::generate().unwrap();
    let req = SvidRequest {
        csr: csr_pem(&key),
        attestation,
    };
    cp.client(None).issue(&req).await.map(|r| r.spiffe_id)
}

/// Asserts a 403 refusal with `reason`, counted once more than before.
async fn assert_forbidden(cp: &ControlPlane, attestation: Attestation, reason: &str) {
    assert_refused(cp, attestation, 403, reason).await
}

/// Asserts a refusal with `status` and `reason`, counted once more than before.
async fn assert_refused(cp: &ControlPlane, attestation: Attestation, status: u16, reason: &str) {
    let series = format!("svid_rejected_total{{reason=\"{reason}\"}}");
    let before = cp.metric(&series);
    match attempt(cp, attestation).await {
        Err(ClientError::Status {
            status: s,
            error,
            message,
        }) => {
            assert_eq!((s, error.as_str()), (status, reason), "message: {message}");
            assert!(!message.is_empty(), "the refusal explains itself");
        }
        other => panic!("expected a {status} {reason} refusal, got {other:?}"),
    }
    assert_eq!(cp.metric(&series), before + 1.0, "{series} went up");
}

#[tokio::test]
async fn replayed_join_token_is_rejected_and_counted() {
    let cp = ControlPlane::start();
    let token = cp.join_token(API);
    assert_eq!(
        attempt(&cp, Attestation::JoinToken(token.clone()))
            .await
            .unwrap(),
        API
    );
    assert_forbidden(&cp, Attestation::JoinToken(token), "join_token_replayed").await;
}

#[tokio::test]
async fn expired_join_token_is_rejected_and_counted() {
    let cp = ControlPlane::start();
    let token = cp.join_token_ttl(API, "1s");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_forbidden(&cp, Attestation::JoinToken(token), "join_token_expired").await;
}

#[tokio::test]
async fn made_up_join_token_is_rejected_and_counted() {
    let cp = ControlPlane::start();
    assert_forbidden(
        &cp,
        Attestation::JoinToken("pjt_guess".into()),
        "join_token_unknown",
    )
    .await;
}

#[test]
fn join_token_for_a_foreign_or_reserved_identity_cannot_be_created() {
    let cp = ControlPlane::start();
    for id in [
        "spiffe://other.domain/ns/a/sa/b",
        "spiffe://cluster.local",
        "spiffe://cluster.local/palisade/control-plane",
        "not-an-id",
    ] {
        let out = cp.token_create(id, "10m");
        assert!(!out.status.success(), "token for {id} must be refused");
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout for scripts to capture"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("bad_spiffe_id"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `palisadectl token create` with `args`: its standard output, which must
/// be a success.
fn token_batch(cp: &ControlPlane, args: &[&str]) -> String {
    let sock = cp.admin_socket();
    let mut all = vec!["token", "create", "--admin-socket", sock.to_str().unwrap()];
    all.extend(args);
    let out = cp.palisadectl(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_batch_of_join_tokens_is_distinct_and_each_redeems_exactly_once() {
    let cp = ControlPlane::start();
    // More than one request's worth, so the batch is split over the connection.
    let count = palisade_identity::api::MAX_JOIN_TOKEN_BATCH as usize + 5;
    let text = token_batch(&cp, &["--identity", API, "--count", &count.to_string()]);
    let tokens: Vec<&str> = text.lines().collect();
    assert_eq!(tokens.len(), count);
    let distinct: std::collections::HashSet<&str> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), count, "every token is its own");
    assert_eq!(cp.metric("join_tokens_created_total"), count as f64);

    // Redeem a spread of them (first, across the split, last): once each.
    for &i in &[0, 1, count / 2, count - 6, count - 5, count - 1] {
        let token = Attestation::JoinToken(tokens[i].to_owned());
        assert_eq!(attempt(&cp, token.clone()).await.unwrap(), API, "token {i}");
        assert_forbidden(&cp, token, "join_token_replayed").await;
    }
}

#[tokio::test]
async fn a_file_of_identities_gets_tokens_in_its_order_and_a_bad_line_mints_nothing() {
    let cp = ControlPlane::start();
    let ids = [
        "spiffe://cluster.local/ns/shop/sa/api",
        "spiffe://cluster.local/ns/shop/sa/db",
        "spiffe://cluster.local/ns/pay/sa/ledger",
    ];
    let file = cp.work_dir().join("identities.txt");
    std::fs::write(
        &file,
        format!("# the shop\n{}\n\n{}\n{}\n", ids[0], ids[1], ids[2]),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let json: serde_json::Value = serde_json::from_str(&token_batch(
        &cp,
        &["--from-file", path, "--count", "2", "--json"],
    ))
    .unwrap();
    let answers = json.as_array().unwrap();
    let named: Vec<&str> = answers
        .iter()
        .map(|t| t["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(named, [ids[0], ids[0], ids[1], ids[1], ids[2], ids[2]]);
    for t in answers {
        let token = Attestation::JoinToken(t["token"].as_str().unwrap().to_owned());
        assert_eq!(attempt(&cp, token.clone()).await.unwrap(), t["spiffe_id"]);
        assert_forbidden(&cp, token, "join_token_replayed").await;
    }

    // One foreign identity refuses the whole batch, naming its place.
    let created = cp.metric("join_tokens_created_total");
    std::fs::write(
        &file,
        format!("{}\nspiffe://other.domain/ns/a/sa/b\n", ids[0]),
    )
    .unwrap();
    let sock = cp.admin_socket();
    let out = cp.palisadectl(&[
        "token",
        "create",
        "--admin-socket",
        sock.to_str().unwrap(),
        "--from-file",
        path,
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("identities[1]") && err.contains("bad_spiffe_id"),
        "{err}"
    );
    assert_eq!(cp.metric("join_tokens_created_total"), created);
}

#[test]
fn admin_socket_is_private_to_the_operator() {
    use std::os::unix::fs::PermissionsExt;
    let cp = ControlPlane::start();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cp.admin_socket()), 0o600);
    assert_eq!(mode(&cp.state_dir()), 0o700);
    for entry in std::fs::read_dir(cp.state_dir().join("ca")).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(mode(&cp.bundle_path()), 0o600);
}

/// A JWKS issuer for tests: an RSA key (made with `openssl genrsa`) and an
/// EC P-256 key (made with rcgen), both published in a JWKS file.
struct Issuer {
    rsa: EncodingKey,
    ec: EncodingKey,
    rsa_pem: Vec<u8>,
}

impl Issuer {
    fn new(dir: &std::path::Path) -> (Issuer, std::path::PathBuf) {
        let rsa_path = dir.join("sa-rsa.pem");
        let st = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&rsa_path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed to make an RSA key");
        assert!(st.success());
        let modulus = Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&rsa_path)
            .output()
            .unwrap();
        let hex_n = String::from_utf8(modulus.stdout)
            .unwrap()
            .trim()
            .trim_start_matches("Modulus=")
            .to_owned();
        let n: Vec<u8> = (0..hex_n.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex_n[i..i + 2], 16).unwrap())
            .collect();
        let rsa_pem = std::fs::read(&rsa_path).unwrap();

        let ec_key = KeyPair::generate().unwrap();
        let point = ec_key.public_key_raw().to_vec();
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"},
            {"kty": "EC", "kid": "ec-1", "use": "sig", "crv": "P-256",
             "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])},
        ]});
        let jwks_path = dir.join("jwks.json");
        std::fs::write(&jwks_path, serde_json::to_vec(&jwks).unwrap()).unwrap();
        let issuer = Issuer {
            rsa: EncodingKey::from_rsa_pem(&rsa_pem).unwrap(),
            ec: EncodingKey::from_ec_pem(ec_key.serialize_pem().as_bytes()).unwrap(),
            rsa_pem,
        };
        (issuer, jwks_path)
    }

    fn claims(iss: &str, aud: &str, sub: &str, exp_in: i64) -> serde_json::Value {
        let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
        json!({"iss": iss, "aud": [aud], "sub": sub, "iat": now, "nbf": now - 5, "exp": now + exp_in})
    }

    fn rs256(&self, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        encode(&h, claims, &self.rsa).unwrap()
    }

    fn es256(&self, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("ec-1".into());
        encode(&h, claims, &self.ec).unwrap()
    }
}

fn sa() -> &'static str {
    "system:serviceaccount:shop:api"
}

fn k8s_control_plane() -> (ControlPlane, Issuer) {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, jwks) = Issuer::new(dir.path());
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        extra_args: vec![
            "--jwks".into(),
            jwks.display().to_string(),
            "--k8s-issuer".into(),
            ISSUER.into(),
        ],
        ..Default::default()
    });
    // The JWKS was read at startup; the temp dir can go.
    drop(dir);
    (cp, issuer)
}

#[tokio::test]
async fn kubernetes_token_maps_its_service_account_to_a_spiffe_id() {
    let (cp, issuer) = k8s_control_plane();
    let good = Issuer::claims(ISSUER, "palisade", sa(), 600);
    assert_eq!(
        attempt(&cp, Attestation::K8sSaToken(issuer.rs256(&good)))
            .await
            .unwrap(),
        API
    );
    assert_eq!(
        attempt(&cp, Attestation::K8sSaToken(issuer.es256(&good)))
            .await
            .unwrap(),
        API
    );
    assert_eq!(cp.metric("svid_issued_total{method=\"k8s_sa_token\"}"), 2.0);
}

#[tokio::test]
async fn kubernetes_token_with_wrong_audience_or_issuer_or_expired_is_rejected_and_counted() {
    let (cp, issuer) = k8s_control_plane();
    let t = |c: serde_json::Value| Attestation::K8sSaToken(issuer.rs256(&c));
    assert_forbidden(
        &cp,
        t(Issuer::claims(ISSUER, "kubernetes", sa(), 600)),
        "jwt_wrong_audience",
    )
    .await;
    assert_forbidden(
        &cp,
        t(Issuer::claims(
            "https://evil.example",
            "palisade",
            sa(),
            600,
        )),
        "jwt_wrong_issuer",
    )
    .await;
    assert_forbidden(
        &cp,
        t(Issuer::claims(ISSUER, "palisade", sa(), -3600)),
        "jwt_expired",
    )
    .await;
    assert_forbidden(
        &cp,
        t(Issuer::claims(
            ISSUER,
            "palisade",
            "system:node:worker-1",
            600,
        )),
        "jwt_bad_subject",
    )
    .await;
}

#[tokio::test]
async fn kubernetes_token_signed_by_another_key_is_rejected_and_counted() {
    let (cp, _issuer) = k8s_control_plane();
    let other_dir = tempfile::tempdir().unwrap();
    let (impostor, _) = Issuer::new(other_dir.path());
    let claims = Issuer::claims(ISSUER, "palisade", sa(), 600);
    // Same kid and alg as the real issuer, different key.
    assert_forbidden(
        &cp,
        Attestation::K8sSaToken(impostor.rs256(&claims)),
        "jwt_bad_signature",
    )
    .await;
    assert_forbidden(
        &cp,
        Attestation::K8sSaToken(impostor.es256(&claims)),
        "jwt_bad_signature",
    )
    .await;
}

#[tokio::test]
async fn kubernetes_token_with_alg_none_or_hmac_is_refused_and_counted() {
    let (cp, issuer) = k8s_control_plane();
    let claims = Issuer::claims(ISSUER, "palisade", sa(), 600);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());

    let none = format!(
        "{}.{body}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#)
    );
    assert_forbidden(&cp, Attestation::K8sSaToken(none), "jwt_alg_refused").await;

    // The classic key-confusion attack: HMAC keyed with the public key material.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&issuer.rsa_pem),
    )
    .unwrap();
    assert_forbidden(&cp, Attestation::K8sSaToken(hs), "jwt_alg_refused").await;
}

#[tokio::test]
async fn kubernetes_token_is_refused_when_kubernetes_attestation_is_off() {
    let cp = ControlPlane::start();
    assert_refused(
        &cp,
        Attestation::K8sSaToken("a.b.c".into()),
        400,
        "k8s_disabled",
    )
    .await;
}

#[tokio::test]
async fn kubernetes_token_not_valid_for_another_hour_is_rejected_and_counted() {
    let (cp, issuer) = k8s_control_plane();
    let mut claims = Issuer::claims(ISSUER, "palisade", sa(), 7200);
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    claims["nbf"] = json!(now + 3600);
    assert_forbidden(
        &cp,
        Attestation::K8sSaToken(issuer.rs256(&claims)),
        "jwt_not_yet_valid",
    )
    .await;
    // Within the clock-skew leeway, the same token is fine.
    claims["nbf"] = json!(now + 10);
    assert_eq!(
        attempt(&cp, Attestation::K8sSaToken(issuer.es256(&claims)))
            .await
            .unwrap(),
        API
    );
}

#[tokio::test]
async fn kubernetes_token_whose_subject_is_not_two_valid_names_is_rejected_and_counted() {
    let (cp, issuer) = k8s_control_plane();
    let long_ns = format!("system:serviceaccount:{}:api", "n".repeat(64));
    let long_sa = format!("system:serviceaccount:shop:{}", "s".repeat(254));
    for sub in [
        "system:serviceaccount:demo:client/x/y",
        "system:serviceaccount:a/b:c",
        "system:serviceaccount:demo:client:extra",
        "system:serviceaccount:Shop:api",
        "system:serviceaccount:shop:API",
        "system:serviceaccount::api",
        "system:serviceaccount:shop:",
        "system:serviceaccount:shop:..",
        long_ns.as_str(),
        long_sa.as_str(),
    ] {
        let claims = Issuer::claims(ISSUER, "palisade", sub, 600);
        let token = Attestation::K8sSaToken(issuer.rs256(&claims));
        let before = cp.metric("svid_rejected_total{reason=\"jwt_bad_subject\"}");
        match attempt(&cp, token).await {
            Err(ClientError::Status {
                status: 403,
                error,
                message,
            }) => {
                assert_eq!(error, "jwt_bad_subject", "{sub}: {message}");
                assert!(
                    message.contains("namespace") || message.contains("service account"),
                    "{sub}: the refusal names the bad part: {message}"
                );
            }
            other => panic!("{sub} must be refused, got {other:?}"),
        }
        assert_eq!(
            cp.metric("svid_rejected_total{reason=\"jwt_bad_subject\"}"),
            before + 1.0,
            "{sub} counted"
        );
    }
    // A dotted service-account name is a valid subdomain.
    let ok = Issuer::claims(ISSUER, "palisade", "system:serviceaccount:shop:api.v2", 600);
    assert_eq!(
        attempt(&cp, Attestation::K8sSaToken(issuer.rs256(&ok)))
            .await
            .unwrap(),
        "spiffe://cluster.local/ns/shop/sa/api.v2"
    );
}
