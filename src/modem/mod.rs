//! The modem stage: everything that talks to GSM modems, and the only code that opens serial
//! ports (invariant 2).
//!
//! - [`pdu`]: SMS-SUBMIT encoder and TPDU decoders (sans-IO).
//! - [`at`]: AT response parser (sans-IO).
//! - [`driver`]: one task per serial port: init, identity, health, send, reopen, quarantine.
//! - [`pool`]: a worker per modem pulling the site's queue; retries and failures.
//! - [`sim`]: a modem simulator on a pseudo-terminal for tests and the demo.

pub mod at;
pub mod driver;
pub mod pdu;
pub mod pool;
pub mod sim;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::Config;
use crate::queue::Store;

/// How often a modem's status is written even when it did not change, so that
/// `mail2sms modems` can tell a live gateway's report from a stale one by its time.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(10);

/// The running modem stage.
pub struct Modems {
    modems: Vec<driver::Modem>,
    store: Store,
    tasks: TaskTracker,
    /// The simulated modems of `[modem.simulate]`, kept running as long as the gateway.
    _sims: Vec<sim::SimHandle>,
}

impl Modems {
    /// How many modems are configured.
    pub fn count(&self) -> usize {
        self.modems.len()
    }

    /// After the shutdown token is cancelled: waits for each worker to finish the part in
    /// hand (a part marked `sending` gets its answer recorded rather than becoming
    /// `uncertain` at the next start), then records the modems' last status.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        let last: Vec<(String, String)> = self
            .modems
            .iter()
            .map(|m| {
                let json = serde_json::to_string(&m.status()).unwrap_or_default();
                (m.name().to_string(), json)
            })
            .collect();
        if !last.is_empty()
            && let Err(e) = self.store.record_modems(last).await
        {
            warn!(error = %e, "cannot record the modems' last status");
        }
    }
}

/// Starts what `[[modem]]` asks for: simulated modems first (so their terminals exist), a
/// driver per modem, the worker pool, and the task that records modem status for the CLI.
pub async fn start_modems(
    cfg: &Config,
    store: &Store,
    queued: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<Modems> {
    let tasks = TaskTracker::new();
    // Rows of modems removed from the configuration would stay in `mail2sms modems` forever.
    store
        .forget_other_modems(cfg.modems.iter().map(|m| m.driver.name.clone()).collect())
        .await
        .context("forgetting modems no longer configured")?;
    let (heard_tx, heard_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(take_reports(store.clone(), cfg.sending.reports, heard_rx));
    let mut pool_modems = Vec::new();
    let mut sims = Vec::new();
    for m in &cfg.modems {
        if let Some(sim) = &m.simulate {
            if let Some(dir) = m.driver.port.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let handle = sim::spawn(
                sim.config.clone(),
                m.driver.port.clone(),
                sim.record.clone(),
            )
            .await
            .with_context(|| format!("starting simulated modem {}", m.driver.name))?;
            sims.push(handle);
        }
        let modem = driver::Modem::start_tracked(
            m.driver.clone(),
            Some(heard_tx.clone()),
            shutdown.clone(),
            &tasks,
        );
        pool_modems.push(pool::PoolModem {
            modem,
            prefixes: m.prefixes.clone(),
            min_interval: m.min_interval,
        });
    }
    let modems: Vec<driver::Modem> = pool_modems.iter().map(|m| m.modem.clone()).collect();
    if !modems.is_empty() {
        tokio::spawn(record_status(
            store.clone(),
            modems.clone(),
            shutdown.clone(),
        ));
        pool::Pool::start(
            store.clone(),
            cfg.sending.clone(),
            pool_modems,
            queued,
            shutdown,
            &tasks,
        );
    }
    Ok(Modems {
        modems,
        store: store.clone(),
        tasks,
        _sims: sims,
    })
}

/// Hands each status report the drivers decode to the queue, which matches it to its part
/// (`queue::reports`). The channel ends when every driver has stopped.
async fn take_reports(
    store: Store,
    matching: crate::queue::Matching,
    mut heard: tokio::sync::mpsc::UnboundedReceiver<driver::Unsolicited>,
) {
    while let Some(u) = heard.recv().await {
        let driver::Heard::Report {
            report,
            received_at,
        } = u.what
        else {
            continue;
        };
        let incoming = crate::queue::IncomingReport {
            modem: u.modem,
            sim: u.imsi,
            report,
            received_at,
        };
        if let Err(e) = store.report(incoming, matching).await {
            warn!(error = %e, "cannot record a status report");
        }
    }
}

/// Writes each modem's status to the store when it changed (at most once a second) and
/// every [`STATUS_HEARTBEAT`] anyway.
async fn record_status(store: Store, modems: Vec<driver::Modem>, shutdown: CancellationToken) {
    let mut last: Vec<(String, tokio::time::Instant)> =
        vec![(String::new(), tokio::time::Instant::now()); modems.len()];
    loop {
        let now = tokio::time::Instant::now();
        let mut changed = Vec::new();
        for (m, (json_before, written)) in modems.iter().zip(last.iter_mut()) {
            let json = serde_json::to_string(&m.status()).unwrap_or_default();
            if json != *json_before || now.duration_since(*written) >= STATUS_HEARTBEAT {
                changed.push((m.name().to_string(), json.clone()));
                *json_before = json;
                *written = now;
            }
        }
        if !changed.is_empty()
            && let Err(e) = store.record_modems(changed).await
        {
            warn!(error = %e, "cannot record modem status");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
