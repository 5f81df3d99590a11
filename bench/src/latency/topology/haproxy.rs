//! The HAProxy path (optional): two HAProxy instances as mTLS peers at L4, for
//! both the HTTP and the TCP entry. HAProxy checks the peer's chain against the
//! bundle but cannot match a URI SAN, so unlike the other proxied paths it does
//! not pin SPIFFE IDs: a lower bound on what mTLS at L4 costs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{sidecar_pair, PathKind, RunningPath, Setup, StartError};
use crate::latency::certs::SvidFiles;
use palisadectl::local::{free_addr, Process};

pub fn start(setup: &Setup<'_>) -> Result<RunningPath, StartError> {
    let bin = setup.tools.haproxy.clone().ok_or_else(|| {
        StartError::Unavailable(
            "haproxy not found: apt-get install haproxy, or pass --haproxy-bin".to_owned(),
        )
    })?;
    let (out_http, out_tcp, in_http, in_tcp) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let creds = setup.creds;
    let bundle = creds.bundle.display().to_string();
    let server_pem = combined(&creds.server, setup.work_dir)?;
    let client_pem = combined(&creds.client, setup.work_dir)?;

    // Session resumption is off on both sides so every connection is a full handshake.
    let bind_tls = format!(
        "ssl crt {server_pem} ca-file {bundle} verify required ssl-min-ver TLSv1.3 no-tls-tickets"
    );
    let peer_tls = format!(
        "ssl crt {client_pem} ca-file {bundle} verify required ssl-min-ver TLSv1.3 no-ssl-reuse"
    );
    let server_side = [
        pair(
            "in_http",
            &format!("{in_http} {bind_tls}"),
            &setup.backends.http.to_string(),
        ),
        pair(
            "in_tcp",
            &format!("{in_tcp} {bind_tls}"),
            &setup.backends.tcp.to_string(),
        ),
    ];
    let client_side = [
        pair(
            "out_http",
            &out_http.to_string(),
            &format!("{in_http} {peer_tls}"),
        ),
        pair(
            "out_tcp",
            &out_tcp.to_string(),
            &format!("{in_tcp} {peer_tls}"),
        ),
    ];

    let server = spawn(&bin, "haproxy-inbound", &server_side, setup)?;
    let client = spawn(&bin, "haproxy-outbound", &client_side, setup)?;
    Ok(sidecar_pair(
        PathKind::Haproxy,
        client,
        [out_http, out_tcp],
        server,
        [in_http, in_tcp],
    )?)
}

/// A frontend bound at `bind` forwarding to one server at `server`.
fn pair(name: &str, bind: &str, server: &str) -> String {
    format!(
        "frontend {name}\n  bind {bind}\n  default_backend {name}_b\n\
         backend {name}_b\n  server s {server}\n"
    )
}

fn spawn(
    bin: &Path,
    name: &str,
    sections: &[String],
    setup: &Setup<'_>,
) -> anyhow::Result<Process> {
    let config = format!(
        "global\n  nbthread {}\n  maxconn 4096\n  tune.ssl.cachesize 0\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{}",
        setup.proxy_workers,
        sections.concat()
    );
    let path = setup.work_dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(bin);
    // -db: stay in the foreground, so the bench owns the process.
    cmd.arg("-db").arg("-f").arg(&path);
    super::spawn(name, cmd, setup)
}

/// HAProxy wants certificate chain and key in one file.
fn combined(svid: &SvidFiles, dir: &Path) -> anyhow::Result<String> {
    let name = svid
        .chain
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("svid");
    let path: PathBuf = dir.join(format!("{name}-combined.pem"));
    let pem = std::fs::read_to_string(&svid.chain)? + &std::fs::read_to_string(&svid.key)?;
    std::fs::write(&path, pem)?;
    Ok(path.display().to_string())
}
