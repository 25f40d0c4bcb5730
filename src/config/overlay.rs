//! Endpoints that do not come from the file, laid over a [`Config`].
//!
//! A fleet whose [`EndpointSource`] is not [`File`](EndpointSource::File)
//! is parsed with no endpoints; the controller keeps what its source
//! reported last in an [`EndpointOverlay`], and builds snapshots and runs
//! checks against [`Config::with_endpoints`]. Keeping the overlay apart
//! from the file's config means a reload of the file never forgets
//! registered endpoints, and a registration never rewrites the file.
//!
//! [`check_endpoints`] holds an endpoint set from outside to the rules the
//! parser applies to the file's (weights, zones, no address twice), so
//! that every endpoint teal serves passed the same checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::model::{Config, Endpoint, EndpointSource, MAX_ENDPOINT_WEIGHT, MAX_ZONE_BYTES};

/// Whole endpoint sets of some fleets of one service, by fleet name: what
/// a source hands the controller at once, so that fleets that changed
/// together reach proxies in one version.
pub(crate) type FleetSets = Vec<(String, Vec<Endpoint>)>;

/// The endpoints of fleets whose source is not the file, per service and
/// fleet, as their sources last reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EndpointOverlay {
    fleets: BTreeMap<String, BTreeMap<String, Vec<Endpoint>>>,
}

impl EndpointOverlay {
    /// An empty overlay: every non-file fleet has no endpoints.
    pub(crate) fn new() -> EndpointOverlay {
        EndpointOverlay::default()
    }

    /// The endpoints reported for a fleet, if any were.
    pub(crate) fn get(&self, service: &str, fleet: &str) -> Option<&[Endpoint]> {
        self.fleets
            .get(service)
            .and_then(|f| f.get(fleet))
            .map(Vec::as_slice)
    }

    /// Replaces a fleet's endpoints; returns whether anything changed. An
    /// empty set removes the fleet's entry.
    pub(crate) fn set(&mut self, service: &str, fleet: &str, endpoints: Vec<Endpoint>) -> bool {
        if self.get(service, fleet).unwrap_or_default() == endpoints.as_slice() {
            return false;
        }
        if endpoints.is_empty() {
            if let Some(fleets) = self.fleets.get_mut(service) {
                fleets.remove(fleet);
                if fleets.is_empty() {
                    self.fleets.remove(service);
                }
            }
        } else {
            self.fleets
                .entry(service.to_owned())
                .or_default()
                .insert(fleet.to_owned(), endpoints);
        }
        true
    }
}

impl Config {
    /// This config with the endpoints of every fleet whose source is not
    /// the file taken from `overlay` (none if it has no entry). Entries for
    /// file fleets, or for services and fleets the config does not have,
    /// are ignored: the file decides which fleets exist and where their
    /// endpoints come from.
    pub(crate) fn with_endpoints(&self, overlay: &EndpointOverlay) -> Config {
        let mut config = self.clone();
        for (service_name, service) in config.services.iter_mut() {
            for (fleet_name, fleet) in service.fleets.iter_mut() {
                if fleet.source.is_file() {
                    continue;
                }
                fleet.endpoints = overlay
                    .get(service_name, fleet_name)
                    .map(<[Endpoint]>::to_vec)
                    .unwrap_or_default();
            }
        }
        config
    }

    /// Where `service`'s `fleet` takes its endpoints from, if the config
    /// has that fleet.
    pub(crate) fn source_of(&self, service: &str, fleet: &str) -> Option<&EndpointSource> {
        self.services
            .get(service)
            .and_then(|s| s.fleets.get(fleet))
            .map(|f| &f.source)
    }
}

/// Why an endpoint set from outside the file is refused; nothing of it is
/// applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EndpointSetError {
    /// The same address twice.
    #[error("endpoint {0} is listed twice")]
    Duplicate(SocketAddr),
    /// A weight outside 1 to 10000.
    #[error("endpoint {address}: weight {weight} is not from 1 to {MAX_ENDPOINT_WEIGHT}")]
    Weight { address: SocketAddr, weight: u32 },
    /// An empty or overlong zone, or one with control, format (invisible,
    /// bidi) or separator characters ([`crate::text::is_plain`]).
    #[error("endpoint {address}: a zone must be 1 to {MAX_ZONE_BYTES} bytes of printable text")]
    Zone { address: SocketAddr },
    /// Port 0, or the unspecified address (0.0.0.0, ::), where no
    /// instance can be reached.
    #[error("endpoint {0}: not an address an instance can be reached at")]
    Unreachable(SocketAddr),
    /// More endpoints than a fleet may have.
    #[error("{count} endpoints is more than the limit of {max} per fleet (--max-fleet-endpoints)")]
    TooMany {
        /// How many were given.
        count: usize,
        max: usize,
    },
}

/// Checks an endpoint set from outside the file whole: at most `max`
/// endpoints, each address once, weights from 1 to 10000, zones of
/// printable text. The first problem is returned.
pub(crate) fn check_endpoints(endpoints: &[Endpoint], max: usize) -> Result<(), EndpointSetError> {
    if endpoints.len() > max {
        return Err(EndpointSetError::TooMany {
            count: endpoints.len(),
            max,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in endpoints {
        if e.address.port() == 0 || e.address.ip().is_unspecified() {
            return Err(EndpointSetError::Unreachable(e.address));
        }
        if !seen.insert(e.address) {
            return Err(EndpointSetError::Duplicate(e.address));
        }
        if !(1..=MAX_ENDPOINT_WEIGHT).contains(&e.weight) {
            return Err(EndpointSetError::Weight {
                address: e.address,
                weight: e.weight,
            });
        }
        if let Some(zone) = &e.zone
            && (zone.is_empty() || zone.len() > MAX_ZONE_BYTES || !crate::text::is_plain(zone))
        {
            return Err(EndpointSetError::Zone { address: e.address });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures;

    fn ep(addr: &str) -> Endpoint {
        Endpoint {
            address: addr.parse().expect("test address"),
            weight: 1,
            zone: None,
        }
    }

    #[test]
    fn the_overlay_fills_registered_fleets_only() {
        let config = fixtures::web()
            .fleet("web", "green", "endpoints: registered")
            .config();
        let fleets = &config.services["web"].fleets;
        assert_eq!(fleets["green"].source, EndpointSource::Registered);
        assert!(fleets["green"].endpoints.is_empty());

        let mut overlay = EndpointOverlay::new();
        assert!(overlay.set("web", "green", vec![ep("127.0.0.1:2")]));
        assert!(!overlay.set("web", "green", vec![ep("127.0.0.1:2")]));
        // The file decides blue's endpoints; an overlay entry is ignored.
        overlay.set("web", "blue", vec![ep("127.0.0.1:9")]);
        overlay.set("nope", "green", vec![ep("127.0.0.1:9")]);
        let laid = config.with_endpoints(&overlay);
        let fleets = &laid.services["web"].fleets;
        assert_eq!(fleets["green"].endpoints, vec![ep("127.0.0.1:2")]);
        assert_eq!(fleets["blue"].endpoints, vec![ep("127.0.0.1:1")]);

        assert!(overlay.set("web", "green", Vec::new()));
        assert_eq!(overlay.get("web", "green"), None);
        let laid = config.with_endpoints(&overlay);
        assert!(laid.services["web"].fleets["green"].endpoints.is_empty());
    }

    #[test]
    fn endpoint_sets_are_checked_like_the_file() {
        assert_eq!(check_endpoints(&[ep("127.0.0.1:2")], 1), Ok(()));
        assert_eq!(
            check_endpoints(&[ep("127.0.0.1:2"), ep("127.0.0.1:2")], 5),
            Err(EndpointSetError::Duplicate(
                "127.0.0.1:2".parse().expect("addr")
            ))
        );
        assert!(matches!(
            check_endpoints(&[ep("127.0.0.1:2"), ep("127.0.0.1:3")], 1),
            Err(EndpointSetError::TooMany { count: 2, max: 1 })
        ));
        let mut heavy = ep("127.0.0.1:2");
        heavy.weight = 10_001;
        assert!(matches!(
            check_endpoints(&[heavy], 5),
            Err(EndpointSetError::Weight { weight: 10_001, .. })
        ));
        let mut zoned = ep("127.0.0.1:2");
        zoned.zone = Some(String::new());
        assert!(matches!(
            check_endpoints(&[zoned.clone()], 5),
            Err(EndpointSetError::Zone { .. })
        ));
        for hidden in [
            "a\nb",
            "a\u{200b}b",
            "a\u{202e}b",
            "a\u{2028}b",
            "\u{feff}a",
            "a\u{2029}",
        ] {
            zoned.zone = Some(hidden.into());
            assert!(
                matches!(
                    check_endpoints(&[zoned.clone()], 5),
                    Err(EndpointSetError::Zone { .. })
                ),
                "{hidden:?}"
            );
        }
        zoned.zone = Some("eu-west-1a/ζώνη".into());
        assert!(check_endpoints(&[zoned], 5).is_ok(), "ordinary Unicode");
        assert!(matches!(
            check_endpoints(&[ep("0.0.0.0:80")], 5),
            Err(EndpointSetError::Unreachable(_))
        ));
    }
}
