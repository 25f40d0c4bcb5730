//! The fleet-wide version a commit publishes: a sequence number and a
//! content digest, written `{seq}-{digest}`.
//!
//! The sequence number comes from the state store and only grows, so a
//! later commit always has a larger one; the digest names the content, so
//! a restart serving the same state serves the very same version. The
//! controller builds a [`Version`] from its parts and never reads one back
//! out of a string it made; strings are parsed only where they come from
//! outside (the state file, a proxy's NACK).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest digest a version may carry. teal's digests are 12 hex
/// digits; the bound keeps a hostile state file or NACK from making teal
/// hold a long one.
pub(crate) const MAX_DIGEST_BYTES: usize = 64;

/// A fleet-wide version. Ordered by sequence number first.
///
/// Serialized as its string form, `{seq}-{digest}`, so state files written
/// before this type existed read the same.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The sequence number: larger for every new commit.
    pub(crate) seq: u64,
    /// The digest of the content served at this version.
    pub(crate) digest: String,
}

/// Why a string is not a [`Version`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a version (`SEQ-DIGEST`: a number, a dash, up to {MAX_DIGEST_BYTES} \
     letters and digits)"
)]
pub struct VersionError {
    /// What was given (cut to a few dozen characters).
    pub(crate) text: String,
}

impl Version {
    /// The version numbered `seq` of content with this digest.
    pub fn new(seq: u64, digest: impl Into<String>) -> Version {
        Version {
            seq,
            digest: digest.into(),
        }
    }
}

impl Version {
    /// The version in a `version_info` teal sent, as a proxy echoes it
    /// (in a NACK, say): a SotW cluster list that keeps clusters for
    /// make-before-break carries the snapshot's version with a `+keep.`
    /// suffix (see `xds::sotw`), which is not part of the version. `None`
    /// for anything else, such as a version from another control plane.
    pub(crate) fn of_sent(version_info: &str) -> Option<Version> {
        let version = version_info
            .split_once('+')
            .map_or(version_info, |(v, _)| v);
        version.parse().ok()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.seq, self.digest)
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Version, VersionError> {
        let bad = || VersionError {
            text: s.chars().take(40).collect(),
        };
        let (seq, digest) = s.split_once('-').ok_or_else(bad)?;
        // `u64::from_str` accepts a leading `+`; a version never has one.
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let seq = seq.parse().map_err(|_| bad())?;
        if digest.is_empty()
            || digest.len() > MAX_DIGEST_BYTES
            || !digest.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(bad());
        }
        Ok(Version::new(seq, digest))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional version stored as a string that is empty when
/// there is none (as state files have always written it).
pub(crate) mod empty_is_none {
    use super::Version;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<Version>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Version>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_parses_as_seq_dash_digest() {
        let v = Version::new(12, "ab34cd");
        assert_eq!(v.to_string(), "12-ab34cd");
        assert_eq!("12-ab34cd".parse(), Ok(v));
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        for bad in [
            "",
            "12",
            "-ab",
            "12-",
            "+1-ab",
            "x-ab",
            "1-a b",
            "1-a-b",
            "99999999999999999999-ab",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        let long = format!("1-{}", "a".repeat(MAX_DIGEST_BYTES + 1));
        assert!(long.parse::<Version>().is_err());
    }

    #[test]
    fn a_sent_version_is_read_without_its_keep_suffix() {
        assert_eq!(Version::of_sent("12-ab34"), Some(Version::new(12, "ab34")));
        assert_eq!(
            Version::of_sent("7-ab+keep.0011"),
            Some(Version::new(7, "ab"))
        );
        assert_eq!(Version::of_sent("ab"), None);
    }

    #[test]
    fn orders_by_sequence_number() {
        assert!(Version::new(9, "ff") < Version::new(10, "00"));
    }

    #[test]
    fn serializes_as_the_same_string() {
        let v = Version::new(3, "abc");
        assert_eq!(serde_json::to_string(&v).expect("serializes"), "\"3-abc\"");
        assert_eq!(
            serde_json::from_str::<Version>("\"3-abc\"").expect("parses"),
            v
        );
        assert!(serde_json::from_str::<Version>("\"3\"").is_err());
    }
}
