//! Least-cost routing: which site, through which channel, sends a message to a number.
//!
//! ## The organization's view
//!
//! Every site's configuration describes the same organization: this site (`[site]`), the other
//! sites (`[[peer]]`), and the channels of every site (`[[channel]]`): a site's GSM modem group
//! (`modems`), an external SMPP provider it binds to (`smpp`), or the peer link to a site priced
//! as a whole (`peer`). Each channel has a tariff ([`tariff`]): destination prefix → cost per
//! part, longest prefix wins. A **candidate** is one channel, at the site it belongs to.
//!
//! ## The cost of a candidate
//!
//! ```text
//! total = tariff(longest prefix) × parts          the channel's price
//!       + forwarding cost of its site             zero for this site; per message for a peer
//!       + workload_weight × backlog of its site   see [`workload`]
//! ```
//!
//! All in [`Cost`] units (millionths of the organization's currency unit), integers, so equal
//! totals are equal. A candidate is **excluded**, and says why ([`Exclusions`]), when the number
//! is under `routing.blocked_prefixes`, under the channel's own `blocked_prefixes`, under a
//! `routing.allowed_channels` prefix that does not list the channel (the longest such prefix
//! decides), when its tariff has no prefix of the number, or when its site or the channel itself
//! is marked down. Included candidates are ranked by total; **ties** go to this site first, then
//! by site name, then by channel name, so two sites with the same view rank alike and the same
//! input always gives the same route. Excluded candidates follow, in that same order.
//!
//! ## Health and workload
//!
//! [`RouterState`] is the live part, shared by handle with whoever observes it: the peer links
//! mark a site up or down from their keepalives ([`RouterState::set_site_up`]), dispatch and the
//! peer links report queue length and throughput ([`RouterState::set_workload`]), a channel
//! whose modems or provider are all failing is marked down ([`RouterState::set_channel_up`]).
//! Each of these is one atomic store; the router reads them on every decision, so a site marked
//! down is avoided from the next decision on, and marked up it comes back the same way. How the
//! workload figures travel between sites is described in [`workload`].
//!
//! ## The hot path
//!
//! The configuration is compiled into a [`Plan`]: one longest-prefix table
//! ([`tariff::PrefixTable`]) over the union of every channel's prefixes and every rule's
//! prefixes, where each prefix leads to a *row*: for every channel, its per-part cost for that
//! prefix (the channel's own longest match, resolved at compile time by walking the union as a
//! trie) or a marker for "no tariff" / "blocked on this channel", plus the destination's rule
//! (blocked, allowed channels). A decision is then one longest-prefix lookup, one row read, and
//! a loop over the channels reading two atomics per site: no locking, no allocation but the
//! result's `Vec` (none at all with [`Plan::rank_into`]). The row of each prefix is stored in the
//! table's slot, so the lookup brings it along, and the loop and the final ordering avoid
//! data-dependent branches; `bench/route.rs` measures about 3 M decisions per second on one
//! thread over 100k-prefix tariffs, six channels and three sites.
//! Explanations ([`explain`]) are built apart, on request, by a slower path that also names the
//! prefixes that decided.
//!
//! ## Reload
//!
//! [`Router::reload`] compiles a new plan from a new configuration and swaps it in atomically
//! (`arc-swap`): decisions in flight finish on the plan they started with, the next ones see the
//! new one, and readers never wait. `mail2sms run` reloads on SIGHUP; a file with an error is
//! refused when it is read (`config::load`), so the old plan stays, and the error names the file
//! and line. Live state is kept across reloads by site and channel name.
//!
//! ## Forwarded messages
//!
//! A message a peer forwarded here was routed once already: [`Router::rank_forwarded`] ranks only
//! this site's own channels, so a message is never forwarded twice and two sites never bounce one
//! message between them.

pub mod config;
pub mod explain;
pub mod tariff;
pub mod workload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;

pub use config::{ChannelConfig, ChannelKind, PeerConfig, RoutingConfig, TariffSource};
pub use tariff::{Cost, Prefix, Tariff};

use tariff::{PrefixTable, PrefixTableBuilder};

/// Most digits in a number the router accepts: the address parser's limit (the longest national
/// number in libphonenumber's metadata after the longest country code), above E.164's 15.
pub const MAX_NUMBER_DIGITS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("`{0}` is not a number in E.164 form such as +33477858589 (1 to 20 digits)")]
    NotANumber(String),
    #[error(
        "the site's name changed from `{old}` to `{new}`; a site is renamed by restarting it, not by a reload"
    )]
    SiteRenamed { old: String, new: String },
    #[error("the routing tables are too large: {0}")]
    TooLarge(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Exclusions.

/// Why a candidate cannot be used; several reasons may hold at once.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Exclusions(u8);

impl Exclusions {
    /// The number is under `routing.blocked_prefixes`.
    pub const BLOCKED: Exclusions = Exclusions(1);
    /// The number is under the channel's `blocked_prefixes`.
    pub const CHANNEL_BLOCKED: Exclusions = Exclusions(2);
    /// A `routing.allowed_channels` rule covers the number and does not list the channel.
    pub const NOT_ALLOWED: Exclusions = Exclusions(4);
    /// The channel's tariff has no prefix of the number.
    pub const NO_TARIFF: Exclusions = Exclusions(8);
    /// The channel's site is marked down.
    pub const SITE_DOWN: Exclusions = Exclusions(16);
    /// The channel itself is marked down.
    pub const CHANNEL_DOWN: Exclusions = Exclusions(32);

    const ALL: [(Exclusions, &'static str); 6] = [
        (Exclusions::BLOCKED, "blocked"),
        (Exclusions::CHANNEL_BLOCKED, "blocked on this channel"),
        (Exclusions::NOT_ALLOWED, "not allowed"),
        (Exclusions::NO_TARIFF, "no tariff for this prefix"),
        (Exclusions::SITE_DOWN, "site down"),
        (Exclusions::CHANNEL_DOWN, "channel down"),
    ];

    pub const fn empty() -> Self {
        Exclusions(0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Exclusions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The reasons, as short phrases, in a fixed order.
    pub fn reasons(self) -> impl Iterator<Item = &'static str> {
        Exclusions::ALL
            .into_iter()
            .filter(move |(e, _)| self.contains(*e))
            .map(|(_, s)| s)
    }
}

impl std::ops::BitOr for Exclusions {
    type Output = Exclusions;
    fn bitor(self, rhs: Self) -> Self {
        Exclusions(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Exclusions {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl std::fmt::Debug for Exclusions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.reasons()).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Live state.

/// The live state of one site, updated by whoever observes it.
#[derive(Debug)]
pub struct SiteLive {
    up: AtomicBool,
    queue_len: AtomicU64,
    /// Thousandths of a part per second.
    throughput_milli: AtomicU64,
    /// queue_len ÷ throughput, in ms, computed when reported so decisions only read it.
    backlog_ms: AtomicU64,
}

impl SiteLive {
    fn new(up: bool) -> Self {
        SiteLive {
            up: AtomicBool::new(up),
            queue_len: AtomicU64::new(0),
            throughput_milli: AtomicU64::new(0),
            backlog_ms: AtomicU64::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        // Relaxed: each flag is independent and a decision only needs some recent value.
        self.up.load(Ordering::Relaxed)
    }

    /// The last reported queue length and throughput (parts per second).
    pub fn workload(&self) -> (u64, f64) {
        (
            self.queue_len.load(Ordering::Relaxed),
            self.throughput_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }

    pub fn backlog_ms(&self) -> u64 {
        self.backlog_ms.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct ChannelLive {
    up: AtomicBool,
}

impl ChannelLive {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The live state the router reads: which sites and channels are up, and each site's workload.
/// A cheap handle (clone it); setters are safe from any thread and take effect on the next
/// decision. Names not (yet) in the configuration are remembered, so a report that arrives
/// before a reload adds its site is not lost.
#[derive(Clone, Debug, Default)]
pub struct RouterState {
    inner: Arc<StateInner>,
}

#[derive(Debug, Default)]
struct StateInner {
    sites: RwLock<HashMap<String, Arc<SiteLive>>>,
    channels: RwLock<HashMap<String, Arc<ChannelLive>>>,
}

impl RouterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks a site up or down (failure detection: the peer link's keepalive). Returns whether
    /// the state changed.
    pub fn set_site_up(&self, site: &str, up: bool) -> bool {
        self.site(site, up).up.swap(up, Ordering::Relaxed) != up
    }

    /// Records a site's workload: parts waiting, and parts sent per second lately.
    pub fn set_workload(&self, site: &str, queue_len: u64, throughput_per_s: f64) {
        let s = self.site(site, true);
        let milli = if throughput_per_s.is_finite() && throughput_per_s > 0.0 {
            (throughput_per_s * 1000.0).round() as u64
        } else {
            0
        };
        s.queue_len.store(queue_len, Ordering::Relaxed);
        s.throughput_milli.store(milli, Ordering::Relaxed);
        s.backlog_ms.store(
            workload::backlog_ms(queue_len, throughput_per_s),
            Ordering::Relaxed,
        );
    }

    /// Marks a channel up or down (e.g. every modem of the group quarantined, or the provider's
    /// bind lost). Returns whether the state changed.
    pub fn set_channel_up(&self, channel: &str, up: bool) -> bool {
        self.channel(channel).up.swap(up, Ordering::Relaxed) != up
    }

    pub fn site_up(&self, site: &str) -> Option<bool> {
        let map = self.inner.sites.read().unwrap_or_else(|e| e.into_inner());
        map.get(site).map(|s| s.is_up())
    }

    /// The live entry of a site, created with `up` if it is new.
    fn site(&self, name: &str, up: bool) -> Arc<SiteLive> {
        if let Some(s) = self
            .inner
            .sites
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return s.clone();
        }
        let mut map = self.inner.sites.write().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(SiteLive::new(up)))
            .clone()
    }

    fn channel(&self, name: &str) -> Arc<ChannelLive> {
        if let Some(c) = self
            .inner
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return c.clone();
        }
        let mut map = self
            .inner
            .channels
            .write()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(ChannelLive {
                    up: AtomicBool::new(true),
                })
            })
            .clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The compiled plan.

/// Per-part cost markers in a row; real costs are at most [`tariff::MAX_PART_COST`].
const NO_TARIFF: u32 = u32::MAX;
const CHANNEL_BLOCKED: u32 = u32::MAX - 1;
/// Row meta word: bit 31 = destination blocked; the rest = the allowed-channels rule in force,
/// an index into the plan's rule bitsets (the last of which allows every channel).
const META_BLOCKED: u32 = 1 << 31;
const RULE_MASK: u32 = META_BLOCKED - 1;

#[derive(Debug)]
pub struct SitePlan {
    pub name: String,
    pub local: bool,
    pub forwarding: Cost,
    pub live: Arc<SiteLive>,
}

#[derive(Debug)]
pub struct ChannelPlan {
    pub name: String,
    pub kind: ChannelKind,
    /// Index into [`Plan::sites`].
    pub site: u16,
    pub tariff: Arc<Tariff>,
    pub live: Arc<ChannelLive>,
}

/// Where a decision may send a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Any site: a message accepted here.
    Organization,
    /// This site's channels only: a message a peer forwarded here.
    LocalOnly,
}

/// One candidate of a decision, with every term. Indices refer to the [`Plan`] it came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    /// Index into [`Plan::channels`]; also the tie-break order.
    pub channel: u16,
    /// Index into [`Plan::sites`]; 0 is this site.
    pub site: u16,
    /// The tariff's cost per part, when the channel has one for this number and is not blocked.
    pub per_part: Option<Cost>,
    /// `per_part × parts` (zero without a tariff).
    pub tariff: Cost,
    pub forwarding: Cost,
    pub workload: Cost,
    /// The sum of the three terms; meaningful for included candidates only.
    pub total: Cost,
    pub excluded: Exclusions,
}

impl Choice {
    pub fn is_included(&self) -> bool {
        self.excluded.is_empty()
    }
}

/// The compiled, immutable routing tables: one generation of the configuration.
#[derive(Debug)]
pub struct Plan {
    /// Index 0 is this site; peers follow in name order.
    pub sites: Vec<SitePlan>,
    /// In tie-break order: this site's channels, then by site name, then by channel name.
    pub channels: Vec<ChannelPlan>,
    /// Prefix → row of `1 + channels` values: a meta word, then one per-part cost per channel,
    /// stored in the table's slots so the lookup brings the row with it.
    table: PrefixTable,
    /// Allowed-channel sets: `allow_words` words per rule, bit i = channel i allowed; the last
    /// set allows every channel and is the rule where no `allowed_channels` prefix applies.
    allow_bits: Box<[u64]>,
    allow_words: usize,
    /// The meta word of a number no prefix covers: not blocked, every channel allowed.
    no_match_meta: u32,
    workload_weight: Cost,
    max_backlog_ms: u64,
    /// The configuration it was compiled from, for explanations and reload reports.
    pub config: RoutingConfig,
}

/// The digits of a number written `+33477858589` or `33477858589`.
pub fn number_digits(number: &str) -> Result<&[u8], RouteError> {
    let d = number.strip_prefix('+').unwrap_or(number).as_bytes();
    if d.is_empty() || d.len() > MAX_NUMBER_DIGITS || !d.iter().all(u8::is_ascii_digit) {
        return Err(RouteError::NotANumber(number.chars().take(40).collect()));
    }
    Ok(d)
}

impl Plan {
    /// Compiles a configuration. Live entries come from `state` by name; `previous` is the plan
    /// being replaced, if any, whose `[[peer]] up` values tell which ones the admin changed.
    pub fn compile(
        cfg: &RoutingConfig,
        state: &RouterState,
        previous: Option<&Plan>,
    ) -> Result<Plan, RouteError> {
        // Sites: this one first, then peers by name.
        let mut peers: Vec<&PeerConfig> = cfg.peers.iter().collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sites = vec![SitePlan {
            name: cfg.local.clone(),
            local: true,
            forwarding: Cost::ZERO,
            live: state.site(&cfg.local, true),
        }];
        for p in peers {
            let live = state.site(&p.name, p.up);
            let was = previous.and_then(|old| old.config.peers.iter().find(|o| o.name == p.name));
            if was.is_some_and(|o| o.up != p.up) {
                live.up.store(p.up, Ordering::Relaxed);
            }
            sites.push(SitePlan {
                name: p.name.clone(),
                local: false,
                forwarding: p.forwarding_cost,
                live,
            });
        }
        if sites.len() > usize::from(u16::MAX) {
            return Err(RouteError::TooLarge("more than 65535 sites"));
        }
        let site_index = |name: &str| sites.iter().position(|s| s.name == name);

        // Channels in tie-break order. Validation guarantees every channel's site exists.
        let mut chans: Vec<(usize, &ChannelConfig)> = Vec::new();
        for c in &cfg.channels {
            if let Some(i) = site_index(&c.site) {
                chans.push((i, c));
            }
        }
        chans.sort_by(|a, b| {
            (a.0 != 0, &sites[a.0].name, &a.1.name).cmp(&(b.0 != 0, &sites[b.0].name, &b.1.name))
        });
        if chans.len() > usize::from(u16::MAX) {
            return Err(RouteError::TooLarge("more than 65535 channels"));
        }
        let channels: Vec<ChannelPlan> = chans
            .iter()
            .map(|(s, c)| ChannelPlan {
                name: c.name.clone(),
                kind: c.kind,
                site: *s as u16,
                tariff: c.tariff.clone(),
                live: state.channel(&c.name),
            })
            .collect();
        let n = channels.len();
        let stride = n + 1;

        // Allowed-channel rules as bitsets over channel indices, then one allowing every
        // channel, so a decision always tests a bit rather than first asking whether a rule
        // applies.
        if cfg.allowed_channels.len() >= RULE_MASK as usize {
            return Err(RouteError::TooLarge("too many allowed_channels rules"));
        }
        let allow_words = n.div_ceil(64).max(1);
        let all_rule = cfg.allowed_channels.len();
        let mut allow_bits = vec![0u64; allow_words * (all_rule + 1)];
        for (r, (_, names)) in cfg.allowed_channels.iter().enumerate() {
            for name in names {
                if let Some(i) = channels.iter().position(|c| &c.name == name) {
                    allow_bits[r * allow_words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        allow_bits[all_rule * allow_words..].fill(u64::MAX);
        let no_match_meta = all_rule as u32;

        // Every prefix of every source becomes a node, with what it says attached.
        #[derive(Clone, Copy)]
        enum Own {
            Tariff(u16, u32),
            Allow(u32),
            Blocked,
            ChannelBlocked(u16),
        }
        let mut b = PrefixTableBuilder::new();
        let mut own: Vec<(u32, Own)> = Vec::new();
        for (i, (_, c)) in chans.iter().enumerate() {
            for (p, cost) in c.tariff.entries() {
                // Tariff::from_entries refuses costs above MAX_PART_COST, below the markers.
                let node = b.node(p.as_bytes()).0;
                own.push((node, Own::Tariff(i as u16, cost.0 as u32)));
            }
            for p in &c.blocked_prefixes {
                own.push((b.node(p.as_bytes()).0, Own::ChannelBlocked(i as u16)));
            }
        }
        for (r, (p, _)) in cfg.allowed_channels.iter().enumerate() {
            own.push((b.node(p.as_bytes()).0, Own::Allow(r as u32)));
        }
        for p in &cfg.blocked_prefixes {
            own.push((b.node(p.as_bytes()).0, Own::Blocked));
        }
        // Group by node; within a node, prices before blocks so a block always wins.
        own.sort_by_key(|(node, o)| {
            let order = match o {
                Own::Tariff(..) => 0,
                Own::Allow(_) => 1,
                Own::Blocked | Own::ChannelBlocked(_) => 2,
            };
            (*node, order)
        });
        let mut starts = vec![0u32; b.node_count() + 1];
        for (node, _) in &own {
            starts[*node as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }

        // Depth-first from the root, carrying the row in force: a node's row is its parent's
        // with the node's own entries applied. Blocks are sticky (a longer price cannot lift
        // them); prices and allow rules are replaced by longer ones.
        let mut no_row = vec![NO_TARIFF; stride];
        no_row[0] = no_match_meta;
        let mut levels: Vec<Vec<u32>> = vec![no_row.clone()];
        let mut rows: Vec<u32> = Vec::new();
        let mut marks: Vec<(tariff::NodeId, u32)> = Vec::new();
        let mut stack: Vec<(tariff::NodeId, usize)> =
            b.children(tariff::NodeId(0)).map(|(_, c)| (c, 1)).collect();
        stack.reverse();
        while let Some((node, depth)) = stack.pop() {
            if levels.len() <= depth {
                levels.push(Vec::new());
            }
            let (parents, rest) = levels.split_at_mut(depth);
            let row = &mut rest[0];
            row.clear();
            row.extend_from_slice(&parents[depth - 1]);
            let entries =
                &own[starts[node.0 as usize] as usize..starts[node.0 as usize + 1] as usize];
            for (_, o) in entries {
                match *o {
                    Own::Tariff(i, cost) => {
                        let slot = &mut row[1 + usize::from(i)];
                        if *slot != CHANNEL_BLOCKED {
                            *slot = cost;
                        }
                    }
                    Own::ChannelBlocked(i) => row[1 + usize::from(i)] = CHANNEL_BLOCKED,
                    Own::Allow(r) => row[0] = (row[0] & META_BLOCKED) | r,
                    Own::Blocked => row[0] |= META_BLOCKED,
                }
            }
            if !entries.is_empty() {
                let id = u32::try_from(rows.len() / stride)
                    .ok()
                    .filter(|&id| id != u32::MAX)
                    .ok_or(RouteError::TooLarge("more than 4 billion rows"))?;
                rows.extend_from_slice(row);
                marks.push((node, id));
            }
            stack.extend(b.children(node).rev().map(|(_, c)| (c, depth + 1)));
        }
        for (node, id) in marks {
            b.set(node, id);
        }

        Ok(Plan {
            sites,
            channels,
            table: b.finish_rows(stride, &rows),
            allow_bits: allow_bits.into_boxed_slice(),
            allow_words,
            no_match_meta,
            workload_weight: cfg.workload_weight,
            max_backlog_ms: u64::try_from(cfg.max_backlog.as_millis()).unwrap_or(u64::MAX),
            config: cfg.clone(),
        })
    }

    /// Ranks every candidate for a number (its digits, see [`number_digits`]) into `out`, which
    /// is cleared first: included candidates by total then tie-break order, then excluded ones.
    /// Allocates nothing once `out` has room for every channel.
    #[inline]
    pub fn rank_into(&self, digits: &[u8], parts: u32, scope: Scope, out: &mut Vec<Choice>) {
        out.clear();
        let row = self.table.longest_values(digits).map(|(_, v)| v);
        let meta = row.map_or(self.no_match_meta, |r| r.get(0));
        let blocked = u8::from(meta & META_BLOCKED != 0);
        let rule = (meta & RULE_MASK) as usize * self.allow_words;
        let parts = u64::from(parts.max(1));
        // The loop is written without data-dependent branches: which channels have a price or
        // are allowed differs from number to number, and mispredicted branches, not memory,
        // were most of a decision's time once the row came with the lookup.
        for (i, ch) in self.channels.iter().enumerate() {
            if scope == Scope::LocalOnly && ch.site != 0 {
                continue;
            }
            let Some(site) = self.sites.get(usize::from(ch.site)) else {
                continue;
            };
            let raw = row.map_or(NO_TARIFF, |r| r.get(1 + i));
            let allowed = self
                .allow_bits
                .get(rule + i / 64)
                .is_some_and(|w| w >> (i % 64) & 1 == 1);
            let excluded = Exclusions(
                blocked
                    | u8::from(raw == CHANNEL_BLOCKED) << 1
                    | u8::from(!allowed) << 2
                    | u8::from(raw == NO_TARIFF) << 3
                    | u8::from(!site.live.is_up()) << 4
                    | u8::from(!ch.live.is_up()) << 5,
            );
            let priced = raw < CHANNEL_BLOCKED;
            let per_part = if priced { u64::from(raw) } else { 0 };
            // per_part < 2^32 and parts < 2^32: the product fits.
            let tariff = Cost(per_part * parts);
            let workload = workload::term(
                self.workload_weight,
                site.live.backlog_ms(),
                self.max_backlog_ms,
            );
            let total = tariff
                .saturating_add(site.forwarding)
                .saturating_add(workload);
            out.push(Choice {
                channel: i as u16,
                site: ch.site,
                per_part: priced.then_some(Cost(per_part)),
                tariff,
                forwarding: site.forwarding,
                workload,
                total,
                excluded,
            });
        }
        rank_choices(out);
    }

    pub fn channel(&self, c: &Choice) -> &ChannelPlan {
        &self.channels[usize::from(c.channel)]
    }

    pub fn site(&self, c: &Choice) -> &SitePlan {
        &self.sites[usize::from(c.site)]
    }

    /// This site's name.
    pub fn local(&self) -> &str {
        &self.sites[0].name
    }

    pub fn workload_weight(&self) -> Cost {
        self.workload_weight
    }

    /// Prefixes in the compiled table (the union of every source's prefixes).
    pub fn prefixes(&self) -> usize {
        self.table.len()
    }

    /// Bytes of the compiled table (rows included), for reports.
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }
}

/// Orders candidates: included before excluded, then by total, then by channel index, which is
/// the tie-break order and unique, so the order is total.
fn rank_choices(out: &mut [Choice]) {
    const FAST: usize = 16;
    const TOTAL_BITS: u32 = 47;
    let key = |c: &Choice| -> (bool, u64) {
        let included = c.excluded.is_empty();
        (included, if included { c.total.0 } else { 0 })
    };
    // Up to 16 candidates whose totals fit 47 bits (140 million currency units): each one's
    // place is the number of smaller keys, counted without branches, instead of a sort whose
    // comparisons the processor keeps mispredicting.
    if out.len() <= FAST && out.iter().all(|c| key(c).1 < 1 << TOTAL_BITS) {
        let mut keys = [0u64; FAST];
        for (k, c) in keys.iter_mut().zip(out.iter()) {
            let (included, total) = key(c);
            *k = u64::from(!included) << 63 | total << 16 | u64::from(c.channel);
        }
        let keys = &keys[..out.len()];
        let mut places = [0usize; FAST];
        for (p, k) in places.iter_mut().zip(keys) {
            *p = keys.iter().filter(|&&other| other < *k).count();
        }
        let mut sorted = [Choice::default(); FAST];
        for (c, &p) in out.iter().zip(&places) {
            sorted[p] = *c;
        }
        out.copy_from_slice(&sorted[..out.len()]);
        return;
    }
    out.sort_unstable_by_key(|c| {
        let (included, total) = key(c);
        u128::from(!included) << 127 | u128::from(total) << 16 | u128::from(c.channel)
    });
}

// ---------------------------------------------------------------------------------------------
// The router.

/// The result of a decision: the candidates, best first, and the plan they refer to.
#[derive(Debug)]
pub struct Ranking {
    /// An `arc-swap` guard rather than a cloned `Arc`: a decision then touches no shared
    /// reference count. Meant to be short-lived (a guard kept long falls back to a real `Arc`).
    plan: arc_swap::Guard<Arc<Plan>>,
    pub parts: u32,
    pub choices: Vec<Choice>,
}

impl Clone for Ranking {
    fn clone(&self) -> Self {
        Ranking {
            plan: arc_swap::Guard::from_inner(Arc::clone(&self.plan)),
            parts: self.parts,
            choices: self.choices.clone(),
        }
    }
}

/// A candidate with its names, borrowed from the ranking's plan.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub site: &'a str,
    pub channel: &'a str,
    pub kind: ChannelKind,
    /// Whether the site is this one (no forwarding).
    pub local: bool,
    pub choice: &'a Choice,
}

impl Ranking {
    /// The cheapest usable candidate, if any.
    pub fn best(&self) -> Option<Candidate<'_>> {
        self.candidates().next().filter(|c| c.choice.is_included())
    }

    /// Every candidate, best first, excluded ones last.
    pub fn candidates(&self) -> impl Iterator<Item = Candidate<'_>> {
        self.choices.iter().map(|c| {
            let ch = self.plan.channel(c);
            let site = self.plan.site(c);
            Candidate {
                site: &site.name,
                channel: &ch.name,
                kind: ch.kind,
                local: site.local,
                choice: c,
            }
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// With no usable candidate: whether one is excluded only because a site or channel is
    /// down, so the message may go once it is back (retry later) rather than never (fail now).
    pub fn may_recover(&self) -> bool {
        let health = Exclusions::SITE_DOWN | Exclusions::CHANNEL_DOWN;
        self.choices
            .iter()
            .any(|c| !c.excluded.is_empty() && health.contains(c.excluded))
    }
}

/// What a reload changed, in sentences for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub changes: Vec<String>,
}

/// The router: the current plan (swapped whole on reload) and the live state.
#[derive(Debug)]
pub struct Router {
    plan: ArcSwap<Plan>,
    state: RouterState,
    /// Serialises reloads, so two at once cannot both compare against the same old plan.
    reloading: Mutex<()>,
}

impl Router {
    pub fn new(cfg: &RoutingConfig, state: RouterState) -> Result<Router, RouteError> {
        let plan = Plan::compile(cfg, &state, None)?;
        Ok(Router {
            plan: ArcSwap::from_pointee(plan),
            state,
            reloading: Mutex::new(()),
        })
    }

    /// The router for a loaded configuration, with fresh live state.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Router, RouteError> {
        Router::new(&cfg.routing, RouterState::new())
    }

    /// The live state handle, for the peer links and dispatch.
    pub fn state(&self) -> &RouterState {
        &self.state
    }

    /// The current plan.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.load_full()
    }

    /// Ranks the candidates for a message of `parts` parts to `number` (E.164, `+` optional).
    pub fn rank(&self, number: &str, parts: u32) -> Result<Ranking, RouteError> {
        self.rank_scoped(number, parts, Scope::Organization)
    }

    /// Ranks only this site's channels, for a message a peer forwarded here.
    pub fn rank_forwarded(&self, number: &str, parts: u32) -> Result<Ranking, RouteError> {
        self.rank_scoped(number, parts, Scope::LocalOnly)
    }

    fn rank_scoped(&self, number: &str, parts: u32, scope: Scope) -> Result<Ranking, RouteError> {
        let digits = number_digits(number)?;
        let plan = self.plan.load();
        let mut choices = Vec::with_capacity(plan.channels.len());
        plan.rank_into(digits, parts, scope, &mut choices);
        Ok(Ranking {
            plan,
            parts,
            choices,
        })
    }

    /// Compiles the routing part of `cfg` and swaps it in. On error the current plan stays.
    pub fn reload(&self, cfg: &crate::config::Config) -> Result<ReloadReport, RouteError> {
        self.reload_routing(&cfg.routing)
    }

    /// [`Router::reload`] from the routing part alone.
    pub fn reload_routing(&self, cfg: &RoutingConfig) -> Result<ReloadReport, RouteError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.plan.load_full();
        if old.config.local != cfg.local {
            return Err(RouteError::SiteRenamed {
                old: old.config.local.clone(),
                new: cfg.local.clone(),
            });
        }
        let new = Plan::compile(cfg, &self.state, Some(&old))?;
        let report = ReloadReport {
            changes: describe_changes(&old.config, cfg),
        };
        self.plan.store(Arc::new(new));
        Ok(report)
    }
}

/// Sentences saying how `new` differs from `old`.
pub fn describe_changes(old: &RoutingConfig, new: &RoutingConfig) -> Vec<String> {
    let mut out = Vec::new();
    for p in &new.peers {
        match old.peers.iter().find(|o| o.name == p.name) {
            None => out.push(format!(
                "peer {} added (forwarding cost {})",
                p.name, p.forwarding_cost
            )),
            Some(o) => {
                if o.forwarding_cost != p.forwarding_cost {
                    out.push(format!(
                        "peer {}: forwarding cost {} -> {}",
                        p.name, o.forwarding_cost, p.forwarding_cost
                    ));
                }
                if o.up != p.up {
                    out.push(format!(
                        "peer {}: marked {} by the configuration",
                        p.name,
                        if p.up { "up" } else { "down" }
                    ));
                }
            }
        }
    }
    for o in &old.peers {
        if !new.peers.iter().any(|p| p.name == o.name) {
            out.push(format!("peer {} removed", o.name));
        }
    }
    for c in &new.channels {
        match old.channels.iter().find(|o| o.name == c.name) {
            None => out.push(format!(
                "channel {} added ({} at {}, {} prefixes)",
                c.name,
                c.kind.as_str(),
                c.site,
                c.tariff.len()
            )),
            Some(o) => {
                if o.kind != c.kind || o.site != c.site {
                    out.push(format!(
                        "channel {}: now {} at {} (was {} at {})",
                        c.name,
                        c.kind.as_str(),
                        c.site,
                        o.kind.as_str(),
                        o.site
                    ));
                }
                let d = c.tariff.diff(&o.tariff);
                if !d.is_empty() {
                    out.push(format!(
                        "channel {}: tariff {} -> {} prefixes ({} added, {} removed, {} repriced)",
                        c.name,
                        o.tariff.len(),
                        c.tariff.len(),
                        d.added,
                        d.removed,
                        d.changed
                    ));
                }
                if o.blocked_prefixes != c.blocked_prefixes {
                    out.push(format!(
                        "channel {}: blocked prefixes now [{}]",
                        c.name,
                        join(&c.blocked_prefixes)
                    ));
                }
            }
        }
    }
    for o in &old.channels {
        if !new.channels.iter().any(|c| c.name == o.name) {
            out.push(format!("channel {} removed", o.name));
        }
    }
    if old.workload_weight != new.workload_weight || old.max_backlog != new.max_backlog {
        out.push(format!(
            "workload weight {} per second of backlog, counted up to {} s (was {}, {} s)",
            new.workload_weight,
            new.max_backlog.as_secs(),
            old.workload_weight,
            old.max_backlog.as_secs()
        ));
    }
    if old.blocked_prefixes != new.blocked_prefixes {
        out.push(format!(
            "blocked prefixes now [{}]",
            join(&new.blocked_prefixes)
        ));
    }
    if old.allowed_channels != new.allowed_channels {
        let rules: Vec<String> = new
            .allowed_channels
            .iter()
            .map(|(p, c)| format!("{p}: {}", c.join(" ")))
            .collect();
        out.push(format!("allowed channels now [{}]", rules.join("; ")));
    }
    out
}

fn join(prefixes: &[Prefix]) -> String {
    prefixes
        .iter()
        .map(Prefix::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
