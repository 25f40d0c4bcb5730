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

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file's name inside the state directory.
pub const FILE_NAME: &str = "admin-token";

/// The actor recorded in history for changes made with the local token.
pub const ACTOR: &str = "local";

/// Bytes of randomness in a token (hex-encoded: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// Where the local token of the state directory `state_dir` is kept.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The local token of `state_dir`: the one already there if it is private
/// to its owner and well formed, else a new one, written (0600) before it
/// is returned.
pub fn ensure(state_dir: &Path) -> io::Result<String> {
    let file = path(state_dir);
    if let Some(token) = existing(&file)? {
        return Ok(token);
    }
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
    fs::rename(&tmp, &file)?;
    Ok(token)
}

/// The token in `file`, if there is a usable one: private to its owner,
/// and the hex of [`TOKEN_BYTES`] bytes.
fn existing(file: &Path) -> io::Result<Option<String>> {
    let meta = match fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.permissions().mode() & 0o077 != 0 || !meta.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(file)?;
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
}
