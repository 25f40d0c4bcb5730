//! `teal serve --store`, parsed. Apart from `mod.rs`, which the stores
//! build on, since parsing an etcd target is the etcd store's.

use std::path::PathBuf;

/// Where `teal serve --store` keeps the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StoreSpec {
    /// `file://PATH`: a state directory, as `--state-dir PATH`.
    File(PathBuf),
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    Etcd {
        /// `host:port` of each member.
        endpoints: Vec<String>,
        /// Key prefix, starting and ending with `/`.
        prefix: String,
    },
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreSpec, String> {
        if let Some(path) = s.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// needs a directory: file://PATH".to_owned());
            }
            return Ok(StoreSpec::File(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("etcd://") {
            let (endpoints, prefix) =
                super::etcd::parse_target(rest).map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(StoreSpec::Etcd { endpoints, prefix });
        }
        Err(format!(
            "{s:?}: expected file://PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
        ))
    }
}
