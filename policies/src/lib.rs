//! Palisade's policy model: the segmentation policy language, its compiler
//! and the pure `decide()` engine. This crate does no I/O (the optional `fs`
//! feature adds the one policy-file reader, `watch` the one path watcher).
//! SPIFFE IDs come from `palisade-identity`.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod cases;
mod compile;
pub mod crd;
mod decide;
mod decision;
pub mod diag;
pub mod flow;
#[cfg(feature = "fs")]
pub mod fs;
mod http;
mod index;
pub mod model;
pub mod normalize;
mod parse;
pub mod reach;
pub mod schema;
mod shadow;
mod values;
#[cfg(feature = "watch")]
pub mod watch;
mod yaml;

pub use compile::{compile, docs_selecting, CompiledPolicy, Defaults, PolicySet};
pub use decide::decide;
pub use decision::{
    Decision, DefaultPolicy, HttpInfo, Matched, Peer, Request, UnknownDefaultPolicy, Verdict,
};
pub use diag::{Diagnostic, Severity};
pub use flow::{decide_flow, decide_flow_with, Endpoint, Flow, FlowDecision};
pub use model::{Direction, Mode, PolicyDoc};
/// SPIFFE IDs live in `palisade-identity`; re-exported so policy code and
/// its users keep one path.
pub use palisade_identity::spiffe;
pub use parse::parse_documents;
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use yaml::Pos;
