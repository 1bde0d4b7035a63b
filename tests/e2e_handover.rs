//! The hand-over of forwarded messages with real processes (`peer::handover`): a peer that dies
//! between committing a forwarded message and answering for it never sends it, and the origin
//! sends it once; an ordinary forward is held, confirmed and sent by the peer once; a forward
//! the origin cannot record at first is recorded later and then sent. The simulators' record
//! files are the ground truth.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sim::wait_until;
use common::sites::{Node, counts, hashes, numbers};

/// The UK and French sites, linked both ways, the French one with the fault-injection setting
/// `fault` (none if empty); both started and bound to each other.
fn uk_and_fr(fault: &str) -> (Node, Node) {
    let mut uk = Node::new("uk");
    let mut fr = Node::new("fr");
    let h = hashes(&["uk", "fr"]);
    uk.configure(&[&uk, &fr], &h);
    fr.configure(&[&uk, &fr], &h);
    if !fault.is_empty() {
        fr.env = vec![("MAIL2SMS_FAULT_INJECTION".into(), fault.into())];
    }
    fr.start();
    uk.start();
    wait_until("uk binds to fr", Duration::from_secs(20), || {
        uk.binds_to("fr") >= 1
    });
    wait_until("fr binds to uk", Duration::from_secs(20), || {
        fr.binds_to("uk") >= 1
    });
    (uk, fr)
}

/// Case 3 of the hand-over table. The French site commits the UK's message and kills itself
/// (SIGKILL, by the fault-injection setting) before its `submit_sm_resp` leaves. The UK site
/// takes the message back and sends it through its own modem; the French site, restarted,
/// holds its copy, asks, is told "not yours" and drops it. Then an ordinary forward goes
/// through the French site: held, confirmed, sent there. Each number gets one SMS.
#[test]
fn a_peer_killed_between_its_commit_and_its_response_never_sends_the_message() {
    let (uk, mut fr) = uk_and_fr("kill-after-peer-commit");

    let first = numbers("336", 0, 1);
    uk.mail(&first, "forwarded, then the peer dies");
    wait_until(
        "the French site kills itself after its commit",
        Duration::from_secs(20),
        || fr.exited(),
    );
    assert!(
        fr.log().contains("fault injection: killing this process"),
        "{}",
        fr.log()
    );
    wait_until(
        "the UK site sends the message taken back",
        Duration::from_secs(20),
        || uk.sent_to(&first) == 1,
    );
    assert!(
        uk.log()
            .contains("unacknowledged forwarded messages taken back"),
        "{}",
        uk.log()
    );
    // The French site committed its copy: it is in its queue, not sent.
    let number = first[0].clone();
    let fr_copy = |fr: &Node| {
        fr.queue()
            .into_iter()
            .find(|e| e["number"] == number.as_str())
    };
    let copy = fr_copy(&fr).unwrap_or_else(|| panic!("no copy at fr: {}", fr.log()));
    assert_eq!(copy["source"], "peer", "{copy}");
    // Held for the UK's word, and `queue` says so.
    assert_eq!(copy["held_for"], "uk", "{copy}");

    // Restarted without the fault: it holds the copy, asks the UK, and drops it.
    fr.env.clear();
    fr.start();
    wait_until(
        "the French site drops the copy it was told is not its own",
        Duration::from_secs(20),
        || fr_copy(&fr).is_some_and(|e| e["state"] == "failed"),
    );
    let id = copy["request"].as_str().unwrap_or_default().to_string();
    let status = fr.status(&id);
    assert!(status.contains("held: site uk forwarded it"), "{status}");
    assert!(
        status.contains("dropped: site uk took the message back"),
        "{status}"
    );
    // At the UK, the record says why it went out here.
    let uk_entry = uk
        .queue()
        .into_iter()
        .find(|e| e["number"] == first[0].as_str())
        .unwrap();
    let uk_status = uk.status(uk_entry["request"].as_str().unwrap_or_default());
    assert!(uk_status.contains("taken back from site fr"), "{uk_status}");

    // An ordinary forward: held at France until the UK confirms, then sent there.
    wait_until("uk binds to fr again", Duration::from_secs(20), || {
        uk.binds_to("fr") >= 2
    });
    let second = numbers("336", 100, 3);
    uk.mail(&second, "an ordinary forward");
    wait_until(
        "the French modem sends the confirmed messages",
        Duration::from_secs(20),
        || fr.sent_to(&second) == second.len(),
    );
    // A moment for any stray second copy, then count.
    std::thread::sleep(Duration::from_secs(3));
    let c = counts(&[&uk, &fr]);
    for n in first.iter().chain(&second) {
        assert_eq!(
            c.get(n.trim_start_matches('+')).copied().unwrap_or(0),
            1,
            "{n}: {c:?}\nUK log:\n{}\nFR log:\n{}",
            uk.log(),
            fr.log()
        );
    }
    assert_eq!(fr.sent_to(&first), 0);
    assert_eq!(uk.sent_to(&second), 0);
    // The ordinary path never needed a question.
    assert!(
        !fr.log()
            .lines()
            .skip_while(|l| !l.contains("dropped"))
            .any(|l| l.contains("asking the origin site")),
        "{}",
        fr.log()
    );
}

/// Case 7 of the hand-over table. The French site stores the UK's message and answers; the UK
/// records it as forwarded and confirms; the French site dies (SIGKILL, by the fault-injection
/// setting) when the confirmation arrives, before recording it. The UK does not take the
/// message back: it is France's. France, restarted, holds it, asks, is told "yours" and sends
/// it. One SMS, at the French modem.
#[test]
fn a_confirmation_lost_with_the_peer_is_asked_for_again() {
    let (uk, mut fr) = uk_and_fr("kill-before-release");
    let n = numbers("336", 500, 1);
    uk.mail(&n, "confirmed, then the peer dies");
    wait_until(
        "the French site dies as the confirmation arrives",
        Duration::from_secs(20),
        || fr.exited(),
    );
    // The UK recorded it as France's: `sent` through the peer, never taken back.
    let entry = recorded_as_sent(&uk, &n[0]);
    fr.env.clear();
    fr.start();
    wait_until(
        "the French modem sends it after asking",
        Duration::from_secs(20),
        || fr.sent_to(&n) == 1,
    );
    assert!(fr.log().contains("asking the origin site"), "{}", fr.log());
    sent_once_by_the_peer(&uk, &fr, &n);
    let uk_status = uk.status(entry["request"].as_str().unwrap_or_default());
    assert!(!uk_status.contains("taken back"), "{uk_status}");
}

/// `origin`'s queue entry for `number`, which says `sent` (through the peer).
fn recorded_as_sent(origin: &Node, number: &str) -> serde_json::Value {
    let entry = origin
        .queue()
        .into_iter()
        .find(|e| e["number"] == number)
        .unwrap();
    assert_eq!(entry["state"], "sent", "{entry}\n{}", origin.log());
    entry
}

/// A moment after `peer` sent `n`'s one number an SMS: it got that one only, none from `origin`.
fn sent_once_by_the_peer(origin: &Node, peer: &Node, n: &[String]) {
    std::thread::sleep(Duration::from_secs(2));
    let c = counts(&[origin, peer]);
    assert_eq!(c.get(n[0].trim_start_matches('+')), Some(&1), "{c:?}");
    assert_eq!(origin.sent_to(n), 0, "{}", origin.log());
}

/// Runs `sql` on `node`'s store from another process (Python's sqlite3), as an admin would.
fn store_script(node: &Node, sql: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             c.executescript(sys.argv[2])\n\
             c.close()",
        ])
        .arg(node.path("queue.db"))
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The UK site forwards a message to France, which stores it and answers, but the UK's store
/// refuses the record of the forward for a while (a trigger stands in for a full disk). The UK
/// tries again until it is written; France, asking meanwhile, is told to wait, and sends the
/// message once the record is in and the UK confirms it. Regression: a failed record was only
/// logged, and the message stayed held at both sites until the UK restarted.
#[test]
fn a_forward_the_origin_cannot_record_yet_is_sent_once_it_is_recorded() {
    let (uk, fr) = uk_and_fr("");
    store_script(
        &uk,
        "CREATE TRIGGER refuse_forwards BEFORE INSERT ON forwards
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    );
    let n = numbers("336", 600, 1);
    uk.mail(&n, "recorded late");
    wait_until(
        "the UK site fails to record the forward",
        Duration::from_secs(20),
        || {
            uk.log()
                .contains("cannot record a forwarded message; trying again")
        },
    );
    // France holds it while its origin has no record, however often it asks.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fr.sent_to(&n), 0, "{}", fr.log());
    store_script(&uk, "DROP TRIGGER refuse_forwards;");
    wait_until(
        "the French modem sends it once the UK recorded it",
        Duration::from_secs(30),
        || fr.sent_to(&n) == 1,
    );
    sent_once_by_the_peer(&uk, &fr, &n);
    recorded_as_sent(&uk, &n[0]);
}
