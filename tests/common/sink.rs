//! A real SMTP server (Python's aiosmtpd) that receives the status replies a gateway sends, and
//! reads them back with Python's `email` package (a parser no one here wrote).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{free_port, python};

/// An SMTP server (aiosmtpd) writing every mail it receives to a JSON-lines file.
pub struct Sink {
    pub port: u16,
    file: std::path::PathBuf,
    child: Child,
}

impl Sink {
    pub fn start(dir: &Path) -> Sink {
        let port = free_port();
        let file = dir.join("replies.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/smtp_sink.py");
        // Debian's python3 has python3-aiosmtpd; another python3 first in PATH may not.
        let python = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .args(["-c", "import aiosmtpd"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("a python3 with aiosmtpd (scripts/test installs python3-aiosmtpd)");
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start smtp_sink.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "smtp_sink.py did not start");
        Sink { port, file, child }
    }

    /// Holds the next mails' DATA unanswered until [`release`](Self::release).
    pub fn hold(&self) {
        std::fs::write(self.file.with_extension("jsonl.hold"), "").unwrap();
    }

    /// Whether a mail's DATA has been held.
    pub fn held(&self) -> bool {
        self.file.with_extension("jsonl.held").exists()
    }

    /// Answers the mails held, and those that follow, at once.
    pub fn release(&self) {
        std::fs::remove_file(self.file.with_extension("jsonl.hold")).unwrap();
    }

    /// Every reply received so far, as Python's `email` package reads it.
    pub fn replies(&self) -> Vec<Value> {
        let out = python("dsn_parse.py", &[self.file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "dsn_parse.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(Value::Array(v)) => v,
            other => panic!("dsn_parse.py printed {other:?}"),
        }
    }

    /// Replies whose one per-recipient block names `address`.
    pub fn about(&self, address: &str) -> Vec<Value> {
        self.replies()
            .into_iter()
            .filter(|r| {
                r["recipients"].as_array().is_some_and(|b| {
                    b.iter()
                        .any(|b| final_recipient(b) == format!("rfc822;{address}"))
                })
            })
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn final_recipient(block: &Value) -> String {
    block["final_recipient"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
