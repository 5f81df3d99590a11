//! HTTP/1.1 upgrades (WebSocket): the two switched connections spliced
//! together, and closing after a refused one.

use std::net::SocketAddr;

use http::header::{HeaderValue, CONNECTION};
use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// After a refused upgrade the HTTP/1 framing cannot be trusted any more
/// (the guard stopped following it): close once this response is sent.
pub fn close_after<B>(resp: &mut Response<B>) {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// Once both sides switched protocols, copy bytes between them.
pub fn splice(down: OnUpgrade, up: OnUpgrade, client: SocketAddr) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(client.addr = %client, error = %e, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((from_client, from_server)) => tracing::debug!(
                client.addr = %client,
                from_client,
                from_server,
                "upgraded connection closed"
            ),
            Err(e) => {
                tracing::debug!(client.addr = %client, error = %e, "upgraded connection ended")
            }
        }
    });
}
