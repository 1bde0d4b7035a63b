//! Runs every mail of `tests/corpus/` through `parse::body::extract` and compares the result
//! with the files beside it. Adding a case is adding files; nothing here lists them.
//!
//! For `NAME.eml`:
//! - `NAME.expected`: the exact SMS text (one final newline of the file is not part of it);
//! - or `NAME.expected-error`: the error kind (`TooComplex`, `Unparseable`, `NoText`, …);
//! - optionally `NAME.options.toml`: `BodyOptions` other than the defaults;
//! - optionally `NAME.meta.toml`: other `MailInfo` fields to check, and `recipients`, the
//!   `header_recipients` result as `[["display name or empty", "address"], …]`.
//!
//! Every failing case is reported with a line-by-line comparison before the test fails.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use mail2sms::parse::body::{BodyOptions, MailInfo, extract, header_recipients};
use serde::Deserialize;

/// The corpus must not silently shrink to nothing (a moved directory would pass every case).
const MIN_CASES: usize = 36;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Meta {
    message_id: Option<String>,
    from: Option<String>,
    subject: Option<String>,
    auto_submitted: Option<bool>,
    disposition_notification_to: Option<String>,
    return_receipt_to: Option<String>,
    in_reply_to_chain: Option<Vec<String>>,
    recipients: Option<Vec<(String, String)>>,
}

fn corpus_dir() -> PathBuf {
    let beside_this_file = Path::new(file!()).with_file_name("corpus");
    if beside_this_file.is_dir() {
        beside_this_file
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("corpus")
    }
}

fn read_text(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn without_final_newline(text: &str) -> &str {
    text.strip_suffix('\n').unwrap_or(text)
}

/// Shows expected and actual line by line, marking the lines that differ.
fn diff(expected: &str, actual: &str) -> String {
    let expected: Vec<&str> = expected.split('\n').collect();
    let actual: Vec<&str> = actual.split('\n').collect();
    let mut out = String::new();
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e == a => {
                let _ = writeln!(out, "      {e}");
            }
            (e, a) => {
                if let Some(e) = e {
                    let _ = writeln!(out, "    - {e:?}");
                }
                if let Some(a) = a {
                    let _ = writeln!(out, "    + {a:?}");
                }
            }
        }
    }
    out
}

fn check_meta(meta: &Meta, info: &MailInfo, raw: &[u8], problems: &mut Vec<String>) {
    let mut field = |name: &str, expected: String, actual: String| {
        if expected != actual {
            problems.push(format!("{name}: expected {expected}, got {actual}"));
        }
    };
    if let Some(v) = &meta.message_id {
        field(
            "message_id",
            format!("{v:?}"),
            format!("{:?}", info.message_id.as_deref().unwrap_or_default()),
        );
    }
    if let Some(v) = &meta.from {
        field(
            "from",
            format!("{v:?}"),
            format!("{:?}", info.from.as_deref().unwrap_or_default()),
        );
    }
    if let Some(v) = &meta.subject {
        field(
            "subject",
            format!("{v:?}"),
            format!("{:?}", info.subject.as_deref().unwrap_or_default()),
        );
    }
    if let Some(v) = meta.auto_submitted {
        field(
            "auto_submitted",
            v.to_string(),
            info.auto_submitted.to_string(),
        );
    }
    if let Some(v) = &meta.disposition_notification_to {
        field(
            "disposition_notification_to",
            format!("{v:?}"),
            format!(
                "{:?}",
                info.disposition_notification_to
                    .as_deref()
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(v) = &meta.return_receipt_to {
        field(
            "return_receipt_to",
            format!("{v:?}"),
            format!(
                "{:?}",
                info.return_receipt_to.as_deref().unwrap_or_default()
            ),
        );
    }
    if let Some(v) = &meta.in_reply_to_chain {
        field(
            "in_reply_to_chain",
            format!("{v:?}"),
            format!("{:?}", info.in_reply_to_chain),
        );
    }
    if let Some(v) = &meta.recipients {
        let actual: Vec<(String, String)> = header_recipients(raw)
            .into_iter()
            .map(|(name, address)| (name.unwrap_or_default(), address))
            .collect();
        field("recipients", format!("{v:?}"), format!("{actual:?}"));
    }
}

/// Runs one case; returns what went wrong, if anything.
fn run_case(eml: &Path) -> Result<(), String> {
    let raw = fs::read(eml).map_err(|e| format!("cannot read: {e}"))?;
    let sibling = |suffix: &str| eml.with_extension(suffix);

    let opts = match read_text(&sibling("options.toml")) {
        Some(text) => {
            toml::from_str::<BodyOptions>(&text).map_err(|e| format!("bad options file: {e}"))?
        }
        None => BodyOptions::default(),
    };
    let meta = match read_text(&sibling("meta.toml")) {
        Some(text) => {
            Some(toml::from_str::<Meta>(&text).map_err(|e| format!("bad meta file: {e}"))?)
        }
        None => None,
    };
    let result = extract(&raw, &opts);

    match (
        read_text(&sibling("expected")),
        read_text(&sibling("expected-error")),
    ) {
        (Some(_), Some(_)) => Err("has both .expected and .expected-error".into()),
        (None, None) => Err("has neither .expected nor .expected-error".into()),
        (Some(expected), None) => {
            let expected = without_final_newline(&expected);
            let info = result.map_err(|e| format!("expected text, got error {}: {e}", e.kind()))?;
            let mut problems = Vec::new();
            if info.text != expected {
                problems.push(format!(
                    "text differs (- expected, + actual):\n{}",
                    diff(expected, &info.text)
                ));
            }
            if let Some(meta) = &meta {
                check_meta(meta, &info, &raw, &mut problems);
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("\n  "))
            }
        }
        (None, Some(kind)) => match result {
            Err(e) if e.kind() == kind.trim() => Ok(()),
            Err(e) => Err(format!(
                "expected error {}, got error {}: {e}",
                kind.trim(),
                e.kind()
            )),
            Ok(info) => Err(format!(
                "expected error {}, got text {:?}",
                kind.trim(),
                info.text
            )),
        },
    }
}

#[test]
fn corpus() {
    let dir = corpus_dir();
    let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();

    let mut failures = Vec::new();
    let emls: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    for path in &entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stem = name.split('.').next().unwrap_or_default();
        if !emls
            .iter()
            .any(|e| e.file_stem().and_then(|s| s.to_str()) == Some(stem))
        {
            failures.push(format!("{name}: no {stem}.eml beside it"));
        }
    }
    for eml in &emls {
        if let Err(problem) = run_case(eml) {
            let name = eml.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        emls.len() >= MIN_CASES,
        "only {} cases found in {}, expected at least {MIN_CASES}",
        emls.len(),
        dir.display()
    );
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("\n{failure}");
        }
        let names: Vec<&str> = failures
            .iter()
            .map(|f| f.split(':').next().unwrap_or_default())
            .collect();
        panic!(
            "{} of {} corpus cases failed: {}",
            failures.len(),
            emls.len(),
            names.join(", ")
        );
    }
}
