//! A local Palisade on loopback, as `palisadectl up`, the end-to-end tests and
//! the bench run it: a control plane and sidecars as child processes, the one
//! etcd cluster they keep their state in, the one free-port picker, and a
//! child's resident memory.

mod control_plane;
mod etcd;
mod process;
mod sidecar;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

pub use control_plane::{ControlPlane, ControlPlaneSpec, EtcdStoreSpec};
pub use etcd::EtcdCluster;
pub use palisade_proxy::config::Protocol;
pub use process::Process;
pub use sidecar::{Interception, Sidecar, SidecarSpec};

/// A loopback port that was free a moment ago, for a child process to bind.
///
/// Picked below the kernel's ephemeral range (32768 and up): a port the
/// kernel handed out for `:0` can be handed out again as the local port of
/// an outgoing connection before the child binds it. Each call in this
/// process gets a different port. The tests and the bench use it too.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n >= SPAN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "no free loopback port left below the ephemeral range",
            ));
        }
        let port = (FIRST + start.wrapping_add(n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

/// A loopback address whose port was free a moment ago (see [`free_port`]).
pub fn free_addr() -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// One plain HTTP/1.1 request (no body) to an admin or metrics listener: the
/// status and the body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{addr} answered {method} {path} without a status line"),
            )
        })?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Current resident set size of `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of `pid` since it started, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> std::io::Result<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, key: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, key).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no {key} in /proc/{pid}/status"),
        )
    })
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_status_in_kib() {
        let status = "Name:\tenvoy\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(40960));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(51200));
    }
}
