//! Properties of request normalization on random paths and authorities:
//! normalizing twice changes nothing, and a normalized path carries nothing
//! an app could read two ways.

use palisade_policy::normalize::{
    authority_of, is_normal_authority, is_normal_path, path_of, Handling, Normalization,
};
use proptest::prelude::*;

/// Paths built from the pieces attacks are made of.
fn path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", "a", "admin", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", ";", ";x=1",
        "%3b", "%61", "%7e", "%20", "%c3%a9", "%25", "%00", "%", "%g1", "~", "-", "_", "#", "é",
    ]);
    prop::collection::vec(piece, 0..12).prop_map(|ps| format!("/{}", ps.concat()))
}

fn config() -> impl Strategy<Value = Normalization> {
    let h = prop::sample::select(vec![Handling::Reject, Handling::Normalize]);
    (h.clone(), h.clone(), h.clone(), h).prop_map(|(a, b, c, d)| Normalization {
        escaped_slashes: a,
        backslash: b,
        path_parameters: c,
        fragment: d,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn normalizing_a_path_twice_changes_nothing_and_leaves_no_ambiguity(p in path(), cfg in config()) {
        let raw = p.split('#').next().unwrap();
        if let Ok(once) = path_of(raw, &cfg) {
            prop_assert!(is_normal_path(&once), "{p} -> {once}");
            // Under the strictest settings too: nothing left to reject.
            let twice = path_of(&once, &Normalization::default());
            prop_assert_eq!(twice.as_deref(), Ok(&*once));
            for bad in ["//", "/./", "/../", "%2F", "%2f", "%5C", "%5c", "\\", ";", "#", "%00"] {
                prop_assert!(!once.contains(bad), "{} -> {} has {}", p, once, bad);
            }
            prop_assert!(!once.ends_with("/.") && !once.ends_with("/.."), "{p} -> {once}");
            prop_assert!(once.starts_with('/'));
        }
    }

    #[test]
    fn normalizing_an_authority_twice_changes_nothing(
        host in "[a-zA-Z0-9.\\-_]{0,12}",
        port in prop::option::of(prop::sample::select(vec!["", "80", "080", "8080", "0", "65536"])),
    ) {
        let raw = match port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        if let Ok(once) = authority_of(&raw) {
            prop_assert!(is_normal_authority(&once), "{raw} -> {once}");
            prop_assert_eq!(once.to_ascii_lowercase(), once.to_string());
            prop_assert!(!once.ends_with('.') && !once.ends_with(":80"), "{raw} -> {once}");
        }
    }
}
