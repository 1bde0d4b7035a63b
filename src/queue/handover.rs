//! The records of the hand-over of forwarded messages between sites (migration 0011), written
//! by the queue's one writer like every other state change, with their event rows.
//!
//! The protocol and why it keeps a message from being sent by two sites is in
//! `peer::handover`; this module only writes what it decided:
//!
//! - at the origin, [`HandOver::TakenBack`]: a message forwarded to a peer that never
//!   acknowledged it is taken back, and never given to that peer again;
//! - at the receiving site, [`HandOver::Held`] (an event, so `mail2sms status` says what the
//!   message waits for), [`HandOver::Released`] (the origin confirmed: it may be sent here) and
//!   [`HandOver::Dropped`] (the origin took it back: it fails here with the reason, and no
//!   delivery receipt is owed for it).

use sqlx::sqlite::SqliteConnection;

use super::{QueueError, State, now_ms};

/// One hand-over decision about one recipient's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOver {
    /// Origin: `peer` never acknowledged this message; this site took it back.
    TakenBack { recipient: i64, peer: String },
    /// Receiving site: held until `peer`, the origin, confirms it.
    Held { recipient: i64, peer: String },
    /// Receiving site: `peer` confirmed the message is this site's.
    Released { recipient: i64, peer: String },
    /// Receiving site: `peer` took the message back (or does not know it).
    Dropped {
        recipient: i64,
        peer: String,
        reason: String,
    },
}

impl HandOver {
    pub fn recipient(&self) -> i64 {
        match self {
            HandOver::TakenBack { recipient, .. }
            | HandOver::Held { recipient, .. }
            | HandOver::Released { recipient, .. }
            | HandOver::Dropped { recipient, .. } => *recipient,
        }
    }
}

/// Writes `h` and its events, inside the writer's transaction.
pub(super) async fn apply(conn: &mut SqliteConnection, h: &HandOver) -> Result<(), QueueError> {
    let now = now_ms();
    match h {
        HandOver::TakenBack { recipient, peer } => {
            let done = sqlx::query(
                "INSERT INTO handovers_out (recipient_id, peer, taken_back_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (recipient_id, peer) DO NOTHING",
            )
            .bind(recipient)
            .bind(peer)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() > 0 {
                let reason = format!(
                    "taken back from site {peer}, which did not acknowledge it before its link was lost; it is never given to that site again"
                );
                events(conn, *recipient, None, &reason, now).await?;
            }
        }
        HandOver::Held { recipient, peer } => {
            let done = sqlx::query(
                "INSERT INTO handovers_in (recipient_id, peer, state, updated_at)
                 VALUES (?1, ?2, 'held', ?3) ON CONFLICT (recipient_id) DO NOTHING",
            )
            .bind(recipient)
            .bind(peer)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() > 0 {
                let reason = format!(
                    "held: site {peer} forwarded it and has not yet confirmed that this site sends it; asking"
                );
                events(conn, *recipient, None, &reason, now).await?;
            }
        }
        HandOver::Released { recipient, peer } => {
            let done = set_in(conn, *recipient, peer, "released", now).await?;
            if done {
                let reason =
                    format!("released: site {peer} confirmed that this site sends the message");
                events(conn, *recipient, None, &reason, now).await?;
            }
        }
        HandOver::Dropped {
            recipient,
            peer,
            reason,
        } => {
            if set_in(conn, *recipient, peer, "dropped", now).await? {
                let parts: Vec<i64> = sqlx::query_scalar(
                    "UPDATE parts SET state = 'failed', next_attempt_at = NULL, updated_at = ?2
                     WHERE recipient_id = ?1 AND state IN ('accepted', 'routed') RETURNING id",
                )
                .bind(recipient)
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
                for p in &parts {
                    super::reports::event(conn, *p, State::Failed, reason, now).await?;
                }
                sqlx::query(
                    "UPDATE recipients SET state = 'failed', updated_at = ?2 WHERE id = ?1",
                )
                .bind(recipient)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                // The origin sends it, or sent it: a receipt from here would report a message
                // this site never had the right to send.
                sqlx::query(
                    "INSERT INTO smpp_receipts (recipient_id, state, sent_at) VALUES (?1, 'failed', ?2)
                     ON CONFLICT (recipient_id) DO NOTHING",
                )
                .bind(recipient)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

/// Moves a held (or never recorded) message to `state`; false when it was decided already,
/// so a verdict heard twice changes nothing the second time.
async fn set_in(
    conn: &mut SqliteConnection,
    recipient: i64,
    peer: &str,
    state: &str,
    now: i64,
) -> Result<bool, QueueError> {
    let done = sqlx::query(
        "INSERT INTO handovers_in (recipient_id, peer, state, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (recipient_id) DO UPDATE SET state = ?3, updated_at = ?4
         WHERE handovers_in.state = 'held'",
    )
    .bind(recipient)
    .bind(peer)
    .bind(state)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// An event row for each part of `recipient` (the parts are what `status` lists events of).
async fn events(
    conn: &mut SqliteConnection,
    recipient: i64,
    state: Option<State>,
    reason: &str,
    now: i64,
) -> Result<(), QueueError> {
    let parts: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, state FROM parts WHERE recipient_id = ?1 ORDER BY seq")
            .bind(recipient)
            .fetch_all(&mut *conn)
            .await?;
    for (p, s) in parts {
        let st = state.or_else(|| s.parse().ok()).unwrap_or(State::Accepted);
        super::reports::event(conn, p, st, reason, now).await?;
    }
    Ok(())
}
