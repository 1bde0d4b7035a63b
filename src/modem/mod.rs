//! The modem stage: everything that talks to GSM modems, and the only code that opens serial
//! ports (invariant 2).
//!
//! - [`pdu`]: SMS-SUBMIT encoder and TPDU decoders (sans-IO).
//! - [`at`]: AT response parser (sans-IO).
//! - [`driver`]: one task per serial port: init, identity, health, send, reopen, quarantine.
//! - [`pool`]: a worker per modem pulling the site's queue; retries and failures.
//! - `port`: a serial port opened with `serial2` and watched by tokio's reactor.
//! - [`sim`]: a modem simulator on a pseudo-terminal for tests and the demo.

pub mod at;
pub mod driver;
pub mod pdu;
pub mod pool;
mod port;
pub mod sim;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

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
    tokio::spawn(take_reports(
        store.clone(),
        cfg.sending.reports,
        modems.clone(),
        heard_rx,
    ));
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

/// How long a status report waits for the sends before it to be recorded (see
/// [`driver::Modem::recorded`]): far more than a commit takes, even one held for company.
const REPORT_WAITS_FOR_SENDS: Duration = Duration::from_secs(10);

/// Hands each status report the drivers decode to the queue, which matches it to its part
/// (`queue::reports`), once the sends its modem had answered before it are recorded: a
/// network that reports within milliseconds must not find its part not yet `sent`. Reports
/// go in the order they were heard. The channel ends when every driver has stopped.
async fn take_reports(
    store: Store,
    matching: crate::queue::Matching,
    modems: Vec<driver::Modem>,
    mut heard: tokio::sync::mpsc::UnboundedReceiver<driver::Unsolicited>,
) {
    while let Some(u) = heard.recv().await {
        let driver::Heard::Report {
            report,
            received_at,
            recorded,
        } = u.what
        else {
            continue;
        };
        if let Some(modem) = modems.iter().find(|m| m.name() == u.modem)
            && !modem.has_recorded(u.sends)
        {
            // Its `sent` may be held for company: it is wanted now.
            store.hurry();
            if !modem.recorded(u.sends, REPORT_WAITS_FOR_SENDS).await {
                warn!(modem = %u.modem, "the sends before a status report are still not recorded; matching it anyway");
            }
        }
        let incoming = crate::queue::IncomingReport {
            modem: u.modem,
            sim: u.imsi,
            report,
            received_at,
        };
        let result = store.report(incoming, matching).await;
        if let Err(e) = &result {
            warn!(error = %e, "cannot record a status report");
        }
        if let Some(tx) = recorded {
            // Deleted from the modem's memory only now that it is on disk.
            let _ = tx.send(result.is_ok());
        }
    }
}

/// Writes each modem's status to the store when it changed (at most once a second) and
/// every [`STATUS_HEARTBEAT`] anyway. A snapshot the store refused (a full disk) stays due and
/// is written at the next round that succeeds, so `mail2sms modems` is current again as soon
/// as there is room instead of at the next heartbeat; a run of refusals is logged once, and
/// its end.
async fn record_status(store: Store, modems: Vec<driver::Modem>, shutdown: CancellationToken) {
    let mut last: Vec<(String, tokio::time::Instant)> =
        vec![(String::new(), tokio::time::Instant::now()); modems.len()];
    let mut refused = false;
    loop {
        let now = tokio::time::Instant::now();
        let due: Vec<(usize, String)> = modems
            .iter()
            .zip(&last)
            .enumerate()
            .filter_map(|(i, (m, (json_before, written)))| {
                let json = serde_json::to_string(&m.status()).unwrap_or_default();
                (json != *json_before || now.duration_since(*written) >= STATUS_HEARTBEAT)
                    .then_some((i, json))
            })
            .collect();
        if !due.is_empty() {
            let snapshots = due
                .iter()
                .filter_map(|(i, json)| Some((modems.get(*i)?.name().to_string(), json.clone())))
                .collect();
            match store.record_modems(snapshots).await {
                Ok(()) => {
                    for (i, json) in due {
                        if let Some(slot) = last.get_mut(i) {
                            *slot = (json, now);
                        }
                    }
                    if std::mem::take(&mut refused) {
                        info!("modem status recorded again");
                    }
                }
                Err(e) if !refused => {
                    refused = true;
                    if e.is_storage_full() {
                        error!(error = %e, "cannot record modem status: the store's disk is full; retrying every second");
                    } else {
                        warn!(error = %e, "cannot record modem status; retrying every second");
                    }
                }
                Err(e) => debug!(error = %e, "cannot record modem status yet"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modem::pdu::StatusReport;
    use crate::queue::testing::{mark_sending, request_to, stamp};
    use crate::queue::{Change, now_ms};

    const SIM: &str = "208150000000001";
    const NUMBER: &str = "+33612345678";

    /// Queues a one-part message and marks its part `sending` on `gsm0`; returns the part.
    async fn sending(store: &Store, message_id: &str) -> i64 {
        store
            .accept(request_to(NUMBER, 1, Some(message_id)))
            .await
            .unwrap();
        let part: i64 = sqlx::query_scalar(
            "SELECT p.id FROM parts p JOIN recipients r ON r.id = p.recipient_id
             JOIN requests q ON q.id = r.request_id WHERE q.message_id = ?1",
        )
        .bind(message_id)
        .fetch_one(store.reader())
        .await
        .unwrap();
        mark_sending(store, part, "gsm0").await;
        part
    }

    fn sent(part: i64, mr: u8, sent_at: i64) -> Change {
        Change::Sent {
            part,
            message_ref: Some(i64::from(mr)),
            sim: Some(SIM.into()),
            sent_at,
            reason: "sent via gsm0".into(),
        }
    }

    /// A store in `dir`, an idle modem `gsm0`, and [`take_reports`] recording what is sent on
    /// the channel returned.
    async fn listening(
        dir: &std::path::Path,
    ) -> (
        Store,
        driver::Modem,
        tokio::sync::mpsc::UnboundedSender<driver::Unsolicited>,
    ) {
        let store = Store::open(&dir.join("q.db")).await.unwrap();
        let modem = driver::Modem::idle("gsm0");
        let (heard, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(take_reports(
            store.clone(),
            Default::default(),
            vec![modem.clone()],
            rx,
        ));
        (store, modem, heard)
    }

    /// A delivery report for TP-MR `mr`, heard after `sends` answered sends; with `recorded`,
    /// one read from the modem's memory.
    fn delivered(
        mr: u8,
        sends: u64,
        recorded: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> driver::Unsolicited {
        let stamp = stamp(now_ms());
        driver::Unsolicited {
            modem: "gsm0".into(),
            imsi: Some(SIM.into()),
            sends,
            what: driver::Heard::Report {
                report: StatusReport {
                    message_ref: mr,
                    recipient: NUMBER.into(),
                    scts: stamp,
                    discharge: stamp,
                    status: 0,
                },
                received_at: now_ms(),
                recorded,
            },
        }
    }

    /// A report read from a modem's memory is deleted there once the queue says it is
    /// recorded: the answer comes after the commit, and says so.
    #[tokio::test]
    async fn a_stored_report_is_confirmed_once_it_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, modem, heard) = listening(dir.path()).await;
        let part = sending(&store, "<stored@x>").await;
        store.change(sent(part, 7, now_ms())).await.unwrap();
        modem.record_sends(1);

        let (tx, recorded) = tokio::sync::oneshot::channel();
        heard.send(delivered(7, 1, Some(tx))).unwrap();
        assert!(recorded.await.unwrap(), "the report was not recorded");
        assert_eq!(state_of(&store, part).await, "delivered");
    }

    async fn state_of(store: &Store, part: i64) -> String {
        sqlx::query_scalar("SELECT state FROM parts WHERE id = ?1")
            .bind(part)
            .fetch_one(store.reader())
            .await
            .unwrap()
    }

    /// A report can reach the writer before the `sent` of its send (the one comes from the
    /// driver's task, the other from the worker's). The report waits for the send's record and
    /// then goes to its part, not to an older part that had the same TP-MR, and not nowhere.
    #[tokio::test]
    async fn a_report_waits_for_the_send_before_it_to_be_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, modem, heard) = listening(dir.path()).await;
        // An hour ago (256 sends ago), the same reference went to the same number.
        let old = sending(&store, "<old@x>").await;
        store
            .change(sent(old, 9, now_ms() - 3_600_000))
            .await
            .unwrap();
        modem.record_sends(1);
        let new = sending(&store, "<new@x>").await;

        // The modem answered the second send, and its report came before the `sent` commit.
        heard.send(delivered(9, 2, None)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            state_of(&store, old).await,
            "sent",
            "matched the older send"
        );
        assert_eq!(state_of(&store, new).await, "sending");

        store.change(sent(new, 9, now_ms())).await.unwrap();
        modem.record_sends(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while state_of(&store, new).await != "delivered" {
            assert!(tokio::time::Instant::now() < deadline, "report not applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(state_of(&store, old).await, "sent");
    }
}
