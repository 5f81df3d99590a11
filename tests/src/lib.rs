//! Shared helpers for Palisade's end-to-end tests: locating the real binaries
//! and panicking layers over the process harness they share with `palisadectl
//! up` and the bench (`palisadectl::local`). Add further shared helpers as
//! modules here (a test CA, a network-namespace pod builder), never copied
//! across test files.

pub mod badcerts;
pub mod baseline;
pub mod cp;
pub mod ctl;
pub mod etcd;
pub mod http;
pub mod kube;
pub mod lenient;
pub mod netns;
pub mod pki;
pub mod pods;
pub mod policy;
pub mod proxy;
pub mod route;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Path of a workspace binary (`palisade-proxy`, `palisade-control-plane`,
/// `palisadectl`). `cargo test --workspace` builds them next to the test
/// executables because the crates that own them have integration tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub use palisadectl::local::Process;

/// A loopback port that was free a moment ago, for a child process to bind
/// (below the ephemeral range; see `palisadectl::local::free_port`).
pub fn free_port() -> u16 {
    palisadectl::local::free_port().expect("a free loopback port")
}

/// Resident memory of a child process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    palisadectl::local::rss_kib(pid).expect("VmRSS of a running child")
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
