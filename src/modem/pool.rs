//! The worker pool: one worker per modem, pulling the site's queued messages.
//!
//! A feeder reads ready messages from the queue into a shared list; each worker takes the
//! first one its modem should send and sends all its parts, in order, on its modem. Which
//! modem takes which message:
//! - the rest of a message goes to the modem that took its earlier parts while that modem is
//!   ready: a handset joins the parts of a concatenated SMS only when they come from the same
//!   number (TS 23.040 §9.2.3.24.1), so splitting a message over two SIMs breaks it;
//! - otherwise a modem whose `prefixes` match the number takes it first (prefix affinity), and
//!   the others leave it while such a modem is ready;
//! - a message whose last attempt failed on a modem goes to another one when another is ready.
//!
//! Each worker waits for its SIM's rate limit (`max_per_minute`) before taking a message, so
//! that a free modem takes it meanwhile.
//!
//! For each part the worker reserves the modem (it is then ready and waiting), marks the part
//! `sending` durably (invariant 3), and only then hands the PDU over; a modem that is not
//! ready is never given a part marked `sending`, so "not ready" costs no attempt. The answer
//! marks the part `sent`, schedules a retry with backoff (the rest of the message waits with
//! it), fails it with its reason (a permanent `+CMS ERROR`, TS 27.005 §3.2.5, or the last
//! allowed attempt), or makes it `uncertain` (no answer after the PDU was written).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::driver::{Modem, SendError};
use super::pdu::{self, SubmitOptions};
use crate::queue::{self, Change, Store, Work};
use crate::sms::Segmentation;

/// Sending policy; from `[sending]` in the config.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Attempts per part before it fails for good.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled at each further attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// TP-VP: how long the network keeps trying a handset that is off.
    pub validity: Option<Duration>,
    /// Ask for status reports (TP-SRR).
    pub status_reports: bool,
    /// How status reports are matched to the parts they are about.
    pub reports: crate::queue::Matching,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_attempts: 5,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(30 * 60),
            validity: Some(Duration::from_secs(2 * 24 * 3600)),
            status_reports: true,
            reports: crate::queue::Matching::default(),
        }
    }
}

/// A modem as the pool uses it.
#[derive(Clone)]
pub struct PoolModem {
    pub modem: Modem,
    /// E.164 prefixes this modem should send to first (e.g. its own network's).
    pub prefixes: Vec<String>,
    /// Least time between two sends on this SIM (its operator's rate limit).
    pub min_interval: Option<Duration>,
}

struct Job {
    work: Work,
    /// The modem the last attempt failed on.
    avoid: Option<String>,
}

#[derive(Default)]
struct Jobs {
    list: VecDeque<Job>,
    /// Recipients listed or in flight: the feeder does not read them again.
    busy: HashSet<i64>,
}

struct Inner {
    store: Store,
    cfg: PoolConfig,
    modems: Vec<PoolModem>,
    jobs: Mutex<Jobs>,
    /// New work was queued (from intake) or a worker wants more.
    wake_feeder: Arc<Notify>,
    work_listed: Notify,
}

/// A running pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Starts the feeder and a worker per modem in `tracker`. `wake` is notified by intake
    /// when a new request is committed, so an idle pool starts sending at once. On
    /// `shutdown` each worker finishes the part in hand and stops; the rest stays queued.
    pub fn start(
        store: Store,
        cfg: PoolConfig,
        modems: Vec<PoolModem>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Pool {
        let inner = Arc::new(Inner {
            store,
            cfg,
            modems,
            jobs: Mutex::new(Jobs::default()),
            wake_feeder: wake,
            work_listed: Notify::new(),
        });
        tracker.spawn(feeder(inner.clone(), shutdown.clone()));
        for i in 0..inner.modems.len() {
            tracker.spawn(worker(inner.clone(), i, shutdown.clone()));
        }
        Pool { inner }
    }

    pub fn modems(&self) -> &[PoolModem] {
        &self.inner.modems
    }
}

fn lock(jobs: &Mutex<Jobs>) -> std::sync::MutexGuard<'_, Jobs> {
    // A worker that panicked while holding the lock left the list consistent (every change is
    // a single push or remove), so carrying on is safe.
    jobs.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps the list of ready messages topped up.
async fn feeder(inner: Arc<Inner>, shutdown: CancellationToken) {
    // Enough to keep every modem busy without reading the whole queue into memory.
    let target = (inner.modems.len() * 8).max(16);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let (listed, busy) = {
            let j = lock(&inner.jobs);
            (j.list.len(), j.busy.clone())
        };
        if listed < target / 2 {
            match queue::dispatch::ready(inner.store.reader(), target - listed, &busy).await {
                Ok(work) => {
                    let n = work.len();
                    if n > 0 {
                        let mut j = lock(&inner.jobs);
                        for w in work {
                            if j.busy.insert(w.recipient_id) {
                                let avoid = w.pending.first().and_then(|p| p.last_channel.clone());
                                j.list.push_back(Job { work: w, avoid });
                            }
                        }
                        drop(j);
                        inner.work_listed.notify_waiters();
                        // More may be waiting: go round again at once.
                        if n >= target - listed {
                            continue;
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the queue"),
            }
        }
        // Retries fall due with time, so look again at least every second.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = inner.wake_feeder.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What the choice of a modem needs to know about each: its name, its preferred prefixes,
/// and whether it is ready now.
struct Candidate<'a> {
    name: &'a str,
    prefixes: &'a [String],
    ready: bool,
}

impl Candidate<'_> {
    fn prefers(&self, number: &str) -> bool {
        self.prefixes.iter().any(|p| number.starts_with(p.as_str()))
    }
}

/// Whether modem `me` should take `job` now.
fn should_take(modems: &[Candidate<'_>], me: usize, job: &Job) -> bool {
    let Some(mine) = modems.get(me).filter(|m| m.ready) else {
        return false;
    };
    let ready_by_name = |name: &str| modems.iter().any(|m| m.ready && m.name == name);
    // The rest of a message follows its first parts while their modem can take it.
    if let Some(sent_on) = job.work.sent_on.as_deref() {
        if sent_on == mine.name {
            return true;
        }
        if ready_by_name(sent_on) {
            return false;
        }
    }
    let number = &job.work.number;
    let others = || {
        modems
            .iter()
            .enumerate()
            .filter(move |(i, m)| *i != me && m.ready)
    };
    let avoid = job.avoid.as_deref();
    // Prefix affinity: leave a message to a ready modem that prefers its number, unless that
    // modem failed its last attempt (it would leave it in turn, and nobody would send it).
    let preferred_elsewhere =
        !mine.prefers(number) && others().any(|(_, m)| m.prefers(number) && avoid != Some(m.name));
    // A retry goes to another modem than the one that failed it, when one is ready.
    let failed_here = avoid == Some(mine.name) && others().next().is_some();
    !preferred_elsewhere && !failed_here
}

/// Picks the job the modem `me` should send next, if any.
fn take_job(inner: &Inner, me: usize) -> Option<Job> {
    let modems: Vec<Candidate<'_>> = inner
        .modems
        .iter()
        .map(|m| Candidate {
            name: m.modem.name(),
            prefixes: &m.prefixes,
            ready: m.modem.is_ready(),
        })
        .collect();
    let mut j = lock(&inner.jobs);
    let pos = j
        .list
        .iter()
        .position(|job| should_take(&modems, me, job))?;
    j.list.remove(pos)
}

fn release(inner: &Inner, recipient: i64) {
    lock(&inner.jobs).busy.remove(&recipient);
    inner.wake_feeder.notify_one();
}

async fn worker(inner: Arc<Inner>, me: usize, shutdown: CancellationToken) {
    let pm = inner.modems[me].clone();
    let mut modem = pm.modem.clone();
    let mut last_send: Option<Instant> = None;
    // The `sent` of the part this modem sent last, not committed yet: it shares the commit of
    // the next part's `sending`, or is committed alone before the worker waits for anything.
    let mut unrecorded: Option<Change> = None;
    loop {
        if shutdown.is_cancelled() {
            record(&inner.store, &mut unrecorded).await;
            return;
        }
        if !modem.is_ready() {
            record(&inner.store, &mut unrecorded).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                alive = modem.changed() => if !alive { return },
            }
            continue;
        }
        // The SIM's rate limit: wait before taking a message, so a free modem takes it.
        if let (Some(gap), Some(last)) = (pm.min_interval, last_send)
            && Instant::now() < last + gap
        {
            record(&inner.store, &mut unrecorded).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(last + gap) => {}
            }
            continue;
        }
        // Register interest before looking, so a notification between the two is not lost.
        let listed = inner.work_listed.notified();
        let Some(job) = take_job(&inner, me) else {
            inner.wake_feeder.notify_one();
            record(&inner.store, &mut unrecorded).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = listed => {}
                _ = modem.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let rid = job.work.recipient_id;
        send_job(&inner, &pm, job, &mut last_send, &mut unrecorded, &shutdown).await;
        // The message's last `sent` may still wait in `unrecorded`; its part is `sending` on
        // disk meanwhile, which the feeder does not read as ready, so the recipient can go.
        release(&inner, rid);
    }
}

/// Commits a `sent` that was waiting for the next `sending`, before the worker waits.
async fn record(store: &Store, unrecorded: &mut Option<Change>) {
    if let Some(change) = unrecorded.take()
        && let Err(e) = store.change(change).await
    {
        // The part stays `sending`: at the next start it becomes `uncertain`, not sent again.
        warn!(error = %e, "cannot record a sent part");
    }
}

/// Sends the pending parts of one message on one modem, in order. Parts it does not get to
/// (the modem went away, the gateway is stopping) stay queued and are read again.
///
/// A part's `sent` is left in `unrecorded` for the commit of the next part's `sending`: one
/// commit per SMS on a modem's path instead of two in a row. Every other outcome is committed
/// at once.
async fn send_job(
    inner: &Inner,
    pm: &PoolModem,
    job: Job,
    last_send: &mut Option<Instant>,
    unrecorded: &mut Option<Change>,
    shutdown: &CancellationToken,
) {
    let store = &inner.store;
    let name = pm.modem.name();
    let mut w = job.work;
    let seg = Segmentation {
        encoding: w.encoding,
        parts: std::mem::take(&mut w.all_parts),
        truncated: false,
    };
    let opts = SubmitOptions {
        status_report: inner.cfg.status_reports,
        validity: inner.cfg.validity,
        // 0: the modem assigns TP-MR itself and tells us in +CMGS.
        message_ref: 0,
        // The same reference for every part of this message, across retries and restarts,
        // and different for the messages that follow it to the same number.
        concat_ref: (w.recipient_id & 0xff) as u16,
        ..SubmitOptions::default()
    };
    let pdus = match pdu::encode_submit(&w.number, &seg, &opts) {
        Ok(p) => p,
        Err(e) => {
            if let Some(first) = w.pending.first() {
                let _ = store
                    .change(Change::Fail {
                        part: first.id,
                        reason: format!("the message cannot be encoded: {e}"),
                    })
                    .await;
            }
            return;
        }
    };
    for (i, part) in w.pending.iter().enumerate() {
        let Some(pdu) = pdus.get(usize::from(part.seq).saturating_sub(1)).cloned() else {
            let _ = store
                .change(Change::Fail {
                    part: part.id,
                    reason: format!("part {} does not exist in the encoded message", part.seq),
                })
                .await;
            return;
        };
        if shutdown.is_cancelled() {
            return;
        }
        if let (Some(gap), Some(last)) = (pm.min_interval, *last_send)
            && Instant::now() < last + gap
        {
            record(store, unrecorded).await;
            tokio::time::sleep_until(last + gap).await;
        }
        let lease = match pm.modem.reserve().await {
            Ok(l) => l,
            Err(e) => {
                debug!(modem = %name, recipient = w.recipient_id, error = %e, "modem not ready; the message goes back to the queue");
                return;
            }
        };
        // Invariant 3: on disk as `sending` before the modem sees it; the previous part's
        // `sent` shares the commit (all or none: if it fails, that part stays `sending`).
        let mut changes = Vec::with_capacity(2);
        changes.extend(unrecorded.take());
        changes.push(Change::Sending {
            part: part.id,
            channel: name.to_string(),
        });
        if let Err(e) = store.changes(changes).await {
            warn!(error = %e, "cannot mark a part sending; not sending it");
            return;
        }
        *last_send = Some(Instant::now());
        let result = lease.send(pdu).await;
        let attempts = part.attempts + 1;
        let change = match result {
            Ok(mr) => {
                let sent_at = crate::queue::now_ms();
                let (reason, sim) = pm.modem.with_status(|s| {
                    let imsi = s.imsi.as_deref().unwrap_or("unknown");
                    (
                        format!("sent via {name} (SIM {imsi}), TP-MR {mr}"),
                        s.imsi.clone(),
                    )
                });
                *unrecorded = Some(Change::Sent {
                    part: part.id,
                    message_ref: Some(i64::from(mr)),
                    sim,
                    sent_at,
                    reason,
                });
                continue;
            }
            Err(SendError::AfterPdu(e)) => Change::Uncertain {
                part: part.id,
                reason: format!(
                    "{name}: no answer after the message was written ({e}); it may have been sent, so it is not sent again"
                ),
            },
            Err(e) if e.is_temporary() && attempts < i64::from(inner.cfg.max_attempts) => {
                let wait = backoff(&inner.cfg, attempts);
                Change::Retry {
                    part: part.id,
                    at: queue::now_ms()
                        .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                    reason: format!(
                        "attempt {attempts} of {} failed on {name}: {e}; retrying in {}s",
                        inner.cfg.max_attempts,
                        wait.as_secs()
                    ),
                }
            }
            Err(e) if e.is_temporary() => Change::Fail {
                part: part.id,
                reason: format!("failed after {attempts} attempts; the last, on {name}: {e}"),
            },
            Err(e) => Change::Fail {
                part: part.id,
                reason: format!("{name}: {e} (a permanent failure: not tried again)"),
            },
        };
        // The rest of the message waits with a retried part, so its parts stay together, and
        // in the same commit. After an uncertain or failed part the rest stays queued as it is.
        let mut changes = vec![];
        if let Change::Retry { at, .. } = &change {
            let at = *at;
            for rest in &w.pending[i + 1..] {
                changes.push(Change::Retry {
                    part: rest.id,
                    at,
                    reason: format!("waiting for part {} to be retried", part.seq),
                });
            }
        }
        changes.insert(0, change);
        if let Err(e) = store.changes(changes).await {
            warn!(error = %e, "cannot record a send result");
            return;
        }
        debug!(modem = %name, recipient = w.recipient_id, "message stopped");
        return;
    }
}

fn backoff(cfg: &PoolConfig, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    cfg.retry_base
        .saturating_mul(1u32 << exp)
        .min(cfg.retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(number: &str, sent_on: Option<&str>, avoid: Option<&str>) -> Job {
        Job {
            work: Work {
                recipient_id: 1,
                request_id: "r".into(),
                number: number.into(),
                encoding: crate::sms::Encoding::Gsm7,
                all_parts: vec!["a".into(), "b".into()],
                pending: Vec::new(),
                sent_on: sent_on.map(str::to_string),
            },
            avoid: avoid.map(str::to_string),
        }
    }

    /// Who takes what: stickiness of a started message, prefix affinity, avoiding the modem
    /// that failed the last attempt, and each of them giving way when the modem it names is
    /// not ready.
    #[test]
    fn which_modem_takes_a_message() {
        let fr = vec!["+33".to_string()];
        let none: Vec<String> = Vec::new();
        // (ready flags of a, b, c; the job; which of a, b, c take it)
        type Case = (
            [bool; 3],
            (&'static str, Option<&'static str>, Option<&'static str>),
            [bool; 3],
        );
        let cases: &[Case] = &[
            // a prefers +33: it alone takes French numbers while ready...
            (
                [true, true, true],
                ("+33612345678", None, None),
                [true, false, false],
            ),
            // ...anyone takes them when it is not...
            (
                [false, true, true],
                ("+33612345678", None, None),
                [false, true, true],
            ),
            // ...and anyone takes other numbers.
            (
                [true, true, true],
                ("+447911123456", None, None),
                [true, true, true],
            ),
            // A retry avoids the modem that failed it, unless no other is ready.
            (
                [true, true, true],
                ("+447911123456", None, Some("b")),
                [true, false, true],
            ),
            // Even the modem that prefers the number: the others take its retry.
            (
                [true, true, true],
                ("+33612345678", None, Some("a")),
                [false, true, true],
            ),
            (
                [false, true, false],
                ("+447911123456", None, Some("b")),
                [false, true, false],
            ),
            // The rest of a message stays with the modem that sent its first parts, even
            // against affinity and even after failing there...
            (
                [true, true, true],
                ("+33612345678", Some("c"), None),
                [false, false, true],
            ),
            (
                [true, true, true],
                ("+447911123456", Some("b"), Some("b")),
                [false, true, false],
            ),
            // ...until that modem is not ready: then the usual rules.
            (
                [true, true, false],
                ("+33612345678", Some("c"), None),
                [true, false, false],
            ),
            (
                [false, true, false],
                ("+447911123456", Some("c"), Some("b")),
                [false, true, false],
            ),
        ];
        for (ready, (number, sent_on, avoid), want) in cases {
            let modems = [
                Candidate {
                    name: "a",
                    prefixes: &fr,
                    ready: ready[0],
                },
                Candidate {
                    name: "b",
                    prefixes: &none,
                    ready: ready[1],
                },
                Candidate {
                    name: "c",
                    prefixes: &none,
                    ready: ready[2],
                },
            ];
            let j = job(number, *sent_on, *avoid);
            let got: Vec<bool> = (0..3).map(|me| should_take(&modems, me, &j)).collect();
            assert_eq!(
                got, want,
                "ready {ready:?}, {number} sent_on {sent_on:?} avoid {avoid:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = PoolConfig {
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(300),
            ..PoolConfig::default()
        };
        let got: Vec<u64> = (1..=7).map(|a| backoff(&cfg, a).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(backoff(&cfg, i64::MAX).as_secs(), 300);
    }
}
