//! Delivery receipts from external SMPP providers, sans-IO: a `deliver_sm` in, the provider's
//! id for the message and how it ended out.
//!
//! SMPP 3.4 marks a receipt by `esm_class` "MC delivery receipt" (§5.2.12) and leaves its text
//! to the implementation; Appendix B gives the shape everyone copies:
//!
//! ```text
//! id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E Text: ...
//! ```
//!
//! Real SMSCs vary on it: fields in upper or mixed case (`ID:`, `Stat:`), `sub`/`dlvrd`/`text`
//! left out, dates with seconds (`YYMMDDhhmmss`), the stat word spelled out (`DELIVERED`),
//! ids in decimal, hex or UUID form (Jasmin), the text in `message_payload` rather than
//! `short_message`. The optional parameters `receipted_message_id` (0x001E, §5.3.2.12) and
//! `message_state` (0x0427, §5.3.2.35), when present, are what the provider meant and win over
//! the text.
//!
//! Some SMSCs give the id in hex in `submit_sm_resp` and in decimal in the receipt (or the
//! other way round), so a receipt is matched by [`match_keys`]: the id's [`key`] and the key
//! of the same number written in the other base.

use rusmpp::pdus::DeliverSm;
use rusmpp::tlvs::TlvValue;
use rusmpp::values::{MessageState, MessageType};

/// How a provider says the message ended (SMPP 3.4 §5.2.28 message_state; Appendix B stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    Enroute,
    Delivered,
    Expired,
    Deleted,
    Undeliverable,
    Accepted,
    Unknown,
    Rejected,
    /// SMPP 5.0 §4.7.15: skipped (e.g. a duplicate the MC dropped).
    Skipped,
}

impl Stat {
    /// The Appendix B word.
    pub fn word(self) -> &'static str {
        match self {
            Stat::Enroute => "ENROUTE",
            Stat::Delivered => "DELIVRD",
            Stat::Expired => "EXPIRED",
            Stat::Deleted => "DELETED",
            Stat::Undeliverable => "UNDELIV",
            Stat::Accepted => "ACCEPTD",
            Stat::Unknown => "UNKNOWN",
            Stat::Rejected => "REJECTD",
            Stat::Skipped => "SKIPPED",
        }
    }

    /// The TS 23.040 §9.2.3.15 TP-ST a modem's status report would carry for this outcome, so
    /// a provider's receipt goes down the modems' report path; `None` for a state that is not
    /// final (en route; accepted, i.e. read by customer service; unknown), which changes
    /// nothing and is only noted.
    pub fn tp_st(self) -> Option<u8> {
        match self {
            Stat::Delivered => Some(0x00),
            // "SM validity period expired".
            Stat::Expired => Some(0x46),
            // "SM deleted by SC administration".
            Stat::Deleted => Some(0x47),
            // "Remote procedure error": a permanent failure without a finer reason.
            Stat::Undeliverable | Stat::Rejected | Stat::Skipped => Some(0x40),
            Stat::Enroute | Stat::Accepted | Stat::Unknown => None,
        }
    }

    fn from_word(w: &str) -> Option<Stat> {
        let w = w.to_ascii_uppercase();
        Some(match w.as_str() {
            "DELIVRD" | "DELIVERED" | "DELIVER" => Stat::Delivered,
            "EXPIRED" => Stat::Expired,
            "DELETED" => Stat::Deleted,
            "UNDELIV" | "UNDELIVERABLE" | "UNDELIVERED" | "FAILED" => Stat::Undeliverable,
            "ACCEPTD" | "ACCEPTED" => Stat::Accepted,
            "UNKNOWN" => Stat::Unknown,
            "REJECTD" | "REJECTED" => Stat::Rejected,
            "ENROUTE" => Stat::Enroute,
            "SKIPPED" => Stat::Skipped,
            _ => return None,
        })
    }

    fn from_state(s: MessageState) -> Option<Stat> {
        Some(match s {
            MessageState::Enroute => Stat::Enroute,
            MessageState::Delivered => Stat::Delivered,
            MessageState::Expired => Stat::Expired,
            MessageState::Deleted => Stat::Deleted,
            MessageState::Undeliverable => Stat::Undeliverable,
            MessageState::Accepted => Stat::Accepted,
            MessageState::Unknown => Stat::Unknown,
            MessageState::Rejected => Stat::Rejected,
            MessageState::Skipped => Stat::Skipped,
            _ => return None,
        })
    }
}

/// A delivery receipt as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReceipt {
    /// The provider's id for the message, as written in the receipt.
    pub id: String,
    pub stat: Stat,
    /// The `err:` field (network or SMSC specific), when given and not all zeros.
    pub err: Option<String>,
    /// `done date:`, as written (YYMMDDhhmm or with seconds).
    pub done: Option<String>,
}

impl DeliveryReceipt {
    /// One line for an event: `stat:UNDELIV err:001`.
    pub fn summary(&self) -> String {
        match &self.err {
            Some(e) => format!("stat:{} err:{e}", self.stat.word()),
            None => format!("stat:{}", self.stat.word()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the delivery receipt names no message (no id: field and no receipted_message_id)")]
    NoId,
    #[error(
        "the delivery receipt says no outcome (no stat: field and no message_state), or one not known: `{0}`"
    )]
    NoStat(String),
}

/// The labels of Appendix B, lower case; `text:` is handled apart (it runs to the end).
const LABELS: [&str; 7] = [
    "id:",
    "sub:",
    "dlvrd:",
    "submit date:",
    "done date:",
    "stat:",
    "err:",
];

/// The fields of an Appendix B text: (label, value), in the order found. Labels are found
/// case-insensitively at the start or after white space; a value runs to the next label.
/// Nothing after `text:` is read as a field: the message's own words may look like one.
pub fn fields(text: &str) -> Vec<(&'static str, &str)> {
    let lower = text.to_ascii_lowercase();
    let at_word = |i: usize| {
        i == 0
            || lower
                .as_bytes()
                .get(i - 1)
                .is_some_and(u8::is_ascii_whitespace)
    };
    let find = |label: &str, before: usize| -> Option<usize> {
        let mut from = 0;
        while let Some(off) = lower.get(from..before)?.find(label) {
            let i = from + off;
            if at_word(i) {
                return Some(i);
            }
            from = i + label.len();
        }
        None
    };
    let end = find("text:", lower.len()).unwrap_or(lower.len());
    let mut found: Vec<(usize, &'static str)> = LABELS
        .iter()
        .filter_map(|l| find(l, end).map(|i| (i, *l)))
        .collect();
    found.sort_unstable();
    let mut out = Vec::with_capacity(found.len());
    for (k, (i, label)) in found.iter().enumerate() {
        let stop = found.get(k + 1).map_or(end, |(j, _)| *j);
        // `to_ascii_lowercase` keeps every byte where it was, so positions carry over.
        if let Some(v) = text.get(i + label.len()..stop) {
            out.push((*label, v.trim()));
        }
    }
    out
}

/// Reads a receipt's text alone.
pub fn parse_text(text: &str) -> Result<DeliveryReceipt, ReceiptError> {
    from_parts(text, None, None)
}

fn from_parts(
    text: &str,
    tlv_id: Option<String>,
    tlv_state: Option<MessageState>,
) -> Result<DeliveryReceipt, ReceiptError> {
    let f = fields(text);
    let get = |label: &str| {
        f.iter()
            .find(|(l, _)| *l == label)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    };
    let id = tlv_id
        .filter(|s| !s.is_empty())
        .or_else(|| get("id:").map(str::to_string))
        .ok_or(ReceiptError::NoId)?;
    let stat = match tlv_state.and_then(Stat::from_state) {
        Some(s) => s,
        None => {
            let w = get("stat:").unwrap_or_default();
            // A word glued to what follows (`stat:DELIVRDerr:0` has been seen): its letters.
            let word: String = w.chars().take_while(char::is_ascii_alphabetic).collect();
            Stat::from_word(&word)
                .ok_or_else(|| ReceiptError::NoStat(w.chars().take(20).collect()))?
        }
    };
    let err = get("err:")
        .map(|e| e.split_whitespace().next().unwrap_or_default().to_string())
        .filter(|e| !e.is_empty() && !e.bytes().all(|b| b == b'0'));
    Ok(DeliveryReceipt {
        id,
        stat,
        err,
        done: get("done date:").map(str::to_string),
    })
}

/// Reads a `deliver_sm`: `Ok(None)` when it is not a delivery receipt (a mobile-originated
/// message, which this gateway does not take from providers).
pub fn from_deliver_sm(d: &DeliverSm) -> Result<Option<DeliveryReceipt>, ReceiptError> {
    // §5.2.12: bits 5-2 = 0001 is an MC delivery receipt; intermediate notifications (1000)
    // are not final and carry nothing to record.
    if d.esm_class.message_type != MessageType::ShortMessageContainsMCDeliveryReceipt {
        return Ok(None);
    }
    let (mut id, mut state, mut payload) = (None, None, None);
    for tlv in d.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(v)) => id = Some(v.as_str().to_string()),
            Some(TlvValue::MessageState(s)) => state = Some(*s),
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.as_ref().to_vec()),
            _ => {}
        }
    }
    let bytes: Vec<u8> = payload.unwrap_or_else(|| d.short_message().as_ref().to_vec());
    let text = String::from_utf8_lossy(&bytes);
    from_parts(&text, id, state).map(Some)
}

/// An id as receipts are matched on: lower case, without leading zeros (`"0"` for zeros).
pub fn key(id: &str) -> String {
    let t = id.trim().to_ascii_lowercase();
    let s = t.trim_start_matches('0');
    if s.is_empty() && !t.is_empty() {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// The keys a receipt's id may have been stored under: its own, and, for an id that reads as
/// a number, the key of that number in the other base (decimal ↔ hex). Ids longer than a
/// 128-bit number are not converted.
pub fn match_keys(id: &str) -> Vec<String> {
    let own = key(id);
    let mut out = vec![own.clone()];
    let mut push = |k: String| {
        if !out.contains(&k) {
            out.push(k);
        }
    };
    if !own.is_empty()
        && own.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = own.parse::<u128>()
    {
        push(format!("{n:x}"));
    }
    if !own.is_empty()
        && own.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(n) = u128::from_str_radix(&own, 16)
    {
        push(n.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
    use rusmpp::types::{COctetString, OctetString};
    use rusmpp::values::EsmClass;

    /// Receipt texts as real SMSCs and gateways write them: (text, id, stat, err).
    const SHAPES: &[(&str, &str, Stat, Option<&str>)] = &[
        // SMPP 3.4 Appendix B, to the letter.
        (
            "id:0123456789 sub:001 dlvrd:001 submit date:0610191018 done date:0610191018 stat:DELIVRD err:000 Text:Hello world",
            "0123456789",
            Stat::Delivered,
            None,
        ),
        // Kannel (lower-case text:, an empty text).
        (
            "id:1871249 sub:001 dlvrd:000 submit date:2309121510 done date:2309121512 stat:UNDELIV err:001 text:",
            "1871249",
            Stat::Undeliverable,
            Some("001"),
        ),
        // Jasmin: UUID ids.
        (
            "id:6b7ba3ab-64ea-4a0d-b39e-5d5d5a9a6fd9 sub:001 dlvrd:001 submit date:1511011200 done date:1511011201 stat:DELIVRD err:000 text:",
            "6b7ba3ab-64ea-4a0d-b39e-5d5d5a9a6fd9",
            Stat::Delivered,
            None,
        ),
        // Hex id, dates with seconds, upper-case labels (several European SMSCs).
        (
            "ID:4F1A2B3C SUB:001 DLVRD:000 SUBMIT DATE:230912151020 DONE DATE:230913151020 STAT:EXPIRED ERR:0 TEXT:Your code is 1234",
            "4F1A2B3C",
            Stat::Expired,
            None,
        ),
        // sub and dlvrd left out; stat spelled out.
        (
            "id:88123 submit date:2401011200 done date:2401011201 stat:DELIVERED err:0",
            "88123",
            Stat::Delivered,
            None,
        ),
        // Rejected by the operator, an SMSC-specific error code.
        (
            "id:a1b2c3 sub:001 dlvrd:000 submit date:2401011200 done date:2401011200 stat:REJECTD err:0B1 text:hi",
            "a1b2c3",
            Stat::Rejected,
            Some("0B1"),
        ),
        // The message's own text looks like fields: they are not read.
        (
            "id:77 sub:001 dlvrd:000 submit date:2401011200 done date:2401011200 stat:UNDELIV err:069 text:stat:DELIVRD id:99",
            "77",
            Stat::Undeliverable,
            Some("069"),
        ),
        // En route (an intermediate receipt some SMSCs send): not final.
        (
            "id:5 sub:001 dlvrd:000 submit date:2401011200 done date:2401011200 stat:ENROUTE err:000 text:",
            "5",
            Stat::Enroute,
            None,
        ),
        ("id:9 stat:ACCEPTD err:000", "9", Stat::Accepted, None),
        ("id:10 stat:DELETED err:0", "10", Stat::Deleted, None),
        ("Id:11 Stat:UNKNOWN Err:000", "11", Stat::Unknown, None),
    ];

    #[test]
    fn receipt_texts_of_real_world_shapes() {
        for (text, id, stat, err) in SHAPES {
            let r = parse_text(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r.id, *id, "{text}");
            assert_eq!(r.stat, *stat, "{text}");
            assert_eq!(r.err.as_deref(), *err, "{text}");
        }
    }

    #[test]
    fn texts_that_are_not_receipts_are_refused_with_the_reason() {
        let cases: &[(&str, ReceiptError)] = &[
            ("", ReceiptError::NoId),
            ("hello there", ReceiptError::NoId),
            ("stat:DELIVRD err:000", ReceiptError::NoId),
            ("id:12 sub:001", ReceiptError::NoStat(String::new())),
            (
                "id:12 stat:WHATEVER",
                ReceiptError::NoStat("WHATEVER".into()),
            ),
            // `id:` inside a word is not the field.
            ("messageid:12 stat:DELIVRD", ReceiptError::NoId),
        ];
        for (text, want) in cases {
            assert_eq!(parse_text(text).as_ref().err(), Some(want), "{text}");
        }
    }

    #[test]
    fn ids_match_across_hex_and_decimal() {
        // (id in submit_sm_resp, id in the receipt, match?)
        let cases: &[(&str, &str, bool)] = &[
            ("0123456789", "123456789", true),
            ("4F1A2B3C", "4f1a2b3c", true),
            // 0x4F1A2B3C = 1327115068.
            ("4F1A2B3C", "1327115068", true),
            ("1327115068", "4F1A2B3C", true),
            ("1000", "4096", true),
            ("1000", "1001", false),
            (
                "6b7ba3ab-64ea-4a0d-b39e-5d5d5a9a6fd9",
                "6B7BA3AB-64EA-4A0D-B39E-5D5D5A9A6FD9",
                true,
            ),
            ("0", "000", true),
            ("abc", "abd", false),
        ];
        for (stored, received, want) in cases {
            let stored_key = key(stored);
            let hit = match_keys(received).contains(&stored_key);
            assert_eq!(hit, *want, "{stored} vs {received}");
        }
        // A number too long for 128 bits is matched as written only.
        assert_eq!(match_keys(&"9".repeat(60)).len(), 1);
    }

    fn deliver(esm: u8, text: &str) -> rusmpp::pdus::builders::DeliverSmBuilder {
        DeliverSm::builder()
            .esm_class(EsmClass::from(esm))
            .short_message(OctetString::from_slice(text.as_bytes()).unwrap())
    }

    #[test]
    fn the_optional_parameters_win_over_the_text() {
        // message_state says undeliverable, the text says delivered: the TLV is what counts.
        let d = deliver(0x04, "id:1 stat:DELIVRD err:000")
            .push_tlv(MessageDeliveryRequestTlvValue::ReceiptedMessageId(
                COctetString::from_string("abc".into()).unwrap(),
            ))
            .push_tlv(MessageDeliveryRequestTlvValue::MessageState(
                MessageState::Undeliverable,
            ))
            .build();
        let r = from_deliver_sm(&d).unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.stat), ("abc", Stat::Undeliverable));
        // Text alone.
        let d = deliver(0x04, "id:42 sub:001 dlvrd:001 stat:DELIVRD err:000 text:").build();
        let r = from_deliver_sm(&d).unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.stat), ("42", Stat::Delivered));
        // A mobile-originated message is not a receipt.
        let d = deliver(0x00, "id:42 stat:DELIVRD").build();
        assert_eq!(from_deliver_sm(&d), Ok(None));
        // Nor is an intermediate notification (0x20).
        let d = deliver(0x20, "id:42 stat:ENROUTE").build();
        assert_eq!(from_deliver_sm(&d), Ok(None));
    }

    #[test]
    fn final_outcomes_map_to_status_report_values() {
        use crate::modem::pdu::{StatusClass, status_class};
        let cases = [
            (Stat::Delivered, Some(StatusClass::Delivered)),
            (Stat::Expired, Some(StatusClass::Failed)),
            (Stat::Deleted, Some(StatusClass::Failed)),
            (Stat::Undeliverable, Some(StatusClass::Failed)),
            (Stat::Rejected, Some(StatusClass::Failed)),
            (Stat::Skipped, Some(StatusClass::Failed)),
            (Stat::Enroute, None),
            (Stat::Accepted, None),
            (Stat::Unknown, None),
        ];
        for (s, want) in cases {
            assert_eq!(s.tp_st().map(status_class), want, "{s:?}");
        }
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let alphabet = "id:stat:err:text:submit date:done date: DELIVRD0123é€ \t";
        let chars: Vec<char> = alphabet.chars().collect();
        for _ in 0..5000 {
            let mut s = String::new();
            for _ in 0..(rng % 60) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                s.push(chars[(rng as usize) % chars.len()]);
            }
            let _ = parse_text(&s);
            let _ = match_keys(&s);
        }
    }
}
