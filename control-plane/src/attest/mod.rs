//! Attestation: how the control plane decides which SPIFFE ID a caller gets.
//! Join tokens and Kubernetes service-account tokens here; renewal relies on
//! the mTLS client certificate (see `server::workload`).

pub mod join_token;
pub mod k8s;

/// Why an attestation was refused. Every variant maps to a 4xx answer and a
/// `svid_rejected_total{reason}` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("join token is unknown")]
    JoinTokenUnknown,
    #[error("join token was already used; tokens are single-use")]
    JoinTokenReplayed,
    #[error("join token has expired")]
    JoinTokenExpired,
    #[error("kubernetes token attestation is not enabled on this control plane (start it with --jwks and --k8s-issuer)")]
    K8sDisabled,
    #[error("JWT is malformed: {0}")]
    JwtMalformed(String),
    #[error("JWT algorithm {0:?} is refused; only RS256 and ES256 are accepted")]
    JwtAlgRefused(String),
    #[error("JWT signature does not verify against the issuer's JWKS")]
    JwtBadSignature,
    #[error("JWT key id {0:?} is not in the issuer's JWKS")]
    JwtUnknownKey(String),
    #[error("JWT issuer is not the configured service-account issuer")]
    JwtWrongIssuer,
    #[error("JWT audience does not include `palisade`")]
    JwtWrongAudience,
    #[error("JWT has expired")]
    JwtExpired,
    #[error(
        "JWT is not yet valid: its `nbf` is more than {}s in the future",
        k8s::LEEWAY_SECS
    )]
    JwtNotYetValid,
    #[error("JWT subject {sub:?} is not `system:serviceaccount:<namespace>:<name>` with valid Kubernetes names: {why}")]
    JwtBadSubject { sub: String, why: String },
    #[error("renewal needs a client certificate: connect with your current SVID")]
    RenewNoClientCert,
    #[error("client certificate is not a usable SVID of this trust domain: {0}")]
    RenewBadClientCert(String),
}

impl AttestError {
    /// Short label for `svid_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AttestError::JoinTokenUnknown => "join_token_unknown",
            AttestError::JoinTokenReplayed => "join_token_replayed",
            AttestError::JoinTokenExpired => "join_token_expired",
            AttestError::K8sDisabled => "k8s_disabled",
            AttestError::JwtMalformed(_) => "jwt_malformed",
            AttestError::JwtAlgRefused(_) => "jwt_alg_refused",
            AttestError::JwtBadSignature => "jwt_bad_signature",
            AttestError::JwtUnknownKey(_) => "jwt_unknown_key",
            AttestError::JwtWrongIssuer => "jwt_wrong_issuer",
            AttestError::JwtWrongAudience => "jwt_wrong_audience",
            AttestError::JwtExpired => "jwt_expired",
            AttestError::JwtNotYetValid => "jwt_not_yet_valid",
            AttestError::JwtBadSubject { .. } => "jwt_bad_subject",
            AttestError::RenewNoClientCert => "renew_no_client_cert",
            AttestError::RenewBadClientCert(_) => "renew_bad_client_cert",
        }
    }
}
