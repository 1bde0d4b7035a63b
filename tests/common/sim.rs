//! A `mail2sms modem-sim` process for tests that drive simulated modems from outside: the
//! gateway, gammu, smsd. Its record file is the ground truth of what the modems accepted.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mail2sms::modem::sim::SentSms;
use serde_json::{Value, json};

/// A `mail2sms modem-sim` process: N modems behind symlinks in `dir`, a record file and a
/// control socket.
pub struct SimProcess {
    pub tmp: tempfile::TempDir,
    child: Option<Child>,
    dir: PathBuf,
    record: PathBuf,
    control: PathBuf,
    count: u32,
}

impl SimProcess {
    pub fn start(count: u32, args: &[&str]) -> SimProcess {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let record = tmp.path().join("sent.jsonl");
        let control = tmp.path().join("control.sock");
        let log = std::fs::File::create(tmp.path().join("sim.log")).unwrap();
        let child = Command::new(super::BIN)
            .arg("modem-sim")
            .args(["--count", &count.to_string()])
            .arg("--dir")
            .arg(&dir)
            .arg("--record")
            .arg(&record)
            .arg("--control")
            .arg(&control)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mail2sms modem-sim");
        let sim = SimProcess {
            tmp,
            child: Some(child),
            dir,
            record,
            control,
            count,
        };
        wait_until("the simulated modems", Duration::from_secs(20), || {
            sim.control.exists() && (0..count).all(|n| sim.port(n).exists())
        });
        sim
    }

    pub fn port(&self, n: u32) -> PathBuf {
        self.dir.join(format!("modem{n}"))
    }

    /// One request on the control socket; fails the test unless it answers `ok`.
    pub fn control(&self, request: Value) -> Value {
        let mut s = UnixStream::connect(&self.control).expect("control socket");
        writeln!(s, "{request}").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line).expect("control answers JSON");
        assert_eq!(answer["ok"], true, "{request} -> {answer}");
        answer
    }

    /// The simulator's own counters of modem `n`.
    pub fn counters(&self, n: u32) -> Value {
        let a = self.control(json!({"cmd": "status", "modem": format!("modem{n}")}));
        a["modems"][0]["counters"].clone()
    }

    /// Every SMS the simulated modems accepted so far.
    pub fn records(&self) -> Vec<SentSms> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record line"))
            .collect()
    }

    /// `[[modem]]` tables for the gateway, one per simulated modem, with short timeouts.
    pub fn modem_config(&self, send_timeout_secs: u32) -> String {
        (0..self.count)
            .map(|n| {
                format!(
                    "[[modem]]\nname = \"modem{n}\"\nport = \"{}\"\ncommand_timeout_secs = 2\n\
                     send_timeout_secs = {send_timeout_secs}\nhealth_interval_secs = 2\n\
                     max_failures = 3\nquarantine_secs = 3\n",
                    self.port(n).display()
                )
            })
            .collect()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `done` every 50 ms; fails the test after `within`.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not after {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
