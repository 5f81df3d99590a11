//! The control planes a mesh run measures: one replica on its own state
//! directory, whose policy directory the pushes rewrite; or several replicas
//! on a 3-member etcd cluster the bench starts, with one KEK, the pushes
//! applied through the first replica's admin socket so they reach the
//! others' sidecars through the store's watch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_identity::api::PolicyFileText;
use palisade_identity::client::AdminClient;
use palisadectl::local::{http_request, ControlPlane, ControlPlaneSpec, EtcdCluster};

use super::push::{policy, write_policy, FILE};

/// Members of the etcd cluster behind several replicas.
const ETCD_MEMBERS: usize = 3;

/// Where a push is applied.
enum PolicySource {
    /// The single replica's `--policy-dir`.
    Dir(PathBuf),
    /// `PUT /v1/policies` on the first replica's admin socket.
    Store(AdminClient),
}

pub struct Cluster {
    /// Dropped before `etcd`: the replicas stop before their store does.
    pub replicas: Vec<ControlPlane>,
    policies: PolicySource,
    _etcd: Option<EtcdCluster>,
}

impl Cluster {
    /// `replicas` control planes in `dir` for `n` sidecars, serving an
    /// endpoint map of `endpoints` and push 0's policy.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        replicas: usize,
        n: usize,
        endpoint_map: &str,
    ) -> anyhow::Result<Cluster> {
        let endpoints = dir.join("endpoints.yaml");
        std::fs::write(&endpoints, endpoint_map)?;
        let spec = |extra: &[String]| ControlPlaneSpec {
            extra_args: [
                "--max-connections".into(),
                (n + 4096).to_string(),
                "--endpoints".into(),
                endpoints.display().to_string(),
            ]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect(),
            log_filter: "warn".into(),
            ..ControlPlaneSpec::default()
        };
        let palisadectl = bin.with_file_name("palisadectl");
        if replicas == 1 {
            let policies = dir.join("policies");
            std::fs::create_dir(&policies)?;
            write_policy(&policies, 0)?;
            let spec = spec(&["--policy-dir".into(), policies.display().to_string()]);
            let cp = ControlPlane::start(bin, &palisadectl, dir, spec)?;
            return Ok(Cluster {
                replicas: vec![cp],
                policies: PolicySource::Dir(policies),
                _etcd: None,
            });
        }
        let etcd = EtcdCluster::start(ETCD_MEMBERS).context("starting etcd")?;
        let mut cps = Vec::with_capacity(replicas);
        for r in 0..replicas {
            let home = dir.join(format!("replica-{r}"));
            std::fs::create_dir(&home)?;
            let spec = ControlPlaneSpec {
                etcd: Some(etcd.store_spec()),
                ..spec(&[])
            };
            cps.push(
                ControlPlane::start(bin, &palisadectl, &home, spec)
                    .with_context(|| format!("starting replica {r}"))?,
            );
        }
        let cluster = Cluster {
            policies: PolicySource::Store(AdminClient::new(&cps[0].admin_socket())),
            replicas: cps,
            _etcd: Some(etcd),
        };
        cluster.apply(0).await?;
        Ok(cluster)
    }

    /// Replaces the served policy with push `k`'s.
    pub async fn apply(&self, k: u32) -> anyhow::Result<()> {
        match &self.policies {
            PolicySource::Dir(dir) => write_policy(dir, k),
            PolicySource::Store(admin) => {
                let files = vec![PolicyFileText {
                    name: FILE.into(),
                    yaml: policy(k),
                }];
                admin
                    .apply_policies(files, false)
                    .await
                    .context("applying the policy through the first replica")?;
                Ok(())
            }
        }
    }

    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        self.replicas
            .iter()
            .enumerate()
            .map(|(r, cp)| cp.pid().with_context(|| format!("replica {r} is stopped")))
            .collect()
    }

    /// The API address of each replica.
    pub fn addrs(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|cp| cp.addr().to_string())
            .collect()
    }

    /// The last lines of every replica's log.
    pub fn log_tails(&self, lines: usize) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(r, cp)| {
                let log = cp.log();
                let all: Vec<&str> = log.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("replica {r} log:\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The error counters on every replica's metrics port, summed, keyed by
    /// metric and label (`api_errors_total{kind="handshake_timeout"}`).
    pub async fn errors(&self) -> BTreeMap<String, u64> {
        let mut sum = BTreeMap::new();
        for cp in &self.replicas {
            let addr = cp.metrics_addr();
            let scraped =
                tokio::task::spawn_blocking(move || http_request(addr, "GET", "/metrics")).await;
            let Ok(Ok((200, text))) = scraped else {
                continue;
            };
            for (name, value) in text
                .lines()
                .filter(|l| {
                    l.starts_with("api_errors_total{") || l.starts_with("svid_rejected_total{")
                })
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_owned(), value.parse::<u64>().ok()?))
                })
            {
                *sum.entry(name).or_default() += value;
            }
        }
        sum
    }
}
