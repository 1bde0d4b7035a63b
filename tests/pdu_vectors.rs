//! The PDU codec against PDUs that no one on this project produced.
//!
//! `sms-submit-pdus.jsonl` holds SMS-SUBMITs from an independent encoder (python-gsmmodem-new)
//! and what a second independent decoder (smspdudecoder) read from them. Our decoder must read
//! them the same way, and our encoder must produce PDUs that decode to the same number, text
//! and part count. Characters outside the Basic Multilingual Plane are not in that file (the
//! encoder cannot do them): those cases are recorded below from our encoder after smspdudecoder
//! and python-gsmmodem-new read them back correctly.
//!
//! The bodies of the fuzz targets run here too, on the committed seed inputs of every target, so
//! that their invariants are checked without a fuzzer.

use mail2sms::modem::pdu::{self, Concat, Submit, SubmitOptions, Tpdu};
use mail2sms::sms::{self, Encoding};
use serde::Deserialize;

#[path = "../fuzz/src/lib.rs"]
mod fuzz_bodies;

const FUZZ_SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds");

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/test-vectors/sms-submit-pdus.jsonl"
);

#[derive(Debug, Deserialize)]
struct Vector {
    number: String,
    text: String,
    roundtrip_ok: bool,
    parts: Vec<VectorPart>,
}

#[derive(Debug, Deserialize)]
struct VectorPart {
    pdu: String,
    tpdu_length: usize,
    text: String,
    encoding: String,
    concat: Option<VectorConcat>,
}

#[derive(Debug, Deserialize)]
struct VectorConcat {
    #[serde(rename = "ref")]
    reference: u16,
    part: u8,
    parts: u8,
}

fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| panic!("{VECTORS}: {e}"));
    let vectors: Vec<Vector> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("vector line {}: {e}", i + 1))
        })
        .collect();
    assert!(vectors.len() >= 10, "only {} vectors", vectors.len());
    vectors
}

fn decode_submit(bytes: &[u8]) -> Submit {
    match pdu::decode(bytes, true) {
        Ok(Tpdu::Submit(s)) => s,
        other => panic!("{} decoded as {other:?}", pdu::to_hex(bytes)),
    }
}

fn encoding_name(encoding: Option<Encoding>) -> &'static str {
    match encoding {
        Some(Encoding::Gsm7) => "gsm",
        Some(Encoding::Ucs2) => "ucs2",
        None => "8-bit",
    }
}

#[test]
fn third_party_pdus_decode() {
    for v in vectors() {
        assert!(v.roundtrip_ok, "{}", v.text);
        let mut joined = String::new();
        for part in &v.parts {
            let bytes = pdu::from_hex(&part.pdu).unwrap_or_else(|e| panic!("{}: {e}", part.pdu));
            let s = decode_submit(&bytes);
            assert_eq!(s.dest, v.number, "{}", part.pdu);
            assert_eq!(s.text, part.text, "{}", part.pdu);
            assert_eq!(
                encoding_name(s.alphabet.encoding()),
                part.encoding,
                "{}",
                part.pdu
            );
            assert!(s.status_report, "{}", part.pdu);
            let expected = part.concat.as_ref().map(|c| Concat {
                reference: c.reference,
                total: c.parts,
                seq: c.part,
            });
            assert_eq!(s.udh.and_then(|u| u.concat), expected, "{}", part.pdu);
            let tpdu = pdu::split_sca(&bytes).map(|(_, tpdu)| tpdu.len());
            assert_eq!(tpdu, Ok(part.tpdu_length), "{}", part.pdu);
            joined.push_str(&s.text);
        }
        assert_eq!(joined, v.text);
    }
}

#[test]
fn our_pdus_decode_like_the_vectors() {
    for v in vectors() {
        let seg = sms::segment(&v.text, None);
        let theirs: Vec<Vec<u8>> = v
            .parts
            .iter()
            .map(|p| pdu::from_hex(&p.pdu).unwrap_or_default())
            .collect();
        let first = theirs.first().cloned().unwrap_or_default();
        let opts = SubmitOptions {
            message_ref: first.get(2).copied().unwrap_or(0),
            concat_ref: v
                .parts
                .first()
                .and_then(|p| p.concat.as_ref())
                .map_or(0, |c| c.reference),
            ..SubmitOptions::default()
        };
        let ours = pdu::encode_submit(&v.number, &seg, &opts)
            .unwrap_or_else(|e| panic!("{:?}: {e}", v.text));
        assert_eq!(ours.len(), v.parts.len(), "{:?}", v.text);

        let mut joined = String::new();
        for ((our, their), part) in ours.iter().zip(&theirs).zip(&v.parts) {
            let s = decode_submit(&our.bytes);
            assert_eq!(s.dest, v.number);
            assert_eq!(encoding_name(s.alphabet.encoding()), part.encoding);
            assert_eq!(our.tpdu_len, part.tpdu_length, "{}", our.hex());
            joined.push_str(&s.text);

            // Where both encoders made the same choices the octets are the same, apart from
            // TP-MR (theirs repeats it across parts, ours counts up) and the type of number
            // for national digits (theirs says "national", ours "unknown").
            let mut normalized = our.bytes.clone();
            if let (Some(o), Some(t)) = (normalized.get_mut(2), their.get(2)) {
                *o = *t;
            }
            if !v.number.starts_with('+') {
                assert_eq!(normalized.get(4), Some(&0x81));
                if let (Some(o), Some(t)) = (normalized.get_mut(4), their.get(4)) {
                    *o = *t;
                }
            }
            assert_eq!(pdu::to_hex(&normalized), part.pdu, "{:?}", v.text);
        }
        assert_eq!(joined, v.text);
    }
}

#[test]
fn astral_plane_pdus_match_cross_checked_output() {
    // Produced by our encoder (TP-MR 0x10, concatenation reference 0x42) and read back with
    // the right number, text and concatenation header by smspdudecoder 2.2 and
    // python-gsmmodem-new 0.13.
    let zh = "0436".repeat(66);
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "+33612345678",
            "On arrive 🚆 à 18h 😀".into(),
            vec![
                "0021100B913316325476F800082A004F006E00200061007200720069007600650020D83DDE86002000E000200031003800680020D83DDE00".into(),
            ],
        ),
        (
            "+447911123456",
            "👍🏽 ok".into(),
            vec!["0021100C9144971121436500080ED83DDC4DD83CDFFD0020006F006B".into()],
        ),
        // The emoji would straddle units 67 and 68: it opens part 2 whole.
        (
            "+33612345678",
            format!("{}😀 fin", "ж".repeat(66)),
            vec![
                format!("0061100B913316325476F800088A050003420201{zh}"),
                "0061110B913316325476F8000812050003420202D83DDE00002000660069006E".into(),
            ],
        ),
    ];
    let opts = SubmitOptions {
        message_ref: 0x10,
        concat_ref: 0x42,
        ..SubmitOptions::default()
    };
    for (number, text, expected) in cases {
        let seg = sms::segment(&text, None);
        assert_eq!(seg.encoding, Encoding::Ucs2);
        let ours = pdu::encode_submit(number, &seg, &opts).unwrap_or_default();
        let hexes: Vec<String> = ours.iter().map(pdu::SubmitPdu::hex).collect();
        assert_eq!(hexes, expected, "{text:?}");
        let joined: String = ours.iter().map(|p| decode_submit(&p.bytes).text).collect();
        assert_eq!(joined, text);
    }
}

#[test]
fn escape_sequence_at_a_part_boundary_matches_cross_checked_output() {
    // 152 septets then '€': the escape sequence opens part 2. Part 2 was read back as
    // "€yyyyyyyyyyyyyyyyyyyy" by smspdudecoder 2.2.
    let text = format!("{}€{}", "x".repeat(152), "y".repeat(20));
    let seg = sms::segment(&text, None);
    let opts = SubmitOptions {
        message_ref: 0x10,
        concat_ref: 0x42,
        ..SubmitOptions::default()
    };
    let ours = pdu::encode_submit("+33612345678", &seg, &opts).unwrap_or_default();
    assert_eq!(ours.len(), 2);
    assert_eq!(
        ours.get(1).map(pdu::SubmitPdu::hex).as_deref(),
        Some("0061110B913316325476F800001D05000342020236E57C3E9FCFE7F3F97C3E9FCFE7F3F97C3E9F07")
    );
    let texts: Vec<String> = ours.iter().map(|p| decode_submit(&p.bytes).text).collect();
    assert_eq!(texts, vec!["x".repeat(152), format!("€{}", "y".repeat(20))]);
}

#[test]
fn fuzz_bodies_run_on_seed_inputs() {
    let mut pdus: Vec<Vec<u8>> = vectors()
        .iter()
        .flat_map(|v| {
            v.parts
                .iter()
                .map(|p| pdu::from_hex(&p.pdu).unwrap_or_default())
        })
        .collect();
    // Every prefix and a bit flip at every position of one concatenated PDU.
    let base = pdus.get(5).cloned().unwrap_or_default();
    for cut in 0..=base.len() {
        pdus.push(base.get(..cut).unwrap_or_default().to_vec());
    }
    for i in 0..base.len() {
        let mut flipped = base.clone();
        if let Some(b) = flipped.get_mut(i) {
            *b ^= 0x41;
        }
        pdus.push(flipped);
    }
    for bytes in &pdus {
        fuzz_bodies::pdu_decode(bytes);
        fuzz_bodies::pdu_decode(pdu::to_hex(bytes).as_bytes());
    }

    let texts = [
        String::new(),
        "Hello Paul".into(),
        format!("{}€{}", "x".repeat(152), "y".repeat(400)),
        format!("{}😀{}", "ж".repeat(66), "👍🏽".repeat(100)),
        "\u{1B}\u{0}\r\n\u{0C}\u{FEFF}\u{10FFFF}".repeat(50),
    ];
    for text in &texts {
        for control in [0x00, 0x01, 0x02, 0x80, 0x83] {
            let mut data = vec![control];
            data.extend_from_slice(text.as_bytes());
            fuzz_bodies::segment_encode(&data);
        }
    }
}

/// The files of `fuzz/seeds/TARGET/`, sorted by name.
fn fuzz_seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(FUZZ_SEEDS).join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), bytes)
        })
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 6,
        "{}: only {} seeds",
        dir.display(),
        seeds.len()
    );
    seeds
}

/// Every committed seed through its target's body. The seeds must also reach what they were
/// written for, or the fuzzer starts from shallow ground: accepted and refused addresses, mails
/// delivered by trusted and by authenticated clients, and SMS text from most mails.
#[test]
fn fuzz_bodies_run_on_committed_seeds() {
    for (_, bytes) in fuzz_seeds("pdu_decode") {
        fuzz_bodies::pdu_decode(&bytes);
    }
    for (_, bytes) in fuzz_seeds("segment_encode") {
        fuzz_bodies::segment_encode(&bytes);
    }

    let addresses = fuzz_seeds("address");
    let accepted = addresses
        .iter()
        .filter(|(_, bytes)| fuzz_bodies::address(bytes))
        .count();
    let refused = addresses.len() - accepted;
    assert!(
        accepted >= 10 && refused >= 8,
        "{accepted} accepted, {refused} refused"
    );

    let mut delivered = 0;
    let (mut authenticated_mail, mut closed) = (false, false);
    for (name, bytes) in fuzz_seeds("smtp_session") {
        let dialogue = fuzz_bodies::smtp_session(&bytes);
        assert!(dialogue.replies > 0, "{name}: {dialogue:?}");
        delivered += dialogue.delivered;
        authenticated_mail |= dialogue.tls && dialogue.authenticated && dialogue.delivered > 0;
        closed |= dialogue.closed;
    }
    assert!(
        delivered >= 8 && authenticated_mail && closed,
        "{delivered} mails delivered"
    );

    let mails = fuzz_seeds("body");
    let texts = mails
        .iter()
        .filter_map(|(_, bytes)| fuzz_bodies::body(bytes))
        .count();
    assert!(
        texts + 1 >= mails.len(),
        "SMS text from {texts} of {} mails",
        mails.len()
    );
}
