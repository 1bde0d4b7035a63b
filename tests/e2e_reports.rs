//! Delivery reports and status replies end to end: the real `mail2sms run` binary, mail in
//! over SMTP with RFC 3461 NOTIFY from Python's smtplib, SMS out through a `mail2sms modem-sim`
//! process whose simulated network sends status reports (`+CDS` or stored with `+CDSI`;
//! delivered, failed, late, duplicated, out of order, after the 8-bit TP-MR wrapped), and the
//! status replies received by a real SMTP server (aiosmtpd) and read back by Python's `email`
//! package: each is checked for its Action, Status and Final-Recipient.

mod common;

use std::path::Path;
use std::time::Duration;

use common::sim::{SimProcess, wait_until};
use common::sink::Sink;
use common::{Gateway, requests};
use mail2sms::queue::RequestStatus;
use serde_json::{Value, json};

fn gateway(sim: &SimProcess, sink: &Sink, sending: &str, replies: &str) -> Gateway {
    Gateway::start("", &config(sim, sink, sending, replies))
}

/// The configuration of [`gateway`]: the simulated modems, the sink as relay, the templates.
fn config(sim: &SimProcess, sink: &Sink, sending: &str, replies: &str) -> String {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    format!(
        "[sending]\nmax_attempts = 3\nretry_base_secs = 1\nretry_max_secs = 2\n{sending}\n\
         {}\n[notify]\nrelay = \"127.0.0.1:{}\"\ntls = \"none\"\n\n\
         [replies]\ntemplates = \"{}\"\nlanguage = \"en\"\nrelayed = false\n{replies}\n",
        sim.modem_config(6),
        sink.port,
        templates.display()
    )
}

/// One mail through Python's smtplib; `notify` goes on every RCPT ("-" for none).
fn send(g: &Gateway, from: &str, rcpts: &[&str], notify: &str, extra: &[&str]) {
    let port = g.addr.port().to_string();
    let rcpts = rcpts.join(",");
    let mut args = vec!["127.0.0.1", &port, from, &rcpts, notify];
    args.extend_from_slice(extra);
    let out = common::python("dsn_client.py", &args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dsn_client.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["data"], 250, "{v}");
}

/// The request of the mail with this Message-ID.
fn request(g: &Gateway, message_id: &str) -> RequestStatus {
    let id = message_id.trim_matches(['<', '>']);
    requests(g)
        .into_iter()
        .find(|r| r.message_id.as_deref().map(|m| m.trim_matches(['<', '>'])) == Some(id))
        .unwrap_or_else(|| panic!("no request for {message_id}"))
}

fn state_of(g: &Gateway, number: &str) -> Vec<String> {
    g.queue()
        .iter()
        .filter(|e| e["number"] == number)
        .map(|e| e["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The checks every status reply passes: from `<>` to the sender, automatic, threaded to the
/// original, an RFC 3464 report with one block naming `address` with `action` and `status`.
fn assert_reply(r: &Value, to: &str, msgid: &str, address: &str, action: &str, status: &str) {
    assert_eq!(r["mail_from"], "<>", "{r}");
    assert_eq!(r["rcpt_tos"], json!([to]), "{r}");
    assert_eq!(r["auto_submitted"], "auto-replied", "{r}");
    assert_eq!(r["in_reply_to"], msgid, "{r}");
    assert_eq!(r["references"], msgid, "{r}");
    assert_eq!(r["content_type"], "multipart/report", "{r}");
    assert_eq!(r["report_type"], "delivery-status", "{r}");
    assert_eq!(
        r["parts"],
        json!([
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]),
        "{r}"
    );
    assert_eq!(r["per_message"]["reporting-mta"], "dns; gw.test", "{r}");
    let blocks = r["recipients"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{r}");
    let b = &blocks[0];
    assert_eq!(b["final_recipient"], format!("rfc822;{address}"), "{r}");
    assert_eq!(b["action"], action, "{r}");
    assert_eq!(b["status"], status, "{r}");
    let human = r["human"].as_str().unwrap_or_default();
    assert!(human.contains("automatic reply"), "{human}");
}

/// One simulated modem whose network reports each SMS (`+CDS`) 300 ms after it, answering
/// `AT+CMGS` after `cmgs_latency_ms`.
fn reporting_sim(cmgs_latency_ms: u64) -> SimProcess {
    let latency = cmgs_latency_ms.to_string();
    SimProcess::start(
        1,
        &[
            "--latency-ms",
            "2",
            "--cmgs-latency-ms",
            &latency,
            "--report",
            "cds",
            "--report-delay-ms",
            "300",
        ],
    )
}

#[test]
fn replies_for_delivered_failed_delayed_and_a_three_part_sms_and_never_to_automatic_mail() {
    let sim = reporting_sim(30);
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path());
    let g = gateway(&sim, &sink, "", "delay_secs = 3\nper_sender_per_hour = 0");
    let alice = "alice@example.org";

    // No reply to the null sender, nor to automatic mail (RFC 3834), though both ask.
    send(
        &g,
        "",
        &["+33640000001@sms"],
        "SUCCESS,FAILURE",
        &["--msgid", "<null@client.example>"],
    );
    send(
        &g,
        "carol@example.org",
        &["+33640000002@sms"],
        "SUCCESS,FAILURE",
        &[
            "--header",
            "Auto-Submitted: auto-replied",
            "--msgid",
            "<auto@client.example>",
        ],
    );

    // Delivered: one reply per recipient, each with its own block.
    let two = "<two@client.example>";
    send(
        &g,
        alice,
        &["Paul@+33640000003@sms", "+33640000004@sms"],
        "SUCCESS,FAILURE",
        &["--msgid", two],
    );
    wait_until("two delivered replies", Duration::from_secs(60), || {
        sink.replies().len() >= 2
    });
    for (address, number) in [
        ("Paul@+33640000003@sms", "+33640000003"),
        ("+33640000004@sms", "+33640000004"),
    ] {
        let got = sink.about(address);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_reply(&got[0], alice, two, address, "delivered", "2.0.0");
        let diag = got[0]["recipients"][0]["diagnostic_code"].as_str().unwrap();
        assert!(
            diag.starts_with("X-SMS; ") && diag.contains("TP-ST 0x00"),
            "{diag}"
        );
        assert!(
            got[0]["human"].as_str().unwrap().contains(number),
            "{}",
            got[0]
        );
    }
    // The two guarded mails were delivered before, and their replies decided before, those.
    for n in ["+33640000001", "+33640000002"] {
        assert_eq!(state_of(&g, n), ["delivered"]);
        assert!(sink.about(&format!("{n}@sms")).is_empty());
    }
    // Neither is owed any reply: that is decided when the mail is accepted, so nothing is
    // written for them, and `mail2sms status` lists no reply.
    for msgid in ["<null@client.example>", "<auto@client.example>"] {
        let r = request(&g, msgid);
        assert!(r.recipients.iter().all(|r| r.replies.is_empty()), "{r:?}");
    }

    // Failed, with the TP-ST sentence as diagnostic.
    sim.control(json!({"cmd": "report", "mode": "cds", "status": 0x41, "delay_ms": 300}));
    let failed = "<failed@client.example>";
    send(
        &g,
        alice,
        &["+33640000005@sms"],
        "FAILURE",
        &["--msgid", failed],
    );
    wait_until("the failed reply", Duration::from_secs(60), || {
        !sink.about("+33640000005@sms").is_empty()
    });
    let got = sink.about("+33640000005@sms");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_reply(
        &got[0],
        alice,
        failed,
        "+33640000005@sms",
        "failed",
        "5.0.0",
    );
    let diag = got[0]["recipients"][0]["diagnostic_code"].as_str().unwrap();
    assert!(diag.contains("TP-ST 0x41"), "{diag}");

    // Delayed past delay_secs, then delivered: two replies, in that order.
    sim.control(json!({"cmd": "report", "mode": "cds", "status": 0, "delay_ms": 7000}));
    let slow = "<slow@client.example>";
    send(
        &g,
        alice,
        &["+33640000006@sms"],
        "SUCCESS,DELAY",
        &["--msgid", slow],
    );
    wait_until("delayed then delivered", Duration::from_secs(60), || {
        sink.about("+33640000006@sms").len() >= 2
    });
    let got = sink.about("+33640000006@sms");
    assert_eq!(got.len(), 2, "{got:?}");
    assert_reply(&got[0], alice, slow, "+33640000006@sms", "delayed", "4.4.7");
    assert_reply(
        &got[1],
        alice,
        slow,
        "+33640000006@sms",
        "delivered",
        "2.0.0",
    );

    // Three parts: two reports come, then the network's own reports, held back, come last
    // first and each twice; then a late "failed" for a part already delivered.
    sim.control(json!({"cmd": "hold_reports"}));
    sim.control(
        json!({"cmd": "report", "mode": "cds", "status": 0, "delay_ms": 100, "duplicate": true}),
    );
    let long = "<long@client.example>";
    let body = "Rendez-vous devant la gare a 18h30; prenez la ligne 4 jusqu'au terminus, puis \
                marchez 300 m vers le nord. Appelez si vous avez du retard: nous attendrons un \
                quart d'heure au plus. Pensez aux billets et aux cartes. Le repas est a 20h, \
                chez Marie, au troisieme etage; le code de la porte est 4521B. Apportez le \
                dessert si vous pouvez, et de quoi boire. A ce soir, et bon voyage a tous!";
    send(
        &g,
        alice,
        &["+33640000007@sms"],
        "SUCCESS",
        &["--msgid", long, "--body", body],
    );
    wait_until("three parts sent", Duration::from_secs(60), || {
        state_of(&g, "+33640000007") == ["sent"]
    });
    let req = request(&g, long);
    let parts = &req.recipients[0].parts;
    assert_eq!(parts.len(), 3, "{parts:?}");
    let mrs: Vec<i64> = parts.iter().map(|p| p.message_ref.unwrap()).collect();
    for mr in &mrs[..2] {
        sim.control(json!({"cmd": "inject_report", "mr": mr, "recipient": "+33640000007"}));
    }
    wait_until("two parts delivered", Duration::from_secs(30), || {
        let r = request(&g, long);
        r.recipients[0]
            .parts
            .iter()
            .filter(|p| p.state == "delivered")
            .count()
            == 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state_of(&g, "+33640000007"), ["sent"]);
    assert!(sink.about("+33640000007@sms").is_empty());
    sim.control(json!({"cmd": "release_reports", "reverse": true}));
    wait_until("the delivered reply", Duration::from_secs(30), || {
        !sink.about("+33640000007@sms").is_empty()
    });
    sim.control(
        json!({"cmd": "inject_report", "mr": mrs[1], "recipient": "+33640000007", "status": 0x41}),
    );
    // Time for a wrong second reply to show.
    std::thread::sleep(Duration::from_secs(2));
    let got = sink.about("+33640000007@sms");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_reply(
        &got[0],
        alice,
        long,
        "+33640000007@sms",
        "delivered",
        "2.0.0",
    );
    assert!(got[0]["human"].as_str().unwrap().contains("all 3 parts"));
    assert_eq!(state_of(&g, "+33640000007"), ["delivered"]);
    // Every report is on record: 2 injected + 3 held, each twice, + 1 late = 9; the status
    // command shows each part's.
    let out = g.cli(&["status", &req.id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for seq in 1..=3 {
        assert!(text.contains(&format!("  part {seq}: delivered")), "{text}");
    }
    assert_eq!(text.matches("    report ").count(), 9, "{text}");
    assert!(text.contains("late or duplicate report ignored"), "{text}");
    assert!(
        text.contains("reply delivered: sent after 1 attempt(s)"),
        "{text}"
    );
}

#[test]
fn stored_reports_after_the_reference_wrapped_and_the_rate_limit() {
    // Reports stored in the SIM (+CDSI), read with AT+CMGR and deleted with AT+CMGD.
    let sim = SimProcess::start(
        1,
        &[
            "--latency-ms",
            "1",
            "--cmgs-latency-ms",
            "5",
            "--report",
            "cdsi",
            "--report-delay-ms",
            "200",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path());
    let g = gateway(
        &sim,
        &sink,
        "report_skew_secs = 5",
        "delay_secs = 0\nper_sender_per_hour = 3",
    );
    let alice = "alice@example.org";
    let x = "+33650000001";

    // Send 1 on this SIM: TP-MR 0, delivered. The service centre's time stamp is rounded
    // down to the second and our send time is taken after the modem's answer: a few seconds
    // of tolerance, and send 257 comes well after that.
    let first_sent = std::time::Instant::now();
    send(
        &g,
        alice,
        &[&format!("{x}@sms")],
        "SUCCESS,FAILURE",
        &["--msgid", "<w1@c>"],
    );
    wait_until("the first reply", Duration::from_secs(60), || {
        sink.replies().len() == 1
    });
    // Sends 2 to 256, to other numbers, without NOTIFY: no replies.
    let out = common::python(
        "smtp_client.py",
        &[
            "burst",
            "127.0.0.1",
            &g.addr.port().to_string(),
            "promo@example.org",
            "+33651000000",
            "255",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "255");
    let start = std::time::Instant::now();
    loop {
        let mut by_state = std::collections::BTreeMap::<String, usize>::new();
        for e in g.queue() {
            *by_state
                .entry(e["state"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        if by_state.get("delivered") == Some(&256) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "not 256 delivered: {by_state:?}, simulator {}",
            sim.counters(0)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Send 257 reuses TP-MR 0 for the same number; its report says failed. It must not be
    // taken for the first send's (which stays delivered), nor leave this one unsettled.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(first_sent.elapsed()));
    sim.control(json!({"cmd": "report", "mode": "cdsi", "status": 0x41, "delay_ms": 200}));
    send(
        &g,
        alice,
        &[&format!("{x}@sms")],
        "SUCCESS,FAILURE",
        &["--msgid", "<w2@c>"],
    );
    wait_until("the second reply", Duration::from_secs(60), || {
        sink.about(&format!("{x}@sms")).len() == 2
    });
    let first = request(&g, "<w1@c>");
    let second = request(&g, "<w2@c>");
    let (p1, p2) = (
        &first.recipients[0].parts[0],
        &second.recipients[0].parts[0],
    );
    assert_eq!((p1.message_ref, p2.message_ref), (Some(0), Some(0)));
    assert_eq!(p1.sim, p2.sim);
    assert_eq!(first.recipients[0].state, "delivered");
    assert_eq!(second.recipients[0].state, "failed");
    let got = sink.about(&format!("{x}@sms"));
    assert_reply(
        &got[0],
        alice,
        "<w1@c>",
        &format!("{x}@sms"),
        "delivered",
        "2.0.0",
    );
    assert_reply(
        &got[1],
        alice,
        "<w2@c>",
        &format!("{x}@sms"),
        "failed",
        "5.0.0",
    );
    // 257 reports through a memory of 20 slots: each was deleted once read.
    let counters = sim.counters(0);
    assert_eq!(counters["reports"], 257, "{counters}");
    assert_eq!(counters["reports_dropped"], 0, "{counters}");

    // Rate limit: 3 replies per sender per hour; two were sent, so one more of three.
    for k in 0..3 {
        send(
            &g,
            alice,
            &[&format!("+3365200000{k}@sms")],
            "FAILURE",
            &["--msgid", &format!("<r{k}@c>")],
        );
    }
    wait_until(
        "two replies refused by the rate limit",
        Duration::from_secs(60),
        || g.log().matches("rate limit: 3 replies").count() == 2,
    );
    let to_alice = sink
        .replies()
        .iter()
        .filter(|r| r["rcpt_tos"] == json!([alice]))
        .count();
    assert_eq!(to_alice, 3);
    assert!(
        sink.replies()
            .iter()
            .all(|r| r["rcpt_tos"] == json!([alice]))
    );
}

/// A part the gateway was sending when it was killed becomes `uncertain` at the restart
/// (invariant 3): a sender who asked to hear of failures gets one reply saying the SMS may
/// not have been sent and will not be sent again; the other mail is delivered and told so.
#[test]
fn a_sender_is_told_when_a_crash_leaves_the_sms_uncertain() {
    // Slow answers to AT+CMGS, so the gateway can be killed while the part is `sending`.
    let sim = reporting_sim(4000);
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path());
    let mut g = gateway(&sim, &sink, "", "per_sender_per_hour = 0");
    let alice = "alice@example.org";
    let (first, second) = ("<crash1@client.example>", "<crash2@client.example>");
    send(
        &g,
        alice,
        &["+33640000031@sms"],
        "SUCCESS,FAILURE",
        &["--msgid", first],
    );
    wait_until("the first part sending", Duration::from_secs(30), || {
        state_of(&g, "+33640000031") == ["sending"] && sim.records().len() == 1
    });
    send(
        &g,
        alice,
        &["+33640000032@sms"],
        "SUCCESS,FAILURE",
        &["--msgid", second],
    );
    g.kill();
    sim.control(json!({"cmd": "cmgs_latency", "ms": 30}));
    g.spawn();

    wait_until("both replies", Duration::from_secs(60), || {
        sink.replies().len() >= 2
    });
    // Time for a wrong second reply to arrive.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state_of(&g, "+33640000031"), ["uncertain"]);
    assert_eq!(state_of(&g, "+33640000032"), ["delivered"]);
    let uncertain = sink.about("+33640000031@sms");
    assert_eq!(uncertain.len(), 1, "{uncertain:#?}");
    let r = &uncertain[0];
    assert_reply(r, alice, first, "+33640000031@sms", "failed", "5.0.0");
    assert_eq!(
        r["subject"], "SMS to +33640000031 may not have been sent: status please",
        "{r}"
    );
    let human = r["human"].as_str().unwrap_or_default();
    assert!(
        human.contains("may not have arrived whole") && human.contains("send your mail again"),
        "{human}"
    );
    let diagnostic = r["recipients"][0]["diagnostic_code"]
        .as_str()
        .unwrap_or_default();
    assert!(
        diagnostic.contains("may or may not have been sent"),
        "{diagnostic}"
    );
    let delivered = sink.about("+33640000032@sms");
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_reply(
        &delivered[0],
        alice,
        second,
        "+33640000032@sms",
        "delivered",
        "2.0.0",
    );
    // The simulated network got each SMS once.
    assert_eq!(sim.records().len(), 2);
}

/// A status reply that left but whose `sent` the store cannot record (a full disk) is not sent
/// again: the loop keeps the outcome and records it once there is room, instead of finding the
/// reply still due and sending it every 50 ms. The relay holds the reply's DATA while the test
/// fills the store's tmpfs ([`Gateway::start_on_tmpfs`]) and uses up its room (mail until
/// `452`), then answers.
#[test]
fn a_reply_whose_sending_cannot_be_recorded_is_not_sent_again() {
    let sim = reporting_sim(30);
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path());
    sink.hold();
    let g = Gateway::start_on_tmpfs("", &config(&sim, &sink, "", ""), "4m");
    let address = "+33640000009@sms";
    send(
        &g,
        "alice@example.org",
        &[address],
        "SUCCESS,FAILURE",
        &["--msgid", "<full@client.example>"],
    );
    wait_until(
        "the reply held by the relay",
        Duration::from_secs(60),
        || sink.held(),
    );
    let filler = g.fill_store_disk();
    g.use_up_store_room();
    sink.release();
    let unrecorded = "cannot record a status reply attempt";
    wait_until(
        "the reply's outcome refused",
        Duration::from_secs(30),
        || g.log().contains(unrecorded),
    );
    // Long enough for dozens of turns of the loop at its usual pace.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.about(address).len(), 1, "{:?}", sink.replies());

    std::fs::remove_file(&filler).unwrap();
    // The store's own record of the reply (no CLI shows it), read with Python's sqlite3 in the
    // gateway's mount namespace.
    let pid = g.child.as_ref().unwrap().id().to_string();
    let db = g.path("store").join("queue.db");
    let states = || {
        let out = std::process::Command::new("nsenter")
            .args(["--mount", "--target", &pid, "python3", "-c"])
            .arg(
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
                 print(','.join(r[0] for r in c.execute('SELECT state FROM status_replies')))",
            )
            .arg(&db)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    let recorded = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        states() == "sent"
    });
    assert!(recorded, "{}\n{}", states(), g.log());
    std::thread::sleep(Duration::from_secs(2));
    let got = sink.about(address);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_reply(
        &got[0],
        "alice@example.org",
        "<full@client.example>",
        address,
        "delivered",
        "2.0.0",
    );
}
