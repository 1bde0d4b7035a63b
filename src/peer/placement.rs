//! Which site sends each message: this one's modems, or a peer over its link.
//!
//! The local modem pool and the peer links both read the queue; each recipient's message must
//! be taken by exactly one of them. The first of the two to look at a message asks the router
//! and the answer is written here, under the recipient's id; the other one then reads the same
//! answer, so a change of a site's health between the two looks cannot split a message between
//! two senders. An answer changes only in two ways:
//!
//! - a peer's link is lost: the messages placed on it that it had not acknowledged are placed
//!   again ([`Placement::release_peer`]), by the router, which now excludes that site;
//! - a peer acknowledged a message (`submit_sm_resp`, after its commit): the message is the
//!   peer's, recorded durably as `sent` through `peer:<name>` ([`crate::queue::Change::Forwarded`]),
//!   and its entry here is dropped.
//!
//! A message placed here stays here: the pool may have listed it already. Messages a peer
//! forwarded to this site, and messages with a part already handed to a local modem, are always
//! sent here: a message is routed once ([`crate::route::Router::rank_forwarded`]) and a
//! concatenated message leaves from one SIM.
//!
//! The entries live in memory only: after a restart the pool's list is empty too, and the
//! messages the peers acknowledged are `sent` on disk, so deciding afresh is safe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::queue::Work;
use crate::route::Router;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// This site's modems.
    Here,
    /// The peer site of that name, over its link.
    Peer(String),
    /// The peer acknowledged it (`submit_sm_resp`) and the record of that is being committed:
    /// it is the peer's, whatever happens to the link meanwhile.
    Taken(String),
    /// An external SMPP provider of this site (a channel's name), over its bind
    /// ([`super::provider`]).
    Provider(String),
}

/// What a decision needs to know about a message.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub recipient: i64,
    pub number: &'a str,
    pub parts: u32,
    /// A peer forwarded it here.
    pub from_peer: bool,
    /// A part of it was handed to a local modem already (attempted, or sent).
    pub started_here: bool,
}

/// The placements of the messages being sent.
pub struct Placement {
    router: Arc<Router>,
    /// Peers this site has a link to: the only sites a message can be forwarded to.
    linked: Vec<String>,
    /// This site's providers with a bind: the only `smpp` channels a message can be given to.
    providers: Vec<String>,
    map: Mutex<HashMap<i64, Place>>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("linked", &self.linked)
            .finish_non_exhaustive()
    }
}

impl Placement {
    pub fn new(router: Arc<Router>, linked: Vec<String>) -> Self {
        Placement {
            router,
            linked,
            providers: Vec::new(),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The providers this site binds to.
    pub fn with_providers(mut self, providers: Vec<String>) -> Self {
        self.providers = providers;
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Place>> {
        // Every change is one insert or remove: a panic elsewhere cannot leave it half-done.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The place of a message: the one decided before, or a new decision.
    pub fn decide(&self, f: Facts<'_>) -> Place {
        let mut map = self.lock();
        if let Some(p) = map.get(&f.recipient) {
            return p.clone();
        }
        let place = if f.started_here {
            Place::Here
        } else if f.from_peer {
            self.route_forwarded(f.number, f.parts)
        } else {
            self.route(f.number, f.parts)
        };
        map.insert(f.recipient, place.clone());
        place
    }

    fn route(&self, number: &str, parts: u32) -> Place {
        // No usable route at all (or a number the router cannot read) stays here, where the
        // modem stage fails or retries it with its reason, as it did before sites had peers.
        let Ok(ranking) = self.router.rank(number, parts.max(1)) else {
            return Place::Here;
        };
        match ranking.best() {
            Some(c) if !c.local && self.linked.iter().any(|l| l == c.site) => {
                Place::Peer(c.site.to_string())
            }
            Some(c) => self.local(&c),
            _ => Place::Here,
        }
    }

    /// A message a peer forwarded here: this site's own channels only.
    fn route_forwarded(&self, number: &str, parts: u32) -> Place {
        match self.router.rank_forwarded(number, parts.max(1)) {
            Ok(r) => r.best().map_or(Place::Here, |c| self.local(&c)),
            Err(_) => Place::Here,
        }
    }

    /// A candidate of this site: one of its providers, or its modems.
    fn local(&self, c: &crate::route::Candidate<'_>) -> Place {
        if c.local
            && c.kind == crate::route::ChannelKind::Smpp
            && self.providers.iter().any(|p| p == c.channel)
        {
            Place::Provider(c.channel.to_string())
        } else {
            Place::Here
        }
    }

    /// The bind to provider `name` is lost: the messages placed on it that it has not started
    /// are decided again. Returns how many.
    pub fn release_provider(&self, name: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, p| !matches!(p, Place::Provider(n) if n == name));
        before - map.len()
    }

    /// The peer acknowledged the message: nobody else may take it from now on.
    pub fn taken(&self, recipient: i64, peer: &str) {
        self.lock()
            .insert(recipient, Place::Taken(peer.to_string()));
    }

    /// The message is recorded on disk as the peer's (or failed): its entry is not needed.
    pub fn forget(&self, recipient: i64) {
        self.lock().remove(&recipient);
    }

    /// The link to `peer` is lost: the messages placed on it that are still here (not
    /// acknowledged) are decided again. Returns how many.
    pub fn release_peer(&self, peer: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, p| !matches!(p, Place::Peer(n) if n == peer));
        before - map.len()
    }

    /// A message placed here that has a part handed to a modem no longer needs its entry: the
    /// "started here" rule keeps it here. Keeps the map to the messages in flight.
    fn prune(&self, recipient: i64) {
        let mut map = self.lock();
        if map.get(&recipient) == Some(&Place::Here) {
            map.remove(&recipient);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// The hook the local pool's reading of the queue calls (`queue::dispatch::ready`).
impl crate::queue::dispatch::Placement for Placement {
    fn send_here(&self, work: &Work, source: &str) -> bool {
        // A message a provider has sent a part of stays with it (one sender for all the parts);
        // one a provider only tried is placed afresh (`peer::provider`).
        let on_provider = |c: Option<&str>| c.is_some_and(super::provider::is_provider_channel);
        if on_provider(work.sent_on.as_deref()) {
            return false;
        }
        let started = work.sent_on.is_some()
            || work.pending.iter().any(|p| {
                (p.attempts > 0 || p.last_channel.is_some())
                    && !on_provider(p.last_channel.as_deref())
            });
        if started {
            self.prune(work.recipient_id);
            return true;
        }
        self.decide(Facts {
            recipient: work.recipient_id,
            number: &work.number,
            parts: u32::try_from(work.all_parts.len()).unwrap_or(u32::MAX),
            from_peer: source == "peer",
            started_here: false,
        }) == Place::Here
    }
}
