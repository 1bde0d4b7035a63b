//! Time from a peer site's death to its traffic flowing elsewhere: two real `mail2sms run`
//! processes (a UK and a French site) with simulated modems; a steady stream of mail for
//! French numbers is submitted at the UK site, which forwards it to France; France is killed
//! (SIGKILL) — or, in the second scenario, hung (SIGSTOP) — and the time is measured from the
//! signal to the first SMS of that stream recorded at the UK site's own simulated modem (the
//! simulator's record carries the time it accepted each message).
//!
//!     cargo bench --bench failover                # 5 runs per scenario
//!     cargo bench --bench failover -- --smoke     # 1 run each (also what `cargo test` runs)
//!
//! Prints min / p50 / max per scenario. Every run also checks that no number got two SMS, and
//! reports the ordinary forwarding latency before the death: from the mail's acceptance at the
//! UK site to its SMS at the French site's modem (hand-over confirmation included).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::sim::wait_until;
use common::sites::{Node, SmtpLoad, counts, hashes, numbers};

/// One mail every this often: 50 messages a second.
const INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug)]
enum Death {
    Kill,
    Hang,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test` runs this without it: a smoke run.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let runs = if smoke { 1 } else { 5 };
    let mut forwarding: Vec<u64> = Vec::new();
    for death in [Death::Kill, Death::Hang] {
        let mut times: Vec<u64> = (0..runs)
            .map(|i| {
                let (t, f) = one_run(death, i);
                forwarding.extend(f);
                t
            })
            .collect();
        times.sort_unstable();
        let p50 = times[times.len() / 2];
        println!(
            "{:<28} runs {runs}: min {} ms, p50 {p50} ms, max {} ms",
            match death {
                Death::Kill => "peer killed (SIGKILL):",
                Death::Hang => "peer hung (SIGSTOP):",
            },
            times[0],
            times[times.len() - 1],
        );
    }
    forwarding.sort_unstable();
    if !forwarding.is_empty() {
        let at = |q: f64| forwarding[((forwarding.len() - 1) as f64 * q) as usize];
        println!(
            "forwarding while up (mail accepted at uk → SMS at fr's modem), {} messages: p50 {} ms, p90 {} ms, max {} ms",
            forwarding.len(),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
}

/// One run: the milliseconds from the signal to the first SMS at the UK's modem, and the
/// forwarding latencies of the messages the French site sent before it.
fn one_run(death: Death, run: usize) -> (u64, Vec<u64>) {
    let mut uk = Node::new("uk");
    let mut fr = Node::new("fr");
    let h = hashes(&["uk", "fr"]);
    uk.configure(&[&uk, &fr], &h);
    fr.configure(&[&uk, &fr], &h);
    fr.start();
    uk.start();
    wait_until("uk binds to fr", Duration::from_secs(30), || {
        uk.binds_to("fr") >= 1
    });
    wait_until("fr binds to uk", Duration::from_secs(30), || {
        fr.binds_to("uk") >= 1
    });

    // The stream: a new French number per mail, so each SMS is told apart.
    let stream = numbers("336", run * 10_000, 5_000);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let load = {
        let (stop, stream, port) = (stop.clone(), stream.clone(), uk.smtp);
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            let mut smtp = SmtpLoad::connect(port).expect("an SMTP session to the UK site");
            let mut next = Instant::now();
            for n in &stream {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                smtp.send(n, "steady stream")
                    .expect("the UK site takes mail");
                // The 250 after DATA: the mail is committed at the UK site.
                accepted
                    .lock()
                    .unwrap()
                    .insert(n.trim_start_matches('+').to_string(), now_ms());
                next += INTERVAL;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    wait_until(
        "the stream flows through France",
        Duration::from_secs(30),
        || fr.sent().len() >= 20,
    );
    assert_eq!(
        uk.sent_to(&stream),
        0,
        "the UK sent French numbers while France was up"
    );

    let at = now_ms();
    match death {
        Death::Kill => fr.kill(),
        Death::Hang => fr.signal("-STOP"),
    }
    let mut first = None;
    wait_until(
        "the stream reaches the UK's own modem",
        Duration::from_secs(30),
        || {
            first = uk
                .sent()
                .iter()
                .filter(|s| s.time_ms >= at && s.dest.starts_with("+336"))
                .map(|s| s.time_ms)
                .min();
            first.is_some()
        },
    );
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    if matches!(death, Death::Hang) {
        fr.signal("-CONT");
    }
    // Give a woken France the time to ask about what it held, then count.
    std::thread::sleep(Duration::from_secs(3));
    for (n, c) in counts(&[&uk, &fr]) {
        assert!(
            c <= 1,
            "{n} sent {c} times\nUK:\n{}\nFR:\n{}",
            uk.log(),
            fr.log()
        );
    }
    let accepted = accepted.lock().unwrap();
    let forwarding = fr
        .sent()
        .iter()
        .filter(|s| s.time_ms < at)
        .filter_map(|s| {
            let t = accepted.get(s.dest.trim_start_matches('+'))?;
            Some(s.time_ms.saturating_sub(*t))
        })
        .collect();
    (first.unwrap_or(at) - at, forwarding)
}
