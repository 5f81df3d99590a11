//! Security-event batches POSTed to the control plane's collector, as a JSON
//! array or NDJSON (the first input byte picks which). Parsing never panics;
//! an accepted batch holds only objects with a numeric `class_uid`, within
//! the size limit, and reads back as the same events in the other format
//! (compared by `class_uid`: serde_json does not round-trip every float
//! exactly, which is no concern of the collector's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_control_plane::server::events::{parse_batch, MAX_BATCH_EVENTS};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ndjson = mode & 1 == 1;
    let Ok(events) = parse_batch(body, ndjson) else {
        return;
    };
    assert!(events.len() <= MAX_BATCH_EVENTS);
    for e in &events {
        assert!(e.get("class_uid").is_some_and(|c| c.is_u64()), "{e}");
    }
    // The same events written in the other format parse to the same batch.
    let (other, as_ndjson) = if ndjson {
        (serde_json::to_vec(&events).unwrap(), false)
    } else {
        let mut lines = Vec::new();
        for e in &events {
            lines.extend(serde_json::to_vec(e).unwrap());
            lines.push(b'\n');
        }
        (lines, true)
    };
    let again = parse_batch(&other, as_ndjson).expect("a re-encoded batch parses");
    let class = |v: &[serde_json::Value]| -> Vec<u64> {
        v.iter().map(|e| e["class_uid"].as_u64().unwrap()).collect()
    };
    assert_eq!(class(&again), class(&events));
});
