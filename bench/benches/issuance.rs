//! SVID issuance on the control plane's hot path, in process: verify a
//! workload's CSR, then sign its leaf with the active CA. The end-to-end
//! figure over HTTPS is `palisade-bench issuance`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_control_plane::ca::csr::verify_csr_pem;
use palisade_control_plane::ca::Authority;
use palisade_policy::TrustDomain;

fn issuance(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("state dir");
    let td = TrustDomain::new("cluster.local").unwrap();
    let authority = Authority::open(
        td.clone(),
        &dir.path().join("state"),
        Duration::from_secs(7 * 24 * 3600),
        Duration::from_secs(3600),
        None,
    )
    .expect("open CA");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let id = td.workload("shop", "api").unwrap();

    let mut g = c.benchmark_group("issuance");
    g.bench_function("verify_csr", |b| b.iter(|| verify_csr_pem(&csr).unwrap()));
    g.bench_function("verify_csr_and_sign_svid", |b| {
        b.iter(|| {
            let verified = verify_csr_pem(&csr).unwrap();
            authority.issue(&verified.public_key, &id, &[]).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, issuance);
criterion_main!(benches);
