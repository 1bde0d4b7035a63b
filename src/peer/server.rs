//! This site's SMPP server: peers and applications bind here as transceivers and submit.
//!
//! Each connection runs a [`ServerSession`] (sans-IO) over `Framed<Stream, CommandCodec>`, the
//! stream being TCP or, with `[smpp.tls]`, TLS.
//! A `submit_sm` becomes a request in the queue, and its `submit_sm_resp` is sent only once that
//! request is committed (SMPP's "the MC has the message", made durable: invariant 1 for SMPP).
//! Responses go out as commits finish, not in arrival order, which SMPP allows (§2.7): the
//! client matches them by sequence number. From a peer, the message carries the origin's id
//! ([`message::TAG_ORIGIN_ID`]) and is stored once per (peer, id): the queue's duplicate check
//! keys on (sender, Message-ID, number), and a forwarded message's sender is `smpp:<peer>` and
//! its Message-ID the origin's id, so the same message arriving twice answers with the same
//! `message_id` and is sent once (invariant 4).
//!
//! With `[smpp.tls]` every connection is TLS from its first octet ([`super::tls`]).
//!
//! Delivery receipts go back as `deliver_sm` on the client's current bind ([`Receipts`]): every
//! message submitted over SMPP that reaches a final state gets one, sent until the client
//! acknowledges it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rusmpp::pdus::SubmitSmResp;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::COctetString;
use rusmpp::{Command, CommandStatus, Pdu};
use sqlx::sqlite::SqlitePool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::message::{self, MessageError, Outcome};
use super::session::{Action, Principal, ServerSession};
use crate::queue::{self, Accepted, NewRecipient, NewRequest, QueueError, Source, Store};
use crate::route::RouterState;

/// The largest PDU accepted: a `message_payload` may hold 64 KiB (SMPP 3.4 §5.3.2.32).
pub const MAX_PDU: usize = 70_000;

/// A client silent this long is dropped (a peer's keepalive speaks every second; an
/// application that binds and idles must send `enquire_link` now and then, §4.11).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A TLS client that has not finished its handshake in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may bind, with their Argon2 password hashes.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    /// Peer site name → hash.
    pub peers: Vec<(String, String)>,
    /// Application system_id → hash.
    pub users: Vec<(String, String)>,
}

impl Accounts {
    /// Checks a bind off the async threads (Argon2 is slow on purpose). An unknown system_id
    /// costs the same as a wrong password, so timing does not tell which names exist.
    async fn check(&self, system_id: &str, password: &str) -> Option<Principal> {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0v1bq0uNgh5tw1WrL0H2lPfM5fdOZpHCbBqmP3HNXDA";
        let found = self
            .peers
            .iter()
            .find(|(n, _)| n == system_id)
            .map(|(n, h)| (Principal::Peer(n.clone()), h.clone()))
            .or_else(|| {
                self.users
                    .iter()
                    .find(|(n, _)| n == system_id)
                    .map(|(n, h)| (Principal::User(n.clone()), h.clone()))
            });
        let hash = found
            .as_ref()
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| DUMMY.to_string());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        found.filter(|_| ok).map(|(p, _)| p)
    }
}

/// What the server needs from the rest of the gateway.
pub struct Shared {
    /// This site's name: the `system_id` in bind responses.
    pub site: String,
    pub store: Store,
    pub accounts: Accounts,
    /// Parts a message is cut into at most (`[sms] max_parts`).
    pub max_parts: usize,
    pub router_state: RouterState,
    /// Woken when a message is committed, so the senders look at once.
    pub queued: Arc<Notify>,
    pub receipts: Receipts,
    /// `[smpp.tls]`: every connection is TLS from its first octet ([`super::tls`]).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The current bind of each client, for delivery receipts.
#[derive(Clone, Default)]
pub struct Receipts {
    binds: Arc<Mutex<HashMap<String, Bind>>>,
}

#[derive(Clone)]
struct Bind {
    /// Identifies the connection, so a closing one does not unregister its successor.
    conn: u64,
    out: mpsc::Sender<Command>,
    seq: Arc<AtomicU32>,
    /// deliver_sm in flight on this bind: sequence number → recipient id.
    pending: Arc<Mutex<HashMap<u32, i64>>>,
}

/// The hand-over's questions to an origin go on its bind here, like its receipts.
impl super::handover::Binds for Receipts {
    fn send_data_sm(&self, peer: &str, d: rusmpp::pdus::DataSm) -> bool {
        let Some(bind) = lock(&self.binds).get(peer).cloned() else {
            return false;
        };
        let seq = bind.seq.fetch_add(1, Ordering::Relaxed) % 0x7FFF_FFFF + 1;
        bind.out
            .try_send(Command::new(CommandStatus::EsmeRok, seq, Pdu::DataSm(d)))
            .is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the listeners of `[smpp] listen`; returns their bound addresses.
pub async fn listen(
    shared: Arc<Shared>,
    addrs: &[SocketAddr],
    shutdown: CancellationToken,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a).await?;
        bound.push(l.local_addr()?);
        tokio::spawn(accept_loop(l, shared.clone(), shutdown.clone()));
    }
    tokio::spawn(send_receipts(shared, shutdown));
    Ok(bound)
}

async fn accept_loop(l: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut next_conn = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "SMPP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        next_conn += 1;
        let (shared, shutdown, conn) = (shared.clone(), shutdown.clone(), next_conn);
        // The handshake runs on the connection's task: a slow client holds up no one else.
        tokio::spawn(async move {
            match super::tls::accept(stream, shared.tls.as_ref(), HANDSHAKE_TIMEOUT).await {
                Ok(s) => connection(s, peer, conn, shared, shutdown).await,
                Err(e) => warn!(%peer, error = %e, "SMPP: TLS handshake failed; closing"),
            }
        });
    }
}

async fn connection(
    stream: super::tls::Stream,
    addr: SocketAddr,
    conn_id: u64,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut framed = Framed::new(stream, CommandCodec::new().with_max_length(MAX_PDU));
    let mut session = ServerSession::new(&shared.site);
    let (tx, mut rx) = mpsc::channel::<Command>(1024);
    let pending: Arc<Mutex<HashMap<u32, i64>>> = Arc::default();
    let mut registered: Option<String> = None;
    loop {
        let cmd = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(out) = rx.recv() => {
                if let Err(e) = framed.send(out).await {
                    debug!(%addr, error = %e, "SMPP connection lost while writing");
                    break;
                }
                continue;
            }
            r = tokio::time::timeout(IDLE_TIMEOUT, framed.next()) => match r {
                Err(_) => { info!(%addr, "SMPP client silent too long; closing"); break }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    // A PDU that cannot be decoded leaves the stream out of step: close (§2.8).
                    warn!(%addr, error = %e, "SMPP: unreadable PDU; closing the connection");
                    break;
                }
                Ok(Some(Ok(cmd))) => cmd,
            },
        };
        let mut actions = session.on_command(cmd);
        let mut close = false;
        while let Some(a) = (!actions.is_empty()).then(|| actions.remove(0)) {
            match a {
                Action::Send(c) => {
                    if framed.send(*c).await.is_err() {
                        close = true;
                    }
                }
                Action::CheckBind {
                    system_id,
                    password,
                } => {
                    let who = shared.accounts.check(&system_id, &password).await;
                    if who.is_none() {
                        warn!(%addr, system_id, "SMPP bind refused: wrong system_id or password");
                    }
                    actions.extend(session.bind_checked(who));
                }
                Action::Bound(p) => {
                    info!(%addr, who = ?p, "SMPP client bound");
                    lock(&shared.receipts.binds).insert(
                        p.name().to_string(),
                        Bind {
                            conn: conn_id,
                            out: tx.clone(),
                            seq: Arc::new(AtomicU32::new(0)),
                            pending: pending.clone(),
                        },
                    );
                    registered = Some(p.name().to_string());
                }
                Action::Submit { seq, submit } => {
                    let Some(p) = session.principal().cloned() else {
                        continue;
                    };
                    let shared = shared.clone();
                    let tx = tx.clone();
                    // Each submit commits on its own task: the queue's writer groups the
                    // commits of a whole window into one transaction.
                    tokio::spawn(async move {
                        let (status, id) = store_submit(&shared, &p, &submit).await;
                        let resp = SubmitSmResp::builder()
                            .message_id(
                                COctetString::from_string(id.to_string())
                                    .unwrap_or_else(|_| COctetString::empty()),
                            )
                            .build();
                        let _ = tx
                            .send(Command::new(status, seq, Pdu::SubmitSmResp(resp)))
                            .await;
                    });
                }
                Action::Workload(d) => {
                    // Or a hand-over answer from the origin of messages held here.
                    if let Some(Principal::Peer(site)) = session.principal()
                        && super::handover::on_data_sm(&shared.store, &shared.queued, site, &d)
                    {
                        continue;
                    }
                    if let (Some(Principal::Peer(site)), Some(w)) =
                        (session.principal(), message::parse_workload(&d))
                    {
                        shared.router_state.set_workload(
                            site,
                            u64::from(w.queue_len),
                            w.throughput_per_s(),
                        );
                    }
                }
                Action::ReceiptAcknowledged { seq, status } => {
                    let rid = lock(&pending).remove(&seq);
                    if let Some(rid) = rid {
                        if status == CommandStatus::EsmeRok {
                            if let Err(e) = record_receipt(&shared.store, rid).await {
                                warn!(error = %e, "cannot record a delivery receipt as sent");
                            }
                        } else {
                            debug!(?status, rid, "delivery receipt refused; sent again later");
                        }
                    }
                }
                Action::Close => close = true,
            }
        }
        if close || session.is_closed() {
            break;
        }
    }
    // Flush what the submit tasks already answered, so a client that unbinds gets them.
    while let Ok(out) = rx.try_recv() {
        if framed.send(out).await.is_err() {
            break;
        }
    }
    if let Some(name) = registered {
        let mut binds = lock(&shared.receipts.binds);
        if binds.get(&name).is_some_and(|b| b.conn == conn_id) {
            binds.remove(&name);
        }
    }
}

/// Stores one submitted message; the status and `message_id` of the response.
async fn store_submit(
    shared: &Shared,
    who: &Principal,
    submit: &rusmpp::pdus::SubmitSm,
) -> (CommandStatus, String) {
    let msg = match message::incoming(submit) {
        Ok(m) => m,
        Err(e) => {
            debug!(error = %e, "submit_sm refused");
            let status = match e {
                MessageError::BadNumber(_) => CommandStatus::EsmeRinvdstadr,
                MessageError::Empty | MessageError::Coding(_) | MessageError::BadUcs2 => {
                    CommandStatus::EsmeRinvmsglen
                }
                MessageError::TooLong => CommandStatus::EsmeRinvmsglen,
                MessageError::BadUdh => CommandStatus::EsmeRinvesmclass,
            };
            return (status, String::new());
        }
    };
    let (source, message_id) = match who {
        // The origin's id makes a second copy a duplicate (see the module documentation).
        Principal::Peer(_) => (Source::Peer, msg.origin_id.clone()),
        Principal::User(_) => (Source::Smpp, None),
    };
    if source == Source::Peer && message_id.is_none() {
        // A peer that does not say which message this is could make it be sent twice.
        return (CommandStatus::EsmeRmissingtlv, String::new());
    }
    let seg = crate::sms::segment(&msg.text, Some(shared.max_parts));
    let sender = format!("smpp:{}", who.name());
    let req = NewRequest {
        source,
        client: Some(who.name().to_string()),
        helo: None,
        auth_user: Some(who.name().to_string()),
        mail_from: sender.clone(),
        sender,
        sender_domain: String::new(),
        message_id,
        subject: None,
        dsn_envid: None,
        dsn_ret: None,
        text: msg.text.clone(),
        encoding: seg.encoding,
        size: msg.text.len(),
        parts: seg.parts,
        truncated: seg.truncated,
        headers: Vec::new(),
        recipients: vec![NewRecipient {
            address: msg.number.clone(),
            number: msg.number.clone(),
            name: None,
            country: None,
            dsn_notify: None,
            dsn_orcpt: None,
        }],
    };
    match shared.store.accept(req).await {
        Ok(a) => {
            if source == Source::Peer {
                super::handover::fault_after_peer_commit();
            }
            if matches!(a, Accepted::Queued { .. }) {
                shared.queued.notify_one();
            }
            (CommandStatus::EsmeRok, a.id().to_string())
        }
        Err(QueueError::Quota(q)) => {
            info!(who = who.name(), reason = %q, "submit_sm refused by a quota");
            (CommandStatus::EsmeRthrottled, String::new())
        }
        Err(e) => {
            // Not stored: the client keeps it and submits again (§5.1.3 ESME_RSYSERR).
            warn!(error = %e, "submit_sm not stored");
            (CommandStatus::EsmeRsyserr, String::new())
        }
    }
}

/// Sends the delivery receipts owed to bound clients, every half second.
async fn send_receipts(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut in_flight: HashSet<i64> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let due = match owed_receipts(shared.store.reader()).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot read the delivery receipts owed");
                continue;
            }
        };
        // Forget what was acknowledged (no longer owed) or lost with its bind.
        let owed: HashSet<i64> = due.iter().map(|d| d.recipient).collect();
        let live: HashSet<i64> = lock(&shared.receipts.binds)
            .values()
            .flat_map(|b| lock(&b.pending).values().copied().collect::<Vec<_>>())
            .collect();
        in_flight.retain(|r| owed.contains(r) && live.contains(r));
        for d in due {
            if in_flight.contains(&d.recipient) {
                continue;
            }
            let Some(bind) = lock(&shared.receipts.binds).get(&d.client).cloned() else {
                continue;
            };
            let seq = bind.seq.fetch_add(1, Ordering::Relaxed) % 0x7FFF_FFFF + 1;
            let pdu = message::receipt(&d.message_id, &d.number, d.outcome, &d.submitted, &d.done);
            lock(&bind.pending).insert(seq, d.recipient);
            if bind
                .out
                .send(Command::new(
                    CommandStatus::EsmeRok,
                    seq,
                    Pdu::DeliverSm(pdu),
                ))
                .await
                .is_ok()
            {
                in_flight.insert(d.recipient);
            }
        }
    }
}

struct Owed {
    recipient: i64,
    client: String,
    message_id: String,
    number: String,
    outcome: Outcome,
    submitted: String,
    done: String,
}

/// The receipts owed: recipients queued from SMPP or a peer, final, whose receipt is not
/// recorded yet. `receipt_due` (migration 0015) keeps the search among those whose receipt is
/// still to come, however long the history.
pub(crate) const OWED_RECEIPTS_SQL: &str =
    "SELECT r.id, q.client, q.id, r.number, r.state, q.received_at, r.updated_at
     FROM recipients r INDEXED BY recipients_receipt_due JOIN requests q ON q.id = r.request_id
     WHERE r.receipt_due = 1 AND q.source IN ('smpp', 'peer')
       AND r.state IN ('delivered', 'failed')
       AND NOT EXISTS (SELECT 1 FROM smpp_receipts s WHERE s.recipient_id = r.id)
     ORDER BY r.id LIMIT 500";

async fn owed_receipts(pool: &SqlitePool) -> Result<Vec<Owed>, QueueError> {
    let rows: Vec<(i64, String, String, String, String, i64, i64)> =
        sqlx::query_as(OWED_RECEIPTS_SQL).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(
            |(recipient, client, message_id, number, state, at, done)| Owed {
                recipient,
                client,
                message_id,
                number,
                outcome: if state == "delivered" {
                    Outcome::Delivered
                } else {
                    Outcome::Undeliverable
                },
                submitted: smpp_time(at),
                done: smpp_time(done),
            },
        )
        .collect())
}

/// `YYMMDDhhmm` (SMPP 3.4 Appendix B), UTC.
fn smpp_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:02}{:02}{:02}{:02}{:02}",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// The receipt for `recipient` was acknowledged: it is not owed any more.
async fn record_receipt(store: &Store, recipient: i64) -> Result<(), QueueError> {
    store.change(queue::Change::ReceiptSent { recipient }).await
}
