//! Configuration: one TOML file, read in two steps.
//!
//! 1. `Raw*` structs mirror the file (`deny_unknown_fields`, so a typo is an error and not a
//!    silently ignored key); serde errors go through `serde_path_to_error` so they name the key.
//! 2. [`RawConfig::validate`] turns the raw file into typed [`Config`]: countries, networks,
//!    password hashes, certificate files are checked here, and every error names the key.
//!
//! Every error comes out as a [`ConfigError`] naming the file, line, column and key, because the
//! person reading it is an admin with the file open in an editor.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::intake::imap::{ImapTls, MailboxConfig, Password};
use crate::modem::driver::DriverConfig;
use crate::modem::pool::PoolConfig;
use crate::modem::sim::{ReportMode, SimConfig};
use crate::notify::replies::{Notify as ReplyNotify, RepliesConfig};
use crate::notify::{NotifyConfig, NotifyTls};
use crate::parse::address::{AddressPolicy, NumberKind};
use crate::parse::body::{BodyOptions, SubjectPolicy};
use crate::policy::Destinations;
use crate::queue::{Guard, QueuePolicy, Quotas};

/// A configuration error, located in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {key}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line; 0 when the error is about the file as a whole (e.g. it cannot be read).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `smtp.tls.certificate` or `modem[2].port`; empty for the file.
    pub key: String,
    pub message: String,
}

/// The validated configuration of one site.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; relative paths inside it are resolved against its folder.
    pub source: PathBuf,
    pub site: Site,
    pub smtp: Smtp,
    pub store: Store,
    pub sms: Sms,
    pub body: BodyOptions,
    pub recipients: AddressPolicy,
    pub destinations: Destinations,
    pub sending: PoolConfig,
    pub modems: Vec<ModemConfig>,
    /// `[[mailbox]]`: IMAP mailboxes to pick mail up from.
    pub mailboxes: Vec<MailboxConfig>,
    /// `[notify]`: where replies to senders go; without it none are sent.
    pub notify: Option<NotifyConfig>,
    /// `[replies]`: status replies (RFC 3464) to senders; needs `[notify]`.
    pub replies: Option<RepliesConfig>,
    /// Sites, channels, tariffs and routing rules (`[[peer]]`, `[[channel]]`, `[routing]`).
    pub routing: crate::route::RoutingConfig,
    pub senders: Senders,
    pub queue_policy: QueuePolicy,
    /// `[smpp]`: this site's SMPP server and link timings; without it no links run.
    pub smpp: Option<crate::peer::config::SmppConfig>,
    /// `[peer.smpp]` of each `[[peer]]` that has one.
    pub peer_links: Vec<crate::peer::config::PeerLink>,
    /// External SMPP providers this site binds to (`[channel.smpp]`).
    pub provider_links: Vec<crate::peer::config::ProviderLink>,
}

/// `[senders]`: who may send (see `policy`).
#[derive(Debug, Clone)]
pub struct Senders {
    pub allowed_addresses: Vec<String>,
    pub allowed_domains: Vec<String>,
    pub accept_internet_mail: bool,
    pub dns_server: Option<SocketAddr>,
    pub pins: std::collections::HashMap<String, String>,
}

/// One `[[modem]]`.
#[derive(Debug, Clone)]
pub struct ModemConfig {
    pub driver: DriverConfig,
    /// E.164 prefixes this modem sends to first.
    pub prefixes: Vec<String>,
    /// Least time between two sends on this SIM.
    pub min_interval: Option<std::time::Duration>,
    /// Run a simulated modem on a pseudo-terminal at `driver.port` instead of hardware.
    pub simulate: Option<SimulatedModem>,
}

#[derive(Debug, Clone)]
pub struct SimulatedModem {
    pub config: SimConfig,
    /// Where it records what it "sends" (JSON lines).
    pub record: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    /// Host name used in the SMTP greeting and in `Received:`.
    pub hostname: String,
    /// ISO 3166 alpha-2 code national numbers are read in.
    pub default_country: phonenumber::country::Id,
    /// Lower-case SMS domains, e.g. `sms`, `sms.example.com`.
    pub sms_domains: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Smtp {
    pub listen: Vec<SocketAddr>,
    pub max_message_bytes: usize,
    /// Largest header block accepted; a mail with more is refused after DATA.
    pub max_header_bytes: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub idle_timeout: std::time::Duration,
    /// Failed AUTH attempts a client address may make within `auth_lockout` before its AUTH is
    /// refused unchecked (`intake::smtp::auth`).
    pub auth_failures_per_client: u32,
    pub auth_lockout: std::time::Duration,
    /// How long a shutdown waits for sessions that are in the middle of a mail.
    pub shutdown_grace: std::time::Duration,
    pub tls: Option<TlsFiles>,
    pub users: Vec<SmtpUser>,
    /// Clients in these networks may send without AUTH (the organization's own MTA).
    pub trusted_networks: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SmtpUser {
    pub name: String,
    /// PHC string (`$argon2id$...`), checked to parse at load time.
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Sms {
    /// Longest SMS, in parts; longer texts are truncated with a visible marker.
    pub max_parts: usize,
    /// Map look-alike characters (’ “ – …) to GSM-7 so the text stays in the cheaper alphabet.
    pub transliterate: bool,
}

impl Smtp {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_networks.iter().any(|n| n.contains(&ip))
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    site: RawSite,
    #[serde(default)]
    smtp: RawSmtp,
    store: RawStore,
    #[serde(default)]
    sms: RawSms,
    #[serde(default)]
    body: BodyOptions,
    #[serde(default)]
    recipients: RawRecipients,
    #[serde(default)]
    sending: RawSending,
    #[serde(default)]
    modem: Vec<RawModem>,
    #[serde(default)]
    senders: RawSenders,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    mailbox: Vec<RawMailbox>,
    notify: Option<RawNotify>,
    replies: Option<RawReplies>,
    #[serde(default)]
    peer: Vec<crate::route::config::RawPeer>,
    #[serde(default)]
    channel: Vec<crate::route::config::RawChannel>,
    #[serde(default)]
    routing: crate::route::config::RawRouting,
    smpp: Option<crate::peer::config::RawSmpp>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSenders {
    allowed_addresses: Vec<String>,
    allowed_domains: Vec<String>,
    accept_internet_mail: bool,
    dns_server: Option<String>,
    pins: Vec<RawPin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    address: String,
    pin: String,
}

/// SMS parts per window; 0 is no limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQuotas {
    sender_parts_per_hour: u64,
    sender_parts_per_day: u64,
    domain_parts_per_hour: u64,
    domain_parts_per_day: u64,
}

impl Default for RawQuotas {
    fn default() -> Self {
        // Generous for a person, small for a compromised account.
        RawQuotas {
            sender_parts_per_hour: 200,
            sender_parts_per_day: 1000,
            domain_parts_per_hour: 2000,
            domain_parts_per_day: 10000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGuard {
    enabled: bool,
    window_minutes: u64,
    block_digits: usize,
    max_per_block: usize,
    max_countries: usize,
    first_contact_delay_secs: u64,
}

impl Default for RawGuard {
    fn default() -> Self {
        let g = Guard::default();
        RawGuard {
            enabled: g.enabled,
            window_minutes: g.window.as_secs() / 60,
            block_digits: g.block_digits,
            max_per_block: g.max_per_block,
            max_countries: g.max_countries,
            first_contact_delay_secs: g.first_contact_delay.as_secs(),
        }
    }
}

/// One `[[mailbox]]`: an IMAP folder mail to the SMS domains is delivered to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailbox {
    /// Names the mailbox in the queue; claims are recorded under it, so keep it stable.
    name: String,
    host: String,
    /// Default 993 with implicit TLS, 143 otherwise.
    port: Option<u16>,
    #[serde(default)]
    tls: ImapTls,
    /// PEM file of the certificate authorities to trust instead of the public (WebPKI) roots.
    ca_file: Option<PathBuf>,
    user: String,
    password: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_folder")]
    folder: String,
    #[serde(default = "default_processed_folder")]
    processed_folder: String,
    #[serde(default = "default_failed_folder")]
    failed_folder: String,
    /// This gateway's name in the claim keyword; default: the site name.
    gateway: Option<String>,
    #[serde(default = "default_true")]
    idle: bool,
    #[serde(default = "default_reidle")]
    reidle_secs: u64,
    #[serde(default = "default_poll")]
    poll_secs: u64,
    #[serde(default = "default_batch")]
    batch: usize,
    #[serde(default = "default_imap_command_timeout")]
    command_timeout_secs: u64,
    #[serde(default = "default_reconnect_max")]
    reconnect_max_secs: u64,
    #[serde(default = "default_mailbox_recipients")]
    max_recipients: usize,
    /// Senders allowed through this mailbox; default: `[senders]`'s lists.
    allowed_addresses: Option<Vec<String>>,
    allowed_domains: Option<Vec<String>>,
    /// The authserv-id of the organization's MX: DMARC must pass in the
    /// `Authentication-Results` field it wrote (RFC 8601). Unset: not checked.
    authserv_id: Option<String>,
    /// A `[[peer]]`'s name: the mailbox is that peer's, watched here only while the peer is
    /// detected down (a passive configuration). Unset: always watched.
    passive_for: Option<String>,
}

fn default_folder() -> String {
    "INBOX".into()
}
fn default_processed_folder() -> String {
    "Processed".into()
}
fn default_failed_folder() -> String {
    "Failed".into()
}
fn default_true() -> bool {
    true
}
fn default_reidle() -> u64 {
    // RFC 2177 §3: re-issue IDLE at least every 29 minutes; well within, so a silently dropped
    // connection is noticed in minutes, not half an hour.
    600
}
fn default_poll() -> u64 {
    15
}
fn default_batch() -> usize {
    200
}
fn default_imap_command_timeout() -> u64 {
    60
}
fn default_reconnect_max() -> u64 {
    60
}
fn default_mailbox_recipients() -> usize {
    50
}

/// `[notify]`: the relay replies to senders go through.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    /// `host:port` of the organization's relay.
    relay: String,
    /// The `From:` of replies; default `mailer-daemon@<site.hostname>`.
    from: Option<String>,
    #[serde(default)]
    tls: NotifyTls,
    #[serde(default = "default_notify_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_notify_attempts")]
    max_attempts: u32,
}

/// `[replies]`: status replies to senders (see `notify::replies`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReplies {
    /// Folder of template folders, relative to the config file.
    templates: PathBuf,
    /// Language of the replies: a folder under `templates`.
    language: String,
    /// Also reply when the SMS is handed to the network.
    relayed: bool,
    /// Seconds after which a message not yet delivered gets a `delayed` reply; 0 for never.
    delay_secs: u64,
    per_sender_per_hour: u32,
    domains: Vec<String>,
    domain_notify: Vec<ReplyNotify>,
}

impl Default for RawReplies {
    fn default() -> Self {
        RawReplies {
            templates: PathBuf::from("templates"),
            language: "en".into(),
            relayed: true,
            delay_secs: 3600,
            per_sender_per_hour: 30,
            domains: Vec::new(),
            domain_notify: vec![ReplyNotify::Failure],
        }
    }
}

fn default_notify_timeout() -> u64 {
    30
}
fn default_notify_attempts() -> u32 {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSending {
    max_attempts: u32,
    retry_base_secs: u64,
    retry_max_secs: u64,
    /// Hours the network keeps trying a handset that is off; 0 for the network's default.
    validity_hours: u64,
    status_reports: bool,
    /// Hours after a send in which its status report is still matched to it.
    report_window_hours: u64,
    /// Seconds the service centre's clock may be off ours when matching a status report.
    report_skew_secs: u64,
}

impl Default for RawSending {
    fn default() -> Self {
        RawSending {
            max_attempts: 5,
            retry_base_secs: 30,
            retry_max_secs: 1800,
            validity_hours: 48,
            status_reports: true,
            report_window_hours: 72,
            report_skew_secs: 120,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModem {
    name: String,
    port: Option<PathBuf>,
    #[serde(default = "default_baud")]
    baud: u32,
    pin: Option<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    max_per_minute: Option<u32>,
    #[serde(default = "default_command_timeout")]
    command_timeout_secs: u64,
    #[serde(default = "default_send_timeout")]
    send_timeout_secs: u64,
    #[serde(default = "default_health_interval")]
    health_interval_secs: u64,
    #[serde(default = "default_max_failures")]
    max_failures: u32,
    #[serde(default = "default_quarantine")]
    quarantine_secs: u64,
    simulate: Option<RawSimulate>,
}

fn default_baud() -> u32 {
    115_200
}
fn default_command_timeout() -> u64 {
    10
}
fn default_send_timeout() -> u64 {
    // TS 27.005 gives no bound; networks answer within seconds, modems give up near a minute.
    60
}
fn default_health_interval() -> u64 {
    30
}
fn default_max_failures() -> u32 {
    3
}
fn default_quarantine() -> u64 {
    300
}

/// A simulated modem (see `modem::sim`): for the demo and tests, no hardware needed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSimulate {
    latency_ms: u64,
    cmgs_latency_ms: u64,
    /// Status reports: "auto" (as AT+CNMI asks), "cds", "cdsi" or "none".
    report: ReportMode,
    report_delay_ms: u64,
    /// The TP-ST its reports carry (3GPP TS 23.040 §9.2.3.15): 0 delivered, 0x41 and up failed.
    report_status: u8,
    /// Record every SMS it "sends" as a JSON line in this file.
    record: Option<PathBuf>,
}

impl Default for RawSimulate {
    fn default() -> Self {
        RawSimulate {
            latency_ms: 5,
            cmgs_latency_ms: 300,
            report: ReportMode::Auto,
            report_delay_ms: 2000,
            report_status: 0,
            record: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    hostname: Option<String>,
    default_country: String,
    sms_domains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    listen: Vec<String>,
    max_message_bytes: usize,
    max_header_bytes: usize,
    max_recipients: usize,
    max_connections: usize,
    idle_timeout_secs: u64,
    shutdown_grace_secs: u64,
    auth_failures_per_client: u32,
    auth_lockout_secs: u64,
    tls: Option<RawTls>,
    users: Vec<RawUser>,
    trusted_networks: Vec<String>,
}

impl Default for RawSmtp {
    fn default() -> Self {
        RawSmtp {
            listen: vec!["127.0.0.1:2525".into()],
            max_message_bytes: 10 * 1024 * 1024,
            max_header_bytes: 256 * 1024,
            max_recipients: 100,
            max_connections: 200,
            // RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for a command.
            idle_timeout_secs: 300,
            shutdown_grace_secs: 10,
            // A user who mistypes a password a few times is not locked out; a guesser gets ten
            // tries per address in a quarter of an hour.
            auth_failures_per_client: 10,
            auth_lockout_secs: 900,
            tls: None,
            users: Vec::new(),
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSms {
    max_parts: usize,
    transliterate: bool,
}

impl Default for RawSms {
    fn default() -> Self {
        RawSms {
            max_parts: 6,
            transliterate: true,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRecipients {
    /// Number types accepted; default: see `AddressPolicy::default_accepted_types`.
    accepted_types: Option<Vec<NumberKind>>,
    /// E.164 prefixes refused at RCPT, e.g. `+33899`.
    blocked_prefixes: Vec<String>,
    /// ISO 3166 alpha-2 codes SMS may go to (empty: all but the blocked ones).
    allowed_countries: Vec<String>,
    blocked_countries: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Loading and validation.

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse(path, &src)
}

/// Parses and validates configuration text; `path` is used for messages and relative paths.
pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigError> {
    let locator = Locator { file: path, src };
    let de = toml::Deserializer::parse(src).map_err(|e| locator.toml_error(&e, ""))?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        locator.toml_error(e.inner(), &key)
    })?;
    raw.validate(&locator)
}

/// Turns byte offsets and key paths into line/column positions.
pub(crate) struct Locator<'a> {
    file: &'a Path,
    src: &'a str,
}

impl Locator<'_> {
    fn toml_error(&self, e: &toml::de::Error, key: &str) -> ConfigError {
        let span = e.span().or_else(|| self.span_of(key));
        let message = e.message().trim().to_string();
        self.at(span, key, message)
    }

    /// A path as written in the file: relative ones are relative to the file's folder.
    pub(crate) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new("")).join(p)
        }
    }

    pub(crate) fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.at(self.span_of(key), key, message.into())
    }

    fn at(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        let (line, column) = match span {
            Some(r) => line_col(self.src, r.start),
            None => (0, 0),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    /// The span of the value at a dotted key path (`smtp.users[1].name`); falls back to the
    /// nearest enclosing key that exists so a missing key still points at its table.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let doc = toml::de::DeTable::parse(self.src).ok()?;
        let mut best: Option<Range<usize>> = None;
        let mut cur: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
        for seg in key_segments(key) {
            let next = match (seg, cur) {
                (Seg::Key(k), None) => doc.get_ref().get(k),
                (Seg::Key(k), Some(v)) => match v.get_ref() {
                    toml::de::DeValue::Table(t) => t.get(k),
                    _ => None,
                },
                (Seg::Index(i), Some(v)) => match v.get_ref() {
                    toml::de::DeValue::Array(a) => a.get(i),
                    _ => None,
                },
                (Seg::Index(_), None) => None,
            };
            match next {
                Some(v) => {
                    best = Some(v.span());
                    cur = Some(v);
                }
                None => break,
            }
        }
        best
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn key_segments(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl RawConfig {
    fn validate(self, loc: &Locator<'_>) -> Result<Config, ConfigError> {
        let base = loc.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        // [site]
        let s = self.site;
        if s.name.trim().is_empty() {
            return Err(loc.error("site.name", "must not be empty"));
        }
        let default_country: phonenumber::country::Id = s
            .default_country
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| {
                loc.error(
                    "site.default_country",
                    format!(
                        "`{}` is not an ISO 3166 alpha-2 country code (e.g. FR, GB, DE)",
                        s.default_country
                    ),
                )
            })?;
        if s.sms_domains.is_empty() {
            return Err(loc.error(
                "site.sms_domains",
                "at least one SMS domain is needed (e.g. [\"sms\"]): mail to any other domain is refused",
            ));
        }
        let mut sms_domains = Vec::new();
        for (i, d) in s.sms_domains.iter().enumerate() {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            let valid = !d.is_empty()
                && d.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                return Err(loc.error(
                    &format!("site.sms_domains[{i}]"),
                    format!("`{}` is not a domain name", s.sms_domains[i]),
                ));
            }
            sms_domains.push(d);
        }
        let hostname = s.hostname.unwrap_or_else(|| format!("{}.mail2sms", s.name));

        // [smtp]
        let m = self.smtp;
        let mut listen = Vec::new();
        for (i, a) in m.listen.iter().enumerate() {
            listen.push(a.parse::<SocketAddr>().map_err(|_| {
                loc.error(
                    &format!("smtp.listen[{i}]"),
                    format!("`{a}` is not an address and port such as 127.0.0.1:2525 or [::]:25"),
                )
            })?);
        }
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(loc.error(key, "must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        positive("smtp.max_message_bytes", m.max_message_bytes)?;
        positive("smtp.max_header_bytes", m.max_header_bytes)?;
        positive("smtp.max_recipients", m.max_recipients)?;
        positive("smtp.max_connections", m.max_connections)?;
        positive("smtp.idle_timeout_secs", m.idle_timeout_secs as usize)?;
        positive(
            "smtp.auth_failures_per_client",
            m.auth_failures_per_client as usize,
        )?;
        positive("smtp.auth_lockout_secs", m.auth_lockout_secs as usize)?;
        let tls = match m.tls {
            None => None,
            Some(t) => {
                let certificate = resolve(&t.certificate);
                let key = resolve(&t.key);
                for (k, p) in [
                    ("smtp.tls.certificate", &certificate),
                    ("smtp.tls.key", &key),
                ] {
                    if let Err(e) = std::fs::metadata(p) {
                        return Err(loc.error(k, format!("cannot read {}: {e}", p.display())));
                    }
                }
                Some(TlsFiles { certificate, key })
            }
        };
        let mut users = Vec::new();
        for (i, u) in m.users.into_iter().enumerate() {
            if u.name.is_empty() {
                return Err(loc.error(&format!("smtp.users[{i}].name"), "must not be empty"));
            }
            if argon2::password_hash::PasswordHash::new(&u.password_hash).is_err() {
                return Err(loc.error(
                    &format!("smtp.users[{i}].password_hash"),
                    "is not a password hash in PHC form ($argon2id$...); make one with `mail2sms hash-password`",
                ));
            }
            users.push(SmtpUser {
                name: u.name,
                password_hash: u.password_hash,
            });
        }
        if !users.is_empty() && tls.is_none() {
            return Err(loc.error(
                "smtp.users",
                "AUTH users need [smtp.tls]: passwords are only accepted over TLS",
            ));
        }
        let mut trusted_networks = Vec::new();
        for (i, n) in m.trusted_networks.iter().enumerate() {
            let net = n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    loc.error(
                        &format!("smtp.trusted_networks[{i}]"),
                        format!("`{n}` is not a network such as 192.0.2.0/24 or an address"),
                    )
                })?;
            trusted_networks.push(net);
        }

        // [sms]
        if !(1..=255).contains(&self.sms.max_parts) {
            return Err(loc.error(
                "sms.max_parts",
                "must be between 1 and 255 (the concatenation header counts parts in one octet)",
            ));
        }

        // [body]
        positive("body.max_input_bytes", self.body.max_input_bytes)?;

        // [recipients]
        let mut blocked_prefixes = Vec::new();
        for (i, p) in self.recipients.blocked_prefixes.iter().enumerate() {
            let ok =
                p.starts_with('+') && p.len() > 1 && p[1..].bytes().all(|b| b.is_ascii_digit());
            if !ok {
                return Err(loc.error(
                    &format!("recipients.blocked_prefixes[{i}]"),
                    format!("`{p}` is not an E.164 prefix such as +33899"),
                ));
            }
            blocked_prefixes.push(p.clone());
        }
        let countries = |key: &str, list: &[String]| -> Result<Vec<String>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(j, c)| {
                    let up = c.to_ascii_uppercase();
                    match up.parse::<phonenumber::country::Id>() {
                        Ok(_) => Ok(up),
                        Err(_) => Err(loc.error(
                            &format!("recipients.{key}[{j}]"),
                            format!("`{c}` is not an ISO 3166 alpha-2 country code"),
                        )),
                    }
                })
                .collect()
        };
        let allowed_countries = countries("allowed_countries", &self.recipients.allowed_countries)?;
        let blocked_countries = countries("blocked_countries", &self.recipients.blocked_countries)?;
        let destinations = Destinations {
            allowed_countries,
            blocked_countries,
        };
        let recipients = AddressPolicy {
            sms_domains: sms_domains.clone(),
            default_country,
            accepted_types: self
                .recipients
                .accepted_types
                .unwrap_or_else(AddressPolicy::default_accepted_types),
            blocked_prefixes,
        };

        // [sending]
        let sn = self.sending;
        if sn.max_attempts == 0 {
            return Err(loc.error("sending.max_attempts", "must be at least 1"));
        }
        if sn.retry_base_secs > sn.retry_max_secs {
            return Err(loc.error(
                "sending.retry_base_secs",
                "must not be larger than sending.retry_max_secs",
            ));
        }
        let sending = PoolConfig {
            max_attempts: sn.max_attempts,
            retry_base: std::time::Duration::from_secs(sn.retry_base_secs),
            retry_max: std::time::Duration::from_secs(sn.retry_max_secs),
            validity: (sn.validity_hours > 0)
                .then(|| std::time::Duration::from_secs(sn.validity_hours * 3600)),
            status_reports: sn.status_reports,
            reports: crate::queue::Matching {
                window: std::time::Duration::from_secs(sn.report_window_hours * 3600),
                skew: std::time::Duration::from_secs(sn.report_skew_secs),
            },
        };

        // [[modem]]
        let store_path = resolve(&self.store.path);
        let mut modems: Vec<ModemConfig> = Vec::new();
        for (i, m) in self.modem.into_iter().enumerate() {
            let key = |k: &str| format!("modem[{i}].{k}");
            if m.name.is_empty()
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(loc.error(&key("name"), "must be letters, digits, - or _"));
            }
            if modems.iter().any(|o| o.driver.name == m.name) {
                return Err(loc.error(&key("name"), format!("`{}` names two modems", m.name)));
            }
            for (j, p) in m.prefixes.iter().enumerate() {
                if !(p.starts_with('+')
                    && p.len() > 1
                    && p[1..].bytes().all(|b| b.is_ascii_digit()))
                {
                    return Err(loc.error(
                        &format!("modem[{i}].prefixes[{j}]"),
                        format!("`{p}` is not an E.164 prefix such as +33"),
                    ));
                }
            }
            let simulate = match &m.simulate {
                None => None,
                Some(sim) => {
                    let mut c = SimConfig::numbered(i as u32);
                    c.name = m.name.clone();
                    c.latency_ms = sim.latency_ms;
                    c.cmgs_latency_ms = sim.cmgs_latency_ms;
                    c.pin = m.pin.clone();
                    c.report.mode = sim.report;
                    c.report.delay_ms = sim.report_delay_ms;
                    c.report.status = sim.report_status;
                    Some(SimulatedModem {
                        config: c,
                        record: sim.record.as_deref().map(resolve),
                    })
                }
            };
            let port = match (&m.port, &simulate) {
                (Some(p), _) => resolve(p),
                // A simulated modem's terminal appears next to the store.
                (None, Some(_)) => store_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("modems")
                    .join(&m.name),
                (None, None) => {
                    return Err(loc.error(
                        &format!("modem[{i}]"),
                        "needs `port` (e.g. /dev/ttyUSB0) or a [modem.simulate] table",
                    ));
                }
            };
            let secs = std::time::Duration::from_secs;
            for (k, v) in [
                ("command_timeout_secs", m.command_timeout_secs),
                ("send_timeout_secs", m.send_timeout_secs),
                ("health_interval_secs", m.health_interval_secs),
            ] {
                if v == 0 {
                    return Err(loc.error(&key(k), "must be greater than 0"));
                }
            }
            let min_interval = match m.max_per_minute {
                Some(0) => return Err(loc.error(&key("max_per_minute"), "must be greater than 0")),
                Some(n) => Some(std::time::Duration::from_millis(60_000 / u64::from(n))),
                None => None,
            };
            modems.push(ModemConfig {
                driver: DriverConfig {
                    name: m.name.clone(),
                    port,
                    baud: m.baud,
                    pin: m.pin.clone(),
                    command_timeout: secs(m.command_timeout_secs),
                    send_timeout: secs(m.send_timeout_secs),
                    health_interval: secs(m.health_interval_secs),
                    max_failures: m.max_failures.max(1),
                    quarantine: secs(m.quarantine_secs),
                    status_reports: sending.status_reports,
                },
                prefixes: m.prefixes,
                min_interval,
                simulate,
            });
        }

        // [senders]
        let sd = self.senders;
        for (i, a) in sd.allowed_addresses.iter().enumerate() {
            if !a.contains('@') {
                return Err(loc.error(
                    &format!("senders.allowed_addresses[{i}]"),
                    format!("`{a}` is not an address; put domains in allowed_domains"),
                ));
            }
        }
        let dns_server = match &sd.dns_server {
            None => None,
            Some(d) => Some(
                d.parse::<SocketAddr>()
                    .or_else(|_| d.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        loc.error(
                            "senders.dns_server",
                            format!("`{d}` is not an address such as 127.0.0.1:53"),
                        )
                    })?,
            ),
        };
        let mut pins = std::collections::HashMap::new();
        for (i, p) in sd.pins.iter().enumerate() {
            if !(4..=12).contains(&p.pin.len()) || !p.pin.bytes().all(|b| b.is_ascii_digit()) {
                return Err(loc.error(&format!("senders.pins[{i}].pin"), "must be 4 to 12 digits"));
            }
            pins.insert(p.address.to_ascii_lowercase(), p.pin.clone());
        }
        if sd.accept_internet_mail
            && sd.allowed_addresses.is_empty()
            && sd.allowed_domains.is_empty()
        {
            return Err(loc.error(
                "senders.accept_internet_mail",
                "needs allowed_addresses or allowed_domains: mail from the internet is only taken from listed senders",
            ));
        }
        let senders = Senders {
            allowed_addresses: sd.allowed_addresses,
            allowed_domains: sd.allowed_domains,
            accept_internet_mail: sd.accept_internet_mail,
            dns_server,
            pins,
        };

        // [quotas], [guard]
        let q = self.quotas;
        let limit = |v: u64| (v > 0).then_some(v);
        let g = self.guard;
        if g.enabled && (g.max_per_block < 2 || g.window_minutes == 0 || g.max_countries == 0) {
            return Err(loc.error(
                "guard",
                "max_per_block must be at least 2, window_minutes and max_countries at least 1",
            ));
        }
        let queue_policy = QueuePolicy {
            quotas: Quotas {
                sender_per_hour: limit(q.sender_parts_per_hour),
                sender_per_day: limit(q.sender_parts_per_day),
                domain_per_hour: limit(q.domain_parts_per_hour),
                domain_per_day: limit(q.domain_parts_per_day),
            },
            guard: Guard {
                enabled: g.enabled,
                window: std::time::Duration::from_secs(g.window_minutes * 60),
                block_digits: g.block_digits.clamp(1, 6),
                max_per_block: g.max_per_block,
                max_countries: g.max_countries,
                first_contact_delay: std::time::Duration::from_secs(g.first_contact_delay_secs),
            },
            // Set once `[notify]` and `[replies]` are read, below.
            replies: crate::queue::OwedReplies::Never,
        };

        // [notify]
        let notify = match self.notify {
            None => None,
            Some(n) => {
                let (host, port) = n
                    .relay
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty())
                    .ok_or_else(|| {
                        loc.error(
                            "notify.relay",
                            format!("`{}` is not a host and port such as 127.0.0.1:25", n.relay),
                        )
                    })?;
                let from = n
                    .from
                    .unwrap_or_else(|| format!("mailer-daemon@{hostname}"));
                if from.parse::<lettre::Address>().is_err() {
                    return Err(loc.error(
                        "notify.from",
                        format!("`{from}` is not a mail address such as mailer-daemon@example.com"),
                    ));
                }
                if n.max_attempts == 0 {
                    return Err(loc.error("notify.max_attempts", "must be at least 1"));
                }
                if n.timeout_secs == 0 {
                    return Err(loc.error("notify.timeout_secs", "must be greater than 0"));
                }
                Some(NotifyConfig {
                    host: host.to_string(),
                    port,
                    from,
                    tls: n.tls,
                    hello_name: hostname.clone(),
                    timeout: std::time::Duration::from_secs(n.timeout_secs),
                    max_attempts: n.max_attempts,
                })
            }
        };

        // [replies]
        let replies = match self.replies {
            None => None,
            Some(r) => {
                if notify.is_none() {
                    return Err(loc.error(
                        "replies",
                        "status replies need a relay to go through: add a [notify] table",
                    ));
                }
                if r.language.is_empty()
                    || !r
                        .language
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(loc.error(
                        "replies.language",
                        format!(
                            "`{}` is not a language folder name such as en or fr",
                            r.language
                        ),
                    ));
                }
                let templates = if r.templates.is_absolute() {
                    r.templates.clone()
                } else {
                    base.join(&r.templates)
                };
                if let Err(e) = crate::notify::replies::check_templates(&templates, &r.language) {
                    return Err(loc.error("replies.templates", e.to_string()));
                }
                if let Some(d) = r.domains.iter().find(|d| d.is_empty() || d.contains('@')) {
                    return Err(loc.error(
                        "replies.domains",
                        format!("`{d}` is not a domain such as example.org"),
                    ));
                }
                Some(RepliesConfig {
                    templates,
                    language: r.language,
                    relayed: r.relayed,
                    delay: (r.delay_secs > 0).then(|| std::time::Duration::from_secs(r.delay_secs)),
                    per_sender_per_hour: r.per_sender_per_hour,
                    domains: r.domains,
                    domain_notify: r.domain_notify.into_iter().collect(),
                })
            }
        };

        // [[mailbox]]
        let mut mailboxes: Vec<MailboxConfig> = Vec::new();
        for (i, b) in self.mailbox.into_iter().enumerate() {
            let key = |k: &str| format!("mailbox[{i}].{k}");
            let simple_name = |v: &str| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !simple_name(&b.name) {
                return Err(loc.error(&key("name"), "must be letters, digits, -, _ or ."));
            }
            if mailboxes.iter().any(|o| o.name == b.name) {
                return Err(loc.error(&key("name"), format!("`{}` names two mailboxes", b.name)));
            }
            if b.host.trim().is_empty() {
                return Err(loc.error(&key("host"), "must not be empty"));
            }
            if b.user.is_empty() {
                return Err(loc.error(&key("user"), "must not be empty"));
            }
            let password = match (b.password, b.password_file) {
                (Some(p), None) => Password::Inline(p),
                (None, Some(f)) => {
                    let f = resolve(&f);
                    if let Err(e) = std::fs::read_to_string(&f) {
                        return Err(loc.error(
                            &key("password_file"),
                            format!("cannot read {}: {e}", f.display()),
                        ));
                    }
                    Password::File(f)
                }
                _ => {
                    return Err(loc.error(
                        &format!("mailbox[{i}]"),
                        "needs exactly one of `password` and `password_file`",
                    ));
                }
            };
            let ca_file = match b.ca_file {
                None => None,
                Some(f) => {
                    let f = resolve(&f);
                    if let Err(e) = std::fs::metadata(&f) {
                        return Err(
                            loc.error(&key("ca_file"), format!("cannot read {}: {e}", f.display()))
                        );
                    }
                    Some(f)
                }
            };
            for (k, v) in [
                ("folder", &b.folder),
                ("processed_folder", &b.processed_folder),
                ("failed_folder", &b.failed_folder),
            ] {
                // Sent as an IMAP quoted string: no CR, LF or NUL (RFC 3501 §4.3).
                if v.is_empty() || v.contains(['\r', '\n', '\0']) {
                    return Err(loc.error(&key(k), "must be a folder name on one line"));
                }
            }
            if b.processed_folder == b.folder || b.failed_folder == b.folder {
                return Err(loc.error(
                    &key("processed_folder"),
                    "the processed and failed folders must differ from the watched folder",
                ));
            }
            let gateway = b.gateway.unwrap_or_else(|| s.name.clone());
            // The gateway name becomes part of an IMAP keyword, an atom (RFC 3501 §9).
            if !simple_name(&gateway) {
                return Err(loc.error(
                    &key("gateway"),
                    format!(
                        "`{gateway}` cannot name this gateway in an IMAP keyword: use letters, digits, -, _ or . (set mailbox.gateway when the site name has others)"
                    ),
                ));
            }
            for (k, v) in [
                ("reidle_secs", b.reidle_secs),
                ("poll_secs", b.poll_secs),
                ("command_timeout_secs", b.command_timeout_secs),
                ("reconnect_max_secs", b.reconnect_max_secs),
                ("batch", b.batch as u64),
                ("max_recipients", b.max_recipients as u64),
            ] {
                if v == 0 {
                    return Err(loc.error(&key(k), "must be greater than 0"));
                }
            }
            if b.reidle_secs > 29 * 60 {
                return Err(loc.error(
                    &key("reidle_secs"),
                    "must be at most 1740 (29 minutes): servers may drop a client idle for 30 (RFC 2177 §3)",
                ));
            }
            let allowed_addresses = b
                .allowed_addresses
                .unwrap_or_else(|| senders.allowed_addresses.clone());
            for (j, a) in allowed_addresses.iter().enumerate() {
                if !a.contains('@') {
                    return Err(loc.error(
                        &key(&format!("allowed_addresses[{j}]")),
                        format!("`{a}` is not an address; put domains in allowed_domains"),
                    ));
                }
            }
            let allowed_domains = b
                .allowed_domains
                .unwrap_or_else(|| senders.allowed_domains.clone());
            if let Some(id) = &b.authserv_id
                && (id.is_empty() || id.contains(|c: char| c.is_whitespace() || c == ';'))
            {
                return Err(loc.error(
                    &key("authserv_id"),
                    "must be the mail server's authserv-id, one word such as mx.example.com",
                ));
            }
            let mailbox_senders = crate::intake::imap::plan::MailboxSenders {
                allowed_addresses: allowed_addresses
                    .iter()
                    .map(|a| a.to_ascii_lowercase())
                    .collect(),
                allowed_domains: allowed_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                pins: senders.pins.clone(),
                authserv_id: b.authserv_id,
            };
            let secs = std::time::Duration::from_secs;
            mailboxes.push(MailboxConfig {
                port: b.port.unwrap_or(match b.tls {
                    ImapTls::Implicit => 993,
                    _ => 143,
                }),
                name: b.name,
                host: b.host,
                tls: b.tls,
                ca_file,
                user: b.user,
                password,
                folder: b.folder,
                processed_folder: b.processed_folder,
                failed_folder: b.failed_folder,
                claim_keyword: format!("$mail2sms-claimed-{gateway}"),
                idle: b.idle,
                reidle: secs(b.reidle_secs),
                poll_interval: secs(b.poll_secs),
                batch: b.batch,
                command_timeout: secs(b.command_timeout_secs),
                reconnect_max: secs(b.reconnect_max_secs),
                max_recipients: b.max_recipients,
                senders: mailbox_senders,
                passive_for: b.passive_for,
            });
        }

        // [smpp], [peer.smpp]
        let smpp = crate::peer::config::validate_smpp(self.smpp, loc)?;
        let mut peers = self.peer;
        let mut peer_links = Vec::new();
        for (i, p) in peers.iter_mut().enumerate() {
            if let Some(link) = p.smpp.take() {
                peer_links.push(crate::peer::config::validate_link(
                    i, &p.name, &s.name, link, loc,
                )?);
            }
        }

        // [channel.smpp]: the external SMPP providers this site binds to.
        let mut channels = self.channel;
        let mut provider_links = Vec::new();
        for (i, c) in channels.iter_mut().enumerate() {
            if let Some(link) = c.smpp.take() {
                if c.kind != crate::route::ChannelKind::Smpp || c.site != s.name {
                    return Err(loc.error(
                        &format!("channel[{i}].smpp"),
                        format!(
                            "only a channel of kind \"smpp\" at this site (`{}`) is bound to a provider from here",
                            s.name
                        ),
                    ));
                }
                provider_links.push(crate::peer::config::validate_provider(
                    i, &c.name, link, loc,
                )?);
            }
        }

        // A passive mailbox waits on a peer's link: the peer must have one.
        for (i, m) in mailboxes.iter().enumerate() {
            if let Some(p) = &m.passive_for
                && !peer_links.iter().any(|l| &l.name == p)
            {
                return Err(loc.error(
                    &format!("mailbox[{i}].passive_for"),
                    format!("`{p}` is not a [[peer]] with a [peer.smpp] link, so whether it is down cannot be known"),
                ));
            }
        }

        // [[peer]], [[channel]], [routing]
        let routing =
            crate::route::config::validate(&s.name, peers, channels, self.routing, &base, loc)?;

        Ok(Config {
            source: loc.file.to_path_buf(),
            site: Site {
                name: s.name,
                hostname,
                default_country,
                sms_domains,
            },
            smtp: Smtp {
                listen,
                max_message_bytes: m.max_message_bytes,
                max_header_bytes: m.max_header_bytes,
                max_recipients: m.max_recipients,
                max_connections: m.max_connections,
                idle_timeout: std::time::Duration::from_secs(m.idle_timeout_secs),
                auth_failures_per_client: m.auth_failures_per_client,
                auth_lockout: std::time::Duration::from_secs(m.auth_lockout_secs),
                shutdown_grace: std::time::Duration::from_secs(m.shutdown_grace_secs),
                tls,
                users,
                trusted_networks,
            },
            store: Store {
                path: resolve(&self.store.path),
            },
            sms: Sms {
                max_parts: self.sms.max_parts,
                transliterate: self.sms.transliterate,
            },
            body: self.body,
            recipients,
            destinations,
            sending,
            modems,
            senders,
            queue_policy: QueuePolicy {
                // Replies go out only with both a relay and `[replies]`; without them nothing
                // is owed, so nothing waits as pending.
                replies: match (&notify, &replies) {
                    (Some(_), Some(r)) => crate::queue::OwedReplies::Asked(r.clone()),
                    _ => crate::queue::OwedReplies::Never,
                },
                ..queue_policy
            },
            smpp,
            peer_links,
            provider_links,
            mailboxes,
            notify,
            replies,
            routing,
        })
    }
}

/// The subject policy in force, for display.
pub fn subject_policy_name(p: SubjectPolicy) -> &'static str {
    match p {
        SubjectPolicy::SubjectAndBody => "subject-and-body",
        SubjectPolicy::BodyOnly => "body-only",
        SubjectPolicy::SubjectOnly => "subject-only",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[site]
name = "paris"
default_country = "FR"
sms_domains = ["sms", "SMS.Example.com."]

[store]
path = "data/queue.db"
"#;

    fn parse_str(src: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/mail2sms/test.toml"), src)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.site.sms_domains, vec!["sms", "sms.example.com"]);
        assert_eq!(c.site.default_country, phonenumber::country::Id::FR);
        assert_eq!(c.store.path, Path::new("/etc/mail2sms/data/queue.db"));
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert!(c.smtp.is_trusted("127.0.0.1".parse().unwrap()));
        assert!(c.smtp.is_trusted("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.smtp.is_trusted("192.0.2.1".parse().unwrap()));
        assert_eq!(c.sms.max_parts, 6);
    }

    /// Each row: a change to the minimal config, the key the error must name, the line it must
    /// point at, and a fragment of the message.
    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "[site]\nname = \"x\"\ndefault_country = \"XX\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n",
                "site.default_country",
                3,
                "not an ISO 3166",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\", \"bad domain\"]\n[store]\npath = \"q.db\"\n",
                "site.sms_domains[1]",
                4,
                "not a domain name",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\ncolour = 3\n[store]\npath = \"q.db\"\n",
                "site.colour",
                5,
                "unknown field `colour`",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[smtp]\nlisten = [\"localhost\"]\n",
                "smtp.listen[0]",
                8,
                "not an address and port",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[smtp]\nmax_recipients = \"many\"\n",
                "smtp.max_recipients",
                8,
                "invalid type",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[smtp]\ntrusted_networks = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n",
                "smtp.trusted_networks[1]",
                8,
                "not a network",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[[smtp.users]]\nname = \"a\"\npassword_hash = \"secret\"\n",
                "smtp.users[0].password_hash",
                9,
                "PHC",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[smtp]\nauth_failures_per_client = 0\n",
                "smtp.auth_failures_per_client",
                8,
                "greater than 0",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[sms]\nmax_parts = 0\n",
                "sms.max_parts",
                8,
                "between 1 and 255",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[recipients]\nblocked_prefixes = [\"33899\"]\n",
                "recipients.blocked_prefixes[0]",
                8,
                "E.164 prefix",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n",
                "",
                0,
                "missing field `store`",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n[smtp.tls]\ncertificate = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
                "smtp.tls.certificate",
                8,
                "cannot read",
            ),
            (
                "[site]\nname = \"x\"\ndefault_country = \"FR\"\nsms_domains = [\"sms\"\n",
                "",
                4,
                "",
            ),
        ];
        for (src, key, line, fragment) in cases {
            let e = parse_str(src).expect_err(src);
            assert_eq!(&e.key, key, "key for {src:?}: {e}");
            if *line > 0 {
                assert_eq!(e.line, *line, "line for {src:?}: {e}");
            }
            assert!(e.message.contains(fragment), "message for {src:?}: {e}");
            assert!(e.to_string().starts_with("/etc/mail2sms/test.toml:"), "{e}");
        }
    }

    #[test]
    fn replies_need_notify_templates_and_a_language() {
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let notify = "[notify]\nrelay = \"127.0.0.1:25\"\n";
        let replies = |extra: &str| {
            format!(
                "[replies]\ntemplates = \"{}\"\nlanguage = \"fr\"\n{extra}",
                templates.display()
            )
        };
        let c = parse_str(&format!(
            "{MINIMAL}{notify}{}",
            replies("delay_secs = 0\ndomains = [\"example.org\"]\n")
        ))
        .unwrap();
        let r = c.replies.unwrap();
        assert_eq!((r.language.as_str(), r.delay), ("fr", None));
        assert_eq!(r.templates, templates);
        assert_eq!(r.domain_notify.len(), 1);
        // `[replies]` comes after MINIMAL's lines (and the 2 of [notify] when present).
        let at = MINIMAL.lines().count() + 1;
        let cases: Vec<(String, &str, usize, &str)> = vec![
            (
                format!("{MINIMAL}{}", replies("")),
                "replies",
                at,
                "add a [notify] table",
            ),
            (
                format!(
                    "{MINIMAL}{notify}{}",
                    replies("").replace("\"fr\"", "\"../fr\"")
                ),
                "replies.language",
                at + 4,
                "not a language folder",
            ),
            (
                format!(
                    "{MINIMAL}{notify}{}",
                    replies("").replace("\"fr\"", "\"de\"")
                ),
                "replies.templates",
                at + 3,
                "cannot read the template",
            ),
            (
                format!(
                    "{MINIMAL}{notify}{}",
                    replies("domain_notify = [\"sometimes\"]\n")
                ),
                "replies.domain_notify[0]",
                at + 5,
                "unknown variant",
            ),
            (
                format!("{MINIMAL}{notify}{}", replies("domains = [\"a@b.c\"]\n")),
                "replies.domains",
                at + 5,
                "not a domain",
            ),
        ];
        for (src, key, line, needle) in cases {
            let e = parse_str(&src).expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert_eq!(e.line, line, "{key}: {e}");
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().contains("/etc/mail2sms/test.toml"), "{e}");
        }
    }

    #[test]
    fn mailboxes_and_notify() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let base = format!(
            "{MINIMAL}[notify]\nrelay = \"127.0.0.1:25\"\n[[mailbox]]\nname = \"inbox\"\nhost = \"imap.example.com\"\nuser = \"sms\"\npassword_file = \"{}\"\n",
            pw.display()
        );
        let c = parse_str(&base).unwrap();
        let m = &c.mailboxes[0];
        assert_eq!((m.port, m.tls), (993, ImapTls::Implicit));
        assert_eq!(m.folder, "INBOX");
        assert_eq!(m.claim_keyword, "$mail2sms-claimed-paris");
        assert_eq!(m.reidle, std::time::Duration::from_secs(600));
        let n = c.notify.as_ref().unwrap();
        assert_eq!((n.host.as_str(), n.port), ("127.0.0.1", 25));
        assert_eq!(n.from, "mailer-daemon@paris.mail2sms");

        let starttls = format!("{base}tls = \"starttls\"\n");
        assert_eq!(parse_str(&starttls).unwrap().mailboxes[0].port, 143);

        // (appended to the mailbox table, key, fragment)
        let cases: &[(&str, &str, &str)] = &[
            ("password = \"x\"\n", "mailbox[0]", "exactly one of"),
            ("tls = \"ssl\"\n", "mailbox[0].tls", "unknown variant"),
            (
                "processed_folder = \"INBOX\"\n",
                "mailbox[0].processed_folder",
                "must differ",
            ),
            (
                "gateway = \"paris north\"\n",
                "mailbox[0].gateway",
                "IMAP keyword",
            ),
            (
                "reidle_secs = 1800\n",
                "mailbox[0].reidle_secs",
                "29 minutes",
            ),
            ("batch = 0\n", "mailbox[0].batch", "greater than 0"),
            (
                "ca_file = \"/nonexistent/ca.pem\"\n",
                "mailbox[0].ca_file",
                "cannot read",
            ),
            (
                "[[mailbox]]\nname = \"inbox\"\nhost = \"h\"\nuser = \"u\"\npassword = \"p\"\n",
                "mailbox[1].name",
                "names two mailboxes",
            ),
            (
                "passive_for = \"lyon\"\n",
                "mailbox[0].passive_for",
                "`lyon` is not a [[peer]]",
            ),
        ];
        for (extra, key, fragment) in cases {
            let e = parse_str(&format!("{base}{extra}")).expect_err(extra);
            assert_eq!(&e.key, key, "{extra:?}: {e}");
            assert!(e.message.contains(fragment), "{extra:?}: {e}");
            assert!(e.line > 0, "{extra:?}: {e}");
        }
        let bad_relay = base.replace("127.0.0.1:25", "relay.example.com");
        let e = parse_str(&bad_relay).unwrap_err();
        assert_eq!(e.key, "notify.relay", "{e}");
        let missing =
            format!("{MINIMAL}[[mailbox]]\nname = \"x\"\nhost = \"h\"\npassword = \"p\"\n");
        let e = parse_str(&missing).unwrap_err();
        assert!(e.message.contains("missing field `user`"), "{e}");
    }

    #[test]
    fn shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(
            n >= 3,
            "expected the demo and the two-site example, found {n} files"
        );
    }
}
