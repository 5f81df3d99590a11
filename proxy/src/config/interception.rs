//! `mode` and the listener settings that go with it: transparent mode's
//! redirected `inbound`/`outbound` listeners, or explicit mode's port map and
//! routes. A setting of the other mode is an unknown field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use palisade_identity::duration;
use palisade_policy::SpiffeId;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::Protocol;

/// How connections reach the proxy (`mode`), with the `inbound` and
/// `outbound` settings of that mode: the other mode's settings are unknown
/// fields, refused when the file is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Interception {
    /// iptables steers every TCP connection through the proxy; destinations
    /// come from SO_ORIGINAL_DST.
    Transparent {
        #[serde(default)]
        inbound: TransparentInbound,
        #[serde(default)]
        outbound: TransparentOutbound,
    },
    /// Fixed listeners: an inbound port map and outbound routes.
    Explicit {
        #[serde(default)]
        inbound: ExplicitInbound,
        #[serde(default)]
        outbound: ExplicitOutbound,
    },
}

impl Default for Interception {
    fn default() -> Self {
        Interception::Transparent {
            inbound: TransparentInbound::default(),
            outbound: TransparentOutbound::default(),
        }
    }
}

impl Interception {
    /// The `mode` value: `transparent` or `explicit`.
    pub fn mode(&self) -> &'static str {
        match self {
            Interception::Transparent { .. } => "transparent",
            Interception::Explicit { .. } => "explicit",
        }
    }
}

/// What the outbound side does with a destination the mesh does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmeshed {
    Passthrough,
    #[default]
    Deny,
}

/// Where transparent inbound traffic goes after the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardTo {
    /// `127.0.0.1:<original port>`: works for apps bound to loopback or to
    /// all addresses, and loopback is never redirected by the init rules.
    #[default]
    Localhost,
    /// The original destination `ip:port` (the pod IP).
    Original,
}

/// Transparent mode's inbound side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparentInbound {
    /// The listener iptables redirects inbound TCP to.
    pub bind: SocketAddr,
    /// Original destination ports that also accept plaintext.
    pub permissive_ports: Vec<u16>,
    pub forward_to: ForwardTo,
    /// App port → protocol (default `detect`).
    #[serde(deserialize_with = "port_map")]
    pub protocols: BTreeMap<u16, Protocol>,
    /// App ports where GET, HEAD, OPTIONS, DELETE and TRACE may carry a body
    /// (elsewhere it gets 400).
    pub allow_get_body_ports: Vec<u16>,
}

impl Default for TransparentInbound {
    fn default() -> Self {
        TransparentInbound {
            bind: SocketAddr::from(([0, 0, 0, 0], 4143)),
            permissive_ports: Vec::new(),
            forward_to: ForwardTo::default(),
            protocols: BTreeMap::new(),
            allow_get_body_ports: Vec::new(),
        }
    }
}

/// Transparent mode's outbound side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparentOutbound {
    /// The listener iptables redirects outbound TCP to.
    pub bind: SocketAddr,
    pub unmeshed: Unmeshed,
    /// How often the endpoint → identity map is fetched.
    #[serde(with = "duration")]
    pub endpoints_refresh: Duration,
    /// Destination port → protocol (default `detect`).
    #[serde(deserialize_with = "port_map")]
    pub protocols: BTreeMap<u16, Protocol>,
}

impl Default for TransparentOutbound {
    fn default() -> Self {
        TransparentOutbound {
            bind: SocketAddr::from(([127, 0, 0, 1], 4140)),
            unmeshed: Unmeshed::default(),
            endpoints_refresh: Duration::from_secs(10),
            protocols: BTreeMap::new(),
        }
    }
}

/// Explicit mode's inbound side: one listener per local app port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplicitInbound {
    pub ports: Vec<PortMapping>,
}

/// Explicit mode's outbound side: one listener per destination sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplicitOutbound {
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub listen: SocketAddr,
    pub app: SocketAddr,
    #[serde(default)]
    pub permissive: bool,
    #[serde(default)]
    pub protocol: Protocol,
    /// GET, HEAD, OPTIONS, DELETE and TRACE may carry a body to this app
    /// (by default it gets 400: an app may not read one).
    #[serde(default)]
    pub allow_get_body: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub listen: SocketAddr,
    /// The destination sidecar's inbound listener.
    pub destination: SocketAddr,
    /// The SPIFFE ID the destination must present.
    pub identity: SpiffeId,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Port-keyed maps: YAML writes the keys as numbers, a JSON dump as strings.
fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, Protocol>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Port(u16);
    impl<'de> Deserialize<'de> for Port {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Port;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a port number")
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                    u16::try_from(v)
                        .map(Port)
                        .map_err(|_| E::custom(format!("{v} is not a port number")))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                    v.parse()
                        .map(Port)
                        .map_err(|_| E::custom(format!("`{v}` is not a port number")))
                }
            }
            d.deserialize_any(Visitor)
        }
    }
    let map = BTreeMap::<Port, Protocol>::deserialize(d)?;
    Ok(map.into_iter().map(|(Port(p), v)| (p, v)).collect())
}

/// The first error in `inbound` or `outbound`, read as `mode` says, with
/// its path.
pub(super) fn locate_in_mode_sections(tree: &Value) -> Option<String> {
    fn first<T: serde::de::DeserializeOwned>(tree: &Value, section: &str) -> Option<String> {
        let v = tree.get(section)?;
        serde_path_to_error::deserialize::<_, T>(v).err().map(|e| {
            match e.path().to_string().as_str() {
                "." => format!("{section}: {}", e.inner()),
                path => format!("{section}.{path}: {}", e.inner()),
            }
        })
    }
    match tree.get("mode")?.as_str()? {
        "transparent" => first::<TransparentInbound>(tree, "inbound")
            .or_else(|| first::<TransparentOutbound>(tree, "outbound")),
        "explicit" => first::<ExplicitInbound>(tree, "inbound")
            .or_else(|| first::<ExplicitOutbound>(tree, "outbound")),
        _ => None,
    }
    .map(|e| format!("{e} (mode: {})", tree["mode"].as_str().unwrap_or_default()))
}
