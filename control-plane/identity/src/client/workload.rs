//! A workload's view of the control plane (the proxy's SVID client): the
//! SPIFFE-ID-checked API client, built per call from the current state (trust
//! = bootstrap bundle plus the current bundle, so a CA rotation does not lock
//! the workload out; mTLS with the current SVID for renewals), with a deadline.

use std::future::Future;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

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
    addr: String,
    trust_domain: TrustDomain,
    bootstrap: Vec<CertificateDer<'static>>,
    timeout: Duration,
}

impl ControlPlane {
    pub fn new(
        addr: String,
        trust_domain: TrustDomain,
        bootstrap: Vec<CertificateDer<'static>>,
        timeout: Duration,
    ) -> Self {
        ControlPlane {
            addr,
            trust_domain,
            bootstrap,
            timeout,
        }
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
        ApiClient::new(&self.addr, &self.trust_domain, &trust, identity)
    }

    async fn deadline<T>(
        &self,
        f: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, CpError> {
        Ok(tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| CpError::Timeout(self.timeout))??)
    }

    /// First issuance, authenticated by an attestation credential.
    pub async fn issue(
        &self,
        csr: String,
        attestation: Attestation,
    ) -> Result<SvidResponse, CpError> {
        let client = self.client(None::<&NoSvid>)?;
        self.deadline(client.issue(&SvidRequest { csr, attestation }))
            .await
    }

    /// Renewal over mTLS with the SVID being replaced.
    pub async fn renew(&self, csr: &str, current: &impl Current) -> Result<SvidResponse, CpError> {
        let client = self.client(Some(current))?;
        self.deadline(client.renew(csr)).await
    }

    pub async fn endpoints(&self, current: &impl Current) -> Result<EndpointsResponse, CpError> {
        let client = self.client(Some(current))?;
        self.deadline(client.endpoints()).await
    }

    /// Sends security events (a JSON array) to the control plane's collector.
    pub async fn post_events(
        &self,
        current: &impl Current,
        body: Vec<u8>,
    ) -> Result<EventsAccepted, CpError> {
        let client = self.client(Some(current))?;
        self.deadline(async { client.connect().await?.post_events(body).await })
            .await
    }

    /// Reports this workload's cumulative baseline (a snapshot's JSON) as
    /// `instance` (the pod); the control plane keeps the latest per instance
    /// and merges instances when read.
    pub async fn post_baseline(
        &self,
        current: &impl Current,
        instance: &str,
        snapshot_json: Vec<u8>,
    ) -> Result<BaselineAccepted, CpError> {
        let client = self.client(Some(current))?;
        self.deadline(async {
            client
                .connect()
                .await?
                .post_baseline(instance, snapshot_json)
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
        let deadline = wait + self.timeout;
        let fetch = async { client.connect().await?.get_json(&path).await };
        tokio::time::timeout(deadline, fetch)
            .await
            .map_err(|_| CpError::Timeout(deadline))?
            .map_err(CpError::from)
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
