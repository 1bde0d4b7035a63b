//! The worker pool: one worker per modem, pulling the site's queued messages.
//!
//! A feeder reads ready messages from the queue into a shared list; each worker takes the
//! first one its modem should send (prefix affinity first, and not the modem that just failed
//! it when another can take it), and sends all its parts, in order, on its modem. Before each
//! `AT+CMGS` the part is marked `sending` durably (invariant 3); the answer marks it `sent`,
//! schedules a retry with backoff (on another modem), or fails it with its reason.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
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
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_attempts: 5,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(30 * 60),
            validity: Some(Duration::from_secs(2 * 24 * 3600)),
            status_reports: true,
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

impl PoolModem {
    fn prefers(&self, number: &str) -> bool {
        self.prefixes.iter().any(|p| number.starts_with(p.as_str()))
    }
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
    /// Starts the feeder and a worker per modem. `wake` is notified by intake when a new
    /// request is committed, so an idle pool starts sending at once.
    pub fn start(
        store: Store,
        cfg: PoolConfig,
        modems: Vec<PoolModem>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Pool {
        let inner = Arc::new(Inner {
            store,
            cfg,
            modems,
            jobs: Mutex::new(Jobs::default()),
            wake_feeder: wake,
            work_listed: Notify::new(),
        });
        tokio::spawn(feeder(inner.clone(), shutdown.clone()));
        for i in 0..inner.modems.len() {
            tokio::spawn(worker(inner.clone(), i, shutdown.clone()));
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

/// Picks the job the modem `me` should send next, if any.
fn take_job(inner: &Inner, me: usize) -> Option<Job> {
    let mine = &inner.modems[me];
    let ready: Vec<bool> = inner.modems.iter().map(|m| m.modem.is_ready()).collect();
    let others_ready = ready.iter().enumerate().any(|(i, r)| *r && i != me);
    let mut j = lock(&inner.jobs);
    let pos = j.list.iter().position(|job| {
        let number = &job.work.number;
        // Prefix affinity: leave a message to a ready modem that prefers its number.
        let preferred_elsewhere = !mine.prefers(number)
            && inner
                .modems
                .iter()
                .enumerate()
                .any(|(i, m)| i != me && ready[i] && m.prefers(number));
        let failed_here = job.avoid.as_deref() == Some(mine.modem.name()) && others_ready;
        !preferred_elsewhere && !failed_here
    })?;
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
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if !modem.is_ready() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                alive = modem.changed() => if !alive { return },
            }
            continue;
        }
        // Register interest before looking, so a notification between the two is not lost.
        let listed = inner.work_listed.notified();
        let Some(job) = take_job(&inner, me) else {
            inner.wake_feeder.notify_one();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = listed => {}
                _ = modem.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let rid = job.work.recipient_id;
        send_job(&inner, &pm, job, &mut last_send).await;
        release(&inner, rid);
    }
}

/// Sends the pending parts of one message on one modem, in order.
async fn send_job(inner: &Inner, pm: &PoolModem, job: Job, last_send: &mut Option<Instant>) {
    let store = &inner.store;
    let name = pm.modem.name().to_string();
    let w = job.work;
    let seg = Segmentation {
        encoding: w.encoding,
        parts: w.all_parts.clone(),
        truncated: false,
    };
    let opts = SubmitOptions {
        status_report: inner.cfg.status_reports,
        validity: inner.cfg.validity,
        // 0: the modem assigns TP-MR itself and tells us in +CMGS.
        message_ref: 0,
        // The same reference for every part of this message, whichever modem sends which.
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
        if let (Some(gap), Some(last)) = (pm.min_interval, *last_send) {
            tokio::time::sleep_until(last + gap).await;
        }
        // Invariant 3: on disk as `sending` before the modem sees it.
        if let Err(e) = store
            .change(Change::Sending {
                part: part.id,
                channel: name.clone(),
            })
            .await
        {
            warn!(error = %e, "cannot mark a part sending; not sending it");
            return;
        }
        *last_send = Some(Instant::now());
        let result = pm.modem.send(pdu).await;
        let attempts = part.attempts + 1;
        let change = match result {
            Ok(mr) => {
                let imsi = pm.modem.status().imsi.unwrap_or_else(|| "unknown".into());
                Change::Sent {
                    part: part.id,
                    message_ref: Some(i64::from(mr)),
                    reason: format!("sent via {name} (SIM {imsi}), TP-MR {mr}"),
                }
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
                    at: queue::now_ms() + wait.as_millis() as i64,
                    reason: format!(
                        "attempt {attempts} failed on {name}: {e}; retrying in {}s, on another modem if one is free",
                        wait.as_secs()
                    ),
                }
            }
            Err(e) if e.is_temporary() => Change::Fail {
                part: part.id,
                reason: format!("failed after {attempts} attempts; the last on {name}: {e}"),
            },
            Err(e) => Change::Fail {
                part: part.id,
                reason: format!("{name}: {e} (permanent)"),
            },
        };
        let stop = !matches!(change, Change::Sent { .. });
        let retry_at = match &change {
            Change::Retry { at, .. } => Some(*at),
            _ => None,
        };
        if let Err(e) = store.change(change).await {
            warn!(error = %e, "cannot record a send result");
            return;
        }
        if stop {
            // The rest of the message waits with it, so its parts stay together.
            if let Some(at) = retry_at {
                for rest in &w.pending[i + 1..] {
                    let _ = store
                        .change(Change::Retry {
                            part: rest.id,
                            at,
                            reason: format!("waiting for part {} to be retried", part.seq),
                        })
                        .await;
                }
            }
            debug!(modem = %name, recipient = w.recipient_id, "message stopped");
            return;
        }
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
