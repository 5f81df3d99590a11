//! Certificates rotate under traffic: with a control plane issuing 4-second
//! SVIDs, a long-lived connection and a stream of new connections keep
//! flowing with zero failures while both proxies renew several times.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::proxy::{echo_roundtrip, Mesh};

const ROTATIONS: f64 = 4.0;

#[test]
fn long_lived_and_new_connections_flow_with_zero_failures_while_certificates_rotate() {
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        svid_ttl: "4s".into(),
        ..Default::default()
    });
    let m = Mesh::start(cp, |_| {});
    let refreshes = |p: &palisade_tests::proxy::Proxy| p.metric("identity_cert_refresh_total", &[]);
    let (a0, b0) = (refreshes(&m.a), refreshes(&m.b));
    let expiry0 =
        m.b.metric("identity_cert_expiration_timestamp_seconds", &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let new_ok = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, new_ok, addr) = (stop.clone(), new_ok.clone(), m.a_out);
        std::thread::spawn(move || -> Result<(), String> {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("new connection {i}");
                match echo_roundtrip(addr, msg.as_bytes()) {
                    Ok(back) if back == msg.as_bytes() => new_ok.fetch_add(1, Ordering::Relaxed),
                    other => return Err(format!("connection {i} failed: {other:?}")),
                };
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };

    // One connection kept open across every rotation, exchanging messages.
    let mut long = TcpStream::connect(m.a_out).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut exchanges = 0u64;
    let mut buf = [0u8; 64];
    while refreshes(&m.a) < a0 + ROTATIONS || refreshes(&m.b) < b0 + ROTATIONS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "proxies did not rotate {ROTATIONS} times"
        );
        let msg = format!("long-lived {exchanges:08}");
        long.write_all(msg.as_bytes()).unwrap();
        long.read_exact(&mut buf[..msg.len()])
            .expect("long-lived connection survives rotation");
        assert_eq!(&buf[..msg.len()], msg.as_bytes());
        exchanges += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    churn
        .join()
        .unwrap()
        .expect("every new connection during rotation succeeded");

    assert!(
        new_ok.load(Ordering::Relaxed) > 20,
        "the churn actually ran"
    );
    assert!(
        m.b.metric("identity_cert_expiration_timestamp_seconds", &[]) > expiry0,
        "expiry moved forward"
    );
    assert_eq!(
        m.b.metric("tls_handshake_failures_total", &[]),
        0.0,
        "{}",
        m.b.metrics()
    );
    assert_eq!(
        m.a.metric("tls_handshake_failures_total", &[]),
        0.0,
        "{}",
        m.a.metrics()
    );
    assert_eq!(m.a.metric("identity_cert_refresh_failures_total", &[]), 0.0);
}
