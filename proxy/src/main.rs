//! palisade-proxy's entry point: load the configuration, bind every listener,
//! start the identity client, serve until SIGTERM or `POST /shutdown`, drain.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use palisade_proxy::config::{Config, Interception};
use palisade_proxy::events::{ControlPlaneLink, Emitter};
use palisade_proxy::http::Http;
use palisade_proxy::identity::{AttestationSource, ControlPlane, IdentityManager};
use palisade_proxy::metrics::Metrics;
use palisade_proxy::outbound::{endpoints, EndpointMap};
use palisade_proxy::tls::Bundle;
use palisade_proxy::{admin, baseline, drain, inbound, outbound, policy, Runtime};

/// Palisade's sidecar: SPIFFE mTLS between workloads. Settings and their
/// defaults: proxy/README.md.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// YAML configuration file; without it, defaults plus PALISADE_* variables.
    #[arg(long, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "PALISADE_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "PALISADE_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?;
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        sub.json().init();
    } else {
        sub.init();
    }
    let cfg = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    // Two worker threads: a sidecar shares its pod's CPU with the app.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let bundle_pem =
        std::fs::read_to_string(&cfg.identity.bootstrap_bundle).with_context(|| {
            format!(
                "reading the bootstrap bundle {}",
                cfg.identity.bootstrap_bundle.display()
            )
        })?;
    let bootstrap = Bundle::from_pem(&bundle_pem).with_context(|| {
        format!(
            "parsing the bootstrap bundle {}",
            cfg.identity.bootstrap_bundle.display()
        )
    })?;
    let attestation = match (
        &cfg.identity.join_token,
        &cfg.identity.join_token_file,
        &cfg.identity.k8s_sa_token_file,
    ) {
        (Some(t), _, _) => AttestationSource::JoinToken(t.clone()),
        (_, Some(p), _) => AttestationSource::JoinTokenFile(p.clone()),
        (_, _, Some(p)) => AttestationSource::K8sSaTokenFile(p.clone()),
        _ => AttestationSource::None,
    };
    let mut metrics = Metrics::new();
    let cp = Arc::new(
        ControlPlane::new(
            cfg.identity.control_plane.clone(),
            cfg.identity.trust_domain.clone(),
            bootstrap.certs,
            cfg.timeouts.handshake.max(Duration::from_secs(10)),
        )
        .on_switch(metrics.control_plane_switch()),
    );
    let creds = Arc::new(ArcSwapOption::empty());
    let link = ControlPlaneLink {
        cp: cp.clone(),
        creds: creds.clone(),
    };
    let events = Emitter::start(&cfg.events, metrics.registry_mut(), Some(link))
        .context("starting the security-event sinks")?;
    let metrics = Arc::new(metrics);
    let baseline = baseline::Live::new(&cfg.baseline);
    let background = CancellationToken::new();
    // Loaded before anything listens, so the first connection sees it.
    let policies = policy::start(
        &cfg.policy,
        metrics.clone(),
        cp.clone(),
        creds.clone(),
        background.clone(),
    )
    .await
    .context("watching the policy path")?;
    let rt = Arc::new(Runtime {
        timeouts: cfg.timeouts.clone(),
        creds: creds.clone(),
        metrics: metrics.clone(),
        permits: Arc::new(Semaphore::new(cfg.max_connections)),
        drain: drain::Drain::default(),
        policy: policies.live.clone(),
        http: Http::new(cfg.http.clone(), &cfg.access_log, metrics.clone())
            .context("opening the access log")?,
        baseline,
        events,
    });
    tokio::spawn(baseline::maintain(rt.clone(), background.clone()));
    let reporter = Arc::new(baseline::report::Reporter::new(
        cp.clone(),
        &cfg.baseline,
        |k| std::env::var(k).ok(),
    ));
    tokio::spawn(reporter.clone().run(rt.clone(), background.clone()));

    // Bind everything first so a port clash fails at start, not later.
    let admin_listener = bind("admin", cfg.admin.bind).await?;
    let mut listeners = vec![("admin".to_owned(), admin_listener.local_addr()?)];
    let mut endpoint_map = None;
    match &cfg.interception {
        Interception::Transparent { inbound, outbound } => {
            let l = bind("inbound", inbound.bind).await?;
            listeners.push(("inbound".into(), l.local_addr()?));
            let target = inbound::LocalApp::Transparent {
                permissive_ports: inbound.permissive_ports.clone().into(),
                forward_to: inbound.forward_to,
                protocols: Arc::new(inbound.protocols.clone()),
                allow_get_body_ports: inbound.allow_get_body_ports.clone().into(),
            };
            tokio::spawn(inbound::serve(rt.clone(), l, target));

            let l = bind("outbound", outbound.bind).await?;
            listeners.push(("outbound".into(), l.local_addr()?));
            let map = Arc::new(ArcSwap::from_pointee(EndpointMap::default()));
            endpoint_map = Some(map.clone());
            tokio::spawn(endpoints::refresh_loop(
                cp.clone(),
                creds.clone(),
                map.clone(),
                metrics.clone(),
                outbound.endpoints_refresh,
                background.clone(),
            ));
            let target = outbound::Upstream::Transparent {
                endpoints: map,
                unmeshed: outbound.unmeshed,
                protocols: Arc::new(outbound.protocols.clone()),
            };
            tokio::spawn(outbound::serve(rt.clone(), l, target));
        }
        Interception::Explicit { inbound, outbound } => {
            for p in &inbound.ports {
                let l = bind("inbound", p.listen).await?;
                listeners.push((format!("inbound -> {}", p.app), l.local_addr()?));
                let target = inbound::LocalApp::Fixed {
                    app: p.app,
                    permissive: p.permissive,
                    protocol: p.protocol,
                    allow_get_body: p.allow_get_body,
                };
                tokio::spawn(inbound::serve(rt.clone(), l, target));
            }
            for r in &outbound.routes {
                let l = bind("outbound", r.listen).await?;
                listeners.push((
                    format!("outbound -> {} ({})", r.destination, r.identity),
                    l.local_addr()?,
                ));
                let target = outbound::Upstream::Route {
                    destination: r.destination,
                    identity: r.identity.clone(),
                    protocol: r.protocol,
                };
                tokio::spawn(outbound::serve(rt.clone(), l, target));
            }
        }
    }
    for (name, addr) in &listeners {
        tracing::info!(listener = %name, address = %addr, "listening");
    }

    let admin = Arc::new(admin::Admin::new(
        rt.clone(),
        &cfg,
        &listeners,
        endpoint_map,
    ));
    tokio::spawn(admin::serve(admin, admin_listener));

    let manager = IdentityManager {
        cp,
        attestation,
        accepted: cfg.identity.accepted_trust_domains.clone().into(),
        cell: creds,
        metrics,
    };
    tokio::spawn(manager.run(background.clone()));

    tokio::select! {
        r = drain::signal() => r.context("installing signal handlers")?,
        _ = rt.drain.requested() => {}
    }
    let left = rt.drain.run(cfg.drain_grace_period).await;
    // Denials raised while draining still reach the sinks.
    rt.events
        .flush(cfg.drain_grace_period.min(Duration::from_secs(5)))
        .await;
    background.cancel();
    rt.baseline.persist(&rt.metrics.baseline);
    reporter
        .report_on_drain(&rt, cfg.drain_grace_period.min(Duration::from_secs(5)))
        .await;
    drop(policies);
    tracing::info!(closed_unfinished = left, "drained; exiting");
    Ok(())
}
