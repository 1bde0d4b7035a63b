//! What an admin sees: the text the CLI prints for the queue, a request's status and a
//! configuration summary. (The HTTP API and web page will render the same views.)

use std::fmt::Write;

use crate::config::Config;
use crate::queue::{QueueEntry, RequestStatus};

/// A summary of a validated configuration, for `check-config`.
pub fn describe_config(c: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "site {} ({}), default country {:?}",
        c.site.name, c.site.hostname, c.site.default_country
    );
    let _ = writeln!(s, "SMS domains: {}", c.site.sms_domains.join(", "));
    let listen: Vec<String> = c.smtp.listen.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(
        s,
        "SMTP on {}: up to {} bytes, {} recipients, {} connections; TLS {}; {} AUTH user(s); trusted networks: {}",
        listen.join(", "),
        c.smtp.max_message_bytes,
        c.smtp.max_recipients,
        c.smtp.max_connections,
        if c.smtp.tls.is_some() { "on" } else { "off" },
        c.smtp.users.len(),
        c.smtp
            .trusted_networks
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !c.smtp.users.is_empty() {
        let _ = writeln!(
            s,
            "SMTP AUTH: a client address is refused unchecked after {} failures within {} s",
            c.smtp.auth_failures_per_client,
            c.smtp.auth_lockout.as_secs()
        );
    }
    let _ = writeln!(s, "queue store: {}", c.store.path.display());
    let _ = writeln!(
        s,
        "SMS: at most {} parts, transliteration {}, subject policy {}",
        c.sms.max_parts,
        if c.sms.transliterate { "on" } else { "off" },
        crate::config::subject_policy_name(c.body.subject)
    );
    describe_mailboxes(&mut s, c);
    describe_routing(&mut s, &c.routing);
    s
}

/// One line per `[[mailbox]]`: where it is, what it watches, who may send through it.
fn describe_mailboxes(s: &mut String, c: &Config) {
    if c.mailboxes.is_empty() {
        let _ = writeln!(s, "mailboxes: none");
    }
    for m in &c.mailboxes {
        let tls = match m.tls {
            crate::intake::imap::ImapTls::Implicit => "implicit TLS",
            crate::intake::imap::ImapTls::Starttls => "STARTTLS",
            crate::intake::imap::ImapTls::None => "no TLS",
        };
        let mode = if m.idle {
            format!("IDLE renewed every {}s", m.reidle.as_secs())
        } else {
            format!("polled every {}s", m.poll_interval.as_secs())
        };
        let r = &m.senders;
        let who = if r.allowed_addresses.is_empty() && r.allowed_domains.is_empty() {
            "any sender".to_string()
        } else {
            format!(
                "{} allowed address(es), domain(s) {}",
                r.allowed_addresses.len(),
                if r.allowed_domains.is_empty() {
                    "none".to_string()
                } else {
                    r.allowed_domains.join(", ")
                }
            )
        };
        let dmarc = match &r.authserv_id {
            Some(id) => format!("DMARC must pass per {id}"),
            None => "DMARC not checked".to_string(),
        };
        let _ = writeln!(
            s,
            "mailbox {}: {}@{}:{} ({tls}), folder {:?} -> {:?}, failed -> {:?}; {mode}; {who}; {dmarc}; {} PIN(s); claims as {}",
            m.name,
            m.user,
            m.host,
            m.port,
            m.folder,
            m.processed_folder,
            m.failed_folder,
            r.pins.len(),
            m.claim_keyword,
        );
    }
}

/// The routing tables as loaded: sites, channels with their tariffs, blocked prefixes.
fn describe_routing(s: &mut String, r: &crate::route::RoutingConfig) {
    let peers: Vec<String> = r
        .peers
        .iter()
        .map(|p| {
            format!(
                "{} (forwarding {}, {})",
                p.name,
                p.forwarding_cost,
                if p.up { "up" } else { "down" }
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "routing: site {}; peers: {}; {} channel(s); {} blocked prefix(es); {} prefix(es) limited to given channels",
        r.local,
        if peers.is_empty() {
            "none".to_string()
        } else {
            peers.join(", ")
        },
        r.channels.len(),
        r.blocked_prefixes.len(),
        r.allowed_channels.len(),
    );
    for ch in &r.channels {
        let source = match &ch.tariff_source {
            crate::route::config::TariffSource::Inline => "inline".to_string(),
            crate::route::config::TariffSource::File(p) => p.display().to_string(),
        };
        let _ = writeln!(
            s,
            "channel {} ({}) at {}: tariff {source}, {} prefix(es); {} blocked prefix(es)",
            ch.name,
            ch.kind.as_str(),
            ch.site,
            ch.tariff.len(),
            ch.blocked_prefixes.len(),
        );
    }
}

pub fn render_queue(entries: &[QueueEntry]) -> String {
    if entries.is_empty() {
        return "queue is empty\n".to_string();
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32}  {:<24}  {:<16}  {:<9}  {:>5}  FROM",
        "REQUEST", "RECEIVED", "NUMBER", "STATE", "PARTS"
    );
    for e in entries {
        let from = if e.mail_from.is_empty() {
            "<>"
        } else {
            &e.mail_from
        };
        let _ = write!(
            s,
            "{:<32}  {:<24}  {:<16}  {:<9}  {:>5}  {}",
            e.request, e.received_at, e.number, e.state, e.parts, from
        );
        match &e.held_for {
            Some(site) => {
                let _ = writeln!(s, "  (held until site {site} confirms it is this site's)");
            }
            None => s.push('\n'),
        }
    }
    let _ = writeln!(s, "{} recipient(s)", entries.len());
    s
}

pub fn render_status(st: &RequestStatus) -> String {
    let mut s = String::new();
    let from = if st.mail_from.is_empty() {
        "<>"
    } else {
        &st.mail_from
    };
    let _ = writeln!(s, "request   {}", st.id);
    let _ = writeln!(
        s,
        "received  {} over {}{}",
        st.received_at,
        st.source,
        st.client
            .as_ref()
            .map(|c| format!(" from {c}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "from      {from}{}",
        st.auth_user
            .as_ref()
            .map(|u| format!(" (authenticated as {u})"))
            .unwrap_or_default()
    );
    if let Some(m) = &st.message_id {
        let _ = writeln!(s, "message   {m}");
    }
    if let Some(subj) = &st.subject {
        let _ = writeln!(s, "subject   {subj}");
    }
    if st.dsn_envid.is_some() || st.dsn_ret.is_some() {
        let _ = writeln!(
            s,
            "dsn       envid={} ret={}",
            st.dsn_envid.as_deref().unwrap_or("-"),
            st.dsn_ret.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        s,
        "text      {} ({} bytes of mail{})",
        st.encoding,
        st.size,
        if st.truncated { ", truncated" } else { "" }
    );
    for line in st.text.lines() {
        let _ = writeln!(s, "  | {line}");
    }
    for r in &st.recipients {
        let _ = writeln!(s);
        let name = r
            .name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "recipient {}{name}: {}   <{}>",
            r.number, r.state, r.address
        );
        if let Some(n) = &r.dsn_notify {
            let _ = writeln!(
                s,
                "  notify {n}{}",
                r.dsn_orcpt
                    .as_ref()
                    .map(|o| format!(", orcpt {o}"))
                    .unwrap_or_default()
            );
        }
        for p in &r.parts {
            let via = p
                .channel
                .as_ref()
                .map(|c| format!(" via {c}"))
                .unwrap_or_default();
            let mr = p
                .message_ref
                .map(|m| format!(" mr={m}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  part {}: {} after {} attempt(s){via}{mr}",
                p.seq, p.state, p.attempts
            );
            if let Some(t) = &p.sent_at {
                let sim = p.sim.as_deref().unwrap_or("unknown");
                let _ = writeln!(s, "    sent {t} from SIM {sim}");
            }
            // Every report, late and duplicate ones too, and what each did.
            for r in &p.reports {
                let _ = writeln!(
                    s,
                    "    report {} via {}: TP-ST 0x{:02X}, {} ({})",
                    r.at, r.modem, r.status, r.text, r.outcome
                );
            }
        }
        for reply in &r.replies {
            let note = reply
                .note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  reply {}: {} after {} attempt(s){note}",
                reply.action, reply.state, reply.attempts
            );
        }
        for e in &r.events {
            let part = e.part.map(|p| format!(" part {p}")).unwrap_or_default();
            let _ = writeln!(s, "  {}  {:<9}{part} {}", e.at, e.state, e.reason);
        }
    }
    s
}

/// `mail2sms held`: what the SMS-pumping guard holds, and why.
pub fn render_held(entries: &[crate::queue::policy::HeldEntry]) -> String {
    if entries.is_empty() {
        return "nothing is held\n".to_string();
    }
    let mut s = String::new();
    for e in entries {
        let _ = writeln!(
            s,
            "{}  {}  {:<16} {} part(s) from {}\n  {}",
            e.request, e.received_at, e.number, e.parts, e.sender, e.reason
        );
    }
    let _ = writeln!(
        s,
        "{} held recipient(s); `mail2sms held release ID` sends them, `mail2sms held drop ID` fails them",
        entries.len()
    );
    s
}

/// `mail2sms modems`: one block per modem, from the status the drivers recorded.
pub fn render_modems(rows: &[(String, String, String)]) -> String {
    if rows.is_empty() {
        return "no modem has reported (none configured, or the gateway has not run)\n".to_string();
    }
    let mut s = String::new();
    for (name, json, at) in rows {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .unwrap_or_else(|| "-".into())
        };
        let state = match (&v["state"]["state"], &v["state"]["detail"]) {
            (serde_json::Value::String(st), serde_json::Value::String(d)) => format!("{st} ({d})"),
            (serde_json::Value::String(st), _) => st.clone(),
            _ => "-".into(),
        };
        let signal = match (v["rssi"].as_u64(), v["dbm"].as_i64()) {
            (Some(r), Some(d)) => format!("rssi {r} ({d} dBm)"),
            (Some(r), None) => format!("rssi {r}"),
            _ => "-".into(),
        };
        let reg = match v["registration"].as_u64() {
            Some(1) => "home network".to_string(),
            Some(5) => "roaming".to_string(),
            Some(2) => "searching".to_string(),
            Some(3) => "registration denied".to_string(),
            Some(n) => format!("not registered ({n})"),
            None => "-".into(),
        };
        let _ = writeln!(s, "{name}: {state}");
        let _ = writeln!(s, "  port       {}", text("port"));
        let _ = writeln!(
            s,
            "  modem      {} {}, IMEI {}",
            text("manufacturer"),
            text("model"),
            text("imei")
        );
        let _ = writeln!(
            s,
            "  SIM        IMSI {}, operator {}",
            text("imsi"),
            text("operator")
        );
        let _ = writeln!(s, "  signal     {signal}, {reg}");
        let _ = writeln!(
            s,
            "  counters   {} sent, {} failed, {} reopened, {} quarantined",
            v["sent"].as_u64().unwrap_or(0),
            v["failed"].as_u64().unwrap_or(0),
            v["reopened"].as_u64().unwrap_or(0),
            v["quarantined"].as_u64().unwrap_or(0)
        );
        if let Some(since) = v["since"].as_str() {
            let _ = writeln!(s, "  state since {since}");
        }
        if let Some(e) = v["last_error"].as_str() {
            let _ = writeln!(s, "  last error {e}");
        }
        let _ = writeln!(s, "  as of      {at}");
    }
    s
}

/// Argon2id with the crate's default (OWASP) parameters and a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes)?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    Ok(hash.to_string())
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_summarizes_mailboxes_and_routing() {
        let root = env!("CARGO_MANIFEST_DIR");
        let demo = std::path::Path::new(root).join("config/demo.toml");
        let text = std::fs::read_to_string(&demo).unwrap();
        let mut c = crate::config::parse(
            &demo,
            &format!(
                "{text}\n[[mailbox]]\nname = \"sms-inbox\"\nhost = \"imap.example.com\"\nuser = \"sms\"\npassword = \"x\"\nallowed_domains = [\"example.com\"]\nauthserv_id = \"mx.example.com\"\n"
            ),
        )
        .unwrap();
        c.mailboxes[0]
            .senders
            .pins
            .insert("a@example.com".into(), "1234".into());
        let out = describe_config(&c);
        let csv = std::fs::read_to_string(
            std::path::Path::new(root).join("config/tariffs/demo-smpp.csv"),
        )
        .unwrap();
        // Data lines of the CSV: those starting with a prefix's digits.
        let csv_prefixes = csv
            .lines()
            .filter(|l| {
                l.trim_start()
                    .starts_with(|ch: char| ch.is_ascii_digit() || ch == '+')
            })
            .count();
        let crate::route::TariffSource::File(file) = &c.routing.channels[1].tariff_source else {
            panic!("demo-smpp's tariff is a file")
        };
        let file = file.display();
        for line in [
            "mailbox sms-inbox: sms@imap.example.com:993 (implicit TLS), folder \"INBOX\" -> \"Processed\", failed -> \"Failed\"; IDLE renewed every 600s; 0 allowed address(es), domain(s) example.com; DMARC must pass per mx.example.com; 1 PIN(s); claims as $mail2sms-claimed-demo".to_string(),
            "channel demo-modems (modems) at demo: tariff inline, 4 prefix(es); 1 blocked prefix(es)".to_string(),
            format!("channel demo-smpp (smpp) at demo: tariff {file}, {csv_prefixes} prefix(es)"),
        ] {
            assert!(out.contains(&line), "{line:?} not in:\n{out}");
        }
        assert!(
            out.contains("routing: site demo; peers: none; 2 channel(s)"),
            "{out}"
        );
    }
}
