//! The simulated modem seen the way the gateway (or gammu, or smsd) sees a real one: a
//! serial device opened by path, AT commands written, answers read byte by byte.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use mail2sms::modem::at::{AtEvent, AtParser, FinalCode, Urc, parse_cmgs};
use mail2sms::modem::pdu::{self, SubmitOptions, Tpdu, encode_submit};
use mail2sms::modem::sim::{ReportConfig, SentSms, SimConfig, spawn};
use mail2sms::sms::segment;
use nix::fcntl::OFlag;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A serial port opened like a driver opens one: read-write, not as controlling terminal,
/// without blocking (so a silent modem cannot hang the test).
struct Port {
    file: File,
}

impl Port {
    fn open(path: &Path) -> std::io::Result<Port> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_flags())
            .open(path)?;
        Ok(Port { file })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }

    /// Reads until `done` holds for what was read, or `timeout` passes.
    async fn read_until(&mut self, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !done(&got) && start.elapsed() < timeout {
            match self.file.read(&mut byte) {
                Ok(1) => got.push(byte[0]),
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(_) => break,
            }
        }
        got
    }

    /// Sends a command line and returns everything up to its final result code.
    async fn command(&mut self, line: &str) -> String {
        self.write(format!("{line}\r").as_bytes())
            .unwrap_or_else(|e| panic!("write {line}: {e}"));
        self.read_final().await
    }

    /// Reads up to a final result code.
    async fn read_final(&mut self) -> String {
        let got = self
            .read_until(TIMEOUT, |b| {
                b.ends_with(b"OK\r\n") || b.ends_with(b"ERROR\r\n") || has_error_code(b)
            })
            .await;
        String::from_utf8_lossy(&got).into_owned()
    }
}

fn has_error_code(b: &[u8]) -> bool {
    let s = String::from_utf8_lossy(b);
    s.ends_with("\r\n") && (s.contains("+CMS ERROR:") || s.contains("+CME ERROR:"))
}

/// Non-blocking, and never the test's controlling terminal.
fn libc_flags() -> i32 {
    (OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits()
}

fn quick_config() -> SimConfig {
    let mut cfg = SimConfig::numbered(0);
    cfg.latency_ms = 2;
    cfg.cmgs_latency_ms = 50;
    cfg.report = ReportConfig {
        delay_ms: 100,
        ..ReportConfig::default()
    };
    cfg
}

fn events(parser: &mut AtParser) -> Vec<AtEvent> {
    std::iter::from_fn(|| parser.next_event()).collect()
}

fn read_records(path: &Path) -> Vec<SentSms> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn send_through_the_pty_and_get_a_status_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("modem0");
    let record = dir.path().join("sent.jsonl");
    let cfg = quick_config();
    let imsi = cfg.imsi.clone();
    let modem = spawn(cfg, link.clone(), Some(record.clone()))
        .await
        .expect("spawn the simulated modem");
    assert!(
        std::fs::read_link(&link).is_ok_and(|t| t.starts_with("/dev/pts")),
        "the link points at a pty"
    );

    let mut port = Port::open(&link).expect("open the modem like a serial port");
    assert_eq!(
        port.command("ATE0").await,
        "ATE0\r\r\nOK\r\n",
        "echo is on at power-on"
    );
    assert_eq!(port.command("AT+CMEE=1").await, "\r\nOK\r\n");
    assert_eq!(port.command("AT+CMGF=0").await, "\r\nOK\r\n");
    assert_eq!(port.command("AT+CNMI=2,1,0,1,0").await, "\r\nOK\r\n");

    let text = "Bonjour ! Rendez-vous à 18h, quai n°3 {ok}";
    let opts = SubmitOptions {
        status_report: true,
        ..SubmitOptions::default()
    };
    let pdus = encode_submit("+33612345678", &segment(text, None), &opts).expect("encode");
    let pdu = pdus.first().expect("one part");

    let mut parser = AtParser::new();
    let cmd = format!("AT+CMGS={}", pdu.tpdu_len);
    parser.set_pending(Some(&cmd));
    port.write(format!("{cmd}\r").as_bytes())
        .expect("write AT+CMGS");
    // The prompt has no line end: wait for it byte by byte.
    let prompt = port.read_until(TIMEOUT, |b| b.ends_with(b"> ")).await;
    assert_eq!(prompt, b"\r\n> ");
    parser.feed(&prompt);
    assert_eq!(events(&mut parser), vec![AtEvent::Prompt]);

    port.write(format!("{}\x1a", pdu.hex()).as_bytes())
        .expect("write the PDU");
    let answer = port.read_until(TIMEOUT, |b| b.ends_with(b"OK\r\n")).await;
    parser.feed(&answer);
    let got = events(&mut parser);
    assert_eq!(
        got,
        vec![
            AtEvent::Response("+CMGS: 0".to_string()),
            AtEvent::Final(FinalCode::Ok)
        ]
    );
    let mr = match got.first() {
        Some(AtEvent::Response(line)) => parse_cmgs(line),
        _ => None,
    };
    assert_eq!(mr, Some(0));

    // The record is on disk as soon as the answer is out.
    let records = read_records(&record);
    assert_eq!(records.len(), 1);
    let r = records.first().expect("a record");
    assert_eq!(r.modem, "modem0");
    assert_eq!(r.imsi, imsi);
    assert_eq!(r.dest, "+33612345678");
    assert_eq!(r.text, text);
    assert_eq!(r.mr, 0);
    assert!(r.status_report);
    assert_eq!(r.concat, None);
    assert_eq!(r.pdu.as_deref(), Some(pdu.hex().as_str()));
    assert_eq!(modem.sent(), records);

    // The status report follows as +CDS (AT+CNMI ds=1).
    let cds = port
        .read_until(TIMEOUT, |b| {
            let s = String::from_utf8_lossy(b);
            s.contains("+CDS:") && s.ends_with("\r\n") && s.matches("\r\n").count() >= 3
        })
        .await;
    parser.feed(&cds);
    let report = events(&mut parser).into_iter().find_map(|e| match e {
        AtEvent::Urc(Urc::Cds { pdu }) => pdu::decode(&pdu, true).ok(),
        _ => None,
    });
    match report {
        Some(Tpdu::StatusReport(sr)) => {
            assert_eq!(sr.message_ref, 0);
            assert_eq!(sr.recipient, "+33612345678");
            assert_eq!(sr.status, 0);
        }
        other => panic!("expected a status report, got {other:?}"),
    }
    assert_eq!(modem.counters().accepted, 1);
    assert_eq!(modem.counters().reports, 1);
    modem.shutdown().await.expect("shutdown");
    assert!(!link.exists(), "shutdown removes the link");
}

#[tokio::test]
async fn unplug_and_replug_behind_the_same_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("modem0");
    let modem = spawn(quick_config(), link.clone(), None)
        .await
        .expect("spawn");
    let mut port = Port::open(&link).expect("open");
    assert_eq!(port.command("ATE0").await, "ATE0\r\r\nOK\r\n");

    modem.unplug().await.expect("unplug");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link is gone"
    );
    assert!(!modem.status().plugged);
    // The old descriptor is dead, as after pulling a USB modem: nothing answers.
    let _ = port.write(b"AT\r");
    let silence = port
        .read_until(Duration::from_millis(300), |b| !b.is_empty())
        .await;
    assert!(silence.is_empty(), "an unplugged modem said {silence:?}");
    assert!(Port::open(&link).is_err());

    modem.replug().await.expect("replug");
    assert!(modem.status().plugged);
    let mut port = Port::open(&link).expect("open after replug");
    // Power-cycled: echo is back on.
    assert_eq!(port.command("AT").await, "AT\r\r\nOK\r\n");

    // Replugging while plugged power-cycles too.
    modem.replug().await.expect("second replug");
    let mut port = Port::open(&link).expect("open after the second replug");
    assert_eq!(port.command("AT").await, "AT\r\r\nOK\r\n");
}

#[tokio::test]
async fn a_client_may_close_and_reopen_the_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("modem0");
    let _modem = spawn(quick_config(), link.clone(), None)
        .await
        .expect("spawn");
    for _ in 0..3 {
        let mut port = Port::open(&link).expect("open");
        assert_eq!(port.command("AT").await, "AT\r\r\nOK\r\n");
        drop(port);
    }
}

#[tokio::test]
async fn hang_then_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("modem0");
    let modem = spawn(quick_config(), link.clone(), None)
        .await
        .expect("spawn");
    let mut port = Port::open(&link).expect("open");
    assert_eq!(port.command("ATE0").await, "ATE0\r\r\nOK\r\n");
    modem.hang().await.expect("hang");
    port.write(b"AT\r").expect("write");
    let silence = port
        .read_until(Duration::from_millis(300), |b| !b.is_empty())
        .await;
    assert!(silence.is_empty());
    modem.resume().await.expect("resume");
    assert_eq!(port.command("AT").await, "\r\nOK\r\n");
    modem.urc("RING").await.expect("urc");
    let ring = port.read_until(TIMEOUT, |b| b.ends_with(b"RING\r\n")).await;
    assert_eq!(ring, b"\r\nRING\r\n");
}

#[tokio::test]
async fn control_socket_injects_faults() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("modem0");
    let socket = dir.path().join("control.sock");
    let modem = spawn(quick_config(), link.clone(), None)
        .await
        .expect("spawn");
    let _server =
        mail2sms::modem::sim::control::serve(&socket, vec![modem.clone()]).expect("control socket");

    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    let mut ask = async |req: &str| -> serde_json::Value {
        wr.write_all(format!("{req}\n").as_bytes())
            .await
            .expect("send request");
        let line = lines.next_line().await.expect("answer").unwrap_or_default();
        serde_json::from_str(&line).unwrap_or_default()
    };

    let ok = ask(r#"{"modem":"modem0","cmd":"fail_next","code":38,"count":1}"#).await;
    assert_eq!(ok, serde_json::json!({"ok": true}));
    let bad = ask(r#"{"cmd":"explode"}"#).await;
    assert_eq!(bad.get("ok"), Some(&serde_json::json!(false)));
    let unknown = ask(r#"{"modem":"modem9","cmd":"hang"}"#).await;
    assert!(
        unknown
            .get("error")
            .and_then(|e| e.as_str())
            .is_some_and(|e| e.contains("modem9"))
    );

    let mut port = Port::open(&link).expect("open");
    port.command("ATE0+CMEE=1").await;
    let opts = SubmitOptions::default();
    let pdus = encode_submit("+33612345678", &segment("retry", None), &opts).expect("encode");
    let pdu = pdus.first().expect("one part");
    for want in ["\r\n+CMS ERROR: 38\r\n", "\r\n+CMGS: 0\r\n\r\nOK\r\n"] {
        port.write(format!("AT+CMGS={}\r", pdu.tpdu_len).as_bytes())
            .expect("write");
        port.read_until(TIMEOUT, |b| b.ends_with(b"> ")).await;
        port.write(format!("{}\x1a", pdu.hex()).as_bytes())
            .expect("write the PDU");
        assert_eq!(port.read_final().await, want);
    }

    let status = ask(r#"{"cmd":"status"}"#).await;
    let counters = &status["modems"][0]["counters"];
    assert_eq!(counters["injected_errors"], 1);
    assert_eq!(counters["accepted"], 1);

    let unplugged = ask(r#"{"cmd":"unplug"}"#).await;
    assert_eq!(unplugged, serde_json::json!({"ok": true}));
    assert!(!modem.status().plugged);
}
