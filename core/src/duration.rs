//! Go's `time.Duration` text form (`"72h"`, `"8760h0m0s"`, `"1h30m"`), both parsed and printed
//! exactly as Go does. Consul uses it wherever it takes a duration as text: the CA
//! configuration, check TTLs, the `?wait=` query parameter and the agent's configuration files.

use std::time::Duration;

/// Parses a Go duration string: a sequence of decimal numbers with optional fraction and a
/// unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), optionally signed. Negative durations are
/// rejected: no duration Consul takes as text can be negative.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let err = || format!("time: invalid duration {input:?}");
    let mut s = input;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        if s == "-0" {
            return Ok(Duration::ZERO);
        }
        return Err(format!("duration must not be negative: {input:?}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (int_part, rest) = s.split_at(int_end);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                r.split_at(end)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err());
        }
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_end);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {input:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {input:?}")),
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err())?
        };
        let mut part = whole.checked_mul(nanos_per).ok_or_else(err)?;
        if !frac_part.is_empty() {
            // Digits past the 20th are worth less than a nanosecond even in hours, so they
            // are dropped (as Go stops reading them) before they can overflow the product.
            let digits = frac_part.len().min(20) as u32;
            let frac: u128 = frac_part[..digits as usize].parse().map_err(|_| err())?;
            part = part
                .checked_add(frac * nanos_per / 10u128.pow(digits))
                .ok_or_else(err)?;
        }
        total = total.checked_add(part).ok_or_else(err)?;
        s = rest;
    }
    if total > i64::MAX as u128 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats like Go's `Duration.String()`: `72h0m0s`, `1h0m0s`, `1.5s`, `100ms`, `0s`.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1u128)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", frac(nanos, div));
    }
    let secs_total = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let h = secs_total / 3600;
    let m = (secs_total % 3600) / 60;
    let s = secs_total % 60;
    let secs = frac(s * 1_000_000_000 + sub, 1_000_000_000);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Reads a duration field as Consul's configuration does: Go text (`"72h"`), or a bare number
/// of nanoseconds (a Go `time.Duration`). For `#[serde(deserialize_with)]`.
pub(crate) fn deserialize_go_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    struct GoDuration;

    impl serde::de::Visitor<'_> for GoDuration {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_go_duration(v).map_err(E::custom)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_nanos(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_nanos)
                .map_err(|_| E::custom(format!("expected a non-negative duration, got {v}")))
        }
    }

    deserializer.deserialize_any(GoDuration)
}

fn frac(value: u128, div: u128) -> String {
    let whole = value / div;
    let rem = value % div;
    if rem == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    #[test]
    fn parses_go_forms() {
        for (s, secs) in [
            ("72h", 72 * H),
            ("8760h0m0s", 8760 * H),
            ("1h30m", 5400),
            ("0", 0),
            ("90s", 90),
            ("2160h", 2160 * H),
        ] {
            assert_eq!(
                parse_go_duration(s).unwrap(),
                Duration::from_secs(secs),
                "{s}"
            );
        }
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_go_duration("100ms").unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(parse_go_duration(".5h").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_go_duration("3µs").unwrap(), Duration::from_micros(3));
    }

    /// A fraction of 30+ digits once overflowed the product (a panic in debug builds, a
    /// wrapped, wrong duration in release).
    #[test]
    fn long_fractions_are_truncated_not_overflowed() {
        let long = format!("1.{}h", "9".repeat(40));
        assert_eq!(
            parse_go_duration(&long).unwrap(),
            Duration::from_nanos(2 * 3_600_000_000_000 - 1)
        );
        assert_eq!(
            parse_go_duration(&format!("0.{}1s", "0".repeat(60))).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            parse_go_duration("1.5000000000000000000000000000001h").unwrap(),
            Duration::from_secs(5400)
        );
        let huge = format!("{}h", "9".repeat(45));
        assert!(parse_go_duration(&huge).is_err());
    }

    #[test]
    fn rejects_bad_forms() {
        for s in [
            "",
            "72",
            "h",
            "1x",
            "-1h",
            "1.h.",
            "abc",
            "1h 2m",
            "99999999999999999999h",
        ] {
            assert!(parse_go_duration(s).is_err(), "{s:?} should fail");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(72 * H)), "72h0m0s");
        assert_eq!(format_go_duration(Duration::from_secs(H)), "1h0m0s");
        assert_eq!(
            format_go_duration(Duration::from_secs(8760 * H)),
            "8760h0m0s"
        );
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_nanos(1500)), "1.5µs");
    }
}
