//! The SMPP session logic of a peer link, sans-IO: commands in, commands and decisions out, no
//! sockets and no clocks (the caller says when a keepalive interval has passed), so it is
//! tested from tables.
//!
//! - [`Keepalive`]: `enquire_link` every interval (SMPP 3.4 §4.11); a peer that answers nothing
//!   for `max_missed` intervals in a row is down. Any PDU from the peer counts as an answer: a
//!   busy link proves itself without keepalives.
//! - [`Window`]: at most `size` requests without their response (SMPP 3.4 §2.7 "windowing"),
//!   keyed by `sequence_number`, which runs 1 to 0x7FFFFFFF and wraps (§3.2).
//! - [`ServerSession`]: the receiving side of a link: bind with credentials (§4.1), then
//!   `submit_sm`, `data_sm`, `enquire_link`, `deliver_sm_resp`, `unbind`; anything else gets
//!   the error status the specification names for it.

use std::collections::HashMap;
use std::time::Duration;

use rusmpp::pdus::{BindTransceiverResp, DataSm, DeliverSmResp, SubmitSm};
use rusmpp::types::COctetString;
use rusmpp::values::InterfaceVersion;
use rusmpp::{Command, CommandStatus, Pdu};

/// The highest sequence number (SMPP 3.4 §3.2: 0x00000001 to 0x7FFFFFFF).
const MAX_SEQUENCE: u32 = 0x7FFF_FFFF;

/// Reconnection of a bind (to a peer or a provider): a backoff that doubles from 100 ms up to
/// a cap and starts over at each successful bind, and the last failure, so that each kind of
/// failure (a wrong certificate, a refused password) is said once rather than once per attempt.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Duration,
    max: Duration,
    last_error: Option<String>,
}

impl Reconnect {
    const FIRST: Duration = Duration::from_millis(100);

    pub fn new(max: Duration) -> Self {
        Reconnect {
            backoff: Self::FIRST,
            max,
            last_error: None,
        }
    }

    /// The bind succeeded: the next loss waits the shortest time again.
    pub fn bound(&mut self) {
        self.backoff = Self::FIRST;
    }

    /// Records a failure; true when it differs from the one before (worth a warning).
    pub fn failed(&mut self, error: String) -> bool {
        let new = self.last_error.as_deref() != Some(error.as_str());
        self.last_error = Some(error);
        new
    }

    /// How long to wait before the next attempt; the wait after it is twice as long.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.max);
        wait
    }
}

/// Sequence numbers for the requests one side sends.
#[derive(Debug, Clone, Default)]
pub struct Sequence(u32);

impl Sequence {
    pub fn advance(&mut self) -> u32 {
        self.0 = if self.0 >= MAX_SEQUENCE {
            1
        } else {
            self.0 + 1
        };
        self.0
    }
}

/// What to do when a keepalive interval has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Send an `enquire_link` with this sequence number.
    Send(u32),
    /// The peer answered nothing for this many intervals: it is down.
    Dead { missed: u32 },
}

/// The keepalive of one link.
#[derive(Debug, Clone)]
pub struct Keepalive {
    max_missed: u32,
    /// The `enquire_link` sent and not yet answered, if any.
    awaiting: Option<u32>,
    /// Intervals in a row without a word from the peer.
    missed: u32,
}

impl Keepalive {
    pub fn new(max_missed: u32) -> Self {
        Keepalive {
            max_missed: max_missed.max(1),
            awaiting: None,
            missed: 0,
        }
    }

    /// An interval has passed.
    pub fn tick(&mut self, seq: &mut Sequence) -> Tick {
        if self.awaiting.is_some() {
            self.missed += 1;
            if self.missed >= self.max_missed {
                return Tick::Dead {
                    missed: self.missed,
                };
            }
        }
        let s = seq.advance();
        self.awaiting = Some(s);
        Tick::Send(s)
    }

    /// The peer said something (any PDU): it is alive.
    pub fn heard(&mut self) {
        self.awaiting = None;
        self.missed = 0;
    }

    pub fn missed(&self) -> u32 {
        self.missed
    }
}

/// Requests in flight on one link, at most `size`.
#[derive(Debug)]
pub struct Window<T> {
    size: usize,
    in_flight: HashMap<u32, T>,
}

impl<T> Window<T> {
    pub fn new(size: usize) -> Self {
        Window {
            size: size.max(1),
            in_flight: HashMap::new(),
        }
    }

    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.size
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Takes a request in flight under `seq`; gives it back when the window is full.
    pub fn open(&mut self, seq: u32, item: T) -> Result<(), T> {
        if self.is_full() {
            return Err(item);
        }
        self.in_flight.insert(seq, item);
        Ok(())
    }

    /// The response for `seq` arrived: the request it answers, if it was in flight.
    pub fn close(&mut self, seq: u32) -> Option<T> {
        self.in_flight.remove(&seq)
    }

    /// The link is lost: every request without a response, which may or may not have arrived.
    pub fn drain(&mut self) -> Vec<T> {
        self.in_flight.drain().map(|(_, v)| v).collect()
    }
}

/// Who bound to this site's SMPP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Another site of the organization: what it submits was routed there already.
    Peer(String),
    /// An application (an SMPP client with a `[[smpp.users]]` account).
    User(String),
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Peer(n) | Principal::User(n) => n,
        }
    }
}

/// What the server's I/O shell must do after a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this command (a response, or `generic_nack`).
    Send(Box<Command>),
    /// Check these credentials (slow: a password hash) and call
    /// [`ServerSession::bind_checked`] with the answer.
    CheckBind { system_id: String, password: String },
    /// Store this message; answer `submit_sm_resp` with `seq` only once it is committed.
    Submit { seq: u32, submit: Box<SubmitSm> },
    /// A workload report from the bound peer.
    Workload(Box<DataSm>),
    /// The client acknowledged the `deliver_sm` sent with this sequence number.
    ReceiptAcknowledged { seq: u32, status: CommandStatus },
    /// The client bound: it is this principal from now on.
    Bound(Principal),
    /// Close the connection (after sending what came before).
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerState {
    Open,
    /// A bind is being checked; its response goes out with this sequence number.
    Binding(u32),
    Bound(Principal),
    Closed,
}

/// The server side of one connection.
#[derive(Debug)]
pub struct ServerSession {
    state: ServerState,
    /// Our `system_id` in `bind_transceiver_resp`.
    system_id: String,
}

impl ServerSession {
    pub fn new(system_id: &str) -> Self {
        ServerSession {
            state: ServerState::Open,
            system_id: system_id.to_string(),
        }
    }

    pub fn principal(&self) -> Option<&Principal> {
        match &self.state {
            ServerState::Bound(p) => Some(p),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == ServerState::Closed
    }

    /// One command from the client.
    pub fn on_command(&mut self, cmd: Command) -> Vec<Action> {
        let seq = cmd.sequence_number();
        let reply = |status: CommandStatus, pdu: Pdu| {
            Action::Send(Box::new(Command::new(status, seq, pdu)))
        };
        let nack = |status: CommandStatus| {
            Action::Send(Box::new(Command::new(status, seq, Pdu::GenericNack)))
        };
        if self.state == ServerState::Closed {
            return vec![];
        }
        let bound = matches!(self.state, ServerState::Bound(_));
        // Body-less commands first, in any state: enquire_link is answered even before a bind
        // (§4.11), and unbind ends the session (§4.2).
        match cmd.id() {
            rusmpp::CommandId::EnquireLink => {
                return vec![reply(CommandStatus::EsmeRok, Pdu::EnquireLinkResp)];
            }
            rusmpp::CommandId::Unbind => {
                self.state = ServerState::Closed;
                return vec![
                    reply(CommandStatus::EsmeRok, Pdu::UnbindResp),
                    Action::Close,
                ];
            }
            rusmpp::CommandId::EnquireLinkResp | rusmpp::CommandId::GenericNack => return vec![],
            rusmpp::CommandId::UnbindResp => {
                self.state = ServerState::Closed;
                return vec![Action::Close];
            }
            _ => {}
        }
        let Some(pdu) = cmd.pdu().cloned() else {
            return vec![nack(CommandStatus::EsmeRinvcmdid)];
        };
        match pdu {
            Pdu::BindTransceiver(b) => {
                if !matches!(self.state, ServerState::Open) {
                    // §4.1.2: a second bind on a bound (or binding) session.
                    return vec![reply(
                        CommandStatus::EsmeRalybnd,
                        Pdu::BindTransceiverResp(self.bind_resp()),
                    )];
                }
                self.state = ServerState::Binding(seq);
                vec![Action::CheckBind {
                    system_id: b.system_id.as_str().to_string(),
                    password: b.password.as_str().to_string(),
                }]
            }
            // A peer link and a client both need receipts back: only transceivers bind here.
            Pdu::BindTransmitter(_) | Pdu::BindReceiver(_) => {
                vec![nack(CommandStatus::EsmeRbindfail)]
            }
            _ if !bound => vec![nack(CommandStatus::EsmeRinvbndsts)],
            Pdu::SubmitSm(s) => vec![Action::Submit {
                seq,
                submit: Box::new(s),
            }],
            Pdu::DataSm(d) => vec![
                Action::Workload(Box::new(d)),
                reply(
                    CommandStatus::EsmeRok,
                    Pdu::DataSmResp(rusmpp::pdus::DataSmResp::builder().build()),
                ),
            ],
            Pdu::DeliverSmResp(_) => vec![Action::ReceiptAcknowledged {
                seq,
                status: cmd.status(),
            }],
            // The answer to a hand-over question sent on this bind (`peer::handover`).
            Pdu::DataSmResp(_) => vec![],
            _ => vec![nack(CommandStatus::EsmeRinvcmdid)],
        }
    }

    /// The answer to [`Action::CheckBind`]: who it is, or `None` for wrong credentials.
    pub fn bind_checked(&mut self, who: Option<Principal>) -> Vec<Action> {
        let ServerState::Binding(seq) = self.state else {
            return vec![];
        };
        match who {
            Some(p) => {
                self.state = ServerState::Bound(p.clone());
                vec![
                    Action::Send(Box::new(Command::new(
                        CommandStatus::EsmeRok,
                        seq,
                        Pdu::BindTransceiverResp(self.bind_resp()),
                    ))),
                    Action::Bound(p),
                ]
            }
            None => {
                // §5.1.3: ESME_RINVPASWD; which of the two was wrong is not said.
                self.state = ServerState::Closed;
                vec![
                    Action::Send(Box::new(Command::new(
                        CommandStatus::EsmeRinvpaswd,
                        seq,
                        Pdu::BindTransceiverResp(self.bind_resp()),
                    ))),
                    Action::Close,
                ]
            }
        }
    }

    fn bind_resp(&self) -> BindTransceiverResp {
        let id = COctetString::<1, 16>::from_string(self.system_id.clone())
            .unwrap_or_else(|_| COctetString::empty());
        BindTransceiverResp::builder()
            .system_id(id)
            .sc_interface_version(Some(InterfaceVersion::Smpp3_4))
            .build()
    }
}

/// A `deliver_sm_resp` with no body fields of note (SMPP 3.4 §4.6.2: message_id is unused).
pub fn deliver_sm_resp() -> DeliverSmResp {
    DeliverSmResp::builder().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_doubles_to_its_cap_starts_over_when_bound_and_says_each_failure_once() {
        let mut r = Reconnect::new(Duration::from_millis(500));
        let waits: Vec<u64> = (0..5).map(|_| r.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        r.bound();
        assert_eq!(r.next_wait(), Duration::from_millis(100));
        // (failure, worth a warning)
        let cases = [
            ("refused", true),
            ("refused", false),
            ("tls", true),
            ("refused", true),
        ];
        for (error, new) in cases {
            assert_eq!(r.failed(error.to_string()), new, "{error}");
        }
    }
    use rusmpp::pdus::{BindTransceiver, BindTransmitter};

    #[test]
    fn keepalive_declares_a_peer_dead_after_the_configured_silence() {
        // (events, expected outcome of the last tick); 'h' = heard from the peer, 't' = tick.
        let cases: &[(&str, u32, Option<u32>)] = &[
            ("t", 3, None),
            ("tt", 3, None),
            ("ttt", 3, None),
            ("tttt", 3, Some(3)),
            ("tthtt", 3, None),
            ("tthttt", 3, None),
            ("tthtttt", 3, Some(3)),
            ("tt", 1, Some(1)),
            ("tht", 1, None),
            // max_missed 0 is taken as 1: a keepalive that never fires is no keepalive.
            ("tt", 0, Some(1)),
        ];
        for (events, max, dead) in cases {
            let mut k = Keepalive::new(*max);
            let mut seq = Sequence::default();
            let mut last = None;
            for e in events.chars() {
                match e {
                    't' => last = Some(k.tick(&mut seq)),
                    _ => k.heard(),
                }
            }
            match (last, dead) {
                (Some(Tick::Dead { missed }), Some(want)) => assert_eq!(missed, *want, "{events}"),
                (Some(Tick::Send(_)), None) => {}
                other => panic!("{events} max {max}: {other:?}"),
            }
        }
    }

    #[test]
    fn sequence_numbers_wrap_within_the_range_smpp_allows() {
        let mut s = Sequence(MAX_SEQUENCE - 1);
        assert_eq!(s.advance(), MAX_SEQUENCE);
        assert_eq!(s.advance(), 1);
        assert_eq!(Sequence::default().advance(), 1);
    }

    #[test]
    fn window_holds_at_most_its_size_and_gives_back_what_was_unanswered() {
        let mut w: Window<&str> = Window::new(2);
        assert_eq!(w.open(1, "a"), Ok(()));
        assert_eq!(w.open(2, "b"), Ok(()));
        assert!(w.is_full());
        assert_eq!(w.open(3, "c"), Err("c"));
        assert_eq!(w.close(1), Some("a"));
        assert_eq!(w.close(1), None, "a response answers once");
        assert_eq!(w.close(99), None);
        assert_eq!(w.open(3, "c"), Ok(()));
        let mut rest = w.drain();
        rest.sort();
        assert_eq!(rest, vec!["b", "c"]);
        assert!(w.is_empty());
    }

    fn bind(id: &str, pw: &str, seq: u32) -> Command {
        let b = BindTransceiver::builder()
            .system_id(COctetString::from_string(id.to_string()).unwrap())
            .password(COctetString::from_string(pw.to_string()).unwrap())
            .build();
        Command::new(CommandStatus::EsmeRok, seq, Pdu::BindTransceiver(b))
    }

    fn statuses(actions: &[Action]) -> Vec<(CommandId, CommandStatus, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(c) => Some((c.id(), c.status(), c.sequence_number())),
                _ => None,
            })
            .collect()
    }

    use rusmpp::CommandId;

    #[test]
    fn server_session_dialogues() {
        let submit = || {
            Command::new(
                CommandStatus::EsmeRok,
                7,
                Pdu::SubmitSm(super::super::message::forward("r/0", "+33612345678", "hi").unwrap()),
            )
        };
        // Before a bind: nothing but a bind is served (§4.1, ESME_RINVBNDSTS).
        let mut s = ServerSession::new("fr");
        assert_eq!(
            statuses(&s.on_command(submit())),
            vec![(CommandId::GenericNack, CommandStatus::EsmeRinvbndsts, 7)]
        );
        // enquire_link is answered in any state (§4.11).
        assert_eq!(
            statuses(&s.on_command(Command::new(CommandStatus::EsmeRok, 3, Pdu::EnquireLink))),
            vec![(CommandId::EnquireLinkResp, CommandStatus::EsmeRok, 3)]
        );
        // Only transceivers.
        let tx = Command::new(
            CommandStatus::EsmeRok,
            4,
            Pdu::BindTransmitter(BindTransmitter::default()),
        );
        assert_eq!(
            statuses(&s.on_command(tx)),
            vec![(CommandId::GenericNack, CommandStatus::EsmeRbindfail, 4)]
        );
        // A bind asks for a check, answered with the bind's sequence number.
        let a = s.on_command(bind("uk", "pw", 5));
        assert_eq!(
            a,
            vec![Action::CheckBind {
                system_id: "uk".into(),
                password: "pw".into()
            }]
        );
        // A second bind while the first is checked.
        assert_eq!(
            statuses(&s.on_command(bind("uk", "pw", 6))),
            vec![(
                CommandId::BindTransceiverResp,
                CommandStatus::EsmeRalybnd,
                6
            )]
        );
        let a = s.bind_checked(Some(Principal::Peer("uk".into())));
        assert_eq!(
            statuses(&a),
            vec![(CommandId::BindTransceiverResp, CommandStatus::EsmeRok, 5)]
        );
        assert!(a.contains(&Action::Bound(Principal::Peer("uk".into()))));
        assert_eq!(s.principal(), Some(&Principal::Peer("uk".into())));
        // Bound: a submit is handed over for storing, not answered yet (the answer waits for
        // the commit).
        let a = s.on_command(submit());
        assert!(
            matches!(a.as_slice(), [Action::Submit { seq: 7, .. }]),
            "{a:?}"
        );
        // Commands a peer link does not use.
        let q = Command::new(CommandStatus::EsmeRok, 8, Pdu::QuerySm(Default::default()));
        assert_eq!(
            statuses(&s.on_command(q)),
            vec![(CommandId::GenericNack, CommandStatus::EsmeRinvcmdid, 8)]
        );
        // A data_sm is a workload report, acknowledged at once.
        let a = s.on_command(Command::new(
            CommandStatus::EsmeRok,
            9,
            Pdu::DataSm(super::super::message::workload(
                &crate::route::workload::WorkloadReport::new(3, 1.5),
            )),
        ));
        assert_eq!(
            statuses(&a),
            vec![(CommandId::DataSmResp, CommandStatus::EsmeRok, 9)]
        );
        // unbind closes after its response (§4.2).
        let a = s.on_command(Command::new(CommandStatus::EsmeRok, 10, Pdu::Unbind));
        assert_eq!(
            statuses(&a),
            vec![(CommandId::UnbindResp, CommandStatus::EsmeRok, 10)]
        );
        assert!(a.contains(&Action::Close));
        assert!(s.is_closed());
        assert!(s.on_command(submit()).is_empty());

        // Wrong credentials: ESME_RINVPASWD, then the connection closes.
        let mut s = ServerSession::new("fr");
        s.on_command(bind("uk", "bad", 1));
        let a = s.bind_checked(None);
        assert_eq!(
            statuses(&a),
            vec![(
                CommandId::BindTransceiverResp,
                CommandStatus::EsmeRinvpaswd,
                1
            )]
        );
        assert!(a.contains(&Action::Close));
        // A late answer to a check no one asked for changes nothing.
        let mut s = ServerSession::new("fr");
        assert!(s.bind_checked(Some(Principal::User("x".into()))).is_empty());
        assert_eq!(s.principal(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_or_the_session() {
        use tokio_util::codec::Decoder;
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..2000 {
            let mut bytes = Vec::new();
            // A plausible header half the time, so decoding goes past the length check.
            let len = (rng % 64) as usize;
            if round % 2 == 0 {
                bytes.extend_from_slice(&((16 + len) as u32).to_be_bytes());
                bytes.extend_from_slice(&[0, 0, 0, (rng >> 8) as u8 % 10]);
            }
            for _ in 0..len + 12 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                bytes.push(rng as u8);
            }
            let mut codec = rusmpp::tokio_codec::CommandCodec::new();
            let mut buf = tokio_util::bytes::BytesMut::from(&bytes[..]);
            let mut s = ServerSession::new("fr");
            while let Ok(Some(cmd)) = codec.decode(&mut buf) {
                let _ = s.on_command(cmd);
            }
        }
    }
}
