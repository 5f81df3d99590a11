//! Several control-plane replicas behind one client: the configured
//! addresses (each `host:port`, a name may resolve to several replicas),
//! the one in use, and a call that moves on to the next address when the
//! one it tried is down (connection failed, 5xx, no answer in time).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ClientError;
use crate::client::workload::CpError;

/// The control plane's workload API addresses, in order of preference.
/// Written as a list or as one comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneAddrs(Vec<String>);

impl ControlPlaneAddrs {
    /// Parses `host:port[,host:port...]`.
    pub fn parse(text: &str) -> Result<ControlPlaneAddrs, String> {
        Self::new(text.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    pub fn new<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<ControlPlaneAddrs, String> {
        let mut out = Vec::new();
        for e in entries {
            let e = e.as_ref().trim();
            let (host, port) = e
                .rsplit_once(':')
                .ok_or_else(|| format!("control-plane address {e:?} is not host:port"))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("control-plane address {e:?} is not host:port"));
            }
            if !out.iter().any(|o| o == e) {
                out.push(e.to_owned());
            }
        }
        if out.is_empty() {
            return Err("at least one control-plane address (host:port) is needed".into());
        }
        Ok(ControlPlaneAddrs(out))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl From<SocketAddr> for ControlPlaneAddrs {
    fn from(a: SocketAddr) -> Self {
        ControlPlaneAddrs(vec![a.to_string()])
    }
}

impl std::str::FromStr for ControlPlaneAddrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for ControlPlaneAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl Serialize for ControlPlaneAddrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ControlPlaneAddrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            List(Vec<String>),
        }
        match Form::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected host:port or a list of them"))?
        {
            Form::One(s) => Self::parse(&s),
            Form::List(l) => Self::new(l),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Told when the client moves to another address: the one it used before
/// (if any) and the one answering now.
pub type OnSwitch = Box<dyn Fn(Option<SocketAddr>, SocketAddr) + Send + Sync>;

/// The addresses and the one in use, shared by every call of one client.
pub(super) struct Failover {
    addrs: ControlPlaneAddrs,
    in_use: Mutex<Option<SocketAddr>>,
    on_switch: Option<OnSwitch>,
}

impl Failover {
    pub(super) fn new(addrs: ControlPlaneAddrs) -> Failover {
        Failover {
            addrs,
            in_use: Mutex::new(None),
            on_switch: None,
        }
    }

    pub(super) fn set_on_switch(&mut self, f: OnSwitch) {
        self.on_switch = Some(f);
    }

    pub(super) fn first(&self) -> &str {
        self.addrs.iter().next().expect("at least one address")
    }

    /// The address that answered last.
    pub(super) fn in_use(&self) -> Option<SocketAddr> {
        *self.in_use.lock().expect("in_use lock")
    }

    /// Every address the entries resolve to, once each, starting with the
    /// one in use and going on in configured order.
    async fn candidates(&self) -> Result<Vec<SocketAddr>, ClientError> {
        let mut out: Vec<SocketAddr> = Vec::new();
        let mut failed = None;
        for entry in self.addrs.iter() {
            match tokio::net::lookup_host(entry).await {
                Ok(found) => {
                    for a in found {
                        if !out.contains(&a) {
                            out.push(a);
                        }
                    }
                }
                Err(e) => failed = Some(ClientError::Connect(entry.to_owned(), e)),
            }
        }
        if let Some(e) = failed.filter(|_| out.is_empty()) {
            return Err(e);
        }
        if let Some(i) = self
            .in_use()
            .and_then(|cur| out.iter().position(|a| *a == cur))
        {
            out.rotate_left(i);
        }
        Ok(out)
    }

    /// Records that `addr` answered.
    fn settle(&self, addr: SocketAddr) {
        let previous = self.in_use.lock().expect("in_use lock").replace(addr);
        if previous != Some(addr) {
            if let Some(f) = &self.on_switch {
                f(previous, addr);
            }
        }
    }

    /// Runs `attempt` against each candidate in turn, each within
    /// `deadline`, until one answers; a replica that is down costs one
    /// retry on the next. The caller backs off (with jitter) when none does.
    pub(super) async fn call<T, Fut>(
        &self,
        resolve_deadline: Duration,
        deadline: Duration,
        mut attempt: impl FnMut(SocketAddr) -> Fut,
    ) -> Result<T, CpError>
    where
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let candidates = tokio::time::timeout(resolve_deadline, self.candidates())
            .await
            .map_err(|_| CpError::Timeout(resolve_deadline))??;
        let mut last = None;
        for addr in candidates {
            match tokio::time::timeout(deadline, attempt(addr)).await {
                Ok(Ok(v)) => {
                    self.settle(addr);
                    return Ok(v);
                }
                Ok(Err(e)) if !e.is_unavailable() => {
                    self.settle(addr);
                    return Err(e.into());
                }
                Ok(Err(e)) => last = Some(CpError::from(e)),
                Err(_) => last = Some(CpError::Timeout(deadline)),
            }
        }
        Err(last.expect("lookup_host yields at least one address or an error"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_a_list_or_a_comma_separated_string() {
        let one: ControlPlaneAddrs = serde_json::from_str(r#""cp:8443""#).unwrap();
        assert_eq!(one.iter().collect::<Vec<_>>(), ["cp:8443"]);
        let two: ControlPlaneAddrs = serde_json::from_str(r#""a:1, b:2,a:1""#).unwrap();
        assert_eq!(two.iter().collect::<Vec<_>>(), ["a:1", "b:2"]);
        let list: ControlPlaneAddrs = serde_json::from_str(r#"["[::1]:8443","b:2"]"#).unwrap();
        assert_eq!(list.to_string(), "[::1]:8443,b:2");
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"["[::1]:8443","b:2"]"#
        );
    }

    #[test]
    fn an_address_without_a_port_or_an_empty_list_is_refused() {
        for bad in [r#""cp""#, r#""cp:0""#, r#"":8443""#, "[]", r#""""#, "7"] {
            let err = serde_json::from_str::<ControlPlaneAddrs>(bad).unwrap_err();
            assert!(err.to_string().contains("host:port"), "{bad}: {err}");
        }
    }

    fn refused(addr: SocketAddr) -> ClientError {
        ClientError::Connect(
            addr.to_string(),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )
    }

    #[tokio::test]
    async fn a_call_moves_past_a_dead_replica_and_stays_on_the_next() {
        let addrs = ControlPlaneAddrs::new(["127.0.0.1:1", "127.0.0.2:2", "127.0.0.3:3"]).unwrap();
        let mut f = Failover::new(addrs);
        let switches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = switches.clone();
        f.set_on_switch(Box::new(move |from, to| {
            seen.lock().unwrap().push((from, to))
        }));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.3:3".parse().unwrap();
        let t = Duration::from_secs(1);

        let got = f.call(t, t, |addr| async move { Ok(addr) }).await.unwrap();
        assert_eq!(got, a);
        // `a` dies: the same call answers from `b`, and later calls start there.
        let tried = Mutex::new(Vec::new());
        let got = f
            .call(t, t, |addr| {
                tried.lock().unwrap().push(addr);
                async move {
                    if addr == a {
                        Err(refused(addr))
                    } else {
                        Ok(addr)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!((got, tried.into_inner().unwrap()), (b, vec![a, b]));
        assert_eq!(f.in_use(), Some(b));
        // A 5xx moves on too; a 4xx is an answer and does not.
        let got = f
            .call(t, t, |addr| async move {
                if addr == b {
                    Err(ClientError::Status {
                        status: 503,
                        error: "not_ready".into(),
                        message: String::new(),
                    })
                } else {
                    Ok(addr)
                }
            })
            .await
            .unwrap();
        assert_eq!(got, c);
        let err = f
            .call(t, t, |_| async move {
                Err::<(), _>(ClientError::Status {
                    status: 403,
                    error: "forbidden".into(),
                    message: String::new(),
                })
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
        assert_eq!(f.in_use(), Some(c));
        assert_eq!(
            *switches.lock().unwrap(),
            vec![(None, a), (Some(a), b), (Some(b), c)]
        );
        // None up: the last error, and the address in use stays.
        let err = f
            .call(t, t, |addr| async move { Err::<(), _>(refused(addr)) })
            .await
            .unwrap_err();
        assert!(
            matches!(err, CpError::Client(ClientError::Connect(..))),
            "{err}"
        );
        assert_eq!(f.in_use(), Some(c));
    }

    #[tokio::test]
    async fn a_replica_that_does_not_answer_in_time_is_skipped() {
        let addrs = ControlPlaneAddrs::new(["127.0.0.1:1", "127.0.0.2:2"]).unwrap();
        let f = Failover::new(addrs);
        let b: SocketAddr = "127.0.0.2:2".parse().unwrap();
        let got = f
            .call(
                Duration::from_secs(1),
                Duration::from_millis(50),
                |addr| async move {
                    if addr != b {
                        std::future::pending::<()>().await;
                    }
                    Ok(addr)
                },
            )
            .await
            .unwrap();
        assert_eq!(got, b);
    }
}
