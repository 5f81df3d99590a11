//! A real 3-member etcd cluster for a test, started by the shared harness
//! (`palisadectl::local::EtcdCluster`): the same calls, panicking on failure.

use std::path::Path;
use std::time::Duration;

use palisadectl::local::EtcdStoreSpec;

/// A running etcd cluster, every member killed and its directory removed on drop.
pub struct EtcdCluster(palisadectl::local::EtcdCluster);

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster(palisadectl::local::EtcdCluster::start(n).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Starts `n` members serving clients over TLS only, and only to
    /// clients with a certificate from the cluster's own CA.
    pub fn start_tls(n: usize) -> EtcdCluster {
        EtcdCluster(
            palisadectl::local::EtcdCluster::start_tls(n).unwrap_or_else(|e| panic!("{e:#}")),
        )
    }

    /// The client URLs of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.0.endpoints()
    }

    /// `--store etcd` on this cluster, for `ControlPlaneSpec::etcd`.
    pub fn store_spec(&self) -> EtcdStoreSpec {
        self.0.store_spec()
    }

    pub fn kek_file(&self) -> &Path {
        self.0.kek_file()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.0.kill(i);
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.0.restart(i).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Kills all but one member: no quorum.
    pub fn lose_quorum(&mut self) {
        self.0.lose_quorum();
    }

    /// Restarts every stopped member and waits for a leader.
    pub fn restore_quorum(&mut self) {
        self.0.restore_quorum().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until every running member reports itself healthy.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        self.0
            .wait_healthy(timeout)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}
