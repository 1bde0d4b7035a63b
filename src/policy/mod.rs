//! Who may send: the sender rules checked on every mail before it is queued.
//!
//! Every SMS costs money, so a mail is only queued when one of these says yes, in order:
//! 1. the client authenticated (SMTP AUTH over TLS);
//! 2. the client is in a trusted network (the organization's own MTA), and its sender matches
//!    the allowed addresses or domains when any are configured;
//! 3. the mail came straight from the internet, `accept_internet_mail` is on, its `From:` is an
//!    allowed address or domain, and DMARC passes: SPF or DKIM verified and aligned with the
//!    `From:` domain (RFC 7489), so that a forged `From:` does not pass.
//!
//! A sender with a PIN must also put it in the subject (`PIN 1234`); it is taken out of the SMS
//! text. Each refusal names the rule that refused, for the SMTP reply and the IMAP failure
//! notice alike.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DmarcResult, MessageAuthenticator};

/// The sender rules, from `[senders]`.
#[derive(Clone)]
pub struct SenderPolicy {
    /// Lower-case addresses allowed to send (empty: no address rule).
    pub allowed_addresses: Vec<String>,
    /// Lower-case domains allowed to send (empty: no domain rule).
    pub allowed_domains: Vec<String>,
    /// Let unauthenticated clients outside the trusted networks send verified mail.
    pub accept_internet_mail: bool,
    /// Sender address (lower case) → PIN it must put in the subject.
    pub pins: HashMap<String, String>,
    /// The DNS checks of rule 3; `None` when internet mail is not accepted.
    authenticator: Option<Arc<MessageAuthenticator>>,
    /// Our host name, for SPF's `%{r}` macro.
    hostname: String,
}

impl std::fmt::Debug for SenderPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderPolicy")
            .field("allowed_addresses", &self.allowed_addresses)
            .field("allowed_domains", &self.allowed_domains)
            .field("accept_internet_mail", &self.accept_internet_mail)
            .field("pins", &self.pins.len())
            .finish()
    }
}

/// Who is sending, as the intake knows it.
#[derive(Debug, Clone)]
pub struct SenderContext<'a> {
    pub client: IpAddr,
    pub helo: &'a str,
    /// Envelope sender; empty for `<>`.
    pub mail_from: &'a str,
    pub auth_user: Option<&'a str>,
    pub trusted: bool,
    /// The mail's `From:` address.
    pub header_from: Option<&'a str>,
}

/// A refused sender: which rule refused and why, in a sentence for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (rule: {rule})")]
pub struct Refusal {
    pub rule: &'static str,
    pub reason: String,
}

fn refuse(rule: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        rule,
        reason: reason.into(),
    }
}

impl SenderPolicy {
    /// `dns_server`: where DMARC's lookups go (the system resolver when `None`).
    pub fn new(
        allowed_addresses: Vec<String>,
        allowed_domains: Vec<String>,
        accept_internet_mail: bool,
        pins: HashMap<String, String>,
        dns_server: Option<SocketAddr>,
        hostname: String,
    ) -> anyhow::Result<SenderPolicy> {
        let authenticator = if accept_internet_mail {
            let a = match dns_server {
                Some(addr) => {
                    use mail_auth::hickory_resolver::config::{
                        NameServerConfigGroup, ResolverConfig, ResolverOpts,
                    };
                    let group =
                        NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                    let mut opts = ResolverOpts::default();
                    opts.timeout = std::time::Duration::from_secs(5);
                    opts.attempts = 2;
                    MessageAuthenticator::new(
                        ResolverConfig::from_parts(None, vec![], group),
                        opts,
                    )?
                }
                None => MessageAuthenticator::new_system_conf()?,
            };
            Some(Arc::new(a))
        } else {
            None
        };
        Ok(SenderPolicy {
            allowed_addresses: allowed_addresses
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect(),
            allowed_domains: allowed_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            accept_internet_mail,
            pins: pins
                .into_iter()
                .map(|(a, p)| (a.to_ascii_lowercase(), p))
                .collect(),
            authenticator,
            hostname,
        })
    }

    /// A policy that only looks at AUTH and trusted networks.
    pub fn open_to_trusted(hostname: &str) -> SenderPolicy {
        SenderPolicy {
            allowed_addresses: Vec::new(),
            allowed_domains: Vec::new(),
            accept_internet_mail: false,
            pins: HashMap::new(),
            authenticator: None,
            hostname: hostname.to_string(),
        }
    }

    fn listed(&self, address: &str) -> bool {
        is_listed(&self.allowed_addresses, &self.allowed_domains, address)
    }

    fn has_lists(&self) -> bool {
        !self.allowed_addresses.is_empty() || !self.allowed_domains.is_empty()
    }

    /// Decides whether this mail may be queued; returns the rule that allowed it.
    pub async fn authorize(&self, ctx: &SenderContext<'_>, raw: &[u8]) -> Result<String, Refusal> {
        if let Some(user) = ctx.auth_user {
            return Ok(format!("authenticated as {user}"));
        }
        let from = ctx.header_from.unwrap_or(ctx.mail_from);
        if ctx.trusted {
            if !self.has_lists() {
                return Ok(format!("trusted network ({})", ctx.client));
            }
            // Either identity may be the listed one: relays rewrite envelopes.
            if self.listed(from) || self.listed(ctx.mail_from) {
                return Ok(format!("trusted network, allowed sender {from}"));
            }
            return Err(refuse(
                "allowed-senders",
                format!("{from} is not one of the senders allowed to send SMS"),
            ));
        }
        let Some(auth) = self
            .authenticator
            .as_ref()
            .filter(|_| self.accept_internet_mail)
        else {
            return Err(refuse(
                "trusted-or-auth",
                format!(
                    "{} is not a trusted network and did not authenticate",
                    ctx.client
                ),
            ));
        };
        let Some(header_from) = ctx.header_from else {
            return Err(refuse("dmarc", "the mail has no From: address to verify"));
        };
        if !self.listed(header_from) {
            return Err(refuse(
                "allowed-senders",
                format!("{header_from} is not one of the senders allowed to send SMS"),
            ));
        }
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            return Err(refuse(
                "dmarc",
                "the mail cannot be parsed for authentication",
            ));
        };
        // DMARC verifies the From: that `mail-auth` reads; the allowed list was checked
        // against the one `parse::body` read. They must be the same one address, or a field
        // one reader sees and the other does not would let a listed name pass on another
        // domain's alignment.
        if !verifies_the_listed_sender(message.froms(), header_from) {
            return Err(refuse(
                "dmarc",
                "the mail's From: field is not one plain address that can be verified",
            ));
        }
        let dkim = auth.verify_dkim(&message).await;
        let mail_from = if ctx.mail_from.is_empty() {
            format!("postmaster@{}", ctx.helo)
        } else {
            ctx.mail_from.to_string()
        };
        let mail_from_domain = mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let spf = auth
            .verify_spf(SpfParameters::verify_mail_from(
                ctx.client,
                ctx.helo,
                &self.hostname,
                &mail_from,
            ))
            .await;
        let dmarc = auth
            .verify_dmarc(
                DmarcParameters::new(&message, &dkim, &mail_from_domain, &spf)
                    .with_domain_suffix_fn(|d| psl::domain_str(d).unwrap_or(d)),
            )
            .await;
        let spf_ok = *dmarc.spf_result() == DmarcResult::Pass;
        let dkim_ok = *dmarc.dkim_result() == DmarcResult::Pass;
        if spf_ok || dkim_ok {
            let how = match (spf_ok, dkim_ok) {
                (true, true) => "SPF and DKIM",
                (true, false) => "SPF",
                _ => "DKIM",
            };
            return Ok(format!("{header_from} verified by DMARC ({how} aligned)"));
        }
        Err(refuse(
            "dmarc",
            format!(
                "{header_from} could not be verified: DMARC {} (SPF {}, DKIM {})",
                result_word(dmarc.dkim_result()),
                format!("{:?}", spf.result()).to_lowercase(),
                dkim.first()
                    .map(|d| format!("{:?}", d.result()).to_lowercase())
                    .unwrap_or_else(|| "none: the mail is not signed".into()),
            ),
        ))
    }

    /// The PIN the sender must give, if it has one.
    pub fn pin_for(&self, ctx: &SenderContext<'_>) -> Option<&str> {
        ctx.header_from
            .and_then(|f| self.pins.get(&f.to_ascii_lowercase()))
            .or_else(|| self.pins.get(&ctx.mail_from.to_ascii_lowercase()))
            .map(String::as_str)
    }
}

/// Whether `address` is one of `addresses` or in one of `domains` (subdomains included); both
/// lists in lower case. Shared by the SMTP rules and the mailbox rules (`intake::imap`).
pub fn is_listed(addresses: &[String], domains: &[String], address: &str) -> bool {
    let a = address.to_ascii_lowercase();
    let domain = a.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    addresses.contains(&a)
        || domains
            .iter()
            .any(|d| domain == d || domain.ends_with(&format!(".{d}")))
}

fn result_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temporary error",
        DmarcResult::PermError(_) => "permanent error",
        DmarcResult::None => "none",
    }
}

/// Countries SMS may go to, from `[recipients]`: checked at RCPT after the number is parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    /// ISO 3166 alpha-2 codes, upper case; empty: every country not blocked.
    pub allowed_countries: Vec<String>,
    pub blocked_countries: Vec<String>,
}

impl Destinations {
    pub fn check(&self, number: &str, country: Option<&str>) -> Result<(), Refusal> {
        let c = country.unwrap_or("");
        if self.blocked_countries.iter().any(|b| b == c) {
            return Err(refuse(
                "blocked-countries",
                format!("sending to {number} is not allowed: SMS to country {c} are blocked"),
            ));
        }
        if !self.allowed_countries.is_empty() && !self.allowed_countries.iter().any(|a| a == c) {
            let c = if c.is_empty() { "unknown" } else { c };
            return Err(refuse(
                "allowed-countries",
                format!(
                    "sending to {number} is not allowed: country {c} is not one of {}",
                    self.allowed_countries.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// Finds `PIN <digits>` (also `PIN:`, `PIN=`, any case) in a subject and checks it against
/// `pin`. Returns the subject without the PIN, or why it was refused.
pub fn take_pin(subject: Option<&str>, pin: &str) -> Result<String, Refusal> {
    let subject = subject.unwrap_or("");
    let Some((start, end, given)) = find_pin(subject) else {
        return Err(refuse(
            "pin",
            "this sender must put its PIN in the subject (\"PIN 1234\")",
        ));
    };
    // Compare in constant time for equal lengths: the PIN is a secret.
    let ok = given.len() == pin.len()
        && given
            .bytes()
            .zip(pin.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !ok {
        return Err(refuse("pin", "the PIN in the subject is wrong"));
    }
    let mut rest = String::with_capacity(subject.len());
    rest.push_str(subject[..start].trim_end());
    let tail = subject[end..]
        .trim_start_matches([':', '-', ',', ';'])
        .trim_start();
    if !rest.is_empty() && !tail.is_empty() {
        rest.push(' ');
    }
    rest.push_str(tail);
    Ok(rest.trim().to_string())
}

fn find_pin(s: &str) -> Option<(usize, usize, &str)> {
    let lower = s.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("pin") {
        let start = from + pos;
        let word_start = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let mut i = start + 3;
        while i < bytes.len() && matches!(bytes[i], b' ' | b':' | b'=' | b'#') {
            i += 1;
        }
        let digits_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let word_end = i == bytes.len() || !bytes[i].is_ascii_alphanumeric();
        if word_start && i > digits_start && word_end {
            return Some((start, i, &s[digits_start..i]));
        }
        from = start + 3;
    }
    None
}

/// Removes the subject's PIN from an SMS text that starts with the subject (the default
/// subject policy). Only the subject's length at the start of the text is searched, so a PIN
/// written in the body stays.
pub fn strip_pin_from_text(text: &str, subject: Option<&str>) -> String {
    let Some(subject) = subject else {
        return text.to_string();
    };
    let head_len = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i > subject.len())
        .unwrap_or(text.len());
    let Some((start, end, _)) = find_pin(&text[..head_len]) else {
        return text.to_string();
    };
    let before = text[..start].trim_end();
    let after = text[end..]
        .trim_start_matches([':', '-', ',', ';'])
        .trim_start();
    if before.is_empty() {
        // The subject was only the PIN: "PIN 1234: body" becomes "body".
        return after.to_string();
    }
    let mut out = before.to_string();
    if !after.is_empty() {
        // "Meeting PIN 1234: Room 4" keeps the subject's colon.
        let sep = if text[end..].trim_start().starts_with(':') {
            ": "
        } else {
            " "
        };
        out.push_str(sep);
        out.push_str(after);
    }
    out
}

/// Whether DMARC, verifying the `From:` addresses `mail-auth` read (`froms`, lowercased),
/// verifies the sender the allowed list was checked against (`header_from`, read by
/// `parse::body`): one address, the same. Two readers of a mail can disagree on what is a
/// `From:` field (a first line `From : …` is an mbox separator to one; a name with a stray
/// control character is a field to another), and a listed name must not pass on the alignment
/// of another domain.
fn verifies_the_listed_sender(froms: &[String], header_from: &str) -> bool {
    matches!(froms, [one] if *one == header_from.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DMARC verifies the sender the allowed list saw, or the mail is refused: for every way
    /// the two readers of a mail could see different `From:` fields.
    #[test]
    fn dmarc_verifies_the_sender_the_list_saw() {
        use crate::parse::body::{BodyOptions, extract};
        let heads: &[(&[u8], bool)] = &[
            (b"From: Boss <Boss@Example.com>\r\n", true),
            (b"From: boss@example.com\r\nFrom: x@evil.test\r\n", false),
            (b"From : boss@example.com\r\nFrom: x@evil.test\r\n", false),
            (b"From\x0b: boss@example.com\r\nFrom: x@evil.test\r\n", true),
            (
                b"From\xc2\xa0: boss@example.com\r\nFrom: x@evil.test\r\n",
                true,
            ),
            (b"From: boss@example.com, x@evil.test\r\n", false),
            (b"To: a@b.c\r\n", false),
        ];
        for (head, verified) in heads {
            let mut raw = head.to_vec();
            raw.extend_from_slice(b"Subject: hi\r\n\r\nHello\r\n");
            let ours = extract(&raw, &BodyOptions::default())
                .ok()
                .and_then(|i| i.from)
                .unwrap_or_default();
            let theirs = mail_auth::AuthenticatedMessage::parse(&raw)
                .map(|m| m.froms().to_vec())
                .unwrap_or_default();
            let head = String::from_utf8_lossy(head);
            assert_eq!(
                verifies_the_listed_sender(&theirs, &ours),
                *verified,
                "{head:?}: ours {ours:?}, DMARC's {theirs:?}"
            );
        }
    }

    #[test]
    fn pin_in_subject() {
        let cases: &[(Option<&str>, Result<&str, &str>)] = &[
            (Some("PIN 1234 Meeting"), Ok("Meeting")),
            (Some("Meeting PIN:1234"), Ok("Meeting")),
            (Some("pin=1234: Meeting moved"), Ok("Meeting moved")),
            (Some("Re: PIN 1234"), Ok("Re:")),
            (Some("PIN 1235 Meeting"), Err("wrong")),
            (Some("PIN 12345 Meeting"), Err("wrong")),
            (Some("Spinning 1234"), Err("must put")),
            (Some("Meeting"), Err("must put")),
            (None, Err("must put")),
        ];
        for (subject, want) in cases {
            match (take_pin(*subject, "1234"), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{subject:?}"),
                (Err(e), Err(w)) => {
                    assert!(e.reason.contains(w), "{subject:?}: {e}");
                    assert_eq!(e.rule, "pin");
                }
                (got, want) => panic!("{subject:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn pin_leaves_the_sms_text() {
        let cases = [
            (
                "PIN 1234 Meeting: Room 4",
                Some("PIN 1234 Meeting"),
                "Meeting: Room 4",
            ),
            ("PIN 1234: Room 4", Some("PIN 1234"), "Room 4"),
            (
                "Meeting PIN:1234: Room 4",
                Some("Meeting PIN:1234"),
                "Meeting: Room 4",
            ),
            // A PIN-like word in the body is the sender's text.
            (
                "Codes: the pin 1234 opens the door",
                Some("Codes"),
                "Codes: the pin 1234 opens the door",
            ),
            ("Room 4", None, "Room 4"),
        ];
        for (text, subject, want) in cases {
            assert_eq!(strip_pin_from_text(text, subject), want, "{text}");
        }
    }

    #[test]
    fn destination_countries() {
        let d = Destinations {
            allowed_countries: vec!["FR".into(), "GB".into()],
            blocked_countries: vec!["GB".into()],
        };
        assert!(d.check("+33612345678", Some("FR")).is_ok());
        assert_eq!(
            d.check("+447911123456", Some("GB")).unwrap_err().rule,
            "blocked-countries"
        );
        assert_eq!(
            d.check("+4915112345678", Some("DE")).unwrap_err().rule,
            "allowed-countries"
        );
        assert_eq!(
            d.check("+80012345678", None).unwrap_err().rule,
            "allowed-countries"
        );
        assert!(Destinations::default().check("+80012345678", None).is_ok());
    }

    #[tokio::test]
    async fn trusted_and_authenticated_rules() {
        let p = SenderPolicy::new(
            vec!["Boss@Example.com".into()],
            vec!["sales.example.com".into()],
            false,
            HashMap::new(),
            None,
            "gw.example.com".into(),
        )
        .unwrap();
        let ctx = |trusted, auth: Option<&'static str>, from: &'static str| SenderContext {
            client: "192.0.2.1".parse().unwrap(),
            helo: "client.example.com",
            mail_from: from,
            auth_user: auth,
            trusted,
            header_from: Some(from),
        };
        let raw = b"From: x\r\n\r\nbody";
        assert!(
            p.authorize(&ctx(false, Some("alice"), "who@ever.org"), raw)
                .await
                .is_ok()
        );
        assert!(
            p.authorize(&ctx(true, None, "boss@example.com"), raw)
                .await
                .is_ok()
        );
        assert!(
            p.authorize(&ctx(true, None, "anne@eu.sales.example.com"), raw)
                .await
                .is_ok()
        );
        let e = p
            .authorize(&ctx(true, None, "eve@example.com"), raw)
            .await
            .unwrap_err();
        assert_eq!(e.rule, "allowed-senders");
        let e = p
            .authorize(&ctx(false, None, "boss@example.com"), raw)
            .await
            .unwrap_err();
        assert_eq!(e.rule, "trusted-or-auth");
        let open = SenderPolicy::open_to_trusted("gw");
        assert!(
            open.authorize(&ctx(true, None, "eve@example.com"), raw)
                .await
                .is_ok()
        );
    }
}
