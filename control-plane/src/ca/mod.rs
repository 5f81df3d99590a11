//! The SPIFFE CA: signing CAs (self-signed, or intermediates under an upstream
//! CA) persisted in the state store, their rotation, the trust bundle they
//! form, and leaf issuance. Issuance reads one `ArcSwap` snapshot; rotations
//! build a new state off to the side, write it to the store in one step
//! (only if nobody else wrote first) and then swap it in.

pub mod certs;
pub mod csr;
pub mod store;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_policy::{SpiffeId, TrustDomain};
use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::store::{dir::write_private, Revision, Store, StoreError};
use palisade_identity::svid::{certs_from_pem, certs_to_pem, parse_cert};
pub use store::CaStatus;
use store::{CaIndex, CaMaterial, CaRecord, CaState};
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the CA state kept changing under this replica; try again")]
    Contended,
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
    /// What the store keeps of it.
    material: CaMaterial,
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
    store: Arc<dyn Store>,
    bundle_path: PathBuf,
    ca_ttl: Duration,
    svid_ttl: Duration,
    upstream: Option<Upstream>,
    current: ArcSwap<CaSet>,
    /// Serializes this replica's changes; the revision of the state it
    /// last read or wrote.
    writer: tokio::sync::Mutex<Option<Revision>>,
}

/// How long a replica waits for the store-wide CA lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Conditional writes tried before giving up to a busier writer.
const WRITE_TRIES: usize = 5;

/// The signing CAs being changed, and the next sequence number to hand out.
struct Draft {
    entries: Vec<(Arc<SigningCa>, CaStatus)>,
    next_seq: u64,
    bundle_sequence: u64,
}

/// What time-driven upkeep has to do now.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    /// Only expired CAs leave.
    Prune,
    /// The active CA expired: a successor signs at once.
    ReplaceExpired,
    /// The active CA reached half-life: prepare its successor.
    Prepare,
    /// The prepared CA has been learnt: it signs from now on.
    Activate,
}

impl Authority {
    /// Opens the CA in a state directory (the directory store, without a
    /// key-encryption key), for tools and tests outside the server.
    pub fn open(
        td: TrustDomain,
        state_dir: &Path,
        ca_ttl: Duration,
        svid_ttl: Duration,
        upstream: Option<Upstream>,
    ) -> Result<Authority, CaError> {
        let store = crate::store::dir::DirStore::open(state_dir, None, None, None)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CaError::Io("tokio runtime".into(), e))?;
        rt.block_on(Authority::open_in(
            td,
            Arc::new(store),
            state_dir.join("bundle.pem"),
            ca_ttl,
            svid_ttl,
            upstream,
        ))
    }

    /// Loads the signing CAs from `store`, creating the first one if there
    /// is none (or if the upstream CA changed), and writes the bundle to
    /// `bundle_path`.
    pub async fn open_in(
        td: TrustDomain,
        store: Arc<dyn Store>,
        bundle_path: PathBuf,
        ca_ttl: Duration,
        svid_ttl: Duration,
        upstream: Option<Upstream>,
    ) -> Result<Authority, CaError> {
        let auth = Authority {
            td,
            store,
            bundle_path,
            ca_ttl,
            svid_ttl,
            upstream,
            current: ArcSwap::from_pointee(CaSet::empty()),
            writer: tokio::sync::Mutex::new(None),
        };
        auth.reload().await?;
        let set = auth.snapshot();
        let now = OffsetDateTime::now_utc();
        if !set.entries.iter().any(|(_, s)| *s == CaStatus::Active)
            || auth.due(&set.entries, now) != Due::Nothing
        {
            auth.update(|a, draft, now| {
                if !draft.entries.iter().any(|(_, s)| *s == CaStatus::Active) {
                    // First start, or the active CA expired while all were down.
                    let ca = a.generate(&mut draft.next_seq, now)?;
                    tracing::info!(ca.seq = ca.seq, ca.serial = %ca.serial_hex, "created signing CA");
                    draft.entries.push((Arc::new(ca), CaStatus::Active));
                    return Ok(true);
                }
                a.apply_due(draft, now)
            })
            .await?;
        }
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
    pub async fn rotate(&self) -> Result<Arc<CaSet>, CaError> {
        self.update(|a, draft, now| {
            if !draft.entries.iter().any(|(_, s)| *s == CaStatus::Prepared) {
                let ca = a.generate(&mut draft.next_seq, now)?;
                draft.entries.push((Arc::new(ca), CaStatus::Prepared));
            }
            a.activate_prepared(&mut draft.entries, now);
            Ok(true)
        })
        .await?;
        Ok(self.snapshot())
    }

    /// Time-driven upkeep, called periodically: at the active CA's half-life
    /// a successor joins the bundle (prepared); it starts signing once every
    /// workload has had an SVID lifetime to learn it (or at three quarters of
    /// the active CA's life); retired CAs leave once their SVIDs expired.
    /// With a shared store, the replica holding the CA lock does each step.
    /// Returns whether the bundle changed.
    pub async fn maintain(&self) -> Result<bool, CaError> {
        let set = self.snapshot();
        if self.due(&set.entries, OffsetDateTime::now_utc()) == Due::Nothing {
            return Ok(false);
        }
        self.update(|a, draft, now| a.apply_due(draft, now)).await
    }

    /// Reads the CA state another replica may have written, and serves it.
    /// Returns whether it changed.
    pub async fn reload(&self) -> Result<bool, CaError> {
        let mut writer = self.writer.lock().await;
        let (state, rev) = self.store.load_ca().await?.unzip();
        if rev.is_some() && rev == *writer {
            return Ok(false);
        }
        let draft = self.draft(state.as_ref())?;
        if draft.entries.iter().any(|(_, s)| *s == CaStatus::Active) {
            self.install(draft.entries, draft.bundle_sequence)?;
        }
        *writer = rev;
        Ok(true)
    }

    /// What upkeep is due for `entries` at `now`.
    fn due(&self, entries: &[(Arc<SigningCa>, CaStatus)], now: OffsetDateTime) -> Due {
        let Some(active) = entries.iter().find(|(_, s)| *s == CaStatus::Active) else {
            return Due::Nothing;
        };
        let active = &active.0;
        let prepared = entries.iter().find(|(_, s)| *s == CaStatus::Prepared);
        if active.not_after <= now + Duration::from_secs(1) {
            return Due::ReplaceExpired;
        }
        match prepared {
            None if now >= active.life_point(1, 2) => return Due::Prepare,
            Some((p, _))
                if now >= p.issued_at() + self.svid_ttl || now >= active.life_point(3, 4) =>
            {
                return Due::Activate
            }
            _ => {}
        }
        let expired = entries.iter().any(|(ca, s)| match s {
            CaStatus::Retired { retire_after } => {
                *retire_after <= now.unix_timestamp() || ca.not_after <= now
            }
            CaStatus::Prepared => ca.not_after <= now,
            CaStatus::Active => false,
        });
        if expired {
            Due::Prune
        } else {
            Due::Nothing
        }
    }

    /// Does what [`due`](Self::due) says on `draft`.
    fn apply_due(&self, draft: &mut Draft, now: OffsetDateTime) -> Result<bool, CaError> {
        let due = self.due(&draft.entries, now);
        draft.entries.retain(|(ca, s)| match s {
            CaStatus::Retired { retire_after } => {
                *retire_after > now.unix_timestamp() && ca.not_after > now
            }
            CaStatus::Prepared => ca.not_after > now,
            CaStatus::Active => true,
        });
        let has_prepared = draft.entries.iter().any(|(_, s)| *s == CaStatus::Prepared);
        match due {
            Due::Nothing => return Ok(false),
            Due::Prune => {}
            Due::ReplaceExpired => {
                tracing::warn!("active CA expired; activating a successor immediately");
                if !has_prepared {
                    let ca = self.generate(&mut draft.next_seq, now)?;
                    draft.entries.push((Arc::new(ca), CaStatus::Prepared));
                }
                self.activate_prepared(&mut draft.entries, now);
            }
            Due::Prepare => {
                let ca = self.generate(&mut draft.next_seq, now)?;
                tracing::info!(
                    ca.seq = ca.seq,
                    "active CA reached half-life; prepared its successor"
                );
                draft.entries.push((Arc::new(ca), CaStatus::Prepared));
            }
            Due::Activate => {
                tracing::info!("prepared CA is now signing");
                self.activate_prepared(&mut draft.entries, now);
            }
        }
        Ok(true)
    }

    /// Changes the CA state: under the store-wide CA lock, on the latest
    /// stored state, written back in one conditional step (retried if
    /// another replica wrote first), then served. `change` returns whether
    /// it changed anything.
    async fn update(
        &self,
        change: impl Fn(&Self, &mut Draft, OffsetDateTime) -> Result<bool, CaError>,
    ) -> Result<bool, CaError> {
        let _held = self.store.lock("ca", LOCK_WAIT).await?;
        let mut writer = self.writer.lock().await;
        for _ in 0..WRITE_TRIES {
            let (state, rev) = self.store.load_ca().await?.unzip();
            let mut draft = self.draft(state.as_ref())?;
            let now = OffsetDateTime::now_utc();
            if !change(self, &mut draft, now)? {
                if rev != *writer {
                    self.install(draft.entries, draft.bundle_sequence)?;
                    *writer = rev;
                }
                return Ok(false);
            }
            let sequence = draft.bundle_sequence + 1;
            let new = self.state_of(&draft, sequence);
            match self.store.save_ca(&new, rev).await? {
                Some(written) => {
                    self.install(draft.entries, sequence)?;
                    *writer = Some(written);
                    return Ok(true);
                }
                None => tracing::info!("the CA state changed under this replica; reading it again"),
            }
        }
        Err(CaError::Contended)
    }

    /// The signing CAs of a stored state that still count: those under
    /// the current upstream CA, not expired. CAs this replica already
    /// serves keep their in-memory bookkeeping.
    fn draft(&self, state: Option<&CaState>) -> Result<Draft, CaError> {
        let Some(state) = state else {
            return Ok(Draft {
                entries: Vec::new(),
                next_seq: 1,
                bundle_sequence: 0,
            });
        };
        let index = &state.index;
        let upstream_fp = self.upstream.as_ref().map(|u| u.fingerprint.clone());
        let now = OffsetDateTime::now_utc();
        let mut entries = Vec::new();
        if index.upstream == upstream_fp {
            let serving = self.snapshot();
            for rec in &index.cas {
                let known = serving
                    .entries
                    .iter()
                    .find(|(c, _)| c.seq == rec.seq)
                    .map(|(c, _)| c.clone());
                let ca = match known {
                    Some(ca) => ca,
                    None => {
                        let m = state.material.get(&rec.seq).ok_or_else(|| {
                            CaError::Corrupt(format!("signing CA #{}: no material", rec.seq))
                        })?;
                        Arc::new(load_ca(rec.seq, m.clone())?)
                    }
                };
                if ca.not_after > now {
                    entries.push((ca, rec.status));
                }
            }
        } else if !index.cas.is_empty() {
            tracing::warn!(
                "upstream CA changed since the last start; starting a fresh set of signing CAs"
            );
        }
        Ok(Draft {
            entries,
            next_seq: index.next_seq.max(1),
            bundle_sequence: index.bundle_sequence,
        })
    }

    /// The state the store keeps for `draft` at bundle `sequence`.
    fn state_of(&self, draft: &Draft, sequence: u64) -> CaState {
        CaState {
            index: CaIndex {
                bundle_sequence: sequence,
                next_seq: draft.next_seq,
                upstream: self.upstream.as_ref().map(|u| u.fingerprint.clone()),
                cas: draft
                    .entries
                    .iter()
                    .map(|(c, s)| CaRecord {
                        seq: c.seq,
                        status: *s,
                    })
                    .collect(),
            },
            material: draft
                .entries
                .iter()
                .map(|(c, _)| (c.seq, c.material.clone()))
                .collect(),
        }
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
        let material = CaMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let (not_before, not_after) = (params.not_before, params.not_after);
        let serial_hex = hex::encode(params.serial_number.as_ref().expect("serial set").as_ref());
        Ok(SigningCa {
            seq,
            cert: cert.der().clone(),
            serial_hex,
            not_before,
            not_after,
            issuer: Issuer::new(params, key),
            material,
            max_issued_expiry: AtomicI64::new(0),
        })
    }

    /// Writes bundle.pem, then swaps the new set in.
    fn install(&self, entries: Vec<(Arc<SigningCa>, CaStatus)>, seq: u64) -> Result<(), CaError> {
        let mut bundle: Vec<CertificateDer<'static>> = Vec::new();
        match &self.upstream {
            Some(up) => bundle.push(up.anchor.clone()),
            None => bundle.extend(entries.iter().map(|(c, _)| c.cert.clone())),
        }
        let bundle_pem: Arc<str> = certs_to_pem(&bundle).into();
        write_private(&self.bundle_path, bundle_pem.as_bytes())?;
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

fn load_ca(seq: u64, material: CaMaterial) -> Result<SigningCa, CaError> {
    let corrupt = |what: String| CaError::Corrupt(format!("signing CA #{seq}: {what}"));
    let cert = certs_from_pem(material.cert_pem.as_bytes())
        .map_err(|e| corrupt(e.to_string()))?
        .remove(0);
    let key = KeyPair::from_pem(&material.key_pem).map_err(|e| corrupt(e.to_string()))?;
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
        material,
        max_issued_expiry: AtomicI64::new(0),
    })
}
