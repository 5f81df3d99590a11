//! A deliberately lenient keep-alive HTTP/1.1 app, like many real ones: it
//! never reads a body on GET or HEAD (so a body there is read as the next
//! request), accepts any request line it can split, and maps paths the
//! permissive way (percent-decodes everything including `%2f`, turns `\`
//! into `/`, strips `;params`, resolves `..`). `/admin/secret.txt` serves
//! `SECRET`, anything else `ok`. Every request it parses is logged, so a
//! test can prove from the app's own view what got past the proxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::serve_app;

/// The path that serves the secret.
pub const SECRET_PATH: &str = "/admin/secret.txt";

/// A path answered at once with its body unread, whatever the method (like
/// an app that refuses an upload without draining it).
pub const EARLY_PATH: &str = "/public/early";

/// One request as the app parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// The request target exactly as it arrived (origin or absolute form).
    pub target: String,
    /// `HTTP/1.1`, `HTTP/1.0`, ... or empty for HTTP/0.9.
    pub version: String,
    /// Every `Host` header, in order.
    pub hosts: Vec<String>,
    /// The path after the lenient mapping: what the app served.
    pub path: String,
    /// Every `x-forwarded-client-cert` header, in order.
    pub xfcc: Vec<String>,
}

impl Seen {
    /// The first `Host`, if any.
    pub fn host(&self) -> Option<&str> {
        self.hosts.first().map(String::as_str)
    }
}

/// The running app; it stops with the value.
pub struct LenientApp {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl LenientApp {
    pub fn start() -> LenientApp {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let (addr, rt) = serve_app("127.0.0.1:0", move |tcp| serve(tcp, l.clone()));
        LenientApp { addr, log, _rt: rt }
    }

    /// Every request parsed so far, in order.
    pub fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Whether any request was served as `path` (after the lenient mapping).
    pub fn reached(&self, path: &str) -> bool {
        self.log.lock().unwrap().iter().any(|s| s.path == path)
    }

    /// Forget what was logged so far.
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

/// What the app does once it has a head.
enum Body {
    None,
    Length(usize),
    Chunked,
}

async fn serve(mut tcp: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut tcp, &mut buf).await else {
            return;
        };
        let Some((seen, body, close)) = parse(&head) else {
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        };
        let ok = match body {
            Body::None => true,
            Body::Length(n) => read_exact_buffered(&mut tcp, &mut buf, n).await,
            Body::Chunked => skip_chunked(&mut tcp, &mut buf).await,
        };
        if !ok {
            return;
        }
        let text: &[u8] = if seen.path == SECRET_PATH {
            b"SECRET"
        } else {
            b"ok"
        };
        let http09 = seen.version.is_empty();
        let head_only = seen.method == "HEAD";
        log.lock().unwrap().push(seen);
        let mut out = Vec::new();
        if !http09 {
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    text.len()
                )
                .as_bytes(),
            );
        }
        if !head_only {
            out.extend_from_slice(text);
        }
        if tcp.write_all(&out).await.is_err() || close || http09 {
            return;
        }
    }
}

/// Read until a blank line ends a head (or, for a request line with no
/// version, until its end). Bytes after it stay in `buf`.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        // Blank lines before a request line are skipped, as servers do.
        while buf.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            buf.remove(0);
        }
        if let Some(end) = head_end(buf) {
            return Some(buf.drain(..end).collect());
        }
        if buf.len() > 1 << 20 || read_more(tcp, buf).await == 0 {
            return None;
        }
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    let first_line = buf.iter().position(|b| *b == b'\n')?;
    let line = String::from_utf8_lossy(&buf[..first_line]);
    if line.split_whitespace().count() == 2 {
        // HTTP/0.9: a request line alone.
        return Some(first_line + 1);
    }
    (first_line..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    match tcp.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

async fn read_exact_buffered(tcp: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    while buf.len() < n {
        if read_more(tcp, buf).await == 0 {
            return false;
        }
    }
    buf.drain(..n);
    true
}

async fn read_line(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(p) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=p).collect();
            return Some(String::from_utf8_lossy(&line).trim().to_owned());
        }
        if read_more(tcp, buf).await == 0 {
            return None;
        }
    }
}

async fn skip_chunked(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        let Some(line) = read_line(tcp, buf).await else {
            return false;
        };
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return false;
        };
        if size == 0 {
            // Trailers, up to a blank line.
            loop {
                match read_line(tcp, buf).await {
                    Some(l) if l.is_empty() => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        }
        if !read_exact_buffered(tcp, buf, size + 2).await {
            return false;
        }
    }
}

/// The request line split on any whitespace (tabs too), the headers, and
/// how the body is framed: a Content-Length on GET or HEAD, or on
/// `EARLY_PATH`, is ignored.
fn parse(head: &[u8]) -> Option<(Seen, Body, bool)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let mut parts = lines.next()?.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let version = parts.next().unwrap_or("").to_owned();
    let (mut hosts, mut xfcc) = (Vec::new(), Vec::new());
    let (mut length, mut chunked, mut close) = (None, false, version == "HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        match name.as_str() {
            "host" => hosts.push(value),
            "x-forwarded-client-cert" => xfcc.push(value),
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close |= value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let path = lenient_path(&target);
    let body = match (method.as_str(), chunked, length) {
        ("GET" | "HEAD", _, _) => Body::None,
        _ if path == EARLY_PATH => Body::None,
        (_, true, _) => Body::Chunked,
        (_, false, Some(n)) => Body::Length(n),
        _ => Body::None,
    };
    let seen = Seen {
        method,
        target,
        version,
        hosts,
        path,
        xfcc,
    };
    Some((seen, body, close))
}

/// How a permissive app maps a target to a resource.
pub fn lenient_path(target: &str) -> String {
    // Absolute form: drop the scheme and authority.
    let rest = match target.split_once("://") {
        Some((_, after)) => after.find('/').map_or("/", |i| &after[i..]),
        None => target,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode_all(rest).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn percent_decode_all(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lenient_mapping_reaches_the_secret_every_way_an_attacker_tries() {
        for t in [
            "/admin/secret.txt",
            "/public/../admin/secret.txt",
            "/%61dmin/secret.txt",
            "//admin/secret.txt",
            "/admin/./secret.txt",
            "/admin%2fsecret.txt",
            "/admin%5csecret.txt",
            "\\admin\\secret.txt",
            "/admin;x=1/secret.txt",
            "/public/%2e%2e/admin/secret.txt",
            "/admin/secret.txt?x=1",
            "/admin/secret.txt#frag",
            "http://other.demo/admin/secret.txt",
        ] {
            assert_eq!(lenient_path(t), SECRET_PATH, "{t}");
        }
        assert_eq!(lenient_path("/ADMIN/secret.txt"), "/ADMIN/secret.txt");
        assert_eq!(lenient_path("/%zz"), "/%zz");
    }

    #[test]
    fn a_get_body_is_read_as_the_next_request_on_the_connection() {
        let app = LenientApp::start();
        let inner = "GET /admin/secret.txt HTTP/1.1\r\nHost: inner\r\n\r\n";
        let outer = format!(
            "GET /public/ok.txt HTTP/1.1\r\nHost: outer\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        let back = crate::http::raw_exchange(
            app.addr,
            outer.as_bytes(),
            std::time::Duration::from_millis(500),
        );
        let back = String::from_utf8_lossy(&back);
        assert!(back.contains("SECRET"), "{back}");
        let log = app.log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[0].host(), Some("outer"));
        assert!(app.reached(SECRET_PATH));
        assert_eq!(log[1].hosts, vec!["inner"]);
    }
}
