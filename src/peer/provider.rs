//! External SMPP providers: a channel of this site (kind `smpp`, `[channel.smpp]`) that sends
//! through an operator's or aggregator's SMSC, bound with the same SMPP client machinery as
//! the peer links.
//!
//! **Placing.** The router ranks a provider like any channel (its tariff, no forwarding cost);
//! when the best candidate is one of this site's providers, [`Placement`] answers
//! [`Place::Provider`] and the modem pool leaves the message alone. A feeder reads the queue
//! every 100 ms, as the peer links' does, and lists each message placed on a provider, or
//! already started there (a part of it sent: the rest must leave from the same sender, TS
//! 23.040 §9.2.3.24.1), for that provider's bind.
//!
//! **Sending** is what an ordinary SMSC client does, not what a peer link does: one `submit_sm`
//! per part ([`submit_part`]), the text in `short_message` in the GSM default alphabet
//! (`data_coding` 0, one septet per octet) or UCS-2 (8), a concatenated message's parts each
//! with its User Data Header (`esm_class` 0x40 UDHI, IEI 0x00, TS 23.040 §9.2.3.24.1), and
//! `registered_delivery` 1 for a receipt; no vendor parameters. Each part is marked `sending`
//! durably before its `submit_sm` goes (invariant 3), up to `window` in flight. The answer
//! ([`classify`]):
//!
//! - `submit_sm_resp` status 0 with a `message_id`: the part is `sent`, the id kept for its
//!   receipt ([`Change::ProviderSent`]);
//! - a temporary refusal (throttled, system error, queue full, submit failed, bind state):
//!   retried after the `[sending]` backoff, as a modem's temporary error is, and placed
//!   afresh then, so it goes elsewhere if the provider is down by then; failed after
//!   `max_attempts`;
//! - any other status: the part fails with the status, and its message with it.
//!
//! **Receipts** arrive as `deliver_sm` ([`super::receipt`]) and go down the modems' report
//! path ([`Change::ProviderReceipt`]), so the sender gets the same status reply.
//!
//! **Health.** The channel is down in the router ([`RouterState::set_channel_up`]) until a bind
//! succeeds, and again as soon as the bind is refused or lost (the connection closes, the
//! provider is silent for `missed_keepalives` keepalive intervals, or leaves a `submit_sm`
//! unanswered that long). Then the parts sent without
//! a response are put back to be placed again (SMPP gives no way to ask an SMSC whether it
//! took a part whose response was lost; placing it again may send it twice, losing it would
//! be worse, and the event says which), the messages placed on it and not started are
//! decided again ([`Placement::release_provider`]), and the bind is tried again with a backoff
//! doubling from 100 ms to `reconnect_max`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use rusmpp::pdus::{BindTransceiver, SubmitSm};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::client::{self, BindFailure, Client, cstr};
use super::config::ProviderLink;
use super::placement::{Facts, Place, Placement};
use super::session::{Keepalive, Reconnect, Tick, Window};
use crate::modem::pool::{self, PoolConfig};
use crate::queue::{Change, QueueError, Store, now_ms};
use crate::route::RouterState;
use crate::sms::Encoding;

/// The `channel` column of a part handed to provider `name`.
pub fn channel_of(name: &str) -> String {
    format!("{CHANNEL_PREFIX}{name}")
}

const CHANNEL_PREFIX: &str = "smpp:";

/// Whether a part's `channel` names a provider.
pub fn is_provider_channel(channel: &str) -> bool {
    channel.starts_with(CHANNEL_PREFIX)
}

// ---------------------------------------------------------------------------------------------
// Sans-IO: the PDUs and the verdicts.

/// The sender a provider's messages carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Empty: the provider's default.
    pub addr: String,
    pub ton: u8,
    pub npi: u8,
}

/// One part of a message, for [`submit_part`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartOf<'a> {
    pub text: &'a str,
    /// 1-based.
    pub seq: u8,
    pub total: u8,
    /// The concatenation reference all parts share (8-bit, TS 23.040 §9.2.3.24.1).
    pub reference: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "the number `{0}` does not fit SMPP's destination_addr (at most 20 digits, SMPP 3.4 §4.4.1)"
    )]
    Number(String),
    #[error("the sender `{0}` does not fit SMPP's source_addr (SMPP 3.4 §4.4.1)")]
    Source(String),
    #[error("the part's text has `{0}`, which the GSM 7-bit alphabet cannot carry")]
    NotGsm(char),
    #[error("the part is {0} octets with its header; a short_message holds at most 254")]
    TooLong(usize),
}

/// Longest short_message (SMPP 3.4 §4.4.1: 0 to 254 octets).
const MAX_SHORT_MESSAGE: usize = 254;

/// How long a bind waits, when the gateway stops, for the answers to the parts it submitted
/// (at most the keepalive's patience).
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// The `submit_sm` of one part, as an ordinary SMSC client sends it.
pub fn submit_part(
    source: &Source,
    number: &str,
    encoding: Encoding,
    part: PartOf<'_>,
) -> Result<SubmitSm, SubmitError> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    let dest = COctetString::<1, 21>::from_string(digits.to_string())
        .map_err(|_| SubmitError::Number(number.to_string()))?;
    let mut body: Vec<u8> = Vec::with_capacity(160);
    let concatenated = part.total > 1;
    if concatenated {
        // IEI 0x00: concatenated short messages, 8-bit reference (TS 23.040 §9.2.3.24.1).
        body.extend_from_slice(&[0x05, 0x00, 0x03, part.reference, part.total, part.seq]);
    }
    let coding = match encoding {
        // SMPP 3.4 §5.2.19: 0 is the SMSC's default alphabet, the GSM 7-bit one on GSM
        // networks, sent unpacked (one septet per octet); the SMSC packs it.
        Encoding::Gsm7 => {
            body.extend(crate::sms::gsm7::encode(part.text).map_err(SubmitError::NotGsm)?);
            DataCoding::McSpecific
        }
        Encoding::Ucs2 => {
            body.extend(part.text.encode_utf16().flat_map(u16::to_be_bytes));
            DataCoding::Ucs2
        }
    };
    if body.len() > MAX_SHORT_MESSAGE {
        return Err(SubmitError::TooLong(body.len()));
    }
    let sm =
        OctetString::<0, 255>::from_slice(&body).map_err(|_| SubmitError::TooLong(body.len()))?;
    let mut b = SubmitSm::builder()
        .dest_addr_ton(Ton::International)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(dest)
        // `EsmClass::default()` is not 0 in rusmpp: the octet is written out (§5.2.12).
        .esm_class(EsmClass::from(if concatenated { 0x40 } else { 0x00 }))
        // §5.2.17: 1 = a receipt for the final outcome, delivered or not.
        .registered_delivery(RegisteredDelivery::from(1u8))
        .data_coding(coding)
        .short_message(sm);
    if !source.addr.is_empty() {
        let src = COctetString::<1, 21>::from_string(source.addr.clone())
            .map_err(|_| SubmitError::Source(source.addr.clone()))?;
        b = b
            .source_addr_ton(Ton::from(source.ton))
            .source_addr_npi(Npi::from(source.npi))
            .source_addr(src);
    }
    Ok(b.build())
}

/// What a provider's answer to a `submit_sm` means for the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken, under this id.
    Taken(String),
    /// Refused for now: try again later.
    Temporary(String),
    /// Refused for good.
    Permanent(String),
}

/// Reads a `submit_sm_resp` (or `generic_nack`): its status and `message_id`.
pub fn classify(id: CommandId, status: CommandStatus, message_id: &str) -> Verdict {
    let code = u32::from(status);
    let what = format!("SMPP status {status:?} (0x{code:08X})");
    if id == CommandId::SubmitSmResp && status == CommandStatus::EsmeRok {
        return if message_id.is_empty() {
            // §4.4.2: the response carries the MC's id; without one no receipt can be
            // matched, but the provider did take it.
            Verdict::Taken(String::new())
        } else {
            Verdict::Taken(message_id.to_string())
        };
    }
    match status {
        // §5.1.3: these say "not now", not "never".
        CommandStatus::EsmeRthrottled
        | CommandStatus::EsmeRsyserr
        | CommandStatus::EsmeRmsgqful
        | CommandStatus::EsmeRsubmitfail
        | CommandStatus::EsmeRinvbndsts
        | CommandStatus::EsmeRxTAppn => Verdict::Temporary(what),
        // A generic_nack with status 0 is malformed; the PDU may not have been read at all.
        CommandStatus::EsmeRok => Verdict::Temporary(what),
        _ => Verdict::Permanent(what),
    }
}

/// The concatenation reference of a recipient's message: its id's low octet, so the parts of
/// one message share it and consecutive messages to one number differ.
pub fn reference(recipient: i64) -> u8 {
    (recipient & 0xFF) as u8
}

// ---------------------------------------------------------------------------------------------
// The lists of messages for each provider.

/// One part to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartJob {
    pub recipient: i64,
    /// The message's number and coding, which every part carries.
    pub number: String,
    pub encoding: Encoding,
    pub part: i64,
    pub seq: u8,
    pub total: u8,
    pub text: String,
    pub attempts: i64,
}

/// One message (its unsent parts) for a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub recipient: i64,
    pub number: String,
    pub parts: Vec<PartJob>,
}

#[derive(Default)]
struct Lists {
    per_provider: HashMap<String, VecDeque<Job>>,
    /// Listed or being sent.
    busy: HashSet<i64>,
}

/// The messages waiting for each provider's bind.
pub struct Queues {
    lists: Mutex<Lists>,
    wake: HashMap<String, Arc<Notify>>,
}

impl Queues {
    pub fn new(providers: &[String]) -> Self {
        Queues {
            lists: Mutex::default(),
            wake: providers
                .iter()
                .map(|p| (p.clone(), Arc::new(Notify::new())))
                .collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a message for `provider` unless it is listed or being sent already.
    pub fn push(&self, provider: &str, job: Job) -> bool {
        let mut l = self.lock();
        if !l.busy.insert(job.recipient) {
            return false;
        }
        l.per_provider
            .entry(provider.to_string())
            .or_default()
            .push_back(job);
        drop(l);
        if let Some(w) = self.wake.get(provider) {
            w.notify_one();
        }
        true
    }

    pub fn next(&self, provider: &str) -> Option<Job> {
        self.lock().per_provider.get_mut(provider)?.pop_front()
    }

    /// The messages listed or being sent now.
    fn busy(&self) -> HashSet<i64> {
        self.lock().busy.clone()
    }

    /// Every part of the message is answered (or put back): it may be listed again.
    pub fn done(&self, recipient: i64) {
        self.lock().busy.remove(&recipient);
    }

    /// The bind to `provider` is lost: its list is emptied.
    pub fn release(&self, provider: &str) {
        let mut l = self.lock();
        let listed: Vec<Job> = l
            .per_provider
            .get_mut(provider)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        for j in &listed {
            l.busy.remove(&j.recipient);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The feeder.

/// A recipient's message as the feeder reads it.
struct Due {
    job: Job,
    encoding: Encoding,
    /// The channel of a part already handed over (sent, delivered or uncertain).
    sent_on: Option<String>,
    /// A pending part was tried on a channel that is not a provider (a modem): the pool's.
    tried_elsewhere: bool,
    from_peer: bool,
    all_parts: u32,
}

/// Where a message read by the feeder goes: `Some(provider)` for one of `providers`.
fn owner(r: &Due, placement: &Placement, providers: &[String]) -> Option<String> {
    if let Some(ch) = &r.sent_on {
        // Started: it stays with whoever started it.
        let name = ch.strip_prefix(CHANNEL_PREFIX)?;
        return providers
            .iter()
            .any(|p| p == name)
            .then(|| name.to_string());
    }
    if r.tried_elsewhere {
        return None;
    }
    // A message a peer forwarded waits for its origin's word (`peer::handover`).
    if r.from_peer && !placement.may_send_forwarded(r.job.recipient) {
        return None;
    }
    match placement.decide(Facts {
        recipient: r.job.recipient,
        number: &r.job.number,
        parts: r.all_parts,
        from_peer: r.from_peer,
        started_here: false,
    }) {
        Place::Provider(p) => Some(p),
        _ => None,
    }
}

/// Reads the queue for messages placed on (or started at) a provider, every 100 ms.
pub async fn feed(
    store: Store,
    placement: Arc<Placement>,
    queues: Arc<Queues>,
    providers: Vec<String>,
    shutdown: CancellationToken,
) {
    loop {
        feed_once(due(&store, 500), &placement, &queues, &providers).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// One reading of the queue (`read`, not started yet): lists each message it returns on its
/// provider, but none that was listed or being sent when the reading began. The set is taken
/// before the query: a message being sent while the query reads may be finished by the time its
/// rows come back, and those rows are then stale (parts taken since).
async fn feed_once(
    read: impl Future<Output = Result<Vec<Due>, QueueError>>,
    placement: &Placement,
    queues: &Queues,
    providers: &[String],
) {
    let busy = queues.busy();
    match read.await {
        Ok(rows) => {
            for r in rows
                .into_iter()
                .filter(|r| !busy.contains(&r.job.recipient))
            {
                if let Some(p) = owner(&r, placement, providers) {
                    queues.push(&p, r.job);
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot read the queue for the SMPP providers"),
    }
}

/// Messages with parts due to be sent, with what deciding their owner needs.
async fn due(store: &Store, limit: i64) -> Result<Vec<Due>, QueueError> {
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT p.recipient_id, r.number, q.encoding, q.source,
                p.id, p.seq, p.text, p.state, p.attempts, p.channel, p.next_attempt_at
         FROM (SELECT DISTINCT recipient_id FROM parts INDEXED BY parts_ready
               WHERE state IN ('accepted', 'routed')
                 AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
               ORDER BY recipient_id LIMIT ?2) d
         JOIN recipients r ON r.id = d.recipient_id
         JOIN requests q ON q.id = r.request_id
         JOIN parts p ON p.recipient_id = d.recipient_id
         ORDER BY p.recipient_id, p.seq",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(store.reader())
    .await?;
    let mut out: Vec<Due> = Vec::new();
    for row in &rows {
        let rid: i64 = row.get(0);
        if out.last().is_none_or(|r| r.job.recipient != rid) {
            let encoding: &str = row.get(2);
            let source: &str = row.get(3);
            out.push(Due {
                job: Job {
                    recipient: rid,
                    number: row.get(1),
                    parts: Vec::new(),
                },
                encoding: if encoding == "ucs2" {
                    Encoding::Ucs2
                } else {
                    Encoding::Gsm7
                },
                sent_on: None,
                tried_elsewhere: false,
                from_peer: source == "peer",
                all_parts: 0,
            });
        }
        let Some(r) = out.last_mut() else { continue };
        r.all_parts += 1;
        let state: &str = row.get(7);
        let channel: Option<String> = row.get(9);
        if matches!(state, "sent" | "delivered" | "uncertain") {
            r.sent_on = channel.clone();
        }
        let attempts: i64 = row.get(8);
        let due_at: Option<i64> = row.get(10);
        if matches!(state, "accepted" | "routed") && due_at.is_none_or(|at| at <= now) {
            if (attempts > 0 || channel.is_some())
                && !channel.as_deref().is_some_and(is_provider_channel)
            {
                r.tried_elsewhere = true;
            }
            r.job.parts.push(PartJob {
                recipient: rid,
                number: r.job.number.clone(),
                encoding: r.encoding,
                part: row.get(4),
                seq: u8::try_from(row.get::<i64, _>(5)).unwrap_or(u8::MAX),
                total: 0,
                text: row.get(6),
                attempts,
            });
        }
    }
    for r in &mut out {
        let total = u8::try_from(r.all_parts).unwrap_or(u8::MAX);
        for p in &mut r.job.parts {
            p.total = total;
        }
    }
    out.retain(|r| !r.job.parts.is_empty());
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The bind.

/// What one provider's bind needs.
pub struct Provider {
    pub link: ProviderLink,
    pub store: Store,
    pub placement: Arc<Placement>,
    pub queues: Arc<Queues>,
    pub state: RouterState,
    /// `[sending]`: attempts and backoff, as for the modems.
    pub sending: PoolConfig,
}

#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error("{0}")]
    Connect(super::tls::ConnectError),
    #[error("the provider refused the bind with status {0:?}")]
    Refused(CommandStatus),
    #[error("the provider closed the connection")]
    Closed,
    #[error("the provider answered nothing for {0} keepalive intervals")]
    Silent(u32),
    #[error("the bind failed: {0}")]
    Io(String),
    #[error("the provider unbound")]
    Unbound,
    #[error("a submit_sm got no response in {0:?}")]
    NoResponse(Duration),
    #[error("stopping")]
    Shutdown,
}

impl From<BindFailure> for BindError {
    fn from(f: BindFailure) -> Self {
        match f {
            BindFailure::Connect(e) => BindError::Connect(e),
            BindFailure::Refused(status) => BindError::Refused(status),
            BindFailure::Closed => BindError::Closed,
            BindFailure::Silent(n) => BindError::Silent(n),
            BindFailure::Io(e) => BindError::Io(e),
            BindFailure::Shutdown => BindError::Shutdown,
        }
    }
}

/// A part in flight: submitted, not answered.
#[derive(Debug, Clone)]
struct InFlight {
    part: PartJob,
}

/// Runs the bind to one provider until shutdown.
pub async fn run(p: Arc<Provider>, shutdown: CancellationToken) {
    let name = p.link.name.clone();
    // Down until a bind proves otherwise.
    p.state.set_channel_up(&name, false);
    let mut reconnect = Reconnect::new(p.link.reconnect_max);
    loop {
        let mut window: Window<InFlight> = Window::new(p.link.window);
        // Parts of messages taken from the list and not yet submitted.
        let mut staged: VecDeque<PartJob> = VecDeque::new();
        // Parts not yet answered, per message: the message is done when it reaches zero.
        let mut open: HashMap<i64, usize> = HashMap::new();
        let result = session(
            &p,
            &mut window,
            &mut staged,
            &mut open,
            &mut reconnect,
            &shutdown,
        )
        .await;
        if p.state.set_channel_up(&name, false) {
            warn!(provider = %name, reason = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "SMPP provider down: routing around it");
        }
        // Submitted without an answer: the provider may have taken it or not. Placed again,
        // as an attempt that failed for now, within `[sending]`'s attempts and backoff, and
        // `uncertain` after the last. When the gateway stops, it stays `sending`: the next
        // start finds it `uncertain` and never sends it again (invariant 3), since sending it
        // again after every restart could send it many times.
        let unanswered: Vec<InFlight> = window.drain();
        let stopping = matches!(result, Err(BindError::Shutdown)) || shutdown.is_cancelled();
        let mut changes = Vec::new();
        if stopping && !unanswered.is_empty() {
            warn!(provider = %name, parts = unanswered.len(), "parts submitted to the SMPP provider had no answer when the gateway stopped; they will be uncertain");
        }
        for f in unanswered.iter().filter(|_| !stopping) {
            let attempts = f.part.attempts + 1;
            let lost = format!(
                "the bind to SMPP provider {name} was lost before it answered for this part"
            );
            changes.push(match retry_wait(&p.sending, attempts) {
                Some(wait) => Change::Retry {
                    part: f.part.part,
                    at: now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
                    reason: format!(
                        "{lost}; attempt {attempts} of {}, placed again in {}s (the provider may have taken it)",
                        p.sending.max_attempts,
                        wait.as_secs()
                    ),
                },
                None => Change::Uncertain {
                    part: f.part.part,
                    reason: format!(
                        "{lost}, at each of {attempts} attempts; it may have been sent, so it is not sent again"
                    ),
                },
            });
        }
        if !changes.is_empty()
            && let Err(e) = p.store.changes(changes).await
        {
            warn!(provider = %name, error = %e, "cannot put back the parts the provider did not answer");
        }
        for r in open.keys() {
            p.queues.done(*r);
        }
        for part in &staged {
            p.queues.done(part.recipient);
        }
        p.queues.release(&name);
        let released = p.placement.release_provider(&name);
        if released > 0 || !unanswered.is_empty() {
            info!(provider = %name, messages = released, unanswered = unanswered.len(), "messages placed on the provider are placed again");
        }
        if matches!(result, Err(BindError::Shutdown)) || shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = &result {
            let text = e.to_string();
            if reconnect.failed(text.clone()) {
                warn!(provider = %name, error = %text, "SMPP provider bind failed");
            } else {
                debug!(provider = %name, error = %text, "SMPP provider bind failed again");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(reconnect.next_wait()) => {}
        }
    }
}

async fn send(framed: &mut Client, cmd: Command) -> Result<(), BindError> {
    client::send(framed, cmd).await.map_err(BindError::Io)
}

async fn session(
    p: &Provider,
    window: &mut Window<InFlight>,
    staged: &mut VecDeque<PartJob>,
    open: &mut HashMap<i64, usize>,
    reconnect: &mut Reconnect,
    shutdown: &CancellationToken,
) -> Result<(), BindError> {
    let link = &p.link;
    let name = &link.name;
    let bind = BindTransceiver::builder()
        .system_id(cstr(&link.system_id))
        .password(cstr(&link.password))
        .system_type(cstr(&link.system_type))
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    let patience = link.enquire_link * link.missed_keepalives;
    let (mut framed, mut seq) = client::bind(
        &link.address,
        link.tls.as_ref(),
        bind,
        patience.max(Duration::from_secs(5)),
        link.missed_keepalives,
        shutdown,
    )
    .await?;
    p.state.set_channel_up(name, true);
    info!(provider = %name, address = %link.address, tls = link.tls.is_some(), "bound to SMPP provider: it is up");
    reconnect.bound();

    let source = Source {
        addr: link.source_addr.clone(),
        ton: link.source_ton,
        npi: link.source_npi,
    };
    let mut keepalive = Keepalive::new(link.missed_keepalives);
    let mut tick = tokio::time::interval(link.enquire_link);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let wake = p.queues.wake.get(name).cloned().unwrap_or_default();
    let mut last_heard = tokio::time::Instant::now();
    // When each submit in flight went (SMPP 3.4 §2.7: a response timer per request). A
    // provider that answers enquire_link but not a submit would hold the part and its window
    // slot forever; after the keepalive's patience the bind is dropped and the part placed
    // again.
    let mut submitted: HashMap<u32, tokio::time::Instant> = HashMap::new();
    // Set when the gateway stops: nothing more is submitted, and the answers to what was are
    // awaited until then, so that they are recorded rather than left unknown.
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        if let Some(until) = stopping
            && (window.is_empty() || tokio::time::Instant::now() >= until)
        {
            let s = seq.advance();
            let _ = send(
                &mut framed,
                Command::new(CommandStatus::EsmeRok, s, Pdu::Unbind),
            )
            .await;
            return Err(BindError::Shutdown);
        }
        while stopping.is_none() && !window.is_full() {
            if staged.is_empty() {
                let Some(job) = p.queues.next(name) else {
                    break;
                };
                open.insert(job.recipient, job.parts.len());
                staged.extend(job.parts);
            }
            let Some(part) = staged.pop_front() else {
                break;
            };
            let submit = match submit_part(
                &source,
                &part.number,
                part.encoding,
                PartOf {
                    text: &part.text,
                    seq: part.seq,
                    total: part.total,
                    reference: reference(part.recipient),
                },
            ) {
                Ok(s) => s,
                Err(e) => {
                    answered(
                        p,
                        open,
                        &part,
                        Verdict::Permanent(format!("cannot be given to SMPP provider {name}: {e}")),
                    )
                    .await;
                    continue;
                }
            };
            // Invariant 3: `sending` is on disk before the provider can have the part.
            if let Err(e) = p
                .store
                .change(Change::Sending {
                    part: part.part,
                    channel: channel_of(name),
                })
                .await
            {
                if matches!(e, QueueError::NotQueued(_)) {
                    // Its message ended meanwhile (an earlier part failed for good).
                    debug!(provider = %name, part = part.part, "not submitting a part no longer queued");
                } else {
                    warn!(provider = %name, part = part.part, error = %e, "cannot mark a part sending; it waits for the next round");
                }
                finish_one(p, open, part.recipient);
                continue;
            }
            let s = seq.advance();
            let _ = window.open(s, InFlight { part });
            submitted.insert(s, tokio::time::Instant::now());
            send(
                &mut framed,
                Command::new(CommandStatus::EsmeRok, s, Pdu::SubmitSm(submit)),
            )
            .await?;
        }
        let wanted = wake.notified();
        tokio::select! {
            _ = shutdown.cancelled(), if stopping.is_none() => {
                stopping = Some(tokio::time::Instant::now() + patience.min(STOP_PATIENCE));
            }
            _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)), if stopping.is_some() => {}
            _ = tick.tick() => {
                if submitted.values().any(|at| at.elapsed() > patience) {
                    return Err(BindError::NoResponse(patience));
                }
                match keepalive.tick(&mut seq) {
                    Tick::Dead { missed } => return Err(BindError::Silent(missed)),
                    Tick::Send(s) => {
                        send(&mut framed, Command::new(CommandStatus::EsmeRok, s, Pdu::EnquireLink)).await?;
                    }
                }
            }
            _ = wanted => {}
            _ = tokio::time::sleep_until(last_heard + patience) => {
                return Err(BindError::Silent(link.missed_keepalives));
            }
            r = framed.next() => {
                let cmd = match r {
                    None => return Err(BindError::Closed),
                    Some(Err(e)) => return Err(BindError::Io(e.to_string())),
                    Some(Ok(c)) => c,
                };
                keepalive.heard();
                last_heard = tokio::time::Instant::now();
                let seqn = cmd.sequence_number();
                match cmd.id() {
                    CommandId::SubmitSmResp | CommandId::GenericNack => {
                        submitted.remove(&seqn);
                        let Some(f) = window.close(seqn) else { continue };
                        let message_id = match cmd.pdu() {
                            Some(Pdu::SubmitSmResp(r)) => r.message_id().as_str().to_string(),
                            _ => String::new(),
                        };
                        let verdict = classify(cmd.id(), cmd.status(), &message_id);
                        answered(p, open, &f.part, verdict).await;
                    }
                    CommandId::DeliverSm => {
                        let status = match cmd.pdu() {
                            Some(Pdu::DeliverSm(d)) => on_deliver(p, d).await,
                            _ => CommandStatus::EsmeRok,
                        };
                        send(&mut framed, Command::new(status, seqn, Pdu::DeliverSmResp(super::session::deliver_sm_resp()))).await?;
                    }
                    CommandId::EnquireLink => {
                        send(&mut framed, Command::new(CommandStatus::EsmeRok, seqn, Pdu::EnquireLinkResp)).await?;
                    }
                    CommandId::Unbind => {
                        let _ = send(&mut framed, Command::new(CommandStatus::EsmeRok, seqn, Pdu::UnbindResp)).await;
                        return Err(BindError::Unbound);
                    }
                    CommandId::EnquireLinkResp => {}
                    other => {
                        // §2.8: a request this client does not serve gets generic_nack.
                        if u32::from(other) & 0x8000_0000 == 0 {
                            send(&mut framed, Command::new(CommandStatus::EsmeRinvcmdid, seqn, Pdu::GenericNack)).await?;
                        }
                    }
                }
            }
        }
    }
}

/// One part of `recipient`'s message is answered; when all are, the message leaves the list.
fn finish_one(p: &Provider, open: &mut HashMap<i64, usize>, recipient: i64) {
    let left = open.get_mut(&recipient).map(|n| {
        *n = n.saturating_sub(1);
        *n
    });
    if left.is_none_or(|n| n == 0) {
        open.remove(&recipient);
        p.placement
            .forget(recipient, &Place::Provider(p.link.name.clone()));
        p.queues.done(recipient);
    }
}

/// Records what the provider said about a part.
async fn answered(p: &Provider, open: &mut HashMap<i64, usize>, part: &PartJob, v: Verdict) {
    let name = &p.link.name;
    let change = match v {
        Verdict::Taken(id) => Change::ProviderSent {
            part: part.part,
            provider: name.clone(),
            remote_id: id,
            sent_at: now_ms(),
        },
        Verdict::Temporary(why) => {
            // `attempts` was read before this attempt's `sending` added one.
            let attempts = part.attempts + 1;
            if let Some(wait) = retry_wait(&p.sending, attempts) {
                Change::Retry {
                    part: part.part,
                    at: now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
                    reason: format!(
                        "SMPP provider {name} refused it for now ({why}); attempt {attempts} of {}, tried again in {}s",
                        p.sending.max_attempts,
                        wait.as_secs()
                    ),
                }
            } else {
                Change::Fail {
                    part: part.part,
                    reason: format!(
                        "SMPP provider {name} refused it for now ({why}) at each of {attempts} attempts; given up"
                    ),
                }
            }
        }
        Verdict::Permanent(why) => Change::Fail {
            part: part.part,
            reason: format!("SMPP provider {name} refused it: {why}"),
        },
    };
    if let Err(e) = p.store.change(change).await {
        // The part stays `sending`: a restart finds it uncertain and says so, never sends it
        // again silently.
        warn!(provider = %name, part = part.part, error = %e, "cannot record the provider's answer");
    }
    finish_one(p, open, part.recipient);
}

/// How long to wait before attempt `attempts + 1` of a part ([`pool::backoff`], as on a
/// modem), or `None` when `attempts` were all `[sending]` allows.
fn retry_wait(sending: &PoolConfig, attempts: i64) -> Option<Duration> {
    (attempts < i64::from(sending.max_attempts)).then(|| pool::backoff(sending, attempts))
}

/// A `deliver_sm`: a receipt is recorded before it is acknowledged.
async fn on_deliver(p: &Provider, d: &rusmpp::pdus::DeliverSm) -> CommandStatus {
    let name = &p.link.name;
    match super::receipt::from_deliver_sm(d) {
        Ok(Some(r)) => {
            let change = Change::ProviderReceipt {
                provider: name.clone(),
                keys: super::receipt::match_keys(&r.id),
                tp_st: r.stat.tp_st(),
                reason: format!(
                    "delivery receipt from SMPP provider {name}: {}",
                    r.summary()
                ),
            };
            match p.store.change(change).await {
                Ok(()) => CommandStatus::EsmeRok,
                Err(e) => {
                    // §5.1.3: a temporary error, so the provider sends it again.
                    warn!(provider = %name, error = %e, "cannot record a delivery receipt");
                    CommandStatus::EsmeRxTAppn
                }
            }
        }
        Ok(None) => {
            debug!(provider = %name, "a deliver_sm that is not a receipt (a reply from a phone?); not taken");
            CommandStatus::EsmeRok
        }
        Err(e) => {
            warn!(provider = %name, error = %e, "unreadable delivery receipt");
            // §5.1.3: a permanent error: sending it again would not help.
            CommandStatus::EsmeRxPAppn
        }
    }
}

/// Starts the feeder and a bind per provider; marks this site's `smpp` channels that have no
/// `[channel.smpp]` down, since nothing here can send through them.
pub fn start(
    cfg: &crate::config::Config,
    store: &Store,
    placement: Arc<Placement>,
    state: &RouterState,
    shutdown: CancellationToken,
) -> TaskTracker {
    let binds = TaskTracker::new();
    binds.close();
    for c in &cfg.routing.channels {
        if c.kind == crate::route::ChannelKind::Smpp
            && c.site == cfg.site.name
            && !cfg.provider_links.iter().any(|l| l.name == c.name)
        {
            warn!(channel = %c.name, "this site's smpp channel has no [channel.smpp] to bind with: it stays down");
            state.set_channel_up(&c.name, false);
        }
    }
    if cfg.provider_links.is_empty() {
        return binds;
    }
    let names: Vec<String> = cfg.provider_links.iter().map(|l| l.name.clone()).collect();
    let queues = Arc::new(Queues::new(&names));
    tokio::spawn(feed(
        store.clone(),
        placement.clone(),
        queues.clone(),
        names,
        shutdown.clone(),
    ));
    for l in &cfg.provider_links {
        let p = Arc::new(Provider {
            link: l.clone(),
            store: store.clone(),
            placement: placement.clone(),
            queues: queues.clone(),
            state: state.clone(),
            sending: cfg.sending.clone(),
        });
        binds.spawn(run(p, shutdown.clone()));
    }
    binds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the feeder checked which messages were busy after its query returned, so a
    /// message whose parts a bind took, submitted and finished while the query read came back
    /// from it as queued, and was listed and submitted again.
    #[tokio::test]
    async fn rows_read_while_their_message_was_being_sent_are_not_listed() {
        let cfg = crate::config::parse(
            std::path::Path::new("gw.toml"),
            "[site]\nname = \"uk\"\ndefault_country = \"GB\"\nsms_domains = [\"sms\"]\n\
             [store]\npath = \"q.db\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let router = crate::route::Router::new(&cfg.routing, RouterState::new()).unwrap();
        let inbound = Arc::new(super::super::handover::Inbound::open());
        let placement = Placement::new(Arc::new(router), Vec::new(), inbound);
        let providers = vec!["acme".to_string()];
        let queues = Queues::new(&providers);
        // A message started on the provider, with parts left to send.
        let due = |recipient| Due {
            job: Job {
                recipient,
                number: "+33612345678".into(),
                parts: Vec::new(),
            },
            encoding: Encoding::Gsm7,
            sent_on: Some(channel_of("acme")),
            tried_elsewhere: false,
            from_peer: false,
            all_parts: 2,
        };
        // Message 7 is being sent (listed, then taken by the bind); message 8 is not.
        assert!(queues.push("acme", due(7).job));
        assert!(queues.next("acme").is_some());
        // The query reads both while the send of 7 finishes.
        let read = async {
            queues.done(7);
            Ok(vec![due(7), due(8)])
        };
        feed_once(read, &placement, &queues, &providers).await;
        let listed: Vec<i64> = std::iter::from_fn(|| queues.next("acme"))
            .map(|j| j.recipient)
            .collect();
        assert_eq!(listed, [8]);
        // The next reading, begun after the send finished, lists 7 again if it is still due.
        feed_once(async { Ok(vec![due(7)]) }, &placement, &queues, &providers).await;
        assert_eq!(queues.next("acme").map(|j| j.recipient), Some(7));
    }

    fn src(addr: &str, ton: u8, npi: u8) -> Source {
        Source {
            addr: addr.into(),
            ton,
            npi,
        }
    }

    #[test]
    fn parts_are_submitted_as_an_ordinary_smsc_client_sends_them() {
        // (encoding, part, esm_class, data_coding, short_message)
        type Case<'a> = (Encoding, PartOf<'a>, u8, u8, Vec<u8>);
        let one = |text| PartOf {
            text,
            seq: 1,
            total: 1,
            reference: 0,
        };
        let cases: Vec<Case<'_>> = vec![
            // One GSM part: no header, the septets unpacked; `@` is septet 0, `€` is the
            // escape 0x1B then 0x65 (TS 23.038 §6.2.1.1).
            (
                Encoding::Gsm7,
                one("Hi @€"),
                0x00,
                0,
                vec![b'H', b'i', b' ', 0x00, 0x1B, 0x65],
            ),
            // Part 2 of 3, UCS-2: the concatenation header (IEI 0x00, reference 0x7F) then the
            // UTF-16 big-endian text.
            (
                Encoding::Ucs2,
                PartOf {
                    text: "é😀",
                    seq: 2,
                    total: 3,
                    reference: 0x7F,
                },
                0x40,
                8,
                vec![
                    0x05, 0x00, 0x03, 0x7F, 0x03, 0x02, 0x00, 0xE9, 0xD8, 0x3D, 0xDE, 0x00,
                ],
            ),
        ];
        for (enc, part, esm, dc, sm) in cases {
            let s = submit_part(&src("", 0, 0), "+33612345678", enc, part).unwrap();
            assert_eq!(u8::from(s.esm_class), esm, "{part:?}");
            assert_eq!(u8::from(s.data_coding), dc, "{part:?}");
            assert_eq!(s.short_message().as_ref(), sm.as_slice(), "{part:?}");
            assert_eq!(u8::from(s.registered_delivery), 1);
            assert_eq!(s.destination_addr.as_str(), "33612345678");
            assert_eq!(u8::from(s.dest_addr_ton), 1);
            assert_eq!(u8::from(s.dest_addr_npi), 1);
            assert!(s.tlvs().is_empty(), "no vendor parameters");
            assert_eq!(s.source_addr.as_str(), "");
        }
        // The configured sender.
        let s = submit_part(
            &src("ExampleOrg", 5, 0),
            "33612345678",
            Encoding::Gsm7,
            one("x"),
        )
        .unwrap();
        assert_eq!(s.source_addr.as_str(), "ExampleOrg");
        assert_eq!(u8::from(s.source_addr_ton), 5);
        assert_eq!(u8::from(s.source_addr_npi), 0);
    }

    #[test]
    fn parts_that_cannot_be_submitted_say_why() {
        let part = |text| PartOf {
            text,
            seq: 1,
            total: 1,
            reference: 0,
        };
        let long = "x".repeat(255);
        let cases: Vec<(&str, Encoding, &str, SubmitError)> = vec![
            (
                "+336123456789012345678901",
                Encoding::Gsm7,
                "hi",
                SubmitError::Number("+336123456789012345678901".into()),
            ),
            (
                "+33612345678",
                Encoding::Gsm7,
                "日本",
                SubmitError::NotGsm('日'),
            ),
            (
                "+33612345678",
                Encoding::Gsm7,
                &long,
                SubmitError::TooLong(255),
            ),
        ];
        for (number, enc, text, want) in cases {
            assert_eq!(
                submit_part(&src("", 0, 0), number, enc, part(text)).unwrap_err(),
                want
            );
        }
    }

    #[test]
    fn responses_are_classified_as_smpp_3_4_defines_the_statuses() {
        use CommandStatus as S;
        let cases: &[(CommandId, CommandStatus, &str, &str)] = &[
            (CommandId::SubmitSmResp, S::EsmeRok, "1A2B", "taken 1A2B"),
            (CommandId::SubmitSmResp, S::EsmeRok, "", "taken "),
            (CommandId::SubmitSmResp, S::EsmeRthrottled, "", "temporary"),
            (CommandId::SubmitSmResp, S::EsmeRsyserr, "", "temporary"),
            (CommandId::SubmitSmResp, S::EsmeRmsgqful, "", "temporary"),
            (CommandId::SubmitSmResp, S::EsmeRsubmitfail, "", "temporary"),
            (CommandId::GenericNack, S::EsmeRinvbndsts, "", "temporary"),
            (CommandId::GenericNack, S::EsmeRok, "", "temporary"),
            (CommandId::SubmitSmResp, S::EsmeRinvdstadr, "", "permanent"),
            (CommandId::SubmitSmResp, S::EsmeRinvmsglen, "", "permanent"),
            (CommandId::SubmitSmResp, S::EsmeRinvsrcadr, "", "permanent"),
            (CommandId::GenericNack, S::EsmeRinvcmdid, "", "permanent"),
        ];
        for (id, status, mid, want) in cases {
            let got = match classify(*id, *status, mid) {
                Verdict::Taken(i) => format!("taken {i}"),
                Verdict::Temporary(w) => {
                    assert!(w.contains(&format!("{:08X}", u32::from(*status))), "{w}");
                    "temporary".into()
                }
                Verdict::Permanent(w) => {
                    assert!(w.contains(&format!("{:08X}", u32::from(*status))), "{w}");
                    "permanent".into()
                }
            };
            assert_eq!(got, *want, "{id:?} {status:?}");
        }
    }

    #[test]
    fn provider_channels_are_told_apart_from_modems_and_peers() {
        assert_eq!(channel_of("acme"), "smpp:acme");
        for (c, want) in [
            ("smpp:acme", true),
            ("peer:fr", false),
            ("uk-sim", false),
            ("", false),
        ] {
            assert_eq!(is_provider_channel(c), want, "{c}");
        }
        // Consecutive messages get different references; one message's parts share one.
        assert_ne!(reference(1), reference(2));
        assert_eq!(reference(0x1_23), 0x23);
    }
}
