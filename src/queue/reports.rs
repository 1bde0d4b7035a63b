//! Delivery reports: which part a modem's SMS-STATUS-REPORT is about, and what it changes.
//!
//! A report (TS 23.040 §9.2.2.3) names its message only by TP-MR, TP-RA (the recipient) and
//! TP-SCTS (when the service centre got the SMS-SUBMIT); it reaches us through the modem whose
//! SIM sent it. TP-MR is 8 bits and wraps after 256 sends (§9.2.3.6), so the same SIM, TP-MR
//! and number can name several parts over time. The part meant is the one sent last before
//! the SCTS (allowing for the clocks of the gateway and the service centre to disagree by
//! `skew`), within `window`. When two candidates are both within `skew` of the SCTS the report
//! cannot tell them apart, and it is recorded without changing either: a wrong delivery
//! report is worse than none.
//!
//! TP-ST (§9.2.3.15) decides: "delivered" makes a `sent` part `delivered`; "failed" makes it
//! `failed`, and its message with it; "pending" (the centre is still trying) is only noted.
//! A report for a part already final changes nothing (a late, duplicated or reordered copy),
//! but like every report it is an event row with its TP-ST sentence, and a row of `reports`.

use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::SqliteConnection;
use tracing::{info, warn};

use super::dispatch::{self, Change};
use super::{QueueError, State, now_ms};
use crate::modem::pdu::{StatusClass, StatusReport, Timestamp, status_class, status_text};

/// A report as a modem driver hands it over.
#[derive(Debug, Clone)]
pub struct IncomingReport {
    /// The modem that received it.
    pub modem: String,
    /// IMSI of the SIM in that modem when it arrived.
    pub sim: Option<String>,
    pub report: StatusReport,
    /// Unix ms.
    pub received_at: i64,
}

/// How reports are matched to parts; from `[sending]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matching {
    /// How long after a send its report may come (networks keep trying for the validity
    /// period, 48 h by default, so a little more than that).
    pub window: Duration,
    /// How far the service centre's clock may be from ours (and the SCTS is rounded down to
    /// the second).
    pub skew: Duration,
}

impl Default for Matching {
    fn default() -> Self {
        Matching {
            window: Duration::from_secs(72 * 3600),
            skew: Duration::from_secs(120),
        }
    }
}

/// What a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// It matched no part (the reason says why); nothing changed.
    Unmatched(String),
    /// Several parts could be the one meant; nothing changed.
    Ambiguous(Vec<i64>),
    /// It matched `part`, which is now in `state` (possibly unchanged).
    Matched {
        part: i64,
        state: State,
        changed: bool,
    },
}

/// Unix ms of a TP-SCTS, taking its UTC offset into account; `None` if it is not a date.
pub fn timestamp_ms(t: &Timestamp) -> Option<i64> {
    let month = time::Month::try_from(t.month).ok()?;
    let date = time::Date::from_calendar_date(i32::from(t.year), month, t.day).ok()?;
    let time = time::Time::from_hms(t.hour, t.minute, t.second).ok()?;
    let offset = time::UtcOffset::from_whole_seconds(t.offset_minutes() * 60).ok()?;
    let at = time::PrimitiveDateTime::new(date, time).assume_offset(offset);
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Whether the recipient of a report (TP-RA) is the number a part was sent to (E.164 with
/// `+`). A report in international format must match every digit; one in a national format
/// (no `+`; some centres write it so) must be the end of the number without its trunk
/// prefix `0`, and long enough not to match by chance.
pub fn same_number(report: &str, number: &str) -> bool {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let ours = digits(number);
    if report.starts_with('+') {
        return digits(report) == ours;
    }
    let theirs = digits(report);
    let national = theirs.trim_start_matches('0');
    theirs == ours || (national.len() >= 6 && ours.ends_with(national))
}

/// A part that could be the one a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub part: i64,
    pub sent_at: i64,
}

/// The choice among parts sent on the right SIM with the right TP-MR to the right number
/// (sans-IO, for the tables in the tests).
pub fn choose(candidates: &[Candidate], scts: i64, m: Matching) -> Result<i64, Applied> {
    let skew = i64::try_from(m.skew.as_millis()).unwrap_or(i64::MAX);
    let window = i64::try_from(m.window.as_millis()).unwrap_or(i64::MAX);
    let latest = scts.saturating_add(skew);
    let earliest = scts.saturating_sub(window);
    let mut fit: Vec<Candidate> = candidates
        .iter()
        .copied()
        .filter(|c| c.sent_at <= latest && c.sent_at >= earliest)
        .collect();
    // Latest first: the send closest before the SCTS.
    fit.sort_by_key(|c| std::cmp::Reverse(c.sent_at));
    let Some(best) = fit.first() else {
        return Err(Applied::Unmatched(if candidates.is_empty() {
            "no part was sent on this SIM with this message reference to this number".into()
        } else {
            "no part with this message reference was sent to this number around the report's time stamp".into()
        }));
    };
    // Another send of the same reference within the clock tolerance: either could be meant.
    let close: Vec<i64> = fit
        .iter()
        .filter(|c| c.sent_at >= scts.saturating_sub(skew))
        .map(|c| c.part)
        .collect();
    if close.len() > 1 {
        return Err(Applied::Ambiguous(close));
    }
    Ok(best.part)
}

/// Applies one report inside the writer's transaction.
/// The parts a report from SIM ?1 with TP-MR ?2 may be about: every sent part with that
/// reference, through the partial index `parts_report_match` (sent parts only).
pub(super) const MATCH_SQL: &str = "SELECT p.id, p.sent_at, r.number FROM parts p
     JOIN recipients r ON r.id = p.recipient_id
     WHERE p.sim = ?1 AND p.message_ref = ?2 AND p.sent_at IS NOT NULL";

pub(super) async fn apply(
    conn: &mut SqliteConnection,
    r: &IncomingReport,
    m: Matching,
) -> Result<Applied, QueueError> {
    let rep = &r.report;
    let st = rep.status;
    let sentence = format!(
        "status report via {} (TP-MR {}, TP-ST 0x{st:02X}): {}",
        r.modem,
        rep.message_ref,
        status_text(st)
    );
    let applied = match (&r.sim, timestamp_ms(&rep.scts)) {
        (None, _) => Applied::Unmatched("the modem's SIM is not known".into()),
        (_, None) => Applied::Unmatched(format!(
            "the report's time stamp ({}) is not a date",
            rep.scts
        )),
        (Some(sim), Some(scts)) => {
            let rows = sqlx::query(MATCH_SQL)
                .bind(sim)
                .bind(i64::from(rep.message_ref))
                .fetch_all(&mut *conn)
                .await?;
            let candidates: Vec<Candidate> = rows
                .iter()
                .filter(|row| same_number(&rep.recipient, &row.get::<String, _>(2)))
                .map(|row| Candidate {
                    part: row.get(0),
                    sent_at: row.get(1),
                })
                .collect();
            match choose(&candidates, scts, m) {
                Err(a) => a,
                Ok(part) => update_part(conn, part, st, &sentence, r.received_at).await?,
            }
        }
    };
    let (part, outcome) = match &applied {
        Applied::Unmatched(why) => {
            warn!(modem = %r.modem, mr = rep.message_ref, recipient = %rep.recipient, status = st, "status report matches no part: {why}");
            (None, format!("unmatched: {why}"))
        }
        Applied::Ambiguous(parts) => {
            warn!(modem = %r.modem, mr = rep.message_ref, ?parts, "status report could be about several parts; none changed");
            (
                None,
                format!(
                    "ambiguous: parts {parts:?} were all sent with this reference around its time stamp; none changed"
                ),
            )
        }
        Applied::Matched {
            part,
            state,
            changed,
        } => {
            info!(modem = %r.modem, mr = rep.message_ref, part, %state, changed, "status report");
            (
                Some(*part),
                if *changed {
                    format!("part now {state}")
                } else {
                    format!("part stays {state}")
                },
            )
        }
    };
    sqlx::query(
        "INSERT INTO reports (received_at, modem, sim, message_ref, recipient, scts, discharge,
            status, part_id, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(r.received_at)
    .bind(&r.modem)
    .bind(&r.sim)
    .bind(i64::from(rep.message_ref))
    .bind(&rep.recipient)
    .bind(rep.scts.to_string())
    .bind(rep.discharge.to_string())
    .bind(i64::from(st))
    .bind(part)
    .bind(outcome)
    .execute(&mut *conn)
    .await?;
    Ok(applied)
}

/// What a report with TP-ST `st` does to a part in `state`: the new state, or `None` when it
/// changes nothing (the reason says why, for the event).
pub fn transition(state: State, st: u8) -> Result<State, &'static str> {
    if state.is_final() {
        return Err("late or duplicate report ignored: the part's outcome is already known");
    }
    if state != State::Sent {
        // Only a part the network took has a reference to be reported on.
        return Err("report ignored: the part is not marked sent");
    }
    match status_class(st) {
        StatusClass::Delivered => Ok(State::Delivered),
        StatusClass::Failed => Ok(State::Failed),
        StatusClass::Pending => Err("the service centre is still trying"),
    }
}

pub(super) async fn update_part(
    conn: &mut SqliteConnection,
    part: i64,
    st: u8,
    sentence: &str,
    received_at: i64,
) -> Result<Applied, QueueError> {
    let state: String = sqlx::query_scalar("SELECT state FROM parts WHERE id = ?1")
        .bind(part)
        .fetch_one(&mut *conn)
        .await?;
    let state: State = state.parse().unwrap_or(State::Sent);
    let now = now_ms();
    match transition(state, st) {
        Ok(State::Failed) => {
            set_report(conn, part, st, received_at).await?;
            // As a refused send: the part fails, and the message with it.
            dispatch::apply(
                conn,
                &[Change::Fail {
                    part,
                    reason: format!("{sentence} (a final failure)"),
                }],
            )
            .await?;
            Ok(Applied::Matched {
                part,
                state: State::Failed,
                changed: true,
            })
        }
        Ok(new) => {
            set_report(conn, part, st, received_at).await?;
            sqlx::query("UPDATE parts SET state = ?2, updated_at = ?3 WHERE id = ?1")
                .bind(part)
                .bind(new.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await?;
            event(conn, part, new, sentence, now).await?;
            sqlx::query(sqlx::AssertSqlSafe(dispatch::SUMMARY_SQL.as_str()))
                .bind(part)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            super::replies::record(conn, part, now).await?;
            Ok(Applied::Matched {
                part,
                state: new,
                changed: true,
            })
        }
        Err(why) => {
            if !state.is_final() {
                // A "still trying" on a part in flight is its latest news.
                set_report(conn, part, st, received_at).await?;
            }
            event(conn, part, state, &format!("{sentence} ({why})"), now).await?;
            Ok(Applied::Matched {
                part,
                state,
                changed: false,
            })
        }
    }
}

/// The event row of a change to one part made outside the writer's usual job (a report, a
/// peer's receipt): invariant 6.
pub(super) async fn event(
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

async fn set_report(
    conn: &mut SqliteConnection,
    part: i64,
    st: u8,
    at: i64,
) -> Result<(), QueueError> {
    sqlx::query("UPDATE parts SET report_status = ?2, report_at = ?3 WHERE id = ?1")
        .bind(part)
        .bind(i64::from(st))
        .bind(at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Matching = Matching {
        window: Duration::from_secs(72 * 3600),
        skew: Duration::from_secs(120),
    };

    fn c(part: i64, sent_at: i64) -> Candidate {
        Candidate { part, sent_at }
    }

    #[test]
    fn choice_among_candidates() {
        let h = 3_600_000;
        type Case<'a> = (&'a str, &'a [Candidate], i64, Result<i64, Applied>);
        let cases: &[Case] = &[
            ("the only one", &[c(1, 1000)], 1000, Ok(1)),
            (
                "sent a second after the SCTS (rounding, clocks)",
                &[c(1, 1500)],
                1000,
                Ok(1),
            ),
            (
                "after a wrap: the newer send for a new SCTS",
                &[c(1, 0), c(2, 10 * h)],
                10 * h + 3000,
                Ok(2),
            ),
            (
                "after a wrap: the older send for an old SCTS",
                &[c(1, 0), c(2, 10 * h)],
                2000,
                Ok(1),
            ),
            (
                "a send far after the SCTS is never chosen",
                &[c(2, 10 * h)],
                0,
                Err(Applied::Unmatched(
                    "no part with this message reference was sent to this number around the report's time stamp".into(),
                )),
            ),
            (
                "outside the window",
                &[c(1, 0)],
                100 * h,
                Err(Applied::Unmatched(
                    "no part with this message reference was sent to this number around the report's time stamp".into(),
                )),
            ),
            (
                "no candidate",
                &[],
                0,
                Err(Applied::Unmatched(
                    "no part was sent on this SIM with this message reference to this number"
                        .into(),
                )),
            ),
            (
                "two sends within the clock tolerance",
                &[c(1, 1000), c(2, 61_000)],
                30_000,
                Err(Applied::Ambiguous(vec![2, 1])),
            ),
        ];
        for (what, cands, scts, want) in cases {
            assert_eq!(&choose(cands, *scts, M), want, "{what}");
        }
    }

    #[test]
    fn numbers() {
        let cases = [
            ("+33612345678", "+33612345678", true),
            ("+33612345679", "+33612345678", false),
            ("0612345678", "+33612345678", true),
            ("612345678", "+33612345678", true),
            ("5678", "+33612345678", false),
            ("+612345678", "+33612345678", false),
        ];
        for (report, number, want) in cases {
            assert_eq!(same_number(report, number), want, "{report} vs {number}");
        }
    }

    #[test]
    fn transitions() {
        use State::*;
        let cases: &[(State, u8, Result<State, ()>)] = &[
            (Sent, 0x00, Ok(Delivered)),
            (Sent, 0x02, Ok(Delivered)),
            (Sent, 0x21, Err(())),
            (Sent, 0x41, Ok(Failed)),
            (Sent, 0x62, Ok(Failed)),
            (Sent, 0x80, Ok(Failed)),
            (Delivered, 0x00, Err(())),
            (Delivered, 0x21, Err(())),
            (Delivered, 0x41, Err(())),
            (Failed, 0x00, Err(())),
            (Uncertain, 0x00, Err(())),
            (Sending, 0x00, Err(())),
        ];
        for (state, st, want) in cases {
            assert_eq!(
                transition(*state, *st).map_err(|_| ()),
                *want,
                "{state} 0x{st:02X}"
            );
        }
    }

    #[test]
    fn scts_with_offsets() {
        let t = |hour, offset_quarters| Timestamp {
            year: 2026,
            month: 11,
            day: 21,
            hour,
            minute: 30,
            second: 7,
            offset_quarters,
        };
        let utc = timestamp_ms(&t(14, 0)).unwrap();
        assert_eq!(utc, 1_795_271_407_000);
        // 15:30 at UTC+1 is 14:30 UTC.
        assert_eq!(timestamp_ms(&t(15, 4)), Some(utc));
        assert_eq!(timestamp_ms(&t(12, -8)), Some(utc));
        let mut bad = t(14, 0);
        bad.month = 13;
        assert_eq!(timestamp_ms(&bad), None);
        bad = t(25, 0);
        assert_eq!(timestamp_ms(&bad), None);
    }

    // -----------------------------------------------------------------------------------------
    // Against the store: what a report does to parts, recipients and events.

    use crate::queue::testing::{mark_sending, request_to, stamp};
    use crate::queue::{NewRequest, Store};

    const SIM: &str = "208150000000001";
    const NUMBER: &str = "+33612345678";
    /// 2026-11-21 14:30:07 UTC.
    const BASE: i64 = 1_795_271_407_000;
    const MINUTE: i64 = 60_000;

    fn request(parts: usize) -> NewRequest {
        request_to(NUMBER, parts, None)
    }

    /// Queues a message and marks its parts sent at `sent_at` with consecutive TP-MRs from
    /// `mr`; returns its part ids.
    async fn sent(store: &Store, parts: usize, mr: &mut u8, sent_at: i64) -> Vec<i64> {
        let id = store.accept(request(parts)).await.unwrap().id().to_string();
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT p.id FROM parts p JOIN recipients r ON r.id = p.recipient_id
             WHERE r.request_id = ?1 ORDER BY p.seq",
        )
        .bind(&id)
        .fetch_all(store.reader())
        .await
        .unwrap();
        for &part in &ids {
            mark_sending(store, part, "gsm0").await;
            store
                .change(Change::Sent {
                    part,
                    message_ref: Some(i64::from(*mr)),
                    sim: Some(SIM.into()),
                    sent_at,
                    reason: "sent".into(),
                })
                .await
                .unwrap();
            *mr = mr.wrapping_add(1);
        }
        ids
    }

    async fn report(store: &Store, sim: &str, mr: u8, to: &str, scts: i64, st: u8) -> Applied {
        store
            .report(
                IncomingReport {
                    modem: "gsm0".into(),
                    sim: Some(sim.into()),
                    report: StatusReport {
                        message_ref: mr,
                        recipient: to.into(),
                        scts: stamp(scts),
                        discharge: stamp(scts + 5000),
                        status: st,
                    },
                    received_at: scts + 6000,
                },
                M,
            )
            .await
            .unwrap()
    }

    async fn state_of(store: &Store, part: i64) -> (String, Option<i64>) {
        sqlx::query_as("SELECT state, report_status FROM parts WHERE id = ?1")
            .bind(part)
            .fetch_one(store.reader())
            .await
            .unwrap()
    }

    async fn recipient_of(store: &Store, part: i64) -> String {
        sqlx::query_scalar(
            "SELECT r.state FROM recipients r JOIN parts p ON p.recipient_id = r.id WHERE p.id = ?1",
        )
        .bind(part)
        .fetch_one(store.reader())
        .await
        .unwrap()
    }

    fn matched(part: i64, state: State, changed: bool) -> Applied {
        Applied::Matched {
            part,
            state,
            changed,
        }
    }

    #[tokio::test]
    async fn wrapped_references_go_to_the_right_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        // 300 single-part messages to one number on one SIM, a minute apart: TP-MR wraps
        // after the 256th, so references 0..=43 name two parts each.
        let mut mr = 0u8;
        let mut parts = Vec::new();
        for i in 0..300 {
            parts.extend(sent(&store, 1, &mut mr, BASE + i * MINUTE).await);
        }
        let at = |i: usize| BASE + i as i64 * MINUTE;
        let cases: &[(&str, usize, u8, i64, Applied)] = &[
            // (what, part index whose MR is used, TP-ST, SCTS, what it does)
            (
                "old part 10",
                10,
                0x00,
                at(10) + 900,
                matched(parts[10], State::Delivered, true),
            ),
            (
                "new part 266, same TP-MR",
                266,
                0x41,
                at(266) + 1000,
                matched(parts[266], State::Failed, true),
            ),
            (
                "new part 299 first",
                299,
                0x00,
                at(299),
                matched(parts[299], State::Delivered, true),
            ),
            (
                "then old part 43, same TP-MR",
                43,
                0x00,
                at(43) + 2000,
                matched(parts[43], State::Delivered, true),
            ),
            (
                "duplicate for part 10",
                10,
                0x00,
                at(10) + 900,
                matched(parts[10], State::Delivered, false),
            ),
            (
                "failure after delivery, part 10",
                10,
                0x41,
                at(10) + 900,
                matched(parts[10], State::Delivered, false),
            ),
            (
                "pending after delivery, part 299",
                299,
                0x21,
                at(299),
                matched(parts[299], State::Delivered, false),
            ),
            (
                "pending first, part 20",
                20,
                0x21,
                at(20) + 500,
                matched(parts[20], State::Sent, false),
            ),
            (
                "then delivered, part 20",
                20,
                0x00,
                at(20) + 500,
                matched(parts[20], State::Delivered, true),
            ),
            (
                "late copy for failed part 266",
                266,
                0x00,
                at(266) + 1000,
                matched(parts[266], State::Failed, false),
            ),
        ];
        for (what, i, st, scts, want) in cases {
            let mr = (*i % 256) as u8;
            assert_eq!(
                &report(&store, SIM, mr, NUMBER, *scts, *st).await,
                want,
                "{what}"
            );
        }
        // Each send of a reused reference got its own report, not the other's.
        assert_eq!(state_of(&store, parts[10 + 256]).await.0, "failed");
        assert_eq!(state_of(&store, parts[20 + 256]).await.0, "sent");
        assert_eq!(state_of(&store, parts[299 - 256]).await.0, "delivered");
        // The report that counted is kept; an ignored one does not overwrite it.
        assert_eq!(
            state_of(&store, parts[10]).await,
            ("delivered".into(), Some(0))
        );
        assert_eq!(
            state_of(&store, parts[266]).await,
            ("failed".into(), Some(0x41))
        );
        assert_eq!(
            state_of(&store, parts[299]).await,
            ("delivered".into(), Some(0))
        );
        assert_eq!(recipient_of(&store, parts[266]).await, "failed");

        // Reports that match nothing change nothing.
        let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(store.reader())
            .await
            .unwrap();
        let stray: &[(&str, &str, u8, &str, i64)] = &[
            ("another SIM", "208150000000002", 5, NUMBER, at(5)),
            ("another number", SIM, 5, "+33699999999", at(5)),
            (
                "a time stamp before any send",
                SIM,
                5,
                NUMBER,
                BASE - 10 * MINUTE,
            ),
            (
                "beyond the window",
                SIM,
                44,
                NUMBER,
                at(44) + 80 * 60 * MINUTE,
            ),
        ];
        for (what, sim, mr, to, scts) in stray {
            let got = report(&store, sim, *mr, to, *scts, 0x00).await;
            assert!(matches!(got, Applied::Unmatched(_)), "{what}: {got:?}");
        }
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(before, after, "an unmatched report wrote an event");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM reports WHERE part_id IS NULL")
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(rows, 4);
        assert_eq!(state_of(&store, parts[5]).await.0, "sent");
        // Every matched report is an event with its TP-ST sentence.
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT reason FROM events WHERE part_id = ?1 AND reason LIKE 'status report%' ORDER BY id",
        )
        .bind(parts[10])
        .fetch_all(store.reader())
        .await
        .unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(
            events[0].contains("received by the recipient"),
            "{events:?}"
        );
        assert!(
            events[1].contains("late or duplicate report ignored"),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_message_is_delivered_when_all_its_parts_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        let mut mr = 254u8;
        let parts = sent(&store, 3, &mut mr, BASE).await;
        // Out of order, and across the wrap of TP-MR (254, 255, 0).
        for (k, part_mr) in [(2usize, 0u8), (0, 254)] {
            assert_eq!(
                report(&store, SIM, part_mr, NUMBER, BASE + 1000, 0x00).await,
                matched(parts[k], State::Delivered, true)
            );
            assert_eq!(recipient_of(&store, parts[0]).await, "sent");
        }
        assert_eq!(
            report(&store, SIM, 255, NUMBER, BASE + 1000, 0x00).await,
            matched(parts[1], State::Delivered, true)
        );
        assert_eq!(recipient_of(&store, parts[0]).await, "delivered");

        // One part failing for good fails the message, whatever the others say afterwards.
        let parts = sent(&store, 3, &mut mr, BASE + MINUTE).await;
        report(&store, SIM, 1, NUMBER, BASE + MINUTE, 0x00).await;
        report(&store, SIM, 2, NUMBER, BASE + MINUTE, 0x46).await;
        report(&store, SIM, 3, NUMBER, BASE + MINUTE, 0x00).await;
        assert_eq!(state_of(&store, parts[1]).await.0, "failed");
        assert_eq!(state_of(&store, parts[2]).await.0, "delivered");
        assert_eq!(recipient_of(&store, parts[0]).await, "failed");
    }
}
