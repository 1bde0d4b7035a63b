//! IMAP pickup against a real Dovecot started by the test (its own config, folders, certificates
//! and ports on 127.0.0.1), with the real gateway binary: every mail is queued exactly once and
//! moved, through SIGKILLs of the gateway, a Dovecot restart, a UIDVALIDITY change, a server
//! without IDLE and MOVE, and two gateways on one mailbox; mail that gives no SMS goes to the
//! failed folder and its sender gets a reply (received by aiosmtpd).

mod common;
#[path = "e2e_imap/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Gateway;
use peers::{Dovecot, Options, SmtpSink};

/// How many times each Message-ID is in the queue (one row per recipient; these mails have one).
fn queued(g: &Gateway) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for e in g.queue() {
        let id = e["message_id"].as_str().unwrap_or_default().to_string();
        *count.entry(id).or_default() += 1;
    }
    count
}

fn count_ids(ids: &[String]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for id in ids {
        *count.entry(id.clone()).or_default() += 1;
    }
    count
}

/// Waits until `done` holds, failing with `why()` after `limit`.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out: {}", why());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}@test")).collect()
}

/// Every expected id once in `counts`, and nothing else.
fn assert_exactly_once(what: &str, counts: &HashMap<String, usize>, ids: &[String]) {
    for id in ids {
        assert_eq!(
            counts.get(id).copied().unwrap_or(0),
            1,
            "{what}: {id} found {:?} times",
            counts.get(id)
        );
    }
    assert_eq!(counts.len(), ids.len(), "{what}: unexpected ids present");
}

/// Waits (up to `limit`) until the INBOX is empty and as many mails as `ids` are queued, then
/// checks that each of `ids` is in the queue once and in Processed once.
fn assert_each_taken_once(dv: &Dovecot, g: &Gateway, ids: &[String], limit: Duration) {
    wait_for(
        limit,
        || dv.count("INBOX") == 0 && queued(g).len() == ids.len(),
        || {
            format!(
                "INBOX {} left, {} queued\n{}",
                dv.count("INBOX"),
                queued(g).len(),
                g.log()
            )
        },
    );
    assert_exactly_once("queue", &queued(g), ids);
    assert_exactly_once("Processed", &count_ids(&dv.ids("Processed")), ids);
}

/// The gateway's log without terminal colour codes (`ESC [ ... m`).
fn log_of(g: &Gateway) -> String {
    let raw = g.log();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn pseudo_random(seed: &mut u64, lo: u64, hi: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    lo + *seed % (hi - lo)
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

#[test]
fn thousand_mails_through_twenty_sigkills_are_each_queued_once_and_moved() {
    let dv = Dovecot::start(Options::default());
    let mut g = Gateway::start("", &dv.mailbox_toml("INBOX", "starttls", "batch = 50"));
    // 1,000 mails at 60 a second: 17 seconds of arrivals for the kills to fall into.
    let append = dv.client_spawn(&["append", "INBOX", "1000", "kill", "60"]);
    let mut seed = clock_seed();
    eprintln!("kill schedule seed {seed}");
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(pseudo_random(&mut seed, 150, 1000)));
        g.kill();
        g.spawn();
    }
    let out = append.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ids = expected("kill", 1000);
    assert_each_taken_once(&dv, &g, &ids, Duration::from_secs(60));
    assert_eq!(dv.count("Failed"), 0);
    let log = log_of(&g);
    eprintln!(
        "{} starts took up mail claimed before a kill; {} mails were found already queued",
        log.matches("taking up mail this gateway claimed").count(),
        log.matches("already handled before").count(),
    );
}

#[test]
fn dovecot_restart_mid_run_is_survived() {
    let mut dv = Dovecot::start(Options::default());
    let g = Gateway::start("", &dv.mailbox_toml("INBOX", "starttls", ""));
    dv.client(&["append", "INBOX", "300", "before"]);
    // Restart while the gateway is still taking the first mails (or just done with them).
    dv.restart();
    dv.client(&["append", "INBOX", "150", "after"]);
    let mut ids = expected("before", 300);
    ids.extend(expected("after", 150));
    assert_each_taken_once(&dv, &g, &ids, Duration::from_secs(40));
    let log = log_of(&g);
    assert!(log.contains("reconnecting"), "no reconnect seen:\n{log}");
    assert!(
        log.matches("watching mailbox").count() >= 2,
        "the gateway did not watch again after the restart:\n{log}"
    );
}

/// The folder is deleted and created again while the gateway runs: every UID is new and the
/// numbering starts over. New mail takes the UIDs of mail already handled (lost if claims
/// ignored the UIDVALIDITY), and copies of handled mail come back under new UIDs (queued twice
/// if only UIDs were remembered).
///
/// Dovecot keeps a session whose selected folder was deleted (it says `* NO Internal error`),
/// and what that stale session does corrupts the index of the folder created again under the
/// same name; a mail it moved could come back and be moved twice (this test once found
/// `new-11@test` twice in Processed, queued once). The gateway now selects the folder again
/// when the server reports trouble and ends the session when the UIDVALIDITY differs, before
/// it queues or moves anything.
#[test]
fn uidvalidity_change_loses_and_duplicates_nothing() {
    let dv = Dovecot::start(Options::default());
    dv.client(&["create", "sms"]);
    let g = Gateway::start("", &dv.mailbox_toml("sms", "starttls", ""));
    dv.client(&["append", "sms", "40", "old"]);
    wait_for(
        Duration::from_secs(30),
        || dv.count("sms") == 0 && queued(&g).len() == 40,
        || format!("{} queued\n{}", queued(&g).len(), g.log()),
    );
    // A copy of the handled mail, to bring back later as a restore would.
    dv.client(&["create", "Backup"]);
    dv.client(&["copy-all", "Processed", "Backup"]);
    let before: u64 = dv.client(&["uidvalidity", "sms"]).trim().parse().unwrap();
    dv.client(&["recreate", "sms"]);
    let after: u64 = dv.client(&["uidvalidity", "sms"]).trim().parse().unwrap();
    assert_ne!(before, after, "Dovecot kept the UIDVALIDITY");
    dv.client(&["append", "sms", "40", "new"]);
    dv.client(&["copy-all", "Backup", "sms"]);

    let mut ids = expected("old", 40);
    ids.extend(expected("new", 40));
    wait_for(
        Duration::from_secs(40),
        || dv.count("sms") == 0 && queued(&g).len() == 80,
        || {
            format!(
                "sms {} left, {} queued\n{}",
                dv.count("sms"),
                queued(&g).len(),
                g.log()
            )
        },
    );
    assert_exactly_once("queue", &queued(&g), &ids);
    let processed = count_ids(&dv.ids("Processed"));
    for id in expected("new", 40) {
        assert_eq!(processed.get(&id), Some(&1), "{id}");
    }
    for id in expected("old", 40) {
        // The original and the copy that came back.
        assert_eq!(processed.get(&id), Some(&2), "{id}");
    }
    let log = log_of(&g);
    for l in log.lines().filter(|l| {
        l.contains("session ended") || l.contains("in doubt") || l.contains("UIDVALIDITY changed")
    }) {
        eprintln!("{l}");
    }
    let dovecot_errors = dv.log().lines().filter(|l| l.contains("Error:")).count();
    eprintln!("Dovecot logged {dovecot_errors} errors");
    assert!(
        log.contains("the folder's UIDVALIDITY changed"),
        "the gateway did not notice the UIDVALIDITY change:\n{log}"
    );
    // The folder as it is now: Dovecot may have renumbered it once more while repairing the
    // index the stale session left (it logs that as an error), and the gateway must follow
    // whatever the live folder is.
    let now: u64 = dv.client(&["uidvalidity", "sms"]).trim().parse().unwrap();
    assert!(
        log.contains(&format!("uidvalidity={now}")),
        "the gateway never watched the folder under its current UIDVALIDITY \
         (before {before}, after the re-creation {after}, now {now}):\n{log}"
    );
}

#[test]
fn server_without_idle_and_move_is_polled_and_copied() {
    let dv = Dovecot::start(Options {
        idle_and_move: false,
    });
    let g = Gateway::start("", &dv.mailbox_toml("INBOX", "starttls", "poll_secs = 1"));
    dv.client(&["append", "INBOX", "60", "poll"]);
    let ids = expected("poll", 60);
    assert_each_taken_once(&dv, &g, &ids, Duration::from_secs(30));
    let log = log_of(&g);
    assert!(log.contains("polling"), "not polling:\n{log}");
    assert!(log.contains("moves=false"), "MOVE was offered:\n{log}");
}

/// Two gateway processes (one over implicit TLS, one over STARTTLS) on one mailbox, sharing
/// nothing but the server: each mail is queued by exactly one of them.
#[test]
fn two_gateways_on_one_mailbox_never_queue_the_same_mail() {
    let dv = Dovecot::start(Options::default());
    // The mail is there before either starts, so both go for the same messages from the start.
    dv.client(&["append", "INBOX", "600", "two"]);
    let a = Gateway::start(
        "",
        &dv.mailbox_toml("INBOX", "implicit", "gateway = \"alpha\"\nbatch = 20"),
    );
    let b = Gateway::start(
        "",
        &dv.mailbox_toml("INBOX", "starttls", "gateway = \"beta\"\nbatch = 20"),
    );
    let ids = expected("two", 600);
    let union = || {
        let mut all = queued(&a);
        for (id, n) in queued(&b) {
            *all.entry(id).or_default() += n;
        }
        all
    };
    wait_for(
        Duration::from_secs(60),
        || dv.count("INBOX") == 0 && union().values().sum::<usize>() >= 600,
        || format!("INBOX {} left\n{}\n{}", dv.count("INBOX"), a.log(), b.log()),
    );
    assert_exactly_once("both queues", &union(), &ids);
    assert_exactly_once("Processed", &count_ids(&dv.ids("Processed")), &ids);
    let (qa, qb) = (queued(&a).len(), queued(&b).len());
    let lost = |g: &Gateway| {
        log_of(g)
            .lines()
            .filter(|l| l.contains("another gateway claimed these messages first"))
            .count()
    };
    eprintln!(
        "alpha queued {qa}, beta queued {qb}; conditional STOREs that lost the race: alpha {}, beta {}",
        lost(&a),
        lost(&b)
    );
    for g in [&a, &b] {
        for l in log_of(g)
            .lines()
            .filter(|l| l.contains("session ended") || l.contains("watching mailbox"))
        {
            eprintln!("{l}");
        }
    }
    assert!(
        qa > 0 && qb > 0,
        "one gateway took everything: alpha {qa}, beta {qb}"
    );
}

#[test]
fn mail_that_gives_no_sms_goes_to_failed_and_its_sender_is_told() {
    let dv = Dovecot::start(Options::default());
    let sink = SmtpSink::start(dv.dir.path());
    let notify = format!(
        "[notify]\nrelay = \"127.0.0.1:{}\"\ntls = \"none\"\n",
        sink.port
    );
    let g = Gateway::start(
        "",
        &format!(
            "[body]\nmax_input_bytes = 4000\n{notify}{}",
            dv.mailbox_toml("INBOX", "starttls", "")
        ),
    );
    let mails: &[(&str, &str)] = &[
        (
            "no-sms",
            "From: Anne <anne@example.com>\r\nTo: helpdesk@example.com\r\nSubject: Printer\r\n\r\nIt is broken.\r\n",
        ),
        (
            "no-text",
            "Return-Path: <bob@example.com>\r\nFrom: bob@example.com\r\nTo: Paul@+33612345678@sms\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n",
        ),
        (
            "partial",
            "From: carol@example.com\r\nTo: Paul@+33612345678@sms, Nobody@+331@sms\r\nSubject: Meeting\r\n\r\nAt ten.\r\n",
        ),
        (
            "robot",
            "From: robot@example.com\r\nAuto-Submitted: auto-generated\r\nTo: helpdesk@example.com\r\nSubject: Report\r\n\r\nnightly\r\n",
        ),
        (
            "good",
            "From: dan@example.com\r\nTo: \"Paul@+33612345678\"@sms\r\nSubject: Hello\r\n\r\nSee you.\r\n",
        ),
        (
            "huge",
            "From: erin@example.com\r\nTo: Paul@+33612345678@sms\r\nSubject: Photos\r\n\r\n",
        ),
    ];
    let mut files = Vec::new();
    for (name, text) in mails {
        let path = dv.dir.path().join(format!("{name}.eml"));
        let mut with_id = format!("Message-ID: <{name}@test>\r\n{text}");
        if *name == "huge" {
            // Over the [body] max_input_bytes below: only its header is fetched.
            with_id.push_str(&"0123456789abcdef\r\n".repeat(300));
        }
        std::fs::write(&path, with_id).unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec!["append-file", "INBOX"];
    args.extend(files.iter().map(String::as_str));
    dv.client(&args);

    wait_for(
        Duration::from_secs(30),
        || dv.count("INBOX") == 0 && sink.mails().len() >= 4,
        || {
            format!(
                "INBOX {} left, {} replies\n{}",
                dv.count("INBOX"),
                sink.mails().len(),
                g.log()
            )
        },
    );
    let mut failed = dv.ids("Failed");
    failed.sort();
    assert_eq!(
        failed,
        ["huge@test", "no-sms@test", "no-text@test", "robot@test"]
    );
    let mut processed = dv.ids("Processed");
    processed.sort();
    assert_eq!(processed, ["good@test", "partial@test"]);
    let q = queued(&g);
    assert_eq!(q.get("partial@test"), Some(&1));
    assert_eq!(q.get("good@test"), Some(&1));
    assert_eq!(q.len(), 2);

    // Give a stray fifth reply (to the robot) time to show up before counting.
    std::thread::sleep(Duration::from_secs(1));
    let replies = sink.mails();
    assert_eq!(replies.len(), 4, "{replies:#?}");
    let expect: &[(&str, &str, &str)] = &[
        ("anne@example.com", "no-sms@test", "names no SMS recipient"),
        (
            "bob@example.com",
            "no-text@test",
            "neither a text part nor a subject",
        ),
        ("carol@example.com", "partial@test", "Nobody@+331@sms"),
        (
            "erin@example.com",
            "huge@test",
            "more than the limit of 4000 bytes",
        ),
    ];
    for (to, id, reason) in expect {
        let r = replies
            .iter()
            .find(|r| r["rcpt_tos"][0] == *to)
            .unwrap_or_else(|| panic!("no reply to {to}: {replies:#?}"));
        // RFC 3834 §3.3: the null envelope sender, so the reply cannot bounce back.
        assert_eq!(r["mail_from"], "<>", "{r:#?}");
        let data = r["data"].as_str().unwrap();
        for needle in [
            format!("In-Reply-To: <{id}>"),
            "Auto-Submitted: auto-replied".to_string(),
            reason.to_string(),
        ] {
            assert!(
                data.contains(&needle),
                "{needle:?} not in reply to {to}:\n{data}"
            );
        }
    }
}

/// IDLE is ended and issued again every `reidle_secs` (RFC 2177 §3 asks for less than 29
/// minutes; here one second) without dropping the session, and mail still wakes the gateway.
#[test]
fn idle_is_renewed_without_losing_the_session() {
    let dv = Dovecot::start(Options::default());
    let g = Gateway::start("", &dv.mailbox_toml("INBOX", "starttls", "reidle_secs = 1"));
    std::thread::sleep(Duration::from_millis(3500));
    dv.client(&["append", "INBOX", "5", "reidle"]);
    wait_for(
        Duration::from_secs(20),
        || queued(&g).len() == 5,
        || format!("{} queued\n{}", queued(&g).len(), g.log()),
    );
    let log = log_of(&g);
    assert_eq!(log.matches("watching mailbox").count(), 1, "{log}");
    assert!(!log.contains("session ended"), "{log}");
    let renewals = log.matches("IDLE renewed").count();
    assert!(
        renewals >= 2,
        "IDLE renewed {renewals} times in 3.5 s:\n{log}"
    );
    assert_exactly_once("queue", &queued(&g), &expected("reidle", 5));
}

/// The sender rules of a mailbox, against real mail in a real Dovecot: DMARC as the mail
/// server recorded it (`authserv_id`), allowed domains, a PIN, and the destination policy. Each
/// refused mail goes to the failed folder, nothing of it is queued, and its sender gets a reply
/// naming the rule; the allowed one is queued with its PIN taken out.
#[test]
fn mailbox_sender_rules_refuse_with_the_rule_and_queue_the_rest() {
    let dv = Dovecot::start(Options::default());
    let sink = SmtpSink::start(dv.dir.path());
    let config = format!(
        r#"
[senders]
pins = [{{ address = "boss@example.com", pin = "4321" }}]

[recipients]
blocked_prefixes = ["+33699"]

[notify]
relay = "127.0.0.1:{}"
tls = "none"
{}"#,
        sink.port,
        dv.mailbox_toml(
            "INBOX",
            "starttls",
            "allowed_domains = [\"example.com\"]\nauthserv_id = \"mx.test\"",
        )
    );
    let g = Gateway::start("", &config);
    let pass = "Authentication-Results: mx.test; spf=pass smtp.mailfrom=example.com;\r\n dkim=pass header.d=example.com; dmarc=pass header.from=example.com\r\n";
    let mails: Vec<(&str, String)> = vec![
        (
            "stranger",
            "Authentication-Results: mx.test; dmarc=pass header.from=evil.example\r\nFrom: eve@evil.example\r\nTo: Paul@+33612345678@sms\r\nSubject: Hi\r\n\r\nBuy now.\r\n".to_string(),
        ),
        (
            "forged",
            "Return-Path: <bounces@evil.example>\r\nAuthentication-Results: mx.test; spf=fail smtp.mailfrom=evil.example; dkim=none; dmarc=fail (p=reject) header.from=example.com\r\nFrom: dan@example.com\r\nTo: Paul@+33612345678@sms\r\nSubject: Hi\r\n\r\nWire the money.\r\n".to_string(),
        ),
        (
            "foreign-verdict",
            "Return-Path: <anne@example.com>\r\nAuthentication-Results: mx.evil.example; dmarc=pass header.from=example.com\r\nFrom: anne@example.com\r\nTo: Paul@+33612345678@sms\r\nSubject: Hi\r\n\r\nHello.\r\n".to_string(),
        ),
        (
            "wrong-pin",
            format!(
                "{pass}From: boss@example.com\r\nTo: Paul@+33612345678@sms\r\nSubject: PIN 1111 Meeting moved\r\n\r\nRoom 4.\r\n"
            ),
        ),
        (
            "blocked",
            format!(
                "{pass}From: anne@example.com\r\nTo: Premium@+33699000001@sms\r\nSubject: Vote\r\n\r\nYes.\r\n"
            ),
        ),
        (
            "good",
            format!(
                "{pass}From: boss@example.com\r\nTo: Paul@+33612345678@sms\r\nSubject: PIN 4321 Meeting moved\r\n\r\nRoom 4.\r\n"
            ),
        ),
    ];
    let mut files = Vec::new();
    for (name, text) in &mails {
        let path = dv.dir.path().join(format!("{name}.eml"));
        std::fs::write(&path, format!("Message-ID: <{name}@test>\r\n{text}")).unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec!["append-file", "INBOX"];
    args.extend(files.iter().map(String::as_str));
    dv.client(&args);

    wait_for(
        Duration::from_secs(30),
        || dv.count("INBOX") == 0 && sink.mails().len() >= 3,
        || {
            format!(
                "INBOX {} left, {} replies\n{}",
                dv.count("INBOX"),
                sink.mails().len(),
                g.log()
            )
        },
    );
    let mut failed = dv.ids("Failed");
    failed.sort();
    assert_eq!(
        failed,
        [
            "blocked@test",
            "foreign-verdict@test",
            "forged@test",
            "stranger@test",
            "wrong-pin@test"
        ]
    );
    assert_eq!(dv.ids("Processed"), ["good@test"]);
    let q = g.queue();
    assert_eq!(q.len(), 1, "{q:#?}");
    assert_eq!(q[0]["message_id"], "good@test");
    let text = q[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("Meeting moved") && !text.contains("4321"),
        "the PIN was not taken out: {text:?}"
    );

    std::thread::sleep(Duration::from_secs(1));
    // The two mails DMARC did not verify get no reply: it would go to an address anyone can
    // forge (the forged one's Return-Path is not its sender's).
    let replies = sink.mails();
    assert_eq!(replies.len(), 3, "{replies:#?}");
    assert!(
        !replies
            .iter()
            .any(|r| r["rcpt_tos"][0] == "bounces@evil.example"),
        "{replies:#?}"
    );
    let expect: &[(&str, &str, &str)] = &[
        (
            "eve@evil.example",
            "stranger@test",
            "eve@evil.example is not one of the senders allowed to send SMS (rule: allowed-senders)",
        ),
        (
            "boss@example.com",
            "wrong-pin@test",
            "the PIN in the subject is wrong (rule: pin)",
        ),
        (
            "anne@example.com",
            "blocked@test",
            "+33699000001 is not allowed",
        ),
    ];
    for (to, id, reason) in expect {
        let r = replies
            .iter()
            .find(|r| {
                r["rcpt_tos"][0] == *to
                    && r["data"]
                        .as_str()
                        .is_some_and(|d| d.contains(&format!("In-Reply-To: <{id}>")))
            })
            .unwrap_or_else(|| panic!("no reply to {to} about {id}: {replies:#?}"));
        let data = r["data"].as_str().unwrap();
        // The reply is quoted-printable: undo its soft line breaks (RFC 2045 §6.7 rule 5).
        let unfolded = data.replace("=\r\n", "").replace("=\n", "");
        assert!(
            unfolded.contains(reason),
            "{reason:?} not in the reply to {to}:\n{data}"
        );
    }
}

/// A site's configuration for the passive-mailbox test: its SMTP and SMPP ports, a link to
/// `peer` (whose SMPP server is at `peer_smpp`), and `more` (its mailboxes).
fn site_config(name: &str, smtp: u16, smpp: u16, peer: &str, peer_smpp: u16, more: &str) -> String {
    // Each site binds to the other with the password `pw-<from><to>`; the bound site keeps
    // its hash.
    format!(
        r#"
[site]
name = "{name}"
default_country = "FR"
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

[routing]
workload_weight = 0

[[peer]]
name = "{peer}"
forwarding_cost = 0.002
[peer.smpp]
address = "127.0.0.1:{peer_smpp}"
password = "pw-{name}{peer}"
password_hash = "{hash}"

[[channel]]
name = "{name}-modems"
kind = "modems"
site = "{name}"
tariff = {{ "33" = 0.09 }}

[[channel]]
name = "{peer}-modems"
kind = "modems"
site = "{peer}"
tariff = {{ "33" = 0.02 }}
{more}
"#,
        hash = common::hash_password(&format!("pw-{peer}{name}")),
    )
}

/// A gateway process for one site, from a whole configuration file.
fn site(config: String, smtp: u16) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail2sms.toml");
    std::fs::write(&path, config).unwrap();
    let mut g = Gateway {
        dir,
        config: path,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], smtp)),
        child: None,
        store_tmpfs: None,
    };
    g.spawn();
    g
}

/// Issue: "its passive configurations here activate (e.g. picking up its IMAP mailbox). When
/// it returns, they step back." The UK site holds the French site's mailbox as a passive
/// configuration. The French site watches no mailbox here, so any mail taken while France is
/// up could only have been taken by the UK: while France is up the UK takes nothing; France
/// killed, the UK picks the mail up; France back, the UK stops and new mail stays put.
#[test]
fn a_passive_mailbox_is_watched_only_while_its_peer_is_down() {
    let dv = Dovecot::start(Options::default());
    let (uk_smtp, uk_smpp, fr_smtp, fr_smpp) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut fr = site(
        site_config("fr", fr_smtp, fr_smpp, "uk", uk_smpp, ""),
        fr_smtp,
    );
    let uk = site(
        site_config(
            "uk",
            uk_smtp,
            uk_smpp,
            "fr",
            fr_smpp,
            &dv.mailbox_toml("INBOX", "starttls", "passive_for = \"fr\"\n"),
        ),
        uk_smtp,
    );
    let lines = |g: &Gateway, what: &str| {
        log_of(g)
            .lines()
            .filter(|l| l.contains(what) && l.contains("peer=fr"))
            .count()
    };
    wait_for(
        Duration::from_secs(20),
        || lines(&uk, "bound to peer site") >= 1,
        || log_of(&uk),
    );

    // 1. France up: the mail waits in its mailbox, past the start's grace and several polls.
    dv.client(&["append", "INBOX", "20", "standby"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(dv.count("INBOX"), 20, "{}", log_of(&uk));
    assert!(queued(&uk).is_empty(), "{:?}", queued(&uk));
    assert_eq!(lines(&uk, "watching mailbox"), 0, "{}", log_of(&uk));

    // 2. France killed: the UK watches its mailbox and takes everything, once.
    fr.kill();
    let mut ids = expected("standby", 20);
    wait_for(
        Duration::from_secs(20),
        || dv.count("INBOX") == 0 && queued(&uk).len() == 20,
        || format!("INBOX {} left\n{}", dv.count("INBOX"), log_of(&uk)),
    );
    dv.client(&["append", "INBOX", "10", "down"]);
    ids.extend(expected("down", 10));
    wait_for(
        Duration::from_secs(20),
        || dv.count("INBOX") == 0 && queued(&uk).len() == 30,
        || format!("INBOX {} left\n{}", dv.count("INBOX"), log_of(&uk)),
    );
    assert_exactly_once("UK queue", &queued(&uk), &ids);
    assert_exactly_once("Processed", &count_ids(&dv.ids("Processed")), &ids);

    // 3. France back: the UK steps back; new mail is left to France.
    let backs = lines(&uk, "peer site back");
    fr.spawn();
    wait_for(
        Duration::from_secs(20),
        || lines(&uk, "peer site back") > backs,
        || log_of(&uk),
    );
    dv.client(&["append", "INBOX", "10", "back"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(dv.count("INBOX"), 10, "{}", log_of(&uk));
    assert_exactly_once("UK queue", &queued(&uk), &ids);
    for l in log_of(&uk)
        .lines()
        .filter(|l| l.contains("passive mailbox") || l.contains("peer=fr"))
    {
        eprintln!("{l}");
    }
}

/// Invariant 1 on a full disk: a mail the store cannot take stays in the mailbox (not moved to
/// Processed, not lost) and the log says why, as an error; once space is freed it is queued and
/// moved, each exactly once, without a restart. The store is on a 4 MiB tmpfs of the gateway's
/// own ([`Gateway::start_on_tmpfs`]), filled by a file the test then deletes.
#[test]
fn a_full_disk_leaves_mail_in_the_mailbox_until_there_is_room() {
    let dv = Dovecot::start(Options::default());
    let g = Gateway::start_on_tmpfs(
        "",
        &dv.mailbox_toml("INBOX", "starttls", "batch = 50"),
        "4m",
    );
    dv.client(&["append", "INBOX", "1", "roomy"]);
    wait_for(
        Duration::from_secs(30),
        || dv.count("INBOX") == 0 && queued(&g).len() == 1,
        || format!("INBOX {} left\n{}", dv.count("INBOX"), g.log()),
    );
    let filler = g.fill_store_disk();
    // A few may still be queued in room the WAL already has; the first that needs more fails.
    dv.client(&["append", "INBOX", "100", "full"]);
    let full = "could not queue mail from the mailbox: the store's disk is full; the mail stays in the mailbox until there is room";
    wait_for(
        Duration::from_secs(30),
        || log_of(&g).contains(full),
        || format!("no full-disk error in the log\n{}", g.log()),
    );
    // Nothing is moved that is not queued: every mail is in the queue or still in the INBOX.
    let inbox = dv.ids("INBOX");
    assert!(!inbox.is_empty(), "the full disk took every mail");
    let waiting = queued(&g);
    for id in &inbox {
        assert!(
            !waiting.contains_key(id),
            "{id} is queued and still in the INBOX"
        );
    }
    let processed = dv.ids("Processed");
    assert_eq!(
        processed.len() + inbox.len(),
        101,
        "{processed:?} {inbox:?}"
    );
    assert_eq!(waiting.len(), processed.len());

    std::fs::remove_file(&filler).unwrap();
    let mut ids = expected("roomy", 1);
    ids.extend(expected("full", 100));
    assert_each_taken_once(&dv, &g, &ids, Duration::from_secs(60));
    assert_eq!(dv.count("Failed"), 0);
}
