//! Transparent interception: the original destination of a connection that
//! iptables REDIRECTed to the proxy (SO_ORIGINAL_DST, via nix, no unsafe).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt, SockaddrIn, SockaddrIn6};
use tokio::net::TcpStream;

/// Where the client meant to connect before the redirect. On a connection
/// that was not redirected the kernel answers with the local address itself,
/// which callers detect as "pointing at the proxy".
pub fn original_dst(tcp: &TcpStream) -> std::io::Result<SocketAddr> {
    let local = tcp.local_addr()?;
    let addr = if local.is_ipv4() {
        SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(getsockopt(
            tcp,
            sockopt::OriginalDst,
        )?)))
    } else {
        SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(getsockopt(
            tcp,
            sockopt::Ip6tOriginalDst,
        )?)))
    };
    Ok(addr)
}
