//! Protocol detection over any bytes, split anywhere: it never panics, it
//! decides the same whatever the split (a client must not steer it with TCP
//! segment boundaries), and every byte it read is replayed intact.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{block_on, read_all, split, Chunked};
use palisade_proxy::config::Protocol;
use palisade_proxy::http::detect::{detect, Detected};

fn run(payload: &[u8], plan: &[u8]) -> (Detected, Vec<u8>) {
    block_on(async {
        let io = Chunked::new(payload, plan);
        let (detected, replay) = detect(io, Protocol::Detect, None, Duration::from_secs(3600))
            .await
            .expect("the fuzz stream never fails");
        (detected, read_all(replay).await)
    })
}

fuzz_target!(|data: &[u8]| {
    let (plan, payload) = split(data);
    let (whole, replay) = run(payload, &[]);
    assert_eq!(replay, payload, "detection lost or changed bytes");
    let (chunked, replay) = run(payload, plan);
    assert_eq!(
        replay, payload,
        "detection lost or changed bytes when split"
    );
    assert_eq!(
        whole, chunked,
        "detection depends on how the bytes are split"
    );
});
