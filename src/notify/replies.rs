//! Status replies: RFC 3464 delivery status notifications telling a sender what became of
//! the SMS their mail asked for.
//!
//! The queue owes a reply (`queue::replies`) in the same transaction as the recipient state
//! change that causes it: handed to the network (Action `relayed`, RFC 3461 §4.1: the SMS
//! network gives no DSNs of its own, only status reports), delivered to the handset, failed,
//! or still on its way after `[replies] delay_secs` (Action `delayed`). [`run`] takes each owed
//! reply and first decides ([`decide`], sans-IO) whether to send it:
//!
//! - never to the null sender, never about automatic mail (`Auto-Submitted` other than `no`,
//!   `Precedence: bulk|junk|list`): RFC 3834 §2, so replies cannot start a loop;
//! - only when asked: the RCPT's `NOTIFY` (RFC 3461 §4.1; `NEVER` wins), else a receipt
//!   header (`Disposition-Notification-To`, RFC 8098; `Return-Receipt-To`, its older form)
//!   asking for success and failure, else `[replies] domains` for the sender's domain;
//! - at most `per_sender_per_hour` replies to one sender, counted from what was sent.
//!
//! A reply is a `multipart/report; report-type=delivery-status` (RFC 6522) from `<>`: a human
//! part rendered from `templates/<language>/` with minijinja (read at each reply, so editing a
//! template needs no rebuild; strict undefined, so a misspelt variable is an error, not a gap),
//! a `message/delivery-status` part with one per-recipient block (RFC 3464 §2.3) and the
//! original's header block as `text/rfc822-headers`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, Message, MultiPart, SinglePart};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Notifier, NotifyError, STORE_RETRY, Unrecorded, next_attempt, parse_address};
use crate::queue::replies::{PendingReply, due, next_due, sent_since};
use crate::queue::{QueueError, Store, format_ms, now_ms};

/// `[replies]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepliesConfig {
    /// The folder holding one folder of templates per language.
    pub templates: PathBuf,
    /// The language of every reply: the name of a folder under `templates`.
    pub language: String,
    /// Also reply when a message is handed to the network (Action `relayed`).
    pub relayed: bool,
    /// A `delayed` reply for messages neither delivered nor failed after this long.
    pub delay: Option<Duration>,
    /// Replies to one sender per hour; 0 for no limit.
    pub per_sender_per_hour: u32,
    /// Sender domains that get replies without asking, for the events in `domain_notify`.
    pub domains: Vec<String>,
    pub domain_notify: BTreeSet<Notify>,
}

/// An RFC 3461 NOTIFY keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notify {
    Success,
    Failure,
    Delay,
}

/// Template file names under `templates/<language>/`.
pub const SUBJECT_TEMPLATE: &str = "status-subject.txt";
pub const BODY_TEMPLATE: &str = "status-body.txt";

/// The values a reply needs to be decided on (sans-IO).
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Envelope sender; empty for `<>`.
    pub sender: &'a str,
    /// The RCPT's NOTIFY parameter as stored, e.g. `SUCCESS,FAILURE`.
    pub notify: Option<&'a str>,
    /// The original header block.
    pub headers: &'a [u8],
    /// relayed | delivered | failed | delayed.
    pub action: &'a str,
    /// The recipient's state now.
    pub state: &'a str,
}

/// Which events the sender of a mail asked to be told of, from what is known when it is
/// accepted; `Err` says why no reply will ever be sent about it.
pub fn asked(
    sender: &str,
    notify: Option<&str>,
    headers: &[u8],
    cfg: &RepliesConfig,
) -> Result<BTreeSet<Notify>, String> {
    if sender.trim().trim_matches(['<', '>']).is_empty() {
        return Err("the mail came from the null sender <>".into());
    }
    if let Some(v) = header(headers, "Auto-Submitted")
        && !v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("no")
    {
        return Err(format!("the mail is automatic (Auto-Submitted: {v})"));
    }
    if let Some(v) = header(headers, "Precedence")
        && ["bulk", "junk", "list"].contains(&v.trim().to_ascii_lowercase().as_str())
    {
        return Err(format!("the mail is automatic (Precedence: {v})"));
    }
    Ok(match notify.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => {
            let mut set = BTreeSet::new();
            for k in n.split(',').map(str::trim) {
                match k.to_ascii_uppercase().as_str() {
                    "NEVER" => return Err("the sender asked for none (NOTIFY=NEVER)".into()),
                    "SUCCESS" => set.insert(Notify::Success),
                    "FAILURE" => set.insert(Notify::Failure),
                    "DELAY" => set.insert(Notify::Delay),
                    _ => false,
                };
            }
            set
        }
        None => {
            let mut set = BTreeSet::new();
            if header(headers, "Disposition-Notification-To").is_some()
                || header(headers, "Return-Receipt-To").is_some()
            {
                set.extend([Notify::Success, Notify::Failure]);
            }
            let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let domain = domain.trim_end_matches('>');
            if cfg.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                set.extend(cfg.domain_notify.iter().copied());
            }
            set
        }
    })
}

/// The replies a recipient can be owed, as the queue stores them with it: the actions between
/// commas (`,delivered,failed,`), empty when none can be. The queue writes an owed reply only
/// for these, so a gateway whose senders ask for nothing does no reply work per SMS.
pub fn owed_actions(
    sender: &str,
    notify: Option<&str>,
    headers: &[u8],
    cfg: &RepliesConfig,
) -> String {
    let Ok(asked) = asked(sender, notify, headers, cfg) else {
        return String::new();
    };
    let actions = [
        ("relayed", cfg.relayed && asked.contains(&Notify::Success)),
        ("delivered", asked.contains(&Notify::Success)),
        ("failed", asked.contains(&Notify::Failure)),
        (
            "delayed",
            cfg.delay.is_some() && asked.contains(&Notify::Delay),
        ),
    ];
    let mut out = String::new();
    for (action, owed) in actions {
        if owed {
            out.push(',');
            out.push_str(action);
        }
    }
    if !out.is_empty() {
        out.push(',');
    }
    out
}

/// Whether to send a reply; `Err` says why not.
pub fn decide(f: &Facts<'_>, cfg: &RepliesConfig) -> Result<(), String> {
    let asked = asked(f.sender, f.notify, f.headers, cfg)?;
    let wanted = match f.action {
        "relayed" | "delivered" => Notify::Success,
        "failed" => Notify::Failure,
        "delayed" => Notify::Delay,
        other => return Err(format!("`{other}` is not an event replies are sent for")),
    };
    if !asked.contains(&wanted) {
        return Err(format!(
            "the sender did not ask to be told of this ({wanted:?} not requested)"
        ));
    }
    match (f.action, f.state) {
        ("relayed", _) if !cfg.relayed => Err("replies on handing to the network are off".into()),
        ("relayed" | "delayed", "delivered" | "failed" | "uncertain") => Err(format!(
            "the message was {} before this reply went out",
            f.state
        )),
        _ => Ok(()),
    }
}

/// The first value of header `name` in a header block, unfolded (RFC 5322 §2.2.3).
pub fn header(block: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(block);
    let mut current: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = current.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if current.is_some() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            current = Some(v.trim().to_string());
        }
    }
    current
}

/// RFC 3463 status code and an ASCII diagnostic for an action.
pub fn status_code(action: &str, diagnostic: &str) -> &'static str {
    match action {
        "delivered" | "relayed" => "2.0.0",
        "delayed" => "4.4.7",
        // TP-ST 0x6x: the centre gave up after trying (TS 23.040 §9.2.3.15): expired.
        _ if diagnostic.contains("TP-ST 0x6") => "5.4.7",
        _ => "5.0.0",
    }
}

/// What the templates see.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateContext {
    pub action: String,
    pub status: String,
    pub number: String,
    pub name: Option<String>,
    pub address: String,
    pub sms_text: String,
    pub parts: i64,
    pub subject: Option<String>,
    pub diagnostic: String,
    pub request_id: String,
    pub received_at: String,
    pub event_at: String,
    /// A `failed` reply about a message of which a part may or may not have left (the
    /// recipient is `uncertain`): it is not sent again, and the sender may send the mail again.
    pub uncertain: bool,
}

impl TemplateContext {
    /// The values of the reply `r`.
    pub fn of(r: &PendingReply) -> TemplateContext {
        TemplateContext {
            action: r.action.clone(),
            status: status_code(&r.action, &r.diagnostic).into(),
            number: r.number.clone(),
            name: r.name.clone(),
            address: r.address.clone(),
            sms_text: r.text.clone(),
            parts: r.part_count,
            subject: r.subject.clone(),
            diagnostic: r.diagnostic.clone(),
            request_id: r.request_id.clone(),
            received_at: format_ms(r.received_at),
            event_at: format_ms(r.created_at),
            uncertain: r.action == "failed" && r.state == "uncertain",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the template {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the template {path} cannot be rendered: {detail}")]
    Render { path: PathBuf, detail: String },
}

/// Renders the subject and the human part from `templates/<language>/`, read now.
pub fn render(
    templates: &Path,
    language: &str,
    ctx: &TemplateContext,
) -> Result<(String, String), TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let dir = templates.join(language);
    let one = |file: &str| -> Result<String, TemplateError> {
        let path = dir.join(file);
        let src = std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
            path: path.clone(),
            source,
        })?;
        env.render_named_str(file, &src, minijinja::value::Serde(ctx))
            .map_err(|e| TemplateError::Render {
                path,
                detail: format!("{e:#}"),
            })
    };
    let subject = one(SUBJECT_TEMPLATE)?;
    // A header is one line: the first non-empty line of the rendered subject.
    let subject = subject
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("Delivery status")
        .chars()
        .take(200)
        .collect();
    Ok((subject, one(BODY_TEMPLATE)?))
}

/// Renders every action with sample values, so that a broken template is found at start.
pub fn check_templates(templates: &Path, language: &str) -> Result<(), TemplateError> {
    for (action, uncertain) in [
        ("relayed", false),
        ("delivered", false),
        ("failed", false),
        ("failed", true),
        ("delayed", false),
    ] {
        let ctx = TemplateContext {
            action: action.into(),
            status: status_code(action, "").into(),
            number: "+33612345678".into(),
            name: Some("Paul".into()),
            address: "Paul@+33612345678@sms".into(),
            sms_text: "Sample".into(),
            parts: 1,
            subject: None,
            diagnostic: "sample".into(),
            request_id: "0".into(),
            received_at: format_ms(0),
            event_at: format_ms(0),
            uncertain,
        };
        render(templates, language, &ctx)?;
    }
    Ok(())
}

/// Only printable ASCII, for the `message/delivery-status` fields (RFC 3464 §2.1: 7-bit).
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// A recipient field's value: `rfc822;addr`, or for an address with characters beyond ASCII
/// (given with SMTPUTF8) `utf-8;` and its `utf-8-addr-xtext` (RFC 6533 §3), as a
/// `message/delivery-status` part must stay ASCII.
fn recipient_field(addr: &str) -> String {
    if addr.is_ascii() {
        format!("rfc822;{}", ascii(addr))
    } else {
        format!("utf-8;{}", utf8_addr_xtext(addr))
    }
}

/// RFC 6533 §3 `utf-8-addr-xtext`: what is not a QCHAR (printable ASCII but `+`, `=` and
/// `\`) is written `\x{HEX}`.
fn utf8_addr_xtext(addr: &str) -> String {
    let mut out = String::with_capacity(addr.len());
    for c in addr.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out
}

/// RFC 5322 date of Unix ms.
fn rfc5322(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

/// The `message/delivery-status` body (RFC 3464 §2.2, §2.3): per-message fields, then one
/// per-recipient block.
pub fn delivery_status(reporting_mta: &str, r: &PendingReply, now: i64) -> String {
    let mut s = format!("Reporting-MTA: dns; {}\r\n", ascii(reporting_mta));
    if let Some(envid) = r.envid.as_deref().filter(|e| !e.is_empty()) {
        s.push_str(&format!("Original-Envelope-Id: {}\r\n", ascii(envid)));
    }
    s.push_str(&format!("Arrival-Date: {}\r\n\r\n", rfc5322(r.received_at)));
    if let Some(orcpt) = r.orcpt.as_deref().filter(|o| !o.is_empty()) {
        // Stored as decoded: `addr` or `rfc822;addr` (RFC 3461 §4.2), `utf-8;addr` (RFC 6533),
        // `type;addr` for another type (`x400`, `unknown`).
        let field = match orcpt.split_once(';') {
            Some((kind, addr)) if kind.eq_ignore_ascii_case("utf-8") => {
                format!("utf-8;{}", utf8_addr_xtext(addr))
            }
            Some(_) => ascii(orcpt),
            None => recipient_field(orcpt),
        };
        s.push_str(&format!("Original-Recipient: {field}\r\n"));
    }
    s.push_str(&format!(
        "Final-Recipient: {}\r\n",
        recipient_field(&r.address)
    ));
    s.push_str(&format!("Action: {}\r\n", r.action));
    s.push_str(&format!(
        "Status: {}\r\n",
        status_code(&r.action, &r.diagnostic)
    ));
    if !r.diagnostic.is_empty() {
        // Not an SMTP reply: an extension diagnostic-type (RFC 3464 §2.3.6).
        let diag: String = ascii(&r.diagnostic).chars().take(900).collect();
        s.push_str(&format!("Diagnostic-Code: X-SMS; {diag}\r\n"));
    }
    s.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322(now)));
    s
}

/// `s` as a 7-bit body (RFC 2045 §2.7: ASCII without NUL, lines of at most 998 octets, CRLF),
/// or `None`. lettre's own check also refuses lines over 76 characters, which a diagnostic
/// sentence may have and 7-bit allows.
fn seven_bit(s: &str) -> Option<Body> {
    let mut out = String::with_capacity(s.len() + 16);
    for line in s.lines() {
        if line.len() > 998 || !line.bytes().all(|b| b.is_ascii() && b != 0 && b != b'\r') {
            return None;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    Some(Body::dangerous_pre_encoded(
        out.into_bytes(),
        ContentTransferEncoding::SevenBit,
    ))
}

/// The whole reply (sans-IO, given its rendered subject and text).
pub fn build(
    from: &Mailbox,
    reporting_mta: &str,
    r: &PendingReply,
    subject: &str,
    human: String,
    now: i64,
) -> Result<Message, NotifyError> {
    let to = parse_address(&r.sender)?;
    let boundary = format!("=_mail2sms_{}", uuid::Uuid::now_v7().simple());
    let report_type = ContentType::parse(&format!(
        "multipart/report; report-type=delivery-status; boundary=\"{boundary}\""
    ))
    .map_err(|e| NotifyError::Build(e.to_string()))?;
    let status = seven_bit(&delivery_status(reporting_mta, r, now))
        .ok_or_else(|| NotifyError::Build("the delivery status is not 7-bit".into()))?;
    let mut multipart = MultiPart::builder()
        .header(report_type)
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(human),
        )
        .singlepart(
            SinglePart::builder()
                .header(
                    ContentType::parse("message/delivery-status")
                        .map_err(|e| NotifyError::Build(e.to_string()))?,
                )
                .body(status),
        );
    // The original's header block, when it can travel as 7-bit text (RFC 6522 §3).
    if let Some(headers) = seven_bit(&String::from_utf8_lossy(&r.headers)) {
        multipart = multipart.singlepart(
            SinglePart::builder()
                .header(
                    ContentType::parse("text/rfc822-headers")
                        .map_err(|e| NotifyError::Build(e.to_string()))?,
                )
                .body(headers),
        );
    }
    let mut builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(subject)
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".to_string(),
        ));
    if let Some(id) = r
        .message_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let id = format!("<{}>", id.trim_matches(['<', '>']));
        builder = builder.in_reply_to(id.clone()).references(id);
    }
    builder
        .multipart(multipart)
        .map_err(|e| NotifyError::Build(e.to_string()))
}

impl Notifier {
    /// Sends `message` to `to` with the null envelope sender.
    async fn send_from_null(&self, to: &str, message: &Message) -> Result<(), NotifyError> {
        use lettre::AsyncTransport;
        let envelope = lettre::address::Envelope::new(None, vec![parse_address(to)?])
            .map_err(|e| NotifyError::Build(e.to_string()))?;
        self.transport
            .send_raw(&envelope, &message.formatted())
            .await
            .map_err(|e| NotifyError::Relay {
                relay: format!("{}:{}", self.config.host, self.config.port),
                reason: e.to_string(),
                permanent: e.is_permanent(),
            })?;
        Ok(())
    }
}

/// How far back `delayed` replies are looked for: older messages are not news any more.
const DELAY_LOOKBACK: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often owed replies are looked for.
const POLL: Duration = Duration::from_millis(500);

/// Sends owed status replies until shutdown.
pub async fn run(
    store: Store,
    notifier: Notifier,
    cfg: RepliesConfig,
    shutdown: CancellationToken,
) {
    let mut unrecorded = Unrecorded::new();
    loop {
        unrecorded
            .retry(|id, outcome| record_reply(&store, id, outcome))
            .await;
        if let Some(delay) = cfg.delay {
            let before = now_ms() - delay.as_millis() as i64;
            if let Err(e) = store
                .owe_delayed(before, before - DELAY_LOOKBACK.as_millis() as i64)
                .await
            {
                warn!(error = %e, "cannot look for delayed messages");
            }
        }
        match due(store.reader(), 32).await {
            Ok(list) => {
                for r in list {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    if unrecorded.contains(r.id) {
                        continue;
                    }
                    let id = r.id;
                    if let Some(outcome) = attempt(&store, &notifier, &cfg, r).await {
                        unrecorded.push(id, outcome);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read owed status replies"),
        }
        let wait = match next_due(store.reader()).await {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 60_000) as u64),
            _ => POLL,
        };
        let wait = if unrecorded.is_empty() {
            wait.clamp(Duration::from_millis(50), POLL)
        } else {
            STORE_RETRY
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What became of a status reply: sent, not to be sent (why), or failed (to be tried again at
/// a time, or given up).
#[derive(Debug, Clone)]
enum ReplyOutcome {
    Sent,
    Skipped(String),
    Failed { error: String, retry: Option<i64> },
}

async fn record_reply(store: &Store, id: i64, outcome: ReplyOutcome) -> Result<(), QueueError> {
    match outcome {
        ReplyOutcome::Sent => store.reply_sent(id).await,
        ReplyOutcome::Skipped(why) => store.reply_skipped(id, why).await,
        ReplyOutcome::Failed { error, retry } => store.reply_failed(id, error, retry).await,
    }
}

/// Decides on one owed reply, sends it if it is to be sent, and records the outcome; returns
/// it if the store could not record it.
async fn attempt(
    store: &Store,
    notifier: &Notifier,
    cfg: &RepliesConfig,
    r: PendingReply,
) -> Option<ReplyOutcome> {
    let facts = Facts {
        sender: &r.sender,
        notify: r.notify.as_deref(),
        headers: &r.headers,
        action: &r.action,
        state: &r.state,
    };
    let mut verdict = decide(&facts, cfg);
    if verdict.is_ok() && cfg.per_sender_per_hour > 0 {
        let since = now_ms() - 3_600_000;
        match sent_since(store.reader(), &r.sender, since).await {
            Ok(n) if n >= i64::from(cfg.per_sender_per_hour) => {
                verdict = Err(format!(
                    "rate limit: {n} replies were sent to this sender in the last hour"
                ));
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot count replies for the rate limit; trying later");
                return None;
            }
        }
    }
    if let Err(why) = verdict {
        info!(id = r.id, request = %r.request_id, action = %r.action, "status reply not sent: {why}");
        return settle(store, r.id, ReplyOutcome::Skipped(why)).await;
    }
    let now = now_ms();
    let ctx = TemplateContext::of(&r);
    let result = match render(&cfg.templates, &cfg.language, &ctx) {
        // A template being edited may be broken for a moment: try again later.
        Err(e) => Err(NotifyError::Relay {
            relay: "templates".into(),
            reason: e.to_string(),
            permanent: false,
        }),
        Ok((subject, human)) => match build(
            &notifier.from,
            &notifier.config.hello_name,
            &r,
            &subject,
            human,
            now,
        ) {
            Ok(m) => notifier.send_from_null(&r.sender, &m).await,
            Err(e) => Err(e),
        },
    };
    let outcome = match result {
        Ok(()) => {
            info!(to = %r.sender, id = r.id, action = %r.action, "status reply sent");
            ReplyOutcome::Sent
        }
        Err(e) => {
            let retry = next_attempt(&e, r.attempts, notifier.config.max_attempts);
            warn!(to = %r.sender, id = r.id, attempts = r.attempts + 1, error = %e, retry = retry.is_some(), "status reply not sent");
            ReplyOutcome::Failed {
                error: e.to_string(),
                retry,
            }
        }
    };
    settle(store, r.id, outcome).await
}

/// Records `outcome`; returns it if the store could not.
async fn settle(store: &Store, id: i64, outcome: ReplyOutcome) -> Option<ReplyOutcome> {
    match record_reply(store, id, outcome.clone()).await {
        Ok(()) => None,
        Err(e) => {
            warn!(id, error = %e, retry_in = ?STORE_RETRY, "cannot record a status reply attempt; not sending it again meanwhile");
            Some(outcome)
        }
    }
}

#[cfg(test)]
mod tests;
