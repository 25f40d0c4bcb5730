//! Whether a fleet is drained: no proxy of the groups routing its service
//! has a request in progress to it, by the proxies' own load reports.
//!
//! One rule serves the retirement that waits for it
//! ([`super::machine`]'s drain phase) and `teal status`: a proxy is idle
//! once its last `IDLE_REPORTS` (two) reports said nothing was in progress
//! to the fleet. One report is a snapshot: it can fall between the end of
//! one request and the start of the next. Of two in a row, an interval
//! apart, the second sees a request that started after the first, unless
//! it is over already. A proxy that reports no load is never idle: teal
//! cannot see what it carries, so it is named, not counted.

use std::sync::Arc;

use super::traffic::FleetTraffic;

/// Reports in a row with nothing in progress after which a proxy counts
/// as drained.
pub(crate) const IDLE_REPORTS: u32 = 2;

/// One proxy with requests in progress to the fleet, or not idle for
/// long enough yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draining {
    /// The proxy's node id.
    pub proxy: String,
    /// Requests in progress at its last report (0: it just went idle).
    pub in_flight: u64,
}

/// What the load reports say of one fleet's drain, over every proxy of
/// the groups routing its service (cordoned ones left out, as operations
/// leave them out of the confirmation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetDrain {
    /// The fleet.
    pub fleet: String,
    /// Proxies looked at.
    pub proxies: usize,
    /// Of them, idle for two reports in a row.
    pub idle: usize,
    /// Proxies not idle yet, the first few by node id.
    pub draining: Vec<Draining>,
    /// How many proxies are not idle yet (`draining` names only the first).
    pub draining_count: usize,
    /// Requests in progress over every proxy, at their last reports.
    pub in_flight: u64,
    /// Proxies with no load report of the fleet (no load stream, or none
    /// sent yet), the first few by node id.
    pub silent: Vec<String>,
    /// How many proxies report nothing.
    pub silent_count: usize,
}

impl FleetDrain {
    /// Every proxy idle (true with no proxy at all: none carries anything).
    pub fn is_drained(&self) -> bool {
        self.draining_count == 0 && self.silent_count == 0
    }

    /// The proxies not drained, draining ones and silent ones together,
    /// the first `named` by node id.
    pub(crate) fn not_drained(&self, named: usize) -> Vec<String> {
        let mut all: Vec<&str> = self
            .draining
            .iter()
            .map(|d| d.proxy.as_str())
            .chain(self.silent.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.into_iter().take(named).map(str::to_owned).collect()
    }
}

/// Judges `traffic` by the rule above, naming at most `named` proxies of
/// each kind.
pub(crate) fn judge(traffic: &FleetTraffic, named: usize) -> FleetDrain {
    let mut drain = FleetDrain {
        fleet: traffic.fleet.clone(),
        proxies: traffic.proxies.len(),
        ..FleetDrain::default()
    };
    let mut draining: Vec<(&Arc<str>, u64)> = Vec::new();
    let mut silent: Vec<&Arc<str>> = Vec::new();
    for p in &traffic.proxies {
        match &p.load {
            None => silent.push(&p.id),
            Some(c) if c.in_progress == 0 && c.idle_reports >= IDLE_REPORTS => drain.idle += 1,
            Some(c) => {
                drain.in_flight = drain.in_flight.saturating_add(c.in_progress);
                draining.push((&p.id, c.in_progress));
            }
        }
    }
    drain.draining_count = draining.len();
    drain.silent_count = silent.len();
    draining.sort_unstable();
    silent.sort_unstable();
    drain.draining = draining
        .into_iter()
        .take(named)
        .map(|(id, in_flight)| Draining {
            proxy: id.to_string(),
            in_flight,
        })
        .collect();
    drain.silent = silent
        .into_iter()
        .take(named)
        .map(|id| id.to_string())
        .collect();
    drain
}

impl std::fmt::Display for FleetDrain {
    /// What stands between the fleet and drained: `2 of 5 proxies idle;
    /// requests in flight on edge-1 (3), edge-2 (0); no load reports from
    /// edge-9`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} proxies idle", self.idle, self.proxies)?;
        if self.draining_count > 0 {
            f.write_str("; requests in flight on ")?;
            for (i, d) in self.draining.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{} ({})", d.proxy, d.in_flight)?;
            }
            more(f, self.draining_count, self.draining.len())?;
        }
        if self.silent_count > 0 {
            write!(f, "; no load reports from {}", self.silent.join(", "))?;
            more(f, self.silent_count, self.silent.len())?;
        }
        Ok(())
    }
}

fn more(f: &mut std::fmt::Formatter<'_>, all: usize, named: usize) -> std::fmt::Result {
    if all > named {
        write!(f, " and {} more", all - named)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::traffic::ProxyTraffic;
    use crate::xds::load::ClusterCounters;

    fn proxy(id: &str, load: Option<(u64, u32)>) -> ProxyTraffic {
        ProxyTraffic {
            id: id.into(),
            load: load.map(|(in_progress, idle_reports)| ClusterCounters {
                in_progress,
                idle_reports,
                ..ClusterCounters::default()
            }),
        }
    }

    fn blue(proxies: Vec<ProxyTraffic>) -> FleetTraffic {
        FleetTraffic {
            fleet: "blue".into(),
            proxies,
        }
    }

    #[test]
    fn a_proxy_is_drained_after_two_idle_reports_and_never_when_silent() {
        let d = judge(
            &blue(vec![
                proxy("c", Some((0, 2))),
                proxy("b", Some((0, 1))),
                proxy("a", Some((3, 0))),
                proxy("s", None),
            ]),
            20,
        );
        assert_eq!((d.proxies, d.idle, d.in_flight), (4, 1, 3));
        assert_eq!(
            d.draining,
            [
                Draining {
                    proxy: "a".into(),
                    in_flight: 3
                },
                Draining {
                    proxy: "b".into(),
                    in_flight: 0
                }
            ],
            "one idle report is not enough"
        );
        assert_eq!(d.silent, ["s"]);
        assert!(!d.is_drained());
        assert_eq!(d.not_drained(2), ["a", "b"]);
        assert_eq!(
            d.to_string(),
            "1 of 4 proxies idle; requests in flight on a (3), b (0); no load reports from s"
        );
        let d = judge(&blue(vec![proxy("c", Some((0, 2)))]), 20);
        assert!(d.is_drained());
        assert!(judge(&blue(vec![proxy("s", None)]), 20).silent_count == 1);
        assert!(
            judge(&blue(Vec::new()), 20).is_drained(),
            "no proxy carries it"
        );
    }

    #[test]
    fn a_large_fleet_names_the_first_proxies_and_counts_the_rest() {
        let all = (0..30)
            .map(|i| proxy(&format!("p{i:02}"), Some((1, 0))))
            .chain((0..25).map(|i| proxy(&format!("s{i:02}"), None)))
            .collect();
        let d = judge(&blue(all), 20);
        assert_eq!(
            (d.draining.len(), d.draining_count, d.in_flight),
            (20, 30, 30)
        );
        assert_eq!((d.silent.len(), d.silent_count), (20, 25));
        assert_eq!(d.draining[19].proxy, "p19");
        let text = d.to_string();
        assert!(text.contains("p19 (1) and 10 more"), "{text}");
        assert!(text.contains("s19 and 5 more"), "{text}");
    }
}
