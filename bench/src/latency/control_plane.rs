//! The real Palisade control plane as the bench's CA: started from its binary
//! with a throwaway state dir; SVIDs are issued through join tokens from
//! `palisadectl token create`, exactly as a workload gets them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_identity::api::{Attestation, SvidRequest};
use palisade_identity::client::ApiClient;
use palisade_identity::csr::new_key_and_csr;
use palisade_identity::svid::certs_from_pem;
use palisade_policy::TrustDomain;

use super::certs::SvidFiles;
use super::child::{free_addr, ProxyProcess};

/// A running control plane; stops when dropped.
pub struct ControlPlane {
    process: ProxyProcess,
    pub addr: SocketAddr,
    state_dir: PathBuf,
    palisadectl: PathBuf,
}

impl ControlPlane {
    /// Start `palisade-control-plane` under `dir` and wait until its API port
    /// accepts and its admin socket exists.
    pub fn start(server: &Path, palisadectl: &Path, dir: &Path) -> anyhow::Result<ControlPlane> {
        let state_dir = dir.join("control-plane");
        let addr = free_addr()?;
        let mut cmd = Command::new(server);
        cmd.arg("--state-dir")
            .arg(&state_dir)
            .args(["--listen", &addr.to_string()])
            .args(["--trust-domain", "cluster.local"]);
        let mut process = ProxyProcess::spawn("palisade-control-plane", cmd, dir)?;
        process.wait_listening(&[addr], Duration::from_secs(30))?;
        let cp = ControlPlane {
            process,
            addr,
            state_dir,
            palisadectl: palisadectl.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cp.admin_socket().exists() {
            if Instant::now() >= deadline {
                bail!(
                    "the control plane's admin socket never appeared:\n{}",
                    cp.process.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(cp)
    }

    /// The bootstrap trust bundle the control plane writes.
    pub fn bundle(&self) -> PathBuf {
        self.state_dir.join("bundle.pem")
    }

    fn admin_socket(&self) -> PathBuf {
        self.state_dir.join("admin.sock")
    }

    /// A single-use join token bound to `spiffe_id`.
    pub fn join_token(&self, spiffe_id: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.palisadectl)
            .args(["token", "create", "--admin-socket"])
            .arg(self.admin_socket())
            .args(["--identity", spiffe_id, "--ttl", "10m"])
            .output()
            .with_context(|| format!("running {}", self.palisadectl.display()))?;
        if !out.status.success() {
            bail!(
                "palisadectl token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Issue an SVID for `spiffe_id` with a fresh key and write chain and key
    /// as `<dir>/<name>.pem` and `<dir>/<name>-key.pem`.
    pub async fn issue(
        &self,
        spiffe_id: &'static str,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<SvidFiles> {
        let bundle_pem = std::fs::read(self.bundle())?;
        let bundle = certs_from_pem(&bundle_pem)?;
        let td = TrustDomain::new("cluster.local")?;
        let client = ApiClient::new(&self.addr.to_string(), &td, &bundle, None)?;
        let (key, csr) = new_key_and_csr()?;
        let request = SvidRequest {
            csr,
            attestation: Attestation::JoinToken(self.join_token(spiffe_id)?),
        };
        let svid = client.issue(&request).await.context("POST /v1/svid")?;
        if svid.spiffe_id != spiffe_id {
            bail!(
                "asked for {spiffe_id}, the control plane issued {}",
                svid.spiffe_id
            );
        }
        let chain = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&chain, svid.svid_chain)?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(SvidFiles {
            spiffe_id,
            chain,
            key: key_path,
        })
    }

    /// Fails with its log if the control plane has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }
}
