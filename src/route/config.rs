//! The routing part of the configuration file: `[[peer]]`, `[[channel]]` and `[routing]`.
//!
//! The raw structs mirror the file like the rest of `config.rs` (`deny_unknown_fields`); the
//! typed [`RoutingConfig`] is what the router compiles. Tariff files named by `tariff_file` are
//! read and parsed here, at load time, so an error in one is a configuration error naming the
//! CSV file and its line, and a reload (SIGHUP) that meets one keeps the old tables.
//!
//! ```toml
//! [[peer]]                      # another site of the organization
//! name = "fr"
//! forwarding_cost = 0.002       # per message forwarded there
//! up = true                     # assumed state until the link says otherwise
//!
//! [[channel]]
//! name = "fr-modems"
//! kind = "modems"               # modems | smpp | peer
//! site = "fr"                   # this site's [site] name or a [[peer]]
//! tariff_file = "tariffs/fr-modems.csv"   # or: tariff = { "33" = 0.02, "44" = 0.08 }
//! blocked_prefixes = ["3389"]   # never through this channel
//! # [channel.smpp]              # an `smpp` channel of this site: how to bind to the provider
//! #                             # (see `peer::config`)
//!
//! [routing]
//! workload_weight = 0.0001      # cost per second of backlog at a site
//! max_backlog_secs = 3600
//! blocked_prefixes = ["+881"]   # never routed anywhere
//! [routing.allowed_channels]
//! "+44" = ["uk-modems"]         # longest matching prefix decides
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::tariff::{Cost, Prefix, Tariff};
use crate::config::{ConfigError, Locator};

/// Everything the router is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingConfig {
    /// This site's name (`[site] name`).
    pub local: String,
    pub peers: Vec<PeerConfig>,
    pub channels: Vec<ChannelConfig>,
    /// Cost added per second of backlog at a site (queue length ÷ throughput).
    pub workload_weight: Cost,
    /// Backlog counted at most this long, so a stalled site (no throughput) gets a finite term.
    pub max_backlog: Duration,
    /// Destinations never routed, whatever the channel.
    pub blocked_prefixes: Vec<Prefix>,
    /// Destination prefix → the only channels that may carry it (longest prefix decides).
    pub allowed_channels: Vec<(Prefix, Vec<String>)>,
}

/// Another site of the organization, as routing sees it. The peer link (SMPP address, system id,
/// keepalive) is configured by the peer module in the same `[[peer]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub name: String,
    /// What forwarding one message to this site costs (the link, the inter-site traffic).
    pub forwarding_cost: Cost,
    /// The site's state until failure detection reports on it; on reload a changed value is
    /// applied, so an admin can take a site out of routing by hand.
    pub up: bool,
}

/// What a channel is, which tells dispatch how to hand a message over at its site.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// The site's own GSM modems (its `[[modem]]` pool). At most one per site.
    Modems,
    /// An external SMPP provider the site binds to.
    Smpp,
    /// The link to a peer site, priced as a whole: "whatever that site does with it", for a site
    /// whose own channels this one does not list. Its `site` is that peer.
    Peer,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Modems => "modems",
            ChannelKind::Smpp => "smpp",
            ChannelKind::Peer => "peer",
        }
    }
}

/// Where a tariff came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TariffSource {
    Inline,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// The site that sends through this channel.
    pub site: String,
    pub tariff: Arc<Tariff>,
    pub tariff_source: TariffSource,
    /// Destinations this channel must not carry, whatever its tariff says.
    pub blocked_prefixes: Vec<Prefix>,
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeer {
    pub(crate) name: String,
    #[serde(default)]
    forwarding_cost: Cost,
    #[serde(default = "yes")]
    up: bool,
    /// The SMPP link to this site (`[peer.smpp]`), validated by the peer module.
    #[serde(default)]
    pub(crate) smpp: Option<crate::peer::config::RawPeerLink>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChannel {
    pub(crate) name: String,
    pub(crate) kind: ChannelKind,
    pub(crate) site: String,
    tariff: Option<BTreeMap<String, Cost>>,
    tariff_file: Option<PathBuf>,
    #[serde(default)]
    blocked_prefixes: Vec<String>,
    /// How this site binds to the provider of an `smpp` channel (`[channel.smpp]`),
    /// validated by the peer module.
    #[serde(default)]
    pub(crate) smpp: Option<crate::peer::config::RawProviderLink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRouting {
    workload_weight: Cost,
    max_backlog_secs: u64,
    blocked_prefixes: Vec<String>,
    allowed_channels: BTreeMap<String, Vec<String>>,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            workload_weight: Cost::ZERO,
            max_backlog_secs: 3600,
            blocked_prefixes: Vec::new(),
            allowed_channels: BTreeMap::new(),
        }
    }
}

/// Longest backlog a site's workload term may count: a week. Beyond that the weight, not the
/// backlog, is what an admin should change.
const MAX_BACKLOG_SECS: u64 = 7 * 24 * 3600;

/// Largest workload weight, per second of backlog: keeps weight × backlog inside 64 bits.
const MAX_WORKLOAD_WEIGHT: Cost = Cost(1_000 * Cost::SCALE);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Validates the routing sections. `local` is `[site] name`; `base` the folder relative tariff
/// files are read from.
pub(crate) fn validate(
    local: &str,
    peers: Vec<RawPeer>,
    channels: Vec<RawChannel>,
    routing: RawRouting,
    base: &Path,
    loc: &Locator<'_>,
) -> Result<RoutingConfig, ConfigError> {
    let prefix =
        |key: String, text: &str| Prefix::parse(text).map_err(|e| loc.error(&key, e.to_string()));

    // [[peer]]
    let mut out_peers: Vec<PeerConfig> = Vec::new();
    for (i, p) in peers.into_iter().enumerate() {
        let key = format!("peer[{i}].name");
        if !valid_name(&p.name) {
            return Err(loc.error(&key, "must be letters, digits, - or _"));
        }
        if p.name == local {
            return Err(loc.error(
                &key,
                format!(
                    "`{}` is this site's own name ([site] name); a peer is another site",
                    p.name
                ),
            ));
        }
        if out_peers.iter().any(|o| o.name == p.name) {
            return Err(loc.error(&key, format!("`{}` names two peers", p.name)));
        }
        out_peers.push(PeerConfig {
            name: p.name,
            forwarding_cost: p.forwarding_cost,
            up: p.up,
        });
    }

    // [[channel]]
    let mut out_channels: Vec<ChannelConfig> = Vec::new();
    for (i, c) in channels.into_iter().enumerate() {
        let key = |k: &str| format!("channel[{i}].{k}");
        if !valid_name(&c.name) {
            return Err(loc.error(&key("name"), "must be letters, digits, - or _"));
        }
        if out_channels.iter().any(|o| o.name == c.name) {
            return Err(loc.error(&key("name"), format!("`{}` names two channels", c.name)));
        }
        let is_local = c.site == local;
        if !is_local && !out_peers.iter().any(|p| p.name == c.site) {
            return Err(loc.error(
                &key("site"),
                format!(
                    "`{}` is neither this site (`{local}`) nor a [[peer]]; add a [[peer]] named `{}` first",
                    c.site, c.site
                ),
            ));
        }
        if c.kind == ChannelKind::Peer && is_local {
            return Err(loc.error(
                &key("site"),
                "a `peer` channel is the link to another site: its site must name a [[peer]], not this site",
            ));
        }
        if c.kind == ChannelKind::Modems
            && let Some(other) = out_channels
                .iter()
                .find(|o| o.kind == ChannelKind::Modems && o.site == c.site)
        {
            return Err(loc.error(
                &key("kind"),
                format!(
                    "site `{}` already has a modems channel (`{}`): a site's modems are one group",
                    c.site, other.name
                ),
            ));
        }
        let (tariff, source) = match (c.tariff, c.tariff_file) {
            (Some(_), Some(_)) => {
                return Err(loc.error(
                    &key("tariff_file"),
                    "give either `tariff` (inline) or `tariff_file`, not both",
                ));
            }
            (None, None) => {
                return Err(loc.error(
                    &format!("channel[{i}]"),
                    "needs a tariff: `tariff = { \"33\" = 0.045 }` or `tariff_file = \"tariffs/x.csv\"`",
                ));
            }
            (Some(map), None) => {
                let mut entries = Vec::with_capacity(map.len());
                for (p, cost) in map {
                    let parsed = prefix(format!("channel[{i}].tariff.{p}"), &p)?;
                    entries.push((parsed, cost));
                }
                let t = Tariff::from_entries(entries)
                    .map_err(|e| loc.error(&key("tariff"), e.to_string()))?;
                (t, TariffSource::Inline)
            }
            (None, Some(file)) => {
                let path = if file.is_absolute() {
                    file
                } else {
                    base.join(file)
                };
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    loc.error(
                        &key("tariff_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let t = Tariff::parse_csv(&text).map_err(|e| ConfigError {
                    file: path.clone(),
                    line: e.line,
                    column: e.column,
                    key: key("tariff_file"),
                    message: e.message,
                })?;
                (t, TariffSource::File(path))
            }
        };
        let mut blocked = Vec::new();
        for (j, p) in c.blocked_prefixes.iter().enumerate() {
            blocked.push(prefix(format!("channel[{i}].blocked_prefixes[{j}]"), p)?);
        }
        out_channels.push(ChannelConfig {
            name: c.name,
            kind: c.kind,
            site: c.site,
            tariff: Arc::new(tariff),
            tariff_source: source,
            blocked_prefixes: blocked,
        });
    }

    // [routing]
    if routing.workload_weight > MAX_WORKLOAD_WEIGHT {
        return Err(loc.error(
            "routing.workload_weight",
            format!("must be at most {MAX_WORKLOAD_WEIGHT} per second of backlog"),
        ));
    }
    if !(1..=MAX_BACKLOG_SECS).contains(&routing.max_backlog_secs) {
        return Err(loc.error(
            "routing.max_backlog_secs",
            format!("must be between 1 and {MAX_BACKLOG_SECS} (a week)"),
        ));
    }
    let mut blocked = Vec::new();
    for (i, p) in routing.blocked_prefixes.iter().enumerate() {
        blocked.push(prefix(format!("routing.blocked_prefixes[{i}]"), p)?);
    }
    let mut allowed: Vec<(Prefix, Vec<String>)> = Vec::new();
    for (p, names) in routing.allowed_channels {
        let key = format!("routing.allowed_channels.{p}");
        let parsed = prefix(key.clone(), &p)?;
        if allowed.iter().any(|(q, _)| *q == parsed) {
            return Err(loc.error(&key, format!("prefix {parsed} is given twice")));
        }
        if names.is_empty() {
            return Err(loc.error(
                &key,
                "an empty list allows no channel; to refuse a destination use routing.blocked_prefixes",
            ));
        }
        for (j, n) in names.iter().enumerate() {
            if !out_channels.iter().any(|c| &c.name == n) {
                return Err(loc.error(
                    &format!("{key}[{j}]"),
                    format!("`{n}` is not a [[channel]] name"),
                ));
            }
        }
        allowed.push((parsed, names));
    }
    allowed.sort_by_key(|a| a.0);

    Ok(RoutingConfig {
        local: local.to_string(),
        peers: out_peers,
        channels: out_channels,
        workload_weight: routing.workload_weight,
        max_backlog: Duration::from_secs(routing.max_backlog_secs),
        blocked_prefixes: blocked,
        allowed_channels: allowed,
    })
}
