//! Palisade's policy model: SPIFFE identity types, the segmentation policy
//! language, its compiler and the pure `decide()` engine. This crate does no I/O.
#![forbid(unsafe_code)]

pub mod spiffe;

pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
