//! Mail body to SMS text (sans-IO: bytes in, values out).
//!
//! This module owns the step between the raw RFC 5322 bytes of an accepted mail and the plain
//! text an SMS is built from: it picks the part to read, decodes it, turns HTML into lines,
//! removes quoted history and signatures, collapses whitespace and applies the subject policy.
//! It also reads the header fields later stages need (sender, threading ids, RFC 3834
//! auto-submitted markers, receipt requests) and offers a tolerant reader for the recipient
//! lists of a header, because the MIME parser misreads the Domino forms the gateway accepts
//! (`To: Paul@+33477858589@sms` and `To: "Paul@+33477858589"@sms`).
//!
//! Choices that shape the output (each one is tested):
//!
//! - `text/plain` wins over HTML. Several inline `text/plain` parts (Apple Mail splits the body
//!   around an inline attachment) are joined in order. HTML is read only when no plain text part
//!   gives any text; after it, a `text/plain` part cut short before its closing boundary (which
//!   mail-parser files as an attachment).
//! - HTML is converted here, not with mail-parser's `body_text`: that converter breaks lines only
//!   at `<br>` and `</p>`, glues the words of adjacent `<div>`, `<li>` and `<td>` together
//!   ("onetwo", "abxyz") and cannot tell quoted history (`<blockquote>`) from the reply. Only its
//!   entity table is reused.
//! - Quoted history is cut at the first reply header a client writes above it ("On … wrote:",
//!   "Le … a écrit :", "Am … schrieb …:", Outlook's "-----Original Message-----" and its
//!   "From:/Sent:/To:/Subject:" block); the `>` lines left (inline replies) are dropped.
//! - Forwards: when the forwarder wrote nothing (signatures aside) above "Begin forwarded
//!   message:", "---------- Forwarded message ---------" and the like, or above an Outlook header
//!   block in a mail whose subject says it is a forward, the SMS is the forwarded content without
//!   its header block; otherwise it is what the forwarder wrote. A mail forwarded as an attached
//!   `message/rfc822` with nothing written around it is read the same way.
//! - Line breaks are kept, blank lines are not: an SMS has no room for paragraph spacing, so
//!   paragraphs end up separated by a single `\n`. Gmail's `[image: …]` placeholder lines go too.
//! - The subject is decoded here (RFC 2047), not by mail-parser, which turns a UTF-8 character
//!   split across two encoded words, or an 8-bit Latin-1 subject, into U+FFFD.
//! - Runs of spaces, tabs and other blanks become one space and lines are trimmed. Zero-width
//!   spaces, word joiners, soft hyphens, byte order marks and control characters are removed;
//!   zero-width joiners stay, emoji sequences and some scripts need them.
//! - Charsets are decoded with mail-parser's tables. Text labelled ASCII or Latin-1 that is valid
//!   UTF-8 with multibyte sequences is read as UTF-8 (mislabelled mail is common, Latin-1 text
//!   that happens to be valid multibyte UTF-8 is not); 8-bit text without a usable label is read
//!   as UTF-8 when valid, else as Windows-1252.
//! - Subject policy: prefixes such as `Re:`, `Fwd:`, `TR:`, `AW:`, `WG:`, `RV:` are removed. With
//!   `subject-and-body` the separator is `": "`, or a single space when the subject already ends
//!   with punctuation. A policy that names an empty half falls back to the other half, so a mail
//!   gives an SMS whenever it has any text at all.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{
    ContentType, HeaderName, HeaderValue, Message, MessageParser, MessagePart, PartType,
};
use serde::Deserialize;

/// How the subject and the body are combined into the SMS text.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectPolicy {
    /// `Subject: body`; only one of them when the other is empty, and only the body when the
    /// subject merely repeats the start of the body.
    #[default]
    SubjectAndBody,
    /// The body; the subject when the body is empty.
    BodyOnly,
    /// The subject; the body when the subject is empty.
    SubjectOnly,
}

/// What [`extract`] keeps and how much it accepts.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BodyOptions {
    /// How subject and body are combined.
    pub subject: SubjectPolicy,
    /// Remove quoted history (`>` lines and everything below a reply header).
    pub strip_quoted: bool,
    /// Remove signatures (`-- ` and the sign-offs mobile clients append).
    pub strip_signature: bool,
    /// Mails larger than this are refused before any parsing.
    pub max_input_bytes: usize,
    /// Deepest accepted nesting of MIME containers (multipart or attached message).
    pub max_mime_depth: usize,
    /// Most MIME parts accepted, containers and attached messages' parts included.
    pub max_mime_parts: usize,
}

impl Default for BodyOptions {
    fn default() -> Self {
        BodyOptions {
            subject: SubjectPolicy::default(),
            strip_quoted: true,
            strip_signature: true,
            max_input_bytes: 10 * 1024 * 1024,
            max_mime_depth: 10,
            max_mime_parts: 100,
        }
    }
}

/// What the gateway needs to know about one mail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailInfo {
    /// `Message-ID`, without angle brackets.
    pub message_id: Option<String>,
    /// The addr-spec of the first `From:` mailbox, as written.
    pub from: Option<String>,
    /// The decoded subject as the sender wrote it (prefixes such as `Re:` kept), blanks collapsed.
    pub subject: Option<String>,
    /// The SMS text, before any GSM 7-bit or UCS-2 decision. Never empty.
    pub text: String,
    /// RFC 3834 §5: `Auto-Submitted` other than `no`, or `Precedence: bulk/junk/list`, or an
    /// RFC 6522 `multipart/report` (a bounce): a status reply to it could start a mail loop.
    pub auto_submitted: bool,
    /// Addr-spec of `Disposition-Notification-To` (RFC 8098), as written.
    pub disposition_notification_to: Option<String>,
    /// Addr-spec of the non-standard `Return-Receipt-To`, as written.
    pub return_receipt_to: Option<String>,
    /// The `References` a reply to this mail carries (RFC 5322 §3.6.4): this mail's
    /// `References` (or its single `In-Reply-To` id when it has none) followed by its
    /// `Message-ID`; ids without angle brackets.
    pub in_reply_to_chain: Vec<String>,
}

/// Which structural limit a mail exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Complexity {
    /// Nesting of multipart containers and attached messages.
    MimeDepth,
    /// Number of MIME parts.
    MimeParts,
}

impl fmt::Display for Complexity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Complexity::MimeDepth => "levels of MIME nesting",
            Complexity::MimeParts => "MIME parts",
        })
    }
}

/// Why a mail gives no SMS text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the mail is {size} bytes long, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the mail cannot be read: {reason}")]
    Unparseable { reason: &'static str },
    #[error("the mail is too complex to read: {found} {measure}, more than the limit of {limit}")]
    TooComplex {
        measure: Complexity,
        found: usize,
        limit: usize,
    },
    #[error("the mail has neither a text part nor a subject")]
    NoText,
}

impl BodyError {
    /// The variant's name, for logs, metrics and test expectations.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "TooLarge",
            BodyError::Unparseable { .. } => "Unparseable",
            BodyError::TooComplex { .. } => "TooComplex",
            BodyError::NoText => "NoText",
        }
    }
}

/// Ceiling on MIME parts whatever the configuration says. The parser keeps each attached
/// `message/rfc822` as a value nested in its parent and drops them recursively, so a few tens
/// of thousands of nested levels overflow a 2 MiB thread stack: an abort, not a panic.
const STACK_SAFE_PARTS: usize = 1000;

/// How many forwards written inside one another are unwrapped to find what was forwarded.
const MAX_NESTED_FORWARDS: usize = 8;

/// How many levels of attached `message/rfc822` are opened to find a forwarded text.
const MAX_ATTACHED_MESSAGE_LEVELS: usize = 3;

/// Reason given when the parser panics.
const PARSER_PANIC: &str = "the MIME parser failed on malformed input";

/// Reads one mail. See the module documentation for what is kept and why.
pub fn extract(raw: &[u8], opts: &BodyOptions) -> Result<MailInfo, BodyError> {
    if raw.len() > opts.max_input_bytes {
        return Err(BodyError::TooLarge {
            size: raw.len(),
            limit: opts.max_input_bytes,
        });
    }
    // mail-parser has panicked on fuzzed input before (issues #145, #155): a panic must refuse
    // this one mail, not end the session that received it.
    catch_unwind(AssertUnwindSafe(|| extract_unguarded(raw, opts))).unwrap_or(Err(
        BodyError::Unparseable {
            reason: PARSER_PANIC,
        },
    ))
}

fn extract_unguarded(raw: &[u8], opts: &BodyOptions) -> Result<MailInfo, BodyError> {
    let msg = parse_checked(raw, opts)?;
    let root = msg.parts.first().ok_or(BodyError::Unparseable {
        reason: "no header section was found",
    })?;
    let fields = header_fields(raw);

    let subject = decoded_subject(&fields);
    let (clean_subject, is_forward) = clean_subject(subject.as_deref().unwrap_or(""));
    let body = body_text(&msg, raw, opts, is_forward, 0);
    let text = compose(&clean_subject, &body, opts.subject);
    if text.is_empty() {
        return Err(BodyError::NoText);
    }

    let message_id = ids(field(root, HeaderName::MessageId)).into_iter().next();
    let mut in_reply_to_chain = ids(field(root, HeaderName::References));
    if in_reply_to_chain.is_empty() {
        let in_reply_to = ids(field(root, HeaderName::InReplyTo));
        if in_reply_to.len() == 1 {
            in_reply_to_chain = in_reply_to;
        }
    }
    if let Some(id) = &message_id
        && !in_reply_to_chain.contains(id)
    {
        in_reply_to_chain.push(id.clone());
    }

    let first_address = |name: &str| {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| split_address_list(v))
            .map(|(_, address)| address)
            .next()
    };
    let auto_submitted = fields.iter().any(|(name, value)| {
        let token = first_token(value);
        match name.as_str() {
            "auto-submitted" => !token.is_empty() && token != "no",
            "precedence" => matches!(token.as_str(), "bulk" | "junk" | "list"),
            _ => false,
        }
    }) || content_type(root)
        .is_some_and(|ct| is_type(ct, "multipart", &["report"]));

    Ok(MailInfo {
        message_id,
        from: first_address("from"),
        subject,
        text,
        auto_submitted,
        disposition_notification_to: first_address("disposition-notification-to"),
        return_receipt_to: first_address("return-receipt-to"),
        in_reply_to_chain,
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing under limits
// ---------------------------------------------------------------------------------------------

/// The parser configuration used everywhere in this module.
///
/// `Content-Transfer-Encoding` is skipped on purpose. mail-parser decodes a base64 or
/// quoted-printable `message/rfc822` part and parses the result recursively, and turning that
/// result into owned values recurses once per level nested inside it: a 100 kB mail holding a
/// few thousand levels in one base64 part overflows the stack. With the field skipped every
/// part is parsed in place and its bytes are decoded here from the part's byte range.
fn structure_parser() -> MessageParser {
    MessageParser::new()
        .header_content_type(HeaderName::ContentType)
        .header_content_type(HeaderName::ContentDisposition)
        .ignore_header(HeaderName::ContentTransferEncoding)
        .header_id(HeaderName::MessageId)
        .header_id(HeaderName::References)
        .header_id(HeaderName::InReplyTo)
        .default_header_raw()
}

/// Parses `raw` after the cheap pre-checks, then checks depth and part count on the tree.
fn parse_checked<'x>(raw: &'x [u8], opts: &BodyOptions) -> Result<Message<'x>, BodyError> {
    let limit = opts.max_mime_parts.min(STACK_SAFE_PARTS);
    let declared = count_content_type_fields(raw);
    if declared > limit {
        return Err(BodyError::TooComplex {
            measure: Complexity::MimeParts,
            found: declared,
            limit,
        });
    }
    let msg = structure_parser()
        .parse(raw)
        .filter(|m| !m.parts.is_empty())
        .ok_or(BodyError::Unparseable {
            reason: "no header section was found",
        })?;
    check_structure(&msg, opts)?;
    Ok(msg)
}

/// Counts the places where a `Content-Type` field could start: an upper bound on the fields
/// the parser sees, hence on how deeply attached messages can nest (each level needs one). The
/// parser's field-name reader skips every ASCII blank before the colon, so this count skips
/// them too, line feeds excepted.
///
/// Between matches it jumps from one `c` to the next (`memchr`): a byte by byte scan of every
/// mail took 2% of the CPU of intake.
fn count_content_type_fields(raw: &[u8]) -> usize {
    const NAME: &[u8] = b"content-type:";
    let mut count = 0;
    let mut matched = 0;
    let mut i = 0;
    while i < raw.len() {
        if matched == 0 {
            // Nothing matched so far: only a 'c' can start a match.
            match raw
                .get(i..)
                .and_then(|rest| memchr::memchr2(b'c', b'C', rest))
            {
                Some(at) => i += at,
                None => break,
            }
        }
        let Some(&byte) = raw.get(i) else { break };
        i += 1;
        if byte != b'\n' && byte.is_ascii_whitespace() {
            continue;
        }
        let lower = byte.to_ascii_lowercase();
        if NAME.get(matched) == Some(&lower) {
            matched += 1;
            if matched == NAME.len() {
                count += 1;
                matched = 0;
            }
        } else {
            // 'c' occurs only at the start of the name, so a mismatch restarts from scratch.
            matched = usize::from(lower == b'c');
        }
    }
    count
}

/// Walks the part tree without recursion and refuses it when too deep or too large.
fn check_structure(msg: &Message<'_>, opts: &BodyOptions) -> Result<(), BodyError> {
    let too_many = |found| BodyError::TooComplex {
        measure: Complexity::MimeParts,
        found,
        limit: opts.max_mime_parts,
    };
    let mut seen = 1usize;
    let mut stack: Vec<(&Message<'_>, usize, usize)> = vec![(msg, 0, 0)];
    while let Some((message, index, depth)) = stack.pop() {
        if depth > opts.max_mime_depth {
            return Err(BodyError::TooComplex {
                measure: Complexity::MimeDepth,
                found: depth,
                limit: opts.max_mime_depth,
            });
        }
        let Some(part) = message.parts.get(index) else {
            continue;
        };
        match &part.body {
            PartType::Multipart(children) => {
                seen = seen.saturating_add(children.len());
                if seen > opts.max_mime_parts {
                    return Err(too_many(seen));
                }
                stack.extend(children.iter().map(|&c| (message, c as usize, depth + 1)));
            }
            PartType::Message(inner) if !inner.parts.is_empty() => {
                seen += 1;
                if seen > opts.max_mime_parts {
                    return Err(too_many(seen));
                }
                stack.push((inner, 0, depth + 1));
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Choosing and decoding the body
// ---------------------------------------------------------------------------------------------

/// The cleaned body text of `msg` (no subject yet).
fn body_text(
    msg: &Message<'_>,
    raw: &[u8],
    opts: &BodyOptions,
    is_forward: bool,
    level: usize,
) -> String {
    let parts_of = |ids: &[u32], html: bool| -> Vec<&MessagePart<'_>> {
        ids.iter()
            .filter_map(|&id| msg.parts.get(id as usize))
            .filter(|p| match p.body {
                PartType::Text(_) => !html,
                PartType::Html(_) => html,
                _ => false,
            })
            .collect()
    };

    let plain: Vec<String> = parts_of(&msg.text_body, false)
        .into_iter()
        .map(|part| plain_part_text(part, raw))
        .collect();
    let mut text = clean_body(&plain.join("\n\n"), opts, is_forward);
    if text.is_empty() {
        let html: Vec<String> = parts_of(&msg.html_body, true)
            .into_iter()
            .map(|part| html_to_text(&html_part_source(part, raw), opts.strip_signature))
            .collect();
        text = clean_body(&html.join("\n\n"), opts, is_forward);
    }
    if text.is_empty() {
        let damaged: Vec<String> = damaged_plain_parts(msg)
            .into_iter()
            .map(|part| plain_part_text(part, raw))
            .collect();
        text = clean_body(&damaged.join("\n\n"), opts, is_forward);
    }
    if text.is_empty() && level < MAX_ATTACHED_MESSAGE_LEVELS {
        text = attached_message_text(msg, raw, opts, level).unwrap_or_default();
    }
    text
}

/// Plain text parts mail-parser filed as attachments because their closing boundary never
/// came (a truncated mail): what they hold is still the sender's text.
fn damaged_plain_parts<'m>(msg: &'m Message<'m>) -> Vec<&'m MessagePart<'m>> {
    msg.attachments
        .iter()
        .filter_map(|&id| msg.parts.get(id as usize))
        .filter(|part| part.is_encoding_problem && matches!(part.body, PartType::Text(_)))
        .filter(|part| content_type(part).is_none_or(|ct| is_type(ct, "text", &["plain"])))
        .filter(|part| {
            !field(part, HeaderName::ContentDisposition)
                .and_then(HeaderValue::as_content_type)
                .is_some_and(ContentType::is_attachment)
        })
        .collect()
}

/// The text of the first attached message that has one: a mail forwarded "as attachment".
fn attached_message_text(
    msg: &Message<'_>,
    raw: &[u8],
    opts: &BodyOptions,
    level: usize,
) -> Option<String> {
    msg.attachments
        .iter()
        .filter_map(|&id| msg.parts.get(id as usize))
        .filter(|part| {
            content_type(part).is_some_and(|ct| is_type(ct, "message", &["rfc822", "global"]))
        })
        .find_map(|part| {
            let bytes = part_bytes(part, raw);
            let inner = parse_checked(&bytes, opts).ok()?;
            let subject = decoded_subject(&header_fields(&bytes)).unwrap_or_default();
            let (_, is_forward) = clean_subject(&subject);
            let text = body_text(&inner, &bytes, opts, is_forward, level + 1);
            (!text.is_empty()).then_some(text)
        })
}

/// The subject, decoded here rather than by mail-parser, which decodes each encoded word on its
/// own (a UTF-8 character split across two words becomes two U+FFFD) and reads 8-bit Latin-1
/// subjects as U+FFFD.
fn decoded_subject(fields: &[(String, String)]) -> Option<String> {
    fields
        .iter()
        .find(|(name, _)| name == "subject")
        .map(|(_, value)| normalize_inline(&decode_encoded_words(value)))
        .filter(|s| !s.is_empty())
}

fn field<'m>(part: &'m MessagePart<'_>, name: HeaderName<'static>) -> Option<&'m HeaderValue<'m>> {
    part.headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| &h.value)
}

fn content_type<'m>(part: &'m MessagePart<'_>) -> Option<&'m ContentType<'m>> {
    field(part, HeaderName::ContentType).and_then(HeaderValue::as_content_type)
}

fn is_type(ct: &ContentType<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    ct.ctype().eq_ignore_ascii_case(ctype)
        && ct
            .subtype()
            .is_some_and(|s| subtypes.iter().any(|t| s.eq_ignore_ascii_case(t)))
}

fn ids(value: Option<&HeaderValue<'_>>) -> Vec<String> {
    let list: Vec<&str> = match value {
        Some(HeaderValue::Text(id)) => vec![id.as_ref()],
        Some(HeaderValue::TextList(ids)) => ids.iter().map(|id| id.as_ref()).collect(),
        _ => Vec::new(),
    };
    list.into_iter()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransferEncoding {
    Identity,
    Base64,
    QuotedPrintable,
}

/// The part's `Content-Transfer-Encoding`, read from the raw field (the parser skips it).
fn transfer_encoding(part: &MessagePart<'_>, raw: &[u8]) -> TransferEncoding {
    let value = part
        .headers
        .iter()
        .find(|h| h.name == HeaderName::ContentTransferEncoding)
        .and_then(|h| raw.get(h.offset_start as usize..h.offset_end as usize))
        .map(|v| first_token(&String::from_utf8_lossy(v)))
        .unwrap_or_default();
    match value.as_str() {
        "base64" => TransferEncoding::Base64,
        "quoted-printable" => TransferEncoding::QuotedPrintable,
        _ => TransferEncoding::Identity,
    }
}

/// The part's body with its transfer encoding undone.
fn part_bytes<'r>(part: &MessagePart<'_>, raw: &'r [u8]) -> Cow<'r, [u8]> {
    let body = raw
        .get(part.offset_body as usize..part.offset_end as usize)
        .unwrap_or_default();
    match transfer_encoding(part, raw) {
        TransferEncoding::Identity => Cow::Borrowed(body),
        TransferEncoding::Base64 => Cow::Owned(decode_base64(body)),
        TransferEncoding::QuotedPrintable => Cow::Owned(decode_quoted_printable(body)),
    }
}

/// A `text/plain` part as text: decoded, line ends normalized, RFC 3676 flowed lines joined.
fn plain_part_text(part: &MessagePart<'_>, raw: &[u8]) -> String {
    let ct = content_type(part);
    let charset = ct.and_then(|ct| ct.attribute("charset"));
    let text = decode_charset(&part_bytes(part, raw), charset);
    let lines = split_lines(&text);
    let flowed = ct
        .and_then(|ct| ct.attribute("format"))
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("flowed"));
    if flowed {
        let delsp = ct
            .and_then(|ct| ct.attribute("delsp"))
            .is_some_and(|d| d.trim().eq_ignore_ascii_case("yes"));
        unflow(&lines, delsp).join("\n")
    } else {
        lines.join("\n")
    }
}

/// A `text/html` part's source, decoded with its declared charset or else its `<meta>` one.
fn html_part_source(part: &MessagePart<'_>, raw: &[u8]) -> String {
    let bytes = part_bytes(part, raw);
    let declared = content_type(part).and_then(|ct| ct.attribute("charset"));
    match declared {
        Some(charset) => decode_charset(&bytes, Some(charset)),
        None => decode_charset(&bytes, html_meta_charset(&bytes).as_deref()),
    }
}

/// The charset named by a `<meta>` element near the start of an HTML document.
fn html_meta_charset(html: &[u8]) -> Option<String> {
    let head = html.get(..html.len().min(4096)).unwrap_or(html);
    let lower = head.to_ascii_lowercase();
    let at = find_bytes(&lower, b"charset=")?;
    let value: String = lower
        .get(at + b"charset=".len()..)?
        .iter()
        .skip_while(|&&b| b == b'"' || b == b'\'')
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        .map(|&b| char::from(b))
        .collect();
    (!value.is_empty()).then_some(value)
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Base64 as RFC 2045 §6.8 defines it, read leniently: bytes outside the alphabet are
/// skipped, and padding ends a quantum without ending the data (some encoders concatenate
/// padded chunks). A truncated final quantum gives the bytes it completes.
fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &byte in input {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                acc = 0;
                bits = 0;
                continue;
            }
            _ => continue,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quoted-printable as RFC 2045 §6.7 defines it, read leniently: `=` followed by anything but
/// two hex digits or a line end stays as written, and blanks the transport added at a line's
/// end are dropped (rule 3) while encoded ones (`=20`) are kept.
fn decode_quoted_printable(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut literal_blanks = 0usize;
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        match byte {
            b'=' => {
                let rest = input.get(i + 1..).unwrap_or_default();
                let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
                if let (Some(hi), Some(lo)) = (hex(rest.first()), hex(rest.get(1))) {
                    out.push((hi * 16 + lo) as u8);
                    literal_blanks = 0;
                    i += 3;
                    continue;
                }
                // A soft line break, possibly with blanks the transport added after the `=`.
                let blanks = rest
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
                // Blanks before a soft break are content: the `=` protects them.
                match rest.get(blanks..) {
                    Some([b'\r', b'\n', ..]) => {
                        literal_blanks = 0;
                        i += 1 + blanks + 2;
                    }
                    Some([b'\n', ..]) => {
                        literal_blanks = 0;
                        i += 1 + blanks + 1;
                    }
                    Some([]) => {
                        literal_blanks = 0;
                        i += 1 + blanks;
                    }
                    _ => {
                        out.push(b'=');
                        literal_blanks = 0;
                        i += 1;
                    }
                }
            }
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                i += 1;
            }
            b'\n' => {
                out.truncate(out.len().saturating_sub(literal_blanks));
                literal_blanks = 0;
                out.push(b'\n');
                i += 1;
            }
            b' ' | b'\t' => {
                out.push(byte);
                literal_blanks += 1;
                i += 1;
            }
            _ => {
                out.push(byte);
                literal_blanks = 0;
                i += 1;
            }
        }
    }
    out.truncate(out.len().saturating_sub(literal_blanks));
    out
}

/// Decodes text in the given charset label; see the module documentation for the fallbacks.
fn decode_charset(bytes: &[u8], label: Option<&str>) -> String {
    let label = label
        .map(|l| {
            l.trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_ascii_lowercase()
        })
        .filter(|l| !l.is_empty());
    match label.as_deref() {
        Some("utf-8" | "utf8") => decode_utf8_or_latin(bytes, true),
        Some(
            "us-ascii" | "ascii" | "iso-8859-1" | "iso8859-1" | "latin1" | "iso-8859-15"
            | "windows-1252" | "cp1252",
        ) if is_utf8_with_multibyte(bytes) => decode_utf8_or_latin(bytes, true),
        Some("us-ascii" | "ascii") => decode_utf8_or_latin(bytes, false),
        Some(l) => match charset_decoder(l.as_bytes()) {
            Some(decoder) => decoder(bytes),
            None => decode_utf8_or_latin(bytes, false),
        },
        None => decode_utf8_or_latin(bytes, false),
    }
}

/// UTF-8 when the bytes are UTF-8; Windows-1252 otherwise, unless `labelled_utf8` and the
/// bytes hold valid multibyte sequences, in which case only the broken bytes are replaced. An
/// incomplete sequence at the very end of text that is otherwise multibyte UTF-8 is what a
/// truncated transfer leaves: it is dropped. At the end of ASCII text it is more likely a
/// Latin-1 letter (`caf\xe9`).
fn decode_utf8_or_latin(bytes: &[u8], labelled_utf8: bool) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(e)
            if e.error_len().is_none()
                && bytes.get(..e.valid_up_to()).is_some_and(|v| !v.is_ascii()) =>
        {
            String::from_utf8_lossy(bytes.get(..e.valid_up_to()).unwrap_or_default()).into_owned()
        }
        Err(_) if labelled_utf8 && has_multibyte_utf8(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        Err(_) => windows_1252(bytes),
    }
}

fn windows_1252(bytes: &[u8]) -> String {
    match charset_decoder(b"windows-1252") {
        Some(decoder) => decoder(bytes),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn is_utf8_with_multibyte(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| !s.is_ascii())
}

/// Whether the bytes contain at least one well-formed multibyte UTF-8 sequence.
fn has_multibyte_utf8(bytes: &[u8]) -> bool {
    bytes.utf8_chunks().any(|chunk| !chunk.valid().is_ascii())
}

// ---------------------------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------------------------

/// Splits on every line end mail text uses: CRLF, bare LF, bare CR, NEL, LS and PS.
///
/// Scans bytes: in UTF-8, CR and LF never occur inside a multibyte character, and NEL
/// (C2 85), LS (E2 80 A8) and PS (E2 80 A9) start with a lead byte, so every match is a whole
/// character and every split falls on a character boundary.
///
/// A profile of the intake put this scan at a quarter of the body's work when it went byte by
/// byte: it now jumps between candidate bytes with `memchr`, LS and PS's lead byte (0xE2, common
/// in typographic punctuation) looked for apart and only again once passed.
fn split_lines(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut from = 0;
    let mut next_e2 = memchr::memchr(0xE2, bytes);
    while let Some(rest) = bytes.get(from..) {
        if next_e2.is_some_and(|e| e < from) {
            next_e2 = memchr::memchr(0xE2, rest).map(|i| from + i);
        }
        let other = memchr::memchr3(b'\n', b'\r', 0xC2, rest).map(|i| from + i);
        let Some(i) = (match (other, next_e2) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }) else {
            break;
        };
        let separator_len = match bytes.get(i..) {
            Some([b'\r', b'\n', ..]) => 2,
            Some([b'\n' | b'\r', ..]) => 1,
            Some([0xC2, 0x85, ..]) => 2,
            Some([0xE2, 0x80, 0xA8 | 0xA9, ..]) => 3,
            _ => {
                from = i + 1;
                continue;
            }
        };
        lines.push(text.get(start..i).unwrap_or_default());
        from = i + separator_len;
        start = from;
    }
    lines.push(text.get(start..).unwrap_or_default());
    lines
}

/// Joins RFC 3676 flowed lines: a line ending in a space continues on the next line of the
/// same quote depth (§4.2, §4.5); the space after the quote marks is stuffing (§4.4); the
/// signature separator `-- ` is never flowed (§4.3); `DelSp=yes` drops the flowing space
/// (§4.1).
fn unflow(lines: &[&str], delsp: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open: Option<usize> = None;
    for line in lines {
        let depth = line.chars().take_while(|&c| c == '>').count();
        let content = line.get(depth..).unwrap_or_default();
        let content = content.strip_prefix(' ').unwrap_or(content);
        let is_signature = content == "-- ";
        let flowed = content.ends_with(' ') && !is_signature;
        let content = if flowed && delsp {
            content.strip_suffix(' ').unwrap_or(content)
        } else {
            content
        };
        match open {
            Some(d) if d == depth && !out.is_empty() => {
                if let Some(last) = out.last_mut() {
                    last.push_str(content);
                }
            }
            _ => {
                let prefix = if depth > 0 {
                    format!("{} ", ">".repeat(depth))
                } else {
                    String::new()
                };
                out.push(format!("{prefix}{content}"));
            }
        }
        open = flowed.then_some(depth);
    }
    out
}

/// One line of body text. `text` is normalized (blanks collapsed, trimmed, invisible characters
/// removed); `raw` is kept for what normalization would hide, such as the space of `-- `. Both
/// borrow from the body when they can: most lines need no normalization.
#[derive(Clone, Debug)]
struct Line<'a> {
    raw: &'a str,
    text: Cow<'a, str>,
}

impl<'a> Line<'a> {
    fn new(raw: &'a str) -> Line<'a> {
        Line {
            raw,
            text: normalize_line(raw),
        }
    }

    /// RFC 3676 §4.3 signature separator: dash, dash, space, nothing else.
    fn is_signature_separator(&self) -> bool {
        self.raw
            .strip_prefix("-- ")
            .is_some_and(|rest| rest.chars().all(char::is_whitespace))
    }

    fn is_quoted(&self) -> bool {
        self.text.starts_with('>')
    }

    /// The line with one level of quoting removed.
    fn unquoted(&self) -> Line<'a> {
        let raw = self.raw.trim_start();
        let raw = raw.strip_prefix('>').unwrap_or(raw);
        Line::new(raw.strip_prefix(' ').unwrap_or(raw))
    }
}

fn make_lines(text: &str) -> Vec<Line<'_>> {
    split_lines(text).into_iter().map(Line::new).collect()
}

/// Characters removed outright: invisible, or control characters that would derail a modem.
fn is_removed(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}'
    ) || (c.is_control() && c != '\t')
}

/// Characters that [`normalize_line`] collapses into one space.
fn is_blank(c: char) -> bool {
    c == '\t' || (c.is_whitespace() && !is_removed(c))
}

/// Collapses blanks (tabs, no-break and typographic spaces) to single spaces, trims, and
/// removes the characters [`is_removed`] names. Borrows when there is nothing to change.
fn normalize_line(line: &str) -> Cow<'_, str> {
    if is_normalized(line) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut blank = false;
    for c in line.chars() {
        if is_blank(c) {
            blank = true;
        } else if !is_removed(c) {
            if blank && !out.is_empty() {
                out.push(' ');
            }
            blank = false;
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether [`normalize_line`] would give `line` back unchanged: it has nothing to remove, no
/// blank but single spaces, and those only between other characters. Each kept character is
/// then copied and each space is written back before the character that follows it.
fn is_normalized(line: &str) -> bool {
    if line.is_ascii() {
        ascii_is_normalized(line.as_bytes())
    } else {
        chars_are_normalized(line)
    }
}

/// [`is_normalized`] character by character, for any text.
fn chars_are_normalized(line: &str) -> bool {
    // Set at the start so that a leading space fails like a second space in a row.
    let mut after_space = true;
    line.chars().all(|c| {
        let ok = if c == ' ' {
            !after_space
        } else {
            !is_blank(c) && !is_removed(c)
        };
        after_space = c == ' ';
        ok
    }) && !line.ends_with(' ')
}

/// [`is_normalized`] for ASCII, where the blanks are space and tab and the removed characters
/// are the other control characters: every byte printable (a graphic character or a space),
/// and no space at either end or next to another. Each test scans the line in one sweep (the
/// first in blocks the compiler vectorizes) instead of a byte at a time: this runs over every
/// line of every mail.
fn ascii_is_normalized(line: &[u8]) -> bool {
    let printable = line.chunks(32).all(|block| {
        block
            .iter()
            .fold(true, |ok, &b| ok & (b' '..=b'~').contains(&b))
    });
    printable
        && line.first() != Some(&b' ')
        && line.last() != Some(&b' ')
        && memchr::memmem::find(line, b"  ").is_none()
}

/// [`normalize_line`] for text that must stay on one line (a subject).
fn normalize_inline(text: &str) -> String {
    normalize_line(&split_lines(text).join(" ")).into_owned()
}

/// Turns decoded body text into SMS text: history, signatures and blank lines removed.
fn clean_body(text: &str, opts: &BodyOptions, is_forward: bool) -> String {
    let lines = make_lines(text);
    let kept = if opts.strip_quoted {
        strip_history(lines, opts.strip_signature, is_forward)
    } else if opts.strip_signature {
        strip_signature(lines)
    } else {
        lines
    };
    kept.iter()
        .map(|l| l.text.as_ref())
        .filter(|t| !t.is_empty() && !is_image_placeholder(t))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Gmail writes `[image: name.png]` in the plain text where the HTML has an inline image, and
/// some clients `[cid:…]`: noise in an SMS.
fn is_image_placeholder(text: &str) -> bool {
    (text.starts_with("[image:") || text.starts_with("[cid:")) && text.ends_with(']')
}

/// What starts the quoted history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// "On … wrote:" and its translations.
    Attribution,
    /// "-----Original Message-----" and translations.
    Original,
    /// "Begin forwarded message:", "---------- Forwarded message ---------" and translations.
    Forward,
    /// Outlook's "From: / Sent: / To: / Subject:" block (and Notes' "From: / Date: / To:").
    HeaderBlock,
}

/// Finds where quoted history starts and returns what the sender wrote above it, or, for a
/// forward with nothing written above, the forwarded content (whose own history is cut too).
fn strip_history(lines: Vec<Line<'_>>, strip_signatures: bool, is_forward: bool) -> Vec<Line<'_>> {
    let mut region = lines;
    // Each pass unwraps one forward; deeper chains than this are not mail people write, and the
    // bound keeps a mail made of forward markers from costing a copy of itself per marker.
    for _ in 0..MAX_NESTED_FORWARDS {
        let cut = find_cut(&region);
        let end = cut.map_or(region.len(), |(at, _)| at);
        let mut above: Vec<Line<'_>> = region
            .get(..end)
            .unwrap_or_default()
            .iter()
            .filter(|l| !l.is_quoted())
            .cloned()
            .collect();
        if strip_signatures {
            above = strip_signature(above);
        }
        let wrote_nothing = above.iter().all(|l| l.text.is_empty());
        let Some((at, kind)) = cut else {
            return above;
        };
        let follow = match kind {
            Cut::Forward => true,
            Cut::Original | Cut::HeaderBlock => is_forward,
            Cut::Attribution => false,
        };
        if !wrote_nothing || !follow {
            return above;
        }
        region = forwarded_content(&region, at, kind);
    }
    Vec::new()
}

fn find_cut(lines: &[Line<'_>]) -> Option<(usize, Cut)> {
    lines.iter().enumerate().find_map(|(i, line)| {
        if line.is_quoted() || line.text.is_empty() {
            return None;
        }
        if let Some(kind) = marker(&line.text) {
            return Some((i, kind));
        }
        if is_underscore_rule(&line.text) {
            let next = next_non_blank(lines, i + 1)?;
            return is_header_block(lines, next).then_some((i, Cut::HeaderBlock));
        }
        if is_attribution_at(lines, i) {
            return Some((i, Cut::Attribution));
        }
        is_header_block(lines, i).then_some((i, Cut::HeaderBlock))
    })
}

fn next_non_blank(lines: &[Line<'_>], from: usize) -> Option<usize> {
    (from..lines.len()).find(|&i| lines.get(i).is_some_and(|l| !l.text.is_empty()))
}

/// Outlook puts a rule of underscores above its header block.
fn is_underscore_rule(text: &str) -> bool {
    text.len() >= 10 && text.chars().all(|c| c == '_')
}

/// The content below a forward marker or header block: the header block of the forwarded mail
/// skipped, and one level of quoting removed when all of it is quoted (Apple Mail's plain text).
fn forwarded_content<'a>(lines: &[Line<'a>], at: usize, kind: Cut) -> Vec<Line<'a>> {
    let start = match kind {
        Cut::HeaderBlock if lines.get(at).is_some_and(|l| !is_underscore_rule(&l.text)) => at,
        _ => at + 1,
    };
    let mut rest: Vec<Line<'a>> = lines.get(start..).unwrap_or_default().to_vec();
    if rest
        .iter()
        .filter(|l| !l.text.is_empty())
        .all(Line::is_quoted)
    {
        rest = rest.iter().map(Line::unquoted).collect();
    }
    let mut i = next_non_blank(&rest, 0).unwrap_or(rest.len());
    if rest.get(i).is_some_and(|l| field_label(&l.text).is_some()) {
        while rest.get(i).is_some_and(|l| !l.text.is_empty()) {
            i += 1;
        }
    }
    rest.split_off(i.min(rest.len()))
}

/// Separator lines clients put above quoted or forwarded mail.
fn marker(text: &str) -> Option<Cut> {
    // Every form ends with ':' or starts with "--". Lowercasing maps ':' and '-' to themselves
    // and no other character to either, and removing the space of " :" neither adds nor removes
    // a final ':' or a leading "--": a text with neither cannot match.
    if !text.ends_with(':') && !text.starts_with("--") {
        return None;
    }
    let lower = text.to_lowercase().replace(" :", ":");
    const FORWARD_LINES: &[&str] = &[
        "begin forwarded message:",
        "début du message réexpédié:",
        "début du message transféré:",
        "anfang der weitergeleiteten nachricht:",
        "inicio del mensaje reenviado:",
        "inizio messaggio inoltrato:",
        "begin doorgestuurd bericht:",
    ];
    if FORWARD_LINES.contains(&lower.as_str()) {
        return Some(Cut::Forward);
    }
    if !lower.starts_with("--") {
        return None;
    }
    let core = lower.trim_matches(|c: char| c == '-' || c == ' ');
    const FORWARD_TITLES: &[&str] = &[
        "forwarded message",
        "message transféré",
        "weitergeleitete nachricht",
        "mensaje reenviado",
        "messaggio inoltrato",
        "doorgestuurd bericht",
        "mensagem encaminhada",
    ];
    const ORIGINAL_TITLES: &[&str] = &[
        "original message",
        "message d'origine",
        "ursprüngliche nachricht",
        "mensaje original",
        "messaggio originale",
        "oorspronkelijk bericht",
        "mensagem original",
    ];
    if FORWARD_TITLES.contains(&core) {
        Some(Cut::Forward)
    } else if ORIGINAL_TITLES.contains(&core) {
        Some(Cut::Original)
    } else {
        None
    }
}

/// Whether a reply attribution starts at line `i`, on that line or wrapped onto the next.
fn is_attribution_at(lines: &[Line<'_>], i: usize) -> bool {
    let Some(first) = lines.get(i) else {
        return false;
    };
    if is_attribution(&first.text) {
        return true;
    }
    match lines.get(i + 1) {
        // The joined text ends as `next` does: without a final ':' it cannot be one either.
        Some(next) if !next.text.is_empty() && !next.is_quoted() && next.text.ends_with(':') => {
            is_attribution(&format!("{} {}", first.text, next.text))
        }
        _ => false,
    }
}

/// "On … wrote:" and its translations, or Notes' "… wrote on …:". A date is always part of
/// them, so a line without a digit is not one ("Le client a écrit :" stays).
fn is_attribution(text: &str) -> bool {
    // Every form ends with ':', and the lowercased text ends with ':' exactly when the text
    // does (see `marker`).
    if !text.ends_with(':') || text.len() > 400 || !text.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    let lower = text.to_lowercase().replace(" :", ":");
    // (starts with, contains, ends with)
    const FORMS: &[(&str, &str, &str)] = &[
        ("on ", "", "wrote:"),
        ("le ", "", "a écrit:"),
        ("am ", " schrieb ", ":"),
        ("el ", "", "escribió:"),
        ("il ", "", "ha scritto:"),
        ("op ", " schreef ", ":"),
        ("em ", "", "escreveu:"),
        ("den ", " skrev ", ":"),
        ("", " wrote on ", ":"),
        ("", " a écrit sur ", ":"),
        ("", " schrieb am ", ":"),
    ];
    FORMS.iter().any(|(start, middle, end)| {
        lower.starts_with(start) && lower.contains(middle) && lower.ends_with(end)
    })
}

/// The label of a `Label: value` line, lowercased, when it looks like a header field.
fn field_label(text: &str) -> Option<String> {
    let (label, _) = text.split_once(':')?;
    let label = label.trim();
    let plausible = !label.is_empty()
        && label.chars().count() <= 24
        && label
            .chars()
            .all(|c| c.is_alphabetic() || c == ' ' || c == '-' || c == '.');
    plausible.then(|| label.to_lowercase())
}

/// A quoted-mail header block starting at `i`: a "From:" line followed within five lines by a
/// date line and a recipient or subject line, in the languages Outlook and Notes write.
fn is_header_block(lines: &[Line<'_>], i: usize) -> bool {
    const FROM: &[&str] = &["from", "de", "von", "van", "da", "från", "fra", "od", "от"];
    const DATE: &[&str] = &[
        "sent",
        "date",
        "envoyé",
        "gesendet",
        "datum",
        "enviado",
        "fecha",
        "inviato",
        "data",
        "verzonden",
        "skickat",
        "sendt",
        "wysłano",
        "отправлено",
    ];
    const OTHER: &[&str] = &[
        "to",
        "à",
        "a",
        "an",
        "aan",
        "para",
        "per",
        "till",
        "til",
        "do",
        "кому",
        "cc",
        "subject",
        "objet",
        "betreff",
        "onderwerp",
        "asunto",
        "oggetto",
        "assunto",
        "ämne",
        "emne",
        "temat",
        "тема",
    ];
    let is = |line: Option<&Line<'_>>, set: &[&str]| {
        line.and_then(|l| field_label(&l.text))
            .is_some_and(|label| set.contains(&label.as_str()))
    };
    if !is(lines.get(i), FROM) {
        return false;
    }
    let following: Vec<&Line<'_>> = lines
        .iter()
        .skip(i + 1)
        .take(5)
        .take_while(|l| !l.text.is_empty())
        .collect();
    following.iter().any(|l| is(Some(l), DATE)) && following.iter().any(|l| is(Some(l), OTHER))
}

/// Cuts the signature: at the first `-- ` separator, at a bare `--` followed by no more than
/// eight lines, or at a sign-off line a mobile or webmail client appended.
fn strip_signature(mut lines: Vec<Line<'_>>) -> Vec<Line<'_>> {
    let hard = lines.iter().position(Line::is_signature_separator);
    let signoff = lines.iter().position(|l| is_signoff(&l.text));
    // The earliest bare `--` with at most eight non-empty lines after it.
    let mut soft = None;
    let mut after = 0usize;
    for (at, line) in lines.iter().enumerate().rev() {
        if after > 8 {
            break;
        }
        if line.text == "--" {
            soft = Some(at);
        }
        if !line.text.is_empty() {
            after += 1;
        }
    }
    if let Some(at) = [hard, signoff, soft].into_iter().flatten().min() {
        lines.truncate(at);
    }
    lines
}

/// "Sent from my iPhone" and the like. Disclaimers are not guessed.
fn is_signoff(text: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "sent from my ",
        "sent from outlook",
        "sent from mail for windows",
        "sent from yahoo mail",
        "get outlook for ",
        "envoyé de mon ",
        "envoyé depuis mon ",
        "envoyé à partir de outlook",
        "envoyé à partir d'outlook",
        "envoyé à partir d’outlook",
        "obtenir outlook pour ",
        "télécharger outlook pour ",
        "gesendet von meinem ",
        "gesendet von mail für windows",
        "enviado desde mi ",
        "enviado desde outlook",
        "enviado do meu ",
        "inviato da ",
        "inviato dal mio ",
        "verzonden vanaf mijn ",
        "verstuurd vanaf mijn ",
        "skickat från min ",
        "sendt fra min ",
    ];
    const VON_MEINEM: &str = "von meinem ";
    // A line that starts with an ASCII character no sign-off starts with is none of them:
    // settled without comparing it to each (this runs for every line of every mail). One that
    // starts with a non-ASCII character goes the whole way, as some lowercase to ASCII.
    if let Some(first) = text.bytes().next()
        && first.is_ascii()
        && !PREFIXES
            .iter()
            .chain([&VON_MEINEM])
            .any(|p| p.as_bytes().first() == Some(&first.to_ascii_lowercase()))
    {
        return false;
    }
    if text.chars().count() > 100 {
        return false;
    }
    PREFIXES.iter().any(|p| lowercase_starts_with(text, p))
        || (lowercase_starts_with(text, VON_MEINEM) && lowercase_ends_with(text, "gesendet"))
}

/// `text.to_lowercase().starts_with(prefix)` without lowercasing the whole text. The string
/// lowercases character by character except for 'Σ', which becomes 'σ' or 'ς' depending on
/// what follows; no pattern here holds either, so that choice cannot change the answer.
fn lowercase_starts_with(text: &str, prefix: &str) -> bool {
    // An ASCII first character lowercases to an ASCII one: comparing the first bytes settles
    // almost every call (a line against each sign-off) without building the iterator.
    if let (Some(t), Some(p)) = (text.bytes().next(), prefix.bytes().next())
        && t.is_ascii()
        && p.is_ascii()
        && t.to_ascii_lowercase() != p
    {
        return false;
    }
    let mut lower = text.chars().flat_map(char::to_lowercase);
    prefix.chars().all(|p| lower.next() == Some(p))
}

/// `text.to_lowercase().ends_with(suffix)`, read from the end; see [`lowercase_starts_with`].
fn lowercase_ends_with(text: &str, suffix: &str) -> bool {
    let mut lower = text.chars().rev().flat_map(|c| c.to_lowercase().rev());
    suffix.chars().rev().all(|s| lower.next() == Some(s))
}

// ---------------------------------------------------------------------------------------------
// HTML to text
// ---------------------------------------------------------------------------------------------

/// Converts an HTML body to text lines. Block elements break lines, list items get a marker,
/// table cells are separated by a space, quoting `<blockquote>` lines get `> ` so the history
/// rules apply to them, and the signature blocks Gmail and Thunderbird mark get a `-- ` line
/// above them when `mark_signatures`. Script, style, title and comments are dropped; links keep
/// their text and images disappear.
fn html_to_text(html: &str, mark_signatures: bool) -> String {
    let mut w = HtmlWriter::default();
    let mut rest = html;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after
                .find("-->")
                .and_then(|e| after.get(e + 3..))
                .unwrap_or_default();
            continue;
        }
        if rest.starts_with('<') {
            if let Some(tag) = Tag::parse(rest) {
                rest = rest.get(tag.len..).unwrap_or_default();
                if !tag.closing && !tag.self_closing && is_raw_text_element(&tag.name) {
                    rest = skip_raw_text(rest, &tag.name);
                } else {
                    w.tag(&tag, mark_signatures);
                }
                continue;
            }
            w.text("<");
            rest = rest.get(1..).unwrap_or_default();
            continue;
        }
        let end = rest.find('<').unwrap_or(rest.len());
        let (text, after) = rest.split_at(end);
        w.text(&decode_entities(text));
        rest = after;
    }
    w.finish()
}

/// Elements whose content is not text to read.
fn is_raw_text_element(name: &str) -> bool {
    matches!(name, "script" | "style" | "title" | "template" | "xml")
}

/// Skips to just after `</name …>`, or to the end when it never closes.
fn skip_raw_text<'a>(rest: &'a str, name: &str) -> &'a str {
    let closing = format!("</{name}");
    let found = rest
        .as_bytes()
        .windows(closing.len())
        .position(|w| w.eq_ignore_ascii_case(closing.as_bytes()));
    match found {
        Some(at) => {
            let after = rest.get(at..).unwrap_or_default();
            after
                .find('>')
                .and_then(|gt| after.get(gt + 1..))
                .unwrap_or_default()
        }
        None => "",
    }
}

#[derive(Debug, Default)]
struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    attrs: Vec<(String, String)>,
    len: usize,
}

impl Tag {
    /// Parses the tag at the start of `s` (which starts with `<`); `None` when the `<` does not
    /// start a tag and is text. Declarations (`<!DOCTYPE>`, Outlook's `<![if …]>`) and
    /// processing instructions come back as tags named `!`.
    fn parse(s: &str) -> Option<Tag> {
        let body = s.strip_prefix('<')?;
        if body.starts_with('!') || body.starts_with('?') {
            let len = body.find('>').map_or(s.len(), |gt| gt + 2);
            return Some(Tag {
                name: "!".into(),
                len,
                ..Tag::default()
            });
        }
        let (closing, body) = match body.strip_prefix('/') {
            Some(b) => (true, b),
            None => (false, body),
        };
        if !body.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return None;
        }
        let name_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_')))
            .unwrap_or(body.len());
        let (name, after_name) = body.split_at(name_len);
        let mut quote: Option<char> = None;
        let mut end = None;
        for (i, c) in after_name.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let attr_text = after_name
            .get(..end.unwrap_or(after_name.len()))
            .unwrap_or_default();
        let len = match end {
            Some(i) => s.len() - after_name.len() + i + 1,
            None => s.len(),
        };
        Some(Tag {
            name: name.to_ascii_lowercase(),
            closing,
            self_closing: attr_text.trim_end().ends_with('/'),
            attrs: parse_attributes(attr_text),
            len,
        })
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_class(&self, class: &str) -> bool {
        self.attr("class")
            .is_some_and(|c| c.split_whitespace().any(|c| c.eq_ignore_ascii_case(class)))
    }
}

fn parse_attributes(text: &str) -> Vec<(String, String)> {
    let mut attrs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return attrs;
        }
        let name_len = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_len);
        let after = after.trim_start();
        let (value, after) = match after.strip_prefix('=') {
            Some(v) => {
                let v = v.trim_start();
                match v.chars().next() {
                    Some(q @ ('"' | '\'')) => {
                        let inner = v.get(1..).unwrap_or_default();
                        let close = inner.find(q).unwrap_or(inner.len());
                        let (value, tail) = inner.split_at(close);
                        (value, tail.get(1..).unwrap_or_default())
                    }
                    _ => {
                        let end = v.find(char::is_whitespace).unwrap_or(v.len());
                        v.split_at(end)
                    }
                }
            }
            None => ("", after),
        };
        if name.is_empty() {
            // A stray `=`: skip one character so the loop advances.
            rest = after.get(1..).unwrap_or_default();
            continue;
        }
        attrs.push((
            name.to_ascii_lowercase(),
            decode_entities(value).into_owned(),
        ));
        rest = after;
    }
}

#[derive(Default)]
struct HtmlWriter {
    out: String,
    line: String,
    /// Quote depth of the line being written, fixed by its first character.
    line_depth: usize,
    quote_depth: usize,
    /// For each open `<blockquote>`, whether it counts as a quote.
    blockquotes: Vec<bool>,
    /// For each open list, the next number (`None` for bullets).
    lists: Vec<Option<u32>>,
    pre: usize,
    blank: bool,
}

impl HtmlWriter {
    fn text(&mut self, text: &str) {
        for c in text.chars() {
            if self.pre > 0 {
                match c {
                    '\n' => {
                        self.end_line();
                        continue;
                    }
                    '\r' => continue,
                    _ => {}
                }
            } else if matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0C') {
                self.blank = true;
                continue;
            }
            if self.line.is_empty() {
                self.line_depth = self.quote_depth;
            } else if self.blank {
                self.line.push(' ');
            }
            self.blank = false;
            self.line.push(c);
        }
    }

    /// Ends the current line, even an empty one (`<br>`).
    fn end_line(&mut self) {
        let depth = if self.line.is_empty() {
            self.quote_depth
        } else {
            self.line_depth
        };
        for _ in 0..depth {
            self.out.push_str("> ");
        }
        self.out.push_str(&self.line);
        self.out.push('\n');
        self.line.clear();
        self.blank = false;
    }

    /// A block boundary: ends the current line unless it is empty.
    fn block(&mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.blank = false;
    }

    fn tag(&mut self, tag: &Tag, mark_signatures: bool) {
        if mark_signatures
            && !tag.closing
            && (tag.has_class("gmail_signature")
                || tag.has_class("moz-signature")
                || tag
                    .attr("id")
                    .is_some_and(|id| id.eq_ignore_ascii_case("signature")))
        {
            self.block();
            self.line.push_str("-- ");
            self.line_depth = self.quote_depth;
            self.end_line();
        }
        match tag.name.as_str() {
            "br" => self.end_line(),
            "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "dl" | "dt" | "dd"
            | "table" | "tr" | "section" | "article" | "header" | "footer" | "nav" | "aside"
            | "main" | "address" | "center" | "figure" | "figcaption" | "form" | "fieldset"
            | "legend" | "details" | "summary" | "caption" | "hr" => self.block(),
            "ul" | "ol" => {
                self.block();
                if tag.closing {
                    self.lists.pop();
                } else if !tag.self_closing {
                    let start = tag.attr("start").and_then(|s| s.trim().parse().ok());
                    self.lists
                        .push((tag.name == "ol").then_some(start.unwrap_or(1)));
                }
            }
            "li" => {
                self.block();
                if !tag.closing {
                    let marker = match self.lists.last_mut() {
                        Some(Some(n)) => {
                            let marker = format!("{n}. ");
                            *n = n.saturating_add(1);
                            marker
                        }
                        _ => "- ".to_owned(),
                    };
                    self.line_depth = self.quote_depth;
                    self.line.push_str(&marker);
                    self.blank = false;
                }
            }
            "td" | "th" if !tag.closing && !self.line.is_empty() => self.blank = true,
            "blockquote" => {
                self.block();
                if tag.closing {
                    if self.blockquotes.pop() == Some(true) {
                        self.quote_depth = self.quote_depth.saturating_sub(1);
                    }
                } else if !tag.self_closing {
                    let quote = is_quoting_blockquote(tag);
                    self.blockquotes.push(quote);
                    if quote {
                        self.quote_depth += 1;
                    }
                }
            }
            "pre" => {
                self.block();
                if tag.closing {
                    self.pre = self.pre.saturating_sub(1);
                } else if !tag.self_closing {
                    self.pre += 1;
                }
            }
            _ => {}
        }
    }

    fn finish(mut self) -> String {
        self.block();
        self.out
    }
}

/// Clients mark quoted mail with `type="cite"` or a `*quote*` class; Gmail's indent button
/// makes a `<blockquote style="…border:none…">` that is not a quote.
fn is_quoting_blockquote(tag: &Tag) -> bool {
    if tag
        .attr("type")
        .is_some_and(|t| t.eq_ignore_ascii_case("cite"))
    {
        return true;
    }
    if tag
        .attr("class")
        .is_some_and(|c| c.to_ascii_lowercase().contains("quote"))
    {
        return true;
    }
    let style: String = tag
        .attr("style")
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    !style.contains("border:none")
}

/// Decodes character references (HTML5 §13.2.5.72): numeric ones, named ones through
/// mail-parser's entity table, and the legacy names browsers accept without `;`.
fn decode_entities(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        let (before, from_amp) = rest.split_at(at);
        out.push_str(before);
        let after = from_amp.get(1..).unwrap_or_default();
        match entity(after) {
            Some((decoded, used)) => {
                out.push_str(&decoded);
                rest = after.get(used..).unwrap_or_default();
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The character reference at the start of `s` (just after the `&`) and the bytes it uses.
fn entity(s: &str) -> Option<(String, usize)> {
    if let Some(number) = s.strip_prefix('#') {
        let (digits_from, radix) = match number.strip_prefix(['x', 'X']) {
            Some(_) => (2, 16),
            None => (1, 10),
        };
        let digits: String = s
            .get(digits_from..)?
            .chars()
            .take_while(|c| c.is_digit(radix))
            .take(8)
            .collect();
        if digits.is_empty() {
            return None;
        }
        let mut used = digits_from + digits.len();
        if s.get(used..).is_some_and(|r| r.starts_with(';')) {
            used += 1;
        }
        let code = u32::from_str_radix(&digits, radix).ok()?;
        return Some((numeric_reference(code), used));
    }
    let name_len = s
        .bytes()
        .take(32)
        .take_while(u8::is_ascii_alphanumeric)
        .count();
    let name = s.get(..name_len).filter(|n| !n.is_empty())?;
    if s.get(name_len..).is_some_and(|r| r.starts_with(';')) {
        return named_reference(name).map(|d| (d, name_len + 1));
    }
    const LEGACY: &[&str] = &["amp", "lt", "gt", "quot", "nbsp", "copy", "reg"];
    LEGACY
        .contains(&name)
        .then(|| named_reference(name).map(|d| (d, name_len)))
        .flatten()
}

/// HTML maps the C1 range to Windows-1252, as browsers do for `&#146;`.
fn numeric_reference(code: u32) -> String {
    match code {
        0x80..=0x9F => windows_1252(&[code as u8]),
        _ => char::from_u32(code)
            .filter(|&c| c != '\0')
            .unwrap_or(char::REPLACEMENT_CHARACTER)
            .to_string(),
    }
}

fn named_reference(name: &str) -> Option<String> {
    let probe = format!("&{name};");
    let decoded = mail_parser::decoders::html::html_to_text(&probe);
    (decoded != probe && !decoded.is_empty()).then_some(decoded)
}

// ---------------------------------------------------------------------------------------------
// Subject
// ---------------------------------------------------------------------------------------------

/// Removes reply and forward prefixes (`Re:`, `RE :`, `Re[2]:`, `Réf. :`, `Fwd:`, `TR:`, `AW:`,
/// `WG:`, `RV:` …) and says whether the first one marked a forward.
fn clean_subject(subject: &str) -> (String, bool) {
    // "Réf." is Lotus Notes' French reply prefix.
    const REPLY: &[&str] = &["re", "aw", "sv", "antw", "réf", "réf."];
    const FORWARD: &[&str] = &["fw", "fwd", "tr", "wg", "rv", "vs"];
    let mut rest = subject.trim();
    let mut is_forward = None;
    while let Some((head, tail)) = rest.split_once(':') {
        let head = head.trim_end();
        let word = match head.find(['[', '(']) {
            Some(open)
                if head.ends_with([']', ')'])
                    && head
                        .get(open + 1..head.len() - 1)
                        .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit())) =>
            {
                head.get(..open).unwrap_or_default()
            }
            _ => head,
        };
        let word = word.to_lowercase();
        let forward = FORWARD.contains(&word.as_str());
        if !forward && !REPLY.contains(&word.as_str()) {
            break;
        }
        is_forward.get_or_insert(forward);
        rest = tail.trim_start();
    }
    (rest.to_owned(), is_forward.unwrap_or(false))
}

/// Combines subject and body as the policy says.
fn compose(subject: &str, body: &str, policy: SubjectPolicy) -> String {
    match policy {
        SubjectPolicy::BodyOnly if !body.is_empty() => body.to_owned(),
        SubjectPolicy::SubjectOnly if !subject.is_empty() => subject.to_owned(),
        _ if subject.is_empty() => body.to_owned(),
        _ if body.is_empty() || policy == SubjectPolicy::SubjectOnly => subject.to_owned(),
        _ if repeats_body(subject, body) => body.to_owned(),
        _ => {
            let separator = if subject.ends_with(['.', ':', '!', '?', ';']) {
                " "
            } else {
                ": "
            };
            format!("{subject}{separator}{body}")
        }
    }
}

/// Whether the subject is just the start of the body (phones often copy it there), possibly
/// cut with an ellipsis.
fn repeats_body(subject: &str, body: &str) -> bool {
    let fold = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let subject = fold(subject);
    let cut = subject.trim_end_matches(['…', '.']).trim_end();
    let body = fold(body);
    let Some(rest) = body.strip_prefix(cut).filter(|_| !cut.is_empty()) else {
        return false;
    };
    // "Car" does not repeat "Cargo arrived", unless the subject was visibly cut ("Car…").
    cut.len() < subject.len() || !rest.starts_with(char::is_alphanumeric)
}

// ---------------------------------------------------------------------------------------------
// Header fields and addresses
// ---------------------------------------------------------------------------------------------

/// The recipients named in `To`, `Cc`, `Delivered-To` and `X-Original-To`, in header order:
/// (display name, address as written). An address that appears twice is listed once, with
/// the first display name found for it.
pub fn header_recipients(raw: &[u8]) -> Vec<(Option<String>, String)> {
    let mut out: Vec<(Option<String>, String)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (name, value) in header_fields(raw) {
        if !matches!(
            name.as_str(),
            "to" | "cc" | "delivered-to" | "x-original-to"
        ) {
            continue;
        }
        for (display, address) in split_address_list(&value) {
            match seen.get(&address.to_ascii_lowercase()) {
                Some(&at) => {
                    if let Some((known @ None, _)) = out.get_mut(at) {
                        *known = display;
                    }
                }
                None => {
                    seen.insert(address.to_ascii_lowercase(), out.len());
                    out.push((display, address));
                }
            }
        }
    }
    out
}

/// The top-level header fields as (lowercased name, unfolded value), read from the raw bytes
/// (RFC 5322 §2.2, §2.2.3). Tolerant: LF or CRLF, an mbox `From ` line first, blanks before
/// the colon (obsolete syntax, §4.5), lines that are not fields skipped. Values that are not
/// UTF-8 (RFC 6532) are read as Windows-1252.
fn header_fields(raw: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for (n, line) in raw.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            break;
        }
        if n == 0 && line.starts_with(b"From ") {
            continue;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if let Some((_, value)) = fields.last_mut() {
                value.extend_from_slice(line);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        // A field name is printable US-ASCII (§3.6.8 `ftext`); only blanks (space, tab) may
        // stand before the colon. Anything else is not a field here, as it is not for the
        // DMARC check (`mail-auth`): read as `From`, `From\x0b:` would name a sender other
        // than the one DMARC verifies.
        let mut name = name;
        while let [rest @ .., b' ' | b'\t'] = name {
            name = rest;
        }
        if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
            continue;
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        fields.push((name, value.get(1..).unwrap_or_default().to_vec()));
    }
    fields
        .into_iter()
        .map(|(name, value)| (name, decode_utf8_or_latin(&value, false)))
        .collect()
}

/// The first word of a structured field value, lowercased (`auto-replied; …` → `auto-replied`).
fn first_token(value: &str) -> String {
    value
        .trim()
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Splits an address list (RFC 5322 §3.4) into (display name, address as written). Tolerant of
/// what the gateway receives: Domino's `Paul@+33477858589@sms` and `"Paul@+33477858589"@sms`,
/// groups (`Team: a@x, b@y;`), comments (`jean@x (Jean)` gives the name "Jean"), route
/// addresses, and RFC 2047 encoded words in display names, quoted or not.
fn split_address_list(value: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut element = AddressElement::default();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut inner = String::new();
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                inner.push(escaped);
                            }
                        }
                        _ => inner.push(q),
                    }
                }
                element.written.push('"');
                element.written.push_str(&inner);
                element.written.push('"');
                element.phrase.push_str(&inner);
            }
            '(' => {
                let mut depth = 1;
                let mut comment = String::new();
                while let Some(q) = chars.next() {
                    match q {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                comment.push(escaped);
                            }
                            continue;
                        }
                        _ => {}
                    }
                    comment.push(q);
                }
                element.comments.push(comment);
                element.written.push(' ');
            }
            '<' => {
                let mut inner = String::new();
                let mut quoted = false;
                for q in chars.by_ref() {
                    match q {
                        '"' => quoted = !quoted,
                        '>' if !quoted => break,
                        _ => {}
                    }
                    inner.push(q);
                }
                element.angle = Some(inner);
            }
            '[' => {
                element.written.push(c);
                for q in chars.by_ref() {
                    element.written.push(q);
                    if q == ']' {
                        break;
                    }
                }
            }
            ',' | ';' => {
                out.extend(element.finish());
                element = AddressElement::default();
            }
            ':' if element.angle.is_none() => {
                // A group's display name (RFC 5322 §3.4): its members follow.
                element = AddressElement::default();
            }
            _ => {
                element.written.push(c);
                element.phrase.push(c);
            }
        }
    }
    out.extend(element.finish());
    out
}

#[derive(Default)]
struct AddressElement {
    /// The element as written outside angle brackets, comments blanked.
    written: String,
    /// The same with quoted strings unquoted: the display name when there are angle brackets.
    phrase: String,
    comments: Vec<String>,
    angle: Option<String>,
}

impl AddressElement {
    fn finish(self) -> Option<(Option<String>, String)> {
        let comment_name = || {
            let joined = self.comments.join(" ");
            display_name(&joined)
        };
        match &self.angle {
            Some(inner) => {
                let inner = inner.trim();
                // Obsolete route (RFC 5322 §4.4): `<@relay1,@relay2:user@host>`.
                let address = if inner.starts_with('@') {
                    inner.rsplit_once(':').map_or(inner, |(_, a)| a)
                } else {
                    inner
                };
                let address = address.trim();
                if address.is_empty() {
                    return None;
                }
                let name = display_name(&self.phrase).or_else(comment_name);
                Some((name, address.to_owned()))
            }
            None => {
                let tokens = split_outside_quotes(&self.written);
                let at = tokens
                    .iter()
                    .rposition(|t| t.contains('@'))
                    .or(tokens.len().checked_sub(1))?;
                // An unclosed `[` or quote can carry a blank into the token: trim it, so the
                // address is never written with one.
                let address = tokens.get(at)?.trim().to_string();
                if address.is_empty() {
                    return None;
                }
                let others: Vec<&str> = tokens
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != at)
                    .map(|(_, t)| t.trim_matches('"'))
                    .collect();
                let name = display_name(&others.join(" ")).or_else(comment_name);
                Some((name, address))
            }
        }
    }
}

/// Splits on blanks that are not inside a quoted string.
fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if let Some(s) = start.take() {
                tokens.extend(text.get(s..i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        tokens.extend(text.get(s..));
    }
    tokens
}

fn display_name(phrase: &str) -> Option<String> {
    let name = normalize_inline(&decode_encoded_words(phrase));
    (!name.is_empty()).then_some(name)
}

/// Decodes RFC 2047 encoded words. Blanks between adjacent encoded words are dropped (§6.2),
/// and adjacent words in the same charset are decoded together, so a character split across
/// two words (which §5 forbids but senders do) survives.
fn decode_encoded_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending: Option<(String, Vec<u8>)> = None;
    let mut blanks = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("=?")
            && let Some((charset, bytes, used)) = encoded_word(rest)
        {
            match &mut pending {
                Some((open, buffer)) if *open == charset => buffer.extend_from_slice(&bytes),
                _ => {
                    if let Some((open, buffer)) = pending.take() {
                        out.push_str(&decode_charset(&buffer, Some(&open)));
                    }
                    pending = Some((charset, bytes));
                }
            }
            blanks.clear();
            rest = rest.get(used..).unwrap_or_default();
            continue;
        }
        if c.is_whitespace() && pending.is_some() {
            blanks.push(c);
        } else {
            if let Some((open, buffer)) = pending.take() {
                out.push_str(&decode_charset(&buffer, Some(&open)));
            }
            out.push_str(&blanks);
            blanks.clear();
            out.push(c);
        }
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
    }
    if let Some((open, buffer)) = pending {
        out.push_str(&decode_charset(&buffer, Some(&open)));
    }
    out.push_str(&blanks);
    out
}

/// Parses `=?charset?B|Q?text?=` at the start of `s`: (charset, bytes, length used).
///
/// Every scan stops at the first `?` or at a byte no encoded word can hold, so decoding a
/// header stays linear whatever it contains.
fn encoded_word(s: &str) -> Option<(String, Vec<u8>, usize)> {
    let body = s.strip_prefix("=?")?;
    let (charset, after) = until_question_mark(body)?;
    let (encoding, after) = until_question_mark(after)?;
    let (payload, after) = until_question_mark(after)?;
    if charset.is_empty() || charset.len() > 64 || encoding.len() != 1 || !after.starts_with('=') {
        return None;
    }
    // RFC 2231 §5: `charset*language`.
    let charset = charset
        .split('*')
        .next()
        .unwrap_or(charset)
        .to_ascii_lowercase();
    let bytes = match encoding {
        "B" | "b" => decode_base64(payload.as_bytes()),
        "Q" | "q" => {
            let underscores: Vec<u8> = payload
                .bytes()
                .map(|b| if b == b'_' { b' ' } else { b })
                .collect();
            decode_quoted_printable(&underscores)
        }
        _ => return None,
    };
    // Everything up to and including the final `=`.
    let used = s.len() - after.len() + 1;
    Some((charset, bytes, used))
}

/// Splits `text` at its first `?` when only printable ASCII comes before it.
fn until_question_mark(text: &str) -> Option<(&str, &str)> {
    let len = text
        .bytes()
        .take_while(|&b| b != b'?' && b.is_ascii_graphic())
        .count();
    let (head, tail) = text.split_at_checked(len)?;
    Some((head, tail.strip_prefix('?')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count as first written, a byte at a time: the reference for the one that jumps.
    fn count_content_type_fields_bytewise(raw: &[u8]) -> usize {
        const NAME: &[u8] = b"content-type:";
        let (mut count, mut matched) = (0, 0);
        for &byte in raw {
            if byte != b'\n' && byte.is_ascii_whitespace() {
                continue;
            }
            let lower = byte.to_ascii_lowercase();
            if NAME.get(matched) == Some(&lower) {
                matched += 1;
                if matched == NAME.len() {
                    count += 1;
                    matched = 0;
                }
            } else {
                matched = usize::from(lower == b'c');
            }
        }
        count
    }

    #[test]
    fn content_type_fields_are_counted_as_the_parser_reads_names() {
        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"Content-Type: text/plain\r\n", 1),
            (b"content-type:x\r\nCONTENT-TYPE:y", 2),
            (b"C o n t e n t - T y p e :", 1),
            (b"Content\t-Type\x0c:", 1),
            (b"Content-Type\x0b:", 0),
            (b"Content-\nType:", 0),
            (b"ccContent-Type:", 1),
            (b"Content-Typ", 0),
            (b"Content-Type:Content-Type:", 2),
            (b"Content-TypeContent-Type:", 1),
            (b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxc", 0),
            (b"\xc3\xa9Content-Type:\xe2\x82\xac", 1),
        ];
        for (raw, want) in cases {
            assert_eq!(
                count_content_type_fields(raw),
                *want,
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(count_content_type_fields_bytewise(raw), *want);
        }
    }

    proptest::proptest! {
        /// Over text made of the name's own letters, blanks and noise, where partial matches
        /// and restarts abound.
        #[test]
        fn content_type_count_jumps_to_the_same_result(
            raw in proptest::collection::vec(
                proptest::sample::select(b"cCoOnNtTeE-yYpP: \t\n\rx\xc3".to_vec()),
                0..400,
            )
        ) {
            proptest::prop_assert_eq!(
                count_content_type_fields(&raw),
                count_content_type_fields_bytewise(&raw)
            );
        }
    }

    /// [`split_lines`] as it was written first, byte by byte: what the jumps must agree with.
    fn split_lines_bytewise(text: &str) -> Vec<&str> {
        let bytes = text.as_bytes();
        let mut lines = Vec::new();
        let (mut start, mut i) = (0, 0);
        while let Some(&byte) = bytes.get(i) {
            let separator_len = match byte {
                b'\n' => 1,
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => 2,
                b'\r' => 1,
                0xC2 if bytes.get(i + 1) == Some(&0x85) => 2,
                0xE2 if matches!(bytes.get(i + 1..i + 3), Some([0x80, 0xA8 | 0xA9])) => 3,
                _ => {
                    i += 1;
                    continue;
                }
            };
            lines.push(&text[start..i]);
            i += separator_len;
            start = i;
        }
        lines.push(&text[start..]);
        lines
    }

    #[test]
    fn lines_split_on_every_line_end() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[""]),
            ("one", &["one"]),
            (
                "a\r\nb\rc\nd\u{2028}e\u{2029}f\u{85}g",
                &["a", "b", "c", "d", "e", "f", "g"],
            ),
            ("\r\n\r\n", &["", "", ""]),
            ("end\n", &["end", ""]),
            // Lead bytes of other characters: no split.
            (
                "caf\u{e9}\u{a0}x \u{2019}quote\u{2014}dash \u{2026}",
                &["caf\u{e9}\u{a0}x \u{2019}quote\u{2014}dash \u{2026}"],
            ),
            (
                "\u{2019}\u{2028}\u{2019}\n\u{a0}\u{85}",
                &["\u{2019}", "\u{2019}", "\u{a0}", ""],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(split_lines(text), *want, "{text:?}");
        }
    }

    proptest::proptest! {
        /// Over text made of every line end, the characters that share their lead bytes, and
        /// plain letters.
        #[test]
        fn lines_split_by_jumps_as_byte_by_byte(
            chars in proptest::collection::vec(
                proptest::sample::select(vec![
                    'a', ' ', '\n', '\r', '\u{85}', '\u{a0}', '\u{e9}', '\u{2028}', '\u{2029}',
                    '\u{2019}', '\u{2014}', '\u{20ac}', '\u{1f600}',
                ]),
                0..200,
            )
        ) {
            let text: String = chars.into_iter().collect();
            proptest::prop_assert_eq!(split_lines(&text), split_lines_bytewise(&text));
        }
    }

    proptest::proptest! {
        /// The sweeps over ASCII say what the character-by-character rule says.
        #[test]
        fn ascii_lines_are_judged_as_characters_are(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"a~  \t\x01\x7f!".to_vec()),
                0..80,
            )
        ) {
            let line = String::from_utf8(bytes).unwrap();
            proptest::prop_assert_eq!(
                ascii_is_normalized(line.as_bytes()),
                chars_are_normalized(&line)
            );
        }
    }

    fn opts() -> BodyOptions {
        BodyOptions::default()
    }

    /// The case-blind comparisons agree with lowercasing the whole text, first characters that
    /// lowercase to something else (the Kelvin sign to `k`, `İ` to two characters) included.
    #[test]
    fn lowercase_comparisons_are_lowercasing_the_text() {
        let texts = [
            "Sent from my iPhone",
            "SENT FROM MY PHONE",
            "sent",
            "",
            "\u{212a}ey",
            "İnviato da",
            "Envoyé de mon iPad",
            "ÉNVOYÉ",
            "Von meinem iPhone gesendet",
            "von meinem GESENDET",
            "Σent",
            "x",
        ];
        let patterns = [
            "sent from my ",
            "sent",
            "key",
            "i̇nviato",
            "inviato",
            "envoyé de mon ",
            "von meinem ",
            "gesendet",
            "σent",
            "",
        ];
        for text in texts {
            let lower = text.to_lowercase();
            for p in patterns {
                assert_eq!(
                    lowercase_starts_with(text, p),
                    lower.starts_with(p),
                    "{text:?} starts with {p:?}"
                );
                assert_eq!(
                    lowercase_ends_with(text, p),
                    lower.ends_with(p),
                    "{text:?} ends with {p:?}"
                );
            }
        }
    }

    fn mail(headers: &str, body: &str) -> Vec<u8> {
        format!("{headers}\r\n\r\n{body}")
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes()
    }

    #[test]
    fn options_deserialize_with_defaults_and_refuse_unknown_keys() {
        let cases: &[(&str, Option<BodyOptions>)] = &[
            ("", Some(BodyOptions::default())),
            (
                "subject = \"body-only\"\nstrip_quoted = false",
                Some(BodyOptions {
                    subject: SubjectPolicy::BodyOnly,
                    strip_quoted: false,
                    ..BodyOptions::default()
                }),
            ),
            (
                "subject = \"subject-only\"\nmax_mime_parts = 7",
                Some(BodyOptions {
                    subject: SubjectPolicy::SubjectOnly,
                    max_mime_parts: 7,
                    ..BodyOptions::default()
                }),
            ),
            ("subject = \"subject_only\"", None),
            ("strip_quotes = true", None),
        ];
        for (text, expected) in cases {
            let got = toml::from_str::<BodyOptions>(text).ok();
            assert_eq!(&got, expected, "options {text:?}");
        }
    }

    #[test]
    fn subject_prefixes_are_removed() {
        let cases = [
            ("Re: Livraison", "Livraison", false),
            ("RE: TR: Fwd: Livraison", "Livraison", false),
            ("TR : Réunion", "Réunion", true),
            ("Fwd: Re: x", "x", true),
            ("AW: WG: Termin", "Termin", false),
            ("WG: Termin", "Termin", true),
            ("RV: Reunión", "Reunión", true),
            ("Réf. : Client Durand", "Client Durand", false),
            ("Re[2]: Status", "Status", false),
            ("Re(3): Status", "Status", false),
            ("Re: ", "", false),
            ("Remarque: attention", "Remarque: attention", false),
            ("Trajet: Lyon", "Trajet: Lyon", false),
            ("Meeting: 10:00", "Meeting: 10:00", false),
            ("", "", false),
        ];
        for (subject, cleaned, forward) in cases {
            assert_eq!(
                clean_subject(subject),
                (cleaned.to_owned(), forward),
                "subject {subject:?}"
            );
        }
    }

    #[test]
    fn subject_policy_composes_as_documented() {
        use SubjectPolicy::*;
        let cases = [
            (
                "Livraison",
                "Colis arrivé",
                SubjectAndBody,
                "Livraison: Colis arrivé",
            ),
            (
                "Urgent!",
                "Rappelle-moi",
                SubjectAndBody,
                "Urgent! Rappelle-moi",
            ),
            ("", "Colis arrivé", SubjectAndBody, "Colis arrivé"),
            ("Livraison", "", SubjectAndBody, "Livraison"),
            (
                "Call me back",
                "Call me back when you can",
                SubjectAndBody,
                "Call me back when you can",
            ),
            (
                "Call me back…",
                "Call me back when you can",
                SubjectAndBody,
                "Call me back when you can",
            ),
            ("Car", "Cargo arrived", SubjectAndBody, "Car: Cargo arrived"),
            (
                "Cargo arr…",
                "Cargo arrived",
                SubjectAndBody,
                "Cargo arrived",
            ),
            (
                "Inventaire",
                "Inventaire terminé",
                SubjectAndBody,
                "Inventaire terminé",
            ),
            (
                "call  ME back",
                "Call me\nback please",
                SubjectAndBody,
                "Call me\nback please",
            ),
            ("Livraison", "Colis arrivé", BodyOnly, "Colis arrivé"),
            ("Livraison", "", BodyOnly, "Livraison"),
            ("Livraison", "Colis arrivé", SubjectOnly, "Livraison"),
            ("", "Colis arrivé", SubjectOnly, "Colis arrivé"),
            ("", "", SubjectAndBody, ""),
        ];
        for (subject, body, policy, expected) in cases {
            assert_eq!(
                compose(subject, body, policy),
                expected,
                "{subject:?} {body:?} {policy:?}"
            );
        }
    }

    #[test]
    fn quoted_printable_decodes_leniently() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"caf=C3=A9", "café".as_bytes()),
            (b"long line=\r\ncontinued", b"long linecontinued"),
            (b"soft with blanks=  \r\nnext", b"soft with blanksnext"),
            (b"bare lf=\nnext", b"bare lfnext"),
            (b"trailing   \r\nnext", b"trailing\nnext"),
            (b"kept=20\r\nnext", b"kept \nnext"),
            (b"a=3Db =XZ =", b"a=b =XZ "),
            (b"kept blank =\r\nnext", b"kept blank next"),
            (b"lower =c3=a9", "lower é".as_bytes()),
            (b"==41", b"=A"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                decode_quoted_printable(input),
                expected.to_vec(),
                "qp {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn base64_decodes_leniently() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"SGVsbG8gd29ybGQ=", b"Hello world"),
            (b"SGVs\r\nbG8g\r\nd29y\r\nbGQ=\r\n", b"Hello world"),
            (b"SGVsbG8=SGk=", b"HelloHi"),
            (b"SGVsbG8gd29yb", b"Hello wor"),
            (b"SGV*sbG8", b"Hello"),
            (b"", b""),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_base64(input), expected.to_vec());
        }
    }

    #[test]
    fn charsets_decode_with_fallbacks() {
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"caf\xe9", Some("iso-8859-1"), "café"),
            (b"\xa4 5", Some("ISO-8859-15"), "€ 5"),
            (b"\x93ok\x94 \x85", Some("windows-1252"), "“ok” …"),
            (b"\xf0\xd2\xc9\xd7\xc5\xd4", Some("koi8-r"), "Привет"),
            (
                b"\x82\xb1\x82\xf1\x82\xc9\x82\xbf\x82\xcd",
                Some("shift_jis"),
                "こんにちは",
            ),
            (b"\xc4\xe3\xba\xc3", Some("gb2312"), "你好"),
            ("café".as_bytes(), Some("us-ascii"), "café"),
            ("café".as_bytes(), Some("iso-8859-1"), "café"),
            (b"caf\xe9", Some("utf-8"), "café"),
            (
                "caf\u{e9} \u{fffd}".as_bytes(),
                Some("utf-8"),
                "café \u{fffd}",
            ),
            (b"caf\xc3\xa9 \xff", Some("utf-8"), "café \u{fffd}"),
            (b"caf\xe9", None, "café"),
            ("café".as_bytes(), None, "café"),
            (b"caf\xe9", Some("x-unknown-8bit"), "café"),
            (b"caf\xc3\xa9 caf\xc3", Some("utf-8"), "café caf"),
            (b"caf\xc3", Some("utf-8"), "caf\u{c3}"),
            (b"\"quoted\"", Some("\"utf-8\""), "\"quoted\""),
        ];
        for (bytes, label, expected) in cases {
            assert_eq!(&decode_charset(bytes, *label), expected, "label {label:?}");
        }
    }

    #[test]
    fn flowed_text_is_joined() {
        let cases: &[(&[&str], bool, &[&str])] = &[
            (
                &["Hello ", "world", "next"],
                false,
                &["Hello world", "next"],
            ),
            (&["Hello ", "world"], true, &["Helloworld"]),
            (
                &["> quoted ", "> more", "reply"],
                false,
                &["> quoted more", "reply"],
            ),
            (
                &["> quoted ", "not quoted"],
                false,
                &["> quoted ", "not quoted"],
            ),
            (&[" From stuffed", "x"], false, &["From stuffed", "x"]),
            (&["text", "-- ", "Jean"], false, &["text", "-- ", "Jean"]),
            (&[">> deep ", ">> er"], false, &[">> deep er"]),
        ];
        for (lines, delsp, expected) in cases {
            assert_eq!(&unflow(lines, *delsp), expected, "flowed {lines:?}");
        }
    }

    #[test]
    fn lines_are_normalized() {
        let cases = [
            ("  a \t b  ", "a b"),
            ("a\u{a0}\u{a0}b", "a b"),
            ("\u{feff}zero\u{200b}width\u{2060}", "zerowidth"),
            ("nul\0byte\u{7}", "nulbyte"),
            ("soft\u{ad}hyphen", "softhyphen"),
            (
                "family 👨\u{200d}👩\u{200d}👧",
                "family 👨\u{200d}👩\u{200d}👧",
            ),
            ("\u{3000}全角\u{3000}", "全角"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_line(input), expected, "line {input:?}");
        }
        assert_eq!(
            split_lines("a\r\nb\rc\nd\u{2028}e"),
            ["a", "b", "c", "d", "e"]
        );
    }

    #[test]
    fn history_and_signatures_are_cut() {
        let cases: &[(&str, bool, &str)] = &[
            (
                "Yes.\n\nOn Tue, 3 Mar 2026 at 10:00, Jean <j@x.fr> wrote:\n> Ok?",
                false,
                "Yes.",
            ),
            (
                "Yes.\nOn Tue, Mar 3, 2026 at 10:00 AM Jean Dupont <\njean@x.fr> wrote:\n> Ok?",
                false,
                "Yes.",
            ),
            (
                "Oui.\nLe mar. 3 mars 2026 à 10:00, Jean <j@x.fr> a écrit :\n> Ok ?",
                false,
                "Oui.",
            ),
            (
                "Ja.\nAm 03.03.2026 um 10:00 schrieb Jean Dupont:\n> Ok?",
                false,
                "Ja.",
            ),
            (
                "Sí.\nEl mar, 3 mar 2026 a las 10:00, Jean (<j@x.es>) escribió:\n> ¿Ok?",
                false,
                "Sí.",
            ),
            (
                "Le client a écrit :\nmerci",
                false,
                "Le client a écrit :\nmerci",
            ),
            (
                "Here is what I wrote:\nhello",
                false,
                "Here is what I wrote:\nhello",
            ),
            (
                "inline\n> q1\nanswer 1\n> q2\nanswer 2",
                false,
                "inline\nanswer 1\nanswer 2",
            ),
            (
                "Ok\n-----Original Message-----\nFrom: J\nSent: x\n\nold",
                false,
                "Ok",
            ),
            (
                "Ok\n\nFrom: Jean\nSent: Tuesday, March 3, 2026 10:00\nTo: Paul\nSubject: x\n\nold",
                false,
                "Ok",
            ),
            (
                "Ok\n\nDe : Jean\nEnvoyé : mardi 3 mars 2026 10:00\nÀ : Paul\nObjet : x\n\nold",
                false,
                "Ok",
            ),
            (
                "Ok\n________________________________\nFrom: Jean\nSent: x\nTo: y\n\nold",
                false,
                "Ok",
            ),
            (
                "From: Paris\nTo Lyon by train",
                false,
                "From: Paris\nTo Lyon by train",
            ),
            ("Text\n-- \nJean Dupont\nACME", false, "Text"),
            ("Text\n--\nJean Dupont", false, "Text"),
            ("Text\n--\n-- \nJean Dupont", false, "Text"),
            (
                "Text\n--\n1\n2\n3\n4\n5\n6\n7\n8\n9",
                false,
                "Text\n--\n1\n2\n3\n4\n5\n6\n7\n8\n9",
            ),
            ("Text\n\nSent from my iPhone", false, "Text"),
            ("Texte\n\nEnvoyé de mon iPhone", false, "Texte"),
            (
                "Text\n\nGet Outlook for Android<https://aka.ms/ghei36>",
                false,
                "Text",
            ),
            ("Text\nVon meinem iPhone gesendet", false, "Text"),
            (
                "\n---------- Forwarded message ---------\nFrom: Jean <j@x>\nDate: Tue\nSubject: s\nTo: p\n\n\nForwarded body\n",
                false,
                "Forwarded body",
            ),
            (
                "FYI\n\n---------- Forwarded message ---------\nFrom: Jean <j@x>\n\nForwarded body",
                false,
                "FYI",
            ),
            (
                "Sent from my iPhone\n\nBegin forwarded message:\n\n> From: Jean <j@x>\n> Subject: s\n> \n> Body line\n> -- \n> Jean",
                false,
                "Body line",
            ),
            (
                "\nFrom: Jean\nSent: x\nTo: y\nSubject: s\n\nOld text",
                true,
                "Old text",
            ),
            (
                "\nFrom: Jean\nSent: x\nTo: y\nSubject: s\n\nOld text",
                false,
                "",
            ),
        ];
        for (text, forward, expected) in cases {
            assert_eq!(
                &clean_body(text, &opts(), *forward),
                expected,
                "body {text:?}"
            );
        }
    }

    #[test]
    fn stripping_can_be_turned_off() {
        let text = "Yes\n-- \nJean\nOn Tue, 3 Mar 2026 at 10:00, Jean <j@x.fr> wrote:\n> Ok?";
        let cases = [
            (true, true, "Yes"),
            (false, true, "Yes"),
            (true, false, "Yes\n--\nJean"),
            (
                false,
                false,
                "Yes\n--\nJean\nOn Tue, 3 Mar 2026 at 10:00, Jean <j@x.fr> wrote:\n> Ok?",
            ),
        ];
        for (strip_quoted, strip_signature, expected) in cases {
            let o = BodyOptions {
                strip_quoted,
                strip_signature,
                ..opts()
            };
            assert_eq!(
                clean_body(text, &o, false),
                expected,
                "{strip_quoted} {strip_signature}"
            );
        }
    }

    #[test]
    fn html_converts_to_lines() {
        let cases = [
            (
                "<div>one</div><div>two&nbsp;three &amp; &eacute;</div>",
                "one\ntwo\u{a0}three & é\n",
            ),
            (
                "<ul><li>a</li><li>b</li></ul><ol start=3><li>c</li></ol>",
                "- a\n- b\n3. c\n",
            ),
            (
                "<table><tr><td>x</td><td>y</td></tr><tr><td>z</td></tr></table>",
                "x y\nz\n",
            ),
            ("a<br>b<br/><br>c", "a\nb\n\nc\n"),
            (
                "<head><style>p{color:red}</style><title>T</title></head><p>x</p>",
                "x\n",
            ),
            (
                "<script>alert('<p>')</script>ok<!-- hidden <b>x</b> -->!",
                "ok!\n",
            ),
            (
                "<a href=\"http://x\">link</a> <img src=cid:i alt=logo>",
                "link\n",
            ),
            (
                "<p class=MsoNormal>Bonjour<o:p></o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p>",
                "Bonjour\n\u{a0}\n",
            ),
            ("<![if !supportLists]>1.<![endif]>Item", "1.Item\n"),
            ("a <b>bold</b>\n   text", "a bold text\n"),
            (
                "x < y and &#8217;&#146;&#x1F600;&bogus; &amp",
                "x < y and ’’😀&bogus; &\n",
            ),
            (
                "<p>Hi</p><blockquote type=\"cite\"><div>old</div><blockquote class=gmail_quote>older</blockquote></blockquote>",
                "Hi\n> old\n> > older\n",
            ),
            (
                "<blockquote style=\"margin:0 0 0 40px; border: none\">indented</blockquote>",
                "indented\n",
            ),
            ("<pre>a  b\n c</pre>", "a  b\n c\n"),
            (
                "<div>x<div class=\"gmail_signature\">Jean</div></div>",
                "x\n-- \nJean\n",
            ),
            ("unterminated <b", "unterminated\n"),
            ("<p>a</p", "a\n"),
        ];
        for (html, expected) in cases {
            assert_eq!(html_to_text(html, true), expected, "html {html:?}");
        }
        assert_eq!(
            html_to_text(
                "<div>x<div class=\"gmail_signature\">Jean</div></div>",
                false
            ),
            "x\nJean\n"
        );
    }

    #[test]
    fn encoded_words_decode() {
        let cases = [
            ("=?UTF-8?Q?Fran=C3=A7ois_M=C3=BCller?=", "François Müller"),
            (
                "=?ISO-8859-1?Q?Jos=E9?= =?ISO-8859-1?Q?_Garc=EDa?=",
                "José García",
            ),
            ("=?utf-8?B?w6k=?= plain =?utf-8?b?w6g=?=", "é plain è"),
            ("=?UTF-8?B?4pyI?= =?UTF-8?B?77iP?=", "✈️"),
            ("=?UTF-8?B?8J+Y?= =?UTF-8?B?gA==?=", "😀"),
            ("=?utf-8*fr?Q?caf=C3=A9?=", "café"),
            ("=?bogus", "=?bogus"),
            ("a =?utf-8?Q?b?= c", "a b c"),
            ("=?utf-8?X?abc?=", "=?utf-8?X?abc?="),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_encoded_words(input), expected, "words {input:?}");
        }
    }

    #[test]
    fn address_lists_split_tolerantly() {
        type Expected<'a> = &'a [(Option<&'a str>, &'a str)];
        let cases: &[(&str, Expected<'_>)] = &[
            ("Paul@+33477858589@sms", &[(None, "Paul@+33477858589@sms")]),
            (
                "\"Paul@+33477858589\"@sms",
                &[(None, "\"Paul@+33477858589\"@sms")],
            ),
            (
                "\"Paul@+33477858589\"@sms.example.com, Paul@+33477858589@sms",
                &[
                    (None, "\"Paul@+33477858589\"@sms.example.com"),
                    (None, "Paul@+33477858589@sms"),
                ],
            ),
            (
                "Paul <Paul@+33477858589@sms>",
                &[(Some("Paul"), "Paul@+33477858589@sms")],
            ),
            (
                "\"Martin, Paul\" <\"Paul@+33477858589\"@sms>",
                &[(Some("Martin, Paul"), "\"Paul@+33477858589\"@sms")],
            ),
            (
                "Paul%+33477858589%sms@gw.example.com",
                &[(None, "Paul%+33477858589%sms@gw.example.com")],
            ),
            (
                "jean@x.fr (Jean Dupont)",
                &[(Some("Jean Dupont"), "jean@x.fr")],
            ),
            ("Jean (bureau) <jean@x.fr>", &[(Some("Jean"), "jean@x.fr")]),
            ("undisclosed-recipients:;", &[]),
            (
                "Team: a@x.fr, \"B\" <b@y.fr>;, c@z.fr",
                &[(None, "a@x.fr"), (Some("B"), "b@y.fr"), (None, "c@z.fr")],
            ),
            (
                "=?UTF-8?Q?Fran=C3=A7ois?= <f@x.fr>",
                &[(Some("François"), "f@x.fr")],
            ),
            (
                "\"=?ISO-8859-1?Q?Ren=E9?=\" <r@x.fr>",
                &[(Some("René"), "r@x.fr")],
            ),
            ("<@relay.example:paul@x.fr>", &[(None, "paul@x.fr")]),
            (
                "<+33477858589@sms.example.com>",
                &[(None, "+33477858589@sms.example.com")],
            ),
            (
                "Jean Dupont jean@x.fr",
                &[(Some("Jean Dupont"), "jean@x.fr")],
            ),
            ("a@x.fr,, ,b@y.fr", &[(None, "a@x.fr"), (None, "b@y.fr")]),
            ("user@[192.0.2.1]", &[(None, "user@[192.0.2.1]")]),
            ("\"unterminated <x@y>", &[(None, "\"unterminated <x@y>\"")]),
            // Found by fuzzing: an unclosed `[` swallowed a quote and the blank after it.
            ("Pau[12@rms\" ", &[(None, "Pau[12@rms\"")]),
            ("", &[]),
        ];
        for (value, expected) in cases {
            let got = split_address_list(value);
            let expected: Vec<(Option<String>, String)> = expected
                .iter()
                .map(|(n, a)| (n.map(str::to_owned), (*a).to_owned()))
                .collect();
            assert_eq!(got, expected, "list {value:?}");
        }
    }

    #[test]
    fn header_recipients_reads_raw_fields() {
        let raw = mail(
            "From sender@x Tue Mar  3 10:00:00 2026\n\
             Delivered-To: Paul@+33477858589@sms\n\
             X-Original-To: Paul@+33477858589@sms\n\
             From: Jean <jean@x.fr>\n\
             To: \"Paul Martin\" <Paul@+33477858589@sms>,\n \"Anne@+33612345678\"@sms\n\
             Cc: =?UTF-8?Q?Ren=C3=A9e?= <renee@x.fr>\n\
             Bcc: hidden@x.fr\n\
             Subject: x",
            "To: not-a-header@x.fr\n",
        );
        let expected = vec![
            (
                Some("Paul Martin".to_owned()),
                "Paul@+33477858589@sms".to_owned(),
            ),
            (None, "\"Anne@+33612345678\"@sms".to_owned()),
            (Some("Renée".to_owned()), "renee@x.fr".to_owned()),
        ];
        assert_eq!(header_recipients(&raw), expected);
        let latin = b"To: Ren\xe9 <r@x.fr>\n\nbody";
        assert_eq!(
            header_recipients(latin),
            vec![(Some("René".to_owned()), "r@x.fr".to_owned())]
        );
        assert_eq!(header_recipients(b""), Vec::new());
    }

    /// A field name with a character other than a blank before its colon is not `From` here,
    /// nor for the DMARC check (`mail-auth`): a forged sender cannot hide behind it.
    #[test]
    fn odd_field_names_are_not_from() {
        let names: &[&[u8]] = &[
            b"From\x0b",
            b"From\x0c",
            b"From\xc2\xa0",
            b"From\xc2\x85",
            b"X-Note: a\r\nFrom\x0b",
        ];
        for name in names {
            let mut raw = name.to_vec();
            raw.extend_from_slice(b": boss@example.com\r\nFrom: x@evil.test\r\n\r\nHello\r\n");
            let ours = extract(&raw, &BodyOptions::default())
                .ok()
                .and_then(|i| i.from);
            let theirs = mail_auth::AuthenticatedMessage::parse(&raw)
                .map(|m| m.froms().to_vec())
                .unwrap_or_default();
            let name = String::from_utf8_lossy(name);
            assert_eq!(ours.as_deref(), Some("x@evil.test"), "{name:?}");
            assert_eq!(theirs, ["x@evil.test"], "{name:?}");
        }
    }

    #[test]
    fn mail_metadata_is_read() {
        let raw = mail(
            "Message-ID: <c@x.fr>\n\
             References: <a@x.fr>\n <b@x.fr>\n\
             In-Reply-To: <b@x.fr>\n\
             From: \"Dupont, Jean\" <jean@x.fr>\n\
             Disposition-Notification-To: Jean <jean@x.fr>\n\
             Return-Receipt-To: receipts@x.fr\n\
             Subject: =?UTF-8?Q?Re:_R=C3=A9union?=",
            "Ok",
        );
        let info = extract(&raw, &opts()).expect("extract");
        assert_eq!(
            info,
            MailInfo {
                message_id: Some("c@x.fr".into()),
                from: Some("jean@x.fr".into()),
                subject: Some("Re: Réunion".into()),
                text: "Réunion: Ok".into(),
                auto_submitted: false,
                disposition_notification_to: Some("jean@x.fr".into()),
                return_receipt_to: Some("receipts@x.fr".into()),
                in_reply_to_chain: vec!["a@x.fr".into(), "b@x.fr".into(), "c@x.fr".into()],
            }
        );
    }

    #[test]
    fn subjects_decode_where_mail_parser_does_not() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"Subject: =?UTF-8?B?UkU6IFRSOiBDb21tYW5kZSBuwrA=?=\r\n =?UTF-8?B?MTIzNDUg4oCTIHJldGFyZA==?=",
                "RE: TR: Commande n°12345 – retard",
            ),
            (b"Subject: =?UTF-8?B?8J+Y?= =?UTF-8?B?gA==?=", "😀"),
            (b"Subject: Caf\xe9 8bit", "Café 8bit"),
            (b"Subject: =?ISO-8859-1?Q?R=E9union?= de\r\n\tchantier", "Réunion de chantier"),
        ];
        for (header, expected) in cases {
            let mut raw = header.to_vec();
            raw.extend_from_slice(b"\r\n\r\nbody");
            let info = extract(&raw, &opts()).expect("extract");
            assert_eq!(info.subject.as_deref(), Some(*expected));
        }
    }

    #[test]
    fn reply_chain_follows_rfc5322() {
        let cases: &[(&str, &[&str])] = &[
            ("Message-ID: <m@x>", &["m@x"]),
            ("Message-ID: <m@x>\nIn-Reply-To: <p@x>", &["p@x", "m@x"]),
            ("Message-ID: <m@x>\nIn-Reply-To: <p@x> <q@x>", &["m@x"]),
            (
                "Message-ID: <m@x>\nReferences: <r@x>\nIn-Reply-To: <p@x>",
                &["r@x", "m@x"],
            ),
            ("References: <r@x>", &["r@x"]),
            ("Subject: none", &[]),
        ];
        for (headers, expected) in cases {
            let info =
                extract(&mail(&format!("{headers}\nSubject: s"), "b"), &opts()).expect("extract");
            assert_eq!(info.in_reply_to_chain, *expected, "headers {headers:?}");
        }
    }

    #[test]
    fn auto_submitted_is_detected() {
        let cases = [
            ("Auto-Submitted: auto-replied", true),
            ("Auto-Submitted: auto-generated; owner-email=x@y", true),
            ("Auto-Submitted: no", false),
            ("Auto-Submitted: No (ordinary)", false),
            ("Precedence: bulk", true),
            ("Precedence: list", true),
            ("Precedence: junk", true),
            ("Precedence: first-class", false),
            (
                "Content-Type: multipart/report; report-type=delivery-status; boundary=b",
                true,
            ),
            ("X-Mailer: x", false),
        ];
        for (header, expected) in cases {
            let body = if header.contains("multipart") {
                "--b\ncontent-type: text/plain\n\nbounced\n--b--\n"
            } else {
                "text"
            };
            let info =
                extract(&mail(&format!("Subject: s\n{header}"), body), &opts()).expect("extract");
            assert_eq!(info.auto_submitted, expected, "header {header:?}");
        }
    }

    #[test]
    fn errors_have_kinds_and_sentences() {
        let small = BodyOptions {
            max_input_bytes: 10,
            ..opts()
        };
        let cases: Vec<(Vec<u8>, BodyOptions, &str, &str)> = vec![
            (
                mail("Subject: long", "text"),
                small,
                "TooLarge",
                "the mail is 21 bytes long, more than the limit of 10 bytes",
            ),
            (
                b"just some text\r\nmore\r\n".to_vec(),
                opts(),
                "Unparseable",
                "the mail cannot be read: no header section was found",
            ),
            // mail-parser reads a line without a colon at the end of input as a field name.
            (
                b"no header here".to_vec(),
                opts(),
                "NoText",
                "the mail has neither a text part nor a subject",
            ),
            (
                b"".to_vec(),
                opts(),
                "Unparseable",
                "the mail cannot be read: no header section was found",
            ),
            (
                mail("From: a@b", ""),
                opts(),
                "NoText",
                "the mail has neither a text part nor a subject",
            ),
            (
                mail("Subject: Re:", "\n> quoted only\n"),
                opts(),
                "NoText",
                "the mail has neither a text part nor a subject",
            ),
        ];
        for (raw, o, kind, sentence) in cases {
            let err = extract(&raw, &o).expect_err("must fail");
            assert_eq!((err.kind(), err.to_string().as_str()), (kind, sentence));
        }
    }

    fn nested_messages(levels: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for i in 0..levels {
            raw.extend_from_slice(
                format!("Subject: level {i}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
            );
        }
        raw.extend_from_slice(b"Subject: innermost\r\n\r\nbody\r\n");
        raw
    }

    fn base64(data: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for (n, chunk) in data.chunks(3).enumerate() {
            if n > 0 && n % 19 == 0 {
                out.push_str("\r\n");
            }
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Regression: nested attached messages once overflowed the stack (an abort). The walk is
    /// run on a 2 MiB thread, the default for tokio workers.
    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let plain = nested_messages(50_000);
        let mut encoded = b"Subject: outer\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        encoded.extend_from_slice(base64(&nested_messages(5_000)).as_bytes());
        let mut digest =
            b"Subject: d\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n".to_vec();
        for _ in 0..2000 {
            digest.extend_from_slice(b"--d\r\n\r\nSubject: part\r\n\r\nx\r\n");
        }
        digest.extend_from_slice(b"--d--\r\n");
        let results = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                [plain, encoded, digest]
                    .iter()
                    .map(|raw| extract(raw, &BodyOptions::default()).map(|i| i.text))
                    .collect::<Vec<_>>()
            })
            .expect("spawn")
            .join()
            .expect("no overflow");
        assert_eq!(
            results,
            vec![
                Err(BodyError::TooComplex {
                    measure: Complexity::MimeParts,
                    found: 50_000,
                    limit: 100
                }),
                Ok("outer".to_owned()),
                Err(BodyError::TooComplex {
                    measure: Complexity::MimeParts,
                    found: 2001,
                    limit: 100
                }),
            ]
        );
    }

    /// Shapes that once cost time quadratic in their size; at these sizes a quadratic pass
    /// would keep the test running for hours.
    #[test]
    fn hostile_shapes_are_handled_in_linear_time() {
        let dashes = "--\n".repeat(200_000);
        assert_eq!(clean_body(&dashes, &opts(), false).lines().count(), 199_991);

        let styles = "<style>x</style>a".repeat(50_000);
        assert_eq!(
            html_to_text(&styles, true),
            format!("{}\n", "a".repeat(50_000))
        );

        let words = "=?a?B?".repeat(200_000);
        assert_eq!(decode_encoded_words(&words), words);

        let to: Vec<String> = (0..50_000).map(|i| format!("u{i}@x.fr")).collect();
        let raw = format!("To: {}\r\n\r\nbody", to.join(", "));
        assert_eq!(header_recipients(raw.as_bytes()).len(), 50_000);

        let forwards = "Begin forwarded message:\n".repeat(100_000);
        let raw = mail("Subject: Fwd: chain", &forwards);
        assert_eq!(
            extract(&raw, &opts()).map(|i| i.text),
            Ok("chain".to_owned())
        );
    }

    #[test]
    fn structure_limits_apply() {
        let nested = |levels: usize| {
            let mut raw = String::from("Subject: deep\r\n");
            for i in 0..levels {
                raw.push_str(&format!(
                    "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
                ));
            }
            raw.push_str("Content-Type: text/plain\r\n\r\ninnermost\r\n");
            for i in (0..levels).rev() {
                raw.push_str(&format!("--b{i}--\r\n"));
            }
            raw.into_bytes()
        };
        let cases = [
            (nested(3), opts(), Ok("deep: innermost".to_owned())),
            (
                nested(12),
                opts(),
                Err(BodyError::TooComplex {
                    measure: Complexity::MimeDepth,
                    found: 11,
                    limit: 10,
                }),
            ),
            (
                nested(3),
                BodyOptions {
                    max_mime_depth: 2,
                    ..opts()
                },
                Err(BodyError::TooComplex {
                    measure: Complexity::MimeDepth,
                    found: 3,
                    limit: 2,
                }),
            ),
            (
                nested(3),
                BodyOptions {
                    max_mime_parts: 3,
                    ..opts()
                },
                Err(BodyError::TooComplex {
                    measure: Complexity::MimeParts,
                    found: 4,
                    limit: 3,
                }),
            ),
        ];
        for (raw, o, expected) in cases {
            assert_eq!(extract(&raw, &o).map(|i| i.text), expected);
        }
    }

    #[test]
    fn parts_are_chosen_and_decoded() {
        let alternative = |plain: &str, html: &str| {
            mail(
                "Subject: s\nContent-Type: multipart/alternative; boundary=\"a\"",
                &format!(
                    "--a\nContent-Type: text/plain; charset=utf-8\n\n{plain}\n--a\nContent-Type: text/html\n\n{html}\n--a--\n"
                ),
            )
        };
        let cases = [
            (alternative("plain wins", "<p>html</p>"), "s: plain wins"),
            (alternative("", "<p>html only</p>"), "s: html only"),
            (alternative("> quoted", "<p>also</p><blockquote type=cite>quoted</blockquote>"), "s: also"),
            (
                mail("Subject: s\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable", "caf=E9 =\nau lait"),
                "s: café au lait",
            ),
            (
                mail("Subject: s\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: BASE64", "Y2Fmw6k="),
                "s: café",
            ),
            (
                b"Subject: s\r\nContent-Type: text/html\r\n\r\n<meta charset=\"iso-8859-7\">\xe1\xe2".to_vec(),
                "s: αβ",
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                extract(&raw, &opts()).map(|i| i.text),
                Ok(expected.to_owned())
            );
        }
    }

    /// `marker` and `is_attribution` reject a text by its last and first characters before
    /// lowercasing it: lowercasing must give ':' and '-' only from themselves.
    #[test]
    fn lowercasing_makes_no_colon_or_dash() {
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            if c != ':' && c != '-' {
                assert!(!c.to_lowercase().any(|l| l == ':' || l == '-'), "{c:?}");
            }
        }
    }
}
