//! Registered endpoints: the fleets a deploy pipeline or the instances
//! themselves fill through the admin API (`endpoints: registered`).
//!
//! Everything here is pure: `apply` turns a fleet's registrations and a
//! [`Request`] into the new registrations, `Registrations::expire`
//! drops those whose TTL ran out at a `now` it is given. The controller
//! saves the result in the durable state (so through whichever store
//! teal uses) and serves it through its one entry point for endpoints
//! from outside the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Endpoint, EndpointOverlay, EndpointSetError, check_endpoints};

/// How many endpoint changes are kept per service; older ones go.
pub(crate) const LOG_LIMIT: usize = 100;
/// How many addresses one log entry lists per side; the count says how
/// many there were.
pub(crate) const LOG_ADDRESSES: usize = 16;
/// Shortest TTL accepted: a registration must outlive the request that
/// renews it.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);

/// One registered endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// IP address and port.
    pub(crate) address: SocketAddr,
    /// Load-balancing weight within the fleet, 1 to 10000.
    pub(crate) weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) zone: Option<String>,
    /// When it leaves unless renewed (`teal register --ttl`); `None` for
    /// endpoints set by `teal fleet set|add`, which stay until removed.
    #[serde(
        default,
        rename = "expires_unix_ms",
        with = "unix_ms::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) expires: Option<SystemTime>,
}

impl Registered {
    /// The endpoint it serves.
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address,
            weight: self.weight,
            zone: self.zone.clone(),
        }
    }
}

/// What a client asks of a registered fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Replace the whole set (`teal fleet set`); no TTLs.
    Set(Vec<Registered>),
    /// Add endpoints, or update the weight and zone of ones already there
    /// (`teal fleet add`); no TTLs.
    Add(Vec<Registered>),
    /// Remove endpoints (`teal fleet remove`); each must be there.
    Remove(Vec<SocketAddr>),
    /// Add or renew endpoints that leave after `ttl` unless renewed again
    /// (`teal register`).
    Register {
        /// The endpoints.
        endpoints: Vec<Registered>,
        /// How long they stay without renewal.
        ttl: Duration,
    },
    /// Renew registrations that are there (the heartbeat RPC); an
    /// address that is not registered is refused, so the instance knows
    /// to register again.
    Heartbeat {
        /// The addresses.
        addresses: Vec<SocketAddr>,
        /// How long they stay without renewal.
        ttl: Duration,
    },
    /// Remove endpoints if they are there (`teal deregister`; an instance
    /// shutting down twice is not an error).
    Deregister(Vec<SocketAddr>),
}

impl Request {
    /// The verb its log entry records.
    pub(crate) fn verb(&self) -> EndpointVerb {
        match self {
            Request::Set(_) => EndpointVerb::Set,
            Request::Add(_) => EndpointVerb::Add,
            Request::Remove(_) => EndpointVerb::Remove,
            Request::Register { .. } | Request::Heartbeat { .. } => EndpointVerb::Register,
            Request::Deregister(_) => EndpointVerb::Deregister,
        }
    }
}

/// What changed a registered fleet, as its log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EndpointVerb {
    /// `teal fleet set`.
    Set,
    /// `teal fleet add`.
    Add,
    /// `teal fleet remove`.
    Remove,
    /// `teal register` (a renewal that changes nothing is not logged).
    Register,
    /// `teal deregister`.
    Deregister,
    /// A registration's TTL ran out.
    Expire,
}

impl EndpointVerb {
    /// The verb as `teal fleet show` prints it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndpointVerb::Set => "set",
            EndpointVerb::Add => "add",
            EndpointVerb::Remove => "remove",
            EndpointVerb::Register => "register",
            EndpointVerb::Deregister => "deregister",
            EndpointVerb::Expire => "expire",
        }
    }
}

/// One change of a registered fleet, with who made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EndpointChange {
    pub(crate) fleet: String,
    /// What kind of change.
    pub(crate) verb: EndpointVerb,
    /// Who (the admin token's name; `teal` for expiry).
    pub(crate) actor: String,
    #[serde(rename = "at_unix_ms", with = "unix_ms")]
    pub(crate) at: SystemTime,
    /// Addresses that joined, at most [`LOG_ADDRESSES`].
    pub(crate) added: Vec<SocketAddr>,
    pub(crate) added_count: usize,
    /// Addresses that left, at most [`LOG_ADDRESSES`].
    pub(crate) removed: Vec<SocketAddr>,
    pub(crate) removed_count: usize,
}

impl EndpointChange {
    /// The entry for a change from `before` to `after`.
    pub(crate) fn between(
        fleet: &str,
        verb: EndpointVerb,
        actor: &str,
        at: SystemTime,
        before: &[Registered],
        after: &[Registered],
    ) -> EndpointChange {
        let added: Vec<SocketAddr> = after
            .iter()
            .filter(|a| !before.iter().any(|b| b.address == a.address))
            .map(|a| a.address)
            .collect();
        let removed: Vec<SocketAddr> = before
            .iter()
            .filter(|b| !after.iter().any(|a| a.address == b.address))
            .map(|b| b.address)
            .collect();
        EndpointChange {
            fleet: fleet.to_owned(),
            verb,
            actor: actor.to_owned(),
            at,
            added_count: added.len(),
            added: added.into_iter().take(LOG_ADDRESSES).collect(),
            removed_count: removed.len(),
            removed: removed.into_iter().take(LOG_ADDRESSES).collect(),
        }
    }
}

/// Why a request is refused; nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistrationError {
    /// The resulting set breaks the rules file endpoints follow, or the
    /// per-fleet limit.
    #[error("{0}")]
    Endpoints(#[from] EndpointSetError),
    /// The request names an address twice.
    #[error("endpoint {0} is given twice")]
    Repeated(SocketAddr),
    /// Removing or renewing an address that is not registered.
    #[error("endpoint {address} is not registered in fleet {fleet:?}{hint}")]
    NotRegistered {
        fleet: String,
        address: SocketAddr,
        /// What to do instead.
        hint: &'static str,
    },
    /// A TTL out of bounds.
    #[error(
        "a TTL of {}s is not from {}s to {}s (--max-register-ttl)",
        .ttl.as_secs(), MIN_TTL.as_secs(), .max.as_secs()
    )]
    Ttl {
        /// The TTL asked for.
        ttl: Duration,
        max: Duration,
    },
    /// A request with nothing in it.
    #[error("no endpoints given")]
    Empty,
    /// An address no fleet means.
    #[error(
        "endpoint {address} is {why}: no fleet means it (start teal serve with \
         --allow-any-endpoint-address to allow it)"
    )]
    Address {
        address: SocketAddr,
        why: AddressError,
    },
}

/// Bounds on endpoints from outside the file, each a `teal serve` flag
/// with a row in the limits table (docs/limits.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Most endpoints one fleet may have (`--max-fleet-endpoints`).
    pub max_fleet_endpoints: usize,
    /// Longest TTL a registration may ask for (`--max-register-ttl`).
    pub max_ttl: Duration,
    /// Accept addresses no fleet normally means (`AddressError`):
    /// `--allow-any-endpoint-address`.
    pub allow_any_address: bool,
    /// teal's own admin address, refused as an endpoint (on it or on
    /// loopback) unless `allow_any_address`; set by `teal serve` once the
    /// port is bound.
    pub admin_addr: Option<SocketAddr>,
}

/// Why an address is refused as a registered endpoint by default: no fleet
/// means it, and a pipeline (or a token holder) that registered it would
/// send a fleet's traffic, with its headers, where it must not go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddressError {
    /// 169.254.0.0/16 or fe80::/10: cloud metadata services live there.
    LinkLocal,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// teal's own admin API.
    TealAdmin,
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressError::LinkLocal => {
                "a link-local address (where cloud metadata services answer)"
            }
            AddressError::Multicast => "a multicast address",
            AddressError::Broadcast => "the broadcast address",
            AddressError::TealAdmin => "teal's own admin API",
        })
    }
}

impl EndpointLimits {
    /// Why `address` is refused as an endpoint, if it is.
    pub(crate) fn refuses(&self, address: SocketAddr) -> Option<AddressError> {
        if self.allow_any_address {
            return None;
        }
        let ip = match address.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        let why = match ip {
            std::net::IpAddr::V4(v4) if v4.is_link_local() => Some(AddressError::LinkLocal),
            std::net::IpAddr::V4(v4) if v4.is_multicast() => Some(AddressError::Multicast),
            std::net::IpAddr::V4(v4) if v4.is_broadcast() => Some(AddressError::Broadcast),
            std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
                Some(AddressError::LinkLocal)
            }
            std::net::IpAddr::V6(v6) if v6.is_multicast() => Some(AddressError::Multicast),
            _ => None,
        };
        let admin = self.admin_addr.is_some_and(|admin| {
            address.port() == admin.port() && (ip.is_loopback() || ip == admin.ip())
        });
        why.or(admin.then_some(AddressError::TealAdmin))
    }
}

impl EndpointLimits {
    /// Default of `--max-fleet-endpoints`: well above the fleets teal is
    /// built for, low enough that one fleet cannot make an EDS push
    /// megabytes large or the state file huge.
    pub(crate) const DEFAULT_MAX_FLEET_ENDPOINTS: usize = 1000;
    /// Default of `--max-register-ttl`: an instance that stopped renewing
    /// leaves within the hour at most.
    pub(crate) const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
}

impl Default for EndpointLimits {
    fn default() -> EndpointLimits {
        EndpointLimits {
            max_fleet_endpoints: EndpointLimits::DEFAULT_MAX_FLEET_ENDPOINTS,
            max_ttl: EndpointLimits::DEFAULT_MAX_TTL,
            allow_any_address: false,
            admin_addr: None,
        }
    }
}

/// A fleet's registrations after `request`, at `now`: checked whole (the
/// set as file endpoints are, the limits), or refused with nothing
/// changed.
pub(crate) fn apply(
    fleet: &str,
    current: &[Registered],
    request: &Request,
    now: SystemTime,
    limits: &EndpointLimits,
) -> Result<Vec<Registered>, RegistrationError> {
    let check_ttl = |ttl: Duration| {
        if ttl < MIN_TTL || ttl > limits.max_ttl {
            Err(RegistrationError::Ttl {
                ttl,
                max: limits.max_ttl,
            })
        } else {
            Ok(now.checked_add(ttl))
        }
    };
    let not_registered =
        |address: SocketAddr, hint: &'static str| RegistrationError::NotRegistered {
            fleet: fleet.to_owned(),
            address,
            hint,
        };
    let addresses: Vec<SocketAddr> = match request {
        Request::Set(e) | Request::Add(e) | Request::Register { endpoints: e, .. } => {
            e.iter().map(|r| r.address).collect()
        }
        Request::Remove(a) | Request::Deregister(a) | Request::Heartbeat { addresses: a, .. } => {
            a.clone()
        }
    };
    if addresses.is_empty() && !matches!(request, Request::Set(_)) {
        return Err(RegistrationError::Empty);
    }
    // Bounded before the quadratic look for repeats below.
    if addresses.len() > limits.max_fleet_endpoints {
        return Err(EndpointSetError::TooMany {
            count: addresses.len(),
            max: limits.max_fleet_endpoints,
        }
        .into());
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(a) = addresses.iter().find(|a| !seen.insert(**a)) {
        return Err(RegistrationError::Repeated(*a));
    }
    // Only what the request adds: one registered before the rule (or with
    // the flag) can still be removed, renewed, or kept by a change of
    // another endpoint.
    if let Request::Set(e) | Request::Add(e) | Request::Register { endpoints: e, .. } = request
        && let Some((address, why)) = e
            .iter()
            .find_map(|r| limits.refuses(r.address).map(|why| (r.address, why)))
    {
        return Err(RegistrationError::Address { address, why });
    }
    let mut next = current.to_vec();
    match request {
        Request::Set(endpoints) => {
            next = endpoints
                .iter()
                .map(|e| Registered {
                    expires: None,
                    ..e.clone()
                })
                .collect();
        }
        Request::Add(endpoints) => upsert(&mut next, endpoints, None),
        Request::Register { endpoints, ttl } => upsert(&mut next, endpoints, check_ttl(*ttl)?),
        Request::Remove(addresses) => {
            if let Some(a) = addresses
                .iter()
                .find(|a| !next.iter().any(|r| r.address == **a))
            {
                return Err(not_registered(*a, ""));
            }
            next.retain(|r| !addresses.contains(&r.address));
        }
        Request::Deregister(addresses) => next.retain(|r| !addresses.contains(&r.address)),
        Request::Heartbeat { addresses, ttl } => {
            let expires = check_ttl(*ttl)?;
            for a in addresses {
                let r = next
                    .iter_mut()
                    .find(|r| r.address == *a)
                    .ok_or_else(|| not_registered(*a, "; register it again"))?;
                // A heartbeat renews a registration; it does not make an
                // endpoint set by a pipeline start to expire.
                if r.expires.is_some() {
                    r.expires = expires;
                }
            }
        }
    }
    let endpoints: Vec<Endpoint> = next.iter().map(Registered::endpoint).collect();
    check_endpoints(&endpoints, limits.max_fleet_endpoints)?;
    Ok(next)
}

/// Adds `endpoints`, or updates those already there in place.
fn upsert(next: &mut Vec<Registered>, endpoints: &[Registered], expires: Option<SystemTime>) {
    for e in endpoints {
        let e = Registered {
            expires,
            ..e.clone()
        };
        match next.iter_mut().find(|r| r.address == e.address) {
            Some(r) => *r = e,
            None => next.push(e),
        }
    }
}

/// A fleet as `teal fleet show` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetView {
    pub(crate) service: String,
    pub(crate) fleet: String,
    /// Where its endpoints come from (`file`, `registered`, ...).
    pub(crate) source: String,
    /// Its share of the service's traffic, in percent.
    pub(crate) weight: u32,
    /// Whether it is retired (it serves no endpoints).
    pub(crate) retired: bool,
    /// Its endpoints; only registered ones can have an expiry.
    pub(crate) endpoints: Vec<Registered>,
    /// Its recent changes, newest first (registered fleets only).
    pub(crate) changes: Vec<EndpointChange>,
    /// The version being served; `None` before the first commit.
    pub(crate) version: Option<crate::rollout::Version>,
}

/// Every registered fleet's endpoints, and the log of their changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registrations {
    /// Per service, per fleet, in registration order.
    #[serde(default)]
    pub(crate) fleets: BTreeMap<String, BTreeMap<String, Vec<Registered>>>,
    /// Per service, oldest first, at most [`LOG_LIMIT`] entries.
    #[serde(default)]
    pub(crate) log: BTreeMap<String, Vec<EndpointChange>>,
}

impl Registrations {
    /// Whether nothing was ever registered (the field is then left out of
    /// the state file).
    pub(crate) fn is_empty(&self) -> bool {
        self.fleets.is_empty() && self.log.is_empty()
    }

    pub(crate) fn get(&self, service: &str, fleet: &str) -> &[Registered] {
        self.fleets
            .get(service)
            .and_then(|f| f.get(fleet))
            .map_or(&[], Vec::as_slice)
    }

    /// Replaces a fleet's registrations.
    pub(crate) fn set(&mut self, service: &str, fleet: &str, registered: Vec<Registered>) {
        if registered.is_empty() {
            if let Some(f) = self.fleets.get_mut(service) {
                f.remove(fleet);
                if f.is_empty() {
                    self.fleets.remove(service);
                }
            }
        } else {
            self.fleets
                .entry(service.to_owned())
                .or_default()
                .insert(fleet.to_owned(), registered);
        }
    }

    /// Appends to `service`'s log, dropping the oldest beyond [`LOG_LIMIT`].
    pub(crate) fn record(&mut self, service: &str, change: EndpointChange) {
        let log = self.log.entry(service.to_owned()).or_default();
        log.push(change);
        let excess = log.len().saturating_sub(LOG_LIMIT);
        log.drain(..excess);
    }

    /// The endpoints every registered fleet serves, as the controller lays
    /// them over the config.
    pub(crate) fn overlay(&self) -> EndpointOverlay {
        let mut overlay = EndpointOverlay::new();
        for (service, fleets) in &self.fleets {
            for (fleet, registered) in fleets {
                overlay.set(
                    service,
                    fleet,
                    registered.iter().map(Registered::endpoint).collect(),
                );
            }
        }
        overlay
    }

    /// When the next registration runs out, if any has a TTL.
    pub(crate) fn next_expiry(&self) -> Option<SystemTime> {
        self.fleets
            .values()
            .flat_map(BTreeMap::values)
            .flatten()
            .filter_map(|r| r.expires)
            .min()
    }

    /// Drops every registration whose TTL ran out by `now`, logging each
    /// fleet's as one `expire` change; returns the (service, fleet) pairs
    /// that changed.
    pub(crate) fn expire(&mut self, now: SystemTime) -> Vec<(String, String)> {
        let mut changed = Vec::new();
        for (service, fleets) in &self.fleets {
            for (fleet, registered) in fleets {
                if registered
                    .iter()
                    .any(|r| r.expires.is_some_and(|t| t <= now))
                {
                    changed.push((service.clone(), fleet.clone()));
                }
            }
        }
        for (service, fleet) in &changed {
            let before = self.get(service, fleet).to_vec();
            let after: Vec<Registered> = before
                .iter()
                .filter(|r| r.expires.is_none_or(|t| t > now))
                .cloned()
                .collect();
            let entry =
                EndpointChange::between(fleet, EndpointVerb::Expire, "teal", now, &before, &after);
            self.set(service, fleet, after);
            self.record(service, entry);
        }
        changed
    }
}

/// `SystemTime` as unix milliseconds, as the rest of the state file
/// writes times. Kept here rather than shared with the rollout's, so that
/// this module depends on nothing above the config.
mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    fn to_ms(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn from_ms<E: serde::de::Error>(ms: u64) -> Result<SystemTime, E> {
        UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| E::custom(format!("time {ms} ms from 1970 is out of range")))
    }

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(to_ms(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        from_ms(u64::deserialize(d)?)
    }

    pub(super) mod opt {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&to_ms(*t)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Option::<u64>::deserialize(d)?.map(from_ms).transpose()
        }
    }
}

#[cfg(test)]
#[path = "registration_tests.rs"]
mod tests;
