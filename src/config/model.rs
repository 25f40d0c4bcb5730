//! The typed config model: what a valid `teal.yaml` means.
//!
//! Values of these types come only from [`Config::parse`](super::Config::parse),
//! which checks everything described in docs/configuration.md; code that
//! consumes a [`Config`] may rely on those checks (every route names an
//! existing service, every live fleet listed in the file has endpoints,
//! and so on).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A whole, validated config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Upstream services, by name.
    pub services: BTreeMap<String, Service>,
    /// Proxy groups, by name (the `node.cluster` their proxies announce).
    pub groups: BTreeMap<String, Group>,
}

/// One upstream service and its fleets.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Fleets by name (`blue`, `green`, ...). Never empty.
    pub fleets: BTreeMap<String, Fleet>,
    /// The fleet that takes all traffic at first. Always a key of
    /// `fleets`; if that fleet's endpoints come from the file, it has at
    /// least one.
    pub(crate) live: String,
    /// The protocol spoken to the upstream endpoints.
    pub(crate) protocol: Protocol,
    /// Upstream TCP connect timeout (default 1s).
    pub(crate) connect_timeout: Duration,
    /// Route timeout; `None` keeps Envoy's default (15s); zero disables it.
    pub(crate) timeout: Option<Duration>,
    /// Route retry policy.
    pub(crate) retries: Option<Retries>,
    /// Active HTTP health checking of the endpoints.
    pub(crate) health_check: Option<HealthCheck>,
    /// Passive outlier detection.
    pub(crate) outlier_detection: Option<OutlierDetection>,
    /// Requests a rollout sends straight to each endpoint of a fleet before
    /// shifting traffic to it, by name.
    pub(crate) checks: BTreeMap<String, Check>,
    /// How a rollout judges the traffic a fleet takes after a switch, from
    /// the proxies' load reports; `None`: it does not.
    pub(crate) analysis: Option<Analysis>,
    /// The Gateway API `HTTPRoute` whose weights drive the service's split
    /// (`kubernetes.route`); while set, only it changes the weights.
    pub(crate) route: Option<KubernetesRef>,
}

/// `analysis:` of a service: the error ratio a fleet gaining traffic may
/// show in the proxies' load reports once a switch is confirmed. At least
/// one of the two thresholds is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Analysis {
    /// The most errors per request completed.
    pub(crate) max_error_ratio: Option<Ratio>,
    /// The most points over the ratio the fleets losing traffic showed
    /// before the switch.
    pub(crate) max_error_ratio_over_baseline: Option<Ratio>,
    /// Fewer requests than this in the window are too few to judge
    /// (default 100).
    pub(crate) min_requests: u32,
    /// How long the fleet's traffic is watched after each step (default
    /// 30s, 1s to 10m).
    pub(crate) window: Duration,
    /// What too few requests at the end of the window mean.
    pub(crate) too_few_requests: TooFewRequests,
}

/// Shortest and longest `analysis.window`: a report interval or more, and
/// no longer than an operation should hold a step.
pub(crate) const ANALYSIS_WINDOW: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(600));

/// What a verdict with too few requests means (`too_few_requests`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TooFewRequests {
    /// The step passes, with a warning saying it was not judged.
    Pass,
    /// The step fails and is undone.
    Fail,
    /// Keep watching until enough requests come, or the operation's
    /// timeout runs out (then it fails).
    #[default]
    Wait,
}

impl TooFewRequests {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TooFewRequests::Pass => "pass",
            TooFewRequests::Fail => "fail",
            TooFewRequests::Wait => "wait",
        }
    }
}

/// A share of requests, in parts per million: `1%` is 10,000, `0.5%` is
/// 5,000. Whole numbers keep plans comparable and stored exactly; a
/// millionth is finer than any threshold worth setting.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Ratio(u32);

impl Ratio {
    /// Parts per million in a whole.
    pub(crate) const WHOLE: u32 = 1_000_000;

    #[cfg(test)]
    pub(crate) const fn from_ppm(ppm: u32) -> Ratio {
        Ratio(ppm)
    }

    pub(crate) fn ppm(self) -> u32 {
        self.0
    }

    /// `errors` of `requests`, rounded to the nearest millionth (0 for no
    /// requests).
    pub(crate) fn of(errors: u64, requests: u64) -> Ratio {
        Ratio::from_fraction(errors as f64 / requests.max(1) as f64)
    }

    /// A fraction from 0 to 1, rounded; out of range is clamped.
    pub(crate) fn from_fraction(f: f64) -> Ratio {
        let ppm = (f * f64::from(Ratio::WHOLE)).round();
        // Clamped first, so the cast cannot truncate (NaN casts to 0).
        Ratio(ppm.clamp(0.0, f64::from(Ratio::WHOLE)) as u32)
    }

    /// The sum, at most a whole.
    pub(crate) fn saturating_add(self, other: Ratio) -> Ratio {
        Ratio(self.0.saturating_add(other.0).min(Ratio::WHOLE))
    }

    /// Parses a percentage as the config writes it: `1%`, `0.5%`, at most
    /// four decimals (a millionth), from 0% to 100%.
    pub(crate) fn parse_percent(s: &str) -> Result<Ratio, String> {
        let bad = || format!("expected a percentage such as 1% or 0.5%, found {s:?}");
        let number = s.strip_suffix('%').ok_or_else(bad)?;
        let (whole, decimals) = number.split_once('.').unwrap_or((number, ""));
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(decimals) || number.ends_with('.') {
            return Err(bad());
        }
        if decimals.len() > 4 {
            return Err(format!(
                "{s:?} has more than four decimals (a millionth is the finest)"
            ));
        }
        let whole: u32 = match whole.parse() {
            Ok(w) if w <= 100 => w,
            _ => return Err(format!("{s:?} is over 100%")),
        };
        let mut frac: u32 = 0;
        for (i, b) in decimals.bytes().enumerate() {
            frac += u32::from(b - b'0') * 10u32.pow(3 - i as u32);
        }
        let ppm = whole * 10_000 + frac;
        if ppm > Ratio::WHOLE {
            return Err(format!("{s:?} is over 100%"));
        }
        Ok(Ratio(ppm))
    }
}

/// As a percentage with as many decimals as it needs (`1%`, `0.5%`,
/// `0.0125%`), the way the config writes it.
impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, frac) = (self.0 / 10_000, self.0 % 10_000);
        if frac == 0 {
            return write!(f, "{whole}%");
        }
        let decimals = format!("{frac:04}");
        write!(f, "{whole}.{}%", decimals.trim_end_matches('0'))
    }
}

/// The endpoints of one fleet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    /// Where the endpoints come from. For any source but
    /// [`EndpointSource::File`], `endpoints` is empty as parsed and is
    /// filled in by [`Config::with_endpoints`] from what that source
    /// reported last.
    pub(crate) source: EndpointSource,
    /// Endpoints in config order (or in the order their source gave).
    pub(crate) endpoints: Vec<Endpoint>,
}

/// Where a fleet's endpoints come from.
///
/// The file always declares the service, its fleets, checks and routes;
/// only the endpoints of a fleet may live elsewhere. Every source other
/// than `File` feeds the controller through one entry point
/// ([`Controller::set_fleet_endpoints`](crate::controller::Controller::set_fleet_endpoints)),
/// and the snapshot and the checks are built from the config with those
/// endpoints applied ([`Config::with_endpoints`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum EndpointSource {
    /// Listed in the file (`endpoints: [...]`, the default).
    #[default]
    File,
    /// Registered through the admin API (`endpoints: registered`) by a
    /// deploy pipeline or by the instances themselves; kept in the durable
    /// state.
    Registered,
    /// The ready endpoints of a Kubernetes Service's EndpointSlices
    /// (`kubernetes: {namespace, service, port}`), watched by teal.
    Kubernetes(KubernetesFleet),
}

impl EndpointSource {
    /// Whether the file lists the endpoints.
    pub(crate) fn is_file(&self) -> bool {
        matches!(self, EndpointSource::File)
    }

    /// How `teal fleet show` and messages name the source.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            EndpointSource::File => "file",
            EndpointSource::Registered => "registered",
            EndpointSource::Kubernetes(_) => "kubernetes",
        }
    }
}

impl std::fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Highest endpoint weight accepted, from the file or from outside it.
pub(crate) const MAX_ENDPOINT_WEIGHT: u32 = 10_000;

/// Longest zone name accepted from outside the file, in bytes.
pub(crate) const MAX_ZONE_BYTES: usize = 128;

/// One upstream endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address and port.
    pub address: SocketAddr,
    /// Load-balancing weight within the fleet (1 to 10000, default 1).
    pub(crate) weight: u32,
    /// Zone, if given; endpoints are grouped into localities by zone.
    pub(crate) zone: Option<String>,
}

/// Upstream protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c or TLS-less gRPC).
    Http2,
}

/// Route retry policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Retries {
    /// Envoy `retry_on` conditions, comma separated (default
    /// `5xx,reset,connect-failure`).
    pub(crate) retry_on: String,
    /// Maximum number of retries (default 1).
    pub(crate) num_retries: u32,
    /// Timeout of each try, if any.
    pub(crate) per_try_timeout: Option<Duration>,
}

/// Active HTTP health checking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HealthCheck {
    /// Request path, starting with `/`.
    pub(crate) path: String,
    /// Time between checks (default 5s).
    pub(crate) interval: Duration,
    /// Timeout of one check (default 1s).
    pub(crate) timeout: Duration,
    /// Passes needed to mark a host healthy (default 2).
    pub(crate) healthy_threshold: u32,
    /// Failures needed to mark a host unhealthy (default 3).
    pub(crate) unhealthy_threshold: u32,
}

/// Passive outlier detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutlierDetection {
    /// Consecutive 5xx responses that eject a host (default 5).
    pub(crate) consecutive_5xx: u32,
    /// Time between ejection sweeps (default 10s).
    pub(crate) interval: Duration,
    /// Base ejection time (default 30s).
    pub(crate) base_ejection_time: Duration,
    /// Most hosts that may be ejected, in percent (default 10).
    pub(crate) max_ejection_percent: u32,
}

/// A request sent straight to each endpoint of a fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    /// Request path, starting with `/`.
    pub(crate) path: String,
    /// Expected HTTP status (default 200).
    pub(crate) status: u16,
    /// A substring the response body must contain, if any.
    pub(crate) body_contains: Option<String>,
    /// Timeout of the request (default 2s).
    pub(crate) timeout: Duration,
}

/// A proxy group: every Envoy, or proxyless gRPC client, whose
/// `node.cluster` is the group's name.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Listeners by name. Never empty.
    pub(crate) listeners: BTreeMap<String, Listener>,
    /// Identities (SPIFFE IDs or DNS names of client certificates, `*` for
    /// one whole segment) that may join the group; empty admits any
    /// proxy, with or without a certificate.
    pub(crate) identities: Vec<crate::transport::identity::IdentityPattern>,
    /// The Gateway API `Gateway` this group implements
    /// (`kubernetes.gateway`): routes whose parent is that Gateway are the
    /// group's.
    pub(crate) gateway: Option<KubernetesRef>,
}

/// One listener of a group.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Listener {
    /// What the listener routes, and where it listens.
    pub(crate) kind: ListenerKind,
}

/// What a listener routes. Edge and sidecar listeners are Envoy listeners
/// on an address; grpc listeners are API listeners for proxyless gRPC
/// clients, which have no address.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ListenerKind {
    /// Routes by `Host` and path (prefix or regex; a public ingress).
    Edge {
        /// IP address and port to listen on.
        address: SocketAddr,
        /// Virtual hosts by name.
        virtual_hosts: BTreeMap<String, VirtualHost>,
    },
    /// Routes by service name (a sidecar's outbound listener): one virtual
    /// host per service, matching `name` and `name:port`.
    Sidecar {
        /// IP address and port to listen on.
        address: SocketAddr,
        /// Service names, sorted and without repeats.
        services: Vec<String>,
    },
    /// Proxyless gRPC clients (channel target `xds:///SERVICE`): per
    /// service, an API listener and a route configuration, both named after
    /// the service, with one virtual host whose only domain is the service
    /// name.
    Grpc {
        /// Service names, sorted and without repeats.
        services: Vec<String>,
    },
}

impl Listener {
    /// The address an Envoy listens on; `None` for grpc (API) listeners.
    pub(crate) fn address(&self) -> Option<SocketAddr> {
        match &self.kind {
            ListenerKind::Edge { address, .. } | ListenerKind::Sidecar { address, .. } => {
                Some(*address)
            }
            ListenerKind::Grpc { .. } => None,
        }
    }
}

/// A virtual host of an edge listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VirtualHost {
    /// `Host` values this virtual host answers (Envoy domain syntax).
    pub(crate) domains: Vec<String>,
    /// Routes, first match wins.
    pub(crate) routes: Vec<Route>,
}

/// A route of an edge virtual host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// Which request paths the route takes.
    pub(crate) path: PathMatch,
    /// The service requests go to.
    pub(crate) service: String,
}

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Paths starting with this prefix, which starts with `/` (`prefix:`).
    Prefix(String),
    /// Whole paths (query string excluded) matching this RE2 pattern
    /// (`regex:`). Its syntax was checked at parse time; Envoy compiles it
    /// with RE2 when it loads the route configuration.
    Regex(String),
}

impl Config {
    /// The services a group's listeners route to, sorted.
    pub fn services_of<'a>(&self, group: &'a Group) -> Vec<&'a str> {
        let mut names: Vec<&str> = group
            .listeners
            .values()
            .flat_map(|l| match &l.kind {
                ListenerKind::Edge { virtual_hosts, .. } => virtual_hosts
                    .values()
                    .flat_map(|vh| vh.routes.iter().map(|r| r.service.as_str()))
                    .collect::<Vec<_>>(),
                ListenerKind::Sidecar { services, .. } | ListenerKind::Grpc { services } => {
                    services.iter().map(String::as_str).collect()
                }
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether a group's listeners route to `service`: what
    /// [`Config::services_of`] would contain, without building the list
    /// (the controller asks at every batch of ACKs it follows).
    pub fn routes_to(group: &Group, service: &str) -> bool {
        group.listeners.values().any(|l| match &l.kind {
            ListenerKind::Edge { virtual_hosts, .. } => virtual_hosts
                .values()
                .any(|vh| vh.routes.iter().any(|r| r.service == service)),
            ListenerKind::Sidecar { services, .. } | ListenerKind::Grpc { services } => {
                services.iter().any(|s| s == service)
            }
        })
    }
}

/// The manager of the EndpointSlices a Kubernetes fleet takes by default:
/// Kubernetes' own EndpointSlice controller, which writes them from the
/// Service's selector and its pods' readiness.
pub const DEFAULT_SLICE_MANAGER: &str = "endpointslice-controller.k8s.io";

/// Where a Kubernetes fleet's endpoints come from
/// (`fleets.<name>.kubernetes`): the EndpointSlices labelled
/// `kubernetes.io/service-name: service` in `namespace`, and
/// `endpointslice.kubernetes.io/managed-by: managed_by`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubernetesFleet {
    /// The namespace of the Service (a DNS label).
    pub namespace: String,
    /// The Service's name (a DNS label).
    pub service: String,
    /// Which of the slices' ports the endpoints take; `None` when the
    /// slices have exactly one.
    pub port: Option<KubernetesPort>,
    /// The `endpointslice.kubernetes.io/managed-by` label the slices must
    /// carry ([`DEFAULT_SLICE_MANAGER`] unless configured), so that whoever
    /// may create an EndpointSlice in the namespace cannot add endpoints
    /// to the fleet by naming the Service; `None` (`managed_by: '*'`)
    /// takes the slices of any manager.
    pub managed_by: Option<String>,
}

impl KubernetesFleet {
    /// The label selector of the fleet's slices (names and manager were
    /// checked as label values, so it is well formed).
    #[cfg(feature = "kubernetes")]
    pub(crate) fn label_selector(&self) -> String {
        let mut selector = format!("kubernetes.io/service-name={}", self.service);
        if let Some(manager) = &self.managed_by {
            selector.push_str(",endpointslice.kubernetes.io/managed-by=");
            selector.push_str(manager);
        }
        selector
    }
}

/// A port of a Service's EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KubernetesPort {
    /// The port of that name (the Service port's `name`).
    Name(String),
    /// The port with that number on the endpoints (the target port, which
    /// is what EndpointSlices list, not the Service's own port).
    Number(u16),
}

impl std::fmt::Display for KubernetesPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubernetesPort::Name(n) => f.write_str(n),
            KubernetesPort::Number(n) => write!(f, "{n}"),
        }
    }
}

/// A namespaced Kubernetes object by name (`{namespace, name}`), both
/// checked as Kubernetes checks them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubernetesRef {
    /// A DNS label.
    pub namespace: String,
    /// A DNS subdomain (lowercase, `.` and `-`, at most 253).
    pub name: String,
}

impl std::fmt::Display for KubernetesRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Service {
    /// The `HTTPRoute` that drives the service's weights, if one does.
    pub fn route(&self) -> Option<&KubernetesRef> {
        self.route.as_ref()
    }
}

impl Group {
    /// The `Gateway` the group implements, if it does.
    pub fn gateway(&self) -> Option<&KubernetesRef> {
        self.gateway.as_ref()
    }
}

impl Fleet {
    /// Where the fleet's endpoints come from in Kubernetes, if they do.
    pub fn kubernetes(&self) -> Option<&KubernetesFleet> {
        match &self.source {
            EndpointSource::Kubernetes(k) => Some(k),
            _ => None,
        }
    }
}
