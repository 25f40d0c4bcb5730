//! How the rollout sees proxies: per proxy, whether it holds the
//! clusters (prepared), has applied the committed version (confirmed), or
//! rejected it.

#[cfg(test)]
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::rollout::machine::ProxyView;
use crate::xds::ProxyStatus;
use crate::xds::resources::ResourceType;
use crate::xds::snapshot::Snapshot;

use crate::rollout::Version;

/// Computes rollout views from proxy statuses. Streams of one node (a
/// proxy using per-type services) are merged by node id.
///
/// Cordoned proxies (by node id, in `cordoned`) are left out: the rollout
/// neither waits for them nor sees their NACKs. They are listed in the
/// second value, for the progress to name.
#[cfg(test)]
pub(crate) fn proxy_views(
    proxies: &[ProxyStatus],
    groups: &BTreeSet<&str>,
    snapshot: &Snapshot,
    committed: Option<u64>,
    cordoned: &BTreeSet<String>,
) -> (Vec<ProxyView>, Vec<String>) {
    // Per node: its view, and whether only disconnected streams made it
    // (see `view_of` in `follow`: a connected stream of the node wins).
    let mut by_node: BTreeMap<&str, (ProxyView, bool)> = BTreeMap::new();
    let mut skipped: BTreeSet<&str> = BTreeSet::new();
    for p in proxies {
        let Some(node) = &p.node else { continue };
        if !groups.contains(node.cluster.as_str()) {
            continue;
        }
        if cordoned.contains(&node.id) {
            skipped.insert(node.id.as_str());
            continue;
        }
        let Some(part) = stream_view(p, snapshot, committed, || Arc::from(node.id.as_str())) else {
            continue;
        };
        match by_node.get_mut(node.id.as_str()) {
            Some((view, lingering)) => match (*lingering, p.disconnected) {
                (true, false) => (*view, *lingering) = (part, false),
                (false, true) => {}
                _ => merge(view, &part),
            },
            None => {
                by_node.insert(node.id.as_str(), (part, p.disconnected));
            }
        }
    }
    (
        by_node.into_values().map(|(view, _)| view).collect(),
        skipped.into_iter().map(str::to_owned).collect(),
    )
}

/// One stream's part of its node's view (`None` before the stream names
/// its node), named with the id `id` gives (the caller may hold it
/// already, shared).
pub(super) fn stream_view(
    p: &ProxyStatus,
    snapshot: &Snapshot,
    committed: Option<u64>,
    id: impl FnOnce() -> Arc<str>,
) -> Option<ProxyView> {
    let node = p.node.as_ref()?;
    let group = snapshot.group(&node.cluster);
    // A disconnected stream still counted holds nothing teal can see
    // applied: the proxy confirms again on a new stream.
    let mut view = ProxyView {
        id: id(),
        prepared: !p.disconnected,
        confirmed: !p.disconnected,
        nack: None,
    };
    for ty in ResourceType::ALL {
        let t = p.of(ty);
        if !t.subscribed {
            continue;
        }
        let current = t.acked.as_deref() == Some(group.of(ty).version());
        if matches!(ty, ResourceType::Cluster | ResourceType::Endpoint) && !current {
            view.prepared = false;
        }
        if !current {
            view.confirmed = false;
        }
        // Before a commit, any standing rejection counts (the proxy
        // cannot take a change); after, only a rejection of the
        // committed version or a later one.
        if let Some(nack) = &t.nack
            && t.last_was_nacked()
            && committed
                .is_none_or(|seq| Version::of_sent(&nack.version).is_some_and(|v| v.seq >= seq))
        {
            view.nack = Some(format!("{ty} {}: {}", nack.version, nack.message));
        }
    }
    Some(view)
}

/// Adds another stream of the same node to its view: the node is prepared
/// and confirmed when all its streams are; the later stream's rejection
/// wins.
pub(super) fn merge(view: &mut ProxyView, part: &ProxyView) {
    view.prepared &= part.prepared;
    view.confirmed &= part.confirmed;
    if part.nack.is_some() {
        view.nack.clone_from(&part.nack);
    }
}
