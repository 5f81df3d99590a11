//! The proxy's view of the control plane: the control plane crate's
//! SPIFFE-ID-checked API client, built per call from the current state (trust
//! = bootstrap bundle plus the current bundle, so a CA rotation does not lock
//! the proxy out; mTLS with the current SVID for renewals), with a deadline.

use std::future::Future;
use std::time::Duration;

use palisade_identity::api::{
    Attestation, EndpointsResponse, PoliciesResponse, SvidRequest, SvidResponse,
};
use palisade_identity::client::{ApiClient, ClientError};
use palisade_policy::TrustDomain;
use rustls::pki_types::CertificateDer;

use crate::tls::Credentials;

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

    fn client(&self, creds: Option<&Credentials>) -> Result<ApiClient, ClientError> {
        let mut trust = self.bootstrap.clone();
        let mut identity = None;
        if let Some(c) = creds {
            trust.extend(
                c.bundle
                    .certs
                    .iter()
                    .filter(|b| !self.bootstrap.contains(b))
                    .cloned(),
            );
            identity = Some((c.svid.key.cert.clone(), c.svid.key_der.clone_key()));
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
        let client = self.client(None)?;
        self.deadline(client.issue(&SvidRequest { csr, attestation }))
            .await
    }

    /// Renewal over mTLS with the SVID being replaced.
    pub async fn renew(&self, csr: &str, current: &Credentials) -> Result<SvidResponse, CpError> {
        let client = self.client(Some(current))?;
        self.deadline(client.renew(csr)).await
    }

    pub async fn endpoints(&self, current: &Credentials) -> Result<EndpointsResponse, CpError> {
        let client = self.client(Some(current))?;
        self.deadline(client.endpoints()).await
    }

    /// The policies that select this workload; a long poll: with `known`,
    /// the control plane answers once its version differs, or after `wait`.
    pub async fn policies(
        &self,
        current: &Credentials,
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
