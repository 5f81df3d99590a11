//! The CA's persistent state as the stores keep it: the index of signing
//! CAs and each one's certificate and private key. Keys are sealed under the
//! key-encryption key whenever there is one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::kek::{Kek, Sealed};
use crate::store::StoreError;

/// Where a signing CA stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaStatus {
    /// In the bundle, not yet signing: peers learn it before it is used.
    Prepared,
    /// Signs every new SVID.
    Active,
    /// Signs nothing; stays in the bundle until `retire_after` (Unix seconds),
    /// when every SVID it signed has expired.
    Retired { retire_after: i64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRecord {
    pub seq: u64,
    pub status: CaStatus,
}

/// The signing CAs and the bundle's sequence number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaIndex {
    /// SPIFFE bundle `spiffe_sequence`: bumped on every bundle change.
    pub bundle_sequence: u64,
    /// Next CA sequence number to hand out.
    pub next_seq: u64,
    /// SHA-256 of the upstream CA certificate the signing CAs chain to, if any.
    pub upstream: Option<String>,
    pub cas: Vec<CaRecord>,
}

/// One signing CA's certificate and private key, PEM (the key in the
/// clear: this is the in-memory form).
#[derive(Clone)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything the CA persists, written and read as one value.
#[derive(Clone, Default)]
pub struct CaState {
    pub index: CaIndex,
    pub material: BTreeMap<u64, CaMaterial>,
}

/// A private key as stored: sealed under the KEK, or PEM when the
/// directory store runs without one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredKey {
    Pem(String),
    Sealed(Sealed),
}

/// What a signing CA's key is bound to when sealed.
fn label(seq: u64) -> String {
    format!("palisade/ca/{seq}")
}

impl StoredKey {
    pub fn seal(kek: Option<&Kek>, seq: u64, pem: &str) -> StoredKey {
        match kek {
            Some(k) => StoredKey::Sealed(k.seal(&label(seq), pem.as_bytes())),
            None => StoredKey::Pem(pem.to_owned()),
        }
    }

    pub fn open(&self, kek: Option<&Kek>, seq: u64) -> Result<String, StoreError> {
        match (self, kek) {
            (StoredKey::Pem(p), _) => Ok(p.clone()),
            (StoredKey::Sealed(s), Some(k)) => String::from_utf8(k.open(&label(seq), s)?)
                .map_err(|_| StoreError::Corrupt(format!("signing CA #{seq}: key is not PEM"))),
            (StoredKey::Sealed(_), None) => Err(StoreError::Kek(format!(
                "signing CA #{seq} is sealed: start with the --kek-file it was sealed under"
            ))),
        }
    }
}

/// The CA state as one document (the etcd value).
#[derive(Serialize, Deserialize)]
pub struct StoredCa {
    pub index: CaIndex,
    pub cas: Vec<StoredMaterial>,
}

#[derive(Serialize, Deserialize)]
pub struct StoredMaterial {
    pub seq: u64,
    pub cert_pem: String,
    pub key: StoredKey,
}

impl CaState {
    pub fn to_stored(&self, kek: Option<&Kek>) -> StoredCa {
        StoredCa {
            index: self.index.clone(),
            cas: self
                .material
                .iter()
                .map(|(seq, m)| StoredMaterial {
                    seq: *seq,
                    cert_pem: m.cert_pem.clone(),
                    key: StoredKey::seal(kek, *seq, &m.key_pem),
                })
                .collect(),
        }
    }

    pub fn from_stored(stored: StoredCa, kek: Option<&Kek>) -> Result<CaState, StoreError> {
        let mut material = BTreeMap::new();
        for m in stored.cas {
            let key_pem = m.key.open(kek, m.seq)?;
            material.insert(
                m.seq,
                CaMaterial {
                    cert_pem: m.cert_pem,
                    key_pem,
                },
            );
        }
        Ok(CaState {
            index: stored.index,
            material,
        })
    }
}
