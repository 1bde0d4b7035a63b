//! What an external SMPP provider's answers change in the queue, inside the writer's
//! transaction: a part it took (`submit_sm_resp` with its id), and its delivery receipts.
//!
//! A taken part is recorded as a modem's `sent` ([`Change::Sent`], with its event, summary and
//! owed status reply), plus the provider's id in `provider_parts` (migration 0010), all in one
//! transaction, so a receipt that comes right after finds it. A receipt goes down the modems'
//! report path (`reports::update_part`) with the TP-ST a modem's status report would carry for
//! the same outcome, so a provider's "delivered" or "undeliverable" reaches the sender exactly
//! as a modem's status report does.

use sqlx::sqlite::SqliteConnection;
use tracing::{info, warn};

use super::dispatch::{self, Change};
use super::{QueueError, State, now_ms};

/// [`Change::ProviderSent`].
pub(super) async fn sent(
    conn: &mut SqliteConnection,
    part: i64,
    provider: &str,
    remote_id: &str,
    sent_at: i64,
) -> Result<(), QueueError> {
    let sent = [Change::Sent {
        part,
        message_ref: None,
        sim: None,
        sent_at,
        reason: format!("taken by SMPP provider {provider} as {remote_id}"),
    }];
    // Boxed: `dispatch::apply` is what called here.
    Box::pin(dispatch::apply(conn, &sent)).await?;
    sqlx::query(
        "INSERT INTO provider_parts (part_id, provider, remote_id, remote_key, submitted_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (part_id) DO UPDATE SET provider = ?2, remote_id = ?3, remote_key = ?4,
             submitted_at = ?5",
    )
    .bind(part)
    .bind(provider)
    .bind(remote_id)
    .bind(crate::peer::receipt::key(remote_id))
    .bind(sent_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// [`Change::ProviderReceipt`]: finds the part by the provider's id (any of `keys`, the first
/// preferred) and applies the outcome. A receipt that matches nothing changes nothing; it is
/// logged, and acknowledged all the same (the provider would only send it again).
pub(super) async fn receipt(
    conn: &mut SqliteConnection,
    provider: &str,
    keys: &[String],
    tp_st: Option<u8>,
    sentence: &str,
) -> Result<(), QueueError> {
    let mut part = None;
    for k in keys {
        // The latest part under this id: a provider that reuses ids reuses old ones.
        part = sqlx::query_scalar(
            "SELECT part_id FROM provider_parts WHERE provider = ?1 AND remote_key = ?2
             ORDER BY submitted_at DESC LIMIT 1",
        )
        .bind(provider)
        .bind(k)
        .fetch_optional(&mut *conn)
        .await?;
        if part.is_some() {
            break;
        }
    }
    let Some(part) = part else {
        warn!(provider, ids = ?keys, "delivery receipt for no part sent through this provider: {sentence}");
        return Ok(());
    };
    let now = now_ms();
    match tp_st {
        Some(st) => {
            // Boxed: it may call `dispatch::apply`, which called here.
            let applied =
                Box::pin(super::reports::update_part(conn, part, st, sentence, now)).await?;
            info!(provider, part, ?applied, "provider delivery receipt");
        }
        None => {
            // Not final (en route, accepted by customer service, unknown): noted only.
            let state: String = sqlx::query_scalar("SELECT state FROM parts WHERE id = ?1")
                .bind(part)
                .fetch_one(&mut *conn)
                .await?;
            let state: State = state.parse().unwrap_or(State::Sent);
            super::reports::event(
                conn,
                part,
                state,
                &format!("{sentence} (not a final outcome)"),
                now,
            )
            .await?;
        }
    }
    Ok(())
}
