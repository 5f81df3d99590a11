//! A learned-baseline file from any bytes (`Snapshot::from_json`): it never
//! panics; a snapshot it accepts writes back to one it reads the same,
//! restores into a recorder of its identity, and exports a policy that
//! parses and compiles and a cases file that parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::baseline::{export, Baseline, BaselineSettings, Snapshot};
use palisade_policy::cases::parse_cases;
use palisade_policy::{compile, parse_documents, DefaultPolicy, Defaults};

const MAX_ENTRIES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = Snapshot::from_json(data, MAX_ENTRIES) else {
        return;
    };
    let again = Snapshot::from_json(snap.to_json().as_bytes(), MAX_ENTRIES)
        .expect("a snapshot reads back what it wrote");
    let facts = |s: &Snapshot| {
        s.entries
            .iter()
            .map(|e| {
                (
                    e.flow.clone(),
                    e.count,
                    e.first_seen,
                    e.last_seen,
                    e.rate.buckets,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(facts(&again), facts(&snap));
    assert_eq!(again.identity, snap.identity);

    let settings = BaselineSettings {
        max_entries: MAX_ENTRIES,
        ..Default::default()
    };
    let recorder = Baseline::new(snap.identity.clone(), settings);
    assert_eq!(recorder.merge(&snap).expect("same identity"), 0);
    assert_eq!(recorder.len(), snap.entries.len());

    let out = export(&snap);
    let docs = parse_documents("baseline.yaml", &out.policy)
        .unwrap_or_else(|e| panic!("export does not parse: {e:?}\n{}", out.policy));
    compile(docs, Defaults::new(DefaultPolicy::AllAuthenticated))
        .unwrap_or_else(|e| panic!("export does not compile: {e:?}"));
    parse_cases("cases.yaml", &out.cases)
        .unwrap_or_else(|e| panic!("cases do not parse: {e:?}\n{}", out.cases));
});
