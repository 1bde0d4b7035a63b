//! This site's link to one peer: it binds to the peer's SMPP server as a transceiver, forwards
//! the messages placed on that peer, brings their delivery receipts back, sends this site's
//! workload, and decides whether the peer is up. The connection is TLS when `[peer.smpp.tls]`
//! says so ([`super::tls`]); a failed handshake is logged with its reason, once per kind of
//! failure.
//!
//! **Failure detection.** The peer is up from a successful bind until the link is lost: the
//! connection closes (a killed process's sockets are closed by its kernel at once), a read or
//! write fails, or the peer says nothing for `missed_keepalives` keepalive intervals (a hung or
//! unreachable one: its `enquire_link` responses stop), counted by [`Keepalive`] and bounded
//! exactly by a deadline from the last word heard. Then the router excludes the site
//! ([`RouterState::set_site_up`]), the messages sent without a `submit_sm_resp` and those still
//! listed go back to be placed again ([`Placement::release_peer`]), and the link binds again
//! with a backoff that doubles from 100 ms up to `reconnect_max`.
//!
//! **Forwarding.** Up to `window` `submit_sm`s are in flight ([`Window`]). A `submit_sm_resp`
//! with status 0 means the peer committed the message: it is marked [`Place::Taken`] at once
//! (no one else may take it, whatever happens to the link now), then recorded durably as
//! forwarded ([`Change::Forwarded`]). A temporary refusal (throttled, system error, queue full)
//! puts it back to be placed again after a pause; any other refusal fails it with the status.
//! A message sent again after a lost response is stored once by the peer (its origin id).
//! The peer holds what it stores until this site confirms it, and this site takes back what a
//! lost link left unanswered ([`super::handover`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rusmpp::pdus::BindTransceiver;
use rusmpp::values::InterfaceVersion;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::{self, BindFailure, Client, cstr};
use super::config::{PeerLink, SmppConfig};
use super::forward::{Forwarder, Item};
use super::placement::{Place, Placement};
use super::session::{Keepalive, Reconnect, Tick, Window};
use super::{handover, message};
use crate::queue::{Change, Store};
use crate::route::RouterState;

/// What one link needs.
pub struct Link {
    pub site: String,
    pub peer: PeerLink,
    pub timing: SmppConfig,
    pub store: Store,
    pub placement: Arc<Placement>,
    pub forwarder: Arc<Forwarder>,
    pub state: RouterState,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Connect(super::tls::ConnectError),
    #[error("the peer refused the bind with status {0:?}")]
    Refused(CommandStatus),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer answered nothing for {0} keepalive intervals")]
    Silent(u32),
    #[error("the peer did not answer a submit_sm within {0:?}")]
    NoResponse(Duration),
    #[error("the link failed: {0}")]
    Io(String),
    #[error("stopping")]
    Shutdown,
}

impl From<BindFailure> for LinkError {
    fn from(f: BindFailure) -> Self {
        match f {
            BindFailure::Connect(e) => LinkError::Connect(e),
            BindFailure::Refused(status) => LinkError::Refused(status),
            BindFailure::Closed => LinkError::Closed,
            BindFailure::Silent(n) => LinkError::Silent(n),
            BindFailure::Io(e) => LinkError::Io(e),
            BindFailure::Shutdown => LinkError::Shutdown,
        }
    }
}

/// Runs the link until shutdown.
pub async fn run(link: Arc<Link>, shutdown: CancellationToken) {
    let name = link.peer.name.clone();
    // Down until a bind proves otherwise: nothing is placed on a peer not yet heard from.
    link.state.set_site_up(&name, false);
    let mut reconnect = Reconnect::new(link.timing.reconnect_max);
    loop {
        let mut window: Window<Item> = Window::new(link.timing.window);
        let result = session(&link, &mut window, &mut reconnect, &shutdown).await;
        // Whatever ended the session, the peer is down until it binds again.
        if link.state.set_site_up(&name, false) {
            warn!(peer = %name, reason = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "peer site down: routing around it");
        }
        let unacknowledged = window.drain();
        let n = unacknowledged.len();
        let sent: Vec<i64> = unacknowledged.iter().map(|i| i.recipient).collect();
        handover::take_back_unanswered(&link.store, &link.placement, &name, &sent).await;
        link.forwarder.release(&name, unacknowledged);
        let released = link.placement.release_peer(&name);
        if released > 0 {
            info!(peer = %name, messages = released, in_flight = n, "messages placed on the peer are placed again");
        }
        if matches!(result, Err(LinkError::Shutdown)) || shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = &result {
            // Said once per kind of failure, so a wrong certificate or password is in the log
            // without a line per reconnection attempt.
            let text = e.to_string();
            if reconnect.failed(text.clone()) {
                warn!(peer = %name, error = %text, "peer link failed");
            } else {
                debug!(peer = %name, error = %text, "peer link lost");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(reconnect.next_wait()) => {}
        }
    }
}

async fn session(
    link: &Link,
    window: &mut Window<Item>,
    reconnect: &mut Reconnect,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let name = &link.peer.name;
    let bind = BindTransceiver::builder()
        .system_id(cstr(&link.site))
        .password(cstr(&link.peer.password))
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    // The bind must be answered within the keepalive's patience.
    let patience = link.timing.enquire_link * link.timing.missed_keepalives;
    let (mut framed, mut seq) = client::bind(
        &link.peer.address,
        link.peer.tls.as_ref(),
        bind,
        patience,
        link.timing.missed_keepalives,
        shutdown,
    )
    .await?;
    link.state.set_site_up(name, true);
    info!(peer = %name, address = %link.peer.address, "bound to peer site: it is up");
    reconnect.bound();

    let mut keepalive = Keepalive::new(link.timing.missed_keepalives);
    let mut tick = tokio::time::interval(link.timing.enquire_link);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let wake = link.forwarder.waker(name).unwrap_or_default();
    // The keepalive counts intervals at its ticks; a peer that hangs just after a tick would
    // then be declared down up to one interval late. This deadline, `missed_keepalives`
    // intervals after the peer last said anything, is the exact bound.
    let mut last_heard = tokio::time::Instant::now();
    // When each submit in flight went (SMPP 3.4 §2.7: a response timer per request). A peer
    // that answers enquire_link but not a submit would hold the message and its window slot
    // for ever; after the keepalive's patience the link is dropped, and its unanswered
    // messages are taken back and placed again.
    let mut submitted: HashMap<u32, tokio::time::Instant> = HashMap::new();
    loop {
        // Fill the window first: a busy link keeps `window` submits in flight.
        while !window.is_full() {
            let Some(item) = link.forwarder.next(name) else {
                break;
            };
            // Listed for this peer, and since taken back, or placed again after a lost link
            // (between the link emptying its list and the placement letting go, the feeder
            // may list it once more): not this peer's to send.
            if !link
                .placement
                .is_at(item.recipient, &Place::Peer(name.clone()))
            {
                link.forwarder.done(item.recipient);
                continue;
            }
            match message::forward(&item.origin_id, &item.number, &item.text) {
                Ok(submit) => {
                    let s = seq.advance();
                    // `open` cannot refuse here: the window was checked above.
                    let _ = window.open(s, item);
                    submitted.insert(s, tokio::time::Instant::now());
                    send(
                        &mut framed,
                        Command::new(CommandStatus::EsmeRok, s, Pdu::SubmitSm(submit)),
                    )
                    .await?;
                }
                Err(e) => {
                    fail(
                        link,
                        &item,
                        &format!("cannot be forwarded to site {name}: {e}"),
                    )
                    .await;
                }
            }
        }
        while let Some(h) = link.forwarder.next_verdicts(name) {
            if let Ok(d) = message::handover(&h) {
                let s = seq.advance();
                send(
                    &mut framed,
                    Command::new(CommandStatus::EsmeRok, s, Pdu::DataSm(d)),
                )
                .await?;
            }
        }
        let wanted = wake.notified();
        tokio::select! {
            _ = shutdown.cancelled() => {
                let s = seq.advance();
                let _ = send(&mut framed, Command::new(CommandStatus::EsmeRok, s, Pdu::Unbind)).await;
                return Err(LinkError::Shutdown);
            }
            _ = tick.tick() => {
                if submitted.values().any(|at| at.elapsed() > patience) {
                    return Err(LinkError::NoResponse(patience));
                }
                match keepalive.tick(&mut seq) {
                    Tick::Dead { missed } => return Err(LinkError::Silent(missed)),
                    Tick::Send(s) => {
                        send(&mut framed, Command::new(CommandStatus::EsmeRok, s, Pdu::EnquireLink)).await?;
                    }
                }
                let w = message::workload(&link.forwarder.workload());
                let s = seq.advance();
                send(&mut framed, Command::new(CommandStatus::EsmeRok, s, Pdu::DataSm(w))).await?;
            }
            _ = wanted => {}
            _ = tokio::time::sleep_until(last_heard + patience) => {
                return Err(LinkError::Silent(link.timing.missed_keepalives));
            }
            r = framed.next() => {
                let cmd = match r {
                    None => return Err(LinkError::Closed),
                    Some(Err(e)) => return Err(LinkError::Io(e.to_string())),
                    Some(Ok(c)) => c,
                };
                keepalive.heard();
                last_heard = tokio::time::Instant::now();
                if matches!(cmd.id(), CommandId::SubmitSmResp | CommandId::GenericNack) {
                    submitted.remove(&cmd.sequence_number());
                }
                if let Some(reply) = on_command(link, window, cmd).await {
                    send(&mut framed, reply).await?;
                }
            }
        }
    }
}

/// Handles one command from the peer; returns the reply to send, if any.
async fn on_command(link: &Link, window: &mut Window<Item>, cmd: Command) -> Option<Command> {
    let name = &link.peer.name;
    let seq = cmd.sequence_number();
    let status = cmd.status();
    match cmd.id() {
        CommandId::SubmitSmResp | CommandId::GenericNack => {
            let item = window.close(seq)?;
            let remote_id = match cmd.pdu() {
                Some(Pdu::SubmitSmResp(r)) => r.message_id().as_str().to_string(),
                _ => String::new(),
            };
            if status == CommandStatus::EsmeRok
                && !remote_id.is_empty()
                && link.placement.taken(item.recipient, name)
            {
                let store = link.store.clone();
                let placement = link.placement.clone();
                let forwarder = link.forwarder.clone();
                let peer = name.clone();
                // Recorded off the link's loop so the window keeps moving; the queue's writer
                // groups these commits.
                tokio::spawn(async move {
                    let rid = item.recipient;
                    // The peer holds it and `Taken` keeps anyone here from sending it; no
                    // confirmation goes out without the record, so the peer, asking, hears
                    // nothing yet (or, after a restart here, "not yours"). The record is
                    // tried again until it is written (it is idempotent): left unwritten,
                    // the message would wait at both sites until a restart here. A failure
                    // need not be this message's own: a batch that fails fails all its jobs.
                    let mut wait = Duration::from_millis(200);
                    while let Err(e) = store
                        .change(Change::Forwarded {
                            recipient: rid,
                            peer: peer.clone(),
                            remote_id: remote_id.clone(),
                        })
                        .await
                    {
                        warn!(peer = %peer, error = %e, "cannot record a forwarded message; trying again");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                    placement.finished(rid);
                    forwarder.done(rid);
                    // Recorded: the peer may send it now (`handover`).
                    forwarder.verdicts(&peer, vec![item.origin_id], Vec::new());
                });
            } else if matches!(
                status,
                CommandStatus::EsmeRthrottled
                    | CommandStatus::EsmeRsyserr
                    | CommandStatus::EsmeRmsgqful
                    | CommandStatus::EsmeRok
            ) || cmd.id() == CommandId::GenericNack
            {
                // Temporary: placed again (maybe elsewhere) after a pause, so a refusing peer
                // is not asked again at once.
                debug!(peer = %name, ?status, "forwarding refused for now");
                let placement = link.placement.clone();
                let forwarder = link.forwarder.clone();
                let was = Place::Peer(name.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    placement.forget(item.recipient, &was);
                    forwarder.done(item.recipient);
                });
            } else {
                fail(
                    link,
                    &item,
                    &format!("site {name} refused the message (SMPP status {status:?})"),
                )
                .await;
            }
            None
        }
        CommandId::DeliverSm => {
            if let Some(Pdu::DeliverSm(d)) = cmd.pdu()
                && let Some(r) = message::parse_receipt(d)
                && let Err(e) = apply_receipt(link, &r).await
            {
                // Not acknowledged: the peer sends the receipt again.
                warn!(peer = %name, error = %e, "cannot record a delivery receipt");
                return Some(Command::new(
                    CommandStatus::EsmeRsyserr,
                    seq,
                    Pdu::DeliverSmResp(super::session::deliver_sm_resp()),
                ));
            }
            Some(Command::new(
                CommandStatus::EsmeRok,
                seq,
                Pdu::DeliverSmResp(super::session::deliver_sm_resp()),
            ))
        }
        // The peer asks about messages it holds (`handover`): answered once decided.
        CommandId::DataSm => {
            if let Some(Pdu::DataSm(d)) = cmd.pdu()
                && let Some(h) = message::parse_handover(d)
                && !h.ask.is_empty()
            {
                let (store, placement, forwarder, peer) = (
                    link.store.clone(),
                    link.placement.clone(),
                    link.forwarder.clone(),
                    name.clone(),
                );
                tokio::spawn(async move {
                    if let Err(e) =
                        handover::answer(&store, &placement, &forwarder, &peer, &h.ask).await
                    {
                        // Unanswered: the peer keeps the messages held and asks again.
                        warn!(peer = %peer, error = %e, "cannot answer a peer's hand-over question");
                    }
                });
            }
            Some(Command::new(
                CommandStatus::EsmeRok,
                seq,
                Pdu::DataSmResp(rusmpp::pdus::DataSmResp::builder().build()),
            ))
        }
        CommandId::EnquireLink => Some(Command::new(
            CommandStatus::EsmeRok,
            seq,
            Pdu::EnquireLinkResp,
        )),
        CommandId::Unbind => Some(Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp)),
        _ => None,
    }
}

/// A receipt from the peer for a message it took from here.
async fn apply_receipt(link: &Link, r: &message::Receipt) -> Result<(), crate::queue::QueueError> {
    let rid: Option<i64> =
        sqlx::query_scalar("SELECT recipient_id FROM forwards WHERE peer = ?1 AND remote_id = ?2")
            .bind(&link.peer.name)
            .bind(&r.message_id)
            .fetch_optional(link.store.reader())
            .await?;
    let Some(recipient) = rid else {
        // A receipt for a message this site did not forward (or one that was already
        // reported and pruned): nothing to update, but acknowledged so it is not resent.
        debug!(peer = %link.peer.name, id = %r.message_id, "receipt for an unknown message");
        return Ok(());
    };
    let delivered = r.outcome == message::Outcome::Delivered;
    link.store
        .change(Change::PeerReceipt {
            recipient,
            delivered,
            reason: format!(
                "site {} reports the message {} ({})",
                link.peer.name,
                if delivered {
                    "delivered"
                } else {
                    "not delivered"
                },
                r.outcome.stat()
            ),
        })
        .await
}

async fn fail(link: &Link, item: &Item, reason: &str) {
    if let Err(e) = link
        .store
        .change(Change::Fail {
            part: item.first_part,
            reason: reason.to_string(),
        })
        .await
    {
        warn!(error = %e, "cannot record a failed message");
    }
    link.placement.finished(item.recipient);
    link.forwarder.done(item.recipient);
}

async fn send(framed: &mut Client, cmd: Command) -> Result<(), LinkError> {
    client::send(framed, cmd).await.map_err(LinkError::Io)
}
