//! The load report (LRS) flags of `teal serve`: how often proxies are
//! asked to report, and what a report may make teal hold. The bounds
//! have rows in the "Limits" table (docs/limits.md); their defaults and
//! why they are what they are live with [`LoadReportConfig`].

use std::time::Duration;

use clap::Args;

use crate::xds::LoadReportConfig;

/// Load reports (LRS) on the xDS port.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Load reports")]
pub(crate) struct LoadReportArgs {
    /// How often proxies are asked to report their traffic (LRS): a
    /// duration from 100ms to 60s. Shorter sees a release's errors and a
    /// fleet's drain sooner, at one small message per proxy per interval.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = interval)]
    pub(crate) load_report_interval: Duration,
    /// Largest load report message, in bytes; a larger one closes its
    /// stream with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024))]
    pub(crate) max_load_report_bytes: u64,
    /// Most clusters one load report may name; a report naming more is
    /// dropped (logged once per stream).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_load_report_clusters: u64,
    /// Most load reports one proxy's stream may send per second; the rest
    /// are dropped (logged once per stream).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) max_load_reports_per_second: u32,
}

fn interval(s: &str) -> Result<Duration, String> {
    super::parse::seconds_in(s, 0.1, 60.0)
}

impl LoadReportArgs {
    /// The xDS server's load report settings.
    pub(crate) fn config(&self) -> LoadReportConfig {
        LoadReportConfig {
            interval: self.load_report_interval,
            max_report_bytes: usize::try_from(self.max_load_report_bytes).unwrap_or(usize::MAX),
            max_report_clusters: usize::try_from(self.max_load_report_clusters)
                .unwrap_or(usize::MAX),
            max_reports_per_sec: self.max_load_reports_per_second,
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
        loads: LoadReportArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadReportArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("teal").chain(args.iter().copied())).map(|c| c.loads)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(
            parse(&[]).expect("defaults").config(),
            LoadReportConfig::default()
        );
    }

    #[test]
    fn the_interval_is_100ms_to_60s_and_bounds_are_never_zero() {
        let ok = parse(&["--load-report-interval", "100ms"]).expect("shortest");
        assert_eq!(ok.config().interval, Duration::from_millis(100));
        let ok = parse(&["--load-report-interval", "1m"]).expect("longest");
        assert_eq!(ok.config().interval, Duration::from_secs(60));
        for bad in [
            &["--load-report-interval", "50ms"][..],
            &["--load-report-interval", "61s"],
            &["--load-report-interval", "0"],
            &["--load-report-interval", "soon"],
            &["--max-load-report-bytes", "10"],
            &["--max-load-report-clusters", "0"],
            &["--max-load-reports-per-second", "0"],
            &["--max-load-reports-per-second", "100000"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?} is refused"));
            assert!(e.use_stderr(), "{bad:?}: a usage error");
        }
    }
}
