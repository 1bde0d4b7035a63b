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
//!
//! Two more rules come from the hand-over ([`super::handover`]): a message taken back from a
//! peer is never placed on that peer again, nor taken by it ([`Placement::take_back`], loaded
//! from disk at start), and a message a peer forwarded here is sent only once its origin
//! released it ([`super::handover::Inbound`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::handover::Inbound;

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
    map: Mutex<Places>,
    /// The forwarded messages this site may send.
    inbound: Arc<Inbound>,
}

#[derive(Default)]
struct Places {
    place: HashMap<i64, Place>,
    /// The peers each message was taken back from.
    taken_back: HashMap<i64, Vec<String>>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("linked", &self.linked)
            .finish_non_exhaustive()
    }
}

impl Placement {
    pub fn new(router: Arc<Router>, linked: Vec<String>, inbound: Arc<Inbound>) -> Self {
        Placement {
            router,
            linked,
            providers: Vec::new(),
            map: Mutex::new(Places::default()),
            inbound,
        }
    }

    /// The providers this site binds to.
    pub fn with_providers(mut self, providers: Vec<String>) -> Self {
        self.providers = providers;
        self
    }

    /// Messages taken back from peers before a restart (`handover::load_taken_back`).
    pub fn load_taken_back(&self, list: Vec<(i64, String)>) {
        let mut m = self.lock();
        for (r, p) in list {
            m.taken_back.entry(r).or_default().push(p);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Places> {
        // Every change is one insert or remove: a panic elsewhere cannot leave it half-done.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The place of a message: the one decided before, or a new decision.
    pub fn decide(&self, f: Facts<'_>) -> Place {
        let mut m = self.lock();
        if let Some(p) = m.place.get(&f.recipient) {
            return p.clone();
        }
        let place = if f.started_here {
            Place::Here
        } else if f.from_peer {
            self.route_forwarded(f.number, f.parts)
        } else {
            let not = m.taken_back.get(&f.recipient).cloned().unwrap_or_default();
            self.route(f.number, f.parts, &not)
        };
        m.place.insert(f.recipient, place.clone());
        place
    }

    fn route(&self, number: &str, parts: u32, taken_back_from: &[String]) -> Place {
        // No usable route at all (or a number the router cannot read) stays here, where the
        // modem stage fails or retries it with its reason, as it did before sites had peers.
        let Ok(ranking) = self.router.rank(number, parts.max(1)) else {
            return Place::Here;
        };
        // The best usable candidate that is not a peer this message was taken back from.
        let best = ranking
            .candidates()
            .take_while(|c| c.choice.is_included())
            .find(|c| c.local || !taken_back_from.iter().any(|p| p == c.site));
        match best {
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
        let mut m = self.lock();
        let before = m.place.len();
        m.place
            .retain(|_, p| !matches!(p, Place::Provider(n) if n == name));
        before - m.place.len()
    }

    /// The peer acknowledged the message. True: it is the peer's, nobody else may take it
    /// from now on. False: it is not placed on that peer any more (taken back first, or its
    /// link was lost and it was placed again, maybe here and in the pool's list already), and
    /// the acknowledgement is refused (the peer drops its copy when it asks).
    pub fn taken(&self, recipient: i64, peer: &str) -> bool {
        let mut m = self.lock();
        if m.taken_back
            .get(&recipient)
            .is_some_and(|v| v.iter().any(|p| p == peer))
        {
            return false;
        }
        if !matches!(m.place.get(&recipient), Some(Place::Peer(p)) if p == peer) {
            return false;
        }
        m.place.insert(recipient, Place::Taken(peer.to_string()));
        true
    }

    /// Whether the message is placed at `place` now: a link checks it before sending a message
    /// it listed, which may have been placed again since.
    pub fn is_at(&self, recipient: i64, place: &Place) -> bool {
        self.lock().place.get(&recipient) == Some(place)
    }

    /// Takes the message back from `peer`: it will never be placed on it nor taken by it. False
    /// when the peer's acknowledgement was read already (it is the peer's, being recorded).
    pub fn take_back(&self, recipient: i64, peer: &str) -> bool {
        let mut m = self.lock();
        if matches!(m.place.get(&recipient), Some(Place::Taken(p)) if p == peer) {
            return false;
        }
        if matches!(m.place.get(&recipient), Some(Place::Peer(p)) if p == peer) {
            m.place.remove(&recipient);
        }
        let list = m.taken_back.entry(recipient).or_default();
        if !list.iter().any(|p| p == peer) {
            list.push(peer.to_string());
        }
        true
    }

    /// The message is to be decided again: the peer or provider at `was` refused it for now.
    /// A message placed elsewhere meanwhile keeps that place: its link was lost and it was
    /// decided again, maybe here, where the pool may have listed it already. The peers it was
    /// taken back from stay excluded.
    pub fn forget(&self, recipient: i64, was: &Place) {
        let mut m = self.lock();
        if m.place.get(&recipient) == Some(was) {
            m.place.remove(&recipient);
        }
    }

    /// The message is recorded on disk as a peer's, or failed: nothing about it is needed.
    pub fn finished(&self, recipient: i64) {
        let mut m = self.lock();
        m.place.remove(&recipient);
        m.taken_back.remove(&recipient);
    }

    /// The link to `peer` is lost: the messages placed on it that are still here (not
    /// acknowledged) are decided again. Returns how many.
    pub fn release_peer(&self, peer: &str) -> usize {
        let mut m = self.lock();
        let before = m.place.len();
        m.place
            .retain(|_, p| !matches!(p, Place::Peer(n) if n == peer));
        before - m.place.len()
    }

    /// A message placed here that has a part handed to a modem no longer needs its entry: the
    /// "started here" rule keeps it here. Keeps the map to the messages in flight.
    fn prune(&self, recipient: i64) {
        let mut m = self.lock();
        if m.place.get(&recipient) == Some(&Place::Here) {
            m.place.remove(&recipient);
            m.taken_back.remove(&recipient);
        }
    }

    /// Whether a message a peer forwarded was released by its origin (`handover`).
    pub fn may_send_forwarded(&self, recipient: i64) -> bool {
        self.inbound.may_send(recipient)
    }

    pub fn len(&self) -> usize {
        self.lock().place.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().place.is_empty()
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
            self.inbound.started(work.recipient_id);
            return true;
        }
        // A message a peer forwarded waits for its origin's word (`handover`).
        if source == "peer" && !self.inbound.may_send(work.recipient_id) {
            return false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouterState;

    /// uk is this site; a French number is cheapest at fr, then de, then uk's own modems.
    const ORG: &str = r#"
[site]
name = "uk"
default_country = "GB"
sms_domains = ["sms"]
[store]
path = "q.db"
[[peer]]
name = "fr"
forwarding_cost = 0.002
[[peer]]
name = "de"
forwarding_cost = 0.003
[[channel]]
name = "uk-modems"
kind = "modems"
site = "uk"
tariff = { "33" = 0.11 }
[[channel]]
name = "fr-modems"
kind = "modems"
site = "fr"
tariff = { "33" = 0.02 }
[[channel]]
name = "de-modems"
kind = "modems"
site = "de"
tariff = { "33" = 0.04 }
"#;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// Decide; the place expected ("here", or a peer's name).
        Decide(&'static str),
        /// The peer's acknowledgement; whether it is accepted.
        Taken(&'static str, bool),
        /// Taking back from the peer; whether it could be (the hand-over's gate).
        TakeBack(&'static str, bool),
        /// The peer refused it for now (`forget`, a second later).
        Forget(&'static str),
        Finished,
        ReleasePeer(&'static str),
        /// Taken back before a restart, as loaded from disk.
        Loaded(&'static str),
        /// The router hears that the site is down, or up again.
        Down(&'static str),
        Up(&'static str),
    }

    fn placement() -> (Placement, RouterState) {
        let cfg = crate::config::parse(std::path::Path::new("gw.toml"), ORG)
            .unwrap_or_else(|e| panic!("{e}"));
        let state = RouterState::new();
        state.set_site_up("fr", true);
        state.set_site_up("de", true);
        let router = Arc::new(Router::new(&cfg.routing, state.clone()).unwrap());
        let p = Placement::new(
            router,
            vec!["fr".into(), "de".into()],
            Arc::new(Inbound::holding()),
        );
        (p, state)
    }

    #[test]
    fn acknowledgement_and_taking_back_exclude_each_other() {
        use Op::*;
        let cases: &[(&str, &[Op])] = &[
            (
                "ordinary forward",
                &[Decide("fr"), Taken("fr", true), TakeBack("fr", false)],
            ),
            (
                "taken back first: the late acknowledgement is refused, and fr is avoided",
                &[
                    Decide("fr"),
                    TakeBack("fr", true),
                    Taken("fr", false),
                    Decide("de"),
                ],
            ),
            (
                "taken back from both peers: sent here",
                &[TakeBack("fr", true), TakeBack("de", true), Decide("here")],
            ),
            (
                "a temporary refusal decides again without forgetting what was taken back",
                &[
                    TakeBack("fr", true),
                    Decide("de"),
                    Forget("de"),
                    Decide("de"),
                ],
            ),
            (
                "finished: nothing kept",
                &[TakeBack("fr", true), Finished, Decide("fr")],
            ),
            (
                "a lost link decides again; a message the peer took stays the peer's",
                &[
                    Decide("fr"),
                    ReleasePeer("fr"),
                    Decide("fr"),
                    Taken("fr", true),
                    ReleasePeer("fr"),
                    TakeBack("fr", false),
                ],
            ),
            (
                "a refusal read after the link was lost leaves the new place alone",
                &[
                    Decide("fr"),
                    Down("fr"),
                    ReleasePeer("fr"),
                    Decide("de"),
                    Up("fr"),
                    Forget("fr"),
                    Decide("de"),
                ],
            ),
            (
                "an acknowledgement from a peer the message is no longer placed on is refused",
                &[
                    Decide("fr"),
                    Down("fr"),
                    ReleasePeer("fr"),
                    Down("de"),
                    Decide("here"),
                    Up("fr"),
                    Taken("fr", false),
                    Forget("fr"),
                    Decide("here"),
                ],
            ),
            (
                "loaded from disk",
                &[Loaded("fr"), Decide("de"), Taken("fr", false)],
            ),
        ];
        for (name, ops) in cases {
            let (p, state) = placement();
            let rid = 7;
            for op in *ops {
                match *op {
                    Decide(want) => {
                        let got = p.decide(Facts {
                            recipient: rid,
                            number: "+33612345678",
                            parts: 1,
                            from_peer: false,
                            started_here: false,
                        });
                        let want = if want == "here" {
                            Place::Here
                        } else {
                            Place::Peer(want.into())
                        };
                        assert_eq!(got, want, "{name}: {op:?}");
                    }
                    Taken(peer, ok) => assert_eq!(p.taken(rid, peer), ok, "{name}: {op:?}"),
                    TakeBack(peer, ok) => {
                        assert_eq!(p.take_back(rid, peer), ok, "{name}: {op:?}")
                    }
                    Forget(peer) => p.forget(rid, &Place::Peer(peer.into())),
                    Finished => p.finished(rid),
                    ReleasePeer(peer) => {
                        p.release_peer(peer);
                    }
                    Loaded(peer) => p.load_taken_back(vec![(rid, peer.into())]),
                    Down(site) => {
                        state.set_site_up(site, false);
                    }
                    Up(site) => {
                        state.set_site_up(site, true);
                    }
                }
            }
        }
    }
}
