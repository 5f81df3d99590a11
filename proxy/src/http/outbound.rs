//! One outbound HTTP request from the app: authorize it (egress), strip what
//! the app must not decide (XFCC, the sidecar protocol header, hop-by-hop
//! headers), and send it over the pooled HTTP/2 mTLS connection to the
//! destination sidecar. Upgrades take a dedicated HTTP/1.1 connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use palisade_policy::{Direction, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{ReqBody, RespBody};
use super::client::{self, UpstreamError};
use super::detect::Detected;
use super::headers::{self, ORIG_PROTO};
use super::{server, upgrade, Conn, Started};
use crate::config::Protocol;
use crate::connect::ConnectError;
use crate::Runtime;

/// An outbound HTTP connection from the app to a meshed destination.
pub async fn serve<S>(
    rt: Arc<Runtime>,
    io: S,
    destination_id: SpiffeId,
    client: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
    detected: Detected,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(client.addr = %client, server.addr = %destination, protocol = detected.as_str(), "outbound HTTP connection");
    let conn = Conn::new(
        rt,
        Direction::Egress,
        Some(destination_id),
        client,
        destination,
        destination.port(),
        protocol,
        detected,
    );
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
    let Some(id) = conn.peer.clone() else {
        let r = conn.local(StatusCode::BAD_GATEWAY, "destination is not in the mesh\n");
        return Ok(conn.finish(r, start, log));
    };

    let h = req.headers_mut();
    h.remove(&ORIG_PROTO);
    headers::strip_hop_by_hop(h, upgrade);
    headers::set_xfcc(h, None);
    let timeout = conn.rt.http.settings.request_timeout;
    let rt = &conn.rt;

    let sent = if upgrade {
        let down = hyper::upgrade::on(&mut req);
        let req = req.map(|b| ReqBody::new(b, request_bytes));
        let send = async {
            let mut s = client::upgrade_connection(rt, conn.upstream, &id).await?;
            let mut resp = s
                .send_request(req)
                .await
                .map_err(|e| UpstreamError::Http(conn.upstream, e))?;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                upgrade::splice(down, hyper::upgrade::on(&mut resp), conn.client);
            } else {
                upgrade::close_after(&mut resp);
            }
            Ok(resp.map(RespBody::upstream))
        };
        tokio::time::timeout(timeout, send).await
    } else {
        if let Err(r) = to_sidecar_form(&mut req) {
            return Ok(conn.finish(*r, start, log));
        }
        let req = req.map(|b| ReqBody::new(b, request_bytes));
        let send = rt.http.peers.send(rt, conn.upstream, &id, req);
        tokio::time::timeout(timeout, send).await
    };
    let mut resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if let UpstreamError::Connect(ConnectError::Tls(_, _, reason)) = &e {
                rt.metrics.handshake_failure(conn.direction, reason);
            }
            tracing::info!(server.addr = %conn.upstream, server.id = %id, error = %e, "request to sidecar failed");
            let r = conn.local(
                StatusCode::BAD_GATEWAY,
                "the destination could not be reached\n",
            );
            return Ok(conn.finish(r, start, log));
        }
        Err(_) => {
            let r = conn.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                "the destination did not answer in time\n",
            );
            return Ok(conn.finish(r, start, log));
        }
    };
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switched);
    if upgrade && !switched {
        upgrade::close_after(&mut resp);
    }
    Ok(conn.finish(resp, start, log))
}

/// HTTP/2 between sidecars: an absolute URI carrying the authority, and
/// the app's HTTP/1 version remembered for the other side.
fn to_sidecar_form<B>(req: &mut Request<B>) -> Result<(), Box<Response<RespBody>>> {
    let bad = |text: &'static str| {
        let mut r = Response::new(RespBody::local(text));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        Box::new(r)
    };
    if req.version() != Version::HTTP_2 {
        let orig = if req.version() == Version::HTTP_10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        req.headers_mut()
            .insert(ORIG_PROTO.clone(), HeaderValue::from_static(orig));
        let authority = match req.headers_mut().remove(HOST) {
            Some(h) => Authority::try_from(h.as_bytes()).map_err(|_| bad("invalid Host\n"))?,
            None => match req.uri().authority() {
                Some(a) => a.clone(),
                None => return Err(bad("a Host header is required\n")),
            },
        };
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| bad("invalid request target\n"))?;
        *req.version_mut() = Version::HTTP_2;
    }
    Ok(())
}
