//! The modem driver against the simulated modem on a pseudo-terminal: the driver opens the
//! pty by its path as it opens a USB modem, and the simulator's faults (PIN, `+CMS ERROR`,
//! silence, slowness, unplugging, network loss) are switched while it runs. Timeouts are kept
//! short through `DriverConfig`, so each test takes a few seconds at most.

use std::path::PathBuf;
use std::time::Duration;

use mail2sms::modem::at::CmsClass;
use mail2sms::modem::driver::{
    DriverConfig, Heard, Modem, ModemState, ModemStatus, SendError, Unsolicited,
};
use mail2sms::modem::pdu::{self, SubmitOptions, SubmitPdu, Tpdu};
use mail2sms::modem::sim::{ReportMode, SimConfig, SimHandle, spawn};
use mail2sms::sms::segment;
use tokio_util::sync::CancellationToken;

const DEST: &str = "+33612345678";

struct Rig {
    _dir: tempfile::TempDir,
    sim: SimHandle,
    modem: Modem,
    shutdown: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn fast(name: &str, port: PathBuf) -> DriverConfig {
    DriverConfig {
        command_timeout: Duration::from_millis(700),
        send_timeout: Duration::from_millis(1500),
        health_interval: Duration::from_millis(300),
        max_failures: 3,
        quarantine: Duration::from_millis(1500),
        ..DriverConfig::new(name, port)
    }
}

/// A simulated modem `n` and a driver on its port; `tweak` adjusts both before they start.
async fn rig(n: u32, tweak: impl FnOnce(&mut SimConfig, &mut DriverConfig)) -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join(format!("modem{n}"));
    let mut sim_cfg = SimConfig::numbered(n);
    sim_cfg.latency_ms = 2;
    sim_cfg.cmgs_latency_ms = 20;
    let mut drv = fast(&format!("m{n}"), link.clone());
    tweak(&mut sim_cfg, &mut drv);
    let sim = spawn(sim_cfg, link, None).await.expect("simulated modem");
    let shutdown = CancellationToken::new();
    let modem = Modem::start(drv, None, shutdown.clone());
    Rig {
        _dir: dir,
        sim,
        modem,
        shutdown,
    }
}

/// Waits until the modem's status satisfies `want`, failing with the last status seen.
async fn wait_for(
    modem: &Modem,
    what: &str,
    within: Duration,
    want: impl Fn(&ModemStatus) -> bool,
) {
    let mut m = modem.clone();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if want(&m.status()) {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: not reached in {within:?}; status {:?}",
            m.status()
        );
        let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), m.changed()).await;
    }
}

async fn ready(modem: &Modem) {
    wait_for(modem, "ready", Duration::from_secs(10), |s| {
        s.state == ModemState::Ready
    })
    .await;
}

fn pdus(text: &str) -> Vec<SubmitPdu> {
    let seg = segment(text, None);
    let opts = SubmitOptions {
        status_report: false,
        concat_ref: 0x42,
        ..SubmitOptions::default()
    };
    pdu::encode_submit(DEST, &seg, &opts).expect("encodable")
}

fn one_pdu(text: &str) -> SubmitPdu {
    pdus(text).remove(0)
}

#[tokio::test]
async fn initializes_and_knows_the_modem_by_imei_and_the_sim_by_imsi() {
    let r = rig(3, |_, _| {}).await;
    ready(&r.modem).await;
    let st = r.modem.status();
    let sim = SimConfig::numbered(3);
    assert_eq!(st.imei.as_deref(), Some(sim.imei.as_str()));
    assert_eq!(st.imsi.as_deref(), Some(sim.imsi.as_str()));
    assert_eq!(st.manufacturer.as_deref(), Some(sim.manufacturer.as_str()));
    assert_eq!(st.model.as_deref(), Some(sim.model.as_str()));
    assert_eq!(st.operator.as_deref(), Some(sim.operator.as_str()));
    assert_eq!(st.rssi, Some(sim.rssi));
    assert_eq!(st.dbm, Some(-113 + 2 * i16::from(sim.rssi)));
    assert_eq!(st.registration, Some(1));
    // Signal is checked again at intervals.
    r.sim.set_signal(7).await.unwrap();
    wait_for(&r.modem, "new signal", Duration::from_secs(3), |s| {
        s.rssi == Some(7)
    })
    .await;
}

#[tokio::test]
async fn pin_asked_and_given() {
    let r = rig(1, |sim, drv| {
        sim.pin = Some("4321".into());
        drv.pin = Some("4321".into());
    })
    .await;
    ready(&r.modem).await;
    assert_eq!(r.modem.send(one_pdu("after the PIN")).await, Ok(0));
}

#[tokio::test]
async fn pin_asked_and_none_configured_fails_the_modem() {
    let r = rig(2, |sim, _| sim.pin = Some("4321".into())).await;
    wait_for(&r.modem, "failed", Duration::from_secs(10), |s| {
        matches!(&s.state, ModemState::Failed(m) if m.contains("asks for a PIN and none is configured"))
    })
    .await;
    let e = r.modem.send(one_pdu("x")).await.unwrap_err();
    assert!(matches!(e, SendError::NotReady(_)), "{e:?}");
    assert!(r.sim.sent().is_empty());
}

#[tokio::test]
async fn wrong_pin_fails_the_modem_after_one_try() {
    let r = rig(4, |sim, drv| {
        sim.pin = Some("4321".into());
        drv.pin = Some("0000".into());
    })
    .await;
    wait_for(
        &r.modem,
        "failed",
        Duration::from_secs(10),
        |s| matches!(&s.state, ModemState::Failed(m) if m.contains("refused the configured PIN")),
    )
    .await;
    // Three wrong PINs would block the SIM (TS 31.102 §9.5): the driver tries once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(r.modem.status().state, ModemState::Failed(_)));
}

#[tokio::test]
async fn send_returns_the_message_reference_and_the_modem_got_the_pdu() {
    let r = rig(5, |sim, _| sim.first_mr = 200).await;
    ready(&r.modem).await;
    let parts = pdus(&"Ça coûte 5 € à Zoë. ".repeat(12));
    assert!(parts.len() > 1, "a concatenated message");
    let mut refs = Vec::new();
    for p in &parts {
        refs.push(r.modem.send(p.clone()).await.expect("sent"));
    }
    assert_eq!(refs, (200..200 + parts.len() as u8).collect::<Vec<_>>());
    let sent = r.sim.sent();
    assert_eq!(sent.len(), parts.len());
    for (i, (rec, p)) in sent.iter().zip(&parts).enumerate() {
        assert_eq!(rec.pdu.as_deref(), Some(p.hex().as_str()));
        let Tpdu::Submit(s) = pdu::decode(&p.bytes, true).unwrap() else {
            panic!("not a SUBMIT")
        };
        assert_eq!(rec.dest, DEST);
        assert_eq!(rec.text, s.text);
        let c = rec.concat.as_ref().expect("concat header");
        assert_eq!(
            (c.reference, c.total, c.seq),
            (0x42, parts.len() as u8, i as u8 + 1)
        );
    }
    let st = r.modem.status();
    assert_eq!(
        (st.sent, st.failed, st.failures),
        (parts.len() as u64, 0, 0)
    );
}

#[tokio::test]
async fn hostile_text_is_data_not_commands() {
    let r = rig(6, |_, _| {}).await;
    ready(&r.modem).await;
    let nasty = "a\u{1a}b\u{1b}c\rd\r\nAT+CMGD=1,4\r\u{1b}\u{1a}";
    r.modem.send(one_pdu(nasty)).await.expect("sent");
    let sent = r.sim.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].text, nasty);
    let c = r.sim.counters();
    assert_eq!((c.deletes, c.cancelled, c.rejected), (0, 0, 0), "{c:?}");
    // The modem is still in PDU mode and still works.
    assert_eq!(r.modem.send(one_pdu("next")).await, Ok(1));
}

#[tokio::test]
async fn cms_errors_are_classified_temporary_or_permanent() {
    let r = rig(7, |_, _| {}).await;
    ready(&r.modem).await;
    // TS 24.011 Table 8.4 / TS 23.040 §9.2.3.22 / TS 27.005 §3.2.5.
    let cases: &[(u16, CmsClass)] = &[
        (38, CmsClass::Temporary),   // network out of order
        (42, CmsClass::Temporary),   // congestion
        (1, CmsClass::Permanent),    // unassigned number
        (21, CmsClass::Permanent),   // short message transfer rejected
        (0xc3, CmsClass::Permanent), // invalid SME address
        (304, CmsClass::Permanent),  // invalid PDU mode parameter
        (500, CmsClass::Temporary),  // unknown error
    ];
    for &(code, class) in cases {
        r.sim.fail_next(code, 1).await.unwrap();
        let e = r.modem.send(one_pdu("x")).await.unwrap_err();
        assert_eq!(e, SendError::Cms { code, class }, "cause {code}");
        assert_eq!(
            e.is_temporary(),
            class == CmsClass::Temporary,
            "cause {code}"
        );
        // The network refused a message; the modem itself stays in service.
        assert!(r.modem.is_ready(), "cause {code}: {:?}", r.modem.status());
    }
    assert!(r.sim.sent().is_empty());
    assert_eq!(r.modem.status().failed, cases.len() as u64);
    assert_eq!(r.modem.send(one_pdu("ok")).await, Ok(0));
}

#[tokio::test]
async fn hung_modem_times_out_before_the_pdu() {
    let r = rig(8, |_, _| {}).await;
    ready(&r.modem).await;
    r.sim.hang().await.unwrap();
    let started = std::time::Instant::now();
    let e = r.modem.send(one_pdu("into the void")).await.unwrap_err();
    assert!(matches!(e, SendError::BeforePdu(_)), "{e:?}");
    assert!(e.is_temporary());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(r.sim.sent().is_empty());
}

#[tokio::test]
async fn silence_after_the_pdu_is_after_pdu_and_the_message_did_leave() {
    let r = rig(9, |_, _| {}).await;
    ready(&r.modem).await;
    r.sim
        .set_cmgs_latency(Duration::from_secs(5))
        .await
        .unwrap();
    let e = r.modem.send(one_pdu("slow network")).await.unwrap_err();
    assert!(matches!(e, SendError::AfterPdu(_)), "{e:?}");
    assert!(!e.is_temporary(), "never sent again silently");
    // The simulator took it: exactly the case where sending again would send it twice.
    assert_eq!(r.sim.sent().len(), 1);
}

#[tokio::test]
async fn unplugged_modem_is_reopened_when_plugged_back() {
    let r = rig(10, |_, _| {}).await;
    ready(&r.modem).await;
    r.sim.unplug().await.unwrap();
    wait_for(&r.modem, "unplugged", Duration::from_secs(5), |s| {
        matches!(s.state, ModemState::Unplugged(_))
    })
    .await;
    let e = r.modem.send(one_pdu("while unplugged")).await.unwrap_err();
    assert!(matches!(e, SendError::NotReady(_)), "{e:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    r.sim.replug().await.unwrap();
    wait_for(&r.modem, "ready again", Duration::from_secs(10), |s| {
        s.state == ModemState::Ready && s.reopened >= 1
    })
    .await;
    assert_eq!(r.modem.send(one_pdu("after the replug")).await, Ok(0));
    assert_eq!(r.sim.sent().len(), 1);
}

#[tokio::test]
async fn unplug_during_the_answer_is_after_pdu() {
    let r = rig(11, |_, _| {}).await;
    ready(&r.modem).await;
    r.sim
        .set_cmgs_latency(Duration::from_secs(3))
        .await
        .unwrap();
    let modem = r.modem.clone();
    let send = tokio::spawn(async move { modem.send(one_pdu("pulled out")).await });
    // Wait until the simulator has the message, then pull the plug before it answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while r.sim.sent().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the PDU never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.sim.unplug().await.unwrap();
    let e = send.await.unwrap().unwrap_err();
    assert!(matches!(e, SendError::AfterPdu(_)), "{e:?}");
    wait_for(&r.modem, "unplugged", Duration::from_secs(5), |s| {
        matches!(s.state, ModemState::Unplugged(_))
    })
    .await;
}

#[tokio::test]
async fn repeated_failures_quarantine_the_modem_and_a_probe_brings_it_back() {
    let r = rig(12, |_, _| {}).await;
    ready(&r.modem).await;
    r.sim.hang().await.unwrap();
    // The first send fails; the driver then cannot initialize the silent modem either.
    let e = r.modem.send(one_pdu("x")).await.unwrap_err();
    assert!(matches!(e, SendError::BeforePdu(_)), "{e:?}");
    wait_for(&r.modem, "quarantined", Duration::from_secs(20), |s| {
        matches!(s.state, ModemState::Quarantined(_))
    })
    .await;
    let st = r.modem.status();
    assert_eq!(st.quarantined, 1);
    assert!(st.last_error.is_some());
    let e = r.modem.send(one_pdu("while rested")).await.unwrap_err();
    assert!(
        matches!(&e, SendError::NotReady(m) if m.contains("rested until")),
        "{e:?}"
    );
    // Still silent at the first probe: rested again.
    wait_for(
        &r.modem,
        "quarantined again",
        Duration::from_secs(20),
        |s| s.quarantined >= 2,
    )
    .await;
    r.sim.resume().await.unwrap();
    wait_for(
        &r.modem,
        "back after a probe",
        Duration::from_secs(20),
        |s| s.state == ModemState::Ready,
    )
    .await;
    assert_eq!(r.modem.send(one_pdu("back")).await, Ok(0));
    assert_eq!(r.modem.status().failures, 0);
}

#[tokio::test]
async fn a_sim_that_cannot_send_is_quarantined_without_a_restart() {
    let r = rig(13, |_, _| {}).await;
    ready(&r.modem).await;
    // 331 "no network service" blames the modem, not the message.
    r.sim.fail_next(331, 3).await.unwrap();
    for i in 0..3 {
        let e = r.modem.send(one_pdu("x")).await.unwrap_err();
        assert!(matches!(e, SendError::Cms { code: 331, .. }), "{i}: {e:?}");
    }
    wait_for(&r.modem, "quarantined", Duration::from_secs(5), |s| {
        matches!(s.state, ModemState::Quarantined(_))
    })
    .await;
    wait_for(&r.modem, "back", Duration::from_secs(10), |s| {
        s.state == ModemState::Ready
    })
    .await;
    assert_eq!(r.modem.send(one_pdu("back")).await, Ok(0));
}

#[tokio::test]
async fn unregistered_modem_is_given_nothing_until_it_registers_again() {
    let r = rig(14, |_, _| {}).await;
    ready(&r.modem).await;
    r.sim.set_registration(2).await.unwrap();
    wait_for(
        &r.modem,
        "no network",
        Duration::from_secs(5),
        |s| matches!(&s.state, ModemState::NoNetwork(m) if m.contains("searching")),
    )
    .await;
    let e = r.modem.send(one_pdu("x")).await.unwrap_err();
    assert!(matches!(e, SendError::NotReady(_)), "{e:?}");
    r.sim.set_registration(5).await.unwrap();
    ready(&r.modem).await;
    assert_eq!(r.modem.status().registration, Some(5));
    assert_eq!(r.modem.send(one_pdu("roaming")).await, Ok(0));
}

/// At shutdown the send in progress is finished and its answer given; a send waiting behind it
/// is refused as `NotReady` (nothing written), so that its part can go back to the queue.
#[tokio::test]
async fn a_send_waiting_when_the_driver_stops_is_refused_and_not_written() {
    let r = rig(15, |s, _| s.cmgs_latency_ms = 500).await;
    ready(&r.modem).await;
    let (m1, m2) = (r.modem.clone(), r.modem.clone());
    let first = tokio::spawn(async move { m1.send(one_pdu("in progress")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(async move { m2.send(one_pdu("waiting")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    r.shutdown.cancel();
    assert_eq!(first.await.unwrap(), Ok(0));
    let e = second.await.unwrap().unwrap_err();
    assert!(matches!(e, SendError::NotReady(_)), "{e:?}");
    let sent: Vec<String> = r.sim.sent().iter().map(|m| m.text.clone()).collect();
    assert_eq!(sent, ["in progress"]);
}

#[tokio::test]
async fn answers_owed_from_before_a_crash_do_not_shift_the_dialogue() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modem16");
    let mut sim_cfg = SimConfig::numbered(16);
    sim_cfg.latency_ms = 2;
    sim_cfg.cmgs_latency_ms = 2500;
    let sim = spawn(sim_cfg.clone(), link.clone(), None).await.unwrap();
    // A gateway that sent a message and died before the answer: the modem still owes
    // "+CMGS: 0" and "OK", and will say them to whoever opens the port next.
    {
        let mut port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
            .open(&link)
            .unwrap();
        let p = one_pdu("sent just before the crash");
        port.write_all(format!("AT+CMGS={}\r", p.tpdu_len).as_bytes())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        port.write_all(format!("{}\x1a", p.hex()).as_bytes())
            .unwrap();
    }
    // The modem has the message (bytes still in the terminal's buffer would be flushed by
    // the next open, as on a real port).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while sim.sent().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the PDU never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shutdown = CancellationToken::new();
    let mut drv = fast("m16", link);
    drv.command_timeout = Duration::from_secs(2);
    let modem = Modem::start(drv, None, shutdown.clone());
    ready(&modem).await;
    let st = modem.status();
    assert_eq!(st.imei.as_deref(), Some(sim_cfg.imei.as_str()));
    assert_eq!(st.imsi.as_deref(), Some(sim_cfg.imsi.as_str()));
    assert_eq!(
        st.manufacturer.as_deref(),
        Some(sim_cfg.manufacturer.as_str())
    );
    sim.set_cmgs_latency(Duration::from_millis(20))
        .await
        .unwrap();
    assert_eq!(modem.send(one_pdu("after")).await, Ok(1));
    assert_eq!(sim.sent().len(), 2);
    shutdown.cancel();
}

/// The `recorded` of the next status report the driver hands over that it read from the
/// modem's memory.
async fn next_stored_report(
    heard: &mut tokio::sync::mpsc::UnboundedReceiver<Unsolicited>,
) -> tokio::sync::oneshot::Sender<bool> {
    loop {
        let u = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("a status report within 10 s")
            .expect("the driver is running");
        if let Heard::Report {
            recorded: Some(recorded),
            ..
        } = u.what
        {
            return recorded;
        }
    }
}

/// A status report the modem stored (`+CDSI`) is deleted from its memory only once the queue
/// says it is recorded: a gateway stopped in between would otherwise lose it. One the queue
/// could not record stays in the memory, for the sweep at the next start.
#[tokio::test]
async fn a_stored_report_is_deleted_only_once_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("modem21");
    let mut sim_cfg = SimConfig::numbered(21);
    sim_cfg.latency_ms = 2;
    sim_cfg.cmgs_latency_ms = 20;
    sim_cfg.report.mode = ReportMode::Cdsi;
    sim_cfg.report.delay_ms = 50;
    let sim = spawn(sim_cfg, link.clone(), None)
        .await
        .expect("simulated modem");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let modem = Modem::start(fast("m21", link), Some(tx), shutdown.clone());
    ready(&modem).await;
    let with_report = |text: &str| {
        let opts = SubmitOptions {
            status_report: true,
            ..SubmitOptions::default()
        };
        pdu::encode_submit(DEST, &segment(text, None), &opts)
            .expect("encodable")
            .remove(0)
    };

    // The first report: the queue could not record it.
    modem.send(with_report("one")).await.expect("sent");
    next_stored_report(&mut heard).await.send(false).unwrap();
    // The second: not deleted while the queue has not answered, deleted once it has.
    modem.send(with_report("two")).await.expect("sent");
    let recorded = next_stored_report(&mut heard).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.counters().reports, 2);
    assert_eq!(sim.counters().deletes, 0, "deleted before it was recorded");
    recorded.send(true).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sim.counters().deletes == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only the recorded one: the other is still in the memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.counters().deletes, 1);
}
