//! Readable serde forms for times: `SystemTime` as unix milliseconds
//! (negative before 1970), `Duration` as milliseconds. Both round-trip at
//! millisecond precision; finer parts are dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn to_unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    }
}

fn from_unix_millis<E: serde::de::Error>(ms: i64) -> Result<SystemTime, E> {
    let d = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.ok_or_else(|| E::custom(format!("time {ms} ms from 1970 is out of range")))
}

fn to_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `SystemTime` ↔ unix milliseconds.
pub(crate) mod unix_millis {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        to_unix_millis(*t).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        from_unix_millis(i64::deserialize(d)?)
    }
}

/// `Option<SystemTime>` ↔ unix milliseconds or `null`.
pub(crate) mod opt_unix_millis {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        t.map(to_unix_millis).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<i64>::deserialize(d)?
            .map(from_unix_millis)
            .transpose()
    }
}

/// `Duration` ↔ milliseconds.
pub(crate) mod millis {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        to_millis(*d).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// `Option<Duration>` ↔ milliseconds or `null`.
pub(crate) mod opt_millis {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(to_millis).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// `Vec<(String, Duration)>` ↔ `[["proxy", millis], ...]`.
pub(crate) mod acks_millis {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        acks: &[(String, Duration)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(acks.iter().map(|(p, d)| (p, to_millis(*d))))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, Duration)>, D::Error> {
        Ok(Vec::<(String, u64)>::deserialize(d)?
            .into_iter()
            .map(|(p, ms)| (p, Duration::from_millis(ms)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_millis_round_trip_both_sides_of_1970() {
        for ms in [0_i64, 1, 1_700_000_000_123, -1, -86_400_000] {
            let t: SystemTime = from_unix_millis::<serde_json::Error>(ms).expect("in range");
            assert_eq!(to_unix_millis(t), ms);
        }
    }
}
