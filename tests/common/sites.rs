//! Sites linked over SMPP for tests and benchmarks: each a real `mail2sms run` process with its
//! own folder, store, SMTP and SMPP ports and simulated modem (whose record file is the ground
//! truth of what left), configured as a small organization whose tariffs make each site the
//! cheapest for its own country.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mail2sms::modem::sim::SentSms;

use super::{BIN, free_port, hash_password};

/// Tariffs per site's modems: (site, [(prefix, cost)]).
pub const TARIFFS: &[(&str, &[(&str, f64)])] = &[
    ("uk", &[("44", 0.02), ("33", 0.09), ("49", 0.09)]),
    ("fr", &[("44", 0.09), ("33", 0.02), ("49", 0.05)]),
    ("de", &[("44", 0.09), ("33", 0.09), ("49", 0.01)]),
];

/// The password site `a` sends when it binds to site `b` (SMPP allows 8 octets).
pub fn password(a: &str, b: &str) -> String {
    format!("pw-{a}{b}")
}

/// The password hashes: (binding site, bound site) → hash of what the first sends.
pub fn hashes(names: &[&str]) -> HashMap<(String, String), String> {
    let mut h = HashMap::new();
    for a in names {
        for b in names {
            if a != b {
                h.insert(
                    (a.to_string(), b.to_string()),
                    hash_password(&password(a, b)),
                );
            }
        }
    }
    h
}

/// One site: its folder, ports and process.
pub struct Node {
    pub name: &'static str,
    pub dir: tempfile::TempDir,
    pub smtp: u16,
    pub smpp: u16,
    pub child: Option<Child>,
    /// Environment for the next start (fault injection).
    pub env: Vec<(String, String)>,
    /// How its simulated network sends status reports ("none", "cds", ...).
    pub report: &'static str,
    /// The TP-ST of those reports.
    pub report_status: u8,
    /// More configuration, appended to the file.
    pub extra: String,
}

impl Node {
    pub fn new(name: &'static str) -> Node {
        Node {
            name,
            dir: tempfile::tempdir().unwrap(),
            smtp: free_port(),
            smpp: free_port(),
            child: None,
            env: Vec::new(),
            report: "none",
            report_status: 0,
            extra: String::new(),
        }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// Writes this site's configuration, describing `sites` (itself included).
    pub fn configure(&self, sites: &[&Node], hashes: &HashMap<(String, String), String>) {
        let me = self.name;
        let mut t = format!(
            r#"
[site]
name = "{me}"
default_country = "GB"
sms_domains = ["sms"]

[store]
path = "queue.db"

[smtp]
listen = ["127.0.0.1:{smtp}"]
trusted_networks = ["127.0.0.0/8"]

[smpp]
listen = ["127.0.0.1:{smpp}"]
enquire_link_ms = 1000
missed_keepalives = 3
reconnect_max_ms = 500

[quotas]
sender_parts_per_hour = 0
sender_parts_per_day = 0
domain_parts_per_hour = 0
domain_parts_per_day = 0

[guard]
enabled = false

[[modem]]
name = "{me}-sim"
[modem.simulate]
latency_ms = 1
cmgs_latency_ms = 20
report = "{report}"
report_delay_ms = 300
report_status = {status}
record = "sent.jsonl"

[routing]
workload_weight = 0
"#,
            smtp = self.smtp,
            smpp = self.smpp,
            report = self.report,
            status = self.report_status,
        );
        for other in sites.iter().filter(|o| o.name != me) {
            t.push_str(&format!(
                "\n[[peer]]\nname = \"{o}\"\nforwarding_cost = 0.002\n[peer.smpp]\naddress = \"127.0.0.1:{port}\"\npassword = \"{pw}\"\npassword_hash = \"{hash}\"\n",
                o = other.name,
                port = other.smpp,
                pw = password(me, other.name),
                hash = hashes[&(other.name.to_string(), me.to_string())],
            ));
        }
        for site in sites {
            let (_, tariff) = TARIFFS.iter().find(|(s, _)| *s == site.name).unwrap();
            let entries: Vec<String> = tariff
                .iter()
                .map(|(p, c)| format!("\"{p}\" = {c}"))
                .collect();
            t.push_str(&format!(
                "\n[[channel]]\nname = \"{s}-modems\"\nkind = \"modems\"\nsite = \"{s}\"\ntariff = {{ {} }}\n",
                entries.join(", "),
                s = site.name
            ));
        }
        t.push_str(&self.extra);
        std::fs::write(self.path("mail2sms.toml"), t).unwrap();
    }

    /// Starts the process (with [`Node::env`]) and waits for its SMTP port.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("gateway.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.path("mail2sms.toml"))
            .arg("run")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mail2sms");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.smtp)).is_err() {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {s}: {}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process gets no chance to say goodbye on its links.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Whether the process has exited (and reaps it).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => {
                if c.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The log, without the terminal colour codes the logger may add.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Log lines saying this site bound to `peer`.
    pub fn binds_to(&self, peer: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("bound to peer site") && l.contains(&format!("peer={peer}")))
            .count()
    }

    /// Log lines saying the peer `peer` bound to this site's server.
    pub fn bound_by(&self, peer: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("SMPP client bound") && l.contains(&format!("Peer(\"{peer}\")")))
            .count()
    }

    pub fn downs_of(&self, peer: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("peer site down") && l.contains(&format!("peer={peer}")))
            .count()
    }

    /// What its simulated modem sent.
    pub fn sent(&self) -> Vec<SentSms> {
        std::fs::read_to_string(self.path("sent.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many of `nums` its modem sent.
    pub fn sent_to(&self, nums: &[String]) -> usize {
        let sent = self.sent();
        nums.iter()
            .filter(|n| {
                sent.iter()
                    .any(|s| s.dest.trim_start_matches('+') == n.trim_start_matches('+'))
            })
            .count()
    }

    /// Sends one mail to `numbers` into this site with Python's smtplib.
    pub fn mail(&self, numbers: &[String], body: &str) {
        let rcpts: Vec<String> = numbers.iter().map(|n| format!("{n}@sms")).collect();
        let out = super::python(
            "smtp_client.py",
            &[
                "send",
                "127.0.0.1",
                &self.smtp.to_string(),
                "alice@example.org",
                &rcpts.join(","),
                "test",
                body,
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "smtp_client.py: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["data"][0], 250, "{v}");
    }

    /// `mail2sms queue --json`.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.path("mail2sms.toml"))
            .args(["queue", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// `mail2sms status ID` as printed.
    pub fn status(&self, id: &str) -> String {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.path("mail2sms.toml"))
            .args(["status", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A stopped process does not die of SIGKILL until continued on every kernel.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// How many SMS each number got, over all the sites' modems.
pub fn counts(nodes: &[&Node]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for n in nodes {
        for s in n.sent() {
            *c.entry(s.dest.trim_start_matches('+').to_string())
                .or_default() += 1;
        }
    }
    c
}

/// `count` numbers in E.164 with `prefix` (country and first digits).
pub fn numbers(prefix: &str, from: usize, count: usize) -> Vec<String> {
    (from..from + count)
        .map(|i| format!("+{prefix}{:08}", 61_000_000 + i))
        .collect()
}

/// A plain SMTP session kept open to send many one-recipient mails quickly (a load generator
/// for benchmarks; the tests' mails go through Python's smtplib).
pub struct SmtpLoad {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl SmtpLoad {
    pub fn connect(port: u16) -> std::io::Result<SmtpLoad> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut s = SmtpLoad {
            r: BufReader::new(w.try_clone()?),
            w,
        };
        s.expect(220)?;
        s.cmd("EHLO load.example.org", 250)?;
        Ok(s)
    }

    fn expect(&mut self, code: u16) -> std::io::Result<()> {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.len() < 4 || !line.starts_with(&code.to_string()) {
                return Err(std::io::Error::other(format!(
                    "expected {code}, got {line:?}"
                )));
            }
            if line.as_bytes()[3] == b' ' {
                return Ok(());
            }
        }
    }

    fn cmd(&mut self, c: &str, code: u16) -> std::io::Result<()> {
        write!(self.w, "{c}\r\n")?;
        self.expect(code)
    }

    /// One mail for `number` with `body`.
    pub fn send(&mut self, number: &str, body: &str) -> std::io::Result<()> {
        self.cmd("MAIL FROM:<load@example.org>", 250)?;
        self.cmd(&format!("RCPT TO:<{number}@sms>"), 250)?;
        self.cmd("DATA", 354)?;
        write!(
            self.w,
            "From: load@example.org\r\nTo: {number}@sms\r\nSubject: load\r\n\r\n{body}\r\n.\r\n"
        )?;
        self.expect(250)
    }
}
