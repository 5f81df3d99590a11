//! The one duration grammar of every Palisade binary and file: humantime
//! (`500ms`, `30s`, `1h 30m`, `1h30m`, `7d`), plus a bare number of seconds
//! and a decimal with one unit (`1.5s`, `0.5h`), which earlier releases took.

use std::fmt;
use std::time::Duration;

/// Parse a duration written by a person: a flag, a YAML value, a variable.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let too_long = || format!("`{s}` is too long a duration");
    if unit.is_empty() {
        if let Ok(secs) = num.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
    }
    if num.contains('.') {
        let n: f64 = num.parse().map_err(|_| not_a_duration(s, "bad number"))?;
        let per_unit = match unit {
            "" => Duration::from_secs(1),
            u => humantime::parse_duration(&format!("1{u}"))
                .map_err(|e| not_a_duration(s, &e.to_string()))?,
        };
        // Past what a Duration holds is an error, not a panic at start.
        return Duration::try_from_secs_f64(per_unit.as_secs_f64() * n).map_err(|_| too_long());
    }
    humantime::parse_duration(s).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        e => not_a_duration(s, &e.to_string()),
    })
}

fn not_a_duration(s: &str, why: &str) -> String {
    format!("`{s}` is not a duration ({why}); write e.g. 250ms, 5s, 1h 30m or 7d")
}

/// Write `d` so that [`parse`] reads back exactly the same value: whole
/// seconds as `30s`, whole milliseconds as `250ms`.
pub fn format(d: &Duration) -> String {
    Display(*d).to_string()
}

/// [`format`] without the allocation, for `Display` contexts.
pub struct Display(pub Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        match nanos {
            0 => write!(f, "{secs}s"),
            n if n % 1_000_000 == 0 && secs < u64::MAX / 1000 => {
                write!(f, "{}ms", self.0.as_millis())
            }
            n => write!(f, "{secs}s {n}ns"),
        }
    }
}

/// `#[serde(with = "palisade_identity::duration")]`: written by [`format`],
/// read by [`parse`]; a YAML number is seconds.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Display(*d))
}

pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 250ms, 5s, 1h 30m or 7d")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("`{v}` is a negative duration")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v)
                .map_err(|_| E::custom(format!("`{v}` is not a duration in seconds")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;

    #[test]
    fn humantime_forms_bare_seconds_and_decimals_all_parse() {
        let cases = [
            ("90", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(10 * MIN)),
            ("1h30m", Duration::from_secs(HOUR + 30 * MIN)),
            ("1h 30m", Duration::from_secs(HOUR + 30 * MIN)),
            ("7d", Duration::from_secs(7 * 24 * HOUR)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.5h", Duration::from_secs(30 * MIN)),
            ("0.5", Duration::from_millis(500)),
            (" 2m ", Duration::from_secs(2 * MIN)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn unknown_units_dangling_numbers_and_nonsense_are_refused() {
        for bad in [
            "",
            "10x",
            "1h30",
            "5 parsecs",
            "1.2.3s",
            "-5s",
            "1.5parsecs",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_duration_too_long_to_hold_is_an_error_not_a_panic() {
        for bad in [
            "99999999999999999999h",
            "99999999999999999999",
            "18446744073709551615h",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(
                e.contains("too long") || e.contains("not a duration"),
                "{bad}: {e}"
            );
        }
        assert!(parse("99999999999999999999.5h")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn a_printed_duration_reads_back_the_same() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(3600),
            Duration::from_nanos(1_500_000_001),
            Duration::from_secs(9_998_999_999_999_999_999),
            Duration::from_secs(u64::MAX),
            Duration::from_millis(u64::MAX),
            Duration::new(u64::MAX, 999_999_999),
        ] {
            assert_eq!(parse(&format(&d)), Ok(d), "{}", format(&d));
        }
    }
}
