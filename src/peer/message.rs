//! What travels in the PDUs of a peer link, sans-IO: a forwarded message in a `submit_sm`, a
//! delivery receipt in a `deliver_sm`, a workload report in a `data_sm`, and back.
//!
//! **A forwarded message** is one recipient's whole text, not its parts one by one: the parts of
//! a concatenated SMS must leave from one SIM to be joined by the handset (TS 23.040
//! §9.2.3.24.1), so the site that sends them must have them all, and it cuts the text itself.
//! The text travels in `message_payload` (SMPP 3.4 §5.3.2.32, up to 64 KiB) as UCS-2
//! (`data_coding` 8, §5.2.19), which carries any text the origin accepted. The origin's id for
//! the message travels in a vendor-specific optional parameter, [`TAG_ORIGIN_ID`] (the range
//! 0x1400–0x3FFF, §5.3.2): the receiving site stores a message once per (peer, origin id),
//! however often it arrives (invariant 4), so the origin can send it again whenever it did not
//! hear `submit_sm_resp`.
//!
//! **From an ordinary SMPP client** (an application, Python's `smpplib`), a `submit_sm` carries
//! its text in `short_message` or `message_payload`, in the GSM default alphabet unpacked
//! (`data_coding` 0, §5.2.19), IA5/ASCII (1), Latin-1 (3) or UCS-2 (8); other codings are refused.
//!
//! **A delivery receipt** is a `deliver_sm` with `esm_class` "MC delivery receipt" (§5.2.12)
//! whose text has the format of SMPP 3.4 Appendix B (`id:… sub:… dlvrd:… submit date:… done
//! date:… stat:DELIVRD err:… text:…`), and the optional parameters `receipted_message_id` and
//! `message_state` (§5.3.2.12, §5.3.2.35), which is what clients read in practice.
//!
//! **A hand-over message** ([`HandOverPdu`], see `peer::handover`) is a `data_sm` with no text
//! and no addresses whose vendor-specific optional parameters list origin ids, one per line:
//! [`TAG_ASK`] (the receiving site asks whether these are its to send), [`TAG_YOURS`] and
//! [`TAG_NOT_YOURS`] (the origin's answers, or its unasked confirmation). `data_sm` is the one
//! SMPP 3.4 operation either end of a bind may send (§4.7) and that carries no short message.

use rusmpp::pdus::{DataSm, DeliverSm, SubmitSm};

use crate::route::workload::{TAG_QUEUE_LEN, TAG_THROUGHPUT, WorkloadReport};
use rusmpp::tlvs::{
    MessageDeliveryRequestTlvValue, MessageSubmissionRequestTlvValue, TlvTag, TlvValue,
};
use rusmpp::types::{AnyOctetString, COctetString, OctetString};
use rusmpp::values::{
    DataCoding, EsmClass, MCDeliveryReceipt, MessagePayload, MessageState, MessageType, Npi,
    RegisteredDelivery, Ton,
};

/// Optional parameter tag (SMPP 3.4 §5.3.2, vendor-specific range): the origin site's id for a
/// forwarded message, `<request id>/<recipient index>`, as octets (no NUL).
pub const TAG_ORIGIN_ID: u16 = 0x1F10;

/// Optional parameter tag: origin ids of messages the receiving site holds and asks about.
pub const TAG_ASK: u16 = 0x1F11;
/// Optional parameter tag: origin ids of messages that are the receiving site's to send.
pub const TAG_YOURS: u16 = 0x1F12;
/// Optional parameter tag: origin ids of messages that are not the receiving site's.
pub const TAG_NOT_YOURS: u16 = 0x1F13;

/// At most this many ids in one list: 400 ids of 40 octets are 16 KB, well inside a PDU.
pub const MAX_IDS: usize = 400;

/// An origin id longer than this is no id this gateway made (`<request id>/<index>`).
const MAX_ID_LEN: usize = 100;

/// A message forwarded from another site, or submitted by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The origin's id ([`TAG_ORIGIN_ID`]); `None` from a client that is not a site.
    pub origin_id: Option<String>,
    /// E.164 with `+`.
    pub number: String,
    /// Whoever sent it asked for a delivery receipt (`registered_delivery`, §5.2.17).
    pub wants_receipt: bool,
    pub text: String,
}

/// Why a `submit_sm` cannot be taken; each maps to an SMPP `command_status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(
        "the destination address `{0}` is not an international number (digits, with + or TON international)"
    )]
    BadNumber(String),
    #[error(
        "data_coding {0:#04x} is not one this gateway reads (0 GSM, 1 ASCII, 3 Latin-1, 8 UCS-2)"
    )]
    Coding(u8),
    #[error("the UCS-2 text has an odd number of octets or an unpaired surrogate")]
    BadUcs2,
    #[error("the message is empty")]
    Empty,
    #[error("esm_class says the message starts with a user data header, but it is cut short")]
    BadUdh,
    #[error("the text is too long to forward in one message_payload")]
    TooLong,
}

/// The `submit_sm` that forwards `text` for `number` (E.164, `+` optional) with the origin's id.
pub fn forward(origin_id: &str, number: &str, text: &str) -> Result<SubmitSm, MessageError> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    let dest = COctetString::<1, 21>::from_string(digits.to_string())
        .map_err(|_| MessageError::BadNumber(number.to_string()))?;
    let ucs2: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    if ucs2.len() > usize::from(u16::MAX) {
        return Err(MessageError::TooLong);
    }
    Ok(SubmitSm::builder()
        .dest_addr_ton(Ton::International)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(dest)
        .registered_delivery(RegisteredDelivery::new(
            MCDeliveryReceipt::McDeliveryReceiptRequestedWhereFinalDeliveryOutcomeIsSuccessOrFailure,
            Default::default(),
            Default::default(),
            0,
        ))
        .data_coding(DataCoding::Ucs2)
        .push_tlv(MessageSubmissionRequestTlvValue::MessagePayload(
            MessagePayload::new(AnyOctetString::from_vec(ucs2)),
        ))
        .push_tlv(MessageSubmissionRequestTlvValue::Other {
            tag: TlvTag::Other(TAG_ORIGIN_ID),
            value: AnyOctetString::from_slice(origin_id.as_bytes()),
        })
        .build())
}

/// Reads a `submit_sm` from a peer or a client.
pub fn incoming(s: &SubmitSm) -> Result<Incoming, MessageError> {
    let raw = s.destination_addr.as_str();
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    // A national number (TON other than international) cannot be placed without knowing the
    // client's country; clients of a gateway between countries give E.164.
    let international = s.dest_addr_ton == Ton::International || raw.starts_with('+');
    if !international
        || digits.is_empty()
        || digits.len() > 20
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MessageError::BadNumber(raw.to_string()));
    }
    let mut origin_id = None;
    let mut payload: Option<&[u8]> = None;
    for tlv in s.tlvs() {
        match tlv.value() {
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.as_ref()),
            Some(TlvValue::Other { tag, value }) if *tag == TlvTag::Other(TAG_ORIGIN_ID) => {
                origin_id = Some(String::from_utf8_lossy(value.as_ref()).into_owned());
            }
            _ => {}
        }
    }
    // §5.3.2.32: message_payload, when present, is the text and short_message is empty.
    let bytes = payload.unwrap_or_else(|| s.short_message().as_ref());
    let bytes = skip_udh(u8::from(s.esm_class), bytes)?;
    let text = decode_text(u8::from(s.data_coding), bytes)?;
    if text.is_empty() {
        return Err(MessageError::Empty);
    }
    Ok(Incoming {
        origin_id,
        number: format!("+{digits}"),
        wants_receipt: s.registered_delivery.mc_delivery_receipt()
            != MCDeliveryReceipt::NoMcDeliveryReceiptRequested,
        text,
    })
}

/// The message's octets after its user data header, when esm_class sets UDHI (SMPP 3.4
/// §5.2.12, bit 6; the header is UDHL and UDHL octets, 3GPP TS 23.040 §9.2.3.24). A client
/// that splits a long text itself sends each part with a concatenation header: the header is
/// not text. Each such part is then a message of its own here, sent as its own SMS (this site
/// cuts a text into parts itself; a client keeps a long text whole with message_payload).
fn skip_udh(esm_class: u8, bytes: &[u8]) -> Result<&[u8], MessageError> {
    const UDHI: u8 = 0x40;
    if esm_class & UDHI == 0 {
        return Ok(bytes);
    }
    let udhl = usize::from(*bytes.first().ok_or(MessageError::BadUdh)?);
    bytes.get(1 + udhl..).ok_or(MessageError::BadUdh)
}

/// Octets in a `data_coding` (SMPP 3.4 §5.2.19) to text.
pub fn decode_text(data_coding: u8, bytes: &[u8]) -> Result<String, MessageError> {
    match data_coding {
        // MC default alphabet: the GSM 7-bit default alphabet, one septet per octet.
        0 => Ok(crate::sms::gsm7::decode(
            &bytes.iter().map(|b| b & 0x7F).collect::<Vec<_>>(),
        )),
        1 => Ok(bytes.iter().map(|&b| char::from(b & 0x7F)).collect()),
        3 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        8 => {
            if !bytes.len().is_multiple_of(2) {
                return Err(MessageError::BadUcs2);
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| MessageError::BadUcs2)
        }
        other => Err(MessageError::Coding(other)),
    }
}

/// How a message ended, as a receipt says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Undeliverable,
    Expired,
}

impl Outcome {
    /// The `stat` word of SMPP 3.4 Appendix B.
    pub fn stat(self) -> &'static str {
        match self {
            Outcome::Delivered => "DELIVRD",
            Outcome::Undeliverable => "UNDELIV",
            Outcome::Expired => "EXPIRED",
        }
    }

    fn state(self) -> MessageState {
        match self {
            Outcome::Delivered => MessageState::Delivered,
            Outcome::Undeliverable => MessageState::Undeliverable,
            Outcome::Expired => MessageState::Expired,
        }
    }
}

/// A delivery receipt as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The `message_id` the receiving site gave in its `submit_sm_resp`.
    pub message_id: String,
    pub outcome: Outcome,
}

/// The `deliver_sm` receipt for the message the receiving site called `message_id` (its
/// `submit_sm_resp` id), sent to `number`. `submitted` and `done` are `YYMMDDhhmm`.
pub fn receipt(
    message_id: &str,
    number: &str,
    outcome: Outcome,
    submitted: &str,
    done: &str,
) -> DeliverSm {
    let delivered = u8::from(outcome == Outcome::Delivered);
    // SMPP 3.4 Appendix B; `sub` and `dlvrd` count messages (one here).
    let text = format!(
        "id:{message_id} sub:001 dlvrd:{delivered:03} submit date:{submitted} done date:{done} stat:{} err:000 text:",
        outcome.stat()
    );
    let digits = number.strip_prefix('+').unwrap_or(number);
    let mut b = DeliverSm::builder()
        .esm_class(EsmClass::new(
            Default::default(),
            MessageType::ShortMessageContainsMCDeliveryReceipt,
            Default::default(),
            Default::default(),
        ))
        .push_tlv(MessageDeliveryRequestTlvValue::MessageState(
            outcome.state(),
        ));
    if let Ok(src) = COctetString::<1, 21>::from_string(digits.to_string()) {
        b = b
            .source_addr_ton(Ton::International)
            .source_addr_npi(Npi::Isdn)
            .source_addr(src);
    }
    if let Ok(id) = COctetString::<1, 65>::from_string(message_id.to_string()) {
        b = b.push_tlv(MessageDeliveryRequestTlvValue::ReceiptedMessageId(id));
    }
    // Appendix B text is ASCII and short (the id is at most 64 octets): it fits 255 octets.
    if let Ok(sm) = OctetString::<0, 255>::from_slice(text.as_bytes()) {
        b = b.short_message(sm);
    }
    b.build()
}

/// Reads a delivery receipt; `None` for a `deliver_sm` that is not one (a mobile-originated
/// message, which a peer link does not carry).
pub fn parse_receipt(d: &DeliverSm) -> Option<Receipt> {
    if d.esm_class.message_type != MessageType::ShortMessageContainsMCDeliveryReceipt {
        return None;
    }
    let (mut id, mut state) = (None, None);
    for tlv in d.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(v)) => id = Some(v.as_str().to_string()),
            Some(TlvValue::MessageState(s)) => state = Some(*s),
            _ => {}
        }
    }
    // Without the optional parameters, the Appendix B text says the same.
    let text = String::from_utf8_lossy(d.short_message().as_ref()).into_owned();
    let field = |name: &str| {
        text.split(' ')
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let message_id = id.or_else(|| field("id:"))?;
    let outcome = match state {
        Some(MessageState::Delivered) => Outcome::Delivered,
        Some(MessageState::Expired) => Outcome::Expired,
        Some(_) => Outcome::Undeliverable,
        None => match field("stat:")?.as_str() {
            "DELIVRD" => Outcome::Delivered,
            "EXPIRED" => Outcome::Expired,
            _ => Outcome::Undeliverable,
        },
    };
    Some(Receipt {
        message_id,
        outcome,
    })
}

/// The `data_sm` that carries this site's workload to a peer (see [`crate::route::workload`]):
/// no text, no addresses, the two figures as vendor-specific optional parameters.
pub fn workload(report: &WorkloadReport) -> DataSm {
    let mut b = DataSm::builder();
    for (tag, v) in [
        (TAG_QUEUE_LEN, report.queue_len),
        (TAG_THROUGHPUT, report.throughput_milli),
    ] {
        b = b.push_tlv(MessageSubmissionRequestTlvValue::Other {
            tag: TlvTag::Other(tag),
            value: AnyOctetString::from_slice(&v.to_be_bytes()),
        });
    }
    b.build()
}

/// Reads a workload report from a `data_sm`; `None` when it carries none (or a malformed one,
/// which costs nothing: reports are snapshots and the next one comes a second later).
pub fn parse_workload(d: &DataSm) -> Option<WorkloadReport> {
    // Re-encode the vendor parameters as tag, length, value and let the one decoder read them.
    let mut raw = Vec::new();
    for tlv in d.tlvs() {
        if let Some(TlvValue::Other { tag, value }) = tlv.value() {
            let bytes: &[u8] = value.as_ref();
            raw.extend_from_slice(&u16::from(*tag).to_be_bytes());
            raw.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
            raw.extend_from_slice(bytes);
        }
    }
    WorkloadReport::decode(&raw).ok().flatten()
}

/// The lists of a hand-over `data_sm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandOverPdu {
    pub ask: Vec<String>,
    pub yours: Vec<String>,
    pub not_yours: Vec<String>,
}

impl HandOverPdu {
    pub fn is_empty(&self) -> bool {
        self.ask.is_empty() && self.yours.is_empty() && self.not_yours.is_empty()
    }
}

/// The `data_sm` carrying `h`; lists longer than [`MAX_IDS`], and ids that are not short
/// printable ASCII, are refused (the caller splits lists; ids come from this gateway).
pub fn handover(h: &HandOverPdu) -> Result<DataSm, MessageError> {
    let mut b = DataSm::builder();
    for (tag, ids) in [
        (TAG_ASK, &h.ask),
        (TAG_YOURS, &h.yours),
        (TAG_NOT_YOURS, &h.not_yours),
    ] {
        if ids.is_empty() {
            continue;
        }
        if ids.len() > MAX_IDS || !ids.iter().all(|i| valid_id(i)) {
            return Err(MessageError::TooLong);
        }
        b = b.push_tlv(MessageSubmissionRequestTlvValue::Other {
            tag: TlvTag::Other(tag),
            value: AnyOctetString::from_vec(ids.join("\n").into_bytes()),
        });
    }
    Ok(b.build())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads a hand-over `data_sm`; `None` when it carries none of the three lists (a workload
/// report). Ids that cannot be one this gateway made are left out, and a list is cut at
/// [`MAX_IDS`]: a peer cannot make this site look up more than that per PDU.
pub fn parse_handover(d: &DataSm) -> Option<HandOverPdu> {
    let mut h = HandOverPdu::default();
    let mut any = false;
    for tlv in d.tlvs() {
        let Some(TlvValue::Other { tag, value }) = tlv.value() else {
            continue;
        };
        let list = match u16::from(*tag) {
            TAG_ASK => &mut h.ask,
            TAG_YOURS => &mut h.yours,
            TAG_NOT_YOURS => &mut h.not_yours,
            _ => continue,
        };
        any = true;
        let bytes: &[u8] = value.as_ref();
        list.extend(
            bytes
                .split(|b| *b == b'\n')
                .filter_map(|i| std::str::from_utf8(i).ok())
                .filter(|i| valid_id(i))
                .take(MAX_IDS)
                .map(str::to_string),
        );
        list.truncate(MAX_IDS);
    }
    any.then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_lists_read_back_and_bad_ids_are_left_out() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (ask, yours, not yours)
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&["01J9ZK3Q4M7V/0"], &[], &[]),
            (&[], &["a/0", "b/1", "c/2"], &["d/0"]),
            (&[], &[], &["only/0"]),
        ];
        for (ask, yours, not_yours) in cases {
            let h = HandOverPdu {
                ask: ids(ask),
                yours: ids(yours),
                not_yours: ids(not_yours),
            };
            assert_eq!(parse_handover(&handover(&h).unwrap()), Some(h.clone()));
        }
        // A workload report is not a hand-over message.
        let w = workload(&crate::route::workload::WorkloadReport::new(1, 1.0));
        assert_eq!(parse_handover(&w), None);
        // Ids this gateway cannot have made are refused when writing...
        for bad in ["", "with space/0", "new\nline/0", &"x".repeat(101)] {
            let h = HandOverPdu {
                yours: ids(&[bad]),
                ..Default::default()
            };
            assert_eq!(handover(&h), Err(MessageError::TooLong), "{bad:?}");
        }
        let too_many = HandOverPdu {
            ask: (0..=MAX_IDS).map(|i| format!("r/{i}")).collect(),
            ..Default::default()
        };
        assert_eq!(handover(&too_many), Err(MessageError::TooLong));
        // ...and left out when read (a peer's bytes are input like any other).
        let raw = DataSm::builder()
            .push_tlv(MessageSubmissionRequestTlvValue::Other {
                tag: TlvTag::Other(TAG_NOT_YOURS),
                value: AnyOctetString::from_slice(b"ok/1\n\nbad id\n\xff\xfe/0\nok/2"),
            })
            .build();
        assert_eq!(
            parse_handover(&raw),
            Some(HandOverPdu {
                not_yours: ids(&["ok/1", "ok/2"]),
                ..Default::default()
            })
        );
        let flood = DataSm::builder()
            .push_tlv(MessageSubmissionRequestTlvValue::Other {
                tag: TlvTag::Other(TAG_ASK),
                value: AnyOctetString::from_vec(
                    (0..MAX_IDS * 2)
                        .map(|i| format!("r/{i}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                        .into_bytes(),
                ),
            })
            .build();
        assert_eq!(parse_handover(&flood).map(|h| h.ask.len()), Some(MAX_IDS));
    }

    #[test]
    fn a_forwarded_message_reads_back_with_its_origin_id() {
        for text in ["Hello", "Prix : 12 € – à bientôt", "emoji 😀 and ~^{}", ""] {
            let s = forward("0190abcd/1", "+33612345678", text).unwrap();
            let got = incoming(&s);
            if text.is_empty() {
                assert_eq!(got, Err(MessageError::Empty));
                continue;
            }
            assert_eq!(
                got.unwrap(),
                Incoming {
                    origin_id: Some("0190abcd/1".into()),
                    number: "+33612345678".into(),
                    wants_receipt: true,
                    text: text.into(),
                }
            );
        }
        // 22 digits do not fit destination_addr (21 octets with the NUL, SMPP 3.4 §4.4.1).
        assert_eq!(
            forward("x", "+3361234567890123456789", "t").unwrap_err(),
            MessageError::BadNumber("+3361234567890123456789".into())
        );
    }

    #[test]
    fn client_submits_in_each_coding() {
        // (data_coding, TON, address, octets, result)
        type Case<'a> = (
            u8,
            Ton,
            &'a str,
            &'a [u8],
            Result<(&'a str, &'a str), MessageError>,
        );
        let cases: &[Case<'_>] = &[
            (
                0,
                Ton::International,
                "447700900123",
                b"Hello",
                Ok(("+447700900123", "Hello")),
            ),
            // GSM default alphabet: 0x00 is @, 0x02 is $.
            (
                0,
                Ton::International,
                "447700900123",
                &[0x00, 0x02],
                Ok(("+447700900123", "@$")),
            ),
            (
                1,
                Ton::International,
                "447700900123",
                b"ascii",
                Ok(("+447700900123", "ascii")),
            ),
            (
                3,
                Ton::International,
                "447700900123",
                &[0xE9],
                Ok(("+447700900123", "é")),
            ),
            (
                8,
                Ton::International,
                "447700900123",
                &[0x00, 0xE9],
                Ok(("+447700900123", "é")),
            ),
            (
                8,
                Ton::International,
                "447700900123",
                &[0x00],
                Err(MessageError::BadUcs2),
            ),
            (
                8,
                Ton::International,
                "447700900123",
                &[0xD8, 0x00],
                Err(MessageError::BadUcs2),
            ),
            (
                4,
                Ton::International,
                "447700900123",
                b"x",
                Err(MessageError::Coding(4)),
            ),
            // "+" in the address counts as international whatever the TON says.
            (
                0,
                Ton::Unknown,
                "+447700900123",
                b"x",
                Ok(("+447700900123", "x")),
            ),
            (
                0,
                Ton::National,
                "07700900123",
                b"x",
                Err(MessageError::BadNumber("07700900123".into())),
            ),
            (
                0,
                Ton::International,
                "44770a",
                b"x",
                Err(MessageError::BadNumber("44770a".into())),
            ),
            (
                0,
                Ton::International,
                "447700900123",
                b"",
                Err(MessageError::Empty),
            ),
        ];
        for (dc, ton, addr, octets, want) in cases {
            let s = SubmitSm::builder()
                .dest_addr_ton(*ton)
                .destination_addr(COctetString::from_string(addr.to_string()).unwrap())
                .data_coding(DataCoding::from(*dc))
                .short_message(OctetString::from_slice(octets).unwrap())
                .build();
            let got = incoming(&s).map(|m| (m.number, m.text));
            let want = want.clone().map(|(n, t)| (n.to_string(), t.to_string()));
            assert_eq!(got, want, "dc {dc} {addr} {octets:?}");
        }
    }

    #[test]
    fn a_user_data_header_is_not_text() {
        // (esm_class, data_coding, octets, result): concatenation headers as SMPP clients
        // send them (8-bit and 16-bit references), a header in UCS-2, and headers cut short.
        type Case<'a> = (u8, u8, &'a [u8], Result<&'a str, MessageError>);
        let cases: &[Case] = &[
            (0x40, 0, b"\x05\x00\x03\x2a\x02\x01Hello", Ok("Hello")),
            (0x43, 0, b"\x06\x08\x04\x01\x2a\x02\x02 world", Ok(" world")),
            (0x40, 8, b"\x05\x00\x03\x01\x02\x01\x00H\x00i", Ok("Hi")),
            // Without UDHI the same octets are text (a client's business).
            (0x00, 0, b"Hello", Ok("Hello")),
            (
                0x40,
                0,
                b"\x05\x00\x03\x2a\x02\x01",
                Err(MessageError::Empty),
            ),
            (0x40, 0, b"\x09\x00\x03", Err(MessageError::BadUdh)),
            (0x40, 0, b"", Err(MessageError::BadUdh)),
        ];
        for (esm, dc, octets, want) in cases {
            let s = SubmitSm::builder()
                .dest_addr_ton(Ton::International)
                .destination_addr(COctetString::from_string("33612345678".to_string()).unwrap())
                .esm_class(EsmClass::from(*esm))
                .data_coding(DataCoding::from(*dc))
                .short_message(OctetString::from_slice(octets).unwrap())
                .build();
            let got = incoming(&s).map(|m| m.text);
            assert_eq!(
                got,
                want.clone().map(str::to_string),
                "esm {esm:#04x} {octets:?}"
            );
        }
    }

    #[test]
    fn receipts_round_trip_and_read_from_text_alone() {
        for outcome in [Outcome::Delivered, Outcome::Undeliverable, Outcome::Expired] {
            let d = receipt(
                "abc123",
                "+33612345678",
                outcome,
                "2611212359",
                "2611220000",
            );
            assert_eq!(
                parse_receipt(&d),
                Some(Receipt {
                    message_id: "abc123".into(),
                    outcome
                })
            );
            let text = String::from_utf8(d.short_message().as_ref().to_vec()).unwrap();
            assert!(
                text.starts_with(&format!(
                    "id:abc123 sub:001 dlvrd:00{}",
                    u8::from(outcome == Outcome::Delivered)
                )),
                "{text}"
            );
            assert!(text.contains(&format!("stat:{}", outcome.stat())), "{text}");
        }
        // A receipt as some SMSCs send it: the text only, no optional parameters.
        let d = DeliverSm::builder()
            .esm_class(EsmClass::new(
                Default::default(),
                MessageType::ShortMessageContainsMCDeliveryReceipt,
                Default::default(),
                Default::default(),
            ))
            .short_message(
                OctetString::from_slice(
                    b"id:77 sub:001 dlvrd:001 submit date:2611212359 done date:2611220000 stat:DELIVRD err:000 text:",
                )
                .unwrap(),
            )
            .build();
        assert_eq!(
            parse_receipt(&d),
            Some(Receipt {
                message_id: "77".into(),
                outcome: Outcome::Delivered
            })
        );
        // A mobile-originated message is not a receipt.
        assert_eq!(parse_receipt(&DeliverSm::builder().build()), None);
    }

    #[test]
    fn workload_reports_travel_in_a_data_sm() {
        let r = WorkloadReport::new(1234, 2.5);
        assert_eq!(parse_workload(&workload(&r)), Some(r));
        assert_eq!(parse_workload(&DataSm::builder().build()), None);
    }
}
