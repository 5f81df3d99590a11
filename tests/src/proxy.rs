//! A real `palisade-proxy` in explicit mode for a test, started by the shared
//! harness (`palisadectl::local`): its admin API and metrics, a tiny threaded
//! echo server to stand in for an app, and a two-sidecar mesh.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisadectl::local::{Sidecar, SidecarSpec};

use crate::bin;

/// A sidecar spec whose builders panic instead of returning errors; see
/// `palisadectl::local::SidecarSpec` for every field.
#[derive(Clone, Debug)]
pub struct ProxySpec(pub SidecarSpec);

impl ProxySpec {
    pub fn new(name: &str, control_plane: SocketAddr, bundle: &Path, join_token: &str) -> Self {
        let mut spec = SidecarSpec::new(name, control_plane, bundle, join_token)
            .expect("a free loopback port");
        spec.log_filter = Some("info,palisade_proxy=debug".into());
        ProxySpec(spec)
    }

    /// Add an inbound listener on a fresh loopback port forwarding to `app`;
    /// returns the listener's address.
    pub fn inbound(&mut self, app: SocketAddr, permissive: bool) -> SocketAddr {
        self.0
            .inbound(app, permissive)
            .expect("a free loopback port")
    }

    /// Add an outbound route on a fresh loopback port; returns its address.
    pub fn route(&mut self, destination: SocketAddr, identity: &str) -> SocketAddr {
        self.0
            .route(destination, identity)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Deref for ProxySpec {
    type Target = SidecarSpec;
    fn deref(&self) -> &SidecarSpec {
        &self.0
    }
}

impl DerefMut for ProxySpec {
    fn deref_mut(&mut self) -> &mut SidecarSpec {
        &mut self.0
    }
}

/// A running proxy in its own temp dir (config and log), killed on drop.
pub struct Proxy {
    sidecar: Sidecar,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Start the proxy and wait for its admin port (not for readiness).
    pub fn start(spec: ProxySpec) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let sidecar = Sidecar::start(&bin("palisade-proxy"), spec.0, dir.path())
            .unwrap_or_else(|e| panic!("{e:#}"));
        Proxy { sidecar, _dir: dir }
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Start and wait until /ready answers 200 (it has an SVID).
    pub fn start_ready(spec: ProxySpec) -> Proxy {
        let mut p = Proxy::start(spec);
        p.wait_ready();
        p
    }

    pub fn wait_ready(&mut self) {
        self.sidecar
            .wait_ready(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// SIGTERM (the proxy drains and writes its state), then the same
    /// spec, changed by `tweak`, started again on the same ports with
    /// `join_token` (tokens are single-use: a restarted pod gets a new one).
    pub fn restart(&mut self, join_token: String, tweak: impl FnOnce(&mut ProxySpec)) {
        let exited = self.child.terminate(Duration::from_secs(15));
        assert!(exited.is_some(), "{} ignored SIGTERM", self.spec.name);
        let mut spec = ProxySpec(self.spec.clone());
        spec.join_token = join_token;
        tweak(&mut spec);
        *self = Proxy::start_ready(spec);
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path)
    }

    pub fn post(&self, path: &str) -> (u16, String) {
        http(self.admin, "POST", path)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics");
        body
    }

    /// Sum of the samples of `name` whose labels include every pair in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics(), name, labels)
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self.get("/config_dump");
        assert_eq!(status, 200, "GET /config_dump");
        serde_json::from_str(&body).expect("config_dump is JSON")
    }

    /// VmRSS of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        crate::rss_kib(self.child.pid())
    }
}

/// The running sidecar: `child`, `admin` and `spec`.
impl Deref for Proxy {
    type Target = Sidecar;
    fn deref(&self) -> &Sidecar {
        &self.sidecar
    }
}

impl DerefMut for Proxy {
    fn deref_mut(&mut self) -> &mut Sidecar {
        &mut self.sidecar
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.spec.name, self.log());
        }
    }
}

/// Sum of the samples of `name` in Prometheus text whose labels include every
/// pair in `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A one-shot HTTP/1.1 request; returns the status and body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    palisadectl::local::http_request(addr, method, path)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// An echo server on loopback: each connection gets back what it sends, and a
/// half-close from the client is answered with a half-close.
pub struct Echo {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start() -> Echo {
        Echo::bind("127.0.0.1:0")
    }

    /// An echo server on a chosen address (e.g. `0.0.0.0:8080` inside a pod).
    pub fn bind(addr: &str) -> Echo {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind echo on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        Echo { addr, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Send `msg` on a fresh connection to `addr`, half-close, and return all
/// that comes back (or the I/O error).
pub fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    Ok(back)
}

/// Identities of the two demo workloads in the proxy tests.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";

/// client app → proxy A (outbound route) → mTLS → proxy B (inbound) → echo.
pub struct Mesh {
    pub cp: crate::cp::ControlPlane,
    pub echo: Echo,
    pub a: Proxy,
    pub b: Proxy,
    /// Where the client app connects (A's outbound route).
    pub a_out: SocketAddr,
    /// B's strict inbound listener.
    pub b_in: SocketAddr,
}

impl Mesh {
    /// Start both proxies against `cp`; `tweak_b` may change B's spec
    /// (extra listeners, drain settings) before it starts.
    pub fn start(cp: crate::cp::ControlPlane, tweak_b: impl FnOnce(&mut ProxySpec)) -> Mesh {
        let echo = Echo::start();
        let bundle = cp.bundle_path();
        let mut b = ProxySpec::new("proxy-b", cp.addr(), &bundle, &cp.join_token(SERVER_ID));
        let b_in = b.inbound(echo.addr, false);
        tweak_b(&mut b);
        let mut a = ProxySpec::new("proxy-a", cp.addr(), &bundle, &cp.join_token(CLIENT_ID));
        let a_out = a.route(b_in, SERVER_ID);
        let b = Proxy::start_ready(b);
        let a = Proxy::start_ready(a);
        Mesh {
            cp,
            echo,
            a,
            b,
            a_out,
            b_in,
        }
    }
}
