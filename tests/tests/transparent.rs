//! Transparent mode, end to end: pods are network namespaces on a bridge,
//! `deploy/init/palisade-init` installs the iptables redirection, and an
//! unmodified client in pod A reaches pod B's app by IP and port. The hop
//! between the pods must be mTLS carrying A's identity, and an unmeshed pod
//! must not reach B's app.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::netns::{Network, Pod};
use palisade_tests::pods::{
    admin_metrics, init_program, install_redirect, logs, run_ok, shared_dir, skip_unless_root,
    start_sidecar, TD,
};
use palisade_tests::proxy::{echo_roundtrip, metric, Echo};
use palisade_tests::{eventually, Process};

const APP_PORT: u16 = 8080;

fn nat_rules(pod: &Pod) -> String {
    let mut c = pod.command("iptables");
    c.args(["-t", "nat", "-S"]);
    run_ok(c)
}

/// tcpdump on the switch side of a pod's veth, written to a pcap file.
fn capture(
    net: &Network,
    veth: &str,
    file: &Path,
) -> (Process, BufReader<std::process::ChildStderr>) {
    let mut cmd = net.host().command("tcpdump");
    cmd.args([
        "-i",
        veth,
        "-Z",
        "root",
        "--immediate-mode",
        "-n",
        "-U",
        "-s",
        "0",
        "-w",
    ])
    .arg(file)
    .args(["tcp", "port", &APP_PORT.to_string()])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut guard = Process::spawn("tcpdump", &mut cmd).expect("start tcpdump");
    let mut err = BufReader::new(guard.child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("listening on") {
        line.clear();
    }
    assert!(
        line.contains("listening on"),
        "tcpdump did not start: {line}"
    );
    (guard, err)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn unmodified_client_reaches_peer_pod_over_mtls_and_unmeshed_pod_is_refused() {
    if skip_unless_root() {
        return;
    }
    let mut net = Network::new();
    let a = net.pod("a");
    let b = net.pod("b");
    let c = net.pod("c");
    let id_a = format!("spiffe://{TD}/ns/shop/sa/a");
    let id_b = format!("spiffe://{TD}/ns/shop/sa/b");

    let dir = shared_dir();
    let endpoints = dir.path().join("endpoints.yaml");
    std::fs::write(
        &endpoints,
        format!("- {{address: \"{}\", identity: \"{id_a}\"}}\n- {{address: \"{}\", identity: \"{id_b}\"}}\n", a.ip, b.ip),
    )
    .unwrap();
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        extra_args: vec!["--endpoints".into(), endpoints.display().to_string()],
        ..Default::default()
    });
    let cp_in_pods = net.expose(8443, cp.addr());

    // B's app listens on its pod IP's port 8080; nothing about it knows the mesh.
    let _app = b.enter(|| Echo::bind(&format!("0.0.0.0:{APP_PORT}")));

    install_redirect(&a);
    install_redirect(&b);
    let _proxy_a = start_sidecar(&a, dir.path(), &cp, cp_in_pods, &id_a, "");
    let _proxy_b = start_sidecar(&b, dir.path(), &cp, cp_in_pods, &id_b, "");

    let pcap = dir.path().join("a.pcap");
    let (mut tcpdump, mut tcpdump_err) = capture(&net, &net.veth_of(1), &pcap);

    // An unmodified client in pod A dials B's IP and app port.
    let marker = b"palisade-plaintext-marker-0123456789".to_vec();
    let target = SocketAddr::from((b.ip, APP_PORT));
    let sent = marker.clone();
    let back = a
        .enter(move || echo_roundtrip(target, &sent))
        .unwrap_or_else(|e| panic!("A could not reach B's app: {e}\n{}", logs(dir.path())));
    assert_eq!(back, marker, "the bytes arrived at B's app and came back");

    // B's sidecar saw an mTLS connection from A's identity.
    let metrics_b = admin_metrics(&b);
    assert!(
        metric(
            &metrics_b,
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", &id_a), ("tls", "true")]
        ) >= 1.0,
        "B's sidecar did not record an mTLS connection from {id_a}:\n{metrics_b}"
    );

    // On the wire between the pods: a TLS handshake, and never the payload.
    std::thread::sleep(Duration::from_millis(300));
    tcpdump.terminate(Duration::from_secs(5));
    let wire = std::fs::read(&pcap).unwrap();
    let mut summary = String::new();
    let _ = tcpdump_err.read_to_string(&mut summary);
    assert!(
        wire.len() > 24 + 5 * 40,
        "the capture saw no traffic ({} bytes): {summary}",
        wire.len()
    );
    assert!(
        contains(&wire, &[0x16, 0x03, 0x01]),
        "no TLS ClientHello in the capture"
    );
    assert!(
        !contains(&wire, &marker),
        "the payload crossed the veth in plaintext"
    );

    // Pod C has no sidecar: its plaintext connection to B's app is refused.
    let refused_before = metric(
        &metrics_b,
        "tls_handshake_failures_total",
        &[("reason", "plaintext_refused")],
    );
    let got = c.enter(move || -> Vec<u8> {
        let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            return Vec::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\nfrom-the-unmeshed-pod");
        let _ = s.shutdown(Shutdown::Write);
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        back
    });
    assert!(
        !contains(&got, b"from-the-unmeshed-pod"),
        "the unmeshed pod reached B's app"
    );
    let after = eventually("plaintext refusal counted", Duration::from_secs(5), || {
        let v = metric(
            &admin_metrics(&b),
            "tls_handshake_failures_total",
            &[("reason", "plaintext_refused")],
        );
        (v > refused_before).then_some(v)
    });
    assert!(after >= 1.0);
}

#[test]
fn init_program_is_idempotent_and_removable() {
    if skip_unless_root() {
        return;
    }
    let mut net = Network::new();
    let pod = net.pod("init");
    let before = nat_rules(&pod);

    let mut first = pod.command(init_program());
    first.args([
        "install",
        "--skip-inbound-ports",
        "22,9000:9010",
        "--skip-outbound-ports",
        "5432",
    ]);
    run_ok(first);
    let once = nat_rules(&pod);
    for want in [
        "--to-ports 4143",
        "--to-ports 4140",
        "--uid-owner 2102",
        "--dport 4191",
        "--dport 22",
        "--dport 9000:9010",
        "--dport 5432",
    ] {
        assert!(once.contains(want), "missing `{want}` in:\n{once}");
    }

    let mut second = pod.command(init_program());
    second.args([
        "install",
        "--skip-inbound-ports",
        "22,9000:9010",
        "--skip-outbound-ports",
        "5432",
    ]);
    run_ok(second);
    assert_eq!(nat_rules(&pod), once, "a second install changed the rules");

    let mut bad = pod.command(init_program());
    bad.args(["install", "--skip-inbound-ports", "70000"]);
    let out = bad.output().unwrap();
    assert!(!out.status.success(), "an out-of-range port was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    assert_eq!(
        nat_rules(&pod),
        once,
        "a rejected install touched the rules"
    );

    let mut remove = pod.command(init_program());
    remove.arg("remove");
    run_ok(remove);
    assert_eq!(nat_rules(&pod), before, "remove left rules behind");
}
