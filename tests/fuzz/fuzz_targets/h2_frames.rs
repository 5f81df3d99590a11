//! HTTP/2 frame counting over any byte stream, split anywhere: it never
//! panics, passes every byte through unchanged, and counts RST_STREAM and
//! CONTINUATION frames exactly as a plain walk over the frame headers does,
//! whatever the split.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{block_on, read_all, split, Chunked};
use palisade_proxy::http::h2_frames::{FrameCounter, FrameCounts};

/// The preface, then 9-byte frame headers each followed by its payload.
fn reference(data: &[u8]) -> (u32, u32) {
    let (mut resets, mut continuations) = (0, 0);
    let mut rest = data.get(24..).unwrap_or_default();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        match rest[3] {
            0x3 => resets += 1,
            0x9 => continuations += 1,
            _ => {}
        }
        rest = rest.get(9 + len..).unwrap_or_default();
    }
    (resets, continuations)
}

fn run(payload: &[u8], plan: &[u8]) -> (u32, u32) {
    let counts = Arc::new(FrameCounts::default());
    // Made inside the runtime: the counter arms its header-timeout timer.
    let seen = block_on(async {
        let io = FrameCounter::new(
            Chunked::new(payload, plan),
            counts.clone(),
            Duration::from_secs(3600),
        );
        read_all(io).await
    });
    assert_eq!(seen, payload, "the counter changed the bytes");
    (
        counts.resets.load(Ordering::Relaxed),
        counts.continuations.load(Ordering::Relaxed),
    )
}

fuzz_target!(|data: &[u8]| {
    let (plan, payload) = split(data);
    let want = reference(payload);
    assert_eq!(run(payload, &[]), want, "counts differ from the frame walk");
    assert_eq!(
        run(payload, plan),
        want,
        "counts depend on how the bytes are split"
    );
});
