//! Authorization: the one call site per direction. Until the policy engine is
//! wired in, every meshed connection is allowed; plaintext on permissive
//! ports and unmeshed passthrough are allowed because configuration already
//! opted into them.

use std::net::SocketAddr;

use palisade_policy::SpiffeId;

/// What the proxy knows about an inbound connection once it is identified.
#[derive(Debug)]
pub struct InboundCheck<'a> {
    /// `None` for plaintext on a permissive port.
    pub peer: Option<&'a SpiffeId>,
    pub source: SocketAddr,
    /// The local app's port the connection is for.
    pub port: u16,
}

/// What the proxy knows about an outbound connection before connecting.
#[derive(Debug)]
pub struct OutboundCheck<'a> {
    /// The identity the destination must prove; `None` when unmeshed.
    pub destination_id: Option<&'a SpiffeId>,
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

pub fn inbound(_check: &InboundCheck<'_>) -> Verdict {
    Verdict::Allow
}

pub fn outbound(_check: &OutboundCheck<'_>) -> Verdict {
    Verdict::Allow
}
