//! AT response parser: turns the bytes a GSM modem writes into typed events.
//!
//! The parser is sans-IO: the driver feeds it whatever bytes the serial port produced (in chunks
//! of any size, split anywhere) and pulls [`AtEvent`]s out. It has no clock and no I/O, so every
//! behaviour below is tested from transcripts of real modems' chatter.
//!
//! No maintained crate drives GSM modems from a host: `huawei-modem` is unmaintained and `atat`
//! targets `no_std` firmware with static command types. The grammar here follows ITU-T V.250
//! (line framing, echo, final result codes), 3GPP TS 27.007 (`+CME ERROR`, `+CREG`, `+CSQ`,
//! `+CPIN`) and 3GPP TS 27.005 (`+CMGS`, `+CMS ERROR`, `+CMT`, `+CDS`, `+CMTI`, `+CDSI`).
//!
//! What makes modem output hard to parse, and how this module copes:
//! - Unsolicited result codes (URCs) arrive at any moment, even between `AT+CMGS` and its
//!   `+CMGS:` answer. The parser is told which command is in flight ([`AtParser::set_pending`])
//!   and only lines that belong to that command become [`AtEvent::Response`]; everything else is
//!   an [`AtEvent::Urc`].
//! - Some URCs span two lines (`+CDS: <len>` then the PDU): the parser keeps that state across
//!   feeds.
//! - The `> ` prompt after `AT+CMGS=<len>` has no line end, so a line codec alone would hang.
//! - Echo is on by default on most modems (V.250 `E1`), so the command line and, after the
//!   prompt, the hex PDU come back before the answer; both are dropped.
//! - Line ends vary (`\r\n`, lone `\r`, `\r\r\n`); modems emit NUL and `0xFF` noise at power-up;
//!   lines can be garbage of any length. Lines are capped at [`MAX_LINE`] bytes and the parser
//!   never panics.

use std::collections::VecDeque;

use crate::modem::pdu::from_hex;

/// Longest line kept, in bytes. The longest legitimate line is a PDU: 12 octets of SMSC address
/// plus 176 of TPDU, i.e. under 400 hex digits; 4 KiB leaves room for verbose vendor lines.
pub const MAX_LINE: usize = 4096;

/// One thing the modem said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtEvent {
    /// An information line that belongs to the pending command (`+CSQ: 20,99`, an IMEI, a PDU
    /// line of `+CMGR`).
    Response(String),
    /// A final result code: the pending command is over (V.250 §5.7.1, TS 27.007 §9.2,
    /// TS 27.005 §3.2.5).
    Final(FinalCode),
    /// The `> ` prompt: the modem waits for the PDU and Ctrl-Z (TS 27.005 §3.5.1).
    Prompt,
    /// An unsolicited result code.
    Urc(Urc),
    /// A line grew past [`MAX_LINE`] bytes; the rest of it is discarded up to the next line end.
    Overflow,
}

/// Final result codes. Anything else that ends a command on some modem is [`FinalCode::Vendor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalCode {
    Ok,
    Error,
    /// `+CMS ERROR: <err>` with a numeric cause (`AT+CMEE=1`).
    CmsError(u16),
    /// `+CMS ERROR: <text>` (`AT+CMEE=2`).
    CmsErrorText(String),
    /// `+CME ERROR: <err>` with a numeric cause.
    CmeError(u16),
    /// `+CME ERROR: <text>`.
    CmeErrorText(String),
    NoCarrier,
    Busy,
    NoAnswer,
    NoDialtone,
    /// Vendor final codes, e.g. Huawei's `COMMAND NOT SUPPORT` and `TOO MANY PARAMETERS`.
    Vendor(String),
}

impl FinalCode {
    /// True for `OK` only.
    pub fn is_ok(&self) -> bool {
        matches!(self, FinalCode::Ok)
    }
}

/// Unsolicited result codes the driver acts on; the rest are kept as text in [`Urc::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Urc {
    /// `+CDS: <length>` + PDU line: an SMS-STATUS-REPORT routed to the terminal
    /// (TS 27.005 §3.4.1, `AT+CNMI` ds=1). The PDU starts with the SMSC address.
    Cds { pdu: Vec<u8> },
    /// `+CDSI: <mem>,<index>`: a status report was stored (`AT+CNMI` ds=2).
    Cdsi { mem: String, index: u32 },
    /// `+CMTI: <mem>,<index>`: an incoming SMS was stored.
    Cmti { mem: String, index: u32 },
    /// `+CMT: [<alpha>],<length>` + PDU line: an incoming SMS routed to the terminal.
    /// The PDU starts with the SMSC address.
    Cmt { pdu: Vec<u8> },
    /// `+CREG: <stat>[,<lac>,<ci>[,<AcT>]]` (TS 27.007 §7.2, the unsolicited form).
    Creg { stat: u8 },
    /// Huawei `^RSSI: <rssi>`, same scale as `+CSQ`.
    Rssi(u8),
    /// Huawei `^BOOT:...`, emitted every few seconds by E1xx sticks.
    Boot,
    /// `RING` or `+CRING: <type>`.
    Ring,
    /// Any other unsolicited line, kept verbatim. Two-line URCs that could not be decoded keep
    /// both lines joined by `\n`.
    Other(String),
}

/// Whether a failed send is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmsClass {
    /// The same message may succeed later or through another modem.
    Temporary,
    /// Sending this message again will fail the same way.
    Permanent,
}

/// How a command parameter relates to the command name (V.250 §5.4.2 / §6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmdKind {
    /// `AT+CMD`
    Exec,
    /// `AT+CMD=...`
    Set,
    /// `AT+CMD?`
    Read,
    /// `AT+CMD=?`
    Test,
}

/// The command in flight, as far as classification needs it.
#[derive(Debug, Clone)]
struct Pending {
    /// The command line as sent, without its line end: its echo is dropped.
    echo: String,
    /// Extended command names on the line (`+CMGS`, `^SYSCFG`), upper-cased. Empty for a line
    /// of basic commands only (`ATI`, `ATZ`).
    names: Vec<(String, CmdKind)>,
    /// The command answers with a `> ` prompt (`+CMGS=`, `+CMGW=`, `+CMGC=`).
    prompt: bool,
    /// The prompt has been seen: hex lines are now the echo of the PDU typed after it.
    prompt_seen: bool,
}

impl Pending {
    fn new(cmd: &str) -> Pending {
        let echo = cmd.trim().to_string();
        let names = extended_names(&echo);
        let prompt = names
            .iter()
            .any(|(n, k)| *k == CmdKind::Set && matches!(n.as_str(), "+CMGS" | "+CMGW" | "+CMGC"));
        Pending {
            echo,
            names,
            prompt,
            prompt_seen: false,
        }
    }

    fn kind_of(&self, name: &str) -> Option<CmdKind> {
        self.names.iter().find(|(n, _)| n == name).map(|(_, k)| *k)
    }
}

/// Which two-line URC is waiting for its second line.
#[derive(Debug, Clone)]
enum SecondLine {
    CdsPdu,
    CmtPdu,
    /// Text-mode `+CMT`: the second line is the message text.
    CmtText,
}

/// Sans-IO parser for what a modem writes. See the module documentation.
#[derive(Debug, Default)]
pub struct AtParser {
    line: Vec<u8>,
    /// Discarding the rest of an overlong line.
    discarding: bool,
    pending: Option<Pending>,
    /// First line of a two-line URC and what its second line is.
    awaiting: Option<(String, SecondLine)>,
    events: VecDeque<AtEvent>,
}

impl AtParser {
    pub fn new() -> AtParser {
        AtParser::default()
    }

    /// Tells the parser which command line was just written (without `\r`), or `None` when no
    /// command is in flight. Call it before writing the command, so that its echo is
    /// recognised. A final result code clears it.
    pub fn set_pending(&mut self, cmd: Option<&str>) {
        self.pending = cmd.map(Pending::new);
    }

    /// True while a command is in flight (set and not yet answered by a final result code).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Feeds bytes read from the modem, in chunks of any size.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\r' | b'\n' => self.end_line(),
                // Control bytes are noise on an AT link: NUL at power-up, and the Ctrl-Z or
                // ESC a modem echoes after a PDU.
                0x00..=0x1f | 0x7f => {}
                _ if self.discarding => {}
                // Power-up garbage (0xFF, stray high bytes) before the first character of a line.
                0x80..=0xff if self.line.is_empty() => {}
                _ => {
                    if self.line.len() >= MAX_LINE {
                        self.line.clear();
                        self.discarding = true;
                        self.events.push_back(AtEvent::Overflow);
                        continue;
                    }
                    self.line.push(b);
                    if self.line == b"> " && self.prompt_expected() {
                        self.line.clear();
                        self.prompt();
                    }
                }
            }
        }
    }

    /// The next event, if a complete one has been fed.
    pub fn next_event(&mut self) -> Option<AtEvent> {
        self.events.pop_front()
    }

    fn prompt_expected(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.prompt)
    }

    fn prompt(&mut self) {
        if let Some(p) = self.pending.as_mut() {
            p.prompt_seen = true;
        }
        self.events.push_back(AtEvent::Prompt);
    }

    fn end_line(&mut self) {
        if self.discarding {
            self.discarding = false;
            self.line.clear();
            return;
        }
        if self.line.is_empty() {
            return;
        }
        let raw = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&raw);
        let line = text.trim();
        // Some modems send the prompt as a bare `>` line.
        if line == ">" && self.prompt_expected() {
            self.prompt();
            return;
        }
        // A line with no letter or digit carries nothing a driver could act on (stray `>`,
        // lossy-decoded noise).
        if !line.bytes().any(|b| b.is_ascii_alphanumeric()) {
            return;
        }
        let line = line.to_string();
        self.classify(line);
    }

    fn classify(&mut self, line: String) {
        if let Some((header, second)) = self.awaiting.take() {
            match second {
                SecondLine::CmtText => {
                    self.urc(Urc::Other(format!("{header}\n{line}")));
                    return;
                }
                SecondLine::CdsPdu | SecondLine::CmtPdu => match from_hex(&line) {
                    Ok(pdu) => {
                        self.urc(match second {
                            SecondLine::CdsPdu => Urc::Cds { pdu },
                            _ => Urc::Cmt { pdu },
                        });
                        return;
                    }
                    // The announced PDU never came: report the header alone and read this line
                    // on its own merits.
                    Err(_) => self.urc(Urc::Other(header)),
                },
            }
        }

        if let Some(p) = &self.pending {
            if line.eq_ignore_ascii_case(&p.echo) {
                return;
            }
            if p.prompt_seen && is_hex(&line) {
                return;
            }
        }

        if let Some(code) = parse_final(&line) {
            self.pending = None;
            self.events.push_back(AtEvent::Final(code));
            return;
        }

        if BARE_URCS.iter().any(|u| line.eq_ignore_ascii_case(u)) {
            let urc = if line.eq_ignore_ascii_case("RING") {
                Urc::Ring
            } else {
                Urc::Other(line)
            };
            self.urc(urc);
            return;
        }

        if let Some((name, rest)) = split_prefixed(&line) {
            let response = match &self.pending {
                None => false,
                Some(p) => match p.kind_of(&name) {
                    Some(kind) => belongs_to_command(&name, kind, rest),
                    // A line of basic commands (`ATI`) may answer with any text; only lines
                    // known to be unsolicited are taken out of it.
                    None => p.names.is_empty() && !KNOWN_URC_NAMES.contains(&name.as_str()),
                },
            };
            if response {
                self.events.push_back(AtEvent::Response(line));
            } else {
                self.prefixed_urc(&name, rest, line.clone());
            }
            return;
        }

        if self.pending.is_some() {
            self.events.push_back(AtEvent::Response(line));
        } else {
            self.urc(Urc::Other(line));
        }
    }

    fn urc(&mut self, urc: Urc) {
        self.events.push_back(AtEvent::Urc(urc));
    }

    fn prefixed_urc(&mut self, name: &str, rest: &str, line: String) {
        let fields = split_fields(rest);
        let urc = match name {
            // TS 27.005 §3.4.1: PDU mode `+CDS: <length>`; text mode puts the report on one line.
            "+CDS" if fields.len() == 1 && field_u32(&fields, 0).is_some() => {
                self.awaiting = Some((line, SecondLine::CdsPdu));
                return;
            }
            // PDU mode `+CMT: [<alpha>],<length>`; text mode `+CMT: <oa>,[<alpha>],<scts>[,...]`.
            "+CMT" if fields.len() == 2 && field_u32(&fields, 1).is_some() => {
                self.awaiting = Some((line, SecondLine::CmtPdu));
                return;
            }
            "+CMT" if fields.len() >= 3 => {
                self.awaiting = Some((line, SecondLine::CmtText));
                return;
            }
            "+CDSI" | "+CMTI" => match (fields.first(), field_u32(&fields, 1)) {
                (Some(mem), Some(index)) if fields.len() == 2 => {
                    let mem = mem.text.clone();
                    if name == "+CDSI" {
                        Urc::Cdsi { mem, index }
                    } else {
                        Urc::Cmti { mem, index }
                    }
                }
                _ => Urc::Other(line),
            },
            // A second unquoted number makes it a read answer that came late (after its
            // command timed out), not the URC: its first field is `<n>`, not `<stat>`.
            "+CREG" => match field_u8(&fields, 0) {
                Some(stat) if field_u8(&fields, 1).is_none() => Urc::Creg { stat },
                _ => Urc::Other(line),
            },
            "^RSSI" => match field_u8(&fields, 0) {
                Some(rssi) => Urc::Rssi(rssi),
                None => Urc::Other(line),
            },
            "^BOOT" => Urc::Boot,
            "+CRING" => Urc::Ring,
            _ => Urc::Other(line),
        };
        self.urc(urc);
    }
}

/// Bare lines that are always unsolicited: ring, and the boot banners of SIMCom and Quectel
/// modules (`RDY`, `Call Ready`...), including SIM800's spelling of "warning".
const BARE_URCS: &[&str] = &[
    "RING",
    "RDY",
    "Call Ready",
    "SMS Ready",
    "NORMAL POWER DOWN",
    "POWERED DOWN",
    "UNDER-VOLTAGE POWER DOWN",
    "UNDER-VOLTAGE WARNNING",
    "OVER-VOLTAGE POWER DOWN",
    "OVER-VOLTAGE WARNNING",
];

/// Prefixes that only ever appear unsolicited (or as the answer to their own command).
const KNOWN_URC_NAMES: &[&str] = &[
    "+CDS",
    "+CDSI",
    "+CMT",
    "+CMTI",
    "+CBM",
    "+CBMI",
    "+CREG",
    "+CGREG",
    "+CEREG",
    "+C5GREG",
    "+CRING",
    "+CLIP",
    "+CCWA",
    "+CUSD",
    "+CIEV",
    "+CPIN",
    "+CFUN",
    "+CTZV",
    "+CTZE",
    "+QIND",
    "+QUSIM",
    "+PBREADY",
    "^RSSI",
    "^BOOT",
    "^MODE",
    "^HCSQ",
    "^SRVST",
    "^SIMST",
    "^DSFLOWRPT",
    "^RSSILVL",
    "^CSNR",
    "^CEND",
    "^ORIG",
    "^CONF",
    "^CONN",
    "^STIN",
    "^NDISSTAT",
    "^SYSSTART",
    "*PSUTTZ",
];

/// Whether a `name: rest` line matching a pending command of that name is its answer.
/// Registration and PIN status have an unsolicited form with the same prefix (TS 27.007 §7.2,
/// §8.3), told apart by shape: the read answer `+CREG: <n>,<stat>` starts with two numbers, the
/// URC `+CREG: <stat>[,"<lac>","<ci>"]` does not.
fn belongs_to_command(name: &str, kind: CmdKind, rest: &str) -> bool {
    match name {
        "+CREG" | "+CGREG" | "+CEREG" | "+C5GREG" => match kind {
            CmdKind::Read => {
                let fields = split_fields(rest);
                field_u8(&fields, 0).is_some() && field_u8(&fields, 1).is_some()
            }
            CmdKind::Test => true,
            CmdKind::Exec | CmdKind::Set => false,
        },
        // `AT+CPIN="1234"` answers OK; a `+CPIN: READY` around it is the SIM's URC.
        "+CPIN" => matches!(kind, CmdKind::Read | CmdKind::Test),
        _ => true,
    }
}

/// V.250 final result codes in verbose form, and the TS 27.007/27.005 error codes.
fn parse_final(line: &str) -> Option<FinalCode> {
    let code = match line {
        "OK" => FinalCode::Ok,
        "ERROR" => FinalCode::Error,
        "NO CARRIER" => FinalCode::NoCarrier,
        "BUSY" => FinalCode::Busy,
        "NO ANSWER" => FinalCode::NoAnswer,
        "NO DIALTONE" => FinalCode::NoDialtone,
        "COMMAND NOT SUPPORT" | "TOO MANY PARAMETERS" => FinalCode::Vendor(line.to_string()),
        _ => {
            if let Some(rest) = strip_prefix_ci(line, "+CMS ERROR:") {
                let rest = rest.trim();
                match rest.parse::<u16>() {
                    Ok(n) => FinalCode::CmsError(n),
                    Err(_) => FinalCode::CmsErrorText(rest.to_string()),
                }
            } else if let Some(rest) = strip_prefix_ci(line, "+CME ERROR:") {
                let rest = rest.trim();
                match rest.parse::<u16>() {
                    Ok(n) => FinalCode::CmeError(n),
                    Err(_) => FinalCode::CmeErrorText(rest.to_string()),
                }
            } else {
                return None;
            }
        }
    };
    Some(code)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_prefix_char(c: char) -> bool {
    matches!(c, '+' | '^' | '$' | '%' | '#' | '*')
}

/// Splits `+NAME: rest` (or `+NAME` alone) into the upper-cased name and the rest.
fn split_prefixed(line: &str) -> Option<(String, &str)> {
    let mut chars = line.char_indices();
    let (_, first) = chars.next()?;
    if !is_prefix_char(first) {
        return None;
    }
    let end = chars
        .find(|(_, c)| !is_name_char(*c))
        .map_or(line.len(), |(i, _)| i);
    let name = line.get(..end)?;
    if name.len() < 2 {
        return None;
    }
    let rest = line.get(end..)?;
    let rest = match rest.strip_prefix(':') {
        Some(r) => r,
        None if rest.is_empty() => rest,
        None => return None,
    };
    Some((name.to_ascii_uppercase(), rest.trim()))
}

/// The extended command names on a command line (`ATE0+CMEE=1;+CREG=2` → `+CMEE`, `+CREG`),
/// with how each is invoked. Quoted strings are skipped so that `"+33..."` is not a name.
fn extended_names(cmd: &str) -> Vec<(String, CmdKind)> {
    let Some(body) = strip_prefix_ci(cmd, "AT") else {
        return Vec::new();
    };
    let chars: Vec<char> = body.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut in_quotes = false;
    while let Some(&c) = chars.get(i) {
        if c == '"' {
            in_quotes = !in_quotes;
            i += 1;
            continue;
        }
        if in_quotes || !is_prefix_char(c) {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while chars.get(i).is_some_and(|c| is_name_char(*c)) {
            i += 1;
        }
        let name: String = chars
            .get(start..i)
            .unwrap_or_default()
            .iter()
            .collect::<String>()
            .to_ascii_uppercase();
        let kind = match (chars.get(i), chars.get(i + 1)) {
            (Some('='), Some('?')) => CmdKind::Test,
            (Some('='), _) => CmdKind::Set,
            (Some('?'), _) => CmdKind::Read,
            _ => CmdKind::Exec,
        };
        if name.len() > 1 {
            names.push((name, kind));
        }
        // The arguments run to the next `;` outside quotes.
        while let Some(&c) = chars.get(i) {
            if c == '"' {
                in_quotes = !in_quotes;
            } else if c == ';' && !in_quotes {
                break;
            }
            i += 1;
        }
    }
    names
}

/// One comma-separated parameter of an information line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    text: String,
    quoted: bool,
}

/// Splits parameters on commas outside double quotes (V.250 §5.7.2 string constants).
fn split_fields(rest: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    for c in rest.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                quoted = true;
            }
            ',' if !in_quotes => {
                fields.push(Field {
                    text: cur.trim().to_string(),
                    quoted,
                });
                cur.clear();
                quoted = false;
            }
            _ => cur.push(c),
        }
    }
    if !rest.trim().is_empty() || !fields.is_empty() {
        fields.push(Field {
            text: cur.trim().to_string(),
            quoted,
        });
    }
    fields
}

fn field_u32(fields: &[Field], i: usize) -> Option<u32> {
    let f = fields.get(i)?;
    if f.quoted {
        return None;
    }
    f.text.parse().ok()
}

fn field_u8(fields: &[Field], i: usize) -> Option<u8> {
    u8::try_from(field_u32(fields, i)?).ok()
}

fn field_u16(fields: &[Field], i: usize) -> Option<u16> {
    u16::try_from(field_u32(fields, i)?).ok()
}

fn field_opt_string(fields: &[Field], i: usize) -> Option<String> {
    fields
        .get(i)
        .filter(|f| f.quoted || !f.text.is_empty())
        .map(|f| f.text.clone())
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The parameters of `+NAME: ...` if `line` starts with that prefix (case-insensitive).
fn params<'a>(line: &'a str, name: &str) -> Option<Vec<Field>> {
    let (found, rest) = split_prefixed(line.trim())?;
    if !found.eq_ignore_ascii_case(name) {
        return None;
    }
    let rest: &'a str = rest;
    Some(split_fields(rest))
}

/// The TP-Message-Reference the modem gave a sent SMS: `+CMGS: <mr>[,<scts>|<ackpdu>]`
/// (TS 27.005 §3.5.1).
pub fn parse_cmgs(line: &str) -> Option<u8> {
    field_u8(&params(line, "+CMGS")?, 0)
}

/// Signal quality from `+CSQ: <rssi>,<ber>` (TS 27.007 §8.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Csq {
    /// 0..=31, or 99 when not known.
    pub rssi: u8,
    /// Bit error rate class 0..=7, or 99 when not known.
    pub ber: u8,
}

impl Csq {
    /// Received power in dBm: 0 is -113 dBm or less, 31 is -51 dBm or more, 2 dBm per step;
    /// `None` for 99 (not known or not detectable).
    pub fn dbm(&self) -> Option<i16> {
        (self.rssi <= 31).then(|| -113 + 2 * i16::from(self.rssi))
    }
}

/// Parses `+CSQ: <rssi>,<ber>`.
pub fn parse_csq(line: &str) -> Option<Csq> {
    let f = params(line, "+CSQ")?;
    Some(Csq {
        rssi: field_u8(&f, 0)?,
        ber: field_u8(&f, 1)?,
    })
}

/// The answer to `AT+CREG?`: `+CREG: <n>,<stat>[,<lac>,<ci>[,<AcT>]]` (TS 27.007 §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CregStatus {
    /// Unsolicited reporting mode set by `AT+CREG=<n>`.
    pub n: u8,
    /// 0 not registered, 1 home, 2 searching, 3 denied, 4 unknown, 5 roaming.
    pub stat: u8,
    pub lac: Option<String>,
    pub ci: Option<String>,
}

/// Parses the read answer `+CREG: <n>,<stat>[,...]`. The unsolicited form is [`Urc::Creg`].
pub fn parse_creg(line: &str) -> Option<CregStatus> {
    let f = params(line, "+CREG")?;
    Some(CregStatus {
        n: field_u8(&f, 0)?,
        stat: field_u8(&f, 1)?,
        lac: field_opt_string(&f, 2),
        ci: field_opt_string(&f, 3),
    })
}

/// Whether a `+CREG` `<stat>` means the modem can send: registered home (1) or roaming (5).
pub fn creg_registered(stat: u8) -> bool {
    matches!(stat, 1 | 5)
}

/// SIM lock state from `+CPIN: <code>` (TS 27.007 §8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinState {
    Ready,
    SimPin,
    SimPuk,
    SimPin2,
    SimPuk2,
    PhSimPin,
    /// Any other code (`PH-NET PIN`...), verbatim.
    Other(String),
}

/// Parses `+CPIN: <code>`.
pub fn parse_cpin(line: &str) -> Option<PinState> {
    let f = params(line, "+CPIN")?;
    let code = f.first()?.text.as_str();
    Some(match code {
        "READY" => PinState::Ready,
        "SIM PIN" => PinState::SimPin,
        "SIM PUK" => PinState::SimPuk,
        "SIM PIN2" => PinState::SimPin2,
        "SIM PUK2" => PinState::SimPuk2,
        "PH-SIM PIN" => PinState::PhSimPin,
        "" => return None,
        other => PinState::Other(other.to_string()),
    })
}

/// The header line of a PDU-mode `+CMGR` answer: `+CMGR: <stat>,[<alpha>],<length>`
/// (TS 27.005 §3.4.3); the PDU follows on the next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmgrHeader {
    /// 0 received unread, 1 received read, 2 stored unsent, 3 stored sent.
    pub stat: u8,
    pub alpha: Option<String>,
    /// TPDU length in octets, SMSC address excluded.
    pub length: u16,
}

/// Parses a PDU-mode `+CMGR: <stat>,[<alpha>],<length>`.
pub fn parse_cmgr(line: &str) -> Option<CmgrHeader> {
    let f = params(line, "+CMGR")?;
    if f.len() != 3 {
        return None;
    }
    Some(CmgrHeader {
        stat: field_u8(&f, 0)?,
        alpha: field_opt_string(&f, 1),
        length: field_u16(&f, 2)?,
    })
}

/// One header line of a PDU-mode `+CMGL` listing: `+CMGL: <index>,<stat>,[<alpha>],<length>`
/// (TS 27.005 §3.4.2); the PDU follows on the next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmglHeader {
    pub index: u32,
    pub stat: u8,
    pub alpha: Option<String>,
    pub length: u16,
}

/// Parses a PDU-mode `+CMGL: <index>,<stat>,[<alpha>],<length>`.
pub fn parse_cmgl(line: &str) -> Option<CmglHeader> {
    let f = params(line, "+CMGL")?;
    if f.len() != 4 {
        return None;
    }
    Some(CmglHeader {
        index: field_u32(&f, 0)?,
        stat: field_u8(&f, 1)?,
        alpha: field_opt_string(&f, 2),
        length: field_u16(&f, 3)?,
    })
}

/// The operator from `+COPS: <mode>[,<format>,<oper>[,<AcT>]]` (TS 27.007 §7.3); `None` when
/// the modem is not registered (no `<oper>`).
pub fn parse_cops(line: &str) -> Option<String> {
    let f = params(line, "+COPS")?;
    field_u8(&f, 0)?;
    field_opt_string(&f, 2)
}

/// The SMSC address from `+CSCA: <sca>,<tosca>` (TS 27.005 §3.3.1).
pub fn parse_csca(line: &str) -> Option<String> {
    let f = params(line, "+CSCA")?;
    field_opt_string(&f, 0).filter(|s| !s.is_empty())
}

/// One storage's usage in `+CPMS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemUsage {
    /// Storage name in the read form (`"SM"`); `None` in the set form, which omits it.
    pub mem: Option<String>,
    pub used: u32,
    pub total: u32,
}

/// Parses `+CPMS: "SM",1,20,"SM",1,20,...` (read form) or `+CPMS: 1,20,1,20,...` (set form)
/// (TS 27.005 §3.2.2).
pub fn parse_cpms(line: &str) -> Option<Vec<MemUsage>> {
    let f = params(line, "+CPMS")?;
    let named = f.first()?.quoted;
    let step = if named { 3 } else { 2 };
    if f.is_empty() || f.len() % step != 0 {
        return None;
    }
    f.chunks(step)
        .map(|c| {
            let (mem, nums) = if named {
                (Some(c.first()?.text.clone()), c.get(1..)?)
            } else {
                (None, c)
            };
            Some(MemUsage {
                mem,
                used: field_u32(nums, 0)?,
                total: field_u32(nums, 1)?,
            })
        })
        .collect()
}

/// Whether a `+CMS ERROR` cause makes the message worth retrying (TS 27.005 §3.2.5).
///
/// The question asked is about the *message*, not the modem: a modem whose SIM is missing
/// (310) will fail every send, but the message itself is fine and must go out through another
/// modem or later, so such causes are temporary.
///
/// - 0..=127 are RP-Cause values from the network (TS 24.011 §8.2.5.4, Table 8.4).
///   Congestion-like causes are temporary: 38 network out of order, 41 temporary failure,
///   42 congestion, 47 resources unavailable, 98 message not compatible with the protocol
///   state, 111 protocol error, and 22 (memory capacity exceeded), 27 (destination out of
///   order), 28 (unidentified subscriber, i.e. our SIM not yet known to the network).
///   Causes about the destination or the subscription are permanent: 1 unassigned number,
///   8 operator determined barring, 10 call barred, 21 short message transfer rejected,
///   29 facility rejected, 30 unknown subscriber, 50 facility not subscribed, 69 facility not
///   implemented, 81 invalid transfer reference, 95..=97 malformed message, 99 information
///   element not implemented, 127 interworking unspecified. Unlisted values in the range are
///   treated as 111 (protocol error), as TS 24.011 §8.2.5.4 tells receivers to.
/// - 128..=255 are TP-Failure-Cause values (TS 23.040 §9.2.3.22): SC busy (0xC0), SC system
///   failure (0xC2), (U)SIM toolkit busy (0xD4), error in MS (0xD2), memory capacity exceeded
///   (0xD3), application-specific (0xE0..=0xFE) and unspecified (0xFF) are temporary; errors
///   about the TPDU itself (PID, DCS, command, unsupported TPDU), no SC subscription, invalid
///   or barred destination and "rejected: duplicate" (the SC already has it) are permanent.
/// - 300..=340 are ME and SIM errors: temporary for the message, except 304 and 305 (invalid
///   PDU or text parameter: the message is malformed and will be refused everywhere).
/// - 500 unknown error and 512.. manufacturer-specific causes are temporary: without knowing
///   better, the bounded retry schedule is safer than dropping the message.
pub fn classify_cms(code: u16) -> CmsClass {
    use CmsClass::{Permanent, Temporary};
    match code {
        0..=127 => match code {
            1 | 8 | 10 | 21 | 29 | 30 | 50 | 69 | 81 | 95..=97 | 99 | 127 => Permanent,
            _ => Temporary,
        },
        128..=255 => match code {
            0xc0 | 0xc2 | 0xd0..=0xd4 | 0xe0..=0xff => Temporary,
            _ => Permanent,
        },
        304 | 305 => Permanent,
        _ => Temporary,
    }
}

/// Whether a `+CMS ERROR` cause says this modem (or its SIM or subscription) cannot send right
/// now, so that the pool should rest it rather than blame the message.
pub fn cms_blames_modem(code: u16) -> bool {
    matches!(code, 8 | 10 | 28 | 29 | 50 | 0xc1 | 300..=303 | 310..=332 | 340)
}

/// The meaning of a `+CMS ERROR` cause (TS 27.005 §3.2.5, TS 24.011 Table 8.4,
/// TS 23.040 §9.2.3.22).
pub fn cms_text(code: u16) -> &'static str {
    match code {
        0..=127 => rp_cause_text(code),
        128..=255 => tp_failure_cause_text(code),
        _ => me_cms_text(code),
    }
}

/// RP-Cause values, TS 24.011 Table 8.4.
fn rp_cause_text(code: u16) -> &'static str {
    match code {
        1 => "unassigned (unallocated) number",
        8 => "operator determined barring",
        10 => "call barred",
        21 => "short message transfer rejected",
        22 => "memory capacity exceeded",
        27 => "destination out of order",
        28 => "unidentified subscriber",
        29 => "facility rejected",
        30 => "unknown subscriber",
        38 => "network out of order",
        41 => "temporary failure",
        42 => "congestion",
        47 => "resources unavailable, unspecified",
        50 => "requested facility not subscribed",
        69 => "requested facility not implemented",
        81 => "invalid short message transfer reference value",
        95 => "invalid message, unspecified",
        96 => "invalid mandatory information",
        97 => "message type non-existent or not implemented",
        98 => "message not compatible with short message protocol state",
        99 => "information element non-existent or not implemented",
        111 => "protocol error, unspecified",
        127 => "interworking, unspecified",
        _ => "network cause not listed in TS 24.011",
    }
}

/// TP-Failure-Cause values, TS 23.040 §9.2.3.22.
fn tp_failure_cause_text(code: u16) -> &'static str {
    match code {
        0x80 => "telematic interworking not supported",
        0x81 => "short message type 0 not supported",
        0x82 => "cannot replace short message",
        0x8f => "unspecified TP-PID error",
        0x90 => "data coding scheme (alphabet) not supported",
        0x91 => "message class not supported",
        0x9f => "unspecified TP-DCS error",
        0xa0 => "command cannot be actioned",
        0xa1 => "command unsupported",
        0xaf => "unspecified TP-Command error",
        0xb0 => "TPDU not supported",
        0xc0 => "SC busy",
        0xc1 => "no SC subscription",
        0xc2 => "SC system failure",
        0xc3 => "invalid SME address",
        0xc4 => "destination SME barred",
        0xc5 => "SM rejected: duplicate SM",
        0xc6 => "TP-VPF not supported",
        0xc7 => "TP-VP not supported",
        0xd0 => "(U)SIM SMS storage full",
        0xd1 => "no SMS storage capability in (U)SIM",
        0xd2 => "error in MS",
        0xd3 => "memory capacity exceeded",
        0xd4 => "(U)SIM application toolkit busy",
        0xd5 => "(U)SIM data download error",
        0xe0..=0xfe => "application-specific error",
        0xff => "unspecified error cause",
        _ => "TP-Failure-Cause reserved value",
    }
}

/// ME and SIM errors, TS 27.005 §3.2.5.
fn me_cms_text(code: u16) -> &'static str {
    match code {
        300 => "ME failure",
        301 => "SMS service of ME reserved",
        302 => "operation not allowed",
        303 => "operation not supported",
        304 => "invalid PDU mode parameter",
        305 => "invalid text mode parameter",
        310 => "(U)SIM not inserted",
        311 => "(U)SIM PIN required",
        312 => "PH-(U)SIM PIN required",
        313 => "(U)SIM failure",
        314 => "(U)SIM busy",
        315 => "(U)SIM wrong",
        316 => "(U)SIM PUK required",
        317 => "(U)SIM PIN2 required",
        318 => "(U)SIM PUK2 required",
        320 => "memory failure",
        321 => "invalid memory index",
        322 => "memory full",
        330 => "SMSC address unknown",
        331 => "no network service",
        332 => "network timeout",
        340 => "no +CNMA acknowledgement expected",
        500 => "unknown error",
        512.. => "manufacturer specific",
        _ => "reserved",
    }
}

/// The meaning of a `+CME ERROR` cause (TS 27.007 §9.2).
pub fn cme_text(code: u16) -> &'static str {
    match code {
        0 => "phone failure",
        1 => "no connection to phone",
        2 => "phone-adaptor link reserved",
        3 => "operation not allowed",
        4 => "operation not supported",
        5 => "PH-SIM PIN required",
        6 => "PH-FSIM PIN required",
        7 => "PH-FSIM PUK required",
        10 => "SIM not inserted",
        11 => "SIM PIN required",
        12 => "SIM PUK required",
        13 => "SIM failure",
        14 => "SIM busy",
        15 => "SIM wrong",
        16 => "incorrect password",
        17 => "SIM PIN2 required",
        18 => "SIM PUK2 required",
        20 => "memory full",
        21 => "invalid index",
        22 => "not found",
        23 => "memory failure",
        24 => "text string too long",
        25 => "invalid characters in text string",
        26 => "dial string too long",
        27 => "invalid characters in dial string",
        30 => "no network service",
        31 => "network timeout",
        32 => "network not allowed - emergency calls only",
        100 => "unknown",
        _ => "reserved or manufacturer specific",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a transcript: what the driver does, what the modem writes, what comes out.
    enum Step {
        Pending(Option<&'static str>),
        Feed(&'static [u8]),
        Expect(Vec<AtEvent>),
    }
    use Step::{Expect, Feed, Pending};

    fn resp(s: &str) -> AtEvent {
        AtEvent::Response(s.to_string())
    }
    fn fin(c: FinalCode) -> AtEvent {
        AtEvent::Final(c)
    }
    fn urc(u: Urc) -> AtEvent {
        AtEvent::Urc(u)
    }
    fn other(s: &str) -> AtEvent {
        AtEvent::Urc(Urc::Other(s.to_string()))
    }

    /// A real status report PDU as a Wavecom modem sends it after `+CDS: 25`:
    /// SMSC +33609001390, MR 0x0C, recipient +33612345678, delivered (TP-ST 0).
    const CDS_PDU: &str = "07913306091093F006 0C0B913316325476F8 42112110150040 42112110150540 00";

    fn cds_hex() -> String {
        CDS_PDU.replace(' ', "")
    }

    fn cds_bytes() -> Vec<u8> {
        from_hex(&cds_hex()).unwrap_or_default()
    }

    fn transcripts() -> Vec<(&'static str, Vec<Step>)> {
        vec![
            (
                "SIM800 power-up banner with NUL and 0xFF noise, nothing pending",
                vec![
                    Feed(b"\x00\xff\xff\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n"),
                    Feed(b"\r\nCall Ready\r\n\r\nSMS Ready\r\n"),
                    Expect(vec![
                        other("RDY"),
                        other("+CFUN: 1"),
                        other("+CPIN: READY"),
                        other("Call Ready"),
                        other("SMS Ready"),
                    ]),
                ],
            ),
            (
                "SIM800 echo on: ATE0 is echoed before OK",
                vec![
                    Pending(Some("ATE0")),
                    Feed(b"ATE0\r\r\nOK\r\n"),
                    Expect(vec![fin(FinalCode::Ok)]),
                ],
            ),
            (
                "smsd-style concatenated init line echoed",
                vec![
                    Pending(Some("ATE0+CMEE=1;+CREG=2")),
                    Feed(b"ATE0+CMEE=1;+CREG=2\r\r\nOK\r\n"),
                    Expect(vec![fin(FinalCode::Ok)]),
                ],
            ),
            (
                "SIM800 send with echo on, prompt split between '>' and ' ', PDU echoed back",
                vec![
                    Pending(Some("AT+CMGS=23")),
                    Feed(b"AT+CMGS=23\r\r\n>"),
                    Expect(vec![]),
                    Feed(b" "),
                    Expect(vec![AtEvent::Prompt]),
                    Feed(b"0011000B913316325476F80000AA0AE8329BFD4697D9EC37\x1a"),
                    Feed(b"\r\n+CMGS: 12\r\n\r\nOK\r\n"),
                    Expect(vec![resp("+CMGS: 12"), fin(FinalCode::Ok)]),
                ],
            ),
            (
                "Huawei E173 send with echo off and ^RSSI/^MODE noise around the prompt",
                vec![
                    Pending(Some("AT+CMGS=23")),
                    Feed(b"\r\n^RSSI:17\r\n\r\n> "),
                    Expect(vec![urc(Urc::Rssi(17)), AtEvent::Prompt]),
                    Feed(b"\r\n^MODE:5,4\r\n\r\n+CMGS: 5\r"),
                    Feed(b"\n\r\nOK\r\n"),
                    Expect(vec![
                        other("^MODE:5,4"),
                        resp("+CMGS: 5"),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "prompt sent as a bare '>' line",
                vec![
                    Pending(Some("AT+CMGS=23")),
                    Feed(b"\r\n>\r\n"),
                    Expect(vec![AtEvent::Prompt]),
                ],
            ),
            (
                "'> ' with no prompting command pending is not a prompt",
                vec![
                    Pending(Some("AT+CSQ")),
                    Feed(b"\r\n> \r\n+CSQ: 20,99\r\n\r\nOK\r\n"),
                    Expect(vec![resp("+CSQ: 20,99"), fin(FinalCode::Ok)]),
                ],
            ),
            (
                "Huawei ^BOOT and E3372 ^HCSQ between commands",
                vec![
                    Feed(b"\r\n^BOOT:24376210,0,0,0,72\r\n\r\n^HCSQ:\"LTE\",44,38,151,28\r\n"),
                    Expect(vec![urc(Urc::Boot), other("^HCSQ:\"LTE\",44,38,151,28")]),
                ],
            ),
            (
                "Wavecom +CDS split inside the header and inside CR LF",
                vec![
                    Feed(b"\r\n+CDS: 2"),
                    Feed(b"5\r"),
                    Feed(b"\n07913306091093F0060C0B913316325476F8"),
                    Feed(b"421121101500404211211015054000\r"),
                    Feed(b"\n"),
                    Expect(vec![urc(Urc::Cds { pdu: cds_bytes() })]),
                ],
            ),
            (
                "+CDS between AT+CMGS and its answer, after the prompt",
                vec![
                    Pending(Some("AT+CMGS=23")),
                    Feed(b"\r\n> "),
                    Feed(b"0011000B913316325476F80000AA0AE8329BFD4697D9EC37\x1a"),
                    Feed(b"\r\n+CDS: 25\r\n07913306091093F0060C0B913316325476F8"),
                    Feed(b"421121101500404211211015054000\r\n\r\n+CMGS: 13\r\n\r\nOK\r\n"),
                    Expect(vec![
                        AtEvent::Prompt,
                        urc(Urc::Cds { pdu: cds_bytes() }),
                        resp("+CMGS: 13"),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "+CDSI and +CMTI store notifications while AT+CSQ is pending",
                vec![
                    Pending(Some("AT+CSQ")),
                    Feed(b"\r\n+CDSI: \"SM\",3\r\n\r\n+CSQ: 20,99\r\n\r\n+CMTI: \"ME\",1\r\n"),
                    Feed(b"\r\nOK\r\n"),
                    Expect(vec![
                        urc(Urc::Cdsi {
                            mem: "SM".into(),
                            index: 3,
                        }),
                        resp("+CSQ: 20,99"),
                        urc(Urc::Cmti {
                            mem: "ME".into(),
                            index: 1,
                        }),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "PDU-mode +CMT with empty alpha",
                vec![
                    Feed(b"\r\n+CMT: ,24\r\n07913306091093F0040B913316325476F80000421121101500400"),
                    Feed(b"5C8329BFD06\r\n"),
                    Expect(vec![urc(Urc::Cmt {
                        pdu: from_hex(
                            "07913306091093F0040B913316325476F800004211211015004005C8329BFD06",
                        )
                        .unwrap_or_default(),
                    })]),
                ],
            ),
            (
                "text-mode +CMT keeps header and text",
                vec![
                    Feed(b"\r\n+CMT: \"+33612345678\",,\"24/11/21,10:00:00+04\"\r\nhello\r\n"),
                    Expect(vec![other(
                        "+CMT: \"+33612345678\",,\"24/11/21,10:00:00+04\"\nhello",
                    )]),
                ],
            ),
            (
                "+CDS header whose PDU line never comes",
                vec![
                    Pending(Some("AT+CSQ")),
                    Feed(b"\r\n+CDS: 25\r\n+CSQ: 9,0\r\nOK\r\n"),
                    Expect(vec![
                        other("+CDS: 25"),
                        resp("+CSQ: 9,0"),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "text-mode +CDS is a one-line URC",
                vec![
                    Feed(b"+CDS: 6,12,\"+33612345678\",145,\"24/11/21,10:00:00+04\",\"24/11/21,10:00:05+04\",0\r\n"),
                    Expect(vec![other(
                        "+CDS: 6,12,\"+33612345678\",145,\"24/11/21,10:00:00+04\",\"24/11/21,10:00:05+04\",0",
                    )]),
                ],
            ),
            (
                "AT+CREG? answer versus +CREG URCs arriving during it",
                vec![
                    Pending(Some("AT+CREG?")),
                    Feed(b"\r\n+CREG: 1\r\n\r\n+CREG: 5,\"1A2B\",\"0C3D\"\r\n"),
                    Feed(b"\r\n+CREG: 2,1,\"1A2B\",\"0C3D\"\r\n\r\nOK\r\n"),
                    Expect(vec![
                        urc(Urc::Creg { stat: 1 }),
                        urc(Urc::Creg { stat: 5 }),
                        resp("+CREG: 2,1,\"1A2B\",\"0C3D\""),
                        fin(FinalCode::Ok),
                    ]),
                    Feed(b"\r\n+CREG: 0,1\r\n+CREG: 0\r\n"),
                    Expect(vec![other("+CREG: 0,1"), urc(Urc::Creg { stat: 0 })]),
                ],
            ),
            (
                "+CPIN answers AT+CPIN? but is a URC around AT+CPIN=\"1234\"",
                vec![
                    Pending(Some("AT+CPIN?")),
                    Feed(b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n"),
                    Expect(vec![resp("+CPIN: SIM PIN"), fin(FinalCode::Ok)]),
                    Pending(Some("AT+CPIN=\"1234\"")),
                    Feed(b"\r\nOK\r\n\r\n+CPIN: READY\r\n"),
                    Expect(vec![fin(FinalCode::Ok), other("+CPIN: READY")]),
                ],
            ),
            (
                "Quectel EC25 +QIND during AT+CSQ",
                vec![
                    Pending(Some("AT+CSQ")),
                    Feed(b"\r\n+QIND: SMS DONE\r\n\r\n+CSQ: 20,99\r\n\r\nOK\r\n"),
                    Expect(vec![
                        other("+QIND: SMS DONE"),
                        resp("+CSQ: 20,99"),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "bare IMEI answer to AT+CGSN, echo on",
                vec![
                    Pending(Some("AT+CGSN")),
                    Feed(b"AT+CGSN\r\r\n867962041234567\r\n\r\nOK\r\n"),
                    Expect(vec![resp("867962041234567"), fin(FinalCode::Ok)]),
                ],
            ),
            (
                "ATI lines, with a known URC taken out",
                vec![
                    Pending(Some("ATI")),
                    Feed(b"\r\nQuectel\r\nEC25\r\n+CPIN: READY\r\nRevision: EC25EFAR06A06M4G\r\n\r\nOK\r\n"),
                    Expect(vec![
                        resp("Quectel"),
                        resp("EC25"),
                        other("+CPIN: READY"),
                        resp("Revision: EC25EFAR06A06M4G"),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "numeric and verbose CMS/CME errors",
                vec![
                    Pending(Some("AT+CMGS=23")),
                    Feed(b"\r\n+CMS ERROR: 304\r\n"),
                    Expect(vec![fin(FinalCode::CmsError(304))]),
                    Pending(Some("AT+CMGS=23")),
                    Feed(b"\r\n+CMS ERROR: SMSC address unknown\r\n"),
                    Expect(vec![fin(FinalCode::CmsErrorText(
                        "SMSC address unknown".into(),
                    ))]),
                    Pending(Some("AT+CIMI")),
                    Feed(b"\r\n+CME ERROR: SIM PIN required\r\n"),
                    Expect(vec![fin(FinalCode::CmeErrorText("SIM PIN required".into()))]),
                    Pending(Some("AT+CPIN=\"0000\"")),
                    Feed(b"\r\n+CME ERROR: 16\r\n"),
                    Expect(vec![fin(FinalCode::CmeError(16))]),
                ],
            ),
            (
                "Huawei COMMAND NOT SUPPORT",
                vec![
                    Pending(Some("AT+CNMI=2,1,0,2,0")),
                    Feed(b"\r\nCOMMAND NOT SUPPORT\r\n"),
                    Expect(vec![fin(FinalCode::Vendor("COMMAND NOT SUPPORT".into()))]),
                ],
            ),
            (
                "lone CR, lone LF and CR CR LF line ends",
                vec![
                    Pending(Some("AT+CSQ")),
                    Feed(b"+CSQ: 31,0\r\rOK\r"),
                    Expect(vec![resp("+CSQ: 31,0"), fin(FinalCode::Ok)]),
                    Pending(Some("AT")),
                    Feed(b"\nOK\n"),
                    Expect(vec![fin(FinalCode::Ok)]),
                ],
            ),
            (
                "NUL inside a line is dropped",
                vec![
                    Pending(Some("AT")),
                    Feed(b"\r\nO\x00K\r\n"),
                    Expect(vec![fin(FinalCode::Ok)]),
                ],
            ),
            (
                "invalid UTF-8 is decoded lossily",
                vec![
                    Pending(Some("AT+COPS?")),
                    Feed(b"\r\n+COPS: 0,0,\"Or\xe9nge\"\r\n\r\nOK\r\n"),
                    Expect(vec![
                        resp("+COPS: 0,0,\"Or\u{fffd}nge\""),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "unknown prefixed line with nothing pending, RING, +CRING",
                vec![
                    Feed(b"\r\n+XYZ: 1,2\r\n\r\nRING\r\n\r\n+CRING: VOICE\r\n+CIEV: 2,3\r\n"),
                    Expect(vec![
                        other("+XYZ: 1,2"),
                        urc(Urc::Ring),
                        urc(Urc::Ring),
                        other("+CIEV: 2,3"),
                    ]),
                ],
            ),
            (
                "PDU-mode CMGL listing with two entries",
                vec![
                    Pending(Some("AT+CMGL=4")),
                    Feed(b"\r\n+CMGL: 1,0,,25\r\n07913306091093F0060C0B913316325476F8421121101500404211211015054000\r\n"),
                    Feed(b"+CMGL: 2,1,,25\r\n07913306091093F0060C0B913316325476F8421121101500404211211015054000\r\n\r\nOK\r\n"),
                    Expect(vec![
                        resp("+CMGL: 1,0,,25"),
                        resp("07913306091093F0060C0B913316325476F8421121101500404211211015054000"),
                        resp("+CMGL: 2,1,,25"),
                        resp("07913306091093F0060C0B913316325476F8421121101500404211211015054000"),
                        fin(FinalCode::Ok),
                    ]),
                ],
            ),
            (
                "a final code clears the pending command: later lines are URCs",
                vec![
                    Pending(Some("AT+CGSN")),
                    Feed(b"\r\nOK\r\n\r\n867962041234567\r\n"),
                    Expect(vec![fin(FinalCode::Ok), other("867962041234567")]),
                ],
            ),
            (
                "ESC-cancelled send answers OK; the prompt may repeat",
                vec![
                    Pending(Some("AT+CMGS=10")),
                    Feed(b"\r\n> \r\n> "),
                    Expect(vec![AtEvent::Prompt, AtEvent::Prompt]),
                    Feed(b"\r\nOK\r\n"),
                    Expect(vec![fin(FinalCode::Ok)]),
                ],
            ),
        ]
    }

    /// Runs a transcript, feeding each chunk through `split` (which may cut it further).
    fn run(name: &str, steps: &[Step], split: &dyn Fn(&[u8]) -> Vec<Vec<u8>>) {
        let mut p = AtParser::new();
        for (i, step) in steps.iter().enumerate() {
            match step {
                Pending(cmd) => p.set_pending(*cmd),
                Feed(bytes) => {
                    for piece in split(bytes) {
                        p.feed(&piece);
                    }
                }
                Expect(want) => {
                    let got: Vec<AtEvent> = std::iter::from_fn(|| p.next_event()).collect();
                    assert_eq!(&got, want, "transcript {name:?}, step {i}");
                }
            }
        }
        assert_eq!(
            p.next_event(),
            None,
            "transcript {name:?}: events left over"
        );
    }

    #[test]
    fn transcripts_as_chunked() {
        for (name, steps) in transcripts() {
            run(name, &steps, &|b| vec![b.to_vec()]);
        }
    }

    #[test]
    fn transcripts_byte_by_byte() {
        for (name, steps) in transcripts() {
            run(name, &steps, &|b| b.iter().map(|x| vec![*x]).collect());
        }
    }

    #[test]
    fn transcripts_split_at_every_offset() {
        for (name, steps) in transcripts() {
            let longest = steps
                .iter()
                .map(|s| match s {
                    Feed(b) => b.len(),
                    _ => 0,
                })
                .max()
                .unwrap_or(0);
            for cut in 0..=longest {
                run(name, &steps, &|b| {
                    let (a, z) = b.split_at(cut.min(b.len()));
                    vec![a.to_vec(), z.to_vec()]
                });
            }
        }
    }

    #[test]
    fn overlong_line_is_capped_and_reported() {
        let mut p = AtParser::new();
        p.set_pending(Some("AT"));
        p.feed(&vec![b'A'; MAX_LINE * 3]);
        assert!(p.line.len() <= MAX_LINE);
        p.feed(b"\r\nOK\r\n");
        let got: Vec<AtEvent> = std::iter::from_fn(|| p.next_event()).collect();
        assert_eq!(got, vec![AtEvent::Overflow, fin(FinalCode::Ok)]);
    }

    #[test]
    fn line_of_exactly_max_len_is_kept() {
        let mut p = AtParser::new();
        let mut line = vec![b'7'; MAX_LINE];
        line.extend_from_slice(b"\r\n");
        p.feed(&line);
        assert_eq!(
            p.next_event(),
            Some(other(&"7".repeat(MAX_LINE))),
            "a line at the cap is not an overflow"
        );
    }

    /// Pseudo-random bytes drawn mostly from AT-ish material must never panic or grow the
    /// line buffer past the cap.
    #[test]
    fn random_input_never_panics() {
        let alphabet: &[&[u8]] = &[
            b"\r",
            b"\n",
            b"> ",
            b">",
            b"OK",
            b"+CDS: 25",
            b"+CMT: ,3",
            b"+CMGS: ",
            b"\"",
            b",",
            b"\x00",
            b"\xff",
            b"\xe9",
            b"\x1a",
            b"AT+CMGS=5",
            b"ERROR",
            b"+CMS ERROR: ",
            b"0791",
            b"+CREG: ",
            b"1",
            b"x",
            b"^RSSI:",
            b"+CPMS: ",
        ];
        let pendings = [
            None,
            Some("AT+CMGS=5"),
            Some("AT+CREG?"),
            Some("ATI"),
            Some("AT+"),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut p = AtParser::new();
            let pick = usize::try_from(next() % 5).unwrap_or(0);
            p.set_pending(pendings.get(pick).copied().flatten());
            for _ in 0..64 {
                let i = usize::try_from(next() % alphabet.len() as u64).unwrap_or(0);
                p.feed(alphabet.get(i).copied().unwrap_or(b""));
                if next() % 7 == 0 {
                    while p.next_event().is_some() {}
                }
            }
            assert!(p.line.len() <= MAX_LINE);
        }
    }

    #[test]
    fn extended_names_from_command_lines() {
        let cases: &[(&str, &[(&str, CmdKind)])] = &[
            ("AT", &[]),
            ("ATI", &[]),
            ("AT+CMGS=23", &[("+CMGS", CmdKind::Set)]),
            ("at+creg?", &[("+CREG", CmdKind::Read)]),
            ("AT+CNMI=?", &[("+CNMI", CmdKind::Test)]),
            ("AT+CGSN", &[("+CGSN", CmdKind::Exec)]),
            (
                "ATE0+CMEE=1;+CREG=2",
                &[("+CMEE", CmdKind::Set), ("+CREG", CmdKind::Set)],
            ),
            ("AT+CSCA=\"+33;+CMGS=1\",145", &[("+CSCA", CmdKind::Set)]),
            ("AT^SYSCFG=2,2,3FFFFFFF,1,2", &[("^SYSCFG", CmdKind::Set)]),
            ("garbage", &[]),
        ];
        for (cmd, want) in cases {
            let got = extended_names(cmd);
            let want: Vec<(String, CmdKind)> =
                want.iter().map(|(n, k)| (n.to_string(), *k)).collect();
            assert_eq!(got, want, "{cmd}");
        }
    }

    #[test]
    fn response_helpers() {
        assert_eq!(parse_cmgs("+CMGS: 12"), Some(12));
        assert_eq!(parse_cmgs("+CMGS: 255,\"24/11/21,10:00:00+04\""), Some(255));
        assert_eq!(parse_cmgs("+CMGS: 256"), None);
        assert_eq!(parse_cmgs("+CMGS:"), None);
        assert_eq!(parse_cmgs("+CSQ: 12,0"), None);

        assert_eq!(parse_csq("+CSQ: 20,99"), Some(Csq { rssi: 20, ber: 99 }));
        assert_eq!(parse_csq("+CSQ: 20,99").and_then(|c| c.dbm()), Some(-73));
        assert_eq!(parse_csq("+CSQ: 99,99").and_then(|c| c.dbm()), None);
        assert_eq!(parse_csq("+CSQ: 31"), None);

        assert_eq!(
            parse_creg("+CREG: 2,1,\"1A2B\",\"0C3D\""),
            Some(CregStatus {
                n: 2,
                stat: 1,
                lac: Some("1A2B".into()),
                ci: Some("0C3D".into())
            })
        );
        assert_eq!(
            parse_creg("+CREG: 0,5").map(|c| creg_registered(c.stat)),
            Some(true)
        );
        assert_eq!(parse_creg("+CREG: 1,\"1A2B\",\"0C3D\""), None);

        assert_eq!(parse_cpin("+CPIN: READY"), Some(PinState::Ready));
        assert_eq!(parse_cpin("+CPIN: SIM PIN"), Some(PinState::SimPin));
        assert_eq!(
            parse_cpin("+CPIN: PH-NET PIN"),
            Some(PinState::Other("PH-NET PIN".into()))
        );
        assert_eq!(parse_cpin("+CPIN:"), None);

        assert_eq!(
            parse_cmgr("+CMGR: 0,,25"),
            Some(CmgrHeader {
                stat: 0,
                alpha: None,
                length: 25
            })
        );
        assert_eq!(
            parse_cmgl("+CMGL: 3,1,\"Paul\",140"),
            Some(CmglHeader {
                index: 3,
                stat: 1,
                alpha: Some("Paul".into()),
                length: 140
            })
        );
        assert_eq!(parse_cmgl("+CMGL: 3,\"REC READ\",\"+336\",,\"date\""), None);

        assert_eq!(
            parse_cops("+COPS: 0,0,\"Orange F\",2"),
            Some("Orange F".into())
        );
        assert_eq!(parse_cops("+COPS: 0"), None);
        assert_eq!(
            parse_csca("+CSCA: \"+33609001390\",145"),
            Some("+33609001390".into())
        );
        assert_eq!(parse_csca("+CSCA: \"\",129"), None);

        assert_eq!(
            parse_cpms("+CPMS: \"SM\",2,20,\"SM\",2,20,\"SM\",2,20"),
            Some(vec![
                MemUsage {
                    mem: Some("SM".into()),
                    used: 2,
                    total: 20
                };
                3
            ])
        );
        assert_eq!(
            parse_cpms("+CPMS: 2,20,2,20"),
            Some(vec![
                MemUsage {
                    mem: None,
                    used: 2,
                    total: 20
                };
                2
            ])
        );
        assert_eq!(parse_cpms("+CPMS: 2,20,2"), None);
    }

    #[test]
    fn cms_classification() {
        use CmsClass::{Permanent, Temporary};
        let cases: &[(u16, CmsClass)] = &[
            (1, Permanent),
            (8, Permanent),
            (10, Permanent),
            (21, Permanent),
            (27, Temporary),
            (29, Permanent),
            (30, Permanent),
            (38, Temporary),
            (41, Temporary),
            (42, Temporary),
            (47, Temporary),
            (50, Permanent),
            (69, Permanent),
            (81, Permanent),
            (95, Permanent),
            (96, Permanent),
            (97, Permanent),
            (98, Temporary),
            (99, Permanent),
            (111, Temporary),
            (127, Permanent),
            (0x80, Permanent),
            (0xc0, Temporary),
            (0xc1, Permanent),
            (0xc3, Permanent),
            (0xc5, Permanent),
            (0xd4, Temporary),
            (0xff, Temporary),
            (300, Temporary),
            (302, Temporary),
            (304, Permanent),
            (305, Permanent),
            (310, Temporary),
            (322, Temporary),
            (330, Temporary),
            (331, Temporary),
            (332, Temporary),
            (500, Temporary),
            (515, Temporary),
        ];
        for (code, want) in cases {
            assert_eq!(
                classify_cms(*code),
                *want,
                "cause {code}: {}",
                cms_text(*code)
            );
        }
        assert!(cms_blames_modem(310));
        assert!(cms_blames_modem(331));
        assert!(!cms_blames_modem(1));
        assert!(!cms_blames_modem(304));
        assert_eq!(cms_text(38), "network out of order");
        assert_eq!(cms_text(304), "invalid PDU mode parameter");
        assert_eq!(cms_text(332), "network timeout");
        assert_eq!(cms_text(400), "reserved");
        assert_eq!(cme_text(16), "incorrect password");
    }
}
