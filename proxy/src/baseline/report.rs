//! Reports the workload's cumulative baseline to the control plane, which
//! merges the pods of each identity: every `report_interval`, and on drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::baseline::BaselineMode;
use tokio_util::sync::CancellationToken;

use crate::config::BaselineConfig;
use crate::identity::{report_baseline, ControlPlane, IdentityError};
use crate::Runtime;

/// A failing control plane is logged at most this often; every failure is
/// counted.
const LOG_EVERY: Duration = Duration::from_secs(300);

pub struct Reporter {
    cp: Arc<ControlPlane>,
    /// The pod, as the control plane keeps its latest report.
    instance: String,
    /// Zero: reporting is off.
    interval: Duration,
}

impl Reporter {
    /// `env` reads `POD_NAME` when `baseline.instance` is not set.
    pub fn new(
        cp: Arc<ControlPlane>,
        cfg: &BaselineConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Reporter {
        Reporter {
            cp,
            instance: instance_name(cfg.instance.as_deref(), env, crate::hostname),
            interval: cfg.report_interval,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Sends everything learned so far. `None` when there is nothing to
    /// send: reporting or the mode is off, no SVID is held yet, or no
    /// recorder exists. A failure is counted.
    pub async fn report(&self, rt: &Runtime) -> Option<Result<usize, IdentityError>> {
        if self.interval.is_zero()
            || rt.baseline.mode() == BaselineMode::Off
            || rt.creds.load().is_none()
        {
            return None;
        }
        let snap = rt.baseline.snapshot()?;
        let sent = report_baseline(&self.cp, &rt.creds, &self.instance, &snap).await;
        if sent.is_err() {
            rt.metrics.baseline.report_failures.inc();
        }
        Some(sent)
    }

    /// Reports every `report_interval` until `stop`.
    pub async fn run(self: Arc<Self>, rt: Arc<Runtime>, stop: CancellationToken) {
        if self.interval.is_zero() {
            return;
        }
        tracing::info!(
            instance = %self.instance, every_ms = self.interval.as_millis() as u64,
            "reporting the baseline to the control plane"
        );
        let mut log = FailureLog::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            match self.report(&rt).await {
                Some(Ok(entries)) => {
                    if log.recovered() {
                        tracing::info!(instance = %self.instance, "baseline reports reach the control plane again");
                    }
                    tracing::debug!(instance = %self.instance, entries, "baseline reported");
                }
                Some(Err(e)) => {
                    if let Some(unlogged) = log.failed(Instant::now()) {
                        tracing::warn!(
                            instance = %self.instance, error = %e, failures_not_logged = unlogged,
                            "cannot report the baseline to the control plane; trying again next interval"
                        );
                    }
                }
                None => {}
            }
        }
    }

    /// The last report, after drain, given at most `within`.
    pub async fn report_on_drain(&self, rt: &Runtime, within: Duration) {
        match tokio::time::timeout(within, self.report(rt)).await {
            Ok(Some(Ok(entries))) => {
                tracing::info!(instance = %self.instance, entries, "baseline reported on drain")
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(instance = %self.instance, error = %e, "cannot report the baseline on drain")
            }
            Ok(None) => {}
            Err(_) => {
                rt.metrics.baseline.report_failures.inc();
                tracing::warn!(
                    instance = %self.instance, within_ms = within.as_millis() as u64,
                    "the baseline report on drain timed out"
                );
            }
        }
    }
}

/// `baseline.instance`, else `POD_NAME`, else the host name.
fn instance_name(
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> Option<String>,
) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| env("POD_NAME").filter(|n| !n.is_empty()))
        .or_else(hostname)
        .unwrap_or_else(|| {
            tracing::warn!("no baseline.instance, POD_NAME or host name: reporting as `unnamed`");
            "unnamed".to_owned()
        })
}

/// The first failure after a success is logged, then one every
/// `LOG_EVERY`, saying how many went unlogged in between.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    /// `Some(failures not logged since the last log)` when this one is to
    /// be logged.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// A success: whether failures were logged before it.
    fn recovered(&mut self) -> bool {
        self.unlogged = 0;
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use palisade_policy::TrustDomain;

    use super::*;

    #[test]
    fn the_instance_is_the_setting_then_pod_name_then_the_host_name() {
        let pod = |k: &str| (k == "POD_NAME").then(|| "api-7d9f".to_owned());
        let none = |_: &str| None;
        let host = || Some("node-1".to_owned());
        assert_eq!(instance_name(Some("set"), pod, host), "set");
        assert_eq!(instance_name(None, pod, host), "api-7d9f");
        assert_eq!(instance_name(None, none, host), "node-1");
        assert_eq!(instance_name(None, none, || None), "unnamed");
    }

    #[test]
    fn failures_are_logged_once_per_interval_with_the_count_in_between() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.failed(t0), Some(0));
        assert_eq!(log.failed(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.failed(t0 + Duration::from_secs(2)), None);
        assert_eq!(log.failed(t0 + LOG_EVERY), Some(2));
        assert!(log.recovered());
        assert!(!log.recovered());
        assert_eq!(
            log.failed(t0 + LOG_EVERY),
            Some(0),
            "logged after a success"
        );
    }

    #[tokio::test]
    async fn nothing_is_sent_before_the_svid_even_in_learn_mode() {
        let mut cfg = BaselineConfig::default();
        cfg.settings.mode = BaselineMode::Learn;
        let mut rt = Runtime::without_identity();
        rt.baseline = crate::baseline::Live::new(&cfg);
        let cp = Arc::new(ControlPlane::new(
            "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap(),
            TrustDomain::new("cluster.local").unwrap(),
            Vec::new(),
            Duration::from_secs(1),
        ));
        let r = Reporter::new(cp, &cfg, |_| None);
        assert!(r.report(&rt).await.is_none());
        assert_eq!(rt.metrics.baseline.report_failures.get(), 0);
    }
}
