//! From a Gateway API `HTTPRoute` to a teal split, and from what became of
//! it to the route's `status.parents`: pure functions, no I/O.
//!
//! - **Parents.** A `Gateway` parent is teal's when a group of the config
//!   implements it (`groups.<g>.kubernetes.gateway`) and its
//!   `GatewayClass` names teal's controller (`--gateway-controller-name`);
//!   a `Service` parent (GAMMA) is teal's when a sidecar or grpc group of
//!   the config routes the service. Any other parent is another
//!   controller's: teal neither acts for it nor writes its status entry.
//! - **Backends.** Each `backendRef` must be a core `Service` in the
//!   route's namespace (teal reads no `ReferenceGrant`) that is the
//!   Service of one of the service's Kubernetes fleets
//!   (`fleets.<f>.kubernetes.service`); a fleet whose endpoints come from
//!   the file or from registrations cannot be named. Fleets not named get
//!   weight 0. Every rule with backends must give the same split: teal
//!   serves one split per service.
//! - **Weights.** A backend's weight (default 1) over the rule's total,
//!   scaled to 100 by the largest remainder: each fleet gets the whole
//!   part of its share, and what is left goes, one point each, to the
//!   largest fractional parts (ties to the fleet first by name). So 1:2
//!   is 33/67, and a backend under half a percent may get 0.
//! - **Status.** Per parent teal owns: `Accepted`, `ResolvedRefs` (the
//!   standard reasons) and `teal.dev/Confirmed`, merged into the entries
//!   already there without touching any other controller's, keeping each
//!   condition's `lastTransitionTime` while its status holds.

use std::collections::BTreeMap;

use super::gateway::{Condition, HttpRoute, ParentRef, RouteParentStatus};
use crate::config::{Config, KubernetesRef, ListenerKind, Service};
use crate::rollout::{Outcome, Progress, RouteState, Split};
use crate::xds::ProxyStatus;
use crate::xds::resources::{PerType, ResourceType};

/// teal's own condition: every connected proxy ACKed the weights of the
/// route's `observedGeneration`.
pub(crate) const CONFIRMED: &str = "teal.dev/Confirmed";
#[cfg(test)]
pub(crate) use super::DEFAULT_CONTROLLER_NAME;
/// The most weight one backend may have (the Gateway API's own bound).
pub(crate) const MAX_BACKEND_WEIGHT: i64 = 1_000_000;
/// The most `status.parents` entries a route may have (the Gateway API's
/// own bound): teal's entries that do not fit are not written.
pub(crate) const MAX_STATUS_PARENTS: usize = 32;

/// What teal is to one of a route's parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ParentRole {
    /// A Gateway teal implements, as this group; `routes` says whether
    /// the group routes the service.
    Gateway { group: String, routes: bool },
    /// A Service parent, and sidecar groups route the service.
    Mesh,
    /// Another controller's parent: left alone.
    NotOurs,
}

impl ParentRole {
    pub(crate) fn is_ours(&self) -> bool {
        !matches!(self, ParentRole::NotOurs)
    }
}

/// The Gateway a parent names, if it names one.
pub(crate) fn parent_gateway(route_namespace: &str, parent: &ParentRef) -> Option<KubernetesRef> {
    let group = parent.group.as_deref().unwrap_or(super::gateway::GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    (group == super::gateway::GROUP && kind == "Gateway").then(|| KubernetesRef {
        namespace: parent
            .namespace
            .clone()
            .unwrap_or_else(|| route_namespace.to_owned()),
        name: parent.name.clone(),
    })
}

/// What teal is to `parent` of a route of `service` in `route_namespace`.
/// `class_controllers` gives, per Gateway read, the `controllerName` of
/// its class (a Gateway missing from it could not be read: not ours).
pub(crate) fn parent_role(
    config: &Config,
    service: &str,
    route_namespace: &str,
    parent: &ParentRef,
    controller: &str,
    class_controllers: &BTreeMap<KubernetesRef, String>,
) -> ParentRole {
    if let Some(gw) = parent_gateway(route_namespace, parent) {
        let Some((group, g)) = config.groups.iter().find(|(_, g)| g.gateway() == Some(&gw)) else {
            return ParentRole::NotOurs;
        };
        if class_controllers.get(&gw).map(String::as_str) != Some(controller) {
            return ParentRole::NotOurs;
        }
        return ParentRole::Gateway {
            group: group.clone(),
            routes: Config::routes_to(g, service),
        };
    }
    let core = parent.group.as_deref().unwrap_or("").is_empty();
    if core && parent.kind.as_deref() == Some("Service") {
        let mesh = config.groups.values().any(|g| {
            g.listeners.values().any(|l| match &l.kind {
                ListenerKind::Sidecar { services, .. } | ListenerKind::Grpc { services } => {
                    services.iter().any(|s| s == service)
                }
                ListenerKind::Edge { .. } => false,
            })
        });
        if mesh {
            return ParentRole::Mesh;
        }
    }
    ParentRole::NotOurs
}

/// Why a route's weights are not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteProblem {
    /// No rule has backends.
    #[error("no rule has backendRefs")]
    NoBackends,
    /// Rules with different splits.
    #[error(
        "rules {first} and {other} split traffic differently; teal serves one split per service"
    )]
    RulesDisagree { first: usize, other: usize },
    /// A weight outside 0 to 1,000,000.
    #[error("backend {name} has weight {weight} (0 to 1000000)")]
    BadWeight { name: String, weight: i64 },
    /// A backend of another kind than Service.
    #[error("backend {name} is a {kind}; only core Services are supported")]
    InvalidKind { name: String, kind: String },
    /// A backend in another namespace.
    #[error(
        "backend {namespace}/{name} is in another namespace than the route (ReferenceGrants are not read)"
    )]
    RefNotPermitted { namespace: String, name: String },
    /// A backend that is not the Service of a fleet of the service.
    #[error(
        "backend {namespace}/{name} is not the Kubernetes Service of a fleet of service {service:?}"
    )]
    BackendNotFound {
        namespace: String,
        name: String,
        service: String,
    },
    /// Every weight is 0.
    #[error("every backend has weight 0; teal does not serve a route with nowhere to go")]
    ZeroWeights,
}

/// Which condition a problem turns false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProblemCondition {
    Accepted(&'static str),
    ResolvedRefs(&'static str),
    /// Understood, but not servable: `teal.dev/Confirmed` is `Refused`.
    Refused,
}

impl RouteProblem {
    pub(crate) fn condition(&self) -> ProblemCondition {
        match self {
            RouteProblem::NoBackends
            | RouteProblem::RulesDisagree { .. }
            | RouteProblem::BadWeight { .. } => ProblemCondition::Accepted("UnsupportedValue"),
            RouteProblem::InvalidKind { .. } => ProblemCondition::ResolvedRefs("InvalidKind"),
            RouteProblem::RefNotPermitted { .. } => {
                ProblemCondition::ResolvedRefs("RefNotPermitted")
            }
            RouteProblem::BackendNotFound { .. } => {
                ProblemCondition::ResolvedRefs("BackendNotFound")
            }
            RouteProblem::ZeroWeights => ProblemCondition::Refused,
        }
    }
}

/// The split a route asks of `service` (named `name`), every fleet
/// present, summing to 100.
pub(crate) fn route_split(
    route: &HttpRoute,
    name: &str,
    service: &Service,
) -> Result<Split, RouteProblem> {
    let namespace = route.metadata.namespace.as_deref().unwrap_or_default();
    let mut found: Option<(usize, Split)> = None;
    for (i, rule) in route.spec.rules.iter().enumerate() {
        if rule.backend_refs.is_empty() {
            continue;
        }
        let mut weights: BTreeMap<&str, u64> = BTreeMap::new();
        for b in &rule.backend_refs {
            let group = b.group.as_deref().unwrap_or("");
            let kind = b.kind.as_deref().unwrap_or("Service");
            if !group.is_empty() || kind != "Service" {
                return Err(RouteProblem::InvalidKind {
                    name: b.name.clone(),
                    kind: if group.is_empty() {
                        kind.to_owned()
                    } else {
                        format!("{kind}.{group}")
                    },
                });
            }
            let ns = b.namespace.as_deref().unwrap_or(namespace);
            if ns != namespace {
                return Err(RouteProblem::RefNotPermitted {
                    namespace: ns.to_owned(),
                    name: b.name.clone(),
                });
            }
            let weight = b.weight.unwrap_or(1);
            if !(0..=MAX_BACKEND_WEIGHT).contains(&weight) {
                return Err(RouteProblem::BadWeight {
                    name: b.name.clone(),
                    weight,
                });
            }
            let fleet = service
                .fleets
                .iter()
                .find(|(_, f)| {
                    f.kubernetes()
                        .is_some_and(|k| k.namespace == ns && k.service == b.name)
                })
                .map(|(f, _)| f.as_str())
                .ok_or_else(|| RouteProblem::BackendNotFound {
                    namespace: ns.to_owned(),
                    name: b.name.clone(),
                    service: name.to_owned(),
                })?;
            // Bounded: at most 16 backends of at most a million each in a
            // valid route, and a u64 holds far more.
            *weights.entry(fleet).or_default() += weight.unsigned_abs();
        }
        let split = normalise(service, &weights)?;
        match &found {
            None => found = Some((i, split)),
            Some((first, s)) if *s != split => {
                return Err(RouteProblem::RulesDisagree {
                    first: *first,
                    other: i,
                });
            }
            Some(_) => {}
        }
    }
    found.map(|(_, s)| s).ok_or(RouteProblem::NoBackends)
}

/// Scales `weights` to 100 by the largest remainder (see the module's
/// doc); every fleet of `service` is in the result.
fn normalise(service: &Service, weights: &BTreeMap<&str, u64>) -> Result<Split, RouteProblem> {
    let total: u64 = weights.values().sum();
    if total == 0 {
        return Err(RouteProblem::ZeroWeights);
    }
    let mut split: Split = service.fleets.keys().map(|f| (f.clone(), 0)).collect();
    let mut left: u64 = 100;
    let mut remainders = Vec::new();
    for (fleet, w) in weights {
        let whole = w * 100 / total;
        left -= whole;
        // `whole` is at most 100.
        split.insert((*fleet).to_owned(), whole as u32);
        remainders.push((w * 100 % total, *fleet));
    }
    // Largest remainder first; ties to the fleet first by name.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (_, fleet) in remainders.into_iter().take(left as usize) {
        if let Some(w) = split.get_mut(fleet) {
            *w += 1;
        }
    }
    Ok(split)
}

/// Where the route's weights are: what `teal.dev/Confirmed` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Confirmation {
    /// Being applied: `waiting_for` have not ACKed yet.
    Pending {
        version: Option<String>,
        acked: usize,
        total: usize,
        waiting_for: Vec<String>,
        phase: String,
    },
    /// Every connected proxy ACKed.
    Confirmed {
        version: String,
        acked: usize,
        total: usize,
    },
    /// The split asked for was already served, with nothing running, and
    /// every proxy holds it.
    InEffect {
        version: String,
        acked: usize,
        total: usize,
    },
    /// Applied, then undone (a NACK, a failed check, the analysis).
    RolledBack { why: String },
    /// Not applied.
    Refused { why: String },
}

impl Confirmation {
    fn condition(&self) -> (&'static str, &'static str, String) {
        match self {
            Confirmation::Pending {
                version,
                acked,
                total,
                waiting_for,
                phase,
            } => {
                let mut m = match version {
                    Some(v) => format!("{phase}: version {v}, {acked}/{total} proxies"),
                    None => phase.clone(),
                };
                if !waiting_for.is_empty() {
                    m.push_str(&format!("; waiting for {}", waiting_for.join(", ")));
                }
                ("False", "Pending", m)
            }
            Confirmation::Confirmed {
                version,
                acked,
                total,
            } => (
                "True",
                "Confirmed",
                format!("version {version} confirmed by {acked}/{total} proxies"),
            ),
            Confirmation::InEffect {
                version,
                acked,
                total,
            } => (
                "True",
                "Confirmed",
                format!(
                    "these weights were already in effect: version {version} held by \
                     {acked}/{total} proxies"
                ),
            ),
            Confirmation::RolledBack { why } => ("False", "RolledBack", why.clone()),
            Confirmation::Refused { why } => ("False", "Refused", why.clone()),
        }
    }
}

impl Confirmation {
    /// Where an operation that applies a route's weights is.
    pub(crate) fn of(progress: &Progress) -> Confirmation {
        let version = progress.version.as_ref().map(ToString::to_string);
        match &progress.outcome {
            None => Confirmation::Pending {
                version,
                acked: progress.acked,
                total: progress.total,
                waiting_for: progress.waiting_for.clone(),
                phase: progress.phase.as_str().to_owned(),
            },
            Some(Outcome::Succeeded) => Confirmation::Confirmed {
                version: version.unwrap_or_else(|| "-".to_owned()),
                acked: progress.acked,
                total: progress.total,
            },
            Some(Outcome::Refused { reason }) => Confirmation::Refused {
                why: reason.to_string(),
            },
            Some(
                Outcome::RolledBack { reason }
                | Outcome::Unconfirmed { reason }
                | Outcome::Aborted { reason }
                | Outcome::Interrupted { reason },
            ) => Confirmation::RolledBack {
                why: reason.to_string(),
            },
        }
    }
}

/// Of the proxies whose group routes `service`, how many hold the route
/// configuration their group is served now (`versions`, per group), how
/// many there are, and the ids of those that do not (a proxy whose stream
/// ended counts as not holding it): what says that weights already in
/// effect are confirmed.
pub(crate) fn holding(
    config: &Config,
    service: &str,
    proxies: &[ProxyStatus],
    versions: &BTreeMap<String, PerType<String>>,
) -> (usize, usize, Vec<String>) {
    let (mut acked, mut total, mut waiting) = (0, 0, Vec::new());
    for p in proxies {
        let Some(node) = &p.node else { continue };
        let Some(group) = config.groups.get(&node.cluster) else {
            continue;
        };
        if !Config::routes_to(group, service) {
            continue;
        }
        total += 1;
        let want = versions.get(&node.cluster).map(|v| &v[ResourceType::Route]);
        if !p.disconnected && p.of(ResourceType::Route).acked.as_ref() == want {
            acked += 1;
        } else {
            waiting.push(node.id.clone());
        }
    }
    waiting.sort();
    waiting.dedup();
    (acked, total, waiting)
}

/// The parent entries teal writes for `route`: one per parent it owns.
/// `outcome` is the problem that kept the route from being applied, or
/// where its weights are (`None`: not known yet, no `Confirmed`
/// condition).
pub(crate) fn our_entries(
    route: &HttpRoute,
    parents: &[(ParentRef, ParentRole)],
    outcome: Result<Option<&Confirmation>, &RouteProblem>,
    controller: &str,
    now: &str,
) -> Vec<RouteParentStatus> {
    let generation = route.metadata.generation;
    let cond = |type_: &str, status: &str, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: now.to_owned(),
        observed_generation: generation,
    };
    let mut out = Vec::new();
    for (parent, role) in parents {
        let mut accepted = cond("Accepted", "True", "Accepted", String::new());
        let mut resolved = cond("ResolvedRefs", "True", "ResolvedRefs", String::new());
        let mut confirmed = None;
        if let ParentRole::Gateway {
            group,
            routes: false,
        } = role
        {
            accepted = cond(
                "Accepted",
                "False",
                "NoMatchingParent",
                format!(
                    "group {group:?}, which implements this Gateway, does not route this service"
                ),
            );
        }
        match outcome {
            Err(p) => match p.condition() {
                ProblemCondition::Accepted(reason) => {
                    accepted = cond("Accepted", "False", reason, p.to_string())
                }
                ProblemCondition::ResolvedRefs(reason) => {
                    resolved = cond("ResolvedRefs", "False", reason, p.to_string())
                }
                ProblemCondition::Refused => {
                    confirmed = Some(cond(CONFIRMED, "False", "Refused", p.to_string()))
                }
            },
            Ok(Some(c)) => {
                let (status, reason, message) = c.condition();
                confirmed = Some(cond(CONFIRMED, status, reason, message));
            }
            Ok(None) => {}
        }
        let mut conditions = vec![accepted, resolved];
        conditions.extend(confirmed);
        out.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: controller.to_owned(),
            conditions,
            rest: Default::default(),
        });
    }
    out
}

/// `existing` with teal's entries replaced by `ours`: every other
/// controller's entry is kept as it is, in its place; a condition whose
/// status did not change keeps its `lastTransitionTime`; at most
/// [`MAX_STATUS_PARENTS`] entries (teal's last ones are dropped).
pub(crate) fn merge_entries(
    existing: &[RouteParentStatus],
    mut ours: Vec<RouteParentStatus>,
    controller: &str,
) -> Vec<RouteParentStatus> {
    for entry in &mut ours {
        let before = existing
            .iter()
            .find(|e| e.controller_name == controller && e.parent_ref == entry.parent_ref);
        let Some(before) = before else { continue };
        for c in &mut entry.conditions {
            if let Some(old) = before.conditions.iter().find(|o| o.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
        entry.rest = before.rest.clone();
    }
    let mut out: Vec<RouteParentStatus> = existing
        .iter()
        .filter(|e| e.controller_name != controller)
        .cloned()
        .collect();
    let room = MAX_STATUS_PARENTS.saturating_sub(out.len());
    out.extend(ours.into_iter().take(room));
    out
}

/// What the gates show of where a route's generation is.
pub(crate) fn route_state(outcome: Result<&Confirmation, &RouteProblem>) -> RouteState {
    match outcome {
        Ok(Confirmation::Pending { .. }) => RouteState::Pending,
        Ok(Confirmation::Confirmed { .. } | Confirmation::InEffect { .. }) => RouteState::Confirmed,
        Ok(Confirmation::RolledBack { .. }) => RouteState::RolledBack,
        Ok(Confirmation::Refused { .. }) => RouteState::Refused,
        Err(p) if p.condition() == ProblemCondition::Refused => RouteState::Refused,
        Err(_) => RouteState::NotApplied,
    }
}

/// The latest generation teal's entries on the route say every proxy
/// confirmed, if they say so (written before a restart, say).
pub(crate) fn recorded_confirmed(route: &HttpRoute, controller: &str) -> Option<i64> {
    let status = route.status.as_ref()?;
    status
        .parents
        .iter()
        .filter(|e| e.controller_name == controller)
        .flat_map(|e| &e.conditions)
        .filter(|c| c.type_ == CONFIRMED && c.status == "True")
        .filter_map(|c| c.observed_generation)
        .max()
}

/// The generation teal last recorded as rolled back on the route, if its
/// `Confirmed` condition says so: that generation is not applied again
/// (after a restart, say) until the spec changes. A refused one is: it
/// changed nothing, and what refused it may have changed.
pub(crate) fn recorded_failure(route: &HttpRoute, controller: &str) -> Option<i64> {
    let status = route.status.as_ref()?;
    status
        .parents
        .iter()
        .filter(|e| e.controller_name == controller)
        .flat_map(|e| &e.conditions)
        .find(|c| c.type_ == CONFIRMED && c.reason == "RolledBack")
        .and_then(|c| c.observed_generation)
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
