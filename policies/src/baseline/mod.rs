//! Learned baselines: what a workload's traffic normally looks like, learned
//! from the flows policy allowed, and the check that reports or blocks what
//! departs from it. Pure: time is passed in (unix milliseconds), no I/O.
//!
//! The words, as the proxy, the control plane and `palisadectl` use them:
//! - a **flow** (`FlowKey`) is one direction, one peer (a SPIFFE ID, or a
//!   CIDR bucket for an address-only peer), one port and one protocol
//!   (opaque bytes or HTTP); an HTTP flow adds a method and a path
//!   **template** (`/v1/users/{id}`);
//! - an **entry** is what was learned about one flow: count, first and last
//!   seen, and a rate profile;
//! - the **recorder** (`Baseline`) holds one workload's entries and answers
//!   `observe()`, called after policy allowed a connection or a request;
//! - a **snapshot** is the recorder as JSON, to persist, ship and merge;
//! - **export** turns a snapshot into a `SegmentationPolicy` and a cases
//!   file, and **diff** compares it with the policy in force.

mod check;
mod diff;
mod export;
mod key;
mod rate;
mod recorder;
mod settings;
mod snapshot;
mod template;
mod time;

pub use check::{Action, Check, Deviation, DeviationKind, EntryView, Outcome};
pub use diff::{diff, BaselineDiff, UnallowedFlow, UnusedRule};
pub use export::{export, Export};
pub use key::{FlowKey, FlowPeer, FlowRef, Protocol, Route};
pub use rate::{RateExcess, RateProfile};
pub use recorder::{Baseline, Status, Summary};
pub use settings::{
    BaselineMode, BaselineSettings, RateSpikeSettings, SettingsError, DEFAULT_MAX_ENTRIES,
};
pub use snapshot::{Entry, Snapshot, SnapshotError, SNAPSHOT_VERSION};
pub use template::{is_id_segment, template, ID, MAX_TEMPLATE, REST};
