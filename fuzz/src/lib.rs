//! Bodies of the fuzz targets, kept in a library so the regular test suite runs them on the
//! committed seed inputs too: a target that no longer compiles or asserts the wrong thing fails
//! `cargo test`, not only a fuzzing session.
//!
//! Each function panics exactly when it finds a bug. The targets cover what reads input from
//! outside the gateway (a recipient address, an SMTP dialogue, a mail) and the PDU codec: any
//! input must give a value or a typed error, never a panic, and the values must keep the
//! promises the rest of the gateway relies on (an E.164 number, well-formed SMTP replies, SMS
//! text without line-ending or control characters).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use mail2sms::intake::smtp::session::{MAX_LINE, Output, Reply, Session, SessionConfig};
use mail2sms::modem::pdu::{self, SubmitOptions, Tpdu};
use mail2sms::parse::address::{
    AddressError, AddressPolicy, NumberKind, normalize_number, parse_recipient,
};
use mail2sms::parse::body::{BodyOptions, extract, header_recipients};
use mail2sms::policy::Destinations;
use mail2sms::sms;

/// `decode` on arbitrary octets, with and without an SMSC field, and `from_hex` on them as
/// text: any result is fine, a panic is the bug.
pub fn pdu_decode(data: &[u8]) {
    let _ = pdu::decode(data, true);
    let _ = pdu::decode(data, false);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(bytes) = pdu::from_hex(text)
    {
        let _ = pdu::decode(&bytes, true);
    }
}

/// Segments arbitrary UTF-8, encodes every part, decodes every PDU and checks the text comes
/// back whole (or, when the text was cut, as a prefix followed by the marker). The first octet
/// picks the concatenation reference size and the part cap, so both paths get exercised.
pub fn segment_encode(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let concat_16bit = control & 0x80 != 0;
    let max_parts = match control & 0x07 {
        0 => None,
        n => Some(usize::from(n)),
    };
    let seg = sms::segment_with(text, max_parts, concat_16bit);
    let opts = SubmitOptions {
        concat_16bit,
        concat_ref: u16::from(control),
        ..SubmitOptions::default()
    };
    let pdus = match pdu::encode_submit("+33612345678", &seg, &opts) {
        Ok(pdus) => pdus,
        Err(e) => panic!("segmentation {seg:?} did not encode: {e}"),
    };
    assert_eq!(pdus.len(), seg.parts.len());
    let mut joined = String::new();
    for (pdu, part) in pdus.iter().zip(&seg.parts) {
        match pdu::decode(&pdu.bytes, true) {
            Ok(Tpdu::Submit(s)) => {
                assert_eq!(&s.text, part, "part decoded differently");
                assert_eq!(s.dest, "+33612345678");
                joined.push_str(&s.text);
            }
            other => panic!("{} decoded as {other:?}", pdu.hex()),
        }
        assert_eq!(pdu.tpdu_len + 1, pdu.bytes.len());
    }
    if seg.truncated {
        let kept = joined.strip_suffix(sms::TRUNCATION_MARKER);
        assert!(kept.is_some_and(|k| text.starts_with(k)), "{joined:?}");
    } else {
        assert_eq!(joined, text);
    }
}

/// The prefix [`address_policy`] blocks, digits only.
const BLOCKED_DIGITS: &str = "33699";

/// A French site's policy: two SMS domains, the default number types, and one mobile range
/// blocked by prefix (written with a separator, as an admin would).
pub fn address_policy() -> AddressPolicy {
    AddressPolicy {
        sms_domains: vec!["sms".to_string(), "sms.example.com".to_string()],
        default_country: phonenumber::country::Id::FR,
        accepted_types: AddressPolicy::default_accepted_types(),
        blocked_prefixes: vec!["+33 699".to_string()],
    }
}

/// `parse_recipient` on the input read as UTF-8 (invalid sequences replaced, as a header
/// decoder would), and `normalize_number` on the same text. Returns whether the address was
/// accepted.
///
/// An accepted number is `+` and 1 to 20 digits, of an accepted type, outside the blocked
/// prefix, and normalizing it again gives it back unchanged. A refusal maps to a 5xx reply
/// whose enhanced code has the same class, and its sentence can go in a reply line as is:
/// printable ASCII, within the 512 octets of RFC 5321 §4.5.3.1.5 with code and CRLF.
pub fn address(data: &[u8]) -> bool {
    let policy = address_policy();
    let raw = String::from_utf8_lossy(data);
    let accepted = match parse_recipient(&raw, &policy) {
        Ok(recipient) => {
            assert_eq!(recipient.raw, raw);
            check_number(&recipient.number, recipient.kind, &policy);
            let again = normalize_number(&recipient.number, &policy);
            let want = (recipient.number.clone(), recipient.kind, recipient.country);
            assert_eq!(
                again,
                Ok(want),
                "{raw:?} normalized differently the second time"
            );
            if let Some(name) = &recipient.name {
                assert!(
                    !name.is_empty() && name.trim() == name,
                    "{raw:?}: name {name:?}"
                );
            }
            true
        }
        Err(error) => {
            check_address_error(&raw, &error);
            false
        }
    };
    match normalize_number(&raw, &policy) {
        Ok((number, kind, _)) => check_number(&number, kind, &policy),
        Err(error) => check_address_error(&raw, &error),
    }
    accepted
}

fn check_number(number: &str, kind: NumberKind, policy: &AddressPolicy) {
    let digits = number.strip_prefix('+').unwrap_or_default();
    assert!(
        (1..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
        "accepted number {number:?} is not E.164"
    );
    assert!(policy.accepted_types.contains(&kind), "{number} is {kind}");
    assert!(!digits.starts_with(BLOCKED_DIGITS), "{number} is blocked");
}

fn check_address_error(raw: &str, error: &AddressError) {
    let (code, (class, subject, detail)) = error.smtp_code();
    assert!(
        (500..600).contains(&code) && u16::from(class) == code / 100,
        "{raw:?}: {error:?} maps to {code} {class}.{subject}.{detail}"
    );
    // RFC 3463 §4: subjects 0 to 7, details up to three digits.
    assert!(subject <= 7 && detail <= 999, "{raw:?}: {error:?}");
    let sentence = error.to_string();
    assert!(
        !sentence.is_empty() && sentence.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{raw:?}: {sentence:?} is not printable ASCII"
    );
    assert!(
        sentence.len() <= 500,
        "{raw:?}: {}-byte sentence",
        sentence.len()
    );
}

/// What one SMTP dialogue did, so that a test can tell whether its seeds reach deep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dialogue {
    pub replies: usize,
    pub delivered: usize,
    pub tls: bool,
    pub authenticated: bool,
    pub closed: bool,
}

/// Plays the client and the I/O layer around a sans-IO SMTP session.
///
/// Input layout: octet 0 configures the session (bit 0 trusted client, bit 1 a certificate is
/// configured, bit 2 users are configured, bit 3 a 64-byte message limit instead of 2000,
/// bit 4 one recipient per mail instead of 3, bit 5 unauthenticated clients accepted, bit 6
/// SMS only to France and the United Kingdom; North Korea is always blocked); octet 1 decides
/// the password checks (bit `n % 8` for the `n`th, 1 = accepted). The rest is chunks, each a
/// length octet then that many bytes fed at once; length 0 means "all the rest", so a seed can
/// hold a readable dialogue.
///
/// The I/O layer accepts every TLS handshake and commits every mail with `250 2.0.0 ok`.
/// Checked on every output: each `Send` is one well-formed reply; a TLS, password or commit
/// request ends its batch; a password is only asked for under TLS; a delivered mail has 1 to
/// `max_recipients` recipients that the address policy and the destination countries accept,
/// at most `max_message_bytes` of data, and comes from a trusted or authenticated client
/// unless unauthenticated clients are accepted; after `Close` nothing more comes.
pub fn smtp_session(data: &[u8]) -> Dialogue {
    let [flags, auth_bits, chunks @ ..] = data else {
        return Dialogue::default();
    };
    let cfg = Arc::new(SessionConfig {
        hostname: "gw.example.com".to_string(),
        max_message_bytes: if flags & 0x08 != 0 { 64 } else { 2000 },
        max_recipients: if flags & 0x10 != 0 { 1 } else { 3 },
        tls_available: flags & 0x02 != 0,
        auth_available: flags & 0x04 != 0,
        accept_untrusted: flags & 0x20 != 0,
        address_policy: address_policy(),
        destinations: Destinations {
            allowed_countries: match flags & 0x40 {
                0 => Vec::new(),
                _ => vec!["FR".to_string(), "GB".to_string()],
            },
            blocked_countries: vec!["KP".to_string()],
        },
    });
    let trusted = flags & 0x01 != 0;
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let mut io = SmtpIo {
        session: Session::new(Arc::clone(&cfg), client, trusted),
        cfg,
        trusted,
        auth_bits: *auth_bits,
        auth_checks: 0,
        dialogue: Dialogue::default(),
    };
    check_reply(&io.session.greeting());

    let mut rest = chunks;
    while let Some((&len, tail)) = rest.split_first() {
        let n = match len {
            0 => tail.len(),
            n => usize::from(n).min(tail.len()),
        };
        let (chunk, after) = tail.split_at(n);
        rest = after;
        let outputs = io.session.feed(chunk);
        io.handle(outputs);
    }
    if !io.dialogue.closed {
        check_reply(&io.session.shutdown_reply());
    }
    io.dialogue
}

struct SmtpIo {
    session: Session,
    cfg: Arc<SessionConfig>,
    trusted: bool,
    auth_bits: u8,
    auth_checks: u32,
    dialogue: Dialogue,
}

impl SmtpIo {
    /// Resolves outputs in order, as the listener does, until the session waits for input.
    fn handle(&mut self, outputs: Vec<Output>) {
        let mut pending = outputs;
        while !pending.is_empty() {
            assert!(!self.dialogue.closed, "output after Close: {pending:?}");
            let batch = std::mem::take(&mut pending);
            let count = batch.len();
            for (i, output) in batch.into_iter().enumerate() {
                let blocking = !matches!(output, Output::Send(_));
                assert!(
                    !blocking || i + 1 == count,
                    "{output:?} is followed by {} more outputs in its batch",
                    count - i - 1
                );
                match output {
                    Output::Send(bytes) => {
                        check_reply(&bytes);
                        self.dialogue.replies += 1;
                    }
                    Output::Close => {
                        assert!(self.session.is_closed(), "Close from a session still open");
                        self.dialogue.closed = true;
                    }
                    Output::StartTls => {
                        assert!(self.cfg.tls_available, "TLS started without a certificate");
                        assert!(!self.dialogue.tls, "TLS started twice");
                        self.session.tls_started();
                        self.dialogue.tls = true;
                    }
                    Output::CheckAuth { user, password: _ } => {
                        // RFC 4954 §4: no password travels in the clear.
                        assert!(
                            self.dialogue.tls,
                            "password of {user:?} asked for in the clear"
                        );
                        let ok = (self.auth_bits >> (self.auth_checks % 8)) & 1 == 1;
                        self.auth_checks += 1;
                        self.dialogue.authenticated |= ok;
                        pending = self.session.auth_result(ok.then_some(user));
                    }
                    Output::Deliver { envelope, data } => {
                        let recipients = envelope.recipients.len();
                        assert!(
                            (1..=self.cfg.max_recipients).contains(&recipients),
                            "mail delivered with {recipients} recipients"
                        );
                        assert!(
                            data.len() <= self.cfg.max_message_bytes,
                            "{} bytes delivered, limit {}",
                            data.len(),
                            self.cfg.max_message_bytes
                        );
                        assert!(
                            self.trusted
                                || self.dialogue.authenticated
                                || self.cfg.accept_untrusted,
                            "mail accepted from an unauthenticated, untrusted client"
                        );
                        for r in &envelope.recipients {
                            let again = parse_recipient(&r.raw, &self.cfg.address_policy);
                            assert_eq!(again.as_ref(), Ok(&r.recipient), "{:?}", r.raw);
                            let country = r.recipient.country.as_deref();
                            let allowed = self.cfg.destinations.check(&r.recipient.number, country);
                            assert!(allowed.is_ok(), "{:?} delivered: {allowed:?}", r.raw);
                        }
                        self.dialogue.delivered += 1;
                        pending = self.session.delivered(Reply::new(250, (2, 0, 0), "ok"));
                    }
                }
            }
        }
    }
}

/// One SMTP reply (RFC 5321 §4.2): lines of a three-digit code, `-` on every line but the last
/// and a space on the last, text without CR or LF, CRLF at the end; the same code on every
/// line, and no line longer than the session accepts from its clients.
fn check_reply(bytes: &[u8]) {
    let shown = String::from_utf8_lossy(bytes);
    let Some(body) = bytes.strip_suffix(b"\r\n") else {
        panic!("reply does not end with CRLF: {shown:?}");
    };
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let mut first_code: Option<&[u8]> = None;
    for (i, &line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let line = match line.strip_suffix(b"\r") {
            Some(line) if !last => line,
            _ if last => line,
            _ => panic!("bare LF in reply {shown:?}"),
        };
        assert!(!line.contains(&b'\r'), "bare CR in reply {shown:?}");
        assert!(
            line.len() + 2 <= MAX_LINE,
            "{}-byte reply line",
            line.len() + 2
        );
        let (code, sep) = (line.get(..3), line.get(3));
        let Some(code) = code.filter(|c| c.iter().all(u8::is_ascii_digit)) else {
            panic!("reply line without a code: {shown:?}");
        };
        assert!(
            code.first().is_some_and(|d| (b'2'..=b'5').contains(d)),
            "reply code {shown:?}"
        );
        assert_eq!(
            *first_code.get_or_insert(code),
            code,
            "codes differ in {shown:?}"
        );
        let want = if last { b' ' } else { b'-' };
        assert_eq!(sep, Some(&want), "bad separator in {shown:?}");
    }
}

/// `extract` and `header_recipients` on arbitrary bytes. Returns the SMS text when there is
/// one.
///
/// The text is never empty, has no control character but the line feed (so no CR and no NUL),
/// and no blank at either end. Each header recipient has a non-empty, trimmed address listed
/// once, and a display name only when there is one.
pub fn body(data: &[u8]) -> Option<String> {
    let text = match extract(data, &BodyOptions::default()) {
        Ok(info) => {
            let text = info.text;
            assert!(!text.is_empty(), "empty SMS text");
            let control = text.chars().find(|&c| c.is_control() && c != '\n');
            assert_eq!(control, None, "control character in {text:?}");
            assert_eq!(text.trim(), text, "SMS text not trimmed");
            Some(text)
        }
        Err(_) => None,
    };
    let recipients = header_recipients(data);
    for (i, (name, address)) in recipients.iter().enumerate() {
        assert!(
            !address.is_empty() && address.trim() == address,
            "address {address:?}"
        );
        if let Some(name) = name {
            assert!(!name.is_empty(), "empty display name for {address:?}");
        }
        let again = recipients
            .iter()
            .skip(i + 1)
            .any(|(_, other)| other.eq_ignore_ascii_case(address));
        assert!(!again, "{address:?} listed twice");
    }
    text
}
