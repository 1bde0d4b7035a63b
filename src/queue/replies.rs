//! The `status_replies` table: the status replies (RFC 3464 DSNs) owed to senders.
//!
//! A row is written inside the writer's transaction that makes a recipient `sent` (Action
//! `relayed`: handed to the network), `delivered` (every part's status report said so),
//! `failed`, or `uncertain` (Action `failed`: a part may or may not have left, and is not sent
//! again; the sender is told so, and may send the mail again), so the reply is as durable as
//! the change that causes it and is never sent for a change that was rolled back.
//! `UNIQUE (recipient_id, action)` makes it one reply per message event: a message of three
//! parts becomes `delivered` once, after its last part's report, however many reports (late,
//! duplicated, reordered) arrive. Mail from the null sender gets no row at all (RFC 3461
//! §5.2.1, RFC 3834 §2).
//!
//! Whether a row is sent (the sender asked, it is not automatic mail, the rate limit) is
//! decided by `notify::replies` from the request's stored facts, and recorded here.

use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool};

use super::{QueueError, Store, now_ms};

/// Writes the writer task runs for this module.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// The outcome of an attempt or a decision: `state` is 'sent', 'skipped', 'failed' or
    /// 'pending' (with the next attempt at `retry_at`).
    Done {
        id: i64,
        state: &'static str,
        error: Option<String>,
        retry_at: Option<i64>,
        attempted: bool,
    },
    /// Owe a `delayed` reply for each recipient of a request received between `since` and
    /// `before` (Unix ms) that is not delivered or failed yet.
    Delayed { before: i64, since: i64 },
}

/// Owes the reply a part's change calls for, if any: when the part's recipient is now in a
/// state a reply tells about and its sender can be owed that reply (`recipients.replies`).
/// Repeats are ignored by the unique key. The diagnostic is the reason of the recipient's
/// latest event: the change's own. ?1 the part, ?2 now; state changes run it inside their own
/// query (`dispatch`), reports through [`record`].
pub(super) const RECORD_SQL: &str = "INSERT OR IGNORE INTO status_replies (created_at,
        request_id, recipient_id, sender, action, diagnostic, state, next_attempt_at, updated_at)
     SELECT ?2, q.id, r.id, q.mail_from, a.action,
        COALESCE((SELECT e.reason FROM events e WHERE e.request_id = q.id
                  AND e.recipient_id = r.id ORDER BY e.id DESC LIMIT 1), ''),
        'pending', ?2, ?2
     FROM recipients r JOIN requests q ON q.id = r.request_id,
        (SELECT CASE state WHEN 'sent' THEN 'relayed' WHEN 'delivered' THEN 'delivered'
                ELSE 'failed' END AS action
         FROM recipients WHERE id = (SELECT recipient_id FROM parts WHERE id = ?1)) a
     WHERE r.id = (SELECT recipient_id FROM parts WHERE id = ?1)
       AND r.state IN ('sent', 'delivered', 'failed', 'uncertain') AND q.mail_from != ''
       AND instr(r.replies, ',' || a.action || ',') > 0";

/// [`RECORD_SQL`] for every recipient whose id is `which` (`IN (…)`), at `now`: the replies
/// owed after a batch of changes (`dispatch::SENDS_SQL`): the same rows as [`RECORD_SQL`] run
/// after each change, which `queue::tests::a_batch_of_sends_writes_what_its_jobs_write_one_by_one`
/// checks.
pub(super) fn record_many_sql(which: &str, now: &str) -> String {
    format!(
        "INSERT OR IGNORE INTO status_replies (created_at, request_id, recipient_id, sender,
            action, diagnostic, state, next_attempt_at, updated_at)
         SELECT {now}, q.id, r.id, q.mail_from, a.action,
            COALESCE((SELECT e.reason FROM events e WHERE e.request_id = q.id
                      AND e.recipient_id = r.id ORDER BY e.id DESC LIMIT 1), ''),
            'pending', {now}, {now}
         FROM recipients r JOIN requests q ON q.id = r.request_id
            JOIN (SELECT 'sent' AS state, 'relayed' AS action
                  UNION ALL SELECT 'delivered', 'delivered'
                  UNION ALL SELECT 'failed', 'failed'
                  UNION ALL SELECT 'uncertain', 'failed') a ON a.state = r.state
         WHERE r.id {which} AND q.mail_from != ''
           AND instr(r.replies, ',' || a.action || ',') > 0"
    )
}

/// [`RECORD_SQL`] on its own, after a change made by other statements.
pub(super) async fn record(
    conn: &mut SqliteConnection,
    part: i64,
    now: i64,
) -> Result<(), QueueError> {
    sqlx::query(RECORD_SQL)
        .bind(part)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn apply(conn: &mut SqliteConnection, op: &Op) -> Result<u64, QueueError> {
    let now = now_ms();
    match op {
        Op::Done {
            id,
            state,
            error,
            retry_at,
            attempted,
        } => Ok(sqlx::query(
            "UPDATE status_replies SET state = ?2, attempts = attempts + ?3,
                next_attempt_at = COALESCE(?4, next_attempt_at), last_error = ?5,
                sent_at = CASE WHEN ?2 = 'sent' THEN ?6 ELSE sent_at END, updated_at = ?6
             WHERE id = ?1",
        )
        .bind(id)
        .bind(*state)
        .bind(i64::from(*attempted))
        .bind(retry_at)
        .bind(error)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()),
        Op::Delayed { before, since } => Ok(sqlx::query(
            "INSERT OR IGNORE INTO status_replies (created_at, request_id, recipient_id, sender,
                action, diagnostic, state, next_attempt_at, updated_at)
             SELECT ?1, q.id, r.id, q.mail_from, 'delayed',
                'not delivered yet: the message is ' || r.state, 'pending', ?1, ?1
             FROM recipients r JOIN requests q ON q.id = r.request_id
             WHERE r.state IN ('accepted', 'routed', 'sending', 'sent', 'held')
               AND q.received_at <= ?2 AND q.received_at >= ?3 AND q.mail_from != ''
               AND instr(r.replies, ',delayed,') > 0",
        )
        .bind(now)
        .bind(before)
        .bind(since)
        .execute(&mut *conn)
        .await?
        .rows_affected()),
    }
}

/// A reply to consider, with what building and deciding it needs.
#[derive(Debug, Clone)]
pub struct PendingReply {
    pub id: i64,
    pub action: String,
    pub diagnostic: String,
    pub attempts: i64,
    pub created_at: i64,
    pub sender: String,
    pub request_id: String,
    pub received_at: i64,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub envid: Option<String>,
    /// The original header block.
    pub headers: Vec<u8>,
    pub text: String,
    pub part_count: i64,
    pub address: String,
    pub number: String,
    pub name: Option<String>,
    pub notify: Option<String>,
    pub orcpt: Option<String>,
    /// The recipient's state now.
    pub state: String,
}

/// Replies due now, oldest first.
pub async fn due(pool: &SqlitePool, limit: i64) -> Result<Vec<PendingReply>, QueueError> {
    let rows = sqlx::query(
        "SELECT s.id, s.action, s.diagnostic, s.attempts, s.created_at, s.sender,
            q.id, q.received_at, q.message_id, q.subject, q.dsn_envid, q.headers, q.text,
            q.part_count, r.address, r.number, r.name, r.dsn_notify, r.dsn_orcpt, r.state
         FROM status_replies s
         JOIN recipients r ON r.id = s.recipient_id
         JOIN requests q ON q.id = s.request_id
         WHERE s.state = 'pending' AND s.next_attempt_at <= ?1
         ORDER BY s.id LIMIT ?2",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| PendingReply {
            id: r.get(0),
            action: r.get(1),
            diagnostic: r.get(2),
            attempts: r.get(3),
            created_at: r.get(4),
            sender: r.get(5),
            request_id: r.get(6),
            received_at: r.get(7),
            message_id: r.get(8),
            subject: r.get(9),
            envid: r.get(10),
            headers: r.get(11),
            text: r.get(12),
            part_count: r.get(13),
            address: r.get(14),
            number: r.get(15),
            name: r.get(16),
            notify: r.get(17),
            orcpt: r.get(18),
            state: r.get(19),
        })
        .collect())
}

/// When the next pending reply is due (Unix ms), if any is pending.
pub async fn next_due(pool: &SqlitePool) -> Result<Option<i64>, QueueError> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(next_attempt_at) FROM status_replies WHERE state = 'pending'",
    )
    .fetch_one(pool)
    .await?)
}

/// Replies sent to `sender` since `since` (Unix ms): what the rate limit counts.
pub async fn sent_since(pool: &SqlitePool, sender: &str, since: i64) -> Result<i64, QueueError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM status_replies WHERE sender = ?1 AND state = 'sent' AND sent_at >= ?2",
    )
    .bind(sender)
    .bind(since)
    .fetch_one(pool)
    .await?)
}

/// A status reply as `mail2sms status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplyStatus {
    pub recipient_id: i64,
    pub action: String,
    pub state: String,
    pub attempts: i64,
    pub note: Option<String>,
}

/// The status replies about a recipient.
pub async fn of_recipient(pool: &SqlitePool, id: i64) -> Result<Vec<ReplyStatus>, QueueError> {
    let rows = sqlx::query(
        "SELECT recipient_id, action, state, attempts, last_error FROM status_replies
         WHERE recipient_id = ?1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| ReplyStatus {
            recipient_id: r.get(0),
            action: r.get(1),
            state: r.get(2),
            attempts: r.get(3),
            note: r.get(4),
        })
        .collect())
}

impl Store {
    /// Records that reply `id` went out.
    pub async fn reply_sent(&self, id: i64) -> Result<(), QueueError> {
        self.replies_op(Op::Done {
            id,
            state: "sent",
            error: None,
            retry_at: None,
            attempted: true,
        })
        .await
        .map(|_| ())
    }

    /// Records that reply `id` will not be sent, and why.
    pub async fn reply_skipped(&self, id: i64, why: String) -> Result<(), QueueError> {
        self.replies_op(Op::Done {
            id,
            state: "skipped",
            error: Some(why),
            retry_at: None,
            attempted: false,
        })
        .await
        .map(|_| ())
    }

    /// Records a failed attempt: the next one at `retry_at` (Unix ms), or none.
    pub async fn reply_failed(
        &self,
        id: i64,
        error: String,
        retry_at: Option<i64>,
    ) -> Result<(), QueueError> {
        self.replies_op(Op::Done {
            id,
            state: if retry_at.is_some() {
                "pending"
            } else {
                "failed"
            },
            error: Some(error),
            retry_at,
            attempted: true,
        })
        .await
        .map(|_| ())
    }

    /// Owes a `delayed` reply to each recipient of a request received between `since` and
    /// `before` that is still on its way; returns how many were new.
    pub async fn owe_delayed(&self, before: i64, since: i64) -> Result<u64, QueueError> {
        self.replies_op(Op::Delayed { before, since }).await
    }
}
