//! Recipient address grammar: turns what a sender wrote as a recipient into an E.164 number.
//!
//! The gateway is addressed with mail whose local part carries a phone number, in the forms
//! Domino-style mail systems actually produce, several of which are not valid RFC 5321:
//!
//! | form | example |
//! |---|---|
//! | Domino style, unquoted | `Paul@+33477858589@sms` |
//! | the same, quoted | `"Paul@+33477858589"@sms.example.com` |
//! | percent hack | `Paul%+33477858589%sms@gw.example.com` |
//! | number only | `+33477858589@sms`, `0033477858589@sms`, `0477858589@sms` |
//!
//! Numbers may carry the separators `.` `-` `/` `(` `)` and spaces, and a `(0)` trunk prefix
//! written inside an international number (`+33(0)477858589`) is dropped.
//!
//! Everything here is sans-IO: a string and an [`AddressPolicy`] in, a [`Recipient`] or an
//! [`AddressError`] out. The SMTP listener calls [`parse_recipient`] at `RCPT` time so that a
//! destination the gateway will not serve is refused before the message is accepted, and the
//! error's `Display` is the sentence of that SMTP reply, with [`AddressError::smtp_code`] giving
//! the reply code and enhanced status code.
//!
//! Relaying rule (no open relay): the domain after the last `@` must be one of the configured
//! SMS domains. In the percent-hack form the domain after the last `%` of the local part must
//! *also* be an SMS domain, so `x%+33477858589%example.org@sms` is refused. A gateway that
//! receives percent-hack mail addressed to its own host name (`…@gw.example.com`) lists that
//! host name among its SMS domains.

use std::fmt;

use std::sync::Once;

use phonenumber::ParseError;
use phonenumber::metadata::{DATABASE, Metadata};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest address accepted, in bytes. RFC 5321 §4.5.3.1.3 allows 256 octets for a path; the
/// forms above are not RFC 5321 and may be longer, so the bound is liberal but finite.
pub const MAX_ADDRESS_LEN: usize = 512;

/// Longest piece of the sender's input quoted back in a reply sentence: an SMTP reply line is at
/// most 512 octets (RFC 5321 §4.5.3.1.5), code and the rest of the sentence included.
const MAX_ECHO_CHARS: usize = 80;

/// Longest run of digits handed to the numbering plan parser: libphonenumber's longest national
/// significant number (17 digits; ITU-T E.164 says 15 with the country code, but a few plans,
/// Germany's among them, have longer numbers) after the longest country code (3 digits).
const MAX_DIGITS: usize = 20;

/// How many compiled numbering-plan patterns stay in memory. phonenumber keeps its patterns
/// as sources and compiles them on use into an LRU cache of 100 entries; parsing and
/// classifying one number touch a few dozen patterns of its plan, so numbers from more than a
/// handful of countries evict and recompile patterns on nearly every recipient (with numbers
/// from every country, as under fuzzing, two thirds of the parse time went to compiling
/// regexes). The metadata has a few thousand patterns and a gateway uses those of the countries
/// it serves, so this bound is rarely reached and still caps memory if every plan is tried.
const PATTERN_CACHE: usize = 8192;

/// Gives phonenumber's shared pattern cache room for every pattern in use, once per process.
/// The cache sits behind the mutex the metadata's patterns all share, so replacing its contents
/// resizes it for them all.
fn ensure_pattern_cache() {
    static RESIZE: Once = Once::new();
    RESIZE.call_once(|| {
        let cache = DATABASE.cache();
        let mut cache = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cache = regex_cache::RegexCache::new(PATTERN_CACHE);
    });
}

/// What the gateway is willing to send to, taken from the site's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Domains that mean "send an SMS", e.g. `sms`, `sms.example.com`. Compared
    /// case-insensitively, a trailing dot ignored.
    pub sms_domains: Vec<String>,
    /// Country whose numbering plan national numbers (`0477858589`) are read in.
    pub default_country: phonenumber::country::Id,
    /// Number types the gateway sends to; see [`AddressPolicy::default_accepted_types`].
    pub accepted_types: Vec<NumberKind>,
    /// E.164 prefixes refused whatever their type, e.g. `+33899`. Separators are ignored; a
    /// prefix without any digit blocks nothing.
    pub blocked_prefixes: Vec<String>,
}

impl AddressPolicy {
    /// Types accepted unless configured otherwise: those a person's phone answers. Fixed lines
    /// are in because many networks deliver SMS to them (as text-to-speech or to a DECT handset),
    /// and `+33477858589`, the canonical example, is a French fixed line. Premium-rate,
    /// shared-cost, toll-free, UAN, pager and voicemail numbers cost the sender money or reach
    /// no person, so they are refused by default.
    pub fn default_accepted_types() -> Vec<NumberKind> {
        vec![
            NumberKind::Mobile,
            NumberKind::FixedLine,
            NumberKind::FixedLineOrMobile,
            NumberKind::Voip,
            NumberKind::PersonalNumber,
        ]
    }

    fn is_sms_domain(&self, normalized: &str) -> bool {
        self.sms_domains
            .iter()
            .any(|d| normalize_domain(d) == normalized)
    }
}

/// The type of a number, as the numbering plan metadata (libphonenumber's) classifies it.
/// Configuration spells these in kebab-case: `premium-rate`, `fixed-line-or-mobile`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NumberKind {
    Mobile,
    FixedLine,
    /// Plans such as the North American one, where the number does not tell which it is.
    FixedLineOrMobile,
    TollFree,
    PremiumRate,
    SharedCost,
    Voip,
    PersonalNumber,
    Pager,
    /// Universal access ("company") numbers.
    Uan,
    /// Voicemail access numbers.
    Voicemail,
    /// In no number range of its plan. libphonenumber defines such a number as invalid, so a
    /// [`Recipient`] never has this kind; it is here so that configuration can name every type.
    Unknown,
}

impl NumberKind {
    /// The configuration spelling (same as serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            NumberKind::Mobile => "mobile",
            NumberKind::FixedLine => "fixed-line",
            NumberKind::FixedLineOrMobile => "fixed-line-or-mobile",
            NumberKind::TollFree => "toll-free",
            NumberKind::PremiumRate => "premium-rate",
            NumberKind::SharedCost => "shared-cost",
            NumberKind::Voip => "voip",
            NumberKind::PersonalNumber => "personal-number",
            NumberKind::Pager => "pager",
            NumberKind::Uan => "uan",
            NumberKind::Voicemail => "voicemail",
            NumberKind::Unknown => "unknown",
        }
    }

    /// How a reply sentence names the type: "+33899… is {phrase}".
    fn phrase(self) -> &'static str {
        match self {
            NumberKind::Mobile => "a mobile number",
            NumberKind::FixedLine => "a fixed-line number",
            NumberKind::FixedLineOrMobile => "a fixed-line or mobile number",
            NumberKind::TollFree => "a toll-free number",
            NumberKind::PremiumRate => "a premium-rate number",
            NumberKind::SharedCost => "a shared-cost number",
            NumberKind::Voip => "a VoIP number",
            NumberKind::PersonalNumber => "a personal number",
            NumberKind::Pager => "a pager number",
            NumberKind::Uan => "a universal access number",
            NumberKind::Voicemail => "a voicemail access number",
            NumberKind::Unknown => "a number of unknown type",
        }
    }
}

impl fmt::Display for NumberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SMS destination read from an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// E.164, e.g. `+33477858589`.
    pub number: String,
    /// The name written before the number (`Paul` in `Paul@+33477858589@sms`), if any.
    pub name: Option<String>,
    /// ISO 3166-1 alpha-2 code of the number's country; `None` for non-geographic codes
    /// such as +800 or +882.
    pub country: Option<String>,
    pub kind: NumberKind,
    /// The address exactly as given.
    pub raw: String,
}

/// Why an address is refused. `Display` is the human sentence of the SMTP reply; it quotes the
/// sender's input shortened and in ASCII, as reply text must be (RFC 5321 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    /// Not an address at all; the string is the whole sentence.
    #[error("{0}")]
    Syntax(String),
    /// The mail is for a domain this gateway does not serve.
    #[error(
        "relaying to {} is not allowed: this gateway only accepts mail for its SMS domains",
        echo(domain)
    )]
    NotSmsDomain { domain: String },
    /// The local part holds no digit at all (`paul@sms`).
    #[error("no phone number in the address")]
    NoNumber,
    /// Something that was meant to be a number but is not a valid one.
    #[error("{} is not a valid phone number: {reason}", echo(number))]
    InvalidNumber { number: String, reason: String },
    /// A valid number of a type the policy refuses (premium rate, …).
    #[error(
        "{number} is {}, which this gateway does not send SMS to",
        kind.phrase()
    )]
    TypeRefused { number: String, kind: NumberKind },
    /// A valid number under a blocked prefix.
    #[error(
        "sending to {number} is not allowed: numbers starting with {} are blocked",
        echo(prefix)
    )]
    Blocked { number: String, prefix: String },
}

impl AddressError {
    /// SMTP reply code and RFC 3463 enhanced status code for refusing the recipient.
    ///
    /// - `Syntax`: 501 5.1.3, syntax error in the argument (RFC 5321 §4.2.3), bad destination
    ///   mailbox address syntax (RFC 3463 X.1.3).
    /// - `NoNumber`: 550 5.1.1, the mailbox (here, a number) does not exist (X.1.1).
    /// - `InvalidNumber`: 550 5.1.3, the destination is malformed (X.1.3).
    /// - `NotSmsDomain`, `TypeRefused`, `Blocked`: 550 5.7.1, delivery not authorized (X.7.1).
    ///   A premium-rate number is well formed and exists: refusing it is policy, not syntax.
    pub fn smtp_code(&self) -> (u16, (u8, u16, u16)) {
        match self {
            AddressError::Syntax(_) => (501, (5, 1, 3)),
            AddressError::NoNumber => (550, (5, 1, 1)),
            AddressError::InvalidNumber { .. } => (550, (5, 1, 3)),
            AddressError::NotSmsDomain { .. }
            | AddressError::TypeRefused { .. }
            | AddressError::Blocked { .. } => (550, (5, 7, 1)),
        }
    }
}

/// Reads one recipient: `raw` is what stood between `<` and `>` of `RCPT TO:`, or an address
/// taken from a header, without angle brackets.
pub fn parse_recipient(raw: &str, policy: &AddressPolicy) -> Result<Recipient, AddressError> {
    check_text(raw, "address")?;
    let address = raw.trim();
    if address.is_empty() {
        return Err(AddressError::Syntax("the address is empty".to_string()));
    }
    let not_an_address =
        |why: &str| AddressError::Syntax(format!("{} is not an address: {why}", echo(address)));

    let (local, domain) = split_address(address).map_err(&not_an_address)?;

    // The domain decides first: a relay attempt is refused as such, whatever its local part.
    let domain = normalize_domain(domain);
    if !is_domain_syntax(&domain) {
        return Err(not_an_address("the domain is not a domain name"));
    }
    if !policy.is_sms_domain(&domain) {
        return Err(AddressError::NotSmsDomain { domain });
    }

    // Percent hack: `name%number%sms@gw`. The gateway is the destination host, so it may read
    // routing embedded in the local part, where `%` is the right-binding routing operator
    // (RFC 1123 §5.2.16); Domino still routes this way over SMTP.
    let mailbox = match local.rsplit_once('%') {
        Some((mailbox, inner)) => {
            let inner = normalize_domain(inner);
            if !is_domain_syntax(&inner) {
                return Err(not_an_address(
                    "what follows the last % of the local part is not a domain name",
                ));
            }
            if !policy.is_sms_domain(&inner) {
                return Err(AddressError::NotSmsDomain { domain: inner });
            }
            mailbox
        }
        None => local.as_str(),
    };

    let mut parts = mailbox.split(['@', '%']);
    let (name, number) = match (parts.next(), parts.next(), parts.next()) {
        (Some(number), None, _) => (None, number),
        (Some(name), Some(number), None) => (Some(name.trim()), number),
        _ => {
            return Err(not_an_address(
                "the local part has more than one @ or % between name and number",
            ));
        }
    };
    if number.trim().is_empty() {
        return Err(AddressError::NoNumber);
    }

    let (number, kind, country) = normalize_number(number, policy)?;
    Ok(Recipient {
        number,
        name: name.filter(|n| !n.is_empty()).map(str::to_string),
        country,
        kind,
        raw: raw.to_string(),
    })
}

/// Reads a phone number as a person writes it and checks it against the policy. Returns the
/// E.164 form, its type and its country (ISO 3166-1 alpha-2, `None` for non-geographic codes).
pub fn normalize_number(
    text: &str,
    policy: &AddressPolicy,
) -> Result<(String, NumberKind, Option<String>), AddressError> {
    check_text(text, "phone number")?;
    let text = text.trim();
    let written = Written::scan(text)?;

    let parsed = match written.candidates() {
        (first, Some(with_zero)) => match parse_number(&first, policy) {
            Ok(number) => Ok(number),
            // `(0)` is a trunk prefix almost everywhere, but in plans like Italy's the zero is
            // part of the number; keep it when dropping it gives no valid number.
            Err(reason) => parse_number(&with_zero, policy).map_err(|_| reason),
        },
        (only, None) => parse_number(&only, policy),
    };
    let Valid {
        e164,
        kind,
        country,
    } = parsed.map_err(|reason| AddressError::InvalidNumber {
        number: text.to_string(),
        reason,
    })?;

    if !policy.accepted_types.contains(&kind) {
        return Err(AddressError::TypeRefused { number: e164, kind });
    }
    let digits = e164.trim_start_matches('+');
    for prefix in &policy.blocked_prefixes {
        let prefix_digits: String = prefix.chars().filter(char::is_ascii_digit).collect();
        if !prefix_digits.is_empty() && digits.starts_with(&prefix_digits) {
            return Err(AddressError::Blocked {
                number: e164,
                prefix: prefix.trim().to_string(),
            });
        }
    }
    Ok((e164, kind, country))
}

/// Refuses input no reply may quote: too long, or holding characters that end an SMTP line or
/// change how text around them is displayed.
fn check_text(text: &str, what: &str) -> Result<(), AddressError> {
    if text.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::Syntax(format!(
            "the {what} is {} bytes long, more than the {MAX_ADDRESS_LEN} this gateway accepts",
            text.len()
        )));
    }
    let hostile = |c: char| {
        c.is_control()
            // line and paragraph separators, bidirectional embeddings, overrides and isolates
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if text.chars().any(hostile) {
        return Err(AddressError::Syntax(format!(
            "the {what} contains a control character"
        )));
    }
    Ok(())
}

/// Splits on the domain's `@`: after a leading quoted string (RFC 5321 §4.1.2 Quoted-string),
/// else the last `@`, since Domino's unquoted form has two.
fn split_address(address: &str) -> Result<(String, &str), &'static str> {
    let Some(quoted) = address.strip_prefix('"') else {
        let (local, domain) = address.rsplit_once('@').ok_or("it has no @domain")?;
        if local.is_empty() {
            return Err("nothing comes before the @");
        }
        return Ok((local.to_string(), domain));
    };

    let mut local = String::new();
    let mut chars = quoted.char_indices();
    loop {
        match chars.next() {
            None => return Err("the quoted local part never closes"),
            Some((at, '"')) => {
                let rest = quoted.get(at + 1..).unwrap_or_default();
                return match rest.strip_prefix('@') {
                    Some(domain) => Ok((local, domain)),
                    None => Err("the quoted local part is not followed by @domain"),
                };
            }
            // quoted-pairSMTP: a backslash takes the next character literally.
            Some((_, '\\')) => match chars.next() {
                Some((_, escaped)) => local.push(escaped),
                None => return Err("the quoted local part never closes"),
            },
            Some((_, c)) => local.push(c),
        }
    }
}

fn normalize_domain(domain: &str) -> String {
    let domain = domain.trim();
    domain.strip_suffix('.').unwrap_or(domain).to_lowercase()
}

/// Loose domain check: dot-separated non-empty labels of letters (any script, RFC 6531),
/// digits, `-` and `_`, or a bracketed address literal. Exactness is not needed: a domain is
/// only ever compared with the configured SMS domains.
fn is_domain_syntax(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[') {
        return literal
            .strip_suffix(']')
            .is_some_and(|inner| !inner.is_empty() && !inner.contains(['[', ']', ' ']));
    }
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// A number as written, reduced to its digits.
struct Written {
    /// Written with `+` or `00` in front: the digits start with a country code.
    international: bool,
    /// Digits after `+`/`00` when international, all digits otherwise.
    digits: String,
    /// Where a parenthesised lone zero, `(0)`, sits in `digits`.
    trunk_zero: Option<usize>,
}

impl Written {
    fn scan(text: &str) -> Result<Written, AddressError> {
        if !text.chars().any(|c| c.is_ascii_digit()) {
            return Err(AddressError::NoNumber);
        }
        let invalid = |reason: String| AddressError::InvalidNumber {
            number: text.to_string(),
            reason,
        };

        let mut plus = false;
        let mut digits = String::new();
        let mut group: Option<String> = None;
        let mut trunk_zero = None;
        for c in text.chars() {
            match c {
                '0'..='9' => match group.as_mut() {
                    Some(group) => group.push(c),
                    None => digits.push(c),
                },
                '+' if !plus && digits.is_empty() && group.is_none() => plus = true,
                '+' => return Err(invalid("a + can only begin the number".to_string())),
                '(' if group.is_none() => group = Some(String::new()),
                ')' => {
                    let closed = group
                        .take()
                        .ok_or_else(|| invalid("a ) closes no parenthesis".to_string()))?;
                    if closed == "0" && trunk_zero.is_none() {
                        trunk_zero = Some(digits.len());
                    }
                    digits.push_str(&closed);
                }
                '(' => return Err(invalid("parentheses cannot nest".to_string())),
                '.' | '-' | '/' => {}
                c if c.is_whitespace() => {}
                c => {
                    return Err(invalid(format!(
                        "'{}' cannot appear in a phone number",
                        echo(&c.to_string())
                    )));
                }
            }
        }
        if group.is_some() {
            return Err(invalid("a ( is never closed".to_string()));
        }

        // 00 is the international prefix ITU-T E.164 recommends and the one most of the world
        // dials; it is read as `+` whatever the default country's own prefix is.
        let international = plus || digits.starts_with("00");
        if !plus && let Some(rest) = digits.strip_prefix("00") {
            digits = rest.to_string();
            trunk_zero = trunk_zero.and_then(|at| at.checked_sub(2));
        }
        if digits.len() > MAX_DIGITS {
            return Err(invalid(format!(
                "it has {} digits, more than a phone number can have",
                digits.len()
            )));
        }
        Ok(Written {
            international,
            digits,
            trunk_zero,
        })
    }

    /// The text to hand to the numbering plan parser, and when a `(0)` was dropped from an
    /// international number, the text with it kept as a fallback.
    fn candidates(&self) -> (String, Option<String>) {
        let sign = if self.international { "+" } else { "" };
        let whole = format!("{sign}{}", self.digits);
        match self.trunk_zero {
            // Only a zero after the country code is a trunk prefix: `+33(0)4…`.
            Some(at) if self.international && at > 0 => {
                match (self.digits.get(..at), self.digits.get(at + 1..)) {
                    (Some(head), Some(tail)) => (format!("{sign}{head}{tail}"), Some(whole)),
                    _ => (whole, None),
                }
            }
            _ => (whole, None),
        }
    }
}

/// A number the numbering plans accept.
struct Valid {
    e164: String,
    kind: NumberKind,
    /// `None` for non-geographic country codes (+800, +882, …).
    country: Option<String>,
}

/// Parses `+digits` or national `digits` and checks the result against the numbering plans.
/// The error is the reason phrase of [`AddressError::InvalidNumber`].
fn parse_number(text: &str, policy: &AddressPolicy) -> Result<Valid, String> {
    ensure_pattern_cache();
    let parsed = match text.strip_prefix('+') {
        // phonenumber 0.3 strips the *default* country's national prefix even from a number
        // given with `+`, which breaks plans whose numbers begin with 0 (+39 06…, +225 01…):
        // an international number is parsed with no default country.
        Some(digits) => phonenumber::parse(None, text).map_err(|e| (e, digits)),
        None => {
            // The parser assumes the default country has a numbering plan.
            if DATABASE.by_id(policy.default_country.as_ref()).is_none() {
                return Err(format!(
                    "no numbering plan is known for the default country {}",
                    policy.default_country.as_ref()
                ));
            }
            phonenumber::parse(Some(policy.default_country), text).map_err(|e| (e, text))
        }
    };
    let number = match parsed {
        Ok(number) => number,
        Err((ParseError::InvalidCountryCode, digits)) => return Err(unknown_country_code(digits)),
        Err((ParseError::TooShortAfterIdd | ParseError::TooShortNsn, _)) => {
            return Err("it is too short".to_string());
        }
        Err((ParseError::TooLong, _)) => return Err("it is too long".to_string()),
        Err((ParseError::NoNumber | ParseError::MalformedInteger(_), _)) => {
            return Err("it is not a phone number".to_string());
        }
    };

    let code = number.code().value();
    let nsn = number.national().to_string();
    let Some(regions) = DATABASE.region(&code).filter(|r| !r.is_empty()) else {
        return Err(format!("country code {code} does not exist"));
    };
    let meta = plan_for(code, &regions, &nsn);
    let kind = meta.map_or(NumberKind::Unknown, |meta| classify(meta, &nsn));
    let length_ok = meta
        .or_else(|| main_plan(code))
        .is_some_and(|meta| possible_lengths(meta).contains(&nsn.len()));
    match meta {
        Some(meta) if length_ok && kind != NumberKind::Unknown => Ok(Valid {
            // E.164 is the code and the national significant number, leading zeros kept; what
            // phonenumber's formatter writes, without its metadata lookups.
            e164: format!("+{code}{nsn}"),
            kind,
            country: Some(meta.id())
                .filter(|id| *id != NON_GEOGRAPHIC)
                .map(str::to_string),
        }),
        _ => Err(explain_invalid(code, &regions, meta, &nsn)),
    }
}

/// Region id the metadata gives non-geographic country codes (+800, +882, …).
const NON_GEOGRAPHIC: &str = "001";

/// The numbering plan a national significant number belongs to. phonenumber's own lookup
/// (`PhoneNumber::metadata`) drops the leading zeros of the number, so for +39 it finds no
/// plan for any Italian fixed line; this one reads the number as dialled.
fn plan_for(code: u16, regions: &[&str], nsn: &str) -> Option<&'static Metadata> {
    let database: &'static phonenumber::metadata::Database = &DATABASE;
    match regions {
        [single] if *single == NON_GEOGRAPHIC => database.by_code(&code)?.into_iter().next(),
        [single] => database.by_id(*single),
        // A shared code (+1, +7, +44, …): the region whose leading digits the number has, or
        // failing that whose number ranges it falls in.
        shared => shared
            .iter()
            .filter_map(|region| database.by_id(*region))
            .find(|meta| match meta.leading_digits() {
                Some(pattern) => pattern.find(nsn).is_some_and(|m| m.start() == 0),
                None => classify(meta, nsn) != NumberKind::Unknown,
            }),
    }
}

/// The plan whose lengths explain an invalid number of a shared code.
fn main_plan(code: u16) -> Option<&'static Metadata> {
    let database: &'static phonenumber::metadata::Database = &DATABASE;
    let plans = database.by_code(&code)?;
    plans
        .iter()
        .find(|meta| meta.is_main_country_for_code())
        .or(plans.first())
        .copied()
}

/// Lengths a national significant number of the plan can have: the union over its number
/// types, as libphonenumber derives the general description's (the metadata leaves it empty).
fn possible_lengths(meta: &Metadata) -> Vec<usize> {
    let d = meta.descriptors();
    let mut lengths: Vec<usize> = [
        Some(d.general()),
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|desc| desc.possible_length().iter().map(|&l| usize::from(l)))
    .collect();
    lengths.sort_unstable();
    lengths.dedup();
    lengths
}

/// The number's type, in libphonenumber's order: the special-rate and service types are
/// tested before the geographic ones, and a number both fixed-line and mobile patterns match
/// is `FixedLineOrMobile`. phonenumber's `number_type` cannot be used: it drops leading zeros.
fn classify(meta: &Metadata, nsn: &str) -> NumberKind {
    let d = meta.descriptors();
    if !d.general().is_match(nsn) {
        return NumberKind::Unknown;
    }
    let matches = |desc: Option<&phonenumber::metadata::Descriptor>| {
        desc.is_some_and(|desc| desc.is_match(nsn))
    };
    let services = [
        (d.premium_rate(), NumberKind::PremiumRate),
        (d.toll_free(), NumberKind::TollFree),
        (d.shared_cost(), NumberKind::SharedCost),
        (d.voip(), NumberKind::Voip),
        (d.personal_number(), NumberKind::PersonalNumber),
        (d.pager(), NumberKind::Pager),
        (d.uan(), NumberKind::Uan),
        (d.voicemail(), NumberKind::Voicemail),
    ];
    if let Some((_, kind)) = services.into_iter().find(|(desc, _)| matches(*desc)) {
        return kind;
    }
    let same_patterns = match (d.fixed_line(), d.mobile()) {
        (Some(fixed), Some(mobile)) => {
            fixed.national_number().as_str() == mobile.national_number().as_str()
        }
        _ => false,
    };
    match (matches(d.fixed_line()), matches(d.mobile())) {
        (true, true) => NumberKind::FixedLineOrMobile,
        (true, false) if same_patterns => NumberKind::FixedLineOrMobile,
        (true, false) => NumberKind::FixedLine,
        (false, true) => NumberKind::Mobile,
        (false, false) => NumberKind::Unknown,
    }
}

/// E.164 country codes are prefix-free and one to three digits long; a number none of whose
/// first three prefixes is assigned is reported with its three leading digits.
fn unknown_country_code(digits: &str) -> String {
    let code: String = digits.chars().take(3).collect();
    format!("country code {code} does not exist")
}

/// Why a number with an existing country code is not valid in its numbering plan.
fn explain_invalid(
    code: u16,
    regions: &[&str],
    meta: Option<&'static Metadata>,
    nsn: &str,
) -> String {
    let place = match (regions, meta) {
        ([single], _) => country_name(single),
        (_, Some(meta)) => country_name(meta.id()),
        _ => None,
    }
    .map_or_else(|| format!("country code +{code}"), str::to_string);

    let lengths = meta.or_else(|| main_plan(code)).map(possible_lengths);
    let length = nsn.len();
    match lengths.as_deref() {
        Some(&[shortest, ..]) if length < shortest => format!("it is too short for {place}"),
        Some(&[.., longest]) if length > longest => format!("it is too long for {place}"),
        Some(possible) if !possible.is_empty() && !possible.contains(&length) => {
            format!("it has the wrong number of digits for {place}")
        }
        _ => format!("it is not a number in the numbering plan of {place}"),
    }
}

/// Quotes the sender's input in a reply: bounded, and ASCII as SMTP reply text must be.
fn echo(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// English short names of the regions the numbering plan metadata knows, by ISO 3166-1
/// alpha-2 code (plus AC and TA, which have their own plans), sorted for binary search and
/// spelt in ASCII so that they can go in an SMTP reply.
#[rustfmt::skip]
const COUNTRY_NAMES: &[(&str, &str)] = &[
    ("AC", "Ascension Island"), ("AD", "Andorra"), ("AE", "the United Arab Emirates"),
    ("AF", "Afghanistan"), ("AG", "Antigua and Barbuda"), ("AI", "Anguilla"), ("AL", "Albania"),
    ("AM", "Armenia"), ("AO", "Angola"), ("AR", "Argentina"), ("AS", "American Samoa"),
    ("AT", "Austria"), ("AU", "Australia"), ("AW", "Aruba"), ("AX", "the Aland Islands"),
    ("AZ", "Azerbaijan"), ("BA", "Bosnia and Herzegovina"), ("BB", "Barbados"),
    ("BD", "Bangladesh"), ("BE", "Belgium"), ("BF", "Burkina Faso"), ("BG", "Bulgaria"),
    ("BH", "Bahrain"), ("BI", "Burundi"), ("BJ", "Benin"), ("BL", "Saint Barthelemy"),
    ("BM", "Bermuda"), ("BN", "Brunei"), ("BO", "Bolivia"), ("BQ", "the Caribbean Netherlands"),
    ("BR", "Brazil"), ("BS", "the Bahamas"), ("BT", "Bhutan"), ("BW", "Botswana"),
    ("BY", "Belarus"), ("BZ", "Belize"), ("CA", "Canada"), ("CC", "the Cocos (Keeling) Islands"),
    ("CD", "the Democratic Republic of the Congo"), ("CF", "the Central African Republic"),
    ("CG", "the Republic of the Congo"), ("CH", "Switzerland"), ("CI", "Cote d'Ivoire"),
    ("CK", "the Cook Islands"), ("CL", "Chile"), ("CM", "Cameroon"), ("CN", "China"),
    ("CO", "Colombia"), ("CR", "Costa Rica"), ("CU", "Cuba"), ("CV", "Cape Verde"),
    ("CW", "Curacao"), ("CX", "Christmas Island"), ("CY", "Cyprus"), ("CZ", "Czechia"),
    ("DE", "Germany"), ("DJ", "Djibouti"), ("DK", "Denmark"), ("DM", "Dominica"),
    ("DO", "the Dominican Republic"), ("DZ", "Algeria"), ("EC", "Ecuador"), ("EE", "Estonia"),
    ("EG", "Egypt"), ("EH", "Western Sahara"), ("ER", "Eritrea"), ("ES", "Spain"),
    ("ET", "Ethiopia"), ("FI", "Finland"), ("FJ", "Fiji"), ("FK", "the Falkland Islands"),
    ("FM", "Micronesia"), ("FO", "the Faroe Islands"), ("FR", "France"), ("GA", "Gabon"),
    ("GB", "the United Kingdom"), ("GD", "Grenada"), ("GE", "Georgia"), ("GF", "French Guiana"),
    ("GG", "Guernsey"), ("GH", "Ghana"), ("GI", "Gibraltar"), ("GL", "Greenland"),
    ("GM", "the Gambia"), ("GN", "Guinea"), ("GP", "Guadeloupe"), ("GQ", "Equatorial Guinea"),
    ("GR", "Greece"), ("GT", "Guatemala"), ("GU", "Guam"), ("GW", "Guinea-Bissau"),
    ("GY", "Guyana"), ("HK", "Hong Kong"), ("HN", "Honduras"), ("HR", "Croatia"),
    ("HT", "Haiti"), ("HU", "Hungary"), ("ID", "Indonesia"), ("IE", "Ireland"),
    ("IL", "Israel"), ("IM", "the Isle of Man"), ("IN", "India"),
    ("IO", "the British Indian Ocean Territory"), ("IQ", "Iraq"), ("IR", "Iran"),
    ("IS", "Iceland"), ("IT", "Italy"), ("JE", "Jersey"), ("JM", "Jamaica"), ("JO", "Jordan"),
    ("JP", "Japan"), ("KE", "Kenya"), ("KG", "Kyrgyzstan"), ("KH", "Cambodia"),
    ("KI", "Kiribati"), ("KM", "the Comoros"), ("KN", "Saint Kitts and Nevis"),
    ("KP", "North Korea"), ("KR", "South Korea"), ("KW", "Kuwait"), ("KY", "the Cayman Islands"),
    ("KZ", "Kazakhstan"), ("LA", "Laos"), ("LB", "Lebanon"), ("LC", "Saint Lucia"),
    ("LI", "Liechtenstein"), ("LK", "Sri Lanka"), ("LR", "Liberia"), ("LS", "Lesotho"),
    ("LT", "Lithuania"), ("LU", "Luxembourg"), ("LV", "Latvia"), ("LY", "Libya"),
    ("MA", "Morocco"), ("MC", "Monaco"), ("MD", "Moldova"), ("ME", "Montenegro"),
    ("MF", "Saint Martin"), ("MG", "Madagascar"), ("MH", "the Marshall Islands"),
    ("MK", "North Macedonia"), ("ML", "Mali"), ("MM", "Myanmar"), ("MN", "Mongolia"),
    ("MO", "Macao"), ("MP", "the Northern Mariana Islands"), ("MQ", "Martinique"),
    ("MR", "Mauritania"), ("MS", "Montserrat"), ("MT", "Malta"), ("MU", "Mauritius"),
    ("MV", "the Maldives"), ("MW", "Malawi"), ("MX", "Mexico"), ("MY", "Malaysia"),
    ("MZ", "Mozambique"), ("NA", "Namibia"), ("NC", "New Caledonia"), ("NE", "Niger"),
    ("NF", "Norfolk Island"), ("NG", "Nigeria"), ("NI", "Nicaragua"), ("NL", "the Netherlands"),
    ("NO", "Norway"), ("NP", "Nepal"), ("NR", "Nauru"), ("NU", "Niue"), ("NZ", "New Zealand"),
    ("OM", "Oman"), ("PA", "Panama"), ("PE", "Peru"), ("PF", "French Polynesia"),
    ("PG", "Papua New Guinea"), ("PH", "the Philippines"), ("PK", "Pakistan"), ("PL", "Poland"),
    ("PM", "Saint Pierre and Miquelon"), ("PR", "Puerto Rico"), ("PS", "Palestine"),
    ("PT", "Portugal"), ("PW", "Palau"), ("PY", "Paraguay"), ("QA", "Qatar"), ("RE", "Reunion"),
    ("RO", "Romania"), ("RS", "Serbia"), ("RU", "Russia"), ("RW", "Rwanda"),
    ("SA", "Saudi Arabia"), ("SB", "the Solomon Islands"), ("SC", "Seychelles"), ("SD", "Sudan"),
    ("SE", "Sweden"), ("SG", "Singapore"), ("SH", "Saint Helena"), ("SI", "Slovenia"),
    ("SJ", "Svalbard and Jan Mayen"), ("SK", "Slovakia"), ("SL", "Sierra Leone"),
    ("SM", "San Marino"), ("SN", "Senegal"), ("SO", "Somalia"), ("SR", "Suriname"),
    ("SS", "South Sudan"), ("ST", "Sao Tome and Principe"), ("SV", "El Salvador"),
    ("SX", "Sint Maarten"), ("SY", "Syria"), ("SZ", "Eswatini"), ("TA", "Tristan da Cunha"),
    ("TC", "the Turks and Caicos Islands"), ("TD", "Chad"), ("TG", "Togo"), ("TH", "Thailand"),
    ("TJ", "Tajikistan"), ("TK", "Tokelau"), ("TL", "Timor-Leste"), ("TM", "Turkmenistan"),
    ("TN", "Tunisia"), ("TO", "Tonga"), ("TR", "Turkey"), ("TT", "Trinidad and Tobago"),
    ("TV", "Tuvalu"), ("TW", "Taiwan"), ("TZ", "Tanzania"), ("UA", "Ukraine"), ("UG", "Uganda"),
    ("US", "the United States"), ("UY", "Uruguay"), ("UZ", "Uzbekistan"),
    ("VA", "Vatican City"), ("VC", "Saint Vincent and the Grenadines"), ("VE", "Venezuela"),
    ("VG", "the British Virgin Islands"), ("VI", "the US Virgin Islands"), ("VN", "Vietnam"),
    ("VU", "Vanuatu"), ("WF", "Wallis and Futuna"), ("WS", "Samoa"), ("XK", "Kosovo"),
    ("YE", "Yemen"), ("YT", "Mayotte"), ("ZA", "South Africa"), ("ZM", "Zambia"),
    ("ZW", "Zimbabwe"),
];

fn country_name(iso: &str) -> Option<&'static str> {
    COUNTRY_NAMES
        .binary_search_by(|(code, _)| (*code).cmp(iso))
        .ok()
        .and_then(|at| COUNTRY_NAMES.get(at))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use NumberKind::*;
    use phonenumber::country::Id;

    fn policy() -> AddressPolicy {
        AddressPolicy {
            sms_domains: vec![
                "sms".to_string(),
                "sms.example.com".to_string(),
                "gw.example.com".to_string(),
            ],
            default_country: Id::FR,
            accepted_types: AddressPolicy::default_accepted_types(),
            blocked_prefixes: vec!["+33 699".to_string()],
        }
    }

    fn with_country(country: Id) -> AddressPolicy {
        AddressPolicy {
            default_country: country,
            ..policy()
        }
    }

    fn accepting(extra: &[NumberKind]) -> AddressPolicy {
        let mut policy = policy();
        policy.accepted_types.extend_from_slice(extra);
        policy
    }

    /// (address, E.164, name, country, kind)
    type Accepted<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        NumberKind,
    );

    fn check_accepted(policy: &AddressPolicy, cases: &[Accepted<'_>]) {
        for &(raw, number, name, country, kind) in cases {
            let want = Recipient {
                number: number.to_string(),
                name: name.map(str::to_string),
                country: country.map(str::to_string),
                kind,
                raw: raw.to_string(),
            };
            assert_eq!(parse_recipient(raw, policy), Ok(want), "{raw}");
        }
    }

    #[test]
    fn accepted_addresses() {
        // (address, E.164, name, country, kind)
        #[rustfmt::skip]
        let cases = [
            // the three Domino forms
            ("Paul@+33477858589@sms", "+33477858589", Some("Paul"), Some("FR"), FixedLine),
            ("\"Paul@+33477858589\"@sms.example.com", "+33477858589", Some("Paul"), Some("FR"), FixedLine),
            ("Paul%+33477858589%sms@gw.example.com", "+33477858589", Some("Paul"), Some("FR"), FixedLine),
            ("+33477858589%sms@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("Paul%+33477858589%SMS.Example.com.@gw.example.com", "+33477858589", Some("Paul"), Some("FR"), FixedLine),
            ("\"Paul%+33477858589%sms\"@gw.example.com", "+33477858589", Some("Paul"), Some("FR"), FixedLine),
            // number only: international, 00, national
            ("+33477858589@sms.example.com", "+33477858589", None, Some("FR"), FixedLine),
            ("0033477858589@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("0477858589@sms", "+33477858589", None, Some("FR"), FixedLine),
            // separators
            ("+33.4.77.85.85.89@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("04-77-85-85-89@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("04/77/85/85/89@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("\"04 77 85 85 89\"@sms", "+33477858589", None, Some("FR"), FixedLine),
            // a trunk zero written inside an international number is dropped, a national one kept
            ("+33(0)477858589@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("\"+33 (0)4 77 85 85 89\"@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("0033 (0)4 77 85 85 89@sms", "+33477858589", None, Some("FR"), FixedLine),
            ("(0)4 77 85 85 89@sms", "+33477858589", None, Some("FR"), FixedLine),
            // Italy's leading zero belongs to the number: `(0)` is kept when dropping it fails
            ("+39 (0)2 1234 5678@sms", "+390212345678", None, Some("IT"), FixedLine),
            // domains: case, trailing dot; surrounding blanks; empty name
            ("Paul.Durand@+33612345678@SMS.Example.COM.", "+33612345678", Some("Paul.Durand"), Some("FR"), Mobile),
            ("Paul_Durand@06 12 34 56 78@Sms", "+33612345678", Some("Paul_Durand"), Some("FR"), Mobile),
            ("  +33612345678@sms  ", "+33612345678", None, Some("FR"), Mobile),
            ("@+33612345678@sms", "+33612345678", None, Some("FR"), Mobile),
            // names: unicode, quoted-pair escapes
            ("Zoë@+33612345678@sms", "+33612345678", Some("Zoë"), Some("FR"), Mobile),
            ("李伟@+86 131 2345 6789@sms", "+8613123456789", Some("李伟"), Some("CN"), Mobile),
            (r#""Paul \"PD\" Durand@+33612345678"@sms"#, "+33612345678", Some("Paul \"PD\" Durand"), Some("FR"), Mobile),
            (r#""back\\slash@+33612345678"@sms"#, "+33612345678", Some("back\\slash"), Some("FR"), Mobile),
            // other countries
            ("+44 7400 123456@sms", "+447400123456", None, Some("GB"), Mobile),
            ("+44 20 7946 0958@sms", "+442079460958", None, Some("GB"), FixedLine),
            ("+49 151 23456789@sms", "+4915123456789", None, Some("DE"), Mobile),
            ("+49 30 1234567@sms", "+49301234567", None, Some("DE"), FixedLine),
            ("+1 (201) 555-0123@sms", "+12015550123", None, Some("US"), FixedLineOrMobile),
            ("+1 340 642 1234@sms", "+13406421234", None, Some("VI"), FixedLineOrMobile),
            ("+7 912 345 6789@sms", "+79123456789", None, Some("RU"), Mobile),
            ("+7 700 123 4567@sms", "+77001234567", None, Some("KZ"), Mobile),
            ("+86 10 1234 5678@sms", "+861012345678", None, Some("CN"), FixedLine),
            ("+339 12 34 56 78@sms", "+33912345678", None, Some("FR"), Voip),
            // regression: the default country's national prefix (0 for France) must not be
            // stripped from another plan's numbers, and leading zeros must not hide the type
            ("+39 02 1234 5678@sms", "+390212345678", None, Some("IT"), FixedLine),
            ("+225 01 23 45 6789@sms", "+2250123456789", None, Some("CI"), Mobile),
        ];
        check_accepted(&policy(), &cases);
    }

    #[test]
    fn national_numbers_are_read_in_the_default_country() {
        #[rustfmt::skip]
        let cases = [
            (Id::GB, "07400 123456@sms", "+447400123456", "GB", Mobile),
            (Id::US, "(201) 555-0123@sms", "+12015550123", "US", FixedLineOrMobile),
            (Id::DE, "0151 23456789@sms", "+4915123456789", "DE", Mobile),
            (Id::IT, "02 1234 5678@sms", "+390212345678", "IT", FixedLine),
            (Id::CN, "131 2345 6789@sms", "+8613123456789", "CN", Mobile),
            // an international number does not depend on the default country
            (Id::US, "+33 4 77 85 85 89@sms", "+33477858589", "FR", FixedLine),
        ];
        for (country, raw, number, iso, kind) in cases {
            check_accepted(
                &with_country(country),
                &[(raw, number, None, Some(iso), kind)],
            );
        }
    }

    #[test]
    fn refused_types_pass_when_the_policy_accepts_them() {
        #[rustfmt::skip]
        check_accepted(&accepting(&[PremiumRate, TollFree]), &[
            ("+33899123456@sms", "+33899123456", None, Some("FR"), PremiumRate),
            ("+800 1234 5678@sms", "+80012345678", None, None, TollFree),
        ]);
    }

    fn syntax(sentence: &str) -> AddressError {
        AddressError::Syntax(sentence.to_string())
    }

    fn not_address(raw: &str, why: &str) -> AddressError {
        syntax(&format!("{raw} is not an address: {why}"))
    }

    fn invalid(number: &str, reason: &str) -> AddressError {
        AddressError::InvalidNumber {
            number: number.to_string(),
            reason: reason.to_string(),
        }
    }

    fn not_sms(domain: &str) -> AddressError {
        AddressError::NotSmsDomain {
            domain: domain.to_string(),
        }
    }

    fn refused(number: &str, kind: NumberKind) -> AddressError {
        AddressError::TypeRefused {
            number: number.to_string(),
            kind,
        }
    }

    type Code = (u16, (u8, u16, u16));
    const SYNTAX: Code = (501, (5, 1, 3));
    const DENIED: Code = (550, (5, 7, 1));
    const NO_MAILBOX: Code = (550, (5, 1, 1));
    const BAD_NUMBER: Code = (550, (5, 1, 3));

    #[test]
    fn refused_addresses() {
        let long = format!("{}@+33612345678@sms", "a".repeat(500));
        let no_domain = "the domain is not a domain name";
        #[rustfmt::skip]
        let cases: Vec<(&str, AddressError, Code)> = vec![
            // not addresses
            ("", syntax("the address is empty"), SYNTAX),
            ("   ", syntax("the address is empty"), SYNTAX),
            ("@sms", not_address("@sms", "nothing comes before the @"), SYNTAX),
            ("+33612345678", not_address("+33612345678", "it has no @domain"), SYNTAX),
            ("\"Paul@+33477858589@sms", not_address("\"Paul@+33477858589@sms", "the quoted local part never closes"), SYNTAX),
            ("\"Paul\\", not_address("\"Paul\\", "the quoted local part never closes"), SYNTAX),
            ("\"Paul\"x@sms", not_address("\"Paul\"x@sms", "the quoted local part is not followed by @domain"), SYNTAX),
            ("+33612345678@", not_address("+33612345678@", no_domain), SYNTAX),
            ("+33612345678@sms..example", not_address("+33612345678@sms..example", no_domain), SYNTAX),
            ("+33612345678@exa mple.com", not_address("+33612345678@exa mple.com", no_domain), SYNTAX),
            ("Paul@+33612345678", not_address("Paul@+33612345678", no_domain), SYNTAX),
            ("Paul%+33612345678@sms", not_address("Paul%+33612345678@sms", "what follows the last % of the local part is not a domain name"), SYNTAX),
            ("Paul@Bob@+33612345678@sms", not_address("Paul@Bob@+33612345678@sms", "the local part has more than one @ or % between name and number"), SYNTAX),
            ("Paul\r\n@+33612345678@sms", syntax("the address contains a control character"), SYNTAX),
            ("Paul\u{202E}@+33612345678@sms", syntax("the address contains a control character"), SYNTAX),
            (&long, syntax("the address is 517 bytes long, more than the 512 this gateway accepts"), SYNTAX),
            // relaying: the domain is judged before the local part
            ("+33612345678@example.com", not_sms("example.com"), DENIED),
            ("+33612345678@Example.COM.", not_sms("example.com"), DENIED),
            ("paul@example.com", not_sms("example.com"), DENIED),
            ("+33612345678@[192.0.2.1]", not_sms("[192.0.2.1]"), DENIED),
            ("+33612345678@sms.example.com.evil.org", not_sms("sms.example.com.evil.org"), DENIED),
            ("Paul%+33612345678%example.org@sms", not_sms("example.org"), DENIED),
            ("Paul%+33612345678%sms@example.com", not_sms("example.com"), DENIED),
            // no number
            ("paul@sms", AddressError::NoNumber, NO_MAILBOX),
            ("\"\"@sms", AddressError::NoNumber, NO_MAILBOX),
            ("Paul@@sms", AddressError::NoNumber, NO_MAILBOX),
            ("Paul@ @sms", AddressError::NoNumber, NO_MAILBOX),
            ("Paul@+@sms", AddressError::NoNumber, NO_MAILBOX),
            // malformed numbers
            ("Paul@+33ABC12@sms", invalid("+33ABC12", "'A' cannot appear in a phone number"), BAD_NUMBER),
            ("paul2@sms", invalid("paul2", "'p' cannot appear in a phone number"), BAD_NUMBER),
            ("+33 6 12 34 56 78 ext 12@sms", invalid("+33 6 12 34 56 78 ext 12", "'e' cannot appear in a phone number"), BAD_NUMBER),
            ("+33612345678+1@sms", invalid("+33612345678+1", "a + can only begin the number"), BAD_NUMBER),
            ("+33(0477858589@sms", invalid("+33(0477858589", "a ( is never closed"), BAD_NUMBER),
            ("+33)0477858589@sms", invalid("+33)0477858589", "a ) closes no parenthesis"), BAD_NUMBER),
            ("+33((0))477858589@sms", invalid("+33((0))477858589", "parentheses cannot nest"), BAD_NUMBER),
            ("+33 1234 5678 9012 3456 789@sms", invalid("+33 1234 5678 9012 3456 789", "it has 21 digits, more than a phone number can have"), BAD_NUMBER),
            ("+33 1234 5678 9012 3456@sms", invalid("+33 1234 5678 9012 3456", "it is too long for France"), BAD_NUMBER),
            // invalid in the numbering plans
            ("+3347785@sms", invalid("+3347785", "it is too short for France"), BAD_NUMBER),
            ("047785@sms", invalid("047785", "it is too short for France"), BAD_NUMBER),
            ("+33 4 77 85 85 89 1@sms", invalid("+33 4 77 85 85 89 1", "it is too long for France"), BAD_NUMBER),
            ("+999123456@sms", invalid("+999123456", "country code 999 does not exist"), BAD_NUMBER),
            ("00999123456@sms", invalid("00999123456", "country code 999 does not exist"), BAD_NUMBER),
            ("+1 201 555 012@sms", invalid("+1 201 555 012", "it is too short for country code +1"), BAD_NUMBER),
            ("+44 1624 456789@sms", invalid("+44 1624 456789", "it is not a number in the numbering plan of the Isle of Man"), BAD_NUMBER),
            ("+0@sms", invalid("+0", "it is not a phone number"), BAD_NUMBER),
            // types refused by default
            ("+33899123456@sms", refused("+33899123456", PremiumRate), DENIED),
            ("Paul@08 91 12 34 56@sms", refused("+33891123456", PremiumRate), DENIED),
            ("+44 909 879 0000@sms", refused("+449098790000", PremiumRate), DENIED),
            ("+1 900 234 5678@sms", refused("+19002345678", PremiumRate), DENIED),
            ("+33810123456@sms", refused("+33810123456", SharedCost), DENIED),
            ("+33800123456@sms", refused("+33800123456", TollFree), DENIED),
            ("+1 800 234 5678@sms", refused("+18002345678", TollFree), DENIED),
            // blocked prefix, separators in the configured prefix ignored
            ("+33699123456@sms", AddressError::Blocked { number: "+33699123456".to_string(), prefix: "+33 699".to_string() }, DENIED),
        ];
        for (raw, want, code) in cases {
            let got = parse_recipient(raw, &policy());
            assert_eq!(got, Err(want), "{raw:?}");
            if let Err(error) = got {
                assert_eq!(error.smtp_code(), code, "{raw:?}");
            }
        }
    }

    #[test]
    fn reply_sentences() {
        #[rustfmt::skip]
        let cases = [
            ("+33612345678@example.com", "relaying to example.com is not allowed: this gateway only accepts mail for its SMS domains"),
            ("paul@sms", "no phone number in the address"),
            ("+3347785@sms", "+3347785 is not a valid phone number: it is too short for France"),
            ("+44 909 879 0000@sms", "+449098790000 is a premium-rate number, which this gateway does not send SMS to"),
            ("+33810123456@sms", "+33810123456 is a shared-cost number, which this gateway does not send SMS to"),
            ("+33699123456@sms", "sending to +33699123456 is not allowed: numbers starting with +33 699 are blocked"),
            ("Zoë@+33ABC@sms", "+33ABC is not a valid phone number: 'A' cannot appear in a phone number"),
            // the sender's input is quoted in ASCII
            ("Zoë+33612345678", "Zo?+33612345678 is not an address: it has no @domain"),
            ("+33612345678@exämple.com", "relaying to ex?mple.com is not allowed: this gateway only accepts mail for its SMS domains"),
            ("+33 6 12 34 56 7é@sms", "+33 6 12 34 56 7? is not a valid phone number: '?' cannot appear in a phone number"),
        ];
        for (raw, sentence) in cases {
            match parse_recipient(raw, &policy()) {
                Ok(recipient) => panic!("{raw} accepted as {recipient:?}"),
                Err(error) => assert_eq!(error.to_string(), sentence, "{raw}"),
            }
        }
    }

    #[test]
    fn echoed_input_is_bounded() {
        let domain = format!("{}.example", "x".repeat(300));
        let raw = format!("+33612345678@{domain}");
        let error = parse_recipient(&raw, &policy()).err();
        assert_eq!(error, Some(not_sms(&domain)));
        let sentence = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(sentence.starts_with(&format!("relaying to {}...", "x".repeat(80))));
        assert!(sentence.len() < 200, "{sentence}");
    }

    #[test]
    fn normalize_number_reads_numbers_alone() {
        #[rustfmt::skip]
        let cases = [
            ("+33 4 77 85 85 89", Ok(("+33477858589", FixedLine, Some("FR")))),
            ("06.12.34.56.78", Ok(("+33612345678", Mobile, Some("FR")))),
            ("0044 7400 123456", Ok(("+447400123456", Mobile, Some("GB")))),
            ("", Err(AddressError::NoNumber)),
            ("Paul", Err(AddressError::NoNumber)),
            ("+33 6\t12", Err(syntax("the phone number contains a control character"))),
            ("+33899123456", Err(refused("+33899123456", PremiumRate))),
        ];
        for (text, want) in cases {
            let want = want.map(|(n, k, c)| (n.to_string(), k, c.map(str::to_string)));
            assert_eq!(normalize_number(text, &policy()), want, "{text:?}");
        }
    }

    #[test]
    fn policy_domains_are_compared_loosely() {
        let mut policy = policy();
        policy.sms_domains = vec!["SMS.Example.com.".to_string()];
        let got = parse_recipient("+33612345678@sms.example.COM", &policy).map(|r| r.number);
        assert_eq!(got, Ok("+33612345678".to_string()));
        assert_eq!(
            parse_recipient("+33612345678@sms", &policy),
            Err(not_sms("sms"))
        );
    }

    #[test]
    fn a_prefix_without_digits_blocks_nothing() {
        let mut policy = policy();
        policy.blocked_prefixes = vec!["+".to_string(), " ".to_string(), "+44".to_string()];
        assert_eq!(
            parse_recipient("+33612345678@sms", &policy).map(|r| r.number),
            Ok("+33612345678".to_string())
        );
        assert_eq!(
            parse_recipient("+447400123456@sms", &policy),
            Err(AddressError::Blocked {
                number: "+447400123456".to_string(),
                prefix: "+44".to_string(),
            })
        );
    }

    #[test]
    fn number_kinds_use_kebab_case() {
        #[rustfmt::skip]
        let all = [
            (Mobile, "mobile"), (FixedLine, "fixed-line"),
            (FixedLineOrMobile, "fixed-line-or-mobile"), (TollFree, "toll-free"),
            (PremiumRate, "premium-rate"), (SharedCost, "shared-cost"), (Voip, "voip"),
            (PersonalNumber, "personal-number"), (Pager, "pager"), (Uan, "uan"),
            (Voicemail, "voicemail"), (Unknown, "unknown"),
        ];
        for (kind, name) in all {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            let json = serde_json::to_string(&kind).ok();
            assert_eq!(json, Some(format!("\"{name}\"")));
            let back: Option<NumberKind> = serde_json::from_str(&format!("\"{name}\"")).ok();
            assert_eq!(back, Some(kind));
        }
        assert!(serde_json::from_str::<NumberKind>("\"premium_rate\"").is_err());
    }

    #[test]
    fn default_types_are_those_a_person_answers() {
        let accepted = AddressPolicy::default_accepted_types();
        for kind in [Mobile, FixedLine, FixedLineOrMobile, Voip, PersonalNumber] {
            assert!(accepted.contains(&kind), "{kind}");
        }
        for kind in [
            TollFree,
            PremiumRate,
            SharedCost,
            Pager,
            Uan,
            Voicemail,
            Unknown,
        ] {
            assert!(!accepted.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn every_region_of_the_metadata_has_a_name() {
        assert!(COUNTRY_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        let mut regions = 0;
        for meta in DATABASE.iter() {
            if meta.id() != NON_GEOGRAPHIC {
                regions += 1;
                assert!(country_name(meta.id()).is_some(), "{}", meta.id());
            }
        }
        assert!(regions > 200, "{regions}");
        let printable = |name: &str| name.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        assert!(COUNTRY_NAMES.iter().all(|(_, name)| printable(name)));
    }

    const RANDOM_DIGIT_RUNS: usize = 3000;

    /// xorshift64: deterministic noise without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Whatever the input, the outcome is a clean E.164 number or a sentence an SMTP reply
    /// line can carry.
    fn check_outcome(raw: &str) {
        match parse_recipient(raw, &policy()) {
            Ok(recipient) => {
                assert_eq!(recipient.raw, raw);
                let digits = recipient.number.strip_prefix('+').unwrap_or_default();
                assert!(
                    (4..=MAX_DIGITS).contains(&digits.len())
                        && digits.bytes().all(|b| b.is_ascii_digit()),
                    "{raw:?} gave {}",
                    recipient.number
                );
            }
            Err(error) => {
                let sentence = error.to_string();
                let printable = sentence.chars().all(|c| c.is_ascii_graphic() || c == ' ');
                assert!(printable, "{raw:?}: {sentence:?}");
                assert!(sentence.len() <= 300, "{raw:?}: {sentence:?}");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let len = noise.below(80);
            let bytes: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
            check_outcome(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn mutated_addresses_never_panic() {
        // Real addresses with a few pieces of the grammar inserted or characters removed, so
        // that the noise reaches the number parser and the numbering plans.
        let seeds = [
            "Paul@+33477858589@sms",
            "\"Paul@+33477858589\"@sms.example.com",
            "Paul%+33477858589%sms@gw.example.com",
            "0033 (0)4 77 85 85 89@sms",
            "+39 02 1234 5678@SMS.",
            "+1 (201) 555-0123@sms",
        ];
        #[rustfmt::skip]
        let pieces = [
            "@", "%", "\"", "\\", "+", "00", "0", "9", "(", ")", "(0)", ".", "-", " ", "sms",
            "Paul", "é", "李", "[", "]", "\u{202E}", "\r\n", "x",
        ];
        let mut noise = Noise(0xD1B5_4A32_D192_ED03);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..4000 {
            let mut raw: Vec<char> = seeds[noise.below(seeds.len())].chars().collect();
            for _ in 0..noise.below(4) {
                let at = noise.below(raw.len() + 1);
                if noise.below(2) == 0 && at < raw.len() {
                    raw.remove(at);
                } else {
                    let piece = pieces[noise.below(pieces.len())];
                    raw.splice(at..at, piece.chars());
                }
            }
            let raw: String = raw.into_iter().collect();
            check_outcome(&raw);
            match parse_recipient(&raw, &policy()) {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
        // both outcomes must be reached, or this test proves little
        assert!(accepted > 100 && refused > 100, "{accepted} {refused}");
    }

    #[test]
    fn random_digit_strings_never_panic() {
        // phonenumber has panicked on odd input before; only digits and `+` reach it.
        let countries = [
            Id::FR,
            Id::GB,
            Id::US,
            Id::DE,
            Id::IT,
            Id::CN,
            Id::BR,
            Id::RU,
        ];
        let mut noise = Noise(0x2545_F491_4F6C_DD1D);
        for _ in 0..RANDOM_DIGIT_RUNS {
            let policy = with_country(countries[noise.below(countries.len())]);
            let prefix = ["", "+", "00", "0", "+0"][noise.below(5)];
            let digits: String = (0..noise.below(22))
                .map(|_| char::from(b'0' + noise.below(10) as u8))
                .collect();
            let text = format!("{prefix}{digits}");
            if let Err(error) = normalize_number(&text, &policy) {
                let sentence = error.to_string();
                assert!(
                    sentence.is_ascii() && sentence.len() <= 300,
                    "{text}: {sentence}"
                );
            }
        }
    }
}
