use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::*;
use crate::controller::proxy_views;
use crate::transport::identity::PeerIdentity;
use crate::xds::resources::ResourceType;
use crate::xds::snapshot::{GroupResources, SnapshotInput};
use crate::xds::{NodeInfo, StreamKind};

fn snapshot(version: &str) -> Arc<Snapshot> {
    let mut group = GroupResources::default();
    group.routes.push(RouteConfiguration {
        name: format!("main-{version}"),
        ..Default::default()
    });
    let mut input = SnapshotInput::default();
    input.groups.insert("edge".into(), group);
    let (mut writer, _reader) = crate::xds::snapshot_store::snapshot_store();
    writer.publish(version, &input).expect("valid input")
}

/// Stream `id` of node `node` in `group`, having ACKed `acked` routes.
fn stream(id: u64, node: &str, group: &str, acked: Option<&str>) -> ProxyStatus {
    let mut p = ProxyStatus {
        stream_id: id,
        node: Some(NodeInfo {
            id: node.into(),
            cluster: group.into(),
            user_agent: "envoy".into(),
        }),
        kind: StreamKind::Aggregated,
        delta: false,
        connected_since: SystemTime::UNIX_EPOCH,
        identity: PeerIdentity::Unauthenticated,
        types: Default::default(),
        replica: None,
        disconnected: false,
    };
    let t = &mut p.types[ResourceType::Route];
    t.subscribed = true;
    t.acked = acked.map(str::to_owned);
    p
}

fn basis(snapshot: &Snapshot) -> Basis {
    Basis {
        snapshot: snapshot.version().to_owned(),
        committed: Some(2),
        groups: ["edge".to_owned()].into(),
        cordon_epoch: 0,
    }
}

#[test]
fn only_nodes_whose_view_changed_are_handed_over() {
    let snap = snapshot("2");
    let current = snap
        .group("edge")
        .of(ResourceType::Route)
        .version()
        .to_owned();
    let old = Some("1");
    let proxies = vec![
        stream(1, "a", "edge", old),
        stream(2, "b", "edge", old),
        // A second stream of b (per-type services).
        stream(3, "b", "edge", Some(&current)),
        stream(4, "c", "other", old),
    ];
    let mut follow = Follow::default();
    let groups = ["edge"].into();
    let all = follow.all(&proxies, basis(&snap), &snap, BTreeSet::new());
    let (whole, skipped) = proxy_views(&proxies, &groups, &snap, Some(2), &BTreeSet::new());
    assert_eq!(all, whole);
    assert!(skipped.is_empty());
    assert_eq!(all.len(), 2, "the other group is not followed");

    // b's first stream ACKs: b is confirmed; a, unchanged, is not
    // handed over; a stream of another group changes nothing.
    let changes = Changes {
        changed: vec![
            Arc::new(stream(1, "a", "edge", old)),
            Arc::new(stream(2, "b", "edge", Some(&current))),
            Arc::new(stream(4, "c", "other", Some(&current))),
        ],
        gone: Vec::new(),
    };
    let Ok(Some(Event::ProxiesChanged { changed, gone })) =
        follow.changes(&changes, &basis(&snap), &snap)
    else {
        panic!("b changed");
    };
    assert_eq!(gone, Vec::<String>::new());
    assert_eq!(changed.len(), 1);
    assert_eq!((&*changed[0].id, changed[0].confirmed), ("b", true));

    // Nothing visible changed: no event.
    let same = Changes {
        changed: vec![Arc::new(stream(1, "a", "edge", old))],
        gone: vec![99],
    };
    assert!(matches!(
        follow.changes(&same, &basis(&snap), &snap),
        Ok(None)
    ));

    // One of b's two streams goes: b stays; then the other: b leaves.
    let one = Changes {
        changed: Vec::new(),
        gone: vec![3],
    };
    assert!(matches!(
        follow.changes(&one, &basis(&snap), &snap),
        Ok(None)
    ));
    let both = Changes {
        changed: Vec::new(),
        gone: vec![2],
    };
    let Ok(Some(Event::ProxiesChanged { changed, gone })) =
        follow.changes(&both, &basis(&snap), &snap)
    else {
        panic!("b left");
    };
    assert!(changed.is_empty());
    assert_eq!(gone, ["b"]);

    // Another snapshot: the views must be made again, whole.
    let next = snapshot("3");
    assert!(follow.changes(&same, &basis(&next), &next).is_err());
    follow.stop();
    assert!(follow.changes(&same, &basis(&snap), &snap).is_err());
}

/// Stream `id` of node `node` in the edge group, rejecting routes
/// version `version`.
fn rejecting(id: u64, node: &str, version: &str) -> ProxyStatus {
    let mut p = stream(id, node, "edge", Some("1"));
    let t = &mut p.types[ResourceType::Route];
    t.sent = Some(version.to_owned());
    t.nack = Some(crate::xds::status::Nack {
        version: version.to_owned(),
        message: "bad route".into(),
        at: SystemTime::UNIX_EPOCH,
    });
    p
}

#[test]
fn cordoned_nodes_are_left_out_of_both_passes_until_the_cordons_change() {
    let snap = snapshot("2");
    let current = snap
        .group("edge")
        .of(ResourceType::Route)
        .version()
        .to_owned();
    let proxies = vec![
        stream(1, "a", "edge", Some("1")),
        stream(2, "b", "edge", Some("1")),
    ];
    let cordoned: BTreeSet<String> = ["b".to_owned()].into();
    let groups = ["edge"].into();
    let mut follow = Follow::default();
    let all = follow.all(&proxies, basis(&snap), &snap, cordoned.clone());
    let (whole, skipped) = proxy_views(&proxies, &groups, &snap, Some(2), &cordoned);
    assert_eq!(all, whole);
    assert_eq!(all.len(), 1, "b is cordoned");
    assert_eq!(skipped, ["b"]);
    assert!(follow.skipped_changed());
    assert_eq!(follow.skipped(), ["b"]);

    // b rejects the committed version (the rollback's trigger for a
    // proxy that counts) and opens a second stream: nothing is handed
    // over; a stays as it was.
    let nack = Changes {
        changed: vec![
            Arc::new(rejecting(2, "b", "2-abc")),
            Arc::new(stream(3, "b", "edge", Some("1"))),
        ],
        gone: Vec::new(),
    };
    assert!(matches!(
        follow.changes(&nack, &basis(&snap), &snap),
        Ok(None)
    ));
    assert!(!follow.skipped_changed());
    // a ACKs: only a is handed over.
    let ack = Changes {
        changed: vec![Arc::new(stream(1, "a", "edge", Some(&current)))],
        gone: Vec::new(),
    };
    let Ok(Some(Event::ProxiesChanged { changed, .. })) =
        follow.changes(&ack, &basis(&snap), &snap)
    else {
        panic!("a changed");
    };
    assert_eq!(changed.len(), 1);
    assert_eq!(&*changed[0].id, "a");
    // b's streams go: it is no longer listed as left out.
    let gone = Changes {
        changed: Vec::new(),
        gone: vec![2, 3],
    };
    assert!(matches!(
        follow.changes(&gone, &basis(&snap), &snap),
        Ok(None)
    ));
    assert!(follow.skipped_changed());
    assert!(follow.skipped().is_empty());

    // A cordon or uncordon moves the epoch: the views are made again,
    // whole, with the new set.
    let moved = Basis {
        cordon_epoch: 1,
        ..basis(&snap)
    };
    assert!(follow.changes(&ack, &moved, &snap).is_err());
}

/// One step of a fleet's life, for the property below.
#[derive(Clone, Debug)]
enum Step {
    /// A whole pass, against the first or the second snapshot, with
    /// these of the four nodes cordoned, following the group "edge"
    /// alone or "other" too.
    Pass {
        second: bool,
        cordoned: [bool; 4],
        both: bool,
    },
    /// A stream connects, or an existing one ACKs (its node and group
    /// stay what they were).
    Set {
        stream: u64,
        node: usize,
        other_group: bool,
        acked: u8,
    },
    /// A stream leaves.
    Gone { stream: u64 },
    /// A stream ends but still stands for its node, disconnected.
    Disconnected { stream: u64 },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        1 => (any::<bool>(), any::<[bool; 4]>(), any::<bool>())
            .prop_map(|(second, cordoned, both)| Step::Pass { second, cordoned, both }),
        4 => (1u64..10, 0usize..4, proptest::bool::weighted(0.2), 0u8..3).prop_map(
            |(stream, node, other_group, acked)| Step::Set {
                stream,
                node,
                other_group,
                acked
            }
        ),
        1 => (1u64..10).prop_map(|stream| Step::Gone { stream }),
        1 => (1u64..10).prop_map(|stream| Step::Disconnected { stream }),
    ]
}

fn basis_of(snapshot: &Snapshot, groups: &BTreeSet<&str>) -> Basis {
    Basis {
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..basis(snapshot)
    }
}

proptest::proptest! {
    /// Whatever happens, the views the machine holds (the last whole
    /// pass, then every change handed over) are the views a whole
    /// recompute gives: slots reused across passes, streams swept,
    /// nodes coming and going, streams ending but still counted (a
    /// node's connected stream outweighing them), cordons and the
    /// groups followed included.
    #[test]
    fn followed_views_are_always_a_whole_recompute(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        const NODES: [&str; 4] = ["a", "b", "c", "d"];
        let snaps = [snapshot("2"), snapshot("3")];
        let label = |snap: &Snapshot| {
            snap.group("edge").of(ResourceType::Route).version().to_owned()
        };
        let acked = [None, Some(label(&snaps[0])), Some(label(&snaps[1]))];
        let mut groups: BTreeSet<&str> = ["edge"].into();
        let mut live: BTreeMap<u64, ProxyStatus> = BTreeMap::new();
        let mut follow = Follow::default();
        let mut held: BTreeMap<String, ProxyView> = BTreeMap::new();
        let (mut snap, mut cordoned) = (snaps[0].clone(), BTreeSet::new());
        let mut passed = false;
        for step in steps {
            let changes = match step {
                Step::Pass { second, cordoned: which, both } => {
                    snap = snaps[usize::from(second)].clone();
                    groups = if both { ["edge", "other"].into() } else { ["edge"].into() };
                    cordoned = NODES
                        .iter()
                        .zip(which)
                        .filter(|(_, on)| *on)
                        .map(|(n, _)| (*n).to_owned())
                        .collect();
                    let all = follow.all(live.values(), basis_of(&snap, &groups), &snap, cordoned.clone());
                    proptest::prop_assert!(
                        all.windows(2).all(|w| w[0].id < w[1].id),
                        "a pass hands views over in id order, each node once"
                    );
                    held = all.into_iter().map(|v| (v.id.to_string(), v)).collect();
                    passed = true;
                    None
                }
                Step::Set { stream: id, node, other_group, acked: a } => {
                    let mut p = live.get(&id).cloned().unwrap_or_else(|| {
                        let group = if other_group { "other" } else { "edge" };
                        stream(id, NODES[node], group, None)
                    });
                    p.types[ResourceType::Route].acked = acked[usize::from(a)].clone();
                    live.insert(id, p.clone());
                    Some(Changes { changed: vec![Arc::new(p)], gone: Vec::new() })
                }
                Step::Gone { stream: id } => {
                    live.remove(&id);
                    Some(Changes { changed: Vec::new(), gone: vec![id] })
                }
                Step::Disconnected { stream: id } => match live.get_mut(&id) {
                    Some(p) => {
                        p.disconnected = true;
                        Some(Changes { changed: vec![Arc::new(p.clone())], gone: Vec::new() })
                    }
                    None => None,
                },
            };
            if let Some(changes) = changes {
                match follow.changes(&changes, &basis_of(&snap, &groups), &snap) {
                    Ok(Some(Event::ProxiesChanged { changed, gone })) => {
                        for id in gone {
                            held.remove(&id);
                        }
                        for v in changed {
                            held.insert(v.id.to_string(), v);
                        }
                    }
                    Ok(None) => {}
                    Ok(Some(other)) => panic!("unexpected event {other:?}"),
                    Err(()) => {
                        proptest::prop_assert!(!passed, "views kept since the last pass");
                        continue;
                    }
                }
            }
            if !passed {
                continue;
            }
            let statuses: Vec<ProxyStatus> = live.values().cloned().collect();
            let (whole, skipped) = proxy_views(&statuses, &groups, &snap, Some(2), &cordoned);
            let held_now: Vec<ProxyView> = held.values().cloned().collect();
            proptest::prop_assert_eq!(held_now, whole);
            proptest::prop_assert_eq!(follow.skipped(), skipped);
        }
    }
}
