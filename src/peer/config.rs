//! The peer-link part of the configuration: `[smpp]` (this site's SMPP server and the link
//! timings) and `[peer.smpp]` inside each `[[peer]]` (how to reach that site and how it proves
//! itself when it binds here).
//!
//! ```toml
//! [smpp]
//! listen = ["127.0.0.1:2775"]     # this site's SMPP server, for peers and clients
//! enquire_link_ms = 1000          # keepalive interval
//! missed_keepalives = 3           # a peer silent this many intervals is down
//! window = 50                     # submit_sm in flight per link
//! [[smpp.users]]                  # applications that submit here (e.g. an smpplib script)
//! system_id = "office"
//! password_hash = "$argon2id$..." # mail2sms hash-password
//!
//! [[peer]]
//! name = "fr"
//! [peer.smpp]
//! address = "127.0.0.1:2776"      # its SMPP server
//! password = "s3cret"             # what this site sends when it binds there (as its own name)
//! password_hash = "$argon2id$..." # what fr must send when it binds here (as `fr`)
//! ```
//!
//! A site binds to a peer with `system_id` = its own `[site] name`, so both files name the
//! same two secrets. SMPP 3.4 limits a password to 8 octets (§4.1.1), which is why it is short
//! and why links between sites should run over a private network or a tunnel.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Locator};

/// `[smpp]`, typed.
#[derive(Debug, Clone)]
pub struct SmppConfig {
    pub listen: Vec<SocketAddr>,
    pub enquire_link: Duration,
    pub missed_keepalives: u32,
    pub window: usize,
    /// Longest wait before binding again after a link is lost (the wait doubles from 100 ms).
    pub reconnect_max: Duration,
    pub users: Vec<SmppUser>,
}

impl Default for SmppConfig {
    fn default() -> Self {
        SmppConfig {
            listen: Vec::new(),
            enquire_link: Duration::from_secs(1),
            missed_keepalives: 3,
            window: 50,
            reconnect_max: Duration::from_secs(5),
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmppUser {
    pub system_id: String,
    /// PHC string, checked to parse at load time.
    pub password_hash: String,
}

/// One peer's link, typed.
#[derive(Debug, Clone)]
pub struct PeerLink {
    /// The peer's site name.
    pub name: String,
    pub address: String,
    /// Sent when this site binds there.
    pub password: String,
    /// What the peer must send when it binds here.
    pub password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmpp {
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default = "default_enquire_link_ms")]
    enquire_link_ms: u64,
    #[serde(default = "default_missed")]
    missed_keepalives: u32,
    #[serde(default = "default_window")]
    window: usize,
    #[serde(default = "default_reconnect_max")]
    reconnect_max_ms: u64,
    #[serde(default)]
    users: Vec<RawSmppUser>,
}

fn default_enquire_link_ms() -> u64 {
    1000
}
fn default_missed() -> u32 {
    3
}
fn default_window() -> usize {
    50
}
fn default_reconnect_max() -> u64 {
    5000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmppUser {
    system_id: String,
    password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeerLink {
    address: String,
    password: String,
    password_hash: String,
}

/// Longest system_id (SMPP 3.4 §4.1.1: 16 octets with the NUL).
const MAX_SYSTEM_ID: usize = 15;
/// Longest password (SMPP 3.4 §4.1.1: 9 octets with the NUL).
const MAX_PASSWORD: usize = 8;

fn check_hash(loc: &Locator<'_>, key: &str, hash: &str) -> Result<(), ConfigError> {
    if argon2::password_hash::PasswordHash::new(hash).is_err() {
        return Err(loc.error(
            key,
            "is not a password hash in PHC form ($argon2id$...); make one with `mail2sms hash-password`",
        ));
    }
    Ok(())
}

pub(crate) fn validate_smpp(
    raw: Option<RawSmpp>,
    loc: &Locator<'_>,
) -> Result<Option<SmppConfig>, ConfigError> {
    let Some(r) = raw else { return Ok(None) };
    let mut listen = Vec::new();
    for (i, a) in r.listen.iter().enumerate() {
        listen.push(a.parse::<SocketAddr>().map_err(|_| {
            loc.error(
                &format!("smpp.listen[{i}]"),
                format!("`{a}` is not an address and port such as 127.0.0.1:2775"),
            )
        })?);
    }
    if r.enquire_link_ms < 10 {
        return Err(loc.error("smpp.enquire_link_ms", "must be at least 10 (milliseconds)"));
    }
    if r.missed_keepalives == 0 {
        return Err(loc.error("smpp.missed_keepalives", "must be at least 1"));
    }
    if r.window == 0 || r.window > 10_000 {
        return Err(loc.error("smpp.window", "must be between 1 and 10000"));
    }
    let mut users = Vec::new();
    for (i, u) in r.users.into_iter().enumerate() {
        if u.system_id.is_empty() || u.system_id.len() > MAX_SYSTEM_ID {
            return Err(loc.error(
                &format!("smpp.users[{i}].system_id"),
                "must be 1 to 15 characters (SMPP 3.4 §4.1.1)",
            ));
        }
        check_hash(
            loc,
            &format!("smpp.users[{i}].password_hash"),
            &u.password_hash,
        )?;
        users.push(SmppUser {
            system_id: u.system_id,
            password_hash: u.password_hash,
        });
    }
    Ok(Some(SmppConfig {
        listen,
        enquire_link: Duration::from_millis(r.enquire_link_ms),
        missed_keepalives: r.missed_keepalives,
        window: r.window,
        reconnect_max: Duration::from_millis(r.reconnect_max_ms.max(100)),
        users,
    }))
}

/// `i` is the peer's index in `[[peer]]`, for error keys.
pub(crate) fn validate_link(
    i: usize,
    name: &str,
    site: &str,
    raw: RawPeerLink,
    loc: &Locator<'_>,
) -> Result<PeerLink, ConfigError> {
    let key = |k: &str| format!("peer[{i}].smpp.{k}");
    if raw
        .address
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(loc.error(
            &key("address"),
            format!(
                "`{}` is not a host and port such as 127.0.0.1:2776",
                raw.address
            ),
        ));
    }
    if raw.password.is_empty() || raw.password.len() > MAX_PASSWORD {
        return Err(loc.error(
            &key("password"),
            "must be 1 to 8 characters (SMPP 3.4 §4.1.1)",
        ));
    }
    if site.len() > MAX_SYSTEM_ID || name.len() > MAX_SYSTEM_ID {
        return Err(loc.error(
            &key("address"),
            "sites bind to each other by name: site names on a peer link must be at most 15 characters (SMPP 3.4 §4.1.1)",
        ));
    }
    check_hash(loc, &key("password_hash"), &raw.password_hash)?;
    Ok(PeerLink {
        name: name.to_string(),
        address: raw.address,
        password: raw.password,
        password_hash: raw.password_hash,
    })
}
