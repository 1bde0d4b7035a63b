//! IMAP pickup benchmark against a local Dovecot, with the real gateway binary.
//!
//!     cargo bench --bench imap
//!
//! 1. Pickup rate: MAIL2SMS_BENCH_MAILS mails (default 2,000) are appended while no gateway
//!    runs; the gateway is started and the time from its start to the commit of the last
//!    request is measured (target: at least 300 mails/s).
//! 2. Latency with IDLE: with the gateway idle on the folder, MAIL2SMS_BENCH_LATENCY_MAILS mails
//!    (default 100) are appended 10 a second; for each, the time from the end of its APPEND
//!    (the server's OK) to the commit of its request (target: p50 at most 1 s).
//!
//! Both read commit times from the queue (`requests.received_at`, written in the committing
//! transaction). Needs root (Dovecot switches users) and Debian's dovecot-imapd. Under
//! `cargo test --all-targets` it runs once with 100 and 10 mails, as a check that it works.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/e2e_imap/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Gateway;
use peers::{Dovecot, Options};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// (Message-ID, commit time in Unix ms) of every request in the gateway's queue.
fn commits(g: &Gateway, rt: &tokio::runtime::Runtime) -> HashMap<String, i64> {
    let path = g.path("queue.db");
    rt.block_on(async {
        let Ok(pool) = mail2sms::queue::Store::open_read_only(&path).await else {
            return HashMap::new();
        };
        let rows: Vec<(Option<String>, i64)> =
            sqlx::query_as("SELECT message_id, received_at FROM requests")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        pool.close().await;
        rows.into_iter()
            .filter_map(|(id, at)| Some((id?, at)))
            .collect()
    })
}

fn wait_for_commits(
    g: &Gateway,
    rt: &tokio::runtime::Runtime,
    n: usize,
    limit: Duration,
) -> HashMap<String, i64> {
    let start = Instant::now();
    loop {
        let c = commits(g, rt);
        if c.len() >= n {
            return c;
        }
        assert!(
            start.elapsed() < limit,
            "only {} of {n} queued after {limit:?}:\n{}",
            c.len(),
            g.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes --bench. Without it (`cargo test --all-targets` runs benchmarks once
    // in test mode) a small run checks that the benchmark still works.
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // A name filter that does not match this benchmark skips it.
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"imap".contains(a.as_str()))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (n, m) = if bench {
        (
            env_or("MAIL2SMS_BENCH_MAILS", 2000),
            env_or("MAIL2SMS_BENCH_LATENCY_MAILS", 100),
        )
    } else {
        (100, 10)
    };
    let dv = Dovecot::start(Options::default());

    // 1. Pickup rate from a full folder.
    eprintln!("appending {n} mails...");
    dv.client(&["append", "INBOX", &n.to_string(), "rate"]);
    let started = now_ms();
    let g = Gateway::start("", &dv.mailbox_toml("INBOX", "starttls", ""));
    let c = wait_for_commits(&g, &rt, n, Duration::from_secs(600));
    let first = c.values().min().copied().unwrap_or(started);
    let last = c.values().max().copied().unwrap_or(started);
    let total_s = (last - started) as f64 / 1000.0;
    let steady_s = (last - first).max(1) as f64 / 1000.0;
    println!(
        "pickup: {n} mails in {total_s:.2} s from gateway start = {:.0} mails/s \
         ({:.0} mails/s from first to last commit; first commit {} ms after start)",
        n as f64 / total_s,
        (n - 1) as f64 / steady_s,
        first - started
    );
    let left = dv.count("INBOX");
    drop(g);
    assert_eq!(left, 0, "mail left in INBOX after the pickup run");

    // 2. APPEND to queued, with IDLE.
    let g = Gateway::start("", &dv.mailbox_toml("INBOX", "starttls", ""));
    std::thread::sleep(Duration::from_secs(1));
    let log = g.path("appended.txt");
    dv.client(&[
        "append",
        "INBOX",
        &m.to_string(),
        "latency",
        "10",
        log.to_str().unwrap(),
    ]);
    let c = wait_for_commits(&g, &rt, m, Duration::from_secs(120));
    let appended: HashMap<String, i64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (id, at) = l.split_once(' ')?;
            Some((id.to_string(), at.parse().ok()?))
        })
        .collect();
    let mut lat: Vec<i64> = appended
        .iter()
        .filter_map(|(id, at)| Some(c.get(id)? - at))
        .collect();
    assert_eq!(lat.len(), m, "not every appended mail was found queued");
    lat.sort_unstable();
    println!(
        "APPEND to queued with IDLE, {m} mails at 10/s: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
}
