//! What the queue remembers about mail picked up from IMAP mailboxes, and the notices (replies to
//! senders) that pickup decides to send.
//!
//! A mail in a mailbox is named by (mailbox, UIDVALIDITY, UID) (RFC 3501 §2.3.1.1). Pickup
//! records that name in the same transaction as the request the mail becomes ([`Store::claim`]),
//! so the order "commit, then move the mail out of the watched folder" is safe at every point:
//! a gateway that stops after the commit and before the move finds the mail again, learns here
//! that it was already handled ([`Claimed::Known`]) and only moves it. The mail's Message-ID
//! (or a digest of its bytes when it has none) is kept with the name: after a UIDVALIDITY
//! change every UID is new, and the Message-ID is what recognises a mail already handled.
//! That check is a primary key (`imap_mails`: one row per mailbox and mail), written in the
//! same transaction as the request, so one gateway's queue can never hold two requests for
//! one mail, whatever order its sessions see the mail's names in. Two gateways have two
//! queues: between them the claim keyword on the server decides (see `intake::imap`).
//!
//! A notice is written in the same transaction as the decision that causes it (a mail that
//! gives no SMS, recipients that were refused) and sent afterwards by `notify`, with retries;
//! each attempt's outcome, and the time of the next, is written after it.

use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::oneshot;

use super::{Accepted, Job, NewRequest, QueueError, Store, insert_request, now_ms};

/// Pickup's decision about one mail, to record with its name.
#[derive(Debug, Clone)]
pub struct NewClaim {
    /// The `[[mailbox]]` name in the configuration.
    pub mailbox: String,
    pub uidvalidity: u32,
    pub uid: u32,
    /// `<message-id>`, or `sha256:<hex>` of the mail's bytes when it has no Message-ID.
    pub message_key: String,
    pub decision: Decision,
    /// A reply to send to the mail's sender, if any.
    pub notice: Option<NewNotice>,
    /// Where a reply goes should the writer refuse the request (a quota); `None` when the
    /// sender is not answered (no `[notify]`, null sender, automatic mail).
    pub reply_to: Option<ReplyTo>,
}

/// The sender of a mail, for a reply the writer decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub recipient: String,
    pub original_message_id: Option<String>,
    pub original_subject: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Decision {
    /// Queue this request (it may still turn out to be a duplicate of an earlier copy).
    Queue(Box<NewRequest>),
    /// The mail gives no SMS; it goes to the failed folder.
    Fail { reason: String },
}

/// A reply to the sender of a mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotice {
    pub recipient: String,
    pub original_message_id: Option<String>,
    pub original_subject: Option<String>,
    pub reason: String,
}

/// Where a handled mail belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Queued,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Queued => "queued",
            Outcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Outcome {
        if s == "failed" {
            Outcome::Failed
        } else {
            Outcome::Queued
        }
    }
}

/// What [`Store::claim`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Recorded now, and the request stored (or found to be a duplicate of an earlier copy
    /// that came another way, e.g. over SMTP).
    Queued(Accepted),
    /// Recorded now as failed.
    Failed,
    /// Handled before: this very UID (`same_uid`), or the same mail under another UID. Nothing
    /// was queued now; the mail only needs moving to where `outcome` says.
    Known {
        outcome: Outcome,
        request_id: Option<String>,
        same_uid: bool,
    },
}

impl Claimed {
    /// Where the mail goes now.
    pub fn outcome(&self) -> Outcome {
        match self {
            Claimed::Queued(_) => Outcome::Queued,
            Claimed::Failed => Outcome::Failed,
            Claimed::Known { outcome, .. } => *outcome,
        }
    }
}

/// A notice waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNotice {
    pub id: i64,
    pub recipient: String,
    pub original_message_id: Option<String>,
    pub original_subject: Option<String>,
    pub reason: String,
    pub attempts: i64,
}

/// Writes the writer task runs for this module.
pub(super) enum Op {
    Claim(Box<NewClaim>),
    /// The notice went out.
    NoticeSent {
        id: i64,
    },
    /// The attempt failed: try again at `at` (Unix ms), or give up when `at` is `None`.
    NoticeFailed {
        id: i64,
        error: String,
        at: Option<i64>,
    },
}

/// What an [`Op`] did.
#[derive(Debug)]
pub(super) enum Done {
    Claimed(Claimed),
    Noted,
}

impl Store {
    /// Records a decision about one mail taken from a mailbox, with the request it becomes and
    /// the notice it causes, in one transaction. Returns after the commit is on disk.
    pub async fn claim(&self, claim: NewClaim) -> Result<Claimed, QueueError> {
        match self.imap_op(Op::Claim(Box::new(claim))).await? {
            Done::Claimed(c) => Ok(c),
            Done::Noted => Err(QueueError::WriterGone),
        }
    }

    /// Records that a notice was sent.
    pub async fn notice_sent(&self, id: i64) -> Result<(), QueueError> {
        self.imap_op(Op::NoticeSent { id }).await.map(|_| ())
    }

    /// Records a failed attempt; `retry_at` (Unix ms) is the next one, `None` gives up.
    pub async fn notice_failed(
        &self,
        id: i64,
        error: String,
        retry_at: Option<i64>,
    ) -> Result<(), QueueError> {
        self.imap_op(Op::NoticeFailed {
            id,
            error,
            at: retry_at,
        })
        .await
        .map(|_| ())
    }

    async fn imap_op(&self, op: Op) -> Result<Done, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Imap(op, tx))
            .await
            .map_err(|_| QueueError::WriterGone)?;
        rx.await.map_err(|_| QueueError::WriterGone)?
    }
}

/// Runs one [`Op`] inside the writer's transaction.
pub(super) async fn apply(
    conn: &mut SqliteConnection,
    op: &Op,
    limits: &super::QueuePolicy,
) -> Result<Done, QueueError> {
    let now = now_ms();
    match op {
        Op::Claim(c) => claim(conn, c, now, limits).await.map(Done::Claimed),
        Op::NoticeSent { id } => {
            sqlx::query(
                "UPDATE notices SET state = 'sent', attempts = attempts + 1, updated_at = ?2,
                    last_error = NULL
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(Done::Noted)
        }
        Op::NoticeFailed { id, error, at } => {
            sqlx::query(
                "UPDATE notices SET attempts = attempts + 1, last_error = ?2, updated_at = ?3,
                    state = CASE WHEN ?4 IS NULL THEN 'failed' ELSE 'pending' END,
                    next_attempt_at = COALESCE(?4, next_attempt_at)
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(error)
            .bind(now)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            Ok(Done::Noted)
        }
    }
}

async fn claim(
    conn: &mut SqliteConnection,
    c: &NewClaim,
    now: i64,
    limits: &super::QueuePolicy,
) -> Result<Claimed, QueueError> {
    // This very message, handled before (a crash between the commit and the move).
    let known: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT outcome, request_id FROM imap_claims
         WHERE mailbox = ?1 AND uidvalidity = ?2 AND uid = ?3",
    )
    .bind(&c.mailbox)
    .bind(c.uidvalidity)
    .bind(c.uid)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((outcome, request_id)) = known {
        return Ok(Claimed::Known {
            outcome: Outcome::parse(&outcome),
            request_id,
            same_uid: true,
        });
    }
    // The same mail under another name: a UIDVALIDITY change, a restored copy, or a second
    // delivery into the mailbox. The new name is recorded too, so the next look finds it at
    // once.
    let same_mail: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT outcome, request_id FROM imap_mails WHERE mailbox = ?1 AND message_key = ?2",
    )
    .bind(&c.mailbox)
    .bind(&c.message_key)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((outcome, request_id)) = same_mail {
        insert_claim(
            conn,
            c,
            Outcome::parse(&outcome),
            request_id.as_deref(),
            Some("the same mail was handled before under another UID"),
            now,
        )
        .await?;
        return Ok(Claimed::Known {
            outcome: Outcome::parse(&outcome),
            request_id,
            same_uid: false,
        });
    }

    let mut notice = c.notice.clone();
    let result = match &c.decision {
        Decision::Queue(req) => match insert_request(conn, req, limits).await {
            Ok(accepted) => {
                let reason = c.notice.as_ref().map(|n| n.reason.as_str());
                insert_mail(conn, c, Outcome::Queued, Some(accepted.id()), now).await?;
                insert_claim(conn, c, Outcome::Queued, Some(accepted.id()), reason, now).await?;
                Claimed::Queued(accepted)
            }
            // Over a quota: refused like a sender rule, failed folder and a reply. (SMTP
            // answers 451 and the client retries; a mail left in the folder would be taken up
            // again at once, over and over, so the sender is told to send it again later.)
            // `check_quotas` runs before anything is written, so nothing of it is stored.
            Err(QueueError::Quota(q)) => {
                let reason = format!(
                    "Not allowed to send SMS: quota reached: {q}; send it again later (rule: quota)"
                );
                insert_mail(conn, c, Outcome::Failed, None, now).await?;
                insert_claim(conn, c, Outcome::Failed, None, Some(&reason), now).await?;
                notice = c.reply_to.as_ref().map(|to| NewNotice {
                    recipient: to.recipient.clone(),
                    original_message_id: to.original_message_id.clone(),
                    original_subject: to.original_subject.clone(),
                    reason,
                });
                Claimed::Failed
            }
            Err(e) => return Err(e),
        },
        Decision::Fail { reason } => {
            insert_mail(conn, c, Outcome::Failed, None, now).await?;
            insert_claim(conn, c, Outcome::Failed, None, Some(reason), now).await?;
            Claimed::Failed
        }
    };
    if let Some(n) = &notice {
        sqlx::query(
            "INSERT INTO notices (created_at, recipient, original_message_id, original_subject,
                reason, state, next_attempt_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?1, ?1)",
        )
        .bind(now)
        .bind(&n.recipient)
        .bind(&n.original_message_id)
        .bind(&n.original_subject)
        .bind(&n.reason)
        .execute(&mut *conn)
        .await?;
    }
    Ok(result)
}

/// The first handling of a mail. A plain INSERT: should a row for this mail exist after all
/// (the check above raced another writer), the primary key fails the whole savepoint, the
/// request with it, and the mail is taken up again and found known.
async fn insert_mail(
    conn: &mut SqliteConnection,
    c: &NewClaim,
    outcome: Outcome,
    request_id: Option<&str>,
    now: i64,
) -> Result<(), QueueError> {
    sqlx::query(
        "INSERT INTO imap_mails (mailbox, message_key, outcome, request_id, handled_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(&c.mailbox)
    .bind(&c.message_key)
    .bind(outcome.as_str())
    .bind(request_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_claim(
    conn: &mut SqliteConnection,
    c: &NewClaim,
    outcome: Outcome,
    request_id: Option<&str>,
    reason: Option<&str>,
    now: i64,
) -> Result<(), QueueError> {
    sqlx::query(
        "INSERT INTO imap_claims (mailbox, uidvalidity, uid, message_key, outcome, request_id,
            reason, claimed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(&c.mailbox)
    .bind(c.uidvalidity)
    .bind(c.uid)
    .bind(&c.message_key)
    .bind(outcome.as_str())
    .bind(request_id)
    .bind(reason)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Notices due now, oldest first.
pub async fn due_notices(pool: &SqlitePool, limit: i64) -> Result<Vec<PendingNotice>, QueueError> {
    let rows = sqlx::query(
        "SELECT id, recipient, original_message_id, original_subject, reason, attempts
         FROM notices WHERE state = 'pending' AND next_attempt_at <= ?1
         ORDER BY id LIMIT ?2",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| PendingNotice {
            id: r.get(0),
            recipient: r.get(1),
            original_message_id: r.get(2),
            original_subject: r.get(3),
            reason: r.get(4),
            attempts: r.get(5),
        })
        .collect())
}

/// When the next pending notice is due (Unix ms), if any is pending.
pub async fn next_notice_at(pool: &SqlitePool) -> Result<Option<i64>, QueueError> {
    Ok(
        sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM notices WHERE state = 'pending'")
            .fetch_one(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing::request_to;
    use crate::queue::{Source, list};

    fn request(message_id: &str, number: &str) -> NewRequest {
        NewRequest {
            source: Source::Imap,
            client: Some("mailbox box".into()),
            mail_from: "jean@x.fr".into(),
            sender: "jean@x.fr".into(),
            sender_domain: "x.fr".into(),
            subject: Some("Hi".into()),
            ..request_to(number, 1, Some(message_id))
        }
    }

    fn claim(uidvalidity: u32, uid: u32, key: &str, decision: Decision) -> NewClaim {
        NewClaim {
            mailbox: "box".into(),
            uidvalidity,
            uid,
            message_key: key.into(),
            decision,
            notice: None,
            reply_to: None,
        }
    }

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_uid_is_queued_once_and_then_known() {
        let (_dir, store) = open().await;
        let q = Decision::Queue(Box::new(request("m1@x", "+33477858589")));
        let first = store.claim(claim(7, 1, "<m1@x>", q.clone())).await.unwrap();
        let Claimed::Queued(Accepted::Queued { id, .. }) = &first else {
            panic!("{first:?}")
        };
        // The gateway stopped before moving it: the same UID comes back.
        let again = store.claim(claim(7, 1, "<m1@x>", q.clone())).await.unwrap();
        assert_eq!(
            again,
            Claimed::Known {
                outcome: Outcome::Queued,
                request_id: Some(id.clone()),
                same_uid: true
            }
        );
        // UIDVALIDITY changed: the same mail under a new name is recognised by its key.
        let renamed = store.claim(claim(8, 1, "<m1@x>", q)).await.unwrap();
        assert_eq!(
            renamed,
            Claimed::Known {
                outcome: Outcome::Queued,
                request_id: Some(id.clone()),
                same_uid: false
            }
        );
        // ... while a different mail that got the old UID under the new UIDVALIDITY is new.
        let other = Decision::Queue(Box::new(request("m2@x", "+33477858589")));
        let fresh = store.claim(claim(8, 2, "<m2@x>", other)).await.unwrap();
        assert!(
            matches!(fresh, Claimed::Queued(Accepted::Queued { .. })),
            "{fresh:?}"
        );
        assert_eq!(list(store.reader(), None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn failures_are_remembered_with_their_notice() {
        let (_dir, store) = open().await;
        let mut c = claim(
            3,
            9,
            "sha256:00",
            Decision::Fail {
                reason: "no SMS recipient".into(),
            },
        );
        c.notice = Some(NewNotice {
            recipient: "jean@x.fr".into(),
            original_message_id: None,
            original_subject: Some("Hi".into()),
            reason: "no SMS recipient".into(),
        });
        assert_eq!(store.claim(c.clone()).await.unwrap(), Claimed::Failed);
        // Seen again (crash before the move): known as failed, and no second notice.
        let again = store.claim(c).await.unwrap();
        assert_eq!(again.outcome(), Outcome::Failed);
        let due = due_notices(store.reader(), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].recipient, "jean@x.fr");
        assert_eq!(due[0].attempts, 0);
        assert!(list(store.reader(), None).await.unwrap().is_empty());

        // A failed attempt moves the next one later; a success or giving up ends it.
        let later = now_ms() + 60_000;
        store
            .notice_failed(due[0].id, "relay down".into(), Some(later))
            .await
            .unwrap();
        assert!(due_notices(store.reader(), 10).await.unwrap().is_empty());
        assert_eq!(next_notice_at(store.reader()).await.unwrap(), Some(later));
        store.notice_sent(due[0].id).await.unwrap();
        assert_eq!(next_notice_at(store.reader()).await.unwrap(), None);
    }

    /// Two names of one mail claimed in one writer batch (the writer commits what is waiting
    /// together): the second sees the first's row, so one request, and the constraint itself
    /// refuses a second row for the mail.
    #[tokio::test]
    async fn one_mail_under_many_names_is_one_request() {
        let (_dir, store) = open().await;
        let q = Decision::Queue(Box::new(request("m1@x", "+33477858589")));
        let claims = (1..=8).map(|uid| store.claim(claim(uid % 2 + 5, uid, "<m1@x>", q.clone())));
        let results = futures_util::future::join_all(claims).await;
        let queued = results
            .iter()
            .filter(|r| matches!(r, Ok(Claimed::Queued(_))))
            .count();
        let known = results
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Ok(Claimed::Known {
                        same_uid: false,
                        ..
                    })
                )
            })
            .count();
        assert_eq!((queued, known), (1, 7), "{results:?}");
        assert_eq!(list(store.reader(), None).await.unwrap().len(), 1);
        let names: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM imap_claims")
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(names, 8);
        let mut conn = store.reader().acquire().await.unwrap();
        let second = sqlx::query(
            "INSERT INTO imap_mails (mailbox, message_key, outcome, handled_at)
             VALUES ('box', '<m1@x>', 'failed', 0)",
        )
        .execute(&mut *conn)
        .await;
        let e = second.expect_err("a second row for one mail was accepted");
        assert!(e.to_string().contains("UNIQUE"), "{e}");
    }

    /// Over a quota, mailbox mail is refused like a sender rule: failed, a reply naming the
    /// rule, nothing queued; exactly at the limit it is still queued.
    #[tokio::test]
    async fn quota_refuses_into_the_failed_folder_with_a_reply() {
        let dir = tempfile::tempdir().unwrap();
        let policy = crate::queue::QueuePolicy {
            quotas: crate::queue::Quotas {
                sender_per_hour: Some(2),
                ..Default::default()
            },
            guard: crate::queue::Guard {
                enabled: false,
                ..Default::default()
            },
            replies: crate::queue::OwedReplies::All,
        };
        let store = Store::open_with(&dir.path().join("q.db"), policy)
            .await
            .unwrap();
        let mut outcomes = Vec::new();
        for i in 1..=3u32 {
            let mut c = claim(
                1,
                i,
                &format!("<m{i}@x>"),
                Decision::Queue(Box::new(request(&format!("m{i}@x"), "+33477858589"))),
            );
            c.reply_to = Some(ReplyTo {
                recipient: "jean@x.fr".into(),
                original_message_id: Some(format!("m{i}@x")),
                original_subject: Some("Hi".into()),
            });
            outcomes.push(store.claim(c).await.unwrap().outcome());
        }
        assert_eq!(
            outcomes,
            [Outcome::Queued, Outcome::Queued, Outcome::Failed]
        );
        assert_eq!(list(store.reader(), None).await.unwrap().len(), 2);
        let due = due_notices(store.reader(), 10).await.unwrap();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].original_message_id.as_deref(), Some("m3@x"));
        assert!(due[0].reason.contains("(rule: quota)"), "{}", due[0].reason);
    }

    #[tokio::test]
    async fn a_claim_and_its_request_survive_reopening() {
        let (dir, store) = open().await;
        let q = Decision::Queue(Box::new(request("m1@x", "+33477858589")));
        store.claim(claim(1, 1, "<m1@x>", q)).await.unwrap();
        drop(store);
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        let (claims, requests): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM imap_claims), (SELECT COUNT(*) FROM requests)",
        )
        .fetch_one(store.reader())
        .await
        .unwrap();
        assert_eq!((claims, requests), (1, 1));
    }
}
