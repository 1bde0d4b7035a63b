use std::path::Path;

use super::*;

const KW: &str = "$mail2sms-claimed-paris";

fn listed(uid: u32, modseq: u64, deleted: bool, keywords: &[&str]) -> Listed {
    Listed {
        uid,
        size: Some(100),
        modseq: Some(modseq),
        deleted,
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
    }
}

#[test]
fn plan_table() {
    // (listing, batch, mine, claim, unchanged_since, others)
    type Case = (Vec<Listed>, usize, Vec<u32>, Vec<u32>, Option<u64>, usize);
    let cases: Vec<Case> = vec![
        (vec![], 10, vec![], vec![], None, 0),
        // Free messages are claimed oldest first, the highest modseq guards the STORE.
        (
            vec![
                listed(7, 30, false, &[]),
                listed(3, 41, false, &["$Label1"]),
            ],
            10,
            vec![],
            vec![3, 7],
            Some(41),
            0,
        ),
        // Own earlier claims come first and count in the batch.
        (
            vec![
                listed(1, 5, false, &[]),
                listed(2, 6, false, &[KW]),
                listed(3, 7, false, &[]),
            ],
            2,
            vec![2],
            vec![1],
            Some(5),
            0,
        ),
        // Another gateway's claims are left alone; the keyword is matched without case.
        (
            vec![
                listed(1, 5, false, &["$mail2sms-claimed-london"]),
                listed(2, 6, false, &["$MAIL2SMS-CLAIMED-PARIS"]),
                listed(3, 7, false, &["$Mail2sms-Claimed-lyon"]),
            ],
            10,
            vec![2],
            vec![],
            None,
            2,
        ),
        // A deleted message nobody claimed is not taken; a deleted one of ours is finished.
        (
            vec![listed(1, 5, true, &[]), listed(2, 6, true, &[KW])],
            10,
            vec![2],
            vec![],
            None,
            0,
        ),
        // Batch limit with only free messages.
        (
            (1..=5).map(|u| listed(u, u as u64, false, &[])).collect(),
            3,
            vec![],
            vec![1, 2, 3],
            Some(3),
            0,
        ),
        // Own claims fill the batch: nothing new is claimed.
        (
            vec![
                listed(1, 1, false, &[]),
                listed(5, 2, false, &[KW]),
                listed(6, 3, false, &[KW]),
            ],
            2,
            vec![5, 6],
            vec![],
            None,
            0,
        ),
        // A keyword that merely starts like ours belongs to another gateway.
        (
            vec![listed(1, 1, false, &["$mail2sms-claimed-paris2"])],
            5,
            vec![],
            vec![],
            None,
            1,
        ),
    ];
    for (i, (listing, batch, mine, claim, since, others)) in cases.into_iter().enumerate() {
        let p = plan(&listing, KW, batch);
        assert_eq!(p.mine, mine, "case {i}: mine");
        assert_eq!(p.claim, claim, "case {i}: claim");
        assert_eq!(p.unchanged_since, since, "case {i}: unchanged_since");
        assert_eq!(p.others, others, "case {i}: others");
        assert!(p.mine.len() + p.claim.len() <= batch, "case {i}: batch");
    }
}

#[test]
fn plan_without_condstore_has_no_guard() {
    let mut l = listed(4, 0, false, &[]);
    l.modseq = None;
    let p = plan(&[l], KW, 10);
    assert_eq!(p.claim, vec![4]);
    assert_eq!(p.unchanged_since, None);
}

#[test]
fn uid_sets() {
    let cases: &[(&[u32], &str)] = &[
        (&[], ""),
        (&[5], "5"),
        (&[1, 2, 3, 7], "1:3,7"),
        (&[9, 3, 2, 1, 3], "1:3,9"),
        (&[1, 3, 5], "1,3,5"),
        (&[4294967294, 4294967295], "4294967294:4294967295"),
    ];
    for (uids, expected) in cases {
        assert_eq!(uid_set(uids), *expected, "{uids:?}");
    }
}

#[test]
fn chunks_keep_under_the_byte_limit() {
    type Case<'a> = (&'a [(u32, u32)], u64, &'a [&'a [u32]]);
    let cases: &[Case] = &[
        (&[], 10, &[]),
        (&[(1, 4), (2, 4), (3, 4)], 10, &[&[1, 2], &[3]]),
        // A message larger than the limit goes alone.
        (&[(1, 50), (2, 1), (3, 1)], 10, &[&[1], &[2, 3]]),
        (&[(1, 10), (2, 0)], 10, &[&[1, 2]]),
    ];
    for (uids, max, expected) in cases {
        let got = chunks_by_size(uids, *max);
        let expected: Vec<Vec<u32>> = expected.iter().map(|c| c.to_vec()).collect();
        assert_eq!(got, expected, "{uids:?} max {max}");
    }
}

#[test]
fn origin_table() {
    // (header block, sender, automatic, message id, reply goes to)
    type Case<'a> = (&'a str, &'a str, bool, Option<&'a str>, Option<&'a str>);
    let cases: &[Case] = &[
        (
            "Return-Path: <bounce@lists.example>\r\nFrom: Jean <jean@x.fr>\r\nMessage-ID: <a@b>\r\n",
            "bounce@lists.example",
            false,
            Some("a@b"),
            Some("bounce@lists.example"),
        ),
        (
            "From: \"Dupont, Jean\" <jean@x.fr>\r\n",
            "jean@x.fr",
            false,
            None,
            Some("jean@x.fr"),
        ),
        // The null sender is a bounce: never answered.
        (
            "Return-Path: <>\r\nFrom: MAILER-DAEMON@x.fr\r\n",
            "",
            false,
            None,
            None,
        ),
        (
            "From: a@x.fr\r\nAuto-Submitted: auto-replied\r\n",
            "a@x.fr",
            true,
            None,
            None,
        ),
        (
            "From: a@x.fr\r\nAuto-Submitted: no\r\n",
            "a@x.fr",
            false,
            None,
            Some("a@x.fr"),
        ),
        (
            "From: a@x.fr\r\nPrecedence: bulk\r\n",
            "a@x.fr",
            true,
            None,
            None,
        ),
        (
            "From: a@x.fr\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=x\r\n",
            "a@x.fr",
            true,
            None,
            None,
        ),
        ("Subject: no sender at all\r\n", "", false, None, None),
    ];
    for (headers, sender, automatic, id, reply) in cases {
        let raw = format!("{headers}\r\nbody\r\n");
        let o = origin(raw.as_bytes());
        assert_eq!(o.sender, *sender, "{headers:?}");
        assert_eq!(o.automatic, *automatic, "{headers:?}");
        assert_eq!(o.message_id.as_deref(), *id, "{headers:?}");
        assert_eq!(o.reply_to(), *reply, "{headers:?}");
    }
    assert_eq!(origin(b""), Origin::default());
}

#[test]
fn message_key_is_the_message_id_else_a_digest() {
    let with = b"Message-ID: <x@y>\r\n\r\nbody";
    assert_eq!(message_key(&origin(with), with), "<x@y>");
    let a = b"Subject: a\r\n\r\nbody";
    let b = b"Subject: b\r\n\r\nbody";
    let ka = message_key(&origin(a), a);
    assert!(ka.starts_with("sha256:") && ka.len() == 7 + 64, "{ka}");
    assert_eq!(ka, message_key(&origin(a), a));
    assert_ne!(ka, message_key(&origin(b), b));
}

fn config() -> Config {
    crate::config::parse(
        Path::new("/etc/mail2sms/test.toml"),
        r#"
[site]
name = "paris"
default_country = "FR"
sms_domains = ["sms", "sms.example.com"]

[store]
path = "q.db"

[recipients]
blocked_prefixes = ["+3361"]
"#,
    )
    .unwrap()
}

fn mail(headers: &str, body: &str) -> Vec<u8> {
    format!("{headers}\r\n\r\n{body}\r\n").into_bytes()
}

#[test]
fn recipients_come_from_every_header_in_every_form() {
    let cfg = config();
    let raw = mail(
        "From: Jean <jean@x.fr>\r\n\
         To: \"Paul Martin\" <Paul@+33477858589@sms>, \"Anne@+33698765432\"@sms.example.com\r\n\
         Cc: colleague@x.fr, Bob%0477858590%sms@sms\r\n\
         Delivered-To: 06.98.76.54.31@sms\r\n\
         X-Original-To: Paul@+33477858589@sms\r\n\
         Subject: hi",
        "text",
    );
    let r = header_recipients(&raw, &cfg, 10);
    let got: Vec<(&str, Option<&str>)> = r
        .accepted
        .iter()
        .map(|a| (a.recipient.number.as_str(), a.recipient.name.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("+33477858589", Some("Paul")),
            ("+33698765432", Some("Anne")),
            ("+33477858590", Some("Bob")),
            ("+33698765431", None),
        ]
    );
    assert!(r.refused.is_empty(), "{:?}", r.refused);
}

#[test]
fn display_name_names_a_bare_number() {
    let cfg = config();
    let raw = mail("To: Marie Curie <+33698765432@sms>", "x");
    let r = header_recipients(&raw, &cfg, 10);
    assert_eq!(r.accepted[0].recipient.name.as_deref(), Some("Marie Curie"));
}

#[test]
fn refused_and_over_limit_recipients_are_reported() {
    let cfg = config();
    let raw = mail(
        "To: x@+33612345678@sms, y@+33477858589@sms, z@0698765432@sms, w@+33477858590@sms, nonumber@sms",
        "x",
    );
    let r = header_recipients(&raw, &cfg, 2);
    let numbers: Vec<&str> = r
        .accepted
        .iter()
        .map(|a| a.recipient.number.as_str())
        .collect();
    assert_eq!(numbers, vec!["+33477858589", "+33698765432"]);
    let refused: Vec<(&str, &str)> = r
        .refused
        .iter()
        .map(|(a, e)| (a.as_str(), e.as_str()))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0].0, "x@+33612345678@sms");
    assert!(
        refused[0].1.contains("+33612345678 is not allowed"),
        "{refused:?}"
    );
    assert_eq!(
        refused[1],
        ("nonumber@sms", AddressError::NoNumber.to_string().as_str())
    );
    assert_eq!(r.over_limit, vec!["w@+33477858590@sms"]);
}

/// Countries are refused per recipient, as at RCPT TO, with the rule's sentence.
#[test]
fn countries_rule_applies_to_header_recipients() {
    let mut cfg = config();
    cfg.destinations.allowed_countries = vec!["FR".into()];
    let raw = mail("To: Paul@+33477858589@sms, Tom@+447911123456@sms", "x");
    let r = header_recipients(&raw, &cfg, 10);
    assert_eq!(r.accepted.len(), 1);
    assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
    assert!(
        r.refused[0]
            .1
            .contains("is not one of FR (rule: allowed-countries)"),
        "{:?}",
        r.refused
    );
}

fn senders(addresses: &[&str], domains: &[&str], authserv: Option<&str>) -> MailboxSenders {
    MailboxSenders {
        allowed_addresses: addresses.iter().map(|a| a.to_string()).collect(),
        allowed_domains: domains.iter().map(|d| d.to_string()).collect(),
        pins: [("boss@x.fr".to_string(), "4321".to_string())].into(),
        authserv_id: authserv.map(str::to_string),
    }
}

/// Each row: the mailbox rules, the header, and the rule that refuses (or the PIN asked for).
#[test]
fn sender_rules_table() {
    let open = senders(&[], &[], None);
    let listed = senders(&["anne@y.org"], &["x.fr"], None);
    let dmarc = senders(&[], &["x.fr"], Some("mx.x.fr"));
    type Case<'a> = (
        &'a MailboxSenders,
        &'a str,
        Result<Option<&'a str>, &'a str>,
    );
    let cases: Vec<Case> = vec![
        (&open, "From: eve@evil.example", Ok(None)),
        (&open, "From: boss@x.fr", Ok(Some("4321"))),
        (&listed, "From: jean@x.fr", Ok(None)),
        (&listed, "From: jean@paris.x.fr", Ok(None)),
        (&listed, "From: Anne@Y.org", Ok(None)),
        (&listed, "From: eve@evil.example", Err("allowed-senders")),
        (&listed, "From: eve@notx.fr", Err("allowed-senders")),
        // Without DMARC, a listed envelope sender is enough (relays rewrite From).
        (
            &listed,
            "Return-Path: <jean@x.fr>\r\nFrom: list@lists.example",
            Ok(None),
        ),
        (
            &dmarc,
            "Authentication-Results: mx.x.fr; spf=pass smtp.mailfrom=x.fr; dkim=pass header.d=x.fr; dmarc=pass header.from=x.fr\r\nFrom: jean@x.fr",
            Ok(None),
        ),
        (
            &dmarc,
            "Authentication-Results: mx.x.fr; dmarc=fail (p=reject) header.from=x.fr\r\nFrom: jean@x.fr",
            Err("dmarc"),
        ),
        // A verdict from another server (or forged by the sender) is not the MX's word.
        (
            &dmarc,
            "Authentication-Results: mx.evil.example; dmarc=pass header.from=x.fr\r\nFrom: jean@x.fr",
            Err("dmarc"),
        ),
        (&dmarc, "From: jean@x.fr", Err("dmarc")),
        // DMARC passes for the From: domain, which is not allowed; Return-Path does not count.
        (
            &dmarc,
            "Authentication-Results: mx.x.fr 1; dmarc/1=pass\r\nReturn-Path: <jean@x.fr>\r\nFrom: eve@evil.example",
            Err("allowed-senders"),
        ),
        (
            &dmarc,
            "Authentication-Results: mx.x.fr;\r\n  dkim=pass (good \"signature; really\") header.d=x.fr;\r\n  dmarc=pass (p=none) header.from=x.fr\r\nFrom: boss@x.fr",
            Ok(Some("4321")),
        ),
    ];
    for (rules, headers, want) in cases {
        let raw = mail(headers, "x");
        let o = origin(&raw);
        match (check_sender(&raw, &o, rules), want) {
            (Ok(pin), Ok(w)) => assert_eq!(pin, w, "{headers:?}"),
            (Err(e), Err(rule)) => assert_eq!(e.rule, rule, "{headers:?}: {e}"),
            (got, want) => panic!("{headers:?}: got {got:?}, want {want:?}"),
        }
    }
}

/// A mail DMARC did not verify fails with its reason and no reply: its addresses may be anyone's.
/// One refused by another rule replies with it.
#[test]
fn a_mail_dmarc_does_not_verify_gets_no_reply() {
    let cfg = config();
    let rules = senders(&[], &["x.fr"], Some("mx.x.fr"));
    let cases: &[(&str, bool)] = &[
        (
            "Return-Path: <victim@y.org>\r\nAuthentication-Results: mx.x.fr; dmarc=fail header.from=x.fr\r\nFrom: jean@x.fr",
            false,
        ),
        ("Return-Path: <victim@y.org>\r\nFrom: jean@x.fr", false),
        (
            "Return-Path: <eve@evil.example>\r\nAuthentication-Results: mx.x.fr; dmarc=pass header.from=evil.example\r\nFrom: eve@evil.example",
            true,
        ),
    ];
    for (headers, replied) in cases {
        let raw = mail(
            &format!("{headers}\r\nTo: Paul@+33477858589@sms\r\nSubject: hi"),
            "x",
        );
        let o = origin(&raw);
        let reading = read_mail(&raw, &o, "box", &rules, &cfg, 10);
        assert!(
            matches!(reading.decision, Decision::Fail { .. }),
            "{headers:?}"
        );
        assert_eq!(notice(&reading, &o).is_some(), *replied, "{headers:?}");
    }
}

#[test]
fn dmarc_result_reads_the_named_server_only() {
    let cases: &[(&str, Option<&str>)] = &[
        ("Authentication-Results: mx.x.fr; dmarc=pass", Some("pass")),
        ("Authentication-Results: MX.X.FR; DMARC=Fail", Some("fail")),
        ("Authentication-Results: mx.x.fr; none", None),
        ("Authentication-Results: other.fr; dmarc=pass", None),
        (
            "Authentication-Results: other.fr; dmarc=pass\r\nAuthentication-Results: mx.x.fr; dmarc=temperror",
            Some("temperror"),
        ),
        // A comment holding `dmarc=pass` is not a result.
        (
            "Authentication-Results: mx.x.fr; spf=fail (dmarc=pass; no) smtp.mailfrom=x.fr",
            None,
        ),
        ("Subject: dmarc=pass", None),
    ];
    for (headers, want) in cases {
        let raw = mail(headers, "x");
        assert_eq!(
            dmarc_result(&raw, "mx.x.fr").as_deref(),
            *want,
            "{headers:?}"
        );
    }
}

/// A refused sender gives a failure whose notice names the rule; a PIN is taken out of the
/// subject and the text.
#[test]
fn read_mail_applies_the_sender_rules() {
    let cfg = config();
    let rules = senders(&[], &["x.fr"], None);
    let cases: &[(&str, Result<&str, &str>)] = &[
        (
            "From: eve@evil.example\r\nTo: Paul@+33477858589@sms\r\nSubject: hi",
            Err("rule: allowed-senders"),
        ),
        (
            "From: boss@x.fr\r\nTo: Paul@+33477858589@sms\r\nSubject: PIN 1111 hi",
            Err("the PIN in the subject is wrong (rule: pin)"),
        ),
        (
            "From: boss@x.fr\r\nTo: Paul@+33477858589@sms\r\nSubject: hi",
            Err("must put its PIN in the subject"),
        ),
        (
            "From: boss@x.fr\r\nTo: Paul@+33477858589@sms\r\nSubject: PIN 4321 Meeting moved",
            Ok("Meeting moved"),
        ),
    ];
    for (headers, want) in cases {
        let raw = mail(headers, "to room 4");
        let o = origin(&raw);
        let reading = read_mail(&raw, &o, "box", &rules, &cfg, 10);
        match (&reading.decision, want) {
            (Decision::Queue(req), Ok(subject)) => {
                assert_eq!(req.subject.as_deref(), Some(*subject), "{headers:?}");
                assert!(!req.text.contains("4321"), "{headers:?}: {}", req.text);
                assert!(req.text.starts_with(subject), "{headers:?}: {}", req.text);
            }
            (Decision::Fail { reason }, Err(fragment)) => {
                assert!(reason.contains(fragment), "{headers:?}: {reason}");
                assert!(reason.starts_with("Not allowed to send SMS"), "{reason}");
                let n = notice(&reading, &o).expect("a notice");
                assert_eq!(&n.reason, reason);
            }
            (d, w) => panic!("{headers:?}: got {d:?}, want {w:?}"),
        }
    }
}

/// Each row: headers, body, whether it is queued (with how many recipients), and fragments the
/// notice must hold (none when no notice).
#[test]
fn read_mail_table() {
    let cfg = config();
    let cases: &[(&str, &str, Option<usize>, &[&str])] = &[
        (
            "From: jean@x.fr\r\nTo: Paul@+33477858589@sms\r\nSubject: Dinner\r\nMessage-ID: <m1@x>",
            "See you at 8",
            Some(1),
            &[],
        ),
        (
            "From: jean@x.fr\r\nTo: helpdesk@x.fr\r\nSubject: hi",
            "text",
            None,
            &["names no SMS recipient", "sms, sms.example.com"],
        ),
        (
            "From: jean@x.fr\r\nTo: Paul@+3361234@sms\r\nSubject: hi",
            "text",
            None,
            &["every recipient was refused", "Paul@+3361234@sms: "],
        ),
        (
            "From: jean@x.fr\r\nTo: Paul@+33477858589@sms, Eve@+33612345678@sms\r\nSubject: hi",
            "text",
            Some(1),
            &[
                "refused (the others will get the SMS)",
                "Eve@+33612345678@sms: sending to +33612345678 is not allowed",
            ],
        ),
        (
            "From: jean@x.fr\r\nTo: Paul@+33477858589@sms\r\nContent-Type: application/pdf",
            "%PDF",
            None,
            &["neither a text part nor a subject"],
        ),
    ];
    for (headers, body, queued, fragments) in cases {
        let raw = mail(headers, body);
        let o = origin(&raw);
        let reading = read_mail(&raw, &o, "box", &MailboxSenders::default(), &cfg, 10);
        match (queued, request(&reading)) {
            (Some(n), Some(req)) => {
                assert_eq!(req.recipients.len(), *n, "{headers:?}");
                assert_eq!(req.source, Source::Imap);
                assert_eq!(req.client.as_deref(), Some("mailbox box"));
                assert_eq!(req.mail_from, "jean@x.fr");
            }
            (None, None) => {}
            (q, r) => panic!("{headers:?}: expected queued {q:?}, got {r:?}"),
        }
        let n = notice(&reading, &o);
        if fragments.is_empty() {
            assert!(n.is_none(), "{headers:?}: unexpected notice {n:?}");
        } else {
            let n = n.unwrap_or_else(|| panic!("{headers:?}: no notice"));
            assert_eq!(n.recipient, "jean@x.fr");
            for f in *fragments {
                assert!(
                    n.reason.contains(f),
                    "{headers:?}: {f:?} not in {:?}",
                    n.reason
                );
            }
        }
    }
}

#[test]
fn automatic_mail_gets_no_notice() {
    let cfg = config();
    let raw = mail(
        "From: robot@x.fr\r\nAuto-Submitted: auto-generated\r\nTo: helpdesk@x.fr\r\nSubject: hi",
        "x",
    );
    let o = origin(&raw);
    let reading = read_mail(&raw, &o, "box", &MailboxSenders::default(), &cfg, 10);
    assert!(matches!(reading.decision, Decision::Fail { .. }));
    assert!(notice(&reading, &o).is_none());
}

#[test]
fn too_large_says_the_sizes() {
    let r = too_large(20_000_000, 10_485_760);
    let Decision::Fail { reason } = &r.decision else {
        panic!("{r:?}")
    };
    assert!(
        reason.contains("20000000") && reason.contains("10485760"),
        "{reason}"
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let cfg = config();
    let mut seed = 0x2545F4914F6CDD1Du64;
    for len in [0usize, 1, 7, 64, 300, 2000] {
        for _ in 0..50 {
            let raw: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Bias towards header-ish bytes so the parsers get past the first line.
                    let alphabet = b"To:@<>\"%+0123 sms\r\n,;:()abc\xff";
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let o = origin(&raw);
            let _ = message_key(&o, &raw);
            let reading = read_mail(&raw, &o, "box", &MailboxSenders::default(), &cfg, 10);
            let _ = notice(&reading, &o);
        }
    }
}

#[test]
fn unsolicited_responses_table() {
    const UV: u32 = 1795304716;
    let cases: &[(&str, Heard)] = &[
        ("* 12 EXISTS\r\n", Heard::News),
        ("* 3 RECENT\r\n", Heard::News),
        ("* 4 EXPUNGE\r\n", Heard::Nothing),
        ("* OK [UIDVALIDITY 1795304716] UIDs valid\r\n", Heard::Nothing),
        (
            "* OK [UIDVALIDITY 1795304720] UIDs valid\r\n",
            Heard::UidValidity(1795304720),
        ),
        ("* OK Still here\r\n", Heard::Nothing),
        ("* OK [HIGHESTMODSEQ 7] Highest\r\n", Heard::Nothing),
        // What Dovecot 2.3 says, and keeps the session, when the selected folder is deleted.
        (
            "* NO Internal error occurred. Refer to server log for more information. [2026-11-21 23:45:14]\r\n",
            Heard::Trouble(
                "NO Internal error occurred. Refer to server log for more information. [2026-11-21 23:45:14]".into(),
            ),
        ),
        (
            "* BYE Mailbox was deleted under us\r\n",
            Heard::Trouble("BYE Mailbox was deleted under us".into()),
        ),
        (
            "* BAD [SERVERBUG] oops\r\n",
            Heard::Trouble("BAD [SERVERBUG] oops".into()),
        ),
        ("* FLAGS (\\Seen \\Deleted)\r\n", Heard::Nothing),
    ];
    for (line, want) in cases {
        let (rest, r) = Response::parse(line.as_bytes())
            .unwrap_or_else(|e| panic!("{line:?} does not parse: {e:?}"));
        assert!(rest.is_empty(), "{line:?}");
        assert_eq!(&heard(&r, UV), want, "{line:?}");
    }
}
