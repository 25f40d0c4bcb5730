//! Load reports count on every replica: a proxy connected only to a
//! follower reports its traffic there, and the leader shows it (its last
//! report in `teal proxies`, its requests in `teal status`'s measured
//! traffic, and as draining the fleet it has requests in flight to), as
//! its analysis and drain weigh it.

use std::time::Duration;

use serde_json::Value;

use crate::support;
use crate::support::etcd::Etcd;
use crate::support::lrs::{Lrs, stats};
use crate::support::replica::{self, InProcessReplica};

const LEASE: Duration = Duration::from_secs(2);

async fn json(admin: std::net::SocketAddr, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = replica::cli(&admin.to_string(), &all).await;
    assert_eq!(code, 0, "teal {args:?}: {err}");
    serde_json::from_str(&out).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_counts_the_load_reports_of_a_followers_proxy() {
    let etcd = Etcd::start().await;
    let a = InProcessReplica::start(&etcd, "/loads/", LEASE).await;
    let b = InProcessReplica::start(&etcd, "/loads/", LEASE).await;
    // Whichever accepts a change leads; with no proxy yet, it ends at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (leader, follower) = 'elected: loop {
        for first in [true, false] {
            let r = if first { &a } else { &b };
            if let Ok(progress) = r.flip("green", Duration::from_secs(10)).await {
                replica::outcome(progress, Duration::from_secs(30)).await;
                break 'elected if first { (a, b) } else { (b, a) };
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let port = follower.running.xds_addr.port();
    let _ads = support::ads_subscribed_to_all(port, "far-proxy").await;
    let lrs = Lrs::admitted(port, "far-proxy", "edge").await;
    let admin = leader.running.admin_addr;
    // Reports go on every 200 ms, as a proxy's would, until the leader
    // shows them: the follower publishes at most once a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (far, blue) = loop {
        lrs.report(vec![stats("web-blue", 40, 2, 3)]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let proxies = json(admin, &["proxies"]).await;
        let far = proxies["proxies"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["node_id"] == "far-proxy"))
            .cloned();
        let blue = far.as_ref().and_then(|far| {
            far["load"]["clusters"]
                .as_array()?
                .iter()
                .find(|c| c["cluster"] == "web-blue")
                .cloned()
        });
        if let (Some(far), Some(blue)) = (far, blue)
            && blue["requests"].as_u64() >= Some(84)
        {
            break (far, blue);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 20 s the leader does not show far-proxy's load: {proxies}"
        );
    };
    assert_eq!(
        far["replica"].as_str().map(str::is_empty),
        Some(false),
        "{far}"
    );
    assert_eq!(blue["in_progress"], 3, "{blue}");
    assert!(blue["errors"].as_u64() >= Some(4), "{blue}");
    // Its requests join the leader's measured traffic: what its counts
    // grew by since the leader first read them, over whole seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        lrs.report(vec![stats("web-blue", 40, 2, 3)]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = json(admin, &["status", "web"]).await;
        let blue = status["services"][0]["traffic"]
            .as_array()
            .and_then(|t| t.iter().find(|f| f["fleet"] == "blue"))
            .cloned()
            .unwrap_or_else(|| panic!("no measured traffic for blue: {status}"));
        assert_eq!(blue["proxies_reporting"], 1, "{blue}");
        if blue["requests"].as_u64() > Some(0) {
            assert!(blue["errors"].as_u64() > Some(0), "{blue}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 20 s the leader's measured split does not count the follower's proxy: {blue}"
        );
    }
    // blue has no weight since the flip: the leader's status names the
    // follower's proxy as draining it, with its requests in flight.
    let status = json(admin, &["status", "web"]).await;
    let drain = status["services"][0]["drains"]
        .as_array()
        .and_then(|d| d.iter().find(|f| f["fleet"] == "blue"))
        .cloned()
        .unwrap_or_else(|| panic!("no drain for blue: {status}"));
    assert_eq!(drain["drained"], false, "{drain}");
    assert_eq!(drain["draining"][0]["proxy"], "far-proxy", "{drain}");
    assert_eq!(drain["draining"][0]["in_flight"], 3, "{drain}");
}
