//! The queue as the senders see it: which messages are ready to go, and the state changes of
//! their parts as they go out.
//!
//! A part is marked `sending` (durably, with its event) before the modem is given it, so a
//! crash between the two leaves a trace: at the next start such parts become `uncertain` and
//! are reported, never sent again silently (invariant 3). Retry times are written before the
//! next attempt, so a crash cannot make a part wait forever or go early.

use std::collections::HashSet;

use sqlx::Row;
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
    Sent {
        part: i64,
        message_ref: Option<i64>,
        reason: String,
    },
    /// A temporary failure: try again at `at` (Unix ms).
    Retry { part: i64, at: i64, reason: String },
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

/// Recipients with parts ready to send now, oldest first, leaving out those in `busy`.
pub async fn ready(
    pool: &SqlitePool,
    limit: usize,
    busy: &HashSet<i64>,
) -> Result<Vec<Work>, QueueError> {
    let now = now_ms();
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT recipient_id FROM parts
         WHERE state IN ('accepted', 'routed') AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
         ORDER BY recipient_id LIMIT ?2",
    )
    .bind(now)
    .bind((limit + busy.len()) as i64)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for rid in ids.into_iter().filter(|id| !busy.contains(id)).take(limit) {
        let head = sqlx::query(
            "SELECT r.request_id, r.number, q.encoding, q.source FROM recipients r
             JOIN requests q ON q.id = r.request_id WHERE r.id = ?1",
        )
        .bind(rid)
        .fetch_one(pool)
        .await?;
        let parts = sqlx::query(
            "SELECT id, seq, text, state, attempts, channel, next_attempt_at
             FROM parts WHERE recipient_id = ?1 ORDER BY seq",
        )
        .bind(rid)
        .fetch_all(pool)
        .await?;
        let encoding: String = head.get(2);
        let mut work = Work {
            recipient_id: rid,
            request_id: head.get(0),
            number: head.get(1),
            encoding: if encoding == "ucs2" {
                crate::sms::Encoding::Ucs2
            } else {
                crate::sms::Encoding::Gsm7
            },
            all_parts: Vec::with_capacity(parts.len()),
            pending: Vec::new(),
            sent_on: None,
        };
        for p in &parts {
            work.all_parts.push(p.get(2));
            let state: String = p.get(3);
            let due = p.get::<Option<i64>, _>(6).is_none_or(|at| at <= now);
            if matches!(state.as_str(), "sent" | "delivered" | "uncertain") {
                work.sent_on = p.get(5);
            }
            if (state == "accepted" || state == "routed") && due {
                work.pending.push(PendingPart {
                    id: p.get(0),
                    seq: u8::try_from(p.get::<i64, _>(1)).unwrap_or(u8::MAX),
                    attempts: p.get(4),
                    last_channel: p.get(5),
                });
            }
        }
        let source: String = head.get(3);
        if !work.pending.is_empty() && PLACEMENT.get().is_none_or(|p| p.send_here(&work, &source)) {
            out.push(work);
        }
    }
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

/// Applies one change inside the writer's transaction, with its event row.
pub(super) async fn apply(conn: &mut SqliteConnection, change: &Change) -> Result<(), QueueError> {
    let now = now_ms();
    let (part, state, reason) = match change {
        Change::Forwarded {
            recipient,
            peer,
            remote_id,
        } => return apply_forwarded(conn, *recipient, peer, remote_id).await,
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
                event(conn, *p, state, reason, now).await?;
            }
            if let Some(first) = parts.first() {
                refresh_recipient(conn, *first, now).await?;
            }
            return Ok(());
        }
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
            return Ok(());
        }
        Change::Sending { part, channel } => {
            sqlx::query(
                "UPDATE parts SET state = 'sending', attempts = attempts + 1, channel = ?2,
                    next_attempt_at = NULL, updated_at = ?3 WHERE id = ?1",
            )
            .bind(part)
            .bind(channel)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            (*part, State::Sending, format!("handed to {channel}"))
        }
        Change::Sent {
            part,
            message_ref,
            reason,
        } => {
            sqlx::query(
                "UPDATE parts SET state = 'sent', message_ref = ?2, updated_at = ?3 WHERE id = ?1",
            )
            .bind(part)
            .bind(message_ref)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            (*part, State::Sent, reason.clone())
        }
        Change::Retry { part, at, reason } => {
            sqlx::query(
                "UPDATE parts SET state = 'accepted', next_attempt_at = ?2, updated_at = ?3 WHERE id = ?1",
            )
            .bind(part)
            .bind(at)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            (*part, State::Accepted, reason.clone())
        }
        Change::Fail { part, reason } => {
            sqlx::query("UPDATE parts SET state = 'failed', updated_at = ?2 WHERE id = ?1")
                .bind(part)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            // The message cannot be whole any more: its unsent parts fail with it.
            let siblings: Vec<i64> = sqlx::query_scalar(
                "UPDATE parts SET state = 'failed', updated_at = ?2
                 WHERE recipient_id = (SELECT recipient_id FROM parts WHERE id = ?1)
                   AND id != ?1 AND state IN ('accepted', 'routed')
                 RETURNING id",
            )
            .bind(part)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
            for s in siblings {
                event(
                    conn,
                    s,
                    State::Failed,
                    "another part of this message failed for good",
                    now,
                )
                .await?;
            }
            (*part, State::Failed, reason.clone())
        }
        Change::Uncertain { part, reason } => {
            sqlx::query("UPDATE parts SET state = 'uncertain', updated_at = ?2 WHERE id = ?1")
                .bind(part)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            (*part, State::Uncertain, reason.clone())
        }
    };
    event(conn, part, state, &reason, now).await?;
    refresh_recipient(conn, part, now).await
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
        event(conn, *p, State::Sent, &reason, now).await?;
    }
    if let Some(first) = parts.first() {
        refresh_recipient(conn, *first, now).await?;
    }
    Ok(())
}

async fn event(
    conn: &mut SqliteConnection,
    part: i64,
    state: State,
    reason: &str,
    now: i64,
) -> Result<(), QueueError> {
    sqlx::query(
        "INSERT INTO events (at, request_id, recipient_id, part_id, state, reason)
         SELECT ?1, r.request_id, r.id, p.id, ?3, ?4
         FROM parts p JOIN recipients r ON r.id = p.recipient_id WHERE p.id = ?2",
    )
    .bind(now)
    .bind(part)
    .bind(state.as_str())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A recipient's state summarises its parts': the least advanced part decides, except that a
/// failed or uncertain part makes the whole message so.
pub fn summarise(parts: &[State]) -> State {
    use State::*;
    if parts.contains(&Failed) {
        return Failed;
    }
    if parts.contains(&Uncertain) {
        return Uncertain;
    }
    if parts.contains(&Held) {
        return Held;
    }
    for s in [Accepted, Routed, Sending, Sent] {
        if parts.contains(&s) {
            return s;
        }
    }
    if parts.is_empty() {
        Accepted
    } else {
        Delivered
    }
}

async fn refresh_recipient(
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
