//! Intake: where mail enters the gateway (the SMTP listener, IMAP mailboxes) and becomes a
//! queued request. The listener owns the protocol; this module owns what happens to a mail
//! once it is complete: body to SMS text, splitting into parts, the durable commit, and the
//! reply that says what became of it.

pub mod imap;
pub mod smtp;

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
use crate::parse::body::{self, BodyError};
use crate::queue::{Accepted, NewRecipient, NewRequest, Source, Store};
use smtp::session::{Envelope, Reply, Session};

/// Turns complete mails into queued requests. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    config: Arc<Config>,
    store: Store,
    /// Told when a request is committed, so idle senders start at once.
    queued: Arc<Notify>,
}

impl Intake {
    pub fn new(config: Arc<Config>, store: Store, queued: Arc<Notify>) -> Intake {
        Intake {
            config,
            store,
            queued,
        }
    }

    /// Queues a mail received over SMTP and returns the reply for the end of DATA. `250` only
    /// after the commit is on disk (invariant 1); on a store failure a `451` makes the client
    /// keep the mail and try again, so nothing already accepted is lost.
    pub async fn accept_smtp(&self, session: &Session, envelope: Envelope, data: Vec<u8>) -> Reply {
        let client = session.client().to_string();
        let request = match self.build(&envelope, &data) {
            Ok(mut r) => {
                r.client = Some(client.clone());
                r.helo = session.helo().map(str::to_string);
                r.auth_user = session.auth_user().map(str::to_string);
                r
            }
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
            }) => {
                self.queued.notify_one();
                info!(%id, %client, from = %envelope.mail_from, recipients, duplicates, parts, "queued");
                let dup = if duplicates > 0 {
                    format!(", {duplicates} already queued by an earlier copy")
                } else {
                    String::new()
                };
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
            Err(e) => {
                warn!(%client, error = %e, "could not queue a mail");
                Reply::new(451, (4, 3, 0), "Local error while queuing; try again later")
            }
        }
    }

    /// Parses the mail and splits its text; a refusal comes back as the SMTP reply to give.
    fn build(&self, envelope: &Envelope, data: &[u8]) -> Result<NewRequest, Reply> {
        build_request(&self.config, envelope, data)
    }
}

/// A mail and its recipients as a request to queue (the same for SMTP and IMAP); a refusal comes
/// back as the SMTP reply to give, whose sentence says why.
fn build_request(config: &Config, envelope: &Envelope, data: &[u8]) -> Result<NewRequest, Reply> {
    let info = body::extract(data, &config.body).map_err(|e| body_error_reply(&e))?;
    let text = if config.sms.transliterate {
        crate::sms::transliterate(&info.text)
    } else {
        info.text.clone()
    };
    let seg = crate::sms::segment(&text, Some(config.sms.max_parts));
    Ok(NewRequest {
        source: Source::Smtp,
        client: None,
        helo: None,
        auth_user: None,
        mail_from: envelope.mail_from.clone(),
        message_id: info.message_id.clone(),
        subject: info.subject.clone(),
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
                dsn_notify: r.notify.clone(),
                dsn_orcpt: r.orcpt.clone(),
            })
            .collect(),
    })
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
