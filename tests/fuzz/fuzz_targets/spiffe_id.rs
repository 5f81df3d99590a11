//! SPIFFE IDs and trust domains from any string: parsing never panics, and
//! what parses round-trips (parse, print, parse gives the same value), as do
//! its trust domain and its `/ns/<ns>/sa/<sa>` parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        let printed = id.to_string();
        assert_eq!(printed, text, "a parsed ID prints differently");
        assert_eq!(SpiffeId::parse(&printed).as_ref(), Ok(&id));
        let td = id.trust_domain();
        assert_eq!(TrustDomain::new(td.as_str()).as_ref(), Ok(&td));
        assert!(id.is_member_of(&td));
        assert_eq!(
            td.id(id.path()).as_ref(),
            Ok(&id),
            "trust domain + path is not the ID"
        );
        if let Some((ns, sa)) = id.ns_sa() {
            assert_eq!(td.workload(ns, sa).as_ref(), Ok(&id));
        }
    }
    if let Ok(td) = TrustDomain::new(text) {
        assert_eq!(TrustDomain::new(&td.to_string()).as_ref(), Ok(&td));
        let own = SpiffeId::parse(&td.id_string()).expect("a trust domain's own ID parses");
        assert_eq!(own.trust_domain(), td);
        assert_eq!(own.path(), "");
    }
});
