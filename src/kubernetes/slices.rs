//! From `discovery.k8s.io/v1` EndpointSlices to teal endpoints: pure
//! functions, no I/O.
//!
//! An endpoint is taken the way kube-proxy takes it, following the
//! conditions' documentation:
//!
//! - `ready` unset means ready; `serving` unset means "as `ready`";
//!   `terminating` unset means not terminating.
//! - The fleet is its endpoints that are **ready, serving and not
//!   terminating**. `ready` alone is not enough: a Service with
//!   `publishNotReadyAddresses` has every endpoint `ready`, and only
//!   `serving` tells whether the pod passes its readiness probe; and a
//!   terminating pod is on its way out, whatever it says. kube-proxy falls
//!   back to serving terminating endpoints when a Service has no ready
//!   one; teal does not: a blue/green fleet with no ready endpoint is a
//!   fleet that must not take traffic, and a flip to it is refused.
//! - An endpoint's first address is the one used (the others are the
//!   same pod's, and "clients may choose to only use the first element");
//!   `FQDN` slices are skipped: Envoy does not resolve EDS host names.
//! - The port is the slices' only TCP port, or the one named (or
//!   numbered) in the config; each slice says its own number, since pods
//!   behind one Service may map a port name to different numbers.
//! - An address in several slices (a pod moving between slices) counts
//!   once, usable if any slice says so.
//!
//! Each slice is reduced on arrival to a compact `SliceEndpoints` (what
//! the watcher keeps), and `fleet_endpoints` combines them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{Endpoint, KubernetesPort};

/// The longest `zone` taken (a Kubernetes label value is at most 63
/// bytes; anything longer did not come from a real cluster).
const MAX_ZONE_BYTES: usize = 63;

/// Why a slice, or a fleet's set of slices, was refused. The watcher
/// keeps the fleet's last good endpoints and logs this.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// No port named, and the slice has several TCP ports.
    #[error("slice {slice} has {count} TCP ports; name one in `port`")]
    AmbiguousPort {
        /// The slice's name.
        slice: String,
        /// How many TCP ports it lists.
        count: usize,
    },
    /// The slice has endpoints but not the port asked for.
    #[error("slice {slice} has no TCP port {port}")]
    NoSuchPort {
        /// The slice's name.
        slice: String,
        /// The port asked for (`-` when none was, and the slice has none).
        port: String,
    },
    /// A port number outside 1 to 65535.
    #[error("slice {slice} lists port number {number}")]
    BadPort {
        /// The slice's name.
        slice: String,
        /// The number.
        number: i32,
    },
    /// An address that is not an IP of the slice's family.
    #[error("slice {slice} has an endpoint with address \"{address}\", not an {family} address")]
    BadAddress {
        /// The slice's name.
        slice: String,
        /// The address, escaped and cut.
        address: String,
        /// The slice's `addressType`.
        family: String,
    },
    /// A zone that no cluster would send.
    #[error("slice {slice} has an endpoint with zone \"{zone}\", not a label value")]
    BadZone {
        /// The slice's name.
        slice: String,
        /// The zone, escaped and cut.
        zone: String,
    },
    /// More endpoints than `--kube-max-endpoints`.
    #[error("more than {limit} endpoints (--kube-max-endpoints)")]
    TooManyEndpoints {
        /// The `--kube-max-endpoints` value.
        limit: usize,
    },
}

/// One endpoint of a slice, as much as teal needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceEntry {
    /// The first address and the chosen port.
    pub(crate) address: SocketAddr,
    /// Ready, serving and not terminating: it may take traffic.
    pub(crate) usable: bool,
    pub(crate) zone: Option<String>,
}

/// What one slice contributes to its fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SliceEndpoints {
    /// Its endpoints, in the slice's order.
    pub(crate) entries: Vec<SliceEntry>,
}

/// A fleet's endpoints, from all its slices: sorted by address, each
/// once, weight 1.
pub type FleetEndpoints = Vec<Endpoint>;

/// Reduces one slice to its entries for `port`, refusing it past
/// `max_endpoints` entries (checked before anything is copied).
pub(crate) fn slice_endpoints(
    slice: &EndpointSlice,
    port: Option<&KubernetesPort>,
    max_endpoints: usize,
) -> Result<SliceEndpoints, SliceError> {
    let name = || crate::text::safe(slice.metadata.name.as_deref().unwrap_or(""), 253);
    let family = slice.address_type.as_str();
    if !matches!(family, "IPv4" | "IPv6") || slice.endpoints.is_empty() {
        return Ok(SliceEndpoints::default());
    }
    if slice.endpoints.len() > max_endpoints {
        return Err(SliceError::TooManyEndpoints {
            limit: max_endpoints,
        });
    }
    let number = slice_port(slice, port, &name)?;
    let mut entries = Vec::with_capacity(slice.endpoints.len());
    for e in &slice.endpoints {
        // The API server requires at least one address; an endpoint
        // without one cannot be reached and is left out.
        let Some(first) = e.addresses.first() else {
            continue;
        };
        let ip = match first.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv4() == (family == "IPv4") => ip,
            _ => {
                return Err(SliceError::BadAddress {
                    slice: name(),
                    address: crate::text::safe(first, 64),
                    family: family.to_owned(),
                });
            }
        };
        let zone = match &e.zone {
            Some(z) if z.is_empty() => None,
            Some(z) if is_label_value(z) => Some(z.clone()),
            Some(z) => {
                return Err(SliceError::BadZone {
                    slice: name(),
                    zone: crate::text::safe(z, 80),
                });
            }
            None => None,
        };
        let c = e.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        entries.push(SliceEntry {
            address: SocketAddr::new(ip, number),
            usable: ready && serving && !terminating,
            zone,
        });
    }
    Ok(SliceEndpoints { entries })
}

/// The number of the slice's port the fleet takes.
fn slice_port(
    slice: &EndpointSlice,
    port: Option<&KubernetesPort>,
    name: &dyn Fn() -> String,
) -> Result<u16, SliceError> {
    // `protocol` unset means TCP; UDP and SCTP ports are not Envoy's to
    // balance here.
    let tcp: Vec<_> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    let found = match port {
        None if tcp.len() > 1 => {
            return Err(SliceError::AmbiguousPort {
                slice: name(),
                count: tcp.len(),
            });
        }
        None => tcp.first().copied(),
        Some(KubernetesPort::Name(n)) => tcp
            .iter()
            .find(|p| p.name.as_deref() == Some(n.as_str()))
            .copied(),
        Some(KubernetesPort::Number(n)) => {
            tcp.iter().find(|p| p.port == Some(i32::from(*n))).copied()
        }
    };
    let no_such = || SliceError::NoSuchPort {
        slice: name(),
        port: port.map_or_else(|| "-".to_owned(), ToString::to_string),
    };
    // A port without a number means "every port" (a headless Service
    // without ports): nothing teal can send traffic to.
    let number = found.ok_or_else(no_such)?.port.ok_or_else(no_such)?;
    u16::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| SliceError::BadPort {
            slice: name(),
            number,
        })
}

/// A Kubernetes label value: at most 63 bytes of letters, digits, `-`,
/// `_` and `.`.
fn is_label_value(s: &str) -> bool {
    s.len() <= MAX_ZONE_BYTES
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Combines a fleet's slices into its usable endpoints; refused past
/// `max_endpoints` addresses (usable or not, so that the bound holds
/// whatever the conditions).
pub(crate) fn fleet_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a SliceEndpoints>,
    max_endpoints: usize,
) -> Result<FleetEndpoints, SliceError> {
    let mut best: BTreeMap<SocketAddr, &SliceEntry> = BTreeMap::new();
    for entry in slices.into_iter().flat_map(|s| &s.entries) {
        // An address in two slices (a pod moving over) counts once, and
        // usable if either says so.
        match best.get(&entry.address) {
            Some(have) if have.usable || !entry.usable => {}
            _ => {
                best.insert(entry.address, entry);
            }
        }
        if best.len() > max_endpoints {
            return Err(SliceError::TooManyEndpoints {
                limit: max_endpoints,
            });
        }
    }
    Ok(best
        .values()
        .filter(|e| e.usable)
        .map(|e| Endpoint {
            address: e.address,
            weight: 1,
            zone: e.zone.clone(),
        })
        .collect())
}

/// [`slice_endpoints`] and [`fleet_endpoints`] over whole slices: what a
/// fleet is given these slices.
#[cfg(test)]
pub(crate) fn translate<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: Option<&KubernetesPort>,
    max_endpoints: usize,
) -> Result<FleetEndpoints, SliceError> {
    let reduced = slices
        .into_iter()
        .map(|s| slice_endpoints(s, port, max_endpoints))
        .collect::<Result<Vec<_>, _>>()?;
    fleet_endpoints(&reduced, max_endpoints)
}

#[cfg(test)]
#[path = "slices_tests.rs"]
mod tests;
