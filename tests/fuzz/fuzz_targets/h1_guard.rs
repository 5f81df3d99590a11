//! The HTTP/1 head guard over any bytes, split anywhere. It never panics.
//! With no violation, the server behind it reads exactly the client's
//! bytes; after one, it reads a prefix of them and then one of the guard's
//! replacements, or (an oversized head hyper refuses itself) all of them.
//! Whether a stream is refused does not depend on how it was split: a limit
//! a client can dodge with TCP segment boundaries is no limit.
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{block_on, read_all, split, Chunked};
use palisade_proxy::http::h1_guard::{GuardFlags, GuardLimits, H1Guard, Report};

/// Small limits, so the fuzzer reaches them with short inputs.
const LIMITS: GuardLimits = GuardLimits {
    max_header_bytes: 512,
    max_headers: 8,
    header_read_timeout: Duration::from_secs(3600),
    idle_timeout: Duration::from_secs(3600),
    reject_fragment: true,
};

#[derive(Default)]
struct Reasons(Mutex<Vec<&'static str>>);

impl Report for Reasons {
    fn violation(&self, reason: &'static str) {
        self.0.lock().unwrap().push(reason);
    }
}

/// What the guard puts in place of a refused head: a NUL hyper answers with
/// 400, or a head with one field too many for hyper's 431 (after a request
/// line, or continuing the part of the head hyper already holds).
fn replacements() -> Vec<Vec<u8>> {
    let fields: Vec<u8> = b"x: y\r\n".repeat(LIMITS.max_headers + 1);
    let head = |start: &[u8]| [start, &fields, b"\r\n"].concat();
    vec![
        b"\0\r\n\r\n".to_vec(),
        head(b"GET / HTTP/1.1\r\n"),
        head(b""),
        head(b"\n"),
        head(b"\r\n"),
    ]
}

fn run(payload: &[u8], plan: &[u8]) -> (Vec<u8>, Vec<&'static str>) {
    let reasons = Arc::new(Reasons::default());
    let seen = block_on(async {
        let guard = H1Guard::new(
            Chunked::new(payload, plan),
            LIMITS,
            reasons.clone(),
            Arc::new(GuardFlags::default()),
        );
        read_all(guard).await
    });
    let reasons = reasons.0.lock().unwrap().clone();
    (seen, reasons)
}

fn check_output(payload: &[u8], seen: &[u8], reasons: &[&str]) {
    assert!(
        reasons.len() <= 1,
        "a violation is reported once: {reasons:?}"
    );
    if reasons.is_empty() {
        assert_eq!(seen, payload, "no violation, yet the bytes changed");
        return;
    }
    let replaced = replacements()
        .iter()
        .any(|r| seen.ends_with(r) && payload.starts_with(&seen[..seen.len() - r.len()]));
    assert!(
        replaced || seen == payload,
        "after {reasons:?} the server read neither the input nor a prefix and a replacement"
    );
}

fuzz_target!(|data: &[u8]| {
    let (plan, payload) = split(data);
    let (seen, whole) = run(payload, &[]);
    check_output(payload, &seen, &whole);
    let (seen, chunked) = run(payload, plan);
    check_output(payload, &seen, &chunked);
    assert_eq!(
        whole.is_empty(),
        chunked.is_empty(),
        "refused in one piece: {whole:?}; refused when split: {chunked:?}"
    );
});
