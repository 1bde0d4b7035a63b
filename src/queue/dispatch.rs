//! The queue as the senders see it: which messages are ready to go, and the state changes of
//! their parts as they go out.
//!
//! A part is marked `sending` (durably, with its event) before the modem is given it, so a
//! crash between the two leaves a trace: at the next start such parts become `uncertain` and
//! are reported, never sent again silently (invariant 3). Retry times are written before the
//! next attempt, so a crash cannot make a part wait forever or go early.

use std::collections::HashSet;
use std::sync::LazyLock;

use sqlx::sqlite::{SqliteConnection, SqlitePool};

use super::{QueueError, State, now_ms};

/// A recipient's message with the parts still to send.
#[derive(Debug, Clone)]
pub struct Work {
    pub recipient_id: i64,
    pub request_id: String,
    pub number: String,
    pub encoding: crate::sms::Encoding,
    /// The text of every part of the message, in order (the concatenation header counts them
    /// all, even when only some are still to send).
    pub all_parts: Vec<String>,
    /// The parts still to send, in order.
    pub pending: Vec<PendingPart>,
    /// The channel (modem) that took the latest part already handed over, if any: the rest
    /// of the message should go the same way, because a handset joins the parts of a
    /// concatenated SMS only when they come from the same sender (TS 23.040 §9.2.3.24.1).
    pub sent_on: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PendingPart {
    pub id: i64,
    /// 1-based.
    pub seq: u8,
    pub attempts: i64,
    /// The channel (modem) of the last attempt, to try another one first.
    pub last_channel: Option<String>,
}

/// A state change of one part or of a whole recipient.
#[derive(Debug, Clone)]
pub enum Change {
    /// About to be handed to `channel`.
    Sending { part: i64, channel: String },
    /// The channel took it; `message_ref` is the modem's TP-MR.
    /// `sim` is the IMSI of the SIM that sent it and `sent_at` (Unix ms) when: what a
    /// delivery report is matched by (`reports`).
    Sent {
        part: i64,
        message_ref: Option<i64>,
        sim: Option<String>,
        sent_at: i64,
        reason: String,
    },
    /// A temporary failure: try again at `at` (Unix ms).
    Retry { part: i64, at: i64, reason: String },
    /// Marked `sending` but never written to the modem (its modem stopped first, or the
    /// part before it failed): back in the queue as it was, due at `at` (Unix ms; `None`:
    /// now), without the attempt its `sending` counted.
    Release {
        part: i64,
        at: Option<i64>,
        reason: String,
    },
    /// A permanent failure: this part and every unsent part of its message fail.
    Fail { part: i64, reason: String },
    /// Found `sending` after a crash: it may or may not have left.
    Uncertain { part: i64, reason: String },
    /// Every unsent part of a recipient's message was taken, durably, by the peer site `peer`
    /// (its `submit_sm_resp` arrived), which calls it `remote_id`: from now on the peer sends it,
    /// never this site (`peer::link`).
    Forwarded {
        recipient: i64,
        peer: String,
        remote_id: String,
    },
    /// The SMPP client that submitted this recipient's message acknowledged its delivery
    /// receipt (`peer::server`): it is not owed any more.
    ReceiptSent { recipient: i64 },
    /// The peer that took this recipient's message reported how it ended (a `deliver_sm`
    /// receipt): its parts become `delivered`, or `failed` with the reason.
    PeerReceipt {
        recipient: i64,
        delivered: bool,
        reason: String,
    },
    /// A step of the hand-over of a forwarded message between sites (`peer::handover`).
    HandOver(super::handover::HandOver),
    /// An external SMPP provider took the part (`submit_sm_resp` with its id): `sent`, as from
    /// a modem, with the provider's id kept for its delivery receipts (`queue::provider`).
    ProviderSent {
        part: i64,
        provider: String,
        remote_id: String,
        sent_at: i64,
    },
    /// A provider's delivery receipt for the part it calls any of `keys` (`peer::receipt`):
    /// applied as a modem's status report with TP-ST `tp_st`, or only noted when `None`.
    ProviderReceipt {
        provider: String,
        keys: Vec<String>,
        tp_st: Option<u8>,
        reason: String,
    },
}

/// Decides, for each recipient [`ready`] finds, whether this site's own modems send it. The peer
/// module installs one when the site has peer links (`peer::placement`), so that a message the
/// router gives to another site is left to the link; without one, everything is sent here.
pub trait Placement: Send + Sync {
    /// `source` is the request's `source` column (`smtp`, `imap`, `smpp`, `peer`).
    fn send_here(&self, work: &Work, source: &str) -> bool;
}

static PLACEMENT: std::sync::OnceLock<std::sync::Arc<dyn Placement>> = std::sync::OnceLock::new();

/// Installs the placement for this process (once; a second call is refused and returns false).
pub fn set_placement(p: std::sync::Arc<dyn Placement>) -> bool {
    PLACEMENT.set(p).is_ok()
}

/// One part of a recipient [`ready`] found, with its recipient and request, in the order of
/// the query's `json_array`.
#[derive(serde::Deserialize)]
struct ReadyRow {
    recipient_id: i64,
    request_id: String,
    number: String,
    encoding: String,
    source: String,
    part: i64,
    seq: i64,
    text: String,
    state: String,
    attempts: i64,
    channel: Option<String>,
    next_attempt_at: Option<i64>,
}

/// Recipients with parts ready to send now, oldest first, leaving out those in `busy`.
///
/// One query for the whole list (the recipients, their request's encoding and every part of
/// each), not three per recipient: the feeder asks for every few dozen messages sent, and each
/// query is a round trip to the SQLite driver's own thread. The inner select walks the partial
/// index `parts_ready` (migration 0007) in recipient order, skips the busy recipients there,
/// and stops after `limit` of the others instead of sorting every queued part. Skipping them
/// in the query rather than after it matters: a draining pool's feeder has about as many
/// recipients listed or in flight as it asks for, and each row read costs the reader a page
/// that the writer's last commit took out of its cache. The answer is one row of JSON: the
/// driver hands rows over one at a time, and a runtime thread that drains them faster than
/// SQLite steps was woken once for each.
pub async fn ready(
    pool: &SqlitePool,
    limit: usize,
    busy: &HashSet<i64>,
) -> Result<Vec<Work>, QueueError> {
    let now = now_ms();
    let json: String = sqlx::query_scalar(
        "SELECT json_group_array(json_array(
                    p.recipient_id, r.request_id, r.number, q.encoding, q.source,
                    p.id, p.seq, p.text, p.state, p.attempts, p.channel, p.next_attempt_at)
                ORDER BY p.recipient_id, p.seq)
         FROM (SELECT DISTINCT recipient_id FROM parts INDEXED BY parts_ready
               WHERE state IN ('accepted', 'routed')
                 AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
                 AND recipient_id NOT IN (SELECT value FROM json_each(?3))
               ORDER BY recipient_id LIMIT ?2) due
         JOIN recipients r ON r.id = due.recipient_id
         JOIN requests q ON q.id = r.request_id
         JOIN parts p ON p.recipient_id = due.recipient_id",
    )
    .bind(now)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    // A set of numbers always serializes; the fallback only keeps the query well-formed.
    .bind(serde_json::to_string(busy).unwrap_or_else(|_| "[]".into()))
    .fetch_one(pool)
    .await?;
    let rows: Vec<ReadyRow> =
        serde_json::from_str(&json).map_err(|e| QueueError::Db(sqlx::Error::Decode(e.into())))?;
    let mut out: Vec<Work> = Vec::new();
    // The request's source of each work in `out`, for the placement hook.
    let mut sources: Vec<String> = Vec::new();
    for row in rows {
        let ReadyRow {
            recipient_id: rid,
            request_id,
            number,
            encoding,
            source,
            part,
            seq,
            text,
            state,
            attempts,
            channel,
            next_attempt_at,
        } = row;
        if out.last().is_none_or(|w| w.recipient_id != rid) {
            out.push(Work {
                recipient_id: rid,
                request_id,
                number,
                encoding: if encoding == "ucs2" {
                    crate::sms::Encoding::Ucs2
                } else {
                    crate::sms::Encoding::Gsm7
                },
                all_parts: Vec::new(),
                pending: Vec::new(),
                sent_on: None,
            });
            sources.push(source);
        }
        let Some(work) = out.last_mut() else { continue };
        work.all_parts.push(text);
        let due = next_attempt_at.is_none_or(|at| at <= now);
        if matches!(state.as_str(), "sent" | "delivered" | "uncertain") {
            work.sent_on = channel.clone();
        }
        if (state == "accepted" || state == "routed") && due {
            work.pending.push(PendingPart {
                id: part,
                seq: u8::try_from(seq).unwrap_or(u8::MAX),
                attempts,
                last_channel: channel,
            });
        }
    }
    // Each recipient was chosen for having a due part, so none is empty; keep the guarantee
    // should a part change between the two halves of the query's reading.
    // A message the placement gives to a peer site is left to its link (`peer::placement`).
    let mut sources = sources.into_iter();
    out.retain(|w| {
        let source = sources.next().unwrap_or_default();
        !w.pending.is_empty() && PLACEMENT.get().is_none_or(|p| p.send_here(w, &source))
    });
    Ok(out)
}

/// At start: parts left in `sending` by a crash become `uncertain`. Returns how many.
pub async fn recover(store: &super::Store) -> Result<usize, QueueError> {
    let parts: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, channel FROM parts WHERE state = 'sending'")
            .fetch_all(store.reader())
            .await?;
    for (id, channel) in &parts {
        store
            .change(Change::Uncertain {
                part: *id,
                reason: format!(
                    "the gateway stopped while {} had this part and no answer was recorded; it may or may not have been sent, so it is not sent again",
                    channel.as_deref().unwrap_or("a modem")
                ),
            })
            .await?;
    }
    Ok(parts.len())
}

/// Applies the changes of one job inside the writer's transaction, each with its event row and
/// its recipient's new summary, all or none of them: the job's first statement is the only one
/// bad input can fail (and then nothing is written, so the job fails alone); a failure after it
/// fails the whole batch (`QueueError::Broken`).
///
/// The whole job is one multi-statement query, prepared once per connection and kept (sqlx's
/// statement cache): the SQLite driver runs every query on its connection's own thread, so each
/// query costs two thread hand-offs, which cost more CPU than the statements themselves. The
/// usual jobs (one change, or a modem's `sent` for one part with `sending` for its next) have
/// their text built once; other combinations are built when they come.
pub(super) async fn apply(
    conn: &mut SqliteConnection,
    changes: &[Change],
) -> Result<(), QueueError> {
    if changes.is_empty() {
        return Ok(());
    }
    // Changes of a whole recipient (the peer links') have statements of their own, and a rare
    // combination (a retried part and the rest of its message) has no prepared query: a query
    // per change, all in a savepoint of their own.
    let Some(sql) = static_sql(changes, Wrap::None) else {
        sqlx::query("SAVEPOINT job").execute(&mut *conn).await?;
        for change in changes {
            let r = if change.is_recipient_level() {
                apply_recipient(conn, change).await
            } else {
                Box::pin(apply(conn, std::slice::from_ref(change))).await
            };
            if let Err(e) = r {
                sqlx::query("ROLLBACK TO job; RELEASE job")
                    .execute(&mut *conn)
                    .await?;
                return Err(e);
            }
        }
        sqlx::query("RELEASE job").execute(&mut *conn).await?;
        return Ok(());
    };
    run_static(conn, sql, changes).await
}

/// What a job's query does around its own statements: it may open the writer's transaction
/// (`BEGIN IMMEDIATE`) and close it (`COMMIT`), so that a batch of one modem's job, the usual
/// batch of a draining pool, is one trip to the store's thread instead of three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrap {
    None = 0,
    Begin = 1,
    Commit = 2,
    Both = 3,
}

impl Wrap {
    pub(super) fn new(begin: bool, commit: bool) -> Wrap {
        match (begin, commit) {
            (false, false) => Wrap::None,
            (true, false) => Wrap::Begin,
            (false, true) => Wrap::Commit,
            (true, true) => Wrap::Both,
        }
    }
}

/// The prepared query of a job whose changes have one (a single part-level change, or a
/// modem's `sent` with its next `sending`), wrapped as asked; `None` for any other job.
pub(super) fn static_sql(changes: &[Change], wrap: Wrap) -> Option<&'static str> {
    match changes {
        [c] if !c.is_recipient_level() => SINGLE
            .get(c.kind() as usize)
            .and_then(|v| v.get(wrap as usize))
            .map(String::as_str),
        [Change::Sent { .. }, Change::Sending { .. }] => {
            SENT_THEN_SENDING.get(wrap as usize).map(String::as_str)
        }
        _ => None,
    }
}

/// Runs a job's prepared query ([`static_sql`]) with the changes' parameters.
///
/// On failure, tells apart a job that wrote nothing (its first statement found no such part:
/// `NoSuchPart`, or a part to mark `sending` that is no longer queued: `NotQueued`) from one that may have written part of itself (`Broken`, which fails the whole
/// batch). A wrapped query that fails may leave the transaction open: the caller ends it.
pub(super) async fn run_static(
    conn: &mut SqliteConnection,
    sql: &'static str,
    changes: &[Change],
) -> Result<(), QueueError> {
    let now = now_ms();
    let mut query = sqlx::query(sql);
    for change in changes {
        // Each change's parameters, in the order of `PARAMS_PER_CHANGE`: part, now, reason,
        // what the change carries, and for `sent` the SIM and the time the modem answered.
        query = match change {
            Change::Sending { part, channel } => query
                .bind(*part)
                .bind(now)
                .bind(None::<&str>)
                .bind(channel.as_str())
                .bind(None::<&str>)
                .bind(None::<i64>),
            Change::Sent {
                part,
                message_ref,
                reason,
                sim,
                sent_at,
            } => query
                .bind(*part)
                .bind(now)
                .bind(reason.as_str())
                .bind(*message_ref)
                .bind(sim.as_deref())
                .bind(*sent_at),
            Change::Retry { part, at, reason } => query
                .bind(*part)
                .bind(now)
                .bind(reason.as_str())
                .bind(*at)
                .bind(None::<&str>)
                .bind(None::<i64>),
            Change::Fail { part, reason } => query
                .bind(*part)
                .bind(now)
                .bind(reason.as_str())
                .bind("another part of this message failed for good")
                .bind(None::<&str>)
                .bind(None::<i64>),
            Change::Uncertain { part, reason } => query
                .bind(*part)
                .bind(now)
                .bind(reason.as_str())
                .bind(None::<i64>)
                .bind(None::<&str>)
                .bind(None::<i64>),
            Change::Release { part, at, reason } => query
                .bind(*part)
                .bind(now)
                .bind(reason.as_str())
                .bind(*at)
                .bind(None::<&str>)
                .bind(None::<i64>),
            // Taken aside at the top of this function.
            Change::Forwarded { .. }
            | Change::ReceiptSent { .. }
            | Change::PeerReceipt { .. }
            | Change::ProviderSent { .. }
            | Change::ProviderReceipt { .. }
            | Change::HandOver(_) => query,
        };
    }
    for _ in 0..GAP_PADDING {
        query = query.bind(None::<i64>);
    }
    match query.execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // The usual cause: a part that does not exist; then the first statement failed
            // and nothing was written. Any other failure may leave part of the job written:
            // `commit_batch` then fails the whole batch.
            for change in changes {
                let found: Option<i64> = sqlx::query_scalar("SELECT id FROM parts WHERE id = ?1")
                    .bind(change.part())
                    .fetch_optional(&mut *conn)
                    .await?;
                if found.is_none() {
                    return Err(QueueError::NoSuchPart(change.part()));
                }
            }
            for change in changes {
                if let Change::Sending { part, .. } = change {
                    let queued: Option<i64> = sqlx::query_scalar(
                        "SELECT id FROM parts WHERE id = ?1 AND state IN ('accepted', 'routed')",
                    )
                    .bind(part)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if queued.is_none() {
                        return Err(QueueError::NotQueued(*part));
                    }
                }
            }
            Err(QueueError::Broken(e.to_string()))
        }
    }
}

/// The kinds of change, as indexes into [`SINGLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sending = 0,
    Sent = 1,
    Retry = 2,
    Fail = 3,
    Uncertain = 4,
    Release = 5,
}

impl Change {
    fn kind(&self) -> Kind {
        match self {
            Change::Sending { .. } => Kind::Sending,
            Change::Sent { .. } => Kind::Sent,
            Change::Retry { .. } => Kind::Retry,
            Change::Fail { .. } => Kind::Fail,
            Change::Uncertain { .. } => Kind::Uncertain,
            Change::Release { .. } => Kind::Release,
            // Never asked: `apply` takes recipient-level changes aside before it looks at
            // kinds; a kind is still given so the match stays total without a panic.
            Change::Forwarded { .. }
            | Change::ReceiptSent { .. }
            | Change::PeerReceipt { .. }
            | Change::ProviderSent { .. }
            | Change::ProviderReceipt { .. }
            | Change::HandOver(_) => Kind::Uncertain,
        }
    }

    /// A change of a whole recipient (from the peer links) rather than of one part, or one
    /// with statements of its own (a provider's): applied apart from the usual jobs.
    pub fn is_recipient_level(&self) -> bool {
        matches!(
            self,
            Change::Forwarded { .. }
                | Change::ReceiptSent { .. }
                | Change::PeerReceipt { .. }
                | Change::ProviderSent { .. }
                | Change::ProviderReceipt { .. }
                | Change::HandOver(_)
        )
    }

    /// The part it changes.
    pub fn part(&self) -> i64 {
        match self {
            Change::Sending { part, .. }
            | Change::Sent { part, .. }
            | Change::Retry { part, .. }
            | Change::Fail { part, .. }
            | Change::Uncertain { part, .. }
            | Change::Release { part, .. }
            | Change::ProviderSent { part, .. } => *part,
            // A recipient-level change names no part; 0 is no part's id (ids start at 1).
            Change::Forwarded { .. }
            | Change::ReceiptSent { .. }
            | Change::PeerReceipt { .. }
            | Change::ProviderReceipt { .. }
            | Change::HandOver(_) => 0,
        }
    }
}

/// ?1 the part, ?2 now, ?3 the event's reason, ?4 what the change carries, ?5 and ?6 the SIM
/// and the modem's answer time of a `sent`; the next change's parameters follow from ?7.
const PARAMS_PER_CHANGE: usize = 6;

/// One change's event row as a SELECT, and its statements after the event (the part's UPDATE,
/// then the recipient's summary), parameters from ?1. The event names its request through a
/// subquery, so for a part that does not exist it breaks `NOT NULL`.
fn change_statements(kind: Kind) -> (String, String) {
    let (update, state, reason) = match kind {
        Kind::Sending => (
            "UPDATE parts SET state = 'sending', attempts = attempts + 1, channel = ?4,
                next_attempt_at = NULL, updated_at = ?2
             WHERE id = ?1 AND state IN ('accepted', 'routed')",
            State::Sending,
            "'handed to ' || ?4",
        ),
        Kind::Sent => (
            "UPDATE parts SET state = 'sent', message_ref = ?4, sim = ?5, sent_at = ?6,
                updated_at = ?2 WHERE id = ?1",
            State::Sent,
            "?3",
        ),
        Kind::Retry => (
            "UPDATE parts SET state = 'accepted', next_attempt_at = ?4, updated_at = ?2
            WHERE id = ?1 AND state IN ('sending', 'accepted', 'routed')",
            State::Accepted,
            "?3",
        ),
        // The message cannot be whole any more: its unsent parts fail with it, each with its
        // event (written before their state changes, since it finds them by state).
        Kind::Fail => (
            "UPDATE parts SET state = 'failed', updated_at = ?2 WHERE id = ?1;
             INSERT INTO events (at, request_id, recipient_id, part_id, state, reason)
             SELECT ?2, r.request_id, r.id, p.id, 'failed', ?4
             FROM parts p JOIN recipients r ON r.id = p.recipient_id
             WHERE p.recipient_id = (SELECT recipient_id FROM parts WHERE id = ?1)
               AND p.id != ?1 AND p.state IN ('accepted', 'routed');
             UPDATE parts SET state = 'failed', updated_at = ?2
             WHERE recipient_id = (SELECT recipient_id FROM parts WHERE id = ?1)
               AND id != ?1 AND state IN ('accepted', 'routed')",
            State::Failed,
            "?3",
        ),
        // ?4 is NULL: `coalesce` keeps it in the statement so the numbering stays the same.
        Kind::Uncertain => (
            "UPDATE parts SET state = 'uncertain', updated_at = coalesce(?4, ?2) WHERE id = ?1",
            State::Uncertain,
            "?3",
        ),
        // Undoes a `sending` whose part never reached the modem, attempt included.
        Kind::Release => (
            "UPDATE parts SET state = 'accepted', attempts = max(attempts - 1, 0),
                next_attempt_at = ?4, updated_at = ?2 WHERE id = ?1",
            State::Accepted,
            "?3",
        ),
    };
    // Only a queued part can be marked `sending`: for any other, the request is NULL and the
    // job fails there, having written nothing (`run_static` tells it apart: `NotQueued`).
    // A retry puts back a part that was tried or waits with it, never one that ended (a part
    // failed by an earlier part's report stays failed): it has no event then, and no update.
    let (queued, only) = match kind {
        Kind::Sending => (" AND p.state IN ('accepted', 'routed')", ""),
        Kind::Retry => (
            "",
            " WHERE EXISTS (SELECT 1 FROM parts WHERE id = ?1
                            AND state IN ('sending', 'accepted', 'routed'))",
        ),
        _ => ("", ""),
    };
    let event = format!(
        "SELECT ?2, (SELECT r.request_id FROM parts p JOIN recipients r ON r.id = p.recipient_id
                     WHERE p.id = ?1{queued}),
                (SELECT recipient_id FROM parts WHERE id = ?1), ?1, '{state}', {reason}{only}"
    );
    // Only these can leave a recipient sent, failed or uncertain (delivered comes from a
    // report): the reply they may owe is written by the same query.
    let reply = match kind {
        Kind::Sent | Kind::Fail | Kind::Uncertain => {
            format!(";\n{}", super::replies::RECORD_SQL)
        }
        Kind::Sending | Kind::Retry | Kind::Release => String::new(),
    };
    (event, format!("{update};\n{}{reply}", &*SUMMARY_SQL))
}

/// `sql` with every parameter `?n` renumbered `?(n + by)`.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '?' {
            continue;
        }
        let mut n = 0usize;
        let mut digits = false;
        while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
            n = n * 10 + d as usize;
            digits = true;
            chars.next();
        }
        if digits {
            out.push_str(&(n + by).to_string());
        }
    }
    out
}

/// One job's query: first every event row of the job in one INSERT, the only statement that
/// fails on a part that does not exist (and then writes nothing), then each change's
/// statements in order.
///
/// No savepoint: SQLite copies every page a savepoint's statements touch into a sub-journal
/// (spilled to a temporary file past 64 KiB), which cost a fifth of the gateway's CPU in
/// `bench/modems`. A job whose first statement fails has written nothing; one that fails
/// later fails its whole batch (see `commit_batch`).
fn job_sql(kinds: &[Kind]) -> String {
    let (events, rest): (Vec<String>, Vec<String>) = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let (event, rest) = change_statements(*k);
            let by = i * PARAMS_PER_CHANGE;
            (shift_params(&event, by), shift_params(&rest, by))
        })
        .unzip();
    format!(
        "INSERT INTO events (at, request_id, recipient_id, part_id, state, reason)
         {};
         {}",
        events.join("\n UNION ALL "),
        rest.join(";\n")
    )
}

/// Spare arguments after a job's own: at least the number of parameter numbers its
/// statements leave unused (at most 6 per statement of a two-change job).
const GAP_PADDING: usize = 48;

/// `sql` in each [`Wrap`], in the order of its values.
fn wrapped(sql: String) -> [String; 4] {
    let sql = sql.trim_end().trim_end_matches(';').to_string();
    [
        sql.clone(),
        format!("BEGIN IMMEDIATE;\n{sql}"),
        format!("{sql};\nCOMMIT"),
        format!("BEGIN IMMEDIATE;\n{sql};\nCOMMIT"),
    ]
}

static SINGLE: LazyLock<[[String; 4]; 6]> = LazyLock::new(|| {
    [
        Kind::Sending,
        Kind::Sent,
        Kind::Retry,
        Kind::Fail,
        Kind::Uncertain,
        Kind::Release,
    ]
    .map(|k| wrapped(job_sql(&[k])))
});

/// A modem's usual job: the part it just sent is `sent`, the next one it takes `sending`.
static SENT_THEN_SENDING: LazyLock<[String; 4]> =
    LazyLock::new(|| wrapped(job_sql(&[Kind::Sent, Kind::Sending])));

/// Sets the state of the recipient of part ?1 (at ?2) to the summary of its parts' states, by
/// the rule of [`summarise`], written in SQL from the same precedence list.
pub(super) static SUMMARY_SQL: LazyLock<String> =
    LazyLock::new(|| summary_sql("= (SELECT recipient_id FROM parts WHERE id = ?1)", "?2"));

/// [`SUMMARY_SQL`] for the recipients whose id is `which` (`= …` or `IN (…)`), at `now`.
fn summary_sql(which: &str, now: &str) -> String {
    let cases: String = PRECEDENCE
        .iter()
        .map(|s| format!("WHEN sum(p.state = '{s}') > 0 THEN '{s}' "))
        .collect();
    format!(
        "UPDATE recipients SET updated_at = {now}, state = (
            SELECT CASE WHEN count(*) = 0 THEN '{}' {cases}ELSE '{}' END
            FROM parts p WHERE p.recipient_id = recipients.id)
         WHERE id {which}",
        State::Accepted,
        State::Delivered
    )
}

/// One `sent` or `sending` change of a batch of them, as [`SENDS_SQL`] reads it.
#[derive(serde::Serialize)]
struct SendRow<'a> {
    part: i64,
    state: &'static str,
    /// The `sent` event's reason, or the channel a `sending` part is handed to.
    reason: &'a str,
    message_ref: Option<i64>,
    sim: Option<&'a str>,
    sent_at: Option<i64>,
}

/// A batch of jobs made only of `sent` and `sending` changes (the modems' own: one part sent,
/// the next taken), each naming a part no other change of the batch names, as the JSON that
/// [`SENDS_SQL`] reads; `None` for any other batch, which goes job by job.
pub(super) fn sends_json<'a>(jobs: impl IntoIterator<Item = &'a [Change]>) -> Option<String> {
    let mut rows = Vec::new();
    let mut parts = HashSet::new();
    for change in jobs.into_iter().flatten() {
        let row = match change {
            Change::Sending { part, channel } => SendRow {
                part: *part,
                state: State::Sending.as_str(),
                reason: channel,
                message_ref: None,
                sim: None,
                sent_at: None,
            },
            Change::Sent {
                part,
                message_ref,
                reason,
                sim,
                sent_at,
            } => SendRow {
                part: *part,
                state: State::Sent.as_str(),
                reason,
                message_ref: *message_ref,
                sim: sim.as_deref(),
                sent_at: Some(*sent_at),
            },
            _ => return None,
        };
        if !parts.insert(row.part) {
            return None;
        }
        rows.push(row);
    }
    serde_json::to_string(&SendBatch {
        now: now_ms(),
        changes: rows,
    })
    .ok()
}

/// The whole of [`SENDS_SQL`]'s ?1: the time of the batch and its changes in order.
#[derive(serde::Serialize)]
struct SendBatch<'a> {
    now: i64,
    changes: Vec<SendRow<'a>>,
}

/// A batch of `sent` and `sending` changes ([`sends_json`], ?1) in one transaction and one trip
/// to the store's thread: in a draining pool, several modems' jobs share each commit, and a
/// trip per job cost two thread wake-ups per job. It writes what the jobs' own queries
/// ([`static_sql`]) write one after the other: every change's event in order, the parts, then
/// each recipient's summary and the reply a `sent` may owe.
///
/// A change of a part that does not exist, or a `sending` of a part no longer queued, breaks
/// the events' `NOT NULL` and fails the whole query, which may leave the transaction open: the caller rolls back and goes job by job.
/// The JSON is read once ([`super::STAGE_SQL`]).
pub(super) static SENDS_SQL: LazyLock<String> = LazyLock::new(|| {
    let staged = super::STAGED;
    let changes = format!("jsonb_each({staged}, '$.changes') c");
    let now = format!("({staged} ->> '$.now')");
    let part = "(c.value ->> 'part')";
    let touched =
        format!("IN (SELECT p.recipient_id FROM {changes} CROSS JOIN parts p ON p.id = {part})");
    let sent = format!(
        "IN (SELECT p.recipient_id FROM {changes} CROSS JOIN parts p ON p.id = {part}
             WHERE c.value ->> 'state' = 'sent')"
    );
    format!(
        "BEGIN IMMEDIATE;
         {};
         INSERT INTO events (at, request_id, recipient_id, part_id, state, reason)
         SELECT {now}, (SELECT r.request_id FROM parts p JOIN recipients r ON r.id = p.recipient_id
                        WHERE p.id = {part} AND (c.value ->> 'state' = 'sent'
                                                 OR p.state IN ('accepted', 'routed'))),
                (SELECT recipient_id FROM parts WHERE id = {part}), {part}, c.value ->> 'state',
                CASE c.value ->> 'state' WHEN 'sending' THEN 'handed to ' || (c.value ->> 'reason')
                     ELSE c.value ->> 'reason' END
         FROM {changes} ORDER BY c.key;
         UPDATE parts SET state = 'sent', message_ref = c.value ->> 'message_ref',
                sim = c.value ->> 'sim', sent_at = c.value ->> 'sent_at', updated_at = {now}
         FROM {changes} WHERE c.value ->> 'state' = 'sent' AND parts.id = {part};
         UPDATE parts SET state = 'sending', attempts = attempts + 1, channel = c.value ->> 'reason',
                next_attempt_at = NULL, updated_at = {now}
         FROM {changes} WHERE c.value ->> 'state' = 'sending' AND parts.id = {part}
                          AND parts.state IN ('accepted', 'routed');
         {};
         {};
         COMMIT",
        super::STAGE_SQL,
        summary_sql(&touched, &now),
        super::replies::record_many_sql(&sent, &now),
    )
});

/// Runs [`SENDS_SQL`] on a batch's JSON ([`sends_json`]).
pub(super) async fn run_sends(conn: &mut SqliteConnection, json: String) -> Result<(), QueueError> {
    sqlx::query(sqlx::AssertSqlSafe(SENDS_SQL.as_str()))
        .bind(json)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Which part state decides the recipient's, first match first: a failed or uncertain part
/// makes the whole message so, a held one holds it; otherwise the least advanced part decides.
const PRECEDENCE: [State; 7] = [
    State::Failed,
    State::Uncertain,
    State::Held,
    State::Accepted,
    State::Routed,
    State::Sending,
    State::Sent,
];

/// A recipient's state summarises its parts': the least advanced part decides, except that a
/// failed or uncertain part makes the whole message so; every part delivered is delivered.
pub fn summarise(parts: &[State]) -> State {
    if parts.is_empty() {
        return State::Accepted;
    }
    PRECEDENCE
        .into_iter()
        .find(|s| parts.contains(s))
        .unwrap_or(State::Delivered)
}

/// Applies a recipient-level change (see [`Change::is_recipient_level`]) with its events.
async fn apply_recipient(conn: &mut SqliteConnection, change: &Change) -> Result<(), QueueError> {
    let now = now_ms();
    match change {
        Change::Forwarded {
            recipient,
            peer,
            remote_id,
        } => apply_forwarded(conn, *recipient, peer, remote_id).await,
        Change::HandOver(h) => super::handover::apply(conn, h).await,
        Change::PeerReceipt {
            recipient,
            delivered,
            reason,
        } => {
            let state = if *delivered {
                State::Delivered
            } else {
                State::Failed
            };
            let parts: Vec<i64> = sqlx::query_scalar(
                "UPDATE parts SET state = ?2, updated_at = ?3
                 WHERE recipient_id = ?1 AND state = 'sent' RETURNING id",
            )
            .bind(recipient)
            .bind(state.as_str())
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
            for p in &parts {
                super::reports::event(conn, *p, state, reason, now).await?;
            }
            if let Some(first) = parts.first() {
                peer_refresh_recipient(conn, *first, now).await?;
                // The sender's status reply is owed here, with the state it reports, exactly
                // as for a status report from this site's own modem (`reports::apply`).
                super::replies::record(conn, *first, now).await?;
            }
            Ok(())
        }
        Change::ProviderSent {
            part,
            provider,
            remote_id,
            sent_at,
        } => super::provider::sent(conn, *part, provider, remote_id, *sent_at).await,
        Change::ProviderReceipt {
            provider,
            keys,
            tp_st,
            reason,
        } => super::provider::receipt(conn, provider, keys, *tp_st, reason).await,
        Change::ReceiptSent { recipient } => {
            sqlx::query(
                "INSERT INTO smpp_receipts (recipient_id, state, sent_at)
                 SELECT id, state, ?2 FROM recipients WHERE id = ?1
                 ON CONFLICT (recipient_id) DO NOTHING",
            )
            .bind(recipient)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// [`Change::Forwarded`]: the parts become `sent` through `peer:<name>`, with the peer's id
/// kept in `forwards` so its delivery receipts find the message again.
async fn apply_forwarded(
    conn: &mut SqliteConnection,
    recipient: i64,
    peer: &str,
    remote_id: &str,
) -> Result<(), QueueError> {
    let now = now_ms();
    let parts: Vec<i64> = sqlx::query_scalar(
        "UPDATE parts SET state = 'sent', channel = ?2, next_attempt_at = NULL, updated_at = ?3
         WHERE recipient_id = ?1 AND state IN ('accepted', 'routed') RETURNING id",
    )
    .bind(recipient)
    .bind(format!("peer:{peer}"))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO forwards (recipient_id, peer, remote_id, forwarded_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (recipient_id) DO UPDATE SET peer = ?2, remote_id = ?3, forwarded_at = ?4",
    )
    .bind(recipient)
    .bind(peer)
    .bind(remote_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let reason = format!("forwarded to site {peer}, which stored it as {remote_id} and sends it");
    for p in &parts {
        super::reports::event(conn, *p, State::Sent, &reason, now).await?;
    }
    if let Some(first) = parts.first() {
        peer_refresh_recipient(conn, *first, now).await?;
    }
    Ok(())
}

async fn peer_refresh_recipient(
    conn: &mut SqliteConnection,
    part: i64,
    now: i64,
) -> Result<(), QueueError> {
    let rid: i64 = sqlx::query_scalar("SELECT recipient_id FROM parts WHERE id = ?1")
        .bind(part)
        .fetch_one(&mut *conn)
        .await?;
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM parts WHERE recipient_id = ?1")
        .bind(rid)
        .fetch_all(&mut *conn)
        .await?;
    let states: Vec<State> = states.iter().filter_map(|s| s.parse().ok()).collect();
    sqlx::query("UPDATE recipients SET state = ?2, updated_at = ?3 WHERE id = ?1")
        .bind(rid)
        .bind(summarise(&states).as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn recipient_state_summarises_parts() {
        let cases: &[(&[State], State)] = &[
            (&[Accepted, Accepted], Accepted),
            (&[Sent, Accepted], Accepted),
            (&[Sent, Sending], Sending),
            (&[Sent, Sent, Sent], Sent),
            (&[Delivered, Sent], Sent),
            (&[Delivered, Delivered], Delivered),
            (&[Delivered, Failed], Failed),
            (&[Sent, Uncertain, Accepted], Uncertain),
            (&[Uncertain, Failed], Failed),
        ];
        for (parts, want) in cases {
            assert_eq!(summarise(parts), *want, "{parts:?}");
        }
    }
}
