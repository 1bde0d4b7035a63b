//! Sending limits enforced where requests are committed: quotas and the SMS-pumping guard.
//!
//! Both run inside the writer's transaction, one request after another, so two sessions of the
//! same sender cannot both squeeze under a limit: a quota is exact, and the guard sees every
//! earlier request of the sender, committed or in the same batch.
//!
//! SMS pumping (artificially inflated traffic) sends to many numbers of one range, or to many
//! countries, from one account. The guard does not refuse such requests (that would tell the
//! fraudster what to change): it holds them for an admin (`mail2sms held`), and holds the
//! unsent messages of the same burst with them.

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool};

use super::{QueueError, State, format_ms, now_ms};

/// Parts a sender or a domain may queue per window; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    pub sender_per_hour: Option<u64>,
    pub sender_per_day: Option<u64>,
    pub domain_per_hour: Option<u64>,
    pub domain_per_day: Option<u64>,
}

/// When a sender's traffic looks like SMS pumping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub enabled: bool,
    /// How far back a sender's requests are looked at.
    pub window: Duration,
    /// Numbers that differ only in their last `block_digits` digits form one range.
    pub block_digits: usize,
    /// This many distinct numbers of one range within the window are held.
    pub max_per_block: usize,
    /// More distinct destination countries than this within the window are held.
    pub max_countries: usize,
    /// How long a message to a range the sender has not sent to within the window waits
    /// before it may go. Without it the first messages of a burst leave before the burst can
    /// be seen; with it, they are still queued when the guard trips and are held with it.
    pub first_contact_delay: Duration,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            enabled: true,
            window: Duration::from_secs(3600),
            block_digits: 2,
            max_per_block: 5,
            max_countries: 5,
            first_contact_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePolicy {
    pub quotas: Quotas,
    pub guard: Guard,
    pub replies: OwedReplies,
}

impl QueuePolicy {
    /// No quotas and no pumping guard, with the given owed replies.
    pub fn unlimited(replies: OwedReplies) -> QueuePolicy {
        QueuePolicy {
            quotas: Quotas::default(),
            guard: Guard {
                enabled: false,
                ..Guard::default()
            },
            replies,
        }
    }
}

/// Which status replies a new recipient can be owed, decided when its mail is accepted (the
/// queue then writes owed replies only for those; `notify::replies::decide` still decides at
/// sending time, with the rate limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OwedReplies {
    /// Every reply is owed and decided on at sending time.
    #[default]
    All,
    /// No reply is ever sent (no `[notify]` relay or no `[replies]`).
    Never,
    /// What each sender asked for under this configuration.
    Asked(crate::notify::replies::RepliesConfig),
}

impl OwedReplies {
    /// The actions owed to a recipient, between commas, as `recipients.replies` stores them.
    pub fn actions(&self, sender: &str, notify: Option<&str>, headers: &[u8]) -> String {
        match self {
            OwedReplies::All => ",relayed,delivered,failed,delayed,".to_string(),
            OwedReplies::Never => String::new(),
            OwedReplies::Asked(cfg) => {
                crate::notify::replies::owed_actions(sender, notify, headers, cfg)
            }
        }
    }
}

/// A quota that a request would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{who} has queued {used} SMS parts in the last {window}; this mail needs {needed} more and the limit is {limit}"
)]
pub struct QuotaExceeded {
    pub who: String,
    pub window: &'static str,
    pub used: u64,
    pub needed: u64,
    pub limit: u64,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Checks every quota for a request of `new_parts` parts (all recipients counted).
pub(super) async fn check_quotas(
    conn: &mut SqliteConnection,
    q: &Quotas,
    sender: &str,
    domain: &str,
    new_parts: u64,
    now: i64,
) -> Result<(), QueueError> {
    let checks = [
        (q.sender_per_hour, false, HOUR_MS, "hour"),
        (q.sender_per_day, false, DAY_MS, "day"),
        (q.domain_per_hour, true, HOUR_MS, "hour"),
        (q.domain_per_day, true, DAY_MS, "day"),
    ];
    for (limit, by_domain, window, window_name) in checks {
        let Some(limit) = limit else { continue };
        let (who, key) = if by_domain {
            if domain.is_empty() {
                continue;
            }
            (format!("domain {domain}"), domain)
        } else {
            (format!("sender {sender}"), sender)
        };
        let used: i64 = if by_domain {
            sqlx::query_scalar(
                "SELECT COALESCE(SUM(q.part_count *
                        (SELECT COUNT(*) FROM recipients r WHERE r.request_id = q.id)), 0)
                 FROM requests q WHERE q.sender_domain = ?1 AND q.received_at > ?2",
            )
        } else {
            sqlx::query_scalar(
                "SELECT COALESCE(SUM(q.part_count *
                        (SELECT COUNT(*) FROM recipients r WHERE r.request_id = q.id)), 0)
                 FROM requests q WHERE q.sender = ?1 AND q.received_at > ?2",
            )
        }
        .bind(key)
        .bind(now - window)
        .fetch_one(&mut *conn)
        .await?;
        let used = used.max(0) as u64;
        if used + new_parts > limit {
            return Err(QueueError::Quota(QuotaExceeded {
                who,
                window: window_name,
                used,
                needed: new_parts,
                limit,
            }));
        }
    }
    Ok(())
}

/// What the guard thinks of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Looks like the sender's usual traffic.
    Fine,
    /// The sender first wrote to this range at this time (Unix ms), or now: the range is new
    /// to it, and its messages wait out the first-contact delay.
    NewRange { since: i64 },
    /// Held, for this reason.
    Hold(String),
}

/// The guard's verdict on a recipient. Looks at the sender's earlier recipients within the
/// window (the request being inserted is not in the table yet).
pub(super) async fn suspicion(
    conn: &mut SqliteConnection,
    g: &Guard,
    sender: &str,
    number: &str,
    country: Option<&str>,
    now: i64,
) -> Result<Verdict, QueueError> {
    if !g.enabled || sender.is_empty() {
        return Ok(Verdict::Fine);
    }
    let mut new_range_since: Option<i64> = None;
    let since = now - g.window.as_millis() as i64;
    let minutes = g.window.as_secs() / 60;
    if number.len() > g.block_digits + 1 {
        let block = &number[..number.len() - g.block_digits];
        let pattern = format!("{block}%");
        let (same, first): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(DISTINCT r.number), MIN(q.received_at) FROM recipients r
             JOIN requests q ON q.id = r.request_id
             WHERE q.sender = ?1 AND q.received_at > ?2 AND r.number LIKE ?3
               AND length(r.number) = ?4 AND r.number != ?5",
        )
        .bind(sender)
        .bind(since)
        .bind(&pattern)
        .bind(number.len() as i64)
        .bind(number)
        .fetch_one(&mut *conn)
        .await?;
        if same as usize + 1 >= g.max_per_block {
            let xs = "x".repeat(g.block_digits);
            return Ok(Verdict::Hold(format!(
                "held for review: {} numbers in {block}{xs} from {sender} within {minutes} minutes looks like SMS pumping",
                same + 1
            )));
        }
        let first = first.unwrap_or(now);
        if now - first < g.first_contact_delay.as_millis() as i64 {
            new_range_since = Some(first);
        }
    }
    if let Some(country) = country {
        let rows = sqlx::query(
            "SELECT DISTINCT r.country FROM recipients r JOIN requests q ON q.id = r.request_id
             WHERE q.sender = ?1 AND q.received_at > ?2 AND r.country IS NOT NULL",
        )
        .bind(sender)
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
        let countries: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !countries.iter().any(|c| c == country) && countries.len() + 1 > g.max_countries {
            return Ok(Verdict::Hold(format!(
                "held for review: {} destination countries from {sender} within {minutes} minutes looks like SMS pumping",
                countries.len() + 1
            )));
        }
    }
    Ok(match new_range_since {
        Some(since) => Verdict::NewRange { since },
        None => Verdict::Fine,
    })
}

/// Holds the sender's other unsent messages to the same range: they belong to the burst.
pub(super) async fn hold_burst(
    conn: &mut SqliteConnection,
    g: &Guard,
    sender: &str,
    number: &str,
    reason: &str,
    now: i64,
) -> Result<usize, QueueError> {
    if number.len() <= g.block_digits + 1 {
        return Ok(0);
    }
    let pattern = format!("{}%", &number[..number.len() - g.block_digits]);
    let since = now - g.window.as_millis() as i64;
    let recipients: Vec<(i64, String)> = sqlx::query_as(
        "SELECT r.id, r.request_id FROM recipients r JOIN requests q ON q.id = r.request_id
         WHERE q.sender = ?1 AND q.received_at > ?2 AND r.number LIKE ?3 AND length(r.number) = ?4
           AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.recipient_id = r.id
                           AND p.state NOT IN ('accepted', 'routed'))",
    )
    .bind(sender)
    .bind(since)
    .bind(&pattern)
    .bind(number.len() as i64)
    .fetch_all(&mut *conn)
    .await?;
    for (rid, request) in &recipients {
        set_recipient_state(conn, *rid, request, State::Held, reason, now).await?;
    }
    Ok(recipients.len())
}

pub(super) async fn set_recipient_state(
    conn: &mut SqliteConnection,
    rid: i64,
    request: &str,
    state: State,
    reason: &str,
    now: i64,
) -> Result<(), QueueError> {
    sqlx::query("UPDATE parts SET state = ?2, updated_at = ?3 WHERE recipient_id = ?1")
        .bind(rid)
        .bind(state.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE recipients SET state = ?2, updated_at = ?3 WHERE id = ?1")
        .bind(rid)
        .bind(state.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO events (at, request_id, recipient_id, state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(now)
    .bind(request)
    .bind(rid)
    .bind(state.as_str())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A held recipient, as `mail2sms held` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldEntry {
    pub request: String,
    pub received_at: String,
    pub sender: String,
    pub number: String,
    pub parts: i64,
    pub reason: String,
}

pub async fn held(pool: &SqlitePool) -> Result<Vec<HeldEntry>, QueueError> {
    let rows = sqlx::query(
        "SELECT q.id, q.received_at, q.sender, r.number, q.part_count,
                (SELECT reason FROM events e WHERE e.recipient_id = r.id AND e.state = 'held'
                 ORDER BY e.id DESC LIMIT 1)
         FROM recipients r JOIN requests q ON q.id = r.request_id
         WHERE r.state = 'held' ORDER BY q.received_at, r.idx",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| HeldEntry {
            request: r.get(0),
            received_at: format_ms(r.get(1)),
            sender: r.get(2),
            number: r.get(3),
            parts: r.get(4),
            reason: r.get::<Option<String>, _>(5).unwrap_or_default(),
        })
        .collect())
}

/// Releases (back to `accepted`, to be sent) or drops (`failed`) the held recipients of the
/// requests whose id starts with `prefix`, or of every held request when `prefix` is `all`.
/// Returns how many recipients changed.
pub async fn decide_held(
    pool: &SqlitePool,
    prefix: &str,
    release: bool,
    admin: &str,
) -> Result<usize, QueueError> {
    let prefix = prefix.trim().to_ascii_lowercase();
    let all = prefix == "all";
    if !all && (prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(QueueError::NotFound(prefix));
    }
    let mut tx = pool.begin().await?;
    let pattern = if all {
        "%".to_string()
    } else {
        format!("{prefix}%")
    };
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, request_id FROM recipients WHERE state = 'held' AND request_id LIKE ?1",
    )
    .bind(&pattern)
    .fetch_all(&mut *tx)
    .await?;
    let now = now_ms();
    let (state, reason) = if release {
        (State::Accepted, format!("released by {admin}"))
    } else {
        (
            State::Failed,
            format!("dropped by {admin} as suspected SMS pumping"),
        )
    };
    for (rid, request) in &rows {
        set_recipient_state(&mut tx, *rid, request, state, &reason, now).await?;
    }
    tx.commit().await?;
    if rows.is_empty() && !all {
        return Err(QueueError::NotFound(prefix));
    }
    Ok(rows.len())
}
