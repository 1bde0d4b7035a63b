//! The GSM 7-bit default alphabet, its extension table, and septet packing.
//!
//! 3GPP TS 23.038 §6.2.1 defines the 128 characters of the default alphabet and §6.2.1.1 the
//! extension table reached through the escape septet 0x1B (`€`, `[`, `{`, `|`, …: two septets
//! each). §6.1.2.1 packs septets into octets least significant bit first; when a User Data
//! Header precedes the text, TS 23.040 §9.2.3.24 inserts fill bits so the text starts on a septet
//! boundary. This module is the single place that knows those tables and bit layouts: the
//! segmenter counts septets with it and the PDU codec packs and unpacks with it.
//!
//! Written in-house because the available crates split escape sequences across message parts
//! and come without tests.

/// The escape septet: the next septet is read from the extension table (TS 23.038 §6.2.1.1).
pub const ESC: u8 = 0x1B;

/// The default alphabet, indexed by septet value (TS 23.038 §6.2.1).
///
/// Index 0x1B is the escape code, not a character; a receiver without the extension table
/// shows it as a space, which is what [`decode`] does for an escape with nothing after it.
const DEFAULT: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', ' ', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table (TS 23.038 §6.2.1.1): septet after [`ESC`] and the character it stands
/// for. 0x0A is the page break (form feed).
const EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// How each ASCII character is written, built at compile time from [`DEFAULT`] and
/// [`EXTENSION`] so the common case is one lookup.
const ASCII_SEPTETS: [Option<Septet>; 128] = {
    let mut table = [None; 128];
    let mut septet = 0;
    while septet < 128 {
        let c = DEFAULT[septet] as u32;
        // 0x1B is the escape code: a space must encode as 0x20, never as an escape.
        if c < 128 && septet != ESC as usize {
            table[c as usize] = Some(Septet::Default(septet as u8));
        }
        septet += 1;
    }
    // The default alphabet comes first: an escape sequence only for what it lacks.
    let mut entry = 0;
    while entry < EXTENSION.len() {
        let (septet, c) = EXTENSION[entry];
        if (c as u32) < 128 && table[c as usize].is_none() {
            table[c as usize] = Some(Septet::Extension(septet));
        }
        entry += 1;
    }
    table
};

/// Septets each ASCII character costs (0: not in the alphabet), from [`ASCII_SEPTETS`].
const ASCII_COST: [u8; 128] = {
    let mut table = [0; 128];
    let mut c = 0;
    while c < 128 {
        table[c] = match ASCII_SEPTETS[c] {
            Some(Septet::Default(_)) => 1,
            Some(Septet::Extension(_)) => 2,
            None => 0,
        };
        c += 1;
    }
    table
};

/// Septets one byte of ASCII text costs, 0 when it is not in the alphabet (as for a byte that is
/// not ASCII): a table lookup, for the measuring of long texts.
pub fn ascii_cost(b: u8) -> u8 {
    if b.is_ascii() {
        // In bounds: the table has an entry for each of the 128 ASCII bytes.
        ASCII_COST[usize::from(b & 0x7F)]
    } else {
        0
    }
}

/// How one character is written in GSM 7-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Septet {
    /// One septet of the default alphabet.
    Default(u8),
    /// [`ESC`] followed by this septet of the extension table.
    Extension(u8),
}

impl Septet {
    /// Septets the character occupies: 1, or 2 for an escape sequence.
    pub fn septets(self) -> usize {
        match self {
            Septet::Default(_) => 1,
            Septet::Extension(_) => 2,
        }
    }

    /// Appends the septet(s) to `out`.
    pub fn push_to(self, out: &mut Vec<u8>) {
        match self {
            Septet::Default(s) => out.push(s),
            Septet::Extension(s) => {
                out.push(ESC);
                out.push(s);
            }
        }
    }
}

/// The septet(s) for `c`, or `None` when the character is in neither table.
pub fn encode_char(c: char) -> Option<Septet> {
    if c.is_ascii() {
        return ASCII_SEPTETS.get(usize::from(c as u8)).copied().flatten();
    }
    if let Some(pos) = DEFAULT.iter().position(|&d| d == c) {
        // Every non-ASCII entry sits below index 128, so the position always fits a septet.
        return u8::try_from(pos).ok().map(Septet::Default);
    }
    EXTENSION
        .iter()
        .find(|&&(_, e)| e == c)
        .map(|&(s, _)| Septet::Extension(s))
}

/// Septets `c` costs (1 or 2), or `None` when it is not in the GSM 7-bit alphabet.
pub fn septet_len(c: char) -> Option<usize> {
    encode_char(c).map(Septet::septets)
}

/// True when every character of `text` has a GSM 7-bit encoding.
pub fn is_encodable(text: &str) -> bool {
    if text.is_ascii() {
        return text.bytes().all(|b| ascii_cost(b) > 0);
    }
    text.chars().all(|c| encode_char(c).is_some())
}

/// Septets `text` costs, or `None` when a character is not in the GSM 7-bit alphabet.
pub fn text_septets(text: &str) -> Option<usize> {
    text.chars().map(septet_len).sum()
}

/// Encodes `text` to unpacked septets (one per byte, values 0..=127).
///
/// Returns the first character that has no GSM 7-bit encoding as the error.
pub fn encode(text: &str) -> Result<Vec<u8>, char> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        encode_char(c).ok_or(c)?.push_to(&mut out);
    }
    Ok(out)
}

/// The default-alphabet character of a septet (the high bit is ignored).
pub fn decode_default(septet: u8) -> char {
    DEFAULT
        .get(usize::from(septet & 0x7F))
        .copied()
        .unwrap_or(' ')
}

/// The extension-table character of the septet that follows an [`ESC`], if defined.
pub fn decode_extension(septet: u8) -> Option<char> {
    let septet = septet & 0x7F;
    EXTENSION
        .iter()
        .find(|&&(s, _)| s == septet)
        .map(|&(_, c)| c)
}

/// Decodes unpacked septets to text.
///
/// Follows the receiver rules of TS 23.038 §6.2.1.1: an escape followed by a code the
/// extension table does not define shows the default-alphabet character of that code; ESC ESC
/// (reserved for a further table) and an escape with nothing after it show as a space.
pub fn decode(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut iter = septets.iter().map(|&s| s & 0x7F);
    while let Some(s) = iter.next() {
        if s != ESC {
            out.push(decode_default(s));
            continue;
        }
        match iter.next() {
            Some(ESC) | None => out.push(' '),
            Some(next) => out.push(decode_extension(next).unwrap_or_else(|| decode_default(next))),
        }
    }
    out
}

/// Fill bits that follow a User Data Header of `udh_octets` octets (UDHL octet included) so
/// the first character starts on a septet boundary (TS 23.040 §9.2.3.24).
pub fn fill_bits(udh_octets: usize) -> u8 {
    // The result is below 7, so the narrowing cannot lose anything.
    ((7 - (udh_octets * 8) % 7) % 7) as u8
}

/// Septets that a User Data Header of `udh_octets` octets (UDHL octet included) occupies
/// together with its fill bits; TP-UDL counts them along with the text septets.
pub fn header_septets(udh_octets: usize) -> usize {
    (udh_octets * 8).div_ceil(7)
}

/// Octets that `fill_bits` fill bits followed by `septets` packed septets occupy.
pub fn packed_len(septets: usize, fill_bits: u8) -> usize {
    (usize::from(fill_bits) + septets * 7).div_ceil(8)
}

/// Packs septets into octets, least significant bit first, after `fill_bits` zero bits
/// (TS 23.038 §6.1.2.1.1; fill bits per TS 23.040 §9.2.3.24). Fill bits above 6 are treated
/// as `fill_bits % 8`; only 0..=6 occur in practice.
pub fn pack(septets: &[u8], fill_bits: u8) -> Vec<u8> {
    let fill = usize::from(fill_bits % 8);
    let mut out = vec![0u8; packed_len(septets.len(), fill_bits % 8)];
    for (i, &septet) in septets.iter().enumerate() {
        let bit = fill + i * 7;
        let (byte, shift) = (bit / 8, bit % 8);
        let value = u16::from(septet & 0x7F) << shift;
        let [low, high] = value.to_le_bytes();
        if let Some(o) = out.get_mut(byte) {
            *o |= low;
        }
        if high != 0
            && let Some(o) = out.get_mut(byte + 1)
        {
            *o |= high;
        }
    }
    out
}

/// Unpacks `count` septets from `octets`, skipping `fill_bits` leading bits.
///
/// Returns `None` when the octets are too short to hold that many septets.
pub fn unpack(octets: &[u8], fill_bits: u8, count: usize) -> Option<Vec<u8>> {
    let fill = usize::from(fill_bits % 8);
    if packed_len(count, fill_bits % 8) > octets.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let bit = fill + i * 7;
        let (byte, shift) = (bit / 8, bit % 8);
        let low = u16::from(*octets.get(byte)?);
        // The next octet is only needed when the septet crosses into it; it may not exist
        // for the last septet.
        let high = if shift > 1 {
            u16::from(*octets.get(byte + 1)?)
        } else {
            0
        };
        let word = (high << 8) | low;
        out.push(((word >> shift) & 0x7F) as u8);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02X}")).collect()
    }

    #[test]
    fn every_default_septet_round_trips_except_escape() {
        for septet in 0u8..128 {
            if septet == ESC {
                continue;
            }
            let c = decode_default(septet);
            assert_eq!(encode_char(c), Some(Septet::Default(septet)), "{c:?}");
        }
    }

    #[test]
    fn every_extension_septet_round_trips() {
        for &(septet, c) in &EXTENSION {
            assert_eq!(encode_char(c), Some(Septet::Extension(septet)), "{c:?}");
            assert_eq!(decode(&[ESC, septet]), c.to_string());
        }
    }

    #[test]
    fn character_table() {
        // (character, expected septets); None = not in the alphabet.
        let cases: &[(char, Option<&[u8]>)] = &[
            ('@', Some(&[0x00])),
            ('$', Some(&[0x02])),
            ('¤', Some(&[0x24])),
            (' ', Some(&[0x20])),
            ('\n', Some(&[0x0A])),
            ('\r', Some(&[0x0D])),
            ('Δ', Some(&[0x10])),
            ('_', Some(&[0x11])),
            ('à', Some(&[0x7F])),
            ('¿', Some(&[0x60])),
            ('€', Some(&[ESC, 0x65])),
            ('[', Some(&[ESC, 0x3C])),
            ('\\', Some(&[ESC, 0x2F])),
            ('|', Some(&[ESC, 0x40])),
            ('\u{0C}', Some(&[ESC, 0x0A])),
            ('`', None),
            ('ç', None),
            ('á', None),
            ('\t', None),
            ('\u{1B}', None),
            ('’', None),
            ('😀', None),
            ('Ж', None),
        ];
        for &(c, expected) in cases {
            let got = encode_char(c).map(|s| {
                let mut v = Vec::new();
                s.push_to(&mut v);
                v
            });
            assert_eq!(got.as_deref(), expected, "{c:?}");
            assert_eq!(septet_len(c), expected.map(<[u8]>::len), "{c:?}");
        }
    }

    #[test]
    fn decode_receiver_rules() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x48, 0x69], "Hi"),
            (&[ESC, 0x65, 0x35], "€5"),
            // Undefined extension code: show the default character of that code.
            (&[ESC, 0x41], "A"),
            // ESC ESC is reserved for another table: a space.
            (&[ESC, ESC, 0x41], " A"),
            // A dangling escape: a space.
            (&[0x41, ESC], "A "),
            // High bits are not part of a septet.
            (&[0xC1], "A"),
        ];
        for &(septets, text) in cases {
            assert_eq!(decode(septets), text, "{septets:02X?}");
        }
    }

    #[test]
    fn encode_reports_first_unencodable_char() {
        assert_eq!(
            encode("ab{c}"),
            Ok(vec![0x61, 0x62, ESC, 0x28, 0x63, ESC, 0x29])
        );
        assert_eq!(encode("abç😀"), Err('ç'));
        assert_eq!(text_septets("a€"), Some(3));
        assert_eq!(text_septets("a😀"), None);
        assert!(is_encodable("Paul: 10€ [ok]"));
        assert!(is_encodable("Grüße"));
        assert!(!is_encodable("ça"));
    }

    #[test]
    fn packing_table() {
        // (text, fill bits, packed octets as hex). The fill-bit cases are the text that follows
        // a 6-octet concatenation header (1 fill bit) or a 7-octet one (none), taken from
        // third-party concatenated SMS-SUBMIT PDUs.
        let cases: &[(&str, u8, &str)] = &[
            ("", 0, ""),
            ("hellohello", 0, "E8329BFD4697D9EC37"),
            ("Hello Paul", 0, "C8329BFD0641C37536"),
            // 8 septets fill exactly 7 octets.
            ("abcdefgh", 0, "61F1985C369FD1"),
            ("yyyyyyyy", 1, "F2F97C3E9FCFE701"),
            ("y", 1, "F2"),
            ("abc", 0, "61F118"),
            ("abc", 6, "40583C06"),
        ];
        for &(text, fill, packed) in cases {
            let septets = encode(text).unwrap_or_default();
            let octets = pack(&septets, fill);
            assert_eq!(hex(&octets), packed, "{text:?} fill {fill}");
            assert_eq!(octets.len(), packed_len(septets.len(), fill));
            assert_eq!(
                unpack(&octets, fill, septets.len()).as_deref(),
                Some(septets.as_slice()),
                "{text:?} fill {fill}"
            );
        }
    }

    #[test]
    fn unpack_refuses_short_input() {
        assert_eq!(unpack(&[0x61, 0xF1], 0, 3), None);
        assert_eq!(unpack(&[], 1, 1), None);
        assert_eq!(unpack(&[], 0, 0), Some(vec![]));
        // 8 septets with no fill fit 7 octets; with one fill bit they need 8.
        assert!(unpack(&[0; 7], 0, 8).is_some());
        assert!(unpack(&[0; 7], 1, 8).is_none());
    }

    #[test]
    fn fill_bits_and_header_septets() {
        // (UDH octets including UDHL, fill bits, septets the header occupies)
        let cases = [
            (0, 0, 0),
            (6, 1, 7),
            (7, 0, 8),
            (5, 2, 6),
            (12, 2, 14),
            (1, 6, 2),
        ];
        for (octets, fill, septets) in cases {
            assert_eq!(fill_bits(octets), fill, "{octets} octets");
            assert_eq!(header_septets(octets), septets, "{octets} octets");
            assert_eq!((octets * 8 + usize::from(fill)) % 7, 0);
        }
    }

    /// What `encode_char` answers, found by searching the alphabet tables, as it was before
    /// one compiled table held every ASCII character, extension ones included.
    fn encode_char_by_search(c: char) -> Option<Septet> {
        const NONE: u8 = 0xFF;
        const ASCII_TO_DEFAULT: [u8; 128] = {
            let mut table = [NONE; 128];
            let mut septet = 0;
            while septet < 128 {
                let c = DEFAULT[septet] as u32;
                if c < 128 && septet != ESC as usize {
                    table[c as usize] = septet as u8;
                }
                septet += 1;
            }
            table
        };
        let code = u32::from(c);
        if code < 128 {
            if let Some(&s) = ASCII_TO_DEFAULT.get(code as usize)
                && s != NONE
            {
                return Some(Septet::Default(s));
            }
        } else if let Some(pos) = DEFAULT.iter().position(|&d| d == c) {
            return u8::try_from(pos).ok().map(Septet::Default);
        }
        EXTENSION
            .iter()
            .find(|&&(_, e)| e == c)
            .map(|&(s, _)| Septet::Extension(s))
    }

    #[test]
    fn the_compiled_table_agrees_with_the_alphabet_for_every_char() {
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            assert_eq!(encode_char(c), encode_char_by_search(c), "{c:?}");
        }
    }
}
