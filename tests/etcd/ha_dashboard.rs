//! The dashboard with replicas on etcd: every replica serves the page's
//! event stream; the leader's `hello` says it leads, a follower's names
//! the leader's admin address (the page then says where actions go), both
//! list every replica with the leader marked, and an action sent to a
//! follower is refused with `503`, naming the leader, changing nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::CONVERGE;
use crate::support::etcd::Etcd;
use crate::support::http;
use crate::support::replica::{Replica, ReplicaSpec, TOKEN, wait_leader};
use crate::support::sse::EventStream;

fn port(admin: &str) -> u16 {
    admin
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {admin:?}"))
}

/// `hello` and the first `status` listing both replicas, from `admin`.
async fn hello_and_replicas(admin: &str) -> (Value, Value) {
    let mut events = EventStream::open(port(admin))
        .await
        .expect("open the event stream")
        .stream();
    let hello = events.next_named("hello", CONVERGE).await.json();
    let status = events
        .wait_for("status", CONVERGE, "both replicas listed", |s| {
            s["replicas"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await;
    (hello, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_the_events_and_a_follower_names_the_leader() {
    let etcd = Etcd::start().await;
    let spec = ReplicaSpec {
        store: etcd.url("/dashboard/"),
        config: None,
        lease_secs: 2,
        args: Vec::new(),
        env: Vec::new(),
    };
    let replicas = vec![
        Replica::start(spec.clone()).await,
        Replica::start(spec.clone()).await,
    ];
    let leader = wait_leader(&replicas, Duration::from_secs(30)).await;
    let (leading, following) = (&replicas[leader], &replicas[1 - leader]);

    let (hello, status) = hello_and_replicas(&leading.admin).await;
    assert_eq!(hello["leader"], true, "{hello}");
    assert_eq!(hello["leader_admin"], Value::Null, "{hello}");
    assert!(hello["replica"].is_string(), "{hello}");
    let listed: Vec<(String, bool)> = status["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            (
                r["admin"].as_str().unwrap_or_default().to_owned(),
                r["leader"] == true,
            )
        })
        .collect();
    assert!(
        listed.contains(&(leading.admin.clone(), true))
            && listed.contains(&(following.admin.clone(), false)),
        "{listed:?}"
    );

    let (hello, status) = hello_and_replicas(&following.admin).await;
    assert_eq!(hello["leader"], false, "{hello}");
    assert_eq!(hello["leader_admin"], json!(leading.admin), "{hello}");
    assert_ne!(hello["replica"], Value::Null, "{hello}");
    assert_eq!(status["replicas"].as_array().map(Vec::len), Some(2));

    // An action sent to the follower goes nowhere and says where to go.
    let before = leading.json(&["status"]).await.expect("status");
    let auth = format!("Bearer {TOKEN}");
    let r = http::send(
        "POST",
        port(&following.admin),
        "/v1/actions/flip",
        &[
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ],
        r#"{"service": "web", "to": "green"}"#,
    )
    .await
    .expect("POST to the follower");
    assert_eq!(r.status, 503, "{}", r.body);
    let answer: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(answer["kind"], "not_leader", "{answer}");
    assert_eq!(answer["leader"], json!(leading.admin), "{answer}");
    let after = leading.json(&["status"]).await.expect("status");
    assert_eq!(
        before["services"][0]["weights"], after["services"][0]["weights"],
        "the refused flip changed the weights"
    );
    assert_eq!(after["services"][0]["last_change"], Value::Null);
}
