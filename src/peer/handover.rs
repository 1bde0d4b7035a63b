//! The hand-over of a forwarded message from its origin site to the site that sends it, so that
//! no message is sent by two sites, whatever dies when.
//!
//! `submit_sm_resp` alone cannot do it. The peer commits the message, then answers; if it dies
//! (or the link breaks) between the two, the origin never hears the answer, takes the message
//! back and sends it itself — and the peer, restarted, finds its committed copy and sends it
//! too. No order of "commit" and "answer" closes that window on one side only: the two sites
//! must agree, and the one that can always decide is the origin, which owns the message.
//!
//! **The protocol.** On the origin's bind to the peer (the same TCP connection, so its PDUs keep
//! their order):
//!
//! 1. origin → peer `submit_sm` (the message, its origin id); the peer commits it **held**: stored,
//!    never sent, and answers `submit_sm_resp`;
//! 2. the origin reads the response, marks the message taken by the peer in memory, commits
//!    "forwarded to the peer" (`forwards`), and only then confirms: a `data_sm` listing it as
//!    *yours* ([`message::TAG_YOURS`]; many messages per `data_sm`);
//! 3. the peer commits the message **released** and its modems send it.
//!
//! A link lost with messages sent and unanswered: the origin records each as **taken back** from
//! that peer (`handovers_out`) before placing it again, and never gives it to that peer again;
//! an answer read later for it (on a link that is back) is ignored as a refusal. A peer holding a
//! message for more than [`ASK_AFTER`] asks the origin, on the origin's bind ([`message::TAG_ASK`],
//! batched); the origin answers *yours* when it has recorded the message as forwarded to that
//! peer, *not yours* (after recording it taken back) otherwise, or nothing yet while its record
//! of the peer's answer is being committed; the peer releases, or drops it with the reason (it
//! fails there, and no receipt is owed). An origin that never answers leaves the message held:
//! `mail2sms status` shows why. So the ordinary path costs one more `data_sm` per batch of
//! messages and one commit at the peer.
//!
//! **Why at most one site sends.** The peer sends only after *yours*. The origin says *yours*
//! only once "forwarded to the peer" is on disk; it says *not yours* only after it has marked
//! the message taken back in memory — which makes a later `submit_sm_resp` for it a refusal — and
//! on disk. Those two marks are set under one lock ([`Placement::taken`], [`Placement::take_back`]):
//! whichever comes first wins, and the loser is refused. The origin sends a message itself only
//! when it was never forwarded (its parts stay `accepted` until "forwarded" is committed).
//!
//! | # | what dies or breaks, and when                                 | origin                                    | peer                                 | sent by |
//! |---|----------------------------------------------------------------|-------------------------------------------|--------------------------------------|---------|
//! | 1 | nothing                                                        | forwarded, confirms *yours*               | held → released                      | peer    |
//! | 2 | link lost before the peer read the `submit_sm`                 | takes back, sends itself                  | nothing stored                       | origin  |
//! | 3 | peer dies after its commit, before its response                | takes back, sends itself                  | restarts holding it; asks: *not yours* → dropped | origin |
//! | 4 | link lost after the response was sent, before it was read      | takes back, sends itself                  | asks: *not yours* → dropped          | origin  |
//! | 5 | origin dies after reading the response, before its commit      | restarts: message `accepted`; sends or forwards again | asks: *not yours* (or the new forward is the same copy: confirmed) | one of them |
//! | 6 | origin dies after its commit, before confirming                | forwarded                                 | asks: *yours* → released             | peer    |
//! | 7 | confirmation lost (link, peer crash before its commit)         | forwarded                                 | still held; asks: *yours*            | peer    |
//! | 8 | peer asks while the origin's commit of the response runs       | answers nothing yet, then confirms        | asks again                           | peer    |
//! | 9 | peer asks before its response reached the origin               | takes back; the response, read later, is refused | *not yours* → dropped         | origin  |
//! | 10| origin never answers (gone for good, no link)                  | —                                         | held for ever, shown in `status`     | nobody  |
//! | 11| a verdict heard twice, or for a message decided already        | —                                         | ignored                              | —       |
//!
//! Cases 2–4 and 9 are [`origin_verdict`] and [`Placement::take_back`]; 5–8 are the peer's
//! question answered from the origin's record; 10–11 are [`peer_action`].
//!
//! The decisions are sans-IO functions tested from tables; the I/O around them (the peer's
//! asking loop, the origin's answers) is below them in this file.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::forward::Forwarder;
use super::message::{self, HandOverPdu, MAX_IDS};
use super::placement::Placement;
use crate::queue::handover::HandOver;
use crate::queue::{Change, QueueError, Store};

/// A peer holding a message this long without a confirmation asks the origin about it. Far
/// above the ordinary confirmation (milliseconds), so the ordinary path never asks.
pub const ASK_AFTER: Duration = Duration::from_secs(1);

/// A message asked about and still held is asked about again this often.
pub const ASK_EVERY: Duration = Duration::from_secs(2);

/// The origin's answer about one message a peer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The origin recorded it as forwarded to this peer: the peer sends it.
    Yours,
    /// The origin took it back, sent it elsewhere, or does not know it: the peer drops it.
    NotYours,
    /// The origin's record of the peer's answer is being committed: ask again.
    Wait,
}

/// What the origin knows about a message a peer asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginFacts<'a> {
    /// The origin could mark it taken back from the asker ([`Placement::take_back`]): false
    /// when the asker's `submit_sm_resp` for it was read and its record is being committed.
    pub gate: bool,
    /// The origin id names one of this site's messages.
    pub known: bool,
    /// The peer it is recorded (on disk) as forwarded to.
    pub forwarded_to: Option<&'a str>,
}

/// The origin's answer, and whether "taken back from the asker" must be recorded before it.
pub fn origin_verdict(f: OriginFacts<'_>, asker: &str) -> (Verdict, bool) {
    if !f.gate {
        return (Verdict::Wait, false);
    }
    if !f.known {
        return (Verdict::NotYours, false);
    }
    match f.forwarded_to {
        Some(p) if p == asker => (Verdict::Yours, false),
        // Another peer has it for good; nothing to take back from the asker.
        Some(_) => (Verdict::NotYours, false),
        None => (Verdict::NotYours, true),
    }
}

/// Where a message a peer forwarded stands at the receiving site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InState {
    /// Stored, waiting for the origin's word.
    Held,
    Released,
    Dropped,
    /// No message from that peer with that origin id.
    Unknown,
}

/// What the receiving site does with a verdict; `None` changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAction {
    Release,
    Drop,
}

pub fn peer_action(held: InState, v: Verdict) -> Option<PeerAction> {
    match (held, v) {
        (InState::Held, Verdict::Yours) => Some(PeerAction::Release),
        (InState::Held, Verdict::NotYours) => Some(PeerAction::Drop),
        // Decided already (a verdict repeated, a confirmation crossing an answer), or a
        // message this site does not have: the first decision stands.
        _ => None,
    }
}

/// Whether a held message is to be asked about now.
pub fn ask_due(held_for: Duration, since_asked: Option<Duration>) -> bool {
    held_for >= ASK_AFTER && since_asked.is_none_or(|d| d >= ASK_EVERY)
}

// ---------------------------------------------------------------------------------------------
// The receiving site.

/// The messages forwarded here that their origin released: the only forwarded messages the
/// modems may send. Kept in memory for the pool's reading of the queue, which cannot wait for
/// the disk; filled from disk at start, and after each release's commit.
#[derive(Debug, Default)]
pub struct Inbound {
    /// False on a site without an SMPP server, where no peer can hand anything over: every
    /// forwarded message (from before, when it had one) may be sent.
    holds: bool,
    released: Mutex<HashSet<i64>>,
    /// When each held message was last asked about.
    asked: Mutex<HashMap<i64, Instant>>,
}

static INBOUND: OnceLock<Arc<Inbound>> = OnceLock::new();

impl Inbound {
    /// Reads the released messages not yet handed to a modem.
    pub async fn load(store: &Store) -> Result<Inbound, QueueError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT h.recipient_id FROM handovers_in h JOIN recipients r ON r.id = h.recipient_id
             WHERE h.state = 'released' AND r.state IN ('accepted', 'routed')",
        )
        .fetch_all(store.reader())
        .await?;
        Ok(Inbound {
            holds: true,
            released: Mutex::new(ids.into_iter().collect()),
            asked: Mutex::default(),
        })
    }

    /// The one of this process, for the SMPP server's connections (set once, at start).
    pub fn install(self: &Arc<Self>) -> bool {
        INBOUND.set(self.clone()).is_ok()
    }

    /// For a site without an SMPP server: nothing is held.
    pub fn open() -> Inbound {
        Inbound::default()
    }

    /// For tests: holding, nothing released yet.
    pub fn holding() -> Inbound {
        Inbound {
            holds: true,
            ..Inbound::default()
        }
    }

    /// Whether the modems may send this forwarded message.
    pub fn may_send(&self, recipient: i64) -> bool {
        !self.holds || lock(&self.released).contains(&recipient)
    }

    /// A modem took it: the "started here" rule keeps it here from now on.
    pub fn started(&self, recipient: i64) {
        lock(&self.released).remove(&recipient);
    }

    fn release(&self, recipient: i64) {
        lock(&self.released).insert(recipient);
        lock(&self.asked).remove(&recipient);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A hand-over `data_sm` from the bound peer `site` (its answers, or its confirmations):
/// applied off the connection's task. Returns false when `d` is not one.
pub fn on_data_sm(
    store: &Store,
    queued: &Arc<Notify>,
    site: &str,
    d: &rusmpp::pdus::DataSm,
) -> bool {
    let Some(h) = message::parse_handover(d) else {
        return false;
    };
    let Some(inbound) = INBOUND.get().cloned() else {
        return true;
    };
    let (store, queued, site) = (store.clone(), queued.clone(), site.to_string());
    tokio::spawn(async move {
        if let Err(e) = apply_verdicts(&store, &inbound, &queued, &site, &h).await {
            // Not applied: the messages stay held and are asked about again.
            warn!(peer = %site, error = %e, "cannot record a hand-over from a peer site");
        }
    });
    true
}

async fn apply_verdicts(
    store: &Store,
    inbound: &Inbound,
    queued: &Notify,
    site: &str,
    h: &HandOverPdu,
) -> Result<(), QueueError> {
    if !h.yours.is_empty() {
        fault_before_release();
    }
    let mut changes = Vec::new();
    let mut released = Vec::new();
    for (ids, verdict) in [
        (&h.yours, Verdict::Yours),
        (&h.not_yours, Verdict::NotYours),
    ] {
        for id in ids {
            let (recipient, held) = held_state(store, site, id).await?;
            match peer_action(held, verdict) {
                Some(PeerAction::Release) => {
                    released.push(recipient);
                    changes.push(Change::HandOver(HandOver::Released {
                        recipient,
                        peer: site.to_string(),
                    }));
                }
                Some(PeerAction::Drop) => {
                    lock(&inbound.asked).remove(&recipient);
                    info!(peer = %site, origin_id = %id, "forwarded message taken back by its origin: dropped");
                    changes.push(Change::HandOver(HandOver::Dropped {
                        recipient,
                        peer: site.to_string(),
                        reason: format!(
                            "dropped: site {site} took the message back (it did not hear this site store it), so it is not sent here"
                        ),
                    }));
                }
                None => {}
            }
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    store.changes(changes).await?;
    for r in released {
        inbound.release(r);
    }
    queued.notify_one();
    Ok(())
}

async fn held_state(
    store: &Store,
    site: &str,
    origin_id: &str,
) -> Result<(i64, InState), QueueError> {
    let row: Option<(i64, Option<String>)> = sqlx::query_as(
        "SELECT r.id, h.state FROM requests q JOIN recipients r ON r.request_id = q.id
         LEFT JOIN handovers_in h ON h.recipient_id = r.id
         WHERE q.source = 'peer' AND q.client = ?1 AND q.message_id = ?2
         ORDER BY r.id LIMIT 1",
    )
    .bind(site)
    .bind(origin_id)
    .fetch_optional(store.reader())
    .await?;
    Ok(match row {
        None => (0, InState::Unknown),
        Some((r, None)) => (r, InState::Held),
        Some((r, Some(s))) => (
            r,
            match s.as_str() {
                "released" => InState::Released,
                "dropped" => InState::Dropped,
                _ => InState::Held,
            },
        ),
    })
}

/// How the asking loop reaches a bound peer: sends a `data_sm` on its bind, if it is bound.
pub trait Binds: Send + Sync {
    fn send_data_sm(&self, peer: &str, d: rusmpp::pdus::DataSm) -> bool;
}

/// Held messages read per round of questions.
const ASK_ROWS: i64 = 4000;

/// The receiving site's loop: asks each origin about the messages held longer than
/// [`ASK_AFTER`], on the origin's bind here, and records the first asking as an event.
pub async fn ask_loop(store: Store, binds: Arc<dyn Binds>, shutdown: CancellationToken) {
    let mut after = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Some(inbound) = INBOUND.get() else {
            continue;
        };
        if let Err(e) = ask_once(&store, inbound, binds.as_ref(), &mut after, ASK_ROWS).await {
            warn!(error = %e, "cannot read the held messages to ask their origins about");
        }
    }
}

/// One round of questions, over the held messages after recipient id `after`, at most
/// `limit` of them ([`ASK_ROWS`]); `after` moves on to the last one read, and back to the start
/// at the end, so that many messages held for good (an origin decommissioned) cannot keep the
/// newer ones from being asked about.
async fn ask_once(
    store: &Store,
    inbound: &Inbound,
    binds: &dyn Binds,
    after: &mut i64,
    limit: i64,
) -> Result<(), QueueError> {
    let now_ms = crate::queue::now_ms();
    let rows: Vec<(i64, String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT r.id, q.client, q.message_id, q.received_at, h.state
         FROM recipients r JOIN requests q ON q.id = r.request_id
         LEFT JOIN handovers_in h ON h.recipient_id = r.id
         WHERE q.source = 'peer' AND r.state IN ('accepted', 'routed')
           AND (h.state IS NULL OR h.state = 'held') AND q.client IS NOT NULL
           AND q.message_id IS NOT NULL AND r.id > ?1
         ORDER BY r.id LIMIT ?2",
    )
    .bind(*after)
    .bind(limit)
    .fetch_all(store.reader())
    .await?;
    *after = match rows.last() {
        Some((rid, ..)) if rows.len() as i64 == limit => *rid,
        _ => 0,
    };
    let now = Instant::now();
    let mut per_peer: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    let mut first_asks = Vec::new();
    {
        let asked = lock(&inbound.asked);
        for (rid, peer, origin_id, received, state) in rows {
            let held_for = Duration::from_millis(u64::try_from(now_ms - received).unwrap_or(0));
            let since = asked.get(&rid).map(|t| now.duration_since(*t));
            if !ask_due(held_for, since) {
                continue;
            }
            if state.is_none() {
                first_asks.push(Change::HandOver(HandOver::Held {
                    recipient: rid,
                    peer: peer.clone(),
                }));
            }
            per_peer.entry(peer).or_default().push((rid, origin_id));
        }
    }
    if !first_asks.is_empty()
        && let Err(e) = store.changes(first_asks).await
    {
        warn!(error = %e, "cannot record that forwarded messages are held");
    }
    for (peer, list) in per_peer {
        for chunk in list.chunks(MAX_IDS) {
            let h = HandOverPdu {
                ask: chunk.iter().map(|(_, id)| id.clone()).collect(),
                ..Default::default()
            };
            let Ok(d) = message::handover(&h) else {
                continue;
            };
            if binds.send_data_sm(&peer, d) {
                let mut asked = lock(&inbound.asked);
                for (rid, _) in chunk {
                    asked.insert(*rid, now);
                }
                info!(peer = %peer, messages = chunk.len(), "asking the origin site whether held messages are this site's");
            }
        }
    }
    Ok(())
}

/// Fault injection for tests, off unless the environment sets
/// `MAIL2SMS_FAULT_INJECTION=kill-after-peer-commit`: the process kills itself (SIGKILL, no
/// clean-up) right after committing a message a peer forwarded, before its `submit_sm_resp`
/// leaves — the window the hand-over exists for (case 3).
pub fn fault_after_peer_commit() {
    fault(
        "kill-after-peer-commit",
        "after committing a forwarded message",
    );
}

/// Fault injection for tests: `MAIL2SMS_FAULT_INJECTION=kill-before-release` kills the process
/// when the origin's confirmation arrives, before it is recorded (case 7).
fn fault_before_release() {
    fault(
        "kill-before-release",
        "before recording an origin's confirmation",
    );
}

fn fault(point: &str, when: &str) {
    static SET: OnceLock<Option<String>> = OnceLock::new();
    let set = SET.get_or_init(|| std::env::var("MAIL2SMS_FAULT_INJECTION").ok());
    if set.as_deref() == Some(point) {
        warn!("fault injection: killing this process {when}");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}

// ---------------------------------------------------------------------------------------------
// The origin site.

/// The peer `peer` asked about `ids` on this site's bind to it: decides each, records what
/// must be recorded, and lists the answers for the link to send.
pub async fn answer(
    store: &Store,
    placement: &Placement,
    forwarder: &Forwarder,
    peer: &str,
    ids: &[String],
) -> Result<(), QueueError> {
    let mut yours = Vec::new();
    let mut not_yours = Vec::new();
    let mut records = Vec::new();
    for id in ids {
        let (known, recipient) = match origin_recipient(store, id).await? {
            Some(r) => (true, r),
            None => (false, 0),
        };
        // The gate first, the disk after: a response read after the gate is refused, and a
        // record committed before it is seen by the read below.
        let gate = !known || placement.take_back(recipient, peer);
        let forwarded_to: Option<String> = if known && gate {
            sqlx::query_scalar("SELECT peer FROM forwards WHERE recipient_id = ?1")
                .bind(recipient)
                .fetch_optional(store.reader())
                .await?
        } else {
            None
        };
        let facts = OriginFacts {
            gate,
            known,
            forwarded_to: forwarded_to.as_deref(),
        };
        if forwarded_to.is_some() {
            // Final here: the gate's mark is not needed.
            placement.finished(recipient);
        }
        match origin_verdict(facts, peer) {
            (Verdict::Yours, _) => yours.push(id.clone()),
            (Verdict::NotYours, record) => {
                if record {
                    records.push(Change::HandOver(HandOver::TakenBack {
                        recipient,
                        peer: peer.to_string(),
                    }));
                }
                not_yours.push(id.clone());
            }
            (Verdict::Wait, _) => {}
        }
    }
    if !records.is_empty() {
        // Until this is on disk no "not yours" leaves: a restart here would not know.
        store.changes(records).await?;
    }
    forwarder.verdicts(peer, yours, not_yours);
    Ok(())
}

/// The recipient an origin id (`<request id>/<recipient index>`) names here.
async fn origin_recipient(store: &Store, origin_id: &str) -> Result<Option<i64>, QueueError> {
    let Some((request, idx)) = origin_id.rsplit_once('/') else {
        return Ok(None);
    };
    let Ok(idx) = idx.parse::<i64>() else {
        return Ok(None);
    };
    Ok(
        sqlx::query_scalar("SELECT id FROM recipients WHERE request_id = ?1 AND idx = ?2")
            .bind(request)
            .bind(idx)
            .fetch_optional(store.reader())
            .await?,
    )
}

/// The link to `peer` was lost with `recipients` sent and unanswered: each is taken back
/// (unless its answer was read already), recorded before it is placed again.
pub async fn take_back_unanswered(
    store: &Store,
    placement: &Placement,
    peer: &str,
    recipients: &[i64],
) {
    let records: Vec<Change> = recipients
        .iter()
        .filter(|r| placement.take_back(**r, peer))
        .map(|r| {
            Change::HandOver(HandOver::TakenBack {
                recipient: *r,
                peer: peer.to_string(),
            })
        })
        .collect();
    if records.is_empty() {
        return;
    }
    let n = records.len();
    // The mark in memory is what keeps the peer's copy from being confirmed in this process;
    // the record keeps it so after a restart. Failing to write it is logged, not fatal.
    match store.changes(records).await {
        Ok(()) => info!(peer = %peer, messages = n, "unacknowledged forwarded messages taken back"),
        Err(e) => warn!(peer = %peer, error = %e, "cannot record messages taken back from a peer"),
    }
}

/// The peers each pending message was taken back from, for the placement at start.
pub async fn load_taken_back(store: &Store) -> Result<Vec<(i64, String)>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT o.recipient_id, o.peer FROM handovers_out o JOIN recipients r ON r.id = o.recipient_id
         WHERE r.state IN ('accepted', 'routed')",
    )
    .fetch_all(store.reader())
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_answers_from_its_record() {
        use Verdict::*;
        // (gate, known, forwarded to, asker) → (verdict, record "taken back")
        type Case<'a> = (bool, bool, Option<&'a str>, (Verdict, bool));
        let cases: &[Case<'_>] = &[
            // 1, 6, 7: recorded as forwarded to the asker.
            (true, true, Some("fr"), (Yours, false)),
            // 8: the asker's answer is being recorded: nothing yet.
            (false, true, None, (Wait, false)),
            (false, true, Some("fr"), (Wait, false)),
            // 2–5, 9: not forwarded to anyone: taken back, recorded first.
            (true, true, None, (NotYours, true)),
            // Forwarded to another peer after being taken back from the asker.
            (true, true, Some("de"), (NotYours, false)),
            // An id this site never made (or a wiped store).
            (true, false, None, (NotYours, false)),
        ];
        for (gate, known, forwarded_to, want) in cases {
            let f = OriginFacts {
                gate: *gate,
                known: *known,
                forwarded_to: *forwarded_to,
            };
            assert_eq!(origin_verdict(f, "fr"), *want, "{f:?}");
        }
    }

    #[test]
    fn the_peer_sends_only_what_the_origin_called_its_own() {
        use InState::*;
        use Verdict::*;
        let cases: &[(InState, Verdict, Option<PeerAction>)] = &[
            (InState::Held, Yours, Some(PeerAction::Release)),
            (InState::Held, NotYours, Some(PeerAction::Drop)),
            (InState::Held, Wait, None),
            // 11: decided already; the first decision stands.
            (Released, Yours, None),
            (Released, NotYours, None),
            (Dropped, Yours, None),
            (Dropped, NotYours, None),
            (Unknown, Yours, None),
            (Unknown, NotYours, None),
        ];
        for (held, v, want) in cases {
            assert_eq!(peer_action(*held, *v), *want, "{held:?} {v:?}");
        }
    }

    #[test]
    fn held_messages_are_asked_about_after_a_second_and_then_every_two() {
        let ms = Duration::from_millis;
        // (held for, since last asked, due)
        let cases: &[(Duration, Option<Duration>, bool)] = &[
            (ms(0), None, false),
            (ms(999), None, false),
            (ms(1000), None, true),
            (ms(5000), Some(ms(100)), false),
            (ms(5000), Some(ms(1999)), false),
            (ms(5000), Some(ms(2000)), true),
        ];
        for (held, since, due) in cases {
            assert_eq!(ask_due(*held, *since), *due, "{held:?} {since:?}");
        }
    }

    /// The binds to the peer "lyon": records the ids each question asks about.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Binds for Recorder {
        fn send_data_sm(&self, peer: &str, d: rusmpp::pdus::DataSm) -> bool {
            assert_eq!(peer, "lyon");
            let h = message::parse_handover(&d).expect("a hand-over data_sm");
            lock(&self.0).extend(h.ask);
            true
        }
    }

    /// Regression: each round read the first 4,000 held messages by id, so that as many held
    /// for good (their origin decommissioned) kept every newer one from being asked about.
    #[tokio::test]
    async fn each_round_asks_about_the_held_messages_after_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        for i in 0..7 {
            let number = format!("+3361234500{i}");
            let origin_id = format!("m{i}");
            let mut req = crate::queue::testing::request_to(&number, 1, Some(&origin_id));
            req.source = crate::queue::Source::Peer;
            req.client = Some("lyon".into());
            store.accept(req).await.unwrap();
        }
        // Received ten seconds ago: held long enough to be asked about (`ASK_AFTER`).
        let admin = Store::open_for_admin(store.path()).await.unwrap();
        sqlx::query("UPDATE requests SET received_at = received_at - 10000")
            .execute(&admin)
            .await
            .unwrap();
        let inbound = Inbound::holding();
        let binds = Recorder::default();
        let mut after = 0;
        let mut rounds = Vec::new();
        for _ in 0..4 {
            ask_once(&store, &inbound, &binds, &mut after, 3)
                .await
                .unwrap();
            rounds.push(std::mem::take(&mut *lock(&binds.0)));
        }
        // Three at a time, on from the last; then from the start again, where the messages
        // asked about a moment ago are not due yet (`ASK_EVERY`).
        let want: [&[&str]; 4] = [&["m0", "m1", "m2"], &["m3", "m4", "m5"], &["m6"], &[]];
        assert_eq!(rounds, want);
        // Each was recorded as held when first asked about.
        let held: i64 =
            sqlx::query_scalar("SELECT count(*) FROM handovers_in WHERE state = 'held'")
                .fetch_one(store.reader())
                .await
                .unwrap();
        assert_eq!(held, 7);
    }
}
