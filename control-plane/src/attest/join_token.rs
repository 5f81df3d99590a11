//! Join tokens: single-use, time-bounded secrets, each bound to one SPIFFE
//! ID. Only their SHA-256 is kept, in the state store; a used token is
//! remembered until it would have expired so a replay is reported as such.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use palisade_policy::SpiffeId;
use sha2::{Digest, Sha256};

use super::AttestError;
use crate::store::{Redeemed, Store, StoreError, StoredToken};

/// At most this many live tokens in the directory store's memory (used ones
/// count until they expire), so a runaway script cannot grow memory without
/// bound.
pub const MAX_TOKENS: usize = 100_000;
/// Longest TTL a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

const PREFIX: &str = "pjt_";

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("ttl must be between 1 second and 30 days")]
    BadTtl,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a token was not spent: the caller's fault, or the store's.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error(transparent)]
    Attest(#[from] AttestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct JoinTokens {
    store: Arc<dyn Store>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl JoinTokens {
    pub fn new(store: Arc<dyn Store>) -> JoinTokens {
        JoinTokens { store }
    }

    /// Creates a token for `id`, valid for `ttl`. Returns the token and its
    /// expiry (Unix seconds).
    pub async fn create(&self, id: SpiffeId, ttl: Duration) -> Result<(String, i64), CreateError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(CreateError::BadTtl);
        }
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let expires_at = now() + ttl.as_secs() as i64;
        let stored = StoredToken {
            spiffe_id: id.to_string(),
            expires_at,
        };
        self.store.create_token(&digest(&token), &stored).await?;
        Ok((token, expires_at))
    }

    /// Spends a token: the SPIFFE ID it is bound to, exactly once, whichever
    /// replica is asked.
    pub async fn redeem(&self, token: &str) -> Result<SpiffeId, RedeemError> {
        let t = match self.store.redeem_token(&digest(token)).await? {
            Redeemed::Spent(t) => t,
            Redeemed::Replayed => return Err(AttestError::JoinTokenReplayed.into()),
            Redeemed::Unknown => return Err(AttestError::JoinTokenUnknown.into()),
        };
        if t.expires_at <= now() {
            return Err(AttestError::JoinTokenExpired.into());
        }
        SpiffeId::parse(&t.spiffe_id)
            .map_err(|e| StoreError::Corrupt(format!("join token identity: {e}")).into())
    }

    /// Forgets tokens well past their expiry (an expired token is still
    /// reported as expired for a minute, then as unknown).
    pub async fn prune(&self) -> Result<(), StoreError> {
        self.store.prune_tokens(now() - 60).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap()
    }

    fn tokens(dir: &std::path::Path) -> JoinTokens {
        JoinTokens::new(Arc::new(
            crate::store::dir::DirStore::open(dir, None, None, None).unwrap(),
        ))
    }

    #[tokio::test]
    async fn token_redeems_once_then_reports_replay() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let (tok, _) = t.create(id(), Duration::from_secs(60)).await.unwrap();
        assert_eq!(t.redeem(&tok).await.unwrap(), id());
        assert!(matches!(
            t.redeem(&tok).await,
            Err(RedeemError::Attest(AttestError::JoinTokenReplayed))
        ));
        assert!(matches!(
            t.redeem("pjt_nope").await,
            Err(RedeemError::Attest(AttestError::JoinTokenUnknown))
        ));
    }

    #[tokio::test]
    async fn zero_and_huge_ttls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        assert!(matches!(
            t.create(id(), Duration::ZERO).await,
            Err(CreateError::BadTtl)
        ));
        assert!(matches!(
            t.create(id(), MAX_TTL * 2).await,
            Err(CreateError::BadTtl)
        ));
    }
}
