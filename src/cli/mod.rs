//! The `teal` command line: what each command takes, and `--help` text.
//!
//! `main` parses a [`Cli`] and calls [`run`]; every command returns an exit
//! code rather than exiting, so commands are testable as functions.
//!
//! - `serve`, `validate`, `render`: run teal, check and show a config.
//! - The admin commands (`commands::AdminCommand`) talk to a running teal
//!   over its admin API: reads in `read` and `proxies`, changes in `ops`,
//!   registered fleets' endpoints in `fleet`, waiting for a fleet to
//!   drain in `wait`, the
//!   connection and exit codes in [`client`], following an operation to
//!   its outcome in `progress` (`-o json` in `crate::admin::json`), argument parsing
//!   in `parse`, tables in `table`.
//! - [`logging`]: the log on stderr, every value escaped and cut.
//! - `serve_limits`: the limits flags of `teal serve`.
//!
//! Exit codes of the admin commands: 0 done; 1 refused (nothing changed);
//! 2 rolled back; 3 aborted; 4 in effect but not confirmed by every proxy
//! (never undone: a rollback, or an undo); 5 interrupted by a teal
//! restart; 64 bad command line; 66 unreadable token
//! file; 69 admin API unreachable; 70 server error; 77 missing or wrong
//! token; 130 stopped following on Ctrl-C (the operation goes on).

pub mod client;
pub(crate) mod commands;
pub mod config_commands;
pub(crate) mod fleet;
pub mod logging;
pub(crate) mod ops;
pub(crate) mod parse;
pub(crate) mod progress;
pub(crate) mod proxies;
pub(crate) mod read;
pub(crate) mod serve_limits;
pub(crate) mod serve_load_reports;
pub(crate) mod table;
pub(crate) mod traffic;
pub(crate) mod wait;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::serve::{self, ServeOptions};
use crate::shutdown::{os_signal, shutdown_channel};
use config_commands::Format;
use parse::seconds_in;
pub(crate) use read::Output;

/// teal: the Envoy control plane for blue/green releases.
///
/// teal serves clusters, endpoints, listeners and routes to Envoy proxies
/// over xDS, and moves traffic between a service's blue and green fleets in
/// one versioned push that every proxy applies.
#[derive(Debug, Parser)]
#[command(
    name = "teal",
    version,
    propagate_version = true,
    after_long_help = FLOW
)]
pub struct Cli {
    /// Where the admin API is and how to sign changes.
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

const FLOW: &str = "A blue/green release with teal:
  teal status web                       # blue is live
  (deploy the green fleet; both are in the config)
  teal verify web green                 # green's checks pass?
  teal flip web                         # all traffic to green, confirmed by every proxy
  teal shift web --steps 10,50,100 --interval 5m   # or gradually
  teal rollback web                     # if green misbehaves
  teal retire web blue --after 30m      # once green has proven itself and blue has drained
  teal wait drained web blue            # or: scale blue to zero once no request is in flight
  teal history web

  teal cordon edge-17 --reason '...'     # stop waiting for one stuck proxy

From a deploy pipeline (green is `endpoints: registered` in the config):
  teal fleet set web green 10.0.2.1:8080,10.0.2.2:8080
  teal flip web --to green
  teal fleet show web green

Changes need the admin token: --token, TEAL_TOKEN or --token-file.
An https:// --admin speaks TLS only: --ca, --cert, --key (TEAL_CA, ...).
Exit codes: 0 done, 1 refused, 2 rolled back, 3 aborted, 4 in effect but
not confirmed by every proxy, 5 interrupted by a teal restart, 64 usage,
66 token file unreadable, 69 admin API unreachable, 70 server error,
77 missing or wrong token, 130 stopped following (Ctrl-C).";

/// Options every admin command shares.
#[derive(Debug, Clone, Args)]
pub(crate) struct AdminArgs {
    /// Address of teal's admin API (`host:port` or a URL).
    #[arg(
        long,
        global = true,
        help_heading = "Admin API",
        env = "TEAL_ADMIN",
        default_value = "127.0.0.1:18001"
    )]
    pub(crate) admin: String,
    /// Admin token for commands that change traffic.
    #[arg(
        long,
        global = true,
        help_heading = "Admin API",
        env = "TEAL_TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
    /// File holding the admin token (wins over --token).
    #[arg(long, global = true, help_heading = "Admin API", value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,
    /// Largest answer from the admin API this command accepts, in bytes
    /// (1 MiB to 1 GiB; default 64 MiB).
    #[arg(long, global = true, help_heading = "Admin API", value_name = "BYTES",
          default_value_t = client::DEFAULT_MAX_RESPONSE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1 << 20..=1 << 30))]
    pub(crate) max_response_bytes: usize,
    /// CA (PEM) that signs the admin API's certificate, for an https://
    /// --admin (default: the system's CAs). An https:// address never
    /// falls back to plaintext.
    #[arg(
        long,
        global = true,
        help_heading = "Admin API",
        value_name = "FILE",
        env = "TEAL_CA"
    )]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM) for an admin API that asks for one (mTLS).
    #[arg(
        long,
        global = true,
        help_heading = "Admin API",
        value_name = "FILE",
        env = "TEAL_CERT"
    )]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long,
        global = true,
        help_heading = "Admin API",
        value_name = "FILE",
        env = "TEAL_KEY"
    )]
    pub(crate) key: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the control plane: serve xDS to proxies and the admin API.
    ///
    /// With no --config, serves the bundled example (examples/teal.yaml).
    /// The config is reloaded on SIGHUP and whenever the file changes; a
    /// file with problems is refused and the last good config stays. SIGINT
    /// or SIGTERM closes proxy streams (they reconnect elsewhere) and exits 0;
    /// a panic in any of teal's tasks exits 70.
    Serve(Box<ServeArgs>),
    /// Check a config file; print every problem with its line and column.
    ///
    /// Exits 0 when the file is valid, 65 when it has problems, 66 when it
    /// cannot be read.
    Validate {
        /// The config file.
        file: PathBuf,
        /// Bounds on reading the file.
        #[command(flatten)]
        limits: crate::config::Limits,
    },
    /// Print the Envoy resources teal would serve, in Envoy's JSON form.
    ///
    /// Useful to review or diff what a config change does to the proxies.
    Render {
        /// The config file.
        file: PathBuf,
        /// Only this proxy group (Envoy's node.cluster); all groups if omitted.
        #[arg(long)]
        group: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Bounds on reading the file.
        #[command(flatten)]
        limits: crate::config::Limits,
    },
    /// Commands that talk to a running teal.
    #[command(flatten)]
    Admin(commands::AdminCommand),
}

/// Options of `teal serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Config file (YAML). Default: the bundled example.
    #[arg(long, short = 'c', env = "TEAL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Bounds on reading the config file, at start and at every reload.
    #[command(flatten)]
    pub(crate) config_limits: crate::config::Limits,
    /// Address of the xDS server that proxies connect to.
    #[arg(long, env = "TEAL_XDS_ADDR", default_value = "127.0.0.1:18000")]
    pub(crate) xds_addr: SocketAddr,
    /// Address of the admin API that the CLI talks to.
    #[arg(long, env = "TEAL_ADMIN_ADDR", default_value = "127.0.0.1:18001")]
    pub(crate) admin_addr: SocketAddr,
    /// Admin API tokens file: one `name:token` per line, `#` comments.
    /// The name is recorded in history as who made each change. The
    /// environment variable TEAL_ADMIN_TOKEN adds a token named `admin`.
    /// With no token at all, changes through the admin API are refused.
    #[arg(long, env = "TEAL_ADMIN_TOKENS")]
    pub(crate) admin_tokens: Option<PathBuf>,
    /// Largest admin tokens file read, in bytes; a larger one is refused
    /// (at start: exit 65; on SIGHUP: the tokens in force stay).
    #[arg(long, default_value_t = crate::admin::auth::DEFAULT_MAX_TOKENS_BYTES, value_parser = clap::value_parser!(u64).range(64..=64 * 1024 * 1024))]
    pub(crate) admin_tokens_max_bytes: u64,
    /// Directory of teal's durable state (live fleets, weights, version
    /// counter, history). Created if missing; one teal per directory.
    #[arg(long, env = "TEAL_STATE_DIR", default_value = "teal-state")]
    pub(crate) state_dir: PathBuf,
    /// Keep state in memory only: nothing survives a restart.
    #[arg(long, conflicts_with = "state_dir")]
    pub(crate) ephemeral: bool,
    /// Where the durable state is kept, shared by replicas:
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (prefix `/teal/` by
    /// default), or `file://PATH` (the same as --state-dir PATH). With
    /// etcd, --state-dir keeps only this replica's local files.
    #[arg(
        long,
        env = "TEAL_STORE",
        value_name = "URL",
        conflicts_with = "ephemeral"
    )]
    pub(crate) store: Option<crate::state::StoreSpec>,
    /// etcd access.
    #[command(flatten)]
    pub(crate) store_access: StoreArgs,
    /// How often the config file is checked for changes: a duration
    /// (`1s`, `500ms`; 100ms to 1h; a bare number of seconds is still
    /// taken).
    #[arg(long, default_value = "1s", value_parser = watch_interval)]
    pub(crate) watch_interval: Duration,
    /// How long open proxy streams get to close on shutdown: a duration
    /// (`5s`; 0s to 5m; a bare number of seconds is still taken).
    #[arg(long, default_value = "5s", value_parser = drain)]
    pub(crate) drain: Duration,
    /// Characters of one value (a node id, a NACK message) a log line
    /// shows; the rest is cut and marked with `…` (64 to 65536).
    #[arg(long, default_value_t = crate::text::DEFAULT_MAX_CHARS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64..=65_536))]
    pub(crate) log_value_chars: usize,
    /// EndpointSlices teal keeps per Kubernetes fleet; past it, the fleet
    /// keeps its last good endpoints and lists again 30 s later (1 to
    /// 100000).
    #[arg(long, default_value_t = crate::kubernetes::KubeLimits::DEFAULT_MAX_SLICES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub(crate) kube_max_slices: usize,
    /// Endpoints (ready or not) teal keeps per Kubernetes fleet, over all
    /// its slices; past it, the fleet keeps its last good endpoints (1 to
    /// 100000).
    #[arg(long, default_value_t = crate::kubernetes::KubeLimits::DEFAULT_MAX_ENDPOINTS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub(crate) kube_max_endpoints: usize,
    /// The least time between two status writes of one HTTPRoute
    /// (`50ms` to `1m`).
    #[arg(long, default_value = "250ms", value_parser = status_interval)]
    pub(crate) kube_status_interval: Duration,
    /// The `controllerName` of the GatewayClasses teal implements: an
    /// HTTPRoute's Gateway parent is teal's when its class names this.
    #[arg(long, default_value = crate::kubernetes::DEFAULT_CONTROLLER_NAME,
          value_parser = controller_name)]
    pub(crate) gateway_controller_name: String,
    /// What proxies and other clients may make teal hold.
    #[command(flatten)]
    pub(crate) limits: serve_limits::LimitArgs,
    /// How the proxies report their traffic.
    #[command(flatten)]
    pub(crate) load_reports: serve_load_reports::LoadReportArgs,
    /// TLS on both ports.
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

/// How `teal serve` reaches etcd (with `--store etcd://...`).
#[derive(Debug, Args)]
#[command(next_help_heading = "State store")]
pub(crate) struct StoreArgs {
    /// CA (PEM) of etcd's certificates; turns on TLS to etcd.
    #[arg(long, value_name = "FILE")]
    pub(crate) store_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd; turns on TLS to etcd.
    #[arg(long, value_name = "FILE", requires = "store_key")]
    pub(crate) store_cert: Option<PathBuf>,
    /// Private key (PEM) of --store-cert.
    #[arg(long, value_name = "FILE", requires = "store_cert")]
    pub(crate) store_key: Option<PathBuf>,
    /// etcd user; the password comes from TEAL_STORE_PASSWORD.
    #[arg(long, value_name = "NAME")]
    pub(crate) store_user: Option<String>,
    /// Largest value teal reads from (or writes to) etcd, in bytes; a
    /// larger stored state is refused whole, never applied.
    #[arg(long, default_value_t = crate::state::etcd::DEFAULT_MAX_VALUE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(4096..=1 << 30))]
    pub(crate) store_max_value_bytes: u64,
    /// The etcd lease that holds the leadership, in whole seconds (`5s`;
    /// 1s to 60s; a bare number of seconds is still taken): a dead leader
    /// is replaced within about this long.
    #[arg(long, default_value = "5s", value_parser = leader_lease)]
    pub(crate) leader_lease: Duration,
    /// How long the leader keeps waiting for the proxies of a replica
    /// whose etcd lease ended (killed, cut off, paused) when they do not
    /// reconnect to another replica: until then a flip counts them as not
    /// confirmed; after it, they are taken as gone. A duration (`90s`,
    /// `5m`), from 1s to 24h.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = departed_hold)]
    pub(crate) departed_proxy_hold: Duration,
    /// The admin address other replicas send the CLI to while this one
    /// leads (default: --admin-addr).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) advertise_admin: Option<String>,
}

fn departed_hold(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{s:?} is not a duration from 1s to 24h"));
    }
    Ok(d)
}

fn leader_lease(s: &str) -> Result<Duration, String> {
    let d = seconds_in(s, 1.0, 60.0)?;
    // etcd leases are whole seconds.
    Ok(Duration::from_secs(d.as_secs().max(1)))
}

impl StoreArgs {
    /// The etcd options for `endpoints` and `prefix`.
    fn etcd(
        &self,
        endpoints: Vec<String>,
        prefix: String,
    ) -> Result<crate::state::EtcdOptions, String> {
        let mut opts = crate::state::EtcdOptions::new(endpoints, prefix);
        opts.max_value_bytes = usize::try_from(self.store_max_value_bytes)
            .map_err(|_| "--store-max-value-bytes is too large".to_owned())?;
        if self.store_ca.is_some() || self.store_cert.is_some() {
            opts.tls = Some(crate::state::etcd::EtcdTls {
                ca: self.store_ca.clone(),
                cert: self.store_cert.clone(),
                key: self.store_key.clone(),
            });
        }
        if let Some(user) = &self.store_user {
            let password = std::env::var("TEAL_STORE_PASSWORD")
                .map_err(|_| "--store-user needs the password in TEAL_STORE_PASSWORD".to_owned())?;
            opts.user = Some((user.clone(), password));
        }
        Ok(opts)
    }
}

/// TLS options of `teal serve`. The files are re-read when they change
/// and on SIGHUP; a rotation to a file that does not load is refused and
/// logged, and the previous certificate keeps serving.
#[derive(Debug, Args)]
#[command(next_help_heading = "TLS")]
pub(crate) struct TlsArgs {
    /// Certificate chain (PEM) of the xDS port; with --xds-tls-key, the
    /// port speaks TLS only.
    #[arg(long, value_name = "FILE", requires = "xds_tls_key")]
    pub(crate) xds_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --xds-tls-cert.
    #[arg(long, value_name = "FILE", requires = "xds_tls_cert")]
    pub(crate) xds_tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates proxies must present (mTLS); a
    /// proxy's identity is then its certificate's SPIFFE ID or DNS names.
    #[arg(long, value_name = "FILE", requires = "xds_tls_cert")]
    pub(crate) xds_client_ca: Option<PathBuf>,
    /// Certificate chain (PEM) of the admin port.
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    pub(crate) admin_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    pub(crate) admin_tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates the CLI must present (mTLS).
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    pub(crate) admin_client_ca: Option<PathBuf>,
    /// Serve the admin API in plaintext even on a non-loopback
    /// --admin-addr (refused otherwise); tokens then cross the network in
    /// the clear.
    #[arg(long)]
    pub(crate) admin_insecure: bool,
}

impl TlsArgs {
    fn files(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Option<crate::transport::tls::TlsFiles> {
        Some(crate::transport::tls::TlsFiles {
            cert: cert?,
            key: key?,
            client_ca,
        })
    }
}

fn watch_interval(s: &str) -> Result<Duration, String> {
    seconds_in(s, 0.1, 3600.0)
}

fn drain(s: &str) -> Result<Duration, String> {
    seconds_in(s, 0.0, 300.0)
}

fn status_interval(s: &str) -> Result<Duration, String> {
    seconds_in(s, 0.05, 60.0)
}

/// A GatewayClass `controllerName`: a domain-prefixed path
/// (`example.com/name`), as the Gateway API validates it.
fn controller_name(s: &str) -> Result<String, String> {
    let ok = s.len() <= 253
        && s.split_once('/').is_some_and(|(domain, path)| {
            !domain.is_empty()
                && domain.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                })
                && !path.is_empty()
                && path
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&c))
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a controller name: a domain, '/', and a path (teal.dev/gateway-controller)"
        ))
    }
}

impl Cli {
    /// How many characters of one value a log line shows.
    pub fn log_value_chars(&self) -> usize {
        match &self.command {
            Command::Serve(args) => args.log_value_chars,
            _ => crate::text::DEFAULT_MAX_CHARS,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Validate { file, limits } => config_commands::validate_command(
            &file,
            &limits,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Render {
            file,
            group,
            format,
            limits,
        } => config_commands::render_command(
            &file,
            &limits,
            group.as_deref(),
            format,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
        Command::Serve(args) => serve_command(*args),
        Command::Admin(cmd) => admin_command(&cli.admin, cmd),
    };
    ExitCode::from(code)
}

fn admin_command(args: &AdminArgs, cmd: commands::AdminCommand) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teal: cannot start the runtime: {e}");
            return config_commands::EX_SOFTWARE;
        }
    };
    let target = client::Target {
        addr: args.admin.clone(),
        token: args.token.clone(),
        token_file: args.token_file.clone(),
        max_response_bytes: args.max_response_bytes,
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    runtime.block_on(commands::run_admin(
        &target,
        cmd,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ))
}

fn serve_command(args: ServeArgs) -> u8 {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teal: cannot start the runtime: {e}");
            return config_commands::EX_SOFTWARE;
        }
    };
    let (state_dir, etcd) = match args.store {
        Some(crate::state::StoreSpec::File(dir)) => (Some(dir), None),
        Some(crate::state::StoreSpec::Etcd { endpoints, prefix }) => {
            match args.store_access.etcd(endpoints, prefix) {
                Ok(etcd) => (Some(args.state_dir), Some(etcd)),
                Err(e) => {
                    eprintln!("teal: {e}");
                    return crate::exit::EX_USAGE;
                }
            }
        }
        None => ((!args.ephemeral).then_some(args.state_dir), None),
    };
    let mut opts = ServeOptions {
        config: args.config,
        config_limits: args.config_limits,
        xds_addr: args.xds_addr,
        admin_addr: args.admin_addr,
        watch_interval: args.watch_interval,
        state_dir,
        etcd,
        leader_lease: args.store_access.leader_lease,
        departed_hold: args.store_access.departed_proxy_hold,
        advertise_admin: args.store_access.advertise_admin.clone(),
        admin_tokens: args.admin_tokens,
        admin_tokens_max_bytes: args.admin_tokens_max_bytes,
        xds: crate::xds::XdsServerConfig {
            drain: args.drain,
            load_reports: args.load_reports.config(),
            ..Default::default()
        },
        admin_connections: crate::transport::listener::ConnectionLimits::default_for(
            crate::transport::listener::Port::Admin,
        ),
        xds_tls: TlsArgs::files(
            args.tls.xds_tls_cert,
            args.tls.xds_tls_key,
            args.tls.xds_client_ca,
        ),
        admin_tls: TlsArgs::files(
            args.tls.admin_tls_cert,
            args.tls.admin_tls_key,
            args.tls.admin_client_ca,
        ),
        admin_insecure: args.tls.admin_insecure,
        kube: crate::kubernetes::KubeLimits {
            max_slices: args.kube_max_slices,
            max_endpoints: args.kube_max_endpoints,
            status_interval: args.kube_status_interval,
            ..Default::default()
        },
        gateway_controller_name: args.gateway_controller_name,
        endpoint_limits: args.limits.endpoint_limits(),
        gate_limits: args.limits.gate_limits(),
        event_limits: args.limits.event_limits(),
    };
    args.limits
        .apply(&mut opts.xds, &mut opts.admin_connections);
    runtime.block_on(async move {
        let (trigger, shutdown) = shutdown_channel();
        tokio::spawn(async move {
            os_signal().await;
            tracing::info!("signal received; shutting down");
            trigger.trigger();
        });
        match serve::run(opts, shutdown).await {
            Ok(()) => config_commands::EX_OK,
            Err(e) => {
                // The message can quote the config file or the state file:
                // each line escaped, the line breaks between problems kept.
                for (i, line) in e.to_string().lines().enumerate() {
                    let prefix = if i == 0 { "teal: " } else { "" };
                    eprintln!("{prefix}{}", crate::text::untrusted(line));
                }
                e.exit_code()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_durations_take_units_and_bare_seconds() {
        assert_eq!(drain("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(drain("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(watch_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(leader_lease("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(leader_lease("2"), Ok(Duration::from_secs(2)));
        assert_eq!(departed_hold("5m"), Ok(Duration::from_secs(300)));
        for bad in ["1e20", "301", "6m", "NaN", "-1s", "5 s", ""] {
            assert!(drain(bad).is_err(), "--drain {bad:?} is refused");
        }
        assert!(watch_interval("50ms").is_err(), "under 100ms");
        assert!(leader_lease("61s").is_err());
        assert!(departed_hold("25h").is_err());
        assert_eq!(status_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(status_interval("10ms").is_err(), "under 50ms");
        assert!(status_interval("2m").is_err(), "over a minute");
    }

    #[test]
    fn a_gateway_controller_name_is_a_domain_and_a_path() {
        for ok in [
            crate::kubernetes::DEFAULT_CONTROLLER_NAME,
            "example.com/gateway",
            "a.b-c.io/x/y_z",
        ] {
            assert_eq!(controller_name(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "teal",
            "/path",
            "Teal.dev/x",
            "teal.dev/",
            "teal..dev/x",
            "teal.dev/a b",
            &format!("teal.dev/{}", "x".repeat(250)),
        ] {
            assert!(controller_name(bad).is_err(), "{bad:?}");
        }
    }
}
