//! The modem driver: one task owns one serial port (invariant 2: nothing else opens it).
//!
//! It opens the port (a real one or a pseudo-terminal alike), initializes the modem in PDU
//! mode, learns who it is (IMEI of the modem, IMSI of the SIM: a modem is known by its SIM, not
//! its tty path), keeps an eye on signal and registration, and sends SMS-SUBMIT PDUs one at a
//! time on request. When the port goes away (a USB stick pulled) it reopens it with backoff;
//! after repeated failures it rests the modem (quarantine) and probes it again later.
//!
//! The caller marks a part `sending` on disk (invariant 3) before it hands its PDU over
//! ([`Modem::send`]). The driver writes it when the modem is ready and idle, or answers
//! `NotReady` and writes nothing, so that the caller can put the part back as it was; every
//! other answer says whether the PDU was written.
//!
//! Failures are counted per modem and reset by a successful send (not by a successful
//! initialization: a modem that initializes but cannot send must still end up rested).
//!
//! No crate drives GSM modems from a host well (see `at.rs`), so this is ours. All parsing is
//! in the sans-IO `at` module; this file is only the I/O and the policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::at::{self, AtEvent, AtParser, CmsClass, FinalCode, Urc};
use super::pdu::{self, StatusReport, SubmitPdu, Tpdu};

/// First wait before reopening a port; doubled up to [`MAX_REOPEN_BACKOFF`].
const MIN_REOPEN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two attempts to open a missing port: a replugged modem is back in
/// service within this time.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(5);

/// How long a report read from the message memory may take to be recorded before the driver
/// gives up deleting it and goes on (the modem sends nothing meanwhile): longer than the queue
/// waits for the sends before a report to be recorded (`modem::REPORT_WAITS_FOR_SENDS`) and
/// the commit after, normally milliseconds.
const STORED_REPORT_RECORDED_WITHIN: Duration = Duration::from_secs(30);

/// How a modem is driven; from `[[modem]]` in the config.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub name: String,
    pub port: PathBuf,
    pub baud: u32,
    pub pin: Option<String>,
    /// Answer time allowed for an ordinary command, and for the `> ` prompt of `AT+CMGS`.
    pub command_timeout: Duration,
    /// Answer time allowed for `AT+CMGS` once the PDU is written (the network's round trip).
    pub send_timeout: Duration,
    /// How often signal and registration are checked.
    pub health_interval: Duration,
    /// Consecutive failures after which the modem is rested.
    pub max_failures: u32,
    /// How long a rested modem waits before it is probed again.
    pub quarantine: Duration,
    /// Ask the modem to route status reports to us (`AT+CNMI=2,1,0,1,0`).
    pub status_reports: bool,
}

impl DriverConfig {
    pub fn new(name: &str, port: PathBuf) -> DriverConfig {
        DriverConfig {
            name: name.to_string(),
            port,
            baud: 115_200,
            pin: None,
            command_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(30),
            max_failures: 3,
            quarantine: Duration::from_secs(300),
            status_reports: true,
        }
    }
}

/// Where the modem stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ModemState {
    /// Opening the port or initializing (again, after a failure: see `last_error`).
    Starting,
    Ready,
    /// The modem answers but is not registered on a network (`+CREG` stat not 1 or 5): it is
    /// given nothing to send until it is.
    NoNetwork(String),
    /// The port cannot be opened or went away; reopening with backoff.
    Unplugged(String),
    /// Rested after repeated failures until the time given (RFC 3339).
    Quarantined(String),
    /// Initialization failed for a reason a retry will not fix (wrong PIN, no PIN given).
    Failed(String),
    /// The gateway stopped.
    Stopped,
}

/// What the driver knows about its modem, published on every change.
#[derive(Debug, Clone, Serialize)]
pub struct ModemStatus {
    pub name: String,
    pub port: String,
    pub state: ModemState,
    /// When `state` last changed (RFC 3339).
    pub since: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub imei: Option<String>,
    pub imsi: Option<String>,
    pub operator: Option<String>,
    /// `+CSQ` RSSI (0..=31, 99 unknown) and its dBm.
    pub rssi: Option<u8>,
    pub dbm: Option<i16>,
    /// `+CREG` stat: 1 home, 5 roaming.
    pub registration: Option<u8>,
    /// Messages the network took (`+CMGS: <mr>`).
    pub sent: u64,
    /// Sends that did not end with `+CMGS: <mr>`.
    pub failed: u64,
    /// Times the port was reopened or the modem initialized again after a failure.
    pub reopened: u64,
    /// Times the modem was rested.
    pub quarantined: u64,
    /// Failures since the last successful send.
    pub failures: u32,
    pub last_error: Option<String>,
}

/// Why a send did not succeed. The difference between the two timeouts matters: before the
/// PDU was written nothing can have left, so the part is simply tried again; after, it may
/// have, so it must not be sent again silently (invariant 3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("+CMS ERROR: {code}, {}", at::cms_text(*code))]
    Cms { code: u16, class: CmsClass },
    /// `+CMS ERROR` in words (a modem that ignores `AT+CMEE=1`).
    #[error("+CMS ERROR: {0}")]
    CmsText(String),
    /// A bare `ERROR` or another final code: the modem gives no reason.
    #[error("the modem answered {0} without a reason")]
    Refused(String),
    /// Only from [`Modem::reserve`]: nothing was handed over.
    #[error("the modem is not ready: {0}")]
    NotReady(String),
    #[error("no answer before the message was written: {0}")]
    BeforePdu(String),
    #[error("no answer after the message was written; it may have been sent: {0}")]
    AfterPdu(String),
}

impl SendError {
    /// Sending the same message again (on any modem) may succeed: a temporary cause, or one
    /// about this modem's SIM or subscription (barred, no credit, no SC subscription), which
    /// another modem's SIM may not have.
    pub fn is_temporary(&self) -> bool {
        match self {
            SendError::Cms { code, class } => {
                *class == CmsClass::Temporary || at::cms_blames_modem(*code)
            }
            // No reason given: the bounded retry schedule decides.
            SendError::CmsText(_) | SendError::Refused(_) => true,
            SendError::NotReady(_) | SendError::BeforePdu(_) => true,
            SendError::AfterPdu(_) => false,
        }
    }
}

/// Something the modem said on its own that the gateway acts on.
#[derive(Debug)]
pub struct Unsolicited {
    pub modem: String,
    /// IMSI of the SIM in the modem when it was heard: reports are matched by SIM.
    pub imsi: Option<String>,
    /// The sends the modem had answered (`+CMGS`) when it was heard: a status report is about
    /// one of those, and is matched once they are recorded ([`Modem::recorded`]).
    pub sends: u64,
    pub what: Heard,
}

#[derive(Debug)]
pub enum Heard {
    /// An SMS-STATUS-REPORT, routed (`+CDS`) or read from the message memory after `+CDSI`
    /// or at start; `received_at` is Unix ms.
    Report {
        report: StatusReport,
        received_at: i64,
        /// For a report read from the message memory: told whether it is recorded, and only
        /// then deleted from the memory. `None` for a routed `+CDS`, which the modem keeps no
        /// copy of.
        recorded: Option<oneshot::Sender<bool>>,
    },
    /// Any other unsolicited result code.
    Urc(Urc),
}

/// The status reports in the answer to `AT+CMGR=<i>` (index `None`) or `AT+CMGL` (TS 27.005
/// §3.4.2, §3.4.3): each header line is followed by its PDU line. Entries that are not
/// status reports (received SMS) are left out; an undecodable one gives its error, so that
/// it is reported and not deleted.
pub fn stored_reports(
    lines: &[String],
    index: Option<u32>,
) -> Vec<(Option<u32>, Result<StatusReport, String>)> {
    let mut out = Vec::new();
    let mut it = lines.iter();
    while let Some(line) = it.next() {
        let idx = if let Some(h) = at::parse_cmgl(line) {
            Some(h.index)
        } else if at::parse_cmgr(line).is_some() {
            index
        } else {
            continue;
        };
        let Some(pdu_line) = it.next() else {
            out.push((idx, Err("the PDU line is missing".to_string())));
            break;
        };
        let decoded = pdu::from_hex(pdu_line.trim())
            .map_err(|e| e.to_string())
            .and_then(|b| pdu::decode(&b, true).map_err(|e| e.to_string()));
        match decoded {
            Ok(Tpdu::StatusReport(r)) => out.push((idx, Ok(r))),
            Ok(_) => {}
            Err(e) => out.push((idx, Err(e))),
        }
    }
    out
}

/// A message memory name as `+CDSI` gives it (`"SM"`, `"SR"`, `"ME"`): letters only, so that
/// it cannot end the quoted string of `AT+CPMS`.
fn memory_name(mem: &str) -> Option<&str> {
    (!mem.is_empty() && mem.len() <= 4 && mem.bytes().all(|b| b.is_ascii_uppercase()))
        .then_some(mem)
}

/// A caller hands the driver one SMS-SUBMIT whose part is already marked `sending` on disk: the
/// driver writes it if the modem is ready and idle, and answers with the TP-MR or the failure;
/// a modem that is not ready answers `NotReady` and writes nothing.
struct SendRequest {
    pdu: SubmitPdu,
    reply: oneshot::Sender<Result<u8, SendError>>,
}

impl SendRequest {
    fn refuse(self, reason: String) {
        let _ = self.reply.send(Err(SendError::NotReady(reason)));
    }
}

/// Handle to a running driver. Cheap to clone.
#[derive(Clone)]
pub struct Modem {
    name: String,
    tx: mpsc::Sender<SendRequest>,
    status: watch::Receiver<ModemStatus>,
    recorded: Arc<Recorded>,
}

/// How many of a modem's answered sends the queue has recorded: their `sent` committed (or
/// the commit given up). The `sent` of a send is committed a little after its `+CMGS`,
/// shared with other modems' changes; a status report heard in between is not matched until
/// then, or it would find no part (or an older one with the same TP-MR).
#[derive(Debug, Default)]
struct Recorded {
    count: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

impl Modem {
    /// Starts the driver task for one port.
    pub fn start(
        cfg: DriverConfig,
        urcs: Option<mpsc::UnboundedSender<Unsolicited>>,
        shutdown: CancellationToken,
    ) -> Modem {
        let (modem, driver) = Modem::new(cfg, urcs, shutdown);
        tokio::spawn(driver);
        modem
    }

    /// Like [`Modem::start`], with the driver task in `tracker` so that a graceful stop can
    /// wait for it to finish the send in hand.
    pub fn start_tracked(
        cfg: DriverConfig,
        urcs: Option<mpsc::UnboundedSender<Unsolicited>>,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Modem {
        let (modem, driver) = Modem::new(cfg, urcs, shutdown);
        tracker.spawn(driver);
        modem
    }

    /// The handle and the driver task to run.
    fn new(
        cfg: DriverConfig,
        urcs: Option<mpsc::UnboundedSender<Unsolicited>>,
        shutdown: CancellationToken,
    ) -> (Modem, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(1);
        let status = ModemStatus {
            name: cfg.name.clone(),
            port: cfg.port.display().to_string(),
            state: ModemState::Starting,
            since: now_rfc3339(),
            manufacturer: None,
            model: None,
            imei: None,
            imsi: None,
            operator: None,
            rssi: None,
            dbm: None,
            registration: None,
            sent: 0,
            failed: 0,
            reopened: 0,
            quarantined: 0,
            failures: 0,
            last_error: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let modem = Modem {
            name: cfg.name.clone(),
            tx,
            status: status_rx,
            recorded: Arc::default(),
        };
        (modem, Driver::new(cfg, status_tx, urcs).run(rx, shutdown))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle whose driver never runs (tests of what is built on the handle).
    #[cfg(test)]
    pub(crate) fn idle(name: &str) -> Modem {
        let cfg = DriverConfig::new(name, PathBuf::from("/dev/null"));
        Modem::new(cfg, None, CancellationToken::new()).0
    }

    /// The worker has recorded the result of `n` more of this modem's answered sends.
    pub fn record_sends(&self, n: u64) {
        if n > 0 {
            self.recorded.count.fetch_add(n, Ordering::AcqRel);
            self.recorded.changed.notify_waiters();
        }
    }

    /// Whether the first `sends` answered sends are recorded.
    pub fn has_recorded(&self, sends: u64) -> bool {
        self.recorded.count.load(Ordering::Acquire) >= sends
    }

    /// Waits until the first `sends` answered sends are recorded, at most `limit`; false if
    /// they were not by then.
    pub async fn recorded(&self, sends: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.recorded.changed.notified();
            tokio::pin!(changed);
            // Registered before the count is read, so an increase in between is not missed.
            changed.as_mut().enable();
            if self.has_recorded(sends) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    pub fn status(&self) -> ModemStatus {
        self.status.borrow().clone()
    }

    /// Reads the status without copying it.
    pub fn with_status<T>(&self, f: impl FnOnce(&ModemStatus) -> T) -> T {
        f(&self.status.borrow())
    }

    pub fn is_ready(&self) -> bool {
        self.status.borrow().state == ModemState::Ready
    }

    /// Waits until the modem's status changes; false once the driver has stopped.
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    /// Sends one SMS-SUBMIT once the modem is idle; returns the TP-MR the network gave it.
    /// `NotReady` means that nothing was written (the modem is not ready, or its driver has
    /// stopped); any other error says whether the PDU was written before it went wrong.
    pub async fn send(&self, pdu: SubmitPdu) -> Result<u8, SendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(SendRequest { pdu, reply })
            .await
            .map_err(|_| SendError::NotReady("the driver has stopped".into()))?;
        // The driver answers every request it takes, and refuses those it leaves when it
        // stops: no answer means it stopped in the middle of one.
        rx.await.map_err(|_| {
            SendError::AfterPdu("the driver stopped while the message was being sent".into())
        })?
    }
}

/// Something went wrong talking to the port.
#[derive(Debug)]
enum CmdError {
    Timeout,
    Io(String),
    Final(FinalCode),
}

impl CmdError {
    fn port_lost(&self) -> bool {
        matches!(self, CmdError::Io(_))
    }
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CmdError::Timeout => f.write_str("no answer in time"),
            CmdError::Io(e) => write!(f, "port error: {e}"),
            CmdError::Final(FinalCode::CmeError(c)) => {
                write!(f, "+CME ERROR: {c}, {}", at::cme_text(*c))
            }
            CmdError::Final(FinalCode::CmsError(c)) => {
                write!(f, "+CMS ERROR: {c}, {}", at::cms_text(*c))
            }
            CmdError::Final(code) => write!(f, "{code:?}"),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open port and the parser of what it says.
struct Conn {
    io: Box<dyn Io>,
    parser: AtParser,
    buf: Vec<u8>,
}

struct Driver {
    cfg: DriverConfig,
    status: watch::Sender<ModemStatus>,
    urcs: Option<mpsc::UnboundedSender<Unsolicited>>,
    failures: u32,
    /// Status reports the modem stored and announced with `+CDSI`, to read and delete
    /// between commands: (memory, index).
    stored: Vec<(String, u32)>,
}

/// Why the serving loop ended.
enum Ended {
    Shutdown,
    /// Reopen the port (it was lost) or initialize the modem again (it was confused).
    Restart {
        reason: String,
        port_lost: bool,
    },
    Quarantine(String),
}

/// A failed send and whether the port went away with it.
struct SendFailure {
    error: SendError,
    port_lost: bool,
}

impl SendFailure {
    fn new(error: SendError) -> SendFailure {
        SendFailure {
            error,
            port_lost: false,
        }
    }
}

impl Driver {
    fn new(
        cfg: DriverConfig,
        status: watch::Sender<ModemStatus>,
        urcs: Option<mpsc::UnboundedSender<Unsolicited>>,
    ) -> Driver {
        Driver {
            cfg,
            status,
            urcs,
            failures: 0,
            stored: Vec::new(),
        }
    }

    fn set_state(&self, state: ModemState, error: Option<String>) {
        self.status.send_if_modified(|s| {
            let mut changed = false;
            if s.state != state {
                info!(modem = %s.name, state = ?state, "modem state");
                s.state = state;
                s.since = now_rfc3339();
                changed = true;
            }
            if error.is_some() && s.last_error != error {
                s.last_error = error;
                changed = true;
            }
            changed
        });
    }

    fn state(&self) -> ModemState {
        self.status.borrow().state.clone()
    }

    fn set_failures(&mut self, n: u32) {
        self.failures = n;
        self.status.send_if_modified(|s| {
            let changed = s.failures != n;
            s.failures = n;
            changed
        });
    }

    async fn run(mut self, mut rx: mpsc::Receiver<SendRequest>, shutdown: CancellationToken) {
        self.run_port(&mut rx, &shutdown).await;
        self.set_state(ModemState::Stopped, None);
        // Requests sent and not taken were not written: say so, rather than leave their
        // senders to guess from a dropped answer.
        rx.close();
        while let Ok(req) = rx.try_recv() {
            req.refuse("the driver has stopped".into());
        }
    }

    async fn run_port(
        &mut self,
        rx: &mut mpsc::Receiver<SendRequest>,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = MIN_REOPEN_BACKOFF;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let mut conn = match self.open() {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("cannot open {}: {e}", self.cfg.port.display());
                    self.set_state(ModemState::Unplugged(msg.clone()), Some(msg));
                    if self.wait_refusing(rx, backoff, shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
                    continue;
                }
            };
            self.set_state(ModemState::Starting, None);
            let ended = match self.init(&mut conn).await {
                Ok(()) => {
                    backoff = MIN_REOPEN_BACKOFF;
                    self.set_state(self.network_state(), None);
                    self.serve(&mut conn, rx, shutdown).await
                }
                Err(InitError::Fatal(msg)) => {
                    warn!(modem = %self.cfg.name, reason = %msg, "modem cannot be used");
                    self.set_state(ModemState::Failed(msg.clone()), Some(msg));
                    // A wrong PIN does not fix itself; a config change and a restart will.
                    let _ = self.wait_refusing(rx, Duration::MAX, shutdown).await;
                    return;
                }
                Err(InitError::Retry { reason, port_lost }) => self.failure(reason, port_lost),
            };
            drop(conn);
            match ended {
                Ended::Shutdown => return,
                Ended::Restart { reason, port_lost } => {
                    warn!(modem = %self.cfg.name, %reason, "modem restarting");
                    self.status.send_modify(|s| s.reopened += 1);
                    let state = if port_lost {
                        ModemState::Unplugged(reason.clone())
                    } else {
                        ModemState::Starting
                    };
                    self.set_state(state, Some(reason));
                    if self.wait_refusing(rx, backoff, shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
                }
                Ended::Quarantine(msg) => {
                    let until = crate::queue::format_ms(crate::queue::now_ms().saturating_add(
                        i64::try_from(self.cfg.quarantine.as_millis()).unwrap_or(i64::MAX),
                    ));
                    warn!(modem = %self.cfg.name, reason = %msg, %until, "modem quarantined");
                    self.status.send_modify(|s| s.quarantined += 1);
                    self.set_state(ModemState::Quarantined(until), Some(msg));
                    if self.wait_refusing(rx, self.cfg.quarantine, shutdown).await {
                        return;
                    }
                    // The probe: reopen and initialize. One more failure before a successful
                    // send rests the modem again.
                    self.set_failures(self.cfg.max_failures.saturating_sub(1));
                    backoff = MIN_REOPEN_BACKOFF;
                }
            }
        }
    }

    /// Waits `d`, answering reservations with "not ready". True when shutting down.
    async fn wait_refusing(
        &self,
        rx: &mut mpsc::Receiver<SendRequest>,
        d: Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        let deadline = Instant::now().checked_add(d);
        loop {
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return true,
                _ = sleep => return false,
                req = rx.recv() => match req {
                    Some(req) => req.refuse(self.not_ready_reason()),
                    None => return true,
                },
            }
        }
    }

    fn not_ready_reason(&self) -> String {
        match &self.status.borrow().state {
            ModemState::Ready => "busy".to_string(),
            ModemState::Starting => "initializing".to_string(),
            ModemState::Stopped => "stopped".to_string(),
            ModemState::NoNetwork(m) | ModemState::Unplugged(m) | ModemState::Failed(m) => {
                m.clone()
            }
            ModemState::Quarantined(until) => format!("rested until {until}"),
        }
    }

    /// Ready, unless the last registration we heard of says the modem cannot send.
    fn network_state(&self) -> ModemState {
        match self.status.borrow().registration {
            Some(stat) if !at::creg_registered(stat) => {
                ModemState::NoNetwork(format!("not registered: {}", creg_text(stat)))
            }
            _ => ModemState::Ready,
        }
    }

    fn open(&self) -> std::io::Result<Conn> {
        let port = super::port::Port::open(&self.cfg.port, self.cfg.baud)?;
        Ok(Conn {
            io: Box::new(port),
            parser: AtParser::new(),
            buf: vec![0; 4096],
        })
    }

    async fn init(&mut self, c: &mut Conn) -> Result<(), InitError> {
        let t = self.cfg.command_timeout;
        self.sync(c).await?;
        // Echo off, numeric error codes (V.250 E0, TS 27.007 §9.1).
        self.exec(c, "ATE0", t).await.map_err(InitError::retry)?;
        self.exec(c, "AT+CMEE=1", t)
            .await
            .map_err(InitError::retry)?;
        // SIM PIN (TS 27.007 §8.3).
        let cpin = self
            .exec(c, "AT+CPIN?", t)
            .await
            .map_err(InitError::retry)?;
        match cpin.iter().find_map(|l| at::parse_cpin(l)) {
            Some(at::PinState::Ready) | None => {}
            Some(at::PinState::SimPin) => {
                let Some(pin) = self.cfg.pin.clone() else {
                    return Err(InitError::Fatal(
                        "the SIM asks for a PIN and none is configured".into(),
                    ));
                };
                // A PIN is digits only (TS 31.102 §9.5.1); anything else would also end the
                // quoted string and smuggle text into the command line.
                if pin.is_empty() || !pin.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(InitError::Fatal(
                        "the configured PIN is not made of digits".into(),
                    ));
                }
                self.exec(c, &format!("AT+CPIN=\"{pin}\""), t)
                    .await
                    .map_err(|e| {
                        InitError::Fatal(format!("the SIM refused the configured PIN: {e}"))
                    })?;
                // The SIM takes a moment to be ready after its PIN.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(other) => {
                return Err(InitError::Fatal(format!(
                    "the SIM is locked ({other:?}); unlock it by hand"
                )));
            }
        }
        let imei = first_line(&self.exec(c, "AT+CGSN", t).await.map_err(InitError::retry)?);
        let imsi = first_line(&self.exec(c, "AT+CIMI", t).await.map_err(InitError::retry)?);
        let manufacturer = self
            .exec(c, "AT+CGMI", t)
            .await
            .ok()
            .and_then(|l| first_line(&l));
        let model = self
            .exec(c, "AT+CGMM", t)
            .await
            .ok()
            .and_then(|l| first_line(&l));
        // PDU mode only (invariant 2): text mode lets a byte of the body end or derail AT+CMGS.
        self.exec(c, "AT+CMGF=0", t)
            .await
            .map_err(InitError::retry)?;
        if self.cfg.status_reports {
            // Status reports routed straight to us as +CDS (TS 27.005 §3.4.1); a modem that
            // cannot route them stores them and says +CDSI.
            if self.exec(c, "AT+CNMI=2,1,0,1,0", t).await.is_err() {
                let _ = self.exec(c, "AT+CNMI=2,1,0,2,0", t).await;
            }
        }
        let previous_imsi = self.status.borrow().imsi.clone();
        if previous_imsi.is_some() && previous_imsi != imsi {
            warn!(modem = %self.cfg.name, before = ?previous_imsi, now = ?imsi, "another SIM is in this port now");
        }
        self.status.send_modify(|s| {
            s.imei = imei;
            s.imsi = imsi;
            s.manufacturer = manufacturer;
            s.model = model;
        });
        if self.cfg.status_reports {
            // Reports stored while no one listened (or by a modem that only stores them).
            self.sweep_reports(c).await.map_err(InitError::retry)?;
        }
        self.health(c).await.map_err(InitError::retry)?;
        let st = self.status.borrow().clone();
        info!(modem = %st.name, imei = ?st.imei, imsi = ?st.imsi, operator = ?st.operator, rssi = ?st.rssi, registration = ?st.registration, "modem initialized");
        Ok(())
    }

    /// Gets the modem's attention and makes sure its next answer is to our next command.
    ///
    /// ESC cancels a half-typed PDU left by whoever had the port before (a crashed gateway),
    /// then `AT` until it answers. The modem may still owe answers to commands from before,
    /// e.g. the `+CMGS:` of a message sent just before a crash: the first `OK` may be one of
    /// those, and ours would then come next and answer the command after, shifting every
    /// answer by one (an IMEI read as the IMSI). So after an `OK` the line must stay quiet for
    /// a moment; another final result code means we were out of step, and we try again.
    async fn sync(&mut self, c: &mut Conn) -> Result<(), InitError> {
        const QUIET: Duration = Duration::from_millis(300);
        let _ = c.io.write_all(b"\x1b\r").await;
        let answer_time = Duration::from_secs(2).min(self.cfg.command_timeout);
        // Silence three times is a silent modem; answers out of step are worth a few more
        // rounds.
        let mut silent = 0;
        for _ in 0..6 {
            match self.exec(c, "AT", answer_time).await {
                Ok(_) => {}
                Err(e @ CmdError::Io(_)) => return Err(InitError::retry(e)),
                Err(CmdError::Timeout) => {
                    silent += 1;
                    if silent == 3 {
                        break;
                    }
                    continue;
                }
                Err(CmdError::Final(_)) => continue,
            }
            c.parser.set_pending(Some("AT"));
            let quiet_until = Instant::now() + QUIET;
            let mut in_step = true;
            loop {
                match self.next_event(c, quiet_until).await {
                    Err(CmdError::Timeout) => break,
                    Err(e) => return Err(InitError::retry(e)),
                    Ok(AtEvent::Final(_)) => in_step = false,
                    Ok(_) => {}
                }
            }
            c.parser.set_pending(None);
            if in_step {
                return Ok(());
            }
            debug!(modem = %self.cfg.name, "answers from an earlier command; synchronizing again");
        }
        Err(InitError::Retry {
            reason: "the modem does not answer AT".into(),
            port_lost: false,
        })
    }

    /// Signal, registration and operator (TS 27.007 §8.5, §7.2, §7.3).
    async fn health(&mut self, c: &mut Conn) -> Result<(), CmdError> {
        let t = self.cfg.command_timeout;
        let csq = self.exec(c, "AT+CSQ", t).await?;
        let creg = self.exec(c, "AT+CREG?", t).await?;
        let cops = match self.exec(c, "AT+COPS?", t).await {
            Ok(lines) => lines,
            Err(e @ (CmdError::Io(_) | CmdError::Timeout)) => return Err(e),
            // Some modems refuse +COPS? while searching; the operator is only informative.
            Err(CmdError::Final(_)) => Vec::new(),
        };
        let csq = csq.iter().find_map(|l| at::parse_csq(l));
        let creg = creg.iter().find_map(|l| at::parse_creg(l));
        let op = cops.iter().find_map(|l| at::parse_cops(l));
        self.status.send_if_modified(|s| {
            let before = (s.rssi, s.registration, s.operator.clone());
            if let Some(q) = csq {
                s.rssi = Some(q.rssi);
                s.dbm = q.dbm();
            }
            if let Some(r) = creg {
                s.registration = Some(r.stat);
            }
            if op.is_some() {
                s.operator = op;
            }
            before != (s.rssi, s.registration, s.operator.clone())
        });
        Ok(())
    }

    async fn serve(
        &mut self,
        c: &mut Conn,
        rx: &mut mpsc::Receiver<SendRequest>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut health = tokio::time::interval(self.cfg.health_interval);
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        health.reset();
        loop {
            // After a send: a request waiting behind it is refused, not written, once the
            // gateway is stopping.
            if shutdown.is_cancelled() {
                return Ended::Shutdown;
            }
            if !self.stored.is_empty()
                && let Err(e) = self.read_stored(c).await
            {
                let lost = e.port_lost();
                return self.failure(format!("reading a stored status report: {e}"), lost);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                req = rx.recv() => {
                    let Some(req) = req else { return Ended::Shutdown };
                    if self.state() != ModemState::Ready {
                        req.refuse(self.not_ready_reason());
                        continue;
                    }
                    // Not cancelled by shutdown: a PDU handed over is a part already marked
                    // `sending`, and it is written.
                    let result = self.send(c, &req.pdu).await;
                    let ended = self.after_send(&result);
                    let _ = req.reply.send(result.map_err(|f| f.error));
                    if let Some(e) = ended {
                        return e;
                    }
                }
                _ = health.tick() => {
                    if let Err(e) = self.health(c).await {
                        let lost = e.port_lost();
                        return self.failure(format!("health check: {e}"), lost);
                    }
                    self.set_state(self.network_state(), None);
                }
                // Between commands the modem may speak on its own (+CDS, +CMTI, ^RSSI).
                r = c.io.read(&mut c.buf) => match r {
                    Ok(0) => return Ended::Restart { reason: "the port closed".into(), port_lost: true },
                    Ok(n) => {
                        let bytes = c.buf[..n].to_vec();
                        c.parser.feed(&bytes);
                        self.drain_idle(c);
                    }
                    Err(e) => return Ended::Restart { reason: format!("port error: {e}"), port_lost: true },
                },
            }
        }
    }

    /// Counts a failure; decides whether to initialize again or rest the modem.
    fn failure(&mut self, reason: String, port_lost: bool) -> Ended {
        self.set_failures(self.failures.saturating_add(1));
        self.status
            .send_modify(|s| s.last_error = Some(reason.clone()));
        if self.failures >= self.cfg.max_failures {
            Ended::Quarantine(format!(
                "{} failures in a row; the last: {reason}",
                self.failures
            ))
        } else {
            Ended::Restart { reason, port_lost }
        }
    }

    fn after_send(&mut self, result: &Result<u8, SendFailure>) -> Option<Ended> {
        let f = match result {
            Ok(_) => {
                self.set_failures(0);
                self.status.send_modify(|s| s.sent += 1);
                return None;
            }
            Err(f) => f,
        };
        let e = &f.error;
        self.status.send_modify(|s| {
            s.failed += 1;
            s.last_error = Some(e.to_string());
        });
        match e {
            // The network refused this message; the modem did its job.
            SendError::Cms { code, .. } if !at::cms_blames_modem(*code) => {
                self.set_failures(0);
                None
            }
            // The modem (or its SIM, or its subscription) cannot send: count it; the modem
            // itself still talks, so it is not initialized again.
            SendError::Cms { .. } | SendError::CmsText(_) | SendError::Refused(_) => {
                self.set_failures(self.failures.saturating_add(1));
                (self.failures >= self.cfg.max_failures).then(|| {
                    Ended::Quarantine(format!(
                        "{} failed sends in a row; the last: {e}",
                        self.failures
                    ))
                })
            }
            // Silence or a lost port: whatever state the modem is in is unknown.
            SendError::NotReady(m) | SendError::BeforePdu(m) | SendError::AfterPdu(m) => {
                Some(self.failure(m.clone(), f.port_lost))
            }
        }
    }

    /// `AT+CMGS=<len>`, the prompt, the PDU and Ctrl-Z, then `+CMGS: <mr>` (TS 27.005 §3.5.1).
    async fn send(&mut self, c: &mut Conn, pdu: &SubmitPdu) -> Result<u8, SendFailure> {
        let cmd = format!("AT+CMGS={}", pdu.tpdu_len);
        let deadline = Instant::now() + self.cfg.command_timeout;
        c.parser.set_pending(Some(&cmd));
        if let Err(e) = write_line(c, &cmd).await {
            return Err(SendFailure {
                error: SendError::BeforePdu(format!("port error: {e}")),
                port_lost: true,
            });
        }
        loop {
            match self.next_event(c, deadline).await {
                Ok(AtEvent::Prompt) => break,
                Ok(AtEvent::Final(code)) => {
                    return Err(SendFailure::new(final_to_send_error(code)));
                }
                Ok(_) => {}
                Err(e) => {
                    // Cancel whatever the modem thinks it is waiting for.
                    let _ = c.io.write_all(b"\x1b").await;
                    c.parser.set_pending(None);
                    return Err(SendFailure {
                        port_lost: e.port_lost(),
                        error: SendError::BeforePdu(format!("waiting for the prompt: {e}")),
                    });
                }
            }
        }
        // The mail text travels as hex digits: no byte of it can end or derail the command
        // (invariant 2). Ctrl-Z is the one byte that makes the modem send.
        let mut body = pdu.hex().into_bytes();
        body.push(0x1a);
        if let Err(e) = c.io.write_all(&body).await {
            // `write_all` fails only before all of the buffer is written, so the Ctrl-Z at its
            // end did not reach the modem: nothing was sent.
            let _ = c.io.write_all(b"\x1b").await;
            return Err(SendFailure {
                error: SendError::BeforePdu(format!("port error while writing the message: {e}")),
                port_lost: true,
            });
        }
        let _ = c.io.flush().await;
        let deadline = Instant::now() + self.cfg.send_timeout;
        let mut mr = None;
        loop {
            match self.next_event(c, deadline).await {
                Ok(AtEvent::Response(line)) => {
                    if let Some(m) = at::parse_cmgs(&line) {
                        mr = Some(m);
                    }
                }
                Ok(AtEvent::Final(FinalCode::Ok)) => {
                    return mr.ok_or_else(|| {
                        SendFailure::new(SendError::AfterPdu(
                            "OK without +CMGS: the message reference is unknown".into(),
                        ))
                    });
                }
                Ok(AtEvent::Final(code)) => {
                    return Err(SendFailure::new(final_to_send_error(code)));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(SendFailure {
                        port_lost: e.port_lost(),
                        error: SendError::AfterPdu(format!("waiting for +CMGS: {e}")),
                    });
                }
            }
        }
    }

    /// Runs one command and returns its information lines.
    async fn exec(
        &mut self,
        c: &mut Conn,
        cmd: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, CmdError> {
        let deadline = Instant::now() + timeout;
        c.parser.set_pending(Some(cmd));
        write_line(c, cmd)
            .await
            .map_err(|e| CmdError::Io(e.to_string()))?;
        let mut lines = Vec::new();
        loop {
            match self.next_event(c, deadline).await {
                Ok(AtEvent::Response(l)) => lines.push(l),
                Ok(AtEvent::Final(FinalCode::Ok)) => return Ok(lines),
                Ok(AtEvent::Final(code)) => return Err(CmdError::Final(code)),
                Ok(AtEvent::Prompt) => {
                    let _ = c.io.write_all(b"\x1b").await;
                }
                Ok(_) => {}
                Err(e) => {
                    c.parser.set_pending(None);
                    return Err(e);
                }
            }
        }
    }

    /// The next event for the command in flight; unsolicited lines are handled on the way.
    async fn next_event(&mut self, c: &mut Conn, deadline: Instant) -> Result<AtEvent, CmdError> {
        loop {
            while let Some(ev) = c.parser.next_event() {
                match ev {
                    AtEvent::Urc(u) => self.urc(u),
                    AtEvent::Overflow => {
                        debug!(modem = %self.cfg.name, "overlong line from the modem")
                    }
                    other => return Ok(other),
                }
            }
            let n = tokio::time::timeout_at(deadline, c.io.read(&mut c.buf))
                .await
                .map_err(|_| CmdError::Timeout)?
                .map_err(|e| CmdError::Io(e.to_string()))?;
            if n == 0 {
                return Err(CmdError::Io("the port closed".into()));
            }
            let bytes = c.buf[..n].to_vec();
            c.parser.feed(&bytes);
        }
    }

    fn drain_idle(&mut self, c: &mut Conn) {
        while let Some(ev) = c.parser.next_event() {
            match ev {
                AtEvent::Urc(u) => self.urc(u),
                other => {
                    debug!(modem = %self.cfg.name, event = ?other, "unexpected line between commands")
                }
            }
        }
    }

    /// Reads, hands over and deletes every status report in the message memory
    /// (`AT+CMGL=4`: all messages, TS 27.005 §3.4.2). Received SMS are left alone.
    async fn sweep_reports(&mut self, c: &mut Conn) -> Result<(), CmdError> {
        let t = self.cfg.command_timeout;
        let lines = match self.exec(c, "AT+CMGL=4", t).await {
            Ok(lines) => lines,
            // A modem without a message memory to list has nothing stored.
            Err(CmdError::Final(code)) => {
                debug!(modem = %self.cfg.name, ?code, "AT+CMGL refused; no stored reports read");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for (index, report) in stored_reports(&lines, None) {
            self.take_stored(c, index, report).await?;
        }
        Ok(())
    }

    /// Reads the reports announced by `+CDSI`: `AT+CPMS` to their memory when it is not the
    /// one read last, `AT+CMGR`, then `AT+CMGD` once handed over.
    async fn read_stored(&mut self, c: &mut Conn) -> Result<(), CmdError> {
        let t = self.cfg.command_timeout;
        let mut memory: Option<String> = None;
        // Those left unread by a failure are found by the sweep when the modem is set up again.
        for (mem, index) in std::mem::take(&mut self.stored) {
            let Some(mem) = memory_name(&mem) else {
                warn!(modem = %self.cfg.name, mem, "+CDSI names a memory that cannot be selected");
                continue;
            };
            if memory.as_deref() != Some(mem) {
                if let Err(e) = self.exec(c, &format!("AT+CPMS=\"{mem}\""), t).await {
                    if e.port_lost() || matches!(e, CmdError::Timeout) {
                        return Err(e);
                    }
                    warn!(modem = %self.cfg.name, mem, error = %e, "cannot select the memory of a stored report");
                    continue;
                }
                memory = Some(mem.to_string());
            }
            let lines = match self.exec(c, &format!("AT+CMGR={index}"), t).await {
                Ok(lines) => lines,
                Err(e @ (CmdError::Io(_) | CmdError::Timeout)) => return Err(e),
                Err(e) => {
                    warn!(modem = %self.cfg.name, index, error = %e, "cannot read a stored report");
                    continue;
                }
            };
            for (i, report) in stored_reports(&lines, Some(index)) {
                self.take_stored(c, i, report).await?;
            }
        }
        Ok(())
    }

    /// Hands a stored report over and, once it is recorded, deletes it so the memory does not
    /// fill up. One that is not recorded stays in the memory, where the sweep at the next
    /// start finds it again (a report recorded twice is noted as a duplicate); one that cannot
    /// be decoded is kept for a person to look at.
    async fn take_stored(
        &mut self,
        c: &mut Conn,
        index: Option<u32>,
        report: Result<StatusReport, String>,
    ) -> Result<(), CmdError> {
        match report {
            Ok(r) => {
                let (tx, rx) = oneshot::channel();
                let handed = self.hand_over(Heard::Report {
                    report: r,
                    received_at: crate::queue::now_ms(),
                    recorded: Some(tx),
                });
                // A gateway stopped between the delete and the commit would lose the report.
                // A driver that hands reports to no one (none configured) never has one
                // recorded: it deletes them as it reads them.
                let recorded = match handed {
                    None => true,
                    Some(false) => false,
                    Some(true) => matches!(
                        tokio::time::timeout(STORED_REPORT_RECORDED_WITHIN, rx).await,
                        Ok(Ok(true))
                    ),
                };
                if !recorded {
                    warn!(modem = %self.cfg.name, ?index, "a stored status report was not recorded; left in the modem");
                } else if let Some(i) = index {
                    match self
                        .exec(c, &format!("AT+CMGD={i}"), self.cfg.command_timeout)
                        .await
                    {
                        Ok(_) => {}
                        Err(e @ (CmdError::Io(_) | CmdError::Timeout)) => return Err(e),
                        Err(e) => {
                            warn!(modem = %self.cfg.name, index = i, error = %e, "cannot delete a stored report")
                        }
                    }
                }
            }
            Err(e) => {
                warn!(modem = %self.cfg.name, ?index, error = %e, "a stored status report cannot be decoded; left in the modem")
            }
        }
        Ok(())
    }

    /// Gives what was heard to the listener: `None` when the driver has none, `Some(false)`
    /// when it has stopped listening.
    fn hand_over(&self, what: Heard) -> Option<bool> {
        let tx = self.urcs.as_ref()?;
        let (imsi, sends) = {
            let s = self.status.borrow();
            (s.imsi.clone(), s.sent)
        };
        Some(
            tx.send(Unsolicited {
                modem: self.cfg.name.clone(),
                imsi,
                sends,
                what,
            })
            .is_ok(),
        )
    }

    fn urc(&mut self, u: Urc) {
        match &u {
            Urc::Cds { pdu } => {
                match pdu::decode(pdu, true) {
                    Ok(Tpdu::StatusReport(report)) => {
                        self.hand_over(Heard::Report {
                            report,
                            received_at: crate::queue::now_ms(),
                            recorded: None,
                        });
                    }
                    Ok(other) => {
                        warn!(modem = %self.cfg.name, tpdu = ?other, "+CDS carried no status report")
                    }
                    Err(e) => {
                        warn!(modem = %self.cfg.name, error = %e, "+CDS cannot be decoded")
                    }
                }
                return;
            }
            Urc::Cdsi { mem, index } => {
                // Read between commands: this may be in the middle of one.
                self.stored.push((mem.clone(), *index));
                return;
            }
            Urc::Rssi(r) => self.status.send_modify(|s| s.rssi = Some(*r)),
            Urc::Creg { stat } => {
                self.status.send_modify(|s| s.registration = Some(*stat));
                if matches!(self.state(), ModemState::Ready | ModemState::NoNetwork(_)) {
                    self.set_state(self.network_state(), None);
                }
            }
            Urc::Boot | Urc::Ring => return,
            _ => {}
        }
        debug!(modem = %self.cfg.name, urc = ?u, "unsolicited");
        self.hand_over(Heard::Urc(u));
    }
}

enum InitError {
    /// Worth another try (port trouble, a confused modem).
    Retry { reason: String, port_lost: bool },
    /// Not until someone changes something (PIN).
    Fatal(String),
}

impl InitError {
    fn retry(e: CmdError) -> InitError {
        InitError::Retry {
            port_lost: e.port_lost(),
            reason: format!("initializing: {e}"),
        }
    }
}

async fn write_line(c: &mut Conn, cmd: &str) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(cmd.len() + 1);
    line.extend_from_slice(cmd.as_bytes());
    line.push(b'\r');
    c.io.write_all(&line).await?;
    c.io.flush().await
}

fn first_line(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

fn final_to_send_error(code: FinalCode) -> SendError {
    match code {
        FinalCode::CmsError(c) => SendError::Cms {
            code: c,
            class: at::classify_cms(c),
        },
        FinalCode::CmsErrorText(t) => SendError::CmsText(t),
        FinalCode::Error => SendError::Refused("ERROR".into()),
        other => SendError::Refused(format!("{other:?}")),
    }
}

/// `+CREG` `<stat>` in words (TS 27.007 §7.2).
fn creg_text(stat: u8) -> &'static str {
    match stat {
        0 => "not searching",
        1 => "home network",
        2 => "searching",
        3 => "registration denied",
        4 => "unknown",
        5 => "roaming",
        _ => "a registration state not in TS 27.007",
    }
}

fn now_rfc3339() -> String {
    crate::queue::format_ms(crate::queue::now_ms())
}
