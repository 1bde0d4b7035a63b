//! The simulated modem driven by modem clients no one here wrote: gammu and smstools3's
//! `smsd`, both from Debian. They were written against real hardware, so if they identify
//! the simulator, unlock its SIM and send through it, the simulator behaves like a modem and
//! not just like our driver expects. What they sent is checked by decoding the PDUs the
//! simulator recorded.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::sim::{SimProcess, wait_until};
use mail2sms::modem::pdu::{self, Submit, Tpdu};
use mail2sms::modem::sim::{SentSms, SimConfig};

/// The SMS-SUBMIT of a record, decoded from its PDU.
fn decode(r: &SentSms) -> Submit {
    let hex = r.pdu.as_deref().expect("sent in PDU mode");
    let bytes = pdu::from_hex(hex).expect("hex");
    match pdu::decode(&bytes, true) {
        Ok(Tpdu::Submit(s)) => s,
        other => panic!("not an SMS-SUBMIT: {other:?} from {hex}"),
    }
}

/// The texts of the records, joined by concatenation reference and ordered by sequence.
fn messages(records: &[SentSms]) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut groups: BTreeMap<u16, Vec<(u8, u8, String, String)>> = BTreeMap::new();
    for r in records {
        let s = decode(r);
        match s.udh.as_ref().and_then(|u| u.concat) {
            None => out.push((s.dest, s.text, 1)),
            Some(c) => groups
                .entry(c.reference)
                .or_default()
                .push((c.seq, c.total, s.dest, s.text)),
        }
    }
    for (_, mut parts) in groups {
        parts.sort_by_key(|p| p.0);
        let total = parts[0].1;
        let seqs: Vec<u8> = parts.iter().map(|p| p.0).collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "each part once");
        let text: String = parts.iter().map(|p| p.3.as_str()).collect();
        out.push((parts[0].2.clone(), text, parts.len()));
    }
    out
}

struct Gammu {
    rc: std::path::PathBuf,
}

impl Gammu {
    fn new(sim: &SimProcess) -> Gammu {
        let rc = sim.tmp.path().join("gammurc");
        std::fs::write(
            &rc,
            format!(
                "[gammu]\ndevice = {}\nconnection = at\nlogfile = {}\nlogformat = textall\n",
                sim.port(0).display(),
                sim.tmp.path().join("gammu.log").display()
            ),
        )
        .unwrap();
        Gammu { rc }
    }

    fn run(&self, args: &[&str]) -> Output {
        common::run(
            Command::new("timeout")
                .args(["60", "gammu", "-c"])
                .arg(&self.rc)
                .args(args),
        )
    }

    /// Runs gammu, expecting success; returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "gammu {args:?}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// The TP-MR values gammu reports ("message reference=N").
fn references(gammu_output: &str) -> Vec<u8> {
    gammu_output
        .split("message reference=")
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .collect()
}

#[test]
fn gammu_identifies_the_modem_and_its_sim() {
    let sim = SimProcess::start(1, &["--latency-ms", "2", "--cmgs-latency-ms", "50"]);
    let gammu = Gammu::new(&sim);
    let id = gammu.ok(&["identify"]);
    let cfg = SimConfig::numbered(0);
    let field = |name: &str| {
        id.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {id}"))
    };
    assert_eq!(field("IMEI"), cfg.imei);
    assert_eq!(field("SIM IMSI"), cfg.imsi);
    assert_eq!(field("Manufacturer"), cfg.manufacturer);
    assert!(field("Model").contains(&cfg.model), "{id}");
    // Signal, network and packet registration, operator in both forms, message memory.
    let monitor = gammu.ok(&["monitor", "1"]);
    for want in [
        "Signal strength      : -73 dBm",
        "Network state        : home network",
        "001 01 (TEST",
        "LAC 1A2B, CID 0C3D",
        "\"Test PLMN 1-1\"",
        "GPRS                 : attached",
        "0 used, 0 unread, 20 locations",
    ] {
        assert!(monitor.contains(want), "{want:?} not in:\n{monitor}");
    }
}

#[test]
fn gammu_sends_single_and_multipart_messages() {
    let sim = SimProcess::start(1, &["--latency-ms", "2", "--cmgs-latency-ms", "50"]);
    let gammu = Gammu::new(&sim);

    let single = "Hello from gammu: {braces} [brackets] ~tilde~ 5€";
    let out = gammu.ok(&["sendsms", "TEXT", "+33612345678", "-text", single]);
    assert_eq!(references(&out), [0], "{out}");

    let long = "Gammu splits this one: ".to_string() + &"0123456789".repeat(30);
    let out = gammu.ok(&[
        "sendsms",
        "TEXT",
        "+33612345679",
        "-len",
        "400",
        "-text",
        &long,
    ]);
    assert_eq!(references(&out), [1, 2, 3], "{out}");

    let cyrillic = "Длинное сообщение в UCS-2, ".repeat(4);
    let out = gammu.ok(&[
        "sendsms",
        "TEXT",
        "+447911123456",
        "-unicode",
        "-len",
        "400",
        "-text",
        &cyrillic,
    ]);
    assert_eq!(references(&out).len(), 2, "{out}");

    let records = sim.records();
    assert_eq!(records.len(), 6);
    let got = messages(&records);
    let find = |dest: &str| {
        got.iter()
            .find(|m| m.0 == dest)
            .unwrap_or_else(|| panic!("nothing to {dest}: {got:?}"))
    };
    assert_eq!(find("+33612345678").1, single);
    assert_eq!(find("+33612345679").1, long);
    assert_eq!(find("+33612345679").2, 3);
    assert_eq!(find("+447911123456").1, cyrillic);
    assert_eq!(find("+447911123456").2, 2);
    for r in &records {
        let s = decode(r);
        // gammu chooses the alphabet: GSM 7-bit, or UCS-2 when asked.
        let ucs2 = r.dest == "+447911123456";
        assert_eq!(s.dcs & 0x0c, if ucs2 { 0x08 } else { 0x00 }, "{r:?}");
    }
    let c = sim.counters(0);
    assert_eq!(c["accepted"], 6, "{c}");
    assert_eq!(c["rejected"], 0, "{c}");
}

#[test]
fn gammu_unlocks_the_sim_with_its_pin() {
    let sim = SimProcess::start(
        1,
        &[
            "--latency-ms",
            "2",
            "--cmgs-latency-ms",
            "50",
            "--pin",
            "2468",
        ],
    );
    let gammu = Gammu::new(&sim);
    let before = gammu.ok(&["getsecuritystatus"]);
    assert!(before.contains("PIN"), "{before}");
    // A wrong PIN is refused and costs one of the three tries.
    let wrong = gammu.run(&["entersecuritycode", "PIN", "1111"]);
    assert!(!wrong.status.success(), "a wrong PIN was taken");
    gammu.ok(&["entersecuritycode", "PIN", "2468"]);
    let after = gammu.ok(&["getsecuritystatus"]);
    assert!(after.contains("Nothing to enter"), "{after}");
    let id = gammu.ok(&["identify"]);
    assert!(id.contains(&SimConfig::numbered(0).imsi), "{id}");
    let out = gammu.ok(&["sendsms", "TEXT", "+33612345678", "-text", "unlocked"]);
    assert_eq!(references(&out), [0], "{out}");
    assert_eq!(decode(&sim.records()[0]).text, "unlocked");
}

/// smstools3's `smsd` with its own configuration and spool directories, in its own process
/// group so that it and the modem process it forks are stopped together.
struct Smsd {
    child: std::process::Child,
}

impl Smsd {
    fn start(sim: &SimProcess, dir: &Path, pin: &str) -> Smsd {
        for d in ["outgoing", "checked", "failed", "sent", "incoming"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let conf = dir.join("smsd.conf");
        std::fs::write(
            &conf,
            format!(
                "devices = GSM1\n\
                 outgoing = {d}/outgoing\nchecked = {d}/checked\nfailed = {d}/failed\n\
                 sent = {d}/sent\nincoming = {d}/incoming\n\
                 logfile = {d}/smsd.log\nloglevel = 7\n\
                 infofile = {d}/smsd.working\npidfile = {d}/smsd.pid\n\
                 delaytime = 1\ndelaytime_mainprocess = 1\n\n\
                 [GSM1]\ndevice = {port}\nincoming = no\nbaudrate = 115200\npin = {pin}\n",
                d = dir.display(),
                port = sim.port(0).display(),
            ),
        )
        .unwrap();
        // smsd switches to the user and group it is given; give it the ones it runs as.
        let id = |flag: &str| {
            let out = common::run(Command::new("id").arg(flag));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let log = std::fs::File::create(dir.join("smsd.out")).unwrap();
        // Debian puts it in /usr/sbin, which is not on every user's PATH.
        let smsd = ["/usr/sbin/smsd", "/usr/bin/smsd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("smsd");
        let child = Command::new(smsd)
            .arg("-t")
            .arg(format!("-c{}", conf.display()))
            .arg(format!("-u{}", id("-un")))
            .arg(format!("-g{}", id("-gn")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("smsd (Debian package smstools) must be installed; scripts/test installs it");
        Smsd { child }
    }
}

impl Drop for Smsd {
    fn drop(&mut self) {
        // The whole group: smsd forks a process per modem.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever did not stop on SIGTERM (normally nothing: "no such process").
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn smsd_sends_from_its_spool_through_the_simulated_modem() {
    let sim = SimProcess::start(
        1,
        &[
            "--latency-ms",
            "2",
            "--cmgs-latency-ms",
            "50",
            "--pin",
            "1357",
        ],
    );
    let dir = sim.tmp.path().join("smsd");
    let smsd = Smsd::start(&sim, &dir, "1357");

    // Only characters of the GSM default alphabet: how smsd maps the others (ç to Ç, û to
    // u) is its own business.
    let short = "Hello from smsd: 100% sure, see you at the café @ 18h30!";
    let long = "smsd splits long messages into parts with a concatenation header. ".repeat(4);
    // smstools3's message file format: headers, an empty line, the text.
    std::fs::write(
        dir.join("outgoing/short"),
        format!("To: 33612345678\nAlphabet: UTF-8\n\n{short}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("outgoing/long"),
        format!("To: 33612345679\n\n{}", long.trim_end()),
    )
    .unwrap();

    wait_until(
        "smsd moves both files to sent/",
        Duration::from_secs(90),
        || dir.join("sent/short").exists() && dir.join("sent/long").exists(),
    );
    let records = sim.records();
    let got = messages(&records);
    let find = |dest: &str| {
        got.iter()
            .find(|m| m.0 == dest)
            .unwrap_or_else(|| panic!("nothing to {dest}: {got:?}"))
            .clone()
    };
    assert_eq!(find("+33612345678").1, short);
    assert_eq!(find("+33612345679").1, long.trim_end());
    assert!(find("+33612345679").2 >= 2, "{got:?}");
    // smsd logs the reference the modem answered, and notes the identity it read from the
    // modem in the sent file.
    let mr = records
        .iter()
        .find(|r| r.dest == "+33612345678")
        .map(|r| r.mr)
        .unwrap();
    let log = std::fs::read_to_string(dir.join("smsd.log")).unwrap_or_default();
    assert!(log.contains("AT+CPIN=\"1357\""), "smsd gave no PIN: {log}");
    assert!(
        log.contains(&format!("SMS sent, Message_id: {mr}, To: 33612345678")),
        "{log}"
    );
    let sent = std::fs::read_to_string(dir.join("sent/short")).unwrap();
    let cfg = SimConfig::numbered(0);
    assert!(sent.contains(&format!("IMSI: {}", cfg.imsi)), "{sent}");
    assert!(sent.contains(&format!("IMEI: {}", cfg.imei)), "{sent}");
    assert!(
        std::fs::read_dir(dir.join("failed"))
            .unwrap()
            .next()
            .is_none()
    );
    drop(smsd);
}
