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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Accepted, Change, NewRecipient, NewRequest, Source, Store};
    use crate::sms::Encoding;

    /// A message site `uk` forwarded here, as the SMPP server stores it.
    fn forwarded(origin_id: &str, number: &str) -> NewRequest {
        NewRequest {
            source: Source::Peer,
            client: Some("uk".into()),
            helo: None,
            auth_user: Some("uk".into()),
            mail_from: "smpp:uk".into(),
            sender: "smpp:uk".into(),
            sender_domain: String::new(),
            message_id: Some(origin_id.into()),
            subject: None,
            dsn_envid: None,
            dsn_ret: None,
            text: "Bonjour".into(),
            encoding: Encoding::Gsm7,
            parts: vec!["Bonjour".into()],
            truncated: false,
            size: 7,
            headers: Vec::new(),
            recipients: vec![NewRecipient {
                address: number.into(),
                number: number.into(),
                name: None,
                country: None,
                dsn_notify: None,
                dsn_orcpt: None,
            }],
        }
    }

    async fn row(store: &Store, rid: i64) -> (String, Option<String>, i64, i64) {
        sqlx::query_as(
            "SELECT r.state, (SELECT state FROM handovers_in WHERE recipient_id = r.id),
                    (SELECT COUNT(*) FROM smpp_receipts WHERE recipient_id = r.id),
                    (SELECT COUNT(*) FROM events WHERE recipient_id = r.id)
             FROM recipients r WHERE r.id = ?1",
        )
        .bind(rid)
        .fetch_one(store.reader())
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_first_decision_about_a_held_message_stands() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        let mut rids = Vec::new();
        for (i, n) in ["+33612340001", "+33612340002"].iter().enumerate() {
            let a = store
                .accept(forwarded(&format!("01ORIGIN/{i}"), n))
                .await
                .unwrap();
            assert!(matches!(a, Accepted::Queued { .. }));
            rids.push(
                sqlx::query_scalar::<_, i64>("SELECT MAX(id) FROM recipients")
                    .fetch_one(store.reader())
                    .await
                    .unwrap(),
            );
        }
        let (a, b) = (rids[0], rids[1]);
        let h = |x: HandOver| Change::HandOver(x);
        let (_, _, _, events0) = row(&store, a).await;
        // Held (first asking): an event, no state change; a second time adds nothing.
        for _ in 0..2 {
            store
                .change(h(HandOver::Held {
                    recipient: a,
                    peer: "uk".into(),
                }))
                .await
                .unwrap();
        }
        assert_eq!(
            row(&store, a).await,
            ("accepted".into(), Some("held".into()), 0, events0 + 1)
        );
        // Released: may be sent; a later "not yours" changes nothing.
        store
            .changes(vec![
                h(HandOver::Released {
                    recipient: a,
                    peer: "uk".into(),
                }),
                h(HandOver::Dropped {
                    recipient: a,
                    peer: "uk".into(),
                    reason: "dropped".into(),
                }),
            ])
            .await
            .unwrap();
        assert_eq!(
            row(&store, a).await,
            ("accepted".into(), Some("released".into()), 0, events0 + 2)
        );
        // Dropped without being asked first: failed, and no receipt owed; a later "yours"
        // changes nothing.
        let (_, _, _, events_b) = row(&store, b).await;
        for change in [
            HandOver::Dropped {
                recipient: b,
                peer: "uk".into(),
                reason: "dropped: site uk took the message back".into(),
            },
            HandOver::Released {
                recipient: b,
                peer: "uk".into(),
            },
        ] {
            store.change(h(change)).await.unwrap();
        }
        assert_eq!(
            row(&store, b).await,
            ("failed".into(), Some("dropped".into()), 1, events_b + 1)
        );
        // Taken back at an origin: recorded once per peer.
        for peer in ["fr", "fr", "de"] {
            store
                .change(h(HandOver::TakenBack {
                    recipient: a,
                    peer: peer.into(),
                }))
                .await
                .unwrap();
        }
        let peers: Vec<String> = sqlx::query_scalar(
            "SELECT peer FROM handovers_out WHERE recipient_id = ?1 ORDER BY peer",
        )
        .bind(a)
        .fetch_all(store.reader())
        .await
        .unwrap();
        assert_eq!(peers, ["de", "fr"]);
    }
}
