//! Path and authority normalization from any bytes, under every per-class
//! setting: it never panics, it is idempotent (`normalize(normalize(p)) ==
//! normalize(p)`), its output is in normal form (borrowed when the input
//! already was), and the output holds no sequence an app could read as
//! another path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::normalize::{
    authority_of, is_normal_authority, is_normal_path, path_of, Handling, Normalization,
};
use std::borrow::Cow;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let pick = |bit: u8| {
        if flags & (1 << bit) == 0 {
            Handling::Reject
        } else {
            Handling::Normalize
        }
    };
    let cfg = Normalization {
        escaped_slashes: pick(0),
        backslash: pick(1),
        path_parameters: pick(2),
        fragment: pick(3),
    };
    // `OPTIONS *` keeps its asterisk-form target as is; decide() treats it
    // as a path no allow rule matches and every path deny rule does.
    if text == "*" {
        assert_eq!(path_of(text, &cfg), Ok(Cow::Borrowed("*")));
        return;
    }
    if let Ok(once) = path_of(text, &cfg) {
        assert!(
            is_normal_path(&once),
            "{text:?} normalized to {once:?}, not normal"
        );
        assert_eq!(
            matches!(once, Cow::Borrowed(_)),
            is_normal_path(text),
            "{text:?}: borrowed exactly when already normal"
        );
        let twice = path_of(&once, &cfg).expect("a normal path normalizes again");
        assert_eq!(twice, once, "{text:?}: not idempotent");
        assert!(matches!(twice, Cow::Borrowed(_)));
        assert!(once.starts_with('/'));
        for bad in [
            "//", "/./", "/../", "\\", "%2F", "%2f", "%5C", "%5c", "%00", ";", "#",
        ] {
            assert!(
                !once.contains(bad),
                "{text:?} normalized to {once:?}: has {bad:?}"
            );
        }
        assert!(!once.ends_with("/.") && !once.ends_with("/.."), "{once:?}");
    }
    if let Ok(once) = authority_of(text) {
        assert!(
            is_normal_authority(&once),
            "{text:?} → {once:?}, not normal"
        );
        let twice = authority_of(&once).expect("a normal authority normalizes again");
        assert_eq!(twice, once, "{text:?}: authority not idempotent");
        assert!(!once.ends_with('.') && !once.ends_with(":80"), "{once:?}");
        assert!(!once.bytes().any(|b| b.is_ascii_uppercase()), "{once:?}");
    }
});
