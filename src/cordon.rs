//! Cordons: proxies that flips, shifts and rollbacks do not wait for.
//!
//! One stuck proxy must not block every release of a large fleet. A
//! cordoned proxy (by `node.id`) keeps its stream and receives every
//! version, but an operation neither waits for its ACK nor rolls back on
//! its NACK; the operation's progress names the cordoned proxies it did
//! not wait for.
//!
//! Cordons are durable: with a state directory they live in
//! `cordons.json` there, written whole to a temporary file, synced and
//! renamed over the old one before the change is in force, so a crash
//! leaves either the old set or the new one. The file is separate from
//! the state file because cordons belong to proxies, not to a service's
//! rollout state, and change on their own schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Most proxies cordoned at once.
pub const MAX_CORDONS: usize = 10_000;

/// Longest node id or reason, in bytes.
pub const MAX_CORDON_TEXT_BYTES: usize = 1024;

/// The file in the state directory.
pub const CORDONS_FILE: &str = "cordons.json";

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
    pub reason: String,
    /// Who (the admin token's name).
    pub actor: String,
    /// Since when, unix milliseconds.
    pub since_unix_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    cordons: BTreeMap<String, Cordon>,
}

/// The cordoned proxies, by node id.
#[derive(Debug, Default)]
pub struct Cordons {
    /// `None`: in memory only (`--ephemeral`, tests).
    path: Option<PathBuf>,
    /// Held while a change is written, which is rare and small; never
    /// across an `.await`.
    map: Mutex<BTreeMap<String, Cordon>>,
}

impl Cordons {
    /// Cordons kept in memory only.
    pub fn in_memory() -> Cordons {
        Cordons::default()
    }

    /// The cordons of the state directory `dir` (none if it has no file).
    pub fn open(dir: &Path) -> Result<Cordons, CordonError> {
        let path = dir.join(CORDONS_FILE);
        let name = path.display().to_string();
        let map = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| CordonError::Corrupt {
                        path: name.clone(),
                        detail: e.to_string(),
                    })?;
                if file.cordons.len() > MAX_CORDONS {
                    return Err(CordonError::TooMany);
                }
                file.cordons
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(CordonError::Io { path: name, source }),
        };
        Ok(Cordons {
            path: Some(path),
            map: Mutex::new(map),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Cordon>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cordons `node`; true if it was not cordoned. Saved before it is in
    /// force.
    pub fn cordon(&self, node: &str, reason: &str, actor: &str) -> Result<bool, CordonError> {
        check(node, "node id")?;
        check_len(reason, "reason")?;
        let mut map = self.lock();
        if !map.contains_key(node) && map.len() >= MAX_CORDONS {
            return Err(CordonError::TooMany);
        }
        let mut next = map.clone();
        let since_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
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
        self.save(&next)?;
        *map = next;
        Ok(new)
    }

    /// Lifts the cordon of `node`; true if it was cordoned.
    pub fn uncordon(&self, node: &str) -> Result<bool, CordonError> {
        check(node, "node id")?;
        let mut map = self.lock();
        if !map.contains_key(node) {
            return Ok(false);
        }
        let mut next = map.clone();
        next.remove(node);
        self.save(&next)?;
        *map = next;
        Ok(true)
    }

    /// The cordoned node ids.
    pub fn ids(&self) -> BTreeSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// Every cordon, by node id.
    pub fn all(&self) -> BTreeMap<String, Cordon> {
        self.lock().clone()
    }

    /// The cordon of `node`, if any.
    pub fn get(&self, node: &str) -> Option<Cordon> {
        self.lock().get(node).cloned()
    }

    /// How many proxies are cordoned.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `map` whole: temporary file, sync, rename, sync the
    /// directory.
    fn save(&self, map: &BTreeMap<String, Cordon>) -> Result<(), CordonError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| CordonError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File {
            cordons: map.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
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
    fn cordons_survive_a_reopen_and_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Cordons::open(dir.path()).expect("open");
        assert!(c.cordon("edge-7", "stuck", "alice").expect("saved"));
        assert!(!c.cordon("edge-7", "still stuck", "bob").expect("saved"));
        assert!(c.cordon("edge-8", "", "alice").expect("saved"));
        assert!(c.uncordon("edge-8").expect("saved"));
        assert!(!c.uncordon("edge-8").expect("no-op"));
        let again = Cordons::open(dir.path()).expect("reopen");
        assert_eq!(again.ids(), BTreeSet::from(["edge-7".to_owned()]));
        let edge7 = again.get("edge-7").expect("kept");
        assert_eq!(
            (edge7.reason.as_str(), edge7.actor.as_str()),
            ("still stuck", "bob")
        );

        assert!(matches!(
            c.cordon("", "x", "a"),
            Err(CordonError::EmptyNode)
        ));
        let long = "x".repeat(MAX_CORDON_TEXT_BYTES + 1);
        assert!(matches!(
            c.cordon("n", &long, "a"),
            Err(CordonError::TooLong { what: "reason" })
        ));
        std::fs::write(dir.path().join(CORDONS_FILE), "{not json").expect("write");
        assert!(matches!(
            Cordons::open(dir.path()),
            Err(CordonError::Corrupt { .. })
        ));
    }
}
