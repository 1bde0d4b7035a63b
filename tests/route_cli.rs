//! The real binary: `mail2sms route explain` on the shipped configurations, and a running
//! gateway reloading its tariffs on SIGHUP.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, Gateway};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

fn explain(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["route", "explain"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The two-site example: from the UK, a French mobile goes through France (cheap modems there,
/// plus forwarding), and the UK's own dearer modems come second.
#[test]
fn explain_two_site_example_from_the_uk() {
    let out = stdout(&explain(
        &shipped("site-uk.toml"),
        &["+33612345678", "--parts", "2"],
    ));
    let want = "\
+33612345678, 2 parts, routed from site uk; workload weight 0.0001 per second of backlog
rank  site  channel             tariff × parts          forwarding  workload  total
1     fr    fr-modems (modems)  0.02 (+336) × 2 = 0.04  0.002       0         0.042
2     uk    uk-modems (modems)  0.09 (+336) × 2 = 0.18  0           0         0.18
";
    assert!(out.starts_with(want), "got:\n{out}");
    assert!(out.contains("does not see the running gateway"), "{out}");
}

/// The same organization seen from France: UK mobiles go to the UK, and a national number is
/// read in France's numbering plan.
#[test]
fn explain_from_france_with_a_national_number() {
    let out = stdout(&explain(&shipped("site-fr.toml"), &["+447700900123"]));
    let rows: Vec<&str> = out.lines().skip(2).take(2).collect();
    assert!(
        rows[0].starts_with("1     uk    uk-modems (modems)  0.025 (+447) × 1 = 0.025  0.002"),
        "{out}"
    );
    assert!(rows[0].ends_with("0.027"), "{out}");
    assert!(
        rows[1].starts_with("2     fr    fr-modems (modems)  0.1 (+447) × 1 = 0.1"),
        "{out}"
    );

    let json = stdout(&explain(
        &shipped("site-fr.toml"),
        &["06 12 34 56 78", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["number"], "+33612345678");
    assert_eq!(v["site"], "fr");
    assert_eq!(v["rows"][0]["channel"], "fr-modems");
    assert_eq!(v["rows"][0]["tariff_prefix"], "+336");
    assert_eq!(v["rows"][0]["total"], "0.02");
    assert_eq!(v["rows"][1]["channel"], "uk-modems");
    assert_eq!(v["rows"][1]["total"], "0.092");
}

/// Exclusions show with the rule behind them.
#[test]
fn explain_shows_exclusions_and_their_rules() {
    let out = stdout(&explain(
        &shipped("demo.toml"),
        &["+447911123456", "--parts", "2"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[2].starts_with("1     demo  demo-smpp (smpp)"),
        "{out}"
    );
    assert!(lines[2].contains("0.0385 (+447) × 2 = 0.077"), "{out}");
    assert_eq!(
        lines[3],
        "-     demo  demo-modems (modems)  excluded: not allowed (+44 in routing.allowed_channels allows demo-smpp)",
        "{out}"
    );

    let out = stdout(&explain(&shipped("demo.toml"), &["+33899123456"]));
    assert!(
        out.contains("demo-modems (modems)  excluded: blocked on this channel (+3389)"),
        "{out}"
    );
    assert!(out.contains("1     demo  demo-smpp (smpp)"), "{out}");

    let out = explain(&shipped("demo.toml"), &["+88212345678"]);
    let text = stdout(&out);
    assert!(
        text.contains(
            "excluded: blocked (+882 in routing.blocked_prefixes), no tariff for this prefix"
        ),
        "{text}"
    );
    assert!(!text.contains("\n1 "), "nothing may be ranked: {text}");
    assert!(
        text.contains("no route: the message cannot be sent"),
        "{text}"
    );
}

#[test]
fn explain_refuses_what_is_not_a_number() {
    for args in [&["hello"][..], &["+33612345678", "--parts", "0"][..]] {
        let out = explain(&shipped("demo.toml"), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = explain(&shipped("demo.toml"), &["hello"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hello"), "{err}");
}

fn wait_for_log(g: &Gateway, fragment: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = g.log();
        if log.contains(fragment) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no `{fragment}` in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hup(g: &Gateway) {
    let pid = g.child.as_ref().expect("running").id();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A running gateway reloads its tariffs on SIGHUP, refuses a broken file naming its line and
/// keeps the tables it had, then takes the fixed file.
#[test]
fn sighup_reloads_tariffs_and_keeps_them_on_error() {
    let tariffs = tempfile::tempdir().unwrap();
    let csv = tariffs.path().join("fr.csv");
    std::fs::write(&csv, "prefix,cost\n33,0.04\n336,0.02\n").unwrap();
    let extra = format!(
        "[[peer]]\nname = \"fr\"\nforwarding_cost = 0.002\n\
         [[channel]]\nname = \"fr-modems\"\nkind = \"modems\"\nsite = \"fr\"\ntariff_file = \"{}\"\n",
        csv.display()
    );
    let mut g = Gateway::start("", &extra);
    wait_for_log(&g, "routing tables loaded");

    // A broken file: the error names it and its line; nothing is swapped.
    std::fs::write(&csv, "prefix,cost\n33,0.04\n336,0.02\n337,zero\n").unwrap();
    hup(&g);
    let log = wait_for_log(&g, "configuration not reloaded");
    assert!(
        log.contains(&format!("{}:4:5: channel[0].tariff_file", csv.display())),
        "{log}"
    );

    // The fixed file: the change is reported against the tables kept in use (2 prefixes).
    std::fs::write(&csv, "prefix,cost\n33,0.04\n336,0.015\n337,0.02\n").unwrap();
    hup(&g);
    wait_for_log(
        &g,
        "channel fr-modems: tariff 2 -> 3 prefixes (1 added, 0 removed, 1 repriced)",
    );

    // Same file again: nothing changed, and the gateway still runs and stops cleanly.
    hup(&g);
    wait_for_log(&g, "routing reloaded, nothing changed");
    assert!(std::net::TcpStream::connect(g.addr).is_ok());
    assert!(g.stop().success(), "{}", g.log());
}
