//! The decisions of IMAP pickup, without I/O: which messages to claim, how to write a UID set,
//! what a mail becomes (a request, or a failure with the reason its sender is told). The session
//! in `mod.rs` feeds these functions what the server said and does what they return.
//!
//! # Who may send through a mailbox
//!
//! Mail reaches a mailbox through the organization's own MX, so the SMTP listener's first two
//! rules (SMTP AUTH, trusted networks) say nothing here: every mailbox mail was relayed. What
//! is checked, per mailbox ([`MailboxSenders`]), before anything is queued:
//! 1. when `authserv_id` is set, the DMARC verdict the mailbox's own server recorded in an
//!    `Authentication-Results` field under that authserv-id (RFC 8601) must be `pass`. Only the
//!    MX saw the connecting client, which SPF needs, so its verdict is used rather than a
//!    verification here; fields under other authserv-ids are ignored (RFC 8601 §5: the MX removes
//!    forged ones carrying its own id, others are not its word);
//! 2. when allowed addresses or domains apply (the mailbox's own, else `[senders]`), the
//!    `From:` address must be one of them (or the `Return-Path` when DMARC is not checked, as
//!    for a trusted relay: relays rewrite envelopes);
//! 3. a sender with a PIN (`[senders] pins`) must give it in the subject; it is taken out of
//!    the SMS text;
//! 4. recipients go through the destination policy (blocked prefixes and number types in the
//!    address grammar, then allowed and blocked countries), like RCPT TO;
//! 5. quotas and the pumping guard, in the queue's writer, as for SMTP.
//!
//! A refusal sends the mail to the failed folder and its sender a reply naming the rule.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use async_imap::imap_proto::{MailboxDatum, Response, ResponseCode, Status};
use mail_parser::{HeaderName, HeaderValue, MessageParser};

use crate::config::Config;
use crate::intake::smtp::session::{Envelope, EnvelopeRecipient};
use crate::parse::address::{AddressError, parse_recipient};
use crate::parse::body;
use crate::policy::{self, Refusal};
use crate::queue::imap::{Decision, NewNotice};
use crate::queue::{NewRequest, Source};

/// One message as the listing `UID FETCH 1:* (UID FLAGS RFC822.SIZE MODSEQ)` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub uid: u32,
    pub size: Option<u32>,
    /// RFC 7162 §3.1.4: present when the server does CONDSTORE.
    pub modseq: Option<u64>,
    pub deleted: bool,
    /// Keywords (flags that are not system flags), as the server spells them.
    pub keywords: Vec<String>,
}

/// What to do with a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Messages carrying this gateway's claim keyword already (claimed by an earlier run that
    /// stopped before moving them): handled without claiming again.
    pub mine: Vec<u32>,
    /// Messages nobody claimed: to claim now with a conditional STORE.
    pub claim: Vec<u32>,
    /// The UNCHANGEDSINCE value for that STORE: the highest mod-sequence seen. Any change made
    /// after the listing (another gateway's claim) has a higher one (RFC 7162 §3.1.1: mod-
    /// sequences strictly increase per mailbox), so that message's STORE fails.
    pub unchanged_since: Option<u64>,
    /// Messages claimed by other gateways, left alone.
    pub others: usize,
}

/// The keyword prefix every gateway's claim keyword starts with.
pub const CLAIM_PREFIX: &str = "$mail2sms-claimed-";

/// Chooses what to handle in this round: this gateway's own earlier claims first, then
/// unclaimed messages, `batch` in all, lowest UID (oldest) first. Unclaimed messages flagged
/// `\Deleted` are left alone: someone deleted them.
pub fn plan(listing: &[Listed], my_keyword: &str, batch: usize) -> Plan {
    let mut sorted: Vec<&Listed> = listing.iter().collect();
    sorted.sort_by_key(|l| l.uid);
    let mut p = Plan::default();
    let mut modseq: Option<u64> = None;
    for l in &sorted {
        let mine = l
            .keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(my_keyword));
        let claimed = l.keywords.iter().any(|k| {
            k.len() >= CLAIM_PREFIX.len()
                && k[..CLAIM_PREFIX.len()].eq_ignore_ascii_case(CLAIM_PREFIX)
        });
        if mine {
            if p.mine.len() < batch {
                p.mine.push(l.uid);
            }
        } else if claimed {
            p.others += 1;
        } else if !l.deleted && p.mine.len() + p.claim.len() < batch {
            p.claim.push(l.uid);
            if let Some(m) = l.modseq {
                modseq = Some(modseq.map_or(m, |x| x.max(m)));
            }
        }
    }
    // Own claims can fill the batch before the loop meets them all; unclaimed ones then wait.
    let room = batch.saturating_sub(p.mine.len());
    p.claim.truncate(room);
    p.unchanged_since = if p.claim.is_empty() { None } else { modseq };
    p
}

/// What an unsolicited response says about the selected folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Nothing that matters to pickup (flags, expunges, keep-alives).
    Nothing,
    /// Mail may have arrived (`EXISTS`, `RECENT`, RFC 3501 §7.3).
    News,
    /// The server reported trouble while the folder was selected: an untagged `NO`, `BAD`
    /// or `BYE` (RFC 3501 §7.1.2, §7.1.3, §7.1.5). Dovecot answers so, and keeps the session,
    /// when the selected folder is deleted under it; the session's view is then stale, and
    /// what it does to a folder created again under the same name corrupts that folder's
    /// index ("duplicate transaction log sequence"), so a message it moved can come back.
    /// Nothing more is done in the session until a fresh SELECT has shown the folder is
    /// still the one selected.
    Trouble(String),
    /// `* OK [UIDVALIDITY n]` with another value than the session selected (RFC 3501 §2.3.1.1:
    /// every UID the session holds is void).
    UidValidity(u32),
}

/// Classifies one unsolicited response; `uidvalidity` is the value the session selected.
pub fn heard(r: &Response<'_>, uidvalidity: u32) -> Heard {
    match r {
        Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_)) => Heard::News,
        Response::Data { status, outcome } => match (status, &outcome.code) {
            (Status::Ok, Some(ResponseCode::UidValidity(n))) if *n != uidvalidity => {
                Heard::UidValidity(*n)
            }
            (Status::No | Status::Bad | Status::Bye, _) => {
                let word = match status {
                    Status::No => "NO",
                    Status::Bad => "BAD",
                    _ => "BYE",
                };
                Heard::Trouble(format!(
                    "{word} {}",
                    outcome.information.as_deref().unwrap_or("").trim()
                ))
            }
            _ => Heard::Nothing,
        },
        _ => Heard::Nothing,
    }
}

/// Writes UIDs as an IMAP sequence set (RFC 3501 §9 `sequence-set`), runs compressed:
/// `[1, 2, 3, 7]` → `1:3,7`.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Splits UIDs (with their sizes) into groups of at most `max_bytes` each (one message at least),
/// so a batch of large mails is not held in memory at once.
pub fn chunks_by_size(uids: &[(u32, u32)], max_bytes: u64) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut bytes = 0u64;
    for &(uid, size) in uids {
        match out.last_mut() {
            Some(last) if bytes + u64::from(size) <= max_bytes => {
                last.push(uid);
                bytes += u64::from(size);
            }
            _ => {
                out.push(vec![uid]);
                bytes = u64::from(size);
            }
        }
    }
    out
}

/// What the headers say about who sent a mail and whether to answer it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// `Message-ID`, without angle brackets.
    pub message_id: Option<String>,
    pub subject: Option<String>,
    /// The envelope sender as the delivering agent recorded it (`Return-Path`), else `From`;
    /// empty for the null sender.
    pub sender: String,
    /// The `From:` address, the one DMARC verifies and people see.
    pub from: Option<String>,
    /// RFC 3834 §2: the mail is itself automatic (`Auto-Submitted` other than `no`,
    /// `Precedence: bulk/junk/list`, a `multipart/report`): never answer it.
    pub automatic: bool,
}

impl Origin {
    /// Where a reply goes: nowhere for the null sender or automatic mail (RFC 3834 §2, §3.3).
    pub fn reply_to(&self) -> Option<&str> {
        (!self.automatic && self.sender.contains('@')).then_some(self.sender.as_str())
    }
}

/// Reads the header fields [`Origin`] needs. Tolerant: a mail the MIME parser cannot read gives
/// an empty origin rather than an error (mail-parser has panicked on fuzzed input before).
pub fn origin(raw: &[u8]) -> Origin {
    catch_unwind(AssertUnwindSafe(|| origin_unguarded(raw))).unwrap_or_default()
}

fn origin_unguarded(raw: &[u8]) -> Origin {
    let Some(m) = MessageParser::default().parse_headers(raw) else {
        return Origin::default();
    };
    let return_path = match m.header(HeaderName::ReturnPath) {
        Some(HeaderValue::Text(t)) => Some(t.trim().to_string()),
        Some(HeaderValue::TextList(l)) => l.first().map(|t| t.trim().to_string()),
        // `Return-Path: <>` is the null sender.
        Some(_) => Some(String::new()),
        None => None,
    };
    let from = m
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_string);
    let sender = return_path.or(from).unwrap_or_default();
    let text = |name: &str| {
        m.header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let auto_submitted = text("Auto-Submitted");
    let precedence = text("Precedence");
    let report = m
        .header(HeaderName::ContentType)
        .and_then(|h| h.as_content_type())
        .is_some_and(|c| {
            c.ctype().eq_ignore_ascii_case("multipart")
                && c.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        });
    let automatic = (!auto_submitted.is_empty() && !auto_submitted.starts_with("no"))
        || ["bulk", "junk", "list"]
            .iter()
            .any(|p| precedence.starts_with(p))
        || report;
    Origin {
        message_id: m
            .message_id()
            .map(|s| s.trim().trim_matches(['<', '>']).to_string())
            .filter(|s| !s.is_empty()),
        subject: m.subject().map(str::to_string),
        sender: sender.trim_matches(['<', '>']).to_string(),
        from: m
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_string),
        automatic,
    }
}

/// The name a mail keeps whatever its UID: `<message-id>`, or a SHA-256 of its bytes.
pub fn message_key(origin: &Origin, raw: &[u8]) -> String {
    match &origin.message_id {
        Some(id) => format!("<{id}>"),
        None => {
            let d = ring::digest::digest(&ring::digest::SHA256, raw);
            let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// The SMS recipients a mail names in its header.
#[derive(Debug, Clone, Default)]
pub struct HeaderRecipients {
    pub accepted: Vec<EnvelopeRecipient>,
    /// In an SMS domain but refused (invalid, blocked, premium-rate number, country not
    /// allowed...): (address, why).
    pub refused: Vec<(String, String)>,
    /// Accepted but beyond the per-mail limit.
    pub over_limit: Vec<String>,
}

/// Reads recipients from `To`, `Cc`, `Delivered-To` and `X-Original-To` (in every form the
/// SMTP listener takes at RCPT). Addresses outside the SMS domains are the mailbox's own
/// address, colleagues in copy and the like: they are not recipients of an SMS and are skipped
/// without a word. A display name in the header names the recipient when the address does not.
pub fn header_recipients(raw: &[u8], config: &Config, max: usize) -> HeaderRecipients {
    let mut out = HeaderRecipients::default();
    for (display, address) in body::header_recipients(raw) {
        match parse_recipient(&address, &config.recipients) {
            Ok(mut r) => {
                // The countries rule, as at RCPT TO.
                if let Err(refusal) = config.destinations.check(&r.number, r.country.as_deref()) {
                    out.refused.push((address, refusal.to_string()));
                    continue;
                }
                if out.accepted.iter().any(|a| a.recipient.number == r.number) {
                    continue;
                }
                if out.accepted.len() >= max {
                    out.over_limit.push(address);
                    continue;
                }
                if r.name.is_none() {
                    r.name = display.filter(|d| !d.trim().is_empty());
                }
                out.accepted.push(EnvelopeRecipient {
                    raw: address,
                    recipient: r,
                    notify: None,
                    orcpt: None,
                });
            }
            Err(AddressError::NotSmsDomain { .. }) => {}
            Err(e) => out.refused.push((address, e.to_string())),
        }
    }
    out
}

/// What a mail becomes.
#[derive(Debug, Clone)]
pub struct Reading {
    pub decision: Decision,
    /// The sentence(s) for the sender: why nothing, or not everything, was sent.
    pub notice_reason: Option<String>,
}

/// Decides what a mail taken from a mailbox becomes: the same request the SMTP listener would
/// queue for the same mail and recipients (`Source::Imap`), or a failure saying why.
pub fn read_mail(
    raw: &[u8],
    origin: &Origin,
    mailbox: &str,
    senders: &MailboxSenders,
    config: &Config,
    max_recipients: usize,
) -> Reading {
    let pin = match check_sender(raw, origin, senders) {
        Ok(pin) => pin,
        Err(refusal) => {
            let reason = format!("Not allowed to send SMS: {refusal}");
            // A mail that fails DMARC, or carries no verdict to trust, is not from whom it
            // says: a reply would go to whatever address it names, which anyone can set
            // (backscatter). It fails in the mailbox's failed folder, with its reason, alone.
            let notice_reason = (refusal.rule != "dmarc").then(|| reason.clone());
            return Reading {
                notice_reason,
                decision: Decision::Fail { reason },
            };
        }
    };
    let rcpts = header_recipients(raw, config, max_recipients);
    let mut refusals: Vec<String> = rcpts
        .refused
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect();
    refusals.extend(rcpts.over_limit.iter().map(|a| {
        format!("{a}: not sent, a mail may name at most {max_recipients} SMS recipients")
    }));
    if rcpts.accepted.is_empty() {
        let reason = if refusals.is_empty() {
            format!(
                "the mail names no SMS recipient: none of its To, Cc, Delivered-To or \
                 X-Original-To addresses is in an SMS domain ({})",
                config.site.sms_domains.join(", ")
            )
        } else {
            format!(
                "no SMS was sent, every recipient was refused:\n{}",
                refusals.join("\n")
            )
        };
        return Reading {
            notice_reason: Some(reason.clone()),
            decision: Decision::Fail { reason },
        };
    }
    let envelope = Envelope {
        mail_from: origin.sender.clone(),
        ret: None,
        envid: None,
        smtputf8: false,
        recipients: rcpts.accepted,
    };
    match crate::intake::build_request(config, &envelope, raw, pin) {
        Ok(mut req) => {
            req.source = Source::Imap;
            req.client = Some(format!("mailbox {mailbox}"));
            Reading {
                decision: Decision::Queue(Box::new(req)),
                notice_reason: (!refusals.is_empty()).then(|| {
                    format!(
                        "these recipients were refused (the others will get the SMS):\n{}",
                        refusals.join("\n")
                    )
                }),
            }
        }
        Err(reply) => {
            let reason = reply.lines.join(" ");
            Reading {
                notice_reason: Some(reason.clone()),
                decision: Decision::Fail { reason },
            }
        }
    }
}

/// The sender rules of one mailbox, from its `[[mailbox]]` keys over `[senders]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxSenders {
    /// Lower-case addresses allowed to send (with `allowed_domains` empty too: anyone).
    pub allowed_addresses: Vec<String>,
    /// Lower-case domains allowed to send, subdomains included.
    pub allowed_domains: Vec<String>,
    /// Sender address (lower case) → the PIN it must give in the subject.
    pub pins: HashMap<String, String>,
    /// When set, DMARC must pass in the `Authentication-Results` this server id wrote.
    pub authserv_id: Option<String>,
}

fn refuse(rule: &'static str, reason: String) -> Refusal {
    Refusal { rule, reason }
}

/// Rules 1 to 3 of the module documentation; returns the PIN to take from the subject, if the
/// sender has one.
pub fn check_sender<'a>(
    raw: &[u8],
    origin: &Origin,
    senders: &'a MailboxSenders,
) -> Result<Option<&'a str>, Refusal> {
    let from = origin.from.as_deref();
    if let Some(id) = &senders.authserv_id {
        let Some(from) = from else {
            return Err(refuse(
                "dmarc",
                "the mail has no From: address to verify".into(),
            ));
        };
        match dmarc_result(raw, id) {
            Some(r) if r == "pass" => {}
            Some(r) => {
                return Err(refuse(
                    "dmarc",
                    format!("{from} could not be verified: the mail server {id} found DMARC {r}"),
                ));
            }
            None => {
                return Err(refuse(
                    "dmarc",
                    format!(
                        "{from} could not be verified: the mail carries no DMARC result from the mail server {id}"
                    ),
                ));
            }
        }
    }
    if !senders.allowed_addresses.is_empty() || !senders.allowed_domains.is_empty() {
        let listed =
            |a: &str| policy::is_listed(&senders.allowed_addresses, &senders.allowed_domains, a);
        // With DMARC checked only the verified From: counts.
        let ok =
            from.is_some_and(listed) || (senders.authserv_id.is_none() && listed(&origin.sender));
        if !ok {
            let who = from.unwrap_or(origin.sender.as_str());
            let who = if who.is_empty() { "<>" } else { who };
            return Err(refuse(
                "allowed-senders",
                format!("{who} is not one of the senders allowed to send SMS"),
            ));
        }
    }
    let pin = from
        .and_then(|f| senders.pins.get(&f.to_ascii_lowercase()))
        .or_else(|| senders.pins.get(&origin.sender.to_ascii_lowercase()))
        .map(String::as_str);
    Ok(pin)
}

/// The `dmarc` result (lower case) in the first `Authentication-Results` field written by
/// `authserv_id` (RFC 8601 §2.2: `authserv-id [version] ; method=result ...`); `None` when no
/// field of that server gives one.
pub fn dmarc_result(raw: &[u8], authserv_id: &str) -> Option<String> {
    header_fields(crate::intake::header_block(raw), "Authentication-Results")
        .into_iter()
        .find_map(|value| {
            let clauses = split_clauses(&value);
            let mut it = clauses.iter();
            let id = it.next()?.split_whitespace().next()?.to_string();
            if !id.eq_ignore_ascii_case(authserv_id) {
                return None;
            }
            it.find_map(|c| {
                let (method, result) = c.split_whitespace().next()?.split_once('=')?;
                // `dmarc` or `dmarc/1` (a method version, RFC 8601 §2.2).
                let method = method.split('/').next()?.trim();
                method
                    .eq_ignore_ascii_case("dmarc")
                    .then(|| result.trim().to_ascii_lowercase())
            })
        })
}

/// The unfolded values of every field called `name` (RFC 5322 §2.2.3).
fn header_fields(block: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(block);
    let mut fields: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else if !line.is_empty() {
            fields.push(line.to_string());
        }
    }
    fields
        .into_iter()
        .filter_map(|f| {
            let (n, v) = f.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// Splits a field at `;`, leaving out comments (`(...)`, nested) and keeping quoted strings
/// whole (RFC 5322 §3.2.2, §3.2.4).
fn split_clauses(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        let cur = out.last_mut().expect("never empty");
        if escaped {
            escaped = false;
            if depth == 0 {
                cur.push(c);
            }
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            ';' if !quoted && depth == 0 => out.push(String::new()),
            _ if depth == 0 => cur.push(c),
            _ => {}
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

/// The failure for a mail too large to read (only its header was fetched).
pub fn too_large(size: u32, limit: usize) -> Reading {
    let reason = body::BodyError::TooLarge {
        size: size as usize,
        limit,
    }
    .to_string();
    Reading {
        notice_reason: Some(reason.clone()),
        decision: Decision::Fail { reason },
    }
}

/// The notice to record with a decision, when there is something to say and someone to say it
/// to.
pub fn notice(reading: &Reading, origin: &Origin) -> Option<NewNotice> {
    let reason = reading.notice_reason.as_ref()?;
    let to = origin.reply_to()?;
    Some(NewNotice {
        recipient: to.to_string(),
        original_message_id: origin.message_id.clone(),
        original_subject: origin.subject.clone(),
        reason: reason.clone(),
    })
}

/// The request inside a decision, for tests and logs.
pub fn request(reading: &Reading) -> Option<&NewRequest> {
    match &reading.decision {
        Decision::Queue(r) => Some(r),
        Decision::Fail { .. } => None,
    }
}

#[cfg(test)]
mod tests;
