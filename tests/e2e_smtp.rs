//! End to end: the real binary, real SMTP clients (swaks, Python's smtplib, a raw socket), and
//! the queue read back through `mail2sms queue --json`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{Gateway, python, run};
use serde_json::Value;

fn swaks(g: &Gateway, args: &[&str]) -> (bool, String) {
    // `--opt=value`: swaks would read a value starting with `+` as an option of its own.
    let mut joined = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match it.clone().next() {
            Some(v) if a.starts_with("--") && !v.starts_with("--") => {
                joined.push(format!("{a}={v}"));
                it.next();
            }
            _ => joined.push(a.to_string()),
        }
    }
    let out = run(Command::new("swaks")
        .args([
            "--server",
            &g.addr.to_string(),
            "--helo",
            "client.example",
            "--from",
            "john@example.com",
        ])
        .args(&joined));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// swaks as alice: STARTTLS, then AUTH `mechanism` with `password`, then `rest`.
fn swaks_as_alice(g: &Gateway, mechanism: &str, password: &str, rest: &[&str]) -> (bool, String) {
    let mut args = vec![
        "--tls",
        "--auth",
        mechanism,
        "--auth-user",
        "alice",
        "--auth-password",
        password,
    ];
    args.extend_from_slice(rest);
    swaks(g, &args)
}

fn entry<'a>(q: &'a [Value], number: &str) -> &'a Value {
    q.iter()
        .find(|e| e["number"] == number)
        .unwrap_or_else(|| panic!("{number} not queued: {q:#?}"))
}

#[test]
fn every_address_form_is_queued_with_its_number_and_name() {
    let g = Gateway::start("", "");
    // (address as the user types it, E.164, name)
    let forms = [
        ("Paul@+33477858589@sms", "+33477858589", Some("Paul")),
        (
            "\"Anne@+33612345678\"@sms.example.com",
            "+33612345678",
            Some("Anne"),
        ),
        (
            "Marc%+33612345679%sms@sms.example.com",
            "+33612345679",
            Some("Marc"),
        ),
        ("+33612345670@sms.example.com", "+33612345670", None),
        ("0033612345671@sms", "+33612345671", None),
        ("0612345672@SMS", "+33612345672", None),
        ("+33.6.12.34.56.73@sms", "+33612345673", None),
        ("06-12-34-56-74@sms", "+33612345674", None),
        ("+447911123456@sms", "+447911123456", None),
    ];
    for (addr, _, _) in forms {
        if addr.starts_with('+') {
            // swaks (Getopt::Long) reads an argument starting with `+` as an option: these go
            // through smtplib instead.
            let port = g.addr.port().to_string();
            let out = python(
                "smtp_client.py",
                &[
                    "send",
                    "127.0.0.1",
                    &port,
                    "john@example.com",
                    addr,
                    "Meeting",
                    "Room 4 at 10:00",
                ],
            );
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(r["data"][0], 250, "smtplib to {addr}: {r}");
            continue;
        }
        let (ok, out) = swaks(
            &g,
            &[
                "--to",
                addr,
                "--header",
                "Subject: Meeting",
                "--body",
                "Room 4 at 10:00",
            ],
        );
        assert!(ok, "swaks to {addr} failed:\n{out}");
        assert!(out.contains("<-  250 2.0.0 Queued as"), "{addr}:\n{out}");
    }
    let q = g.queue();
    assert_eq!(q.len(), forms.len(), "{q:#?}");
    for (addr, number, name) in forms {
        let e = entry(&q, number);
        assert_eq!(e["address"], addr);
        assert_eq!(e["name"].as_str(), name, "{addr}");
        assert_eq!(e["state"], "accepted");
        assert_eq!(e["text"], "Meeting: Room 4 at 10:00");
        assert_eq!(e["encoding"], "gsm7");
        assert_eq!(e["parts"], 1);
    }
}

#[test]
fn several_recipients_and_refusals_with_their_codes() {
    let g = Gateway::start("", "");
    let out = python(
        "smtp_client.py",
        &[
            "send",
            "127.0.0.1",
            &g.addr.port().to_string(),
            "john@example.com",
            "Paul@+33477858589@sms,+33612345678@sms,someone@example.org,Bad@+33123@sms,+33899123456@sms",
            "Dinner",
            "See you at 8",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["error"], Value::Null, "{r}");
    let refused = &r["refused"];
    // Not an SMS domain: no relaying.
    assert_eq!(refused["someone@example.org"][0], 550);
    assert!(
        refused["someone@example.org"][1]
            .as_str()
            .unwrap()
            .starts_with("5.7.1"),
        "{r}"
    );
    // An invalid number says what is wrong with it.
    assert_eq!(refused["Bad@+33123@sms"][0], 550);
    assert!(
        refused["Bad@+33123@sms"][1]
            .as_str()
            .unwrap()
            .starts_with("5.1.3"),
        "{r}"
    );
    // Premium rate is refused by default.
    assert_eq!(refused["+33899123456@sms"][0], 550, "{r}");
    assert_eq!(r["data"][0], 250, "{r}");

    let q = g.queue();
    assert_eq!(q.len(), 2, "{q:#?}");
    let paul = entry(&q, "+33477858589");
    let other = entry(&q, "+33612345678");
    assert_eq!(paul["request"], other["request"], "one mail is one request");
    assert_eq!(paul["text"], "Dinner: See you at 8");
}

#[test]
fn too_many_recipients_get_452() {
    let g = Gateway::start("", "");
    let rcpts: Vec<String> = (0..7).map(|i| format!("+3361234567{i}@sms")).collect();
    let out = python(
        "smtp_client.py",
        &[
            "send",
            "127.0.0.1",
            &g.addr.port().to_string(),
            "a@example.com",
            &rcpts.join(","),
            "s",
            "b",
        ],
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    for extra in &rcpts[5..] {
        assert_eq!(r["refused"][extra][0], 452, "{r}");
        assert!(
            r["refused"][extra][1]
                .as_str()
                .unwrap()
                .starts_with("4.5.3"),
            "{r}"
        );
    }
    assert_eq!(g.queue().len(), 5);
}

#[test]
fn oversize_mail_is_refused_at_mail_and_after_data() {
    let g = Gateway::start("", "");
    // Declared size over the limit: refused at MAIL FROM.
    let mut s = connect(&g);
    let r = exchange(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@example.com> SIZE=200000\r\n",
        2,
    );
    assert!(r.contains("\r\n552 5.3.4"), "{r}");
    // Undeclared: read to the end, then refused.
    let big = g.path("big.txt");
    std::fs::write(&big, "x".repeat(150_000)).unwrap();
    let (ok, out) = swaks(
        &g,
        &["--to", "0612345678@sms", "--body", big.to_str().unwrap()],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(g.queue().is_empty());
}

fn connect(g: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 512];
    let n = s.read(&mut greeting).unwrap();
    assert!(greeting[..n].starts_with(b"220 "));
    s
}

/// Writes `input` in one go and reads until `replies` final reply lines have arrived.
fn exchange(s: &mut TcpStream, input: &str, replies: usize) -> String {
    s.write_all(input.as_bytes()).unwrap();
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

#[test]
fn pipelined_session_in_one_write() {
    let g = Gateway::start("", "");
    let mut s = connect(&g);
    let ehlo = exchange(&mut s, "EHLO client.example\r\n", 1);
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    // RFC 2920: the whole transaction and the next one in a single write.
    let input = "MAIL FROM:<pipe@example.com>\r\n\
                 RCPT TO:<Paul@+33477858589@sms>\r\n\
                 RCPT TO:<nobody@example.net>\r\n\
                 RCPT TO:<+33612345678@sms>\r\n\
                 DATA\r\n\
                 Subject: pipelined\r\n\r\nfirst\r\n.\r\n\
                 MAIL FROM:<pipe@example.com>\r\n\
                 RCPT TO:<+447911123456@sms>\r\n\
                 DATA\r\n\
                 Subject: again\r\n\r\nsecond\r\n.\r\n\
                 QUIT\r\n";
    let r = exchange(&mut s, input, 11);
    let codes: Vec<&str> = r.lines().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        [
            "250", "250", "550", "250", "354", "250", "250", "250", "354", "250", "221"
        ],
        "{r}"
    );
    let q = g.queue();
    assert_eq!(q.len(), 3);
    assert_eq!(entry(&q, "+447911123456")["text"], "again: second");
}

#[test]
fn starttls_then_auth_is_required_from_untrusted_clients() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = common::self_signed_cert(certs.path());
    let hash = common::hash_password("s3cret pass");
    let smtp = format!(
        "trusted_networks = []\n[smtp.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n[[smtp.users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n",
        cert.display(),
        key.display()
    );
    let g = Gateway::start(&smtp, "");

    // No AUTH: refused, and nothing is queued.
    let (ok, out) = swaks(&g, &["--to", "Anne@+33612345678@sms", "--body", "hi"]);
    assert!(!ok && out.contains("530 5.7.0"), "{out}");
    // AUTH without TLS is not offered and refused.
    let (ok, out) = swaks(
        &g,
        &[
            "--to",
            "Anne@+33612345678@sms",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "s3cret pass",
        ],
    );
    assert!(!ok, "{out}");
    // Wrong password over TLS.
    let (ok, out) = swaks_as_alice(&g, "PLAIN", "wrong", &["--to", "Anne@+33612345678@sms"]);
    assert!(!ok && out.contains("535 5.7.8"), "{out}");
    // swaks: STARTTLS then AUTH LOGIN.
    let (ok, out) = swaks_as_alice(
        &g,
        "LOGIN",
        "s3cret pass",
        &["--to", "Paul@+33477858589@sms", "--body", "over TLS"],
    );
    assert!(ok, "{out}");
    // smtplib: STARTTLS then AUTH PLAIN.
    let out = python(
        "smtp_client.py",
        &[
            "send",
            "127.0.0.1",
            &g.addr.port().to_string(),
            "alice@example.com",
            "+33612345678@sms",
            "s",
            "b",
            "--starttls",
            "--user",
            "alice",
            "--password",
            "s3cret pass",
        ],
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["data"][0], 250, "{r}");
    let q = g.queue();
    assert_eq!(q.len(), 2, "{q:#?}");
    let st = g.cli(&["status", q[0]["request"].as_str().unwrap(), "--json"]);
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["auth_user"], "alice");
}

/// A client address that failed AUTH `auth_failures_per_client` times is refused unchecked,
/// right password included, on every new connection, until its first failure is
/// `auth_lockout_secs` old; then the right password works again.
#[test]
fn a_client_that_keeps_failing_auth_is_locked_out_for_a_while() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = common::self_signed_cert(certs.path());
    let hash = common::hash_password("s3cret pass");
    let lockout = Duration::from_secs(6);
    let smtp = format!(
        "trusted_networks = []\nauth_failures_per_client = 3\nauth_lockout_secs = {}\n\
         [smtp.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n\
         [[smtp.users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n",
        lockout.as_secs(),
        cert.display(),
        key.display()
    );
    let g = Gateway::start(&smtp, "");
    let checked = g.cli(&["check-config", g.config.to_str().unwrap()]);
    let checked = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.contains(
            "SMTP AUTH: a client address is refused unchecked after 3 failures within 6 s"
        ),
        "{checked}"
    );
    let attempt = |password: &str| {
        swaks_as_alice(
            &g,
            "PLAIN",
            password,
            &[
                "--to",
                "Paul@+33477858589@sms",
                "--body",
                "after the lockout",
            ],
        )
    };
    let first_failure = std::time::Instant::now();
    // Three guesses, one connection each: the session's own limit never comes into play.
    for guess in ["password", "123456", "alice"] {
        let (ok, out) = attempt(guess);
        assert!(!ok && out.contains("535 5.7.8"), "{out}");
    }
    // The right password now gets a temporary refusal, unchecked.
    let (ok, out) = attempt("s3cret pass");
    assert!(
        !ok && out.contains("454 4.7.0 Too many failed authentications from your address"),
        "{out}"
    );
    assert!(
        first_failure.elapsed() < lockout,
        "the attempts took too long to test anything"
    );
    assert!(g.queue().is_empty());
    // Refused attempts do not extend the lockout: once it is over, alice gets in.
    let deadline = first_failure + lockout + Duration::from_secs(30);
    let accepted_after = loop {
        let (ok, out) = attempt("s3cret pass");
        if ok {
            break first_failure.elapsed();
        }
        assert!(out.contains("454 4.7.0"), "{out}");
        assert!(std::time::Instant::now() < deadline, "still refused: {out}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        accepted_after >= lockout,
        "accepted {accepted_after:?} after the first failure"
    );
    let q = g.queue();
    assert_eq!(q.len(), 1, "{q:#?}");
    let text = q[0]["text"].as_str().unwrap_or_default();
    assert!(text.ends_with(": after the lockout"), "{text}");
    // The log says which client reached its limit.
    assert!(
        g.log().contains("reached its limit of failures"),
        "{}",
        g.log()
    );
}

#[test]
fn dsn_parameters_are_stored_with_the_request() {
    let g = Gateway::start("", "");
    let mut s = connect(&g);
    let r = exchange(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159\r\n\
         RCPT TO:<Paul@+33477858589@sms> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Paul@+2B33477858589@sms\r\n\
         RCPT TO:<+33612345678@sms> ORCPT=utf-8;Andr\\x{E9}@\\x{2B}33612345678@sms\r\n\
         RCPT TO:<+33612345679@sms> ORCPT=x400;/C+3DFR/S+3DMia/\r\nDATA\r\n",
        6,
    );
    assert!(
        r.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{r}"
    );
    let r = exchange(
        &mut s,
        "Message-ID: <dsn1@example.com>\r\nSubject: dsn\r\n\r\nbody\r\n.\r\n",
        1,
    );
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let q = g.queue();
    let e = entry(&q, "+33477858589");
    assert_eq!(e["dsn_notify"], "SUCCESS,DELAY");
    assert_eq!(e["dsn_orcpt"], "Paul@+33477858589@sms");
    // RFC 6533: an ORCPT of type utf-8, decoded and kept with its type.
    let e2 = entry(&q, "+33612345678");
    assert_eq!(e2["dsn_orcpt"], "utf-8;André@+33612345678@sms");
    // Any other type (RFC 3461 §4.2), xtext decoded, kept with its type.
    let e3 = entry(&q, "+33612345679");
    assert_eq!(e3["dsn_orcpt"], "x400;/C=FR/S=Mia/");
    assert_eq!(e["message_id"], "dsn1@example.com");
    let st = g.cli(&["status", e["request"].as_str().unwrap(), "--json"]);
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["dsn_envid"], "QQ314159");
    assert_eq!(st["dsn_ret"], "hdrs");
    // The human view shows the history.
    let human = g.cli(&["status", &e["request"].as_str().unwrap()[..12]]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("recipient +33477858589 (Paul): accepted"),
        "{human}"
    );
    assert!(
        human.contains("accepted over SMTP from 127.0.0.1"),
        "{human}"
    );
}

#[test]
fn same_mail_sent_twice_is_queued_once() {
    let g = Gateway::start("", "");
    for _ in 0..2 {
        let (ok, out) = swaks(
            &g,
            &[
                "--to",
                "Anne@+33612345678@sms",
                "--header",
                "Message-Id: <twice@example.com>",
                "--body",
                "once",
            ],
        );
        assert!(ok, "{out}");
    }
    assert_eq!(g.queue().len(), 1);
}

#[test]
fn shutdown_answers_421_to_idle_sessions() {
    let mut g = Gateway::start("", "");
    let mut s = connect(&g);
    exchange(&mut s, "EHLO c\r\n", 1);
    let status = g.stop();
    assert!(status.success(), "{status}: {}", g.log());
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(rest.starts_with("421 4.3.2"), "{rest:?}");
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[site]\nname = \"x\"\ndefault_country = \"France\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n").unwrap();
    let out = run(Command::new(common::BIN).args(["check-config", bad.to_str().unwrap()]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:3:19: site.default_country: ", bad.display())),
        "{err}"
    );
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    let out = run(Command::new(common::BIN).args(["check-config", demo]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn connections_over_the_limit_get_421() {
    let g = Gateway::start("max_connections = 2", "");
    // The harness's readiness probe may still hold a slot until the listener sees it closed.
    let _a = connect_when_free(&g);
    let _b = connect_when_free(&g);
    let mut c = TcpStream::connect(g.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    assert!(reply.starts_with("421 Too many connections"), "{reply:?}");
    // A slot freed is a slot for the next client, once the listener has seen the close.
    drop(_a);
    let _d = connect_when_free(&g);
}

/// A session, once the listener has a free slot: a client turned away with `421` tries again
/// until a deadline (on a busy machine the listener takes a moment to see a close). The
/// greeting may take long on a loaded machine: a CI run once waited more than 10 s for it.
fn connect_when_free(g: &Gateway) -> TcpStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = TcpStream::connect(g.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut greeting = [0u8; 512];
        let read = s.read(&mut greeting);
        let n = *read.as_ref().unwrap_or(&0);
        if greeting[..n].starts_with(b"220 ") {
            return s;
        }
        assert!(
            greeting[..n].starts_with(b"421 ") && std::time::Instant::now() < deadline,
            "{:?} ({read:?}); the gateway's log:\n{}",
            String::from_utf8_lossy(&greeting[..n]),
            g.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn idle_sessions_are_closed_with_421() {
    let g = Gateway::start("idle_timeout_secs = 1", "");
    let mut s = connect(&g);
    exchange(&mut s, "EHLO c\r\n", 1);
    let start = std::time::Instant::now();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(rest.starts_with("421 4.4.2"), "{rest:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A client that sends commands and never reads the replies fills the socket's buffers, and the
/// gateway's writes wait: within the idle timeout it lets the connection go, so that its slot
/// is free for others (a read timeout alone would keep it for ever).
#[test]
fn a_client_that_never_reads_loses_its_slot() {
    let g = Gateway::start("max_connections = 1\nidle_timeout_secs = 1", "");
    let mut s = connect_when_free(&g);
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = "NOOP\r\n".repeat(10_000);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match s.write_all(chunk.as_bytes()) {
                Ok(()) => {}
                // Closed by the gateway: reset, or a broken pipe.
                Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return true;
                }
                // Blocked: the gateway stopped reading, and never let go.
                Err(_) => return false,
            }
        }
        false
    });
    // Turned away with 421 while the slot is held, then served.
    let _second = connect_when_free(&g);
    assert!(
        writer.join().unwrap(),
        "the connection that does not read was not closed"
    );
}

#[test]
fn help_noop_rset_vrfy_answer() {
    let g = Gateway::start("", "");
    let mut s = connect(&g);
    let r = exchange(
        &mut s,
        "EHLO c\r\nHELP\r\nNOOP\r\nRSET\r\nVRFY paul\r\nQUIT\r\n",
        6,
    );
    let finals: Vec<&str> = r
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(finals, ["250", "214", "250", "250", "252", "221"], "{r}");
    assert!(
        r.contains("214-2.0.0 mail2sms: mail to NAME@+NUMBER@<sms domain> becomes an SMS"),
        "{r}"
    );
}

#[test]
fn a_log_written_to_a_file_has_no_escape_codes() {
    // The harness sends the gateway's stderr to a file, as a service manager or `2>>` does:
    // what tools read there must be plain text, not terminal colours.
    let mut g = Gateway::start("", "");
    let (ok, out) = swaks(&g, &["--to", "Paul@+33477858589@sms", "--body", "hi"]);
    assert!(ok, "{out}");
    assert!(g.stop().success());
    let log = g.log();
    assert!(!log.contains('\u{1b}'), "{log:?}");
    // Fields read as `key=value`, as grep and log shippers expect.
    let ready = format!(
        " INFO mail2sms::intake::smtp: SMTP listener ready local={}",
        g.addr
    );
    assert!(log.contains(&ready), "{log}");
}

#[test]
fn a_log_that_cannot_be_written_does_not_stop_the_gateway() {
    // A full disk under the log: every write to /dev/full fails with ENOSPC. The gateway goes on
    // taking mail (its queue may well be on another disk) and stops cleanly when told.
    let mut g = Gateway::start("", "");
    g.kill();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    g.spawn_logging_to(full);
    let (ok, out) = swaks(&g, &["--to", "Paul@+33477858589@sms", "--body", "hi"]);
    assert!(ok, "{out}");
    assert_eq!(g.queue().len(), 1);
    let status = g.stop();
    assert!(status.success(), "{status}");
}

/// One mail over one connection; the reply to its final dot.
fn send_one(g: &Gateway, n: usize, body: &str) -> String {
    let mut s = connect(g);
    let r = exchange(
        &mut s,
        "EHLO c\r\nMAIL FROM:<john@example.com>\r\nRCPT TO:<+33612345678@sms>\r\nDATA\r\n",
        4,
    );
    assert!(
        r.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{r}"
    );
    let r = exchange(
        &mut s,
        &format!("Message-ID: <full-{n}@example.com>\r\nSubject: n{n}\r\n\r\n{body}\r\n.\r\n"),
        1,
    );
    let _ = s.write_all(b"QUIT\r\n");
    r
}

/// A full disk under the store: the mail that does not fit gets `452 4.3.1` (the client keeps
/// it and tries again later: nothing told `250` is lost), the gateway goes on, and once space is
/// freed the next mail is queued, without a restart. The store is on a 4 MiB tmpfs of the
/// gateway's own ([`Gateway::start_on_tmpfs`]), filled up by a file the test then deletes.
#[test]
fn a_full_disk_gets_452_and_mail_is_queued_again_once_space_is_freed() {
    let mut g = Gateway::start_on_tmpfs("", "", "4m");
    let body = "All hands meeting moved to 3pm in room 4. ".repeat(20);
    assert!(send_one(&g, 0, &body).starts_with("250 2.0.0"));
    let filler = g.fill_store_disk();
    // A mail may still be queued in room the WAL already has; the first that needs more gets 452.
    let mut queued = 1;
    let refused = (1..300)
        .map(|n| (n, send_one(&g, n, &body)))
        .find(|(_, r)| !r.starts_with("250 "))
        .map(|(n, r)| {
            queued = n;
            r
        })
        .expect("a full disk refuses mail");
    assert!(
        refused.starts_with(
            "452 4.3.1 Insufficient system storage: the gateway's disk is full; try again later"
        ),
        "{refused}"
    );
    std::fs::remove_file(&filler).unwrap();
    let r = send_one(&g, queued, &body);
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // Every mail told 250 is in the queue, once; the refused one only as sent again.
    let q = g.queue();
    assert_eq!(q.len(), queued + 1, "{q:?}");
    assert!(
        g.log()
            .contains("could not queue a mail: the store's disk is full"),
        "{}",
        g.log()
    );
    let status = g.stop();
    assert!(status.success(), "{status}");
}
