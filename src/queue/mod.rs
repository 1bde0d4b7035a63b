//! The durable queue: requests, recipients, parts, and the event log.
//!
//! Every accepted mail becomes one request row, a row per recipient and a row per SMS part, all
//! in one transaction that is on disk (SQLite WAL, `synchronous=FULL`) before the caller is told
//! so (invariant 1). Writes go through a single writer task that takes every job waiting when it
//! starts a transaction and commits them together: concurrent SMTP sessions share one fsync
//! (group commit) instead of queuing for one each.
//!
//! Every state change is an event row with its time and reason (invariant 6); `status` and
//! `list` are built from these rows.

pub mod dispatch;
pub mod handover;
pub mod imap;
pub mod policy;
mod provider;
pub mod replies;
pub mod reports;
pub mod state;
#[cfg(test)]
pub(crate) mod testing;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

pub use dispatch::{Change, PendingPart, Work};
pub use policy::{Guard, OwedReplies, QueuePolicy, QuotaExceeded, Quotas};
pub use reports::{Applied, IncomingReport, Matching};
pub use state::State;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many jobs one transaction takes at most; bounds the latency a large batch adds.
const MAX_BATCH: usize = 512;

/// Rounds of the runtime's other work that the writer lets run between taking a batch and
/// committing it (see [`writer`]).
const GATHER_ROUNDS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue store failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the queue store could not be migrated: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the queue writer has stopped")]
    WriterGone,
    #[error("no request matches `{0}`")]
    NotFound(String),
    #[error("`{0}` matches several requests; give more of the id")]
    Ambiguous(String),
    #[error("quota exceeded: {0}")]
    Quota(QuotaExceeded),
    #[error("there is no part {0} in the queue")]
    NoSuchPart(i64),
    /// A part to be marked `sending` is no longer waiting to be sent: its message failed
    /// meanwhile (a failed status report of an earlier part fails the rest), or it went.
    #[error("part {0} is no longer waiting to be sent")]
    NotQueued(i64),
    /// A state change failed half-way; its batch is rolled back whole.
    #[error("the queue store failed during a state change: {0}")]
    Broken(String),
}

impl QueueError {
    /// Whether the store could not write for want of space (SQLite's `SQLITE_FULL`: the disk, or
    /// the file system's quota, is full). Nothing of the failed transaction was kept, and the
    /// next one can succeed as soon as space is freed.
    pub fn is_storage_full(&self) -> bool {
        // SQLITE_FULL (13) has no extended codes; the writer's batch errors keep the driver's
        // sentence only, which quotes the code: `(code: 13) database or disk is full`.
        const FULL: &str = "(code: 13)";
        match self {
            QueueError::Db(sqlx::Error::Database(e)) => e.code().as_deref() == Some("13"),
            QueueError::Db(sqlx::Error::Io(e)) => e.kind() == std::io::ErrorKind::StorageFull,
            QueueError::Db(e) => e.to_string().contains(FULL),
            QueueError::Broken(msg) => msg.contains(FULL),
            _ => false,
        }
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Smtp,
    Imap,
    /// Submitted by an application over SMPP (`peer::server`).
    Smpp,
    /// Forwarded by another site of the organization, which routed it here and applied its own
    /// quotas and guard to it already (`peer::server`).
    Peer,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Smtp => "smtp",
            Source::Imap => "imap",
            Source::Smpp => "smpp",
            Source::Peer => "peer",
        }
    }
}

/// A mail to queue, already parsed: one text, one or more recipients.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub source: Source,
    pub client: Option<String>,
    pub helo: Option<String>,
    pub auth_user: Option<String>,
    /// Envelope sender; empty for the null sender `<>`.
    pub mail_from: String,
    /// Who quotas and the pumping guard count this against: the authenticated user, else the
    /// envelope sender, lower-cased.
    pub sender: String,
    /// The envelope sender's domain, lower-cased, for domain quotas.
    pub sender_domain: String,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub dsn_envid: Option<String>,
    pub dsn_ret: Option<String>,
    pub text: String,
    pub encoding: crate::sms::Encoding,
    /// The text of each SMS part, in order.
    pub parts: Vec<String>,
    pub truncated: bool,
    pub size: usize,
    pub headers: Vec<u8>,
    pub recipients: Vec<NewRecipient>,
}

#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub address: String,
    pub number: String,
    pub name: Option<String>,
    /// ISO 3166 code of the destination, for the pumping guard.
    pub country: Option<String>,
    pub dsn_notify: Option<String>,
    pub dsn_orcpt: Option<String>,
}

/// What `accept` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new request; `duplicates` recipients were already queued by an earlier copy.
    Queued {
        id: String,
        recipients: usize,
        duplicates: usize,
        /// Recipients the pumping guard held for an admin (they are queued, not sent).
        held: usize,
    },
    /// Every recipient was already queued by an earlier copy of this mail (same sender,
    /// Message-ID and number): nothing new was stored.
    Duplicate { id: String },
}

impl Accepted {
    pub fn id(&self) -> &str {
        match self {
            Accepted::Queued { id, .. } | Accepted::Duplicate { id } => id,
        }
    }
}

enum Job {
    Accept(
        Box<NewRequest>,
        oneshot::Sender<Result<Accepted, QueueError>>,
    ),
    /// State changes applied together, all or none (one modem's `sent` and its next
    /// `sending` share a commit). With a time, the commit may wait until then for company
    /// (see [`Store::changes_by`]); without, it is made as soon as the writer is free.
    Change(
        Vec<Change>,
        oneshot::Sender<Result<(), QueueError>>,
        Option<Instant>,
    ),
    /// A delivery report to match to its part and apply.
    Report(
        Box<IncomingReport>,
        Matching,
        oneshot::Sender<Result<Applied, QueueError>>,
    ),
    /// Snapshots of modem status (name, JSON), replacing the previous ones; with the names of
    /// every configured modem, the rows of modems no longer configured are deleted.
    Modems(
        Vec<(String, String)>,
        Option<Vec<String>>,
        oneshot::Sender<Result<(), QueueError>>,
    ),
    /// IMAP pickup's claims and the notices they cause (`imap.rs`).
    Imap(imap::Op, oneshot::Sender<Result<imap::Done, QueueError>>),
    /// Status replies: attempts, decisions, delays (`replies.rs`).
    Replies(replies::Op, oneshot::Sender<Result<u64, QueueError>>),
}

/// What a job did, for the writer to hand back to whoever sent it.
enum Outcome {
    Accepted(Accepted),
    Changed,
    Imap(imap::Done),
    Reported(Applied),
    Replies(u64),
}

/// Handle to the queue. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    path: std::path::PathBuf,
    writer: mpsc::Sender<Job>,
    /// Asks the writer to stop waiting for company and commit what it holds now.
    hurry: Arc<Notify>,
    /// Transactions committed by the writer; with `jobs`, shows how well commits are shared.
    commits: Arc<AtomicU64>,
    /// Parts this site sent over the last minute, counted as the writer commits them.
    sent: Arc<SentRate>,
}

/// Parts this site sent (by modem or provider; not forwarded to a peer), per second over the
/// last minute: the throughput a peer link advertises. Counted from the `sent` changes the
/// writer commits, so measuring it reads no history: a query over the parts sent in the last
/// minute has no index to go by and would scan every part ever sent, once a second.
#[derive(Debug)]
pub struct SentRate {
    /// Parts sent in each of the last 60 seconds: (Unix second, parts), at `second % 60`.
    slots: std::sync::Mutex<[(u64, u64); 60]>,
}

impl Default for SentRate {
    fn default() -> Self {
        SentRate {
            slots: std::sync::Mutex::new([(0, 0); 60]),
        }
    }
}

impl SentRate {
    fn record(&self, at_ms: i64, parts: u64) {
        if parts == 0 {
            return;
        }
        let second = u64::try_from(at_ms / 1000).unwrap_or(0);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[(second % 60) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += parts;
    }

    /// Parts sent per second over the minute before `now_ms`.
    pub fn per_second(&self, now_ms: i64) -> f64 {
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let parts: u64 = slots
            .iter()
            .filter(|(second, _)| *second <= now && now - *second < 60)
            .map(|(_, n)| n)
            .sum();
        parts as f64 / 60.0
    }
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Invariant 1: a commit is on disk when COMMIT returns, WAL included (`fdatasync`: see
        // `.cargo/config.toml`).
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30))
}

impl Store {
    /// Opens (creating and migrating if needed) the store with no quotas and no pumping guard;
    /// every status reply is owed, and decided on when it would be sent.
    pub async fn open(path: &Path) -> Result<Store, QueueError> {
        Store::open_with(path, QueuePolicy::unlimited(OwedReplies::All)).await
    }

    /// Opens (creating and migrating if needed) the store and starts its writer task, which
    /// enforces `policy` on every request.
    pub async fn open_with(path: &Path, policy: QueuePolicy) -> Result<Store, QueueError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| QueueError::Db(sqlx::Error::Io(e)))?;
        }
        // The writer's multi-row inserts run inside a transaction that has written already, so
        // SQLite keeps a statement journal for each; past 64 KiB (a batch of a few mails) it
        // spilled to a temporary file, created and unlinked for every batch. In memory, it is
        // bounded by the batch (`MAX_BATCH`). Readers keep temporary files: an admin's sort of
        // a long history may be large.
        let writer_options = options(path).pragma("temp_store", "memory");
        let mut conn = SqliteConnection::connect_with(&writer_options).await?;
        MIGRATOR.run(&mut conn).await?;
        prepare_writer(&mut conn).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options(path))
            .await?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let commits = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(SentRate::default());
        let hurry = Arc::new(Notify::new());
        // The writer is a task of the runtime, not a thread of its own. On a thread of its own
        // each trip to SQLite came back sooner (the dedup lookup in 90-230 µs instead of
        // 300-430), but commits then held 4-5 mails instead of 7, and the CPU per mail rose
        // 10-30% for the same rate, in alternating runs of `smtp-source -s 20 -l 2048`.
        tokio::spawn(writer(
            conn,
            rx,
            hurry.clone(),
            commits.clone(),
            sent.clone(),
            Arc::new(policy),
        ));
        Ok(Store {
            read,
            path: path.to_path_buf(),
            writer: tx,
            hurry,
            commits,
            sent,
        })
    }

    /// Opens an existing store for reading only (the CLI, while the gateway runs).
    pub async fn open_read_only(path: &Path) -> Result<SqlitePool, QueueError> {
        if !path.exists() {
            return Err(QueueError::Db(sqlx::Error::Configuration(
                format!("no queue store at {}", path.display()).into(),
            )));
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        Ok(SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?)
    }

    /// Opens an existing store for an admin's change from the CLI while the gateway may run
    /// (SQLite serializes it with the gateway's writer).
    pub async fn open_for_admin(path: &Path) -> Result<SqlitePool, QueueError> {
        if !path.exists() {
            return Err(QueueError::Db(sqlx::Error::Configuration(
                format!("no queue store at {}", path.display()).into(),
            )));
        }
        Ok(SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options(path).create_if_missing(false))
            .await?)
    }

    /// Stores a request durably. Returns only after the commit is on disk.
    pub async fn accept(&self, req: NewRequest) -> Result<Accepted, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Accept(Box::new(req), tx))
            .await
            .map_err(|_| QueueError::WriterGone)?;
        rx.await.map_err(|_| QueueError::WriterGone)?
    }

    /// Applies a state change durably (with its event row). Returns after the commit.
    pub async fn change(&self, change: Change) -> Result<(), QueueError> {
        self.changes(vec![change]).await
    }

    /// Applies state changes durably, in order, all or none of them, in one commit. Returns
    /// after the commit.
    pub async fn changes(&self, change: Vec<Change>) -> Result<(), QueueError> {
        self.send_changes(change, None).await
    }

    /// Applies state changes as [`changes`](Self::changes) does, but lets their commit wait
    /// until `due` for other jobs to share it: a modem that marks its next part while the
    /// current one is still on the air needs that commit only when the air is clear. The
    /// writer commits at the earliest time any job it holds asks for, at once for a job
    /// without one, and at once after [`hurry`](Self::hurry).
    pub async fn changes_by(&self, change: Vec<Change>, due: Instant) -> Result<(), QueueError> {
        self.send_changes(change, Some(due)).await
    }

    async fn send_changes(
        &self,
        change: Vec<Change>,
        due: Option<Instant>,
    ) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Change(change, tx, due))
            .await
            .map_err(|_| QueueError::WriterGone)?;
        rx.await.map_err(|_| QueueError::WriterGone)?
    }

    /// Tells the writer that a job it holds for company (see [`changes_by`](Self::changes_by))
    /// is wanted now.
    pub fn hurry(&self) {
        self.hurry.notify_one();
    }

    /// Matches a delivery report to its part and applies it durably (see [`reports`]).
    pub async fn report(&self, r: IncomingReport, m: Matching) -> Result<Applied, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Report(Box::new(r), m, tx))
            .await
            .map_err(|_| QueueError::WriterGone)?;
        rx.await.map_err(|_| QueueError::WriterGone)?
    }

    async fn replies_op(&self, op: replies::Op) -> Result<u64, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Replies(op, tx))
            .await
            .map_err(|_| QueueError::WriterGone)?;
        rx.await.map_err(|_| QueueError::WriterGone)?
    }

    /// Records what the modem drivers report, for `mail2sms modems`.
    pub async fn record_modems(&self, snapshots: Vec<(String, String)>) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Modems(snapshots, None, tx))
            .await
            .map_err(|_| QueueError::WriterGone)?;
        rx.await.map_err(|_| QueueError::WriterGone)?
    }

    /// Names every configured modem (at start): `mail2sms modems` no longer shows modems
    /// removed from the configuration.
    pub async fn forget_other_modems(&self, configured: Vec<String>) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Modems(Vec::new(), Some(configured), tx))
            .await
            .map_err(|_| QueueError::WriterGone)?;
        rx.await.map_err(|_| QueueError::WriterGone)?
    }

    pub fn reader(&self) -> &SqlitePool {
        &self.read
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many transactions the writer has committed so far.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Parts this site sent per second over the last minute (see [`SentRate`]).
    pub fn sent_per_second(&self) -> f64 {
        self.sent.per_second(now_ms())
    }
}

/// The single writer: takes what is waiting, commits it in one transaction, answers each job.
async fn writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Job>,
    hurry: Arc<Notify>,
    commits: Arc<AtomicU64>,
    sent: Arc<SentRate>,
    limits: Arc<QueuePolicy>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Before it commits what it took, the writer lets the runtime run a few rounds of its
        // other tasks (each round ends with a poll of the I/O driver): sessions that are
        // reading the end of their DATA, and modem workers that are reading an answer, then
        // join this commit instead of waiting for the next one. A commit costs much the same
        // for one mail as for several (its fsync, and a page of each table and index it
        // touches: 17 WAL frames for one mail, 28 for five), so under load fewer, fuller
        // commits cost less CPU per mail; on an idle runtime a round is a poll that finds
        // nothing, microseconds. In alternating runs of `bench/intake`, commits held 6.5-7
        // mails instead of 4.6-5.2 and the CPU per mail fell 5-26%, about a tenth in most
        // of the eight pairs; the CPU per SMS of `bench/modems` fell 5-10%, for 0.15 ms more
        // from `250` to `AT+CMGS` (p50 1.5 ms).
        for _ in 0..GATHER_ROUNDS {
            if batch.len() >= MAX_BATCH {
                break;
            }
            tokio::task::yield_now().await;
            take_waiting(&mut rx, &mut batch);
        }
        // A batch of jobs that may wait waits for more until the earliest of their times:
        // a draining pool's jobs then share a commit a dozen at a time instead of two.
        while let Some(due) = batch_due(&batch)
            && batch.len() < MAX_BATCH
            && Instant::now() < due
        {
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                _ = tokio::time::sleep_until(due) => break,
                _ = hurry.notified() => {
                    // The job wanted may be sent and not yet taken: take whatever is there.
                    take_waiting(&mut rx, &mut batch);
                    break;
                }
            }
        }
        let results = commit_batch(&mut conn, &batch, &limits).await;
        commits.fetch_add(1, Ordering::Relaxed);
        let sent_parts = batch
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(job, _)| match job {
                Job::Change(changes, _, _) => changes
                    .iter()
                    .filter(|c| matches!(c, Change::Sent { .. } | Change::ProviderSent { .. }))
                    .count() as u64,
                _ => 0,
            })
            .sum();
        sent.record(now_ms(), sent_parts);
        for (job, result) in batch.drain(..).zip(results) {
            // A caller that went away (its connection dropped) just misses the answer.
            match (job, result) {
                (Job::Accept(_, reply), Ok(Outcome::Accepted(a))) => {
                    let _ = reply.send(Ok(a));
                }
                (Job::Accept(_, reply), Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                // `commit_batch` answers an Accept job with an Accepted outcome only, and a
                // Report job with a Reported one.
                (Job::Accept(_, reply), Ok(_)) => {
                    let _ = reply.send(Err(QueueError::WriterGone));
                }
                (Job::Report(_, _, reply), Ok(Outcome::Reported(a))) => {
                    let _ = reply.send(Ok(a));
                }
                (Job::Report(_, _, reply), Ok(_)) => {
                    let _ = reply.send(Err(QueueError::WriterGone));
                }
                (Job::Report(_, _, reply), Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                (Job::Change(_, reply, _) | Job::Modems(_, _, reply), result) => {
                    let _ = reply.send(result.map(|_| ()));
                }
                (Job::Imap(_, reply), Ok(Outcome::Imap(done))) => {
                    let _ = reply.send(Ok(done));
                }
                (Job::Imap(_, reply), Ok(_)) => {
                    let _ = reply.send(Err(QueueError::WriterGone));
                }
                (Job::Imap(_, reply), Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                (Job::Replies(_, reply), Ok(Outcome::Replies(n))) => {
                    let _ = reply.send(Ok(n));
                }
                (Job::Replies(_, reply), Ok(_)) => {
                    let _ = reply.send(Err(QueueError::WriterGone));
                }
                (Job::Replies(_, reply), Err(e)) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}

/// Adds the jobs already waiting in `rx` to `batch`, up to [`MAX_BATCH`], without waiting.
fn take_waiting(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// The time a batch's commit may wait until: the earliest its jobs ask for, `None` (now) if any
/// job asks for none.
fn batch_due(batch: &[Job]) -> Option<Instant> {
    batch
        .iter()
        .map(|job| match job {
            Job::Change(_, _, due) => *due,
            _ => None,
        })
        .try_fold(None, |min: Option<Instant>, due| {
            let due = due?;
            Some(Some(min.map_or(due, |m| m.min(due))))
        })
        .flatten()
}

/// Commits a batch; each job runs inside a savepoint so that one failing job fails alone.
/// If the commit itself fails, every job in the batch fails: none of them was stored.
async fn commit_batch(
    conn: &mut SqliteConnection,
    batch: &[Job],
    limits: &QueuePolicy,
) -> Vec<Result<Outcome, QueueError>> {
    if let Some(sqls) = fused_sqls(batch) {
        return commit_fused(conn, batch, &sqls, limits).await;
    }
    if batch
        .iter()
        .all(|job| matches!(job, Job::Accept(req, _) if !reads_history(&policy_for(req, limits))))
    {
        return commit_accepts(conn, batch, limits).await;
    }
    // The transaction and the savepoints are plain SQL, as on the other paths, not sqlx's
    // `Transaction`: sqlx counts the transactions it opened, and when a `COMMIT` fails in a way
    // that makes SQLite roll back by itself (a full disk, `SQLITE_FULL`, as `SQLITE_IOERR` or
    // `SQLITE_BUSY`), sqlx's `ROLLBACK` fails and its count stays at one: every later
    // `begin_with` is then refused ("non-zero transaction depth"), and the store would take no
    // more writes until a restart (`e2e_imap::a_full_disk_leaves_mail_in_the_mailbox_until_
    // there_is_room`).
    let mut results: Vec<Result<Outcome, QueueError>> = Vec::with_capacity(batch.len());
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        // A transaction a failure left open (its `ROLLBACK` failed too) ends here, so that
        // the next batch can begin.
        rollback(conn).await;
        let msg = e.to_string();
        return batch
            .iter()
            .map(|_| Err(QueueError::Db(sqlx::Error::Protocol(msg.clone()))))
            .collect();
    }
    for job in batch {
        // The hot paths run without a savepoint (two more trips to the store's thread, and a
        // sub-journal copy of every page they touch). A state change is one query with its
        // own savepoint inside where it needs one (see `dispatch::apply`); an accepted mail is
        // checked (duplicates, quotas, guard) before its one write. Either fails alone when
        // refused, and fails the whole batch when its write fails half-way (`Broken`).
        let unsaved = match job {
            Job::Change(changes, _, _) => Some(
                dispatch::apply(conn, changes)
                    .await
                    .map(|()| Outcome::Changed),
            ),
            Job::Accept(req, _) => Some(
                insert_request(conn, req, limits)
                    .await
                    .map(Outcome::Accepted),
            ),
            _ => None,
        };
        match unsaved {
            Some(Err(QueueError::Broken(msg))) => {
                rollback(conn).await;
                return batch
                    .iter()
                    .map(|_| Err(QueueError::Broken(msg.clone())))
                    .collect();
            }
            Some(r) => {
                results.push(r);
                continue;
            }
            None => {}
        }
        let saved = sqlx::query("SAVEPOINT job").execute(&mut *conn).await;
        if let Err(e) = saved {
            rollback(conn).await;
            return fail_batch(batch, &e.to_string());
        }
        let sp = &mut *conn;
        let r = async {
            let r = match job {
                Job::Accept(req, _) => Outcome::Accepted(insert_request(sp, req, limits).await?),
                Job::Change(changes, _, _) => {
                    dispatch::apply(sp, changes).await?;
                    Outcome::Changed
                }
                Job::Report(report, matching, _) => {
                    Outcome::Reported(reports::apply(sp, report, *matching).await?)
                }
                Job::Modems(snapshots, configured, _) => {
                    let now = now_ms();
                    if let Some(names) = configured {
                        let names = serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
                        sqlx::query(
                            "DELETE FROM modems WHERE name NOT IN (SELECT value FROM json_each(?1))",
                        )
                        .bind(names)
                        .execute(&mut *sp)
                        .await?;
                    }
                    for (name, json) in snapshots {
                        sqlx::query(
                            "INSERT INTO modems (name, status, updated_at) VALUES (?1, ?2, ?3)
                             ON CONFLICT (name) DO UPDATE SET status = ?2, updated_at = ?3",
                        )
                        .bind(name)
                        .bind(json)
                        .bind(now)
                        .execute(&mut *sp)
                        .await?;
                    }
                    Outcome::Changed
                }
                Job::Imap(op, _) => Outcome::Imap(imap::apply(sp, op, limits).await?),
                Job::Replies(op, _) => Outcome::Replies(replies::apply(sp, op).await?),
            };
            Ok::<_, QueueError>(r)
        }
        .await;
        // A job that failed leaves nothing of itself in the batch's transaction.
        let ended = match r {
            Ok(_) => "RELEASE job",
            Err(_) => "ROLLBACK TO job; RELEASE job",
        };
        if let Err(e) = sqlx::query(ended).execute(&mut *conn).await {
            rollback(conn).await;
            return fail_batch(batch, &e.to_string());
        }
        results.push(r);
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        // Whether SQLite rolled back by itself or not, nothing of the batch is kept.
        rollback(conn).await;
        let msg = e.to_string();
        return batch
            .iter()
            .map(|_| {
                Err(QueueError::Db(sqlx::Error::Protocol(format!(
                    "commit failed: {msg}"
                ))))
            })
            .collect();
    }
    results
}

/// Ends the writer's open transaction, if there is one, keeping nothing of it. Its error is
/// ignored: after a failed `COMMIT` SQLite may have rolled back by itself, and a `ROLLBACK` that
/// fails with the transaction still open is tried again by the next batch's `BEGIN`.
async fn rollback(conn: &mut SqliteConnection) {
    let _ = sqlx::query("ROLLBACK").execute(conn).await;
}

/// Every job of `batch` failed with `msg`: nothing of the batch was kept.
fn fail_batch(batch: &[Job], msg: &str) -> Vec<Result<Outcome, QueueError>> {
    batch
        .iter()
        .map(|_| Err(QueueError::Broken(msg.to_string())))
        .collect()
}

/// The queries of a batch made only of state changes that each have a prepared query (the
/// modems' jobs), the first opening the transaction and the last committing it; `None` for
/// any other batch.
fn fused_sqls(batch: &[Job]) -> Option<Vec<&'static str>> {
    let last = batch.len().checked_sub(1)?;
    batch
        .iter()
        .enumerate()
        .map(|(i, job)| match job {
            Job::Change(changes, _, _) => {
                dispatch::static_sql(changes, dispatch::Wrap::new(i == 0, i == last))
            }
            _ => None,
        })
        .collect()
}

/// Commits a batch of state changes whose `BEGIN IMMEDIATE` rides on the first job's query and
/// whose `COMMIT` rides on the last's: a modem's job, which usually commits alone, is then one
/// trip to the store's thread instead of three.
///
/// The rules are those of [`commit_batch`]: a job that found no such part wrote nothing and
/// fails alone; a job that may have written part of itself (`Broken`), or a failed commit,
/// fails the whole batch, rolled back.
async fn commit_fused(
    conn: &mut SqliteConnection,
    batch: &[Job],
    sqls: &[&'static str],
    limits: &QueuePolicy,
) -> Vec<Result<Outcome, QueueError>> {
    // Several modems' jobs: one query for all of them, if it can be had. If it fails, nothing
    // of it is kept, and the jobs go one by one, where each failure is told apart.
    let changes = batch.iter().filter_map(|job| match job {
        Job::Change(changes, _, _) => Some(changes.as_slice()),
        _ => None,
    });
    if batch.len() > 1
        && let Some(json) = dispatch::sends_json(changes)
    {
        match dispatch::run_sends(conn, json).await {
            Ok(()) => return batch.iter().map(|_| Ok(Outcome::Changed)).collect(),
            Err(e) => {
                tracing::debug!("a batch of sends goes job by job: {e}");
                rollback(conn).await;
            }
        }
    }
    let mut results: Vec<Result<Outcome, QueueError>> = Vec::with_capacity(batch.len());
    let fail_all = |msg: String| fail_batch(batch, &msg);
    for (i, (job, sql)) in batch.iter().zip(sqls).enumerate() {
        let Job::Change(changes, _, _) = job else {
            // `fused_sqls` gives a query to state changes only.
            return fail_all("a job that is not a state change reached the fused path".into());
        };
        match dispatch::run_static(conn, sql, changes).await {
            Ok(()) => results.push(Ok(Outcome::Changed)),
            Err(QueueError::Broken(msg)) => {
                // Written in part, or the commit failed: nothing of the batch is kept.
                rollback(conn).await;
                return fail_all(msg);
            }
            Err(e) if i == 0 => {
                // Whether the transaction was opened is unknown: end it, and give the rest of
                // the batch to the usual path, which opens its own.
                rollback(conn).await;
                results.push(Err(e));
                if let Some(rest) = batch.get(1..).filter(|r| !r.is_empty()) {
                    results.extend(Box::pin(commit_batch(conn, rest, limits)).await);
                }
                return results;
            }
            Err(e) => {
                results.push(Err(e));
                // The job that was to commit wrote nothing: commit the others' writes.
                if i + 1 == batch.len()
                    && let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await
                {
                    rollback(conn).await;
                    return fail_all(format!("commit failed: {e}"));
                }
            }
        }
    }
    results
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn dedup_key(req: &NewRequest, number: &str) -> Option<String> {
    req.message_id.as_ref().filter(|m| !m.is_empty()).map(|m| {
        format!(
            "{}\u{0}{}\u{0}{}",
            req.mail_from.to_ascii_lowercase(),
            m,
            number
        )
    })
}

/// Which requests already queued the given dedup keys (key → request id), in one query.
const KNOWN_KEYS_SQL: &str = "SELECT dedup_key, request_id FROM recipients
     WHERE dedup_key IN (SELECT value FROM json_each(?1))";

/// Every dedup key of the batch's mails, as the JSON array [`KNOWN_KEYS_SQL`] reads.
fn keys_json<'a>(reqs: impl IntoIterator<Item = &'a NewRequest>) -> String {
    let keys: Vec<String> = reqs
        .into_iter()
        .flat_map(|req| {
            req.recipients
                .iter()
                .filter_map(|r| dedup_key(req, &r.number))
        })
        .collect();
    serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into())
}

fn known_keys(rows: &[sqlx::sqlite::SqliteRow]) -> HashMap<String, String> {
    rows.iter()
        .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
        .collect()
}

/// A recipient of a mail that no earlier copy queued: its index in the envelope, and its dedup
/// key.
type Fresh<'a> = (usize, &'a NewRecipient, Option<String>);

/// The recipients of `req` to queue, and the first earlier request that already queued one of
/// the others. `known` maps the dedup keys already queued to their request.
fn fresh_recipients<'a>(
    req: &'a NewRequest,
    known: &HashMap<String, String>,
) -> (Vec<Fresh<'a>>, Option<String>) {
    let mut fresh: Vec<Fresh<'a>> = Vec::new();
    let mut earlier: Option<String> = None;
    for (i, r) in req.recipients.iter().enumerate() {
        let key = dedup_key(req, &r.number);
        if let Some(id) = key.as_ref().and_then(|k| known.get(k)) {
            earlier.get_or_insert_with(|| id.clone());
            continue;
        }
        // The same number twice in one envelope is one SMS.
        if fresh.iter().any(|(_, f, _)| f.number == r.number) {
            continue;
        }
        fresh.push((i, r, key));
    }
    (fresh, earlier)
}

/// The policy a request is held to: a message forwarded by a peer passed that site's quotas
/// and guard when it was accepted there; counting it again here would hold or refuse what was
/// already promised.
fn policy_for<'a>(req: &NewRequest, limits: &'a QueuePolicy) -> Cow<'a, QueuePolicy> {
    if req.source == Source::Peer {
        Cow::Owned(QueuePolicy::unlimited(OwedReplies::Never))
    } else {
        Cow::Borrowed(limits)
    }
}

/// One new request's rows, as [`INSERT_REQUESTS_SQL`] reads them from JSON.
#[derive(Serialize)]
struct RequestRow<'a> {
    id: &'a str,
    received_at: i64,
    source: &'static str,
    client: Option<&'a str>,
    helo: Option<&'a str>,
    auth_user: Option<&'a str>,
    mail_from: &'a str,
    message_id: Option<&'a str>,
    subject: Option<&'a str>,
    dsn_envid: Option<&'a str>,
    dsn_ret: Option<&'a str>,
    text: &'a str,
    encoding: String,
    part_count: usize,
    truncated: bool,
    size: usize,
    /// The header block in hexadecimal: JSON carries text, and the column is a BLOB.
    headers: String,
    sender: &'a str,
    sender_domain: &'a str,
    recipients: Vec<RecipientRow<'a>>,
    parts: &'a [String],
    /// Each recipient's `accepted` event reads `<reason_head><number><reason_tail>`.
    reason_head: String,
    reason_tail: String,
}

#[derive(Serialize)]
struct RecipientRow<'a> {
    idx: usize,
    address: &'a str,
    number: &'a str,
    name: Option<&'a str>,
    notify: Option<&'a str>,
    orcpt: Option<&'a str>,
    key: Option<&'a str>,
    country: Option<&'a str>,
    replies: String,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// `limits` is the request's own policy ([`policy_for`]).
fn request_row<'a>(
    req: &'a NewRequest,
    fresh: &'a [Fresh<'a>],
    id: &'a str,
    now: i64,
    limits: &QueuePolicy,
) -> RequestRow<'a> {
    let origin = match (&req.source, &req.client) {
        (Source::Smtp, Some(c)) => format!("over SMTP from {c}"),
        (Source::Smtp, None) => "over SMTP".to_string(),
        (Source::Imap, _) => "from an IMAP mailbox".to_string(),
        (Source::Smpp, c) => format!("over SMPP from {}", c.as_deref().unwrap_or("a client")),
        (Source::Peer, c) => format!("forwarded by site {}", c.as_deref().unwrap_or("?")),
    };
    let sender = if req.mail_from.is_empty() {
        "<>"
    } else {
        &req.mail_from
    };
    // Each recipient's event reads "accepted <origin> from <sender> for <number>: <parts>".
    let reason_head = format!("accepted {origin} from {sender} for ");
    let reason_tail = format!(
        ": {} {} part{}{}",
        req.parts.len(),
        req.encoding,
        if req.parts.len() == 1 { "" } else { "s" },
        if req.truncated {
            ", text truncated"
        } else {
            ""
        },
    );
    let recipients = fresh
        .iter()
        .map(|(idx, r, key)| RecipientRow {
            idx: *idx,
            address: &r.address,
            number: &r.number,
            name: r.name.as_deref(),
            notify: r.dsn_notify.as_deref(),
            orcpt: r.dsn_orcpt.as_deref(),
            key: key.as_deref(),
            country: r.country.as_deref(),
            // Nothing for a message forwarded by a peer (`policy_for`): the origin site reports.
            replies: limits
                .replies
                .actions(&req.mail_from, r.dsn_notify.as_deref(), &req.headers),
        })
        .collect();
    RequestRow {
        id,
        received_at: now,
        source: req.source.as_str(),
        client: req.client.as_deref(),
        helo: req.helo.as_deref(),
        auth_user: req.auth_user.as_deref(),
        mail_from: &req.mail_from,
        message_id: req.message_id.as_deref(),
        subject: req.subject.as_deref(),
        dsn_envid: req.dsn_envid.as_deref(),
        dsn_ret: req.dsn_ret.as_deref(),
        text: &req.text,
        encoding: req.encoding.to_string(),
        part_count: req.parts.len(),
        truncated: req.truncated,
        size: req.size,
        headers: hex(&req.headers),
        sender: &req.sender,
        sender_domain: &req.sender_domain,
        recipients,
        parts: &req.parts,
        reason_head,
        reason_tail,
    }
}

/// A batch's JSON (the one argument of a batch query, ?1), stored once as SQLite's binary JSON
/// for the statements after it to read ([`STAGED`]). Each statement that took ?1 itself
/// copied the text and parsed it again: four times for a batch of mails, five for the modems'.
/// The one row is replaced by each batch, and a rollback takes it back with the rest.
pub(super) const STAGE_SQL: &str =
    "INSERT OR REPLACE INTO temp.batch_json (k, b) VALUES (1, jsonb(?1))";

/// The batch's binary JSON, as [`STAGE_SQL`] left it.
pub(super) const STAGED: &str = "(SELECT b FROM temp.batch_json WHERE k = 1)";

/// The writer connection's own table for [`STAGE_SQL`] (in memory: `temp_store`).
const CREATE_STAGE_SQL: &str = "CREATE TEMP TABLE IF NOT EXISTS batch_json
    (k INTEGER PRIMARY KEY CHECK (k = 1), b BLOB NOT NULL)";

/// Makes `conn` able to run the writer's batch queries (their table of [`STAGE_SQL`]).
pub(super) async fn prepare_writer(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query(CREATE_STAGE_SQL).execute(conn).await?;
    Ok(())
}

/// Requests, their recipients, their parts and the recipients' `accepted` events, from one JSON
/// array of [`RequestRow`]s (?1, read once: see [`STAGE_SQL`]): one trip to the store's thread
/// for a whole batch of mails, with no more statements for more mails.
/// The joins on `recipients` go through its `(request_id, idx)` index, left to right
/// (`CROSS JOIN`), so that they never scan the table.
static INSERT_REQUESTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{STAGE_SQL};
     INSERT INTO requests (id, received_at, source, client, helo, auth_user, mail_from,
        message_id, subject, dsn_envid, dsn_ret, text, encoding, part_count, truncated, size,
        headers, sender, sender_domain)
     SELECT j.value ->> 'id', j.value ->> 'received_at', j.value ->> 'source',
            j.value ->> 'client', j.value ->> 'helo', j.value ->> 'auth_user',
            j.value ->> 'mail_from', j.value ->> 'message_id', j.value ->> 'subject',
            j.value ->> 'dsn_envid', j.value ->> 'dsn_ret', j.value ->> 'text',
            j.value ->> 'encoding', j.value ->> 'part_count', j.value ->> 'truncated',
            j.value ->> 'size', unhex(j.value ->> 'headers'), j.value ->> 'sender',
            j.value ->> 'sender_domain'
     FROM jsonb_each({STAGED}) j ORDER BY j.key;
     INSERT INTO recipients (request_id, idx, address, number, name, dsn_notify, dsn_orcpt,
        state, updated_at, dedup_key, country, replies, receipt_due)
     SELECT j.value ->> 'id', r.value ->> 'idx', r.value ->> 'address', r.value ->> 'number',
            r.value ->> 'name', r.value ->> 'notify', r.value ->> 'orcpt', 'accepted',
            j.value ->> 'received_at', r.value ->> 'key', r.value ->> 'country',
            r.value ->> 'replies',
            CASE WHEN j.value ->> 'source' IN ('smpp', 'peer') THEN 1 END
     FROM jsonb_each({STAGED}) j CROSS JOIN jsonb_each(j.value, '$.recipients') r
     ORDER BY j.key, r.key;
     INSERT INTO parts (recipient_id, seq, text, state, updated_at)
     SELECT rc.id, p.key + 1, p.value, 'accepted', j.value ->> 'received_at'
     FROM jsonb_each({STAGED}) j CROSS JOIN recipients rc ON rc.request_id = j.value ->> 'id'
          CROSS JOIN jsonb_each(j.value, '$.parts') p
     ORDER BY j.key, rc.idx, p.key;
     INSERT INTO events (at, request_id, recipient_id, state, reason)
     SELECT j.value ->> 'received_at', j.value ->> 'id', rc.id, 'accepted',
            (j.value ->> 'reason_head') || rc.number || (j.value ->> 'reason_tail')
     FROM jsonb_each({STAGED}) j CROSS JOIN recipients rc ON rc.request_id = j.value ->> 'id'
     ORDER BY j.key, rc.idx"
    )
});

static BEGIN_KNOWN_KEYS_SQL: LazyLock<String> =
    LazyLock::new(|| format!("BEGIN IMMEDIATE;\n{KNOWN_KEYS_SQL}"));
static INSERT_REQUESTS_COMMIT_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{};\nCOMMIT", *INSERT_REQUESTS_SQL));

/// Writes new requests (see [`INSERT_REQUESTS_SQL`]), and commits after them if `commit`. A
/// failure may leave part of them written: the transaction must not be committed (`Broken`).
async fn write_requests(
    conn: &mut SqliteConnection,
    rows: &[RequestRow<'_>],
    commit: bool,
) -> Result<(), QueueError> {
    let json = serde_json::to_string(rows).map_err(|e| QueueError::Broken(e.to_string()))?;
    let sql = if commit {
        INSERT_REQUESTS_COMMIT_SQL.as_str()
    } else {
        INSERT_REQUESTS_SQL.as_str()
    };
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(json)
        .execute(&mut *conn)
        .await
        .map_err(|e| QueueError::Broken(e.to_string()))?;
    Ok(())
}

/// Whether accepting mail under `limits` reads the sender's history (quotas, the pumping
/// guard), so that each mail must see the ones before it in the same transaction.
fn reads_history(limits: &QueuePolicy) -> bool {
    let q = &limits.quotas;
    limits.guard.enabled
        || q.sender_per_hour.is_some()
        || q.sender_per_day.is_some()
        || q.domain_per_hour.is_some()
        || q.domain_per_day.is_some()
}

/// Commits a batch made only of mails that no quota or guard has to look at (the listener's
/// usual batch when quotas and guard are off, and mail forwarded by peers) in two trips to the
/// store's thread, however many mails it holds: `BEGIN IMMEDIATE` with one lookup of every
/// dedup key of the batch, then every new request and `COMMIT` in one query. Each mail is
/// checked against the ones before it in the batch as well as the store, so two copies of a
/// mail in one batch are queued once, as they would be one after the other.
///
/// Nothing here can fail one mail alone: a failure fails the batch, rolled back, and every
/// client is told to try again.
///
/// A mail's rows are all written before its `250`. Committing each mail as one row and
/// writing its rows in later, larger commits costs as much in all: a prototype that did so
/// reached the same rate and CPU per mail once its later commits kept up with intake (of up
/// to 128 mails each); with 8 they fell behind. Only the store's total work per mail counts.
async fn commit_accepts(
    conn: &mut SqliteConnection,
    batch: &[Job],
    limits: &QueuePolicy,
) -> Vec<Result<Outcome, QueueError>> {
    let fail_all = |msg: String| fail_batch(batch, &msg);
    let reqs: Vec<&NewRequest> = batch
        .iter()
        .filter_map(|job| match job {
            Job::Accept(req, _) => Some(&**req),
            _ => None,
        })
        .collect();
    if reqs.len() != batch.len() {
        // `commit_batch` sends only batches of mails here.
        return fail_all("a job that is not a mail reached the batch insert".into());
    }
    let found = sqlx::query(sqlx::AssertSqlSafe(BEGIN_KNOWN_KEYS_SQL.as_str()))
        .bind(keys_json(reqs.iter().copied()))
        .fetch_all(&mut *conn)
        .await;
    let mut known = match found {
        Ok(rows) => known_keys(&rows),
        Err(e) => {
            // Whether the transaction was opened is unknown: end it.
            rollback(conn).await;
            return fail_all(e.to_string());
        }
    };
    let ids: Vec<String> = reqs.iter().map(|_| new_id()).collect();
    let mut plans = Vec::with_capacity(reqs.len());
    for (req, id) in reqs.iter().zip(&ids) {
        let (fresh, earlier) = fresh_recipients(req, &known);
        if fresh.is_empty()
            && let Some(earlier) = earlier
        {
            plans.push(Err(earlier));
            continue;
        }
        // Later copies in this batch find these recipients as queued by this request.
        for key in fresh.iter().filter_map(|(_, _, k)| k.as_ref()) {
            known.insert(key.clone(), id.clone());
        }
        plans.push(Ok(fresh));
    }
    let mut rows = Vec::with_capacity(reqs.len());
    let mut results = Vec::with_capacity(reqs.len());
    for ((req, id), plan) in reqs.iter().zip(&ids).zip(&plans) {
        match plan {
            Err(earlier) => results.push(Ok(Outcome::Accepted(Accepted::Duplicate {
                id: earlier.clone(),
            }))),
            Ok(fresh) => {
                rows.push(request_row(
                    req,
                    fresh,
                    id,
                    now_ms(),
                    &policy_for(req, limits),
                ));
                results.push(Ok(Outcome::Accepted(Accepted::Queued {
                    id: id.clone(),
                    recipients: fresh.len(),
                    duplicates: req.recipients.len() - fresh.len(),
                    held: 0,
                })));
            }
        }
    }
    let written = if rows.is_empty() {
        sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(|e| QueueError::Broken(e.to_string()))
    } else {
        write_requests(conn, &rows, true).await
    };
    if let Err(e) = written {
        rollback(conn).await;
        return fail_all(format!("commit failed: {e}"));
    }
    results
}

async fn insert_request(
    conn: &mut SqliteConnection,
    req: &NewRequest,
    limits: &QueuePolicy,
) -> Result<Accepted, QueueError> {
    let now = now_ms();
    // Which recipients did an earlier copy of this mail already queue?
    let found = sqlx::query(KNOWN_KEYS_SQL)
        .bind(keys_json([req]))
        .fetch_all(&mut *conn)
        .await?;
    let (fresh, earlier) = fresh_recipients(req, &known_keys(&found));
    if fresh.is_empty()
        && let Some(id) = earlier
    {
        return Ok(Accepted::Duplicate { id });
    }
    let new_parts = (req.parts.len() * fresh.len()) as u64;
    let limits = policy_for(req, limits);
    policy::check_quotas(
        conn,
        &limits.quotas,
        &req.sender,
        &req.sender_domain,
        new_parts,
        now,
    )
    .await?;
    // The guard looks at earlier requests only, so it decides before this one is inserted.
    let mut suspicions = Vec::with_capacity(fresh.len());
    for (_, r, _) in &fresh {
        suspicions.push(
            policy::suspicion(
                conn,
                &limits.guard,
                &req.sender,
                &r.number,
                r.country.as_deref(),
                now,
            )
            .await?,
        );
    }

    let id = new_id();
    write_requests(conn, &[request_row(req, &fresh, &id, now, &limits)], false).await?;
    // From here on a failure may leave part of the request written: the caller's transaction
    // must not be committed (`Broken`).
    let broken = |e: sqlx::Error| QueueError::Broken(e.to_string());

    let mut held = 0;
    for ((idx, r, _), suspicion) in fresh.iter().zip(suspicions) {
        if suspicion == policy::Verdict::Fine {
            continue;
        }
        let rid: i64 =
            sqlx::query_scalar("SELECT id FROM recipients WHERE request_id = ?1 AND idx = ?2")
                .bind(&id)
                .bind(*idx as i64)
                .fetch_one(&mut *conn)
                .await
                .map_err(broken)?;
        match suspicion {
            policy::Verdict::Hold(why) => {
                // This recipient and the unsent rest of its burst wait for an admin.
                held += policy::hold_burst(conn, &limits.guard, &req.sender, &r.number, &why, now)
                    .await
                    .map_err(|e| QueueError::Broken(e.to_string()))?
                    .max(1);
            }
            policy::Verdict::NewRange { since } => {
                // Every message to a range new to the sender waits until the range is as old
                // as the delay: a burst shows itself before any of it leaves.
                let at = since + limits.guard.first_contact_delay.as_millis() as i64;
                sqlx::query("UPDATE parts SET next_attempt_at = ?2 WHERE recipient_id = ?1")
                    .bind(rid)
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map_err(broken)?;
            }
            policy::Verdict::Fine => {}
        }
    }
    Ok(Accepted::Queued {
        id,
        recipients: fresh.len(),
        duplicates: req.recipients.len() - fresh.len(),
        held,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// One recipient of one request, as `mail2sms queue` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueEntry {
    pub request: String,
    pub received_at: String,
    pub source: String,
    pub mail_from: String,
    pub message_id: Option<String>,
    pub address: String,
    pub number: String,
    pub name: Option<String>,
    pub state: String,
    pub encoding: String,
    pub parts: i64,
    pub text: String,
    pub dsn_notify: Option<String>,
    pub dsn_orcpt: Option<String>,
    /// A message a peer forwarded, held until that site confirms it (`peer::handover`): the
    /// site's name.
    pub held_for: Option<String>,
}

/// Lists recipients, oldest first, optionally only those in one state.
pub async fn list(pool: &SqlitePool, state: Option<State>) -> Result<Vec<QueueEntry>, QueueError> {
    let rows = sqlx::query(
        "SELECT q.id, q.received_at, q.source, q.mail_from, q.message_id, r.address, r.number,
                r.name, r.state, q.encoding, q.part_count, q.text, r.dsn_notify, r.dsn_orcpt,
                CASE WHEN q.source = 'peer' AND r.state IN ('accepted', 'routed')
                      AND COALESCE((SELECT h.state FROM handovers_in h
                                    WHERE h.recipient_id = r.id), 'held') = 'held'
                     THEN q.client END
         FROM recipients r JOIN requests q ON q.id = r.request_id
         WHERE ?1 IS NULL OR r.state = ?1
         ORDER BY q.received_at, q.id, r.idx",
    )
    .bind(state.map(|s| s.as_str()))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| QueueEntry {
            request: row.get(0),
            received_at: format_ms(row.get(1)),
            source: row.get(2),
            mail_from: row.get(3),
            message_id: row.get(4),
            address: row.get(5),
            number: row.get(6),
            name: row.get(7),
            state: row.get(8),
            encoding: row.get(9),
            parts: row.get(10),
            text: row.get(11),
            dsn_notify: row.get(12),
            dsn_orcpt: row.get(13),
            held_for: row.get(14),
        })
        .collect())
}

/// A request with everything known about it, for `mail2sms status`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestStatus {
    pub id: String,
    pub received_at: String,
    pub source: String,
    pub client: Option<String>,
    pub auth_user: Option<String>,
    pub mail_from: String,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub dsn_envid: Option<String>,
    pub dsn_ret: Option<String>,
    pub text: String,
    pub encoding: String,
    pub truncated: bool,
    pub size: i64,
    pub recipients: Vec<RecipientStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientStatus {
    pub address: String,
    pub number: String,
    pub name: Option<String>,
    pub state: String,
    pub dsn_notify: Option<String>,
    pub dsn_orcpt: Option<String>,
    pub parts: Vec<PartStatus>,
    pub events: Vec<EventRow>,
    /// Status replies owed to the sender about this recipient, and what became of them.
    pub replies: Vec<replies::ReplyStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartStatus {
    pub seq: i64,
    pub state: String,
    pub attempts: i64,
    pub channel: Option<String>,
    pub message_ref: Option<i64>,
    /// IMSI of the SIM that sent it.
    pub sim: Option<String>,
    pub sent_at: Option<String>,
    /// The last delivery report that counted: TP-ST, its sentence, when it came.
    pub report: Option<PartReport>,
    /// Every status report matched to it, in the order they came (late and duplicate ones
    /// too), with what each did.
    pub reports: Vec<ReportRow>,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub at: String,
    pub modem: String,
    pub status: u8,
    pub text: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub status: u8,
    pub text: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub at: String,
    pub part: Option<i64>,
    pub state: String,
    pub reason: String,
}

/// Finds a request by its id or a unique prefix of it.
pub async fn status(pool: &SqlitePool, id: &str) -> Result<RequestStatus, QueueError> {
    let id = id.trim().to_ascii_lowercase();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(QueueError::NotFound(id));
    }
    let pattern = format!("{id}%");
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM requests WHERE id LIKE ?1 LIMIT 2")
        .bind(&pattern)
        .fetch_all(pool)
        .await?;
    let id = match ids.as_slice() {
        [] => return Err(QueueError::NotFound(id)),
        [one] => one.clone(),
        _ => return Err(QueueError::Ambiguous(id)),
    };
    let q = sqlx::query(
        "SELECT id, received_at, source, client, auth_user, mail_from, message_id, subject,
                dsn_envid, dsn_ret, text, encoding, truncated, size
         FROM requests WHERE id = ?1",
    )
    .bind(&id)
    .fetch_one(pool)
    .await?;
    let mut st = RequestStatus {
        id: q.get(0),
        received_at: format_ms(q.get(1)),
        source: q.get(2),
        client: q.get(3),
        auth_user: q.get(4),
        mail_from: q.get(5),
        message_id: q.get(6),
        subject: q.get(7),
        dsn_envid: q.get(8),
        dsn_ret: q.get(9),
        text: q.get(10),
        encoding: q.get(11),
        truncated: q.get(12),
        size: q.get(13),
        recipients: Vec::new(),
    };
    let recipients = sqlx::query(
        "SELECT id, address, number, name, state, dsn_notify, dsn_orcpt
         FROM recipients WHERE request_id = ?1 ORDER BY idx",
    )
    .bind(&id)
    .fetch_all(pool)
    .await?;
    for r in recipients {
        let rid: i64 = r.get(0);
        let with_ids = sqlx::query(
            "SELECT seq, state, attempts, channel, message_ref, text, sim, sent_at,
                report_status, report_at, id
             FROM parts WHERE recipient_id = ?1 ORDER BY seq",
        )
        .bind(rid)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|p| {
            (
                p.get::<i64, _>(10),
                PartStatus {
                    seq: p.get(0),
                    state: p.get(1),
                    attempts: p.get(2),
                    channel: p.get(3),
                    message_ref: p.get(4),
                    text: p.get(5),
                    sim: p.get(6),
                    sent_at: p.get::<Option<i64>, _>(7).map(format_ms),
                    report: match (p.get::<Option<i64>, _>(8), p.get::<Option<i64>, _>(9)) {
                        (Some(st), Some(at)) => u8::try_from(st).ok().map(|st| PartReport {
                            status: st,
                            text: crate::modem::pdu::status_text(st).to_string(),
                            at: format_ms(at),
                        }),
                        _ => None,
                    },
                    reports: Vec::new(),
                },
            )
        })
        .collect::<Vec<_>>();
        let mut parts = Vec::with_capacity(with_ids.len());
        for (part_id, mut p) in with_ids {
            p.reports = sqlx::query(
                "SELECT received_at, modem, status, outcome FROM reports
                 WHERE part_id = ?1 ORDER BY id",
            )
            .bind(part_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                let st = u8::try_from(r.get::<i64, _>(2)).unwrap_or(u8::MAX);
                ReportRow {
                    at: format_ms(r.get(0)),
                    modem: r.get(1),
                    status: st,
                    text: crate::modem::pdu::status_text(st).to_string(),
                    outcome: r.get(3),
                }
            })
            .collect();
            parts.push(p);
        }
        let events = sqlx::query(
            "SELECT e.at, p.seq, e.state, e.reason FROM events e
             LEFT JOIN parts p ON p.id = e.part_id
             WHERE e.request_id = ?1 AND (e.recipient_id = ?2 OR e.recipient_id IS NULL)
             ORDER BY e.id",
        )
        .bind(&id)
        .bind(rid)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|e| EventRow {
            at: format_ms(e.get(0)),
            part: e.get(1),
            state: e.get(2),
            reason: e.get(3),
        })
        .collect();
        st.recipients.push(RecipientStatus {
            address: r.get(1),
            number: r.get(2),
            name: r.get(3),
            state: r.get(4),
            dsn_notify: r.get(5),
            dsn_orcpt: r.get(6),
            parts,
            events,
            replies: replies::of_recipient(pool, rid).await?,
        });
    }
    Ok(st)
}

/// The last status each modem driver reported: (name, status JSON, updated at).
pub async fn modems(pool: &SqlitePool) -> Result<Vec<(String, String, String)>, QueueError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, status, updated_at FROM modems ORDER BY name")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(n, s, at)| (n, s, format_ms(at)))
        .collect())
}

/// RFC 3339 UTC with milliseconds.
pub fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

impl FromStr for Source {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "smtp" => Ok(Source::Smtp),
            "imap" => Ok(Source::Imap),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests;
