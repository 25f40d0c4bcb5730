use super::*;
use crate::state::EtcdOptions;
use crate::xds::protocol::StreamEvent;
use crate::xds::status::StreamHandle;

/// `n` ADS proxies of group `edge` on `registry`, each sent and ACKing
/// `version` on every type.
fn proxies(registry: &Arc<ProxyRegistry>, n: usize, version: &str) -> Vec<StreamHandle> {
    (0..n)
        .map(|i| {
            let mut h = registry.register(StreamKind::Aggregated, false);
            h.set_node(Some(&NodeInfo {
                id: format!("proxy-{i}"),
                cluster: "edge".into(),
                user_agent: "envoy 1.40.0".into(),
            }));
            push(&h, version);
            h
        })
        .collect()
}

/// `h` is sent `version` on every type and ACKs it.
fn push(h: &StreamHandle, version: &str) {
    for ty in ResourceType::ALL {
        h.record(&[
            StreamEvent::Sent {
                ty,
                version: version.into(),
                nonce: "n".into(),
                resources: 1,
            },
            StreamEvent::Acked {
                ty,
                version: version.into(),
            },
        ]);
    }
}

/// Applies `round` as etcd would (parts, manifest, deletions) to the
/// leader's `mirror` of replica `b`, leaving out the parts `dropped`
/// names.
fn apply(
    mirror: &mut Mirror,
    leader: &Arc<ProxyRegistry>,
    round: &Round,
    dropped: impl Fn(&str) -> bool,
) {
    // `b` holds a lease.
    mirror.change("b", "alive", Change::Put(b"", 7));
    for (name, value) in &round.puts {
        if !dropped(name) {
            mirror.change("b", &format!("c/{name}"), Change::Put(value, 0));
        }
    }
    mirror.change("b", "m", Change::Put(&round.manifest, 0));
    for name in &round.deletes {
        mirror.change("b", &format!("c/{name}"), Change::Delete);
    }
    mirror.settle(leader, "b");
}

/// Every mirrored proxy's ACKed route version, and how many there are.
fn acked(leader: &ProxyRegistry) -> BTreeMap<Option<String>, usize> {
    let mut seen = BTreeMap::new();
    for p in leader.statuses() {
        *seen
            .entry(p.of(ResourceType::Route).acked.clone())
            .or_default() += 1;
    }
    seen
}

fn client() -> EtcdClient {
    EtcdClient::new(EtcdOptions::new(vec!["127.0.0.1:1".into()], "/t/")).expect("client")
}

#[tokio::test]
async fn a_flip_over_10000_proxies_writes_few_parts_in_two_transactions() {
    let far = ProxyRegistry::new();
    let handles = proxies(&far, 10_000, "1");
    let mut publisher = Publisher::default();
    let round = publisher.round(&far.statuses()).expect("a first round");
    assert_eq!(round.puts.len(), 40, "one part per slot of 256 proxies");
    let bytes: usize = round.puts.iter().map(|(_, v)| v.len()).sum();
    assert!(bytes < 10_000 * 150, "{} bytes a proxy", bytes / 10_000);
    let txns = transactions(&client(), "b", 7, &round);
    assert!(txns.len() <= 2, "{} transactions", txns.len());
    for t in &txns {
        assert!(t.success.len() <= TXN_MAX_OPS);
    }
    let leader = ProxyRegistry::new();
    let mut mirror = Mirror::default();
    apply(&mut mirror, &leader, &round, |_| false);
    publisher.written(round);
    assert_eq!(acked(&leader), BTreeMap::from([(Some("1".into()), 10_000)]));
    assert!(
        publisher.round(&far.statuses()).is_none(),
        "nothing changed, nothing written"
    );

    // Every proxy moves (a flip): every slot is rewritten, the old parts
    // deleted, in as few transactions.
    for h in &handles {
        push(h, "2");
    }
    let round = publisher.round(&far.statuses()).expect("a round");
    assert_eq!((round.puts.len(), round.deletes.len()), (40, 40));
    assert!(transactions(&client(), "b", 7, &round).len() <= 2);
    apply(&mut mirror, &leader, &round, |_| false);
    publisher.written(round);
    assert_eq!(acked(&leader), BTreeMap::from([(Some("2".into()), 10_000)]));

    // One proxy moves: one part.
    push(&handles[5_000], "3");
    let round = publisher.round(&far.statuses()).expect("a round");
    assert_eq!((round.puts.len(), round.deletes.len()), (1, 1));
    apply(&mut mirror, &leader, &round, |_| false);
    assert_eq!(
        acked(&leader),
        BTreeMap::from([(Some("2".into()), 9_999), (Some("3".into()), 1)])
    );
}

#[test]
fn a_missing_part_keeps_the_leader_on_the_last_complete_set() {
    let far = ProxyRegistry::new();
    let handles = proxies(&far, 600, "1");
    let mut publisher = Publisher::default();
    let leader = ProxyRegistry::new();
    let mut mirror = Mirror::default();
    let round = publisher.round(&far.statuses()).expect("a round");
    apply(&mut mirror, &leader, &round, |_| false);
    publisher.written(round);
    assert_eq!(acked(&leader), BTreeMap::from([(Some("1".into()), 600)]));

    // Every proxy ACKs 2; one of the three parts never arrives: the leader
    // must not see anyone on 2 (the proxies of the missing part would be
    // left out of the wait), so it keeps the last complete set.
    for h in &handles {
        push(h, "2");
    }
    let round = publisher.round(&far.statuses()).expect("a round");
    assert_eq!(round.puts.len(), 3);
    let lost = round.puts[1].0.clone();
    apply(&mut mirror, &leader, &round, |n| n == lost);
    assert_eq!(acked(&leader), BTreeMap::from([(Some("1".into()), 600)]));

    // It arrives: the set is complete.
    let (_, value) = round.puts.iter().find(|(n, _)| *n == lost).expect("lost");
    mirror.change("b", &format!("c/{lost}"), Change::Put(value, 0));
    mirror.settle(&leader, "b");
    assert_eq!(acked(&leader), BTreeMap::from([(Some("2".into()), 600)]));

    // A corrupt part counts as missing.
    push(&handles[0], "3");
    let round = publisher.round(&far.statuses()).expect("a round");
    mirror.change(
        "b",
        &format!("c/{}", round.puts[0].0),
        Change::Put(
            b"{\"s\":[],\"p\":[[1,[0,1,2],null,0,0,[null,null,null,null]]]}",
            0,
        ),
    );
    mirror.change("b", "m", Change::Put(&round.manifest, 0));
    mirror.settle(&leader, "b");
    assert_eq!(acked(&leader), BTreeMap::from([(Some("2".into()), 600)]));
}

#[test]
fn with_no_complete_set_placeholders_hold_a_flip_of_the_replicas_groups() {
    let far = ProxyRegistry::new();
    let _handles = proxies(&far, 600, "1");
    let round = Publisher::default()
        .round(&far.statuses())
        .expect("a round");
    let leader = ProxyRegistry::new();
    let mut mirror = Mirror::default();
    let lost = round.puts[2].0.clone();
    apply(&mut mirror, &leader, &round, |n| n == lost);
    let seen = leader.proxies();
    assert_eq!(seen.len(), 1, "one placeholder for the group: {seen:#?}");
    assert_eq!(seen[0].group(), Some("edge"));
    assert!(ResourceType::ALL.iter().all(|&t| seen[0].of(t).subscribed));
    assert!(
        ResourceType::ALL
            .iter()
            .all(|&t| seen[0].of(t).acked.is_none())
    );

    // Once complete, the real proxies replace it.
    let (_, value) = round.puts.iter().find(|(n, _)| *n == lost).expect("lost");
    mirror.change("b", &format!("c/{lost}"), Change::Put(value, 0));
    mirror.settle(&leader, "b");
    assert_eq!(acked(&leader), BTreeMap::from([(Some("1".into()), 600)]));

    // Proxies the replica says it could not publish: placeholders again,
    // next to the ones it did publish.
    let mut manifest: Manifest = serde_json::from_slice(&round.manifest).expect("manifest");
    manifest.u = 1;
    mirror.change(
        "b",
        "m",
        Change::Put(&serde_json::to_vec(&manifest).expect("json"), 0),
    );
    mirror.settle(&leader, "b");
    assert_eq!(leader.len(), 601);
}

#[test]
fn nacks_mirror_and_mirrored_proxies_are_never_published_again() {
    let far = ProxyRegistry::new();
    let mut h = far.register(StreamKind::Single(ResourceType::Route), true);
    h.set_node(Some(&NodeInfo {
        id: "p1".into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    }));
    h.record(&[
        StreamEvent::Sent {
            ty: ResourceType::Route,
            version: "2".into(),
            nonce: "1".into(),
            resources: 1,
        },
        StreamEvent::Nacked {
            ty: ResourceType::Route,
            version: "2".into(),
            message: "x".repeat(10_000),
        },
    ]);
    let round = Publisher::default()
        .round(&far.statuses())
        .expect("a round");
    let leader = ProxyRegistry::new();
    let mut mirror = Mirror::default();
    apply(&mut mirror, &leader, &round, |_| false);
    let seen = leader.proxies();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].replica.as_deref(), Some("b"));
    assert_eq!(seen[0].kind, StreamKind::Single(ResourceType::Route));
    assert!(seen[0].delta);
    assert!(seen[0].of(ResourceType::Route).last_was_nacked());
    assert_eq!(
        seen[0]
            .of(ResourceType::Route)
            .nack
            .as_ref()
            .map(|n| n.message.len()),
        Some(MAX_NACK_MESSAGE_BYTES)
    );
    let again = Publisher::default()
        .round(&leader.statuses())
        .expect("a round");
    assert!(again.puts.is_empty(), "mirrored proxies are not published");

    // Every key goes (deleted once its lease ended), and the mirror with
    // them.
    mirror.change("b", "alive", Change::Delete);
    mirror.change("b", "m", Change::Delete);
    mirror.change("b", &format!("c/{}", round.puts[0].0), Change::Delete);
    mirror.settle(&leader, "b");
    assert!(leader.is_empty());
}

#[test]
fn a_record_is_bounded_whatever_the_proxy_sends() {
    // The longest node fields `--max-node-field-bytes` allows, all of
    // control characters (six bytes each in JSON), and long versions and
    // messages.
    let worst = "\u{1}".repeat(16 << 10);
    let long = "\u{1}".repeat(1 << 20);
    let mut p = placeholder("b", &worst);
    p.node = Some(NodeInfo {
        id: worst.clone(),
        cluster: format!("{worst}x"),
        user_agent: format!("{worst} {worst}"),
    });
    for (i, (_, t)) in p.types.iter_mut().enumerate() {
        t.sent = Some(format!("{i}{long}"));
        t.acked = Some(format!("{i}a{long}"));
        t.nack = Some(Nack {
            version: format!("{i}n{long}"),
            message: format!("{i}m{long}"),
            at: SystemTime::now(),
        });
    }
    let (parts, unpublished) = encode_slot(&[&p]);
    assert_eq!(unpublished, 0);
    assert!(
        parts[0].len() <= RECORD_MAX_BYTES,
        "{} bytes",
        parts[0].len()
    );
    let mut b = PartBuilder::default();
    b.add(&p);
    assert!(b.bytes <= RECORD_MAX_BYTES);
}

#[test]
fn rounds_are_paced_by_the_bytes_they_write() {
    // A small fleet's round is followed by the next after the floor, so
    // followers' ACKs reach the leader quickly.
    assert_eq!(pause_after(0), PUBLISH_EVERY);
    assert_eq!(pause_after(4 << 10), PUBLISH_EVERY);
    // A big round waits in proportion: 4 MiB of writes, a second.
    assert_eq!(pause_after(4 << 20), Duration::from_secs(1));
    let mib = pause_after(1 << 20);
    assert!(
        mib > Duration::from_millis(240) && mib < Duration::from_millis(260),
        "{mib:?}"
    );
}

/// The leader's mirror of replica `b`, holding `n` proxies that ACKed
/// version 1 on every type.
fn mirrored(n: usize) -> (Arc<ProxyRegistry>, Mirror, Vec<StreamHandle>) {
    let far = ProxyRegistry::new();
    let handles = proxies(&far, n, "1");
    let round = Publisher::default()
        .round(&far.statuses())
        .expect("a round");
    let leader = ProxyRegistry::new();
    let mut mirror = Mirror::default();
    apply(&mut mirror, &leader, &round, |_| false);
    assert_eq!(leader.len(), n);
    (leader, mirror, handles)
}

#[tokio::test(start_paused = true)]
async fn a_departed_replicas_proxies_still_count_until_they_connect_elsewhere() {
    let (leader, mut mirror, _far) = mirrored(3);
    // Its lease ends: the alive key goes, its proxies' keys stay.
    mirror.change("b", "alive", Change::Delete);
    mirror.settle(&leader, "b");
    assert_eq!(
        leader.len(),
        3,
        "not taken as absent: a flip waits for them"
    );
    let hold = Duration::from_secs(60);
    let now = tokio::time::Instant::now();
    assert!(mirror.sweep(&leader.statuses(), hold, now).is_empty());
    assert_eq!(leader.len(), 3);

    // proxy-1 reconnects to this replica: its departed twin goes; the
    // others still count.
    let mut back = leader.register(StreamKind::Aggregated, false);
    back.set_node(Some(&NodeInfo {
        id: "proxy-1".into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    }));
    assert!(mirror.sweep(&leader.statuses(), hold, now).is_empty());
    let left: BTreeSet<String> = leader
        .statuses()
        .iter()
        .filter(|p| p.replica.is_some())
        .filter_map(|p| p.node.as_ref().map(|n| n.id.clone()))
        .collect();
    assert_eq!(
        left,
        BTreeSet::from(["proxy-0".to_owned(), "proxy-2".to_owned()])
    );
    // Read again from its keys (a new watch): the resolved one stays out.
    mirror.settle(&leader, "b");
    assert_eq!(leader.len(), 3, "two departed, one reconnected here");

    // The hold runs out: the rest are taken as gone, and the replica's
    // keys can be deleted.
    let gone = mirror.sweep(&leader.statuses(), hold, now + hold);
    assert_eq!(gone, vec!["b".to_owned()]);
    assert_eq!(leader.len(), 1, "only the reconnected proxy is left");
    mirror.settle(&leader, "b");
    assert_eq!(leader.len(), 1, "an expired replica is not mirrored again");
}

#[tokio::test(start_paused = true)]
async fn a_proxy_on_another_departed_replica_does_not_resolve_a_departed_one() {
    let (leader, mut mirror, _far) = mirrored(1);
    // `c` holds proxy-0 too (it moved there), then `c`'s lease ends as
    // well: that connection is no evidence of anything.
    let other = ProxyRegistry::new();
    let _h = proxies(&other, 1, "1");
    let round = Publisher::default()
        .round(&other.statuses())
        .expect("a round");
    for (name, value) in &round.puts {
        mirror.change("c", &format!("c/{name}"), Change::Put(value, 0));
    }
    mirror.change("c", "m", Change::Put(&round.manifest, 0));
    mirror.settle(&leader, "c");
    mirror.change("b", "alive", Change::Delete);
    mirror.settle(&leader, "b");
    let now = tokio::time::Instant::now();
    assert!(
        mirror
            .sweep(&leader.statuses(), Duration::from_secs(60), now)
            .is_empty()
    );
    assert_eq!(leader.len(), 2, "both departed copies still count");
}

#[test]
fn a_new_term_that_cleared_its_keys_keeps_the_last_set_until_its_first_round() {
    let (leader, mut mirror, _far) = mirrored(2);
    // The replica starts a new term: its old keys are deleted and alive is
    // written again, before its first round.
    let names: Vec<String> = mirror.replicas["b"].parts.keys().cloned().collect();
    for name in names {
        mirror.change("b", &format!("c/{name}"), Change::Delete);
    }
    mirror.change("b", "m", Change::Delete);
    mirror.change("b", "alive", Change::Put(b"", 8));
    mirror.settle(&leader, "b");
    assert_eq!(leader.len(), 2, "its proxies are not dropped meanwhile");
}

#[test]
fn a_manifest_under_a_lease_is_a_live_replica_of_an_earlier_teal() {
    let far = ProxyRegistry::new();
    let _h = proxies(&far, 1, "1");
    let round = Publisher::default()
        .round(&far.statuses())
        .expect("a round");
    let leader = ProxyRegistry::new();
    let mut mirror = Mirror::default();
    for (name, value) in &round.puts {
        mirror.change("b", &format!("c/{name}"), Change::Put(value, 9));
    }
    mirror.change("b", "m", Change::Put(&round.manifest, 9));
    mirror.settle(&leader, "b");
    assert!(mirror.replicas["b"].is_alive());
    assert!(mirror.replicas["b"].departed_since.is_none());
    assert_eq!(leader.len(), 1);
}

/// A follower's proxy whose stream ended but still counts is published as
/// such: the leader holds it as disconnected (not a connected proxy, but
/// one a flip waits for), delta kept apart; and it is not taken as the
/// node being back when a departed replica's proxies are swept.
#[tokio::test]
async fn a_disconnected_proxy_still_counted_is_published_as_disconnected() {
    let far = ProxyRegistry::new();
    far.set_reconnect_hold(Duration::from_secs(60));
    let mut h = far.register(StreamKind::Aggregated, true);
    h.set_node(Some(&NodeInfo {
        id: "p1".into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    }));
    push(&h, "2");
    drop(h);
    let round = Publisher::default()
        .round(&far.statuses())
        .expect("a round");
    let leader = ProxyRegistry::new();
    let mut mirror = Mirror::default();
    apply(&mut mirror, &leader, &round, |_| false);
    assert!(leader.proxies().is_empty(), "not listed as connected");
    assert_eq!(leader.len(), 0, "not counted as connected");
    let held = leader.statuses();
    assert_eq!(held.len(), 1);
    assert!(held[0].disconnected && held[0].delta, "{:?}", held[0]);
    assert_eq!(held[0].replica.as_deref(), Some("b"));
}
