//! The Workload API's `:authority` fix-up over any byte stream, split
//! anywhere: it never panics, its output does not depend on how the input
//! was split, and what it writes is the preface and whole frames whose
//! header blocks decode with an `:authority` h2 accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loona_hpack::Decoder;
use palisade_fuzz::{block_on, split, Chunked};
use palisade_proxy::workload_api::authority::relay;

fn run(payload: &[u8], plan: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let ok = block_on(relay(Chunked::new(payload, plan), &mut out)).is_ok();
    (out, ok)
}

/// Frames after the preface: complete, and HEADERS/CONTINUATION blocks
/// decode (in order, one decoder) with a valid `:authority` if any.
fn check(out: &[u8]) {
    let Some(mut rest) = out.get(24..) else {
        return;
    };
    let mut decoder = Decoder::new();
    let mut block = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "a partial frame header was written");
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, flags) = (rest[3], rest[4]);
        let payload = rest.get(9..9 + len).expect("a partial frame was written");
        if kind == 0x1 || kind == 0x9 {
            block.extend_from_slice(payload);
            if flags & 0x4 != 0 {
                let headers = decoder.decode(&block).expect("a rewritten block decodes");
                for (name, value) in headers {
                    if name == b":authority" {
                        assert!(http::uri::Authority::try_from(&value[..]).is_ok());
                    }
                }
                block.clear();
            }
        }
        rest = &rest[9 + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let (plan, payload) = split(data);
    let whole = run(payload, &[]);
    assert_eq!(run(payload, plan), whole, "the output depends on the split");
    check(&whole.0);
});
