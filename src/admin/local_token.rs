//! The local token: what lets the CLI on the same machine make changes
//! when the server was given no token at all.
//!
//! A `teal serve` with a state directory and no token (no tokens file, no
//! `TEAL_ADMIN_TOKEN`) would otherwise refuse every change. Instead it
//! keeps a random token in `<state-dir>/admin-token`, readable by its
//! owner only (mode 0600), accepted as the actor `local`. Whoever can read
//! that file already owns teal's state directory, so the token gives them
//! nothing they did not have. The CLI reads the same file when it is given
//! no token (see `cli::client`), so on the machine running teal, from the
//! directory teal runs in (or with the same `TEAL_STATE_DIR`), changes work
//! without any set-up. The token is kept across restarts, and a file that
//! others could read is replaced, never used.
//!
//! That reasoning holds only if the directory and the file belong to the
//! user teal runs as: another user who planted them (with a token of
//! their choosing) would hold the token too. So, as ssh does with its
//! keys, a state directory or token file owned by anyone else (root
//! aside) is refused, by `teal serve` and by the CLI alike.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the local token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalTokenError {
    /// The directory or the file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The directory or the file belongs to another user, who could know
    /// (or have chosen) the token.
    #[error(
        "{path} is owned by uid {owner}, not by uid {me} that teal runs as (nor root): \
         refused, as its owner could know the token; remove it, or chown it to uid {me}"
    )]
    NotOwned {
        /// The file or directory.
        path: String,
        /// Its owner.
        owner: u32,
        /// The effective user id of this process.
        me: u32,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LocalTokenError + '_ {
    move |source| LocalTokenError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Refuses `meta` (of `path`) unless it belongs to the user this process
/// runs as, or to root (who can read everything anyway).
pub(crate) fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), LocalTokenError> {
    let me = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    if owner == me || owner == 0 {
        return Ok(());
    }
    Err(LocalTokenError::NotOwned {
        path: path.display().to_string(),
        owner,
        me,
    })
}

/// Refuses a state directory another user owns (see [`check_owner`]).
pub(crate) fn check_dir(state_dir: &Path) -> Result<(), LocalTokenError> {
    let meta = fs::metadata(state_dir).map_err(io_error(state_dir))?;
    check_owner(state_dir, &meta)
}

/// The file's name inside the state directory.
pub(crate) const FILE_NAME: &str = "admin-token";

/// The actor recorded in history for changes made with the local token.
pub(crate) const ACTOR: &str = "local";

/// Bytes of randomness in a token (hex-encoded: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// Where the local token of the state directory `state_dir` is kept.
pub(crate) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The local token of `state_dir` as the CLI reads it: `None` when there
/// is none (or it is open to others or malformed: the server replaces such
/// a file, never uses it); refused when the directory or the file belongs
/// to another user.
pub(crate) fn read(state_dir: &Path) -> Result<Option<String>, LocalTokenError> {
    match fs::metadata(state_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(state_dir)(e)),
        Ok(meta) => check_owner(state_dir, &meta)?,
    }
    existing(&path(state_dir))
}

/// The local token of `state_dir`: the one already there if it is private
/// to its owner and well formed, else a new one, written (0600) before it
/// is returned. A directory or file owned by another user is refused.
pub(crate) fn ensure(state_dir: &Path) -> Result<String, LocalTokenError> {
    check_dir(state_dir)?;
    let file = path(state_dir);
    if let Some(token) = existing(&file)? {
        return Ok(token);
    }
    write_new(state_dir, &file).map_err(io_error(&file))
}

fn write_new(state_dir: &Path, file: &Path) -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Written aside and renamed, so a reader never sees half a token; the
    // mode is set at creation, so the token is never readable by others.
    let tmp = state_dir.join(format!("{FILE_NAME}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, file)?;
    Ok(token)
}

/// The token in `file`, if there is a usable one: owned by this user,
/// private to it, and the hex of [`TOKEN_BYTES`] bytes.
fn existing(file: &Path) -> Result<Option<String>, LocalTokenError> {
    let meta = match fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(file)(e)),
    };
    check_owner(file, &meta)?;
    if meta.permissions().mode() & 0o077 != 0 || !meta.is_file() {
        return Ok(None);
    }
    // A well-formed token is 65 bytes; a larger file is not one, and is
    // not read whole.
    if meta.len() > 1024 {
        return Ok(None);
    }
    let text = fs::read_to_string(file).map_err(io_error(file))?;
    let token = text.trim();
    let well_formed =
        token.len() == TOKEN_BYTES * 2 && token.bytes().all(|b| b.is_ascii_hexdigit());
    Ok(well_formed.then(|| token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_private_kept_and_replaced_when_others_can_read_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = ensure(dir.path()).expect("written");
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(path(dir.path()))
            .expect("there")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure(dir.path()).expect("read"), first, "kept");

        fs::set_permissions(path(dir.path()), fs::Permissions::from_mode(0o644)).expect("chmod");
        let second = ensure(dir.path()).expect("replaced");
        assert_ne!(second, first, "a token others could read is not used");
        let mode = fs::metadata(path(dir.path()))
            .expect("there")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        fs::write(path(dir.path()), "short\n").expect("write");
        fs::set_permissions(path(dir.path()), fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_ne!(ensure(dir.path()).expect("replaced"), "short");
    }

    /// `nobody`, who must not be able to plant a token root's teal uses.
    const NOBODY: u32 = 65534;

    #[test]
    fn a_directory_or_token_owned_by_another_user_is_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            // Only root can give a file away; as anyone else, nobody
            // else's files cannot be made here.
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let planted = ensure(dir.path()).expect("written");
        std::os::unix::fs::chown(path(dir.path()), Some(NOBODY), None).expect("chown file");
        let e = ensure(dir.path()).expect_err("a token another user owns");
        assert!(
            matches!(e, LocalTokenError::NotOwned { owner: NOBODY, .. }),
            "{e}"
        );
        let e = read(dir.path()).expect_err("the CLI refuses it too");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");

        std::os::unix::fs::chown(path(dir.path()), Some(0), None).expect("chown back");
        assert_eq!(read(dir.path()).expect("own").as_deref(), Some(&*planted));
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), None).expect("chown dir");
        assert!(matches!(
            ensure(dir.path()),
            Err(LocalTokenError::NotOwned { .. })
        ));
        assert!(matches!(
            read(dir.path()),
            Err(LocalTokenError::NotOwned { .. })
        ));
    }
}
