//! A GSM modem simulator on a pseudo-terminal, so that the gateway, its tests and the demo
//! configuration run without hardware.
//!
//! It behaves like a real modem seen through a serial port, closely enough that modem clients
//! nobody here wrote (gammu, smstools3's `smsd`) can drive it too: V.250 command lines with
//! echo on by default, 3GPP TS 27.007/27.005 commands in PDU and text mode, the `> ` prompt
//! without a line end, `+CMS ERROR` causes, status reports as `+CDS` or `+CDSI` according to
//! `AT+CNMI`, and unsolicited lines at any moment.
//!
//! No crate simulates a modem at this level (and none drives one from a host well:
//! `huawei-modem` is unmaintained, `atat` targets `no_std` firmware), so this is in-house.
//!
//! Layout:
//! - [`machine`]: the sans-IO state machine (bytes from the terminal in, bytes out, a time
//!   argument for latency and delayed reports; no clock inside), tested from transcripts.
//! - [`report`]: the SMS-STATUS-REPORT encoder playing the SMSC's part.
//! - [`pty`]: drives a core from the master side of a pseudo-terminal and publishes the slave
//!   under a stable symlink; unplug and replug replace the terminal behind it.
//! - [`control`]: the JSON line protocol of the control socket, so tests in any language can
//!   inject faults.
//! - [`cli`]: `modem-sim` command line: N modems and a control socket until a signal.
//!
//! Every SMS the simulator accepts is appended as one JSON line to a record file ([`SentSms`]).

pub mod cli;
pub mod control;
pub mod machine;
pub mod pty;
pub mod report;

use serde::{Deserialize, Serialize};

pub use self::cli::{SimArgs, run_cli};
pub use self::machine::{SimCounters, SimModem};
pub use self::pty::{SimHandle, spawn};

/// One simulated modem's identity and behaviour at power-on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Name used in records and on the control socket (`modem0`).
    pub name: String,
    /// IMSI returned by `AT+CIMI` (15 digits).
    pub imsi: String,
    /// IMEI returned by `AT+CGSN` (15 digits, Luhn check digit last).
    pub imei: String,
    /// SIM PIN; `None` means the SIM is not PIN-locked.
    #[serde(default)]
    pub pin: Option<String>,
    /// PUK that unblocks the SIM after three wrong PINs.
    #[serde(default = "default_puk")]
    pub puk: String,
    /// Delay before each answer, in milliseconds.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u64,
    /// Delay before the answer to a submitted message (`+CMGS:`), in milliseconds: real
    /// modems take one to several seconds to get the network's acknowledgement.
    #[serde(default = "default_cmgs_latency_ms")]
    pub cmgs_latency_ms: u64,
    /// `AT+CGMI`.
    #[serde(default = "default_manufacturer")]
    pub manufacturer: String,
    /// `AT+CGMM`.
    #[serde(default = "default_model")]
    pub model: String,
    /// `AT+CGMR`.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Operator name in `AT+COPS?`.
    #[serde(default = "default_operator")]
    pub operator: String,
    /// SMSC address in `AT+CSCA?` and in front of status reports.
    #[serde(default = "default_smsc")]
    pub smsc: String,
    /// `<rssi>` of `AT+CSQ` (0..=31, 99 unknown).
    #[serde(default = "default_rssi")]
    pub rssi: u8,
    /// Status reports the simulated network sends.
    #[serde(default)]
    pub report: ReportConfig,
    /// TP-MR given to the first message accepted.
    #[serde(default)]
    pub first_mr: u8,
    /// Slots of the SIM's message memory (`AT+CPMS`), 1..=255.
    #[serde(default = "default_storage_size")]
    pub storage_size: u8,
    /// Seed of the error-injection generator; 0 derives one from the IMEI.
    #[serde(default)]
    pub seed: u64,
}

fn default_puk() -> String {
    "12345678".to_string()
}
fn default_latency_ms() -> u64 {
    5
}
fn default_cmgs_latency_ms() -> u64 {
    200
}
fn default_manufacturer() -> String {
    "mail2sms".to_string()
}
fn default_model() -> String {
    "SIMULATED GSM MODEM".to_string()
}
fn default_revision() -> String {
    concat!("sim-", env!("CARGO_PKG_VERSION")).to_string()
}
fn default_operator() -> String {
    "Test PLMN 1-1".to_string()
}
fn default_smsc() -> String {
    "+33609001390".to_string()
}
fn default_rssi() -> u8 {
    20
}
fn default_storage_size() -> u8 {
    20
}

impl SimConfig {
    /// Modem number `n` with defaults and an identity distinct from every other `n`: IMEI with
    /// a valid Luhn digit, IMSI in the test network 001-01 (TS 23.003 §2.2, reserved for
    /// testing).
    pub fn numbered(n: u32) -> SimConfig {
        let body = format!("35000000{:06}", n % 1_000_000);
        let imei = format!("{body}{}", luhn_digit(&body));
        SimConfig {
            name: format!("modem{n}"),
            imsi: format!("00101{:010}", n),
            imei,
            pin: None,
            puk: default_puk(),
            latency_ms: default_latency_ms(),
            cmgs_latency_ms: default_cmgs_latency_ms(),
            manufacturer: default_manufacturer(),
            model: default_model(),
            revision: default_revision(),
            operator: default_operator(),
            smsc: default_smsc(),
            rssi: default_rssi(),
            report: ReportConfig::default(),
            first_mr: 0,
            storage_size: default_storage_size(),
            seed: 0,
        }
    }
}

/// The Luhn check digit of a string of digits (ISO/IEC 7812-1, used by the IMEI,
/// TS 23.003 §6.2.1).
pub fn luhn_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// How status reports reach the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReportMode {
    /// As `AT+CNMI` `<ds>` says: 1 → `+CDS`, 2 → stored and `+CDSI`, 0 → stored silently.
    #[default]
    Auto,
    /// Always `+CDS: <len>` + PDU, whatever `AT+CNMI` says (modems that ignore `<ds>`).
    Cds,
    /// Always stored and announced with `+CDSI`.
    Cdsi,
    /// The network sends no status reports.
    None,
}

/// Status reports the simulated network sends for messages that asked for one (TP-SRR).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    #[serde(default)]
    pub mode: ReportMode,
    /// TP-ST of the reports (0x00 delivered, 0x41 incompatible destination, 0x60.. given up).
    #[serde(default)]
    pub status: u8,
    /// Time from the `+CMGS:` answer to the report, in milliseconds.
    #[serde(default = "default_report_delay_ms")]
    pub delay_ms: u64,
    /// Send every report twice, as some SMSCs do after a retry.
    #[serde(default)]
    pub duplicate: bool,
}

fn default_report_delay_ms() -> u64 {
    500
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            mode: ReportMode::Auto,
            status: 0,
            delay_ms: default_report_delay_ms(),
            duplicate: false,
        }
    }
}

/// Concatenation header of a recorded part.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ConcatRecord {
    #[serde(rename = "ref")]
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
}

/// One message the simulator accepted, as written to the record file (one JSON object per
/// line).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SentSms {
    pub modem: String,
    pub imsi: String,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// TP-MR the modem answered with in `+CMGS:`.
    pub mr: u8,
    pub dest: String,
    /// The text as decoded from the PDU (or as typed, in text mode).
    pub text: String,
    /// TP-DCS (0 in text mode).
    pub dcs: u8,
    pub concat: Option<ConcatRecord>,
    /// Whether the message asked for a status report (TP-SRR).
    pub status_report: bool,
    /// The PDU as written after the prompt, SMSC address included; `None` in text mode.
    pub pdu: Option<String>,
    /// When the `AT+CMGS` line of this message reached the modem, in microseconds since the
    /// Unix epoch. Wall clock, so that another process (a benchmark timing the gateway from a
    /// mail's `250` to its `AT+CMGS`) can compare its own timestamps with it; `None` when the
    /// I/O layer gave no arrival times ([`SimModem::stamp_input`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmgs_at_us: Option<u64>,
}
