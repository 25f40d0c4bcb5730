//! The config most unit tests start from, and the knobs they turn.
//!
//! [`web`] is service `web`, live on blue, with fleets blue
//! (`127.0.0.1:1`) and green (`127.0.0.1:2`), behind an edge listener
//! (`127.0.0.1:10000`) that routes everything to it. Each method changes
//! one thing; [`ConfigFixture::yaml`] is the text, for tests of the
//! parser, and [`ConfigFixture::config`] the parsed config.
//!
//! Tests that need a different config say how it differs from this one,
//! rather than each carrying a copy of the whole file that drifts.

use super::Config;

/// A config being built; see the module doc.
#[derive(Clone, Debug)]
pub(crate) struct ConfigFixture {
    services: Vec<Service>,
    /// A sidecar listener taking every service, instead of an edge
    /// listener routing to them.
    sidecar: bool,
}

#[derive(Clone, Debug)]
struct Service {
    name: String,
    /// The prefix its route on the edge listener matches.
    prefix: String,
    protocol: Option<String>,
    /// Each fleet's name and the lines of its body.
    fleets: Vec<(String, String)>,
    /// The lines of its `checks:`, if any.
    checks: Option<String>,
    /// The lines of its `analysis:`, if any.
    analysis: Option<String>,
}

/// `web` on blue and green; see the module doc.
pub(crate) fn web() -> ConfigFixture {
    ConfigFixture {
        services: Vec::new(),
        sidecar: false,
    }
    .service("web", "/")
    .fleet("web", "blue", "endpoints: [127.0.0.1:1]")
    .fleet("web", "green", "endpoints: [127.0.0.1:2]")
}

impl ConfigFixture {
    /// Adds `name`, live on blue, with no fleets yet, routed at `prefix`.
    pub(crate) fn service(mut self, name: &str, prefix: &str) -> ConfigFixture {
        self.services.push(Service {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            protocol: None,
            fleets: Vec::new(),
            checks: None,
            analysis: None,
        });
        self
    }

    /// Drops `name` and its route.
    pub(crate) fn without_service(mut self, name: &str) -> ConfigFixture {
        self.services.retain(|s| s.name != name);
        self
    }

    /// Sets the body of `service`'s `fleet` (`endpoints: registered`, or
    /// several lines), adding the fleet if it has none by that name.
    pub(crate) fn fleet(mut self, service: &str, fleet: &str, body: &str) -> ConfigFixture {
        let fleets = &mut self.service_mut(service).fleets;
        match fleets.iter_mut().find(|(name, _)| name == fleet) {
            Some((_, b)) => *b = body.to_owned(),
            None => fleets.push((fleet.to_owned(), body.to_owned())),
        }
        self
    }

    pub(crate) fn without_fleet(mut self, service: &str, fleet: &str) -> ConfigFixture {
        self.service_mut(service)
            .fleets
            .retain(|(name, _)| name != fleet);
        self
    }

    /// Gives `service` these checks (`home: {path: /, status: 200}`, a
    /// line per check).
    pub(crate) fn checks(mut self, service: &str, checks: &str) -> ConfigFixture {
        self.service_mut(service).checks = Some(checks.to_owned());
        self
    }

    /// Gives `service` this `analysis:` (`max_error_ratio: 1%`, a line per
    /// key).
    pub(crate) fn analysis(mut self, service: &str, analysis: &str) -> ConfigFixture {
        self.service_mut(service).analysis = Some(analysis.to_owned());
        self
    }

    pub(crate) fn protocol(mut self, service: &str, protocol: &str) -> ConfigFixture {
        self.service_mut(service).protocol = Some(protocol.to_owned());
        self
    }

    /// Routes `service` at `prefix` instead.
    pub(crate) fn prefix(mut self, service: &str, prefix: &str) -> ConfigFixture {
        self.service_mut(service).prefix = prefix.to_owned();
        self
    }

    /// A sidecar listener taking every service instead of the edge one.
    pub(crate) fn sidecar(mut self) -> ConfigFixture {
        self.sidecar = true;
        self
    }

    /// The config file.
    pub(crate) fn yaml(&self) -> String {
        let mut y = String::from("services:\n");
        for s in &self.services {
            y.push_str(&format!("  {}:\n    live: blue\n", s.name));
            if let Some(p) = &s.protocol {
                y.push_str(&format!("    protocol: {p}\n"));
            }
            y.push_str("    fleets:\n");
            for (fleet, body) in &s.fleets {
                if body.is_empty() {
                    y.push_str(&format!("      {fleet}: {{}}\n"));
                } else {
                    y.push_str(&format!("      {fleet}:\n{}", indented(body, 8)));
                }
            }
            if let Some(checks) = &s.checks {
                y.push_str(&format!("    checks:\n{}", indented(checks, 6)));
            }
            if let Some(analysis) = &s.analysis {
                y.push_str(&format!("    analysis:\n{}", indented(analysis, 6)));
            }
        }
        y.push_str(
            "groups:\n  edge:\n    listeners:\n      public:\n        address: 127.0.0.1:10000\n",
        );
        if self.sidecar {
            let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            y.push_str(&format!(
                "        kind: sidecar\n        services: [{}]\n",
                names.join(", ")
            ));
        } else {
            y.push_str(
                "        kind: edge\n        virtual_hosts:\n          all:\n            \
                 domains: [\"*\"]\n            routes:\n",
            );
            // Longest prefix first: the first route that matches wins.
            let mut routes: Vec<&Service> = self.services.iter().collect();
            routes.sort_by_key(|s| std::cmp::Reverse(s.prefix.len()));
            for s in routes {
                y.push_str(&format!(
                    "              - {{prefix: {}, service: {}}}\n",
                    s.prefix, s.name
                ));
            }
        }
        y
    }

    /// The config, parsed; a fixture that does not parse is a broken test.
    pub(crate) fn config(&self) -> Config {
        let yaml = self.yaml();
        Config::parse(&yaml, "test.yaml")
            .unwrap_or_else(|d| panic!("the fixture does not parse: {d}\n{yaml}"))
    }

    fn service_mut(&mut self, name: &str) -> &mut Service {
        match self.services.iter_mut().find(|s| s.name == name) {
            Some(s) => s,
            None => panic!("the fixture has no service {name:?}"),
        }
    }
}

/// `text`'s lines, each indented by `by` spaces.
fn indented(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
}

// The module is test-only already, so its own tests need no cfg.
mod tests {
    use super::*;

    #[test]
    fn the_base_is_web_on_blue_behind_an_edge_listener() {
        let c = web().config();
        let web = &c.services["web"];
        assert_eq!(web.live, "blue");
        let blue: Vec<String> = web.fleets["blue"]
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(blue, ["127.0.0.1:1"]);
        assert_eq!(web.fleets.len(), 2);
        assert_eq!(c.services.len(), 1);
    }

    #[test]
    fn knobs_change_what_they_say_and_nothing_else() {
        let y = web()
            .service("api", "/api/")
            .fleet("api", "blue", "")
            .fleet("web", "green", "endpoints: registered")
            .checks("web", "home: {path: /, timeout: 1s}")
            .analysis("web", "max_error_ratio: 1%\nwindow: 5s")
            .yaml();
        assert!(
            y.contains("      green:\n        endpoints: registered\n"),
            "{y}"
        );
        assert!(
            y.contains("    checks:\n      home: {path: /, timeout: 1s}\n"),
            "{y}"
        );
        assert!(
            y.contains("    analysis:\n      max_error_ratio: 1%\n      window: 5s\n"),
            "{y}"
        );
        let api_route = y.find("prefix: /api/").expect("api routed");
        let web_route = y.find("prefix: /,").expect("web routed");
        assert!(api_route < web_route, "longest prefix first: {y}");
        let c = web().without_fleet("web", "green").sidecar().config();
        assert_eq!(c.services["web"].fleets.len(), 1);
    }
}
