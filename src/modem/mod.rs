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
use tracing::warn;

use crate::config::Config;
use crate::queue::Store;

/// Starts what `[[modem]]` asks for: simulated modems first (so their terminals exist), a
/// driver per modem, the worker pool, and the task that records modem status for the CLI.
/// Returns how many modems there are.
pub async fn start_modems(
    cfg: &Config,
    store: &Store,
    queued: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<usize> {
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
        let modem = driver::Modem::start(m.driver.clone(), None, shutdown.clone());
        pool_modems.push(pool::PoolModem {
            modem,
            prefixes: m.prefixes.clone(),
            min_interval: m.min_interval,
        });
    }
    let n = pool_modems.len();
    if n == 0 {
        return Ok(0);
    }
    tokio::spawn(record_status(
        store.clone(),
        pool_modems.iter().map(|m| m.modem.clone()).collect(),
        sims,
        shutdown.clone(),
    ));
    pool::Pool::start(
        store.clone(),
        cfg.sending.clone(),
        pool_modems,
        queued,
        shutdown,
    );
    Ok(n)
}

/// Writes each modem's status to the store when it changed, at most once a second. Holds the
/// simulated modems' handles, so they run as long as the gateway.
async fn record_status(
    store: Store,
    modems: Vec<driver::Modem>,
    _sims: Vec<sim::SimHandle>,
    shutdown: CancellationToken,
) {
    let mut last: Vec<String> = vec![String::new(); modems.len()];
    loop {
        let mut changed = Vec::new();
        for (i, m) in modems.iter().enumerate() {
            let json = serde_json::to_string(&m.status()).unwrap_or_default();
            if json != last[i] {
                changed.push((m.name().to_string(), json.clone()));
                last[i] = json;
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
