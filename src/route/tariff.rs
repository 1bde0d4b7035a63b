//! Tariffs: what sending one SMS part to a destination costs on one channel, by destination
//! prefix, and the longest-prefix-match table the router looks numbers up in.
//!
//! **Prefixes** are digits of an E.164 number without the `+` (ITU-T E.164 §6: at most 15
//! digits, country code included), so `33` is France and `336` French mobiles. A tariff may write
//! them with or without the `+`. A prefix never starts with `0`: no country code does, and `0033`
//! in a tariff is far more likely a typo for `33` than a destination.
//!
//! **Costs** are integers in millionths of the organization's currency unit ([`Cost`]). The unit
//! itself is not named anywhere: every tariff, forwarding cost and workload weight of the
//! organization must use the same one (say euros), and the router only adds and compares. Integers
//! keep sums exact, so two routes that cost the same compare equal and the tie-break decides, not
//! rounding noise. Files write costs as decimals (`0.0385`); more than six decimals is an error
//! rather than a silent rounding.
//!
//! **The table** ([`PrefixTable`]) holds one open-addressing hash table per prefix length, in one
//! flat array. A lookup reads the number's first digits as integers, one per length, and probes
//! the lengths present from the longest down: the first hit is the longest match. It never
//! allocates, and since no probe depends on another, the processor overlaps their cache misses;
//! a trie walk cannot, each level waiting for the one above. Measured on a 100k-prefix tariff
//! (`bench/route.rs`, one thread): 9.4 M lookups per second, against 6.3 M for a 10-ary trie of
//! 12-byte bitmap nodes and 5.0 M for a trie of `[u32; 10]` nodes; with the machine loaded by
//! other processes the gap was wider (5.7–7.6 M against 2.9–5.4 M and 3.2–4.1 M).
//!
//! **Files** are CSV, one `prefix,cost` per line (`,` `;` or a tab between the two), with an
//! optional header line, `#` comments, blank lines and quotes around fields allowed. Errors name
//! the line and column; the same prefix twice is an error naming both lines, because which of two
//! prices an admin meant is not something to guess.

use std::fmt;
use std::str::FromStr;

/// Most digits in a prefix: a whole E.164 number (ITU-T E.164 §6).
pub const MAX_PREFIX_DIGITS: usize = 15;

/// Largest cost per part a tariff may hold, in [`Cost`] units (4294.967293 currency units): the
/// table stores per-part costs in 32 bits and keeps the two values above for its own markers.
pub const MAX_PART_COST: u64 = u32::MAX as u64 - 2;

/// A cost in millionths of the organization's currency unit (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cost(pub u64);

impl Cost {
    pub const ZERO: Cost = Cost(0);
    /// Units per currency unit.
    pub const SCALE: u64 = 1_000_000;

    /// Reads a decimal such as `0.045`, `12` or `.5`: no sign, no exponent, at most six decimals.
    pub fn parse_decimal(text: &str) -> Result<Cost, CostError> {
        let t = text.trim();
        let err = |kind| CostError {
            text: t.chars().take(40).collect(),
            kind,
        };
        if t.starts_with('-') {
            return Err(err(CostErrorKind::Negative));
        }
        let (int, frac) = match t.split_once('.') {
            Some((i, f)) => (i, f),
            None => (t, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
            return Err(err(if t.contains(',') {
                CostErrorKind::DecimalComma
            } else {
                CostErrorKind::Syntax
            }));
        }
        if frac.len() > 6 {
            // Trailing zeros carry no precision: 0.0450000 is 0.045.
            if frac[6..].bytes().any(|b| b != b'0') {
                return Err(err(CostErrorKind::TooPrecise));
            }
        }
        let int_digits = int.trim_start_matches('0');
        let int_value: u64 = if int_digits.is_empty() {
            0
        } else {
            int_digits
                .parse::<u64>()
                .map_err(|_| err(CostErrorKind::TooLarge))?
        };
        let mut frac_value: u64 = 0;
        for i in 0..6 {
            let d = frac.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
            frac_value = frac_value * 10 + d;
        }
        int_value
            .checked_mul(Cost::SCALE)
            .and_then(|v| v.checked_add(frac_value))
            .map(Cost)
            .ok_or_else(|| err(CostErrorKind::TooLarge))
    }

    /// Reads a TOML number. A float is read through its shortest decimal form (what the admin
    /// wrote: `0.045` and not 0.04499999…), so it is as exact as a string.
    pub fn from_f64(v: f64) -> Result<Cost, CostError> {
        if !v.is_finite() {
            return Err(CostError {
                text: v.to_string(),
                kind: CostErrorKind::Syntax,
            });
        }
        // `Display` for f64 never uses an exponent and prints the shortest text that reads back
        // as the same float.
        Cost::parse_decimal(&v.to_string())
    }

    pub fn saturating_add(self, other: Cost) -> Cost {
        Cost(self.0.saturating_add(other.0))
    }
}

/// Decimal form with as few decimals as needed: `0.045`, `2`, `0.0385`.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / Cost::SCALE;
        let frac = self.0 % Cost::SCALE;
        let text = if frac == 0 {
            int.to_string()
        } else {
            let digits = format!("{frac:06}");
            format!("{int}.{}", digits.trim_end_matches('0'))
        };
        f.pad(&text)
    }
}

/// Costs are written in the configuration as TOML numbers (`0.045`) or strings (`"0.045"`); both
/// are read exactly.
impl<'de> serde::Deserialize<'de> for Cost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Cost;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a cost such as 0.045")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Cost, E> {
                Cost::from_f64(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Cost, E> {
                Cost::parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Cost, E> {
                Cost::parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cost, E> {
                Cost::parse_decimal(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Written as its decimal text (`"0.045"`), exact, like the configuration.
impl serde::Serialize for Cost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` {kind}")]
pub struct CostError {
    pub text: String,
    pub kind: CostErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CostErrorKind {
    #[error("is not a cost such as 0.045 (a decimal number with a point)")]
    Syntax,
    #[error("is not a cost such as 0.045: write decimals with a point, not a comma")]
    DecimalComma,
    #[error("is negative; costs are zero or more")]
    Negative,
    #[error("has more than six decimals; costs are counted in millionths of the currency unit")]
    TooPrecise,
    #[error("is too large to be a cost")]
    TooLarge,
}

/// A destination prefix: 1 to 15 digits, not starting with 0. Ordered as text (`33` < `330` <
/// `34`), which is the order of a trie walked depth-first.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    len: u8,
    digits: [u8; MAX_PREFIX_DIGITS],
}

impl Prefix {
    /// Reads `33`, `+33` or ` +336 ` (surrounding blanks ignored).
    pub fn parse(text: &str) -> Result<Prefix, PrefixError> {
        let t = text.trim();
        let digits = t.strip_prefix('+').unwrap_or(t);
        let err = |kind| PrefixError {
            text: t.chars().take(40).collect(),
            kind,
        };
        if digits.is_empty() {
            return Err(err(PrefixErrorKind::Empty));
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(PrefixErrorKind::NotDigits));
        }
        if digits.starts_with('0') {
            return Err(err(PrefixErrorKind::LeadingZero));
        }
        if digits.len() > MAX_PREFIX_DIGITS {
            return Err(err(PrefixErrorKind::TooLong));
        }
        let mut p = Prefix {
            len: digits.len() as u8,
            digits: [0; MAX_PREFIX_DIGITS],
        };
        p.digits[..digits.len()].copy_from_slice(digits.as_bytes());
        Ok(p)
    }

    /// From ASCII digits already known to form a prefix (no `+`, no blanks).
    fn from_digits(digits: &[u8]) -> Option<Prefix> {
        if digits.is_empty() || digits.len() > MAX_PREFIX_DIGITS {
            return None;
        }
        let mut p = Prefix {
            len: digits.len() as u8,
            digits: [0; MAX_PREFIX_DIGITS],
        };
        p.digits[..digits.len()].copy_from_slice(digits);
        Some(p)
    }

    /// The ASCII digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a number (its digits) starts with this prefix.
    pub fn matches(&self, number: &[u8]) -> bool {
        number.starts_with(self.as_bytes())
    }
}

impl Ord for Prefix {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for Prefix {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Prefix::parse(s)
    }
}

/// `+33`, the way E.164 numbers are written everywhere else in the gateway.
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("+{}", self.as_str()))
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix(+{})", self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` {kind}")]
pub struct PrefixError {
    pub text: String,
    pub kind: PrefixErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixErrorKind {
    #[error("is empty: a prefix has 1 to 15 digits, such as 33 or +336")]
    Empty,
    #[error("is not a prefix of digits such as 33 or +336")]
    NotDigits,
    #[error("starts with 0, which no E.164 country code does (write 33, not 0033)")]
    LeadingZero,
    #[error("has more than 15 digits, the most an E.164 number has")]
    TooLong,
}

// ---------------------------------------------------------------------------------------------
// The longest-prefix-match table.

/// Marks "no value" in the builder, and is therefore not a storable value.
const NONE: u32 = u32::MAX;

/// Marks an empty slot: no prefix of at most 15 digits reads as this integer.
const EMPTY: u64 = u64::MAX;

/// Where the table of one prefix length lives in [`PrefixTable::words`], in slots.
#[derive(Clone, Copy, Debug, Default)]
struct Level {
    offset: u32,
    /// Slots - 1; the slot count is a power of two.
    mask: u32,
    /// log2 of the slot count, at least 1.
    bits: u32,
}

/// The result of a lookup in a table of one value per prefix: how many digits matched and the
/// value stored for that prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub len: usize,
    pub value: u32,
}

/// The values stored for a prefix, in a table of several values per prefix.
#[derive(Clone, Copy, Debug)]
pub struct Values<'a> {
    words: &'a [u64],
}

impl Values<'_> {
    /// Value `j`, or `u32::MAX` past the table's width.
    #[inline]
    pub fn get(&self, j: usize) -> u32 {
        self.words
            .get(j / 2)
            .map_or(NONE, |w| (w >> (32 * (j % 2))) as u32)
    }
}

/// Maps digit prefixes to values (a fixed number of `u32` per prefix), answering
/// longest-prefix-match queries. Immutable once built (see [`PrefixTableBuilder`]); the router
/// swaps whole tables on reload.
///
/// One open-addressing hash table per prefix length, in one flat array of slots, each at most
/// half full. A slot holds the prefix (its digits read as an integer) followed by its values, so
/// the hit that ends a lookup has brought the values into cache with it. A lookup reads the
/// number's first 1..15 digits as integers (one multiply-add per digit) and probes the lengths
/// present from the longest down; the first hit is the longest match. The probes do not depend on
/// each other, so the processor overlaps their cache misses, where a trie walk waits for each
/// level before it can read the next (the route benchmark compares both).
#[derive(Clone, Debug)]
pub struct PrefixTable {
    /// Prefix lengths present, longest first.
    lengths: Box<[u8]>,
    /// Indexed by prefix length.
    levels: [Level; MAX_PREFIX_DIGITS + 1],
    /// Slots of `stride` words: the key, then the values two to a word.
    words: Box<[u64]>,
    stride: usize,
    prefixes: usize,
}

/// Fibonacci hashing (Knuth, TAOCP vol. 3, §6.4): the top `bits` of key × 2^64/φ.
#[inline]
fn slot_of(key: u64, bits: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

impl PrefixTable {
    /// The longest prefix of `digits` that has a value, and its first value. Reading stops at
    /// the first byte that is not an ASCII digit, so a caller that has not validated its input
    /// gets a match of what precedes it.
    #[inline]
    pub fn longest_match(&self, digits: &[u8]) -> Option<Match> {
        self.longest_values(digits).map(|(len, v)| Match {
            len,
            value: v.get(0),
        })
    }

    /// The longest prefix of `digits` that has values: its length and its values.
    #[inline]
    pub fn longest_values(&self, digits: &[u8]) -> Option<(usize, Values<'_>)> {
        let mut keys = [0u64; MAX_PREFIX_DIGITS + 1];
        let mut n = 0;
        let mut key = 0u64;
        for &b in digits.iter().take(MAX_PREFIX_DIGITS) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            key = key * 10 + u64::from(d);
            n += 1;
            keys[n] = key;
        }
        for &len in self.lengths.iter() {
            let len = usize::from(len);
            if len > n {
                continue;
            }
            if let Some(v) = self.probe(len, keys[len]) {
                return Some((len, v));
            }
        }
        None
    }

    #[inline]
    fn probe(&self, len: usize, key: u64) -> Option<Values<'_>> {
        let level = self.levels.get(len)?;
        let mut i = slot_of(key, level.bits);
        // At most half full, so an empty slot always ends the probe sequence.
        loop {
            let at = (level.offset as usize + i) * self.stride;
            let slot = self.words.get(at..at + self.stride)?;
            if slot[0] == key {
                return Some(Values { words: &slot[1..] });
            }
            if slot[0] == EMPTY {
                return None;
            }
            i = (i + 1) & level.mask as usize;
        }
    }

    /// The first value stored for exactly this prefix (ASCII digits).
    pub fn get(&self, prefix: &[u8]) -> Option<u32> {
        self.longest_match(prefix)
            .filter(|m| m.len == prefix.len())
            .map(|m| m.value)
    }

    /// How many prefixes have values.
    pub fn len(&self) -> usize {
        self.prefixes
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// Bytes of the slot array, for reports.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.words)
    }
}

/// Builds a [`PrefixTable`]: a pointer trie while inserting (which is also what the router walks
/// to compile its plan), turned into per-length hash tables by [`PrefixTableBuilder::finish`].
#[derive(Debug, Clone)]
pub struct PrefixTableBuilder {
    nodes: Vec<([u32; 10], u32)>,
}

impl Default for PrefixTableBuilder {
    fn default() -> Self {
        PrefixTableBuilder {
            nodes: vec![([0; 10], NONE)],
        }
    }
}

/// A node of the builder, for callers that attach their own data to nodes (the router's
/// compiled table does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl PrefixTableBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The node for `prefix` (ASCII digits, at most 15 are used), created with its ancestors if
    /// needed.
    pub fn node(&mut self, prefix: &[u8]) -> NodeId {
        let mut cur = 0usize;
        for &b in prefix.iter().take(MAX_PREFIX_DIGITS) {
            let d = usize::from(b.wrapping_sub(b'0')).min(9);
            let next = self.nodes[cur].0[d];
            cur = if next == 0 {
                // Index 0 is the root, which is nobody's child, so 0 can mean "no child".
                let id = self.nodes.len();
                self.nodes.push(([0; 10], NONE));
                self.nodes[cur].0[d] = id as u32;
                id
            } else {
                next as usize
            };
        }
        NodeId(cur as u32)
    }

    /// Stores `value` for `prefix`, replacing any earlier one. `u32::MAX` is reserved.
    pub fn insert(&mut self, prefix: &[u8], value: u32) {
        let n = self.node(prefix);
        self.set(n, value);
    }

    pub fn set(&mut self, node: NodeId, value: u32) {
        debug_assert_ne!(value, NONE, "u32::MAX is the table's own marker");
        if let Some(n) = self.nodes.get_mut(node.0 as usize) {
            n.1 = value;
        }
    }

    /// The children of a node, digit by digit, for depth-first walks.
    pub fn children(&self, node: NodeId) -> impl DoubleEndedIterator<Item = (u8, NodeId)> + '_ {
        let c = self.nodes.get(node.0 as usize).map_or([0; 10], |n| n.0);
        (0u8..10).filter_map(move |d| {
            let id = c[usize::from(d)];
            (id != 0).then_some((d, NodeId(id)))
        })
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every prefix with a value: (length, digits as an integer, value).
    fn valued(&self) -> Vec<(usize, u64, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![(0u32, 0usize, 0u64)];
        while let Some((id, len, key)) = stack.pop() {
            let (children, value) = self.nodes[id as usize];
            if value != NONE && len > 0 {
                out.push((len, key, value));
            }
            for (d, &c) in children.iter().enumerate() {
                if c != 0 {
                    stack.push((c, len + 1, key * 10 + d as u64));
                }
            }
        }
        out
    }

    /// Lays the prefixes out in their lookup form, one value per prefix: the node's own.
    pub fn finish(self) -> PrefixTable {
        self.lay_out(1, |value, out| out[0] = value)
    }

    /// Lays the prefixes out with `width` values each: a node's value `r` is the index of its
    /// row in `rows`, which holds `width` values per row.
    pub fn finish_rows(self, width: usize, rows: &[u32]) -> PrefixTable {
        self.lay_out(width.max(1), |r, out| {
            let start = r as usize * width;
            if let Some(row) = rows.get(start..start + width) {
                out.copy_from_slice(row);
            }
        })
    }

    fn lay_out(self, width: usize, fill: impl Fn(u32, &mut [u32])) -> PrefixTable {
        let valued = self.valued();
        let mut counts = [0usize; MAX_PREFIX_DIGITS + 1];
        for (len, _, _) in &valued {
            counts[*len] += 1;
        }
        let mut levels = [Level::default(); MAX_PREFIX_DIGITS + 1];
        let mut total = 0usize;
        for len in 1..=MAX_PREFIX_DIGITS {
            if counts[len] == 0 {
                continue;
            }
            // At most half full: short probe sequences, and always an empty slot to stop at.
            let size = (counts[len] * 2).next_power_of_two().max(2);
            levels[len] = Level {
                offset: total as u32,
                mask: (size - 1) as u32,
                bits: size.trailing_zeros(),
            };
            total += size;
        }
        let stride = 1 + width.div_ceil(2);
        let mut words = vec![0u64; total * stride];
        for slot in words.chunks_mut(stride) {
            slot[0] = EMPTY;
        }
        let mut values = vec![0u32; width];
        for (len, key, value) in &valued {
            let level = levels[*len];
            let mut i = slot_of(*key, level.bits);
            while words[(level.offset as usize + i) * stride] != EMPTY {
                i = (i + 1) & level.mask as usize;
            }
            let at = (level.offset as usize + i) * stride;
            values.fill(0);
            fill(*value, &mut values);
            words[at] = *key;
            for (j, v) in values.iter().enumerate() {
                words[at + 1 + j / 2] |= u64::from(*v) << (32 * (j % 2));
            }
        }
        let lengths: Vec<u8> = (1..=MAX_PREFIX_DIGITS)
            .rev()
            .filter(|&l| counts[l] > 0)
            .map(|l| l as u8)
            .collect();
        PrefixTable {
            lengths: lengths.into_boxed_slice(),
            levels,
            words: words.into_boxed_slice(),
            stride,
            prefixes: valued.len(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A channel's tariff.

/// One channel's prices: prefix → cost per part, with longest-prefix match.
#[derive(Clone, Debug)]
pub struct Tariff {
    /// Sorted by prefix, each prefix once.
    entries: Box<[(Prefix, Cost)]>,
    table: PrefixTable,
}

/// A tariff entry found for a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TariffMatch {
    pub prefix: Prefix,
    pub cost: Cost,
}

impl Tariff {
    /// Builds a tariff from entries whose prefixes are distinct. Returns the first prefix given
    /// twice otherwise, and refuses a cost above [`MAX_PART_COST`].
    pub fn from_entries(
        entries: impl IntoIterator<Item = (Prefix, Cost)>,
    ) -> Result<Tariff, EntryError> {
        let mut entries: Vec<(Prefix, Cost)> = entries.into_iter().collect();
        for (p, c) in &entries {
            if c.0 > MAX_PART_COST {
                return Err(EntryError::TooDear(*p, *c));
            }
        }
        entries.sort_by_key(|e| e.0);
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(EntryError::Duplicate(w[0].0));
        }
        let mut b = PrefixTableBuilder::new();
        for (p, c) in &entries {
            // At most MAX_PART_COST, checked above, so never the table's marker.
            b.insert(p.as_bytes(), c.0 as u32);
        }
        Ok(Tariff {
            entries: entries.into_boxed_slice(),
            table: b.finish(),
        })
    }

    /// Parses a CSV tariff (see the module doc for the format).
    pub fn parse_csv(text: &str) -> Result<Tariff, TariffError> {
        let rows = parse_csv_rows(text)?;
        // Sort by prefix, then line, so a duplicate is reported with its first and second line.
        let mut rows = rows;
        rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(TariffError {
                line: w[1].2,
                column: 1,
                message: format!(
                    "prefix {} is given twice (lines {} and {}); keep one price",
                    w[0].0, w[0].2, w[1].2
                ),
            });
        }
        Tariff::from_entries(rows.into_iter().map(|(p, c, _)| (p, c))).map_err(|e| TariffError {
            line: 0,
            column: 0,
            message: e.to_string(),
        })
    }

    /// The entry of the longest prefix of `digits`, if any.
    #[inline]
    pub fn lookup(&self, digits: &[u8]) -> Option<TariffMatch> {
        let m = self.table.longest_match(digits)?;
        // The matched digits are the prefix: the table holds costs, not entry numbers.
        let prefix = Prefix::from_digits(digits.get(..m.len)?)?;
        Some(TariffMatch {
            prefix,
            cost: Cost(u64::from(m.value)),
        })
    }

    /// Bytes of the lookup table (the entries apart).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    /// Entries sorted by prefix.
    pub fn entries(&self) -> &[(Prefix, Cost)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What changed from `old` to `self`: prefixes added, removed, and whose cost changed.
    pub fn diff(&self, old: &Tariff) -> TariffDiff {
        let (mut a, mut b) = (
            old.entries.iter().peekable(),
            self.entries.iter().peekable(),
        );
        let mut d = TariffDiff::default();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => {
                    d.removed += 1;
                    a.next();
                }
                (None, Some(_)) => {
                    d.added += 1;
                    b.next();
                }
                (Some(x), Some(y)) => match x.0.cmp(&y.0) {
                    std::cmp::Ordering::Less => {
                        d.removed += 1;
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        d.added += 1;
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if x.1 != y.1 {
                            d.changed += 1;
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        d
    }
}

impl PartialEq for Tariff {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

/// Counts of differences between two tariffs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TariffDiff {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

impl TariffDiff {
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.changed == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("prefix {0} is given twice; keep one price")]
    Duplicate(Prefix),
    #[error("prefix {0}: {1} per part is more than the largest tariff a table holds (4294.967293)")]
    TooDear(Prefix, Cost),
}

/// An error in a CSV tariff, located in its text. `line` and `column` are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TariffError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses the rows of a CSV tariff: (prefix, cost, line).
fn parse_csv_rows(text: &str) -> Result<Vec<(Prefix, Cost, usize)>, TariffError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut seen_data = false;
    for (n, raw_line) in text.lines().enumerate() {
        let line_no = n + 1;
        // A comment runs to the end of the line; prefixes and costs never contain `#`.
        let line = raw_line.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let err = |column: usize, message: String| TariffError {
            line: line_no,
            column,
            message,
        };
        // Column (1-based, in characters) of each field's first non-blank character.
        // One separator per line: `;` files (spreadsheets in much of Europe) may hold decimal
        // commas, which then get their own error rather than splitting the cost in two.
        let sep = if line.contains(';') {
            ';'
        } else if line.contains('\t') {
            '\t'
        } else {
            ','
        };
        let mut fields: Vec<(usize, &str)> = Vec::with_capacity(2);
        let mut start = 0usize;
        for (i, c) in line.char_indices() {
            if c == sep {
                fields.push((start, &line[start..i]));
                start = i + c.len_utf8();
            }
        }
        fields.push((start, &line[start..]));
        let field = |k: usize| csv_field(line, &fields, k);
        let first = field(0).1;
        // A header is the first row, when its first field is a word rather than a number.
        if !seen_data && first.chars().any(|c| c.is_alphabetic()) {
            seen_data = true;
            continue;
        }
        seen_data = true;
        if fields.len() != 2 {
            let hint = if fields.len() == 3 && sep == ',' {
                "; costs take a decimal point, not a comma"
            } else {
                ""
            };
            return Err(err(
                1,
                format!(
                    "expected two fields, prefix and cost (e.g. 336,0.045), found {}{hint}",
                    fields.len()
                ),
            ));
        }
        let (pcol, ptext) = field(0);
        let prefix = Prefix::parse(ptext).map_err(|e| err(pcol, e.to_string()))?;
        let (ccol, ctext) = field(1);
        let cost = Cost::parse_decimal(ctext).map_err(|e| err(ccol, e.to_string()))?;
        if cost.0 > MAX_PART_COST {
            return Err(err(
                ccol,
                format!(
                    "{cost} per part is more than the largest tariff a table holds (4294.967293)"
                ),
            ));
        }
        rows.push((prefix, cost, line_no));
    }
    Ok(rows)
}

/// Field `k` of a line: its 1-based column (first non-blank character) and its text, trimmed
/// and unquoted.
fn csv_field<'a>(line: &'a str, fields: &[(usize, &'a str)], k: usize) -> (usize, &'a str) {
    let Some(&(at, f)) = fields.get(k) else {
        return (1, "");
    };
    let lead = f.len() - f.trim_start().len();
    let col = line[..at + lead].chars().count() + 1;
    let f = f.trim();
    let f = f
        .strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(f);
    (col, f.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_read_and_print_exactly() {
        let cases: &[(&str, Result<u64, CostErrorKind>)] = &[
            ("0.045", Ok(45_000)),
            ("0.0385", Ok(38_500)),
            ("12", Ok(12_000_000)),
            (".5", Ok(500_000)),
            ("3.", Ok(3_000_000)),
            ("0", Ok(0)),
            ("000.000001", Ok(1)),
            ("0.0450000", Ok(45_000)),
            (" 1.25 ", Ok(1_250_000)),
            ("0.0000001", Err(CostErrorKind::TooPrecise)),
            ("-0.1", Err(CostErrorKind::Negative)),
            ("0,045", Err(CostErrorKind::DecimalComma)),
            ("1e3", Err(CostErrorKind::Syntax)),
            ("", Err(CostErrorKind::Syntax)),
            (".", Err(CostErrorKind::Syntax)),
            ("1.2.3", Err(CostErrorKind::Syntax)),
            ("99999999999999999999", Err(CostErrorKind::TooLarge)),
            ("18446744073709.551616", Err(CostErrorKind::TooLarge)),
        ];
        for (text, want) in cases {
            let got = Cost::parse_decimal(text).map(|c| c.0).map_err(|e| e.kind);
            assert_eq!(&got, want, "{text:?}");
        }
        for (v, shown) in [
            (45_000, "0.045"),
            (2_000_000, "2"),
            (38_500, "0.0385"),
            (1, "0.000001"),
        ] {
            assert_eq!(Cost(v).to_string(), shown);
            assert_eq!(Cost::parse_decimal(shown).unwrap(), Cost(v));
        }
        assert_eq!(Cost::from_f64(0.045).unwrap(), Cost(45_000));
        assert_eq!(
            Cost::from_f64(0.1 + 0.2).map_err(|e| e.kind),
            Err(CostErrorKind::TooPrecise)
        );
        assert_eq!(
            Cost::from_f64(f64::NAN).map_err(|e| e.kind),
            Err(CostErrorKind::Syntax)
        );
    }

    #[test]
    fn prefixes_read_with_or_without_plus() {
        let cases: &[(&str, Result<&str, PrefixErrorKind>)] = &[
            ("33", Ok("33")),
            ("+336", Ok("336")),
            (" 1 ", Ok("1")),
            ("123456789012345", Ok("123456789012345")),
            ("1234567890123456", Err(PrefixErrorKind::TooLong)),
            ("", Err(PrefixErrorKind::Empty)),
            ("+", Err(PrefixErrorKind::Empty)),
            ("0033", Err(PrefixErrorKind::LeadingZero)),
            ("3x3", Err(PrefixErrorKind::NotDigits)),
            ("++33", Err(PrefixErrorKind::NotDigits)),
            ("33 6", Err(PrefixErrorKind::NotDigits)),
        ];
        for (text, want) in cases {
            let got = Prefix::parse(text).map_err(|e| e.kind);
            assert_eq!(
                got.as_ref().map(Prefix::as_str),
                want.as_ref().map(|s| *s),
                "{text:?}"
            );
        }
        assert_eq!(Prefix::parse("336").unwrap().to_string(), "+336");
        let mut v: Vec<Prefix> = ["34", "330", "33", "4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let v: Vec<&str> = v.iter().map(Prefix::as_str).collect();
        assert_eq!(v, ["33", "330", "34", "4"]);
    }
}
