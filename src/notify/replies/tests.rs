use super::*;

fn cfg() -> RepliesConfig {
    RepliesConfig {
        templates: Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        language: "en".into(),
        relayed: true,
        delay: None,
        per_sender_per_hour: 0,
        domains: vec!["always.example".into()],
        domain_notify: [Notify::Failure].into_iter().collect(),
    }
}

const PLAIN: &[u8] =
    b"From: a@b.example\r\nSubject: hi\r\n\r\nbody Auto-Submitted: auto-replied\r\n";

#[test]
fn decisions() {
    // (sender, notify, headers, action, state) -> Ok | Err(fragment of the reason)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a [u8],
        &'a str,
        &'a str,
        Result<(), &'a str>,
    );
    let cases: &[Case] = &[
        (
            "a@b.example",
            Some("SUCCESS,FAILURE"),
            PLAIN,
            "delivered",
            "delivered",
            Ok(()),
        ),
        (
            "a@b.example",
            Some("SUCCESS"),
            PLAIN,
            "relayed",
            "sent",
            Ok(()),
        ),
        (
            "a@b.example",
            Some("success"),
            PLAIN,
            "relayed",
            "delivered",
            Err("was delivered before"),
        ),
        (
            "a@b.example",
            Some("FAILURE"),
            PLAIN,
            "delivered",
            "delivered",
            Err("did not ask"),
        ),
        (
            "a@b.example",
            Some("FAILURE"),
            PLAIN,
            "failed",
            "failed",
            Ok(()),
        ),
        (
            "a@b.example",
            Some("DELAY"),
            PLAIN,
            "delayed",
            "sent",
            Ok(()),
        ),
        (
            "a@b.example",
            Some("DELAY"),
            PLAIN,
            "delayed",
            "delivered",
            Err("before this reply"),
        ),
        (
            "a@b.example",
            Some("NEVER"),
            PLAIN,
            "failed",
            "failed",
            Err("NOTIFY=NEVER"),
        ),
        (
            "",
            Some("SUCCESS"),
            PLAIN,
            "delivered",
            "delivered",
            Err("null sender"),
        ),
        (
            "<>",
            Some("SUCCESS"),
            PLAIN,
            "delivered",
            "delivered",
            Err("null sender"),
        ),
        // The body is not the header: only the header block counts.
        (
            "a@b.example",
            None,
            PLAIN,
            "delivered",
            "delivered",
            Err("did not ask"),
        ),
        (
            "a@b.example",
            Some("SUCCESS"),
            b"Auto-Submitted: auto-replied\r\n\r\n",
            "delivered",
            "delivered",
            Err("automatic"),
        ),
        (
            "a@b.example",
            Some("SUCCESS"),
            b"Auto-Submitted: No\r\n\r\n",
            "delivered",
            "delivered",
            Ok(()),
        ),
        (
            "a@b.example",
            Some("FAILURE"),
            b"X: y\r\nauto-submitted:\r\n auto-generated\r\n\r\n",
            "failed",
            "failed",
            Err("auto-generated"),
        ),
        (
            "a@b.example",
            Some("FAILURE"),
            b"Precedence: bulk\r\n\r\n",
            "failed",
            "failed",
            Err("Precedence"),
        ),
        (
            "a@b.example",
            None,
            b"Disposition-Notification-To: a@b.example\r\n\r\n",
            "delivered",
            "delivered",
            Ok(()),
        ),
        (
            "a@b.example",
            None,
            b"Return-Receipt-To: a@b.example\r\n\r\n",
            "failed",
            "failed",
            Ok(()),
        ),
        (
            "a@b.example",
            None,
            b"Return-Receipt-To: a@b.example\r\n\r\n",
            "delayed",
            "sent",
            Err("did not ask"),
        ),
        ("x@ALWAYS.example", None, PLAIN, "failed", "failed", Ok(())),
        (
            "x@always.example",
            None,
            PLAIN,
            "delivered",
            "delivered",
            Err("did not ask"),
        ),
        // An explicit NOTIFY is the sender's choice, over the domain's default.
        (
            "x@always.example",
            Some("SUCCESS"),
            PLAIN,
            "failed",
            "failed",
            Err("did not ask"),
        ),
        (
            "a@b.example",
            Some("SUCCESS"),
            PLAIN,
            "expanded",
            "sent",
            Err("not an event"),
        ),
        // A message that may or may not have left is over: told as a failure, never as late.
        (
            "a@b.example",
            Some("FAILURE"),
            PLAIN,
            "failed",
            "uncertain",
            Ok(()),
        ),
        (
            "a@b.example",
            Some("DELAY"),
            PLAIN,
            "delayed",
            "uncertain",
            Err("was uncertain"),
        ),
    ];
    for (sender, notify, headers, action, state, want) in cases {
        let f = Facts {
            sender,
            notify: *notify,
            headers,
            action,
            state,
        };
        match (decide(&f, &cfg()), want) {
            (Ok(()), Ok(())) => {}
            (Err(why), Err(frag)) if why.contains(frag) => {}
            (got, want) => {
                panic!("{sender} {notify:?} {action} {state}: got {got:?}, want {want:?}")
            }
        }
    }
    let mut off = cfg();
    off.relayed = false;
    let f = Facts {
        sender: "a@b.example",
        notify: Some("SUCCESS"),
        headers: PLAIN,
        action: "relayed",
        state: "sent",
    };
    assert!(decide(&f, &off).unwrap_err().contains("off"));
}

#[test]
fn headers_are_unfolded_and_end_at_the_blank_line() {
    let block = b"Subject: a\r\n b\r\nTo: x\r\n\r\nSubject: body";
    assert_eq!(header(block, "subject").as_deref(), Some("a b"));
    assert_eq!(header(block, "to").as_deref(), Some("x"));
    assert_eq!(header(block, "From"), None);
    assert_eq!(header(b"", "From"), None);
    assert_eq!(header(b"\xff\xfe: \x00\r\n", "From"), None);
}

fn pending(action: &str, diagnostic: &str) -> PendingReply {
    PendingReply {
        id: 7,
        action: action.into(),
        diagnostic: diagnostic.into(),
        attempts: 0,
        created_at: 1_732_184_100_000,
        sender: "jean@example.org".into(),
        request_id: "0193abc".into(),
        received_at: 1_732_184_000_000,
        message_id: Some("orig@example.org".into()),
        subject: Some("Dîner".into()),
        envid: Some("ENV1".into()),
        headers: b"From: jean@example.org\r\nSubject: =?utf-8?q?D=C3=AEner?=\r\n".to_vec(),
        text: "À ce soir".into(),
        part_count: 3,
        address: "Paul@+33612345678@sms".into(),
        number: "+33612345678".into(),
        name: Some("Paul".into()),
        notify: Some("SUCCESS,FAILURE".into()),
        orcpt: Some("rfc822;Paul@+33612345678@sms".into()),
        state: "delivered".into(),
    }
}

#[test]
fn status_codes() {
    let cases = [
        ("delivered", "", "2.0.0"),
        ("relayed", "", "2.0.0"),
        ("delayed", "", "4.4.7"),
        (
            "failed",
            "status report (TP-MR 3, TP-ST 0x41): incompatible destination",
            "5.0.0",
        ),
        (
            "failed",
            "status report (TP-MR 3, TP-ST 0x62): no response from the SME",
            "5.4.7",
        ),
        ("failed", "+CMS ERROR: 38 network out of order", "5.0.0"),
    ];
    for (action, diag, want) in cases {
        assert_eq!(status_code(action, diag), want, "{action} {diag}");
    }
}

#[test]
fn delivery_status_fields() {
    let s = delivery_status(
        "gw.test",
        &pending("failed", "TP-ST 0x41: ça"),
        1_732_184_200_000,
    );
    for needle in [
        "Reporting-MTA: dns; gw.test\r\n",
        "Original-Envelope-Id: ENV1\r\n",
        "Arrival-Date: Thu, 21 Nov 2024 10:13:20 +0000\r\n\r\n",
        "Original-Recipient: rfc822;Paul@+33612345678@sms\r\n",
        "Final-Recipient: rfc822;Paul@+33612345678@sms\r\n",
        "Action: failed\r\n",
        "Status: 5.0.0\r\n",
        "Diagnostic-Code: X-SMS; TP-ST 0x41: ?a\r\n",
    ] {
        assert!(s.contains(needle), "{needle:?} missing from\n{s}");
    }
    assert!(s.is_ascii());
}

#[test]
fn addresses_beyond_ascii_are_written_as_rfc_6533_utf8_addr_xtext() {
    // (recipient address, ORCPT as stored, Original-Recipient, Final-Recipient)
    let cases = [
        (
            "André@+33612345678@sms",
            Some("utf-8;André@+33612345678@sms"),
            Some("utf-8;Andr\\x{E9}@\\x{2B}33612345678@sms"),
            "utf-8;Andr\\x{E9}@\\x{2B}33612345678@sms",
        ),
        (
            "Paul@+33612345678@sms",
            Some("Paul@+33612345678@sms"),
            Some("rfc822;Paul@+33612345678@sms"),
            "rfc822;Paul@+33612345678@sms",
        ),
        (
            "Paul@+33612345678@sms",
            Some("UTF-8;a=b\\c@sms"),
            Some("utf-8;a\\x{3D}b\\x{5C}c@sms"),
            "rfc822;Paul@+33612345678@sms",
        ),
        // Another type is written as it came, decoded (RFC 3464 §2.3.1), in ASCII.
        (
            "Paul@+33612345678@sms",
            Some("x400;/C=FR/ADMD= /S=Paul/"),
            Some("x400;/C=FR/ADMD= /S=Paul/"),
            "rfc822;Paul@+33612345678@sms",
        ),
        (
            "Paul@+33612345678@sms",
            Some("X-Local;a\u{e9}"),
            Some("X-Local;a?"),
            "rfc822;Paul@+33612345678@sms",
        ),
        (
            "\u{1F600}@+33612345678@sms",
            None,
            None,
            "utf-8;\\x{1F600}@\\x{2B}33612345678@sms",
        ),
    ];
    for (address, orcpt, original, final_rcpt) in cases {
        let mut r = pending("delivered", "");
        r.address = address.into();
        r.orcpt = orcpt.map(String::from);
        let s = delivery_status("gw.test", &r, 1_732_184_200_000);
        match original {
            Some(o) => assert!(
                s.contains(&format!("Original-Recipient: {o}\r\n")),
                "{address}: {s}"
            ),
            None => assert!(!s.contains("Original-Recipient"), "{address}: {s}"),
        }
        assert!(
            s.contains(&format!("Final-Recipient: {final_rcpt}\r\n")),
            "{address}: {s}"
        );
        assert!(s.is_ascii());
    }
}

#[test]
fn reply_is_a_threaded_multipart_report() {
    let from: Mailbox = "mail2sms <mailer-daemon@gw.test>".parse().unwrap();
    let r = pending(
        "delivered",
        "status report via modem0 (TP-MR 3, TP-ST 0x00): delivered",
    );
    let ctx = TemplateContext::of(&r);
    assert_eq!(ctx.status, "2.0.0");
    let (subject, human) = render(&cfg().templates, "en", &ctx).unwrap();
    assert_eq!(subject, "SMS delivered to +33612345678: Dîner");
    assert!(
        human.contains("was delivered to the phone (all 3 parts)"),
        "{human}"
    );
    let m = build(&from, "gw.test", &r, &subject, human, 0).unwrap();
    let t = String::from_utf8(m.formatted()).unwrap();
    for needle in [
        "Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"=_mail2sms_",
        "In-Reply-To: <orig@example.org>\r\n",
        "References: <orig@example.org>\r\n",
        "Auto-Submitted: auto-replied\r\n",
        "Content-Type: message/delivery-status\r\n",
        "Content-Type: text/rfc822-headers\r\n",
        "Action: delivered\r\n",
    ] {
        assert!(t.contains(needle), "{needle:?} missing from\n{t}");
    }
    let (fr_subject, fr) = render(&cfg().templates, "fr", &ctx).unwrap();
    assert_eq!(fr_subject, "SMS remis au +33612345678 : Dîner");
    assert!(
        fr.contains("a été remis au téléphone (ses 3 parties)"),
        "{fr}"
    );
}

#[test]
fn a_message_that_may_not_have_left_is_told_so_in_both_languages() {
    let mut r = pending(
        "failed",
        "the gateway stopped while modem0 had this part and no answer was recorded; it may or may not have been sent, so it is not sent again",
    );
    r.state = "uncertain".into();
    r.subject = None;
    let ctx = TemplateContext::of(&r);
    assert!(ctx.uncertain);
    let (subject, human) = render(&cfg().templates, "en", &ctx).unwrap();
    assert_eq!(subject, "SMS to +33612345678 may not have been sent");
    assert!(
        human.contains("(+33612345678) may not have arrived whole")
            && human.contains("send your mail again")
            && !human.contains("could not be delivered"),
        "{human}"
    );
    let (subject, fr) = render(&cfg().templates, "fr", &ctx).unwrap();
    assert_eq!(subject, "SMS au +33612345678 peut-être pas envoyé");
    assert!(fr.contains("n'est peut-être pas arrivé"), "{fr}");
    // Not for a failure that is sure.
    r.state = "failed".into();
    let sure = TemplateContext::of(&r);
    assert!(!sure.uncertain);
    let (subject, human) = render(&cfg().templates, "en", &sure).unwrap();
    assert_eq!(subject, "SMS to +33612345678 failed");
    assert!(human.contains("could not be delivered"), "{human}");
}

#[test]
fn templates_are_strict_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("xx")).unwrap();
    std::fs::write(dir.path().join("xx").join(SUBJECT_TEMPLATE), "{{ numbr }}").unwrap();
    std::fs::write(dir.path().join("xx").join(BODY_TEMPLATE), "ok").unwrap();
    let e = check_templates(dir.path(), "xx").unwrap_err().to_string();
    assert!(
        e.contains(SUBJECT_TEMPLATE) && e.contains("undefined"),
        "{e}"
    );
    let e = check_templates(dir.path(), "yy").unwrap_err().to_string();
    assert!(e.contains("cannot read") && e.contains("yy"), "{e}");
    check_templates(&cfg().templates, "en").unwrap();
    check_templates(&cfg().templates, "fr").unwrap();
}

#[test]
fn owed_actions_are_what_the_sender_can_get() {
    let with_delay = RepliesConfig {
        relayed: false,
        delay: Some(Duration::from_secs(600)),
        ..cfg()
    };
    // (config, sender, notify, headers) -> the actions stored with the recipient
    type Case<'a> = (
        &'a RepliesConfig,
        &'a str,
        Option<&'a str>,
        &'a [u8],
        &'a str,
    );
    let cases: &[Case] = &[
        (
            &cfg(),
            "a@b.example",
            Some("SUCCESS,FAILURE"),
            PLAIN,
            ",relayed,delivered,failed,",
        ),
        (
            &with_delay,
            "a@b.example",
            Some("SUCCESS,FAILURE"),
            PLAIN,
            ",delivered,failed,",
        ),
        (&cfg(), "a@b.example", Some("FAILURE"), PLAIN, ",failed,"),
        // DELAY without `delay_secs`: nothing will ever be owed for it.
        (&cfg(), "a@b.example", Some("DELAY"), PLAIN, ""),
        (
            &with_delay,
            "a@b.example",
            Some("delay, failure"),
            PLAIN,
            ",failed,delayed,",
        ),
        (&cfg(), "a@b.example", Some("NEVER,SUCCESS"), PLAIN, ""),
        // Nothing asked and not a listed domain: nothing, the gateway's usual case.
        (&cfg(), "a@b.example", None, PLAIN, ""),
        (
            &cfg(),
            "a@b.example",
            None,
            b"Disposition-Notification-To: a@b.example\r\n\r\n",
            ",relayed,delivered,failed,",
        ),
        (&cfg(), "x@ALWAYS.example", None, PLAIN, ",failed,"),
        (&cfg(), "", Some("SUCCESS"), PLAIN, ""),
        (
            &cfg(),
            "a@b.example",
            Some("SUCCESS"),
            b"Auto-Submitted: auto-replied\r\n\r\n",
            "",
        ),
        (
            &cfg(),
            "a@b.example",
            Some("SUCCESS"),
            b"Precedence: bulk\r\n\r\n",
            "",
        ),
    ];
    for (cfg, sender, notify, headers, want) in cases {
        assert_eq!(
            owed_actions(sender, *notify, headers, cfg),
            *want,
            "{sender} {notify:?} {}",
            String::from_utf8_lossy(headers)
        );
    }
}
