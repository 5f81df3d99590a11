//! One inbound HTTP request: authorize it against the policy in force, refuse
//! a body the app may not read, then rewrite it for the local app
//! (hop-by-hop headers, XFCC, the protocol the app speaks) and stream it
//! there; upgrades are spliced through.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use palisade_policy::{Direction, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{self, ReqBody, RespBody, Unsent};
use super::detect::Detected;
use super::headers::{self, ORIG_PROTO};
use super::{server, upgrade, Conn, Started};
use crate::config::Protocol;
use crate::Runtime;

/// An inbound HTTP connection from a peer (`None`: plaintext) to the app.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S>(
    rt: Arc<Runtime>,
    io: S,
    peer: Option<SpiffeId>,
    client: SocketAddr,
    app: SocketAddr,
    protocol: Protocol,
    allow_get_body: bool,
    detected: Detected,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(client.addr = %client, app = %app, protocol = detected.as_str(), "inbound HTTP connection");
    let mut conn = Conn::new(
        rt,
        Direction::Ingress,
        peer,
        client,
        app,
        app.port(),
        protocol,
        detected,
    );
    conn.allow_get_body = allow_get_body;
    server::serve(Arc::new(conn), io, detected, handle).await;
}

async fn handle(
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let Started {
        start,
        log,
        request_bytes,
        upgrade,
    } = match conn.begin(&mut req) {
        Ok(s) => s,
        Err(refused) => return Ok(*refused),
    };
    if !conn.allow_get_body {
        let wait = conn.rt.http.settings.header_read_timeout;
        if let Some((status, reason, text)) = body::get_body_refusal(&mut req, wait).await {
            let mut r = conn.refuse(status, reason, text);
            upgrade::close_after(&mut r);
            return Ok(conn.finish(r, start, log));
        }
    }

    let h = req.headers_mut();
    let from_http1 = h.remove(&ORIG_PROTO).is_some();
    headers::strip_hop_by_hop(h, upgrade);
    headers::set_xfcc(h, conn.xfcc.as_ref());
    let to_h2 = match conn.protocol {
        Protocol::Http1 => false,
        Protocol::Http2 => true,
        Protocol::Detect | Protocol::Opaque => req.version() == Version::HTTP_2 && !from_http1,
    };
    if let Err(resp) = set_app_uri(&conn, &mut req, to_h2) {
        return Ok(conn.finish(*resp, start, log));
    }
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut req = req.map(|b| ReqBody::new(b, request_bytes));
    let unsent = if to_h2 { None } else { Unsent::track(&mut req) };

    let client = conn.rt.http.apps.get(&conn.rt, conn.upstream, to_h2);
    let timeout = conn.rt.http.settings.request_timeout;
    let mut resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::info!(app = %conn.upstream, error = %e, "local app request failed");
            let r = conn.local(StatusCode::BAD_GATEWAY, "the app could not be reached\n");
            return Ok(conn.finish(r, start, log));
        }
        Err(_) => {
            let r = conn.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                "the app did not answer in time\n",
            );
            return Ok(conn.finish(r, start, log));
        }
    };
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (Some(down), true) = (downstream_upgrade, switched) {
        upgrade::splice(down, hyper::upgrade::on(&mut resp), conn.client);
    }
    headers::strip_hop_by_hop(resp.headers_mut(), switched);
    if upgrade && !switched {
        upgrade::close_after(&mut resp);
    }
    Ok(conn.finish(body::from_app(resp, unsent), start, log))
}

/// The app gets an absolute URI with the caller's authority (HTTP/2's
/// `:authority`, or HTTP/1's Host), whatever address the socket goes to.
fn set_app_uri<B>(
    conn: &Conn,
    req: &mut Request<B>,
    to_h2: bool,
) -> Result<(), Box<Response<RespBody>>> {
    let authority = match super::authority(req) {
        Some(a) => Authority::try_from(a),
        None => Authority::try_from(conn.upstream.to_string()),
    };
    let Ok(authority) = authority else {
        return Err(Box::new(
            conn.local(StatusCode::BAD_REQUEST, "invalid authority\n"),
        ));
    };
    if !to_h2 && !req.headers().contains_key(HOST) {
        if let Ok(v) = HeaderValue::try_from(authority.as_str()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    if to_h2 {
        req.headers_mut().remove(HOST);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|_| Box::new(conn.local(StatusCode::BAD_REQUEST, "invalid request target\n")))?;
    *req.version_mut() = if to_h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    Ok(())
}
