//! Palisade's identities: SPIFFE IDs and trust domains, X.509-SVIDs, the one
//! SPIFFE peer verifier, and the workload side of the control-plane API.
//! No server code: the proxy and palisadectl link this, not the control plane.
#![forbid(unsafe_code)]

pub mod duration;
pub mod spiffe;

#[cfg(feature = "client")]
pub mod api;
#[cfg(feature = "client")]
pub mod bundle;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod csr;
#[cfg(feature = "client")]
pub mod peer;
#[cfg(feature = "client")]
pub mod renew;
#[cfg(feature = "client")]
pub mod svid;
#[cfg(feature = "client")]
pub mod verify;

pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
