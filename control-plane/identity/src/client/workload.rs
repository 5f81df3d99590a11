//! A workload's view of the control plane (the proxy's SVID client): the
//! SPIFFE-ID-checked API client, built per call from the current state (trust
//! = bootstrap bundle plus the current bundle, so a CA rotation does not lock
//! the workload out; mTLS with the current SVID for renewals), with a deadline,
//! through whichever of the control plane's addresses answers.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;

use super::failover::{ControlPlaneAddrs, Failover, OnSwitch};
use super::{ApiClient, ClientError, ClientIdentity};
use crate::api::{
    Attestation, BaselineAccepted, EndpointsResponse, EventsAccepted, PoliciesResponse,
    SvidRequest, SvidResponse,
};
use crate::spiffe::TrustDomain;

/// What a workload holds once it has an SVID: the trust bundle that came
/// with it, and its chain and key for mTLS.
pub trait Current {
    fn bundle(&self) -> &[CertificateDer<'static>];
    fn identity(&self) -> ClientIdentity;
}

#[derive(Debug, thiserror::Error)]
pub enum CpError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct ControlPlane {
    failover: Failover,
    trust_domain: TrustDomain,
    bootstrap: Vec<CertificateDer<'static>>,
    timeout: Duration,
}

impl ControlPlane {
    /// A client of the replicas at `addrs`; each request gets `timeout`
    /// per address (a long poll its wait on top).
    pub fn new(
        addrs: impl Into<ControlPlaneAddrs>,
        trust_domain: TrustDomain,
        bootstrap: Vec<CertificateDer<'static>>,
        timeout: Duration,
    ) -> Self {
        ControlPlane {
            failover: Failover::new(addrs.into()),
            trust_domain,
            bootstrap,
            timeout,
        }
    }

    /// Calls `f` each time requests move to another address (the first
    /// answer included).
    pub fn on_switch(mut self, f: OnSwitch) -> Self {
        self.failover.set_on_switch(f);
        self
    }

    /// The address that answered last.
    pub fn in_use(&self) -> Option<SocketAddr> {
        self.failover.in_use()
    }

    fn client(&self, current: Option<&impl Current>) -> Result<ApiClient, ClientError> {
        let mut trust = self.bootstrap.clone();
        let mut identity = None;
        if let Some(c) = current {
            trust.extend(
                c.bundle()
                    .iter()
                    .filter(|b| !self.bootstrap.contains(b))
                    .cloned(),
            );
            identity = Some(c.identity());
        }
        ApiClient::new(self.failover.first(), &self.trust_domain, &trust, identity)
    }

    /// One request through whichever address answers, each try within
    /// `deadline`.
    async fn call<T, Fut>(
        &self,
        client: &ApiClient,
        deadline: Duration,
        request: impl Fn(ApiClient) -> Fut,
    ) -> Result<T, CpError>
    where
        Fut: Future<Output = Result<T, ClientError>>,
    {
        self.failover
            .call(self.timeout, deadline, |addr| request(client.at(addr)))
            .await
    }

    /// First issuance, authenticated by an attestation credential.
    pub async fn issue(
        &self,
        csr: String,
        attestation: Attestation,
    ) -> Result<SvidResponse, CpError> {
        let client = self.client(None::<&NoSvid>)?;
        let req = &SvidRequest { csr, attestation };
        self.call(&client, self.timeout, |c| async move { c.issue(req).await })
            .await
    }

    /// Renewal over mTLS with the SVID being replaced.
    pub async fn renew(&self, csr: &str, current: &impl Current) -> Result<SvidResponse, CpError> {
        let client = self.client(Some(current))?;
        self.call(&client, self.timeout, |c| async move { c.renew(csr).await })
            .await
    }

    pub async fn endpoints(&self, current: &impl Current) -> Result<EndpointsResponse, CpError> {
        let client = self.client(Some(current))?;
        self.call(
            &client,
            self.timeout,
            |c| async move { c.endpoints().await },
        )
        .await
    }

    /// Sends security events (a JSON array) to the control plane's collector.
    pub async fn post_events(
        &self,
        current: &impl Current,
        body: impl Into<Bytes>,
    ) -> Result<EventsAccepted, CpError> {
        let client = self.client(Some(current))?;
        let body = &body.into();
        self.call(&client, self.timeout, |c| async move {
            c.connect().await?.post_events(body.clone()).await
        })
        .await
    }

    /// Reports this workload's cumulative baseline (a snapshot's JSON) as
    /// `instance` (the pod); the control plane keeps the latest per instance
    /// and merges instances when read.
    pub async fn post_baseline(
        &self,
        current: &impl Current,
        instance: &str,
        snapshot_json: impl Into<Bytes>,
    ) -> Result<BaselineAccepted, CpError> {
        let client = self.client(Some(current))?;
        let body = &snapshot_json.into();
        self.call(&client, self.timeout, |c| async move {
            c.connect()
                .await?
                .post_baseline(instance, body.clone())
                .await
        })
        .await
    }

    /// The policies that select this workload; a long poll: with `known`,
    /// the control plane answers once its version differs, or after `wait`.
    pub async fn policies(
        &self,
        current: &impl Current,
        known: Option<u64>,
        wait: Duration,
    ) -> Result<PoliciesResponse, CpError> {
        let client = self.client(Some(current))?;
        let path = match known {
            Some(v) => format!("/v1/policies?version={v}&wait={}", wait.as_secs()),
            None => "/v1/policies".to_owned(),
        };
        let path = path.as_str();
        self.call(&client, wait + self.timeout, |c| async move {
            c.connect().await?.get_json(path).await
        })
        .await
    }
}

impl<T: Current + ?Sized> Current for std::sync::Arc<T> {
    fn bundle(&self) -> &[CertificateDer<'static>] {
        (**self).bundle()
    }
    fn identity(&self) -> ClientIdentity {
        (**self).identity()
    }
}

/// The state before the first SVID: nothing to present.
enum NoSvid {}

impl Current for NoSvid {
    fn bundle(&self) -> &[CertificateDer<'static>] {
        match *self {}
    }
    fn identity(&self) -> ClientIdentity {
        match *self {}
    }
}
