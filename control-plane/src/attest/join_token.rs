//! Join tokens: single-use, time-bounded secrets, each bound to one SPIFFE
//! ID. Only their SHA-256 is kept, in memory; a used token is remembered until
//! it would have expired so a replay is reported as such.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use palisade_policy::SpiffeId;
use sha2::{Digest, Sha256};

use super::AttestError;

/// At most this many live tokens (used ones count until they expire), so a
/// runaway script cannot grow memory without bound.
pub const MAX_TOKENS: usize = 100_000;
/// Longest TTL a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

const PREFIX: &str = "pjt_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("ttl must be between 1 second and 30 days")]
    BadTtl,
    #[error("too many outstanding join tokens ({MAX_TOKENS}); wait for some to expire")]
    TooMany,
}

struct Entry {
    id: SpiffeId,
    expires_at: i64,
    used: bool,
}

#[derive(Default)]
pub struct JoinTokens {
    tokens: Mutex<HashMap<[u8; 32], Entry>>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl JoinTokens {
    /// Creates a token for `id`, valid for `ttl`. Returns the token and its
    /// expiry (Unix seconds).
    pub fn create(&self, id: SpiffeId, ttl: Duration) -> Result<(String, i64), CreateError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(CreateError::BadTtl);
        }
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let now = now();
        let expires_at = now + ttl.as_secs() as i64;
        let mut map = self.tokens.lock().expect("tokens lock");
        if map.len() >= MAX_TOKENS {
            map.retain(|_, e| e.expires_at > now);
            if map.len() >= MAX_TOKENS {
                return Err(CreateError::TooMany);
            }
        }
        map.insert(
            digest(&token),
            Entry {
                id,
                expires_at,
                used: false,
            },
        );
        Ok((token, expires_at))
    }

    /// Spends a token: the SPIFFE ID it is bound to, exactly once.
    pub fn redeem(&self, token: &str) -> Result<SpiffeId, AttestError> {
        let mut map = self.tokens.lock().expect("tokens lock");
        let entry = map
            .get_mut(&digest(token))
            .ok_or(AttestError::JoinTokenUnknown)?;
        if entry.used {
            return Err(AttestError::JoinTokenReplayed);
        }
        if entry.expires_at <= now() {
            return Err(AttestError::JoinTokenExpired);
        }
        entry.used = true;
        Ok(entry.id.clone())
    }

    /// Forgets tokens well past their expiry (an expired token is still
    /// reported as expired for a minute, then as unknown).
    pub fn prune(&self) {
        let cutoff = now() - 60;
        self.tokens
            .lock()
            .expect("tokens lock")
            .retain(|_, e| e.expires_at > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap()
    }

    #[test]
    fn token_redeems_once_then_reports_replay() {
        let t = JoinTokens::default();
        let (tok, _) = t.create(id(), Duration::from_secs(60)).unwrap();
        assert_eq!(t.redeem(&tok).unwrap(), id());
        assert_eq!(t.redeem(&tok), Err(AttestError::JoinTokenReplayed));
        assert_eq!(t.redeem("pjt_nope"), Err(AttestError::JoinTokenUnknown));
    }

    #[test]
    fn zero_and_huge_ttls_are_refused() {
        let t = JoinTokens::default();
        assert_eq!(t.create(id(), Duration::ZERO), Err(CreateError::BadTtl));
        assert_eq!(t.create(id(), MAX_TTL * 2), Err(CreateError::BadTtl));
    }
}
