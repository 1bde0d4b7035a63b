use super::*;
use crate::queue::testing::mark_sending;
use crate::sms::Encoding;

fn request(from: &str, message_id: Option<&str>, numbers: &[&str]) -> NewRequest {
    NewRequest {
        source: Source::Smtp,
        client: Some("192.0.2.1".into()),
        helo: Some("client.example".into()),
        auth_user: None,
        mail_from: from.into(),
        sender: from.to_ascii_lowercase(),
        sender_domain: from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default(),
        message_id: message_id.map(str::to_string),
        subject: Some("Hello".into()),
        dsn_envid: None,
        dsn_ret: None,
        text: "Hello Paul".into(),
        encoding: Encoding::Gsm7,
        parts: vec!["Hello ".into(), "Paul".into()],
        truncated: false,
        size: 100,
        headers: b"Subject: Hello\r\n\r\n".to_vec(),
        recipients: numbers
            .iter()
            .map(|n| NewRecipient {
                address: format!("{n}@sms"),
                number: n.to_string(),
                name: None,
                country: Some("FR".into()),
                dsn_notify: Some("SUCCESS,FAILURE".into()),
                dsn_orcpt: None,
            })
            .collect(),
    }
}

/// Queues one two-part mail to one number and returns it as the feeder offers it.
async fn queue_one(store: &Store) -> Work {
    store
        .accept(request("a@b.c", None, &["+33612345678"]))
        .await
        .unwrap();
    dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap()
        .remove(0)
}

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn accepted_request_has_rows_parts_and_events() {
    let (_dir, store) = open().await;
    let a = store
        .accept(request(
            "john@example.com",
            Some("<m1@x>"),
            &["+33477858589", "+33612345678"],
        ))
        .await
        .unwrap();
    let Accepted::Queued {
        id,
        recipients: 2,
        duplicates: 0,
        held: 0,
    } = &a
    else {
        panic!("{a:?}")
    };
    let all = list(store.reader(), None).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|e| e.state == "accepted" && e.parts == 2 && &e.request == id)
    );
    assert!(
        list(store.reader(), Some(State::Sent))
            .await
            .unwrap()
            .is_empty()
    );

    let st = status(store.reader(), &id[..10]).await.unwrap();
    assert_eq!(st.recipients.len(), 2);
    let r = &st.recipients[0];
    assert_eq!(r.parts.len(), 2);
    assert_eq!(r.parts[1].text, "Paul");
    assert_eq!(r.events.len(), 1);
    assert!(
        r.events[0]
            .reason
            .contains("accepted over SMTP from 192.0.2.1"),
        "{}",
        r.events[0].reason
    );
    assert_eq!(r.dsn_notify.as_deref(), Some("SUCCESS,FAILURE"));
    // Every recipient has its own parts, in order, and its own event naming its number.
    for (r, number) in st.recipients.iter().zip(["+33477858589", "+33612345678"]) {
        assert_eq!(r.number, number);
        let texts: Vec<(i64, &str)> = r.parts.iter().map(|p| (p.seq, p.text.as_str())).collect();
        assert_eq!(texts, [(1, "Hello "), (2, "Paul")]);
        assert_eq!(r.events.len(), 1);
        assert_eq!(
            r.events[0].reason,
            format!(
                "accepted over SMTP from 192.0.2.1 from john@example.com for {number}: \
                 2 gsm7 parts"
            )
        );
    }
    assert_eq!(st.recipients[1].name, None);
}

#[tokio::test]
async fn same_message_id_sender_and_number_is_queued_once() {
    let (_dir, store) = open().await;
    let first = store
        .accept(request(
            "john@example.com",
            Some("<m1@x>"),
            &["+33477858589"],
        ))
        .await
        .unwrap();
    // The same mail again (a client retrying after a lost 250): nothing new.
    let again = store
        .accept(request(
            "John@Example.com",
            Some("<m1@x>"),
            &["+33477858589"],
        ))
        .await
        .unwrap();
    assert_eq!(
        again,
        Accepted::Duplicate {
            id: first.id().to_string()
        }
    );
    // The same mail with one more recipient: only the new one is queued.
    let more = store
        .accept(request(
            "john@example.com",
            Some("<m1@x>"),
            &["+33477858589", "+33612345678"],
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            more,
            Accepted::Queued {
                recipients: 1,
                duplicates: 1,
                ..
            }
        ),
        "{more:?}"
    );
    // Another sender, or no Message-ID at all, is another mail.
    let other = store
        .accept(request(
            "anne@example.com",
            Some("<m1@x>"),
            &["+33477858589"],
        ))
        .await
        .unwrap();
    assert!(matches!(other, Accepted::Queued { recipients: 1, .. }));
    for _ in 0..2 {
        let r = store
            .accept(request("john@example.com", None, &["+33477858589"]))
            .await
            .unwrap();
        assert!(matches!(r, Accepted::Queued { recipients: 1, .. }));
    }
    // The same number twice in one envelope is one SMS.
    let twice = store
        .accept(request(
            "x@example.com",
            None,
            &["+33477858589", "+33477858589"],
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            twice,
            Accepted::Queued {
                recipients: 1,
                duplicates: 1,
                ..
            }
        ),
        "{twice:?}"
    );
    assert_eq!(list(store.reader(), None).await.unwrap().len(), 6);
}

/// Concurrent sessions share commits: many accepts in flight take fewer transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_share_commits() {
    let (_dir, store) = open().await;
    let n = 300;
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .accept(request(
                    "bulk@example.com",
                    Some(&format!("<{i}@x>")),
                    &["+33612345678"],
                ))
                .await
                .unwrap()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().id().to_string());
    }
    assert_eq!(ids.len(), n);
    assert!(
        store.commit_count() < n as u64,
        "{} commits for {n} mails",
        store.commit_count()
    );
    assert_eq!(list(store.reader(), None).await.unwrap().len(), n);
}

/// The writer lets the runtime's other tasks run before it commits what it took: a mail that
/// a session sends a moment after another joins that commit instead of waiting for the next.
#[tokio::test]
async fn a_mail_sent_while_the_writer_gathers_shares_its_commit() {
    let (_dir, store) = open().await;
    let commits = store.commit_count();
    let (s1, s2) = (store.clone(), store.clone());
    let first = tokio::spawn(async move {
        s1.accept(request("a@example.com", Some("<1@x>"), &["+33612345678"]))
            .await
    });
    let second = tokio::spawn(async move {
        // Runs after the first has sent its mail and the writer has taken it.
        tokio::task::yield_now().await;
        s2.accept(request("b@example.com", Some("<2@x>"), &["+33612345678"]))
            .await
    });
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(store.commit_count(), commits + 1);
    assert_eq!(list(store.reader(), None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn committed_requests_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let id = {
        let store = Store::open(&path).await.unwrap();
        store
            .accept(request("a@b.c", None, &["+33612345678"]))
            .await
            .unwrap()
            .id()
            .to_string()
    };
    let pool = Store::open_read_only(&path).await.unwrap();
    assert_eq!(status(&pool, &id).await.unwrap().id, id);
    // Migrations are idempotent.
    let store = Store::open(&path).await.unwrap();
    assert_eq!(list(store.reader(), None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn status_lookup_errors() {
    let (_dir, store) = open().await;
    for _ in 0..20 {
        store
            .accept(request("a@b.c", None, &["+33612345678"]))
            .await
            .unwrap();
    }
    assert!(matches!(
        status(store.reader(), "zz").await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        status(store.reader(), "'; DROP TABLE requests; --").await,
        Err(QueueError::NotFound(_))
    ));
    // UUIDv7 ids made in the same millisecond share their first characters.
    assert!(matches!(
        status(store.reader(), "0").await,
        Err(QueueError::Ambiguous(_))
    ));
}

/// The feeder's question leaves the busy recipients out before it counts to its limit, and
/// the text of each part comes back as it was queued, whatever it holds.
#[tokio::test]
async fn ready_skips_the_busy_before_its_limit_and_keeps_the_text() {
    let (_dir, store) = open().await;
    let mut req = request(
        "a@b.c",
        None,
        &["+33612345671", "+33612345672", "+33612345673"],
    );
    let parts = ["Quote \" back\\slash ", "€ 😀 ", "tab\tnew\nline"];
    req.parts = parts.iter().map(|p| p.to_string()).collect();
    req.text = parts.concat();
    store.accept(req).await.unwrap();
    let all = dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    for w in &all {
        assert_eq!(w.all_parts, parts);
        assert_eq!(
            w.pending.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
    // With the first two busy, a limit of one still finds the third.
    let busy = all[..2].iter().map(|w| w.recipient_id).collect();
    let rest = dispatch::ready(store.reader(), 1, &busy).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].recipient_id, all[2].recipient_id);
    assert_eq!(rest[0].number, "+33612345673");
    // A limit counts recipients, not parts.
    let two = dispatch::ready(store.reader(), 2, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        two.iter().map(|w| w.recipient_id).collect::<Vec<_>>(),
        [all[0].recipient_id, all[1].recipient_id]
    );
}

#[tokio::test]
async fn parts_go_sending_sent_and_the_recipient_follows() {
    let (_dir, store) = open().await;
    let id = store
        .accept(request("a@b.c", None, &["+33612345678"]))
        .await
        .unwrap()
        .id()
        .to_string();
    let work = dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(work.len(), 1);
    let w = &work[0];
    assert_eq!(w.all_parts, vec!["Hello ", "Paul"]);
    assert_eq!(
        w.pending.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // A recipient being worked on is not offered twice.
    let busy = [w.recipient_id].into_iter().collect();
    assert!(
        dispatch::ready(store.reader(), 10, &busy)
            .await
            .unwrap()
            .is_empty()
    );

    for p in &w.pending {
        mark_sending(&store, p.id, "modem0").await;
        store
            .change(Change::Sent {
                part: p.id,
                message_ref: Some(7),
                sim: Some("208150000000001".into()),
                sent_at: now_ms(),
                reason: "sent via modem0".into(),
            })
            .await
            .unwrap();
    }
    let st = status(store.reader(), &id).await.unwrap();
    let r = &st.recipients[0];
    assert_eq!(r.state, "sent");
    assert!(
        r.parts
            .iter()
            .all(|p| p.state == "sent" && p.attempts == 1 && p.message_ref == Some(7))
    );
    assert!(
        r.parts
            .iter()
            .all(|p| p.sim.as_deref() == Some("208150000000001") && p.sent_at.is_some())
    );
    // accepted, then sending + sent for each part.
    let states: Vec<&str> = r.events.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, ["accepted", "sending", "sent", "sending", "sent"]);
    // With every reply owed (`Store::open`), the recipient now sent owes its `relayed`, once.
    let replies = owed(&store).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].1, "relayed");
    assert!(
        dispatch::ready(store.reader(), 10, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn retry_waits_and_permanent_failure_fails_the_message() {
    let (_dir, store) = open().await;
    let w = queue_one(&store).await;
    let (p1, p2) = (w.pending[0].id, w.pending[1].id);
    mark_sending(&store, p1, "modem0").await;
    store
        .change(Change::Retry {
            part: p1,
            at: now_ms() + 60_000,
            reason: "+CMS ERROR: 38, network out of order".into(),
        })
        .await
        .unwrap();
    // Part 2 is still due, part 1 waits for its retry time.
    let again = dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        again[0].pending.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![p2]
    );
    assert_eq!(again[0].all_parts.len(), 2);

    store
        .change(Change::Sending {
            part: p2,
            channel: "modem1".into(),
        })
        .await
        .unwrap();
    store
        .change(Change::Fail {
            part: p2,
            reason: "+CMS ERROR: 1, unassigned number".into(),
        })
        .await
        .unwrap();
    let st = status(store.reader(), &w.request_id).await.unwrap();
    let r = &st.recipients[0];
    assert_eq!(r.state, "failed");
    assert!(r.parts.iter().all(|p| p.state == "failed"), "{:?}", r.parts);
    assert!(
        r.events
            .iter()
            .any(|e| e.reason.contains("unassigned number"))
    );
    assert!(
        dispatch::ready(store.reader(), 10, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A part marked `sending` that never reached its modem goes back as it was: queued, due when
/// told, its attempt not counted, and the release in its history. A failure of the part before
/// it in the same job then fails it too, since it is unsent again.
#[tokio::test]
async fn a_released_part_is_queued_again_without_the_attempt() {
    let (_dir, store) = open().await;
    let w = queue_one(&store).await;
    let (p1, p2) = (w.pending[0].id, w.pending[1].id);
    for part in [p1, p2] {
        mark_sending(&store, part, "modem0").await;
    }
    store
        .change(Change::Release {
            part: p1,
            at: None,
            reason: "not sent: its modem is not ready; back in the queue".into(),
        })
        .await
        .unwrap();
    let again = dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    let pending: Vec<(i64, i64)> = again[0]
        .pending
        .iter()
        .map(|p| (p.id, p.attempts))
        .collect();
    assert_eq!(pending, [(p1, 0)], "part 2 is still sending");
    // Released with a time: not due before it.
    store
        .change(Change::Release {
            part: p2,
            at: Some(now_ms() + 60_000),
            reason: "not sent: part 1 did not go; back in the queue".into(),
        })
        .await
        .unwrap();
    let again = dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap();
    let pending: Vec<i64> = again[0].pending.iter().map(|p| p.id).collect();
    assert_eq!(pending, [p1]);
    let st = status(store.reader(), &w.request_id).await.unwrap();
    let r = &st.recipients[0];
    assert_eq!(r.state, "accepted");
    let states: Vec<&str> = r.events.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(
        states,
        ["accepted", "sending", "sending", "accepted", "accepted"]
    );
    assert!(r.events[3].reason.contains("not ready"), "{:?}", r.events);

    // Marked, released and failed in one job, as a modem's worker does after a refused part
    // with the next one marked: the failure takes the released part with it.
    mark_sending(&store, p1, "modem0").await;
    store
        .changes(vec![
            Change::Release {
                part: p2,
                at: None,
                reason: "not sent: part 1 did not go; back in the queue".into(),
            },
            Change::Fail {
                part: p1,
                reason: "+CMS ERROR: 1, unassigned number".into(),
            },
        ])
        .await
        .unwrap();
    let st = status(store.reader(), &w.request_id).await.unwrap();
    let r = &st.recipients[0];
    assert_eq!(r.state, "failed");
    assert!(r.parts.iter().all(|p| p.state == "failed"), "{:?}", r.parts);
}

/// A job that may wait for company is committed by its time at the latest, at once with a job
/// that may not, and at once when hurried.
#[tokio::test]
async fn a_job_that_may_wait_is_committed_by_its_time() {
    let (_dir, store) = open().await;
    let w = queue_one(&store).await;
    let (p1, p2) = (w.pending[0].id, w.pending[1].id);
    let sending = |part| {
        vec![Change::Sending {
            part,
            channel: "modem0".into(),
        }]
    };
    let commits = store.commit_count();
    let start = tokio::time::Instant::now();
    // Alone, it waits for its time.
    store
        .changes_by(sending(p1), start + Duration::from_millis(300))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(store.commit_count(), commits + 1);
    // Hurried, it goes at once.
    let t = tokio::time::Instant::now();
    let s2 = store.clone();
    let job = tokio::spawn(async move {
        s2.changes_by(sending(p2), t + Duration::from_secs(60))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.hurry();
    job.await.unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(store.commit_count(), commits + 2);
}

#[tokio::test]
async fn parts_found_sending_after_a_crash_become_uncertain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    {
        let store = Store::open(&path).await.unwrap();
        store
            .accept(request("a@b.c", None, &["+33612345678"]))
            .await
            .unwrap();
        let w = dispatch::ready(store.reader(), 10, &Default::default())
            .await
            .unwrap()
            .remove(0);
        store
            .change(Change::Sending {
                part: w.pending[0].id,
                channel: "modem3".into(),
            })
            .await
            .unwrap();
    }
    let store = Store::open(&path).await.unwrap();
    assert_eq!(dispatch::recover(&store).await.unwrap(), 1);
    let entries = list(store.reader(), Some(State::Uncertain)).await.unwrap();
    assert_eq!(entries.len(), 1);
    let st = status(store.reader(), &entries[0].request).await.unwrap();
    let p = &st.recipients[0].parts;
    assert_eq!(
        (p[0].state.as_str(), p[1].state.as_str()),
        ("uncertain", "accepted")
    );
    assert!(
        st.recipients[0]
            .events
            .last()
            .unwrap()
            .reason
            .contains("modem3")
    );
    // Never offered again; the other part is still to send.
    let work = dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(work[0].pending.len(), 1);
    assert_eq!(work[0].pending[0].seq, 2);
    assert_eq!(dispatch::recover(&store).await.unwrap(), 0);
    // The sender is owed a failure reply saying why, once, even when the rest is sent.
    let replies = owed(&store).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        (replies[0].0.as_str(), replies[0].1.as_str()),
        ("+33612345678", "failed")
    );
    assert!(
        replies[0].2.contains("may or may not have been sent"),
        "{replies:?}"
    );
    store
        .change(Change::Sending {
            part: work[0].pending[0].id,
            channel: "modem3".into(),
        })
        .await
        .unwrap();
    store
        .change(Change::Sent {
            part: work[0].pending[0].id,
            message_ref: Some(9),
            sim: Some("208150000000001".into()),
            sent_at: now_ms(),
            reason: "sent via modem3".into(),
        })
        .await
        .unwrap();
    assert_eq!(owed(&store).await, replies);
}

async fn open_with(policy: QueuePolicy) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(&dir.path().join("q.db"), policy)
        .await
        .unwrap();
    (dir, store)
}

fn no_guard() -> Guard {
    Guard {
        enabled: false,
        ..Guard::default()
    }
}

/// Quotas count parts (parts x recipients) and are enforced exactly at the limit.
#[tokio::test]
async fn quotas_are_exact() {
    let (_dir, store) = open_with(QueuePolicy {
        quotas: Quotas {
            sender_per_hour: Some(10),
            domain_per_day: Some(14),
            ..Quotas::default()
        },
        guard: no_guard(),
        replies: OwedReplies::All,
    })
    .await;
    // 2 parts x 2 recipients = 4 parts each.
    for _ in 0..2 {
        store
            .accept(request("a@x.com", None, &["+33612345678", "+33712345678"]))
            .await
            .unwrap();
    }
    // 8 used; 2 more fit exactly (2 parts x 1 recipient).
    store
        .accept(request("a@x.com", None, &["+33612345679"]))
        .await
        .unwrap();
    let err = store
        .accept(request("a@x.com", None, &["+33612345670"]))
        .await
        .unwrap_err();
    let QueueError::Quota(q) = err else {
        panic!("{err}")
    };
    assert_eq!((q.used, q.needed, q.limit, q.window), (10, 2, 10, "hour"));
    assert!(q.to_string().contains("sender a@x.com"), "{q}");
    // Another sender of the same domain: the domain's day quota (14) has 4 left.
    store
        .accept(request("b@x.com", None, &["+33612345671", "+33612345672"]))
        .await
        .unwrap();
    let err = store
        .accept(request("c@x.com", None, &["+33612345673"]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::Quota(QuotaExceeded {
                window: "day",
                limit: 14,
                ..
            })
        ),
        "{err}"
    );
    // A refused request left nothing behind.
    assert_eq!(list(store.reader(), None).await.unwrap().len(), 7);
}

#[tokio::test]
async fn consecutive_numbers_are_held_with_their_burst() {
    let (_dir, store) = open_with(QueuePolicy {
        quotas: Quotas::default(),
        guard: Guard {
            max_per_block: 4,
            ..Guard::default()
        },
        replies: OwedReplies::All,
    })
    .await;
    let mut outcomes = Vec::new();
    for i in 0..10 {
        let n = format!("+336123456{i:02}");
        outcomes.push(
            store
                .accept(request("pump@x.com", None, &[n.as_str()]))
                .await
                .unwrap(),
        );
    }
    let held: Vec<usize> = outcomes
        .iter()
        .map(|a| match a {
            Accepted::Queued { held, .. } => *held,
            _ => 0,
        })
        .collect();
    // The 4th number of the range trips the guard and takes the 3 unsent ones with it.
    assert_eq!(held, [0, 0, 0, 4, 1, 1, 1, 1, 1, 1]);
    let entries = policy::held(store.reader()).await.unwrap();
    assert_eq!(entries.len(), 10);
    assert!(
        entries[0].reason.contains("4 numbers in +336123456xx"),
        "{}",
        entries[0].reason
    );
    assert!(
        dispatch::ready(store.reader(), 100, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Another sender, another range, is not affected.
    let ok = store
        .accept(request("fine@x.com", None, &["+33612345601"]))
        .await
        .unwrap();
    assert!(matches!(ok, Accepted::Queued { held: 0, .. }));

    // An admin releases one request: it goes back to the queue.
    let admin = Store::open_for_admin(store.path()).await.unwrap();
    let first = entries[0].request.clone();
    assert_eq!(
        policy::decide_held(&admin, &first, true, "test")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        dispatch::ready(store.reader(), 100, &Default::default())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        policy::decide_held(&admin, "all", false, "test")
            .await
            .unwrap(),
        9
    );
    assert!(policy::held(store.reader()).await.unwrap().is_empty());
    assert_eq!(
        list(store.reader(), Some(State::Failed))
            .await
            .unwrap()
            .len(),
        9
    );
}

#[tokio::test]
async fn many_countries_are_held() {
    let (_dir, store) = open_with(QueuePolicy {
        quotas: Quotas::default(),
        guard: Guard {
            max_countries: 2,
            ..Guard::default()
        },
        replies: OwedReplies::All,
    })
    .await;
    let mut req = request("trip@x.com", None, &["+33612345678"]);
    for (n, c) in [
        ("+33612345678", "FR"),
        ("+447911123456", "GB"),
        ("+4915112345678", "DE"),
    ] {
        req.recipients[0].number = n.into();
        req.recipients[0].country = Some(c.into());
        store.accept(req.clone()).await.unwrap();
    }
    let held = policy::held(store.reader()).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].number, "+4915112345678");
    assert!(
        held[0].reason.contains("3 destination countries"),
        "{}",
        held[0].reason
    );
}

/// With a first-contact delay the start of a burst is still queued when the guard trips, so
/// nothing of it is sent.
#[tokio::test]
async fn first_contact_delay_keeps_the_start_of_a_burst() {
    let (_dir, store) = open_with(QueuePolicy {
        quotas: Quotas::default(),
        guard: Guard {
            max_per_block: 3,
            first_contact_delay: Duration::from_secs(30),
            ..Guard::default()
        },
        replies: OwedReplies::All,
    })
    .await;
    store
        .accept(request("pump@x.com", None, &["+33612345600"]))
        .await
        .unwrap();
    // Messages to a range new to the sender wait out the delay.
    assert!(
        dispatch::ready(store.reader(), 10, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    store
        .accept(request("pump@x.com", None, &["+33612345601"]))
        .await
        .unwrap();
    assert!(
        dispatch::ready(store.reader(), 10, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Other ranges and other senders are not slowed by it.
    store
        .accept(request("fine@x.com", None, &["+33712345601"]))
        .await
        .unwrap();
    // The third trips the guard: all three are held, none was handed to a modem.
    store
        .accept(request("pump@x.com", None, &["+33612345602"]))
        .await
        .unwrap();
    assert_eq!(policy::held(store.reader()).await.unwrap().len(), 3);
    assert!(
        dispatch::ready(store.reader(), 10, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A modem's `sent` and its next `sending` share one commit, and a job whose second change
/// names no part is undone whole: the first part stays `sending`, the batch goes on.
#[tokio::test]
async fn a_job_of_changes_is_all_or_none() {
    let (_dir, store) = open().await;
    let w = queue_one(&store).await;
    let (p1, p2) = (w.pending[0].id, w.pending[1].id);
    mark_sending(&store, p1, "modem0").await;
    let sent = Change::Sent {
        part: p1,
        message_ref: Some(3),
        sim: None,
        sent_at: 0,
        reason: "sent via modem0".into(),
    };
    let err = store
        .changes(vec![
            sent.clone(),
            Change::Sending {
                part: 999_999,
                channel: "modem0".into(),
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NoSuchPart(999_999)), "{err}");
    let state = |part: i64| part_state(&store, part);
    assert_eq!(state(p1).await, "sending");
    store
        .changes(vec![
            sent,
            Change::Sending {
                part: p2,
                channel: "modem0".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(state(p1).await, "sent");
    assert_eq!(state(p2).await, "sending");
    let st = status(store.reader(), w.request_id.as_str()).await.unwrap();
    let events: Vec<(Option<i64>, &str, &str)> = st.recipients[0]
        .events
        .iter()
        .map(|e| (e.part, e.state.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        events[1..],
        [
            (Some(1), "sending", "handed to modem0"),
            (Some(1), "sent", "sent via modem0"),
            (Some(2), "sending", "handed to modem0"),
        ]
    );
    assert_eq!(st.recipients[0].state, "sending");
}

/// A batch of modem jobs carries its `BEGIN IMMEDIATE` and `COMMIT` in its first and last
/// jobs' queries: wherever in the batch a job naming no part is, that job fails alone, the
/// others are committed, and the writer's connection is left outside any transaction.
#[tokio::test]
async fn a_fused_batch_fails_a_job_alone_wherever_it_is() {
    let (dir, store) = open().await;
    let mut parts = Vec::new();
    for i in 0..4 {
        store
            .accept(request(
                "a@b.c",
                Some(&format!("<{i}@x>")),
                &["+33612345678"],
            ))
            .await
            .unwrap();
    }
    for w in dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap()
    {
        parts.extend(w.pending.iter().map(|p| p.id));
    }
    assert_eq!(parts.len(), 8);
    let mut conn = writer_conn(&dir.path().join("q.db")).await;
    let policy = QueuePolicy::unlimited(OwedReplies::Never);
    let sending = |part: i64| {
        let (tx, _rx) = oneshot::channel();
        Job::Change(
            vec![Change::Sending {
                part,
                channel: "modem0".into(),
            }],
            tx,
            None,
        )
    };
    let mut next = parts.into_iter();
    // (batch size, where the bad job is)
    for (size, bad) in [(1, 0), (3, 0), (3, 1), (3, 2), (2, 1)] {
        let mut good = Vec::new();
        let batch: Vec<Job> = (0..size)
            .map(|i| {
                if i == bad {
                    sending(999_999)
                } else {
                    let p = next.next().unwrap();
                    good.push(p);
                    sending(p)
                }
            })
            .collect();
        assert!(fused_sqls(&batch).is_some());
        let results = commit_batch(&mut conn, &batch, &policy).await;
        for (i, r) in results.iter().enumerate() {
            if i == bad {
                assert!(
                    matches!(r, Err(QueueError::NoSuchPart(999_999))),
                    "{size}/{bad}: {:?}",
                    r.as_ref().err()
                );
            } else {
                assert!(r.is_ok(), "{size}/{bad}: {:?}", r.as_ref().err());
            }
        }
        // Committed: another connection sees them.
        for p in good {
            let state: String = sqlx::query_scalar("SELECT state FROM parts WHERE id = ?1")
                .bind(p)
                .fetch_one(store.reader())
                .await
                .unwrap();
            assert_eq!(state, "sending", "{size}/{bad}");
        }
        // No transaction left open.
        sqlx::query("BEGIN IMMEDIATE; COMMIT")
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// A batch of modems' jobs written by one query (`SENDS_SQL`) leaves the store as the jobs'
/// own queries leave it, one after the other: parts, recipients, every event in order and the
/// replies owed (none to the null sender), for one-part and two-part messages, a message to
/// two numbers, and jobs that send one part and take the next.
#[tokio::test]
async fn a_batch_of_sends_writes_what_its_jobs_write_one_by_one() {
    async fn fill(path: &Path) -> (Store, SqliteConnection, Vec<i64>) {
        let store = Store::open(path).await.unwrap();
        let mut one_part = request("a@b.c", Some("<1@x>"), &["+33612345678"]);
        one_part.parts = vec!["Hello".into()];
        let mut null_sender = request("", Some("<3@x>"), &["+33612345679"]);
        null_sender.parts = vec!["Hi".into()];
        let two_numbers = request("c@b.c", Some("<4@x>"), &["+33612345671", "+33612345672"]);
        let two_parts = request("b@b.c", Some("<2@x>"), &["+33612345670"]);
        for req in [one_part, two_parts, null_sender, two_numbers] {
            store.accept(req).await.unwrap();
        }
        let parts = sqlx::query_scalar(
            "SELECT p.id FROM parts p JOIN recipients r ON r.id = p.recipient_id
             ORDER BY r.id, p.seq",
        )
        .fetch_all(store.reader())
        .await
        .unwrap();
        let conn = writer_conn(path).await;
        (store, conn, parts)
    }
    async fn dump(conn: &mut SqliteConnection) -> Vec<String> {
        let mut rows = Vec::new();
        for sql in [
            "SELECT json_array(id, recipient_id, seq, state, attempts, next_attempt_at, channel,
                    message_ref, sim, sent_at) FROM parts ORDER BY id",
            "SELECT json_array(id, state) FROM recipients ORDER BY id",
            "SELECT json_array(recipient_id, part_id, state, reason) FROM events ORDER BY id",
            "SELECT json_array(recipient_id, sender, action, diagnostic, state)
             FROM status_replies ORDER BY recipient_id, action",
        ] {
            let got: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut *conn).await.unwrap();
            rows.extend(got);
        }
        rows
    }
    let dir = tempfile::tempdir().unwrap();
    let (_one, mut batched, p) = fill(&dir.path().join("batched.db")).await;
    let (_two, mut alone, q) = fill(&dir.path().join("alone.db")).await;
    assert_eq!(p, q);
    assert_eq!(p.len(), 8);
    let sending = |part: i64| Change::Sending {
        part,
        channel: format!("modem{}", part % 3),
    };
    let sent = |part: i64| Change::Sent {
        part,
        message_ref: Some(part % 256),
        sim: Some("208150000000001".into()),
        sent_at: 1_700_000_000_000 + part,
        reason: format!("sent by modem{}", part % 3),
    };
    // Parts: [one part] [two parts] [null sender] [first number: two] [second number: two].
    let batches: Vec<Vec<Vec<Change>>> = vec![
        vec![
            vec![sending(p[0])],
            vec![sending(p[1])],
            vec![sending(p[3])],
            vec![sending(p[4])],
            vec![sending(p[6])],
        ],
        vec![
            vec![sent(p[0])],
            vec![sent(p[1]), sending(p[2])],
            vec![sent(p[3])],
            vec![sent(p[4]), sending(p[5])],
            vec![sent(p[6]), sending(p[7])],
        ],
        vec![vec![sent(p[2])], vec![sent(p[5])], vec![sent(p[7])]],
    ];
    let policy = QueuePolicy::unlimited(OwedReplies::All);
    for batch in &batches {
        let json = dispatch::sends_json(batch.iter().map(Vec::as_slice)).unwrap();
        dispatch::run_sends(&mut batched, json).await.unwrap();
        for changes in batch {
            let (tx, _rx) = oneshot::channel();
            let job = [Job::Change(changes.clone(), tx, None)];
            for r in commit_batch(&mut alone, &job, &policy).await {
                r.unwrap();
            }
        }
        assert_eq!(dump(&mut batched).await, dump(&mut alone).await);
    }
    let replies: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.number, s.action FROM status_replies s JOIN recipients r ON r.id = s.recipient_id
         ORDER BY r.id",
    )
    .fetch_all(&mut batched)
    .await
    .unwrap();
    let owed = |n: &str| (n.to_string(), "relayed".to_string());
    assert_eq!(
        replies,
        [
            owed("+33612345678"),
            owed("+33612345670"),
            owed("+33612345671"),
            owed("+33612345672")
        ]
    );
}

/// The batch of sends finds its parts and recipients by their keys, never by a scan.
#[tokio::test]
async fn a_batch_of_sends_never_scans_a_table() {
    let (_dir, store) = open().await;
    let mut conn = store.reader().acquire().await.unwrap();
    prepare_writer(&mut conn).await.unwrap();
    let mut explained = 0;
    for stmt in dispatch::SENDS_SQL.split(';') {
        if !stmt.contains("batch_json") {
            continue;
        }
        explained += 1;
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {stmt}")))
                .bind(r#"{"now":0,"changes":[]}"#)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        for (_, _, _, d) in &plan {
            // Only the batch's own changes (`c`) and the three constant rows of the replies'
            // actions (`a`) are read through.
            let scanned = d.strip_prefix("SCAN ").and_then(|t| t.split(' ').next());
            assert!(
                matches!(scanned, None | Some("c" | "a" | "CONSTANT")),
                "{stmt}\n{plan:#?}"
            );
        }
    }
    // The staging insert, the events, two part updates, the summaries, the replies.
    assert_eq!(explained, 6);
}

/// The recipient's state the writer computes in SQL is `summarise` of its parts, for every
/// combination of up to three part states.
#[tokio::test]
async fn the_summary_in_sql_is_summarise() {
    let (_dir, store) = open().await;
    store
        .accept(request("a@b.c", None, &["+33612345678"]))
        .await
        .unwrap();
    let mut conn = writer_conn(store.path()).await;
    let rid: i64 = sqlx::query_scalar("SELECT id FROM recipients")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut combos: Vec<Vec<State>> = vec![vec![]];
    for len in 1..=3 {
        let mut next = Vec::new();
        for c in combos.iter().filter(|c| c.len() == len - 1) {
            for s in State::ALL {
                let mut c = c.clone();
                c.push(s);
                next.push(c);
            }
        }
        combos.extend(next);
    }
    let summary = dispatch::SUMMARY_SQL.replace(
        "WHERE id = (SELECT recipient_id FROM parts WHERE id = ?1)",
        "WHERE id = ?1 RETURNING state",
    );
    for combo in &combos {
        // The recipient's parts, in these states (no event names them, so they can go).
        sqlx::query("DELETE FROM parts WHERE recipient_id = ?1")
            .bind(rid)
            .execute(&mut conn)
            .await
            .unwrap();
        for (seq, s) in combo.iter().enumerate() {
            sqlx::query(
                "INSERT INTO parts (recipient_id, seq, text, state, updated_at)
                 VALUES (?1, ?2, 'x', ?3, 0)",
            )
            .bind(rid)
            .bind(seq as i64 + 1)
            .bind(s.as_str())
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let got: String = sqlx::query_scalar(sqlx::AssertSqlSafe(summary.clone()))
            .bind(rid)
            .bind(0i64)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(got, dispatch::summarise(combo).as_str(), "{combo:?}");
    }
}

/// Modems removed from the configuration leave `mail2sms modems` at the next start.
#[tokio::test]
async fn modems_no_longer_configured_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let snap = |n: &str| (n.to_string(), "{}".to_string());
    store
        .record_modems(vec![snap("a"), snap("b"), snap("c")])
        .await
        .unwrap();
    store
        .forget_other_modems(vec!["c".into(), "a".into(), "new".into()])
        .await
        .unwrap();
    let names: Vec<String> = modems(store.reader())
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names, ["a", "c"]);
    store.forget_other_modems(Vec::new()).await.unwrap();
    assert!(modems(store.reader()).await.unwrap().is_empty());
}

/// The replies owed, as (number, action, diagnostic), in order.
async fn owed(store: &Store) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT r.number, s.action, s.diagnostic FROM status_replies s
         JOIN recipients r ON r.id = s.recipient_id ORDER BY s.id",
    )
    .fetch_all(store.reader())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_peer_receipt_owes_the_status_reply_once() {
    let (_dir, store) = open().await;
    store
        .accept(request(
            "john@example.com",
            Some("<peer@x>"),
            &["+33477858589", "+33612345678"],
        ))
        .await
        .unwrap();
    let rids: Vec<i64> = sqlx::query_scalar("SELECT id FROM recipients ORDER BY id")
        .fetch_all(store.reader())
        .await
        .unwrap();
    for (i, rid) in rids.iter().enumerate() {
        store
            .change(Change::Forwarded {
                recipient: *rid,
                peer: "fr".into(),
                remote_id: format!("remote-{i}"),
            })
            .await
            .unwrap();
    }
    // Forwarding hands the message to the peer, not to the network: no reply yet.
    assert_eq!(owed(&store).await, vec![]);
    let receipt = |recipient, delivered| Change::PeerReceipt {
        recipient,
        delivered,
        reason: format!("site fr reports the message {delivered}"),
    };
    store.change(receipt(rids[0], true)).await.unwrap();
    store.change(receipt(rids[1], false)).await.unwrap();
    // A receipt sent again, or contradicting a final state, owes nothing more.
    store.change(receipt(rids[0], true)).await.unwrap();
    store.change(receipt(rids[1], true)).await.unwrap();
    assert_eq!(
        owed(&store).await,
        vec![
            (
                "+33477858589".to_string(),
                "delivered".to_string(),
                "site fr reports the message true".to_string()
            ),
            (
                "+33612345678".to_string(),
                "failed".to_string(),
                "site fr reports the message false".to_string()
            ),
        ]
    );
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM recipients ORDER BY id")
        .fetch_all(store.reader())
        .await
        .unwrap();
    assert_eq!(states, ["delivered", "failed"]);
}

/// Under a `[replies]` configuration, a recipient is owed only what its sender asked for: a
/// sender who asked for nothing costs no reply row at all, one who asked for failures gets a
/// row when the message fails and none when it is sent.
#[tokio::test]
async fn only_the_replies_a_sender_asked_for_are_owed() {
    let cfg = crate::notify::replies::RepliesConfig {
        templates: std::path::PathBuf::from("templates"),
        language: "en".into(),
        relayed: true,
        delay: None,
        per_sender_per_hour: 0,
        domains: Vec::new(),
        domain_notify: Default::default(),
    };
    let (_dir, store) = open_with(QueuePolicy {
        quotas: Quotas::default(),
        guard: no_guard(),
        replies: OwedReplies::Asked(cfg),
    })
    .await;
    let mut req = request("john@example.com", None, &["+33612345678", "+33612345679"]);
    req.parts.truncate(1);
    req.recipients[0].dsn_notify = None;
    req.recipients[1].dsn_notify = Some("FAILURE".into());
    store.accept(req).await.unwrap();
    let work = dispatch::ready(store.reader(), 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(work.len(), 2);
    for w in &work {
        let part = w.pending[0].id;
        mark_sending(&store, part, "modem0").await;
        store
            .change(Change::Sent {
                part,
                message_ref: Some(1),
                sim: None,
                sent_at: now_ms(),
                reason: "sent via modem0".into(),
            })
            .await
            .unwrap();
    }
    assert_eq!(owed(&store).await, []);
    // The second recipient's report says it failed: that one is owed.
    for w in &work {
        store
            .change(Change::Fail {
                part: w.pending[0].id,
                reason: "the network refused it".into(),
            })
            .await
            .unwrap();
    }
    let replies = owed(&store).await;
    assert_eq!(
        replies,
        [(
            "+33612345679".to_string(),
            "failed".to_string(),
            "the network refused it".to_string()
        )]
    );
}

/// A modem's usual job (`sent` for the part it sent, `sending` for the next) runs as one query
/// of its own: it must leave the store exactly as the two changes committed one after the
/// other do, whether both parts are one recipient's or two recipients', and write the reply
/// the sent recipient is owed.
#[tokio::test]
async fn sent_then_sending_in_one_job_writes_what_two_jobs_write() {
    /// Every row the changes touch, without the times the stores were written at.
    async fn snapshot(store: &Store) -> Vec<String> {
        let pool = store.reader();
        let mut out: Vec<String> = sqlx::query(
            "SELECT id, recipient_id, seq, state, attempts, next_attempt_at, channel,
                    message_ref, sim, sent_at FROM parts ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "part {} r{} #{} {} attempts {} next {:?} on {:?} mr {:?} sim {:?} at {:?}",
                r.get::<i64, _>(0),
                r.get::<i64, _>(1),
                r.get::<i64, _>(2),
                r.get::<String, _>(3),
                r.get::<i64, _>(4),
                r.get::<Option<i64>, _>(5),
                r.get::<Option<String>, _>(6),
                r.get::<Option<i64>, _>(7),
                r.get::<Option<String>, _>(8),
                r.get::<Option<i64>, _>(9),
            )
        })
        .collect();
        for (id, state) in
            sqlx::query_as::<_, (i64, String)>("SELECT id, state FROM recipients ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap()
        {
            out.push(format!("recipient {id} {state}"));
        }
        for (part, state, reason) in sqlx::query_as::<_, (Option<i64>, String, String)>(
            "SELECT part_id, state, reason FROM events ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        {
            out.push(format!("event {part:?} {state} {reason}"));
        }
        for (rid, action, diagnostic) in sqlx::query_as::<_, (i64, String, String)>(
            "SELECT recipient_id, action, diagnostic FROM status_replies ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        {
            out.push(format!("reply r{rid} {action}: {diagnostic}"));
        }
        out
    }
    let sent = |part: i64| Change::Sent {
        part,
        message_ref: Some(part + 40),
        sim: Some("208011234567890".into()),
        sent_at: 1_000 + part,
        reason: format!("sent via modem0, TP-MR {}", part + 40),
    };
    let sending = |part: i64| Change::Sending {
        part,
        channel: "modem0".into(),
    };
    let mut snapshots = Vec::new();
    for together in [true, false] {
        let (_dir, store) = open().await;
        // Two recipients of two parts each: parts 1 and 2, then 3 and 4.
        store
            .accept(request("a@b.c", None, &["+33612345678", "+33612345679"]))
            .await
            .unwrap();
        store.change(sending(1)).await.unwrap();
        // The same recipient's next part, then the next recipient's first part.
        for (done, next) in [(1, 2), (2, 3)] {
            if together {
                store
                    .changes(vec![sent(done), sending(next)])
                    .await
                    .unwrap();
            } else {
                store.change(sent(done)).await.unwrap();
                store.change(sending(next)).await.unwrap();
            }
        }
        snapshots.push(snapshot(&store).await);
    }
    let [together, apart] = &snapshots[..] else {
        unreachable!()
    };
    assert_eq!(together, apart);
    // What both must show: the first recipient sent and owed its `relayed` reply, the second
    // in flight on its first part (and still `accepted` as a whole: its second part is).
    assert!(
        together.contains(&"recipient 1 sent".to_string()),
        "{together:#?}"
    );
    assert!(
        together.contains(&"recipient 2 accepted".to_string()),
        "{together:#?}"
    );
    assert!(
        together.iter().any(|l| l.starts_with("reply r1 relayed")),
        "{together:#?}"
    );
    assert!(
        together.contains(
            &"part 3 r2 #1 sending attempts 1 next None on Some(\"modem0\") mr None sim None at None"
                .to_string()
        ),
        "{together:#?}"
    );
}

fn accept_job(req: NewRequest) -> (Job, oneshot::Receiver<Result<Accepted, QueueError>>) {
    let (tx, rx) = oneshot::channel();
    (Job::Accept(Box::new(req), tx), rx)
}

/// A batch of mails is written in two trips, yet each mail is checked against the ones before
/// it in the same batch as well as the store: copies of a mail are queued once, whether they
/// share a batch or not.
#[tokio::test]
async fn a_batch_of_mails_is_checked_mail_by_mail() {
    let (dir, store) = open().await;
    let earlier = store
        .accept(request(
            "old@example.com",
            Some("<old@x>"),
            &["+33612345678"],
        ))
        .await
        .unwrap();
    let mut conn = writer_conn(&dir.path().join("q.db")).await;
    let policy = QueuePolicy::unlimited(OwedReplies::All);
    let reqs = [
        request(
            "a@example.com",
            Some("<m1@x>"),
            &["+33477858589", "+33612345678"],
        ),
        // The same mail again: nothing new.
        request(
            "A@example.com",
            Some("<m1@x>"),
            &["+33612345678", "+33477858589"],
        ),
        // Same Message-ID, one number new.
        request(
            "a@example.com",
            Some("<m1@x>"),
            &["+33477858589", "+33699999999"],
        ),
        // No Message-ID: never a duplicate, but the same number twice is one SMS.
        request("a@example.com", None, &["+33477858589", "+33477858589"]),
        // A copy of a mail committed in an earlier batch.
        request("old@example.com", Some("<old@x>"), &["+33612345678"]),
    ];
    let (batch, _rx): (Vec<Job>, Vec<_>) = reqs.into_iter().map(accept_job).unzip();
    assert!(fused_sqls(&batch).is_none());
    let results = commit_batch(&mut conn, &batch, &policy).await;
    let got: Vec<Accepted> = results
        .into_iter()
        .map(|r| match r {
            Ok(Outcome::Accepted(a)) => a,
            Ok(_) => panic!("not an Accepted outcome"),
            Err(e) => panic!("{e}"),
        })
        .collect();
    let first = got[0].id().to_string();
    assert!(matches!(
        &got[0],
        Accepted::Queued {
            recipients: 2,
            duplicates: 0,
            held: 0,
            ..
        }
    ));
    assert_eq!(got[1], Accepted::Duplicate { id: first.clone() });
    assert!(
        matches!(&got[2], Accepted::Queued { id, recipients: 1, duplicates: 1, .. } if *id != first)
    );
    assert!(matches!(
        &got[3],
        Accepted::Queued {
            recipients: 1,
            duplicates: 1,
            ..
        }
    ));
    assert_eq!(
        got[4],
        Accepted::Duplicate {
            id: earlier.id().to_string()
        }
    );
    // Committed: another connection sees 1 + 2 + 1 + 1 recipients, each with its parts and
    // its event.
    let count = |sql: &'static str| {
        let pool = store.reader().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM requests").await, 4);
    assert_eq!(count("SELECT count(*) FROM recipients").await, 5);
    assert_eq!(count("SELECT count(*) FROM parts").await, 10);
    assert_eq!(
        count("SELECT count(*) FROM events WHERE state = 'accepted'").await,
        5
    );
    // No transaction left open.
    sqlx::query("BEGIN IMMEDIATE; COMMIT")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Mails that quotas or the guard must look at are written one by one, each after its checks;
/// the others a batch at a time. Both write the same rows, byte for byte, whatever the text,
/// header bytes and names hold.
#[tokio::test]
async fn the_batch_insert_writes_what_the_checked_insert_writes() {
    /// Every column but ids and times, with its type, in the order the rows were written.
    async fn snapshot(store: &Store) -> Vec<String> {
        let tables = [
            (
                "requests",
                "source, client, helo, auth_user, mail_from, message_id, subject, dsn_envid, \
                 dsn_ret, text, encoding, part_count, truncated, size, headers, sender, \
                 sender_domain",
            ),
            (
                "recipients",
                "id, idx, address, number, name, dsn_notify, dsn_orcpt, state, dedup_key, \
                 country, replies",
            ),
            ("parts", "id, recipient_id, seq, text, state, attempts"),
            ("events", "id, recipient_id, part_id, state, reason"),
        ];
        let mut out = Vec::new();
        for (table, columns) in tables {
            let cells: Vec<String> = columns
                .split(',')
                .map(|c| format!("typeof({0}) || ':' || hex({0})", c.trim()))
                .collect();
            let sql = format!(
                "SELECT {} FROM {table} ORDER BY rowid",
                cells.join(" || ' ' || ")
            );
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(store.reader())
                .await
                .unwrap();
            out.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
        }
        out
    }
    let odd = |n: usize| {
        let mut r = request(
            "Zoë@example.com",
            Some("<odd\u{0}id@x>"),
            &["+33477858589", "+33612345678"],
        );
        r.text = format!("NUL\u{0} ESC\u{1b} \"quoted\" back\\slash \u{1F600} café {n}");
        r.parts = vec![r.text.clone(), "\u{7f}\t\r\n".into()];
        r.headers = vec![0, 0xff, 0xfe, b'\r', b'\n', b'"', b'\\', 0x80];
        r.subject = Some("Grüße \u{0}".into());
        r.recipients[0].name = Some("Pâul \"P\" O'Brien".into());
        r.truncated = true;
        r
    };
    let requests = || {
        vec![
            odd(1),
            request("a@example.com", Some("<m1@x>"), &["+33612345678"]),
            // A copy: nothing new.
            request("a@example.com", Some("<m1@x>"), &["+33612345678"]),
            {
                let mut r = odd(2);
                r.headers.clear();
                r.message_id = None;
                r.subject = None;
                r.client = None;
                r
            },
        ]
    };
    let (_d1, batched) = open().await;
    let dir = tempfile::tempdir().unwrap();
    let checked = Store::open_with(
        &dir.path().join("q.db"),
        QueuePolicy {
            quotas: Quotas {
                sender_per_hour: Some(1_000_000),
                ..Quotas::default()
            },
            ..QueuePolicy::unlimited(OwedReplies::All)
        },
    )
    .await
    .unwrap();
    for req in requests() {
        batched.accept(req).await.unwrap();
    }
    for req in requests() {
        checked.accept(req).await.unwrap();
    }
    let (a, b) = (snapshot(&batched).await, snapshot(&checked).await);
    assert_eq!(a.len(), 3 + 5 + 10 + 5);
    assert_eq!(a, b);

    // And what was written is what was given.
    let (text, headers, subject): (String, Vec<u8>, Option<String>) =
        sqlx::query_as("SELECT text, headers, subject FROM requests ORDER BY rowid LIMIT 1")
            .fetch_one(batched.reader())
            .await
            .unwrap();
    let given = odd(1);
    assert_eq!(text, given.text);
    assert_eq!(headers, given.headers);
    assert_eq!(subject, given.subject);
    let name: Option<String> =
        sqlx::query_scalar("SELECT name FROM recipients ORDER BY rowid LIMIT 1")
            .fetch_one(batched.reader())
            .await
            .unwrap();
    assert_eq!(name, given.recipients[0].name);
}

/// The batch insert finds each request's recipients through the `(request_id, idx)` index: a
/// scan of the table would make every mail cost more as the queue's history grows.
#[tokio::test]
async fn the_batch_insert_never_scans_recipients() {
    let (_dir, store) = open().await;
    // The writer's own table, on a reader connection of the test's.
    let mut conn = store.reader().acquire().await.unwrap();
    prepare_writer(&mut conn).await.unwrap();
    for stmt in INSERT_REQUESTS_SQL.split(';') {
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {stmt}")))
                .bind("[]")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        let details: Vec<&str> = plan.iter().map(|(_, _, _, d)| d.as_str()).collect();
        if stmt.contains("recipients rc") {
            assert!(
                details.iter().any(|d| d.starts_with("SEARCH rc USING")),
                "{stmt}\n{details:#?}"
            );
        }
        assert!(
            !details.iter().any(|d| d.starts_with("SCAN rc")),
            "{stmt}\n{details:#?}"
        );
    }
}

/// A status report finds its candidates through `parts_report_match`, which holds sent parts
/// only: queued parts are not in it, and a part enters it once, when it is sent.
#[tokio::test]
async fn reports_are_matched_through_the_index_of_sent_parts() {
    let (_dir, store) = open().await;
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {}",
        reports::MATCH_SQL
    )))
    .bind("208150000000001")
    .bind(7)
    .fetch_all(store.reader())
    .await
    .unwrap();
    assert!(
        plan.iter()
            .any(|(_, _, _, d)| d.starts_with("SEARCH p USING INDEX parts_report_match")),
        "{plan:#?}"
    );
    let sql: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'parts_report_match'")
            .fetch_one(store.reader())
            .await
            .unwrap();
    assert!(sql.ends_with("WHERE sent_at IS NOT NULL"), "{sql}");
}

/// The send rate a peer link advertises counts the `sent` changes committed in the last
/// minute, second by second, and nothing that failed.
#[test]
fn sent_rate_counts_the_last_minute() {
    let r = SentRate::default();
    let s = 1_000_000_i64; // a Unix second
    r.record(s * 1000, 30);
    r.record(s * 1000 + 999, 30);
    r.record((s + 59) * 1000, 60);
    // Nothing yet: the future is not counted.
    assert_eq!(r.per_second((s - 1) * 1000), 0.0);
    assert_eq!(r.per_second(s * 1000), 1.0);
    assert_eq!(r.per_second((s + 59) * 1000), 2.0);
    // A minute on, the first second has left the window.
    assert_eq!(r.per_second((s + 60) * 1000), 1.0);
    // The slot of `s` is reused for `s + 60`, its old count dropped.
    r.record((s + 60) * 1000, 6);
    assert_eq!(r.per_second((s + 60) * 1000), 1.1);
    assert_eq!(r.per_second((s + 200) * 1000), 0.0);
}

#[tokio::test]
async fn committed_sends_are_counted_and_failed_ones_not() {
    let (_dir, store) = open().await;
    let w = queue_one(&store).await;
    let sent = |part: i64| Change::Sent {
        part,
        message_ref: Some(7),
        sim: Some("208150000000001".into()),
        sent_at: now_ms(),
        reason: "sent via modem0".into(),
    };
    assert_eq!(store.sent_per_second(), 0.0);
    for p in &w.pending {
        store
            .changes(vec![
                Change::Sending {
                    part: p.id,
                    channel: "modem0".into(),
                },
                sent(p.id),
            ])
            .await
            .unwrap();
    }
    assert!(store.change(sent(999_999)).await.is_err());
    assert_eq!(store.sent_per_second(), w.pending.len() as f64 / 60.0);
}

/// A recipient queued from SMPP is due a delivery receipt until one is recorded, and the search
/// for owed receipts goes through the index of those alone, never the whole history.
#[tokio::test]
async fn receipts_due_are_found_through_their_own_index() {
    let (_dir, store) = open().await;
    let mut smpp = request("app@example.com", None, &["+33612345678"]);
    smpp.source = Source::Smpp;
    store.accept(smpp).await.unwrap();
    store
        .accept(request("a@b.c", None, &["+33612345679"]))
        .await
        .unwrap();
    let due = || async {
        sqlx::query_as::<_, (i64, Option<i64>)>(
            "SELECT id, receipt_due FROM recipients ORDER BY id",
        )
        .fetch_all(store.reader())
        .await
        .unwrap()
    };
    let before = due().await;
    assert_eq!(
        before.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
        [Some(1), None]
    );
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {}",
        crate::peer::server::OWED_RECEIPTS_SQL
    )))
    .fetch_all(store.reader())
    .await
    .unwrap();
    assert!(
        plan.iter()
            .any(|(_, _, _, d)| d.contains("INDEX recipients_receipt_due")),
        "{plan:#?}"
    );
    assert!(!plan.iter().any(|(_, _, _, d)| d == "SCAN r"), "{plan:#?}");
    store
        .change(Change::ReceiptSent {
            recipient: before[0].0,
        })
        .await
        .unwrap();
    assert_eq!(
        due().await.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
        [None, None]
    );
}

/// A connection of the test's own that runs the writer's queries as the writer does.
/// The state of `part`, as the store's readers see it.
async fn part_state(store: &Store, part: i64) -> String {
    sqlx::query_scalar("SELECT state FROM parts WHERE id = ?1")
        .bind(part)
        .fetch_one(store.reader())
        .await
        .unwrap()
}

async fn writer_conn(path: &Path) -> SqliteConnection {
    let mut conn = SqliteConnection::connect_with(&options(path))
        .await
        .unwrap();
    prepare_writer(&mut conn).await.unwrap();
    conn
}

/// A part whose message failed while it waited (a failed status report of an earlier part
/// fails the rest) is not marked `sending`, alone or in a batch of modems' jobs, and a retry
/// of the parts around it leaves it failed.
#[tokio::test]
async fn a_part_of_a_failed_message_is_neither_sent_nor_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let store = Store::open(&path).await.unwrap();
    let mut three = request("a@b.c", Some("<1@x>"), &["+33612345678"]);
    three.parts = vec!["a".into(), "b".into(), "c".into()];
    let mut other = request("b@b.c", Some("<2@x>"), &["+33612345679"]);
    other.parts = vec!["x".into()];
    for req in [three, other] {
        store.accept(req).await.unwrap();
    }
    let p: Vec<i64> = sqlx::query_scalar("SELECT id FROM parts ORDER BY id")
        .fetch_all(store.reader())
        .await
        .unwrap();
    let sent = |part: i64| Change::Sent {
        part,
        message_ref: Some(7),
        sim: Some("208150000000001".into()),
        sent_at: now_ms(),
        reason: "sent by modem0".into(),
    };
    let sending = |part: i64| Change::Sending {
        part,
        channel: "modem0".into(),
    };
    let state = |part: i64| part_state(&store, part);
    // Part 1 sent, part 2 on the air, then part 1's report fails it, and part 3 with it.
    mark_sending(&store, p[0], "modem0").await;
    store.change(sent(p[0])).await.unwrap();
    mark_sending(&store, p[1], "modem0").await;
    store
        .change(Change::Fail {
            part: p[0],
            reason: "the network could not deliver it".into(),
        })
        .await
        .unwrap();
    assert_eq!(state(p[2]).await, "failed");
    let events = || {
        let pool = store.reader().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let before = events().await;

    let alone = store.change(sending(p[2])).await;
    assert!(
        matches!(alone, Err(QueueError::NotQueued(x)) if x == p[2]),
        "{alone:?}"
    );
    // A modem's job (part 2's `sent`, part 3's mark) in a batch with another modem's mark:
    // that job alone is refused, all of it; the other is written.
    let mut conn = writer_conn(&path).await;
    let policy = QueuePolicy::unlimited(OwedReplies::All);
    let jobs = [
        Job::Change(vec![sent(p[1]), sending(p[2])], oneshot::channel().0, None),
        Job::Change(vec![sending(p[3])], oneshot::channel().0, None),
    ];
    let results = commit_batch(&mut conn, &jobs, &policy).await;
    let errors: Vec<Option<String>> = results
        .iter()
        .map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        matches!(&results[0], Err(QueueError::NotQueued(x)) if *x == p[2]),
        "{errors:?}"
    );
    assert!(results[1].is_ok(), "{errors:?}");
    assert_eq!(state(p[1]).await, "sending");
    assert_eq!(state(p[2]).await, "failed");
    assert_eq!(state(p[3]).await, "sending");
    assert_eq!(
        events().await,
        before + 1,
        "only the other modem's mark has an event"
    );

    // Part 2 failed on its modem for now: it is retried, and the failed part 3 stays failed.
    let at = now_ms() + 60_000;
    store
        .changes(vec![
            Change::Retry {
                part: p[1],
                at,
                reason: "the modem was busy".into(),
            },
            Change::Retry {
                part: p[2],
                at,
                reason: "waiting for part 2 to be retried".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(state(p[1]).await, "accepted");
    assert_eq!(state(p[2]).await, "failed");
    assert_eq!(
        events().await,
        before + 2,
        "no event for the part that stays failed"
    );
}

/// SQLite's "database or disk is full" is told apart from other failures, both as the driver
/// gives it and as the writer keeps it (its sentence only), so that intake can say `452 4.3.1`.
/// A real SQLITE_FULL: a store file capped at a few pages, written past them.
#[tokio::test]
async fn a_full_disk_is_told_apart_from_other_store_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = SqliteConnection::connect_with(&options(&dir.path().join("full.db")))
        .await
        .unwrap();
    sqlx::query("PRAGMA max_page_count = 8")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (k TEXT UNIQUE, b BLOB)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut full = None;
    for i in 0..100 {
        if let Err(e) = sqlx::query("INSERT INTO t VALUES (?1, zeroblob(4000))")
            .bind(i.to_string())
            .execute(&mut conn)
            .await
        {
            full = Some(e);
            break;
        }
    }
    let full = full.expect("a database capped at 8 pages fills up");
    let kept = format!("commit failed: {}", QueueError::Broken(full.to_string()));
    assert!(QueueError::Broken(kept).is_storage_full());
    assert!(QueueError::Db(full).is_storage_full(), "SQLITE_FULL");
    let unique = sqlx::query("INSERT INTO t VALUES ('0', NULL)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(!QueueError::Broken(unique.to_string()).is_storage_full());
    assert!(!QueueError::Db(unique).is_storage_full());
    assert!(!QueueError::WriterGone.is_storage_full());
    assert!(!QueueError::Broken("(code: 1300) not full".into()).is_storage_full());
}

/// In a batch on the general path, a job that fails after writing part of itself leaves none of
/// it (its savepoint is rolled back), the others of the batch are committed, and the writer's
/// next batch begins as usual. The failure is a trigger that refuses one modem's row, after the
/// same job wrote another.
#[tokio::test]
async fn a_job_that_fails_half_way_leaves_nothing_and_the_batch_commits_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    drop(Store::open(&path).await.unwrap());
    let mut conn = writer_conn(&path).await;
    sqlx::query(
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON modems WHEN NEW.name = 'bad'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let modems = |names: &[&str]| {
        let (tx, _rx) = oneshot::channel();
        let rows = names.iter().map(|n| (n.to_string(), "{}".to_string()));
        Job::Modems(rows.collect(), None, tx)
    };
    let names = async |conn: &mut SqliteConnection| -> Vec<String> {
        sqlx::query_scalar("SELECT name FROM modems ORDER BY name")
            .fetch_all(conn)
            .await
            .unwrap()
    };
    let policy = QueuePolicy::unlimited(OwedReplies::All);
    let batch = [
        modems(&["first"]),
        modems(&["half", "bad"]),
        modems(&["last"]),
    ];
    let results = commit_batch(&mut conn, &batch, &policy).await;
    assert!(results[0].is_ok(), "{:?}", results[0].as_ref().err());
    assert!(
        matches!(&results[1], Err(e) if e.to_string().contains("refused by the test")),
        "{:?}",
        results[1].as_ref().err()
    );
    assert!(results[2].is_ok(), "{:?}", results[2].as_ref().err());
    assert_eq!(names(&mut conn).await, ["first", "last"]);
    let results = commit_batch(&mut conn, &[modems(&["next"])], &policy).await;
    assert!(results[0].is_ok(), "{:?}", results[0].as_ref().err());
    assert_eq!(names(&mut conn).await, ["first", "last", "next"]);
}
