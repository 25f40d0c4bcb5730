//! Durations as people write them, for the config file and the command
//! line alike: a whole number and a unit (`250ms`, `5s`, `2m`, `1h`), or
//! several summed (`1m30s`).
//!
//! Written by hand rather than with a crate such as `humantime`: teal
//! wants a closed set of units, no fractions and no bare numbers (`30`
//! could be seconds or minutes), and the same reason in the message of
//! `teal validate` and of a bad `--timeout`.

use std::time::Duration;

/// Why a text is not a duration. Its message is the reason only; the
/// config and the CLI each say which value it was about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    #[error("empty")]
    Empty,
    /// A part does not start with a number.
    #[error("expected a number followed by ms, s, m or h")]
    NoNumber,
    /// A number has a fractional part (`1.5s`).
    #[error("fractions are not supported (write 1500ms, not 1.5s)")]
    Fraction,
    /// A number has no unit after it.
    #[error("missing unit (use ms, s, m or h)")]
    MissingUnit,
    /// A unit other than `ms`, `s`, `m`, `h`.
    #[error("unknown unit {0:?} (use ms, s, m or h)")]
    UnknownUnit(String),
    /// More milliseconds than a `u64` holds.
    #[error("too long")]
    TooLong,
}

/// Parses a duration (see the module doc). No whitespace is allowed.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::NoNumber);
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let n: u64 = num.parse().map_err(|_| DurationError::TooLong)?;
        let millis_per: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" if tail.starts_with('.') => return Err(DurationError::Fraction),
            "" => return Err(DurationError::MissingUnit),
            other => {
                return Err(DurationError::UnknownUnit(other.chars().take(16).collect()));
            }
        };
        total = n
            .checked_mul(millis_per)
            .and_then(|part| total.checked_add(part))
            .ok_or(DurationError::TooLong)?;
        rest = tail;
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
    }

    #[test]
    fn each_refusal_has_its_reason() {
        for (bad, why) in [
            ("", DurationError::Empty),
            ("s", DurationError::NoNumber),
            ("-1s", DurationError::NoNumber),
            ("1.5s", DurationError::Fraction),
            ("30", DurationError::MissingUnit),
            ("5 s", DurationError::MissingUnit),
            ("3d", DurationError::UnknownUnit("d".into())),
            ("99999999999999999999s", DurationError::TooLong),
            ("9999999999999999h", DurationError::TooLong),
        ] {
            assert_eq!(parse_duration(bad), Err(why), "{bad:?}");
        }
    }
}
