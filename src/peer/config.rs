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
//! and why links between sites should run over TLS, a private network or a tunnel.
//!
//! **TLS** (optional, on both sides): `[smpp.tls]` makes the server accept only TLS
//! connections (certificate and key in PEM, as `[smtp.tls]`); `[peer.smpp.tls]` (and
//! `[channel.smpp.tls]` for a provider) makes the link connect with TLS, checking the server's
//! certificate against the public WebPKI roots and, when given, the CAs of `ca_file`:
//!
//! ```toml
//! [smpp.tls]
//! certificate = "smpp-cert.pem"
//! key = "smpp-key.pem"
//! [peer.smpp.tls]
//! server_name = "fr.example.org"  # the name its certificate must carry (default: the address's host)
//! ca_file = "org-ca.pem"          # trusted besides the WebPKI roots (e.g. the organization's CA)
//! ```
//!
//! **An external SMPP provider** is a `[[channel]]` of kind `smpp` at this site with a
//! `[channel.smpp]` table saying how to bind there (the channel's tariff prices it like any
//! other channel):
//!
//! ```toml
//! [[channel]]
//! name = "acme"
//! kind = "smpp"
//! site = "uk"                     # this site
//! tariff = { "33" = 0.015 }       # or tariff_file
//! [channel.smpp]
//! address = "smpp.acme.example:2775"
//! system_id = "uk-gateway"
//! password = "secret"             # at most 8 characters (SMPP 3.4 §4.1.1)
//! system_type = ""                # what the provider asks for, often empty
//! window = 10                     # submit_sm in flight
//! enquire_link_ms = 30000         # keepalive; down after missed_keepalives silent intervals
//! missed_keepalives = 3
//! source_addr = "MyOrg"           # sender shown to recipients; empty: the provider's default
//! source_ton = 5                  # 5 alphanumeric, 1 international (§5.2.5)
//! source_npi = 0                  # 0 unknown, 1 ISDN (§5.2.6)
//! [channel.smpp.tls]              # optional, as for a peer
//! server_name = "smpp.acme.example"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// `[smpp.tls]`: the server accepts TLS connections only.
    pub tls: Option<crate::config::TlsFiles>,
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
            tls: None,
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
    /// `[peer.smpp.tls]`: connect with TLS.
    pub tls: Option<ClientTls>,
}

/// How a link connects with TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// CA certificates (PEM) trusted besides the WebPKI roots.
    pub ca_file: Option<PathBuf>,
}

/// An external SMPP provider this site binds to: `[channel.smpp]` of a `smpp` channel.
#[derive(Debug, Clone)]
pub struct ProviderLink {
    /// The channel's name.
    pub name: String,
    pub address: String,
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub window: usize,
    pub enquire_link: Duration,
    pub missed_keepalives: u32,
    pub reconnect_max: Duration,
    /// Empty: the provider's default sender.
    pub source_addr: String,
    pub source_ton: u8,
    pub source_npi: u8,
    pub tls: Option<ClientTls>,
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
    tls: Option<RawServerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    certificate: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientTls {
    server_name: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProviderLink {
    address: String,
    system_id: String,
    password: String,
    #[serde(default)]
    system_type: String,
    #[serde(default = "default_provider_window")]
    window: usize,
    #[serde(default = "default_provider_enquire_link_ms")]
    enquire_link_ms: u64,
    #[serde(default = "default_missed")]
    missed_keepalives: u32,
    #[serde(default = "default_reconnect_max")]
    reconnect_max_ms: u64,
    #[serde(default)]
    source_addr: String,
    source_ton: Option<u8>,
    source_npi: Option<u8>,
    tls: Option<RawClientTls>,
}

fn default_provider_window() -> usize {
    10
}
/// Providers commonly ask for a keepalive every 30 to 60 s, and drop binds that talk more.
fn default_provider_enquire_link_ms() -> u64 {
    30_000
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
    tls: Option<RawClientTls>,
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
    let tls = match r.tls {
        None => None,
        Some(t) => {
            let certificate = loc.resolve(&t.certificate);
            let key = loc.resolve(&t.key);
            for (k, p) in [
                ("smpp.tls.certificate", &certificate),
                ("smpp.tls.key", &key),
            ] {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(loc.error(k, format!("cannot read {}: {e}", p.display())));
                }
            }
            Some(crate::config::TlsFiles { certificate, key })
        }
    };
    Ok(Some(SmppConfig {
        listen,
        enquire_link: Duration::from_millis(r.enquire_link_ms),
        missed_keepalives: r.missed_keepalives,
        window: r.window,
        reconnect_max: Duration::from_millis(r.reconnect_max_ms.max(100)),
        users,
        tls,
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
    check_address(loc, &key("address"), &raw.address)?;
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
    let tls = client_tls(loc, &key("tls"), &raw.address, raw.tls)?;
    Ok(PeerLink {
        name: name.to_string(),
        address: raw.address,
        password: raw.password,
        password_hash: raw.password_hash,
        tls,
    })
}

fn check_address(loc: &Locator<'_>, key: &str, address: &str) -> Result<(), ConfigError> {
    if address
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(loc.error(
            key,
            format!("`{address}` is not a host and port such as 127.0.0.1:2776"),
        ));
    }
    Ok(())
}

/// `[...smpp.tls]` of a link: the server name defaults to the address's host.
fn client_tls(
    loc: &Locator<'_>,
    key: &str,
    address: &str,
    raw: Option<RawClientTls>,
) -> Result<Option<ClientTls>, ConfigError> {
    let Some(t) = raw else { return Ok(None) };
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(address);
    let server_name = t.server_name.unwrap_or_else(|| host.to_string());
    if tokio_rustls::rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
        return Err(loc.error(
            &format!("{key}.server_name"),
            format!("`{server_name}` is not a host name or IP address"),
        ));
    }
    let ca_file = match t.ca_file {
        None => None,
        Some(p) => {
            let p = loc.resolve(&p);
            if let Err(e) = std::fs::metadata(&p) {
                return Err(loc.error(
                    &format!("{key}.ca_file"),
                    format!("cannot read {}: {e}", p.display()),
                ));
            }
            Some(p)
        }
    };
    Ok(Some(ClientTls {
        server_name,
        ca_file,
    }))
}

/// `[channel.smpp]` of channel `i`, `name`.
pub(crate) fn validate_provider(
    i: usize,
    name: &str,
    raw: RawProviderLink,
    loc: &Locator<'_>,
) -> Result<ProviderLink, ConfigError> {
    let key = |k: &str| format!("channel[{i}].smpp.{k}");
    check_address(loc, &key("address"), &raw.address)?;
    if raw.system_id.is_empty() || raw.system_id.len() > MAX_SYSTEM_ID {
        return Err(loc.error(
            &key("system_id"),
            "must be 1 to 15 characters (SMPP 3.4 §4.1.1)",
        ));
    }
    if raw.password.len() > MAX_PASSWORD {
        return Err(loc.error(
            &key("password"),
            "must be at most 8 characters (SMPP 3.4 §4.1.1)",
        ));
    }
    // §4.1.1: system_type is a C-Octet String of up to 13 octets with its NUL.
    if raw.system_type.len() > 12 {
        return Err(loc.error(
            &key("system_type"),
            "must be at most 12 characters (SMPP 3.4 §4.1.1)",
        ));
    }
    if raw.window == 0 || raw.window > 10_000 {
        return Err(loc.error(&key("window"), "must be between 1 and 10000"));
    }
    if raw.enquire_link_ms < 10 {
        return Err(loc.error(
            &key("enquire_link_ms"),
            "must be at least 10 (milliseconds)",
        ));
    }
    if raw.missed_keepalives == 0 {
        return Err(loc.error(&key("missed_keepalives"), "must be at least 1"));
    }
    // §4.4.1: source_addr is up to 21 octets with its NUL; an alphanumeric sender is at most
    // 11 characters on the air (TS 23.040 §9.1.2.5), which the provider enforces.
    if raw.source_addr.len() > 20 {
        return Err(loc.error(
            &key("source_addr"),
            "must be at most 20 characters (SMPP 3.4 §4.4.1)",
        ));
    }
    let numeric = !raw.source_addr.is_empty()
        && raw
            .source_addr
            .trim_start_matches('+')
            .bytes()
            .all(|b| b.is_ascii_digit());
    // Defaults: a number is international/ISDN, anything else alphanumeric (§5.2.5, §5.2.6).
    let source_ton = raw
        .source_ton
        .unwrap_or(match (raw.source_addr.is_empty(), numeric) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 5,
        });
    let source_npi = raw.source_npi.unwrap_or(u8::from(numeric));
    if source_ton > 6 {
        return Err(loc.error(&key("source_ton"), "must be 0 to 6 (SMPP 3.4 §5.2.5)"));
    }
    if ![0, 1, 3, 4, 6, 8, 9, 10, 14, 18].contains(&source_npi) {
        return Err(loc.error(
            &key("source_npi"),
            "must be one of 0, 1, 3, 4, 6, 8, 9, 10, 14, 18 (SMPP 3.4 §5.2.6)",
        ));
    }
    let tls = client_tls(loc, &key("tls"), &raw.address, raw.tls)?;
    Ok(ProviderLink {
        name: name.to_string(),
        address: raw.address,
        system_id: raw.system_id,
        password: raw.password,
        system_type: raw.system_type,
        window: raw.window,
        enquire_link: Duration::from_millis(raw.enquire_link_ms),
        missed_keepalives: raw.missed_keepalives,
        reconnect_max: Duration::from_millis(raw.reconnect_max_ms.max(100)),
        source_addr: raw.source_addr.trim_start_matches('+').to_string(),
        source_ton,
        source_npi,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = "[site]\nname = \"uk\"\ndefault_country = \"GB\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n";

    fn provider(extra: &str) -> String {
        format!(
            "{BASE}[[channel]]\nname = \"acme\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = {{ \"33\" = 0.01 }}\n[channel.smpp]\naddress = \"smpp.acme.example:2775\"\nsystem_id = \"uk-gw\"\npassword = \"pw\"\n{extra}"
        )
    }

    #[test]
    fn provider_links_read_with_their_defaults() {
        // (extra lines, source_addr, ton, npi)
        let cases = [
            ("", "", 0, 0),
            ("source_addr = \"ExampleOrg\"\n", "ExampleOrg", 5, 0),
            ("source_addr = \"+447700900123\"\n", "447700900123", 1, 1),
            (
                "source_addr = \"12345\"\nsource_ton = 3\nsource_npi = 0\n",
                "12345",
                3,
                0,
            ),
        ];
        for (extra, addr, ton, npi) in cases {
            let cfg = crate::config::parse(Path::new("/etc/m.toml"), &provider(extra))
                .unwrap_or_else(|e| panic!("{extra}: {e}"));
            let [l] = cfg.provider_links.as_slice() else {
                panic!("{:?}", cfg.provider_links)
            };
            assert_eq!(
                (l.source_addr.as_str(), l.source_ton, l.source_npi),
                (addr, ton, npi),
                "{extra}"
            );
            assert_eq!((l.name.as_str(), l.window), ("acme", 10));
            assert_eq!(l.enquire_link, Duration::from_secs(30));
            assert_eq!(l.tls, None);
        }
        // TLS: the server name defaults to the address's host; a CA file is relative to the
        // configuration file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let cfg = crate::config::parse(
            &dir.path().join("m.toml"),
            &provider("[channel.smpp.tls]\nca_file = \"ca.pem\"\n"),
        )
        .unwrap();
        assert_eq!(
            cfg.provider_links[0].tls,
            Some(super::ClientTls {
                server_name: "smpp.acme.example".into(),
                ca_file: Some(dir.path().join("ca.pem")),
            })
        );
    }

    #[test]
    fn bad_provider_and_tls_settings_name_their_key() {
        let modems_with_link = format!(
            "{BASE}[[channel]]\nname = \"m\"\nkind = \"modems\"\nsite = \"uk\"\ntariff = {{ \"33\" = 0.01 }}\n[channel.smpp]\naddress = \"a:1\"\nsystem_id = \"x\"\npassword = \"p\"\n"
        );
        let cases: Vec<(String, &str, &str)> = vec![
            (
                provider("window = 0\n"),
                "channel[0].smpp.window",
                "between 1",
            ),
            (
                provider("source_ton = 9\n"),
                "channel[0].smpp.source_ton",
                "0 to 6",
            ),
            (
                provider("source_npi = 2\n"),
                "channel[0].smpp.source_npi",
                "one of",
            ),
            (
                provider("system_type = \"much-too-long-type\"\n"),
                "channel[0].smpp.system_type",
                "12 characters",
            ),
            (
                provider("[channel.smpp.tls]\nca_file = \"/nonexistent/ca.pem\"\n"),
                "channel[0].smpp.tls.ca_file",
                "cannot read",
            ),
            (
                provider("[channel.smpp.tls]\nserver_name = \"not a name\"\n"),
                "channel[0].smpp.tls.server_name",
                "not a host name",
            ),
            (modems_with_link, "channel[0].smpp", "of kind \"smpp\""),
            (
                provider("").replace("system_id = \"uk-gw\"", "system_id = \"\""),
                "channel[0].smpp.system_id",
                "1 to 15",
            ),
            (
                format!(
                    "{BASE}[smpp]\n[smpp.tls]\ncertificate = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n"
                ),
                "smpp.tls.certificate",
                "cannot read",
            ),
        ];
        for (text, key, words) in cases {
            match crate::config::parse(Path::new("/etc/m.toml"), &text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => {
                    assert_eq!(e.key, key, "{e}");
                    assert!(e.message.contains(words), "{e}");
                }
            }
        }
    }
}
