//! Bounds on reading a config file: its size, how deep it nests, and how
//! many nodes its anchors and aliases may copy.
//!
//! A config file is written by an operator, but it is still input: a
//! careless edit or a hostile file must end in a refusal naming the limit
//! (exit 65, or a refused reload), never in a crash or an exhausted
//! server. Each bound is a flag of `teal serve`, `teal validate` and
//! `teal render`, checked when the command line is parsed.

use clap::builder::RangedU64ValueParser;

/// Default of [`Limits::max_bytes`]: 4 MiB, far above any real config
/// (the bundled example is under 4 KiB) and small enough to read at once.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Highest [`Limits::max_bytes`] accepted: 1 GiB.
pub(crate) const MAX_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Default of [`Limits::max_depth`]. The format itself nests about 8
/// deep (`groups.g.listeners.l.virtual_hosts.v.routes[0].prefix`).
pub(crate) const DEFAULT_MAX_DEPTH: usize = 64;
/// Highest [`Limits::max_depth`] accepted. Dropping, cloning and comparing
/// the loaded tree recurse once per level; a test walks a tree this deep
/// on a thread with a 2 MiB stack, the size of the threads teal parses on.
pub(crate) const MAX_MAX_DEPTH: usize = 1_000;
/// Default of [`Limits::max_alias_nodes`]. A config that shares a few
/// health checks through anchors copies some hundreds of nodes; the
/// 342-byte "billion laughs" file would copy a billion.
pub(crate) const DEFAULT_MAX_ALIAS_NODES: usize = 100_000;
/// Highest [`Limits::max_alias_nodes`] accepted: about 1 GiB of nodes.
pub(crate) const MAX_MAX_ALIAS_NODES: usize = 10_000_000;

/// How much of a config file teal is willing to read and expand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Config limits")]
pub struct Limits {
    /// Largest config file accepted, in bytes. Only this many bytes (and
    /// one more) are ever read. The text that YAML anchors and aliases copy
    /// may not exceed it either.
    #[arg(
        long = "config-max-bytes",
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_BYTES,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_MAX_BYTES),
    )]
    pub(crate) max_bytes: u64,
    /// Deepest nesting of lists and mappings accepted in a config file.
    #[arg(
        long = "config-max-depth",
        value_name = "LEVELS",
        default_value_t = DEFAULT_MAX_DEPTH,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_MAX_DEPTH as u64),
    )]
    pub(crate) max_depth: usize,
    /// Most nodes that YAML anchors and aliases (`&a`, `*a`) may copy in a
    /// config file, counting every node of every copy.
    #[arg(
        long = "config-max-alias-nodes",
        value_name = "NODES",
        default_value_t = DEFAULT_MAX_ALIAS_NODES,
        value_parser = RangedU64ValueParser::<usize>::new().range(0..=MAX_MAX_ALIAS_NODES as u64),
    )]
    pub(crate) max_alias_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_alias_nodes: DEFAULT_MAX_ALIAS_NODES,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn defaults_match_the_flags() {
        let cmd = Cmd::try_parse_from(["t"]).expect("no flags");
        assert_eq!(cmd.limits, Limits::default());
    }

    #[test]
    fn absurd_values_are_refused_at_parse_time() {
        for bad in [
            ["--config-max-bytes", "0"],
            ["--config-max-bytes", "1073741825"],
            ["--config-max-bytes", "1e9"],
            ["--config-max-depth", "0"],
            ["--config-max-depth", "1001"],
            ["--config-max-alias-nodes", "10000001"],
            ["--config-max-alias-nodes", "-1"],
        ] {
            let args = ["t", bad[0], bad[1]];
            assert!(Cmd::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
        let edge = Cmd::try_parse_from([
            "t",
            "--config-max-bytes",
            "1073741824",
            "--config-max-depth",
            "1000",
            "--config-max-alias-nodes",
            "0",
        ])
        .expect("edges are valid");
        assert_eq!(
            edge.limits,
            Limits {
                max_bytes: MAX_MAX_BYTES,
                max_depth: MAX_MAX_DEPTH,
                max_alias_nodes: 0,
            }
        );
    }
}
