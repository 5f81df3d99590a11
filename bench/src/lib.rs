//! Palisade's benches: the latency/throughput harness that compares the sidecar
//! with direct connections and Envoy, and helpers shared with the criterion benches.
#![forbid(unsafe_code)]

pub mod issuance;
pub mod latency;
pub mod mesh;
pub mod policy_load;
pub mod policy_shapes;
