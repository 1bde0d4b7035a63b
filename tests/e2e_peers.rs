//! Sites linked over SMPP, each a real `mail2sms run` process with its own store, ports and
//! simulated modem: mail for a French number sent into the UK site goes out at the French
//! site's modem; with the French site killed, the UK site notices within 3 s and sends through
//! its own, dearer modem; with it back, traffic returns. The simulators' record files are the
//! ground truth: every number gets its SMS exactly once.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sim::wait_until;
use common::sink::Sink;
use common::sites::{Node, counts, hashes, numbers};
use common::{BIN, free_port, hash_password};
use serde_json::Value;

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
        || fr.sent_to(&first) == first.len(),
    );
    // A UK number stays at the UK.
    let local = numbers("4477", 0, 2);
    uk.mail(&local, "for the UK");
    wait_until(
        "the UK modem sends UK numbers",
        Duration::from_secs(20),
        || uk.sent_to(&local) == local.len(),
    );
    assert_eq!(
        uk.sent_to(&first),
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
        || uk.sent_to(&second) == second.len(),
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
        || fr.sent_to(&third) == third.len(),
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
    assert_eq!(uk.sent_to(&third), 0);
    assert_eq!(fr.sent_to(&second), 0);
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
        de.sent_to(&a) == a.len()
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
        || fr.sent_to(&b) == b.len(),
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
        || uk.sent_to(&c) == c.len(),
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
    assert_eq!(fr.sent_to(&[number.to_string()]), 1);
    assert_eq!(uk.sent_to(&[number.to_string()]), 0);
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
