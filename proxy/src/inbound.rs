//! Inbound: accept, find the app port, detect TLS, terminate mTLS with the
//! workload's SVID, identify the peer, authorize, forward to the local app.
//! Plaintext is accepted only on permissive ports.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use palisade_policy::{Decision, Direction, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::authz::{self, InboundCheck};
use crate::config::{ForwardTo, Protocol};
use crate::forward::{forward, log_end};
use crate::http;
use crate::http::detect::{self, detect, Detected};
use crate::io::tls_transport;
use crate::metrics::OpenConn;
use crate::{accept_loop, baseline, connect, tls, transparent, Runtime};
use palisade_policy::baseline::Protocol as Carried;

const DIR: Direction = Direction::Ingress;

/// The local app a listener's connections go to.
#[derive(Debug, Clone)]
pub enum LocalApp {
    /// Explicit mode: one listener, one app address.
    Fixed {
        app: SocketAddr,
        permissive: bool,
        protocol: Protocol,
        allow_get_body: bool,
    },
    /// Transparent mode: the app port is the original destination port.
    Transparent {
        permissive_ports: Arc<[u16]>,
        forward_to: ForwardTo,
        /// App port → protocol; absent ports are detected.
        protocols: Arc<BTreeMap<u16, Protocol>>,
        allow_get_body_ports: Arc<[u16]>,
    },
}

impl LocalApp {
    /// The app address and whether plaintext is allowed there.
    fn resolve(&self, tcp: &TcpStream) -> Result<(SocketAddr, bool), &'static str> {
        match self {
            LocalApp::Fixed {
                app, permissive, ..
            } => Ok((*app, *permissive)),
            LocalApp::Transparent {
                permissive_ports,
                forward_to,
                ..
            } => {
                let orig = transparent::original_dst(tcp).map_err(|_| "no_original_dst")?;
                if tcp.local_addr().ok() == Some(orig) {
                    // Not redirected: someone dialled the proxy port itself.
                    return Err("no_original_dst");
                }
                let app = match forward_to {
                    ForwardTo::Localhost => {
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), orig.port())
                    }
                    ForwardTo::Original => orig,
                };
                Ok((app, permissive_ports.contains(&orig.port())))
            }
        }
    }

    /// What the app on `port` speaks.
    fn protocol(&self, port: u16) -> Protocol {
        match self {
            LocalApp::Fixed { protocol, .. } => *protocol,
            LocalApp::Transparent { protocols, .. } => {
                protocols.get(&port).copied().unwrap_or_default()
            }
        }
    }

    /// Whether GET and the other methods without body semantics may carry
    /// one to the app on `port`.
    fn allows_get_body(&self, port: u16) -> bool {
        match self {
            LocalApp::Fixed { allow_get_body, .. } => *allow_get_body,
            LocalApp::Transparent {
                allow_get_body_ports,
                ..
            } => allow_get_body_ports.contains(&port),
        }
    }
}

pub async fn serve(rt: Arc<Runtime>, listener: TcpListener, app: LocalApp) {
    accept_loop(rt, listener, DIR, app, handle).await
}

fn refuse(rt: &Runtime, client: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
    crate::refuse(rt, DIR, client, reason, detail)
}

async fn handle(rt: Arc<Runtime>, local: Arc<LocalApp>, tcp: TcpStream, client: SocketAddr) {
    let t = &rt.timeouts;
    let (app, permissive) = match local.resolve(&tcp) {
        Ok(x) => x,
        Err(reason) => return refuse(&rt, client, reason, &"cannot tell the original destination"),
    };

    // Detect: one byte is enough to tell a TLS handshake record from anything else.
    let mut first = [0u8; 1];
    let is_tls = match tokio::time::timeout(t.detect, tcp.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return, // closed before saying anything
        Ok(Ok(_)) => tls::looks_like_client_hello(first[0]),
        // Server-speaks-first protocols send nothing; only plaintext can carry them.
        Err(_) if permissive => false,
        Err(_) => {
            return refuse(
                &rt,
                client,
                "timeout",
                &"no bytes before the detect timeout",
            )
        }
    };

    if !is_tls {
        if !permissive {
            return refuse(
                &rt,
                client,
                "plaintext_refused",
                &format_args!("plaintext to {app}"),
            );
        }
        return serve_authorized(rt, tcp, None, None, client, app, local).await;
    }

    // One load of the current credentials per connection.
    let Some(creds) = rt.creds.load_full() else {
        return refuse(&rt, client, "no_identity", &"no SVID yet");
    };
    let acceptor = TlsAcceptor::from(creds.server.clone());
    let stream = match tokio::time::timeout(t.handshake, acceptor.accept(tls_transport(tcp))).await
    {
        Err(_) => return refuse(&rt, client, "timeout", &"TLS handshake timed out"),
        Ok(Err(e)) => return refuse(&rt, client, tls::failure_reason(&e), &e),
        Ok(Ok(s)) => s,
    };
    let session = stream.get_ref().1;
    // The verifier of these credentials accepted exactly this certificate
    // and kept its ID.
    let peer: SpiffeId = match session.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => match creds.peer_id(leaf) {
            Ok(id) => id,
            Err(e) => return refuse(&rt, client, e.reason(), &"peer SVID unreadable"),
        },
        None => return refuse(&rt, client, "no_client_cert", &"no client certificate"),
    };
    drop(creds);
    let alpn = detect::alpn(session.alpn_protocol());
    serve_authorized(rt, stream, Some(peer), alpn, client, app, local).await
}

/// An identified connection (`peer` is `None` for plaintext on a permissive
/// port; `alpn` what TLS negotiated): detect the protocol, decide, then
/// serve HTTP with each request checked, or connect to `app` and forward
/// opaque bytes until the connection ends or a policy swap revokes it.
async fn serve_authorized<S>(
    rt: Arc<Runtime>,
    stream: S,
    peer: Option<SpiffeId>,
    alpn: Option<&'static [u8]>,
    client: SocketAddr,
    app: SocketAddr,
    local: Arc<LocalApp>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let t = &rt.timeouts;
    let port = app.port();
    let (proto, stream) = match detect(stream, local.protocol(port), alpn, t.detect).await {
        Ok(x) => x,
        Err(e) => {
            return tracing::debug!(client.addr = %client, error = %e, "closed during detection")
        }
    };
    // Subscribe before deciding, so no policy swap goes unseen.
    let mut policy = rt.policy.subscribe();
    let check = InboundCheck {
        peer: peer.as_ref(),
        source: client,
        port,
    };
    let seen = |protocol| baseline::Observed {
        direction: DIR,
        peer: peer.as_ref(),
        peer_addr: client,
        local_addr: app,
        port,
        protocol,
        http: None,
    };
    if proto != Detected::Opaque {
        if decided(&rt, &check, client, app).is_allowed()
            && baseline::admit_connection(&rt, &seen(Carried::Http), client).await
        {
            let (protocol, get_body) = (local.protocol(port), local.allows_get_body(port));
            http::inbound::serve(rt, stream, peer, client, app, protocol, get_body, proto).await;
        }
        return;
    }
    if !allowed_opaque(&rt, &check, client, app)
        || !baseline::admit_connection(&rt, &seen(Carried::Opaque), client).await
    {
        return;
    }
    let Some(upstream) = connect_app(&rt, app, client).await else {
        return;
    };
    let label = authz::peer_label(check.peer);
    let open = OpenConn::new(rt.metrics.conn(DIR, label, peer.is_some()));
    if let Some(peer) = &peer {
        tracing::debug!(client.addr = %client, client.id = %peer, app = %app, "inbound mTLS connection");
    }
    let ended = tokio::select! {
        ended = forward(stream, upstream, &open.0, t.idle) => ended,
        d = authz::revoked(&mut policy, || authz::inbound(&rt, &check)) => {
            return authz::terminated(&rt, DIR, &d, check.peer, client, app);
        }
    };
    log_end(client, label, ended);
}

/// The connection-level decision, counted and logged. An HTTP connection
/// that only HTTP rules allow goes on: each request is then checked.
fn decided(
    rt: &Runtime,
    check: &InboundCheck<'_>,
    client: SocketAddr,
    app: SocketAddr,
) -> Decision {
    let d = authz::inbound(rt, check);
    authz::record(rt, DIR, &d, check.peer, client, app);
    d
}

/// The connection-level check before forwarding opaque bytes, counted and
/// logged. A connection that only HTTP rules allow is refused here: opaque
/// TCP cannot be checked per request.
fn allowed_opaque(
    rt: &Runtime,
    check: &InboundCheck<'_>,
    client: SocketAddr,
    app: SocketAddr,
) -> bool {
    let d = decided(rt, check, client, app);
    if d.is_allowed() && d.http_required {
        refuse(
            rt,
            client,
            "http_only",
            &format_args!("{} allows only HTTP requests", d.matched),
        );
        return false;
    }
    d.is_allowed()
}

async fn connect_app(rt: &Runtime, app: SocketAddr, client: SocketAddr) -> Option<TcpStream> {
    match connect::tcp(app, rt.timeouts.connect).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(client.addr = %client, app = %app, error = %e, "the local app could not be reached");
            None
        }
    }
}
