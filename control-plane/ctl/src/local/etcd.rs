//! A real etcd v3 cluster on loopback, from Debian's `etcd-server`, for the
//! tests and the bench: each member in its own temp directory on free ports,
//! killed on drop, optionally serving clients over TLS with client
//! certificates. A member can be killed and restarted, so a test can lose
//! and restore quorum.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{free_addr, http_request, EtcdStoreSpec, Process};

/// The etcd server binary.
const ETCD: &str = "etcd";

struct Member {
    name: String,
    client: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    process: Option<Process>,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// A key-encryption key file for control planes on this cluster.
    kek: PathBuf,
    /// With client TLS: the CA, and a client certificate and key it signed.
    tls: Option<[PathBuf; 3]>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with(n, false)
    }

    /// Starts `n` members serving clients over TLS only, and only to
    /// clients with a certificate from the cluster's own CA.
    pub fn start_tls(n: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with(n, true)
    }

    fn start_with(n: usize, tls: bool) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::Builder::new()
            .prefix("palisade-etcd-")
            .tempdir()?;
        let members = (0..n)
            .map(|i| {
                Ok(Member {
                    name: format!("m{i}"),
                    client: free_addr()?,
                    peer: free_addr()?,
                    process: None,
                })
            })
            .collect::<std::io::Result<Vec<Member>>>()?;
        let kek = dir.path().join("kek");
        std::fs::write(&kek, hex_key()).context("writing the KEK")?;
        std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .context("chmod the KEK")?;
        let tls = match tls {
            true => Some(write_pki(dir.path())?),
            false => None,
        };
        let mut cluster = EtcdCluster {
            dir,
            members,
            kek,
            tls,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(20))?;
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let initial = self.initial_cluster();
        let data = self.data_dir(i);
        let log = self
            .dir
            .path()
            .join(format!("{}.log", self.members[i].name));
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let m = &mut self.members[i];
        let client = format!("{scheme}://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let mut cmd = Command::new(ETCD);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "palisade-test"])
            // Short timings: a lost member or leader is noticed in under a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if self.tls.is_some() {
            let pki = self.dir.path();
            cmd.arg("--cert-file")
                .arg(pki.join("server.pem"))
                .arg("--key-file")
                .arg(pki.join("server-key.pem"))
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(pki.join("ca.pem"));
        }
        let p = Process::spawn_logged(&m.name, &mut cmd, &log)
            .context("install Debian's etcd-server (`apt-get install etcd-server`)")?;
        m.process = Some(p);
        Ok(())
    }

    /// The client URLs of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://{}", m.client))
            .collect()
    }

    /// `--store etcd` on this cluster, for `ControlPlaneSpec::etcd`.
    pub fn store_spec(&self) -> EtcdStoreSpec {
        EtcdStoreSpec {
            endpoints: self.endpoints(),
            kek_file: self.kek.clone(),
            tls: self.tls.clone(),
        }
    }

    pub fn kek_file(&self) -> &Path {
        &self.kek
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].process = None;
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.members[i].process.is_none(), "member {i} is running");
        self.spawn(i)
    }

    /// Kills all but one member: no quorum.
    pub fn lose_quorum(&mut self) {
        for i in 1..self.members.len() {
            self.kill(i);
        }
    }

    /// Restarts every stopped member and waits for a leader.
    pub fn restore_quorum(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                self.spawn(i)?;
            }
        }
        self.wait_healthy(Duration::from_secs(20))
    }

    /// Waits until every running member reports itself healthy (which
    /// needs a leader, so a quorum).
    pub fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let tls = self.tls.clone();
        for m in self.members.iter_mut() {
            let Some(p) = m.process.as_mut() else {
                continue;
            };
            let addr = m.client;
            let left = deadline.saturating_duration_since(Instant::now());
            p.wait_until("a healthy etcd member", left, || match &tls {
                None => http_request(addr, "GET", "/health")
                    .ok()
                    .filter(|(s, body)| *s == 200 && body.contains("\"health\":\"true\""))
                    .map(drop),
                Some([ca, cert, key]) => Command::new("etcdctl")
                    .arg(format!("--endpoints=https://{addr}"))
                    .arg("--cacert")
                    .arg(ca)
                    .arg("--cert")
                    .arg(cert)
                    .arg("--key")
                    .arg(key)
                    .args(["endpoint", "health"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(drop),
            })?;
        }
        Ok(())
    }
}

/// A random 256-bit key, hex.
fn hex_key() -> String {
    let key: [u8; 32] = rand::random();
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, PEM
/// files in `dir`: `[ca, client cert, client key]`.
fn write_pki(dir: &Path) -> anyhow::Result<[PathBuf; 3]> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };
    let write = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_path = write("ca.pem", ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, eku: ExtendedKeyUsagePurpose| -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["localhost".to_owned()])?;
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer)?;
        Ok((
            write(&format!("{name}.pem"), cert.pem())?,
            write(&format!("{name}-key.pem"), key.serialize_pem())?,
        ))
    };
    leaf("server", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (cert, key) = leaf("client", ExtendedKeyUsagePurpose::ClientAuth)?;
    Ok([ca_path, cert, key])
}
