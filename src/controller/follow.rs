//! Following the proxies of a running operation change by change.
//!
//! The driver wakes on registry changes, which come with every ACK of
//! every proxy. Recomputing every proxy's view at each would cost O(N)
//! per ACK and O(N²) per flip of N proxies. A [`Follow`] keeps each
//! stream's part of its node's view and hands the machine only the nodes
//! whose view changed ([`Event::ProxiesChanged`]); a whole pass happens
//! only when the machine asks for one ([`Action::ObserveProxies`], once
//! per commit) or when what the views are measured against changed (a new
//! snapshot served, the groups routing the service, the cordons).
//!
//! Cordoned proxies are left out here as in [`proxy_views`]: the set is
//! read at each whole pass and held until the next, and a cordon or an
//! uncordon moves the registry's [`cordon_epoch`], which is part of the
//! [`Basis`], so the next look is a whole pass with the new set (a flip
//! waiting on a proxy that is then cordoned finishes; an uncordoned proxy
//! counts again).
//!
//! [`proxy_views`]: super::proxy_views
//! [`cordon_epoch`]: crate::xds::ProxyRegistry::cordon_epoch
//!
//! [`Action::ObserveProxies`]: crate::rollout::machine::Action::ObserveProxies

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::rollout::machine::{Event, ProxyView};
use crate::xds::snapshot::Snapshot;
use crate::xds::{Changes, ProxyStatus, StreamMap};

use super::views::{merge, stream_view};

/// What views are measured against: when any of it changes, every view
/// may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Basis {
    /// The version of the snapshot served.
    pub(super) snapshot: String,
    /// The sequence number the operation committed, once it has.
    pub(super) committed: Option<u64>,
    /// The proxy groups that route the service.
    pub(super) groups: BTreeSet<String>,
    /// The registry's cordon epoch: it moves when a cordon changes.
    pub(super) cordon_epoch: u64,
}

/// One node: its streams in the followed groups and its merged view.
#[derive(Debug)]
struct Node {
    /// Its id, shared with the views handed to the machine.
    id: Arc<str>,
    /// Its streams, in id order (almost always one: a proxy on ADS).
    streams: Vec<u64>,
    /// `None` until its view is first computed, so a new node is always
    /// handed over.
    view: Option<ProxyView>,
    /// Touched by the changes being followed: its view is made again once
    /// they are all in (a node is listed once however many of its streams
    /// changed).
    dirty: bool,
    /// The whole pass that last found one of its streams.
    pass: u64,
}

/// A stream in the followed groups: its node (a slot in
/// [`Follow::nodes`]), its part of the node's view, and the whole pass that
/// last found it.
#[derive(Debug)]
struct Part {
    node: usize,
    view: ProxyView,
    pass: u64,
    /// The stream ended and stands for its proxy until it reconnects (see
    /// [`ProxyStatus::disconnected`]).
    disconnected: bool,
}

/// The proxies of one running operation, as last handed to its machine.
///
/// Nodes sit in numbered slots, so following a stream's change reaches
/// its node through the stream id alone: no node id is hashed or copied
/// per ACK. A whole pass keeps the slots and parts it finds again (the
/// pass after a commit sees the fleet the pass before it saw) and sweeps
/// away the rest.
#[derive(Debug, Default)]
pub(super) struct Follow {
    /// What the views were computed against; `None` when they are not
    /// kept (before the first whole pass, or after the machine stopped
    /// looking).
    basis: Option<Basis>,
    /// Per stream in the groups.
    streams: StreamMap<Part>,
    /// The nodes, by slot; `None` for a free slot.
    nodes: Vec<Option<Node>>,
    /// Free slots of `nodes`.
    free: Vec<usize>,
    /// The slot of each node, by id.
    slots: HashMap<Arc<str>, usize>,
    /// Counts whole passes, to sweep what the last one did not find.
    pass: u64,
    /// The cordoned node ids, as read at the last whole pass.
    cordoned: BTreeSet<String>,
    /// The occupied slots in their nodes' id order, as the last whole
    /// pass handed them over; `None` once a node was made since, so the
    /// next pass sorts again. The pass after a commit sees the nodes the
    /// pass before it saw, and sorting thousands of ids was a third of
    /// what a pass cost.
    order: Option<Vec<usize>>,
    /// Streams in the groups left out because their node is cordoned, by
    /// node id.
    skipped: BTreeMap<String, BTreeSet<u64>>,
    /// The node of each stream in `skipped`.
    skipped_streams: StreamMap<String>,
    /// Whether the set of skipped nodes changed since the last
    /// [`Follow::skipped_changed`].
    skipped_moved: bool,
}

impl Follow {
    /// Forgets everything; the next look is a whole pass.
    pub(super) fn stop(&mut self) {
        *self = Follow::default();
    }

    /// A whole pass over `proxies` (in any order): every node's view, by
    /// id, leaving out the nodes in `cordoned`.
    pub(super) fn all<'a>(
        &mut self,
        proxies: impl IntoIterator<Item = &'a ProxyStatus>,
        basis: Basis,
        snapshot: &Snapshot,
        cordoned: BTreeSet<String>,
    ) -> Vec<ProxyView> {
        self.basis = None;
        self.pass += 1;
        self.skipped.clear();
        self.skipped_streams.clear();
        self.cordoned = cordoned;
        self.skipped_moved = true;
        let proxies = proxies.into_iter();
        // Room for all at once: a first pass makes every node and part. A
        // later pass finds most of them again and needs only the rest
        // (`reserve` counts from what is there: asking for all of them
        // again would double the tables and rehash every entry).
        let (hint, _) = proxies.size_hint();
        self.streams
            .reserve(hint.saturating_sub(self.streams.len()));
        self.slots.reserve(hint.saturating_sub(self.slots.len()));
        for p in proxies {
            self.put(p, &basis, snapshot);
        }
        // What this pass did not find left the groups (or the registry),
        // or is cordoned now.
        let pass = self.pass;
        let nodes = &mut self.nodes;
        self.streams.retain(|id, part| {
            let found = part.pass == pass;
            if !found && let Some(Some(node)) = nodes.get_mut(part.node) {
                node.streams.retain(|s| s != id);
            }
            found
        });
        // Every occupied slot, in id order when no node was made since the
        // last pass (a node made since made `order` `None`).
        let (mut order, sorted) = match self.order.take() {
            Some(order) => (order, true),
            None => (
                (0..self.nodes.len())
                    .filter(|&slot| matches!(self.nodes.get(slot), Some(Some(_))))
                    .collect(),
                false,
            ),
        };
        order.retain(|&slot| {
            let Some(node) = self.nodes.get(slot).and_then(Option::as_ref) else {
                return false;
            };
            if node.pass != pass || node.streams.is_empty() {
                self.release(slot);
                return false;
            }
            true
        });
        if !sorted {
            // One slot per node: the ids are distinct.
            let nodes = &self.nodes;
            let id = |slot: &usize| nodes.get(*slot).and_then(Option::as_ref).map(|n| &n.id);
            order.sort_unstable_by(|a, b| id(a).cmp(&id(b)));
        }
        let mut all: Vec<ProxyView> = Vec::with_capacity(order.len());
        for &slot in &order {
            if let Some(node) = self.nodes.get_mut(slot).and_then(Option::as_mut) {
                let view = view_of(&node.streams, &self.streams);
                node.dirty = false;
                all.push(view.clone());
                node.view = Some(view);
            }
        }
        self.order = Some(order);
        self.basis = Some(basis);
        all
    }

    /// The nodes whose view `changes` changed, as an event for the
    /// machine (`None` when no view changed). `Err(())` when the views are
    /// not kept or were measured against another basis: the caller then
    /// makes a whole pass.
    pub(super) fn changes(
        &mut self,
        changes: &Changes,
        basis: &Basis,
        snapshot: &Snapshot,
    ) -> Result<Option<Event>, ()> {
        if self.basis.as_ref() != Some(basis) {
            return Err(());
        }
        let mut touched: Vec<usize> = Vec::new();
        for id in &changes.gone {
            self.unskip(*id);
            if let Some(part) = self.streams.remove(id)
                && let Some(Some(node)) = self.nodes.get_mut(part.node)
            {
                node.streams.retain(|s| s != id);
                if !std::mem::replace(&mut node.dirty, true) {
                    touched.push(part.node);
                }
            }
        }
        for p in &changes.changed {
            if let Some((slot, first)) = self.put(p, basis, snapshot)
                && first
            {
                touched.push(slot);
            }
        }
        let (mut changed, mut gone) = (Vec::new(), Vec::new());
        for slot in touched {
            let Some(node) = self.nodes.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            node.dirty = false;
            if node.streams.is_empty() {
                gone.push(node.id.to_string());
                self.release(slot);
                continue;
            }
            let view = view_of(&node.streams, &self.streams);
            if node.view.as_ref() != Some(&view) {
                node.view = Some(view.clone());
                changed.push(view);
            }
        }
        if changed.is_empty() && gone.is_empty() {
            return Ok(None);
        }
        Ok(Some(Event::ProxiesChanged { changed, gone }))
    }

    /// The cordoned nodes left out, by id.
    pub(super) fn skipped(&self) -> Vec<String> {
        self.skipped.keys().cloned().collect()
    }

    /// Whether the nodes left out changed since the last call.
    pub(super) fn skipped_changed(&mut self) -> bool {
        std::mem::take(&mut self.skipped_moved)
    }

    /// Forgets a stream that was left out as cordoned, if it was.
    fn unskip(&mut self, stream: u64) {
        let Some(node) = self.skipped_streams.remove(&stream) else {
            return;
        };
        if let Some(streams) = self.skipped.get_mut(&node) {
            streams.remove(&stream);
            if streams.is_empty() {
                self.skipped.remove(&node);
                self.skipped_moved = true;
            }
        }
    }

    /// Frees a node's slot.
    fn release(&mut self, slot: usize) {
        if let Some(node) = self.nodes.get_mut(slot).and_then(Option::take) {
            self.slots.remove(&node.id);
            self.free.push(slot);
        }
    }

    /// The slot of the node `id`, made if it has none, marked as found by
    /// this pass.
    fn slot_of(&mut self, id: &str) -> usize {
        let pass = self.pass;
        if let Some(&slot) = self.slots.get(id)
            && let Some(Some(node)) = self.nodes.get_mut(slot)
        {
            node.pass = pass;
            return slot;
        }
        self.order = None;
        let id: Arc<str> = Arc::from(id);
        let node = Node {
            id: id.clone(),
            streams: Vec::with_capacity(1),
            view: None,
            dirty: false,
            pass,
        };
        let slot = match self.free.pop() {
            Some(free) if free < self.nodes.len() => {
                self.nodes[free] = Some(node);
                free
            }
            _ => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.slots.insert(id, slot);
        slot
    }

    /// Records one stream's part (if it is in the groups, named its node
    /// and the node is not cordoned); returns the slot of the node it
    /// belongs to, and whether this made the node dirty (it was not yet).
    fn put(
        &mut self,
        p: &ProxyStatus,
        basis: &Basis,
        snapshot: &Snapshot,
    ) -> Option<(usize, bool)> {
        let node = p.node.as_ref()?;
        if !basis.groups.contains(&node.cluster) {
            return None;
        }
        if self.cordoned.contains(&node.id) {
            // Its NACK must not fail the operation, nor its lag hold it.
            let streams = self.skipped.entry(node.id.clone()).or_default();
            self.skipped_moved |= streams.is_empty();
            streams.insert(p.stream_id);
            self.skipped_streams.insert(p.stream_id, node.id.clone());
            return None;
        }
        // A known stream reaches its node by its slot (a stream's node
        // never changes: a stream naming another is closed); only a new
        // one looks its node up by id.
        let slot = match self.streams.get(&p.stream_id) {
            Some(part) => {
                if let Some(Some(n)) = self.nodes.get_mut(part.node) {
                    n.pass = self.pass;
                }
                part.node
            }
            None => self.slot_of(&node.id),
        };
        let n = self.nodes.get_mut(slot).and_then(Option::as_mut)?;
        if let Err(at) = n.streams.binary_search(&p.stream_id) {
            n.streams.insert(at, p.stream_id);
        }
        let first = !std::mem::replace(&mut n.dirty, true);
        let id = &n.id;
        let view = stream_view(p, snapshot, basis.committed, || id.clone())?;
        let pass = self.pass;
        match self.streams.get_mut(&p.stream_id) {
            Some(part) => {
                part.view = view;
                part.pass = pass;
                part.disconnected = p.disconnected;
            }
            None => {
                self.streams.insert(
                    p.stream_id,
                    Part {
                        node: slot,
                        view,
                        pass,
                        disconnected: p.disconnected,
                    },
                );
            }
        }
        Some((slot, first))
    }
}

/// A node's view from its streams' parts, in stream order (as
/// [`proxy_views`](super::proxy_views) merges them). Disconnected streams
/// count only while the node has no connected one: a proxy that
/// reconnected (to another replica, say, while the one it left still
/// holds its old stream) is judged by its new stream.
fn view_of(streams: &[u64], parts: &StreamMap<Part>) -> ProxyView {
    let of_node = || streams.iter().filter_map(|s| parts.get(s));
    let connected = of_node().any(|p| !p.disconnected);
    let mut parts = of_node()
        .filter(|p| !connected || !p.disconnected)
        .map(|p| &p.view);
    let Some(first) = parts.next() else {
        return ProxyView {
            id: Arc::from(""),
            prepared: false,
            confirmed: false,
            nack: None,
        };
    };
    let mut view = first.clone();
    for part in parts {
        merge(&mut view, part);
    }
    view
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
