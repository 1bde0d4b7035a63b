//! Intake: where mail enters the gateway (the SMTP listener, IMAP mailboxes) and becomes a
//! queued request. The listener owns the protocol; this module owns what happens to a mail
//! once it is complete: body to SMS text, splitting into parts, the durable commit, and the
//! reply that says what became of it.

pub mod imap;
pub mod smtp;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::parse::body::{self, BodyError};
use crate::policy::{self, SenderContext, SenderPolicy};
use crate::queue::{Accepted, NewRecipient, NewRequest, QueueError, Source, Store};
use smtp::session::{Envelope, Reply, Session};

/// Turns complete mails into queued requests. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    config: Arc<Config>,
    store: Store,
    senders: Arc<SenderPolicy>,
    /// Told when a request is committed, so idle senders start at once.
    queued: Arc<Notify>,
}

/// Who handed the mail over, as far as the sender rules care.
pub struct Origin<'a> {
    pub source: Source,
    pub client: Option<IpAddr>,
    pub helo: Option<&'a str>,
    pub auth_user: Option<&'a str>,
    pub trusted: bool,
}

impl Intake {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        senders: SenderPolicy,
        queued: Arc<Notify>,
    ) -> Intake {
        Intake {
            config,
            store,
            senders: Arc::new(senders),
            queued,
        }
    }

    /// Queues a mail received over SMTP and returns the reply for the end of DATA. `250` only
    /// after the commit is on disk (invariant 1); on a store failure a `451` makes the client
    /// keep the mail and try again, so nothing already accepted is lost.
    pub async fn accept_smtp(&self, session: &Session, envelope: Envelope, data: Vec<u8>) -> Reply {
        let origin = Origin {
            source: Source::Smtp,
            client: Some(session.client()),
            helo: session.helo(),
            auth_user: session.auth_user(),
            trusted: session.is_trusted(),
        };
        let client = session.client().to_string();
        let request = match self.build(&origin, &envelope, &data).await {
            Ok(r) => r,
            Err(reply) => {
                info!(%client, from = %envelope.mail_from, code = reply.code, reason = ?reply.lines, "mail refused");
                return reply;
            }
        };
        let parts = request.parts.len();
        let rcpts = request.recipients.len();
        match self.store.accept(request).await {
            Ok(Accepted::Queued {
                id,
                recipients,
                duplicates,
                held,
            }) => {
                self.queued.notify_one();
                info!(%id, %client, from = %envelope.mail_from, recipients, duplicates, held, parts, "queued");
                let dup = if duplicates > 0 {
                    format!(", {duplicates} already queued by an earlier copy")
                } else {
                    String::new()
                };
                // A held request is accepted like any other: the reply does not tell a
                // fraudster which pattern gave it away.
                Reply::new(
                    250,
                    (2, 0, 0),
                    format!(
                        "Queued as {id}: {recipients} SMS of {parts} part{} to {rcpts} recipient{}{dup}",
                        plural(parts),
                        plural(rcpts)
                    ),
                )
            }
            Ok(Accepted::Duplicate { id }) => {
                info!(%id, %client, "duplicate mail, already queued");
                Reply::new(
                    250,
                    (2, 0, 0),
                    format!("Already queued as {id}; not queued again"),
                )
            }
            Err(QueueError::Quota(q)) => {
                info!(%client, from = %envelope.mail_from, reason = %q, "quota");
                // Temporary: the client keeps the mail and the quota frees up with time.
                Reply::new(
                    451,
                    (4, 7, 1),
                    format!("Quota reached: {q}; try again later"),
                )
            }
            Err(e) => store_failure(&client, &e),
        }
    }

    /// Parses the mail, applies the sender rules and splits its text; a refusal comes back as
    /// the SMTP reply to give.
    async fn build(
        &self,
        origin: &Origin<'_>,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<NewRequest, Reply> {
        let info = parse_mail(&self.config, data)?;
        let ctx = SenderContext {
            client: origin.client.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            helo: origin.helo.unwrap_or(""),
            mail_from: &envelope.mail_from,
            auth_user: origin.auth_user,
            trusted: origin.trusted,
            header_from: info.from.as_deref(),
        };
        let rule = self
            .senders
            .authorize(&ctx, data)
            .await
            .map_err(|r| Reply::new(550, (5, 7, 1), format!("Not allowed to send SMS: {r}")))?;
        let mut text = info.text.clone();
        let mut subject = info.subject.clone();
        if let Some(pin) = self.senders.pin_for(&ctx) {
            let clean = policy::take_pin(info.subject.as_deref(), pin)
                .map_err(|r| Reply::new(550, (5, 7, 1), format!("Not allowed to send SMS: {r}")))?;
            text = policy::strip_pin_from_text(&text, info.subject.as_deref());
            subject = Some(clean);
        }
        debug!(from = %envelope.mail_from, %rule, "sender allowed");
        let mut req = make_request(&self.config, envelope, data, &info, &text, subject);
        req.source = origin.source;
        req.client = origin.client.map(|c| c.to_string());
        req.helo = origin.helo.map(str::to_string);
        req.auth_user = origin.auth_user.map(str::to_string);
        if let Some(user) = origin.auth_user {
            req.sender = user.to_ascii_lowercase();
        }
        Ok(req)
    }
}

/// Checks the mail's size limits and parses it; a refusal comes back as the SMTP reply to give.
fn parse_mail(config: &Config, data: &[u8]) -> Result<body::MailInfo, Reply> {
    let headers = header_block(data);
    if headers.len() > config.smtp.max_header_bytes {
        return Err(Reply::new(
            552,
            (5, 3, 4),
            format!(
                "The header is {} bytes, more than the {} accepted",
                headers.len(),
                config.smtp.max_header_bytes
            ),
        ));
    }
    body::extract(data, &config.body).map_err(|e| body_error_reply(&e))
}

/// The request for a parsed mail whose SMS text is `text`. Quotas and the pumping guard count
/// it against the envelope sender (the SMTP path puts the AUTH user there instead).
fn make_request(
    config: &Config,
    envelope: &Envelope,
    data: &[u8],
    info: &body::MailInfo,
    text: &str,
    subject: Option<String>,
) -> NewRequest {
    let text = if config.sms.transliterate {
        crate::sms::transliterate(text)
    } else {
        text.to_string()
    };
    let seg = crate::sms::segment(&text, Some(config.sms.max_parts));
    NewRequest {
        source: Source::Smtp,
        client: None,
        helo: None,
        auth_user: None,
        mail_from: envelope.mail_from.clone(),
        sender: envelope.mail_from.to_ascii_lowercase(),
        sender_domain: envelope
            .mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default(),
        message_id: info.message_id.clone(),
        subject,
        dsn_envid: envelope.envid.clone(),
        dsn_ret: envelope.ret.map(str::to_string),
        text: seg.parts.concat(),
        encoding: seg.encoding,
        parts: seg.parts,
        truncated: seg.truncated,
        size: data.len(),
        headers: header_block(data).to_vec(),
        recipients: envelope
            .recipients
            .iter()
            .map(|r| NewRecipient {
                address: r.raw.clone(),
                number: r.recipient.number.clone(),
                name: r.recipient.name.clone(),
                country: r.recipient.country.clone(),
                dsn_notify: r.notify.clone(),
                dsn_orcpt: r.orcpt.clone(),
            })
            .collect(),
    }
}

/// A mail picked up from a mailbox as a request to queue; a refusal comes back as the SMTP
/// reply whose sentence says why. The mailbox's sender rules were checked by pickup, which
/// passes the PIN its sender must give (`pin`): checked and taken out of the subject and the
/// text here as on the SMTP path. Quotas and the pumping guard apply in the queue's writer.
fn build_request(
    config: &Config,
    envelope: &Envelope,
    data: &[u8],
    pin: Option<&str>,
) -> Result<NewRequest, Reply> {
    let info = parse_mail(config, data)?;
    let mut text = info.text.clone();
    let mut subject = info.subject.clone();
    if let Some(pin) = pin {
        let clean = policy::take_pin(info.subject.as_deref(), pin)
            .map_err(|r| Reply::new(550, (5, 7, 1), format!("Not allowed to send SMS: {r}")))?;
        text = policy::strip_pin_from_text(&text, info.subject.as_deref());
        subject = Some(clean);
    }
    Ok(make_request(config, envelope, data, &info, &text, subject))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn body_error_reply(e: &BodyError) -> Reply {
    match e {
        BodyError::TooLarge { .. } => Reply::new(552, (5, 3, 4), e.to_string()),
        _ => Reply::new(554, (5, 6, 0), e.to_string()),
    }
}

/// The header block of a mail: everything up to the first empty line.
pub fn header_block(data: &[u8]) -> &[u8] {
    let crlf = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    let lf = data.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(data.len()),
    };
    &data[..end]
}

/// The reply to a mail the store could not take: temporary, so that the client keeps the mail
/// and tries again (nothing it was told is accepted is lost). A full disk says so, in the
/// words of RFC 3463 (`4.3.1`, mail system full) and RFC 5321 (`452`, insufficient system
/// storage), and is logged as an error: it lasts until an admin frees space.
fn store_failure(client: &str, e: &QueueError) -> Reply {
    if e.is_storage_full() {
        error!(%client, error = %e, "could not queue a mail: the store's disk is full");
        Reply::new(
            452,
            (4, 3, 1),
            "Insufficient system storage: the gateway's disk is full; try again later",
        )
    } else {
        warn!(%client, error = %e, "could not queue a mail");
        Reply::new(451, (4, 3, 0), "Local error while queuing; try again later")
    }
}
