//! Route decisions per second on one thread, over 100k-prefix tariffs.
//!
//! ```sh
//! cargo bench --bench route            # the full measure (release build), ~1 minute
//! cargo test --bench route             # smoke mode: small tables, a few seconds, checks only
//! ```
//!
//! The organization: three sites (uk here, fr and de peers), six channels. Four channels carry a
//! tariff of ~100k prefixes drawn like real price lists (country codes, then operator ranges of
//! 1 to 7 more digits); the others cover part of the world. Rules block a few ranges and
//! restrict a few to some channels; every site reports a workload. Numbers are drawn like real
//! traffic: a tariff prefix completed with random digits to a plausible length, so lookups go
//! as deep as real ones.
//!
//! Before timing anything, every decision on a sample is checked against a naive reference
//! (a hash map per channel, probed at every length), so a fast wrong router fails here.
//!
//! Also measured, for the choice of the table layout: the same longest-prefix lookups on the
//! layout used (an open-addressing table per prefix length, probed longest first), on a 10-ary
//! trie laid out breadth-first in 12-byte nodes (child bitmap, first child, value), on a plain
//! trie of `[u32; 10]` children per node, and on std `HashMap`s per prefix length.
//!
//! Figures are given per second of this thread's CPU time as well as per second of wall time:
//! on a machine shared with other work the scheduler's choices should not count against the
//! router. Cache pollution from that other work still does.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use mail2sms::route::tariff::{Cost, Prefix, Tariff};
use mail2sms::route::{
    ChannelConfig, ChannelKind, PeerConfig, Router, RouterState, RoutingConfig, Scope,
    TariffSource, number_digits,
};

const TARGET_PER_S: f64 = 2_000_000.0;

/// xorshift64*: deterministic, no dependency, good enough to draw test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Country codes with the length of their national numbers (E.164 numbers are cc + this).
const COUNTRIES: &[(&str, usize)] = &[
    ("1", 10),
    ("7", 10),
    ("20", 10),
    ("27", 9),
    ("30", 10),
    ("31", 9),
    ("32", 9),
    ("33", 9),
    ("34", 9),
    ("36", 9),
    ("39", 10),
    ("40", 9),
    ("41", 9),
    ("43", 10),
    ("44", 10),
    ("45", 8),
    ("46", 9),
    ("47", 8),
    ("48", 9),
    ("49", 11),
    ("51", 9),
    ("52", 10),
    ("54", 10),
    ("55", 11),
    ("56", 9),
    ("57", 10),
    ("60", 9),
    ("61", 9),
    ("62", 10),
    ("63", 10),
    ("64", 9),
    ("65", 8),
    ("66", 9),
    ("81", 10),
    ("82", 10),
    ("84", 9),
    ("86", 11),
    ("90", 10),
    ("91", 10),
    ("92", 10),
    ("212", 9),
    ("213", 9),
    ("216", 8),
    ("234", 10),
    ("254", 9),
    ("351", 9),
    ("352", 9),
    ("353", 9),
    ("358", 9),
    ("359", 9),
    ("380", 9),
    ("420", 9),
    ("421", 9),
    ("852", 8),
    ("971", 9),
    ("972", 9),
    ("966", 9),
    ("880", 10),
];

/// About `n` distinct prefixes: country codes, then ranges 1 to 7 digits longer.
fn draw_prefixes(rng: &mut Rng, n: usize) -> Vec<Prefix> {
    let mut set: std::collections::HashSet<String> =
        COUNTRIES.iter().map(|c| c.0.to_string()).collect();
    while set.len() < n {
        let (cc, _) = COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize];
        let extra = 1 + rng.below(7) as usize;
        let mut p = cc.to_string();
        for _ in 0..extra {
            p.push(char::from(b'0' + rng.below(10) as u8));
        }
        set.insert(p);
    }
    let mut v: Vec<Prefix> = set
        .iter()
        .map(|p| p.parse().expect("drawn prefixes are valid"))
        .collect();
    v.sort();
    v
}

fn tariff(rng: &mut Rng, prefixes: &[Prefix], keep_per_mille: u64, base: u64) -> Tariff {
    let mut entries = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        if rng.below(1000) < keep_per_mille {
            entries.push((*p, Cost(base + rng.below(90_000))));
        }
    }
    Tariff::from_entries(entries).expect("distinct prefixes")
}

fn channel(
    name: &str,
    kind: ChannelKind,
    site: &str,
    t: Tariff,
    blocked: &[&str],
) -> ChannelConfig {
    ChannelConfig {
        name: name.into(),
        kind,
        site: site.into(),
        tariff: std::sync::Arc::new(t),
        tariff_source: TariffSource::Inline,
        blocked_prefixes: blocked.iter().map(|p| p.parse().unwrap()).collect(),
    }
}

fn organization(rng: &mut Rng, n: usize) -> RoutingConfig {
    let prefixes = draw_prefixes(rng, n);
    RoutingConfig {
        local: "uk".into(),
        peers: vec![
            PeerConfig {
                name: "fr".into(),
                forwarding_cost: Cost(2_000),
                up: true,
            },
            PeerConfig {
                name: "de".into(),
                forwarding_cost: Cost(3_000),
                up: true,
            },
        ],
        channels: vec![
            channel(
                "uk-modems",
                ChannelKind::Modems,
                "uk",
                tariff(rng, &prefixes, 1000, 20_000),
                &["3389"],
            ),
            channel(
                "uk-smpp",
                ChannelKind::Smpp,
                "uk",
                tariff(rng, &prefixes, 1000, 8_000),
                &[],
            ),
            channel(
                "fr-modems",
                ChannelKind::Modems,
                "fr",
                tariff(rng, &prefixes, 300, 15_000),
                &[],
            ),
            channel(
                "fr-smpp",
                ChannelKind::Smpp,
                "fr",
                tariff(rng, &prefixes, 1000, 9_000),
                &[],
            ),
            channel(
                "de-modems",
                ChannelKind::Modems,
                "de",
                tariff(rng, &prefixes, 1000, 12_000),
                &[],
            ),
            channel(
                "de-peer",
                ChannelKind::Peer,
                "de",
                tariff(rng, &prefixes, 200, 10_000),
                &[],
            ),
        ],
        workload_weight: Cost(100),
        max_backlog: Duration::from_secs(3600),
        blocked_prefixes: ["881", "882", "4470"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
        allowed_channels: vec![
            (
                "44".parse().unwrap(),
                vec!["uk-modems".into(), "uk-smpp".into(), "fr-smpp".into()],
            ),
            (
                "49".parse().unwrap(),
                vec!["de-modems".into(), "de-peer".into()],
            ),
        ],
    }
}

/// Numbers like traffic: a prefix of a tariff, completed to its country's length.
fn draw_numbers(rng: &mut Rng, cfg: &RoutingConfig, count: usize) -> Vec<String> {
    let entries = cfg.channels[0].tariff.entries();
    (0..count)
        .map(|_| {
            let (p, _) = entries[rng.below(entries.len() as u64) as usize];
            let national = COUNTRIES
                .iter()
                .find(|(cc, _)| p.as_str().starts_with(cc))
                .map_or(9, |c| c.1);
            let cc_len = COUNTRIES
                .iter()
                .find(|(cc, _)| p.as_str().starts_with(cc))
                .map_or(2, |c| c.0.len());
            let mut s = String::from("+");
            s.push_str(p.as_str());
            while s.len() - 1 < cc_len + national {
                s.push(char::from(b'0' + rng.below(10) as u8));
            }
            s
        })
        .collect()
}

/// The naive reference: per channel a map, probed from the longest length down.
struct Reference {
    maps: Vec<HashMap<Vec<u8>, u64>>,
}

impl Reference {
    fn new(cfg: &RoutingConfig) -> Self {
        Reference {
            maps: cfg
                .channels
                .iter()
                .map(|c| {
                    c.tariff
                        .entries()
                        .iter()
                        .map(|(p, k)| (p.as_bytes().to_vec(), k.0))
                        .collect()
                })
                .collect(),
        }
    }

    /// (channel name, total) of the best route, by the rules of the module doc, computed the
    /// slow way.
    fn best(
        &self,
        cfg: &RoutingConfig,
        state: &RouterState,
        digits: &[u8],
        parts: u64,
    ) -> Option<(String, u64)> {
        let covers = |p: &Prefix| digits.starts_with(p.as_bytes());
        if cfg.blocked_prefixes.iter().any(covers) {
            return None;
        }
        let rule = cfg
            .allowed_channels
            .iter()
            .filter(|(p, _)| covers(p))
            .max_by_key(|(p, _)| p.len());
        let mut best: Option<(u64, (bool, &str, &str))> = None;
        for (i, c) in cfg.channels.iter().enumerate() {
            if c.blocked_prefixes.iter().any(covers) {
                continue;
            }
            if rule.is_some_and(|(_, names)| !names.contains(&c.name)) {
                continue;
            }
            if state.site_up(&c.site) == Some(false) {
                continue;
            }
            let per_part = (1..=digits.len().min(15))
                .rev()
                .find_map(|l| self.maps[i].get(&digits[..l]));
            let Some(per_part) = per_part else { continue };
            let local = c.site == cfg.local;
            let fwd = cfg
                .peers
                .iter()
                .find(|p| p.name == c.site)
                .map_or(0, |p| p.forwarding_cost.0);
            // Every site reports the same backlog in this benchmark: see main.
            let workload = cfg.workload_weight.0 * 20_000 / 1000;
            let total = per_part * parts + fwd + workload;
            let key = (!local, c.site.as_str(), c.name.as_str());
            if best.is_none_or(|(t, k)| (total, key) < (t, k)) {
                best = Some((total, key));
            }
        }
        best.map(|(t, (_, _, name))| (name.to_string(), t))
    }
}

/// The plain layout, for comparison: `[u32; 10]` children and a value per node.
struct PlainTrie {
    nodes: Vec<([u32; 10], u32)>,
}

impl PlainTrie {
    fn new(t: &Tariff) -> Self {
        let mut nodes = vec![([0u32; 10], u32::MAX)];
        for (i, (p, _)) in t.entries().iter().enumerate() {
            let mut cur = 0;
            for &b in p.as_bytes() {
                let d = usize::from(b - b'0');
                if nodes[cur].0[d] == 0 {
                    nodes.push(([0; 10], u32::MAX));
                    let id = nodes.len() as u32 - 1;
                    nodes[cur].0[d] = id;
                }
                cur = nodes[cur].0[d] as usize;
            }
            nodes[cur].1 = i as u32;
        }
        PlainTrie { nodes }
    }

    fn longest(&self, digits: &[u8]) -> Option<u32> {
        let mut cur = 0usize;
        let mut best = None;
        for &b in digits {
            let next = self.nodes[cur].0[usize::from(b - b'0')];
            if next == 0 {
                break;
            }
            cur = next as usize;
            if self.nodes[cur].1 != u32::MAX {
                best = Some(self.nodes[cur].1);
            }
        }
        best
    }
}

/// A 10-ary trie laid out breadth-first in 12-byte nodes (child bitmap, first child, value):
/// the first layout tried, kept to compare.
struct BitmapTrie {
    nodes: Vec<(u32, u32, u16)>,
}

impl BitmapTrie {
    fn new(t: &Tariff) -> Self {
        let plain = PlainTrie::new(t);
        let mut nodes = Vec::with_capacity(plain.nodes.len());
        let mut order = vec![0u32];
        let mut i = 0;
        while i < order.len() {
            let (children, value) = plain.nodes[order[i] as usize];
            let first = order.len() as u32;
            let mut bitmap = 0u16;
            for (d, &c) in children.iter().enumerate() {
                if c != 0 {
                    bitmap |= 1 << d;
                    order.push(c);
                }
            }
            nodes.push((first, value, bitmap));
            i += 1;
        }
        BitmapTrie { nodes }
    }

    fn longest(&self, digits: &[u8]) -> Option<u32> {
        let mut node = self.nodes[0];
        let mut best = None;
        for &b in digits {
            let bit = 1u16 << (b - b'0');
            if node.2 & bit == 0 {
                break;
            }
            node = self.nodes[(node.0 + (node.2 & (bit - 1)).count_ones()) as usize];
            if node.1 != u32::MAX {
                best = Some(node.1);
            }
        }
        best
    }
}

/// Hash maps per prefix length, probed from the longest length present down.
struct ByLength {
    lengths: Vec<usize>,
    maps: Vec<HashMap<u64, u32>>,
}

impl ByLength {
    fn new(t: &Tariff) -> Self {
        let mut maps: Vec<HashMap<u64, u32>> = (0..=15).map(|_| HashMap::new()).collect();
        for (i, (p, _)) in t.entries().iter().enumerate() {
            maps[p.len()].insert(p.as_str().parse().unwrap(), i as u32);
        }
        let mut lengths: Vec<usize> = (1..=15).filter(|&l| !maps[l].is_empty()).collect();
        lengths.reverse();
        ByLength { lengths, maps }
    }

    fn longest(&self, digits: &[u8]) -> Option<u32> {
        let mut keys = [0u64; 16];
        let mut k = 0u64;
        for (i, &b) in digits.iter().take(15).enumerate() {
            k = k * 10 + u64::from(b - b'0');
            keys[i + 1] = k;
        }
        self.lengths
            .iter()
            .filter(|&&l| l <= digits.len())
            .find_map(|&l| self.maps[l].get(&keys[l]).copied())
    }
}

/// CPU time of this thread, from /proc (user + system, in 10 ms clock ticks): on a machine
/// shared with other work, wall time counts the time the scheduler gave to others, CPU time
/// does not. `None` where /proc is not Linux's.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // After the command name in parentheses come fields 3, 4, ...; utime and stime are 14, 15.
    let fields: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux whatever the kernel's tick rate.
    Some(Duration::from_millis(ticks * 10))
}

/// Operations per second, by wall clock and by this thread's CPU time.
#[derive(Clone, Copy, Default)]
struct Rate {
    wall: f64,
    cpu: f64,
}

impl Rate {
    fn show(&self) -> String {
        let cpu = if self.cpu > 0.0 {
            format!("{:>11.0}/s per CPU-second", self.cpu)
        } else {
            "CPU time not measured".into()
        };
        format!("{cpu}, {:>11.0}/s wall", self.wall)
    }
}

/// Runs `pass` (which does `per_pass` operations) until a round has used `min_cpu` of CPU (or
/// ten times that in wall time), `rounds` times; the best round counts.
fn measure(
    rounds: usize,
    min_cpu: Duration,
    per_pass: usize,
    mut pass: impl FnMut() -> u64,
) -> Rate {
    let mut best = Rate::default();
    for _ in 0..rounds {
        let (w0, c0) = (Instant::now(), thread_cpu());
        let mut done = 0usize;
        let mut sum = 0u64;
        let cpu = loop {
            sum = sum.wrapping_add(pass());
            done += per_pass;
            let cpu = c0.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
            if cpu.is_some_and(|c| c >= min_cpu) || w0.elapsed() >= min_cpu * 10 {
                break cpu;
            }
        };
        black_box(sum);
        let wall = done as f64 / w0.elapsed().as_secs_f64();
        // Ticks are 10 ms: below a second of CPU the figure would be noise (smoke mode).
        let cpu = cpu
            .filter(|c| *c >= Duration::from_secs(1))
            .map_or(0.0, |c| done as f64 / c.as_secs_f64());
        best.wall = best.wall.max(wall);
        best.cpu = best.cpu.max(cpu);
    }
    best
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs this in smoke mode.
    let full = std::env::args().any(|a| a == "--bench");
    let (prefixes, numbers, rounds) = if full {
        (100_000, 1 << 20, 5)
    } else {
        (10_000, 20_000, 1)
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let cfg = organization(&mut rng, prefixes);
    let t0 = Instant::now();
    let state = RouterState::new();
    let router = Router::new(&cfg, state.clone()).expect("compiles");
    let compile = t0.elapsed();
    for site in ["uk", "fr", "de"] {
        // 40 parts at 2 parts/s: 20 s of backlog everywhere (the reference assumes it).
        state.set_workload(site, 40, 2.0);
    }
    let plan = router.plan();
    println!(
        "organization: 3 sites, {} channels, {} prefixes per full tariff, {} in the compiled table ({:.1} MB), compiled in {:.0} ms",
        plan.channels.len(),
        cfg.channels[0].tariff.len(),
        plan.prefixes(),
        plan.memory_bytes() as f64 / 1e6,
        compile.as_secs_f64() * 1000.0
    );

    let numbers = draw_numbers(&mut rng, &cfg, numbers);

    // Correctness first: the router against the naive reference, with one site down for half
    // the sample so exclusions are exercised too.
    let reference = Reference::new(&cfg);
    let sample = numbers.len().min(if full { 50_000 } else { numbers.len() });
    for (round, down) in [(0, false), (1, true)] {
        state.set_site_up("fr", !down);
        for (k, n) in numbers[..sample].iter().enumerate() {
            let parts = 1 + (k % 3) as u32;
            let ranking = router.rank(n, parts).expect("valid numbers");
            let got = ranking
                .best()
                .map(|b| (b.channel.to_string(), b.choice.total.0));
            let want = reference.best(&cfg, &state, number_digits(n).unwrap(), u64::from(parts));
            assert_eq!(got, want, "round {round}, number {n}, {parts} parts");
        }
    }
    state.set_site_up("fr", true);
    println!(
        "checked {} decisions against the naive reference, with and without a site down",
        2 * sample
    );

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let min_cpu = if full {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };

    // Decisions through the public API: parse, load the plan, rank into a new Vec.
    let api = measure(rounds, min_cpu, numbers.len(), || {
        let mut sum = 0u64;
        for (k, n) in numbers.iter().enumerate() {
            let r = router.rank(n, 1 + (k & 1) as u32).expect("valid");
            sum = sum.wrapping_add(r.choices.first().map_or(0, |c| c.total.0));
        }
        sum
    });

    // The decision alone: digits already checked, result buffer reused (no allocation).
    let digits: Vec<&[u8]> = numbers.iter().map(|n| number_digits(n).unwrap()).collect();
    let mut out = Vec::with_capacity(plan.channels.len());
    let into = measure(rounds, min_cpu, digits.len(), || {
        let mut sum = 0u64;
        for (k, d) in digits.iter().enumerate() {
            plan.rank_into(d, 1 + (k & 1) as u32, Scope::Organization, &mut out);
            sum = sum.wrapping_add(out.first().map_or(0, |c| c.total.0));
        }
        sum
    });

    // Table layouts, on one 100k-prefix tariff; each lookup fetches the cost, as routing does.
    let t = &cfg.channels[0].tariff;
    let plain = PlainTrie::new(t);
    let bitmap = BitmapTrie::new(t);
    let by_len = ByLength::new(t);
    for d in digits.iter().take(sample) {
        let ours = t.lookup(d).map(|m| m.prefix);
        let p = plain.longest(d).map(|i| t.entries()[i as usize].0);
        let b = bitmap.longest(d).map(|i| t.entries()[i as usize].0);
        let h = by_len.longest(d).map(|i| t.entries()[i as usize].0);
        assert_eq!(
            (ours, ours, ours),
            (p, b, h),
            "layouts disagree on {:?}",
            std::str::from_utf8(d)
        );
    }
    let cost = |i: Option<u32>| i.map_or(0, |i| t.entries()[i as usize].1.0);
    let lpm = |f: &dyn Fn(&[u8]) -> u64| {
        measure(rounds, min_cpu, digits.len(), || {
            digits.iter().fold(0u64, |s, d| s.wrapping_add(f(d)))
        })
    };
    let lpm_ours = lpm(&|d| t.lookup(d).map_or(0, |m| m.cost.0));
    let lpm_plain = lpm(&|d| cost(plain.longest(d)));
    let lpm_bitmap = lpm(&|d| cost(bitmap.longest(d)));
    let lpm_hash = lpm(&|d| cost(by_len.longest(d)));

    let mode = if full {
        "full"
    } else {
        "smoke (debug build, small tables: figures not meaningful)"
    };
    println!(
        "mode: {mode}; {} numbers, best of {rounds} rounds, one thread; load average {}",
        numbers.len(),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    for (what, r) in [
        ("route decisions, Router::rank (parse + plan + Vec)", api),
        ("route decisions, Plan::rank_into (buffer reused)  ", into),
    ] {
        let best = if r.cpu > 0.0 { r.cpu } else { r.wall };
        println!(
            "{what}: {}  = {:.2} x the 2 M/s target",
            r.show(),
            best / TARGET_PER_S
        );
    }
    println!(
        "longest-prefix match, one tariff of {} prefixes:\n  hash table per length (used, {:.1} MB): {}\n  bitmap trie, 12-byte nodes ({:.1} MB):  {}\n  [u32; 10] trie ({:.1} MB):              {}\n  std HashMap per length (SipHash):       {}",
        t.len(),
        t.memory_bytes() as f64 / 1e6,
        lpm_ours.show(),
        bitmap.nodes.len() as f64 * 12.0 / 1e6,
        lpm_bitmap.show(),
        std::mem::size_of_val(plain.nodes.as_slice()) as f64 / 1e6,
        lpm_plain.show(),
        lpm_hash.show()
    );
}
