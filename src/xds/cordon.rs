//! Cordons: proxies that flips, shifts and rollbacks do not wait for.
//!
//! One stuck proxy must not block every release of a large fleet. A
//! cordoned proxy (by `node.id`) keeps its stream and receives every
//! version, but an operation neither waits for its ACK nor rolls back on
//! its NACK; the operation's progress names the cordoned proxies it did
//! not wait for.
//!
//! Cordons are fleet-wide durable state: they live in the persisted
//! state ([`crate::state::PersistedState::cordons`]), which only the
//! leader (or the single server) changes and saves before the change is
//! in force; every replica applies the cordons of the state it serves to
//! its [`Cordons`], so whichever replica leads waits, or not, for the
//! same proxies.
//!
//! teal once kept them in `cordons.json` in the state directory, one set
//! per process. [`Cordons::open`] still reads that file; the driver merges
//! what it held into the state at its next save and then removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Most proxies cordoned at once.
pub(crate) const MAX_CORDONS: usize = 10_000;

/// Longest node id or reason, in bytes.
pub(crate) const MAX_CORDON_TEXT_BYTES: usize = 1024;

/// The file in the state directory.
pub(crate) const CORDONS_FILE: &str = "cordons.json";

/// Why a cordon could not be read, changed or saved.
#[derive(Debug, thiserror::Error)]
pub enum CordonError {
    /// The node id is empty.
    #[error("a node id is needed")]
    EmptyNode,
    /// A node id or reason over [`MAX_CORDON_TEXT_BYTES`].
    #[error("the {what} is longer than {MAX_CORDON_TEXT_BYTES} bytes")]
    TooLong {
        /// `node id` or `reason`.
        what: &'static str,
    },
    /// [`MAX_CORDONS`] proxies are cordoned already.
    #[error("{MAX_CORDONS} proxies are cordoned already (the most teal keeps); uncordon some")]
    TooMany,
    /// The file could not be read or written.
    #[error("cordons file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a cordons file.
    #[error("cordons file {path} cannot be read: {detail}")]
    Corrupt {
        /// The file.
        path: String,
        /// The parser's words.
        detail: String,
    },
}

/// One cordon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cordon {
    /// Why, as the operator said.
    pub(crate) reason: String,
    /// Who (the admin token's name).
    pub(crate) actor: String,
    /// Since when, unix milliseconds.
    pub(crate) since_unix_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    cordons: BTreeMap<String, Cordon>,
}

/// The cordons a state directory's `cordons.json` held, still to be
/// merged into the stored state.
#[derive(Debug)]
pub(crate) struct Legacy {
    /// The file, removed once its cordons are saved in the state.
    pub(crate) path: PathBuf,
    pub(crate) cordons: BTreeMap<String, Cordon>,
}

/// The cordoned proxies this replica applies, by node id: those of the
/// state it serves.
#[derive(Debug, Default)]
pub(crate) struct Cordons {
    /// Held briefly (a read, or a whole replacement); never across an
    /// `.await`.
    map: Mutex<BTreeMap<String, Cordon>>,
    /// A state directory's `cordons.json`, read at start and not yet
    /// merged into the state.
    legacy: Mutex<Option<Legacy>>,
}

impl Cordons {
    /// No cordons, until the driver applies its state's.
    pub(crate) fn in_memory() -> Cordons {
        Cordons::default()
    }

    /// No cordons yet, and the ones `cordons.json` in the state directory
    /// `dir` holds (if it has one), for [`Cordons::take_legacy`]. A file
    /// that does not decode stops teal rather than losing what it holds.
    pub(crate) fn open(dir: &Path) -> Result<Cordons, CordonError> {
        let path = dir.join(CORDONS_FILE);
        let name = path.display().to_string();
        let legacy = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| CordonError::Corrupt {
                        path: name.clone(),
                        detail: e.to_string(),
                    })?;
                if file.cordons.len() > MAX_CORDONS {
                    return Err(CordonError::TooMany);
                }
                Some(Legacy {
                    path,
                    cordons: file.cordons,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(CordonError::Io { path: name, source }),
        };
        Ok(Cordons {
            map: Mutex::default(),
            legacy: Mutex::new(legacy),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Cordon>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cordons of an old `cordons.json`, once: the driver owns them
    /// from then on.
    pub(crate) fn take_legacy(&self) -> Option<Legacy> {
        self.legacy.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Applies `cordons` (the state's); true if they changed.
    pub(crate) fn replace(&self, cordons: &BTreeMap<String, Cordon>) -> bool {
        let mut map = self.lock();
        if *map == *cordons {
            return false;
        }
        *map = cordons.clone();
        true
    }

    /// The cordoned node ids.
    pub(crate) fn ids(&self) -> BTreeSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// Every cordon, by node id.
    pub(crate) fn all(&self) -> BTreeMap<String, Cordon> {
        self.lock().clone()
    }

    /// The cordon of `node`, if any.
    pub(crate) fn get(&self, node: &str) -> Option<Cordon> {
        self.lock().get(node).cloned()
    }

    /// How many proxies are cordoned.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `cordons` with `node` cordoned (its reason and actor replaced if it
/// was already), and whether it was not cordoned before. Validated whole
/// before anything changes.
pub(crate) fn with_cordon(
    cordons: &BTreeMap<String, Cordon>,
    node: &str,
    reason: &str,
    actor: &str,
    since_unix_ms: i64,
) -> Result<(BTreeMap<String, Cordon>, bool), CordonError> {
    check(node, "node id")?;
    check_len(reason, "reason")?;
    if !cordons.contains_key(node) && cordons.len() >= MAX_CORDONS {
        return Err(CordonError::TooMany);
    }
    let mut next = cordons.clone();
    let new = next
        .insert(
            node.to_owned(),
            Cordon {
                reason: reason.to_owned(),
                actor: actor.to_owned(),
                since_unix_ms,
            },
        )
        .is_none();
    Ok((next, new))
}

/// `cordons` without `node`, if it was cordoned.
pub(crate) fn without_cordon(
    cordons: &BTreeMap<String, Cordon>,
    node: &str,
) -> Result<Option<BTreeMap<String, Cordon>>, CordonError> {
    check(node, "node id")?;
    if !cordons.contains_key(node) {
        return Ok(None);
    }
    let mut next = cordons.clone();
    next.remove(node);
    Ok(Some(next))
}

/// `into` with every cordon of `legacy` it does not have (the state's own
/// win: they are newer), up to [`MAX_CORDONS`]; how many were added.
pub(crate) fn merge_legacy(
    into: &mut BTreeMap<String, Cordon>,
    legacy: &BTreeMap<String, Cordon>,
) -> usize {
    let mut added = 0;
    for (node, c) in legacy {
        if into.len() >= MAX_CORDONS {
            break;
        }
        if !into.contains_key(node) {
            into.insert(node.clone(), c.clone());
            added += 1;
        }
    }
    added
}

/// Now, in unix milliseconds, as a cordon records it.
pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn check(node: &str, what: &'static str) -> Result<(), CordonError> {
    if node.is_empty() {
        return Err(CordonError::EmptyNode);
    }
    check_len(node, what)
}

fn check_len(text: &str, what: &'static str) -> Result<(), CordonError> {
    if text.len() > MAX_CORDON_TEXT_BYTES {
        return Err(CordonError::TooLong { what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cordon_changes_are_validated_whole_and_bounded() {
        let none = BTreeMap::new();
        let (one, new) = with_cordon(&none, "edge-7", "stuck", "alice", 1).expect("valid");
        assert!(new);
        let (again, new) = with_cordon(&one, "edge-7", "still stuck", "bob", 2).expect("valid");
        assert!(!new, "already cordoned: the reason is updated");
        let edge7 = &again["edge-7"];
        assert_eq!(
            (
                edge7.reason.as_str(),
                edge7.actor.as_str(),
                edge7.since_unix_ms
            ),
            ("still stuck", "bob", 2)
        );
        assert_eq!(without_cordon(&again, "edge-8").expect("valid"), None);
        assert!(
            without_cordon(&again, "edge-7")
                .expect("valid")
                .is_some_and(|m| m.is_empty())
        );

        assert!(matches!(
            with_cordon(&none, "", "x", "a", 0),
            Err(CordonError::EmptyNode)
        ));
        assert!(matches!(
            without_cordon(&none, ""),
            Err(CordonError::EmptyNode)
        ));
        let long = "x".repeat(MAX_CORDON_TEXT_BYTES + 1);
        assert!(matches!(
            with_cordon(&none, "n", &long, "a", 0),
            Err(CordonError::TooLong { what: "reason" })
        ));
        let full: BTreeMap<String, Cordon> = (0..MAX_CORDONS)
            .map(|i| (format!("n{i}"), edge7.clone()))
            .collect();
        assert!(matches!(
            with_cordon(&full, "one-more", "", "a", 0),
            Err(CordonError::TooMany)
        ));
        assert!(
            with_cordon(&full, "n1", "", "a", 0).is_ok(),
            "a cordoned node may be updated"
        );
    }

    #[test]
    fn an_old_cordons_file_is_read_once_and_merged_without_overriding_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            Cordons::open(dir.path())
                .expect("no file")
                .take_legacy()
                .is_none()
        );
        // The file as teal wrote it when cordons were per process.
        std::fs::write(
            dir.path().join(CORDONS_FILE),
            r#"{"cordons": {"edge-7": {"reason": "stuck", "actor": "alice", "since_unix_ms": 5},
                            "edge-8": {"reason": "old", "actor": "bob", "since_unix_ms": 6}}}"#,
        )
        .expect("write");
        let c = Cordons::open(dir.path()).expect("opens");
        assert!(c.is_empty(), "applied only once the state has them");
        let legacy = c.take_legacy().expect("read");
        assert!(c.take_legacy().is_none(), "handed over once");
        assert_eq!(legacy.path, dir.path().join(CORDONS_FILE));
        let (mut state, _) =
            with_cordon(&BTreeMap::new(), "edge-8", "newer", "carol", 9).expect("valid");
        assert_eq!(merge_legacy(&mut state, &legacy.cordons), 1);
        assert_eq!(state["edge-7"].reason, "stuck");
        assert_eq!(
            state["edge-8"].reason, "newer",
            "the state's own cordon wins"
        );
        assert!(c.replace(&state));
        assert!(!c.replace(&state));
        assert_eq!(
            c.ids(),
            BTreeSet::from(["edge-7".to_owned(), "edge-8".to_owned()])
        );

        std::fs::write(dir.path().join(CORDONS_FILE), "{not json").expect("write");
        assert!(matches!(
            Cordons::open(dir.path()),
            Err(CordonError::Corrupt { .. })
        ));
    }
}
