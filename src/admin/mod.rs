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
    let _ = writeln!(s, "queue store: {}", c.store.path.display());
    let _ = writeln!(
        s,
        "SMS: at most {} parts, transliteration {}, subject policy {}",
        c.sms.max_parts,
        if c.sms.transliterate { "on" } else { "off" },
        crate::config::subject_policy_name(c.body.subject)
    );
    s
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
        let _ = writeln!(
            s,
            "{:<32}  {:<24}  {:<16}  {:<9}  {:>5}  {}",
            e.request, e.received_at, e.number, e.state, e.parts, from
        );
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
