//! Table tests for the SMTP session: each case is a dialogue of client input and the replies
//! it must get, run through the sans-IO session with the I/O layer played by the test.

use super::*;
use crate::parse::address::AddressPolicy;

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "gw.example.com".into(),
        max_message_bytes: 2000,
        max_recipients: 3,
        tls_available: true,
        auth_available: true,
        accept_untrusted: false,
        destinations: crate::policy::Destinations {
            allowed_countries: Vec::new(),
            blocked_countries: vec!["DE".into()],
        },
        address_policy: AddressPolicy {
            sms_domains: vec!["sms".into(), "sms.example.com".into()],
            default_country: phonenumber::country::Id::FR,
            accepted_types: AddressPolicy::default_accepted_types(),
            blocked_prefixes: vec!["+33899".into()],
        },
    })
}

/// Plays the I/O layer: TLS always succeeds, `alice`/`secret` is the only user, every
/// delivery is committed. Returns the replies as text and the delivered mails.
struct Harness {
    session: Session,
    delivered: Vec<(Envelope, Vec<u8>)>,
    closed: bool,
    /// Set: this client failed too often lately, and AUTH is refused unchecked for this long.
    locked: Option<Duration>,
}

impl Harness {
    fn new(trusted: bool) -> Harness {
        Harness {
            session: Session::new(config(), "192.0.2.7".parse().unwrap(), trusted),
            delivered: Vec::new(),
            closed: false,
            locked: None,
        }
    }

    fn send(&mut self, input: &[u8]) -> String {
        let mut outputs = self.session.feed(input);
        let mut wire = Vec::new();
        while !outputs.is_empty() {
            let mut next = Vec::new();
            for o in outputs {
                match o {
                    Output::Send(b) => wire.extend_from_slice(&b),
                    Output::Close => self.closed = true,
                    Output::StartTls => self.session.tls_started(),
                    Output::CheckAuth { .. } if self.locked.is_some() => {
                        next.extend(self.session.auth_refused(self.locked.unwrap_or_default()));
                    }
                    Output::CheckAuth { user, password } => {
                        let ok = user == "alice" && password == "secret";
                        next.extend(self.session.auth_result(ok.then_some(user)));
                    }
                    Output::Deliver { envelope, data } => {
                        self.delivered.push((envelope, data));
                        next.extend(self.session.delivered(Reply::new(
                            250,
                            (2, 0, 0),
                            "Queued as test",
                        )));
                    }
                }
            }
            outputs = next;
        }
        String::from_utf8(wire).unwrap()
    }
}

/// Each row: whether the client is trusted, then (input, expected reply codes in order).
#[test]
fn dialogues() {
    type Step = (&'static str, &'static [&'static str]);
    let cases: &[(&str, bool, &[Step])] = &[
        (
            "plain mail with several recipient forms",
            true,
            &[
                ("EHLO client.example\r\n", &["250-gw.example.com"]),
                ("MAIL FROM:<john@example.com>\r\n", &["250 2.1.0"]),
                (
                    "RCPT TO:<Paul@+33477858589@sms>\r\n",
                    &["250 2.1.5 <Paul@+33477858589@sms> OK: SMS to +33477858589 (Paul)"],
                ),
                (
                    "RCPT TO:<\"Anne@+33612345678\"@sms.example.com>\r\n",
                    &["250 2.1.5"],
                ),
                (
                    "RCPT TO:<0612345679@SMS>\r\n",
                    &["250 2.1.5 <0612345679@SMS> OK: SMS to +33612345679"],
                ),
                ("DATA\r\n", &["354 "]),
                (
                    "Subject: hi\r\n\r\nHello\r\n.\r\n",
                    &["250 2.0.0 Queued as test"],
                ),
                ("QUIT\r\n", &["221 2.0.0"]),
            ],
        ),
        (
            "refusals at RCPT carry their specific codes",
            true,
            &[
                ("EHLO c\r\n", &["250-"]),
                ("MAIL FROM:<john@example.com>\r\n", &["250 "]),
                ("RCPT TO:<paul@example.org>\r\n", &["550 5.7.1"]),
                ("RCPT TO:<paul@+3312@sms>\r\n", &["550 5.1.3"]),
                ("RCPT TO:<+33899123456@sms>\r\n", &["550 "]),
                (
                    "RCPT TO:<+4915112345678@sms>\r\n",
                    &[
                        "550 5.7.1 <+4915112345678@sms>: sending to +4915112345678 is not allowed: SMS to country DE are blocked",
                    ],
                ),
                ("DATA\r\n", &["554 5.5.1 No valid recipients"]),
            ],
        ),
        (
            "too many recipients is a temporary 452",
            true,
            &[
                ("EHLO c\r\nMAIL FROM:<a@b.c>\r\n", &["250-", "250 2.1.0"]),
                (
                    "RCPT TO:<+33612345671@sms>\r\nRCPT TO:<+33612345672@sms>\r\nRCPT TO:<+33612345673@sms>\r\nRCPT TO:<+33612345674@sms>\r\n",
                    &["250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3"],
                ),
            ],
        ),
        (
            "pipelined transaction in one write is answered in order",
            true,
            &[
                ("EHLO c\r\n", &["250-"]),
                (
                    "MAIL FROM:<a@b.c>\r\nRCPT TO:<+33612345671@sms>\r\nRCPT TO:<bad@elsewhere.com>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n",
                    &[
                        "250 2.1.0",
                        "250 2.1.5",
                        "550 5.7.1",
                        "354",
                        "250 2.0.0",
                        "250 2.0.0 OK",
                        "221",
                    ],
                ),
            ],
        ),
        (
            "commands out of order",
            true,
            &[
                ("MAIL FROM:<a@b.c>\r\n", &["503 "]),
                ("HELO c\r\n", &["250 gw.example.com"]),
                ("RCPT TO:<+33612345671@sms>\r\n", &["503 "]),
                ("DATA\r\n", &["503 "]),
                (
                    "MAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\n",
                    &["250 ", "503 "],
                ),
                ("BDAT 10 LAST\r\n", &["502 "]),
                ("FOO\r\n", &["500 "]),
                ("RSET\r\nMAIL FROM:<>\r\n", &["250 ", "250 "]),
            ],
        ),
        (
            "SIZE refused at MAIL",
            true,
            &[
                ("EHLO c\r\n", &["250-"]),
                ("MAIL FROM:<a@b.c> SIZE=999999\r\n", &["552 5.3.4"]),
                ("MAIL FROM:<a@b.c> SIZE=100\r\n", &["250 "]),
            ],
        ),
        (
            "untrusted client must authenticate, only over TLS",
            false,
            &[
                ("EHLO c\r\n", &["250-"]),
                ("MAIL FROM:<a@b.c>\r\n", &["530 5.7.0"]),
                ("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", &["538 5.7.11"]),
                ("STARTTLS\r\n", &["220 2.0.0"]),
                ("MAIL FROM:<a@b.c>\r\n", &["503 "]),
                ("EHLO c\r\n", &["250-"]),
                ("AUTH PLAIN AGFsaWNlAHdyb25n\r\n", &["535 5.7.8"]),
                ("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", &["235 2.7.0"]),
                ("MAIL FROM:<a@b.c>\r\n", &["250 "]),
            ],
        ),
        (
            "AUTH LOGIN in three steps, and cancel",
            false,
            &[
                ("EHLO c\r\nSTARTTLS\r\n", &["250-", "220 "]),
                ("EHLO c\r\n", &["250-"]),
                ("AUTH LOGIN\r\n", &["334 VXNlcm5hbWU6"]),
                ("*\r\n", &["501 5.0.0"]),
                ("AUTH LOGIN\r\n", &["334 VXNlcm5hbWU6"]),
                ("YWxpY2U=\r\n", &["334 UGFzc3dvcmQ6"]),
                ("c2VjcmV0\r\n", &["235 "]),
            ],
        ),
    ];
    for (name, trusted, steps) in cases {
        let mut h = Harness::new(*trusted);
        let greeting = String::from_utf8(h.session.greeting()).unwrap();
        assert!(
            greeting.starts_with("220 gw.example.com"),
            "{name}: {greeting}"
        );
        for (input, expected) in *steps {
            let got = h.send(input.as_bytes());
            check_replies(name, input, &got, expected);
        }
    }
}

/// Each expectation matches one reply, in order, by the start of the reply's first line.
fn check_replies(name: &str, input: &str, got: &str, expected: &[&str]) {
    let mut replies: Vec<&str> = Vec::new();
    let mut first: Option<&str> = None;
    for line in got.lines() {
        first.get_or_insert(line);
        if line.as_bytes().get(3) != Some(&b'-') {
            replies.extend(first.take());
        }
    }
    let ok = replies.len() == expected.len()
        && replies.iter().zip(expected).all(|(r, e)| r.starts_with(e));
    assert!(
        ok,
        "{name}: after {input:?} expected replies starting {expected:?}, got:\n{got}"
    );
}

#[test]
fn oversize_mail_is_refused_with_552_and_nothing_delivered() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<+33612345671@sms>\r\nDATA\r\n");
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 3000));
    body.extend_from_slice(b"\r\n.\r\n");
    let got = h.send(&body);
    assert!(got.starts_with("552 5.3.4"), "{got}");
    assert!(h.delivered.is_empty());
    // The session goes on.
    assert!(h.send(b"MAIL FROM:<a@b.c>\r\n").starts_with("250 "));
}

/// SMTP smuggling (CVE-2023-51764): `<LF>.<LF>` and `<LF>.<CR><LF>` are not the end of data,
/// so a second mail hidden behind them is part of the first one's text, not a new mail.
#[test]
fn bare_lf_dot_never_ends_data() {
    for ending in ["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n"] {
        let mut h = Harness::new(true);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<+33612345671@sms>\r\nDATA\r\n");
        let smuggled = format!(
            "Subject: one\r\n\r\nfirst{ending}MAIL FROM:<evil@x.y>\r\nRCPT TO:<+33612345672@sms>\r\nDATA\r\nsecond\r\n.\r\n"
        );
        let got = h.send(smuggled.as_bytes());
        assert_eq!(h.delivered.len(), 1, "ending {ending:?}: {got}");
        let data = String::from_utf8_lossy(&h.delivered[0].1);
        assert!(
            data.contains("evil@x.y") && data.contains("second"),
            "ending {ending:?}: {data}"
        );
        assert_eq!(h.delivered[0].0.recipients.len(), 1);
        assert!(got.starts_with("250 2.0.0"), "{got}");
    }
}

/// RFC 5321 §4.1.1.4: the line end of DATA counts as the one before the mail's first line.
#[test]
fn the_first_line_of_data_follows_the_data_command_line_end() {
    let cases: &[(&[u8], &[u8])] = &[
        (b".\r\n", b""),
        (b"..first\r\n.\r\n", b".first\r\n"),
        (
            b"Subject: s\r\n\r\nbody\r\n.\r\n",
            b"Subject: s\r\n\r\nbody\r\n",
        ),
    ];
    for (input, want) in cases {
        let mut h = Harness::new(true);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<+33612345671@sms>\r\nDATA\r\n");
        let got = h.send(input);
        let shown = String::from_utf8_lossy(input);
        assert_eq!(h.delivered.len(), 1, "{shown:?}: {got}");
        assert_eq!(h.delivered[0].1, *want, "{shown:?}");
    }
}

/// smtp-proto ends data at `<CRLF>.<CR><CR><LF>` too, which another server may take as a
/// line of the mail: nothing is delivered, and what follows is never read as commands.
#[test]
fn a_dot_line_with_a_stray_cr_queues_nothing_and_closes() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<+33612345671@sms>\r\nDATA\r\n");
    let got = h.send(
        b"Subject: one\r\n\r\nfirst\r\n.\r\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<+33612345672@sms>\r\nDATA\r\nsecond\r\n.\r\n",
    );
    assert!(h.delivered.is_empty(), "{got}");
    assert!(h.closed, "{got}");
    assert!(got.starts_with("521 5.5.2"), "{got}");
}

/// Refused recipients count as errors only until the client delivers a mail: a relay that
/// passes on, in one session, many mails with a bad number among good ones is not cut off.
#[test]
fn delivering_mail_clears_the_errors_counted() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\n");
    for i in 0..2 * MAX_ERRORS {
        let got = h.send(
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<not-a-number@sms>\r\nRCPT TO:<+33612345671@sms>\r\nDATA\r\nhi\r\n.\r\n",
        );
        assert!(!h.closed, "mail {i}: {got}");
    }
    assert_eq!(h.delivered.len(), 2 * MAX_ERRORS as usize);
    // Without a mail delivered, the limit holds.
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
    for _ in 0..MAX_ERRORS {
        h.send(b"RCPT TO:<not-a-number@sms>\r\n");
    }
    assert!(h.closed);
}

#[test]
fn dot_stuffing_is_removed_and_data_delivered_whole() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.c> RET=HDRS ENVID=abc123\r\n");
    h.send(b"RCPT TO:<Paul@+33477858589@sms> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Paul@+2B33477858589@sms\r\nDATA\r\n");
    // Split at awkward places: inside CRLF, before the dot.
    for chunk in [
        &b"Subject: s\r\n\r\n..leading dot\r"[..],
        b"\n",
        b"line\r\n",
        b".",
        b"\r\n",
    ] {
        h.send(chunk);
    }
    assert_eq!(h.delivered.len(), 1);
    let (env, data) = &h.delivered[0];
    assert_eq!(data, b"Subject: s\r\n\r\n.leading dot\r\nline\r\n");
    assert_eq!(env.mail_from, "a@b.c");
    assert_eq!(env.ret, Some("hdrs"));
    assert_eq!(env.envid.as_deref(), Some("abc123"));
    let r = &env.recipients[0];
    assert_eq!(r.recipient.number, "+33477858589");
    assert_eq!(r.recipient.name.as_deref(), Some("Paul"));
    assert_eq!(r.notify.as_deref(), Some("SUCCESS,FAILURE"));
    // ORCPT is xtext (RFC 3461 §4): `+2B` is the `+`.
    assert_eq!(r.orcpt.as_deref(), Some("Paul@+33477858589@sms"));
}

#[test]
fn ehlo_offers_auth_only_over_tls() {
    let mut h = Harness::new(false);
    let plain = h.send(b"EHLO c\r\n");
    for ext in [
        "PIPELINING",
        "SIZE 2000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "STARTTLS",
    ] {
        assert!(plain.contains(ext), "{ext} missing from {plain}");
    }
    assert!(!plain.contains("AUTH"), "{plain}");
    h.send(b"STARTTLS\r\n");
    let tls = h.send(b"EHLO c\r\n");
    assert!(
        tls.contains("AUTH PLAIN LOGIN") || tls.contains("AUTH LOGIN PLAIN"),
        "{tls}"
    );
    assert!(!tls.contains("STARTTLS"), "{tls}");
}

/// CVE-2011-0411: commands pipelined behind STARTTLS in the clear are dropped.
#[test]
fn plaintext_after_starttls_is_discarded() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\n");
    let got = h.send(b"STARTTLS\r\nMAIL FROM:<injected@x.y>\r\n");
    assert_eq!(got, "220 2.0.0 Ready to start TLS\r\n");
    assert!(h.send(b"MAIL FROM:<a@b.c>\r\n").starts_with("503 "));
}

#[test]
fn overlong_line_and_error_flood() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\n");
    let mut long = vec![b'A'; MAX_LINE + 100];
    long.extend_from_slice(b"\r\n");
    assert!(h.send(&long).starts_with("500 5.5.2"));
    assert!(h.send(b"NOOP\r\n").starts_with("250 "));
    let mut got = String::new();
    for _ in 0..MAX_ERRORS {
        got.push_str(&h.send(b"BOGUS\r\n"));
    }
    assert!(got.contains("421 "), "{got}");
    assert!(h.closed);
}

#[test]
fn three_failed_auths_close_the_session() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nSTARTTLS\r\n");
    h.send(b"EHLO c\r\n");
    let mut last = String::new();
    for _ in 0..3 {
        last = h.send(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n");
    }
    assert!(last.starts_with("421 "), "{last}");
    assert!(h.closed);
}

#[test]
fn a_client_refused_unchecked_is_told_when_to_try_again_and_is_not_authenticated() {
    let mut h = Harness::new(false);
    h.locked = Some(Duration::from_secs(241));
    h.send(b"EHLO c\r\nSTARTTLS\r\n");
    h.send(b"EHLO c\r\n");
    // alice's right password, refused unchecked.
    let r = h.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(
        r,
        "454 4.7.0 Too many failed authentications from your address; try again in 5 minutes\r\n"
    );
    let r = h.send(b"MAIL FROM:<alice@example.com>\r\n");
    assert!(r.starts_with("530 5.7.0"), "{r}");
    // It counts as one of the session's failed attempts.
    h.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert!(!h.closed);
    h.locked = Some(Duration::from_secs(1));
    let r = h.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert!(
        r.starts_with("421 4.7.0") && r.contains("in 1 minute\r\n"),
        "{r}"
    );
    assert!(h.closed);
}

/// Runs a parameter taker (`take_orcpt`, `take_envid`) over a command's parameters: each `ok`
/// row is (parameters, the value taken, the parameters left for smtp-proto); each `refused`
/// one must be an error.
fn check_taken(
    take: fn(&[u8]) -> Taken<'_>,
    command: &str,
    ok: &[(&str, Option<&str>, &str)],
    refused: &[&str],
) {
    for (params, value, left) in ok {
        let line = format!("{command}{params}");
        let (got, rest) = take(line.as_bytes()).expect(params);
        assert_eq!(got.as_deref(), *value, "{params:?}");
        assert_eq!(
            String::from_utf8(rest.into_owned()).unwrap(),
            format!("{command}{left}"),
            "{params:?}"
        );
    }
    for params in refused {
        let line = format!("{command}{params}");
        assert!(take(line.as_bytes()).is_err(), "{params:?}");
    }
}

#[test]
fn an_orcpt_is_taken_from_the_parameters_and_decoded() {
    // (parameters after the address, the ORCPT taken, the parameters left for smtp-proto)
    let ok: &[(&str, Option<&str>, &str)] = &[
        (
            " NOTIFY=SUCCESS ORCPT=utf-8;Andr\\x{E9}@\\x{2B}33612345678@sms\r\n",
            Some("utf-8;André@+33612345678@sms"),
            " NOTIFY=SUCCESS\r\n",
        ),
        (
            " orcpt=UTF-8;Andr\u{e9}@sms NOTIFY=NEVER\r\n",
            Some("utf-8;André@sms"),
            " NOTIFY=NEVER\r\n",
        ),
        (" ORCPT=utf-8;a+2Bb@sms\r\n", Some("utf-8;a+b@sms"), "\r\n"),
        (
            " ORCPT=utf-8;\\x{1F600}@sms\r\n",
            Some("utf-8;\u{1F600}@sms"),
            "\r\n",
        ),
        // rfc822 too, stored without its type as before: smtp-proto decoded `+0D` into a CR
        // and each octet of UTF-8 into a character of its own.
        (" ORCPT=rfc822;a+2Bb@sms\r\n", Some("a+b@sms"), "\r\n"),
        (
            " ORCPT=RFC822;Andr+C3+A9@sms NOTIFY=NEVER\r\n",
            Some("Andr\u{e9}@sms"),
            " NOTIFY=NEVER\r\n",
        ),
        ("\r\n", None, "\r\n"),
        // Other types (RFC 3461 §4.2: an atom, then xtext) are kept with their type.
        (
            " ORCPT=x400;/C+3DFR/ADMD+3D+20/PRMD+3Dacme/S+3DPaul/ NOTIFY=FAILURE\r\n",
            Some("x400;/C=FR/ADMD= /PRMD=acme/S=Paul/"),
            " NOTIFY=FAILURE\r\n",
        ),
        (
            " ORCPT=unknown;Paul+2B33477858589\r\n",
            Some("unknown;Paul+33477858589"),
            "\r\n",
        ),
        (
            " ORCPT=X-Local;a+C3+A9\r\n",
            Some("X-Local;a\u{e9}"),
            "\r\n",
        ),
    ];
    let refused = [
        " ORCPT=utf-8;\r\n",
        " ORCPT=utf-8;a\\x{D800}@sms\r\n",
        " ORCPT=utf-8;a\\x{110000}@sms\r\n",
        " ORCPT=utf-8;a\\x{+41}@sms\r\n",
        " ORCPT=utf-8;a\\x41@sms\r\n",
        " ORCPT=utf-8;a\\x{41@sms\r\n",
        " ORCPT=utf-8;a+4@sms\r\n",
        " ORCPT=utf-8;a+C3+A9@sms\r\n",
        " ORCPT=utf-8;a=b@sms\r\n",
        " ORCPT=utf-8;a\tb@sms\r\n",
        " ORCPT=utf-8;a@sms ORCPT=utf-8;b@sms\r\n",
        " ORCPT=rfc822;a@sms ORCPT=x400;b\r\n",
        " ORCPT=utf-8;a\\x{A}b@sms\r\n",
        " ORCPT=utf-8;a\\x{85}b@sms\r\n",
        " ORCPT=rfc822;a+0Db@sms\r\n",
        " ORCPT=rfc822;a+00b@sms\r\n",
        " ORCPT=rfc822;\r\n",
        " ORCPT=x400\r\n",
        " ORCPT=;a@sms\r\n",
        " ORCPT=x(400);a\r\n",
        " ORCPT=x400;\r\n",
        " ORCPT=x400;a=b\r\n",
        " ORCPT=x400;a+0Db\r\n",
        " ORCPT=x400;a+0\r\n",
        " ORCPT=x400;a+FFb\r\n",
    ];
    check_taken(take_orcpt, "RCPT TO:<x@x>", ok, &refused);
    let long = format!("RCPT TO:<x@x> ORCPT=utf-8;{}@sms\r\n", "a".repeat(500));
    assert!(take_orcpt(long.as_bytes()).is_err());
    let long = format!("RCPT TO:<x@x> ORCPT=x400;{}\r\n", "a".repeat(501));
    assert!(take_orcpt(long.as_bytes()).is_err());
}

#[test]
fn an_orcpt_beyond_rfc822_is_stored_with_its_type_and_a_bad_one_refused() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\n");
    let r = h.send("RCPT TO:<Paul@+33477858589@sms> NOTIFY=FAILURE ORCPT=utf-8;P\\x{E2}ul@\\x{2B}33477858589@sms\r\n".as_bytes());
    assert!(r.starts_with("250 2.1.5"), "{r}");
    let r = h.send(b"RCPT TO:<+33612345678@sms> ORCPT=utf-8;a\\x{D800}@sms\r\n");
    assert!(r.starts_with("501 5.5.4 Invalid ORCPT parameter"), "{r}");
    let r = h.send(b"RCPT TO:<+33612345678@sms> ORCPT=x400;/S+3DMia/C+3DFR/ NOTIFY=NEVER\r\n");
    assert!(r.starts_with("250 2.1.5"), "{r}");
    let r = h.send(b"RCPT TO:<+33612345679@sms> ORCPT=x400;a=b\r\n");
    assert!(r.starts_with("501 5.5.4 Invalid ORCPT parameter"), "{r}");
    h.send(b"DATA\r\nSubject: s\r\n\r\nb\r\n.\r\n");
    let (env, _) = &h.delivered[0];
    assert_eq!(env.recipients.len(), 2);
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("utf-8;P\u{e2}ul@+33477858589@sms")
    );
    assert_eq!(
        env.recipients[1].orcpt.as_deref(),
        Some("x400;/S=Mia/C=FR/")
    );
    assert_eq!(env.recipients[1].notify.as_deref(), Some("NEVER"));
    assert_eq!(env.recipients[0].notify.as_deref(), Some("FAILURE"));
}

#[test]
fn rcpt_address_is_split_from_parameters() {
    let cases = [
        (
            "RCPT TO:<Paul@+33477858589@sms>\r\n",
            Some("Paul@+33477858589@sms"),
        ),
        (
            "rcpt to: <\"a>b\"@sms> NOTIFY=NEVER\r\n",
            Some("\"a>b\"@sms"),
        ),
        ("RCPT TO:<\"q\\\"x\"@sms>\r\n", Some("\"q\\\"x\"@sms")),
        ("RCPT TO:Paul@sms\r\n", None),
        ("RCPT TO:<unterminated\r\n", None),
        ("RCPT FROM:<a@sms>\r\n", None),
    ];
    for (line, want) in cases {
        assert_eq!(
            split_rcpt(line.as_bytes()).map(|(a, _)| a).as_deref(),
            want,
            "{line}"
        );
    }
}

#[test]
fn arbitrary_input_never_panics() {
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words: &[&[u8]] = &[
        b"EHLO x\r\n",
        b"MAIL FROM:<a@b.c>\r\n",
        b"RCPT TO:<+33612345671@sms>\r\n",
        b"DATA\r\n",
        b"\r\n.\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"STARTTLS\r\n",
        b"RSET\r\n",
        b"\n",
        b"\r",
        b".",
        b"\x00\xff",
        b"RCPT TO:<\"",
        b"@@@",
        b"=\r\n",
    ];
    for _ in 0..2000 {
        let mut h = Harness::new(next() % 2 == 0);
        for _ in 0..(next() % 30) {
            let w = words[(next() % words.len() as u64) as usize];
            if h.closed {
                break;
            }
            h.send(w);
        }
    }
}

/// Replies on the wire, from a table: codes of every width, enhanced codes only when asked,
/// continuation lines, and CR or LF in the text (which could forge a reply line) turned into
/// spaces, around characters of every UTF-8 length.
#[test]
fn replies_are_written_as_rfc_5321_lines() {
    let reply = |code, esc, lines: &[&str]| Reply {
        code,
        esc,
        lines: lines.iter().map(|l| l.to_string()).collect(),
    };
    let cases: Vec<(Reply, bool, &str)> = vec![
        (
            reply(250, Some((2, 0, 0)), &["OK"]),
            true,
            "250 2.0.0 OK\r\n",
        ),
        (reply(250, Some((2, 0, 0)), &["OK"]), false, "250 OK\r\n"),
        (
            reply(550, Some((5, 1, 3)), &["bad"]),
            true,
            "550 5.1.3 bad\r\n",
        ),
        (
            reply(421, Some((4, 10, 123)), &["x"]),
            true,
            "421 4.10.123 x\r\n",
        ),
        (reply(0, None, &["zero"]), true, "0 zero\r\n"),
        (reply(65535, None, &[]), false, "65535 \r\n"),
        (reply(354, None, &["go ahead"]), true, "354 go ahead\r\n"),
        (
            reply(250, None, &["gw", "PIPELINING", "SIZE 2000"]),
            true,
            "250-gw\r\n250-PIPELINING\r\n250 SIZE 2000\r\n",
        ),
        (
            reply(250, Some((2, 1, 5)), &["a", "b"]),
            true,
            "250-2.1.5 a\r\n250 2.1.5 b\r\n",
        ),
        (
            reply(550, Some((5, 1, 3)), &["é\r\n250 forged\rñ\n€😀"]),
            true,
            "550 5.1.3 é  250 forged ñ €😀\r\n",
        ),
    ];
    for (r, enhanced, wire) in cases {
        assert_eq!(
            String::from_utf8(r.to_bytes(enhanced)).unwrap(),
            wire,
            "{r:?}"
        );
    }
}

/// A pipelined dialogue of two mails: DSN parameters, a refused recipient among accepted ones,
/// dot-stuffed lines, a bare-LF dot that must not end the data, a lone CR, the null sender.
const TWO_MAILS: &[u8] = b"EHLO client.example\r\n\
MAIL FROM:<john@example.com> SIZE=300 RET=HDRS ENVID=e1\r\n\
RCPT TO:<Paul@+33477858589@sms> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Paul@+2B33477858589@sms\r\n\
RCPT TO:<paul@example.org>\r\n\
RCPT TO:<+33612345678@sms>\r\n\
DATA\r\n\
Subject: one\r\n\r\n..stuffed\r\n.x\r\nbare\n.\nLF\r\na lone\rCR\r\n.\r\n\
NOOP\r\n\
MAIL FROM:<>\r\n\
RCPT TO:<0612345679@sms>\r\n\
DATA\r\n\
Subject: two\r\n\r\nsecond\r\n.\r\n\
RSET\r\n\
QUIT\r\n";

/// The replies on the wire, the mails delivered and whether the session closed, with the
/// client's bytes arriving in these reads.
fn run_in_reads(reads: &[&[u8]]) -> (String, Vec<(Envelope, Vec<u8>)>, bool) {
    let mut h = Harness::new(true);
    let mut wire = String::new();
    for read in reads {
        wire.push_str(&h.send(read));
    }
    (wire, h.delivered, h.closed)
}

/// TCP keeps no line boundaries: however the client's bytes are cut into reads, the session
/// gives the same replies and delivers the same mails. [`TWO_MAILS`] fed whole, byte by byte,
/// and cut in two at every offset.
#[test]
fn replies_and_mail_do_not_depend_on_how_the_input_is_cut() {
    let whole = run_in_reads(&[TWO_MAILS]);
    let (wire, delivered, closed) = &whole;
    assert_eq!(delivered.len(), 2, "{wire}");
    assert_eq!(
        delivered[0].1,
        // RFC 5321 §4.5.2: a line's first period is taken away, `.x` as well as `..`.
        b"Subject: one\r\n\r\n.stuffed\r\nx\r\nbare\n.\nLF\r\na lone\rCR\r\n"
    );
    assert_eq!(delivered[0].0.recipients.len(), 2);
    assert_eq!(delivered[1].0.mail_from, "");
    assert!(wire.contains("550 5.7.1"), "{wire}");
    assert!(
        wire.ends_with("221 2.0.0 gw.example.com closing connection\r\n") && *closed,
        "{wire}"
    );
    let bytes: Vec<&[u8]> = TWO_MAILS.chunks(1).collect();
    assert_eq!(run_in_reads(&bytes), whole, "byte by byte");
    for cut in 1..TWO_MAILS.len() {
        let (a, b) = TWO_MAILS.split_at(cut);
        assert_eq!(run_in_reads(&[a, b]), whole, "cut at {cut}");
    }
}

proptest::proptest! {
    /// The same, cut at up to 12 random places.
    #[test]
    fn replies_and_mail_are_the_same_whatever_the_reads(
        mut cuts in proptest::collection::vec(1..TWO_MAILS.len(), 0..12)
    ) {
        cuts.sort_unstable();
        cuts.dedup();
        let mut reads = Vec::new();
        let mut start = 0;
        for cut in cuts {
            reads.push(&TWO_MAILS[start..cut]);
            start = cut;
        }
        reads.push(&TWO_MAILS[start..]);
        proptest::prop_assert_eq!(run_in_reads(&reads), run_in_reads(&[TWO_MAILS]));
    }
}

#[test]
fn envid_is_taken_from_the_parameters_and_decoded() {
    // (parameters after the address, the ENVID taken, the parameters left for smtp-proto)
    let ok: &[(&str, Option<&str>, &str)] = &[
        (
            " ENVID=QQ314159 RET=HDRS\r\n",
            Some("QQ314159"),
            " RET=HDRS\r\n",
        ),
        (" envid=a+2Bb+3Dc\r\n", Some("a+b=c"), "\r\n"),
        (" ENVID=Andr+C3+A9\r\n", Some("Andr\u{e9}"), "\r\n"),
        (" SIZE=10\r\n", None, " SIZE=10\r\n"),
    ];
    let long = format!(" ENVID={}\r\n", "a".repeat(101));
    let refused = [
        " ENVID=\r\n",
        " ENVID=a+0Db\r\n",
        " ENVID=a+00\r\n",
        " ENVID=a+C2+85\r\n",
        " ENVID=a=b\r\n",
        " ENVID=a+C3\r\n",
        " ENVID=a+4\r\n",
        " ENVID=a ENVID=b\r\n",
        &long,
    ];
    check_taken(take_envid, "MAIL FROM:<a@b.c>", ok, &refused);
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\n");
    let r = h.send(b"MAIL FROM:<a@example.com> ENVID=a+0Db\r\n");
    assert!(
        r.starts_with("501 5.5.4 Invalid ENVID parameter: a control character"),
        "{r}"
    );
    let r = h.send(b"MAIL FROM:<a@example.com> RET=HDRS ENVID=Andr+C3+A9\r\n");
    assert!(r.starts_with("250 2.1.0"), "{r}");
    h.send(b"RCPT TO:<+33612345678@sms>\r\nDATA\r\nSubject: s\r\n\r\nb\r\n.\r\n");
    assert_eq!(h.delivered[0].0.envid.as_deref(), Some("Andr\u{e9}"));
    assert_eq!(h.delivered[0].0.ret, Some("hdrs"));
}

proptest::proptest! {
    /// Whatever follows `ENVID=` (broken xtext, characters of every width, CR) and `ORCPT=`
    /// (any type as well, `\x{…}` cut short), each command is answered with one reply, `250` or
    /// a refusal, and what was taken holds no control character: both are written back into
    /// status replies' headers. One mail tries the ENVID, another the ORCPT.
    #[test]
    fn any_dsn_value_gets_one_reply_and_no_control_character_is_stored(
        envid in r"([ -~é€😀\r]|\+[0-9A-F]{2}){0,30}",
        orcpt in r"(rfc822;|utf-8;|x400;|[a-z]{0,3};)?([ -~é€😀\r]|\+[0-9A-F]{2}|\\x\{[0-9A-F]{1,6}\}){0,20}",
    ) {
        let mut h = Harness::new(true);
        h.send(b"EHLO c\r\n");
        let mut replies = Vec::new();
        for (mail, rcpt) in [
            (format!(" ENVID={envid}"), String::new()),
            (String::new(), format!(" NOTIFY=FAILURE ORCPT={orcpt}")),
        ] {
            replies.push(h.send(format!("MAIL FROM:<a@example.com>{mail}\r\n").as_bytes()));
            replies.push(h.send(format!("RCPT TO:<+33612345678@sms>{rcpt}\r\n").as_bytes()));
            h.send(b"DATA\r\nSubject: s\r\n\r\nb\r\n.\r\nRSET\r\n");
        }
        for r in &replies {
            proptest::prop_assert!(r.starts_with("250 ") || r.starts_with('5'), "{r}");
            proptest::prop_assert_eq!(r.matches("\r\n").count(), 1, "{}", r);
        }
        for (env, _) in &h.delivered {
            let stored = [env.envid.clone(), env.recipients[0].orcpt.clone()];
            proptest::prop_assert!(
                stored.iter().flatten().all(|v| !v.chars().any(char::is_control)),
                "{:?}",
                stored
            );
        }
    }
}
