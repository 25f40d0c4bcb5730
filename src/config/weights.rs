//! Every service's traffic split, as the rollout decides it and the
//! translation to Envoy resources reads it, and the one rule a split must
//! follow ([`Weights::check`]).
//!
//! What needs the config to work out (the starting split of each
//! service, a split checked against the config's fleets, the split
//! translation uses) is implemented next to the config, in
//! `config::translate`, so this module depends on nothing of the config.

use std::collections::{BTreeMap, BTreeSet};

/// Traffic split per service: fleet → weight, the weights of a service
/// summing to [`Weights::TOTAL`] (100, so weights read as percentages).
///
/// Fleets that a service's entry leaves out get 0. A service without an
/// entry, or whose entry no longer fits the config (an unknown fleet, a
/// sum other than 100), is translated with its config `live` fleet at 100;
/// [`Weights::set`] refuses such entries in the first place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weights {
    services: BTreeMap<String, BTreeMap<String, u32>>,
    /// Fleets retired per service: their clusters stay (so routes and
    /// listeners never change), with no endpoints.
    retired: BTreeMap<String, BTreeSet<String>>,
}

/// Why a split was refused, by [`Weights::check`] or [`Weights::set`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeightsError {
    /// The service is not in the config.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// The fleet is not one of the service's fleets.
    #[error("service {service:?} has no fleet {fleet:?}")]
    UnknownFleet {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
    },
    /// The weights do not add up to [`Weights::TOTAL`].
    #[error(
        "weights of service {service:?} must add up to {total}, these add up to {sum}",
        total = Weights::TOTAL
    )]
    BadSum {
        /// The service.
        service: String,
        /// What they add up to.
        sum: u64,
    },
}

impl Weights {
    /// What the weights of one service add up to.
    pub const TOTAL: u32 = 100;

    /// Checks that `split` is a valid split of `service`, whose fleets are
    /// the names for which `has_fleet` holds: it names only those fleets
    /// (fleets it leaves out get 0), and its weights add up to
    /// [`Weights::TOTAL`].
    ///
    /// This is the one place the rule lives: [`Weights::set`] and the
    /// rollout planner both call it. It never returns
    /// [`WeightsError::UnknownService`]; finding the service is the
    /// caller's job.
    pub(crate) fn check(
        service: &str,
        has_fleet: impl Fn(&str) -> bool,
        split: &BTreeMap<String, u32>,
    ) -> Result<(), WeightsError> {
        if let Some(fleet) = split.keys().find(|f| !has_fleet(f)) {
            return Err(WeightsError::UnknownFleet {
                service: service.to_owned(),
                fleet: fleet.clone(),
            });
        }
        let sum: u64 = split.values().map(|w| u64::from(*w)).sum();
        if sum != u64::from(Self::TOTAL) {
            return Err(WeightsError::BadSum {
                service: service.to_owned(),
                sum,
            });
        }
        Ok(())
    }

    /// Stores `service`'s split naming every one of its fleets, already
    /// checked by the caller.
    pub(crate) fn insert_full(&mut self, service: &str, full: BTreeMap<String, u32>) {
        self.services.insert(service.to_owned(), full);
    }

    /// Sets which fleets of `service` are retired (served with no
    /// endpoints).
    pub(crate) fn set_retired(&mut self, service: &str, fleets: BTreeSet<String>) {
        if fleets.is_empty() {
            self.retired.remove(service);
        } else {
            self.retired.insert(service.to_owned(), fleets);
        }
    }

    /// Whether `fleet` of `service` is retired.
    pub(crate) fn is_retired(&self, service: &str, fleet: &str) -> bool {
        self.retired.get(service).is_some_and(|f| f.contains(fleet))
    }

    /// One service's split as stored, if any.
    pub(crate) fn get(&self, service: &str) -> Option<&BTreeMap<String, u32>> {
        self.services.get(service)
    }
}
