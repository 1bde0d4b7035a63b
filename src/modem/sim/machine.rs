//! The simulated modem itself: a sans-IO state machine.
//!
//! Bytes the terminal (DTE) writes go in through [`SimModem::input`]; bytes the modem writes
//! come out of [`SimModem::poll_output`]. Time is an argument (milliseconds, read as Unix time
//! when timestamps are printed): answers are due `latency` after the command, status reports
//! `delay` after the send, and [`SimModem::next_deadline`] says when to poll again. There is no
//! clock and no I/O here, so every behaviour is tested from byte transcripts.
//!
//! What it follows:
//! - ITU-T V.250: command lines start with `AT` and end with CR (S3), LF is ignored (S4),
//!   backspace edits (S5); characters are echoed as received while `E1` (the power-on
//!   default); several commands share a line (`ATE0+CMEE=1;+CREG=2`) and get one final result
//!   code; a line without the `AT` prefix is ignored.
//! - 3GPP TS 27.007 for identification, PIN, registration, signal and `+CMEE` error reporting.
//! - 3GPP TS 27.005 for SMS: PDU and text mode `+CMGS` with the `> ` prompt (no line end),
//!   Ctrl-Z to send and ESC to cancel, `+CMS ERROR` causes, the message memory (`+CPMS`,
//!   `+CMGR`, `+CMGL`, `+CMGD`) and status report routing by `+CNMI` `<ds>`.
//!
//! Faults are switched at run time: latency, error injection (for the next N sends or with a
//! probability, from a seeded xorshift generator so runs repeat), hanging, unsolicited lines,
//! raw noise, and status reports that are failed, duplicated, held back and released out of
//! order, or injected for any reference.

use std::collections::VecDeque;

use serde::Serialize;

use super::report::{EncodedReport, StatusReport, encode_status_report, text_timestamp};
use super::{ConcatRecord, ReportConfig, ReportMode, SentSms, SimConfig};
use crate::modem::at::{cme_text, cms_text};
use crate::modem::pdu::{self, Tpdu};

/// Longest command line kept (V.250 §5.2.1 asks for at least 40 characters).
const MAX_COMMAND_LINE: usize = 1024;
/// Longest body kept after the prompt. A PDU is at most 12 octets of SMSC address and 164 of
/// SMS-SUBMIT: 352 hex digits.
const MAX_BODY: usize = 1024;
/// Longest TPDU `AT+CMGS=<length>` accepts: an SMS-SUBMIT with a 20-digit address, a 7-octet
/// validity period and 140 octets of user data (TS 23.040 §9.2.2.2).
const MAX_TPDU: usize = 164;
/// Wrong PINs before the SIM asks for the PUK (TS 31.102 §9.5).
const PIN_ATTEMPTS: u8 = 3;
/// Location area and cell reported by `+CREG` with `<n>`=2.
const LAC: &str = "1A2B";
const CELL: &str = "0C3D";

/// What happened so far, for tests and the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimCounters {
    /// Command lines executed (lines with the `AT` prefix).
    pub command_lines: u64,
    /// Messages accepted and answered with `+CMGS:`.
    pub accepted: u64,
    /// Sends failed on purpose with an injected `+CMS ERROR`.
    pub injected_errors: u64,
    /// Sends refused because the PDU, its length or the text was malformed.
    pub rejected: u64,
    /// Sends cancelled with ESC.
    pub cancelled: u64,
    /// `AT+CMGD` commands executed: a message body that smuggled one in would show here.
    pub deletes: u64,
    /// Status reports delivered to the terminal (`+CDS`) or stored.
    pub reports: u64,
    /// Status reports lost because the message memory was full.
    pub reports_dropped: u64,
}

/// Settings a terminal changes with commands and `ATZ`/`AT&F` restore.
#[derive(Debug, Clone)]
struct Settings {
    echo: bool,
    /// `+CMEE`: 0 plain `ERROR`, 1 numeric causes, 2 verbose causes.
    cmee: u8,
    /// `+CMGF`: 0 PDU, 1 text.
    cmgf: u8,
    /// `+CREG` unsolicited mode.
    creg_n: u8,
    /// `+CGREG` unsolicited mode (GPRS registration, TS 27.007 §10.1.20).
    cgreg_n: u8,
    /// `+COPS` `<format>` of the operator: 0 long name, 1 short name, 2 numeric (MCC MNC).
    cops_format: u8,
    /// `+CNMI` `<mode>,<mt>,<bm>,<ds>,<bfr>`.
    cnmi: [u8; 5],
    cscs: String,
    csms: u8,
    /// First octet of text-mode submits (`+CSMP` `<fo>`): 17 = SMS-SUBMIT, relative validity.
    csmp_fo: u8,
}

impl Settings {
    fn power_on() -> Settings {
        Settings {
            echo: true,
            cmee: 0,
            cmgf: 0,
            creg_n: 0,
            cgreg_n: 0,
            cops_format: 0,
            cnmi: [0; 5],
            cscs: "GSM".to_string(),
            csms: 0,
            csmp_fo: 17,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimLock {
    Ready,
    Pin { attempts_left: u8 },
    Puk,
}

/// What the modem does with the bytes it receives.
#[derive(Debug, Clone)]
enum Mode {
    Command,
    /// After `AT+CMGS=<length>` in PDU mode: hex digits until Ctrl-Z.
    PduBody {
        len: usize,
        hex: String,
        overflow: bool,
    },
    /// After `AT+CMGS="<da>"` in text mode: text until Ctrl-Z; CR starts a new line.
    TextBody {
        dest: String,
        text: Vec<u8>,
        overflow: bool,
    },
}

/// A status report the network will send.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedReport {
    mr: u8,
    recipient: String,
    sc_timestamp_ms: u64,
    status: u8,
}

/// A status report kept in the message memory.
#[derive(Debug, Clone)]
struct Stored {
    /// 0 received unread, 1 received read (TS 27.005 §3.1 `<stat>`).
    stat: u8,
    report: PlannedReport,
    discharge_ms: u64,
    encoded: EncodedReport,
}

/// Why a command failed; printed according to `+CMEE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Error,
    Cme(u16),
    Cms(u16),
}

/// What a command asks of the line it is on.
enum Flow {
    Continue,
    /// Print `> ` and read a message body.
    Prompt,
}

/// How a command is invoked (V.250 §5.4.2 / §6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exec,
    Set,
    Read,
    Test,
}

/// One command of a command line: `E` `0`, `&F`, `S3` `?`, `+CMGS` `=` `23`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    name: String,
    kind: Kind,
    arg: String,
}

/// xorshift64 (Marsaglia 2003): enough to decide injected failures repeatably.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// FNV-1a, to derive a seed from the IMEI when none is configured.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One simulated modem. See the module documentation.
#[derive(Debug)]
pub struct SimModem {
    cfg: SimConfig,
    settings: Settings,
    lock: SimLock,
    pin: Option<String>,
    mode: Mode,
    line: Vec<u8>,
    line_overflow: bool,
    /// `+CREG` `<stat>` once the SIM is unlocked.
    network_stat: u8,
    rssi: u8,
    csca: String,
    next_mr: u8,
    storage: Vec<Option<Stored>>,
    latency_ms: u64,
    cmgs_latency_ms: u64,
    /// Fail the next `count` sends with this cause.
    fail_next: Option<(u16, u32)>,
    /// Fail each send with this cause with this probability.
    error_rate: Option<(u16, f64)>,
    rng: XorShift,
    hung: bool,
    report: ReportConfig,
    holding: bool,
    held: Vec<PlannedReport>,
    /// The modem answers one command at a time: the next answer is not due before this.
    busy_until: u64,
    /// Output in due-time order; equal times keep insertion order.
    out: VecDeque<(u64, Vec<u8>)>,
    /// Status reports not yet sent by the network, with their due time.
    timers: Vec<(u64, PlannedReport)>,
    accepted: Vec<SentSms>,
    counters: SimCounters,
    /// When the input being fed arrived (µs since the Unix epoch), if the I/O layer said.
    input_us: Option<u64>,
    /// When the `AT+CMGS` line of the message being typed arrived.
    cmgs_at_us: Option<u64>,
}

impl SimModem {
    pub fn new(cfg: SimConfig) -> SimModem {
        let seed = if cfg.seed == 0 {
            fnv1a(&cfg.imei)
        } else {
            cfg.seed
        };
        let lock = initial_lock(&cfg.pin);
        SimModem {
            settings: Settings::power_on(),
            lock,
            pin: cfg.pin.clone(),
            mode: Mode::Command,
            line: Vec::new(),
            line_overflow: false,
            network_stat: 1,
            rssi: cfg.rssi,
            csca: cfg.smsc.clone(),
            next_mr: cfg.first_mr,
            storage: vec![None; usize::from(cfg.storage_size.max(1))],
            latency_ms: cfg.latency_ms,
            cmgs_latency_ms: cfg.cmgs_latency_ms,
            fail_next: None,
            error_rate: None,
            rng: XorShift::new(seed),
            hung: false,
            report: cfg.report.clone(),
            holding: false,
            held: Vec::new(),
            busy_until: 0,
            out: VecDeque::new(),
            timers: Vec::new(),
            accepted: Vec::new(),
            counters: SimCounters::default(),
            input_us: None,
            cmgs_at_us: None,
            cfg,
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &SimCounters {
        &self.counters
    }

    /// Bytes written by the terminal at time `now` (milliseconds).
    pub fn input(&mut self, now: u64, bytes: &[u8]) {
        self.fire_timers(now);
        if !self.hung {
            for &b in bytes {
                match self.mode {
                    Mode::Command => self.command_byte(now, b),
                    Mode::PduBody { .. } => self.pdu_body_byte(now, b),
                    Mode::TextBody { .. } => self.text_body_byte(now, b),
                }
            }
        }
        // A stamp belongs to one input only.
        self.input_us = None;
    }

    /// Says when the bytes of the next [`input`](Self::input) arrived, in microseconds since
    /// the Unix epoch: finer than `now`, and only for the record ([`SentSms::cmgs_at_us`]).
    pub fn stamp_input(&mut self, unix_us: u64) {
        self.input_us = Some(unix_us);
    }

    /// Everything the modem has written up to `now`, in order.
    pub fn poll_output(&mut self, now: u64) -> Vec<u8> {
        self.fire_timers(now);
        let mut bytes = Vec::new();
        if self.hung {
            self.out.clear();
            return bytes;
        }
        while self.out.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, chunk)) = self.out.pop_front() {
                bytes.extend(chunk);
            }
        }
        bytes
    }

    /// When [`poll_output`](Self::poll_output) will next have something, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.hung {
            return None;
        }
        let out = self.out.front().map(|(at, _)| *at);
        let timer = self.timers.iter().map(|(at, _)| *at).min();
        match (out, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Messages accepted since the last call.
    pub fn take_accepted(&mut self) -> Vec<SentSms> {
        std::mem::take(&mut self.accepted)
    }

    /// Delay before each answer.
    pub fn set_latency(&mut self, ms: u64) {
        self.latency_ms = ms;
    }

    /// Delay before the answer to a submitted message.
    pub fn set_cmgs_latency(&mut self, ms: u64) {
        self.cmgs_latency_ms = ms;
    }

    /// Fails the next `count` sends with `+CMS ERROR: <code>`.
    pub fn fail_next(&mut self, code: u16, count: u32) {
        self.fail_next = (count > 0).then_some((code, count));
    }

    /// Fails each send with `+CMS ERROR: <code>` with probability `rate` (0 disables).
    pub fn set_error_rate(&mut self, code: u16, rate: f64) {
        self.error_rate = (rate > 0.0).then_some((code, rate.min(1.0)));
    }

    /// Stops answering (true) or resumes (false). While hung, input is lost, nothing is
    /// written and status reports wait; a half-typed command or body is forgotten.
    pub fn set_hung(&mut self, now: u64, hung: bool) {
        self.hung = hung;
        if hung {
            self.out.clear();
            self.mode = Mode::Command;
            self.line.clear();
            self.line_overflow = false;
        } else {
            self.busy_until = now;
        }
    }

    pub fn is_hung(&self) -> bool {
        self.hung
    }

    /// Writes an unsolicited line now; `\n` inside it separates lines (for two-line URCs).
    pub fn unsolicited(&mut self, now: u64, line: &str) {
        let text = format!("\r\n{}\r\n", line.replace('\n', "\r\n"));
        self.emit(now, text.into_bytes());
    }

    /// Writes raw bytes now (line noise, a banner).
    pub fn raw(&mut self, now: u64, bytes: &[u8]) {
        self.emit(now, bytes.to_vec());
    }

    /// Status reports for later sends.
    pub fn set_report(&mut self, report: ReportConfig) {
        self.report = report;
    }

    /// Holds status reports back (true) until [`release_reports`](Self::release_reports).
    pub fn hold_reports(&mut self, hold: bool) {
        self.holding = hold;
    }

    /// Sends the held reports now, in reverse order if asked (out-of-order delivery).
    pub fn release_reports(&mut self, now: u64, reverse: bool) {
        let mut held = std::mem::take(&mut self.held);
        if reverse {
            held.reverse();
        }
        for r in held {
            self.deliver_report(now, &r);
        }
    }

    /// Sends a status report now for any message reference, as a late or stray report would
    /// arrive. `recipient` defaults to the destination of the last message sent with that
    /// reference.
    pub fn inject_report(&mut self, now: u64, mr: u8, recipient: Option<&str>, status: u8) {
        let recipient = recipient.map(str::to_string).unwrap_or_else(|| {
            self.accepted_dest(mr)
                .unwrap_or_else(|| "+33612345678".to_string())
        });
        let r = PlannedReport {
            mr,
            recipient,
            sc_timestamp_ms: now,
            status,
        };
        self.deliver_report(now, &r);
    }

    /// `+CSQ` `<rssi>`.
    pub fn set_signal(&mut self, rssi: u8) {
        self.rssi = rssi;
    }

    /// Network registration `<stat>` (0 none, 1 home, 2 searching, 3 denied, 5 roaming); sends
    /// the `+CREG` URC if the terminal asked for it.
    pub fn set_registration(&mut self, now: u64, stat: u8) {
        self.network_stat = stat;
        self.creg_urc(now);
    }

    /// Power cycle (the modem was unplugged): settings and SIM lock return to their power-on
    /// state, pending output is lost. The message memory and the message reference counter
    /// live on the SIM and survive, and the network's reports still come.
    pub fn power_cycle(&mut self, now: u64) {
        self.settings = Settings::power_on();
        self.lock = initial_lock(&self.pin);
        self.mode = Mode::Command;
        self.line.clear();
        self.line_overflow = false;
        self.out.clear();
        self.busy_until = now;
        self.hung = false;
    }

    fn accepted_dest(&self, mr: u8) -> Option<String> {
        self.accepted
            .iter()
            .rev()
            .find(|s| s.mr == mr)
            .map(|s| s.dest.clone())
    }

    /// Queues bytes due at `at`, after everything due at or before `at`.
    fn emit(&mut self, at: u64, bytes: Vec<u8>) {
        let pos = self
            .out
            .iter()
            .position(|(due, _)| *due > at)
            .unwrap_or(self.out.len());
        self.out.insert(pos, (at, bytes));
    }

    /// Queues an answer `latency` after the modem is free, and returns when it is due.
    fn emit_answer(&mut self, now: u64, latency: u64, text: String) -> u64 {
        let at = now.max(self.busy_until).saturating_add(latency);
        self.busy_until = at;
        self.emit(at, text.into_bytes());
        at
    }

    fn final_text(&self, result: Result<(), Fail>) -> String {
        match result {
            Ok(()) => "OK".to_string(),
            Err(Fail::Error) => "ERROR".to_string(),
            Err(Fail::Cme(n)) => match self.settings.cmee {
                0 => "ERROR".to_string(),
                1 => format!("+CME ERROR: {n}"),
                _ => format!("+CME ERROR: {}", cme_text(n)),
            },
            Err(Fail::Cms(n)) => match self.settings.cmee {
                0 => "ERROR".to_string(),
                1 => format!("+CMS ERROR: {n}"),
                _ => format!("+CMS ERROR: {}", cms_text(n)),
            },
        }
    }

    /// Information lines then the final result code, V.250 verbose framing.
    fn answer(
        &mut self,
        now: u64,
        latency: u64,
        lines: &[String],
        result: Result<(), Fail>,
    ) -> u64 {
        let mut text = String::new();
        if !lines.is_empty() {
            text.push_str("\r\n");
            text.push_str(&lines.join("\r\n"));
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.push_str(&self.final_text(result));
        text.push_str("\r\n");
        self.emit_answer(now, latency, text)
    }

    fn echo(&mut self, now: u64, b: u8) {
        if self.settings.echo {
            self.emit(now, vec![b]);
        }
    }

    fn command_byte(&mut self, now: u64, b: u8) {
        self.echo(now, b);
        match b {
            b'\r' => {
                let line = std::mem::take(&mut self.line);
                if std::mem::take(&mut self.line_overflow) {
                    let latency = self.latency_ms;
                    self.answer(now, latency, &[], Err(Fail::Error));
                } else {
                    self.command_line(now, &line);
                }
            }
            0x08 => {
                self.line.pop();
            }
            // LF (S4) and other control characters mean nothing between commands.
            0x00..=0x1f | 0x7f => {}
            _ => {
                if self.line.len() >= MAX_COMMAND_LINE {
                    self.line_overflow = true;
                } else {
                    self.line.push(b);
                }
            }
        }
    }

    fn command_line(&mut self, now: u64, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        // V.250 §5.2.1: the line starts at "AT" (either case); what precedes it is ignored,
        // and a line without it is not a command line at all.
        let Some(body) = find_at_prefix(&text) else {
            return;
        };
        self.counters.command_lines += 1;
        let latency = self.latency_ms;
        let commands = match parse_command_line(body) {
            Some(c) => c,
            None => {
                self.answer(now, latency, &[], Err(Fail::Error));
                return;
            }
        };
        let mut lines = Vec::new();
        for cmd in &commands {
            match self.execute(now, cmd, &mut lines) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Prompt) => {
                    let mut text = String::new();
                    if !lines.is_empty() {
                        text.push_str("\r\n");
                        text.push_str(&lines.join("\r\n"));
                        text.push_str("\r\n");
                    }
                    // TS 27.005 §3.5.1: the prompt is CR LF '>' space, with no line end.
                    text.push_str("\r\n> ");
                    self.emit_answer(now, latency, text);
                    return;
                }
                Err(fail) => {
                    self.answer(now, latency, &lines, Err(fail));
                    return;
                }
            }
        }
        self.answer(now, latency, &lines, Ok(()));
    }

    fn sim_ready(&self) -> Result<(), Fail> {
        match self.lock {
            SimLock::Ready => Ok(()),
            SimLock::Pin { .. } => Err(Fail::Cme(11)),
            SimLock::Puk => Err(Fail::Cme(12)),
        }
    }

    /// The same check for SMS commands, which report `+CMS ERROR` causes (TS 27.005 §3.2.5).
    fn sim_ready_sms(&self) -> Result<(), Fail> {
        match self.lock {
            SimLock::Ready => Ok(()),
            SimLock::Pin { .. } => Err(Fail::Cms(311)),
            SimLock::Puk => Err(Fail::Cms(316)),
        }
    }

    fn reg_stat(&self) -> u8 {
        if self.lock == SimLock::Ready {
            self.network_stat
        } else {
            0
        }
    }

    fn registered(&self) -> bool {
        matches!(self.reg_stat(), 1 | 5)
    }

    fn creg_urc(&mut self, now: u64) {
        let stat = self.reg_stat();
        for (name, n) in [
            ("+CREG", self.settings.creg_n),
            ("+CGREG", self.settings.cgreg_n),
        ] {
            match n {
                1 => self.unsolicited(now, &format!("{name}: {stat}")),
                2 if matches!(stat, 1 | 5) => {
                    self.unsolicited(now, &format!("{name}: {stat},\"{LAC}\",\"{CELL}\""))
                }
                2 => self.unsolicited(now, &format!("{name}: {stat}")),
                _ => {}
            }
        }
    }

    /// `+CREG: <n>,<stat>[,<lac>,<ci>]` and its `+CGREG` twin (TS 27.007 §7.2, §10.1.20):
    /// the simulated network attaches packet service wherever it registers.
    fn registration_line(&self, name: &str, n: u8) -> String {
        let stat = self.reg_stat();
        if n == 2 && matches!(stat, 1 | 5) {
            format!("{name}: {n},{stat},\"{LAC}\",\"{CELL}\"")
        } else {
            format!("{name}: {n},{stat}")
        }
    }

    fn execute(&mut self, now: u64, cmd: &Command, lines: &mut Vec<String>) -> Result<Flow, Fail> {
        use Kind::{Exec, Read, Set, Test};
        let args = split_args(&cmd.arg);
        let int_arg = |i: usize| -> Result<u8, Fail> {
            args.get(i)
                .and_then(|a| a.parse::<u8>().ok())
                .ok_or(Fail::Error)
        };
        match (cmd.name.as_str(), cmd.kind) {
            // Basic commands (V.250 §6).
            ("E", Exec) => match cmd.arg.as_str() {
                "" | "0" => self.settings.echo = false,
                "1" => self.settings.echo = true,
                _ => return Err(Fail::Error),
            },
            // Only verbose, non-quiet result codes are implemented.
            ("V", Exec) if cmd.arg == "1" => {}
            ("Q", Exec) if matches!(cmd.arg.as_str(), "" | "0") => {}
            ("X" | "L" | "M" | "&C" | "&D" | "&K" | "&W" | "H", Exec) => {}
            ("Z" | "&F", Exec) => self.settings = Settings::power_on(),
            ("I", Exec) => {
                lines.push(self.cfg.manufacturer.clone());
                lines.push(self.cfg.model.clone());
                lines.push(format!("Revision: {}", self.cfg.revision));
            }
            (name, Read) if name.starts_with('S') => {
                let value = match name {
                    "S3" => 13,
                    "S4" => 10,
                    "S5" => 8,
                    _ => 0,
                };
                lines.push(format!("{value:03}"));
            }
            (name, Set) if name.starts_with('S') => {}

            // Identification (TS 27.007 §5, V.250 §6.1).
            ("+CGMI" | "+GMI", Exec) => lines.push(self.cfg.manufacturer.clone()),
            ("+CGMM" | "+GMM", Exec) => lines.push(self.cfg.model.clone()),
            ("+CGMR" | "+GMR", Exec) => lines.push(self.cfg.revision.clone()),
            ("+CGSN" | "+GSN", Exec) => lines.push(self.cfg.imei.clone()),
            ("+GCAP", Exec) => lines.push("+GCAP: +CGSM".to_string()),
            ("+CGMI" | "+GMI" | "+CGMM" | "+GMM" | "+CGMR" | "+GMR" | "+CGSN" | "+GSN", Test) => {}
            ("+CIMI", Exec) => {
                self.sim_ready()?;
                lines.push(self.cfg.imsi.clone());
            }
            ("+CIMI", Test) => {}
            ("+CNUM", Exec) => {}
            ("+CFUN", Read) => lines.push("+CFUN: 1".to_string()),
            ("+CFUN", Set) => {}
            ("+CFUN", Test) => lines.push("+CFUN: (0,1,4),(0-1)".to_string()),

            // SIM PIN (TS 27.007 §8.3).
            ("+CPIN", Read) => lines.push(
                match self.lock {
                    SimLock::Ready => "+CPIN: READY",
                    SimLock::Pin { .. } => "+CPIN: SIM PIN",
                    SimLock::Puk => "+CPIN: SIM PUK",
                }
                .to_string(),
            ),
            ("+CPIN", Test) => {}
            ("+CPIN", Set) => self.enter_pin(now, &args)?,

            // Error reporting (TS 27.007 §9.1).
            ("+CMEE", Set) => {
                let n = int_arg(0)?;
                if n > 2 {
                    return Err(Fail::Error);
                }
                self.settings.cmee = n;
            }
            ("+CMEE", Read) => lines.push(format!("+CMEE: {}", self.settings.cmee)),
            ("+CMEE", Test) => lines.push("+CMEE: (0-2)".to_string()),

            ("+CSCS", Set) => {
                let cs = args.first().cloned().unwrap_or_default();
                if !["GSM", "IRA", "UCS2", "HEX", "8859-1", "PCCP437"].contains(&cs.as_str()) {
                    return Err(Fail::Cme(4));
                }
                self.settings.cscs = cs;
            }
            ("+CSCS", Read) => lines.push(format!("+CSCS: \"{}\"", self.settings.cscs)),
            ("+CSCS", Test) => lines.push(
                "+CSCS: (\"GSM\",\"IRA\",\"UCS2\",\"HEX\",\"8859-1\",\"PCCP437\")".to_string(),
            ),

            // Network (TS 27.007 §7.2, §7.3, §8.5).
            ("+CSQ", Exec) => lines.push(format!("+CSQ: {},99", self.rssi)),
            ("+CSQ", Test) => lines.push("+CSQ: (0-31,99),(0-7,99)".to_string()),
            ("+CREG", Set) => {
                let n = int_arg(0)?;
                if n > 2 {
                    return Err(Fail::Cme(4));
                }
                self.settings.creg_n = n;
            }
            ("+CREG", Read) => {
                lines.push(self.registration_line("+CREG", self.settings.creg_n));
            }
            ("+CGREG", Set) => {
                let n = int_arg(0)?;
                if n > 2 {
                    return Err(Fail::Cme(4));
                }
                self.settings.cgreg_n = n;
            }
            ("+CGREG", Read) => {
                lines.push(self.registration_line("+CGREG", self.settings.cgreg_n));
            }
            ("+CGREG", Test) => lines.push("+CGREG: (0-2)".to_string()),
            // Packet service attachment (TS 27.007 §10.1.9): attached while registered.
            ("+CGATT", Read) => lines.push(format!("+CGATT: {}", u8::from(self.registered()))),
            ("+CGATT", Set) => {
                if int_arg(0)? > 1 {
                    return Err(Fail::Cme(4));
                }
            }
            ("+CGATT", Test) => lines.push("+CGATT: (0,1)".to_string()),
            ("+CREG", Test) => lines.push("+CREG: (0-2)".to_string()),
            ("+COPS", Read) => lines.push(if self.registered() {
                let f = self.settings.cops_format;
                let oper = match f {
                    0 => self.cfg.operator.as_str(),
                    1 => "TEST",
                    _ => "00101",
                };
                format!("+COPS: 0,{f},\"{oper}\"")
            } else {
                "+COPS: 0".to_string()
            }),
            // `<mode>[,<format>[,<oper>]]`: only mode 3 (set the format) changes anything here;
            // the simulated modem stays on its one network whatever is asked.
            ("+COPS", Set) => {
                let mode = int_arg(0)?;
                if mode > 4 {
                    return Err(Fail::Cme(4));
                }
                if let Some(f) = args.get(1).filter(|a| !a.is_empty()) {
                    let f = f.parse::<u8>().map_err(|_| Fail::Cme(4))?;
                    if f > 2 {
                        return Err(Fail::Cme(4));
                    }
                    self.settings.cops_format = f;
                }
            }
            ("+COPS", Test) => lines.push(format!(
                "+COPS: (2,\"{}\",\"TEST\",\"00101\"),,(0-4),(0-2)",
                self.cfg.operator
            )),

            // SMS configuration (TS 27.005 §3.2, §3.3, §3.4).
            ("+CSMS", Set) => {
                let s = int_arg(0)?;
                if s > 1 {
                    return Err(Fail::Cms(303));
                }
                self.settings.csms = s;
                lines.push("+CSMS: 1,1,1".to_string());
            }
            ("+CSMS", Read) => lines.push(format!("+CSMS: {},1,1,1", self.settings.csms)),
            ("+CSMS", Test) => lines.push("+CSMS: (0,1)".to_string()),
            ("+CMGF", Set) => {
                let m = int_arg(0)?;
                if m > 1 {
                    return Err(Fail::Error);
                }
                self.settings.cmgf = m;
            }
            ("+CMGF", Read) => lines.push(format!("+CMGF: {}", self.settings.cmgf)),
            ("+CMGF", Test) => lines.push("+CMGF: (0,1)".to_string()),
            ("+CSCA", Read) => {
                let toa = if self.csca.starts_with('+') { 145 } else { 129 };
                lines.push(format!("+CSCA: \"{}\",{toa}", self.csca));
            }
            ("+CSCA", Set) => {
                self.csca = args.first().cloned().ok_or(Fail::Cms(304))?;
            }
            ("+CSMP", Set) => {
                if let Some(fo) = args.first().and_then(|a| a.parse::<u8>().ok()) {
                    self.settings.csmp_fo = fo;
                }
            }
            ("+CSMP", Read) => lines.push(format!("+CSMP: {},167,0,0", self.settings.csmp_fo)),
            ("+CSDH", Set | Read | Test) => {}
            ("+CNMA", Exec | Set) => {}
            ("+CNMI", Set) => {
                // TS 27.005 §3.4.1: <mode>,<mt>,<bm>,<ds>,<bfr>; omitted ones keep their value.
                const MAX: [u8; 5] = [3, 3, 3, 2, 1];
                let mut cnmi = self.settings.cnmi;
                for (i, (slot, max)) in cnmi.iter_mut().zip(MAX).enumerate() {
                    match args.get(i).map(String::as_str) {
                        None | Some("") => {}
                        Some(a) => {
                            let v = a.parse::<u8>().map_err(|_| Fail::Cms(303))?;
                            if v > max {
                                return Err(Fail::Cms(303));
                            }
                            *slot = v;
                        }
                    }
                }
                if args.len() > 5 {
                    return Err(Fail::Cms(303));
                }
                self.settings.cnmi = cnmi;
            }
            ("+CNMI", Read) => {
                let [a, b, c, d, e] = self.settings.cnmi;
                lines.push(format!("+CNMI: {a},{b},{c},{d},{e}"));
            }
            ("+CNMI", Test) => lines.push("+CNMI: (0-3),(0-3),(0-3),(0-2),(0,1)".to_string()),
            ("+CPMS", Set) => {
                self.sim_ready_sms()?;
                if args.is_empty() || args.len() > 3 {
                    return Err(Fail::Cms(302));
                }
                // One memory, the SIM's: offering "ME" as an alias would make clients that
                // read every memory (gammu) see each message twice.
                if !args.iter().all(|m| m == "SM") {
                    return Err(Fail::Cms(302));
                }
                let (used, total) = self.storage_usage();
                lines.push(format!(
                    "+CPMS: {used},{total},{used},{total},{used},{total}"
                ));
            }
            ("+CPMS", Read) => {
                self.sim_ready_sms()?;
                let (used, total) = self.storage_usage();
                lines.push(format!(
                    "+CPMS: \"SM\",{used},{total},\"SM\",{used},{total},\"SM\",{used},{total}"
                ));
            }
            ("+CPMS", Test) => lines.push("+CPMS: (\"SM\"),(\"SM\"),(\"SM\")".to_string()),

            // Sending (TS 27.005 §3.5.1).
            ("+CMGS", Test) => {}
            ("+CMGS", Set) => {
                self.sim_ready_sms()?;
                if !self.registered() {
                    return Err(Fail::Cms(331));
                }
                self.cmgs_at_us = self.input_us;
                if self.settings.cmgf == 0 {
                    let len = args
                        .first()
                        .and_then(|a| a.parse::<usize>().ok())
                        .filter(|l| (1..=MAX_TPDU).contains(l))
                        .ok_or(Fail::Cms(304))?;
                    self.mode = Mode::PduBody {
                        len,
                        hex: String::new(),
                        overflow: false,
                    };
                } else {
                    let dest = args
                        .first()
                        .filter(|d| !d.is_empty())
                        .cloned()
                        .ok_or(Fail::Cms(305))?;
                    self.mode = Mode::TextBody {
                        dest,
                        text: Vec::new(),
                        overflow: false,
                    };
                }
                return Ok(Flow::Prompt);
            }

            // Message memory (TS 27.005 §3.4.2 - §3.5.4).
            ("+CMGR", Set) => {
                self.sim_ready_sms()?;
                let index = self.storage_index(args.first())?;
                let text_mode = self.settings.cmgf == 1;
                if let Some(Some(entry)) = self.storage.get_mut(index) {
                    lines.extend(render_stored(entry, None, text_mode));
                    entry.stat = 1;
                }
            }
            ("+CMGR", Test) => {}
            ("+CMGL", Exec | Set) => {
                self.sim_ready_sms()?;
                let text_mode = self.settings.cmgf == 1;
                let wanted = parse_cmgl_stat(args.first().map(String::as_str), text_mode).ok_or(
                    if text_mode {
                        Fail::Cms(305)
                    } else {
                        Fail::Cms(304)
                    },
                )?;
                for (i, slot) in self.storage.iter_mut().enumerate() {
                    if let Some(entry) = slot
                        && wanted.is_none_or(|w| w == entry.stat)
                    {
                        lines.extend(render_stored(entry, Some(i + 1), text_mode));
                        entry.stat = 1;
                    }
                }
            }
            ("+CMGL", Test) => lines.push(if self.settings.cmgf == 1 {
                "+CMGL: (\"REC UNREAD\",\"REC READ\",\"STO UNSENT\",\"STO SENT\",\"ALL\")"
                    .to_string()
            } else {
                "+CMGL: (0-4)".to_string()
            }),
            ("+CMGD", Set) => {
                self.sim_ready_sms()?;
                self.counters.deletes += 1;
                let flag = match args.get(1).map(String::as_str) {
                    None | Some("") => 0,
                    Some(f) => f.parse::<u8>().map_err(|_| Fail::Cms(302))?,
                };
                if flag == 0 {
                    let index = self.storage_index(args.first())?;
                    if let Some(slot) = self.storage.get_mut(index) {
                        *slot = None;
                    }
                } else {
                    // 1 read, 2 read and sent, 3 read, sent and unsent, 4 all. Only received
                    // status reports are stored here, so 1..3 delete the read ones.
                    if flag > 4 {
                        return Err(Fail::Cms(302));
                    }
                    for slot in &mut self.storage {
                        if slot.as_ref().is_some_and(|e| flag == 4 || e.stat == 1) {
                            *slot = None;
                        }
                    }
                }
            }
            ("+CMGD", Test) => {
                let used: Vec<String> = self
                    .storage
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_some())
                    .map(|(i, _)| (i + 1).to_string())
                    .collect();
                lines.push(format!("+CMGD: ({}),(0-4)", used.join(",")));
            }
            _ => return Err(Fail::Error),
        }
        Ok(Flow::Continue)
    }

    fn enter_pin(&mut self, now: u64, args: &[String]) -> Result<(), Fail> {
        match self.lock {
            SimLock::Ready => Err(Fail::Cme(3)),
            SimLock::Pin { attempts_left } => {
                let given = args.first().ok_or(Fail::Cme(16))?;
                if Some(given) == self.pin.as_ref() {
                    self.lock = SimLock::Ready;
                    self.creg_urc(now.max(self.busy_until).saturating_add(self.latency_ms));
                    Ok(())
                } else {
                    let left = attempts_left.saturating_sub(1);
                    self.lock = if left == 0 {
                        SimLock::Puk
                    } else {
                        SimLock::Pin {
                            attempts_left: left,
                        }
                    };
                    Err(Fail::Cme(16))
                }
            }
            SimLock::Puk => match (args.first(), args.get(1)) {
                (Some(puk), Some(new_pin)) if *puk == self.cfg.puk && !new_pin.is_empty() => {
                    self.pin = Some(new_pin.clone());
                    self.lock = SimLock::Ready;
                    Ok(())
                }
                (Some(_), Some(_)) => Err(Fail::Cme(16)),
                _ => Err(Fail::Cme(12)),
            },
        }
    }

    fn storage_usage(&self) -> (usize, usize) {
        let used = self.storage.iter().filter(|s| s.is_some()).count();
        (used, self.storage.len())
    }

    /// A 1-based `<index>` argument as a slot number.
    fn storage_index(&self, arg: Option<&String>) -> Result<usize, Fail> {
        let index = arg
            .and_then(|a| a.parse::<usize>().ok())
            .ok_or(Fail::Cms(321))?;
        if index == 0 || index > self.storage.len() {
            return Err(Fail::Cms(321));
        }
        Ok(index - 1)
    }

    fn pdu_body_byte(&mut self, now: u64, b: u8) {
        match b {
            0x1a => self.submit_pdu(now),
            0x1b => self.cancel(now),
            // Line ends inside a PDU are not part of it (some terminals send CR before Ctrl-Z).
            b'\r' | b'\n' => {}
            _ => {
                self.echo(now, b);
                if let Mode::PduBody { hex, overflow, .. } = &mut self.mode {
                    if b == 0x08 {
                        hex.pop();
                    } else if hex.len() >= MAX_BODY {
                        *overflow = true;
                    } else {
                        hex.push(char::from(b));
                    }
                }
            }
        }
    }

    fn text_body_byte(&mut self, now: u64, b: u8) {
        match b {
            0x1a => self.submit_text(now),
            0x1b => self.cancel(now),
            // TS 27.005 §3.5.1: in text mode CR ends a line of the message and the modem
            // prompts again.
            b'\r' => {
                self.echo(now, b);
                if let Mode::TextBody { text, .. } = &mut self.mode {
                    text.push(b'\n');
                }
                self.emit(now, b"\r\n> ".to_vec());
            }
            b'\n' => {}
            _ => {
                self.echo(now, b);
                if let Mode::TextBody { text, overflow, .. } = &mut self.mode {
                    if b == 0x08 {
                        text.pop();
                    } else if text.len() >= MAX_BODY {
                        *overflow = true;
                    } else {
                        text.push(b);
                    }
                }
            }
        }
    }

    fn cancel(&mut self, now: u64) {
        self.mode = Mode::Command;
        self.counters.cancelled += 1;
        let latency = self.latency_ms;
        self.answer(now, latency, &[], Ok(()));
    }

    /// Whether an injected failure applies to this send, and its cause.
    fn injected_failure(&mut self) -> Option<u16> {
        if let Some((code, count)) = self.fail_next {
            self.fail_next = (count > 1).then_some((code, count - 1));
            return Some(code);
        }
        let (code, rate) = self.error_rate?;
        (self.rng.next_f64() < rate).then_some(code)
    }

    fn submit_pdu(&mut self, now: u64) {
        let mode = std::mem::replace(&mut self.mode, Mode::Command);
        let Mode::PduBody { len, hex, overflow } = mode else {
            return;
        };
        let latency = self.cmgs_latency_ms;
        let submit = if overflow {
            None
        } else {
            decode_submit(&hex, len)
        };
        let Some(submit) = submit else {
            self.counters.rejected += 1;
            self.answer(now, latency, &[], Err(Fail::Cms(304)));
            return;
        };
        if let Some(code) = self.injected_failure() {
            self.counters.injected_errors += 1;
            self.answer(now, latency, &[], Err(Fail::Cms(code)));
            return;
        }
        let concat = submit
            .udh
            .as_ref()
            .and_then(|u| u.concat)
            .map(|c| ConcatRecord {
                reference: c.reference,
                total: c.total,
                seq: c.seq,
            });
        self.accept(
            now,
            Accepted {
                dest: submit.dest,
                text: submit.text,
                dcs: submit.dcs,
                concat,
                status_report: submit.status_report,
                pdu: Some(hex.to_ascii_uppercase()),
            },
        );
    }

    fn submit_text(&mut self, now: u64) {
        let mode = std::mem::replace(&mut self.mode, Mode::Command);
        let Mode::TextBody {
            dest,
            text,
            overflow,
        } = mode
        else {
            return;
        };
        let latency = self.cmgs_latency_ms;
        if overflow {
            self.counters.rejected += 1;
            self.answer(now, latency, &[], Err(Fail::Cms(305)));
            return;
        }
        if let Some(code) = self.injected_failure() {
            self.counters.injected_errors += 1;
            self.answer(now, latency, &[], Err(Fail::Cms(code)));
            return;
        }
        self.accept(
            now,
            Accepted {
                dest,
                text: String::from_utf8_lossy(&text).into_owned(),
                dcs: 0,
                concat: None,
                status_report: self.settings.csmp_fo & 0x20 != 0,
                pdu: None,
            },
        );
    }

    fn accept(&mut self, now: u64, msg: Accepted) {
        let mr = self.next_mr;
        self.next_mr = mr.wrapping_add(1);
        self.counters.accepted += 1;
        let latency = self.cmgs_latency_ms;
        let at = self.answer(now, latency, &[format!("+CMGS: {mr}")], Ok(()));
        if msg.status_report && self.report.mode != ReportMode::None {
            let planned = PlannedReport {
                mr,
                recipient: msg.dest.clone(),
                sc_timestamp_ms: at,
                status: self.report.status,
            };
            self.timers
                .push((at.saturating_add(self.report.delay_ms), planned));
        }
        self.accepted.push(SentSms {
            modem: self.cfg.name.clone(),
            imsi: self.cfg.imsi.clone(),
            time_ms: now,
            mr,
            dest: msg.dest,
            text: msg.text,
            dcs: msg.dcs,
            concat: msg.concat,
            status_report: msg.status_report,
            pdu: msg.pdu,
            cmgs_at_us: self.cmgs_at_us.take(),
        });
    }

    fn fire_timers(&mut self, now: u64) {
        if self.hung || self.timers.is_empty() {
            return;
        }
        let mut due = Vec::new();
        self.timers.retain(|(at, r)| {
            if *at <= now {
                due.push((*at, r.clone()));
                false
            } else {
                true
            }
        });
        due.sort_by_key(|(at, _)| *at);
        for (at, r) in due {
            let copies = if self.report.duplicate { 2 } else { 1 };
            if self.holding {
                // A duplicating centre sends both copies when it sends again.
                self.held.extend(std::iter::repeat_n(r, copies));
                continue;
            }
            for _ in 0..copies {
                self.deliver_report(at, &r);
            }
        }
    }

    /// The network's status report reaches the modem at `at`: routed to the terminal as
    /// `+CDS`, or stored and announced with `+CDSI`, as `+CNMI` `<ds>` (or a forced mode)
    /// says (TS 27.005 §3.4.1).
    fn deliver_report(&mut self, at: u64, r: &PlannedReport) {
        let route = match self.report.mode {
            ReportMode::Auto => self.settings.cnmi[3],
            ReportMode::Cds => 1,
            ReportMode::Cdsi => 2,
            ReportMode::None => return,
        };
        let encoded = encode_status_report(&StatusReport {
            smsc: &self.csca,
            message_ref: r.mr,
            recipient: &r.recipient,
            sc_timestamp_ms: r.sc_timestamp_ms,
            discharge_ms: at,
            status: r.status,
        });
        if route == 1 {
            self.counters.reports += 1;
            let line = format!("+CDS: {}\n{}", encoded.tpdu_len, pdu::to_hex(&encoded.pdu));
            self.unsolicited(at, &line);
            return;
        }
        let Some(slot) = self.storage.iter().position(Option::is_none) else {
            self.counters.reports_dropped += 1;
            return;
        };
        if let Some(entry) = self.storage.get_mut(slot) {
            *entry = Some(Stored {
                stat: 0,
                report: r.clone(),
                discharge_ms: at,
                encoded,
            });
        }
        self.counters.reports += 1;
        if route == 2 {
            self.unsolicited(at, &format!("+CDSI: \"SM\",{}", slot + 1));
        }
    }
}

/// A message about to be recorded.
struct Accepted {
    dest: String,
    text: String,
    dcs: u8,
    concat: Option<ConcatRecord>,
    status_report: bool,
    pdu: Option<String>,
}

fn initial_lock(pin: &Option<String>) -> SimLock {
    match pin {
        Some(_) => SimLock::Pin {
            attempts_left: PIN_ATTEMPTS,
        },
        None => SimLock::Ready,
    }
}

/// Checks the PDU typed after the prompt: hex, an SMSC field followed by exactly `len` octets
/// of TPDU (TS 27.005 §3.5.1), and an SMS-SUBMIT.
fn decode_submit(hex: &str, len: usize) -> Option<pdu::Submit> {
    let bytes = pdu::from_hex(hex).ok()?;
    let (_, tpdu) = pdu::split_sca(&bytes).ok()?;
    if tpdu.len() != len {
        return None;
    }
    match pdu::decode(&bytes, true).ok()? {
        Tpdu::Submit(s) => Some(s),
        _ => None,
    }
}

/// `+CMGR` (no index) or `+CMGL` (index) lines for a stored status report, in PDU mode
/// (`<stat>,[<alpha>],<length>` + PDU) or text mode (`<stat>,<fo>,<mr>,<ra>,<tora>,<scts>,
/// <dt>,<st>`), TS 27.005 §3.4.2-§3.4.3.
fn render_stored(entry: &Stored, index: Option<usize>, text_mode: bool) -> Vec<String> {
    let prefix = match index {
        Some(i) => format!("+CMGL: {i},"),
        None => "+CMGR: ".to_string(),
    };
    if text_mode {
        let stat = if entry.stat == 0 {
            "REC UNREAD"
        } else {
            "REC READ"
        };
        let r = &entry.report;
        let tora = if r.recipient.starts_with('+') {
            145
        } else {
            129
        };
        vec![format!(
            "{prefix}\"{stat}\",6,{},\"{}\",{tora},\"{}\",\"{}\",{}",
            r.mr,
            r.recipient,
            text_timestamp(r.sc_timestamp_ms),
            text_timestamp(entry.discharge_ms),
            r.status
        )]
    } else {
        vec![
            format!("{prefix}{},,{}", entry.stat, entry.encoded.tpdu_len),
            pdu::to_hex(&entry.encoded.pdu),
        ]
    }
}

/// The `<stat>` filter of `+CMGL`: `None` lists everything. PDU mode takes 0..=4 (default 0,
/// received unread), text mode the quoted names.
fn parse_cmgl_stat(arg: Option<&str>, text_mode: bool) -> Option<Option<u8>> {
    let arg = arg.unwrap_or(if text_mode { "REC UNREAD" } else { "0" });
    let n = if text_mode {
        match arg {
            "REC UNREAD" => 0,
            "REC READ" => 1,
            "STO UNSENT" => 2,
            "STO SENT" => 3,
            "ALL" => 4,
            _ => return None,
        }
    } else {
        arg.parse::<u8>().ok().filter(|n| *n <= 4)?
    };
    Some((n != 4).then_some(n))
}

/// The rest of a command line after its `AT` prefix, if it has one.
fn find_at_prefix(line: &str) -> Option<&str> {
    let bytes = line.as_bytes();
    let pos = bytes
        .windows(2)
        .position(|w| w.eq_ignore_ascii_case(b"AT"))?;
    line.get(pos + 2..)
}

fn is_extended_prefix(c: char) -> bool {
    matches!(c, '+' | '^' | '$' | '%' | '#' | '*')
}

/// V.250 §5.4.1: characters an extended command name may contain after its prefix.
fn is_extended_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '!' | '%' | '-' | '.' | '/' | ':' | '_')
}

/// Splits what follows `AT` into commands (V.250 §5.2-§5.4): basic commands such as `E0`,
/// `&F`, `S3=13`, `D...` (which takes the rest of the line), and extended commands with a
/// prefix, separated by `;`. `None` when the line does not parse.
fn parse_command_line(body: &str) -> Option<Vec<Command>> {
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let digits = |i: &mut usize| -> String {
        let start = *i;
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
        chars.get(start..*i).unwrap_or_default().iter().collect()
    };
    while let Some(&c) = chars.get(i) {
        i += 1;
        if c == ' ' || c == ';' {
            continue;
        }
        if is_extended_prefix(c) {
            let start = i - 1;
            while chars.get(i).copied().is_some_and(is_extended_name_char) {
                i += 1;
            }
            let name: String = chars
                .get(start..i)
                .unwrap_or_default()
                .iter()
                .collect::<String>()
                .to_ascii_uppercase();
            if name.len() < 2 {
                return None;
            }
            let kind = match (chars.get(i), chars.get(i + 1)) {
                (Some('='), Some('?')) => {
                    i += 2;
                    Kind::Test
                }
                (Some('='), _) => {
                    i += 1;
                    Kind::Set
                }
                (Some('?'), _) => {
                    i += 1;
                    Kind::Read
                }
                _ => Kind::Exec,
            };
            let arg_start = i;
            let mut in_quotes = false;
            while let Some(&c) = chars.get(i) {
                if c == '"' {
                    in_quotes = !in_quotes;
                } else if c == ';' && !in_quotes {
                    break;
                }
                i += 1;
            }
            let arg: String = chars
                .get(arg_start..i)
                .unwrap_or_default()
                .iter()
                .collect::<String>()
                .trim()
                .to_string();
            if matches!(kind, Kind::Read | Kind::Test | Kind::Exec) && !arg.is_empty() {
                return None;
            }
            out.push(Command { name, kind, arg });
            continue;
        }
        let upper = c.to_ascii_uppercase();
        match upper {
            'D' => {
                let arg: String = chars.get(i..).unwrap_or_default().iter().collect();
                out.push(Command {
                    name: "D".to_string(),
                    kind: Kind::Exec,
                    arg,
                });
                break;
            }
            'S' => {
                let n = digits(&mut i);
                if n.is_empty() {
                    return None;
                }
                let (kind, arg) = match chars.get(i) {
                    Some('?') => {
                        i += 1;
                        (Kind::Read, String::new())
                    }
                    Some('=') => {
                        i += 1;
                        (Kind::Set, digits(&mut i))
                    }
                    _ => return None,
                };
                let n: u32 = n.parse().ok()?;
                out.push(Command {
                    name: format!("S{n}"),
                    kind,
                    arg,
                });
            }
            '&' => {
                let letter = chars.get(i)?.to_ascii_uppercase();
                if !letter.is_ascii_alphabetic() {
                    return None;
                }
                i += 1;
                let arg = digits(&mut i);
                out.push(Command {
                    name: format!("&{letter}"),
                    kind: Kind::Exec,
                    arg,
                });
            }
            l if l.is_ascii_alphabetic() => {
                let arg = digits(&mut i);
                out.push(Command {
                    name: l.to_string(),
                    kind: Kind::Exec,
                    arg,
                });
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Comma-separated parameters with quotes removed (V.250 §5.4.2.1 string constants).
fn split_args(arg: &str) -> Vec<String> {
    if arg.trim().is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    for c in arg.chars() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modem::pdu::{SubmitOptions, encode_submit};
    use crate::sms::segment;

    /// A modem that answers at once, so transcripts need no clock.
    fn instant() -> SimConfig {
        let mut c = SimConfig::numbered(0);
        c.latency_ms = 0;
        c.cmgs_latency_ms = 0;
        c.report.delay_ms = 0;
        c
    }

    fn with_pin(pin: &str) -> SimConfig {
        let mut c = instant();
        c.pin = Some(pin.to_string());
        c
    }

    /// The parts of `text` to `dest` as (hex PDU, `AT+CMGS` length).
    fn parts(dest: &str, text: &str, report: bool) -> Vec<(String, usize)> {
        let opts = SubmitOptions {
            status_report: report,
            concat_ref: 0x42,
            ..SubmitOptions::default()
        };
        encode_submit(dest, &segment(text, None), &opts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.hex(), p.tpdu_len))
            .collect()
    }

    fn one(dest: &str, text: &str, report: bool) -> (String, usize) {
        parts(dest, text, report)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    fn say(m: &mut SimModem, now: u64, input: &[u8]) -> String {
        m.input(now, input);
        String::from_utf8_lossy(&m.poll_output(now)).into_owned()
    }

    fn ok() -> String {
        "\r\nOK\r\n".to_string()
    }

    fn info(lines: &[&str]) -> String {
        format!("\r\n{}\r\n\r\nOK\r\n", lines.join("\r\n"))
    }

    /// Bytes the terminal writes and everything the modem answers.
    type Exchange = (Vec<u8>, String);

    fn step(input: impl AsRef<[u8]>, output: impl Into<String>) -> Exchange {
        (input.as_ref().to_vec(), output.into())
    }

    #[test]
    fn transcripts() {
        let c = instant();
        let (hello, hello_len) = one("+33612345678", "Hello", false);
        let with_echo = format!("{hello}\r\n+CMGS: 0\r\n\r\nOK\r\n");
        let cases: Vec<(&str, SimConfig, Vec<Exchange>)> = vec![
            (
                "echo is on at power-on, ATE0 turns it off",
                c.clone(),
                vec![
                    step("AT\r", "AT\r\r\nOK\r\n"),
                    step("ATE0\r", "ATE0\r\r\nOK\r\n"),
                    step("AT\r", ok()),
                    step("ATE1\r", ok()),
                    step("at\r", "at\r\r\nOK\r\n"),
                ],
            ),
            (
                "identification and status queries",
                c.clone(),
                vec![
                    step("ATE0\r", "ATE0\r\r\nOK\r\n"),
                    step("AT+CGMI\r", info(&["mail2sms"])),
                    step("AT+CGMM\r", info(&["SIMULATED GSM MODEM"])),
                    step("AT+CGSN\r", info(&[&c.imei])),
                    step("AT+CIMI\r", info(&[&c.imsi])),
                    step(
                        "ATI\r",
                        info(&[
                            "mail2sms",
                            "SIMULATED GSM MODEM",
                            &format!("Revision: {}", c.revision),
                        ]),
                    ),
                    step("AT+CPIN?\r", info(&["+CPIN: READY"])),
                    step("AT+CSQ\r", info(&["+CSQ: 20,99"])),
                    step("AT+CREG?\r", info(&["+CREG: 0,1"])),
                    step("AT+COPS?\r", info(&["+COPS: 0,0,\"Test PLMN 1-1\""])),
                    step("AT+CSCA?\r", info(&["+CSCA: \"+33609001390\",145"])),
                    step(
                        "AT+CPMS?\r",
                        info(&["+CPMS: \"SM\",0,20,\"SM\",0,20,\"SM\",0,20"]),
                    ),
                    step("AT+CPMS=\"SM\",\"SM\"\r", info(&["+CPMS: 0,20,0,20,0,20"])),
                    step("AT+CPMS=\"ME\"\r", "\r\nERROR\r\n"),
                    step("AT+CSMS=0\r", info(&["+CSMS: 1,1,1"])),
                    step("AT+CNMI?\r", info(&["+CNMI: 0,0,0,0,0"])),
                    step("AT+CNMI=2,1,0,2,0\r", ok()),
                    step("AT+CNMI?\r", info(&["+CNMI: 2,1,0,2,0"])),
                    step("AT+CMGF?\r", info(&["+CMGF: 0"])),
                    step("AT+GCAP\r", info(&["+GCAP: +CGSM"])),
                    step("ATS3?\r", info(&["013"])),
                ],
            ),
            (
                "smstools-style concatenated init line and errors",
                c.clone(),
                vec![
                    step("ATE0+CMEE=1;+CREG=2\r", "ATE0+CMEE=1;+CREG=2\r\r\nOK\r\n"),
                    step("AT+CREG?\r", info(&["+CREG: 2,1,\"1A2B\",\"0C3D\""])),
                    step("AT+XYZ\r", "\r\nERROR\r\n"),
                    step("AT+CMEE=7\r", "\r\nERROR\r\n"),
                    step("AT+CSQ;+XYZ\r", "\r\n+CSQ: 20,99\r\n\r\nERROR\r\n"),
                    step("AT+CSQ=5\r", "\r\nERROR\r\n"),
                    step("hello\r", ""),
                    step("\n\r", ""),
                    step("noiseAT\r", ok()),
                    step("AT+CSX\x08Q\r", info(&["+CSQ: 20,99"])),
                ],
            ),
            (
                "SIM PIN: locked commands, wrong PIN in each CMEE mode, right PIN",
                with_pin("1234"),
                vec![
                    step("ATE0\r", "ATE0\r\r\nOK\r\n"),
                    step("AT+CPIN?\r", info(&["+CPIN: SIM PIN"])),
                    step("AT+CIMI\r", "\r\nERROR\r\n"),
                    step("AT+CMEE=1\r", ok()),
                    step("AT+CIMI\r", "\r\n+CME ERROR: 11\r\n"),
                    step("AT+CREG?\r", info(&["+CREG: 0,0"])),
                    step("AT+CMGS=10\r", "\r\n+CMS ERROR: 311\r\n"),
                    step("AT+CPIN=\"0000\"\r", "\r\n+CME ERROR: 16\r\n"),
                    step("AT+CMEE=2\r", ok()),
                    step(
                        "AT+CPIN=\"9999\"\r",
                        "\r\n+CME ERROR: incorrect password\r\n",
                    ),
                    step("AT+CPIN=\"1234\"\r", ok()),
                    step("AT+CPIN?\r", info(&["+CPIN: READY"])),
                    step("AT+CIMI\r", info(&[&c.imsi])),
                    step(
                        "AT+CPIN=\"1234\"\r",
                        "\r\n+CME ERROR: operation not allowed\r\n",
                    ),
                ],
            ),
            (
                "three wrong PINs block the SIM until the PUK",
                with_pin("1234"),
                vec![
                    step("ATE0+CMEE=1\r", "ATE0+CMEE=1\r\r\nOK\r\n"),
                    step("AT+CPIN=\"1\"\r", "\r\n+CME ERROR: 16\r\n"),
                    step("AT+CPIN=\"2\"\r", "\r\n+CME ERROR: 16\r\n"),
                    step("AT+CPIN=\"3\"\r", "\r\n+CME ERROR: 16\r\n"),
                    step("AT+CPIN?\r", info(&["+CPIN: SIM PUK"])),
                    step("AT+CPIN=\"1234\"\r", "\r\n+CME ERROR: 12\r\n"),
                    step("AT+CPIN=\"12345678\",\"4321\"\r", ok()),
                    step("AT+CPIN?\r", info(&["+CPIN: READY"])),
                ],
            ),
            (
                "PDU send with echo on: the command, the prompt, the echoed PDU, the answer",
                c.clone(),
                vec![
                    step(
                        format!("AT+CMGS={hello_len}\r"),
                        format!("AT+CMGS={hello_len}\r\r\n> "),
                    ),
                    step(format!("{hello}\x1a"), with_echo.clone()),
                ],
            ),
            (
                "PDU send with echo off, CR before Ctrl-Z ignored",
                c.clone(),
                vec![
                    step("ATE0\r", "ATE0\r\r\nOK\r\n"),
                    step(format!("AT+CMGS={hello_len}\r"), "\r\n> "),
                    step(format!("{hello}\r\x1a"), "\r\n+CMGS: 0\r\n\r\nOK\r\n"),
                ],
            ),
            (
                "length that does not match the PDU, in each CMEE mode",
                c.clone(),
                vec![
                    step("ATE0\r", "ATE0\r\r\nOK\r\n"),
                    step(format!("AT+CMGS={}\r", hello_len + 1), "\r\n> "),
                    step(format!("{hello}\x1a"), "\r\nERROR\r\n"),
                    step("AT+CMEE=1\r", ok()),
                    step(format!("AT+CMGS={}\r", hello_len - 1), "\r\n> "),
                    step(format!("{hello}\x1a"), "\r\n+CMS ERROR: 304\r\n"),
                    step("AT+CMEE=2\r", ok()),
                    step(format!("AT+CMGS={hello_len}\r"), "\r\n> "),
                    step(
                        "00110\x1a",
                        "\r\n+CMS ERROR: invalid PDU mode parameter\r\n",
                    ),
                    step(
                        "AT+CMGS=0\r",
                        "\r\n+CMS ERROR: invalid PDU mode parameter\r\n",
                    ),
                    step(
                        "AT+CMGS=165\r",
                        "\r\n+CMS ERROR: invalid PDU mode parameter\r\n",
                    ),
                ],
            ),
            (
                "a PDU that is not an SMS-SUBMIT is refused",
                c.clone(),
                vec![
                    step("ATE0+CMEE=1\r", "ATE0+CMEE=1\r\r\nOK\r\n"),
                    step("AT+CMGS=24\r", "\r\n> "),
                    // An SMS-DELIVER ("hello" from +33612345678).
                    step(
                        "07913306091093F0040B913316325476F800004211211015004005C8329BFD06\x1a",
                        "\r\n+CMS ERROR: 304\r\n",
                    ),
                ],
            ),
            (
                "ESC cancels; the modem is back in command mode",
                c.clone(),
                vec![
                    step("ATE0\r", "ATE0\r\r\nOK\r\n"),
                    step(format!("AT+CMGS={hello_len}\r"), "\r\n> "),
                    step(format!("{}\x1b", &hello[..10]), ok()),
                    step("AT\r", ok()),
                ],
            ),
            (
                "text mode is accepted: CR inside the body prompts again",
                c.clone(),
                vec![
                    step("ATE0\r", "ATE0\r\r\nOK\r\n"),
                    step("AT+CMGF=1\r", ok()),
                    step("AT+CMGS=\"+33612345678\"\r", "\r\n> "),
                    step("line one\r", "\r\n> "),
                    step("line two\x1a", "\r\n+CMGS: 0\r\n\r\nOK\r\n"),
                ],
            ),
        ];
        for (name, cfg, steps) in cases {
            let mut m = SimModem::new(cfg);
            for (i, (input, want)) in steps.iter().enumerate() {
                let got = say(&mut m, 0, input);
                assert_eq!(
                    &got,
                    want,
                    "{name}: step {i} ({:?})",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn accepted_messages_are_recorded_as_decoded() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0\r");
        let long = "Ceci est un long message qui ne tient pas dans un seul SMS, il faut donc le \
                    couper en plusieurs morceaux. Le simulateur doit enregistrer chaque partie \
                    avec son en-tete de concatenation.";
        let sent = parts("+33612345678", long, true);
        assert_eq!(sent.len(), 2);
        for (hex, len) in &sent {
            say(&mut m, 10, format!("AT+CMGS={len}\r").as_bytes());
            say(&mut m, 10, format!("{hex}\x1a").as_bytes());
        }
        let rec = m.take_accepted();
        assert_eq!(rec.len(), 2);
        let joined: String = rec.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(joined, long);
        for (i, r) in rec.iter().enumerate() {
            assert_eq!(r.modem, "modem0");
            assert_eq!(r.dest, "+33612345678");
            assert_eq!(r.mr, u8::try_from(i).unwrap_or(0));
            assert_eq!(r.dcs, 0);
            assert!(r.status_report);
            assert_eq!(r.time_ms, 10);
            assert_eq!(
                r.concat,
                Some(ConcatRecord {
                    reference: 0x42,
                    total: 2,
                    seq: u8::try_from(i + 1).unwrap_or(0)
                })
            );
            assert_eq!(r.pdu.as_deref(), sent.get(i).map(|(h, _)| h.as_str()));
        }
        assert!(m.take_accepted().is_empty(), "records are handed out once");
    }

    /// The record says when the `AT+CMGS` line arrived, from the stamp of the input that
    /// carried it, not of the input that ended the body; without stamps it says nothing.
    #[test]
    fn cmgs_arrival_is_recorded_from_the_input_stamp() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0\r");
        let (hex, len) = one("+33612345678", "Hello", false);
        m.stamp_input(1_700_000_000_123_456);
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        m.stamp_input(1_700_000_000_999_999);
        say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        let got: Vec<Option<u64>> = m.take_accepted().iter().map(|r| r.cmgs_at_us).collect();
        assert_eq!(got, [Some(1_700_000_000_123_456), None]);
    }

    /// Invariant: bytes inside a message body are never executed. In PDU mode the body is hex,
    /// so a text full of Ctrl-Z, ESC, CR and an AT command arrives intact.
    #[test]
    fn control_bytes_in_a_text_are_never_executed() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0;+CNMI=2,1,0,2,0\r");
        m.inject_report(0, 7, Some("+33612345678"), 0);
        assert_eq!(m.storage_usage().0, 1);
        let nasty = "stop\u{1a}AT+CMGD=1,4\r\u{1b}AT+CMGF=1\r\n\u{1a}";
        let (hex, len) = one("+33612345678", nasty, false);
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        let out = say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        assert_eq!(out, "\r\n+CMGS: 0\r\n\r\nOK\r\n");
        let rec = m.take_accepted();
        assert_eq!(rec.first().map(|r| r.text.as_str()), Some(nasty));
        assert_eq!(rec.first().map(|r| r.dcs), Some(0x08), "sent as UCS-2");
        assert_eq!(m.storage_usage().0, 1, "AT+CMGD=1,4 was not executed");
        assert_eq!(m.counters().deletes, 0);
        assert_eq!(say(&mut m, 0, b"AT+CMGF?\r"), info(&["+CMGF: 0"]));
    }

    #[test]
    fn message_reference_wraps_at_256() {
        let mut cfg = instant();
        cfg.first_mr = 254;
        let mut m = SimModem::new(cfg);
        say(&mut m, 0, b"ATE0\r");
        let (hex, len) = one("+33612345678", "wrap", false);
        let mut mrs = Vec::new();
        for _ in 0..3 {
            say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
            let out = say(&mut m, 0, format!("{hex}\x1a").as_bytes());
            mrs.push(out);
        }
        assert_eq!(
            mrs,
            vec![
                "\r\n+CMGS: 254\r\n\r\nOK\r\n",
                "\r\n+CMGS: 255\r\n\r\nOK\r\n",
                "\r\n+CMGS: 0\r\n\r\nOK\r\n"
            ]
        );
    }

    #[test]
    fn full_cycle_of_256_sends_reuses_references() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0\r");
        let (hex, len) = one("+33612345678", "x", false);
        for _ in 0..257 {
            say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
            say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        }
        let mrs: Vec<u8> = m.take_accepted().iter().map(|r| r.mr).collect();
        assert_eq!(mrs.first(), Some(&0));
        assert_eq!(mrs.get(255), Some(&255));
        assert_eq!(mrs.get(256), Some(&0));
    }

    #[test]
    fn injected_cms_errors() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0+CMEE=1\r");
        let (hex, len) = one("+33612345678", "retry me", false);
        let send = |m: &mut SimModem| {
            say(m, 0, format!("AT+CMGS={len}\r").as_bytes());
            say(m, 0, format!("{hex}\x1a").as_bytes())
        };
        m.fail_next(38, 2);
        assert_eq!(send(&mut m), "\r\n+CMS ERROR: 38\r\n");
        assert_eq!(send(&mut m), "\r\n+CMS ERROR: 38\r\n");
        assert_eq!(send(&mut m), "\r\n+CMGS: 0\r\n\r\nOK\r\n");
        m.set_error_rate(42, 1.0);
        assert_eq!(send(&mut m), "\r\n+CMS ERROR: 42\r\n");
        m.set_error_rate(42, 0.0);
        assert_eq!(send(&mut m), "\r\n+CMGS: 1\r\n\r\nOK\r\n");
        m.set_error_rate(41, 0.3);
        let failed = (0..400)
            .filter(|_| send(&mut m).contains("+CMS ERROR: 41"))
            .count();
        assert!(
            (80..=160).contains(&failed),
            "{failed} of 400 failed at rate 0.3"
        );
        assert_eq!(m.counters().injected_errors, 3 + failed as u64);
        assert_eq!(m.counters().accepted, 2 + 400 - failed as u64);
    }

    #[test]
    fn error_rate_is_repeatable_for_a_seed() {
        let run = |seed: u64| -> Vec<bool> {
            let mut cfg = instant();
            cfg.seed = seed;
            let mut m = SimModem::new(cfg);
            say(&mut m, 0, b"ATE0+CMEE=1\r");
            m.set_error_rate(41, 0.5);
            let (hex, len) = one("+33612345678", "x", false);
            (0..32)
                .map(|_| {
                    say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
                    say(&mut m, 0, format!("{hex}\x1a").as_bytes()).contains("ERROR")
                })
                .collect()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    fn decode_report(hex: &str) -> Option<pdu::StatusReport> {
        match pdu::decode(&pdu::from_hex(hex).ok()?, true).ok()? {
            Tpdu::StatusReport(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn status_report_as_cds_after_the_delay() {
        let mut cfg = instant();
        cfg.report.delay_ms = 1000;
        cfg.report.status = 0x41;
        let mut m = SimModem::new(cfg);
        say(&mut m, 0, b"ATE0;+CNMI=2,1,0,1,0\r");
        let (hex, len) = one("+33612345678", "report please", true);
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        assert_eq!(
            say(&mut m, 100, format!("{hex}\x1a").as_bytes()),
            "\r\n+CMGS: 0\r\n\r\nOK\r\n"
        );
        assert_eq!(m.next_deadline(), Some(1100));
        assert_eq!(m.poll_output(1099), b"");
        let out = String::from_utf8_lossy(&m.poll_output(1100)).into_owned();
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines.first(), Some(&""));
        assert_eq!(lines.get(1), Some(&"+CDS: 25"));
        let report = lines.get(2).and_then(|h| decode_report(h));
        let report = report.map(|r| (r.message_ref, r.recipient, r.status));
        assert_eq!(report, Some((0, "+33612345678".to_string(), 0x41)));
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn no_report_unless_the_submit_asked() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0;+CNMI=2,1,0,1,0\r");
        let (hex, len) = one("+33612345678", "no report", false);
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.poll_output(10_000), b"");
    }

    #[test]
    fn stored_reports_with_cdsi_cmgr_cmgl_cmgd() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0+CMEE=1;+CNMI=2,1,0,2,0\r");
        let (hex, len) = one("+33612345678", "store the report", true);
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        let out = say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        assert_eq!(out, "\r\n+CMGS: 0\r\n\r\nOK\r\n\r\n+CDSI: \"SM\",1\r\n");
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        let out = say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        assert_eq!(out, "\r\n+CMGS: 1\r\n\r\nOK\r\n\r\n+CDSI: \"SM\",2\r\n");

        let out = say(&mut m, 0, b"AT+CMGR=1\r");
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines.get(1), Some(&"+CMGR: 0,,25"));
        let mr = lines
            .get(2)
            .and_then(|h| decode_report(h))
            .map(|r| r.message_ref);
        assert_eq!(mr, Some(0));
        assert!(out.ends_with("\r\n\r\nOK\r\n"));
        let again = say(&mut m, 0, b"AT+CMGR=1\r");
        assert!(
            again.starts_with("\r\n+CMGR: 1,,25\r\n"),
            "read once: {again:?}"
        );

        let list = say(&mut m, 0, b"AT+CMGL=4\r");
        let heads: Vec<&str> = list
            .split("\r\n")
            .filter(|l| l.starts_with("+CMGL"))
            .collect();
        assert_eq!(heads, vec!["+CMGL: 1,1,,25", "+CMGL: 2,0,,25"]);
        let unread = say(&mut m, 0, b"AT+CMGL=0\r");
        assert_eq!(
            unread.matches("+CMGL:").count(),
            0,
            "CMGL=4 marked them read"
        );

        assert_eq!(
            say(&mut m, 0, b"AT+CPMS?\r"),
            info(&["+CPMS: \"SM\",2,20,\"SM\",2,20,\"SM\",2,20"])
        );
        assert_eq!(
            say(&mut m, 0, b"AT+CMGD=?\r"),
            info(&["+CMGD: (1,2),(0-4)"])
        );
        assert_eq!(say(&mut m, 0, b"AT+CMGD=1\r"), ok());
        assert_eq!(
            say(&mut m, 0, b"AT+CMGR=1\r"),
            ok(),
            "an empty slot reads as nothing"
        );
        assert_eq!(say(&mut m, 0, b"AT+CMGR=21\r"), "\r\n+CMS ERROR: 321\r\n");
        assert_eq!(say(&mut m, 0, b"AT+CMGD=1,4\r"), ok());
        assert_eq!(m.counters().deletes, 2, "each AT+CMGD counts");
        assert_eq!(say(&mut m, 0, b"AT+CMGL=4\r"), ok());

        say(&mut m, 0, b"AT+CMGF=1\r");
        m.inject_report(1_732_184_100_000, 9, Some("+33612345678"), 0);
        let text = say(&mut m, 1_732_184_100_000, b"AT+CMGR=1\r");
        assert_eq!(
            text,
            "\r\n+CDSI: \"SM\",1\r\n\r\n+CMGR: \"REC UNREAD\",6,9,\"+33612345678\",145,\
             \"24/11/21,10:15:00+00\",\"24/11/21,10:15:00+00\",0\r\n\r\nOK\r\n"
        );
    }

    #[test]
    fn full_memory_drops_reports() {
        let mut cfg = instant();
        cfg.storage_size = 2;
        let mut m = SimModem::new(cfg);
        say(&mut m, 0, b"ATE0;+CNMI=2,1,0,2,0\r");
        for mr in 0..3 {
            m.inject_report(0, mr, None, 0);
        }
        let out = String::from_utf8_lossy(&m.poll_output(0)).into_owned();
        assert_eq!(out, "\r\n+CDSI: \"SM\",1\r\n\r\n+CDSI: \"SM\",2\r\n");
        assert_eq!(m.counters().reports, 2);
        assert_eq!(m.counters().reports_dropped, 1);
    }

    #[test]
    fn reports_duplicated_held_and_released_out_of_order() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0;+CNMI=2,1,0,1,0\r");
        let (hex, len) = one("+33612345678", "dup", true);
        let send = |m: &mut SimModem| {
            say(m, 0, format!("AT+CMGS={len}\r").as_bytes());
            say(m, 0, format!("{hex}\x1a").as_bytes())
        };
        let mrs_in = |out: &str| -> Vec<u8> {
            out.split("\r\n")
                .filter_map(decode_report)
                .map(|r| r.message_ref)
                .collect()
        };
        m.set_report(ReportConfig {
            duplicate: true,
            ..ReportConfig::default()
        });
        m.set_report(ReportConfig {
            delay_ms: 0,
            ..m.report.clone()
        });
        assert_eq!(mrs_in(&send(&mut m)), vec![0, 0]);

        m.set_report(ReportConfig {
            delay_ms: 0,
            ..ReportConfig::default()
        });
        m.hold_reports(true);
        let held: Vec<u8> = (0..3).flat_map(|_| mrs_in(&send(&mut m))).collect();
        assert!(held.is_empty());
        m.hold_reports(false);
        m.release_reports(0, true);
        assert_eq!(
            mrs_in(&String::from_utf8_lossy(&m.poll_output(0))),
            vec![3, 2, 1]
        );

        // Held while duplicating: both copies come when released.
        m.set_report(ReportConfig {
            delay_ms: 0,
            duplicate: true,
            ..ReportConfig::default()
        });
        m.hold_reports(true);
        assert!(mrs_in(&send(&mut m)).is_empty());
        m.hold_reports(false);
        m.release_reports(0, false);
        assert_eq!(
            mrs_in(&String::from_utf8_lossy(&m.poll_output(0))),
            vec![4, 4]
        );
    }

    #[test]
    fn forced_report_modes_ignore_cnmi() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0\r");
        let (hex, len) = one("+33612345678", "forced", true);
        let send = |m: &mut SimModem| {
            say(m, 0, format!("AT+CMGS={len}\r").as_bytes());
            say(m, 0, format!("{hex}\x1a").as_bytes())
        };
        // CNMI ds=0 (power-on): stored silently.
        assert_eq!(send(&mut m), "\r\n+CMGS: 0\r\n\r\nOK\r\n");
        assert_eq!(m.storage_usage().0, 1);
        m.set_report(ReportConfig {
            mode: ReportMode::Cds,
            delay_ms: 0,
            ..ReportConfig::default()
        });
        assert!(send(&mut m).contains("\r\n+CDS: 25\r\n"));
        m.set_report(ReportConfig {
            mode: ReportMode::Cdsi,
            delay_ms: 0,
            ..ReportConfig::default()
        });
        assert!(send(&mut m).ends_with("\r\n+CDSI: \"SM\",2\r\n"));
        m.set_report(ReportConfig {
            mode: ReportMode::None,
            delay_ms: 0,
            ..ReportConfig::default()
        });
        assert_eq!(send(&mut m), "\r\n+CMGS: 3\r\n\r\nOK\r\n");
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn latency_delays_answers_and_keeps_order() {
        let mut cfg = instant();
        cfg.latency_ms = 100;
        cfg.cmgs_latency_ms = 2000;
        let mut m = SimModem::new(cfg);
        m.input(0, b"AT\r");
        assert_eq!(m.poll_output(0), b"AT\r", "echo is immediate");
        assert_eq!(m.next_deadline(), Some(100));
        assert_eq!(m.poll_output(99), b"");
        assert_eq!(m.poll_output(100), b"\r\nOK\r\n");
        // Two commands typed back to back are answered one after the other; the first one
        // turned echo off before the second was read.
        m.input(200, b"ATE0\rAT\r");
        assert_eq!(m.poll_output(300), b"ATE0\r\r\nOK\r\n");
        assert_eq!(m.poll_output(400), b"\r\nOK\r\n");
        let (hex, len) = one("+33612345678", "slow", false);
        m.input(1000, format!("AT+CMGS={len}\r").as_bytes());
        assert_eq!(m.poll_output(1100), b"\r\n> ");
        m.input(1200, format!("{hex}\x1a").as_bytes());
        assert_eq!(m.poll_output(3199), b"");
        assert_eq!(m.poll_output(3200), b"\r\n+CMGS: 0\r\n\r\nOK\r\n");
        // An unsolicited line is not held up behind a slow answer.
        m.input(4000, format!("AT+CMGS={len}\r").as_bytes());
        m.input(4100, format!("{hex}\x1a").as_bytes());
        m.unsolicited(4200, "^RSSI:17");
        assert_eq!(m.poll_output(4200), b"\r\n> \r\n^RSSI:17\r\n");
    }

    #[test]
    fn hang_and_resume() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0\r");
        m.set_hung(0, true);
        assert_eq!(say(&mut m, 0, b"AT\r"), "");
        m.unsolicited(0, "RING");
        assert_eq!(m.poll_output(0), b"");
        m.set_hung(10, false);
        assert_eq!(say(&mut m, 10, b"AT\r"), ok());
    }

    #[test]
    fn power_cycle_restores_power_on_state_but_keeps_the_sim() {
        let mut cfg = with_pin("1234");
        cfg.first_mr = 10;
        let mut m = SimModem::new(cfg);
        say(&mut m, 0, b"ATE0;+CPIN=\"1234\";+CNMI=2,1,0,2,0\r");
        let (hex, len) = one("+33612345678", "before", true);
        say(&mut m, 0, format!("AT+CMGS={len}\r").as_bytes());
        say(&mut m, 0, format!("{hex}\x1a").as_bytes());
        m.power_cycle(5);
        assert_eq!(
            say(&mut m, 5, b"AT+CPIN?\r"),
            format!("AT+CPIN?\r{}", info(&["+CPIN: SIM PIN"]))
        );
        say(&mut m, 5, b"ATE0;+CPIN=\"1234\"\r");
        assert_eq!(
            say(&mut m, 5, b"AT+CPMS?\r"),
            info(&["+CPMS: \"SM\",1,20,\"SM\",1,20,\"SM\",1,20"])
        );
        say(&mut m, 5, format!("AT+CMGS={len}\r").as_bytes());
        assert_eq!(
            say(&mut m, 5, format!("{hex}\x1a").as_bytes()),
            "\r\n+CMGS: 11\r\n\r\nOK\r\n"
        );
    }

    #[test]
    fn creg_urc_follows_registration() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0+CREG=1\r");
        m.set_registration(0, 2);
        assert_eq!(m.poll_output(0), b"\r\n+CREG: 2\r\n");
        assert_eq!(
            say(&mut m, 0, b"AT+CMEE=1;+CMGS=10\r"),
            "\r\n+CMS ERROR: 331\r\n"
        );
        say(&mut m, 0, b"AT+CREG=2\r");
        m.set_registration(0, 5);
        assert_eq!(m.poll_output(0), b"\r\n+CREG: 5,\"1A2B\",\"0C3D\"\r\n");
        // Packet service registration follows (gammu's `networkinfo` asks for it).
        assert_eq!(
            say(&mut m, 0, b"AT+CREG=0;+CGREG=1;+CGREG?\r"),
            info(&["+CGREG: 1,5"])
        );
        m.set_registration(0, 1);
        assert_eq!(m.poll_output(0), b"\r\n+CGREG: 1\r\n");
        assert_eq!(
            say(&mut m, 0, b"AT+CGREG=2;+CGREG?\r"),
            info(&["+CGREG: 2,1,\"1A2B\",\"0C3D\""])
        );
        assert_eq!(say(&mut m, 0, b"AT+CGREG=3\r"), "\r\n+CME ERROR: 4\r\n");
        // The operator in the format asked for (gammu asks for the numeric one, then names).
        assert_eq!(
            say(&mut m, 0, b"AT+COPS=3,2;+COPS?\r"),
            info(&["+COPS: 0,2,\"00101\""])
        );
        assert_eq!(
            say(&mut m, 0, b"AT+COPS=3,0;+COPS?\r"),
            info(&["+COPS: 0,0,\"Test PLMN 1-1\""])
        );
        assert_eq!(say(&mut m, 0, b"AT+COPS=3,7\r"), "\r\n+CME ERROR: 4\r\n");
    }

    #[test]
    fn overlong_command_line_is_an_error() {
        let mut m = SimModem::new(instant());
        say(&mut m, 0, b"ATE0\r");
        let mut line = b"AT".to_vec();
        line.extend(std::iter::repeat_n(b'X', MAX_COMMAND_LINE * 2));
        line.push(b'\r');
        assert_eq!(say(&mut m, 0, &line), "\r\nERROR\r\n");
        assert!(m.line.is_empty());
        assert_eq!(say(&mut m, 0, b"AT\r"), ok());
    }

    #[test]
    fn command_line_grammar() {
        let cmd = |n: &str, k: Kind, a: &str| Command {
            name: n.to_string(),
            kind: k,
            arg: a.to_string(),
        };
        let cases: Vec<(&str, Option<Vec<Command>>)> = vec![
            ("", Some(vec![])),
            (
                "E0V1",
                Some(vec![cmd("E", Kind::Exec, "0"), cmd("V", Kind::Exec, "1")]),
            ),
            ("&F", Some(vec![cmd("&F", Kind::Exec, "")])),
            ("S3?", Some(vec![cmd("S3", Kind::Read, "")])),
            ("S0=0", Some(vec![cmd("S0", Kind::Set, "0")])),
            (
                "E0+CMEE=1;+CREG=2",
                Some(vec![
                    cmd("E", Kind::Exec, "0"),
                    cmd("+CMEE", Kind::Set, "1"),
                    cmd("+CREG", Kind::Set, "2"),
                ]),
            ),
            (
                "+CSCA=\"+33;6\",145",
                Some(vec![cmd("+CSCA", Kind::Set, "\"+33;6\",145")]),
            ),
            ("+cnmi=?", Some(vec![cmd("+CNMI", Kind::Test, "")])),
            ("^SYSCFG?", Some(vec![cmd("^SYSCFG", Kind::Read, "")])),
            (
                "D+33612345678;",
                Some(vec![cmd("D", Kind::Exec, "+33612345678;")]),
            ),
            ("+CSQ?1", None),
            ("+", None),
            ("S=1", None),
            ("!", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_command_line(line), want, "{line:?}");
        }
    }

    /// Random bytes, biased towards what matters (CR, Ctrl-Z, ESC, prompts), in every mode:
    /// no panic, and buffers stay bounded.
    #[test]
    fn random_input_never_panics() {
        let pieces: &[&[u8]] = &[
            b"\r",
            b"\n",
            b"\x1a",
            b"\x1b",
            b"\x08",
            b"AT",
            b"+CMGS=",
            b"25",
            b"+CMGF=1;",
            b"+CPIN=\"",
            b"\"",
            b",",
            b"0011000B91",
            b"+CMGR=1",
            b"+CMGD=1,4",
            b"+CNMI=2,1,0,2,0",
            b"\x00",
            b"\xff",
            b"E0",
            b"Z",
            b"+CMGL=4",
            b"?",
            b"=?",
            b"S3=",
            b";",
        ];
        let mut rng = XorShift::new(12345);
        for round in 0..300 {
            let mut cfg = instant();
            cfg.pin = (round % 3 == 0).then(|| "1234".to_string());
            let mut m = SimModem::new(cfg);
            m.set_error_rate(38, 0.2);
            for t in 0..200u64 {
                let i = usize::try_from(rng.next_u64() % pieces.len() as u64).unwrap_or(0);
                m.input(t, pieces.get(i).copied().unwrap_or(b""));
                if rng.next_u64().is_multiple_of(13) {
                    m.inject_report(t, 1, None, 0);
                }
                let _ = m.poll_output(t);
            }
            assert!(m.line.len() <= MAX_COMMAND_LINE);
        }
    }
}
