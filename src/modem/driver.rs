//! The modem driver: one task owns one serial port (invariant 2: nothing else opens it).
//!
//! It opens the port (a real one or a pseudo-terminal alike), initializes the modem in PDU
//! mode, learns who it is (IMEI of the modem, IMSI of the SIM: a modem is known by its SIM, not
//! its tty path), keeps an eye on signal and registration, and sends SMS-SUBMIT PDUs one at a
//! time on request. When the port goes away (a USB stick pulled) it reopens it with backoff;
//! after repeated failures it rests the modem (quarantine) and probes it again later.
//!
//! No crate drives GSM modems from a host well (see `at.rs`), so this is ours. All parsing is
//! in the sans-IO `at` module; this file is only the I/O and the policy.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::at::{self, AtEvent, AtParser, CmsClass, FinalCode, Urc};
use super::pdu::SubmitPdu;

/// How a modem is driven; from `[[modem]]` in the config.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub name: String,
    pub port: PathBuf,
    pub baud: u32,
    pub pin: Option<String>,
    /// Answer time allowed for an ordinary command.
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
#[serde(rename_all = "lowercase", tag = "state", content = "detail")]
pub enum ModemState {
    /// Opening the port or initializing.
    Starting,
    Ready,
    /// The port cannot be opened or went away; reopening with backoff.
    Unplugged(String),
    /// Rested after repeated failures until the time given (RFC 3339).
    Quarantined(String),
    /// Initialization failed for a reason a retry will not fix (wrong PIN, no PIN given).
    Failed(String),
}

/// What the driver knows about its modem, published on every change.
#[derive(Debug, Clone, Serialize)]
pub struct ModemStatus {
    pub name: String,
    pub port: String,
    pub state: ModemState,
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
    pub sent: u64,
    pub failed: u64,
    pub reopened: u64,
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
    #[error("the modem is not ready: {0}")]
    NotReady(String),
    #[error("no answer before the message was written: {0}")]
    BeforePdu(String),
    #[error("no answer after the message was written; it may have been sent: {0}")]
    AfterPdu(String),
}

impl SendError {
    /// Sending the same message again (on any modem) may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            SendError::Cms { class, .. } => *class == CmsClass::Temporary,
            // No reason given: the bounded retry schedule decides.
            SendError::CmsText(_) | SendError::Refused(_) => true,
            SendError::NotReady(_) | SendError::BeforePdu(_) => true,
            SendError::AfterPdu(_) => false,
        }
    }
}

/// Something the modem said on its own that the gateway acts on (status reports, later).
#[derive(Debug, Clone)]
pub struct Unsolicited {
    pub modem: String,
    pub imsi: Option<String>,
    pub urc: Urc,
}

struct SendRequest {
    pdu: SubmitPdu,
    reply: oneshot::Sender<Result<u8, SendError>>,
}

/// Handle to a running driver. Cheap to clone.
#[derive(Clone)]
pub struct Modem {
    name: String,
    tx: mpsc::Sender<SendRequest>,
    status: watch::Receiver<ModemStatus>,
}

impl Modem {
    /// Starts the driver task for one port.
    pub fn start(
        cfg: DriverConfig,
        urcs: Option<mpsc::UnboundedSender<Unsolicited>>,
        shutdown: CancellationToken,
    ) -> Modem {
        let (tx, rx) = mpsc::channel(1);
        let status = ModemStatus {
            name: cfg.name.clone(),
            port: cfg.port.display().to_string(),
            state: ModemState::Starting,
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
            last_error: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let name = cfg.name.clone();
        tokio::spawn(Driver::new(cfg, status_tx, urcs).run(rx, shutdown));
        Modem {
            name,
            tx,
            status: status_rx,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> ModemStatus {
        self.status.borrow().clone()
    }

    pub fn is_ready(&self) -> bool {
        self.status.borrow().state == ModemState::Ready
    }

    /// Waits until the modem's status changes.
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    /// Sends one SMS-SUBMIT; returns the TP-MR the network gave it.
    pub async fn send(&self, pdu: SubmitPdu) -> Result<u8, SendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(SendRequest { pdu, reply })
            .await
            .map_err(|_| SendError::NotReady("the driver has stopped".into()))?;
        rx.await
            .map_err(|_| SendError::NotReady("the driver has stopped".into()))?
    }
}

/// Something went wrong talking to the port.
#[derive(Debug)]
enum CmdError {
    Timeout,
    Io(String),
    Final(FinalCode),
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
}

/// Why the serving loop ended.
enum Ended {
    Shutdown,
    /// Reopen (port lost) or re-initialize (modem confused).
    Restart(String),
    Quarantine(String),
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
        }
    }

    fn set_state(&self, state: ModemState, error: Option<String>) {
        self.status.send_modify(|s| {
            if s.state != state {
                info!(modem = %s.name, state = ?state, "modem state");
            }
            s.state = state;
            if error.is_some() {
                s.last_error = error;
            }
        });
    }

    async fn run(mut self, mut rx: mpsc::Receiver<SendRequest>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let mut conn = match self.open() {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("cannot open {}: {e}", self.cfg.port.display());
                    self.set_state(ModemState::Unplugged(msg.clone()), Some(msg));
                    if self.wait_refusing(&mut rx, backoff, &shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            self.set_state(ModemState::Starting, None);
            let ended = match self.init(&mut conn).await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    self.failures = 0;
                    self.set_state(ModemState::Ready, None);
                    self.serve(&mut conn, &mut rx, &shutdown).await
                }
                Err(InitError::Fatal(msg)) => {
                    self.set_state(ModemState::Failed(msg.clone()), Some(msg));
                    // A wrong PIN does not fix itself; a config reload or restart will.
                    let _ = self.wait_refusing(&mut rx, Duration::MAX, &shutdown).await;
                    return;
                }
                Err(InitError::Retry(msg)) => {
                    self.failures += 1;
                    if self.failures >= self.cfg.max_failures {
                        Ended::Quarantine(msg)
                    } else {
                        Ended::Restart(msg)
                    }
                }
            };
            drop(conn);
            match ended {
                Ended::Shutdown => return,
                Ended::Restart(msg) => {
                    warn!(modem = %self.cfg.name, reason = %msg, "modem restarting");
                    self.status.send_modify(|s| s.reopened += 1);
                    self.set_state(ModemState::Unplugged(msg.clone()), Some(msg));
                    if self.wait_refusing(&mut rx, backoff, &shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Ended::Quarantine(msg) => {
                    let until = crate::queue::format_ms(
                        crate::queue::now_ms() + self.cfg.quarantine.as_millis() as i64,
                    );
                    warn!(modem = %self.cfg.name, reason = %msg, %until, "modem quarantined");
                    self.set_state(ModemState::Quarantined(until), Some(msg));
                    if self
                        .wait_refusing(&mut rx, self.cfg.quarantine, &shutdown)
                        .await
                    {
                        return;
                    }
                    self.failures = self.cfg.max_failures.saturating_sub(1);
                }
            }
        }
    }

    /// Waits `d`, answering send requests with "not ready". True when shutting down.
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
                    Some(req) => {
                        let why = match &self.status.borrow().state {
                            ModemState::Ready | ModemState::Starting => "starting".to_string(),
                            ModemState::Unplugged(m) | ModemState::Failed(m) => m.clone(),
                            ModemState::Quarantined(until) => format!("rested until {until}"),
                        };
                        let _ = req.reply.send(Err(SendError::NotReady(why)));
                    }
                    None => return true,
                },
            }
        }
    }

    fn open(&self) -> std::io::Result<Conn> {
        let port = serial2_tokio::SerialPort::open(&self.cfg.port, self.cfg.baud)?;
        // Modem-control lines do not exist on a pseudo-terminal (ENOTTY); on hardware DTR up
        // tells the modem a terminal is there. Either way it is not worth failing over.
        let _ = port.set_dtr(true);
        let _ = port.set_rts(true);
        // Whatever the modem said while no one listened belongs to someone else's commands.
        let _ = port.discard_buffers();
        Ok(Conn {
            io: Box::new(port),
            parser: AtParser::new(),
            buf: vec![0; 4096],
        })
    }

    async fn init(&mut self, c: &mut Conn) -> Result<(), InitError> {
        let t = self.cfg.command_timeout;
        // Get the modem's attention: a half-typed command or a pending prompt from before
        // is cleared by ESC, then `AT` until it answers (some modems need a few).
        let _ = c.io.write_all(b"\x1b\r").await;
        let mut alive = false;
        for _ in 0..3 {
            match self.exec(c, "AT", Duration::from_secs(2).min(t)).await {
                Ok(_) => {
                    alive = true;
                    break;
                }
                Err(CmdError::Io(e)) => return Err(InitError::Retry(format!("port error: {e}"))),
                Err(_) => {}
            }
        }
        if !alive {
            return Err(InitError::Retry("the modem does not answer AT".into()));
        }
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
        let state = cpin.iter().find_map(|l| at::parse_cpin(l));
        match state {
            Some(at::PinState::Ready) | None => {}
            Some(at::PinState::SimPin) => {
                let Some(pin) = self.cfg.pin.clone() else {
                    return Err(InitError::Fatal(
                        "the SIM asks for a PIN and none is configured".into(),
                    ));
                };
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
        self.status.send_modify(|s| {
            s.imei = imei;
            s.imsi = imsi;
            s.manufacturer = manufacturer;
            s.model = model;
        });
        self.health(c).await.map_err(InitError::retry)?;
        let st = self.status.borrow().clone();
        info!(modem = %st.name, imei = ?st.imei, imsi = ?st.imsi, operator = ?st.operator, rssi = ?st.rssi, "modem ready");
        Ok(())
    }

    /// Signal, registration and operator (TS 27.007 §8.5, §7.2, §7.3).
    async fn health(&mut self, c: &mut Conn) -> Result<(), CmdError> {
        let t = self.cfg.command_timeout;
        let csq = self.exec(c, "AT+CSQ", t).await?;
        let creg = self.exec(c, "AT+CREG?", t).await?;
        let cops = self.exec(c, "AT+COPS?", t).await.unwrap_or_default();
        let csq = csq.iter().find_map(|l| at::parse_csq(l));
        let creg = creg.iter().find_map(|l| at::parse_creg(l));
        let op = cops.iter().find_map(|l| at::parse_cops(l));
        self.status.send_modify(|s| {
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
        health.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                req = rx.recv() => {
                    let Some(req) = req else { return Ended::Shutdown };
                    let result = self.send(c, &req.pdu).await;
                    let ended = self.after_send(&result);
                    let _ = req.reply.send(result);
                    if let Some(e) = ended {
                        return e;
                    }
                }
                _ = health.tick() => {
                    if let Err(e) = self.health(c).await {
                        return self.failure(e.to_string(), matches!(e, CmdError::Io(_)));
                    }
                }
                // Between commands the modem may speak on its own (+CDS, +CMTI, ^RSSI).
                r = c.io.read(&mut c.buf) => match r {
                    Ok(0) => return Ended::Restart("the port closed".into()),
                    Ok(n) => {
                        let bytes = c.buf[..n].to_vec();
                        c.parser.feed(&bytes);
                        self.drain_idle(c);
                    }
                    Err(e) => return Ended::Restart(format!("port error: {e}")),
                },
            }
        }
    }

    /// Counts a failure; decides whether to carry on, restart or rest the modem.
    fn failure(&mut self, msg: String, port_lost: bool) -> Ended {
        self.failures += 1;
        self.status
            .send_modify(|s| s.last_error = Some(msg.clone()));
        if self.failures >= self.cfg.max_failures {
            Ended::Quarantine(msg)
        } else if port_lost {
            Ended::Restart(msg)
        } else {
            Ended::Restart(format!("re-initializing after: {msg}"))
        }
    }

    fn after_send(&mut self, result: &Result<u8, SendError>) -> Option<Ended> {
        match result {
            Ok(_) => {
                self.failures = 0;
                self.status.send_modify(|s| s.sent += 1);
                None
            }
            Err(e) => {
                self.status.send_modify(|s| {
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                });
                match e {
                    // The network refused this message; the modem is fine.
                    SendError::Cms { code, .. } if !at::cms_blames_modem(*code) => {
                        self.failures = 0;
                        None
                    }
                    SendError::Cms { .. } | SendError::CmsText(_) | SendError::Refused(_) => {
                        self.failures += 1;
                        (self.failures >= self.cfg.max_failures)
                            .then(|| Ended::Quarantine(e.to_string()))
                    }
                    SendError::NotReady(m) | SendError::BeforePdu(m) | SendError::AfterPdu(m) => {
                        Some(self.failure(m.clone(), false))
                    }
                }
            }
        }
    }

    /// `AT+CMGS=<len>`, the prompt, the PDU and Ctrl-Z, then `+CMGS: <mr>` (TS 27.005 §3.5.1).
    async fn send(&mut self, c: &mut Conn, pdu: &SubmitPdu) -> Result<u8, SendError> {
        let cmd = format!("AT+CMGS={}", pdu.tpdu_len);
        let t = self.cfg.command_timeout;
        let deadline = Instant::now() + t;
        c.parser.set_pending(Some(&cmd));
        write_line(c, &cmd)
            .await
            .map_err(|e| SendError::BeforePdu(format!("port error: {e}")))?;
        loop {
            match self.next_event(c, deadline).await {
                Ok(AtEvent::Prompt) => break,
                Ok(AtEvent::Final(code)) => return Err(final_to_send_error(code)),
                Ok(_) => {}
                Err(e) => {
                    // Cancel whatever the modem thinks it is waiting for.
                    let _ = c.io.write_all(b"\x1b").await;
                    c.parser.set_pending(None);
                    return Err(SendError::BeforePdu(e.to_string()));
                }
            }
        }
        let mut body = pdu.hex().into_bytes();
        body.push(0x1a);
        if let Err(e) = c.io.write_all(&body).await {
            return Err(SendError::AfterPdu(format!(
                "port error while writing: {e}"
            )));
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
                        SendError::AfterPdu(
                            "OK without +CMGS: the message reference is unknown".into(),
                        )
                    });
                }
                Ok(AtEvent::Final(code)) => return Err(final_to_send_error(code)),
                Ok(_) => {}
                Err(e) => return Err(SendError::AfterPdu(e.to_string())),
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

    fn urc(&mut self, u: Urc) {
        match &u {
            Urc::Rssi(r) => self.status.send_modify(|s| s.rssi = Some(*r)),
            Urc::Creg { stat } => self.status.send_modify(|s| s.registration = Some(*stat)),
            Urc::Boot | Urc::Ring => return,
            _ => {}
        }
        debug!(modem = %self.cfg.name, urc = ?u, "unsolicited");
        if let Some(tx) = &self.urcs {
            let imsi = self.status.borrow().imsi.clone();
            let _ = tx.send(Unsolicited {
                modem: self.cfg.name.clone(),
                imsi,
                urc: u,
            });
        }
    }
}

enum InitError {
    /// Worth another try (port trouble, a confused modem).
    Retry(String),
    /// Not until someone changes something (PIN).
    Fatal(String),
}

impl InitError {
    fn retry(e: CmdError) -> InitError {
        InitError::Retry(e.to_string())
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
