//! The key-encryption key (`--kek-file`): CA private keys are sealed with
//! AES-256-GCM under it before they reach a store, so a copy of the store
//! (an etcd snapshot, a backup of the state directory) holds no usable key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::StoreError;

const ALG: &str = "A256GCM";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct Kek {
    cipher: Aes256Gcm,
}

/// A sealed secret: the nonce and the ciphertext (with its tag). The
/// associated data names what it is, so a sealed key cannot be swapped for
/// another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub alg: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl Kek {
    /// Reads a key file: 32 raw bytes, or 64 hex digits (`openssl rand -hex
    /// 32`), surrounding whitespace ignored.
    pub fn load(path: &Path) -> Result<Kek, StoreError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| StoreError::Io(name.clone(), e))?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %name, "the key-encryption key file is readable by others than its owner; chmod 600 it");
            }
        }
        Kek::from_bytes(&bytes).map_err(|e| StoreError::Kek(format!("{name}: {e}")))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Kek, String> {
        let trimmed = bytes.trim_ascii();
        let key: Vec<u8> = if bytes.len() == 32 {
            bytes.to_vec()
        } else if trimmed.len() == 64 {
            hex::decode(trimmed).map_err(|e| format!("not 64 hex digits: {e}"))?
        } else {
            return Err(format!(
                "must hold 32 bytes or 64 hex digits (make one with `openssl rand -hex 32`), not {} bytes",
                bytes.len()
            ));
        };
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|e| e.to_string())?;
        Ok(Kek { cipher })
    }

    /// Seals `plaintext`, bound to `label` (e.g. `ca/3`).
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Sealed {
        let nonce: [u8; 12] = rand::random();
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: label.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any message of this size");
        Sealed {
            alg: ALG.into(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        }
    }

    /// Opens what [`seal`](Self::seal) sealed under `label`.
    pub fn open(&self, label: &str, sealed: &Sealed) -> Result<Vec<u8>, StoreError> {
        let bad = |m: &str| StoreError::Kek(format!("{label}: {m}"));
        if sealed.alg != ALG {
            return Err(bad(&format!("unknown algorithm {:?}", sealed.alg)));
        }
        let nonce: [u8; 12] = B64
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad("bad nonce"))?;
        let ct = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| bad("bad ciphertext encoding"))?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ct,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| {
                bad("does not open under this key-encryption key (wrong --kek-file, or tampered)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_under_the_same_key_and_label() {
        let kek = Kek::from_bytes(&[7; 32]).unwrap();
        let s = kek.seal("ca/1", b"secret");
        assert_eq!(kek.open("ca/1", &s).unwrap(), b"secret");
        assert!(kek.open("ca/2", &s).is_err(), "bound to its label");
        let other =
            Kek::from_bytes(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
                .unwrap();
        let err = other.open("ca/1", &s).unwrap_err().to_string();
        assert!(err.contains("wrong --kek-file"), "{err}");
        assert!(!s.ciphertext.contains("secret"));
    }

    #[test]
    fn a_short_key_file_is_refused_with_how_to_make_one() {
        let err = Kek::from_bytes(b"short").err().unwrap();
        assert!(err.contains("openssl rand -hex 32"), "{err}");
    }
}
