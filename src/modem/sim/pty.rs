//! Puts a simulated modem behind a pseudo-terminal, where any program opens it as a serial
//! port.
//!
//! The slave side of the pty is published under a symlink the caller chooses (`DIR/modem0`),
//! because `/dev/pts/N` numbers change on every replug, as `/dev/ttyUSBn` numbers do for real
//! USB modems (udev's `/dev/serial/by-id` links play the symlink's part there). The master side
//! is read and written without blocking through tokio's [`AsyncFd`], and drives a
//! [`SimModem`]; one task per modem owns both.
//!
//! The task also keeps a slave descriptor of its own open. Without it the master reports a
//! hang-up (EIO, POLLHUP) whenever no client has the port open, which would make the reader
//! spin; with it, a client may close and reopen the port like a real one. Unplugging closes
//! both ends and removes the symlink, so a client's descriptor fails with EIO as it does when
//! a USB modem is pulled; replugging opens a new pty, points the symlink at it, and powers the
//! modem up again.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::{OpenptyResult, openpty};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::machine::{SimCounters, SimModem};
use super::{ReportConfig, ReportMode, SentSms, SimConfig};
use crate::modem::pdu;

/// Output kept for a client that does not read, before new output is dropped. A real UART
/// loses bytes too; 64 KiB is minutes of modem chatter.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// Accepted messages remembered for [`SimHandle::sent`].
const MAX_REMEMBERED: usize = 10_000;

/// A fault or action applied to a running modem. Also the JSON form of control-socket
/// commands: `{"cmd":"error_rate","code":38,"rate":0.3}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum SimOp {
    /// Delay before each answer.
    Latency { ms: u64 },
    /// Delay before the answer to `AT+CMGS`.
    CmgsLatency { ms: u64 },
    /// Fail the next `count` sends with `+CMS ERROR: <code>`.
    FailNext { code: u16, count: u32 },
    /// Fail each send with `+CMS ERROR: <code>` with probability `rate` (0 stops).
    ErrorRate { code: u16, rate: f64 },
    /// Stop answering.
    Hang,
    /// Answer again after [`SimOp::Hang`].
    Resume,
    /// Pull the modem: the pty and the symlink go away.
    Unplug,
    /// Plug it back (or power-cycle it if plugged): a new pty behind the same symlink.
    Replug,
    /// Write an unsolicited line; `\n` separates the lines of a two-line URC.
    Urc { line: String },
    /// Write raw bytes, given as hex (noise, a banner without line ends).
    Raw { hex: String },
    /// Status reports for later sends.
    Report {
        #[serde(default)]
        mode: ReportMode,
        #[serde(default)]
        status: u8,
        #[serde(default = "default_report_delay")]
        delay_ms: u64,
        #[serde(default)]
        duplicate: bool,
    },
    /// Keep status reports back until [`SimOp::ReleaseReports`].
    HoldReports,
    /// Send the held reports now, last first if `reverse`.
    ReleaseReports {
        #[serde(default)]
        reverse: bool,
    },
    /// Send a status report now for any message reference.
    InjectReport {
        mr: u8,
        #[serde(default)]
        recipient: Option<String>,
        #[serde(default)]
        status: u8,
    },
    /// `+CSQ` signal level.
    Signal { rssi: u8 },
    /// Network registration status (`+CREG` `<stat>`).
    Registration { stat: u8 },
}

fn default_report_delay() -> u64 {
    ReportConfig::default().delay_ms
}

/// A running modem as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimStatus {
    pub name: String,
    /// The symlink clients open.
    pub link: PathBuf,
    /// The pty the symlink points to, while plugged.
    pub device: Option<PathBuf>,
    pub plugged: bool,
    pub hung: bool,
    pub counters: SimCounters,
}

struct Shared {
    status: Mutex<SimStatus>,
    sent: Mutex<VecDeque<SentSms>>,
}

enum Request {
    Op(SimOp),
    Shutdown,
}

/// Controls one running simulated modem. Cheap to clone; the modem stops when the last
/// handle is dropped or on [`SimHandle::shutdown`].
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<(Request, oneshot::Sender<Result<(), String>>)>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("status", &self.status())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimHandle {
    pub fn name(&self) -> String {
        lock(&self.shared.status).name.clone()
    }

    /// The symlink clients open as a serial device.
    pub fn link(&self) -> PathBuf {
        lock(&self.shared.status).link.clone()
    }

    pub fn status(&self) -> SimStatus {
        lock(&self.shared.status).clone()
    }

    pub fn counters(&self) -> SimCounters {
        lock(&self.shared.status).counters.clone()
    }

    /// Messages accepted so far (the most recent 10 000).
    pub fn sent(&self) -> Vec<SentSms> {
        lock(&self.shared.sent).iter().cloned().collect()
    }

    async fn request(&self, req: Request) -> io::Result<()> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the simulated modem has stopped");
        let (ack, done) = oneshot::channel();
        self.tx.send((req, ack)).map_err(|_| gone())?;
        done.await
            .map_err(|_| gone())?
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// Applies a fault or action; returns once it is in effect.
    pub async fn apply(&self, op: SimOp) -> io::Result<()> {
        self.request(Request::Op(op)).await
    }

    pub async fn set_latency(&self, latency: Duration) -> io::Result<()> {
        self.apply(SimOp::Latency {
            ms: duration_ms(latency),
        })
        .await
    }

    pub async fn set_cmgs_latency(&self, latency: Duration) -> io::Result<()> {
        self.apply(SimOp::CmgsLatency {
            ms: duration_ms(latency),
        })
        .await
    }

    pub async fn fail_next(&self, code: u16, count: u32) -> io::Result<()> {
        self.apply(SimOp::FailNext { code, count }).await
    }

    pub async fn set_error_rate(&self, code: u16, rate: f64) -> io::Result<()> {
        self.apply(SimOp::ErrorRate { code, rate }).await
    }

    pub async fn hang(&self) -> io::Result<()> {
        self.apply(SimOp::Hang).await
    }

    pub async fn resume(&self) -> io::Result<()> {
        self.apply(SimOp::Resume).await
    }

    pub async fn unplug(&self) -> io::Result<()> {
        self.apply(SimOp::Unplug).await
    }

    pub async fn replug(&self) -> io::Result<()> {
        self.apply(SimOp::Replug).await
    }

    pub async fn urc(&self, line: &str) -> io::Result<()> {
        self.apply(SimOp::Urc {
            line: line.to_string(),
        })
        .await
    }

    pub async fn raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.apply(SimOp::Raw {
            hex: pdu::to_hex(bytes),
        })
        .await
    }

    pub async fn set_report(&self, report: ReportConfig) -> io::Result<()> {
        self.apply(SimOp::Report {
            mode: report.mode,
            status: report.status,
            delay_ms: report.delay_ms,
            duplicate: report.duplicate,
        })
        .await
    }

    pub async fn hold_reports(&self) -> io::Result<()> {
        self.apply(SimOp::HoldReports).await
    }

    pub async fn release_reports(&self, reverse: bool) -> io::Result<()> {
        self.apply(SimOp::ReleaseReports { reverse }).await
    }

    pub async fn inject_report(
        &self,
        mr: u8,
        recipient: Option<&str>,
        status: u8,
    ) -> io::Result<()> {
        self.apply(SimOp::InjectReport {
            mr,
            recipient: recipient.map(str::to_string),
            status,
        })
        .await
    }

    pub async fn set_signal(&self, rssi: u8) -> io::Result<()> {
        self.apply(SimOp::Signal { rssi }).await
    }

    pub async fn set_registration(&self, stat: u8) -> io::Result<()> {
        self.apply(SimOp::Registration { stat }).await
    }

    /// Stops the modem: the pty closes and the symlink is removed.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.request(Request::Shutdown).await
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The wall clock in microseconds: arrival stamps are compared with other processes' clocks,
/// so they cannot come from [`Clock`], whose base is rounded to the millisecond.
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Starts a simulated modem whose serial port appears at `link`, appending every accepted
/// message to `record` (one JSON object per line) if given.
///
/// `link` must not exist or be a symlink (it is replaced). Must be called within a tokio
/// runtime.
pub async fn spawn(
    cfg: SimConfig,
    link: PathBuf,
    record: Option<PathBuf>,
) -> io::Result<SimHandle> {
    let record = match record {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| annotate(e, "cannot open the record file", &path))?,
        ),
        None => None,
    };
    let pty = Pty::open(&link)?;
    let status = SimStatus {
        name: cfg.name.clone(),
        link: link.clone(),
        device: Some(pty.device.clone()),
        plugged: true,
        hung: false,
        counters: SimCounters::default(),
    };
    let shared = Arc::new(Shared {
        status: Mutex::new(status),
        sent: Mutex::new(VecDeque::new()),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let task = Task {
        core: SimModem::new(cfg),
        pty: Some(pty),
        link,
        record,
        clock: Clock::new(),
        out: Vec::new(),
        shared: Arc::clone(&shared),
    };
    tokio::spawn(task.run(rx));
    Ok(SimHandle { shared, tx })
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Milliseconds read as Unix time but never going backwards: the wall clock at start plus a
/// monotonic elapsed time.
struct Clock {
    start: Instant,
    base_ms: u64,
}

impl Clock {
    fn new() -> Clock {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, duration_ms);
        Clock {
            start: Instant::now(),
            base_ms,
        }
    }

    fn now(&self) -> u64 {
        self.base_ms
            .saturating_add(duration_ms(self.start.elapsed()))
    }

    fn instant(&self, ms: u64) -> tokio::time::Instant {
        let at = self.start + Duration::from_millis(ms.saturating_sub(self.base_ms));
        tokio::time::Instant::from_std(at)
    }
}

/// One pseudo-terminal pair.
struct Pty {
    master: AsyncFd<OwnedFd>,
    /// Held so that the master never sees a hang-up while clients come and go.
    _slave: OwnedFd,
    device: PathBuf,
}

impl Pty {
    fn open(link: &Path) -> io::Result<Pty> {
        let OpenptyResult { master, slave } = openpty(None, None)?;
        // Raw mode: no CR/LF translation, no echo by the line discipline, no signals from
        // Ctrl-C or Ctrl-Z bytes; the modem's own echo is the only one, as on a real port.
        let mut termios = tcgetattr(&slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        for fd in [&master, &slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
        fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let device = nix::unistd::ttyname(&slave)?;
        publish_link(&device, link)?;
        // SAFETY: an `OwnedFd` is open and owned by the `AsyncFd` until it is dropped, so the
        // registered descriptor can neither be closed nor reused behind tokio's back.
        let master = unsafe { AsyncFd::register(master) }?;
        Ok(Pty {
            master,
            _slave: slave,
            device,
        })
    }
}

/// Points `link` at `target` atomically (a new symlink renamed over the old one), so a client
/// never finds the path missing during a replug.
fn publish_link(target: &Path, link: &Path) -> io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(link)
        && !meta.file_type().is_symlink()
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a symlink; refusing to replace it",
                link.display()
            ),
        ));
    }
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| annotate(e, "cannot create the symlink", &tmp))?;
    fs::rename(&tmp, link).map_err(|e| annotate(e, "cannot publish the symlink", link))
}

/// Removes `link` if it still points at `device` (another process may have taken it over).
fn remove_link(link: &Path, device: &Path) {
    if fs::read_link(link).is_ok_and(|t| t == device) {
        let _ = fs::remove_file(link);
    }
}

/// Reads what the client wrote; never completes while unplugged.
async fn read_master(pty: Option<&Pty>) -> io::Result<Vec<u8>> {
    let Some(pty) = pty else {
        return std::future::pending().await;
    };
    let mut buf = [0u8; 4096];
    loop {
        let mut guard = pty.master.readable().await?;
        match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref(), &mut buf)?)) {
            Ok(result) => {
                let n = result?;
                return Ok(buf.get(..n).unwrap_or_default().to_vec());
            }
            Err(_would_block) => continue,
        }
    }
}

async fn writable(pty: Option<&Pty>) -> io::Result<()> {
    let Some(pty) = pty else {
        return std::future::pending().await;
    };
    pty.master.writable().await.map(drop)
}

struct Task {
    core: SimModem,
    pty: Option<Pty>,
    link: PathBuf,
    record: Option<File>,
    clock: Clock,
    /// Bytes for the client not yet accepted by the pty.
    out: Vec<u8>,
    shared: Arc<Shared>,
}

type Inbox = mpsc::UnboundedReceiver<(Request, oneshot::Sender<Result<(), String>>)>;

impl Task {
    async fn run(mut self, mut rx: Inbox) {
        loop {
            let deadline = self.core.next_deadline().map(|d| self.clock.instant(d));
            let want_write = !self.out.is_empty();
            tokio::select! {
                req = rx.recv() => {
                    let Some((req, ack)) = req else { break };
                    match req {
                        Request::Shutdown => {
                            let _ = ack.send(Ok(()));
                            break;
                        }
                        Request::Op(op) => {
                            let result = self.apply(op);
                            let _ = ack.send(result);
                        }
                    }
                }
                read = read_master(self.pty.as_ref()) => match read {
                    Ok(bytes) if !bytes.is_empty() => {
                        let now = self.clock.now();
                        self.core.stamp_input(unix_us());
                        self.core.input(now, &bytes);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Only a broken pty gets here (the task holds a slave open, so a
                        // client closing the port is not an error): behave as unplugged.
                        tracing::warn!(modem = %self.core.config().name, error = %e, "pty failed");
                        self.unplug();
                    }
                },
                _ = writable(self.pty.as_ref()), if want_write => {}
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            self.pump();
        }
        self.unplug();
        self.publish_status();
    }

    fn apply(&mut self, op: SimOp) -> Result<(), String> {
        let now = self.clock.now();
        match op {
            SimOp::Latency { ms } => self.core.set_latency(ms),
            SimOp::CmgsLatency { ms } => self.core.set_cmgs_latency(ms),
            SimOp::FailNext { code, count } => self.core.fail_next(code, count),
            SimOp::ErrorRate { code, rate } => {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("rate {rate} is not between 0 and 1"));
                }
                self.core.set_error_rate(code, rate);
            }
            SimOp::Hang => self.core.set_hung(now, true),
            SimOp::Resume => self.core.set_hung(now, false),
            SimOp::Unplug => self.unplug(),
            SimOp::Replug => {
                self.unplug();
                let pty = Pty::open(&self.link).map_err(|e| e.to_string())?;
                self.core.power_cycle(now);
                self.pty = Some(pty);
            }
            SimOp::Urc { line } => self.core.unsolicited(now, &line),
            SimOp::Raw { hex } => {
                let bytes = pdu::from_hex(&hex).map_err(|e| e.to_string())?;
                self.core.raw(now, &bytes);
            }
            SimOp::Report {
                mode,
                status,
                delay_ms,
                duplicate,
            } => self.core.set_report(ReportConfig {
                mode,
                status,
                delay_ms,
                duplicate,
            }),
            SimOp::HoldReports => self.core.hold_reports(true),
            SimOp::ReleaseReports { reverse } => {
                self.core.hold_reports(false);
                self.core.release_reports(now, reverse);
            }
            SimOp::InjectReport {
                mr,
                recipient,
                status,
            } => self
                .core
                .inject_report(now, mr, recipient.as_deref(), status),
            SimOp::Signal { rssi } => self.core.set_signal(rssi),
            SimOp::Registration { stat } => self.core.set_registration(now, stat),
        }
        self.pump();
        Ok(())
    }

    fn unplug(&mut self) {
        self.out.clear();
        if let Some(pty) = self.pty.take() {
            remove_link(&self.link, &pty.device);
        }
    }

    /// Moves due output to the pty, records accepted messages, publishes the status.
    fn pump(&mut self) {
        let now = self.clock.now();
        let bytes = self.core.poll_output(now);
        if let Some(pty) = &self.pty {
            let room = MAX_PENDING_OUTPUT.saturating_sub(self.out.len());
            self.out
                .extend_from_slice(bytes.get(..bytes.len().min(room)).unwrap_or_default());
            while !self.out.is_empty() {
                let written = pty.master.try_io(Interest::WRITABLE, |fd| {
                    Ok(nix::unistd::write(fd, &self.out)?)
                });
                match written {
                    Ok(n) => {
                        self.out.drain(..n.min(self.out.len()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(modem = %self.core.config().name, error = %e, "pty write failed");
                        self.out.clear();
                        break;
                    }
                }
            }
        }
        for sms in self.core.take_accepted() {
            self.record(&sms);
            let mut sent = lock(&self.shared.sent);
            if sent.len() >= MAX_REMEMBERED {
                sent.pop_front();
            }
            sent.push_back(sms);
        }
        self.publish_status();
    }

    fn record(&mut self, sms: &SentSms) {
        let Some(file) = self.record.as_mut() else {
            return;
        };
        let line = match serde_json::to_string(sms) {
            Ok(mut line) => {
                line.push('\n');
                line
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialize a record");
                return;
            }
        };
        // One write per line, on a file opened for appending: several modems can share the
        // file and a reader sees whole lines at once.
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(modem = %sms.modem, error = %e, "cannot write the record file");
        }
    }

    fn publish_status(&self) {
        let mut status = lock(&self.shared.status);
        status.device = self.pty.as_ref().map(|p| p.device.clone());
        status.plugged = self.pty.is_some();
        status.hung = self.core.is_hung();
        status.counters = self.core.counters().clone();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
