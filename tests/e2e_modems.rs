//! The modem stage end to end: the real `mail2sms run` binary, mail in over SMTP from real
//! clients (Python's smtplib, swaks), SMS out through simulated modems run by a separate
//! `mail2sms modem-sim` process, whose record file is the ground truth of what "left": every
//! PDU the simulated modems accepted, decoded again here with `pdu::decode`. Faults are
//! injected through the simulator's control socket while the gateway runs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::sim::{SimProcess, wait_until};
use common::{Gateway, requests};
use mail2sms::modem::pdu::{self, Tpdu};
use mail2sms::modem::sim::SentSms;
use mail2sms::queue;
use serde_json::{Value, json};

const SENDING: &str = "
[sending]
max_attempts = 5
retry_base_secs = 1
retry_max_secs = 2
";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Recipients not yet in a final state.
fn unfinished(g: &Gateway) -> usize {
    g.queue()
        .iter()
        .filter(|e| {
            !matches!(
                e["state"].as_str(),
                Some("sent" | "delivered" | "failed" | "uncertain")
            )
        })
        .count()
}

/// A delivered recipient got there through a delivery report for each of its parts, after
/// that part was sent.
fn assert_delivered_by_reports(r: &queue::RecipientStatus) {
    for p in &r.parts {
        assert_eq!(
            p.state, "delivered",
            "{} part {}: {:?}",
            r.number, p.seq, r.events
        );
        let sent = r
            .events
            .iter()
            .position(|e| e.part == Some(p.seq) && e.state == "sent");
        let delivered = r.events.iter().position(|e| {
            e.part == Some(p.seq) && e.state == "delivered" && e.reason.contains("TP-ST 0x00")
        });
        assert!(
            matches!((sent, delivered), (Some(s), Some(d)) if s < d),
            "{} part {}: {:?}",
            r.number,
            p.seq,
            r.events
        );
    }
}

fn smtp_send(g: &Gateway, rcpts: &[String], subject: &str, body: &str) {
    let out = common::python(
        "smtp_client.py",
        &[
            "send",
            "127.0.0.1",
            &g.addr.port().to_string(),
            "alice@example.org",
            &rcpts.join(","),
            subject,
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
    assert_eq!(v["refused"], json!({}), "{v}");
}

fn modems_json(g: &Gateway) -> Vec<Value> {
    let out = g.cli(&["modems", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("modems --json is JSON")
}

/// A message as the handset would put it together from the records: its parts decoded from
/// the PDUs, checked for a consistent concatenation header, in order.
#[derive(Debug)]
struct Received {
    text: String,
    dcs: u8,
    parts: usize,
    imsis: Vec<String>,
}

/// One recorded part, decoded from its PDU.
struct Part {
    /// Concatenation reference, total and sequence number.
    concat: Option<(u16, u8, u8)>,
    text: String,
    dcs: u8,
    imsi: String,
}

/// Decodes every record's PDU (not trusting the simulator's own decoding) and groups them by
/// destination into messages.
fn reassemble(records: &[SentSms]) -> BTreeMap<String, Vec<Received>> {
    let mut by_dest: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for r in records {
        let hex = r.pdu.as_deref().expect("PDU mode only");
        let bytes = pdu::from_hex(hex).expect("hex");
        let Ok(Tpdu::Submit(s)) = pdu::decode(&bytes, true) else {
            panic!("not an SMS-SUBMIT: {hex}");
        };
        assert_eq!(s.dest, r.dest);
        let concat = s
            .udh
            .as_ref()
            .and_then(|u| u.concat)
            .map(|c| (c.reference, c.total, c.seq));
        by_dest.entry(s.dest.clone()).or_default().push(Part {
            concat,
            text: s.text,
            dcs: s.dcs,
            imsi: r.imsi.clone(),
        });
    }
    let mut out = BTreeMap::new();
    for (dest, parts) in by_dest {
        let mut messages: Vec<Received> = Vec::new();
        let mut groups: BTreeMap<(u16, u8), Vec<Part>> = BTreeMap::new();
        for p in parts {
            match p.concat {
                None => messages.push(Received {
                    text: p.text,
                    dcs: p.dcs,
                    parts: 1,
                    imsis: vec![p.imsi],
                }),
                Some((r, total, _)) => groups.entry((r, total)).or_default().push(p),
            }
        }
        for ((_, total), mut g) in groups {
            g.sort_by_key(|p| p.concat.map(|c| c.2));
            let seqs: Vec<u8> = g.iter().filter_map(|p| p.concat.map(|c| c.2)).collect();
            assert_eq!(
                seqs,
                (1..=total).collect::<Vec<_>>(),
                "{dest}: parts of one message, each once"
            );
            messages.push(Received {
                text: g.iter().map(|p| p.text.as_str()).collect(),
                dcs: g[0].dcs,
                parts: g.len(),
                imsis: g.iter().map(|p| p.imsi.clone()).collect(),
            });
        }
        out.insert(dest, messages);
    }
    out
}

#[test]
fn mail_in_over_smtp_sms_out_at_the_modems() {
    let sim = SimProcess::start(2, &["--latency-ms", "2", "--cmgs-latency-ms", "30"]);
    let g = Gateway::start("", &format!("{SENDING}\n{}", sim.modem_config(6)));

    let short = "Le train de 18h12 a 10 minutes de retard.";
    let long_gsm = "Rendez-vous devant la gare à 18h30; prenez la ligne 4 jusqu'au terminus, \
                    puis marchez 300 m vers le nord. Appelez si vous avez du retard: nous \
                    attendrons un quart d'heure au plus. Pensez aux billets {et} aux cartes [sic]~";
    let long_ucs2 = "Привет! Встреча перенесена на завтра, 10:00, в переговорной 3. \
                     Пожалуйста, возьмите с собой ноутбук и отчёт за квартал 📊. Спасибо!";
    smtp_send(&g, &["Paul@+33612000001@sms".into()], "Train", short);
    smtp_send(
        &g,
        &[
            "+33612000002@sms".into(),
            "\"Anna@+447911123456\"@sms".into(),
        ],
        "RDV",
        long_gsm,
    );
    smtp_send(
        &g,
        &["0612000004@sms.example.com".into()],
        "Встреча",
        long_ucs2,
    );

    // The hostile body: Ctrl-Z would end AT+CMGS, ESC would cancel it, CR would end a
    // command line, and the last line is a command that deletes every stored message. Sent
    // base64-encoded, as a mail client must send such bytes.
    let hostile = "stop\u{1a}here\u{1b}[0m\rCR\r\nAT+CMGD=1,4\r";
    let eml = g.path("hostile.eml");
    std::fs::write(
        &eml,
        format!(
            "From: alice@example.org\r\nTo: +33612000005@sms\r\nSubject: x\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            base64(hostile.as_bytes())
        ),
    )
    .unwrap();
    let out = common::run(Command::new("swaks").args([
        "--server",
        &format!("127.0.0.1:{}", g.addr.port()),
        "--from",
        "alice@example.org",
        // Not "+33...@sms": swaks would take the leading "+" for an option.
        "--to",
        "Hostile@+33612000005@sms",
        "--data",
        &format!("@{}", eml.display()),
    ]));
    assert!(
        out.status.success(),
        "swaks: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The simulated network reports every SMS delivered (TP-ST 0x00) half a second after it
    // took it: each recipient ends `delivered`, on the strength of its parts' reports.
    wait_until("every recipient delivered", Duration::from_secs(60), || {
        g.queue().iter().all(|e| e["state"] == "delivered")
    });
    let received = reassemble(&sim.records());
    let mut checked = 0;
    for req in requests(&g) {
        for r in &req.recipients {
            assert_eq!(r.state, "delivered", "{}: {:?}", r.number, r.events);
            assert_delivered_by_reports(r);
            let got = received
                .get(&r.number)
                .unwrap_or_else(|| panic!("nothing reached {}", r.number));
            assert_eq!(
                got.len(),
                1,
                "{}: one message, sent once: {got:?}",
                r.number
            );
            let m = &got[0];
            // The text the handset shows is the text the queue holds for this mail...
            assert_eq!(m.text, req.text, "{}", r.number);
            assert_eq!(m.parts, r.parts.len(), "{}", r.number);
            assert_eq!(m.dcs, if req.encoding == "ucs2" { 8 } else { 0 });
            // ...all of it from one SIM, so the handset can join the parts.
            assert!(
                m.imsis.iter().all(|i| *i == m.imsis[0]),
                "{}: parts from several SIMs: {:?}",
                r.number,
                m.imsis
            );
            for p in &r.parts {
                assert!(p.message_ref.is_some(), "{}: a TP-MR per part", r.number);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
    // And the texts are the mails' texts, not something else consistently wrong.
    let text_of = |n: &str| received[n][0].text.clone();
    assert!(text_of("+33612000001").contains(short));
    assert!(text_of("+33612000002").contains("Rendez-vous devant la gare à 18h30"));
    assert!(text_of("+33612000002").ends_with("[sic]~"));
    assert_eq!(text_of("+33612000002"), text_of("+447911123456"));
    assert!(text_of("+33612000004").contains("ноутбук и отчёт за квартал 📊"));
    assert!(received["+33612000002"][0].parts >= 2);
    assert!(received["+33612000004"][0].parts >= 2);
    assert_eq!(received["+33612000004"][0].dcs, 8, "UCS-2");
    assert_eq!(received["+33612000002"][0].dcs, 0, "GSM 7-bit");

    let hostile_sms = text_of("+33612000005");
    assert!(
        hostile_sms.contains("AT+CMGD=1,4"),
        "the command went out as text: {hostile_sms:?}"
    );
    for n in 0..2 {
        let c = sim.counters(n);
        assert_eq!(c["deletes"], 0, "modem{n} executed AT+CMGD: {c}");
        assert_eq!(c["cancelled"], 0, "modem{n} saw ESC end a send: {c}");
        assert_eq!(c["rejected"], 0, "modem{n} saw a broken PDU: {c}");
    }
    eprintln!("hostile body arrived as {hostile_sms:?}");

    // The drivers' counters agree with the modems' (the status is written every second).
    let records = sim.records().len() as u64;
    wait_until("modem counters", Duration::from_secs(5), || {
        modems_json(&g)
            .iter()
            .map(|m| m["sent"].as_u64().unwrap())
            .sum::<u64>()
            == records
    });
    let modems = modems_json(&g);
    assert_eq!(modems.len(), 2);
    for m in &modems {
        assert_eq!(m["state"]["state"], "ready", "{m}");
        assert!(m["imsi"].as_str().unwrap().starts_with("00101"), "{m}");
        assert_eq!(m["imei"].as_str().unwrap().len(), 15, "{m}");
        assert_eq!(m["registration"], 1, "{m}");
        assert!(m["rssi"].is_u64(), "{m}");
    }
    let text = String::from_utf8(g.cli(&["modems"]).stdout).unwrap();
    assert!(
        text.contains("modem0: ready") && text.contains("IMSI 00101"),
        "{text}"
    );
}

/// RFC 4648 base64, for a test mail's body.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn four_modems_unplugged_hung_and_failing_lose_and_duplicate_nothing() {
    let sim = SimProcess::start(4, &["--latency-ms", "2", "--cmgs-latency-ms", "120"]);
    // modem3 sends to +3361... first (the multi-part mails below): its failed attempts must
    // still move to the other modems.
    let modems = sim.modem_config(6).replace(
        "name = \"modem3\"\n",
        "name = \"modem3\"\nprefixes = [\"+3361\"]\n",
    );
    let g = Gateway::start("max_connections = 100", &format!("{SENDING}\n{modems}"));
    // modem3 answers +CMS ERROR: 38 (network out of order, temporary) to 30% of its sends.
    sim.control(json!({"cmd": "error_rate", "modem": "modem3", "code": 38, "rate": 0.3}));

    // 300 single-part mails from 10 concurrent clients, and 20 two- or three-part mails to
    // 5 recipients each.
    let acked = g.path("acked.txt");
    let load = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/smtp_client.py"
        ))
        .args(["load", "127.0.0.1", &g.addr.port().to_string(), "10", "30"])
        .arg(&acked)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let long = "Bonjour, la réunion de demain est déplacée en salle 4 au deuxième étage. \
                Merci de prévenir vos équipes et d'apporter les comptes rendus de la semaine \
                passée; nous finirons à midi au plus tard. Message";
    for i in 0..20 {
        let rcpts: Vec<String> = (0..5)
            .map(|k| format!("+3361{:03}{:04}@sms", i, k))
            .collect();
        smtp_send(&g, &rcpts, &format!("multi {i}"), &format!("{long} {i}"));
    }
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Faults, once sending is under way: modem2 hangs for good, modem1 is pulled out and
    // plugged back 5 s later.
    wait_until("sending under way", Duration::from_secs(60), || {
        sim.records().len() >= 60
    });
    sim.control(json!({"cmd": "hang", "modem": "modem2"}));
    sim.control(json!({"cmd": "unplug", "modem": "modem1"}));
    let unplugged_at = now_ms();
    std::thread::sleep(Duration::from_secs(5));
    sim.control(json!({"cmd": "replug", "modem": "modem1"}));
    let replugged_at = now_ms();

    wait_until("every recipient final", Duration::from_secs(240), || {
        unfinished(&g) == 0
    });

    let records = sim.records();
    // Each part, by destination and position, as often as the modems accepted it.
    let mut seen: HashMap<(String, u8), usize> = HashMap::new();
    for r in &records {
        let seq = r.concat.as_ref().map_or(1, |c| c.seq);
        *seen.entry((r.dest.clone(), seq)).or_default() += 1;
    }
    let mut outcome: BTreeMap<&str, usize> = BTreeMap::new();
    let mut parts_total = 0;
    let mut accounted = 0;
    // Parts that took more than one attempt, and those of them sent by another modem than
    // the one that failed them first.
    let mut retried = 0;
    let mut moved = 0;
    let reqs = requests(&g);
    for req in &reqs {
        for r in &req.recipients {
            *outcome.entry(r.state.as_str()).or_default() += 1;
            for p in &r.parts {
                parts_total += 1;
                if p.attempts > 1 {
                    retried += 1;
                    let first_failure = r.events.iter().find(|e| {
                        e.part == Some(p.seq)
                            && e.state == "accepted"
                            && e.reason.contains("failed on")
                    });
                    if let Some(e) = first_failure
                        && let Some(ch) = &p.channel
                        && !e.reason.contains(&format!("failed on {ch}:"))
                    {
                        moved += 1;
                    }
                }
                let n = seen
                    .get(&(r.number.clone(), p.seq as u8))
                    .copied()
                    .unwrap_or(0);
                accounted += n;
                match p.state.as_str() {
                    // Delivered: sent, then reported delivered by the simulated network.
                    "sent" | "delivered" => {
                        assert_eq!(n, 1, "{} part {}: sent {n} times", r.number, p.seq)
                    }
                    "uncertain" => assert!(n <= 1, "{} part {}: {n} times", r.number, p.seq),
                    "failed" => assert_eq!(n, 0, "{} part {} failed yet left", r.number, p.seq),
                    other => panic!("{} part {} left {other}", r.number, p.seq),
                }
            }
            if r.state != "sent" {
                assert!(
                    r.events
                        .iter()
                        .any(|e| e.state == r.state && e.reason.len() > 20),
                    "{} {}: no reason given: {:?}",
                    r.number,
                    r.state,
                    r.events
                );
            }
            // Parts of a message sent from several SIMs cannot be joined by the handset.
            let channels: Vec<&str> = r
                .parts
                .iter()
                .filter(|p| p.state == "sent" || p.state == "delivered")
                .filter_map(|p| p.channel.as_deref())
                .collect();
            if (r.state == "sent" || r.state == "delivered")
                && channels.iter().any(|c| *c != channels[0])
            {
                eprintln!("{}: parts over {channels:?}", r.number);
            }
        }
    }
    // Nothing left the modems that the queue does not know of.
    assert_eq!(accounted, records.len(), "records without a queued part");
    let recipients: usize = outcome.values().sum();
    let acked_mails = std::fs::read_to_string(&acked).unwrap().lines().count();
    assert_eq!(acked_mails, 300);
    assert_eq!(recipients, 300 + 20 * 5, "{outcome:?}");
    // The hang and the unplug can each catch one send after its PDU was written.
    assert!(
        outcome.get("uncertain").copied().unwrap_or(0) <= 2,
        "{outcome:?}"
    );
    for req in &reqs {
        for r in req.recipients.iter().filter(|r| r.state == "delivered") {
            assert_delivered_by_reports(r);
        }
    }
    let taken =
        outcome.get("sent").copied().unwrap_or(0) + outcome.get("delivered").copied().unwrap_or(0);
    assert!(taken >= recipients - 5, "{outcome:?}");

    // The replugged modem went back to work; the hung one was rested.
    let by_modem = |name: &str, after: u64| {
        records
            .iter()
            .filter(|r| r.modem == name && r.time_ms > after)
            .count()
    };
    assert!(
        by_modem("modem1", replugged_at) > 0,
        "modem1 never sent again"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.modem == "modem1"
                && r.time_ms > unplugged_at + 100
                && r.time_ms < replugged_at)
            .count(),
        0
    );
    // Affinity: most of the +3361 parts went through modem3, which prefers them.
    let affine = records.iter().filter(|r| r.dest.starts_with("+3361"));
    let (on_modem3, elsewhere): (Vec<_>, Vec<_>) = affine.partition(|r| r.modem == "modem3");
    assert!(
        on_modem3.len() > elsewhere.len(),
        "{} +3361 parts on modem3, {} elsewhere",
        on_modem3.len(),
        elsewhere.len()
    );
    let per_modem: Vec<(String, usize)> = (0..4)
        .map(|n| {
            let name = format!("modem{n}");
            let c = records.iter().filter(|r| r.modem == name).count();
            (name, c)
        })
        .collect();
    let injected = sim.counters(3)["injected_errors"].as_u64().unwrap();
    eprintln!(
        "{} recipients, {parts_total} parts, {} SMS recorded; outcomes {outcome:?}; per modem {per_modem:?}; \
         modem3 injected {injected} errors; {retried} parts retried, {moved} of them on another modem; \
         modem1 sent {} after its replug; +3361 parts: {} on modem3, {} elsewhere",
        recipients,
        records.len(),
        by_modem("modem1", replugged_at),
        on_modem3.len(),
        elsewhere.len()
    );

    // What `mail2sms modems` says: modem1 back, modem2 rested (a silent modem takes a few
    // rounds of timeouts to be declared so), modem3's failures counted.
    let modem = |name: &str| {
        modems_json(&g)
            .into_iter()
            .find(|m| m["name"] == name)
            .unwrap()
    };
    wait_until("modem2 quarantined", Duration::from_secs(60), || {
        modem("modem2")["quarantined"].as_u64().unwrap() >= 1
    });
    let m1 = modem("modem1");
    assert_eq!(m1["state"]["state"], "ready", "{m1}");
    assert!(m1["reopened"].as_u64().unwrap() >= 1, "{m1}");
    wait_until("modem3's counters", Duration::from_secs(5), || {
        modem("modem3")["failed"].as_u64().unwrap() == injected
    });
    assert!(injected > 0);
    let text = String::from_utf8(g.cli(&["modems"]).stdout).unwrap();
    assert!(text.contains("modem1: ready"), "{text}");
    eprintln!("mail2sms modems:\n{text}");
}

#[test]
fn sigkill_while_sending_leaves_parts_uncertain_and_never_sends_them_again() {
    // Slow answers, so the gateway can be killed while parts are `sending`.
    let sim = SimProcess::start(2, &["--latency-ms", "2", "--cmgs-latency-ms", "4000"]);
    let mut g = Gateway::start("", &format!("{SENDING}\n{}", sim.modem_config(10)));
    for k in 0..6 {
        smtp_send(
            &g,
            &[format!("+3362000{k:04}@sms")],
            "kill",
            &format!("message {k}"),
        );
    }
    // Both modems have a message in hand: written, accepted by the modem, not yet answered.
    wait_until("two parts sending", Duration::from_secs(30), || {
        g.queue().iter().filter(|e| e["state"] == "sending").count() == 2
            && sim.records().len() == 2
    });
    g.kill();
    let in_flight: Vec<String> = sim.records().iter().map(|r| r.dest.clone()).collect();
    sim.control(json!({"cmd": "cmgs_latency", "ms": 30}));
    g.spawn();

    wait_until("every recipient final", Duration::from_secs(60), || {
        unfinished(&g) == 0
    });
    // Give a wrongful resend every chance to happen, and the reports time to come.
    std::thread::sleep(Duration::from_secs(3));
    wait_until(
        "the reports of the parts sent after the restart",
        Duration::from_secs(30),
        || {
            g.queue()
                .iter()
                .filter(|e| e["state"] == "delivered")
                .count()
                == 4
        },
    );
    let records = sim.records();
    for req in requests(&g) {
        for r in &req.recipients {
            let n = records.iter().filter(|s| s.dest == r.number).count();
            assert_eq!(n, 1, "{} recorded {n} times", r.number);
            if in_flight.contains(&r.number) {
                assert_eq!(r.state, "uncertain", "{}: {:?}", r.number, r.events);
                let last = r.events.last().unwrap();
                assert!(
                    last.reason.contains("gateway stopped")
                        && last.reason.contains("not sent again"),
                    "{}",
                    last.reason
                );
                assert_eq!(r.parts[0].attempts, 1);
            } else {
                // Sent by the restarted gateway, which hears the network's report.
                assert_eq!(r.state, "delivered", "{}: {:?}", r.number, r.events);
                assert_delivered_by_reports(r);
            }
        }
    }
    assert_eq!(records.len(), 6);
    let uncertain = String::from_utf8(g.cli(&["queue", "--state", "uncertain"]).stdout).unwrap();
    for n in &in_flight {
        assert!(uncertain.contains(n.as_str()), "{uncertain}");
    }
    assert!(g.log().contains("they are now `uncertain`"), "{}", g.log());
    // The restarted gateway met modems still owing the answers to the killed one's sends,
    // and still knows each by its own identity.
    for m in modems_json(&g) {
        let n = m["name"].as_str().unwrap().trim_start_matches("modem");
        assert_eq!(m["imsi"], format!("00101{:0>10}", n), "{m}");
        assert_eq!(m["state"]["state"], "ready", "{m}");
    }
}

#[test]
fn sigterm_while_sending_waits_for_the_answer() {
    let sim = SimProcess::start(1, &["--latency-ms", "2", "--cmgs-latency-ms", "2000"]);
    let mut g = Gateway::start("", &format!("{SENDING}\n{}", sim.modem_config(6)));
    smtp_send(
        &g,
        &["+33630000001@sms".into()],
        "term",
        "stopped gracefully",
    );
    smtp_send(
        &g,
        &["+33630000002@sms".into()],
        "term",
        "sent after the restart",
    );
    wait_until("a part sending", Duration::from_secs(30), || {
        sim.records().len() == 1
    });
    let status = g.stop();
    assert!(status.success(), "{status}: {}", g.log());
    // The part in hand got its answer; the next one was not started.
    let states: Vec<String> = g
        .queue()
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["sent", "accepted"], "{}", g.log());
    let modems = modems_json(&g);
    assert_eq!(modems[0]["state"]["state"], "stopped", "{}", modems[0]);
    g.spawn();
    // The second is sent by the restarted gateway and reported delivered; the first's report
    // may have come while no gateway listened, so it may stay `sent`.
    wait_until(
        "both sent, the second delivered",
        Duration::from_secs(30),
        || {
            let q = g.queue();
            unfinished(&g) == 0
                && q.iter()
                    .any(|e| e["number"] == "+33630000002" && e["state"] == "delivered")
        },
    );
    assert_eq!(sim.records().len(), 2);
    for req in requests(&g) {
        for r in &req.recipients {
            match r.state.as_str() {
                "delivered" => assert_delivered_by_reports(r),
                "sent" => assert_eq!(r.number, "+33630000001", "{:?}", r.events),
                other => panic!("{}: {other}: {:?}", r.number, r.events),
            }
        }
    }
}

/// A SIM that is barred or has no credit (`+CMS ERROR: 8`, `0xC1`: causes about this modem's
/// subscription, not about the message) does not fail the messages it was given: they go out
/// through the other modem.
#[test]
fn a_barred_sim_does_not_fail_the_messages_it_refuses() {
    let sim = SimProcess::start(2, &["--latency-ms", "2", "--cmgs-latency-ms", "20"]);
    let g = Gateway::start("", &format!("{SENDING}\n{}", sim.modem_config(6)));
    sim.control(json!({"cmd": "fail_next", "modem": "modem0", "code": 8, "count": 2}));
    sim.control(json!({"cmd": "fail_next", "modem": "modem1", "code": 193, "count": 1}));
    for k in 1..=6 {
        smtp_send(&g, &[format!("+3365000000{k}@sms")], "b", "court");
    }
    wait_until("all sent", Duration::from_secs(60), || unfinished(&g) == 0);
    for req in requests(&g) {
        for r in &req.recipients {
            assert!(
                matches!(r.state.as_str(), "sent" | "delivered"),
                "{}: {}: {:?}",
                r.number,
                r.state,
                r.events
            );
        }
    }
    let mut numbers: Vec<String> = sim.records().iter().map(|r| r.dest.clone()).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 6, "{numbers:?}");
}

#[test]
fn per_sim_rate_limit_spaces_the_sends() {
    let sim = SimProcess::start(2, &["--latency-ms", "2", "--cmgs-latency-ms", "20"]);
    // modem0 may send 60 a minute: one a second. modem1 has no limit and is pulled out, so
    // that modem0 alone sends.
    let modems = sim.modem_config(6).replace(
        "name = \"modem0\"\n",
        "name = \"modem0\"\nmax_per_minute = 60\n",
    );
    sim.control(json!({"cmd": "unplug", "modem": "modem1"}));
    let g = Gateway::start("", &format!("{SENDING}\n{modems}"));
    let long = "Un message en deux parties, pour voir que la limite vaut aussi entre les parties \
                d'un même message: chaque envoi compte pour l'opérateur.";
    smtp_send(&g, &["+33640000001@sms".into()], "a", long);
    for k in 2..5 {
        smtp_send(&g, &[format!("+3364000000{k}@sms")], "b", "court");
    }
    wait_until("all sent", Duration::from_secs(60), || unfinished(&g) == 0);
    let mut times: Vec<u64> = sim.records().iter().map(|r| r.time_ms).collect();
    times.sort();
    assert!(times.len() >= 5, "{times:?}");
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // The gateway spaces the starts of its sends; the modem takes each PDU a prompt's round
    // trip later, which varies by some milliseconds under load.
    assert!(gaps.iter().all(|g| *g >= 900), "gaps {gaps:?} ms");
    let span: u64 = gaps.iter().sum();
    assert!(span >= 1000 * gaps.len() as u64 - 100, "gaps {gaps:?} ms");
    assert!(sim.records().iter().all(|r| r.modem == "modem0"));
}

/// A part that left while the store's disk is full is recorded `sent` once there is room,
/// without a restart: its `sent`, refused, is kept in memory meanwhile, where before it was
/// dropped and the part stayed `sending` (to become `uncertain`, "may have been sent", at the
/// next start). The modem takes 8 s to answer the part, long enough to fill the disk under it.
#[test]
fn a_part_sent_while_the_disk_is_full_is_recorded_sent_once_there_is_room() {
    let sim = SimProcess::start(1, &["--latency-ms", "2"]);
    let g = Gateway::start_on_tmpfs("", &format!("{SENDING}\n{}", sim.modem_config(20)), "4m");
    wait_until("the modem recorded ready", Duration::from_secs(30), || {
        modems_json(&g)
            .first()
            .is_some_and(|m| m["state"]["state"] == "ready")
    });
    sim.control(json!({"cmd": "cmgs_latency", "ms": 8000, "modem": "modem0"}));
    smtp_send(
        &g,
        &["+33620000000@sms".into()],
        "on the air",
        "Sent while the disk fills.",
    );
    let first = |g: &Gateway| {
        g.queue()
            .into_iter()
            .find(|e| e["number"] == "+33620000000")
            .expect("the first mail is queued")
    };
    wait_until("the part on the air", Duration::from_secs(30), || {
        first(&g)["state"] == "sending"
    });
    let filler = g.fill_store_disk();
    g.use_up_store_room();
    wait_until("its sent refused", Duration::from_secs(30), || {
        g.log()
            .contains("cannot record a send result: the store's disk is full")
    });
    assert_eq!(sim.records().len(), 1, "{:?}", sim.records());
    assert_eq!(first(&g)["state"], "sending", "recorded on a full disk?");

    sim.control(json!({"cmd": "cmgs_latency", "ms": 30, "modem": "modem0"}));
    std::fs::remove_file(&filler).unwrap();
    wait_until("every recipient final", Duration::from_secs(60), || {
        unfinished(&g) == 0
    });
    assert_each_sent_once(&g, &sim);
    assert!(
        g.log()
            .contains("a send result kept while the store's disk was full is recorded"),
        "{}",
        g.log()
    );
}

/// A modem's status the store refuses on a full disk is written as soon as there is room again,
/// not at the next change or heartbeat (10 s later), and a run of refusals is logged once.
#[test]
fn a_modem_status_refused_on_a_full_disk_is_recorded_once_there_is_room() {
    let sim = SimProcess::start(1, &["--latency-ms", "2"]);
    let g = Gateway::start_on_tmpfs("", &sim.modem_config(6), "4m");
    wait_until("the modem recorded ready", Duration::from_secs(30), || {
        modems_json(&g)
            .first()
            .is_some_and(|m| m["state"]["state"] == "ready")
    });
    let filler = g.fill_store_disk();
    g.use_up_store_room();
    sim.control(json!({"cmd": "unplug", "modem": "modem0"}));
    wait_until(
        "the unplugged status refused",
        Duration::from_secs(30),
        || g.log().contains("cannot record modem status"),
    );
    // Refused again each second meanwhile, but said once.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        g.log().matches("cannot record modem status").count(),
        1,
        "{}",
        g.log()
    );
    assert_eq!(modems_json(&g)[0]["state"]["state"], "ready");

    // The modem is out: nothing is sent from here on. The refused
    // snapshot's heartbeat would come 10 s after the refusal, after this wait.
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        "the unplugged status recorded",
        Duration::from_secs(5),
        || modems_json(&g)[0]["state"]["state"] == "unplugged",
    );
    assert!(
        g.log().contains("modem status recorded again"),
        "{}",
        g.log()
    );
}

/// Invariant 3 on a full disk: a part that cannot be marked `sending` on disk is not handed to
/// the modem; once space is freed it is marked and sent, once, with the mails queued before the
/// disk filled. The store is on a 4 MiB tmpfs of the gateway's own
/// ([`Gateway::start_on_tmpfs`]). The modem is unplugged while mail is queued and the disk is
/// filled (and the store's room used up: mail until `452`), then plugged back, so that its
/// first sends meet the full disk.
#[test]
fn a_part_that_cannot_be_marked_sending_on_a_full_disk_waits_for_room_and_is_sent_once() {
    let sim = SimProcess::start(1, &["--latency-ms", "2", "--cmgs-latency-ms", "30"]);
    let g = Gateway::start_on_tmpfs("", &format!("{SENDING}\n{}", sim.modem_config(6)), "4m");
    smtp_send(
        &g,
        &["+33620000000@sms".into()],
        "first",
        "Sent before the disk fills.",
    );
    wait_until(
        "the first SMS sent and recorded",
        Duration::from_secs(30),
        || sim.records().len() == 1 && unfinished(&g) == 0,
    );
    sim.control(json!({"cmd": "unplug", "modem": "modem0"}));
    wait_until("the modem seen unplugged", Duration::from_secs(30), || {
        g.log().contains("state=Unplugged")
    });
    for k in 1..=3 {
        smtp_send(
            &g,
            &[format!("+3362000000{k}@sms")],
            "queued",
            &format!("Queued while the modem is out, {k}."),
        );
    }
    let filler = g.fill_store_disk();
    let late = g.use_up_store_room();
    sim.control(json!({"cmd": "replug", "modem": "modem0"}));
    wait_until(
        "a part that could not be marked",
        Duration::from_secs(30),
        || {
            g.log()
                .contains("cannot mark a part sending: the store's disk is full; not sending it")
        },
    );
    // The worker waits between attempts instead of taking the same message again at once.
    std::thread::sleep(Duration::from_secs(2));
    let attempts = g.log().matches("cannot mark a part sending").count();
    assert!(
        attempts <= 4,
        "{attempts} attempts in about 2 s:\n{}",
        g.log()
    );
    assert_eq!(sim.records().len(), 1, "sent without a mark on disk");

    std::fs::remove_file(&filler).unwrap();
    let queue = g.queue();
    wait_until("every recipient final", Duration::from_secs(60), || {
        unfinished(&g) == 0
    });
    let records = sim.records();
    eprintln!("{late} mails queued after the disk filled, before the first 452");
    assert_eq!(records.len(), queue.len(), "{records:?}");
    assert_each_sent_once(&g, &sim);
}

/// Every recipient in the queue was sent once by the simulated modems and ended `sent` or
/// `delivered`.
fn assert_each_sent_once(g: &Gateway, sim: &SimProcess) {
    let records = sim.records();
    for e in g.queue() {
        let number = e["number"].as_str().unwrap();
        let n = records.iter().filter(|r| r.dest == number).count();
        assert_eq!(n, 1, "{number} sent {n} times");
        assert!(
            matches!(e["state"].as_str(), Some("sent" | "delivered")),
            "{e}\n{}\n{}",
            String::from_utf8_lossy(&g.cli(&["status", e["request"].as_str().unwrap()]).stdout),
            g.log()
        );
    }
}
