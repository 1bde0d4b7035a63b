//! Mail the gateway sends: replies telling a sender what became of their mail.
//!
//! This module owns the SMTP client side (lettre, through the configured relay) and the text of
//! the replies. Today it sends one kind, the failure notice: a mail taken from a mailbox gave no
//! SMS (it could not be read, or named no SMS recipient), or some of its recipients were refused.
//! Status replies (RFC 3464 delivery status notifications) are in [`replies`], on the same
//! transport and the same durable pattern.
//!
//! Rules every reply follows (RFC 3834, automatic responses to electronic mail):
//! - the envelope sender is null, `MAIL FROM:<>` (§3.3), so a reply that cannot be delivered does
//!   not bounce back to the gateway and start a loop;
//! - it carries `Auto-Submitted: auto-replied` (§5) and refers to the original by `In-Reply-To`
//!   and `References` (§3.1.5);
//! - the caller never replies to mail that is itself automatic (`Auto-Submitted`, bounces,
//!   `Precedence: bulk`) or to the null sender (§2).
//!
//! Notices are durable: pickup writes them in the queue in the same transaction as its decision
//! (`queue::imap`), and [`run`] sends what is due, retrying with backoff. Each attempt's outcome,
//! and the time of the next, is recorded after it: a gateway stopped during an attempt makes it
//! again (a notice sent twice rather than not at all).

pub mod replies;

use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::queue::imap::{PendingNotice, due_notices, next_notice_at};
use crate::queue::{QueueError, Store, now_ms};

/// How replies reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyTls {
    /// Plain SMTP: only for a relay on the same host or a trusted network.
    None,
    /// STARTTLS when the relay offers it, plain otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS or no sending at all.
    Required,
}

/// `[notify]`, validated.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub host: String,
    pub port: u16,
    /// The `From:` of replies.
    pub from: String,
    pub tls: NotifyTls,
    /// The name given in EHLO.
    pub hello_name: String,
    pub timeout: Duration,
    /// Attempts per notice before it is given up (and logged).
    pub max_attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("`{address}` is not an address a reply can be sent to: {reason}")]
    BadRecipient { address: String, reason: String },
    #[error("the reply could not be built: {0}")]
    Build(String),
    #[error("the relay {relay} did not take the reply: {reason}")]
    Relay {
        relay: String,
        reason: String,
        /// A 5xx answer (RFC 5321 §4.2.1): trying again gives the same answer.
        permanent: bool,
    },
}

/// Sends replies through the relay. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    config: Arc<NotifyConfig>,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Notifier {
    pub fn new(config: NotifyConfig) -> Result<Notifier, NotifyError> {
        let from: Mailbox = config
            .from
            .parse::<Address>()
            .map(|a| Mailbox::new(Some("mail2sms".into()), a))
            .map_err(|e| NotifyError::Build(format!("notify.from: {e}")))?;
        let tls = match config.tls {
            NotifyTls::None => Tls::None,
            NotifyTls::Opportunistic | NotifyTls::Required => {
                let params = TlsParameters::new_rustls(config.host.clone())
                    .map_err(|e| NotifyError::Build(format!("TLS for the relay: {e}")))?;
                if config.tls == NotifyTls::Required {
                    Tls::Required(params)
                } else {
                    Tls::Opportunistic(params)
                }
            }
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout))
            .hello_name(ClientId::Domain(config.hello_name.clone()))
            .build();
        Ok(Notifier {
            config: Arc::new(config),
            from,
            transport,
        })
    }

    /// Tells `to` that their mail (`original_message_id`, without angle brackets) gave no SMS,
    /// or not all the SMS it asked for, and why.
    pub async fn send_failure_notice(
        &self,
        to: &str,
        original_message_id: Option<&str>,
        reason: &str,
    ) -> Result<(), NotifyError> {
        self.send_failure_notice_about(to, original_message_id, None, reason)
            .await
    }

    /// [`Notifier::send_failure_notice`], quoting the original subject too.
    pub async fn send_failure_notice_about(
        &self,
        to: &str,
        original_message_id: Option<&str>,
        original_subject: Option<&str>,
        reason: &str,
    ) -> Result<(), NotifyError> {
        let message = failure_notice(
            &self.from,
            to,
            original_message_id,
            original_subject,
            reason,
        )?;
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

fn parse_address(to: &str) -> Result<Address, NotifyError> {
    to.trim()
        .trim_matches(['<', '>'])
        .parse::<Address>()
        .map_err(|e| NotifyError::BadRecipient {
            address: to.to_string(),
            reason: e.to_string(),
        })
}

/// The failure notice as a message (sans-IO, so its text is tested from tables).
pub fn failure_notice(
    from: &Mailbox,
    to: &str,
    original_message_id: Option<&str>,
    original_subject: Option<&str>,
    reason: &str,
) -> Result<Message, NotifyError> {
    let to = parse_address(to)?;
    let subject = match original_subject.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => format!("Not sent as SMS: {}", one_line(s, 150)),
        None => "Your mail was not sent as SMS".to_string(),
    };
    let mut body = String::from(
        "This is an automatic reply from the email-to-SMS gateway.\n\n\
         Your mail was not (or not entirely) sent as SMS:\n\n",
    );
    for line in reason.lines() {
        body.push_str("    ");
        body.push_str(line);
        body.push('\n');
    }
    body.push_str(
        "\nAddress an SMS as NAME@+NUMBER@sms, for example Paul@+33477858589@sms, or\n\
         +33477858589@sms with the number in international form. Nothing needs to be done\n\
         about the recipients that were accepted.\n",
    );
    let mut builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(subject)
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".to_string(),
        ))
        .header(ContentType::TEXT_PLAIN);
    if let Some(id) = original_message_id.map(str::trim).filter(|s| !s.is_empty()) {
        let id = format!("<{}>", id.trim_matches(['<', '>']));
        builder = builder.in_reply_to(id.clone()).references(id);
    }
    builder
        .body(body)
        .map_err(|e| NotifyError::Build(e.to_string()))
}

/// The first line of `s`, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(max).collect();
    if line.chars().count() > max {
        out.push('…');
    }
    out
}

/// Delay before attempt `attempts + 1`: 30 s, 1 min, 2 min, ... capped at 1 h.
pub fn retry_delay(attempts: i64) -> Duration {
    let exp = attempts.clamp(0, 7) as u32;
    Duration::from_secs((30u64 << exp).min(3600))
}

/// When to try again a mail that failed after `attempts` earlier tries, or `None` when it is
/// given up: it cannot be built or addressed, the relay refused it for good, or it has had its
/// `max_attempts`.
pub(crate) fn next_attempt(e: &NotifyError, attempts: i64, max_attempts: u32) -> Option<i64> {
    let permanent = matches!(
        e,
        NotifyError::BadRecipient { .. }
            | NotifyError::Build(_)
            | NotifyError::Relay {
                permanent: true,
                ..
            }
    );
    (!permanent && attempts + 1 < i64::from(max_attempts))
        .then(|| now_ms() + retry_delay(attempts).as_millis() as i64)
}

/// Outcomes of mails that were sent (or given up) but that the store could not record yet (a
/// full disk), by row id. The row still looks due: left alone, the loop would send the same
/// mail again at its next turn, every 50 ms for as long as the disk stays full. Each outcome
/// is recorded again before anything else, and its row is not attempted meanwhile. A restart
/// forgets them: such a mail is then sent once more (at least once, as SMTP is).
pub(crate) struct Unrecorded<T> {
    outcomes: Vec<(i64, T)>,
}

impl<T: Clone> Unrecorded<T> {
    pub(crate) fn new() -> Self {
        Unrecorded {
            outcomes: Vec::new(),
        }
    }

    pub(crate) fn contains(&self, id: i64) -> bool {
        self.outcomes.iter().any(|(i, _)| *i == id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    pub(crate) fn push(&mut self, id: i64, outcome: T) {
        self.outcomes.push((id, outcome));
    }

    /// Records each outcome again with `record`; keeps those the store still refuses.
    pub(crate) async fn retry<F, Fut>(&mut self, mut record: F)
    where
        F: FnMut(i64, T) -> Fut,
        Fut: Future<Output = Result<(), QueueError>>,
    {
        let mut kept = Vec::new();
        for (id, outcome) in self.outcomes.drain(..) {
            if record(id, outcome.clone()).await.is_err() {
                kept.push((id, outcome));
            }
        }
        self.outcomes = kept;
    }
}

/// How long a sending loop waits while the store cannot record what it did (rather than
/// its usual 50 ms): a full disk is not retried in a loop.
pub(crate) const STORE_RETRY: Duration = Duration::from_secs(1);

/// What became of a notice: sent, or failed (to be tried again at a time, or given up).
#[derive(Debug, Clone)]
enum NoticeOutcome {
    Sent,
    Failed { error: String, retry: Option<i64> },
}

async fn record_notice(store: &Store, id: i64, outcome: NoticeOutcome) -> Result<(), QueueError> {
    match outcome {
        NoticeOutcome::Sent => store.notice_sent(id).await,
        NoticeOutcome::Failed { error, retry } => store.notice_failed(id, error, retry).await,
    }
}

/// Sends pending notices until shutdown; `wake` is told when new ones are written.
pub async fn run(store: Store, notifier: Notifier, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut unrecorded = Unrecorded::new();
    loop {
        unrecorded
            .retry(|id, outcome| record_notice(&store, id, outcome))
            .await;
        match due_notices(store.reader(), 32).await {
            Ok(due) => {
                for n in due {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    if unrecorded.contains(n.id) {
                        continue;
                    }
                    let id = n.id;
                    if let Some(outcome) = attempt(&store, &notifier, n).await {
                        unrecorded.push(id, outcome);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read pending notices"),
        }
        let wait = match next_notice_at(store.reader()).await {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 60_000) as u64),
            _ => Duration::from_secs(60),
        };
        let least = if unrecorded.is_empty() {
            Duration::from_millis(50)
        } else {
            STORE_RETRY
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait.max(least)) => {}
        }
    }
}

/// Sends one notice and records the outcome; returns it if the store could not record it.
async fn attempt(store: &Store, notifier: &Notifier, n: PendingNotice) -> Option<NoticeOutcome> {
    let result = notifier
        .send_failure_notice_about(
            &n.recipient,
            n.original_message_id.as_deref(),
            n.original_subject.as_deref(),
            &n.reason,
        )
        .await;
    let outcome = match result {
        Ok(()) => {
            info!(to = %n.recipient, id = n.id, "failure notice sent");
            NoticeOutcome::Sent
        }
        Err(e) => {
            let retry = next_attempt(&e, n.attempts, notifier.config.max_attempts);
            warn!(to = %n.recipient, id = n.id, attempts = n.attempts + 1, error = %e, retry = retry.is_some(), "failure notice not sent");
            NoticeOutcome::Failed {
                error: e.to_string(),
                retry,
            }
        }
    };
    match record_notice(store, n.id, outcome.clone()).await {
        Ok(()) => None,
        Err(e) => {
            warn!(id = n.id, error = %e, retry_in = ?STORE_RETRY, "cannot record a notice attempt; not sending it again meanwhile");
            Some(outcome)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Mailbox {
        "mail2sms <mailer-daemon@gw.test>".parse().unwrap()
    }

    fn text(m: &Message) -> String {
        String::from_utf8(m.formatted()).unwrap()
    }

    #[test]
    fn notice_refers_to_the_original_and_says_it_is_automatic() {
        let m = failure_notice(
            &from(),
            "jean@example.com",
            Some("abc@x.example"),
            Some("Dinner"),
            "none of the recipients is an SMS address",
        )
        .unwrap();
        let t = text(&m);
        for needle in [
            "From: mail2sms <mailer-daemon@gw.test>\r\n",
            "To: jean@example.com\r\n",
            "Subject: Not sent as SMS: Dinner\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "In-Reply-To: <abc@x.example>\r\n",
            "References: <abc@x.example>\r\n",
            "    none of the recipients is an SMS address\r\n",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from\n{t}");
        }
        // The envelope derived from the headers is not used: the caller sends with `<>`.
        assert_eq!(m.envelope().to().len(), 1);
    }

    #[test]
    fn notice_table() {
        // (to, message id, subject, reason) -> Ok(fragments) | Err(kind)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            Result<&'a [&'a str], &'a str>,
        );
        let cases: &[Case] = &[
            (
                "<anne@example.org>",
                Some("<with-brackets@x>"),
                None,
                "line one\nline two",
                Ok(&[
                    "Subject: Your mail was not sent as SMS\r\n",
                    "In-Reply-To: <with-brackets@x>\r\n",
                    "    line one\r\n    line two\r\n",
                ]),
            ),
            (
                "a@b.c",
                None,
                Some("   "),
                "x",
                Ok(&["Subject: Your mail was not sent as SMS\r\n"]),
            ),
            ("not an address", None, None, "x", Err("BadRecipient")),
            ("", None, None, "x", Err("BadRecipient")),
        ];
        for (to, id, subject, reason, expected) in cases {
            let got = failure_notice(&from(), to, *id, *subject, reason);
            match (got, expected) {
                (Ok(m), Ok(fragments)) => {
                    let t = text(&m);
                    for f in *fragments {
                        assert!(t.contains(f), "{f:?} missing for {to:?}:\n{t}");
                    }
                    if id.is_none() {
                        assert!(!t.contains("In-Reply-To"), "{t}");
                    }
                }
                (Err(NotifyError::BadRecipient { .. }), Err("BadRecipient")) => {}
                (got, expected) => panic!("{to:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn long_subjects_are_cut_on_one_line() {
        let long = format!("{}\nsecond line", "é".repeat(400));
        let m = failure_notice(&from(), "a@b.c", None, Some(&long), "r").unwrap();
        let subject = m.headers().get_raw("Subject").unwrap().to_string();
        assert_eq!(subject.chars().count(), "Not sent as SMS: ".len() + 151);
        assert!(!subject.contains("second line"));
    }

    #[test]
    fn retries_back_off_and_stop_growing() {
        let secs: Vec<u64> = (0..10).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry_delay(-5).as_secs(), 30);
    }
}
