//! The messages waiting for each peer link, and this site's workload.
//!
//! A feeder reads the queue for messages nobody has started (every part `accepted`, none
//! handed to a modem, none waiting for a retry time), asks [`Placement`] where each goes, and
//! lists those placed on a peer in that peer's list, which its link drains into `submit_sm`s.
//! It runs every 100 ms; a message is listed once until it is
//! acknowledged or its link is lost ([`Forwarder::release`]).
//!
//! It also keeps, per link, the hand-over answers waiting to be sent ([`Forwarder::verdicts`]):
//! confirmations of messages recorded as forwarded, and answers to a peer's questions, sent in
//! batches as `data_sm`s ([`super::handover`]).
//!
//! Every second it also measures this site's workload — parts waiting here, and parts sent
//! in the last minute ÷ 60 — feeds it to the router under this site's name, and keeps it for
//! the links to send to the peers ([`crate::route::workload`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::message::{HandOverPdu, MAX_IDS};
use super::placement::{Facts, Place, Placement};
use crate::queue::{QueueError, Store, now_ms};
use crate::route::RouterState;
use crate::route::workload::WorkloadReport;

/// One message to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub recipient: i64,
    /// `<request id>/<recipient index>`: the id the peer stores it under.
    pub origin_id: String,
    pub number: String,
    /// Its parts joined: exactly what this site would have sent.
    pub text: String,
    /// Its first unsent part, which a permanent refusal fails (and the rest with it).
    pub first_part: i64,
}

#[derive(Default)]
struct Lists {
    per_peer: HashMap<String, VecDeque<Item>>,
    /// Listed or in flight on a link.
    busy: HashSet<i64>,
}

/// The lists of messages for the peer links.
pub struct Forwarder {
    lists: Mutex<Lists>,
    wake: HashMap<String, Arc<Notify>>,
    workload: Mutex<WorkloadReport>,
    /// Hand-over answers per peer, not yet sent.
    outbox: Mutex<HashMap<String, HandOverPdu>>,
}

impl Forwarder {
    pub fn new(peers: &[String]) -> Self {
        Forwarder {
            lists: Mutex::default(),
            wake: peers
                .iter()
                .map(|p| (p.clone(), Arc::new(Notify::new())))
                .collect(),
            workload: Mutex::new(WorkloadReport::new(0, 0.0)),
            outbox: Mutex::default(),
        }
    }

    /// Lists hand-over answers for `peer`'s link to send (kept across a lost link: sending
    /// one twice changes nothing at the peer).
    pub fn verdicts(&self, peer: &str, yours: Vec<String>, not_yours: Vec<String>) {
        if yours.is_empty() && not_yours.is_empty() {
            return;
        }
        let mut o = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let h = o.entry(peer.to_string()).or_default();
        h.yours.extend(yours);
        h.not_yours.extend(not_yours);
        drop(o);
        if let Some(w) = self.wake.get(peer) {
            w.notify_one();
        }
    }

    /// The next batch of hand-over answers for `peer`, at most [`MAX_IDS`] of each kind.
    pub fn next_verdicts(&self, peer: &str) -> Option<HandOverPdu> {
        let mut o = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let h = o.get_mut(peer)?;
        if h.is_empty() {
            return None;
        }
        let take = |v: &mut Vec<String>| v.drain(..v.len().min(MAX_IDS)).collect();
        Some(HandOverPdu {
            ask: Vec::new(),
            yours: take(&mut h.yours),
            not_yours: take(&mut h.not_yours),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified when something is listed for `peer`.
    pub fn waker(&self, peer: &str) -> Option<Arc<Notify>> {
        self.wake.get(peer).cloned()
    }

    /// Lists a message for `peer` unless it is listed or in flight already.
    pub fn push(&self, peer: &str, item: Item) -> bool {
        let mut l = self.lock();
        if !l.busy.insert(item.recipient) {
            return false;
        }
        l.per_peer
            .entry(peer.to_string())
            .or_default()
            .push_back(item);
        drop(l);
        if let Some(w) = self.wake.get(peer) {
            w.notify_one();
        }
        true
    }

    /// The next message for `peer`'s link.
    pub fn next(&self, peer: &str) -> Option<Item> {
        self.lock().per_peer.get_mut(peer)?.pop_front()
    }

    /// The message left the link's hands (acknowledged and recorded, or failed).
    pub fn done(&self, recipient: i64) {
        self.lock().busy.remove(&recipient);
    }

    /// The link to `peer` is lost: its list is emptied and `in_flight` (sent without a
    /// response) with it; all of them may be listed again, wherever they are placed next.
    pub fn release(&self, peer: &str, in_flight: Vec<Item>) {
        let mut l = self.lock();
        let listed: Vec<Item> = l
            .per_peer
            .get_mut(peer)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        for it in listed.iter().chain(in_flight.iter()) {
            l.busy.remove(&it.recipient);
        }
    }

    pub fn workload(&self) -> WorkloadReport {
        *self.workload.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the queue for messages to forward, and measures the workload.
pub async fn feed(
    store: Store,
    placement: Arc<Placement>,
    forwarder: Arc<Forwarder>,
    state: RouterState,
    site: String,
    shutdown: CancellationToken,
) {
    let mut last_workload = tokio::time::Instant::now() - Duration::from_secs(2);
    loop {
        if last_workload.elapsed() >= Duration::from_secs(1) {
            last_workload = tokio::time::Instant::now();
            match workload(&store).await {
                Ok((q, tp)) => {
                    state.set_workload(&site, q, tp);
                    *forwarder.workload.lock().unwrap_or_else(|e| e.into_inner()) =
                        WorkloadReport::new(q, tp);
                }
                Err(e) => warn!(error = %e, "cannot measure the queue's workload"),
            }
        }
        match candidates(&store, 500).await {
            Ok(list) => {
                for c in list {
                    let place = placement.decide(Facts {
                        recipient: c.item.recipient,
                        number: &c.item.number,
                        parts: c.parts,
                        from_peer: c.from_peer,
                        started_here: false,
                    });
                    if let Place::Peer(p) = place {
                        forwarder.push(&p, c.item);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the queue for the peer links"),
        }
        // Not woken by intake's notification: that one wakes the modem pool, and taking it
        // here would delay local sends. A tenth of a second is the forwarding latency.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

struct Candidate {
    item: Item,
    parts: u32,
    from_peer: bool,
}

/// Messages no one has started: every part `accepted` or `routed`, none given to a channel,
/// none waiting for a later time (a retry, the pumping guard's first-contact delay).
async fn candidates(store: &Store, limit: i64) -> Result<Vec<Candidate>, QueueError> {
    let now = now_ms();
    let rows: Vec<(i64, String, i64, String, String, i64, i64)> = sqlx::query_as(
        "SELECT r.id, r.request_id, r.idx, r.number, q.source,
                (SELECT COUNT(*) FROM parts p WHERE p.recipient_id = r.id),
                (SELECT MIN(p.id) FROM parts p WHERE p.recipient_id = r.id)
         FROM recipients r JOIN requests q ON q.id = r.request_id
         WHERE r.state IN ('accepted', 'routed')
           AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.recipient_id = r.id
               AND (p.channel IS NOT NULL OR p.state NOT IN ('accepted', 'routed')
                    OR (p.next_attempt_at IS NOT NULL AND p.next_attempt_at > ?1)))
         ORDER BY r.id LIMIT ?2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(store.reader())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (rid, request, idx, number, source, parts, first) in rows {
        // Forwarded messages are sent here: only their placement is needed, not their text.
        let from_peer = source == "peer";
        let text = if from_peer {
            String::new()
        } else {
            let texts: Vec<String> =
                sqlx::query_scalar("SELECT text FROM parts WHERE recipient_id = ?1 ORDER BY seq")
                    .bind(rid)
                    .fetch_all(store.reader())
                    .await?;
            texts.concat()
        };
        out.push(Candidate {
            item: Item {
                recipient: rid,
                origin_id: format!("{request}/{idx}"),
                number,
                text,
                first_part: first,
            },
            parts: u32::try_from(parts).unwrap_or(u32::MAX),
            from_peer,
        });
    }
    Ok(out)
}

/// Parts waiting here, and parts sent per second over the last minute.
async fn workload(store: &Store) -> Result<(u64, f64), QueueError> {
    // Queued and in-flight parts counted apart, each through its partial index.
    let waiting: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM parts WHERE state IN ('accepted', 'routed'))
                + (SELECT COUNT(*) FROM parts WHERE state = 'sending')",
    )
    .fetch_one(store.reader())
    .await?;
    Ok((u64::try_from(waiting).unwrap_or(0), store.sent_per_second()))
}
