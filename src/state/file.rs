//! [`FileStore`]: the state as one JSON file in a directory teal owns.
//!
//! Layout of the directory:
//! - `lock`: held with an exclusive lock (`flock`) while a teal process
//!   uses the directory; it contains that process's id. The OS drops
//!   the lock when the process dies, even by `kill -9`.
//! - `state.json`: `{"format": 1, "revision": N, "state": {...}}`.
//! - `state.json.tmp`: the next `state.json` while it is being written.
//!   A leftover one (from a crash mid-save) is never read; the next save
//!   overwrites it.
//!
//! A save writes the temporary file, `fsync`s it, renames it over
//! `state.json` and `fsync`s the directory: after a crash the file holds
//! either the old state or the new one, whole, and once `save` returned
//! `Ok` the new one.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

use super::{PersistedState, Revision, StateError, StateStore, Stored};

/// The `format` written in `state.json`.
const FORMAT: u32 = 1;

/// A point of a save where a crash leaves something different on disk;
/// see [`FileStore::observe_saves`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStep {
    /// The next state is whole in `state.json.tmp` and `fsync`ed;
    /// `state.json` still holds the previous one.
    TempWritten,
    /// `state.json.tmp` has been renamed over `state.json`, which now holds
    /// the new state; the directory is not `fsync`ed yet.
    Renamed,
}

/// Called at each [`SaveStep`] with the revision being saved.
type SaveObserver = Arc<dyn Fn(SaveStep, Revision) + Send + Sync>;

/// The observer, if any, behind a `Debug` that does not need one.
#[derive(Default)]
struct Observer(OnceLock<SaveObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}

/// State kept in a local directory; one process at a time.
#[derive(Clone, Debug)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    state_path: PathBuf,
    tmp_path: PathBuf,
    /// Held for the store's lifetime: dropping it releases the lock.
    _lock: File,
    /// The revision in `state.json`, once known. Only this process writes
    /// the file (it holds the lock), so this stays true; `None` forces a
    /// re-read, e.g. after a save failed halfway.
    revision: Mutex<Option<Revision>>,
    observer: Observer,
}

#[derive(Serialize)]
struct OnDiskRef<'a> {
    format: u32,
    revision: Revision,
    state: &'a PersistedState,
}

/// Just the `format` of `state.json`, read before the rest.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// The rest, once the format is known to be [`FORMAT`].
#[derive(Deserialize)]
struct OnDisk {
    revision: Revision,
    state: PersistedState,
}

impl FileStore {
    /// Opens (creating it if needed) the state directory `dir` and locks
    /// it; fails with [`StateError::Locked`] if another process, or
    /// another `FileStore` in this one, holds it.
    pub fn open(dir: &Path) -> Result<FileStore, StateError> {
        fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        let lock_path = dir.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StateError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StateError::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(StateError::io(&lock_path, e)),
        }
        // Diagnostics only: which process holds the directory.
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(|e| StateError::io(&lock_path, e))?;
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                state_path: dir.join("state.json"),
                tmp_path: dir.join("state.json.tmp"),
                _lock: lock,
                revision: Mutex::new(None),
                observer: Observer::default(),
            }),
        })
    }

    /// Calls `observer` at each step of every save from now on, on the
    /// thread doing the save (it blocks the save while it runs). For
    /// crash tests that must kill a process at a known point of a save,
    /// between writing the temporary file and renaming it; only the first
    /// observer set is kept.
    pub fn observe_saves(&self, observer: impl Fn(SaveStep, Revision) + Send + Sync + 'static) {
        let _ = self.inner.observer.0.set(Arc::new(observer));
    }

    /// The path of the temporary file a save writes before renaming it
    /// over [`FileStore::state_path`].
    pub fn temp_path(&self) -> &Path {
        &self.inner.tmp_path
    }

    /// The path of `state.json`.
    pub fn state_path(&self) -> &Path {
        &self.inner.state_path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StateError::io(&self.inner.dir, io::Error::other(e)))?
    }
}

impl Inner {
    fn read(&self) -> Result<Option<Stored>, StateError> {
        let bytes = match fs::read(&self.state_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&self.state_path, e)),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: self.state_path.clone(),
            reason,
        };
        // The format first, on its own: a newer teal may have changed
        // everything else, and then "corrupt" would be the wrong diagnosis.
        let format = serde_json::from_slice::<FormatOnly>(&bytes)
            .map_err(|e| corrupt(e.to_string()))?
            .format;
        if format > FORMAT {
            return Err(StateError::NewerFormat {
                path: self.state_path.clone(),
                found: format,
                supported: FORMAT,
            });
        }
        if format != FORMAT {
            return Err(corrupt(format!("unknown format {format}")));
        }
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if disk.revision == Revision(0) {
            return Err(corrupt("revision 0 is never stored".to_owned()));
        }
        Ok(Some(Stored {
            state: disk.state,
            revision: disk.revision,
        }))
    }

    fn write_durably(&self, bytes: &[u8], revision: Revision) -> Result<(), StateError> {
        let observe = |step| {
            if let Some(f) = self.observer.0.get() {
                f(step, revision);
            }
        };
        write_durably(
            &mut RealFs,
            &self.dir,
            &self.tmp_path,
            &self.state_path,
            bytes,
            observe,
        )
    }
}

/// The file-system steps of a save. Production uses [`RealFs`]; a test
/// records the calls to hold their order, which no crash test can see
/// (killing the process loses nothing the kernel already has: only a
/// power cut drops a rename whose directory was not `fsync`ed). Generic,
/// not `dyn`: each save compiles to the plain calls.
trait SaveFs {
    type File;
    /// Creates (truncating) `path` and writes `bytes` to it.
    fn create_and_write(&mut self, path: &Path, bytes: &[u8]) -> io::Result<Self::File>;
    /// `fsync`s `file`, written at `path`.
    fn sync_file(&mut self, file: &Self::File, path: &Path) -> io::Result<()>;
    /// Renames `from` over `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// `fsync`s the directory `dir`.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
struct RealFs;

impl SaveFs for RealFs {
    type File = File;

    fn create_and_write(&mut self, path: &Path, bytes: &[u8]) -> io::Result<File> {
        let mut f = File::create(path)?;
        f.write_all(bytes)?;
        Ok(f)
    }

    fn sync_file(&mut self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }
}

/// Writes `bytes` to `tmp`, `fsync`s it, renames it over `state_path` and
/// `fsync`s `dir`, in that order: the file's contents are on disk before
/// the name points at them, and the new name is on disk before the save
/// returns `Ok`.
fn write_durably<F: SaveFs>(
    fs: &mut F,
    dir: &Path,
    tmp: &Path,
    state_path: &Path,
    bytes: &[u8],
    observe: impl Fn(SaveStep),
) -> Result<(), StateError> {
    let f = fs
        .create_and_write(tmp, bytes)
        .map_err(|e| StateError::io(tmp, e))?;
    fs.sync_file(&f, tmp).map_err(|e| StateError::io(tmp, e))?;
    drop(f);
    observe(SaveStep::TempWritten);
    fs.rename(tmp, state_path)
        .map_err(|e| StateError::io(state_path, e))?;
    observe(SaveStep::Renamed);
    // Makes the rename itself durable.
    fs.sync_dir(dir).map_err(|e| StateError::io(dir, e))
}

#[tonic::async_trait]
impl StateStore for FileStore {
    async fn load(&self) -> Result<Option<Stored>, StateError> {
        self.blocking(|inner| {
            let mut cached = inner
                .revision
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let stored = inner.read()?;
            *cached = Some(stored.as_ref().map_or(Revision(0), |s| s.revision));
            Ok(stored)
        })
        .await
    }

    async fn save(
        &self,
        state: &PersistedState,
        expected: Revision,
    ) -> Result<Revision, StateError> {
        let state = state.clone();
        self.blocking(move |inner| {
            let mut cached = inner
                .revision
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let current = match *cached {
                Some(r) => r,
                None => inner.read()?.map_or(Revision(0), |s| s.revision),
            };
            *cached = Some(current);
            if current != expected {
                return Err(StateError::Conflict {
                    expected,
                    found: current,
                });
            }
            let next = current.next()?;
            let bytes = serde_json::to_vec_pretty(&OnDiskRef {
                format: FORMAT,
                revision: next,
                state: &state,
            })
            .map_err(|e| StateError::io(&inner.state_path, io::Error::other(e)))?;
            // Unknown until the write is done: it may land even if a
            // later step (the directory fsync) fails.
            *cached = None;
            inner.write_durably(&bytes, next)?;
            *cached = Some(next);
            Ok(next)
        })
        .await
    }

    fn watch(&self) -> Option<tokio::sync::watch::Receiver<Option<Stored>>> {
        None
    }

    fn describe(&self) -> String {
        format!("file {}", self.inner.state_path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a save, as [`Recorder`] saw it.
    #[derive(Debug, PartialEq, Eq)]
    enum Op {
        Write(PathBuf),
        SyncFile(PathBuf),
        Rename(PathBuf, PathBuf),
        SyncDir(PathBuf),
    }

    /// Records the steps and carries them out on the real file system.
    #[derive(Default)]
    struct Recorder(Vec<Op>);

    impl SaveFs for Recorder {
        type File = File;

        fn create_and_write(&mut self, path: &Path, bytes: &[u8]) -> io::Result<File> {
            self.0.push(Op::Write(path.to_owned()));
            RealFs.create_and_write(path, bytes)
        }

        fn sync_file(&mut self, file: &File, path: &Path) -> io::Result<()> {
            self.0.push(Op::SyncFile(path.to_owned()));
            RealFs.sync_file(file, path)
        }

        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            self.0.push(Op::Rename(from.to_owned(), to.to_owned()));
            RealFs.rename(from, to)
        }

        fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
            self.0.push(Op::SyncDir(dir.to_owned()));
            RealFs.sync_dir(dir)
        }
    }

    #[test]
    fn a_save_syncs_the_file_before_the_rename_and_the_directory_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tmp, state) = (
            dir.path().join("state.json.tmp"),
            dir.path().join("state.json"),
        );
        let mut fs = Recorder::default();
        write_durably(&mut fs, dir.path(), &tmp, &state, b"{}", |_| {}).expect("saved");
        assert_eq!(
            fs.0,
            [
                Op::Write(tmp.clone()),
                Op::SyncFile(tmp.clone()),
                Op::Rename(tmp.clone(), state.clone()),
                Op::SyncDir(dir.path().to_owned()),
            ]
        );
        assert_eq!(std::fs::read(&state).expect("renamed"), b"{}");
        assert!(!tmp.exists());
    }

    #[tokio::test]
    async fn a_newer_format_is_named_not_called_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStore::open(dir.path()).expect("opens");
        // A newer teal may have changed more than the number.
        std::fs::write(
            store.state_path(),
            br#"{"format": 7, "revision": "r3", "fleets": []}"#,
        )
        .expect("write");
        let err = store.load().await.expect_err("refused");
        assert!(
            matches!(
                err,
                StateError::NewerFormat {
                    found: 7,
                    supported: FORMAT,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("written by a newer teal (state format 7; this teal reads format 1)"),
            "{err}"
        );
        let err = store
            .save(&PersistedState::default(), Revision(0))
            .await
            .expect_err("nor overwritten");
        assert!(matches!(err, StateError::NewerFormat { .. }), "{err}");
    }
}
