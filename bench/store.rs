//! What the durable marks of a draining modem pool cost the store, with no modem at all.
//!
//!     cargo bench --bench store                 # 32 senders, 20,000 SMS (about 35 s)
//!     cargo bench --bench store -- --smoke      # 8 senders, 400 SMS (also what `cargo test` runs)
//!
//! `bench/modems` gives the gateway's CPU per SMS while it drains a queue through 32 simulated
//! modems, and how much of it SQLite's threads took. This bench takes the modems away and keeps
//! the store's work as the pool does it: each of 32 senders marks a part `sending` (sharing the
//! commit with the `sent` of the part it sent before, due within half its send time, as
//! `modem::pool` marks ahead), then spends 50 ms as a modem's `AT+CMGS` would, then owes that
//! part's `sent`. Every SMS therefore writes what invariants 3 and 6 ask for: the part's two
//! states, its recipient's summary, and an event row for each change, committed with
//! `synchronous=FULL`.
//!
//! Printed: the CPU per SMS of SQLite's threads (what the marks cost the store, with no serial
//! I/O competing for the CPUs) and of the whole process, commits and SMS per commit. Every
//! part must end `sent` with its three events, or the run fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use mail2sms::queue::{Change, NewRecipient, NewRequest, OwedReplies, QueuePolicy, Source, Store};

/// A modem's time per `AT+CMGS`, as `bench/modems` simulates it.
const SEND_TIME: Duration = Duration::from_millis(50);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test` runs benches without `--bench`; anything but `cargo bench` is a smoke run.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let (senders, total) = if smoke { (8, 400) } else { (32, 20_000) };
    // As the gateway runs it: one runtime thread less than the cores (see `main.rs`).
    let threads = std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).max(1))
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(run(senders, total))
}

fn request(k: usize) -> NewRequest {
    let number = format!("+336{:08}", 10_000_000 + k);
    NewRequest {
        source: Source::Smtp,
        client: Some("127.0.0.1".into()),
        helo: Some("bench.example".into()),
        auth_user: None,
        mail_from: "bench@example.com".into(),
        sender: "bench@example.com".into(),
        sender_domain: "example.com".into(),
        message_id: Some(format!("<store-{k}@bench.example>")),
        subject: Some("Bench".into()),
        dsn_envid: None,
        dsn_ret: None,
        text: format!("Bench: message {k}"),
        encoding: mail2sms::sms::Encoding::Gsm7,
        parts: vec![format!("Bench: message {k}")],
        truncated: false,
        size: 300,
        headers: b"Subject: Bench\r\n\r\n".to_vec(),
        recipients: vec![NewRecipient {
            address: format!("{number}@sms"),
            number,
            name: None,
            country: Some("FR".into()),
            dsn_notify: None,
            dsn_orcpt: None,
        }],
    }
}

/// CPU seconds of this process's threads whose name starts with `prefix` (all of them for
/// ""): the first field of each thread's schedstat, its time on a CPU in nanoseconds.
fn cpu_seconds(prefix: &str) -> f64 {
    let mut ns = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

async fn run(senders: usize, total: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open_with(
        &dir.path().join("queue.db"),
        QueuePolicy::unlimited(OwedReplies::Never),
    )
    .await?;

    // Fill the queue from 64 concurrent writers, as many SMTP sessions would.
    let next = Arc::new(AtomicUsize::new(0));
    let mut fill = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (store, next) = (store.clone(), next.clone());
        fill.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                store.accept(request(k)).await?;
            }
        });
    }
    while let Some(r) = fill.join_next().await {
        r??;
    }
    let parts: Vec<i64> = sqlx::query_scalar("SELECT id FROM parts ORDER BY id")
        .fetch_all(store.reader())
        .await?;
    anyhow::ensure!(
        parts.len() == total,
        "{} parts queued for {total}",
        parts.len()
    );
    let parts = Arc::new(parts);

    let commits_before = store.commit_count();
    let store_before = cpu_seconds("sqlx-sqlite");
    let all_before = cpu_seconds("");
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut pool = tokio::task::JoinSet::new();
    for s in 0..senders {
        let (store, next, parts) = (store.clone(), next.clone(), parts.clone());
        pool.spawn(async move {
            let name = format!("modem{s}");
            let imsi = format!("20801{s:010}");
            let mut owed: Option<Change> = None;
            let mut mr = 0i64;
            // Modems come up one after another, and each then keeps its own pace: spread the
            // senders over one send time, or they would all mark in step, a commit for all.
            tokio::time::sleep(SEND_TIME * s as u32 / senders as u32).await;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&part) = parts.get(k) else { break };
                let began = Instant::now();
                let mut changes: Vec<Change> = owed.take().into_iter().collect();
                changes.push(Change::Sending {
                    part,
                    channel: name.clone(),
                });
                store.changes_by(changes, began + SEND_TIME / 2).await?;
                tokio::time::sleep_until(began + SEND_TIME).await;
                mr = (mr + 1) % 256;
                owed = Some(Change::Sent {
                    part,
                    message_ref: Some(mr),
                    sim: Some(imsi.clone()),
                    sent_at: mail2sms::queue::now_ms(),
                    reason: format!("sent via {name} (SIM {imsi}), TP-MR {mr}"),
                });
            }
            if let Some(change) = owed {
                store.changes(vec![change]).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(r) = pool.join_next().await {
        r??;
    }
    let wall = started.elapsed().as_secs_f64();
    let store_cpu = cpu_seconds("sqlx-sqlite") - store_before;
    let all_cpu = cpu_seconds("") - all_before;
    let commits = store.commit_count() - commits_before;

    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM parts WHERE state = 'sent'")
        .fetch_one(store.reader())
        .await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.reader())
        .await?;
    anyhow::ensure!(sent == total as i64, "{sent} of {total} parts sent");
    anyhow::ensure!(
        events == 3 * total as i64,
        "{events} events for {total} SMS (accepted, sending, sent each)"
    );

    let per_sms = |s: f64| s / total as f64 * 1e6;
    println!(
        "{senders} senders x {} ms per SMS, {total} single-part SMS marked in {wall:.1} s \
         ({:.0} SMS/s): {commits} commits, {:.1} SMS per commit",
        SEND_TIME.as_millis(),
        total as f64 / wall,
        total as f64 / commits.max(1) as f64,
    );
    println!(
        "CPU per SMS: SQLite's threads {:.0} µs, the whole process {:.0} µs",
        per_sms(store_cpu),
        per_sms(all_cpu)
    );
    Ok(())
}
