//! Explicit mode on loopback with the real control plane and two real
//! proxies: bytes cross the mesh over mTLS, the server side sees the client's
//! SPIFFE ID, plaintext is refused unless the port is permissive, garbage does
//! not hurt the proxy, and the admin API reports what happened.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_tests::cp::ControlPlane;
use palisade_tests::eventually;
use palisade_tests::proxy::{echo_roundtrip, Echo, Mesh, CLIENT_ID, SERVER_ID};

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn bytes_cross_the_mesh_over_mtls_and_the_server_sees_the_client_identity() {
    let m = Mesh::start(ControlPlane::start(), |_| {});
    let msg = pattern(256 * 1024);
    assert_eq!(
        echo_roundtrip(m.a_out, &msg).unwrap(),
        msg,
        "echo through A and B"
    );

    let inbound = [
        ("direction", "inbound"),
        ("peer", CLIENT_ID),
        ("tls", "true"),
    ];
    eventually(
        "B counts the closed mTLS connection",
        Duration::from_secs(10),
        || (m.b.metric("tcp_close_total", &inbound) == 1.0).then_some(()),
    );
    assert_eq!(m.b.metric("tcp_open_total", &inbound), 1.0);
    assert_eq!(m.b.metric("tcp_open_connections", &inbound), 0.0);
    assert_eq!(
        m.b.metric("tcp_read_bytes_total", &inbound),
        msg.len() as f64
    );
    assert_eq!(
        m.b.metric("tcp_write_bytes_total", &inbound),
        msg.len() as f64
    );
    // Nothing reached B unauthenticated.
    assert_eq!(m.b.metric("tcp_open_total", &[("tls", "false")]), 0.0);

    let outbound = [
        ("direction", "outbound"),
        ("peer", SERVER_ID),
        ("tls", "true"),
    ];
    eventually(
        "A counts the closed connection",
        Duration::from_secs(10),
        || (m.a.metric("tcp_close_total", &outbound) == 1.0).then_some(()),
    );
    assert_eq!(
        m.a.metric("tcp_read_bytes_total", &outbound),
        msg.len() as f64
    );
}

/// Larger than every buffer on the way (the copy buffers, the TLS read
/// buffer, rustls' records), written in uneven pieces while the echo is read
/// back at the same time: nothing is lost, reordered or counted twice.
#[test]
fn a_bulk_transfer_arrives_intact_and_is_counted_exactly_on_both_sides() {
    let m = Mesh::start(ControlPlane::start(), |_| {});
    let msg = pattern(24 * 1024 * 1024 + 7);
    let mut s = TcpStream::connect_timeout(&m.a_out, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let sent = msg.clone();
    let writer = std::thread::spawn(move || {
        let mut piece = 1;
        let mut rest = &sent[..];
        while !rest.is_empty() {
            // 1 B, 32 KiB + 1 B, ... up to ~1 MiB: off every buffer boundary.
            let n = rest.len().min(piece);
            w.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            piece = (piece * 33 + 1) % (1 << 20);
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(msg.len());
    std::io::Read::read_to_end(&mut s, &mut back).unwrap();
    writer.join().unwrap();
    assert!(
        back == msg,
        "{} bytes came back, not the {} sent in order",
        back.len(),
        msg.len()
    );

    let n = msg.len() as f64;
    let inbound = [("direction", "inbound"), ("peer", CLIENT_ID)];
    let outbound = [("direction", "outbound"), ("peer", SERVER_ID)];
    eventually(
        "both sides count the closed connection",
        Duration::from_secs(10),
        || {
            (m.a.metric("tcp_close_total", &outbound) == 1.0
                && m.b.metric("tcp_close_total", &inbound) == 1.0)
                .then_some(())
        },
    );
    for (side, proxy, labels) in [("A", &m.a, &outbound), ("B", &m.b, &inbound)] {
        assert_eq!(
            proxy.metric("tcp_read_bytes_total", labels),
            n,
            "{side} read"
        );
        assert_eq!(
            proxy.metric("tcp_write_bytes_total", labels),
            n,
            "{side} wrote"
        );
    }
}

#[test]
fn config_dump_and_metrics_show_the_identity_and_its_expiry() {
    let m = Mesh::start(ControlPlane::start(), |_| {});
    let dump = m.b.config_dump();
    assert_eq!(dump["identity"]["spiffe_id"], SERVER_ID);
    let expires = dump["identity"]["cert_expires_at"]
        .as_i64()
        .expect("expiry");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(expires > now, "expiry {expires} is in the future");
    let fps = dump["identity"]["bundle_fingerprints_sha256"]
        .as_array()
        .expect("fingerprints");
    assert!(
        !fps.is_empty()
            && fps
                .iter()
                .all(|f| f.as_str().is_some_and(|s| s.len() == 64))
    );
    // No policy configured: the empty set under the default.
    assert!(dump["policy_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("sha256:")));
    assert_eq!(dump["policy"]["source"]["kind"], "none");
    assert_eq!(dump["ready"], true);
    let listeners = dump["listeners"].as_array().unwrap();
    assert!(
        listeners.iter().any(|l| l["address"] == m.b_in.to_string()),
        "{listeners:?}"
    );
    assert_eq!(
        m.b.metric("identity_cert_expiration_timestamp_seconds", &[]),
        expires as f64
    );
    assert!(m.b.metric("identity_cert_refresh_total", &[]) >= 1.0);
    assert_eq!(m.b.get("/live").0, 200);
}

#[test]
fn plaintext_is_refused_on_a_strict_port_and_accepted_on_a_permissive_one() {
    let permissive_echo = Echo::start();
    let mut permissive_in = None;
    let m = Mesh::start(ControlPlane::start(), |b| {
        permissive_in = Some(b.inbound(permissive_echo.addr, true));
        // The default `all-authenticated` would deny every plaintext peer.
        b.extra_yaml += "policy:\n  default: all-unauthenticated\n";
    });

    let refused = echo_roundtrip(m.b_in, b"plaintext secret");
    assert!(
        refused.map(|b| b.is_empty()).unwrap_or(true),
        "strict port must not forward plaintext"
    );
    eventually("plaintext_refused counted", Duration::from_secs(10), || {
        let n = m.b.metric(
            "tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "plaintext_refused")],
        );
        (n == 1.0).then_some(())
    });

    let back = echo_roundtrip(permissive_in.unwrap(), b"migrating app").unwrap();
    assert_eq!(back, b"migrating app");
    let plain = [
        ("direction", "inbound"),
        ("peer", "unauthenticated"),
        ("tls", "false"),
    ];
    eventually(
        "plaintext connection counted",
        Duration::from_secs(10),
        || (m.b.metric("tcp_close_total", &plain) == 1.0).then_some(()),
    );
}

#[test]
fn garbage_on_the_inbound_port_is_refused_and_the_proxy_keeps_serving() {
    let m = Mesh::start(ControlPlane::start(), |_| {});
    let garbage: [&[u8]; 4] = [
        b"\x16\x03\x01\x00\x05hello-not-a-client-hello",
        b"\x16\x03\x03\xff\xff",
        b"\x00\x01\x02\x03 random bytes \xff\xfe",
        &pattern(70_000),
    ];
    for g in garbage {
        let mut s = TcpStream::connect(m.b_in).unwrap();
        let _ = s.write_all(g);
        let _ = s.shutdown(Shutdown::Write);
        drop(s);
    }
    // A client that connects and says nothing until the detect timeout.
    let silent = TcpStream::connect(m.b_in).unwrap();
    eventually(
        "every garbage connection refused",
        Duration::from_secs(20),
        || {
            let n =
                m.b.metric("tls_handshake_failures_total", &[("direction", "inbound")]);
            (n >= 4.0).then_some(())
        },
    );
    drop(silent);
    assert_eq!(
        m.b.metric("tcp_open_total", &[]),
        0.0,
        "nothing was forwarded"
    );
    assert_eq!(m.b.get("/live").0, 200);
    assert_eq!(
        echo_roundtrip(m.a_out, b"still here").unwrap(),
        b"still here"
    );
}

#[test]
fn shutdown_from_localhost_stops_the_proxy() {
    let mut m = Mesh::start(ControlPlane::start(), |_| {});
    let (status, _) = m.b.post("/shutdown");
    assert_eq!(status, 200);
    let exit = eventually("proxy B exits", Duration::from_secs(20), || {
        m.b.child.child.try_wait().unwrap()
    });
    assert!(exit.success(), "clean exit, got {exit}");
    assert!(TcpStream::connect(m.b_in).is_err(), "listener gone");
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let m = Mesh::start(ControlPlane::start(), |b| {
        b.extra_yaml = "max_connections: 1\n".into()
    });
    let mut held = TcpStream::connect(m.a_out).unwrap();
    held.write_all(b"x").unwrap();
    eventually("B holds one connection", Duration::from_secs(10), || {
        (m.b.metric("tcp_open_connections", &[("direction", "inbound")]) == 1.0).then_some(())
    });
    let refused = echo_roundtrip(m.a_out, b"one too many");
    assert!(refused.map(|b| b.is_empty()).unwrap_or(true));
    let labels = [("direction", "inbound"), ("reason", "max_connections")];
    eventually("max_connections counted", Duration::from_secs(10), || {
        (m.b.metric("tls_handshake_failures_total", &labels) == 1.0).then_some(())
    });
    drop(held);
    eventually("a slot frees up", Duration::from_secs(10), || {
        echo_roundtrip(m.a_out, b"room now")
            .ok()
            .filter(|b| b == b"room now")
    });
}
