//! A replica as the others see it: who it says it is, and what it is
//! now. Apart from the election in `mod.rs`, which the proxy mirror and
//! the replica records serve, so they take these from here.

use serde::{Deserialize, Serialize};

/// What a replica says about itself in the leader key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// A random id, new at every start.
    pub(crate) id: String,
    /// Where its admin API answers.
    pub admin: String,
    /// The digest of its config file.
    pub config_digest: String,
}

/// This replica's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Not known yet, or etcd cannot be reached: neither leads nor
    /// follows anyone known.
    Unknown,
    /// This replica leads.
    Leader,
    /// Another replica leads.
    Follower { leader: ReplicaInfo },
}
