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
//! Each part is marked `sending` durably (invariant 3) before its PDU is handed to the driver;
//! a driver whose modem is not ready writes nothing and says so, and the part is released:
//! queued again as it was, so "not ready" costs no attempt.
//!
//! While a part is on the air, the worker marks the part it sends next (the rest of the
//! message, or the next message it should take), so that the modem does not wait for a commit
//! between its `+CMGS` answer and the next `AT+CMGS`. That mark's commit may wait up to half the
//! modem's usual send time for other modems' marks to share it (`Store::changes_by`); if the
//! modem answers first, the worker hurries it. The part marked ahead is released if it does
//! not go: the part before it failed (it is then retried or failed with the rest of its
//! message), or the modem stopped, or the gateway is stopping. The price is at a crash: a
//! modem may leave two parts `sending`, the one on the air and the one marked ahead, and both
//! become `uncertain`. A SIM with a rate limit waits between sends anyway: nothing is marked
//! ahead there.
//!
//! The answer
//! marks the part `sent`, schedules a retry with backoff (the rest of the message waits with
//! it), fails it with its reason (a permanent `+CMS ERROR`, TS 27.005 §3.2.5, or the last
//! allowed attempt), or makes it `uncertain` (no answer after the PDU was written). An answer
//! the store has no room to record (a full disk) is kept by the worker and written before
//! anything else once there is room; nothing more is sent meanwhile.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::driver::{Modem, SendError};
use super::pdu::{self, SubmitOptions, SubmitPdu};
use crate::queue::dispatch::PendingPart;
use crate::queue::{self, Change, QueueError, Store, Work};
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
    /// Workers waiting for work: while there are any, a busy modem takes no new message ahead
    /// (an idle one sends it now, rather than after the busy one's send).
    idle: AtomicUsize,
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
            idle: AtomicUsize::new(0),
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

/// The longest a part marked ahead lets its commit wait for company (see [`Store::changes_by`]):
/// on modems that take seconds per SMS, the commit still comes soon after the mark.
const MAX_LINGER: Duration = Duration::from_millis(250);

/// How long a worker waits, after the store failed to take a mark, before it takes another
/// message: a part is sent only once marked (invariant 3), and a store that cannot write (a
/// full disk) is not retried in a loop.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// A message this modem is sending: its parts' PDUs and the parts still to send, in order.
struct Message {
    work: Work,
    pdus: Vec<SubmitPdu>,
}

impl Message {
    fn rid(&self) -> i64 {
        self.work.recipient_id
    }

    /// The `pending[idx]` part and its PDU.
    fn part(&self, idx: usize) -> Option<(&PendingPart, &SubmitPdu)> {
        let part = self.work.pending.get(idx)?;
        let pdu = self.pdus.get(usize::from(part.seq).saturating_sub(1))?;
        Some((part, pdu))
    }
}

/// The next part this worker sends: `pending[idx]` of its message, already marked `sending`
/// on disk (marked ahead, while the part before it was on the air) or not yet.
enum Next {
    None,
    Unmarked(Arc<Message>, usize),
    Marked(Arc<Message>, usize),
}

/// One worker's state between two parts.
struct Worker {
    inner: Arc<Inner>,
    /// This worker's modem, as an index into `inner.modems`.
    me: usize,
    pm: PoolModem,
    /// When this SIM last sent, for its rate limit.
    last_send: Option<Instant>,
    /// The `sent` of the part this modem sent last, not committed yet: it shares the commit of
    /// the next part's `sending`, or is committed alone before the worker waits for anything.
    owed: Option<Change>,
    /// How long this modem's recent sends took (a moving average): a part marked ahead lets its
    /// commit wait half of that for company.
    send_time: Option<Duration>,
    /// The store failed to take this worker's last mark: it waits [`STORE_RETRY`] before it
    /// takes another message.
    store_failed: AtomicBool,
    /// Send results the store refused for want of space (a `sent`, a part given back, a retry
    /// or a failure), each commit's changes together, oldest first: written before anything
    /// else once there is room ([`Worker::write_unrecorded`]), so that a part that left is
    /// recorded `sent` rather than left `sending`, to become `uncertain` at the next start.
    /// Never a `sending` mark: a part whose mark was refused is not sent.
    unrecorded: Mutex<VecDeque<Vec<Change>>>,
}

async fn worker(inner: Arc<Inner>, me: usize, shutdown: CancellationToken) {
    let pm = inner.modems[me].clone();
    let mut modem = pm.modem.clone();
    let mut w = Worker {
        inner,
        me,
        pm,
        last_send: None,
        owed: None,
        send_time: None,
        store_failed: AtomicBool::new(false),
        unrecorded: Mutex::new(VecDeque::new()),
    };
    let inner = w.inner.clone();
    let mut next = Next::None;
    loop {
        if shutdown.is_cancelled() {
            w.settle(&mut next, "the gateway is stopping").await;
            w.give_up_unrecorded().await;
            return;
        }
        // Results the store refused come first: nothing more is sent while they cannot be
        // written (its marks would be refused too).
        if !w.write_unrecorded().await {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(STORE_RETRY) => {}
            }
            continue;
        }
        if w.store_failed.swap(false, Ordering::Relaxed) {
            // The message it could not mark went back to the list, and would be taken again
            // at once: on a full disk, the worker would spin and fill the log.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(STORE_RETRY) => {}
            }
            continue;
        }
        if !modem.is_ready() {
            w.settle(&mut next, "its modem is not ready").await;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                alive = modem.changed() => if !alive {
                    w.give_up_unrecorded().await;
                    return;
                },
                // Results kept for want of space are written while the modem is out too.
                _ = tokio::time::sleep(STORE_RETRY), if w.has_unrecorded() => {}
            }
            continue;
        }
        // The SIM's rate limit: wait before taking a message, so a free modem takes it.
        if let (Some(gap), Some(last)) = (w.pm.min_interval, w.last_send)
            && Instant::now() < last + gap
        {
            w.record().await;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep_until(last + gap) => {}
            }
            continue;
        }
        let (msg, idx) = match std::mem::replace(&mut next, Next::None) {
            Next::Marked(msg, idx) => (msg, idx),
            Next::Unmarked(msg, idx) => {
                if !w.mark(&msg, idx).await {
                    release(&w.inner, msg.rid());
                    continue;
                }
                (msg, idx)
            }
            Next::None => {
                // Register interest before looking, so a notification between the two is lost
                // to neither.
                let listed = inner.work_listed.notified();
                let Some(job) = take_job(&inner, me) else {
                    inner.wake_feeder.notify_one();
                    w.record().await;
                    inner.idle.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = listed => {}
                        _ = modem.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    inner.idle.fetch_sub(1, Ordering::Relaxed);
                    continue;
                };
                let Some(msg) = w.message(job).await else {
                    continue;
                };
                if !w.mark(&msg, 0).await {
                    release(&w.inner, msg.rid());
                    continue;
                }
                (msg, 0)
            }
        };
        next = w.send(msg, idx).await;
    }
}

impl Worker {
    fn name(&self) -> &str {
        self.pm.modem.name()
    }

    /// Encodes a job's message; one that cannot be encoded fails, its recipient goes back to
    /// the feeder, and the answer is `None`.
    async fn message(&self, job: Job) -> Option<Arc<Message>> {
        let mut w = job.work;
        let rid = w.recipient_id;
        let seg = Segmentation {
            encoding: w.encoding,
            parts: std::mem::take(&mut w.all_parts),
            truncated: false,
        };
        let opts = SubmitOptions {
            status_report: self.inner.cfg.status_reports,
            validity: self.inner.cfg.validity,
            // 0: the modem assigns TP-MR itself and tells us in +CMGS.
            message_ref: 0,
            // The same reference for every part of this message, across retries and restarts,
            // and different for the messages that follow it to the same number.
            concat_ref: (rid & 0xff) as u16,
            ..SubmitOptions::default()
        };
        let failed = match pdu::encode_submit(&w.number, &seg, &opts) {
            Ok(pdus) => {
                let msg = Message { work: w, pdus };
                let missing = (0..msg.work.pending.len()).find(|&i| msg.part(i).is_none());
                match missing.and_then(|i| msg.work.pending.get(i)) {
                    None => return Some(Arc::new(msg)),
                    Some(p) => Some(Change::Fail {
                        part: p.id,
                        reason: format!("part {} does not exist in the encoded message", p.seq),
                    }),
                }
            }
            Err(e) => w.pending.first().map(|first| Change::Fail {
                part: first.id,
                reason: format!("the message cannot be encoded: {e}"),
            }),
        };
        if let Some(change) = failed
            && let Err(e) = self.inner.store.change(change).await
        {
            warn!(error = %e, "cannot record a message that cannot be sent");
        }
        release(&self.inner, rid);
        None
    }

    /// Marks `pending[idx]` of `msg` `sending` on this modem (invariant 3), at once, in one
    /// commit with the `sent` still owed. False if the commit failed: the part was not marked.
    async fn mark(&mut self, msg: &Message, idx: usize) -> bool {
        let Some((part, _)) = msg.part(idx) else {
            return false;
        };
        let owed = self.owed.take();
        self.commit_mark(owed, part.id, None).await
    }

    /// Commits `sending` of `part` on this modem with the `sent` owed, all or none (if it fails,
    /// that part stays `sending`), by `due` or at once. False if it failed.
    async fn commit_mark(&self, owed: Option<Change>, part: i64, due: Option<Instant>) -> bool {
        let sent = u64::from(owed.is_some());
        let mut changes = Vec::with_capacity(2);
        changes.extend(owed.clone());
        changes.push(Change::Sending {
            part,
            channel: self.name().to_string(),
        });
        let done = match self.commit_uncounted(changes, due).await {
            // Its message ended while the part waited here (a failed status report of an
            // earlier part fails the rest): not sent. The `sent` owed is recorded alone.
            Err(QueueError::NotQueued(p)) => {
                debug!(modem = %self.name(), part = p, "not sending a part no longer queued");
                if let Some(owed) = owed
                    && let Err(e) = self.commit_uncounted(vec![owed.clone()], None).await
                    && !self.keep_unrecorded(vec![owed], &e)
                {
                    // It stays `sending`: at the next start it becomes `uncertain`.
                    warn!(error = %e, "cannot record a sent part");
                }
                false
            }
            Err(e) => {
                // The `sent` owed went down with the mark; the part it is for did leave.
                if let Some(owed) = owed {
                    self.keep_unrecorded(vec![owed], &e);
                }
                self.store_failed.store(true, Ordering::Relaxed);
                if e.is_storage_full() {
                    error!(modem = %self.name(), error = %e, retry_in = ?STORE_RETRY, "cannot mark a part sending: the store's disk is full; not sending it");
                } else {
                    warn!(modem = %self.name(), error = %e, retry_in = ?STORE_RETRY, "cannot mark a part sending; not sending it");
                }
                false
            }
            Ok(()) => true,
        };
        // A failed commit is counted too: the reports waiting for it would wait in vain.
        self.pm.modem.record_sends(sent);
        done
    }

    /// Commits `changes`, by `due` or at once, and tells the modem how many of its sends are
    /// recorded now, so that their status reports can be matched.
    async fn commit(&self, changes: Vec<Change>, due: Option<Instant>) -> Result<(), QueueError> {
        let sent = changes
            .iter()
            .filter(|c| matches!(c, Change::Sent { .. }))
            .count() as u64;
        let done = self.commit_uncounted(changes, due).await;
        // A failed commit is counted too: the reports waiting for it would wait in vain.
        self.pm.modem.record_sends(sent);
        done
    }

    /// Commits `changes`, by `due` or at once; the caller counts the sends among them.
    async fn commit_uncounted(
        &self,
        changes: Vec<Change>,
        due: Option<Instant>,
    ) -> Result<(), QueueError> {
        let store = &self.inner.store;
        match due {
            Some(due) => store.changes_by(changes, due).await,
            None => store.changes(changes).await,
        }
    }

    /// Keeps `changes` (send results, never a mark), whose commit the store refused with `e`,
    /// to be written once there is room, if `e` says the store is full; true if kept. Other
    /// failures are not kept: their parts stay as the store has them.
    fn keep_unrecorded(&self, changes: Vec<Change>, e: &QueueError) -> bool {
        if !e.is_storage_full() || changes.is_empty() {
            return false;
        }
        error!(modem = %self.name(), error = %e, "cannot record a send result: the store's disk is full; it is kept and written once there is room");
        self.kept().push_back(changes);
        true
    }

    fn has_unrecorded(&self) -> bool {
        !self.kept().is_empty()
    }

    /// The results kept for want of space. The lock is never held across an `await`; a
    /// panic elsewhere while it was held leaves a list that is still whole, so it is used as is.
    fn kept(&self) -> MutexGuard<'_, VecDeque<Vec<Change>>> {
        self.unrecorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the results [`keep_unrecorded`](Self::keep_unrecorded) kept, oldest first, each
    /// commit's changes in one commit again. True once none is left; false while the store
    /// still has no room. One that fails otherwise is dropped, as it would have been at first.
    async fn write_unrecorded(&self) -> bool {
        loop {
            let Some(changes) = self.kept().pop_front() else {
                return true;
            };
            // Counted for the status reports when they were refused: not again.
            match self.commit_uncounted(changes.clone(), None).await {
                Ok(()) => {
                    info!(modem = %self.name(), "a send result kept while the store's disk was full is recorded")
                }
                Err(e) if e.is_storage_full() => {
                    self.kept().push_front(changes);
                    return false;
                }
                Err(e) => warn!(modem = %self.name(), error = %e, "cannot record a send result"),
            }
        }
    }

    /// At the end: a last try at the results kept for want of space; those still refused are
    /// lost with the process, and their parts, left `sending`, become `uncertain` at the next
    /// start.
    async fn give_up_unrecorded(&self) {
        if self.write_unrecorded().await {
            return;
        }
        let n = self.kept().len();
        error!(modem = %self.name(), results = n, "stopping with send results the store had no room for: their parts stay `sending` and become `uncertain` at the next start");
    }

    /// Commits the `sent` still owed, before the worker waits for anything.
    async fn record(&mut self) {
        let owed = self.owed.take();
        self.commit_owed(owed, None).await;
    }

    /// Gives up the part in hand without sending it: one marked goes back to the queue (with
    /// the `sent` still owed, in one commit), and its message to the feeder.
    async fn settle(&mut self, next: &mut Next, why: &str) {
        let mut changes: Vec<Change> = self.owed.take().into_iter().collect();
        let rid = match std::mem::replace(next, Next::None) {
            Next::None => None,
            Next::Unmarked(msg, _) => Some(msg.rid()),
            Next::Marked(msg, idx) => {
                if let Some((part, _)) = msg.part(idx) {
                    changes.push(Change::Release {
                        part: part.id,
                        at: None,
                        reason: format!("not sent: {why}; back in the queue"),
                    });
                }
                Some(msg.rid())
            }
        };
        if !changes.is_empty()
            && let Err(e) = self.commit(changes.clone(), None).await
            && !self.keep_unrecorded(changes, &e)
        {
            warn!(error = %e, "cannot record the parts in hand");
        }
        if let Some(rid) = rid {
            release(&self.inner, rid);
        }
    }

    /// Sends `pending[idx]` of `msg`, already marked `sending`, and meanwhile marks the part
    /// that follows it on this modem (the rest of the message, or the next message it should
    /// take), so that it can be written as soon as the modem answers: the commit of its mark
    /// is then off the modem's path and shared with the other modems' marks. Returns that
    /// part.
    async fn send(&mut self, msg: Arc<Message>, idx: usize) -> Next {
        let Some((part, pdu)) = msg.part(idx) else {
            release(&self.inner, msg.rid());
            return Next::None;
        };
        let (part, pdu) = (part.clone(), pdu.clone());
        let started = Instant::now();
        self.last_send = Some(started);
        // A SIM with a rate limit waits between sends anyway: nothing is marked ahead there.
        let ahead = self.pm.min_interval.is_none();
        let due = self.send_time.map(|t| started + (t / 2).min(MAX_LINGER));
        let marking = AtomicBool::new(false);
        // Without a mark ahead, the `sent` owed went with this part's mark: none is owed now.
        let owed = if ahead { self.owed.take() } else { None };
        let this = &*self;
        let on_air = async {
            let result = this
                .pm
                .modem
                .send(pdu)
                .await
                .map(|mr| (mr, started.elapsed()));
            // The modem is free: a mark still waiting for company is wanted now.
            if marking.load(Ordering::Acquire) {
                this.inner.store.hurry();
            }
            result
        };
        let (result, marked) = tokio::join!(on_air, async {
            if ahead {
                this.mark_ahead(&msg, idx, owed, due, &marking).await
            } else {
                None
            }
        });
        let name = self.name().to_string();
        let last = idx + 1 == msg.work.pending.len();
        let attempts = part.attempts + 1;
        let change = match result {
            Ok((mr, took)) => {
                self.send_time = Some(match self.send_time {
                    Some(t) => (t * 3 + took) / 4,
                    None => took,
                });
                let sent_at = crate::queue::now_ms();
                let (reason, sim) = self.pm.modem.with_status(|s| {
                    let imsi = s.imsi.as_deref().unwrap_or("unknown");
                    (
                        format!("sent via {name} (SIM {imsi}), TP-MR {mr}"),
                        s.imsi.clone(),
                    )
                });
                self.owed = Some(Change::Sent {
                    part: part.id,
                    message_ref: Some(i64::from(mr)),
                    sim,
                    sent_at,
                    reason,
                });
                return match marked {
                    Some((next, i)) => {
                        if !Arc::ptr_eq(&next, &msg) {
                            // The message is done; its last `sent` waits in `owed`, its part
                            // `sending` on disk meanwhile, which the feeder does not read as
                            // ready, so the recipient can go.
                            release(&self.inner, msg.rid());
                        }
                        Next::Marked(next, i)
                    }
                    None if !last => Next::Unmarked(msg, idx + 1),
                    None => {
                        release(&self.inner, msg.rid());
                        Next::None
                    }
                };
            }
            // Nothing was written: the part goes back as it was.
            Err(SendError::NotReady(e)) => Change::Release {
                part: part.id,
                at: None,
                reason: format!("not sent: {name} is not ready ({e}); back in the queue"),
            },
            Err(SendError::AfterPdu(e)) => Change::Uncertain {
                part: part.id,
                reason: format!(
                    "{name}: no answer after the message was written ({e}); it may have been sent, so it is not sent again"
                ),
            },
            Err(e) if e.is_temporary() && attempts < i64::from(self.inner.cfg.max_attempts) => {
                let wait = backoff(&self.inner.cfg, attempts);
                Change::Retry {
                    part: part.id,
                    at: queue::now_ms()
                        .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                    reason: format!(
                        "attempt {attempts} of {} failed on {name}: {e}; retrying in {}s",
                        self.inner.cfg.max_attempts,
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
        // The message stops here. A part marked ahead of the same message goes back with the
        // rest of it: due with the retry, or as it was (and then failed with it, after a
        // failed part: the release comes first, so that the failure finds it unsent). A
        // part of another message is kept while the modem is ready, else it goes back too.
        let retry_at = match &change {
            Change::Retry { at, .. } => Some(*at),
            _ => None,
        };
        let mut changes = Vec::new();
        let mut next = Next::None;
        let mut rest_from = idx + 1;
        if let Some((m, i)) = marked {
            if Arc::ptr_eq(&m, &msg) {
                if let Some((p, _)) = m.part(i) {
                    changes.push(Change::Release {
                        part: p.id,
                        at: retry_at,
                        reason: format!(
                            "not sent: part {} did not go; back in the queue",
                            part.seq
                        ),
                    });
                }
                rest_from = i + 1;
            } else if self.pm.modem.is_ready() {
                next = Next::Marked(m, i);
            } else {
                if let Some((p, _)) = m.part(i) {
                    changes.push(Change::Release {
                        part: p.id,
                        at: None,
                        reason: format!("not sent: {name} stopped before it; back in the queue"),
                    });
                }
                release(&self.inner, m.rid());
            }
        }
        if matches!(change, Change::Fail { .. }) {
            changes.push(change);
        } else {
            changes.insert(0, change);
        }
        // The rest of the message waits with a retried part, so its parts stay together, and
        // in the same commit. After an uncertain or failed part the rest stays queued as it is.
        if let Some(at) = retry_at {
            for rest in msg.work.pending.get(rest_from..).unwrap_or_default() {
                changes.push(Change::Retry {
                    part: rest.id,
                    at,
                    reason: format!("waiting for part {} to be retried", part.seq),
                });
            }
        }
        if let Err(e) = self.commit(changes.clone(), None).await
            && !self.keep_unrecorded(changes, &e)
        {
            warn!(error = %e, "cannot record a send result");
        }
        debug!(modem = %name, recipient = msg.rid(), "message stopped");
        release(&self.inner, msg.rid());
        next
    }

    /// Commits a `sent` that was owed, by `due` or at once.
    async fn commit_owed(&self, owed: Option<Change>, due: Option<Instant>) {
        let Some(change) = owed else { return };
        if let Err(e) = self.commit(vec![change.clone()], due).await
            && !self.keep_unrecorded(vec![change], &e)
        {
            // The part stays `sending`: at the next start it becomes `uncertain`, not sent again.
            warn!(error = %e, "cannot record a sent part");
        }
    }

    /// Marks the part this modem sends after `pending[idx]` of `msg`, by `due`: the rest of
    /// the message, or the first part of the next message it should take. The `sent` still
    /// owed shares that commit, or is committed alone by `due` when there is no such part.
    /// Returns the part marked, if any.
    async fn mark_ahead(
        &self,
        msg: &Arc<Message>,
        idx: usize,
        owed: Option<Change>,
        due: Option<Instant>,
        marking: &AtomicBool,
    ) -> Option<(Arc<Message>, usize)> {
        let candidate = if idx + 1 < msg.work.pending.len() {
            Some((msg.clone(), idx + 1))
        } else if self.inner.idle.load(Ordering::Relaxed) > 0 {
            None
        } else {
            match take_job(&self.inner, self.me) {
                Some(job) => self.message(job).await.map(|m| (m, 0)),
                None => {
                    self.inner.wake_feeder.notify_one();
                    None
                }
            }
        };
        let Some((next, i, part)) =
            candidate.and_then(|(next, i)| next.part(i).map(|(p, _)| p.id).map(|p| (next, i, p)))
        else {
            self.commit_owed(owed, due).await;
            return None;
        };
        marking.store(true, Ordering::Release);
        let marked = self.commit_mark(owed, part, due).await;
        marking.store(false, Ordering::Release);
        if marked {
            return Some((next, i));
        }
        if !Arc::ptr_eq(&next, msg) {
            release(&self.inner, next.rid());
        }
        None
    }
}

/// The wait before the attempt after `attempts`: `retry_base`, doubled at each attempt, up to
/// `retry_max`.
pub(crate) fn backoff(cfg: &PoolConfig, attempts: i64) -> Duration {
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
