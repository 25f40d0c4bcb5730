//! Admin tokens: who may change things.
//!
//! A tokens file holds one `name:token` per line; blank lines and lines
//! starting with `#` are ignored. The environment variable
//! `TEAL_ADMIN_TOKEN` adds one token named `admin`. A request that changes
//! anything must carry `authorization: Bearer <token>`; the matching
//! token's name is the actor recorded in the history.
//!
//! The tokens file must not be readable or writable by group or others
//! (as ssh insists for keys): such a file is refused when teal starts. It
//! is re-read on SIGHUP, so a token is revoked without a restart; a file
//! that does not load then is refused and the tokens in force stay. Only
//! a regular file of at most `--admin-tokens-max-bytes` is read: a FIFO or
//! a device is refused at once (opened without blocking, so a FIFO with
//! no writer cannot hang start-up), a larger file by its size before any
//! of it is read.
//!
//! Tokens are compared by their SHA-256 digests in constant time, so
//! neither a token's contents nor its length leak through timing.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

/// The environment variable holding the `admin` token.
pub(crate) const TOKEN_ENV: &str = "TEAL_ADMIN_TOKEN";

/// The largest tokens file read, by default (`--admin-tokens-max-bytes`):
/// thousands of tokens; a file larger than that is a mistake, and reading
/// it whole would only cost memory.
pub(crate) const DEFAULT_MAX_TOKENS_BYTES: u64 = 1 << 20;

/// A problem in a tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "{path} is open to group or others (mode {mode:03o}); it holds secrets: \
         chmod 600 {path}"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file (a FIFO, a device, a directory).
    #[error("{path} is not a regular file; give a file of `name:token` lines")]
    NotAFile {
        /// The file.
        path: String,
    },
    /// Larger than the limit.
    #[error("{path} is {size} bytes, over the limit of {max} (--admin-tokens-max-bytes)")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size, as far as it was read.
        size: u64,
        /// The limit in bytes (`--admin-tokens-max-bytes`).
        max: u64,
    },
    /// A line is not `name:token`.
    #[error("{path}:{line}: expected `name:token`")]
    Malformed {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
    },
}

/// (name, SHA-256 of the token).
type Entries = Vec<(String, [u8; 32])>;

/// The accepted admin tokens. `Debug` never shows them. Clones share one
/// set, so `Tokens::replace` (a SIGHUP) reaches the server that holds a
/// clone.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Read per authorized call and replaced whole on reload; never held
    /// across an `.await`.
    entries: Arc<RwLock<Arc<Entries>>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.snapshot();
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// No tokens: every change is refused.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    fn snapshot(&self) -> Arc<Entries> {
        self.entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Adds a token.
    pub fn with(self, name: &str, token: &str) -> Tokens {
        {
            let mut guard = self
                .entries
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::make_mut(&mut guard).push((name.to_owned(), digest(token)));
        }
        self
    }

    /// Puts the tokens of `other` in force in place of these, for every
    /// clone.
    pub(crate) fn replace(&self, other: &Tokens) {
        let new = other.snapshot();
        *self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = new;
    }

    /// Parses a tokens file's text; `path` names it in errors.
    pub(crate) fn parse(text: &str, path: &str) -> Result<Tokens, TokensError> {
        let mut tokens = Tokens::none();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((name, token)) if !name.trim().is_empty() && !token.trim().is_empty() => {
                    tokens = tokens.with(name.trim(), token.trim());
                }
                _ => {
                    return Err(TokensError::Malformed {
                        path: path.to_owned(),
                        line: i + 1,
                    });
                }
            }
        }
        Ok(tokens)
    }

    /// Reads a tokens file of at most `max_bytes`; refuses one open to
    /// group or others, and anything but a regular file.
    pub(crate) fn from_file(path: &Path, max_bytes: u64) -> Result<Tokens, TokensError> {
        use std::io::Read;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let name = path.display().to_string();
        let unreadable = |source| TokensError::Unreadable {
            path: name.clone(),
            source,
        };
        // Non-blocking, so opening a FIFO returns at once instead of
        // waiting for a writer; what was opened is then checked by its
        // descriptor, so nothing can be swapped in between.
        let nonblocking = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nonblocking)
            .open(path)
            .map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(TokensError::NotAFile { path: name });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokensError::TooOpen { path: name, mode });
        }
        let too_large = |size| TokensError::TooLarge {
            path: name.clone(),
            size,
            max: max_bytes,
        };
        if meta.len() > max_bytes {
            return Err(too_large(meta.len()));
        }
        // Bounded again while reading: the file may grow after the check.
        let mut bytes = Vec::new();
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| unreadable(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Tokens::parse(&text, &name)
    }

    /// The tokens of `file` (if given, at most `max_bytes`) plus
    /// `TEAL_ADMIN_TOKEN` (if set and not empty) as `admin`.
    pub(crate) fn load(file: Option<&Path>, max_bytes: u64) -> Result<Tokens, TokensError> {
        let mut tokens = match file {
            Some(path) => Tokens::from_file(path, max_bytes)?,
            None => Tokens::none(),
        };
        if let Ok(token) = std::env::var(TOKEN_ENV)
            && !token.trim().is_empty()
        {
            tokens = tokens.with("admin", token.trim());
        }
        Ok(tokens)
    }

    /// Whether no token is accepted.
    pub(crate) fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// The name of the token, if it is one of ours. Every entry is
    /// compared, so the time taken does not depend on which one matched.
    pub(crate) fn name_of(&self, token: &str) -> Option<String> {
        let d = digest(token);
        let mut found = None;
        for (name, known) in self.snapshot().iter() {
            if same(known, &d) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Checks a request's `authorization: Bearer <token>`; returns the
    /// actor, or the `UNAUTHENTICATED` status to answer with.
    pub(crate) fn authorize(&self, metadata: &MetadataMap) -> Result<String, tonic::Status> {
        if self.is_empty() {
            return Err(tonic::Status::unauthenticated(
                "changes are disabled: the server has no admin tokens \
                 (set TEAL_ADMIN_TOKEN or give it a tokens file)",
            ));
        }
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "this call changes traffic and needs a token: \
                     `authorization: Bearer <token>` (teal --token or TEAL_TOKEN)",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                tonic::Status::unauthenticated("authorization is not `Bearer <token>`")
            })?;
        self.name_of(token)
            .ok_or_else(|| tonic::Status::unauthenticated("unknown admin token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_skips_comments() {
        let t = Tokens::parse("# ops\nalice: s3cret\n\nci:abc:def\n", "t").expect("valid");
        assert_eq!(t.name_of("s3cret").as_deref(), Some("alice"));
        assert_eq!(t.name_of("abc:def").as_deref(), Some("ci"));
        assert_eq!(t.name_of("nope"), None);
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_open_to_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "ops:tok\n").expect("write");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = Tokens::from_file(&path, DEFAULT_MAX_TOKENS_BYTES).expect_err("too open");
            assert!(matches!(e, TokensError::TooOpen { .. }), "{mode:o}: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let t = Tokens::from_file(&path, DEFAULT_MAX_TOKENS_BYTES).expect("private file");
        assert_eq!(t.name_of("tok").as_deref(), Some("ops"));
    }

    #[test]
    fn a_fifo_is_refused_at_once_and_a_large_file_by_its_size() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // No writer ever comes: a blocking open would wait for ever.
        let e = Tokens::from_file(&fifo, DEFAULT_MAX_TOKENS_BYTES).expect_err("a FIFO");
        assert!(matches!(e, TokensError::NotAFile { .. }), "{e}");

        let big = dir.path().join("big");
        std::fs::write(&big, "ops:tok\n").expect("write");
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Tokens::from_file(&big, 8).expect("at the limit");
        // Sparse: the size it reports is its size on disk, and the refusal
        // names it whole, so it was judged by it, not read.
        std::fs::File::options()
            .write(true)
            .open(&big)
            .and_then(|f| f.set_len(1 << 30))
            .expect("grow");
        let e = Tokens::from_file(&big, 7).expect_err("over the limit");
        assert!(
            matches!(
                e,
                TokensError::TooLarge {
                    size: 1073741824,
                    max: 7,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_replacement_reaches_every_clone() {
        let served = Tokens::none().with("old", "a");
        let held = served.clone();
        held.replace(&Tokens::none().with("new", "b"));
        assert_eq!(served.name_of("a"), None, "revoked");
        assert_eq!(served.name_of("b").as_deref(), Some("new"));
    }

    #[test]
    fn malformed_line_is_reported_with_its_number() {
        let e = Tokens::parse("a:b\njunk\n", "tokens").expect_err("malformed");
        assert_eq!(e.to_string(), "tokens:2: expected `name:token`");
    }

    #[test]
    fn authorize_wants_a_known_bearer_token() {
        let t = Tokens::none().with("admin", "tok");
        let mut md = MetadataMap::new();
        assert!(t.authorize(&md).is_err());
        md.insert("authorization", "Bearer wrong".parse().expect("ascii"));
        assert!(t.authorize(&md).is_err());
        md.insert("authorization", "Bearer tok".parse().expect("ascii"));
        assert_eq!(t.authorize(&md).expect("known"), "admin");
        assert!(Tokens::none().authorize(&md).is_err());
    }
}
