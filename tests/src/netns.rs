//! Pods as network namespaces: a private "switch" namespace holds a bridge,
//! and each pod gets a veth into it and one address on 198.18.0.0/24 (the
//! benchmarking range, never routed anywhere). Everything is torn down on drop.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether this process may create network namespaces (root with iproute2).
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge in its own namespace; pods join it.
pub struct Network {
    prefix: String,
    switch: String,
    pods: u8,
}

impl Network {
    pub fn new() -> Network {
        // Short names: interface names are limited to 15 bytes.
        let prefix = format!(
            "p{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{prefix}-sw");
        sh(&["ip", "netns", "add", &switch]);
        sh(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        sh(&["ip", "-n", &switch, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            &switch,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "br0",
        ]);
        Network {
            prefix,
            switch,
            pods: 0,
        }
    }

    /// The switch namespace's own address, reachable from every pod (run
    /// shared services such as the control plane there).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 1)
    }

    pub fn host(&self) -> Pod {
        Pod {
            ns: self.switch.clone(),
            ip: self.host_ip(),
            owned: false,
        }
    }

    /// A new pod: a namespace with `eth0` on the bridge and loopback up.
    pub fn pod(&mut self, name: &str) -> Pod {
        self.pods += 1;
        let n = self.pods;
        let ns = format!("{}-{name}", self.prefix);
        let ip = Ipv4Addr::new(198, 18, 0, 10 + n);
        let host_if = format!("{}v{n}", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip",
            "-n",
            &self.switch,
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.switch,
            "link",
            "set",
            &host_if,
            "master",
            "br0",
            "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        Pod {
            ns,
            ip,
            owned: true,
        }
    }

    /// The switch-side interface of the n-th pod (1-based), for captures.
    pub fn veth_of(&self, n: u8) -> String {
        format!("{}v{n}", self.prefix)
    }

    pub fn switch_ns(&self) -> &str {
        &self.switch
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for n in 1..=self.pods {
            let _ = Command::new("ip")
                .args(["-n", &self.switch, "link", "del", &self.veth_of(n)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .output();
    }
}

/// One pod: a network namespace with an address on the bridge.
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    owned: bool,
}

impl Pod {
    /// A command that runs inside this pod's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// A command that runs inside this pod as `uid` (as a sidecar would).
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(program);
        c
    }

    /// Run `f` on a thread that has joined this pod's namespace: sockets it
    /// creates (listeners included) live in the pod and stay usable from any
    /// thread afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/run/netns").join(&self.ns);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in pod namespace panicked")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        }
    }
}

impl Network {
    /// Make `target` (an address in this test's own namespace, such as a
    /// control plane on loopback) reachable from every pod at
    /// `host_ip():port`: a plain TCP relay whose listener lives in the switch
    /// namespace and whose outgoing connections start from the caller's.
    pub fn expose(&self, port: u16, target: std::net::SocketAddr) -> std::net::SocketAddr {
        use std::net::{TcpListener, TcpStream};
        let at = std::net::SocketAddr::from((self.host_ip(), port));
        let listener = self
            .host()
            .enter(move || TcpListener::bind(at))
            .expect("bind relay in switch namespace");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(inside) = conn else { continue };
                let Ok(outside) = TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (inside.try_clone().unwrap(), outside.try_clone().unwrap()),
                    (outside, inside),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        at
    }
}
