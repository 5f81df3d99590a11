//! The syslog sink against a real rsyslog (Debian package `rsyslog`) on a
//! loopback TCP port: the events are read back from rsyslog's output file.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_policy::Direction;
use palisade_proxy::events::{
    Emitter, Endpoint, EventsConfig, Finding, FindingAction, FindingKind, FindingMode, Flow,
    HttpFlow, SinkConfig,
};
use prometheus_client::registry::Registry;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// rsyslogd in the foreground with a generated config: imtcp on `port`, and
/// an omfile action writing `APP-NAME MSGID MSG` lines. Killed on drop.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Rsyslog {
    fn start(port: u16) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.log");
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
module(load="imtcp")
template(name="events" type="string" string="%app-name% %msgid% %msg%\n")
ruleset(name="events") {{
  action(type="omfile" file="{out}" template="events")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="events")
"#,
                work = dir.path().display(),
                out = out.display(),
            ),
        )
        .unwrap();
        // /usr/sbin is not on every user's PATH.
        let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("rsyslogd");
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd must be installed (apt-get install rsyslog)");
        let r = Rsyslog { child, dir, port };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(r.addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {}",
                r.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn output(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    /// Waits for a line whose MSGID is `msgid` and returns (app-name, event).
    async fn wait_for(&self, msgid: &str, port: u16) -> (String, Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(self.output()).unwrap_or_default();
            for line in text.lines() {
                let mut parts = line.splitn(3, ' ');
                let (app, id, msg) = (parts.next(), parts.next(), parts.next());
                if id != Some(msgid) {
                    continue;
                }
                let event: Value = serde_json::from_str(msg.unwrap().trim())
                    .unwrap_or_else(|e| panic!("rsyslog got unparsable JSON ({e}): {line}"));
                if event["evidences"][0]["dst_endpoint"]["port"] == port {
                    return (app.unwrap().to_owned(), event);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {msgid} event for port {port} in rsyslog's output:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn new_route(port: u16) -> Finding<'static> {
    Finding {
        kind: FindingKind::NewRoute,
        flow: Flow {
            direction: Direction::Ingress,
            src: Endpoint {
                addr: "10.0.0.7:40112".parse().unwrap(),
                id: Some("spiffe://td/ns/shop/sa/api"),
            },
            dst: Endpoint {
                addr: SocketAddr::from(([10, 0, 0, 9], port)),
                id: Some("spiffe://td/ns/shop/sa/db"),
            },
            http: Some(HttpFlow {
                method: "GET",
                path: "/admin/{id}",
            }),
        },
        baseline: None,
        observed_rate: None,
        mode: FindingMode::Monitor,
        action: FindingAction::Allowed,
    }
}

fn syslog_config(port: u16) -> EventsConfig {
    EventsConfig {
        sinks: vec![SinkConfig::Syslog {
            address: format!("127.0.0.1:{port}"),
            facility: 4,
            app_name: "palisade-proxy".into(),
            reconnect_max: Duration::from_millis(500),
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn syslog_sink_delivers_ocsf_findings_to_rsyslog() {
    let rsyslog = Rsyslog::start(free_port());
    let mut reg = Registry::default();
    let e = Emitter::start(&syslog_config(rsyslog.port), &mut reg, None).unwrap();
    e.finding(&new_route(8443));
    e.flush(WAIT).await;

    let (app, event) = rsyslog.wait_for("baseline.new_route", 8443).await;
    assert_eq!(app, "palisade-proxy");
    assert_eq!(event["class_uid"], 2004);
    assert_eq!(event["finding_info"]["types"][0], "baseline.new_route");
    assert_eq!(
        event["evidences"][0]["http_request"]["url"]["path"],
        "/admin/{id}"
    );
    assert_eq!(
        event["evidences"][0]["src_endpoint"]["uid"],
        "spiffe://td/ns/shop/sa/api"
    );
}

#[tokio::test]
async fn syslog_sink_reconnects_after_the_daemon_restarts() {
    let port = free_port();
    let first = Rsyslog::start(port);
    let mut reg = Registry::default();
    let e = Emitter::start(&syslog_config(port), &mut reg, None).unwrap();
    e.finding(&new_route(1));
    e.flush(WAIT).await;
    first.wait_for("baseline.new_route", 1).await;
    first.stop();

    // While the daemon is down the event waits in the sink, which retries
    // with backoff; once it is back, the event arrives.
    e.finding(&new_route(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Rsyslog::start(port);
    e.finding(&new_route(3));
    e.flush(WAIT).await;
    second.wait_for("baseline.new_route", 2).await;
    second.wait_for("baseline.new_route", 3).await;
}
