//! The proxies an operation waits for, as its machine last saw them.
//!
//! Every ACK of every proxy reaches the machine as a changed view, so what
//! a view's change costs here is paid thousands of times per flip. The
//! sets the phases ask about (who is not ready, who has not settled, who
//! rejects) are ordered by id, because an operator is shown the first
//! waiting proxies by id and the first rejecting one names the failure;
//! but an ACK must not pay for comparing ids down a tree of thousands.
//! So every proxy of the last whole list ([`Seen::replace`], once per
//! commit) has a rank, its place in that list sorted by id, and a set
//! holds those proxies as bits by rank; proxies that joined since (few)
//! sit beside them in a small tree by id. Iterating a set merges the two,
//! so it still yields ids in order.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One proxy, as the rollout needs to see it. The controller computes it
/// from the proxy registry and the snapshot being served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyView {
    /// The proxy's node id, shared: the machine keeps it in several sets
    /// and every ACK hands a view over, so a copy is a reference count,
    /// not an allocation.
    pub(crate) id: Arc<str>,
    /// It has ACKed the clusters and endpoints of the snapshot being
    /// served, so every fleet's cluster is warm on it.
    pub(crate) prepared: bool,
    /// It has applied the snapshot being served (before a commit) or the
    /// committed version or a later one (after), on every type it
    /// subscribes to.
    pub(crate) confirmed: bool,
    /// Before a commit: it rejects the configuration it was last sent.
    /// After: it rejected the committed version or a later one. With the
    /// proxy's reason.
    pub(crate) nack: Option<String>,
}

/// What a phase waits for every proxy to be.
#[derive(Clone, Copy, Debug)]
pub(super) enum Until {
    /// Prepared and confirmed.
    Ready,
    /// Confirmed, or rejecting.
    Settled,
}

/// The proxies as last observed, with the sets the phases ask about kept
/// up to date on every change, so that no event costs a pass over the
/// whole fleet.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    /// By id. Hashed: looked up at every change.
    views: HashMap<Arc<str>, Entry>,
    /// The ids of the last whole list, by rank (so in id order).
    ranked: Vec<Arc<str>>,
    /// Not both prepared and confirmed (what preparing waits for).
    unready: IdSet,
    /// Neither confirmed nor rejecting (what confirming waits for).
    unsettled: IdSet,
    nacking: IdSet,
}

#[derive(Clone, Debug)]
struct Entry {
    view: ProxyView,
    /// Its place in the last whole list; `None` when it joined since.
    rank: Option<usize>,
}

impl Seen {
    /// Replaces every view: the whole list is sorted once and ranked in
    /// that order.
    pub(super) fn replace(&mut self, mut given: Vec<ProxyView>) {
        // Stable (and linear on the sorted lists the controller gives):
        // of two views of one proxy the later wins, as one by one.
        given.sort_by(|a, b| a.id.cmp(&b.id));
        let mut all: Vec<ProxyView> = Vec::with_capacity(given.len());
        for view in given {
            match all.last_mut() {
                Some(last) if last.id == view.id => *last = view,
                _ => all.push(view),
            }
        }
        let n = all.len();
        self.unready = IdSet::for_ranks(n);
        self.unsettled = IdSet::for_ranks(n);
        self.nacking = IdSet::for_ranks(n);
        self.ranked.clear();
        self.ranked.reserve(n);
        self.views.clear();
        self.views.reserve(n);
        for (rank, view) in all.into_iter().enumerate() {
            let marks = Marks::of(&view);
            self.unready.put(&view.id, Some(rank), marks.unready);
            self.unsettled.put(&view.id, Some(rank), marks.unsettled);
            self.nacking.put(&view.id, Some(rank), marks.nacking);
            self.ranked.push(view.id.clone());
            let entry = Entry {
                view,
                rank: Some(rank),
            };
            self.views.insert(entry.view.id.clone(), entry);
        }
    }

    /// Forgets a proxy that left.
    pub(super) fn remove(&mut self, id: &str) {
        if let Some(Entry { view, rank }) = self.views.remove(id) {
            self.unready.put(&view.id, rank, false);
            self.unsettled.put(&view.id, rank, false);
            self.nacking.put(&view.id, rank, false);
        }
    }

    /// Takes a proxy's view as it is now (one that joined gets no rank
    /// until the next whole list).
    pub(super) fn insert(&mut self, view: ProxyView) {
        let now = Marks::of(&view);
        let id = view.id.clone();
        let (was, rank) = match self.views.get_mut(&*view.id) {
            Some(entry) if entry.view == view => return,
            Some(entry) => {
                let was = Marks::of(&entry.view);
                entry.view = view;
                (Some(was), entry.rank)
            }
            None => {
                self.views.insert(id.clone(), Entry { view, rank: None });
                (None, None)
            }
        };
        let changed = |was: Option<bool>, on: bool| was.unwrap_or(false) != on;
        if changed(was.map(|w| w.unready), now.unready) {
            self.unready.put(&id, rank, now.unready);
        }
        if changed(was.map(|w| w.unsettled), now.unsettled) {
            self.unsettled.put(&id, rank, now.unsettled);
        }
        if changed(was.map(|w| w.nacking), now.nacking) {
            self.nacking.put(&id, rank, now.nacking);
        }
    }

    /// How many proxies there are.
    pub(super) fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether there is none.
    pub(super) fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// How many are not yet what `until` asks.
    pub(super) fn waiting_len(&self, until: Until) -> usize {
        self.waiting_set(until).len
    }

    /// The ids of those not yet what `until` asks, in id order.
    pub(super) fn waiting(&self, until: Until) -> impl Iterator<Item = &Arc<str>> {
        self.waiting_set(until).iter(&self.ranked)
    }

    fn waiting_set(&self, until: Until) -> &IdSet {
        match until {
            Until::Ready => &self.unready,
            Until::Settled => &self.unsettled,
        }
    }

    /// The rejecting proxies, by id.
    pub(super) fn nacking(&self) -> impl Iterator<Item = &ProxyView> {
        self.nacking
            .iter(&self.ranked)
            .filter_map(|id| self.views.get(id).map(|e| &e.view))
    }

    /// The first rejecting proxy, by id.
    pub(super) fn first_nack(&self) -> Option<&ProxyView> {
        self.nacking().next()
    }
}

/// Which of [`Seen`]'s sets a view belongs in.
#[derive(Clone, Copy)]
struct Marks {
    unready: bool,
    unsettled: bool,
    nacking: bool,
}

impl Marks {
    fn of(view: &ProxyView) -> Marks {
        Marks {
            unready: !(view.prepared && view.confirmed),
            unsettled: !(view.confirmed || view.nack.is_some()),
            nacking: view.nack.is_some(),
        }
    }
}

/// A set of proxies, iterated in id order: those with a rank as bits,
/// those without in a tree by id.
#[derive(Clone, Debug, Default)]
struct IdSet {
    /// Bit `r % 64` of word `r / 64`: the proxy of rank `r` is in.
    bits: Vec<u64>,
    /// Proxies without a rank, by id.
    joined: BTreeSet<Arc<str>>,
    len: usize,
}

impl IdSet {
    /// An empty set with room for `n` ranks.
    fn for_ranks(n: usize) -> IdSet {
        IdSet {
            bits: vec![0; n.div_ceil(64)],
            ..IdSet::default()
        }
    }

    /// Puts the proxy in (`on`) or takes it out.
    fn put(&mut self, id: &Arc<str>, rank: Option<usize>, on: bool) {
        let changed = match rank {
            Some(rank) => {
                let (at, bit) = (rank / 64, 1u64 << (rank % 64));
                if at >= self.bits.len() {
                    self.bits.resize(at + 1, 0);
                }
                let word = &mut self.bits[at];
                let was = *word & bit != 0;
                if on {
                    *word |= bit;
                } else {
                    *word &= !bit;
                }
                was != on
            }
            None if on => self.joined.insert(id.clone()),
            None => self.joined.remove(&**id),
        };
        if changed {
            if on {
                self.len += 1;
            } else {
                self.len -= 1;
            }
        }
    }

    /// The ids in the set, in id order: the ranked ones (whose ranks are
    /// in id order) merged with the joined ones.
    fn iter<'a>(&'a self, ranked: &'a [Arc<str>]) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        let mut by_rank = self
            .bits
            .iter()
            .enumerate()
            .flat_map(|(at, &word)| Ones(word).map(move |bit| at * 64 + bit))
            .filter_map(|rank| ranked.get(rank))
            .peekable();
        let mut joined = self.joined.iter().peekable();
        std::iter::from_fn(move || match (by_rank.peek(), joined.peek()) {
            (Some(a), Some(b)) if b < a => joined.next(),
            (Some(_), _) => by_rank.next(),
            (None, _) => joined.next(),
        })
    }
}

/// The positions of a word's set bits, lowest first.
struct Ones(u64);

impl Iterator for Ones {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
#[path = "seen_tests.rs"]
mod tests;
