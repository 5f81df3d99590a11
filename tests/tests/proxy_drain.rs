//! Graceful drain on SIGTERM: readiness goes false, the listener stops
//! accepting, and a request already in flight completes before the proxy exits.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use palisade_tests::cp::ControlPlane;
use palisade_tests::eventually;
use palisade_tests::proxy::Mesh;

#[test]
fn in_flight_request_completes_after_sigterm_while_readiness_is_false_and_new_connections_are_refused(
) {
    let mut m = Mesh::start(ControlPlane::start(), |b| {
        b.extra_yaml = "drain_grace_period: 30s\n".into()
    });

    // A request in flight through A and B: half of it sent.
    let mut conn = TcpStream::connect(m.a_out).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"first half, ").unwrap();
    let mut echoed = [0u8; 12];
    conn.read_exact(&mut echoed).unwrap();
    eventually("B holds the connection", Duration::from_secs(10), || {
        (m.b.metric("tcp_open_connections", &[("direction", "inbound")]) == 1.0).then_some(())
    });

    kill(Pid::from_raw(m.b.child.pid() as i32), Signal::SIGTERM).unwrap();
    eventually(
        "B not ready while draining",
        Duration::from_secs(10),
        || (m.b.get("/ready").0 == 503).then_some(()),
    );
    eventually("B refuses new connections", Duration::from_secs(10), || {
        TcpStream::connect(m.b_in).is_err().then_some(())
    });
    assert!(m.b.config_dump()["draining"].as_bool().unwrap());
    assert!(
        m.b.child.child.try_wait().unwrap().is_none(),
        "B waits for the connection in flight"
    );

    // The request finishes after SIGTERM.
    conn.write_all(b"second half").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"second half");

    let exit = eventually("B exits once drained", Duration::from_secs(20), || {
        m.b.child.child.try_wait().unwrap()
    });
    assert!(exit.success(), "clean exit after drain, got {exit}");
}
