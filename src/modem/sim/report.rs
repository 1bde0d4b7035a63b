//! SMS-STATUS-REPORT encoder for the simulated network (3GPP TS 23.040 §9.2.2.3).
//!
//! The gateway only ever decodes status reports; the simulator has to produce them, as a real
//! SMSC does after delivering (or failing to deliver) a message whose SMS-SUBMIT asked for one.
//! Only the mandatory fields are written: TP-PI and what follows it are optional (§9.2.2.3,
//! note on TP-PI) and real SMSCs commonly omit them.

/// One status report to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport<'a> {
    /// SMSC address prepended to the TPDU, as modems do in PDU mode (TS 27.005 §3.1 `<pdu>`).
    pub smsc: &'a str,
    /// TP-MR of the SMS-SUBMIT this reports on.
    pub message_ref: u8,
    /// TP-RA: the recipient of the original message.
    pub recipient: &'a str,
    /// TP-SCTS: when the SMSC received the message, in milliseconds since the Unix epoch.
    pub sc_timestamp_ms: u64,
    /// TP-DT: when the outcome was reached, in milliseconds since the Unix epoch.
    pub discharge_ms: u64,
    /// TP-ST (§9.2.3.15): 0x00 delivered, 0x20..0x2F still trying, 0x40.. permanent failure,
    /// 0x60.. temporary failure given up.
    pub status: u8,
}

/// The encoded report: SMSC address then TPDU, and the TPDU length that `+CDS: <length>` and
/// `+CMGR: ...,<length>` announce (TS 27.005 §3.4.1: octets, SMSC address excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedReport {
    pub pdu: Vec<u8>,
    pub tpdu_len: usize,
}

/// Encodes an SMS-STATUS-REPORT with its SMSC address in front.
pub fn encode_status_report(r: &StatusReport<'_>) -> EncodedReport {
    let mut pdu = encode_smsc(r.smsc);
    let sca_len = pdu.len();
    // TP-MTI = 10 (status report), TP-MMS = 1 (no more messages waiting), TP-SRQ = 0 (the
    // report is the result of an SMS-SUBMIT), no TP-UDHI, no TP-LP (§9.2.2.3).
    pdu.push(0b0000_0110);
    pdu.push(r.message_ref);
    pdu.extend(encode_address(r.recipient));
    pdu.extend(timestamp(r.sc_timestamp_ms));
    pdu.extend(timestamp(r.discharge_ms));
    pdu.push(r.status);
    let tpdu_len = pdu.len() - sca_len;
    EncodedReport { pdu, tpdu_len }
}

/// Type of address (§9.1.2.5): extension bit set, numbering plan ISDN/E.164.
const TOA_INTERNATIONAL: u8 = 0x91;
const TOA_UNKNOWN: u8 = 0x81;

/// Digits of a number and its type of address: a leading `+` means international.
fn digits_and_toa(number: &str) -> (Vec<u8>, u8) {
    let toa = if number.starts_with('+') {
        TOA_INTERNATIONAL
    } else {
        TOA_UNKNOWN
    };
    let digits = number
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    (digits, toa)
}

/// Semi-octets, low nibble first, padded with 0xF (§9.1.2.3).
fn semi_octets(digits: &[u8]) -> Vec<u8> {
    digits
        .chunks(2)
        .map(|pair| {
            let lo = pair.first().copied().unwrap_or(0x0f);
            let hi = pair.get(1).copied().unwrap_or(0x0f);
            (hi << 4) | lo
        })
        .collect()
}

/// TP address (§9.1.2.5): length in digits, type of address, semi-octets.
pub fn encode_address(number: &str) -> Vec<u8> {
    let (digits, toa) = digits_and_toa(number);
    let mut out = vec![u8::try_from(digits.len()).unwrap_or(u8::MAX), toa];
    out.extend(semi_octets(&digits));
    out
}

/// RP SMSC address (TS 24.011 §8.2.5.2): length in octets including the type of address;
/// a lone zero octet when there is none.
pub fn encode_smsc(number: &str) -> Vec<u8> {
    let (digits, toa) = digits_and_toa(number);
    if digits.is_empty() {
        return vec![0];
    }
    let body = semi_octets(&digits);
    let mut out = vec![u8::try_from(body.len() + 1).unwrap_or(u8::MAX), toa];
    out.extend(body);
    out
}

/// A calendar date and time in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// Converts Unix milliseconds to a UTC calendar date (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
pub fn civil_from_unix_ms(ms: u64) -> Civil {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let narrow = |v: i64| u8::try_from(v).unwrap_or(0);
    let narrow_u = |v: u64| u8::try_from(v).unwrap_or(0);
    Civil {
        year,
        month: narrow(month),
        day: narrow(day),
        hour: narrow_u(rem / 3600),
        minute: narrow_u(rem % 3600 / 60),
        second: narrow_u(rem % 60),
    }
}

/// TP-SCTS / TP-DT (§9.2.3.11): seven swapped-BCD octets, year to second, then the time zone
/// in quarter hours (UTC here, so zero).
pub fn timestamp(ms: u64) -> [u8; 7] {
    let c = civil_from_unix_ms(ms);
    let yy = u8::try_from(c.year.rem_euclid(100)).unwrap_or(0);
    let bcd = |v: u8| ((v % 10) << 4) | (v / 10 % 10);
    [
        bcd(yy),
        bcd(c.month),
        bcd(c.day),
        bcd(c.hour),
        bcd(c.minute),
        bcd(c.second),
        0,
    ]
}

/// The text-mode rendering of a timestamp, `"yy/MM/dd,hh:mm:ss+zz"` (TS 27.005 §3.3.2
/// `<scts>`).
pub fn text_timestamp(ms: u64) -> String {
    let c = civil_from_unix_ms(ms);
    format!(
        "{:02}/{:02}/{:02},{:02}:{:02}:{:02}+00",
        c.year.rem_euclid(100),
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02X}")).collect()
    }

    #[test]
    fn calendar_conversion() {
        let cases: &[(u64, Civil)] = &[
            (
                0,
                Civil {
                    year: 1970,
                    month: 1,
                    day: 1,
                    hour: 0,
                    minute: 0,
                    second: 0,
                },
            ),
            (
                // 2000-02-29 23:59:59 UTC, a leap day in a century leap year.
                951_868_799_000,
                Civil {
                    year: 2000,
                    month: 2,
                    day: 29,
                    hour: 23,
                    minute: 59,
                    second: 59,
                },
            ),
            (
                // 2024-11-21 10:15:00 UTC
                1_732_184_100_000,
                Civil {
                    year: 2024,
                    month: 11,
                    day: 21,
                    hour: 10,
                    minute: 15,
                    second: 0,
                },
            ),
        ];
        for (ms, want) in cases {
            assert_eq!(civil_from_unix_ms(*ms), *want, "{ms}");
        }
        assert_eq!(text_timestamp(1_732_184_100_000), "24/11/21,10:15:00+00");
    }

    #[test]
    fn addresses() {
        let cases: &[(&str, &str, &str)] = &[
            ("+33612345678", "0B913316325476F8", "07913316325476F8"),
            ("+33609001390", "0B913306091093F0", "07913306091093F0"),
            ("0612345678", "0A816021436587", "06816021436587"),
            ("", "0081", "00"),
        ];
        for (number, tp, sca) in cases {
            assert_eq!(
                hex(&encode_address(number)),
                *tp,
                "TP address of {number:?}"
            );
            assert_eq!(
                hex(&encode_smsc(number)),
                *sca,
                "SMSC address of {number:?}"
            );
        }
    }

    #[test]
    fn status_report_bytes() {
        let r = StatusReport {
            smsc: "+33609001390",
            message_ref: 0x0c,
            recipient: "+33612345678",
            sc_timestamp_ms: 1_732_184_100_000,
            discharge_ms: 1_732_184_105_000,
            status: 0x00,
        };
        let e = encode_status_report(&r);
        assert_eq!(
            hex(&e.pdu),
            "07913306091093F0060C0B913316325476F8421112015100004211120151500000"
        );
        assert_eq!(e.tpdu_len, 25);
        let failed = encode_status_report(&StatusReport { status: 0x41, ..r });
        assert_eq!(failed.pdu.last(), Some(&0x41));
    }

    /// The gateway's decoder reads back every field the simulator writes.
    #[test]
    fn decoder_reads_what_the_encoder_writes() {
        use crate::modem::pdu::{self, Timestamp, Tpdu};
        let cases: &[(&str, u8, &str, u64, u64, u8)] = &[
            (
                "+33609001390",
                0,
                "+33612345678",
                1_732_184_100_000,
                1_732_184_105_000,
                0x00,
            ),
            (
                "+447785016005",
                255,
                "+447700900123",
                951_868_799_000,
                951_868_800_000,
                0x41,
            ),
            (
                "",
                17,
                "0612345678",
                1_795_293_160_671,
                1_795_293_260_671,
                0x60,
            ),
        ];
        let ts = |ms: u64| {
            let c = civil_from_unix_ms(ms);
            Timestamp {
                year: u16::try_from(c.year).unwrap_or(0),
                month: c.month,
                day: c.day,
                hour: c.hour,
                minute: c.minute,
                second: c.second,
                offset_quarters: 0,
            }
        };
        for &(smsc, mr, recipient, scts, dt, status) in cases {
            let e = encode_status_report(&StatusReport {
                smsc,
                message_ref: mr,
                recipient,
                sc_timestamp_ms: scts,
                discharge_ms: dt,
                status,
            });
            let (sca, tpdu) = pdu::split_sca(&e.pdu).unwrap_or_default();
            assert_eq!(tpdu.len(), e.tpdu_len, "{recipient}");
            assert_eq!(sca.len() == 1, smsc.is_empty(), "{recipient}");
            match pdu::decode(&e.pdu, true) {
                Ok(Tpdu::StatusReport(r)) => {
                    assert_eq!(r.message_ref, mr);
                    assert_eq!(r.recipient, recipient);
                    assert_eq!(r.scts, ts(scts));
                    assert_eq!(r.discharge, ts(dt));
                    assert_eq!(r.status, status);
                }
                other => panic!("{recipient}: decoded as {other:?}"),
            }
        }
    }
}
