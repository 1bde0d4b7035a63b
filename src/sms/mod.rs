//! The text model of an SMS: which alphabet a text needs and how it splits into parts.
//!
//! An SMS carries 140 octets of user data: 160 septets in the GSM 7-bit default alphabet
//! (3GPP TS 23.038 §6.2.1, with the extension table reached through an escape septet), or 70
//! UTF-16 code units when the text needs UCS-2. A longer text travels as concatenated parts whose
//! User Data Header (TS 23.040 §9.2.3.24.1) takes 6 octets, leaving 153 septets or 67 units per
//! part. Phones join the parts without adding anything, so parts are filled completely; a
//! split never falls inside an escape sequence (a phone would show the halves as a space and a
//! wrong character) or between the two halves of a surrogate pair (two replacement glyphs).
//!
//! This module decides the encoding and the parts; [`crate::modem::pdu`] turns each part into
//! an SMS-SUBMIT. Written in-house: the available crate splits escape sequences and surrogate
//! pairs and has no tests.

pub mod gsm7;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Septets in a single, unconcatenated GSM 7-bit message: 140 octets × 8 / 7.
pub const GSM7_SINGLE: usize = 160;
/// Septets per part after an 8-bit-reference concatenation header: (140 − 6) octets, less one
/// fill bit, / 7 bits.
pub const GSM7_CONCAT: usize = 153;
/// Septets per part after a 16-bit-reference concatenation header: (140 − 7) × 8 / 7.
pub const GSM7_CONCAT_16BIT: usize = 152;
/// UTF-16 code units in a single UCS-2 message: 140 / 2.
pub const UCS2_SINGLE: usize = 70;
/// UTF-16 code units per part after an 8-bit-reference concatenation header: (140 − 6) / 2.
pub const UCS2_CONCAT: usize = 67;
/// UTF-16 code units per part after a 16-bit-reference concatenation header: (140 − 7) / 2.
pub const UCS2_CONCAT_16BIT: usize = 66;
/// Parts a concatenated message can have: the total is one octet (TS 23.040 §9.2.3.24.1).
pub const MAX_PARTS: usize = 255;

/// Appended to the last part when a text was cut to fit the allowed number of parts, so the
/// recipient can see that something is missing.
pub const TRUNCATION_MARKER: &str = " [...]";

/// The alphabet a message is sent in (TP-DCS, TS 23.038 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// GSM 7-bit default alphabet with the extension table.
    Gsm7,
    /// UCS-2, written as UTF-16 so characters outside the Basic Multilingual Plane (emoji)
    /// travel as surrogate pairs, as phones send them.
    Ucs2,
}

impl Encoding {
    /// The lowercase name also used by serde: `gsm7` or `ucs2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }

    /// Units a single, unconcatenated message holds (septets or UTF-16 units).
    pub fn single_limit(self) -> usize {
        match self {
            Encoding::Gsm7 => GSM7_SINGLE,
            Encoding::Ucs2 => UCS2_SINGLE,
        }
    }

    /// Units one part of a concatenated message holds, for an 8-bit or 16-bit reference.
    pub fn concat_limit(self, concat_16bit: bool) -> usize {
        match (self, concat_16bit) {
            (Encoding::Gsm7, false) => GSM7_CONCAT,
            (Encoding::Gsm7, true) => GSM7_CONCAT_16BIT,
            (Encoding::Ucs2, false) => UCS2_CONCAT,
            (Encoding::Ucs2, true) => UCS2_CONCAT_16BIT,
        }
    }

    /// What `c` costs in this encoding (septets or UTF-16 units), `None` if it cannot be
    /// written in it.
    pub fn char_units(self, c: char) -> Option<usize> {
        match self {
            Encoding::Gsm7 => gsm7::septet_len(c),
            Encoding::Ucs2 => Some(c.len_utf16()),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `text` costs in `encoding` (septets or UTF-16 units), `None` if a character cannot be
/// written in it.
pub fn units(text: &str, encoding: Encoding) -> Option<usize> {
    text.chars().map(|c| encoding.char_units(c)).sum()
}

/// The GSM 7-bit replacement for a look-alike character, if there is one.
fn look_alike(c: char) -> Option<&'static str> {
    Some(match c {
        // Typographic apostrophes, primes and accents used as apostrophes.
        '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' | '\u{00B4}' | '`'
        | '\u{02BC}' => "'",
        // Typographic double quotes and guillemets.
        '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{2033}' | '\u{00AB}'
        | '\u{00BB}' => "\"",
        '\u{2039}' => "<",
        '\u{203A}' => ">",
        // Hyphens, dashes and the minus sign.
        '\u{2010}'..='\u{2015}' | '\u{2212}' => "-",
        '\u{2026}' => "...",
        // Non-breaking and typographic spaces, and tabs (not in the alphabet).
        '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' | '\t' => " ",
        // Invisible characters: zero-width space, word joiner, byte order mark, soft hyphen.
        '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' => "",
        '\u{2022}' => "*",
        '\u{02C6}' => "^",
        '\u{02DC}' | '\u{2053}' => "~",
        '\u{2044}' | '\u{2215}' => "/",
        // Symbols with the same glyph as a GSM Greek capital.
        '\u{2126}' => "Ω",
        '\u{2206}' => "Δ",
        // Greek capitals drawn like Latin ones: the alphabet has only the distinct Greek
        // capitals, so all-caps Greek text stays GSM 7-bit with these.
        'Α' => "A",
        'Β' => "B",
        'Ε' => "E",
        'Ζ' => "Z",
        'Η' => "H",
        'Ι' => "I",
        'Κ' => "K",
        'Μ' => "M",
        'Ν' => "N",
        'Ο' => "O",
        'Ρ' => "P",
        'Τ' => "T",
        'Υ' => "Y",
        'Χ' => "X",
        _ => return None,
    })
}

/// Replaces look-alike characters with GSM 7-bit ones (’ → ', “ → ", – → -, … → ...,
/// non-breaking space → space, …) so that a text typed in a mail client stays GSM 7-bit,
/// which fits 160 characters per message instead of 70.
///
/// When the text would need UCS-2 anyway (an emoji, Cyrillic, …) it is returned unchanged:
/// UCS-2 carries the original characters, so replacing them would lose something for nothing.
pub fn transliterate(text: &str) -> String {
    // Without a look-alike the loop below copies the text as it is, and both of its outcomes
    // are that copy. In ASCII only the backquote and the tab have a replacement.
    let unchanged = if text.is_ascii() {
        !text.bytes().any(|b| b == b'`' || b == b'\t')
    } else {
        text.chars().all(|c| look_alike(c).is_none())
    };
    if unchanged {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match look_alike(c) {
            Some(replacement) => out.push_str(replacement),
            None => out.push(c),
        }
    }
    if gsm7::is_encodable(&out) {
        out
    } else {
        text.to_owned()
    }
}

/// GSM 7-bit when every character has a septet encoding, otherwise UCS-2.
pub fn choose_encoding(text: &str) -> Encoding {
    if gsm7::is_encodable(text) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// A text cut into the parts that are sent as separate SMS-SUBMITs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segmentation {
    /// The alphabet of every part.
    pub encoding: Encoding,
    /// The parts in order; joined, they give the text back (or, when `truncated`, a prefix of
    /// it followed by [`TRUNCATION_MARKER`]). Never empty: an empty text is one empty part.
    pub parts: Vec<String>,
    /// The text did not fit the allowed number of parts and was cut.
    pub truncated: bool,
}

/// Splits `text` into SMS parts for an 8-bit concatenation reference (the usual header).
///
/// One part holds 160 septets or 70 UTF-16 units; parts of a concatenated message hold 153
/// septets or 67 units. `max_parts` caps the number of parts (at most 255, the protocol limit,
/// which also applies when it is `None`; `Some(0)` counts as 1); a longer text is cut and its
/// last part ends with [`TRUNCATION_MARKER`].
pub fn segment(text: &str, max_parts: Option<usize>) -> Segmentation {
    segment_with(text, max_parts, false)
}

/// Like [`segment`], with the part size for a 16-bit concatenation reference when
/// `concat_16bit` is set (152 septets or 66 units per part: the header is one octet longer).
pub fn segment_with(text: &str, max_parts: Option<usize>, concat_16bit: bool) -> Segmentation {
    let max_parts = max_parts.unwrap_or(MAX_PARTS).clamp(1, MAX_PARTS);
    let encoding = choose_encoding(text);
    if encoding == Encoding::Ucs2 {
        // When the characters that need UCS-2 fall in the part that is cut off, the kept
        // prefix fits GSM 7-bit, which holds more of the text than UCS-2 would.
        let (gsm, encodable) = layout(text, Encoding::Gsm7, max_parts, concat_16bit);
        if encodable && gsm.truncated {
            return gsm;
        }
    }
    layout(text, encoding, max_parts, concat_16bit).0
}

/// Each character's byte offset and cost in GSM 7-bit (0: not encodable), for ASCII text: a
/// byte at a time, from a table.
fn ascii_costs(text: &str) -> impl Iterator<Item = (usize, u8)> + Clone + '_ {
    text.bytes()
        .enumerate()
        .map(|(i, b)| (i, gsm7::ascii_cost(b)))
}

/// Each character's byte offset and cost in `encoding` (0: not encodable), for any text.
fn char_costs(text: &str, encoding: Encoding) -> impl Iterator<Item = (usize, u8)> + Clone + '_ {
    text.char_indices().map(move |(i, c)| {
        // A character costs 1 or 2 units in either encoding.
        (i, encoding.char_units(c).map_or(0, |n| n.min(2) as u8))
    })
}

/// Measures a text from each character's byte offset and cost in units (0: not encodable,
/// counted as one unit): its total units, whether every character is encodable, and, when the
/// total is more than `single`, where each part after the first starts when parts hold
/// `limit` units, up to `max_parts` starts. Greedy: a character that does not fit whole starts
/// the next part, which is what keeps escape sequences and surrogate pairs in one piece.
fn fill(
    costs: impl Iterator<Item = (usize, u8)> + Clone,
    single: usize,
    limit: usize,
    max_parts: usize,
) -> (usize, bool, Vec<usize>) {
    // One pass for both the total and whether the whole text is encodable.
    let (mut total, mut unencodable) = (0, 0);
    for (_, units) in costs.clone() {
        total += usize::from(units);
        unencodable += usize::from(units == 0);
    }
    let total = total + unencodable;
    let encodable = unencodable == 0;
    let mut bounds: Vec<usize> = Vec::new();
    if total <= single {
        return (total, encodable, bounds);
    }
    let mut used = 0;
    for (i, units) in costs {
        let units = usize::from(units) + usize::from(units == 0);
        if used + units > limit {
            bounds.push(i);
            if bounds.len() == max_parts {
                break; // already too long: the rest will be cut
            }
            used = 0;
        }
        used += units;
    }
    (total, encodable, bounds)
}

/// Lays `text` out in `encoding`; the flag says whether every character that was kept can be
/// written in that encoding (always true for UCS-2).
fn layout(
    text: &str,
    encoding: Encoding,
    max_parts: usize,
    concat_16bit: bool,
) -> (Segmentation, bool) {
    // Unencodable characters count one unit while measuring, so the layout can tell whether
    // they would be kept at all; the flag reports them.
    let cost = |c: char| encoding.char_units(c).unwrap_or(1);
    let single = encoding.single_limit();
    let limit = encoding.concat_limit(concat_16bit);
    // ASCII text in GSM 7-bit (most mail) is measured a byte at a time from a table, without
    // decoding characters: in a profile of the intake, this layout was a sixth of a mail's
    // body work.
    let (total, encodable, bounds) = if encoding == Encoding::Gsm7 && text.is_ascii() {
        fill(ascii_costs(text), single, limit, max_parts)
    } else {
        fill(char_costs(text, encoding), single, limit, max_parts)
    };

    if total <= single {
        let seg = Segmentation {
            encoding,
            parts: vec![text.to_owned()],
            truncated: false,
        };
        return (seg, encodable);
    }

    if bounds.len() < max_parts {
        let mut parts = Vec::with_capacity(bounds.len() + 1);
        let mut start = 0;
        for &end in &bounds {
            parts.push(text.get(start..end).unwrap_or_default().to_owned());
            start = end;
        }
        parts.push(text.get(start..).unwrap_or_default().to_owned());
        let seg = Segmentation {
            encoding,
            parts,
            truncated: false,
        };
        return (seg, encodable);
    }

    // Too long: keep max_parts − 1 full parts and end with a part that has room for the
    // marker. A single remaining part has no concatenation header and the single-message room.
    let mut parts = Vec::with_capacity(max_parts);
    let mut start = 0;
    for &end in bounds.iter().take(max_parts - 1) {
        parts.push(text.get(start..end).unwrap_or_default().to_owned());
        start = end;
    }
    let last_limit = if max_parts == 1 { single } else { limit };
    let marker_units = units(TRUNCATION_MARKER, encoding).unwrap_or(TRUNCATION_MARKER.len());
    let budget = last_limit.saturating_sub(marker_units);
    let rest = text.get(start..).unwrap_or_default();
    let mut end = 0;
    let mut used = 0;
    for (i, c) in rest.char_indices() {
        let units = cost(c);
        if used + units > budget {
            break;
        }
        used += units;
        end = i + c.len_utf8();
    }
    let kept = rest.get(..end).unwrap_or_default().trim_end();
    parts.push(format!("{kept}{TRUNCATION_MARKER}"));

    // The parts hold characters of the text and of the marker, which both encodings can write:
    // only a text with an unencodable character needs its kept parts checked.
    let encodable = encodable || parts.iter().all(|p| units(p, encoding).is_some());
    let seg = Segmentation {
        encoding,
        parts,
        truncated: true,
    };
    (seg, encodable)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units of each part, checked against the limit that applies to it.
    fn assert_within_limits(seg: &Segmentation, concat_16bit: bool) {
        let limit = if seg.parts.len() == 1 {
            seg.encoding.single_limit()
        } else {
            seg.encoding.concat_limit(concat_16bit)
        };
        for (i, part) in seg.parts.iter().enumerate() {
            let u = units(part, seg.encoding);
            assert!(
                u.is_some_and(|u| u <= limit),
                "part {i} has {u:?} units, limit {limit}"
            );
        }
    }

    #[test]
    fn encoding_names() {
        assert_eq!(Encoding::Gsm7.to_string(), "gsm7");
        assert_eq!(Encoding::Ucs2.to_string(), "ucs2");
        assert_eq!(
            serde_json::to_string(&Encoding::Ucs2).ok().as_deref(),
            Some("\"ucs2\"")
        );
        assert_eq!(
            serde_json::from_str::<Encoding>("\"gsm7\"").ok(),
            Some(Encoding::Gsm7)
        );
        assert!(serde_json::from_str::<Encoding>("\"GSM7\"").is_err());
    }

    #[test]
    fn choose_encoding_table() {
        let cases = [
            ("", Encoding::Gsm7),
            ("Hello Paul", Encoding::Gsm7),
            ("10€ {x} [y] ~ ^ | \\", Encoding::Gsm7),
            ("Åse, Ørsted, Ñandù? ¿Qué? ¡Sì!", Encoding::Gsm7),
            ("Ñandú", Encoding::Ucs2),
            ("Grüße", Encoding::Gsm7),
            ("ça va", Encoding::Ucs2),
            ("it’s", Encoding::Ucs2),
            ("Привет", Encoding::Ucs2),
            ("ok 👍", Encoding::Ucs2),
            ("tab\there", Encoding::Ucs2),
        ];
        for (text, expected) in cases {
            assert_eq!(choose_encoding(text), expected, "{text:?}");
        }
    }

    #[test]
    fn transliterate_table() {
        let cases = [
            ("it’s ‘quoted’", "it's 'quoted'"),
            ("“Hello” „Hallo“ «Salut»", "\"Hello\" \"Hallo\" \"Salut\""),
            ("10–12 — ok −5", "10-12 - ok -5"),
            ("wait…", "wait..."),
            ("a\u{00A0}b\u{202F}c\td", "a b c d"),
            ("zero\u{200B}width\u{FEFF}", "zerowidth"),
            ("• item", "* item"),
            ("ΑΘΗΝΑ", "AΘHNA"),
            ("5 Ω", "5 Ω"),
            // Already GSM 7-bit: unchanged.
            ("Grüße aus München", "Grüße aus München"),
            // Still UCS-2 after replacement: the original is kept.
            ("it’s 👍", "it’s 👍"),
            ("“Привет”", "“Привет”"),
            ("", ""),
        ];
        for (text, expected) in cases {
            let out = transliterate(text);
            assert_eq!(out, expected, "{text:?}");
        }
        assert_eq!(
            choose_encoding(&transliterate("it’s “fine” – really…")),
            Encoding::Gsm7
        );
    }

    #[test]
    fn boundaries() {
        // (text, max_parts, 16-bit reference, encoding, units of each part)
        let euro = |n| "€".repeat(n);
        let x = |n| "x".repeat(n);
        let cyr = |n| "ж".repeat(n);
        let cases: Vec<(String, bool, Encoding, Vec<usize>)> = vec![
            (String::new(), false, Encoding::Gsm7, vec![0]),
            (x(160), false, Encoding::Gsm7, vec![160]),
            (x(161), false, Encoding::Gsm7, vec![153, 8]),
            (x(306), false, Encoding::Gsm7, vec![153, 153]),
            (x(307), false, Encoding::Gsm7, vec![153, 153, 1]),
            (x(161), true, Encoding::Gsm7, vec![152, 9]),
            (x(304), true, Encoding::Gsm7, vec![152, 152]),
            (euro(80), false, Encoding::Gsm7, vec![160]),
            // 81 euros = 162 septets; 76 fit a part (152), the 77th would need 154.
            (euro(81), false, Encoding::Gsm7, vec![152, 10]),
            (cyr(70), false, Encoding::Ucs2, vec![70]),
            (cyr(71), false, Encoding::Ucs2, vec![67, 4]),
            (cyr(134), false, Encoding::Ucs2, vec![67, 67]),
            (cyr(135), false, Encoding::Ucs2, vec![67, 67, 1]),
            (cyr(71), true, Encoding::Ucs2, vec![66, 5]),
            ("😀".repeat(35), false, Encoding::Ucs2, vec![70]),
            // 36 emoji = 72 units; a part holds 33 of them (66 units), the 34th would need 68.
            ("😀".repeat(36), false, Encoding::Ucs2, vec![66, 6]),
        ];
        for (text, c16, encoding, expected) in cases {
            let seg = segment_with(&text, None, c16);
            assert_eq!(seg.encoding, encoding, "{} chars", text.chars().count());
            assert!(!seg.truncated);
            let got: Vec<usize> = seg
                .parts
                .iter()
                .filter_map(|p| units(p, encoding))
                .collect();
            assert_eq!(
                got,
                expected,
                "{} chars, 16-bit {c16}",
                text.chars().count()
            );
            assert_eq!(seg.parts.concat(), text);
            assert_within_limits(&seg, c16);
        }
    }

    #[test]
    fn escape_sequence_straddling_a_boundary_moves_whole() {
        // 152 septets then '€': the escape would take septet 153 and the '€' code septet 154.
        let text = format!("{}€{}", "x".repeat(152), "y".repeat(20));
        let seg = segment(&text, None);
        assert_eq!(
            seg.parts,
            vec!["x".repeat(152), format!("€{}", "y".repeat(20))]
        );
        for part in &seg.parts {
            let septets = gsm7::encode(part).unwrap_or_default();
            assert_ne!(
                septets.last(),
                Some(&gsm7::ESC),
                "dangling escape in {part:?}"
            );
        }
        // With 153 septets of room, a '€' starting at septet 152 still fits.
        let text = format!("{}€{}", "x".repeat(151), "y".repeat(20));
        let seg = segment(&text, None);
        assert_eq!(
            seg.parts,
            vec![format!("{}€", "x".repeat(151)), "y".repeat(20)]
        );
    }

    #[test]
    fn surrogate_pair_straddling_a_boundary_moves_whole() {
        // 66 units then an emoji (2 units): the pair would straddle units 67 and 68.
        let text = format!("{}😀{}", "ж".repeat(66), "ж".repeat(10));
        let seg = segment(&text, None);
        assert_eq!(seg.encoding, Encoding::Ucs2);
        assert_eq!(
            seg.parts,
            vec!["ж".repeat(66), format!("😀{}", "ж".repeat(10))]
        );
        let first_units: Vec<u16> = seg
            .parts
            .first()
            .map(|p| p.encode_utf16().collect())
            .unwrap_or_default();
        assert_eq!(first_units.len(), 66);
    }

    #[test]
    fn truncation() {
        // (text, max_parts, expected parts)
        let cases: Vec<(String, usize, Vec<String>)> = vec![
            // One part: the single-message room, minus 8 septets for " [...]".
            (
                "x".repeat(200),
                1,
                vec![format!("{}{TRUNCATION_MARKER}", "x".repeat(152))],
            ),
            (
                "x".repeat(400),
                2,
                vec![
                    "x".repeat(153),
                    format!("{}{TRUNCATION_MARKER}", "x".repeat(145)),
                ],
            ),
            // UCS-2: the marker costs 6 units.
            (
                "ж".repeat(100),
                1,
                vec![format!("{}{TRUNCATION_MARKER}", "ж".repeat(64))],
            ),
            // A space before the cut is not kept in front of the marker.
            (
                format!("{} {}", "x".repeat(151), "y".repeat(100)),
                1,
                vec![format!("{}{TRUNCATION_MARKER}", "x".repeat(151))],
            ),
            // An escape sequence that would end past the budget is dropped whole.
            (
                format!("{}€{}", "x".repeat(151), "y".repeat(100)),
                1,
                vec![format!("{}{TRUNCATION_MARKER}", "x".repeat(151))],
            ),
        ];
        for (text, max, expected) in cases {
            let seg = segment(&text, Some(max));
            assert!(seg.truncated, "{max} parts");
            assert_eq!(seg.parts, expected, "{max} parts");
            assert_within_limits(&seg, false);
        }
        // `layout` counts on the marker being writable in both encodings.
        assert!(gsm7::is_encodable(TRUNCATION_MARKER));
        // Fits exactly: no truncation.
        let seg = segment(&"x".repeat(306), Some(2));
        assert!(!seg.truncated);
        assert_eq!(seg.parts.len(), 2);
        // Some(0) behaves as one part.
        assert_eq!(
            segment(&"x".repeat(200), Some(0)),
            segment(&"x".repeat(200), Some(1))
        );
    }

    #[test]
    fn truncation_drops_the_ucs2_tail_and_keeps_gsm7() {
        // The emoji that forces UCS-2 is in the part that is cut off.
        let text = format!("{}👍", "x".repeat(300));
        let seg = segment(&text, Some(1));
        assert_eq!(seg.encoding, Encoding::Gsm7);
        assert_eq!(
            seg.parts,
            vec![format!("{}{TRUNCATION_MARKER}", "x".repeat(152))]
        );
        // When it is in the kept part, UCS-2 stays.
        let text = format!("👍{}", "x".repeat(300));
        let seg = segment(&text, Some(1));
        assert_eq!(seg.encoding, Encoding::Ucs2);
        assert_eq!(
            seg.parts,
            vec![format!("👍{}{TRUNCATION_MARKER}", "x".repeat(62))]
        );
    }

    #[test]
    fn without_a_cap_the_protocol_limit_applies() {
        let seg = segment(&"x".repeat(153 * 300), None);
        assert!(seg.truncated);
        assert_eq!(seg.parts.len(), MAX_PARTS);
        assert_within_limits(&seg, false);
        let seg = segment(&"x".repeat(153 * 300), Some(1000));
        assert_eq!(seg.parts.len(), MAX_PARTS);
    }

    #[test]
    fn limits_follow_from_the_header_size() {
        // 140 octets of user data; the concatenation header is 6 octets (8-bit reference) or
        // 7 (16-bit), plus fill bits up to the next septet for GSM 7-bit.
        for (udh, gsm, ucs2, c16) in [
            (6, GSM7_CONCAT, UCS2_CONCAT, false),
            (7, GSM7_CONCAT_16BIT, UCS2_CONCAT_16BIT, true),
        ] {
            assert_eq!(160 - gsm7::header_septets(udh), gsm);
            assert_eq!((140 - udh) / 2, ucs2);
            assert_eq!(Encoding::Gsm7.concat_limit(c16), gsm);
            assert_eq!(Encoding::Ucs2.concat_limit(c16), ucs2);
        }
    }

    proptest::proptest! {
        /// ASCII measured a byte at a time from the table is measured as character by
        /// character: the same total, encodability and part starts, with extension characters
        /// (two septets) and characters GSM 7-bit lacks (the backtick, controls) among letters.
        #[test]
        fn ascii_is_measured_as_characters_are(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"a {}[]~^|\\`\t\r\n\x01\x7f@$".to_vec()),
                0..700,
            ),
            max_parts in 1usize..6,
        ) {
            let text = String::from_utf8(bytes).unwrap();
            let (single, limit) = (GSM7_SINGLE, GSM7_CONCAT);
            let by_bytes = fill(ascii_costs(&text), single, limit, max_parts);
            let by_chars = fill(char_costs(&text, Encoding::Gsm7), single, limit, max_parts);
            proptest::prop_assert_eq!(by_bytes, by_chars);
        }
    }
}
