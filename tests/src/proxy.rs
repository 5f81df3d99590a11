//! Running a real `palisade-proxy` in explicit mode: write its YAML config,
//! start it, talk to its admin port, read its metrics. Plus a tiny threaded
//! echo server to stand in for an app.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{bin, eventually, free_port, ChildGuard};

/// One explicit-mode inbound listener: `listen` → local app `app`.
#[derive(Clone, Debug)]
pub struct PortMap {
    pub listen: SocketAddr,
    pub app: SocketAddr,
    pub permissive: bool,
    /// `detect`, `http1`, `http2` or `opaque`.
    pub protocol: &'static str,
    /// GET and the like may carry a body to the app.
    pub allow_get_body: bool,
}

/// One explicit-mode outbound listener: `listen` → `destination`, which must
/// prove `identity`.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub listen: SocketAddr,
    pub destination: SocketAddr,
    pub identity: String,
    /// `detect`, `http1`, `http2` or `opaque`.
    pub protocol: &'static str,
}

/// What a test proxy needs; see proxy/README.md for every setting.
#[derive(Clone, Debug)]
pub struct ProxySpec {
    pub name: String,
    /// Control plane workload API address.
    pub control_plane: SocketAddr,
    pub trust_domain: String,
    pub bootstrap_bundle: PathBuf,
    pub join_token: String,
    pub inbound: Vec<PortMap>,
    pub routes: Vec<RouteSpec>,
    /// Extra top-level YAML, appended verbatim (e.g. `drain_grace_period: 10s`).
    pub extra_yaml: String,
}

impl ProxySpec {
    pub fn new(name: &str, control_plane: SocketAddr, bundle: &Path, join_token: &str) -> Self {
        ProxySpec {
            name: name.to_owned(),
            control_plane,
            trust_domain: "cluster.local".to_owned(),
            bootstrap_bundle: bundle.to_owned(),
            join_token: join_token.to_owned(),
            inbound: Vec::new(),
            routes: Vec::new(),
            extra_yaml: String::new(),
        }
    }

    /// Add an inbound listener on a fresh loopback port forwarding to `app`;
    /// returns the listener's address.
    pub fn inbound(&mut self, app: SocketAddr, permissive: bool) -> SocketAddr {
        let listen = loopback(free_port());
        self.inbound.push(PortMap {
            listen,
            app,
            permissive,
            protocol: "detect",
            allow_get_body: false,
        });
        listen
    }

    /// Add an outbound route on a fresh loopback port; returns its address.
    pub fn route(&mut self, destination: SocketAddr, identity: &str) -> SocketAddr {
        let listen = loopback(free_port());
        self.routes.push(RouteSpec {
            listen,
            destination,
            identity: identity.to_owned(),
            protocol: "detect",
        });
        listen
    }

    fn yaml(&self, admin: SocketAddr) -> String {
        let mut y = String::from("mode: explicit\n");
        y += &format!("admin:\n  bind: \"{admin}\"\n");
        y += "inbound:\n  ports:\n";
        for p in &self.inbound {
            y += &format!(
                "    - {{listen: \"{}\", app: \"{}\", permissive: {}, protocol: {}, allow_get_body: {}}}\n",
                p.listen, p.app, p.permissive, p.protocol, p.allow_get_body
            );
        }
        if self.inbound.is_empty() {
            y += "    []\n";
        }
        y += "outbound:\n  routes:\n";
        for r in &self.routes {
            y += &format!(
                "    - {{listen: \"{}\", destination: \"{}\", identity: \"{}\", protocol: {}}}\n",
                r.listen, r.destination, r.identity, r.protocol
            );
        }
        if self.routes.is_empty() {
            y += "    []\n";
        }
        y += &format!(
            "identity:\n  control_plane: \"{}\"\n  trust_domain: {}\n  bootstrap_bundle: \"{}\"\n  join_token: \"{}\"\n",
            self.control_plane,
            self.trust_domain,
            self.bootstrap_bundle.display(),
            self.join_token
        );
        y += &self.extra_yaml;
        y
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running proxy, killed on drop.
pub struct Proxy {
    pub child: ChildGuard,
    pub admin: SocketAddr,
    pub spec: ProxySpec,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Start the proxy and wait for its admin port (not for readiness).
    pub fn start(spec: ProxySpec) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = loopback(free_port());
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, spec.yaml(admin)).expect("write proxy config");
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("create proxy log");
        let mut child = ChildGuard::spawn(
            &spec.name,
            Command::new(bin("palisade-proxy"))
                .arg("--config")
                .arg(&config)
                .env("PALISADE_LOG", "info,palisade_proxy=debug")
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log),
        );
        // Fail with the proxy's own words if it exits instead of listening.
        let log_path = dir.path().join("proxy.log");
        eventually("the proxy's admin port", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.child.try_wait() {
                panic!(
                    "{} exited with {status} before listening:\n{}",
                    spec.name,
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)).ok()
        });
        Proxy {
            child,
            admin,
            spec,
            _dir: dir,
        }
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// Start and wait until /ready answers 200 (it has an SVID).
    pub fn start_ready(spec: ProxySpec) -> Proxy {
        let p = Proxy::start(spec);
        p.wait_ready();
        p
    }

    pub fn wait_ready(&self) {
        eventually(
            &format!("{} ready", self.spec.name),
            Duration::from_secs(20),
            || (self.get("/ready").0 == 200).then_some(()),
        );
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
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read admin answer");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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
