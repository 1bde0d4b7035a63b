//! Who may send, end to end: sender rules, DMARC against a test DNS server (dnsmasq) with mail
//! signed by dkimpy, PINs, destination countries, quotas and the SMS-pumping guard. Every
//! refusal carries its reason and leaves nothing in the queue.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Gateway, python, run};
use serde_json::Value;

fn connect(g: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; 512];
    let n = s.read(&mut greeting).unwrap();
    assert!(greeting[..n].starts_with(b"220 "));
    s
}

fn exchange(s: &mut TcpStream, input: &[u8], replies: usize) -> String {
    s.write_all(input).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .count()
        < replies
    {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed; got so far:\n{got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

/// Sends one mail over a raw socket and returns the reply to the end of DATA (or the first
/// refusal before it).
fn send_mail(g: &Gateway, mail_from: &str, rcpt: &str, message: &[u8]) -> String {
    let mut s = connect(g);
    let head = format!("EHLO mx.example.com\r\nMAIL FROM:<{mail_from}>\r\n");
    let r = exchange(&mut s, head.as_bytes(), 2);
    let last = r.lines().last().unwrap_or_default().to_string();
    if !last.starts_with("250") {
        return last;
    }
    let r = exchange(&mut s, format!("RCPT TO:<{rcpt}>\r\n").as_bytes(), 1);
    if !r.starts_with("250") {
        return r.trim_end().to_string();
    }
    exchange(&mut s, b"DATA\r\n", 1);
    let mut data = message.to_vec();
    data.extend_from_slice(b"\r\n.\r\n");
    exchange(&mut s, &data, 1).trim_end().to_string()
}

fn mail(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: +33612345678@sms\r\nSubject: {subject}\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{}@example.com>\r\n\r\n{body}\r\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
    .into_bytes()
}

#[test]
fn trusted_relay_only_for_allowed_senders_and_pins() {
    let g = Gateway::start(
        "",
        "[senders]\nallowed_addresses = [\"boss@example.com\"]\nallowed_domains = [\"sales.example.com\"]\n\
         [[senders.pins]]\naddress = \"boss@example.com\"\npin = \"4321\"\n",
    );
    // Not allow-listed.
    let r = send_mail(
        &g,
        "eve@example.com",
        "+33612345678@sms",
        &mail("eve@example.com", "hi", "x"),
    );
    assert!(
        r.starts_with(
            "550 5.7.1 Not allowed to send SMS: eve@example.com is not one of the senders allowed"
        ),
        "{r}"
    );
    assert!(r.contains("(rule: allowed-senders)"), "{r}");
    // Allowed, but the PIN is missing, then wrong.
    let r = send_mail(
        &g,
        "boss@example.com",
        "+33612345678@sms",
        &mail("boss@example.com", "Meeting", "10:00"),
    );
    assert!(
        r.starts_with("550 5.7.1") && r.contains("(rule: pin)"),
        "{r}"
    );
    let r = send_mail(
        &g,
        "boss@example.com",
        "+33612345678@sms",
        &mail("boss@example.com", "PIN 1111 Meeting", "10:00"),
    );
    assert!(r.contains("the PIN in the subject is wrong"), "{r}");
    assert!(g.queue().is_empty());
    // The right PIN: queued, and the PIN is not in the SMS.
    let r = send_mail(
        &g,
        "boss@example.com",
        "+33612345678@sms",
        &mail("boss@example.com", "PIN 4321 Meeting", "10:00"),
    );
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // A domain on the list needs no PIN.
    let r = send_mail(
        &g,
        "anne@sales.example.com",
        "+33612345679@sms",
        &mail("anne@sales.example.com", "Offer", "ok"),
    );
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let q = g.queue();
    let texts: Vec<&str> = q.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["Meeting: 10:00", "Offer: ok"]);
}

#[test]
fn destination_countries_and_prefixes_are_refused_at_rcpt() {
    let g = Gateway::start(
        "",
        "[recipients]\nblocked_prefixes = [\"+44909\"]\nblocked_countries = [\"DE\"]\n",
    );
    let mut s = connect(&g);
    let r = exchange(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<+4915112345678@sms>\r\nRCPT TO:<+447911123456@sms>\r\nRCPT TO:<+33899123456@sms>\r\n",
        5,
    );
    let finals: Vec<&str> = r
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .collect();
    assert!(finals[2].starts_with("550 5.7.1 <+4915112345678@sms>: sending to +4915112345678 is not allowed: SMS to country DE are blocked"), "{r}");
    assert!(finals[3].starts_with("250 "), "{r}");
    // Premium rate is refused by type, by default.
    assert!(
        finals[4].starts_with("550 5.7.1") && finals[4].contains("premium"),
        "{r}"
    );
}

#[test]
fn quotas_are_enforced_exactly_at_the_limit() {
    let g = Gateway::start(
        "",
        "[quotas]\nsender_parts_per_hour = 3\nsender_parts_per_day = 0\ndomain_parts_per_hour = 0\ndomain_parts_per_day = 0\n",
    );
    for i in 0..3 {
        let r = send_mail(
            &g,
            "a@example.com",
            &format!("+3361234567{i}@sms"),
            &mail("a@example.com", "n", "x"),
        );
        assert!(r.starts_with("250 "), "mail {i}: {r}");
    }
    let r = send_mail(
        &g,
        "a@example.com",
        "+33612345679@sms",
        &mail("a@example.com", "n", "x"),
    );
    assert!(
        r.starts_with(
            "451 4.7.1 Quota reached: sender a@example.com has queued 3 SMS parts in the last hour"
        ),
        "{r}"
    );
    // Another sender has its own quota.
    let r = send_mail(
        &g,
        "b@example.com",
        "+33612345679@sms",
        &mail("b@example.com", "n", "x"),
    );
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(g.queue().len(), 4);
}

#[test]
fn a_burst_to_consecutive_numbers_is_held_and_none_is_sent() {
    let g = Gateway::start(
        "",
        "[guard]\nenabled = true\nmax_per_block = 5\nfirst_contact_delay_secs = 20\n\
         [[modem]]\nname = \"sim0\"\n[modem.simulate]\nlatency_ms = 1\ncmgs_latency_ms = 20\nrecord = \"sent.jsonl\"\n",
    );
    let port = g.addr.port().to_string();
    let out = python(
        "smtp_client.py",
        &[
            "burst",
            "127.0.0.1",
            &port,
            "pump@example.com",
            "+33612340000",
            "1000",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(
        accepted, 1000,
        "every mail is accepted: the guard does not tell a fraudster"
    );
    let held = g.cli(&["held", "--json"]);
    let held: Vec<Value> = serde_json::from_slice(&held.stdout).unwrap();
    assert_eq!(held.len(), 1000);
    assert!(
        held[999]["reason"]
            .as_str()
            .unwrap()
            .contains("looks like SMS pumping")
    );
    // Give the modem a chance to send anything it was given.
    std::thread::sleep(Duration::from_secs(2));
    let sent = std::fs::read_to_string(g.path("sent.jsonl")).unwrap_or_default();
    assert_eq!(sent.lines().count(), 0, "sent during a burst:\n{sent}");
    // An admin drops them; they end failed with the reason.
    let out = g.cli(&["held", "drop", "all"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped 1000"));
    let failed = g.cli(&["queue", "--json", "--state", "failed"]);
    let failed: Vec<Value> = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(failed.len(), 1000);
}

/// A test DNS server holding the sender domain's SPF, DKIM and DMARC records.
struct Dns {
    child: Child,
    port: u16,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq(records: &[(&str, &str)]) -> Dns {
    let port = common::free_port();
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--user=root",
        "--pid-file=/dev/null",
    ])
    .arg(format!("--port={port}"));
    for (name, value) in records {
        // No shell: quotes would end up in the record. The values have no commas.
        cmd.arg(format!("--txt-record={name},{value}"));
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (scripts/test installs dnsmasq-base)");
    std::thread::sleep(Duration::from_millis(300));
    Dns { child, port }
}

fn rsa_key(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("dkim.pem");
    let out = run(Command::new("openssl").args(["genrsa", "-out", key.to_str().unwrap(), "1024"]));
    assert!(out.status.success());
    let out = run(Command::new("openssl").args([
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]));
    use base64::Engine;
    let public = base64::engine::general_purpose::STANDARD.encode(&out.stdout);
    (key, public)
}

fn sign(key: &Path, domain: &str, message: &[u8]) -> Vec<u8> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/dkim_sign.py");
    let mut child = Command::new("python3")
        .args([script, key.to_str().unwrap(), "sel", domain])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy failed (scripts/test installs it)"
    );
    out.stdout
}

#[test]
fn mail_from_the_internet_must_pass_dmarc() {
    let keys = tempfile::tempdir().unwrap();
    let (good_key, good_public) = rsa_key(keys.path());
    let evil_dir = tempfile::tempdir().unwrap();
    let (evil_key, evil_public) = rsa_key(evil_dir.path());
    let dkim_record = format!("v=DKIM1; k=rsa; p={good_public}");
    let evil_record = format!("v=DKIM1; k=rsa; p={evil_public}");
    let dns = dnsmasq(&[
        // Only 192.0.2.1 may send for example.com: this test's 127.0.0.1 fails SPF.
        ("example.com", "v=spf1 ip4:192.0.2.1 -all"),
        ("_dmarc.example.com", "v=DMARC1; p=reject"),
        ("sel._domainkey.example.com", &dkim_record),
        ("evil.test", "v=spf1 ip4:127.0.0.1 -all"),
        ("sel._domainkey.evil.test", &evil_record),
    ]);
    let g = Gateway::start(
        "trusted_networks = []",
        &format!(
            "[senders]\naccept_internet_mail = true\nallowed_domains = [\"example.com\"]\ndns_server = \"127.0.0.1:{}\"\n",
            dns.port
        ),
    );
    // Signed by example.com's key: DKIM passes and is aligned with From.
    let signed = sign(
        &good_key,
        "example.com",
        &mail("boss@example.com", "Board", "at 9"),
    );
    let r = send_mail(&g, "bounce@example.com", "+33612345678@sms", &signed);
    assert!(r.starts_with("250 2.0.0"), "{r}\n{}", g.log());

    // Forged From: example.com, signed by evil.test (valid, but not aligned), SPF of the
    // envelope domain passes for evil.test only.
    let forged = sign(
        &evil_key,
        "evil.test",
        &mail("boss@example.com", "Board", "wire money"),
    );
    let r = send_mail(&g, "x@evil.test", "+33612345678@sms", &forged);
    assert!(
        r.starts_with(
            "550 5.7.1 Not allowed to send SMS: boss@example.com could not be verified: DMARC"
        ),
        "{r}"
    );
    assert!(r.contains("(rule: dmarc)"), "{r}");
    // Unsigned and from the wrong address.
    let r = send_mail(
        &g,
        "boss@example.com",
        "+33612345678@sms",
        &mail("boss@example.com", "Board", "x"),
    );
    assert!(r.contains("(rule: dmarc)"), "{r}");
    // Tampered after signing: the body hash no longer matches.
    let mut tampered = sign(
        &good_key,
        "example.com",
        &mail("boss@example.com", "Board", "at 9"),
    );
    let n = tampered.len();
    tampered[n - 3] = b'8';
    let r = send_mail(&g, "bounce@example.com", "+33612345678@sms", &tampered);
    assert!(r.contains("(rule: dmarc)"), "{r}");
    // A domain not on the list is refused before any DNS lookup.
    let r = send_mail(
        &g,
        "x@evil.test",
        "+33612345678@sms",
        &mail("x@evil.test", "hi", "x"),
    );
    assert!(r.contains("(rule: allowed-senders)"), "{r}");
    assert_eq!(g.queue().len(), 1);
}
