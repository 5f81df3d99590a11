//! The proxy's configuration file, YAML to a validated `Config` as `main`
//! loads it (environment overrides aside): any text gives a config or an
//! error, never a panic. A config that loads and validates (what a running
//! proxy holds) survives the round trip through its own dump: serialized and
//! read back, it serializes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut cfg) = Config::from_yaml(text) else {
        return;
    };
    cfg.listeners();
    if cfg.validate().is_err() {
        return;
    }
    let dumped = serde_json::to_value(&cfg).expect("a config serializes");
    let back: Config = serde_json::from_value(dumped.clone())
        .unwrap_or_else(|e| panic!("a dumped config does not load: {e}\n{dumped}"));
    let again = serde_json::to_value(&back).expect("a config serializes");
    assert_eq!(dumped, again, "the dump changes when read back");
});
