//! The SMTP session as a sans-IO state machine (invariant 5): bytes from the client go in with
//! [`Session::feed`], replies and requests for the I/O layer come out as [`Output`]s.
//!
//! `smtp-proto` parses commands and their parameters and un-stuffs DATA; this module decides
//! what each command means for an email-to-SMS gateway: who may send, which recipients are SMS
//! numbers, how big a mail may be. The I/O layer does the three things that need the outside
//! world: the TLS handshake, checking a password, and committing a mail to the queue. The
//! session stops at each of them and resumes when told the outcome, so pipelined commands that
//! follow a DATA are answered only after that mail's commit (RFC 2920 §3.1 keeps the order).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use smtp_proto::{EhloResponse, Request};

use crate::parse::address::{AddressPolicy, Recipient, parse_recipient};
use crate::policy::Destinations;

/// Longest command line accepted. RFC 5321 §4.5.3.1.4 says 512 octets, but extensions
/// (DSN's ORCPT, long AUTH responses) make longer lines legitimate.
pub const MAX_LINE: usize = 4096;
/// Errors after which the session is closed: a client that keeps sending nonsense, or
/// recipients that are refused, without delivering mail is not a mail client.
const MAX_ERRORS: u32 = 20;
const MAX_AUTH_FAILURES: u32 = 3;

/// What the session needs to know that does not change during a connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_bytes: usize,
    pub max_recipients: usize,
    /// A certificate is configured: STARTTLS is offered.
    pub tls_available: bool,
    /// Users are configured: AUTH is offered (over TLS only).
    pub auth_available: bool,
    /// Unauthenticated clients outside the trusted networks may go on to DATA; the sender
    /// rules (DMARC) decide after it.
    pub accept_untrusted: bool,
    pub address_policy: AddressPolicy,
    pub destinations: Destinations,
}

/// One SMTP reply: a code, an enhanced status code (RFC 3463) and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub esc: Option<(u8, u16, u16)>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, esc: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply {
            code,
            esc: Some(esc),
            lines: vec![text.into()],
        }
    }

    /// The reply as it goes on the wire. Enhanced status codes are only sent to clients that
    /// said EHLO (RFC 2034 §3).
    pub fn to_bytes(&self, enhanced: bool) -> Vec<u8> {
        let n = self.lines.len().max(1);
        let text: usize = self.lines.iter().map(String::len).sum();
        let mut out = Vec::with_capacity(text + n * 16);
        for i in 0..n {
            let line = self.lines.get(i).map(String::as_str).unwrap_or("");
            // Written digit by digit: `format!` for the code took 1.5% of the CPU of intake.
            push_decimal(&mut out, self.code);
            out.push(if i + 1 == n { b' ' } else { b'-' });
            if enhanced && let Some((a, b, c)) = self.esc {
                push_decimal(&mut out, u16::from(a));
                out.push(b'.');
                push_decimal(&mut out, b);
                out.push(b'.');
                push_decimal(&mut out, c);
                out.push(b' ');
            }
            // A reply line never carries a bare CR or LF from user input. Byte by byte is
            // character by character here: UTF-8 never uses CR or LF inside a longer character.
            out.extend(line.bytes().map(|b| match b {
                b'\r' | b'\n' => b' ',
                b => b,
            }));
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

/// `n` in decimal, with no leading zeros.
fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let start = out.len();
    let mut n = n;
    loop {
        // `n % 10` is below 10: the cast never truncates.
        out.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Written least significant digit first.
    if let Some(digits) = out.get_mut(start..) {
        digits.reverse();
    }
}

/// A recipient accepted at RCPT time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRecipient {
    /// The address as the client wrote it between `<` and `>`.
    pub raw: String,
    pub recipient: Recipient,
    /// RFC 3461 NOTIFY, e.g. `SUCCESS,FAILURE`; `None` when not given.
    pub notify: Option<String>,
    /// RFC 3461 ORCPT, decoded (see `take_orcpt`): the address of an `rfc822;…` ORCPT, or the
    /// type, `;` and the address of any other (`utf-8;…`, RFC 6533; `x400;…`; …).
    pub orcpt: Option<String>,
}

/// The envelope of one mail transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// Envelope sender; empty for the null sender `<>`.
    pub mail_from: String,
    /// RFC 3461 RET: `full` or `hdrs`.
    pub ret: Option<&'static str>,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    pub smtputf8: bool,
    pub recipients: Vec<EnvelopeRecipient>,
}

/// What the session asks of the I/O layer.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes to send (one reply).
    Send(Vec<u8>),
    /// Send what came before, then do the TLS handshake and call [`Session::tls_started`].
    StartTls,
    /// Check these credentials and call [`Session::auth_result`].
    CheckAuth { user: String, password: String },
    /// Commit this mail to the queue and call [`Session::delivered`] with the reply to give.
    Deliver { envelope: Envelope, data: Vec<u8> },
    /// Send what came before, then close the connection.
    Close,
}

enum Phase {
    Command,
    Data {
        receiver: DataReceiver,
        buf: Vec<u8>,
    },
    /// The mail is over the size limit: read to its end, keep nothing.
    DataDiscard {
        receiver: DummyDataReceiver,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass {
        user: String,
    },
    /// Waiting for the I/O layer (TLS, password check, queue commit).
    Blocked,
    Closed,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    client: IpAddr,
    /// The client is in a trusted network: it may send without AUTH.
    trusted: bool,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    auth_user: Option<String>,
    envelope: Option<Envelope>,
    phase: Phase,
    input: Vec<u8>,
    /// A command line longer than [`MAX_LINE`] is being skipped up to its end.
    skipping_line: bool,
    errors: u32,
    auth_failures: u32,
}

/// The line end of the DATA command, which counts as the one before the mail's first line.
const DATA_LINE_END: &[u8] = b"\r\n";

impl Session {
    pub fn new(cfg: Arc<SessionConfig>, client: IpAddr, trusted: bool) -> Session {
        Session {
            cfg,
            client,
            trusted,
            tls: false,
            helo: None,
            esmtp: false,
            auth_user: None,
            envelope: None,
            phase: Phase::Command,
            input: Vec::new(),
            skipping_line: false,
            errors: 0,
            auth_failures: 0,
        }
    }

    pub fn greeting(&self) -> Vec<u8> {
        Reply {
            code: 220,
            esc: None,
            lines: vec![format!("{} ESMTP mail2sms ready", self.cfg.hostname)],
        }
        .to_bytes(false)
    }

    /// The reply a session gets when the gateway shuts down between its commands.
    pub fn shutdown_reply(&self) -> Vec<u8> {
        Reply::new(
            421,
            (4, 3, 2),
            format!("{} shutting down, try again later", self.cfg.hostname),
        )
        .to_bytes(self.esmtp)
    }

    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }
    pub fn client(&self) -> IpAddr {
        self.client
    }
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }
    /// The session is between commands, with no mail in progress: a shutdown may close it.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Command) && self.input.is_empty()
    }

    /// Takes bytes from the client and returns what to do, in order. Stops early at an output
    /// that needs the I/O layer; the rest of the input is kept for [`Session::resume`].
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Output> {
        self.input.extend_from_slice(bytes);
        self.resume()
    }

    /// Continues with buffered input after a blocking output was resolved.
    pub fn resume(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        loop {
            match &mut self.phase {
                Phase::Blocked | Phase::Closed => break,
                Phase::Data { receiver, buf } => {
                    let input = std::mem::take(&mut self.input);
                    let mut iter = input.iter();
                    let done = receiver.ingest(&mut iter, buf);
                    let rest = iter.as_slice().to_vec();
                    if !done && buf.len() > self.cfg.max_message_bytes + DATA_LINE_END.len() {
                        // Keep reading to the end of the mail, but store nothing more.
                        let receiver = DummyDataReceiver::new_data(receiver);
                        self.phase = Phase::DataDiscard { receiver };
                        self.input = rest;
                        continue;
                    }
                    self.input = rest;
                    if !done {
                        break;
                    }
                    let mut data = std::mem::take(buf);
                    // A proper end, `<CRLF>.<CRLF>`, leaves the mail ending with its last line
                    // end (or only the DATA command's). smtp-proto also ends the data at
                    // `<CRLF>.<CR><CR><LF>`, which another server may read as a line of the mail:
                    // where the mail ends is not known, so nothing of it is taken, and the
                    // connection closes (as for SMTP smuggling, CVE-2023-51764).
                    if !data.ends_with(DATA_LINE_END) {
                        self.envelope = None;
                        self.close(
                            &mut out,
                            Reply::new(
                                521,
                                (5, 5, 2),
                                "Improper end of data (a dot line with a stray <CR>); nothing was queued, closing",
                            ),
                        );
                        break;
                    }
                    data.drain(..DATA_LINE_END.len());
                    if data.len() > self.cfg.max_message_bytes {
                        self.end_oversize(&mut out);
                        continue;
                    }
                    let envelope = self.envelope.take().unwrap_or_default();
                    self.phase = Phase::Blocked;
                    out.push(Output::Deliver { envelope, data });
                    break;
                }
                Phase::DataDiscard { receiver } => {
                    let input = std::mem::take(&mut self.input);
                    let mut iter = input.iter();
                    let done = receiver.ingest(&mut iter);
                    self.input = iter.as_slice().to_vec();
                    if !done {
                        break;
                    }
                    self.end_oversize(&mut out);
                }
                _ => {
                    let Some(line) = self.take_line(&mut out) else {
                        break;
                    };
                    self.line(&line, &mut out);
                }
            }
        }
        out
    }

    fn end_oversize(&mut self, out: &mut Vec<Output>) {
        self.envelope = None;
        self.phase = Phase::Command;
        self.reply(
            out,
            Reply::new(
                552,
                (5, 3, 4),
                format!(
                    "Message size exceeds the limit of {} bytes; nothing was queued",
                    self.cfg.max_message_bytes
                ),
            ),
        );
    }

    /// The next complete line (with its line end), or `None` when more input is needed.
    fn take_line(&mut self, out: &mut Vec<Output>) -> Option<Vec<u8>> {
        loop {
            match self.input.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    let line: Vec<u8> = self.input.drain(..=pos).collect();
                    if self.skipping_line {
                        self.skipping_line = false;
                        continue;
                    }
                    if line.len() > MAX_LINE {
                        self.error(out, Reply::new(500, (5, 5, 2), "Line too long"));
                        continue;
                    }
                    return Some(line);
                }
                None => {
                    if self.input.len() > MAX_LINE {
                        self.input.clear();
                        if !self.skipping_line {
                            self.skipping_line = true;
                            self.error(out, Reply::new(500, (5, 5, 2), "Line too long"));
                        }
                    }
                    return None;
                }
            }
        }
    }

    fn reply(&self, out: &mut Vec<Output>, r: Reply) {
        out.push(Output::Send(r.to_bytes(self.esmtp)));
    }

    /// A client error: counted, and the session closed when there are too many.
    fn error(&mut self, out: &mut Vec<Output>, r: Reply) {
        self.reply(out, r);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.close(
                out,
                Reply::new(421, (4, 7, 0), "Too many errors, closing connection"),
            );
        }
    }

    fn close(&mut self, out: &mut Vec<Output>, r: Reply) {
        self.reply(out, r);
        out.push(Output::Close);
        self.phase = Phase::Closed;
        self.input.clear();
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Output>) {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthPlain => self.auth_plain_response(line, out),
            Phase::AuthLoginUser => match decode_b64_line(line) {
                Some(user) if !is_cancel(line) => {
                    self.phase = Phase::AuthLoginPass {
                        user: String::from_utf8_lossy(&user).into_owned(),
                    };
                    self.reply(
                        out,
                        Reply::new(334, (0, 0, 0), "UGFzc3dvcmQ6").without_esc(),
                    );
                }
                _ => self.auth_cancelled(line, out),
            },
            Phase::AuthLoginPass { user } => match decode_b64_line(line) {
                Some(pass) if !is_cancel(line) => {
                    self.phase = Phase::Blocked;
                    out.push(Output::CheckAuth {
                        user,
                        password: String::from_utf8_lossy(&pass).into_owned(),
                    });
                }
                _ => self.auth_cancelled(line, out),
            },
            _ => self.command(line, out),
        }
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<Output>) {
        if is_rcpt(line) {
            return self.rcpt(line, out);
        }
        // ENVID is xtext, which smtp-proto decodes an octet to a character: read it here.
        let (mut envid, line) = if is_mail(line) {
            match take_envid(line) {
                Ok(taken) => taken,
                Err(e) => {
                    return self.error(
                        out,
                        Reply::new(501, (5, 5, 4), format!("Invalid ENVID parameter: {e}")),
                    );
                }
            }
        } else {
            (None, Cow::Borrowed(line))
        };
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => return self.syntax_error(e, out),
        };
        match request {
            Request::Ehlo { host } => self.hello(host.as_ref(), true, out),
            Request::Helo { host } => self.hello(host.as_ref(), false, out),
            Request::Lhlo { .. } => self.error(
                out,
                Reply::new(500, (5, 5, 1), "LHLO is for LMTP; this is SMTP"),
            ),
            Request::Mail { from } => self.mail(from, envid.take(), out),
            Request::Rcpt { .. } => {} // handled above, before smtp-proto sees the address
            Request::Data => self.data(out),
            Request::Bdat { .. } => self.error(
                out,
                Reply::new(502, (5, 5, 1), "BDAT is not offered; use DATA"),
            ),
            Request::Rset => {
                self.envelope = None;
                self.reply(out, Reply::new(250, (2, 0, 0), "Reset OK"));
            }
            Request::Noop { .. } => self.reply(out, Reply::new(250, (2, 0, 0), "OK")),
            Request::Quit => self.close(
                out,
                Reply::new(
                    221,
                    (2, 0, 0),
                    format!("{} closing connection", self.cfg.hostname),
                ),
            ),
            Request::Help { .. } => self.reply(
                out,
                Reply {
                    code: 214,
                    esc: Some((2, 0, 0)),
                    lines: vec![
                        "mail2sms: mail to NAME@+NUMBER@<sms domain> becomes an SMS".into(),
                        "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP STARTTLS AUTH"
                            .into(),
                    ],
                },
            ),
            Request::Vrfy { .. } => self.reply(
                out,
                Reply::new(
                    252,
                    (2, 5, 0),
                    "Cannot VRFY; send mail and it will be tried",
                ),
            ),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.error(out, Reply::new(502, (5, 5, 1), "Command not implemented"))
            }
            Request::StartTls => self.starttls(out),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response.as_ref(), out),
        }
    }

    fn syntax_error(&mut self, e: smtp_proto::Error, out: &mut Vec<Output>) {
        use smtp_proto::Error as E;
        let r = match e {
            E::UnknownCommand => Reply::new(500, (5, 5, 2), "Command not recognized"),
            E::InvalidSenderAddress => {
                Reply::new(553, (5, 1, 7), "The sender address is not a valid mailbox")
            }
            E::InvalidRecipientAddress => Reply::new(
                553,
                (5, 1, 3),
                "The recipient address is not a valid mailbox",
            ),
            E::SyntaxError { syntax } => {
                Reply::new(501, (5, 5, 4), format!("Syntax error, expected: {syntax}"))
            }
            E::InvalidParameter { param } => Reply::new(
                501,
                (5, 5, 4),
                format!("Invalid value for parameter {param}"),
            ),
            E::UnsupportedParameter { param } => Reply::new(
                555,
                (5, 5, 4),
                format!("Parameter {param} is not supported"),
            ),
            E::ResponseTooLong => Reply::new(500, (5, 5, 6), "Line too long"),
            E::NeedsMoreData { .. } | E::InvalidResponse { .. } => {
                Reply::new(500, (5, 5, 2), "Syntax error")
            }
        };
        self.error(out, r);
    }

    fn hello(&mut self, host: &str, esmtp: bool, out: &mut Vec<Output>) {
        if host.is_empty() {
            return self.error(out, Reply::new(501, (5, 5, 4), "Syntax: EHLO hostname"));
        }
        self.helo = Some(host.to_string());
        self.esmtp = esmtp;
        self.envelope = None;
        if !esmtp {
            return self.reply(
                out,
                Reply {
                    code: 250,
                    esc: None,
                    lines: vec![format!("{} greets {host}", self.cfg.hostname)],
                },
            );
        }
        let mut ehlo = EhloResponse::new(self.cfg.hostname.as_str());
        ehlo.capabilities = smtp_proto::EXT_PIPELINING
            | smtp_proto::EXT_SIZE
            | smtp_proto::EXT_8BIT_MIME
            | smtp_proto::EXT_SMTP_UTF8
            | smtp_proto::EXT_ENHANCED_STATUS_CODES
            | smtp_proto::EXT_DSN
            | smtp_proto::EXT_HELP;
        ehlo.size = self.cfg.max_message_bytes;
        if self.cfg.tls_available && !self.tls {
            ehlo.capabilities |= smtp_proto::EXT_START_TLS;
        }
        // RFC 4954 §4: passwords in the clear are not offered a mechanism.
        if self.cfg.auth_available && self.tls && self.auth_user.is_none() {
            ehlo.capabilities |= smtp_proto::EXT_AUTH;
            ehlo.auth_mechanisms = smtp_proto::AUTH_PLAIN | smtp_proto::AUTH_LOGIN;
        }
        let mut bytes = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = ehlo.write(&mut bytes);
        out.push(Output::Send(bytes));
    }

    fn may_send(&self) -> bool {
        self.trusted || self.auth_user.is_some() || self.cfg.accept_untrusted
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    fn mail(
        &mut self,
        from: smtp_proto::MailFrom<Cow<'_, str>>,
        envid: Option<String>,
        out: &mut Vec<Output>,
    ) {
        if self.helo.is_none() {
            return self.error(out, Reply::new(503, (5, 5, 1), "Send EHLO or HELO first"));
        }
        if self.envelope.is_some() {
            return self.error(out, Reply::new(503, (5, 5, 1), "Nested MAIL command"));
        }
        if !self.may_send() {
            let r = if self.cfg.auth_available {
                Reply::new(
                    530,
                    (5, 7, 0),
                    if self.tls {
                        "Authentication required".to_string()
                    } else {
                        "Authentication required; use STARTTLS then AUTH".to_string()
                    },
                )
            } else {
                Reply::new(
                    550,
                    (5, 7, 1),
                    format!(
                        "{} is not allowed to send SMS through this gateway",
                        self.client
                    ),
                )
            };
            return self.error(out, r);
        }
        if from.size > self.cfg.max_message_bytes {
            return self.error(
                out,
                Reply::new(
                    552,
                    (5, 3, 4),
                    format!(
                        "Message size {} exceeds the limit of {} bytes",
                        from.size, self.cfg.max_message_bytes
                    ),
                ),
            );
        }
        let ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some("full")
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some("hdrs")
        } else {
            None
        };
        let address = from.address.into_owned();
        let shown = if address.is_empty() {
            "<>".to_string()
        } else {
            format!("<{address}>")
        };
        self.envelope = Some(Envelope {
            mail_from: address,
            ret,
            envid,
            smtputf8: from.flags & smtp_proto::MAIL_SMTPUTF8 != 0,
            recipients: Vec::new(),
        });
        self.reply(
            out,
            Reply::new(250, (2, 1, 0), format!("Sender {shown} OK")),
        );
    }

    fn rcpt(&mut self, line: &[u8], out: &mut Vec<Output>) {
        let Some((raw, params_line)) = split_rcpt(line) else {
            return self.error(
                out,
                Reply::new(
                    501,
                    (5, 5, 4),
                    "Syntax error, expected: RCPT TO:<address> [parameters]",
                ),
            );
        };
        let (orcpt, params_line) = match take_orcpt(&params_line) {
            Ok(taken) => taken,
            Err(e) => {
                return self.error(
                    out,
                    Reply::new(501, (5, 5, 4), format!("Invalid ORCPT parameter: {e}")),
                );
            }
        };
        // smtp-proto refuses the Domino form `Paul@+33477858589@sms` (two unquoted @); it is
        // given a placeholder address so that it still parses the DSN parameters.
        let to = match Request::parse(&mut params_line.iter()) {
            Ok(Request::Rcpt { to }) => to,
            Ok(_) => return self.error(out, Reply::new(500, (5, 5, 2), "Syntax error")),
            Err(e) => return self.syntax_error(e, out),
        };
        let Some(env) = self.envelope.as_mut() else {
            return self.error(out, Reply::new(503, (5, 5, 1), "Send MAIL first"));
        };
        if env.recipients.len() >= self.cfg.max_recipients {
            // 452 (not 552): RFC 5321 §4.5.3.1.10 — the client sends the rest in another mail.
            let r = Reply::new(
                452,
                (4, 5, 3),
                format!(
                    "Too many recipients: at most {} per mail",
                    self.cfg.max_recipients
                ),
            );
            return self.reply(out, r);
        }
        let recipient = match parse_recipient(&raw, &self.cfg.address_policy) {
            Ok(r) => r,
            Err(e) => {
                let (code, (a, b, c)) = e.smtp_code();
                return self.error(out, Reply::new(code, (a, b, c), format!("<{raw}>: {e}")));
            }
        };
        if let Err(r) = self
            .cfg
            .destinations
            .check(&recipient.number, recipient.country.as_deref())
        {
            return self.error(out, Reply::new(550, (5, 7, 1), format!("<{raw}>: {r}")));
        }
        let notify = notify_string(to.flags);
        let shown = match &recipient.name {
            Some(n) => format!("SMS to {} ({n})", recipient.number),
            None => format!("SMS to {}", recipient.number),
        };
        env.recipients.push(EnvelopeRecipient {
            raw: raw.clone(),
            recipient,
            notify,
            orcpt,
        });
        self.reply(
            out,
            Reply::new(250, (2, 1, 5), format!("<{raw}> OK: {shown}")),
        );
    }

    fn data(&mut self, out: &mut Vec<Output>) {
        match &self.envelope {
            None => self.error(out, Reply::new(503, (5, 5, 1), "Send MAIL first")),
            Some(env) if env.recipients.is_empty() => {
                self.error(out, Reply::new(554, (5, 5, 1), "No valid recipients"))
            }
            Some(_) => {
                // RFC 5321 §4.1.1.4: the DATA command's own line end counts, so that a first
                // line `.` ends an empty mail and a first line `..x` is unstuffed. smtp-proto's
                // receiver starts as if in mid-line: it is given that line end, which the
                // mail loses at its end.
                let mut receiver = DataReceiver::new();
                let mut buf = Vec::new();
                let _ = receiver.ingest(&mut DATA_LINE_END.iter(), &mut buf);
                self.phase = Phase::Data { receiver, buf };
                self.reply(
                    out,
                    Reply {
                        code: 354,
                        esc: None,
                        lines: vec!["End data with <CR><LF>.<CR><LF>".into()],
                    },
                );
            }
        }
    }

    fn starttls(&mut self, out: &mut Vec<Output>) {
        if !self.cfg.tls_available {
            return self.error(out, Reply::new(502, (5, 5, 1), "STARTTLS is not offered"));
        }
        if self.tls {
            return self.error(out, Reply::new(503, (5, 5, 1), "TLS is already active"));
        }
        self.reply(out, Reply::new(220, (2, 0, 0), "Ready to start TLS"));
        // RFC 3207 §4.2 / CVE-2011-0411: commands pipelined after STARTTLS were sent in the
        // clear and must not be executed inside the TLS session.
        self.input.clear();
        self.phase = Phase::Blocked;
        out.push(Output::StartTls);
    }

    /// The TLS handshake succeeded: the session starts over (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.envelope = None;
        self.input.clear();
        self.phase = Phase::Command;
    }

    fn auth(&mut self, mechanism: u64, initial: &str, out: &mut Vec<Output>) {
        if !self.cfg.auth_available {
            return self.error(out, Reply::new(502, (5, 5, 1), "AUTH is not offered"));
        }
        if !self.tls {
            return self.error(
                out,
                Reply::new(
                    538,
                    (5, 7, 11),
                    "Encryption required: use STARTTLS before AUTH",
                ),
            );
        }
        if self.auth_user.is_some() {
            return self.error(out, Reply::new(503, (5, 5, 1), "Already authenticated"));
        }
        if self.envelope.is_some() {
            return self.error(
                out,
                Reply::new(503, (5, 5, 1), "AUTH is not allowed during a mail"),
            );
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.phase = Phase::AuthPlain;
                self.reply(out, Reply::new(334, (0, 0, 0), "").without_esc());
            }
            smtp_proto::AUTH_PLAIN => {
                let mut line = initial.as_bytes().to_vec();
                line.extend_from_slice(b"\r\n");
                self.auth_plain_response(&line, out);
            }
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.phase = Phase::AuthLoginUser;
                self.reply(
                    out,
                    Reply::new(334, (0, 0, 0), "VXNlcm5hbWU6").without_esc(),
                );
            }
            smtp_proto::AUTH_LOGIN => match decode_b64_line(initial.as_bytes()) {
                Some(user) => {
                    self.phase = Phase::AuthLoginPass {
                        user: String::from_utf8_lossy(&user).into_owned(),
                    };
                    self.reply(
                        out,
                        Reply::new(334, (0, 0, 0), "UGFzc3dvcmQ6").without_esc(),
                    );
                }
                None => self.error(out, Reply::new(501, (5, 5, 2), "Invalid base64 data")),
            },
            _ => self.error(
                out,
                Reply::new(
                    504,
                    (5, 5, 4),
                    "Unrecognized authentication mechanism; use PLAIN or LOGIN",
                ),
            ),
        }
    }

    fn auth_plain_response(&mut self, line: &[u8], out: &mut Vec<Output>) {
        if is_cancel(line) {
            return self.auth_cancelled(line, out);
        }
        let Some(decoded) = decode_b64_line(line) else {
            return self.error(out, Reply::new(501, (5, 5, 2), "Invalid base64 data"));
        };
        // RFC 4616: [authzid] NUL authcid NUL passwd
        let mut fields = decoded.split(|&b| b == 0);
        let (Some(authz), Some(user), Some(pass), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return self.error(out, Reply::new(501, (5, 5, 2), "Malformed PLAIN response"));
        };
        if !authz.is_empty() && authz != user {
            return self.error(
                out,
                Reply::new(
                    535,
                    (5, 7, 8),
                    "Authorization identity must be empty or the user",
                ),
            );
        }
        self.phase = Phase::Blocked;
        out.push(Output::CheckAuth {
            user: String::from_utf8_lossy(user).into_owned(),
            password: String::from_utf8_lossy(pass).into_owned(),
        });
    }

    fn auth_cancelled(&mut self, _line: &[u8], out: &mut Vec<Output>) {
        self.phase = Phase::Command;
        self.error(out, Reply::new(501, (5, 0, 0), "Authentication cancelled"));
    }

    /// The I/O layer checked the credentials of the last [`Output::CheckAuth`].
    pub fn auth_result(&mut self, user: Option<String>) -> Vec<Output> {
        let mut out = Vec::new();
        self.phase = Phase::Command;
        match user {
            Some(u) => {
                self.auth_user = Some(u);
                self.reply(
                    &mut out,
                    Reply::new(235, (2, 7, 0), "Authentication successful"),
                );
            }
            None => {
                self.auth_failures += 1;
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.close(
                        &mut out,
                        Reply::new(421, (4, 7, 0), "Too many failed authentications"),
                    );
                } else {
                    self.error(
                        &mut out,
                        Reply::new(535, (5, 7, 8), "Authentication credentials invalid"),
                    );
                }
            }
        }
        out.extend(self.resume());
        out
    }

    /// The I/O layer did not check the credentials of the last [`Output::CheckAuth`]: this
    /// client address failed too often lately (see [`super::auth`]), and may try again in
    /// `retry_after`. It counts as a failure of this session too.
    pub fn auth_refused(&mut self, retry_after: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        self.phase = Phase::Command;
        self.auth_failures += 1;
        let minutes = retry_after.as_secs().div_ceil(60).max(1);
        let text = format!(
            "Too many failed authentications from your address; try again in {minutes} minute{}",
            if minutes == 1 { "" } else { "s" }
        );
        if self.auth_failures >= MAX_AUTH_FAILURES {
            self.close(&mut out, Reply::new(421, (4, 7, 0), text));
        } else {
            self.error(&mut out, Reply::new(454, (4, 7, 0), text));
        }
        out.extend(self.resume());
        out
    }

    /// The I/O layer finished with the last [`Output::Deliver`]; `reply` is its outcome.
    pub fn delivered(&mut self, reply: Reply) -> Vec<Output> {
        let mut out = Vec::new();
        self.phase = Phase::Command;
        self.envelope = None;
        // A client that delivers mail is a mail client: its refused recipients and other
        // errors so far do not count against it any more (as Postfix's hard error limit).
        if (200..300).contains(&reply.code) {
            self.errors = 0;
        }
        self.reply(&mut out, reply);
        out.extend(self.resume());
        out
    }
}

impl Reply {
    /// 334 challenges carry no enhanced status code (RFC 4954 §4 puts base64 right after 334).
    fn without_esc(mut self) -> Reply {
        self.esc = None;
        self
    }
}

fn is_cancel(line: &[u8]) -> bool {
    trim_line(line) == b"*"
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [rest @ .., b'\r' | b'\n'] = l {
        l = rest;
    }
    l
}

fn decode_b64_line(line: &[u8]) -> Option<Vec<u8>> {
    let l = trim_line(line);
    if l == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(l).ok()
}

fn is_rcpt(line: &[u8]) -> bool {
    line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"RCPT")
}

fn is_mail(line: &[u8]) -> bool {
    line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"MAIL")
}

/// Splits `RCPT TO:<address> params` into the raw address (quotes and all) and the same line
/// with a placeholder address, for smtp-proto to read the parameters from.
fn split_rcpt(line: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.get(4..)?.trim_start();
    let rest = rest
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("TO:"))
        .and_then(|_| rest.get(3..))?
        .trim_start();
    let inner = rest.strip_prefix('<')?;
    let mut in_quote = false;
    let mut escaped = false;
    let mut end = None;
    for (i, ch) in inner.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                end = Some(i);
                break;
            }
            '\r' | '\n' => return None,
            _ => {}
        }
    }
    let end = end?;
    let raw = inner[..end].to_string();
    let params = &inner[end + 1..];
    let mut placeholder = b"RCPT TO:<x@x>".to_vec();
    placeholder.extend_from_slice(params.as_bytes());
    Some((raw, placeholder))
}

/// A parameter taken out of a command line, decoded (`None`: not given), and the line without
/// it (the line itself, not a copy, when it was not given); or what is wrong with it.
type Taken<'a> = Result<(Option<String>, Cow<'a, [u8]>), &'static str>;

/// Takes the parameter `name` (`ORCPT=`, `ENVID=`) out of a command line's parameters.
/// Returns its value, if it was given (once), and the line without it for smtp-proto to read
/// the rest.
fn take_param<'a>(
    line: &'a [u8],
    name: &str,
) -> Result<(Option<&'a str>, Cow<'a, [u8]>), &'static str> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Ok((None, Cow::Borrowed(line)));
    };
    let mut found = None;
    let mut kept: Vec<&str> = Vec::new();
    for token in text.split(' ') {
        let Some(value) = token
            .get(..name.len())
            .filter(|k| k.eq_ignore_ascii_case(name))
            .and_then(|_| token.get(name.len()..))
        else {
            kept.push(token);
            continue;
        };
        if found.is_some() {
            return Err("given twice");
        }
        found = Some(value.trim_end_matches(['\r', '\n']));
        if token.ends_with('\n') {
            kept.push("\r\n");
        }
    }
    if found.is_none() {
        return Ok((None, Cow::Borrowed(line)));
    }
    let mut rebuilt = String::with_capacity(text.len());
    for (i, t) in kept.iter().enumerate() {
        if i > 0 && *t != "\r\n" {
            rebuilt.push(' ');
        }
        rebuilt.push_str(t);
    }
    Ok((found, Cow::Owned(rebuilt.into_bytes())))
}

/// Takes the ENVID parameter (RFC 3461 §4.4) out of a MAIL line's parameters, decoded:
/// xtext, at most 100 characters, with no control character (it is written back into status
/// replies' `Original-Envelope-Id`).
fn take_envid(line: &[u8]) -> Taken<'_> {
    let (value, rest) = take_param(line, "ENVID=")?;
    let Some(value) = value else {
        return Ok((None, rest));
    };
    if value.is_empty() {
        return Err("empty");
    }
    let decoded = decode_xtext(value)?;
    if decoded.chars().count() > 100 {
        return Err("longer than 100 characters");
    }
    if decoded.chars().any(char::is_control) {
        return Err("a control character");
    }
    Ok((Some(decoded), rest))
}

/// Takes the ORCPT parameter (RFC 3461 §4.2) out of a RCPT line's parameters, decoded.
/// smtp-proto reads only `rfc822` and refuses the other types (`utf-8`, RFC 6533 §3; `x400`,
/// `unknown`, …), so that a relaying MTA would bounce the mail for a parameter that only feeds
/// the status reply; and it decodes `rfc822`'s xtext an octet to a character, a control
/// character included. Returns the address (`rfc822`) or the type and its address as
/// `type;address` (`utf-8` in lower case, others as given), if there was one, and the line
/// without it for smtp-proto to read the rest.
fn take_orcpt(line: &[u8]) -> Taken<'_> {
    let (value, rest) = take_param(line, "ORCPT=")?;
    let Some(value) = value else {
        return Ok((None, rest));
    };
    let (kind, addr) = value
        .split_once(';')
        .ok_or("no `;` after the address type")?;
    // RFC 3461 §4.2: the value is at most 500 characters.
    if addr.is_empty() {
        return Err("empty address");
    }
    if addr.len() > 500 {
        return Err("longer than 500 characters");
    }
    let utf8 = kind.eq_ignore_ascii_case("utf-8");
    if !utf8 && (kind.is_empty() || !kind.bytes().all(is_atext)) {
        return Err("the address type is not an atom");
    }
    let decoded = if utf8 {
        decode_utf8_addr(addr)?
    } else {
        decode_xtext(addr)?
    };
    // However it was written: the address goes back into a status reply's header.
    if decoded.chars().any(char::is_control) {
        return Err("a control character");
    }
    let stored = if kind.eq_ignore_ascii_case("rfc822") {
        decoded
    } else if utf8 {
        format!("utf-8;{decoded}")
    } else {
        format!("{kind};{decoded}")
    };
    Ok((Some(stored), rest))
}

/// RFC 5322 §3.2.3 `atext`: what an `addr-type` atom (RFC 3461 §4.2) is made of.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// RFC 3461 §4 `xtext`: printable ASCII but `+` and `=`, and `+HH` for any octet; octets
/// that are not UTF-8 are refused.
fn decode_xtext(s: &str) -> Result<String, &'static str> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => {
                let hex = [bytes.next(), bytes.next()];
                let octet = match hex {
                    [Some(h), Some(l)] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        std::str::from_utf8(&[h, l])
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    }
                    _ => None,
                }
                .ok_or("a + not followed by two hexadecimal digits")?;
                out.push(octet);
            }
            b'!'..=b'~' if b != b'=' => out.push(b),
            _ => return Err("a character that must be written +HH"),
        }
    }
    String::from_utf8(out).map_err(|_| "octets that are not UTF-8")
}

/// RFC 6533 §3: `utf-8-addr-xtext` or `utf-8-addr-unitext`, where `\x{HEX}` stands for the
/// Unicode character HEX; `+HH` (RFC 3461 xtext) is read too for an ASCII character, as some
/// clients write it.
fn decode_utf8_addr(s: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let rest = chars.as_str();
                let hex = rest
                    .strip_prefix("x{")
                    .and_then(|r| r.split_once('}'))
                    .map(|(hex, _)| hex)
                    .filter(|h| (1..=6).contains(&h.len()))
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or("a backslash not followed by x{HEX}")?;
                let ch = u32::from_str_radix(hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or("x{HEX} is not a Unicode character")?;
                out.push(ch);
                chars = rest[hex.len() + 3..].chars();
            }
            '+' => {
                let rest = chars.as_str();
                let ch = rest
                    .get(..2)
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(u8::is_ascii)
                    .ok_or("a + not followed by two hexadecimal digits of an ASCII character")?;
                out.push(char::from(ch));
                chars = rest[2..].chars();
            }
            '=' | ' ' => return Err("a character that must be written x{HEX}"),
            c if c.is_control() => return Err("a control character"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn notify_string(flags: u64) -> Option<String> {
    if flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
        return Some("NEVER".into());
    }
    let mut v = Vec::new();
    if flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0 {
        v.push("SUCCESS");
    }
    if flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0 {
        v.push("FAILURE");
    }
    if flags & smtp_proto::RCPT_NOTIFY_DELAY != 0 {
        v.push("DELAY");
    }
    (!v.is_empty()).then(|| v.join(","))
}

#[cfg(test)]
mod tests;
