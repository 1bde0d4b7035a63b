//! Sites linked over SMPP, each a real `mail2sms run` process with its own store, ports and
//! simulated modem: mail for a French number sent into the UK site goes out at the French
//! site's modem; with the French site killed, the UK site notices within 3 s and sends through
//! its own, dearer modem; with it back, traffic returns. The simulators' record files are the
//! ground truth: every number gets its SMS exactly once.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sim::wait_until;
use common::sink::Sink;
use common::{BIN, free_port, hash_password};
use mail2sms::modem::sim::SentSms;
use serde_json::Value;

/// One site: its folder, ports and process.
struct Node {
    name: &'static str,
    dir: tempfile::TempDir,
    smtp: u16,
    smpp: u16,
    child: Option<Child>,
    /// How its simulated network sends status reports ("none", "cds", ...).
    report: &'static str,
    /// The TP-ST of those reports.
    report_status: u8,
    /// More configuration, appended to the file.
    extra: String,
}

/// Tariffs per site's modems: (site, [(prefix, cost)]).
const TARIFFS: &[(&str, &[(&str, f64)])] = &[
    ("uk", &[("44", 0.02), ("33", 0.09), ("49", 0.09)]),
    ("fr", &[("44", 0.09), ("33", 0.02), ("49", 0.05)]),
    ("de", &[("44", 0.09), ("33", 0.09), ("49", 0.01)]),
];

/// The password site `a` sends when it binds to site `b` (SMPP allows 8 octets).
fn password(a: &str, b: &str) -> String {
    format!("pw-{a}{b}")
}

impl Node {
    fn new(name: &'static str) -> Node {
        Node {
            name,
            dir: tempfile::tempdir().unwrap(),
            smtp: free_port(),
            smpp: free_port(),
            child: None,
            report: "none",
            report_status: 0,
            extra: String::new(),
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// Writes this site's configuration, describing `sites` (itself included).
    fn configure(&self, sites: &[&Node], hashes: &HashMap<(String, String), String>) {
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

    fn start(&mut self) {
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
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mail2sms");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.smtp)).is_err() {
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
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log, without the terminal colour codes the logger may add.
    fn log(&self) -> String {
        let raw = std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ ... letter
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
    fn binds_to(&self, peer: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("bound to peer site") && l.contains(&format!("peer={peer}")))
            .count()
    }

    fn downs_of(&self, peer: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("peer site down") && l.contains(&format!("peer={peer}")))
            .count()
    }

    /// What its simulated modem sent.
    fn sent(&self) -> Vec<SentSms> {
        std::fs::read_to_string(self.path("sent.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record line"))
            .collect()
    }

    /// Sends one mail to `numbers` into this site over SMTP.
    fn mail(&self, numbers: &[String], body: &str) {
        let rcpts: Vec<String> = numbers.iter().map(|n| format!("{n}@sms")).collect();
        let out = common::python(
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
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "smtp_client.py: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["data"][0], 250, "{v}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The password hashes: (binding site, bound site) → hash of what the first sends.
fn hashes(names: &[&str]) -> HashMap<(String, String), String> {
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

/// How many SMS each number got, over all the sites' modems.
fn counts(nodes: &[&Node]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for n in nodes {
        for s in n.sent() {
            *c.entry(s.dest.trim_start_matches('+').to_string())
                .or_default() += 1;
        }
    }
    c
}

fn numbers(prefix: &str, from: usize, count: usize) -> Vec<String> {
    (from..from + count)
        .map(|i| format!("+{prefix}{:08}", 61_000_000 + i))
        .collect()
}

fn sent_to(node: &Node, nums: &[String]) -> usize {
    let sent = node.sent();
    nums.iter()
        .filter(|n| {
            sent.iter()
                .any(|s| s.dest.trim_start_matches('+') == n.trim_start_matches('+'))
        })
        .count()
}

#[test]
fn two_sites_forward_fail_over_and_come_back() {
    let mut uk = Node::new("uk");
    let mut fr = Node::new("fr");
    let h = hashes(&["uk", "fr"]);
    uk.configure(&[&uk, &fr], &h);
    fr.configure(&[&uk, &fr], &h);
    fr.start();
    uk.start();
    wait_until("uk binds to fr", Duration::from_secs(20), || {
        uk.binds_to("fr") >= 1
    });
    wait_until("fr binds to uk", Duration::from_secs(20), || {
        fr.binds_to("uk") >= 1
    });

    // 1. French numbers mailed to the UK go out at the French site's modem.
    let first = numbers("336", 0, 6);
    uk.mail(&first[..3], "first batch, part one");
    uk.mail(&first[3..], "first batch, part two");
    wait_until(
        "the French modem sends the first batch",
        Duration::from_secs(20),
        || sent_to(&fr, &first) == first.len(),
    );
    // A UK number stays at the UK.
    let local = numbers("4477", 0, 2);
    uk.mail(&local, "for the UK");
    wait_until(
        "the UK modem sends UK numbers",
        Duration::from_secs(20),
        || sent_to(&uk, &local) == local.len(),
    );
    assert_eq!(
        sent_to(&uk, &first),
        0,
        "UK sent French numbers while France was up"
    );
    // The forwarded messages are `sent` through the peer in the UK's queue.
    let q: Vec<Value> = serde_json::from_slice(
        &Command::new(BIN)
            .arg("--config")
            .arg(uk.path("mail2sms.toml"))
            .args(["queue", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let forwarded = q
        .iter()
        .filter(|e| first.iter().any(|n| e["number"] == n.as_str()))
        .count();
    assert_eq!(forwarded, first.len(), "{q:?}");

    // 2. France killed: noticed within 3 s; the UK sends French numbers itself.
    let downs = uk.downs_of("fr");
    let killed = Instant::now();
    fr.kill();
    wait_until(
        "the UK notices France is down",
        Duration::from_secs(3),
        || uk.downs_of("fr") > downs,
    );
    let detected = killed.elapsed();
    eprintln!("France down detected after {detected:?}");
    let second = numbers("336", 100, 5);
    uk.mail(&second, "second batch, France down");
    wait_until(
        "the UK modem sends the second batch",
        Duration::from_secs(20),
        || sent_to(&uk, &second) == second.len(),
    );

    // 3. France back: traffic returns to it.
    fr.start();
    wait_until("uk binds to fr again", Duration::from_secs(20), || {
        uk.binds_to("fr") >= 2
    });
    let third = numbers("336", 200, 5);
    uk.mail(&third, "third batch, France back");
    wait_until(
        "the French modem sends the third batch",
        Duration::from_secs(20),
        || sent_to(&fr, &third) == third.len(),
    );

    // Nothing twice, nothing lost: wait a moment for any stray second copy, then count.
    std::thread::sleep(Duration::from_secs(2));
    let c = counts(&[&uk, &fr]);
    for n in first.iter().chain(&second).chain(&third).chain(&local) {
        assert_eq!(
            c.get(n.trim_start_matches('+')).copied().unwrap_or(0),
            1,
            "{n}: {c:?}\nUK log:\n{}\nFR log:\n{}",
            uk.log(),
            fr.log()
        );
    }
    assert_eq!(sent_to(&uk, &third), 0);
    assert_eq!(sent_to(&fr, &second), 0);
}

#[test]
fn three_sites_route_to_the_cheapest_live_one() {
    let mut uk = Node::new("uk");
    let mut fr = Node::new("fr");
    let mut de = Node::new("de");
    let h = hashes(&["uk", "fr", "de"]);
    for n in [&uk, &fr, &de] {
        n.configure(&[&uk, &fr, &de], &h);
    }
    de.start();
    fr.start();
    uk.start();
    for peer in ["fr", "de"] {
        wait_until("uk binds to its peers", Duration::from_secs(20), || {
            uk.binds_to(peer) >= 1
        });
    }
    // German numbers: Germany (0.01) first, France (0.05) next, the UK (0.09) last.
    let a = numbers("4917", 0, 4);
    uk.mail(&a, "to Germany");
    wait_until("the German modem sends", Duration::from_secs(20), || {
        sent_to(&de, &a) == a.len()
    });
    let downs = uk.downs_of("de");
    de.kill();
    wait_until(
        "the UK notices Germany is down",
        Duration::from_secs(3),
        || uk.downs_of("de") > downs,
    );
    let b = numbers("4917", 100, 4);
    uk.mail(&b, "Germany down");
    wait_until(
        "the French modem sends for Germany",
        Duration::from_secs(20),
        || sent_to(&fr, &b) == b.len(),
    );
    let fr_downs = uk.downs_of("fr");
    fr.kill();
    wait_until(
        "the UK notices France is down",
        Duration::from_secs(3),
        || uk.downs_of("fr") > fr_downs,
    );
    let c = numbers("4917", 200, 3);
    uk.mail(&c, "both down");
    wait_until(
        "the UK modem sends for Germany",
        Duration::from_secs(20),
        || sent_to(&uk, &c) == c.len(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let counted = counts(&[&uk, &fr, &de]);
    for n in a.iter().chain(&b).chain(&c) {
        assert_eq!(
            counted.get(n.trim_start_matches('+')).copied().unwrap_or(0),
            1,
            "{n}: {counted:?}"
        );
    }
}

/// A peer that hangs (SIGSTOP: its sockets stay open, it just stops answering) is declared
/// down by its silent keepalive: 3 intervals of 1 s after its last word. When it wakes up it
/// binds again.
#[test]
fn a_hung_peer_is_declared_down_by_its_silent_keepalive() {
    let mut uk = Node::new("uk");
    let mut fr = Node::new("fr");
    let h = hashes(&["uk", "fr"]);
    uk.configure(&[&uk, &fr], &h);
    fr.configure(&[&uk, &fr], &h);
    fr.start();
    uk.start();
    wait_until("uk binds to fr", Duration::from_secs(20), || {
        uk.binds_to("fr") >= 1
    });
    let pid = fr.child.as_ref().unwrap().id().to_string();
    let signal = |s: &str| {
        assert!(
            Command::new("kill")
                .args([s, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let stopped = Instant::now();
    signal("-STOP");
    // 3 s of silence, plus the time to write the log line and this poll's 50 ms.
    wait_until(
        "the UK notices France hangs",
        Duration::from_millis(3500),
        || uk.downs_of("fr") >= 1,
    );
    let detected = stopped.elapsed();
    eprintln!("hung France detected after {detected:?}");
    assert!(
        detected >= Duration::from_millis(2000),
        "{detected:?}: too early, the keepalive is not what noticed"
    );
    signal("-CONT");
    wait_until("uk binds to fr again", Duration::from_secs(20), || {
        uk.binds_to("fr") >= 2
    });
}

/// Python's `smpplib` (a client no one here wrote) binds to a node with an account from
/// `[[smpp.users]]`, submits, and gets its `submit_sm_resp` once the message is stored and then
/// a delivery receipt naming that message. The simulated modem refuses the number for good
/// (`+CMS ERROR: 1`, unassigned number), so the receipt says UNDELIV; a wrong password is
/// refused at bind.
#[test]
fn smpplib_binds_submits_and_gets_its_receipt() {
    let sim = common::sim::SimProcess::start(1, &[]);
    sim.control(
        serde_json::json!({"cmd": "error_rate", "modem": "modem0", "code": 1, "rate": 1.0}),
    );
    let smpp = free_port();
    let hash = hash_password("s3cret");
    let g = common::Gateway::start(
        "",
        &format!(
            "[smpp]\nlisten = [\"127.0.0.1:{smpp}\"]\n[[smpp.users]]\nsystem_id = \"office\"\npassword_hash = \"{hash}\"\n\n{}",
            sim.modem_config(5)
        ),
    );
    wait_until("the SMPP server listens", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", smpp)).is_ok()
    });
    let port = smpp.to_string();

    let out = common::python(
        "smpp_client.py",
        &["bind", "127.0.0.1", &port, "office", "wrong"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // ESME_RINVPASWD (SMPP 3.4 §5.1.3).
    assert_eq!(v["bind"], 0x0E, "{v}");

    let out = common::python(
        "smpp_client.py",
        &[
            "submit",
            "127.0.0.1",
            &port,
            "office",
            "s3cret",
            "+33612345678",
            "Hello from smpplib",
            "30",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["error"], Value::Null, "{v}\n{}", g.log());
    assert_eq!(v["bind"], 0, "{v}");
    assert_eq!(v["submit"], 0, "{v}");
    let id = v["message_id"].as_str().expect("a message_id").to_string();
    // The message_id is the request's id in the queue: the message was stored.
    let q = g.queue();
    let entry = q
        .iter()
        .find(|e| e["request"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in the queue: {q:?}"));
    assert_eq!(entry["source"], "smpp", "{entry}");
    assert_eq!(entry["number"], "+33612345678", "{entry}");
    assert_eq!(entry["text"], "Hello from smpplib", "{entry}");
    let receipt = &v["receipt"];
    assert_eq!(receipt["id"], id.as_str(), "{v}\n{}", g.log());
    assert_eq!(receipt["stat"], "UNDELIV", "{v}");
    // message_state 5: UNDELIVERABLE (SMPP 3.4 §5.2.28).
    assert_eq!(receipt["message_state"], 5, "{v}");
    // The modem was asked and refused it: the failure came from there, not from here.
    assert!(
        sim.counters(0)["injected_errors"].as_u64().unwrap_or(0) >= 1,
        "{}",
        g.log()
    );
    assert!(sim.records().is_empty());
}

/// Mail for a French number goes into the UK site asking for `notify`; the French site's
/// simulated network reports it with TP-ST `status`; returns the one status reply the UK site
/// sent the mail's sender, as Python's `email` package reads it, and the two sites.
fn reply_through_the_peer(status: u8, notify: &str, number: &str) -> (Value, Node, Node) {
    let replies = tempfile::tempdir().unwrap();
    let sink = Sink::start(replies.path());
    let mut uk = Node::new("uk");
    let mut fr = Node::new("fr");
    fr.report = "cds";
    fr.report_status = status;
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    uk.extra = format!(
        "\n[notify]\nrelay = \"127.0.0.1:{}\"\ntls = \"none\"\n\n[replies]\ntemplates = \"{}\"\nlanguage = \"en\"\nrelayed = false\n",
        sink.port,
        templates.display()
    );
    let h = hashes(&["uk", "fr"]);
    uk.configure(&[&uk, &fr], &h);
    fr.configure(&[&uk, &fr], &h);
    fr.start();
    uk.start();
    wait_until("uk binds to fr", Duration::from_secs(20), || {
        uk.binds_to("fr") >= 1
    });
    let out = common::python(
        "dsn_client.py",
        &[
            "127.0.0.1",
            &uk.smtp.to_string(),
            "alice@example.org",
            &format!("{number}@sms"),
            notify,
            "--msgid",
            "<via-france@example.org>",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dsn_client.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["data"], 250, "{v}");
    let address = format!("{number}@sms");
    wait_until(
        "the UK site replies to the sender",
        Duration::from_secs(30),
        || !sink.about(&address).is_empty(),
    );
    // A moment for a stray second reply, then exactly one.
    std::thread::sleep(Duration::from_secs(1));
    let about = sink.about(&address);
    assert_eq!(
        about.len(),
        1,
        "{about:?}\nUK log:\n{}\nFR log:\n{}",
        uk.log(),
        fr.log()
    );
    assert_eq!(sink.replies().len(), 1, "{:?}", sink.replies());
    // It went out at the French modem only.
    assert_eq!(sent_to(&fr, &[number.to_string()]), 1);
    assert_eq!(sent_to(&uk, &[number.to_string()]), 0);
    let reply = about.into_iter().next().unwrap_or_default();
    (reply, uk, fr)
}

/// The checks both outcomes share: from `<>` to the sender, automatic, threaded to the mail,
/// one RFC 3464 block about the French number.
fn assert_reply_about(r: &Value, number: &str, action: &str, status_class: &str) {
    assert_eq!(r["mail_from"], "<>", "{r}");
    assert_eq!(
        r["rcpt_tos"],
        serde_json::json!(["alice@example.org"]),
        "{r}"
    );
    assert_eq!(r["auto_submitted"], "auto-replied", "{r}");
    assert_eq!(r["in_reply_to"], "<via-france@example.org>", "{r}");
    assert_eq!(r["content_type"], "multipart/report", "{r}");
    assert_eq!(r["report_type"], "delivery-status", "{r}");
    let blocks = r["recipients"].as_array().cloned().unwrap_or_default();
    assert_eq!(blocks.len(), 1, "{r}");
    let b = &blocks[0];
    assert_eq!(b["final_recipient"], format!("rfc822;{number}@sms"), "{r}");
    assert_eq!(b["action"], action, "{r}");
    let status = b["status"].as_str().unwrap_or_default();
    assert!(status.starts_with(status_class), "{r}");
}

/// Issue: "its delivery report becomes the UK sender's status reply". The French modem's
/// status report (delivered) makes the French site send the UK site a `deliver_sm` receipt,
/// which makes the UK site owe, and send, the sender's RFC 3464 reply: Action delivered.
#[test]
fn a_delivery_report_at_the_peer_becomes_the_senders_status_reply() {
    let number = "+33612340001";
    let (r, uk, _fr) = reply_through_the_peer(0x00, "SUCCESS", number);
    assert_reply_about(&r, number, "delivered", "2.");
    let q: Vec<Value> = serde_json::from_slice(
        &Command::new(BIN)
            .arg("--config")
            .arg(uk.path("mail2sms.toml"))
            .args(["queue", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let e = q
        .iter()
        .find(|e| e["number"] == number)
        .unwrap_or_else(|| panic!("{q:?}"));
    assert_eq!(e["state"], "delivered", "{e}");
}

/// The same for a report of failure (TP-ST 0x41, incompatible destination): the UK sender who
/// asked for NOTIFY=FAILURE is told, with Action failed and a 5.x.x status.
#[test]
fn a_failure_report_at_the_peer_becomes_the_senders_status_reply() {
    let number = "+33612340002";
    let (r, _uk, _fr) = reply_through_the_peer(0x41, "FAILURE", number);
    assert_reply_about(&r, number, "failed", "5.");
}
