//! The identity client while the control plane is away: renewals fail and are
//! counted, the proxy keeps serving with its current SVID, and renewal resumes
//! when the control plane comes back.

use std::time::Duration;

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::eventually;
use palisade_tests::proxy::{echo_roundtrip, Mesh};

#[test]
fn proxy_keeps_its_svid_while_the_control_plane_is_down_and_renews_when_it_returns() {
    // Long enough that the SVID outlives the outage, short enough to renew soon.
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        svid_ttl: "20s".into(),
        ..Default::default()
    });
    let mut m = Mesh::start(cp, |_| {});
    let refreshes = |m: &Mesh| m.b.metric("identity_cert_refresh_total", &[]);
    let failures = |m: &Mesh| m.b.metric("identity_cert_refresh_failures_total", &[]);
    // Stop the control plane right after a renewal, so the SVID has most of
    // its life left.
    let before = refreshes(&m);
    eventually("first renewal", Duration::from_secs(30), || {
        (refreshes(&m) > before).then_some(())
    });
    let expiry =
        m.b.metric("identity_cert_expiration_timestamp_seconds", &[]);
    m.cp.stop();

    eventually("renewal failures counted", Duration::from_secs(30), || {
        (failures(&m) >= 2.0).then_some(())
    });
    assert_eq!(m.b.get("/ready").0, 200, "still ready with a valid SVID");
    assert_eq!(
        m.b.metric("identity_cert_expiration_timestamp_seconds", &[]),
        expiry,
        "same SVID"
    );
    assert_eq!(
        echo_roundtrip(m.a_out, b"during outage").unwrap(),
        b"during outage"
    );

    let during = refreshes(&m);
    m.cp.start_again();
    eventually("renewal resumes", Duration::from_secs(30), || {
        (refreshes(&m) > during).then_some(())
    });
    assert!(m.b.metric("identity_cert_expiration_timestamp_seconds", &[]) > expiry);
    assert_eq!(
        echo_roundtrip(m.a_out, b"after outage").unwrap(),
        b"after outage"
    );
}
