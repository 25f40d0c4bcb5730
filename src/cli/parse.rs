//! Parsing of the admin commands' arguments: durations, weights, steps.
//! Each parser returns a message clap prints as is, so a bad value is
//! refused before anything is sent to the server.

use std::time::Duration;

/// Parses a duration with the config's parser
/// ([`crate::config::parse_duration`]), so a flag and a config file take
/// the same forms and are refused for the same reasons. A bare number is
/// refused: `30` could mean seconds or minutes.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s.trim())
        .map_err(|why| format!("{s:?} is not a duration: {why}; write e.g. 500ms, 30s, 2m, 1h"))
}

/// A duration from `min` to `max` seconds, written as every duration in
/// teal is (`10s`, `1m30s`, `500ms`: [`crate::config::parse_duration`]),
/// or as a bare number of seconds, which the flags of `teal serve` took
/// before and still take (deprecated: scripts that pass `5` keep
/// working). Checked here so that no value can reach
/// `Duration::from_secs_f64`'s panics (negative, NaN, too large) or a
/// zero period.
pub(crate) fn seconds_in(s: &str, min: f64, max: f64) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(v) if (min..=max).contains(&v) => Duration::try_from_secs_f64(v).ok(),
        Ok(_) => None,
        Err(_) => crate::config::parse_duration(s).ok(),
    };
    match d {
        Some(d) if (min..=max).contains(&d.as_secs_f64()) => Ok(d),
        _ => Err(format!(
            "{s:?} is not a duration from {min} s to {max} s (write it like 10s, 1m30s or 500ms)"
        )),
    }
}

/// The longest `--timeout`: an hour for every proxy to ACK is already far
/// past any healthy fleet.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest `--interval` between shift steps: a day.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The longest `--after` of `teal retire`: 30 days.
pub(crate) const MAX_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration from `min` to `max` (both included).
fn duration_in(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < min || d > max {
        return Err(format!(
            "{s:?} is out of range: from {} to {}",
            human(min),
            human(max)
        ));
    }
    Ok(d)
}

/// `--timeout`: 1s to [`MAX_TIMEOUT`].
pub(crate) fn timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::from_secs(1), MAX_TIMEOUT)
}

/// `--interval`: 0s to [`MAX_INTERVAL`].
pub(crate) fn interval(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::ZERO, MAX_INTERVAL)
}

/// `--ttl` of `teal register`: 1s to a day (the server's
/// `--max-register-ttl` may allow less).
pub(crate) fn ttl(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::from_secs(1), MAX_INTERVAL)
}

/// `--after`: 0s to [`MAX_AFTER`].
pub(crate) fn after(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::ZERO, MAX_AFTER)
}

/// `--drain-timeout` of `teal retire`: 0s (do not wait) to a day.
pub(crate) fn drain_timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::ZERO, MAX_INTERVAL)
}

/// `--timeout` of `teal wait`: 1s to a day.
pub(crate) fn wait(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::from_secs(1), MAX_INTERVAL)
}

/// A percentage, 0 to 100.
fn percent(s: &str, what: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(v) if v <= 100 => Ok(v),
        _ => Err(format!("{what} {s:?} is not a weight from 0 to 100")),
    }
}

/// Parses `FLEET=WEIGHT` (weight 0 to 100).
pub(crate) fn weight(s: &str) -> Result<(String, u32), String> {
    let (fleet, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not FLEET=WEIGHT (e.g. green=10)"))?;
    let fleet = fleet.trim();
    if fleet.is_empty() {
        return Err(format!("{s:?} has no fleet name; write e.g. green=10"));
    }
    Ok((
        fleet.to_owned(),
        percent(w, &format!("weight of {fleet}:"))?,
    ))
}

/// Parses `10,50,100`: the target fleet's weight at each step, rising.
pub(crate) fn steps(s: &str) -> Result<Vec<u32>, String> {
    let steps = s
        .split(',')
        .map(|p| percent(p, "step"))
        .collect::<Result<Vec<u32>, String>>()?;
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("steps {s:?} must rise (e.g. 10,50,100)"));
    }
    Ok(steps)
}

/// Formats a duration for people: `340ms`, `12s`, `5m 3s`, `2h 5m`, `3d 4h`.
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d_, h, m) {
        (0, 0, 0) if s < 10 => format!("{:.1}s", d.as_secs_f64()),
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d_}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        for (input, why) in [
            ("30", "missing unit"),
            ("", "empty"),
            ("5x", "unknown unit"),
            ("-3s", "expected a number"),
            ("s", "expected a number"),
            (
                "1.5s",
                "fractions are not supported (write 1500ms, not 1.5s)",
            ),
        ] {
            let e = duration(input).expect_err(input);
            assert!(e.contains(why), "{input:?}: {e}");
            assert!(e.contains("30s"), "{e}");
        }
    }

    #[test]
    fn flag_durations_have_ranges() {
        assert_eq!(timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(timeout("1h"), Ok(MAX_TIMEOUT));
        for bad in ["0s", "500ms", "61m", "99999999999h"] {
            let e = timeout(bad).expect_err(bad);
            assert!(
                e.contains("1.0s") || e.contains("not a duration"),
                "{bad}: {e}"
            );
        }
        assert!(timeout("2h").expect_err("over").contains("to 1h 0m"));
        assert_eq!(interval("0s"), Ok(Duration::ZERO));
        assert!(interval("25h").is_err());
        assert_eq!(after("720h"), Ok(MAX_AFTER));
        assert!(after("721h").expect_err("over").contains("30d 0h"));
        assert_eq!(drain_timeout("0s"), Ok(Duration::ZERO));
        assert_eq!(drain_timeout("24h"), Ok(MAX_INTERVAL));
        assert!(drain_timeout("25h").is_err());
        assert!(wait("0s").is_err(), "a wait that cannot succeed");
        assert_eq!(wait("10m"), Ok(Duration::from_secs(600)));
        assert!(wait("25h").is_err());
    }

    #[test]
    fn weights_and_steps() {
        assert_eq!(weight("green=10"), Ok(("green".into(), 10)));
        assert!(weight("green").is_err());
        assert!(weight("=10").is_err());
        assert!(
            weight("green=101")
                .expect_err("over 100")
                .contains("0 to 100")
        );
        assert!(weight("green=x").is_err());
        assert_eq!(steps("10,50,100"), Ok(vec![10, 50, 100]));
        assert!(steps("50,10").expect_err("falling").contains("must rise"));
        assert!(steps("10,,100").is_err());
        assert!(steps("10,200").is_err());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(340)), "340ms");
        assert_eq!(human(Duration::from_millis(2_500)), "2.5s");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_secs(303)), "5m 3s");
        assert_eq!(human(Duration::from_secs(7_500)), "2h 5m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d 4h");
    }
}
