//! `mail2sms route explain`: a decision with every term and the prefix behind each, for an admin
//! asking "why did this go through France?".
//!
//! Built on request, apart from the decision path: it runs the same [`Plan::rank_into`] and then
//! looks up, for each candidate, the tariff entry and the rules that decided, which the decision
//! itself never needs.

use std::fmt::Write as _;

use serde::Serialize;

use super::{ChannelKind, Cost, Exclusions, Plan, Prefix, RouteError, Scope, number_digits};

/// A decision, explained.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// E.164, with `+`.
    pub number: String,
    pub parts: u32,
    /// The site deciding.
    pub site: String,
    /// Cost per second of backlog.
    pub workload_weight: Cost,
    /// Best first; excluded candidates last.
    pub rows: Vec<Row>,
}

/// One candidate with every term.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// 1 for the best; `None` when excluded.
    pub rank: Option<usize>,
    pub site: String,
    pub channel: String,
    pub kind: ChannelKind,
    /// The tariff entry that priced it: its prefix and cost per part.
    pub tariff_prefix: Option<String>,
    pub per_part: Option<Cost>,
    /// `per_part × parts`.
    pub tariff: Cost,
    pub forwarding: Cost,
    pub workload: Cost,
    /// The site's last reported queue length and throughput (parts per second).
    pub queue_len: u64,
    pub throughput_per_s: f64,
    pub total: Cost,
    /// Why it cannot be used, with the rule that says so; empty when it can.
    pub excluded: Vec<String>,
}

impl Plan {
    /// Explains the decision for `number` (E.164, `+` optional).
    pub fn explain(
        &self,
        number: &str,
        parts: u32,
        scope: Scope,
    ) -> Result<Explanation, RouteError> {
        let digits = number_digits(number)?;
        let mut choices = Vec::new();
        self.rank_into(digits, parts, scope, &mut choices);
        let cfg = &self.config;
        let mut rank = 0;
        let rows = choices
            .iter()
            .map(|c| {
                let ch = self.channel(c);
                let site = self.site(c);
                let (queue_len, throughput_per_s) = site.live.workload();
                let matched = ch.tariff.lookup(digits);
                let mut excluded = Vec::new();
                if c.excluded.contains(Exclusions::BLOCKED) {
                    let p = longest(cfg.blocked_prefixes.iter(), digits);
                    excluded.push(format!("blocked ({} in routing.blocked_prefixes)", show(p)));
                }
                if c.excluded.contains(Exclusions::CHANNEL_BLOCKED) {
                    let own = cfg.channels.iter().find(|x| x.name == ch.name);
                    let p = own.and_then(|x| longest(x.blocked_prefixes.iter(), digits));
                    excluded.push(format!("blocked on this channel ({})", show(p)));
                }
                if c.excluded.contains(Exclusions::NOT_ALLOWED) {
                    let rule = cfg
                        .allowed_channels
                        .iter()
                        .filter(|(p, _)| p.matches(digits))
                        .max_by_key(|(p, _)| p.len());
                    excluded.push(match rule {
                        Some((p, names)) => format!(
                            "not allowed ({p} in routing.allowed_channels allows {})",
                            names.join(", ")
                        ),
                        None => "not allowed".to_string(),
                    });
                }
                for (flag, text) in [
                    (Exclusions::NO_TARIFF, "no tariff for this prefix"),
                    (Exclusions::SITE_DOWN, "site down"),
                    (Exclusions::CHANNEL_DOWN, "channel down"),
                ] {
                    if c.excluded.contains(flag) {
                        excluded.push(text.to_string());
                    }
                }
                let rank = c.is_included().then(|| {
                    rank += 1;
                    rank
                });
                Row {
                    rank,
                    site: site.name.clone(),
                    channel: ch.name.clone(),
                    kind: ch.kind,
                    tariff_prefix: matched
                        .filter(|_| c.per_part.is_some())
                        .map(|m| m.prefix.to_string()),
                    per_part: c.per_part,
                    tariff: c.tariff,
                    forwarding: c.forwarding,
                    workload: c.workload,
                    queue_len,
                    throughput_per_s,
                    total: c.total,
                    excluded,
                }
            })
            .collect();
        Ok(Explanation {
            number: format!("+{}", String::from_utf8_lossy(digits)),
            parts: parts.max(1),
            site: self.local().to_string(),
            workload_weight: self.workload_weight(),
            rows,
        })
    }
}

fn longest<'a>(prefixes: impl Iterator<Item = &'a Prefix>, digits: &[u8]) -> Option<&'a Prefix> {
    prefixes
        .filter(|p| p.matches(digits))
        .max_by_key(|p| p.len())
}

fn show(p: Option<&Prefix>) -> String {
    p.map_or_else(|| "a prefix".to_string(), Prefix::to_string)
}

impl Explanation {
    /// The table `mail2sms route explain` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}, {} part{}, routed from site {}; workload weight {} per second of backlog",
            self.number,
            self.parts,
            if self.parts == 1 { "" } else { "s" },
            self.site,
            self.workload_weight
        );
        if self.rows.is_empty() {
            let _ = writeln!(
                s,
                "no channels are configured: add [[channel]] sections with tariffs"
            );
            return s;
        }
        let head = [
            "rank",
            "site",
            "channel",
            "tariff × parts",
            "forwarding",
            "workload",
            "total",
        ];
        let mut lines: Vec<Vec<String>> = Vec::new();
        for r in &self.rows {
            let mut cells = vec![
                r.rank.map_or_else(|| "-".to_string(), |n| n.to_string()),
                r.site.clone(),
                format!("{} ({})", r.channel, r.kind.as_str()),
            ];
            if r.excluded.is_empty() {
                let tariff = match (&r.per_part, &r.tariff_prefix) {
                    (Some(pp), Some(p)) => format!("{pp} ({p}) × {} = {}", self.parts, r.tariff),
                    (Some(pp), None) => format!("{pp} × {} = {}", self.parts, r.tariff),
                    _ => r.tariff.to_string(),
                };
                let workload = if r.queue_len > 0 || r.throughput_per_s > 0.0 {
                    format!(
                        "{} ({} queued, {}/s)",
                        r.workload, r.queue_len, r.throughput_per_s
                    )
                } else {
                    r.workload.to_string()
                };
                cells.extend([
                    tariff,
                    r.forwarding.to_string(),
                    workload,
                    r.total.to_string(),
                ]);
            } else {
                cells.push(format!("excluded: {}", r.excluded.join(", ")));
            }
            lines.push(cells);
        }
        // Widths over the full rows only, so an exclusion sentence does not widen its column.
        let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for l in lines.iter().filter(|l| l.len() == head.len()) {
            for (w, c) in widths.iter_mut().zip(l) {
                *w = (*w).max(c.chars().count());
            }
        }
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l.iter().take(3)) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut put = |cells: &[String]| {
            let last = cells.len() - 1;
            let mut line = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i == last {
                    line.push_str(c);
                } else {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    line.push_str(c);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            let _ = writeln!(s, "{}", line.trim_end());
        };
        put(&head.map(str::to_string));
        for l in &lines {
            put(l);
        }
        if self.rows.iter().all(|r| r.rank.is_none()) {
            let waits = self.rows.iter().any(|r| {
                r.excluded
                    .iter()
                    .all(|e| e == "site down" || e == "channel down")
            });
            let _ = writeln!(
                s,
                "no route: {}",
                if waits {
                    "the message waits until a site or channel above is back up"
                } else {
                    "the message cannot be sent (every candidate is excluded by the configuration)"
                }
            );
        }
        s
    }
}
