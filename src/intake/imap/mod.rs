//! IMAP pickup: mail delivered to a mailbox (instead of routed to the SMTP listener) is taken
//! from a folder, queued, and moved to a "processed" or "failed" folder.
//!
//! One task per `[[mailbox]]` keeps a session open: IDLE (RFC 2177) when the server offers it
//! and the configuration allows it, re-issued every `reidle_secs` (well before the 29 minutes
//! after which a server may drop the client); polling every `poll_secs` otherwise. A dropped
//! connection is reopened with exponential backoff. Every command has a timeout, so a silently
//! dead connection is noticed at the next command or re-IDLE.
//!
//! # The claim protocol
//!
//! Several gateways may watch one mailbox (a passive site standing in for another). They share
//! nothing but the IMAP server, so the server must decide which of them takes each mail.
//!
//! `UID MOVE` to a per-gateway folder does not decide it: Dovecot 2.3 carries out MOVE as copy
//! then expunge, and two sessions moving the same messages at the same time both succeed — each
//! gets a copy (seen with 500 messages and two sessions: 1,000 copies). The decision is made
//! instead by a conditional STORE (RFC 7162 §3.1.3, CONDSTORE), which the server checks
//! atomically when it commits:
//!
//! 1. List the folder: `UID FETCH 1:* (UID FLAGS RFC822.SIZE MODSEQ)`. Messages with a keyword
//!    `$mail2sms-claimed-<gateway>` belong to that gateway; the rest are free.
//! 2. Claim free ones: `UID STORE <uids> (UNCHANGEDSINCE <highest modseq listed>) +FLAGS.SILENT
//!    ($mail2sms-claimed-<me>)`. A message another gateway claimed since the listing has a
//!    higher mod-sequence, so this STORE leaves it alone (`[MODIFIED ...]`): of two gateways,
//!    exactly one stores its keyword on each message.
//! 3. Fetch the claimed messages with their flags (`BODY.PEEK[]`, so `\Seen` is not set) and
//!    handle those that carry this gateway's keyword.
//! 4. Queue each mail and record its (mailbox, UIDVALIDITY, UID) and Message-ID with the
//!    request in one transaction (`queue::imap`), committed to disk.
//! 5. Only then move it: `UID MOVE` to the processed folder (or the failed folder), or where the
//!    server has no MOVE, `UID COPY`, `+FLAGS (\Deleted)` and `UID EXPUNGE` (RFC 4315).
//!
//! A gateway that stops anywhere in between loses nothing and queues nothing twice: after 2 the
//! messages still carry its keyword and it takes them up again at its next start (step 1 lists
//! them as its own); after 4 the queue knows the UID and the mail is only moved. A UIDVALIDITY
//! change renames every message; the Message-ID (or a digest of the bytes) recognises mail
//! already handled. Without CONDSTORE the keyword is stored unconditionally: correct for one
//! gateway, and a warning says that several gateways on that server could take the same mail.
//!
//! # A folder replaced under the session
//!
//! Deleting the watched folder and creating it again (a restore, an admin's clean-up) gives it
//! a new UIDVALIDITY. Dovecot 2.3 does not always end a session whose selected folder was
//! deleted: it answers `* NO Internal error` and goes on with a stale view, and commands in
//! that session disturb the index of the folder created under the same name (Dovecot logs
//! "Corrupted transaction log ... indexid changed"), so a mail moved there can come back and
//! be moved a second time. So every unsolicited `NO`, `BAD` or `BYE`, and any `UIDVALIDITY`
//! other than the selected one, is checked with a fresh SELECT before the next claim, queueing
//! or move (`heed`); a different UIDVALIDITY ends the session, and the next one starts from a
//! fresh connection. Whatever slips through is still queued once: the Message-ID check is a
//! primary key in the queue (`queue::imap`).
//!
//! # Passive mailboxes
//!
//! A `[[mailbox]]` with `passive_for = "<peer>"` is that peer site's mailbox: this site watches
//! it only while the peer is detected down (`peer::passive`, fed by the peer's SMPP link), as
//! a passive configuration of Ozeki's live cluster. When the peer is back the session ends at
//! its next wait (IDLE or poll) or after the batch in hand, so every message this site claimed
//! is queued and moved before it steps back; the claim protocol above keeps the two sites from
//! queueing the same mail in the moments both look.
//!
//! A gateway that stops for good leaves at most one batch of messages with its keyword; removing
//! the keyword with any IMAP client hands them to the others.
//!
//! Mail that cannot be read, or names no SMS recipient, goes to the failed folder, and its
//! sender gets a reply saying why (`notify`); so do senders some of whose recipients were
//! refused. Recipients are read from `To`, `Cc`, `Delivered-To` and `X-Original-To` with the
//! address grammar the SMTP listener uses at RCPT.

pub mod plan;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_imap::extensions::idle::IdleResponse;
use async_imap::types::{Fetch, Flag, UnsolicitedResponse};
use async_imap::{Client, Session};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::Intake;
use crate::peer::passive::Standby;
use crate::queue::imap::{Claimed, NewClaim, Outcome, ReplyTo};
use crate::route::RouterState;

/// How a mailbox connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImapTls {
    /// TLS from the first byte (port 993, RFC 8314 §3.2).
    #[default]
    Implicit,
    /// Plain connection upgraded with STARTTLS before login (RFC 3501 §6.2.1).
    Starttls,
    /// No TLS: only for a server on the same host.
    None,
}

/// The mailbox password, or the file holding it (read at each connection, so it can change).
#[derive(Clone)]
pub enum Password {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Inline(_) => f.write_str("Inline(<hidden>)"),
            Password::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// One `[[mailbox]]`, validated.
#[derive(Debug, Clone)]
pub struct MailboxConfig {
    /// Names the mailbox in the queue and in logs.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: ImapTls,
    /// Certificate authorities to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    pub user: String,
    pub password: Password,
    /// The folder mail arrives in.
    pub folder: String,
    pub processed_folder: String,
    pub failed_folder: String,
    /// `$mail2sms-claimed-<gateway>`: the keyword this gateway claims messages with.
    pub claim_keyword: String,
    /// Use IDLE when the server offers it.
    pub idle: bool,
    pub reidle: Duration,
    pub poll_interval: Duration,
    /// Most messages claimed at once.
    pub batch: usize,
    pub command_timeout: Duration,
    pub reconnect_max: Duration,
    pub max_recipients: usize,
    /// Who may send through this mailbox (see `plan`).
    pub senders: plan::MailboxSenders,
    /// The peer site whose mailbox this is: watched only while that peer is detected down.
    pub passive_for: Option<String>,
}

/// Bodies fetched at once, at most (a message larger than this is fetched alone).
const FETCH_BYTES: u64 = 32 * 1024 * 1024;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("the server did not greet: {0}")]
    Greeting(String),
    #[error("the server refused STARTTLS: {0}")]
    StartTls(String),
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("login as {user} refused: {reason}")]
    Login { user: String, reason: String },
    #[error("cannot select the folder {folder:?}: {reason}")]
    Select { folder: String, reason: String },
    #[error("the server gave no UIDVALIDITY for {0:?}, so its UIDs cannot be trusted")]
    NoUidValidity(String),
    #[error(
        "the folder {folder:?} is no longer the one selected (UIDVALIDITY {selected}, now {now}): it was deleted or replaced, so the session's UIDs are void"
    )]
    FolderReplaced {
        folder: String,
        selected: u32,
        now: u32,
    },
    #[error("{command} failed: {reason}")]
    Command {
        command: &'static str,
        reason: String,
    },
    #[error("{command} got no answer within {after:?}")]
    Timeout {
        command: &'static str,
        after: Duration,
    },
    #[error("the server closed the connection")]
    Closed,
    #[error("the queue could not record a mail: {0}")]
    Queue(#[from] crate::queue::QueueError),
}

/// Runs `fut` (an IMAP command) with the command timeout, naming the command in errors.
async fn timed<T>(
    command: &'static str,
    after: Duration,
    fut: impl Future<Output = async_imap::error::Result<T>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(after, fut).await {
        Err(_) => Err(ImapError::Timeout { command, after }),
        Ok(Err(async_imap::error::Error::ConnectionLost)) => Err(ImapError::Closed),
        Ok(Err(e)) => Err(ImapError::Command {
            command,
            reason: e.to_string(),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Starts one watcher per configured mailbox. `notices` is told when a notice is recorded;
/// without it (no `[notify]`) no notices are recorded. `sites` is where the peer links say
/// which peers are up, which passive mailboxes wait on.
pub fn start(
    intake: Intake,
    notices: Option<Arc<Notify>>,
    sites: RouterState,
    shutdown: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    // A peer not heard from at start is taken for down after the keepalive's patience: the
    // time its link has to bind, or to find it silent (`peer::passive`).
    let grace = intake
        .config
        .smpp
        .as_ref()
        .map(|s| s.enquire_link * s.missed_keepalives)
        .unwrap_or_default();
    for m in &intake.config.mailboxes {
        let w = Watcher {
            last_uidvalidity: AtomicU32::new(0),
            cfg: Arc::new(m.clone()),
            intake: intake.clone(),
            notices: notices.clone(),
            shutdown: shutdown.clone(),
            gate: m.passive_for.as_ref().map(|peer| Gate {
                peer: peer.clone(),
                sites: sites.clone(),
                standby: std::sync::Mutex::new(Standby::new(grace)),
                started: Instant::now(),
            }),
        };
        tracker.spawn(w.run());
    }
    tracker.close();
    tracker
}

struct Watcher {
    cfg: Arc<MailboxConfig>,
    /// The UIDVALIDITY the last session selected (0: none yet), to say when it changed.
    last_uidvalidity: AtomicU32,
    intake: Intake,
    notices: Option<Arc<Notify>>,
    shutdown: CancellationToken,
    /// For a passive mailbox, the peer it stands in for.
    gate: Option<Gate>,
}

/// How often a passive mailbox looks at its peer's state.
const GATE_POLL: Duration = Duration::from_millis(100);

/// A passive mailbox's duty: watched only while `peer` is detected down (`peer::passive`).
struct Gate {
    peer: String,
    sites: RouterState,
    standby: std::sync::Mutex<Standby>,
    started: Instant,
}

impl Gate {
    fn on_duty(&self) -> bool {
        let up = self.sites.site_up(&self.peer);
        self.standby
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(up, self.started.elapsed())
    }
}

/// What the server can do, from CAPABILITY after login.
#[derive(Debug, Clone, Copy)]
struct Caps {
    idle: bool,
    moves: bool,
    uidplus: bool,
    condstore: bool,
}

type Imap = Session<Stream>;

impl Watcher {
    async fn run(self) {
        let first_backoff = Duration::from_secs(1);
        let mut backoff = first_backoff;
        loop {
            if let Some(g) = &self.gate
                && !g.on_duty()
            {
                info!(mailbox = %self.cfg.name, peer = %g.peer, "passive mailbox stands by: it is watched here only while site {} is down", g.peer);
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = async { while !g.on_duty() { tokio::time::sleep(GATE_POLL).await } } => {}
                }
                info!(mailbox = %self.cfg.name, peer = %g.peer, "peer site down: its passive mailbox is watched here");
                backoff = first_backoff;
            }
            let started = Instant::now();
            let result = self.session().await;
            if self.shutdown.is_cancelled() {
                return;
            }
            // A session that lasted a while was healthy: the next failure starts over.
            if started.elapsed() > Duration::from_secs(60) {
                backoff = first_backoff;
            }
            match result {
                // Not stopping: a passive mailbox stepped back because its peer is up again.
                Ok(()) => {
                    if let Some(g) = &self.gate {
                        info!(mailbox = %self.cfg.name, peer = %g.peer, "peer site back: its passive mailbox is left to it");
                    }
                    continue;
                }
                // As SMTP's `452 4.3.1`: it lasts until an admin frees space, so it is an
                // error, and it says where the mail is meanwhile (invariant 1: not moved).
                Err(ImapError::Queue(e)) if e.is_storage_full() => error!(
                    mailbox = %self.cfg.name,
                    error = %e,
                    retry_in = ?backoff,
                    "could not queue mail from the mailbox: the store's disk is full; the mail stays in the mailbox until there is room"
                ),
                Err(e) => warn!(
                    mailbox = %self.cfg.name,
                    error = %e,
                    retry_in = ?backoff,
                    "mailbox session ended; reconnecting"
                ),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.cfg.reconnect_max);
        }
    }

    /// The gateway stops, or a passive mailbox's peer is back.
    fn must_stop(&self) -> bool {
        self.shutdown.is_cancelled() || self.gate.as_ref().is_some_and(|g| !g.on_duty())
    }

    /// Resolves when a passive mailbox must step back; never for an active one.
    async fn off_duty(&self) {
        match &self.gate {
            None => std::future::pending().await,
            Some(g) => {
                while g.on_duty() {
                    tokio::time::sleep(GATE_POLL).await;
                }
            }
        }
    }

    /// One connection, from login until it fails, the gateway stops, or a passive mailbox
    /// steps back (`Ok` for both).
    async fn session(&self) -> Result<(), ImapError> {
        let cfg = &self.cfg;
        let mut s = connect(cfg).await?;
        let caps = timed("CAPABILITY", cfg.command_timeout, s.capabilities()).await?;
        let caps = Caps {
            idle: caps.has_str("IDLE"),
            moves: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
            condstore: caps.has_str("CONDSTORE"),
        };
        if !caps.condstore {
            warn!(
                mailbox = %cfg.name,
                "the server has no CONDSTORE: claims are not atomic, so two gateways on this mailbox could queue the same mail"
            );
        }
        for folder in [&cfg.processed_folder, &cfg.failed_folder] {
            // Creating an existing folder is refused with NO [ALREADYEXISTS] (RFC 5530): fine.
            if let Err(e) = timed("CREATE", cfg.command_timeout, s.create(folder)).await {
                debug!(mailbox = %cfg.name, folder, error = %e, "folder not created");
            }
        }
        let (uidvalidity, exists) = select(&mut s, cfg, caps).await?;
        let before = self.last_uidvalidity.swap(uidvalidity, Ordering::Relaxed);
        if before != 0 && before != uidvalidity {
            // RFC 3501 §2.3.1.1: every UID is new. Mail handled under the old value is
            // recognised by its Message-ID (`queue::imap`) and only moved.
            warn!(
                mailbox = %cfg.name,
                folder = %cfg.folder,
                old = before,
                new = uidvalidity,
                "the folder's UIDVALIDITY changed: its UIDs start over; mail already handled is recognised by its Message-ID"
            );
        }
        let idle = caps.idle && cfg.idle;
        info!(
            mailbox = %cfg.name,
            folder = %cfg.folder,
            uidvalidity,
            messages = exists,
            mode = if idle { "idle" } else { "polling" },
            moves = caps.moves,
            condstore = caps.condstore,
            "watching mailbox"
        );

        let mut news = false;
        loop {
            self.heed(&mut s, uidvalidity, caps, &mut news).await?;
            news = false;
            let handled = self
                .handle_all(&mut s, uidvalidity, caps, &mut news)
                .await?;
            if self.must_stop() {
                let _ = timed("LOGOUT", cfg.command_timeout, s.logout()).await;
                return Ok(());
            }
            // New mail announced while the folder was being read (the listing may have been
            // taken just before it arrived) is read now rather than at the next wake-up.
            self.heed(&mut s, uidvalidity, caps, &mut news).await?;
            if handled > 0 || news {
                continue;
            }
            if idle {
                let (back, woke_by) = self.idle(s).await?;
                s = back;
                if let Some(h) = woke_by {
                    self.verify(&mut s, uidvalidity, caps, &h).await?;
                }
            } else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => {}
                    _ = self.off_duty() => {}
                    _ = tokio::time::sleep(cfg.poll_interval) => {}
                }
            }
            if self.must_stop() {
                let _ = timed("LOGOUT", cfg.command_timeout, s.logout()).await;
                return Ok(());
            }
        }
    }

    /// IDLE until the server reports a change, `reidle` passes, or the gateway stops. Returns
    /// the session and, when the response that ended IDLE puts the selection in doubt, what
    /// it said (to be verified before anything else is done).
    async fn idle(&self, s: Imap) -> Result<(Imap, Option<plan::Heard>), ImapError> {
        let cfg = &self.cfg;
        let mut handle = s.idle();
        timed("IDLE", cfg.command_timeout, handle.init()).await?;
        enum Woke {
            Server(async_imap::error::Result<IdleResponse>),
            Renew,
            /// The gateway stops, or a passive mailbox steps back.
            Stop,
        }
        let woke = {
            let (wait, _stop) = handle.wait_with_timeout(cfg.reidle);
            tokio::select! {
                r = wait => Woke::Server(r),
                _ = tokio::time::sleep(cfg.reidle) => Woke::Renew,
                _ = self.shutdown.cancelled() => Woke::Stop,
                _ = self.off_duty() => Woke::Stop,
            }
        };
        let s = timed("DONE", cfg.command_timeout, handle.done()).await?;
        match woke {
            Woke::Server(Ok(IdleResponse::NewData(r))) => {
                let h = plan::heard(r.parsed(), self.last_uidvalidity.load(Ordering::Relaxed));
                let doubt = matches!(h, plan::Heard::Trouble(_) | plan::Heard::UidValidity(_));
                Ok((s, doubt.then_some(h)))
            }
            Woke::Stop => Ok((s, None)),
            // The stream ended: the server closed the connection.
            Woke::Server(Ok(IdleResponse::ManualInterrupt)) => Err(ImapError::Closed),
            Woke::Server(Err(e)) => Err(ImapError::Command {
                command: "IDLE",
                reason: e.to_string(),
            }),
            // `reidle` passed (with or without the server's keep-alives): IDLE is ended and
            // the folder read again before the next one. The line is also the watcher's
            // heartbeat in the log.
            Woke::Server(Ok(IdleResponse::Timeout)) | Woke::Renew => {
                info!(mailbox = %cfg.name, after = ?cfg.reidle, "IDLE renewed");
                Ok((s, None))
            }
        }
    }

    /// Reads the unsolicited responses received so far: news of mail sets `news`; a sign that
    /// the selected folder may have been replaced is verified before the caller goes on.
    /// Called before each step that acts on UIDs (claim, queue, move), so nothing is queued
    /// or moved on the word of a session whose folder is gone.
    async fn heed(
        &self,
        s: &mut Imap,
        uidvalidity: u32,
        caps: Caps,
        news: &mut bool,
    ) -> Result<(), ImapError> {
        let mut doubt = None;
        while let Ok(r) = s.unsolicited_responses.try_recv() {
            let h = match r {
                UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_) => {
                    plan::Heard::News
                }
                UnsolicitedResponse::Other(data) => plan::heard(data.parsed(), uidvalidity),
                _ => plan::Heard::Nothing,
            };
            match h {
                plan::Heard::News => *news = true,
                plan::Heard::Nothing => {}
                // A changed UIDVALIDITY outranks a mere trouble report.
                h @ plan::Heard::UidValidity(_) => doubt = Some(h),
                h @ plan::Heard::Trouble(_) => {
                    if doubt.is_none() {
                        doubt = Some(h)
                    }
                }
            }
        }
        match doubt {
            Some(h) => self.verify(s, uidvalidity, caps, &h).await,
            None => Ok(()),
        }
    }

    /// Selects the folder again after the server put the selection in doubt, and ends the
    /// session when the folder is not the one selected. (A STATUS in the same session does
    /// not tell: Dovecot answers it from the session's stale view.) The next session starts
    /// from a fresh connection and lists the folder under its new UIDVALIDITY.
    async fn verify(
        &self,
        s: &mut Imap,
        uidvalidity: u32,
        caps: Caps,
        why: &plan::Heard,
    ) -> Result<(), ImapError> {
        let cfg = &self.cfg;
        warn!(mailbox = %cfg.name, folder = %cfg.folder, said = ?why, "the server put the selected folder in doubt; selecting it again");
        let (now, _) = select(s, cfg, caps).await?;
        if now != uidvalidity {
            return Err(ImapError::FolderReplaced {
                folder: cfg.folder.clone(),
                selected: uidvalidity,
                now,
            });
        }
        Ok(())
    }

    /// Claims and handles batches until the folder has nothing left for this gateway.
    async fn handle_all(
        &self,
        s: &mut Imap,
        uidvalidity: u32,
        caps: Caps,
        news: &mut bool,
    ) -> Result<usize, ImapError> {
        let cfg = &self.cfg;
        let mut total = 0;
        loop {
            let listing = list(s, caps, cfg.command_timeout).await?;
            self.heed(s, uidvalidity, caps, news).await?;
            let p = plan::plan(&listing, &cfg.claim_keyword, cfg.batch);
            if p.mine.is_empty() && p.claim.is_empty() {
                return Ok(total);
            }
            if !p.mine.is_empty() {
                info!(
                    mailbox = %cfg.name,
                    messages = p.mine.len(),
                    "taking up mail this gateway claimed before it stopped"
                );
            }
            if !p.claim.is_empty() {
                self.claim(s, &p, caps).await?;
            }
            let sizes: std::collections::HashMap<u32, u32> = listing
                .iter()
                .map(|l| (l.uid, l.size.unwrap_or(0)))
                .collect();
            let mut todo: Vec<(u32, u32)> = p
                .mine
                .iter()
                .chain(&p.claim)
                .map(|u| (*u, sizes.get(u).copied().unwrap_or(0)))
                .collect();
            todo.sort_unstable();
            let limit = self.intake.config.body.max_input_bytes;
            let (large, small): (Vec<_>, Vec<_>) = todo
                .into_iter()
                .partition(|(_, size)| *size as usize > limit);
            let mut groups: Vec<(Vec<u32>, bool)> = plan::chunks_by_size(&small, FETCH_BYTES)
                .into_iter()
                .map(|g| (g, false))
                .collect();
            if !large.is_empty() {
                groups.push((large.iter().map(|(u, _)| *u).collect(), true));
            }
            for group in &groups {
                total += self
                    .handle_group(s, uidvalidity, caps, group, &sizes, news)
                    .await?;
                if self.shutdown.is_cancelled() {
                    return Ok(total);
                }
            }
            // A passive mailbox steps back here, between batches: every message it claimed
            // is queued and moved, none is left claimed by a site that no longer looks.
            if self.must_stop() {
                return Ok(total);
            }
        }
    }

    /// Step 2: the conditional STORE of this gateway's keyword.
    async fn claim(&self, s: &mut Imap, p: &plan::Plan, caps: Caps) -> Result<(), ImapError> {
        let cfg = &self.cfg;
        let set = plan::uid_set(&p.claim);
        let query = match (caps.condstore, p.unchanged_since) {
            (true, Some(m)) => {
                format!("(UNCHANGEDSINCE {m}) +FLAGS.SILENT ({})", cfg.claim_keyword)
            }
            _ => format!("+FLAGS.SILENT ({})", cfg.claim_keyword),
        };
        timed("UID STORE", cfg.command_timeout, async {
            let stream = s.uid_store(&set, &query).await?;
            // RFC 7162 §3.1.3: the server answers with the new MODSEQ of what it changed;
            // which messages carry the keyword is read from the flags fetched next.
            stream.try_collect::<Vec<Fetch>>().await?;
            Ok(())
        })
        .await
    }

    /// Steps 3 to 5 for one group of messages.
    async fn handle_group(
        &self,
        s: &mut Imap,
        uidvalidity: u32,
        caps: Caps,
        (uids, headers_only): &(Vec<u32>, bool),
        sizes: &std::collections::HashMap<u32, u32>,
        news: &mut bool,
    ) -> Result<usize, ImapError> {
        let headers_only = *headers_only;
        let cfg = &self.cfg;
        let config = &self.intake.config;
        let query = if headers_only {
            "(UID FLAGS BODY.PEEK[HEADER])"
        } else {
            "(UID FLAGS BODY.PEEK[])"
        };
        let set = plan::uid_set(uids);
        let fetched: Vec<Fetch> = timed("UID FETCH", cfg.command_timeout, async {
            let stream = s.uid_fetch(&set, query).await?;
            stream.try_collect::<Vec<Fetch>>().await
        })
        .await?;
        // What was fetched is only trusted if the folder is still the one selected.
        self.heed(s, uidvalidity, caps, news).await?;

        // Decide about each message this gateway holds the keyword of, then record every
        // decision; the store commits them together.
        let mut claims = Vec::new();
        let mut lost = 0;
        for f in &fetched {
            let Some(uid) = f.uid else { continue };
            let mine = f.flags().any(
                |fl| matches!(fl, Flag::Custom(k) if k.eq_ignore_ascii_case(&cfg.claim_keyword)),
            );
            if !mine {
                lost += 1;
                continue;
            }
            let raw = if headers_only { f.header() } else { f.body() }.unwrap_or_default();
            let origin = plan::origin(raw);
            let reading = if headers_only {
                plan::too_large(
                    sizes.get(&uid).copied().unwrap_or(0),
                    config.body.max_input_bytes,
                )
            } else {
                plan::read_mail(
                    raw,
                    &origin,
                    &cfg.name,
                    &cfg.senders,
                    config,
                    cfg.max_recipients,
                )
            };
            let notice = self
                .notices
                .as_ref()
                .and_then(|_| plan::notice(&reading, &origin));
            claims.push((
                uid,
                origin.message_id.clone(),
                NewClaim {
                    mailbox: cfg.name.clone(),
                    uidvalidity,
                    uid,
                    message_key: plan::message_key(&origin, raw),
                    decision: reading.decision,
                    notice,
                    reply_to: self
                        .notices
                        .as_ref()
                        .and_then(|_| origin.reply_to())
                        .map(|to| ReplyTo {
                            recipient: to.to_string(),
                            original_message_id: origin.message_id.clone(),
                            original_subject: origin.subject.clone(),
                        }),
                },
            ));
        }
        if lost > 0 {
            info!(
                mailbox = %cfg.name,
                messages = lost,
                "another gateway claimed these messages first; left to it"
            );
        }
        let store = &self.intake.store;
        let results =
            futures_util::future::join_all(claims.into_iter().map(|(uid, mid, c)| async move {
                (
                    uid,
                    mid,
                    c.notice.is_some() || c.reply_to.is_some(),
                    store.claim(c).await,
                )
            }))
            .await;

        let mut processed = Vec::new();
        let mut failed = Vec::new();
        let mut error = None;
        let mut notices = false;
        let mut queued = false;
        for (uid, message_id, notice, r) in results {
            match r {
                Ok(claimed) => {
                    log_claim(&cfg.name, uid, message_id.as_deref(), &claimed);
                    if matches!(claimed, Claimed::Queued(_)) {
                        queued = true;
                    }
                    if notice && !matches!(claimed, Claimed::Known { .. }) {
                        notices = true;
                    }
                    match claimed.outcome() {
                        Outcome::Queued => processed.push(uid),
                        Outcome::Failed => failed.push(uid),
                    }
                }
                // Left in the folder with the keyword: taken up again after the reconnect.
                Err(e) => error = Some(e),
            }
        }
        if queued {
            self.intake.queued.notify_one();
        }
        if notices && let Some(n) = &self.notices {
            n.notify_one();
        }
        // Step 5, after the commit (invariant 1), and only while the folder is the one whose
        // UIDs were recorded: a MOVE in a stale session may copy a mail without removing it.
        self.heed(s, uidvalidity, caps, news).await?;
        self.move_to(s, caps, &processed, &cfg.processed_folder)
            .await?;
        self.move_to(s, caps, &failed, &cfg.failed_folder).await?;
        match error {
            Some(e) => Err(e.into()),
            None => Ok(processed.len() + failed.len()),
        }
    }

    async fn move_to(
        &self,
        s: &mut Imap,
        caps: Caps,
        uids: &[u32],
        folder: &str,
    ) -> Result<(), ImapError> {
        if uids.is_empty() {
            return Ok(());
        }
        let t = self.cfg.command_timeout;
        let set = plan::uid_set(uids);
        if caps.moves {
            // RFC 6851 §3.3.
            return timed("UID MOVE", t, s.uid_mv(&set, folder)).await;
        }
        // RFC 6851 §1 (what MOVE replaces) with RFC 4315 §2.1's UID EXPUNGE, which removes
        // only these messages. A crash between COPY and EXPUNGE leaves a second copy in the
        // target folder, never a second SMS: the queue knows the UID.
        timed("UID COPY", t, s.uid_copy(&set, folder)).await?;
        timed("UID STORE", t, async {
            let stream = s.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?;
            stream.try_collect::<Vec<Fetch>>().await?;
            Ok(())
        })
        .await?;
        if caps.uidplus {
            timed("UID EXPUNGE", t, async {
                let stream = s.uid_expunge(&set).await?;
                stream.try_collect::<Vec<_>>().await?;
                Ok(())
            })
            .await
        } else {
            // Without UIDPLUS, EXPUNGE also removes other messages flagged \Deleted in the
            // watched folder; a folder dedicated to the gateway has none.
            timed("EXPUNGE", t, async {
                let stream = s.expunge().await?;
                stream.try_collect::<Vec<_>>().await?;
                Ok(())
            })
            .await
        }
    }
}

fn log_claim(mailbox: &str, uid: u32, message_id: Option<&str>, c: &Claimed) {
    let message_id = message_id.unwrap_or("");
    match c {
        Claimed::Queued(a) => {
            info!(mailbox, uid, message_id, request = %a.id(), "picked up and queued")
        }
        Claimed::Failed => info!(
            mailbox,
            uid, message_id, "picked up; gives no SMS, moved to the failed folder"
        ),
        Claimed::Known {
            request_id,
            same_uid,
            ..
        } => info!(
            mailbox,
            uid,
            message_id,
            request = request_id.as_deref().unwrap_or(""),
            same_uid,
            "already handled before; only moving it"
        ),
    }
}

/// SELECTs the watched folder (with CONDSTORE when the server has it, RFC 7162 §3.1.8);
/// returns its UIDVALIDITY and message count.
async fn select(s: &mut Imap, cfg: &MailboxConfig, caps: Caps) -> Result<(u32, u32), ImapError> {
    let selected = if caps.condstore {
        timed(
            "SELECT",
            cfg.command_timeout,
            s.select_condstore(&cfg.folder),
        )
        .await
    } else {
        timed("SELECT", cfg.command_timeout, s.select(&cfg.folder)).await
    }
    .map_err(|e| match e {
        ImapError::Closed => ImapError::Closed,
        e => ImapError::Select {
            folder: cfg.folder.clone(),
            reason: e.to_string(),
        },
    })?;
    let uidvalidity = selected
        .uid_validity
        .ok_or_else(|| ImapError::NoUidValidity(cfg.folder.clone()))?;
    Ok((uidvalidity, selected.exists))
}

/// Step 1: every message in the selected folder with its flags, size and mod-sequence.
async fn list(s: &mut Imap, caps: Caps, t: Duration) -> Result<Vec<plan::Listed>, ImapError> {
    let query = if caps.condstore {
        "(UID FLAGS RFC822.SIZE MODSEQ)"
    } else {
        "(UID FLAGS RFC822.SIZE)"
    };
    let fetched: Vec<Fetch> = timed("UID FETCH", t, async {
        let stream = s.uid_fetch("1:*", query).await?;
        stream.try_collect::<Vec<Fetch>>().await
    })
    .await?;
    Ok(fetched
        .iter()
        .filter_map(|f| {
            Some(plan::Listed {
                uid: f.uid?,
                size: f.size,
                modseq: f.modseq,
                deleted: f.flags().any(|fl| fl == Flag::Deleted),
                keywords: f
                    .flags()
                    .filter_map(|fl| match fl {
                        Flag::Custom(k) => Some(k.into_owned()),
                        _ => None,
                    })
                    .collect(),
            })
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Connection

/// A connection, in clear or in TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The rustls client configuration: the configured CA file, or the public WebPKI roots; the
/// ring provider named explicitly (one crypto backend in the build, see rustls#2070).
fn tls_connector(cfg: &MailboxConfig) -> Result<TlsConnector, ImapError> {
    let tls_err = |reason: String| ImapError::Tls {
        host: cfg.host.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| tls_err(format!("cannot read CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(tls_err(format!("{} holds no certificate", path.display())));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls_wrap(cfg: &MailboxConfig, tcp: TcpStream) -> Result<Stream, ImapError> {
    let connector = tls_connector(cfg)?;
    let name = ServerName::try_from(cfg.host.clone()).map_err(|e| ImapError::Tls {
        host: cfg.host.clone(),
        reason: format!("not a host name: {e}"),
    })?;
    let tls = tokio::time::timeout(cfg.command_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| ImapError::Timeout {
            command: "TLS handshake",
            after: cfg.command_timeout,
        })?
        .map_err(|e| ImapError::Tls {
            host: cfg.host.clone(),
            reason: e.to_string(),
        })?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// Reads the server greeting (RFC 3501 §7.1: `* OK`, `* PREAUTH` or `* BYE`).
async fn greeting(client: &mut Client<Stream>, t: Duration) -> Result<(), ImapError> {
    let r = tokio::time::timeout(t, client.read_response())
        .await
        .map_err(|_| ImapError::Timeout {
            command: "greeting",
            after: t,
        })?
        .map_err(|e| ImapError::Greeting(e.to_string()))?
        .ok_or(ImapError::Closed)?;
    match r.parsed() {
        async_imap::imap_proto::Response::Data {
            status: async_imap::imap_proto::Status::Ok | async_imap::imap_proto::Status::PreAuth,
            ..
        } => Ok(()),
        other => Err(ImapError::Greeting(format!("{other:?}"))),
    }
}

/// Connects, protects the connection as configured, and logs in.
async fn connect(cfg: &MailboxConfig) -> Result<Imap, ImapError> {
    let t = cfg.command_timeout;
    let tcp = tokio::time::timeout(t, TcpStream::connect((cfg.host.as_str(), cfg.port)))
        .await
        .map_err(|_| ImapError::Timeout {
            command: "connect",
            after: t,
        })?
        .map_err(|source| ImapError::Connect {
            host: cfg.host.clone(),
            port: cfg.port,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let client = match cfg.tls {
        ImapTls::Implicit => {
            let mut c = Client::new(tls_wrap(cfg, tcp).await?);
            greeting(&mut c, t).await?;
            c
        }
        ImapTls::None => {
            let mut c = Client::new(Stream::Plain(tcp));
            greeting(&mut c, t).await?;
            c
        }
        ImapTls::Starttls => {
            let mut c = Client::new(Stream::Plain(tcp));
            greeting(&mut c, t).await?;
            tokio::time::timeout(t, c.run_command_and_check_ok("STARTTLS", None))
                .await
                .map_err(|_| ImapError::Timeout {
                    command: "STARTTLS",
                    after: t,
                })?
                .map_err(|e| ImapError::StartTls(e.to_string()))?;
            // Nothing the server sent after its OK is kept (RFC 3501 §6.2.1: the client
            // discards what it knew before the negotiation).
            let Stream::Plain(tcp) = c.into_inner() else {
                return Err(ImapError::StartTls(
                    "the connection was already in TLS".into(),
                ));
            };
            Client::new(tls_wrap(cfg, tcp).await?)
        }
    };
    let password = match &cfg.password {
        Password::Inline(p) => p.clone(),
        Password::File(path) => std::fs::read_to_string(path)
            .map_err(|source| ImapError::PasswordFile {
                path: path.clone(),
                source,
            })?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
    };
    tokio::time::timeout(t, client.login(&cfg.user, &password))
        .await
        .map_err(|_| ImapError::Timeout {
            command: "LOGIN",
            after: t,
        })?
        .map_err(|(e, _)| ImapError::Login {
            user: cfg.user.clone(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_not_printed() {
        let p = Password::Inline("hunter2".into());
        assert_eq!(format!("{p:?}"), "Inline(<hidden>)");
    }
}
