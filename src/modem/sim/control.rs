//! The control socket: one JSON object per line in, one per line out, over a Unix socket, so
//! that tests written in any language (and a person with `socat`) can inject faults into
//! running simulated modems.
//!
//! A request is a [`SimOp`] plus an optional `"modem"` naming its target; without it the
//! command applies to every modem:
//!
//! ```text
//! {"modem":"modem1","cmd":"unplug"}
//! {"cmd":"error_rate","modem":"modem2","code":38,"rate":0.3}
//! {"cmd":"report","mode":"cdsi","status":65,"delay_ms":2000}
//! {"cmd":"status"}
//! ```
//!
//! Answers are `{"ok":true}`, `{"ok":true,"modems":[...]}` for `status`, or
//! `{"ok":false,"error":"..."}`.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::pty::{SimHandle, SimOp};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// What a control request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlOp {
    /// Apply a fault or action.
    Sim(SimOp),
    /// Report every targeted modem's status and counters.
    Status,
}

/// One parsed request line.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    /// Target modem by name; `None` targets all.
    pub modem: Option<String>,
    pub op: ControlOp,
}

/// Why a request line was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the request is not valid JSON: {0}")]
    Json(String),
    #[error("the request must be a JSON object with a \"cmd\" field")]
    NotAnObject,
    #[error("\"modem\" must be a string naming a modem")]
    BadModem,
    #[error("invalid command: {0}")]
    Command(String),
    #[error("no modem is named {0:?}")]
    UnknownModem(String),
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<ControlRequest, ControlError> {
    let value: Value = serde_json::from_str(line).map_err(|e| ControlError::Json(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(ControlError::NotAnObject);
    };
    let modem = match map.remove("modem") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(ControlError::BadModem),
    };
    if map.get("cmd").and_then(Value::as_str) == Some("status") {
        map.remove("cmd");
        if let Some(extra) = map.keys().next() {
            return Err(ControlError::Command(format!(
                "unknown field `{extra}` for `status`"
            )));
        }
        return Ok(ControlRequest {
            modem,
            op: ControlOp::Status,
        });
    }
    if !map.contains_key("cmd") {
        return Err(ControlError::NotAnObject);
    }
    let op: SimOp = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| ControlError::Command(e.to_string()))?;
    // serde ignores `deny_unknown_fields` for the unit variants of an internally tagged
    // enum (`{"cmd":"hang","when":"now"}` would pass): a field the command does not
    // serialize back is one it does not have.
    if let Ok(Value::Object(known)) = serde_json::to_value(&op)
        && let Some(extra) = map.keys().find(|k| !known.contains_key(*k))
    {
        let cmd = known.get("cmd").and_then(Value::as_str).unwrap_or_default();
        return Err(ControlError::Command(format!(
            "unknown field `{extra}` for `{cmd}`"
        )));
    }
    Ok(ControlRequest {
        modem,
        op: ControlOp::Sim(op),
    })
}

/// Executes one request line against `modems` and returns the answer line (without `\n`).
pub async fn handle_line(line: &str, modems: &[SimHandle]) -> String {
    match execute(line, modems).await {
        Ok(Some(statuses)) => json!({ "ok": true, "modems": statuses }).to_string(),
        Ok(None) => json!({ "ok": true }).to_string(),
        Err(e) => json!({ "ok": false, "error": e }).to_string(),
    }
}

async fn execute(line: &str, modems: &[SimHandle]) -> Result<Option<Vec<Value>>, String> {
    let req = parse_request(line).map_err(|e| e.to_string())?;
    let targets: Vec<&SimHandle> = match &req.modem {
        None => modems.iter().collect(),
        Some(name) => {
            let found: Vec<&SimHandle> = modems.iter().filter(|m| m.name() == *name).collect();
            if found.is_empty() {
                return Err(ControlError::UnknownModem(name.clone()).to_string());
            }
            found
        }
    };
    match req.op {
        ControlOp::Status => Ok(Some(
            targets
                .iter()
                .map(|m| serde_json::to_value(m.status()).unwrap_or(Value::Null))
                .collect(),
        )),
        ControlOp::Sim(op) => {
            for m in targets {
                m.apply(op.clone())
                    .await
                    .map_err(|e| format!("{}: {e}", m.name()))?;
            }
            Ok(None)
        }
    }
}

/// Serves the control socket at `path` until the returned task is aborted. A stale socket
/// left by a previous run is replaced; any other file at `path` is an error.
pub fn serve(path: &Path, modems: Vec<SimHandle>) -> io::Result<tokio::task::JoinHandle<()>> {
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    let path: PathBuf = path.to_path_buf();
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let modems = modems.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, &modems).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

async fn connection(stream: UnixStream, modems: &[SimHandle]) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut rd)
            .take(MAX_REQUEST)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if !buf.ends_with(b"\n") && n as u64 >= MAX_REQUEST {
            let answer = json!({ "ok": false, "error": "request line too long" }).to_string();
            wr.write_all(format!("{answer}\n").as_bytes()).await?;
            return Ok(());
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let answer = handle_line(line, modems).await;
        wr.write_all(format!("{answer}\n").as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modem::sim::ReportMode;

    #[test]
    fn requests() {
        let cases: Vec<(&str, Result<ControlRequest, ControlError>)> = vec![
            (
                r#"{"modem":"modem1","cmd":"unplug"}"#,
                Ok(ControlRequest {
                    modem: Some("modem1".into()),
                    op: ControlOp::Sim(SimOp::Unplug),
                }),
            ),
            (
                r#"{"cmd":"error_rate","modem":"modem2","code":38,"rate":0.3}"#,
                Ok(ControlRequest {
                    modem: Some("modem2".into()),
                    op: ControlOp::Sim(SimOp::ErrorRate {
                        code: 38,
                        rate: 0.3,
                    }),
                }),
            ),
            (
                r#"{"cmd":"hang"}"#,
                Ok(ControlRequest {
                    modem: None,
                    op: ControlOp::Sim(SimOp::Hang),
                }),
            ),
            (
                r#"{"cmd":"urc","line":"RING"}"#,
                Ok(ControlRequest {
                    modem: None,
                    op: ControlOp::Sim(SimOp::Urc {
                        line: "RING".into(),
                    }),
                }),
            ),
            (
                r#"{"cmd":"report","mode":"cdsi","status":65,"delay_ms":2000}"#,
                Ok(ControlRequest {
                    modem: None,
                    op: ControlOp::Sim(SimOp::Report {
                        mode: ReportMode::Cdsi,
                        status: 65,
                        delay_ms: 2000,
                        duplicate: false,
                    }),
                }),
            ),
            (
                r#"{"cmd":"report","mode":"cds"}"#,
                Ok(ControlRequest {
                    modem: None,
                    op: ControlOp::Sim(SimOp::Report {
                        mode: ReportMode::Cds,
                        status: 0,
                        delay_ms: 500,
                        duplicate: false,
                    }),
                }),
            ),
            (
                r#"{"cmd":"fail_next","code":331,"count":2,"modem":null}"#,
                Ok(ControlRequest {
                    modem: None,
                    op: ControlOp::Sim(SimOp::FailNext {
                        code: 331,
                        count: 2,
                    }),
                }),
            ),
            (
                r#"{"cmd":"status","modem":"modem0"}"#,
                Ok(ControlRequest {
                    modem: Some("modem0".into()),
                    op: ControlOp::Status,
                }),
            ),
            (
                r#"{"cmd":"release_reports","reverse":true}"#,
                Ok(ControlRequest {
                    modem: None,
                    op: ControlOp::Sim(SimOp::ReleaseReports { reverse: true }),
                }),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_request(line), want, "{line}");
        }
    }

    #[test]
    fn refused_requests_say_why() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not valid JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"modem":"modem0"}"#, "\"cmd\""),
            (r#"{"cmd":"explode"}"#, "unknown variant `explode`"),
            (r#"{"cmd":"hang","when":"now"}"#, "unknown field `when`"),
            (r#"{"cmd":"error_rate","code":38}"#, "missing field `rate`"),
            (
                r#"{"cmd":"fail_next","code":-1,"count":1}"#,
                "invalid value",
            ),
            (r#"{"cmd":"hang","modem":3}"#, "\"modem\" must be a string"),
            (
                r#"{"cmd":"status","verbose":true}"#,
                "unknown field `verbose`",
            ),
        ];
        for (line, needle) in cases {
            let err = parse_request(line)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(needle),
                "{line}: {err:?} should mention {needle:?}"
            );
        }
    }
}
