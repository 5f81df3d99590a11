//! Durations written as `250ms`, `5s`, `2m`, `1h` (a bare number is seconds),
//! for the YAML file and the environment.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use e.g. 250ms, 5s, 2m, 1h)"))?;
    let (secs, per_unit) = match unit.trim() {
        "ms" => (n / 1000.0, 0),
        "" | "s" => (n, 1),
        "m" => (n * 60.0, 60),
        "h" => (n * 3600.0, 3600),
        u => return Err(format!("unknown unit `{u}` in `{s}` (use ms, s, m or h)")),
    };
    let too_long = || format!("`{s}` is too long a duration");
    // Whole numbers are exact, so a dumped config reloads to the same values;
    // only fractions go through floating point.
    if let Ok(n) = num.parse::<u64>() {
        return match per_unit {
            0 => Ok(Duration::from_millis(n)),
            k => n
                .checked_mul(k)
                .map(Duration::from_secs)
                .ok_or_else(too_long),
        };
    }
    // A value past what a Duration holds is an error, not a panic at start.
    Duration::try_from_secs_f64(secs).map_err(|_| too_long())
}

pub fn format(d: &Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_exact_so_a_printed_duration_reads_back_the_same() {
        for d in [
            Duration::from_secs(9_998_999_999_999_999_999),
            Duration::from_secs(u64::MAX),
            Duration::from_millis(u64::MAX),
        ] {
            assert_eq!(parse(&format(&d)), Ok(d), "{}", format(&d));
        }
    }

    #[test]
    fn a_duration_too_long_to_hold_is_an_error_not_a_panic() {
        let e = parse("99999999999999999999h").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse("99999999999999999999").is_err());
        assert!(parse("18446744073709551615h").is_err());
    }
}
