//! The SPIFFE CA: signing CAs (self-signed, or intermediates under an upstream
//! CA) persisted in the state directory, their rotation, the trust bundle they
//! form, and leaf issuance. Issuance reads one `ArcSwap` snapshot; rotations
//! build a new snapshot off to the side and swap it in.

pub mod certs;
pub mod csr;
pub mod store;
mod upstream;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_policy::{SpiffeId, TrustDomain};
use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use palisade_identity::svid::{certs_from_pem, certs_to_pem, parse_cert};
pub use store::{CaStatus, StateDir};
pub use upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("state directory is corrupt: {0}")]
    Corrupt(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(rcgen::Error),
    #[error("upstream CA: {0}")]
    Upstream(String),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Rcgen(e)
    }
}

/// One signing CA: its certificate and the key that signs with it.
pub struct SigningCa {
    pub seq: u64,
    pub cert: CertificateDer<'static>,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
    /// Latest notAfter of any SVID this CA signed in this process, so a
    /// retired CA leaves the bundle as soon as they have all expired.
    max_issued_expiry: AtomicI64,
}

impl SigningCa {
    /// When it was made: notBefore is backdated for clock skew, which must
    /// not count towards its life.
    fn issued_at(&self) -> OffsetDateTime {
        self.not_before + certs::CA_BACKDATE
    }

    /// The point `num/den` of the way through its life.
    fn life_point(&self, num: i32, den: i32) -> OffsetDateTime {
        self.issued_at() + (self.not_after - self.issued_at()) * num / den
    }
}

/// An immutable view of the CA: which CA signs, and the bundle peers trust.
pub struct CaSet {
    entries: Vec<(Arc<SigningCa>, CaStatus)>,
    /// SPIFFE bundle `spiffe_sequence`.
    pub bundle_sequence: u64,
    bundle: Vec<CertificateDer<'static>>,
    bundle_pem: Arc<str>,
}

impl CaSet {
    pub fn active(&self) -> &Arc<SigningCa> {
        &self
            .entries
            .iter()
            .find(|(_, s)| *s == CaStatus::Active)
            .expect("a CA set always has an active CA")
            .0
    }

    /// Every signing CA with its status.
    pub fn entries(&self) -> impl Iterator<Item = (&Arc<SigningCa>, CaStatus)> {
        self.entries.iter().map(|(c, s)| (c, *s))
    }

    /// Trust anchors: what peers must trust to verify any SVID still valid.
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    pub fn bundle_pem(&self) -> &Arc<str> {
        &self.bundle_pem
    }
}

/// A freshly signed SVID.
#[derive(Debug, Clone)]
pub struct Issued {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates up to (not including) the trust anchor.
    pub chain: Vec<CertificateDer<'static>>,
    pub bundle_pem: Arc<str>,
    pub expires_at: i64,
}

impl Issued {
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }
}

/// The control plane's certificate authority.
pub struct Authority {
    td: TrustDomain,
    store: StateDir,
    ca_ttl: Duration,
    svid_ttl: Duration,
    upstream: Option<Upstream>,
    current: ArcSwap<CaSet>,
    /// Serializes rotations; holds the next CA sequence number.
    writer: Mutex<u64>,
}

impl Authority {
    /// Loads the signing CAs from `state_dir`, creating the first one if there
    /// is none (or if the upstream CA changed), and writes `bundle.pem`.
    pub fn open(
        td: TrustDomain,
        state_dir: &Path,
        ca_ttl: Duration,
        svid_ttl: Duration,
        upstream: Option<Upstream>,
    ) -> Result<Authority, CaError> {
        let store = StateDir::open(state_dir)?;
        let index = store.load_index()?.unwrap_or_default();
        let upstream_fp = upstream.as_ref().map(|u| u.fingerprint.clone());
        let now = OffsetDateTime::now_utc();
        let mut entries = Vec::new();
        if index.upstream == upstream_fp {
            for rec in &index.cas {
                let ca = load_ca(&store, rec.seq)?;
                if ca.not_after > now {
                    entries.push((Arc::new(ca), rec.status));
                }
            }
        } else if !index.cas.is_empty() {
            tracing::warn!(
                "upstream CA changed since the last start; starting a fresh set of signing CAs"
            );
        }
        let auth = Authority {
            td,
            store,
            ca_ttl,
            svid_ttl,
            upstream,
            current: ArcSwap::from_pointee(CaSet::empty()),
            writer: Mutex::new(index.next_seq.max(1)),
        };
        let mut next = auth.writer.lock().expect("writer lock");
        if !entries.iter().any(|(_, s)| *s == CaStatus::Active) {
            // First start, or the active CA expired while we were down.
            let ca = auth.generate(&mut next, now)?;
            tracing::info!(ca.seq = ca.seq, ca.serial = %ca.serial_hex, "created signing CA");
            entries.push((Arc::new(ca), CaStatus::Active));
        }
        auth.publish(&next, entries, index.bundle_sequence + 1)?;
        drop(next);
        Ok(auth)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    pub fn svid_ttl(&self) -> Duration {
        self.svid_ttl
    }

    pub fn snapshot(&self) -> Arc<CaSet> {
        self.current.load_full()
    }

    /// Signs a leaf SVID for `id` over `public_key` with the active CA.
    /// `dns_names` is empty for workloads; the control plane's own serving
    /// certificate adds its DNS name.
    pub fn issue(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        dns_names: &[&str],
    ) -> Result<Issued, CaError> {
        let set = self.current.load();
        let ca = set.active();
        let now = OffsetDateTime::now_utc();
        let params = certs::leaf_params(id, dns_names, now, self.svid_ttl, ca.not_after)?;
        let expires_at = params.not_after.unix_timestamp();
        let leaf = params.signed_by(public_key, &ca.issuer)?;
        ca.max_issued_expiry
            .fetch_max(expires_at, Ordering::Relaxed);
        let mut chain = Vec::with_capacity(2);
        chain.push(leaf.der().clone());
        if let Some(up) = &self.upstream {
            chain.push(ca.cert.clone());
            chain.extend(up.chain_tail.iter().cloned());
        }
        Ok(Issued {
            spiffe_id: id.clone(),
            chain,
            bundle_pem: set.bundle_pem.clone(),
            expires_at,
        })
    }

    /// Operator-requested rotation: a prepared CA (if any) or a new one becomes
    /// active at once; the old one is retired but stays in the bundle.
    pub fn rotate(&self) -> Result<Arc<CaSet>, CaError> {
        let mut next = self.writer.lock().expect("writer lock");
        let now = OffsetDateTime::now_utc();
        let set = self.current.load_full();
        let mut entries = set.entries.clone();
        if !entries.iter().any(|(_, s)| *s == CaStatus::Prepared) {
            entries.push((Arc::new(self.generate(&mut next, now)?), CaStatus::Prepared));
        }
        self.activate_prepared(&mut entries, now);
        self.publish(&next, entries, set.bundle_sequence + 1)?;
        Ok(self.snapshot())
    }

    /// Time-driven upkeep, called periodically: at the active CA's half-life
    /// a successor joins the bundle (prepared); it starts signing once every
    /// workload has had an SVID lifetime to learn it (or at three quarters of
    /// the active CA's life); retired CAs leave once their SVIDs expired.
    /// Returns whether the bundle changed.
    pub fn maintain(&self) -> Result<bool, CaError> {
        let mut next = self.writer.lock().expect("writer lock");
        let now = OffsetDateTime::now_utc();
        let set = self.current.load_full();
        let mut entries = set.entries.clone();
        let before = entries.len();
        entries.retain(|(ca, s)| match s {
            CaStatus::Retired { retire_after } => {
                *retire_after > now.unix_timestamp() && ca.not_after > now
            }
            CaStatus::Prepared => ca.not_after > now,
            CaStatus::Active => true,
        });
        let mut changed = entries.len() != before;
        let active = set.active().clone();
        let has_prepared = entries.iter().any(|(_, s)| *s == CaStatus::Prepared);
        if active.not_after <= now + Duration::from_secs(1) {
            tracing::warn!(
                ca.seq = active.seq,
                "active CA expired; activating a successor immediately"
            );
            if !has_prepared {
                entries.push((Arc::new(self.generate(&mut next, now)?), CaStatus::Prepared));
            }
            self.activate_prepared(&mut entries, now);
            changed = true;
        } else if !has_prepared && now >= active.life_point(1, 2) {
            let ca = self.generate(&mut next, now)?;
            tracing::info!(
                ca.seq = ca.seq,
                "active CA reached half-life; prepared its successor"
            );
            entries.push((Arc::new(ca), CaStatus::Prepared));
            changed = true;
        } else if has_prepared {
            let prepared = entries
                .iter()
                .find(|(_, s)| *s == CaStatus::Prepared)
                .expect("has prepared")
                .0
                .clone();
            let learnt = now >= prepared.issued_at() + self.svid_ttl;
            if learnt || now >= active.life_point(3, 4) {
                tracing::info!(ca.seq = prepared.seq, "prepared CA is now signing");
                self.activate_prepared(&mut entries, now);
                changed = true;
            }
        }
        if changed {
            self.publish(&next, entries, set.bundle_sequence + 1)?;
        }
        Ok(changed)
    }

    /// Moves the active CA to retired and the prepared one to active.
    fn activate_prepared(&self, entries: &mut [(Arc<SigningCa>, CaStatus)], now: OffsetDateTime) {
        let latest_leaf_expiry = (now + self.svid_ttl).unix_timestamp();
        for (ca, status) in entries.iter_mut() {
            *status = match *status {
                CaStatus::Active => {
                    let issued = ca.max_issued_expiry.load(Ordering::Relaxed);
                    let retire_after = issued
                        .max(latest_leaf_expiry)
                        .min(ca.not_after.unix_timestamp());
                    CaStatus::Retired { retire_after }
                }
                CaStatus::Prepared => CaStatus::Active,
                other => other,
            };
        }
    }

    fn generate(&self, next_seq: &mut u64, now: OffsetDateTime) -> Result<SigningCa, CaError> {
        let seq = *next_seq;
        *next_seq += 1;
        let key = KeyPair::generate()?;
        let cap = self.upstream.as_ref().map(|u| u.not_after);
        let params = certs::signing_ca_params(&self.td, seq, now, self.ca_ttl, cap)?;
        let cert = match &self.upstream {
            Some(up) => params.signed_by(&key, &up.issuer)?,
            None => params.self_signed(&key)?,
        };
        store::write_private(&self.store.key_path(seq), key.serialize_pem().as_bytes())?;
        store::write_private(&self.store.cert_path(seq), cert.pem().as_bytes())?;
        let (not_before, not_after) = (params.not_before, params.not_after);
        let serial_hex = hex::encode(params.serial_number.as_ref().expect("serial set").as_ref());
        Ok(SigningCa {
            seq,
            cert: cert.der().clone(),
            serial_hex,
            not_before,
            not_after,
            issuer: Issuer::new(params, key),
            max_issued_expiry: AtomicI64::new(0),
        })
    }

    /// Persists the index and bundle.pem, then swaps the new set in.
    fn publish(
        &self,
        next_seq: &u64,
        entries: Vec<(Arc<SigningCa>, CaStatus)>,
        seq: u64,
    ) -> Result<(), CaError> {
        let old: Vec<u64> = self
            .current
            .load()
            .entries
            .iter()
            .map(|(c, _)| c.seq)
            .collect();
        let mut bundle: Vec<CertificateDer<'static>> = Vec::new();
        match &self.upstream {
            Some(up) => bundle.push(up.anchor.clone()),
            None => bundle.extend(entries.iter().map(|(c, _)| c.cert.clone())),
        }
        let bundle_pem: Arc<str> = certs_to_pem(&bundle).into();
        let index = store::CaIndex {
            bundle_sequence: seq,
            next_seq: *next_seq,
            upstream: self.upstream.as_ref().map(|u| u.fingerprint.clone()),
            cas: entries
                .iter()
                .map(|(c, s)| store::CaRecord {
                    seq: c.seq,
                    status: *s,
                })
                .collect(),
        };
        self.store.save_index(&index)?;
        store::write_private(&self.store.bundle_path(), bundle_pem.as_bytes())?;
        for gone in old
            .iter()
            .filter(|s| !entries.iter().any(|(c, _)| c.seq == **s))
        {
            self.store.remove_ca(*gone);
        }
        self.current.store(Arc::new(CaSet {
            entries,
            bundle_sequence: seq,
            bundle,
            bundle_pem,
        }));
        Ok(())
    }
}

impl CaSet {
    fn empty() -> CaSet {
        CaSet {
            entries: Vec::new(),
            bundle_sequence: 0,
            bundle: Vec::new(),
            bundle_pem: "".into(),
        }
    }
}

fn load_ca(store: &StateDir, seq: u64) -> Result<SigningCa, CaError> {
    let corrupt = |what: String| CaError::Corrupt(format!("signing CA #{seq}: {what}"));
    let cert_pem = store.read(&store.cert_path(seq))?;
    let key_pem = store.read(&store.key_path(seq))?;
    let cert = certs_from_pem(cert_pem.as_bytes())
        .map_err(|e| corrupt(e.to_string()))?
        .remove(0);
    let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(e.to_string()))?;
    let parsed = parse_cert(&cert).map_err(|e| corrupt(e.to_string()))?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(corrupt("key does not match certificate".into()));
    }
    let serial_hex = hex::encode(parsed.raw_serial());
    let (not_before, not_after) = (
        parsed.validity().not_before.to_datetime(),
        parsed.validity().not_after.to_datetime(),
    );
    drop(parsed);
    let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| corrupt(e.to_string()))?;
    Ok(SigningCa {
        seq,
        cert,
        serial_hex,
        not_before,
        not_after,
        issuer,
        max_issued_expiry: AtomicI64::new(0),
    })
}
