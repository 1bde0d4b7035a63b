//! `submit_sm` throughput over one bind on loopback, window 50: an SMPP client no one here
//! wrote (`rusmppc`) against this site's SMPP server, with every message committed to a real
//! queue store (SQLite, `synchronous=FULL`) before its `submit_sm_resp`.
//!
//!     cargo bench --bench smpp                 # 20,000 messages
//!     cargo bench --bench smpp -- --smoke      # 500, for CI (also what `cargo test` runs)
//!
//! Prints messages per second and the response latency percentiles.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use mail2sms::peer::server::{Accounts, Receipts, Shared, listen};
use mail2sms::queue::Store;
use mail2sms::route::RouterState;
use rusmpp::pdus::{BindTransceiver, SubmitSm};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{InterfaceVersion, Npi, Ton};
use tokio_util::sync::CancellationToken;

const WINDOW: usize = 50;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test` runs benches with `--bench`-less arguments; anything but `--bench` alone
    // (what `cargo bench` passes) is a smoke run.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let total: usize = if smoke { 500 } else { 20_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(total))
}

async fn run(total: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("queue.db")).await?;
    let hash = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt =
            SaltString::encode_b64(b"benchmark-salt-1").map_err(|e| anyhow::anyhow!("{e}"))?;
        argon2::Argon2::default()
            .hash_password(b"secret", &salt)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string()
    };
    let shared = Arc::new(Shared {
        site: "bench".into(),
        store: store.clone(),
        accounts: Accounts {
            peers: vec![],
            users: vec![("load".into(), hash)],
        },
        max_parts: 6,
        router_state: RouterState::new(),
        queued: Arc::new(tokio::sync::Notify::new()),
        receipts: Receipts::default(),
        // Plain TCP: the figure is the SMPP path's, not TLS's.
        tls: None,
    });
    let shutdown = CancellationToken::new();
    let addrs = listen(shared, &["127.0.0.1:0".parse()?], shutdown.clone()).await?;
    let (client, mut events) = rusmppc::ConnectionBuilder::new()
        .no_enquire_link_interval()
        .response_timeout(Duration::from_secs(30))
        .disable_interface_version_check()
        .connect(format!("smpp://{}", addrs[0]))
        .await?;
    tokio::spawn(async move { while events.next().await.is_some() {} });
    client
        .bind_transceiver(
            BindTransceiver::builder()
                .system_id(COctetString::from_str("load")?)
                .password(COctetString::from_str("secret")?)
                .interface_version(InterfaceVersion::Smpp3_4)
                .build(),
        )
        .await?;

    let submit = |i: usize| {
        let client = client.clone();
        async move {
            let sm = SubmitSm::builder()
                .dest_addr_ton(Ton::International)
                .dest_addr_npi(Npi::Isdn)
                .destination_addr(COctetString::from_str(&format!(
                    "3361{:07}",
                    i % 10_000_000
                ))?)
                .short_message(OctetString::from_str(&format!("benchmark message {i}"))?)
                .build();
            let t = Instant::now();
            client.submit_sm(sm).await?;
            anyhow::Ok(t.elapsed())
        }
    };
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(total);
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0;
    while next < total.min(WINDOW) {
        in_flight.push(submit(next));
        next += 1;
    }
    while let Some(r) = in_flight.next().await {
        latencies.push(r?);
        if next < total {
            in_flight.push(submit(next));
            next += 1;
        }
    }
    let elapsed = start.elapsed();
    client.unbind().await.ok();
    shutdown.cancel();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(store.reader())
        .await?;
    anyhow::ensure!(
        stored as usize == total,
        "{stored} requests stored for {total} submit_sm_resp"
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "submit_sm over one bind, window {WINDOW}: {total} messages in {:.2} s = {:.0}/s; \
         response latency p50 {:.1} ms, p99 {:.1} ms; {} commits",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        store.commit_count(),
    );
    Ok(())
}
