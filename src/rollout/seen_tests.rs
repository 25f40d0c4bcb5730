use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// What can happen to the proxies between two looks.
#[derive(Clone, Debug)]
enum Op {
    /// A whole list (possibly naming a proxy twice: the later wins).
    Replace(Vec<ProxyView>),
    /// One proxy's view as it is now (a proxy that joined, or changed).
    Insert(ProxyView),
    /// A proxy that left.
    Remove(String),
}

fn view() -> impl Strategy<Value = ProxyView> {
    // Few ids, so that lists, joins, changes and departures meet.
    (0u8..24, any::<bool>(), any::<bool>(), 0u8..4).prop_map(|(id, prepared, confirmed, nack)| {
        ProxyView {
            id: format!("node-{id:02}").into(),
            prepared,
            confirmed,
            nack: (nack == 0).then(|| format!("bad {id}")),
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => prop::collection::vec(view(), 0..30).prop_map(Op::Replace),
        6 => view().prop_map(Op::Insert),
        2 => (0u8..24).prop_map(|id| Op::Remove(format!("node-{id:02}"))),
    ]
}

/// The sets, worked out from scratch over the proxies by id.
fn model_ids(model: &BTreeMap<String, ProxyView>, on: fn(&ProxyView) -> bool) -> Vec<String> {
    model
        .values()
        .filter(|v| on(v))
        .map(|v| v.id.to_string())
        .collect()
}

proptest! {
    /// Whatever mix of whole lists, joins, changes and departures comes,
    /// every set holds what a recompute from the views by id gives, in
    /// id order, and counts it right.
    #[test]
    fn sets_are_always_a_whole_recompute(ops in prop::collection::vec(op(), 1..60)) {
        let mut seen = Seen::default();
        let mut model: BTreeMap<String, ProxyView> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Replace(list) => {
                    model.clear();
                    for v in &list {
                        model.insert(v.id.to_string(), v.clone());
                    }
                    seen.replace(list);
                }
                Op::Insert(v) => {
                    model.insert(v.id.to_string(), v.clone());
                    seen.insert(v);
                }
                Op::Remove(id) => {
                    model.remove(&id);
                    seen.remove(&id);
                }
            }
            let ids = |it: &mut dyn Iterator<Item = &Arc<str>>| -> Vec<String> {
                it.map(|id| id.to_string()).collect()
            };
            let unready = model_ids(&model, |v| !(v.prepared && v.confirmed));
            let unsettled = model_ids(&model, |v| !(v.confirmed || v.nack.is_some()));
            let nacking = model_ids(&model, |v| v.nack.is_some());
            prop_assert_eq!(seen.len(), model.len());
            prop_assert_eq!(seen.is_empty(), model.is_empty());
            prop_assert_eq!(ids(&mut seen.waiting(Until::Ready)), unready.clone());
            prop_assert_eq!(seen.waiting_len(Until::Ready), unready.len());
            prop_assert_eq!(ids(&mut seen.waiting(Until::Settled)), unsettled.clone());
            prop_assert_eq!(seen.waiting_len(Until::Settled), unsettled.len());
            let rejecting: Vec<ProxyView> = seen.nacking().cloned().collect();
            let expected: Vec<ProxyView> =
                nacking.iter().map(|id| model[id].clone()).collect();
            prop_assert_eq!(&rejecting, &expected);
            prop_assert_eq!(seen.first_nack(), expected.first());
        }
    }
}

#[test]
fn a_proxy_that_joined_is_listed_in_id_order_among_the_ranked() {
    let view = |id: &str| ProxyView {
        id: id.into(),
        prepared: false,
        confirmed: false,
        nack: None,
    };
    let mut seen = Seen::default();
    seen.replace(vec![view("c"), view("a"), view("e")]);
    seen.insert(view("d"));
    seen.insert(view("b"));
    seen.insert(view("f"));
    let order: Vec<&str> = seen.waiting(Until::Ready).map(|id| &**id).collect();
    assert_eq!(order, ["a", "b", "c", "d", "e", "f"]);
    // One that left and came back has no rank, and still its place.
    seen.remove("c");
    seen.insert(view("c"));
    let order: Vec<&str> = seen.waiting(Until::Settled).map(|id| &**id).collect();
    assert_eq!(order, ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(seen.waiting_len(Until::Settled), 6);
}
