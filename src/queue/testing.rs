//! Builders shared by the tests of the queue and of what feeds it.

use crate::modem::pdu::Timestamp;
use crate::queue::{Change, NewRecipient, NewRequest, Source, Store};

/// A mail from paul@example.org to `number` alone, its text cut in `parts` parts, with an
/// optional Message-ID.
pub fn request_to(number: &str, parts: usize, message_id: Option<&str>) -> NewRequest {
    NewRequest {
        source: Source::Smtp,
        client: None,
        helo: None,
        auth_user: None,
        mail_from: "paul@example.org".into(),
        sender: "paul@example.org".into(),
        sender_domain: "example.org".into(),
        message_id: message_id.map(str::to_string),
        subject: None,
        dsn_envid: None,
        dsn_ret: None,
        text: "x".repeat(parts),
        encoding: crate::sms::Encoding::Gsm7,
        parts: (0..parts).map(|i| format!("part {i}")).collect(),
        truncated: false,
        size: 10,
        headers: Vec::new(),
        recipients: vec![NewRecipient {
            address: format!("{number}@sms"),
            number: number.into(),
            name: None,
            country: Some("FR".into()),
            dsn_notify: None,
            dsn_orcpt: None,
        }],
    }
}

/// A TP-SCTS (or TP-DT) in UTC for `ms`, Unix milliseconds, rounded down to the second.
pub fn stamp(ms: i64) -> Timestamp {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap();
    Timestamp {
        year: u16::try_from(t.year()).unwrap(),
        month: u8::from(t.month()),
        day: t.day(),
        hour: t.hour(),
        minute: t.minute(),
        second: t.second(),
        offset_quarters: 0,
    }
}

/// Marks `part` `sending` on `channel`, as a worker does before its `AT+CMGS`.
pub async fn mark_sending(store: &Store, part: i64, channel: &str) {
    store
        .change(Change::Sending {
            part,
            channel: channel.into(),
        })
        .await
        .unwrap();
}
