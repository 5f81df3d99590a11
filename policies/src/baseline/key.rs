//! Flow keys: what makes two connections or requests "the same flow", owned
//! (`FlowKey`, in the baseline) and borrowed (`FlowRef`, from the proxy's
//! request), hashed and compared without allocating.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::settings::BaselineSettings;
use super::template::{self, segments};
use crate::decision::{HttpInfo, Peer, Request};
use crate::model::Direction;
use crate::spiffe::SpiffeId;

/// The other end of a flow: an identity, or the CIDR bucket of an
/// address-only peer (`baseline.ipv4_prefix` / `ipv6_prefix`), so one
/// client subnet is one peer, not thousands.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPeer {
    Identity(SpiffeId),
    Cidr(IpNet),
}

impl fmt::Display for FlowPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowPeer::Identity(id) => write!(f, "{id}"),
            FlowPeer::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// What a connection carries, as far as the baseline cares: HTTP (either
/// version; its requests are flows of their own) or opaque bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Opaque,
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Opaque => "opaque",
            Protocol::Http => "http",
        }
    }
}

/// An HTTP flow's method and path template.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    pub method: String,
    pub template: String,
}

/// One learned flow. `route` is `None` for the connection (L4) flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub direction: Direction,
    pub peer: FlowPeer,
    pub port: u16,
    pub protocol: Protocol,
    pub route: Option<Route>,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arrow = match self.direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        write!(
            f,
            "{} {arrow} {} port {}/{}",
            self.direction,
            self.peer,
            self.port,
            self.protocol.as_str()
        )?;
        if let Some(r) = &self.route {
            write!(f, " {} {}", r.method, r.template)?;
        }
        Ok(())
    }
}

/// A connection or request as the proxy sees it, borrowed: the same
/// `Request` it asked `decide()` about, and what the connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRef<'a> {
    pub direction: Direction,
    pub peer: Peer<'a>,
    pub port: u16,
    pub protocol: Protocol,
    /// `Some` per HTTP request; its path is the normalized one.
    pub http: Option<HttpInfo<'a>>,
}

impl<'a> FlowRef<'a> {
    /// The flow of a request that policy allowed (the one `decide()` was
    /// asked about; its `local` is the baseline's workload).
    pub fn from_request(req: &Request<'a>, protocol: Protocol) -> Self {
        FlowRef {
            direction: req.direction,
            peer: req.peer,
            port: req.port,
            protocol,
            http: req.http,
        }
    }

    /// `Http` for a request, whatever `protocol` says.
    pub fn protocol(&self) -> Protocol {
        match self.http {
            Some(_) => Protocol::Http,
            None => self.protocol,
        }
    }

    /// The owned key this flow is learned as (allocates; for new flows and
    /// for events).
    pub fn to_key(&self, settings: &BaselineSettings) -> FlowKey {
        FlowKey {
            direction: self.direction,
            peer: match self.peer(settings) {
                PeerRef::Identity(id) => FlowPeer::Identity(id.clone()),
                PeerRef::Cidr(net) => FlowPeer::Cidr(net),
            },
            port: self.port,
            protocol: self.protocol(),
            route: self.http.map(|h| Route {
                method: method(h.method).to_owned(),
                template: template::template(template::learnable(h.path)).into_owned(),
            }),
        }
    }

    pub(crate) fn peer(&self, settings: &BaselineSettings) -> PeerRef<'a> {
        match self.peer {
            Peer::Identity(id) => PeerRef::Identity(id),
            Peer::Address(ip) => PeerRef::Cidr(bucket(ip, settings)),
        }
    }
}

/// A method is learned by its first `MAX_METHOD` bytes, so an entry's size
/// is bounded.
pub(crate) fn method(m: &str) -> &str {
    if m.len() <= MAX_METHOD {
        return m;
    }
    let mut end = MAX_METHOD;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    &m[..end]
}

/// The longest method kept, in bytes.
pub const MAX_METHOD: usize = 64;

/// The CIDR bucket an address is learned in; IPv4-mapped IPv6 counts as IPv4.
pub(crate) fn bucket(ip: IpAddr, settings: &BaselineSettings) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = match ip {
        IpAddr::V4(_) => settings.ipv4_prefix.min(32),
        IpAddr::V6(_) => settings.ipv6_prefix.min(128),
    };
    IpNet::new(ip, prefix)
        .expect("prefix is clamped to the address family")
        .trunc()
}

/// A peer as looked up: borrowed identity, or its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerRef<'a> {
    Identity(&'a SpiffeId),
    Cidr(IpNet),
}

impl PeerRef<'_> {
    fn eq_owned(&self, p: &FlowPeer) -> bool {
        match (self, p) {
            (PeerRef::Identity(a), FlowPeer::Identity(b)) => *a == b,
            (PeerRef::Cidr(a), FlowPeer::Cidr(b)) => a == b,
            _ => false,
        }
    }

    fn hash_into(&self, h: &mut impl Hasher) {
        match self {
            PeerRef::Identity(id) => {
                h.write_u8(0);
                h.write(id.as_str().as_bytes());
            }
            PeerRef::Cidr(net) => {
                h.write_u8(1);
                match net.addr() {
                    IpAddr::V4(a) => h.write(&a.octets()),
                    IpAddr::V6(a) => h.write(&a.octets()),
                }
                h.write_u8(net.prefix_len());
            }
        }
    }
}

impl<'a> From<&'a FlowPeer> for PeerRef<'a> {
    fn from(p: &'a FlowPeer) -> Self {
        match p {
            FlowPeer::Identity(id) => PeerRef::Identity(id),
            FlowPeer::Cidr(net) => PeerRef::Cidr(*net),
        }
    }
}

/// A flow at each of its three levels: the peer (in a direction), the port
/// (with its protocol) and the whole flow. A never-seen flow is a new peer,
/// a new port or a new route by the first level that is unknown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookup<'a> {
    pub direction: Direction,
    pub peer: PeerRef<'a>,
    pub port: u16,
    pub protocol: Protocol,
    /// Method and path (raw segments; templated when hashed and compared).
    pub route: Option<(&'a str, RoutePath<'a>)>,
}

/// A route's path: a request's (templated on the fly) or a stored template.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RoutePath<'a> {
    Request(&'a str),
    Template(&'a str),
}

impl<'a> RoutePath<'a> {
    fn for_each_segment(&self, mut f: impl FnMut(&str)) {
        match self {
            RoutePath::Request(p) => segments(p).for_each(&mut f),
            RoutePath::Template(t) => t.split('/').for_each(&mut f),
        }
    }

    fn eq_template(&self, t: &str) -> bool {
        match self {
            RoutePath::Request(p) => segments(p).eq(t.split('/')),
            RoutePath::Template(s) => *s == t,
        }
    }
}

/// The hashes of a flow's three levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hashes {
    pub peer: u64,
    pub port: u64,
    pub flow: u64,
}

impl<'a> Lookup<'a> {
    pub fn of_ref(flow: &FlowRef<'a>, settings: &BaselineSettings) -> Self {
        Lookup {
            direction: flow.direction,
            peer: flow.peer(settings),
            port: flow.port,
            protocol: flow.protocol(),
            route: flow.http.map(|h| {
                (
                    method(h.method),
                    RoutePath::Request(template::learnable(h.path)),
                )
            }),
        }
    }

    pub fn of_key(key: &'a FlowKey) -> Self {
        Lookup {
            direction: key.direction,
            peer: (&key.peer).into(),
            port: key.port,
            protocol: key.protocol,
            route: key
                .route
                .as_ref()
                .map(|r| (r.method.as_str(), RoutePath::Template(&r.template))),
        }
    }

    pub fn hashes(&self, s: &impl BuildHasher) -> Hashes {
        let mut h = s.build_hasher();
        h.write_u8(self.direction as u8);
        self.peer.hash_into(&mut h);
        let peer = h.finish();
        h.write_u16(self.port);
        h.write_u8(self.protocol as u8);
        let port = h.finish();
        match &self.route {
            None => h.write_u8(0),
            Some((method, path)) => {
                h.write_u8(1);
                h.write(method.as_bytes());
                h.write_u8(0xff);
                path.for_each_segment(|seg| {
                    h.write(seg.as_bytes());
                    h.write_u8(0xff);
                });
            }
        }
        Hashes {
            peer,
            port,
            flow: h.finish(),
        }
    }

    pub fn same_peer(&self, k: &FlowKey) -> bool {
        self.direction == k.direction && self.peer.eq_owned(&k.peer)
    }

    pub fn same_port(&self, k: &FlowKey) -> bool {
        self.same_peer(k) && self.port == k.port && self.protocol == k.protocol
    }

    pub fn same_flow(&self, k: &FlowKey) -> bool {
        self.same_port(k)
            && match (&self.route, &k.route) {
                (None, None) => true,
                (Some((m, p)), Some(r)) => *m == r.method && p.eq_template(&r.template),
                _ => false,
            }
    }
}
