//! External SMPP providers as channels, and TLS on SMPP links, with real `mail2sms run`
//! processes.
//!
//! - The "provider" is a second mail2sms node whose SMPP server has an application account
//!   (`[[smpp.users]]`): the first node routes a French number to the provider channel (its
//!   cheapest tariff), the SMS leaves at the provider node's simulated modem, and the provider
//!   node's standard receipt comes back as the first node's sender's status reply.
//! - A scripted SMSC in this test (SMPP over TCP, PDUs by `rusmpp`) answers with chosen error
//!   statuses: a throttled part is tried again and then taken, an invalid address fails, a
//!   two-part message carries its concatenation headers; its receipt, with the id in decimal
//!   where `submit_sm_resp` gave hex, is matched; and when the SMSC goes away the channel drops
//!   out of routing and the node's own modem takes the next message.
//! - Two sites linked over TLS forward a message; a link that trusts the wrong CA does not
//!   bind, and its log says why.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::sim::wait_until;
use common::sink::Sink;
use common::sites::Node;
use common::{BIN, hash_password, run};
use serde_json::Value;

/// What these tests ask of a site beyond the shared harness: a configuration of their own
/// (a provider node, scripted peers), and questions about one number.
trait ProviderNode {
    fn configure_as(&self, report: &str, rest: &str);
    fn log_has(&self, words: &[&str]) -> bool;
    fn sent_to_number(&self, number: &str) -> usize;
    fn cli(&self, args: &[&str]) -> Value;
    fn entry(&self, number: &str) -> Option<Value>;
    fn events(&self, number: &str) -> String;
    fn mail_one(&self, number: &str, body: &str);
}

impl ProviderNode for Node {
    /// The common part of a configuration: the site, SMTP, store, no quotas, one simulated
    /// modem recording to `sent.jsonl` (with status reports `report`), and `rest`.
    fn configure_as(&self, report: &str, rest: &str) {
        let text = format!(
            r#"
[site]
name = "{name}"
default_country = "GB"
sms_domains = ["sms"]

[store]
path = "queue.db"

[smtp]
listen = ["127.0.0.1:{smtp}"]
trusted_networks = ["127.0.0.0/8"]

[quotas]
sender_parts_per_hour = 0
sender_parts_per_day = 0
domain_parts_per_hour = 0
domain_parts_per_day = 0

[guard]
enabled = false

[[modem]]
name = "{name}-sim"
[modem.simulate]
latency_ms = 1
cmgs_latency_ms = 20
report = "{report}"
report_delay_ms = 300
report_status = 0
record = "sent.jsonl"

{rest}
"#,
            name = self.name,
            smtp = self.smtp,
        );
        std::fs::write(self.path("mail2sms.toml"), text).unwrap();
    }

    fn log_has(&self, words: &[&str]) -> bool {
        self.log()
            .lines()
            .any(|l| words.iter().all(|w| l.contains(w)))
    }

    fn sent_to_number(&self, number: &str) -> usize {
        self.sent()
            .iter()
            .filter(|s| s.dest.trim_start_matches('+') == number.trim_start_matches('+'))
            .count()
    }

    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.path("mail2sms.toml"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The queue entry of `number`.
    fn entry(&self, number: &str) -> Option<Value> {
        let q = self.cli(&["queue", "--json"]);
        q.as_array()?
            .iter()
            .find(|e| e["number"] == number)
            .cloned()
    }

    /// The events of `number`'s request, as `status --json` gives them.
    fn events(&self, number: &str) -> String {
        let Some(e) = self.entry(number) else {
            return String::new();
        };
        let id = e["request"].as_str().unwrap_or_default().to_string();
        self.cli(&["status", &id, "--json"]).to_string()
    }

    fn mail_one(&self, number: &str, body: &str) {
        let out = common::python(
            "smtp_client.py",
            &[
                "send",
                "127.0.0.1",
                &self.smtp.to_string(),
                "alice@example.org",
                &format!("{number}@sms"),
                "test",
                body,
            ],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "smtp_client.py: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["data"][0], 250, "{v}");
    }
}

/// `[[channel]]` of this site's modems, dearer than any provider here.
fn modems_channel(site: &str) -> String {
    format!(
        "[[channel]]\nname = \"{site}-modems\"\nkind = \"modems\"\nsite = \"{site}\"\ntariff = {{ \"33\" = 0.09, \"44\" = 0.02 }}\n"
    )
}

/// Issue: "An external SMPP provider is just another channel, bound with the same client."
/// The UK node has no peers, only its modem and a provider channel, `acme`, that is the
/// provider node's SMPP server with an application account. A French number is cheapest
/// through `acme`; the SMS leaves at the provider node's modem, whose status report becomes
/// the provider node's receipt, which becomes the UK sender's status reply.
#[test]
fn a_provider_channel_sends_and_its_receipt_becomes_the_senders_status_reply() {
    let replies = tempfile::tempdir().unwrap();
    let sink = Sink::start(replies.path());
    let mut prov = Node::new("acme");
    let mut uk = Node::new("uk");
    prov.configure_as(
        "cds",
        &format!(
            "[smpp]\nlisten = [\"127.0.0.1:{}\"]\n[[smpp.users]]\nsystem_id = \"uk-gw\"\npassword_hash = \"{}\"\n\n{}",
            prov.smpp,
            hash_password("acmepw"),
            modems_channel("acme")
        ),
    );
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    uk.configure_as(
        "none",
        &format!(
            r#"
[notify]
relay = "127.0.0.1:{sink}"
tls = "none"

[replies]
templates = "{templates}"
language = "en"
relayed = false

{modems}
[[channel]]
name = "acme"
kind = "smpp"
site = "uk"
tariff = {{ "33" = 0.015 }}
[channel.smpp]
address = "127.0.0.1:{port}"
system_id = "uk-gw"
password = "acmepw"
enquire_link_ms = 1000
source_addr = "Example"
"#,
            sink = sink.port,
            templates = templates.display(),
            modems = modems_channel("uk"),
            port = prov.smpp,
        ),
    );
    prov.start();
    uk.start();
    wait_until(
        "the UK node binds to the provider",
        Duration::from_secs(20),
        || uk.log_has(&["bound to SMPP provider", "provider=acme"]),
    );

    // route explain ranks the provider channel first for France, the modems for the UK.
    let e = uk.cli(&["route", "explain", "+33612340001", "--json"]);
    assert_eq!(e["rows"][0]["channel"], "acme", "{e}");
    assert_eq!(e["rows"][0]["kind"], "smpp", "{e}");
    assert_eq!(e["rows"][1]["channel"], "uk-modems", "{e}");
    let e = uk.cli(&["route", "explain", "+447761000001", "--json"]);
    assert_eq!(e["rows"][0]["channel"], "uk-modems", "{e}");

    let number = "+33612340001";
    let out = common::python(
        "dsn_client.py",
        &[
            "127.0.0.1",
            &uk.smtp.to_string(),
            "alice@example.org",
            &format!("{number}@sms"),
            "SUCCESS",
            "--msgid",
            "<via-provider@example.org>",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"], 250, "{v}");
    let address = format!("{number}@sms");
    wait_until(
        "the UK node replies to the sender",
        Duration::from_secs(30),
        || !sink.about(&address).is_empty(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let about = sink.about(&address);
    assert_eq!(
        about.len(),
        1,
        "{about:?}\nUK log:\n{}\nprovider log:\n{}",
        uk.log(),
        prov.log()
    );
    let r = &about[0];
    assert_eq!(r["in_reply_to"], "<via-provider@example.org>", "{r}");
    assert_eq!(r["report_type"], "delivery-status", "{r}");
    let b = &r["recipients"][0];
    assert_eq!(b["action"], "delivered", "{r}");
    assert!(
        b["status"].as_str().unwrap_or_default().starts_with("2."),
        "{r}"
    );
    // It left at the provider's modem, once, with the configured sender; not at the UK's.
    assert_eq!(prov.sent_to_number(number), 1);
    assert_eq!(uk.sent_to_number(number), 0);
    let e = uk.entry(number).unwrap();
    assert_eq!(e["state"], "delivered", "{e}");
    let events = uk.events(number);
    assert!(events.contains("taken by SMPP provider acme"), "{events}");
    assert!(
        events.contains("delivery receipt from SMPP provider acme: stat:DELIVRD"),
        "{events}"
    );
    // The provider node saw an ordinary application client: the message is its user's.
    let pe = prov.entry(number).unwrap();
    assert_eq!(pe["source"], "smpp", "{pe}");

    // A UK number stays on the UK's own modem.
    uk.mail_one("+447761000001", "local");
    wait_until("the UK modem sends", Duration::from_secs(20), || {
        uk.sent_to_number("+447761000001") == 1
    });
    assert_eq!(prov.sent_to_number("+447761000001"), 0);
}

// ---------------------------------------------------------------------------------------------
// A scripted SMSC.

mod smsc {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use futures_util::{SinkExt, StreamExt};
    use rusmpp::pdus::{BindTransceiverResp, DeliverSm, SubmitSm, SubmitSmResp};
    use rusmpp::tokio_codec::CommandCodec;
    use rusmpp::types::{COctetString, OctetString};
    use rusmpp::values::EsmClass;
    use rusmpp::{Command, CommandId, CommandStatus, Pdu};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_util::codec::Framed;

    /// A submit as the SMSC saw it.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub dest: String,
        pub esm_class: u8,
        pub data_coding: u8,
        pub registered_delivery: u8,
        pub source: String,
        pub short_message: Vec<u8>,
        pub tlvs: usize,
        pub status: u32,
    }

    /// What to answer for a destination: statuses in turn (the last one repeats); 0 takes it
    /// under the id `<hex counter>` and sends a receipt naming it in decimal; [`DROP`] and
    /// [`SLOW`] are not statuses.
    pub type Script = HashMap<String, Vec<u32>>;

    /// No answer: the connection is closed once the submit is read.
    pub const DROP: u32 = 0xFFFF_0001;
    /// Taken (as 0), but answered a second later, with no receipt.
    pub const SLOW: u32 = 0xFFFF_0002;
    /// Never answered, while the connection stays up and keepalives are answered.
    pub const SILENT: u32 = 0xFFFF_0003;

    pub struct Smsc {
        pub port: u16,
        pub seen: Arc<Mutex<Vec<Seen>>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Smsc {
        pub fn start(script: Script) -> Smsc {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = std_listener.local_addr().unwrap().port();
            std_listener.set_nonblocking(true).unwrap();
            let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let s2 = seen.clone();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let l = TcpListener::from_std(std_listener).unwrap();
                    let script = Arc::new(Mutex::new(script));
                    let counter = Arc::new(Mutex::new(0x1A2Bu64));
                    tokio::select! {
                        _ = stopped => {}
                        _ = async {
                            loop {
                                let Ok((s, _)) = l.accept().await else { continue };
                                tokio::spawn(serve(s, script.clone(), s2.clone(), counter.clone()));
                            }
                        } => {}
                    }
                });
                // Dropping the runtime closes every connection and the listener.
            });
            Smsc {
                port,
                seen,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        /// Goes away: connections closed, port no longer listening.
        pub fn stop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }

        pub fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for Smsc {
        fn drop(&mut self) {
            self.stop();
        }
    }

    async fn serve(
        s: tokio::net::TcpStream,
        script: Arc<Mutex<Script>>,
        seen: Arc<Mutex<Vec<Seen>>>,
        counter: Arc<Mutex<u64>>,
    ) {
        let mut framed = Framed::new(s, CommandCodec::new());
        let (tx, mut rx) = mpsc::channel::<Command>(64);
        let mut out_seq = 1000u32;
        loop {
            let cmd = tokio::select! {
                Some(c) = rx.recv() => {
                    if framed.send(c).await.is_err() { return; }
                    continue;
                }
                r = framed.next() => match r {
                    Some(Ok(c)) => c,
                    _ => return,
                },
            };
            let seq = cmd.sequence_number();
            let reply = match (cmd.id(), cmd.pdu()) {
                (CommandId::BindTransceiver, Some(Pdu::BindTransceiver(b))) => {
                    // A provider's client ("uk-gw"), or site uk's peer link.
                    let ok = matches!(b.system_id.as_str(), "uk-gw" | "uk")
                        && b.password.as_str() == "pw";
                    let status = if ok {
                        CommandStatus::EsmeRok
                    } else {
                        CommandStatus::EsmeRinvpaswd
                    };
                    Command::new(
                        status,
                        seq,
                        Pdu::BindTransceiverResp(
                            BindTransceiverResp::builder()
                                .system_id(COctetString::from_string("smsc".into()).unwrap())
                                .build(),
                        ),
                    )
                }
                (CommandId::EnquireLink, _) => {
                    Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp)
                }
                (CommandId::SubmitSm, Some(Pdu::SubmitSm(sm))) => {
                    let dest = sm.destination_addr.as_str().to_string();
                    let status = {
                        let mut sc = script.lock().unwrap();
                        let list = sc.entry(dest.clone()).or_insert_with(|| vec![0]);
                        if list.len() > 1 {
                            list.remove(0)
                        } else {
                            list[0]
                        }
                    };
                    seen.lock().unwrap().push(seen_of(sm, status));
                    if status == DROP {
                        return;
                    }
                    if status == SILENT {
                        continue;
                    }
                    if status == SLOW {
                        let tx = tx.clone();
                        let id = {
                            let mut c = counter.lock().unwrap();
                            *c += 1;
                            *c
                        };
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            let resp = SubmitSmResp::builder()
                                .message_id(COctetString::from_string(format!("{id:X}")).unwrap())
                                .build();
                            let _ = tx
                                .send(Command::new(
                                    CommandStatus::EsmeRok,
                                    seq,
                                    Pdu::SubmitSmResp(resp),
                                ))
                                .await;
                        });
                        continue;
                    }
                    let id = if status == 0 {
                        let mut c = counter.lock().unwrap();
                        *c += 1;
                        *c
                    } else {
                        0
                    };
                    if status == 0 {
                        // The receipt, a moment later, names the message in decimal.
                        let tx = tx.clone();
                        out_seq += 1;
                        let s = out_seq;
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            let text = format!(
                                "id:{id} sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD err:000 text:"
                            );
                            let d = DeliverSm::builder()
                                .esm_class(EsmClass::from(0x04))
                                .short_message(OctetString::from_slice(text.as_bytes()).unwrap())
                                .build();
                            let _ = tx
                                .send(Command::new(CommandStatus::EsmeRok, s, Pdu::DeliverSm(d)))
                                .await;
                        });
                    }
                    Command::new(
                        CommandStatus::from(status),
                        seq,
                        Pdu::SubmitSmResp(
                            SubmitSmResp::builder()
                                .message_id(
                                    COctetString::from_string(if status == 0 {
                                        format!("{id:X}")
                                    } else {
                                        String::new()
                                    })
                                    .unwrap(),
                                )
                                .build(),
                        ),
                    )
                }
                (CommandId::DeliverSmResp, _) | (CommandId::EnquireLinkResp, _) => continue,
                (CommandId::Unbind, _) => {
                    let _ = framed
                        .send(Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp))
                        .await;
                    return;
                }
                _ => Command::new(CommandStatus::EsmeRinvcmdid, seq, Pdu::GenericNack),
            };
            if framed.send(reply).await.is_err() {
                return;
            }
        }
    }

    fn seen_of(sm: &SubmitSm, status: u32) -> Seen {
        Seen {
            dest: sm.destination_addr.as_str().to_string(),
            esm_class: u8::from(sm.esm_class),
            data_coding: u8::from(sm.data_coding),
            registered_delivery: u8::from(sm.registered_delivery),
            source: sm.source_addr.as_str().to_string(),
            short_message: sm.short_message().as_ref().to_vec(),
            tlvs: sm.tlvs().len(),
            status,
        }
    }
}

/// The uk node, its French numbers routed to the scripted SMSC on `port` (channel `cheap`),
/// three attempts per part with waits of 1 s up to `retry_max_secs`; started and bound.
fn bound_to_cheap_smsc(port: u16, retry_max_secs: u64) -> Node {
    let mut uk = Node::new("uk");
    uk.configure_as(
        "none",
        &format!(
            r#"
[sending]
max_attempts = 3
retry_base_secs = 1
retry_max_secs = {retry_max_secs}

{modems}
[[channel]]
name = "cheap"
kind = "smpp"
site = "uk"
tariff = {{ "33" = 0.01 }}
[channel.smpp]
address = "127.0.0.1:{port}"
system_id = "uk-gw"
password = "pw"
source_addr = "Example"
enquire_link_ms = 500
missed_keepalives = 3
reconnect_max_ms = 300
"#,
            modems = modems_channel("uk"),
        ),
    );
    uk.start();
    wait_until("the node binds", Duration::from_secs(20), || {
        uk.log_has(&["bound to SMPP provider", "provider=cheap"])
    });
    uk
}

/// A provider's `submit_sm_resp` statuses, classified: throttled (0x58) is tried again after
/// the `[sending]` backoff and then taken; an invalid destination address (0x0B) fails the
/// message with the status; a two-part message goes as two `submit_sm` with the concatenation
/// header (UDHI, IEI 0x00, one reference, 1/2 and 2/2), GSM coding, receipts asked for and no
/// vendor parameters. The receipts name the ids in decimal where the responses gave hex, and
/// still find their parts. When the SMSC goes away, the channel drops out of routing and the
/// next French number goes out at the node's own modem.
#[test]
fn provider_statuses_retry_or_fail_as_classified_and_a_dead_provider_drops_out() {
    let throttled = "33600000001";
    let invalid = "33600000002";
    let long = "33600000003";
    let mut script = smsc::Script::new();
    script.insert(throttled.into(), vec![0x58, 0]);
    script.insert(invalid.into(), vec![0x0B]);
    let mut smsc = smsc::Smsc::start(script);
    let uk = bound_to_cheap_smsc(smsc.port, 2);
    uk.mail_one(&format!("+{throttled}"), "throttled first");
    uk.mail_one(&format!("+{invalid}"), "to a bad address");
    let text = "A message long enough for two parts: ".to_string() + &"0123456789".repeat(15);
    uk.mail_one(&format!("+{long}"), &text);

    wait_until(
        "every message has its outcome",
        Duration::from_secs(30),
        || {
            let st = |n: &str| {
                uk.entry(&format!("+{n}"))
                    .map(|e| e["state"].as_str().unwrap_or_default().to_string())
                    .unwrap_or_default()
            };
            st(throttled) == "delivered" && st(invalid) == "failed" && st(long) == "delivered"
        },
    );
    let seen = smsc.seen();
    let of = |n: &str| {
        seen.iter()
            .filter(|s| s.dest == n)
            .cloned()
            .collect::<Vec<_>>()
    };
    // Throttled once, taken the second time.
    let t = of(throttled);
    assert_eq!(
        t.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![0x58, 0],
        "{t:?}"
    );
    let events = uk.events(&format!("+{throttled}"));
    assert!(events.contains("refused it for now"), "{events}");
    assert!(
        events.contains("ESME_RTHROTTLED") || events.contains("EsmeRthrottled"),
        "{events}"
    );
    // Invalid address: asked once, failed with the status.
    assert_eq!(of(invalid).len(), 1);
    let events = uk.events(&format!("+{invalid}"));
    assert!(events.contains("0x0000000B"), "{events}");
    // Two parts, as an SMSC client sends them.
    let l = of(long);
    assert_eq!(l.len(), 2, "{l:?}");
    for (i, s) in l.iter().enumerate() {
        assert_eq!(s.esm_class, 0x40, "{s:?}");
        assert_eq!(s.data_coding, 0, "{s:?}");
        assert_eq!(s.registered_delivery, 1, "{s:?}");
        assert_eq!(s.tlvs, 0, "no vendor parameters: {s:?}");
        let udh = &s.short_message[..6];
        assert_eq!(&udh[..3], &[0x05, 0x00, 0x03], "{s:?}");
        assert_eq!(udh[4], 2, "{s:?}");
        assert_eq!(usize::from(udh[5]), i + 1, "{s:?}");
        assert_eq!(udh[3], l[0].short_message[3], "one reference");
    }
    // The SMS's text, septet per octet (letters and digits are ASCII in the GSM alphabet).
    let joined: Vec<u8> = l
        .iter()
        .flat_map(|s| s.short_message[6..].to_vec())
        .collect();
    let joined = String::from_utf8_lossy(&joined);
    assert!(joined.contains(&text), "{joined}");
    assert_eq!(l[0].source, "Example");
    // Nothing went through the node's own modem.
    assert!(uk.sent().is_empty(), "{:?}", uk.sent());

    // The SMSC goes away: the channel is down within 3 keepalive intervals, and French
    // numbers go out at the node's own (dearer) modem.
    smsc.stop();
    wait_until("the provider is down", Duration::from_secs(5), || {
        uk.log_has(&["SMPP provider down", "provider=cheap"])
    });
    uk.mail_one("+33600000009", "provider gone");
    wait_until(
        "the UK modem takes the French number",
        Duration::from_secs(20),
        || uk.sent_to_number("+33600000009") == 1,
    );
    assert!(uk.log_has(&["SMPP provider bind failed", "provider=cheap"]));
}

/// A part the provider never answers (it drops the connection) was submitted, and may have
/// been taken: it is placed again after the lost bind, within `[sending]`'s attempts, and
/// then `uncertain`, never submitted again. A part whose answer is on its way when the
/// gateway stops gets that answer recorded before the gateway exits, and is not submitted
/// again after the restart.
#[test]
fn unanswered_parts_are_tried_within_the_attempts_and_a_stop_waits_for_answers() {
    let dropped = "33600000011";
    let slow = "33600000012";
    let mut script = smsc::Script::new();
    script.insert(dropped.into(), vec![smsc::DROP]);
    script.insert(slow.into(), vec![smsc::SLOW]);
    let smsc = smsc::Smsc::start(script);
    let mut uk = bound_to_cheap_smsc(smsc.port, 1);
    let state = |uk: &Node, n: &str| {
        uk.entry(&format!("+{n}"))
            .map(|e| e["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let submits = |n: &str| smsc.seen().iter().filter(|s| s.dest == n).count();

    uk.mail_one(&format!("+{dropped}"), "into the void");
    wait_until("the part is uncertain", Duration::from_secs(30), || {
        state(&uk, dropped) == "uncertain"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(submits(dropped), 3, "{}", uk.events(&format!("+{dropped}")));
    assert!(uk.sent().is_empty(), "{:?}", uk.sent());

    uk.mail_one(&format!("+{slow}"), "answered late");
    wait_until("the part is submitted", Duration::from_secs(20), || {
        submits(slow) == 1
    });
    uk.signal("-TERM");
    wait_until("the node stops", Duration::from_secs(20), || uk.exited());
    uk.start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        state(&uk, slow),
        "sent",
        "{}",
        uk.events(&format!("+{slow}"))
    );
    assert_eq!(submits(slow), 1);
    assert!(uk.sent().is_empty(), "{:?}", uk.sent());
}

/// A peer site that answers keepalives but never a `submit_sm` would hold the message for
/// ever: after the keepalive's patience the link is dropped, the message is taken back, and
/// this site's own modem sends it.
#[test]
fn a_peer_that_never_answers_a_submit_loses_the_message_to_this_site() {
    let number = "33600000021";
    let mut script = smsc::Script::new();
    // As a provider's client writes it, and as a peer link does.
    script.insert(number.into(), vec![smsc::SILENT]);
    script.insert(format!("+{number}"), vec![smsc::SILENT]);
    let smsc = smsc::Smsc::start(script);
    let mut uk = Node::new("uk");
    uk.configure_as(
        "none",
        &format!(
            r#"
[smpp]
listen = ["127.0.0.1:{smpp}"]
enquire_link_ms = 500
missed_keepalives = 3
reconnect_max_ms = 300

{modems}
[[channel]]
name = "fr-modems"
kind = "modems"
site = "fr"
tariff = {{ "33" = 0.01 }}

[[peer]]
name = "fr"
forwarding_cost = 0.002
[peer.smpp]
address = "127.0.0.1:{port}"
password = "pw"
password_hash = "{hash}"
"#,
            smpp = uk.smpp,
            modems = modems_channel("uk"),
            port = smsc.port,
            hash = hash_password("pw-fruk"),
        ),
    );
    uk.start();
    wait_until("the link binds", Duration::from_secs(20), || {
        uk.log_has(&["bound to peer site", "peer=fr"])
    });
    uk.mail_one(&format!("+{number}"), "answer me");
    wait_until("the peer has it", Duration::from_secs(20), || {
        smsc.seen()
            .iter()
            .any(|s| s.dest.trim_start_matches('+') == number)
    });
    wait_until("the message goes out here", Duration::from_secs(20), || {
        uk.sent_to_number(&format!("+{number}")) == 1
    });
    assert!(
        uk.log_has(&["did not answer a submit_sm", "peer=fr"]),
        "{}",
        uk.log()
    );
}

// ---------------------------------------------------------------------------------------------
// TLS.

/// A CA and a certificate for `localhost` it signed, with openssl; returns (ca, cert, key).
fn ca_and_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca-key.pem"),
        p("cert.pem"),
        p("key.pem"),
        p("cert.csr"),
        p("ext.cnf"),
    );
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    ok(run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", &format!("/CN={name} test CA")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca)));
    ok(run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ok(run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert)));
    (ca, cert, key)
}

/// A `[[peer]]` of `peer` reached at `port` over TLS, trusting `ca`.
fn tls_peer(peer: &str, port: u16, password: &str, hash: &str, ca: &Path) -> String {
    format!(
        "[[peer]]\nname = \"{peer}\"\nforwarding_cost = 0.002\n[peer.smpp]\naddress = \"127.0.0.1:{port}\"\npassword = \"{password}\"\npassword_hash = \"{hash}\"\n[peer.smpp.tls]\nserver_name = \"localhost\"\nca_file = \"{}\"\n",
        ca.display()
    )
}

/// Issue: "bind_transceiver authenticated per peer, optional TLS". Both sites' SMPP servers
/// accept TLS only; each binds to the other over TLS, trusting the organization's CA: mail for
/// a French number sent into the UK leaves at the French modem. A third site that trusts
/// another CA cannot bind to France, and says so.
#[test]
fn two_sites_linked_over_tls_forward_and_a_wrong_ca_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_cert(certs.path(), "org");
    let (other_ca, _, _) = ca_and_cert(certs.path(), "other");
    let mut uk = Node::new("uk");
    let mut fr = Node::new("fr");
    let h_ukfr = hash_password("pw-ukfr");
    let h_fruk = hash_password("pw-fruk");
    let tls_server = format!(
        "[smpp.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    // The modems of `sites`: each dear for the others' countries.
    let channels = |sites: &[&str]| {
        sites
            .iter()
            .map(|s| {
                let (uk, fr) = if *s == "fr" { (0.09, 0.02) } else { (0.02, 0.09) };
                format!(
                    "[[channel]]\nname = \"{s}-modems\"\nkind = \"modems\"\nsite = \"{s}\"\ntariff = {{ \"44\" = {uk}, \"33\" = {fr} }}\n"
                )
            })
            .collect::<String>()
    };
    uk.configure_as(
        "none",
        &format!(
            "[smpp]\nlisten = [\"127.0.0.1:{}\"]\n{tls_server}\n{}\n{}",
            uk.smpp,
            tls_peer("fr", fr.smpp, "pw-ukfr", &h_fruk, &ca),
            channels(&["uk", "fr"])
        ),
    );
    fr.configure_as(
        "none",
        &format!(
            "[smpp]\nlisten = [\"127.0.0.1:{}\"]\n{tls_server}\n{}\n{}",
            fr.smpp,
            tls_peer("uk", uk.smpp, "pw-fruk", &h_ukfr, &ca),
            channels(&["fr", "uk"])
        ),
    );
    fr.start();
    uk.start();
    wait_until("uk binds to fr over TLS", Duration::from_secs(20), || {
        uk.log_has(&["bound to peer site", "peer=fr"])
    });
    wait_until("fr binds to uk over TLS", Duration::from_secs(20), || {
        fr.log_has(&["bound to peer site", "peer=uk"])
    });
    let number = "+33612345001";
    uk.mail_one(number, "over TLS");
    wait_until("the French modem sends", Duration::from_secs(20), || {
        fr.sent_to_number(number) == 1
    });
    assert_eq!(uk.sent_to_number(number), 0);

    // A plain (non-TLS) client gets nowhere: the server speaks TLS only. smpplib binds in
    // clear and must fail.
    let out = common::python(
        "smpp_client.py",
        &["bind", "127.0.0.1", &fr.smpp.to_string(), "uk", "pw-ukfr"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_ne!(
        v["bind"], 0,
        "a clear-text bind succeeded on a TLS port: {v}"
    );

    // A site that trusts another CA: its link to France fails the handshake, and says why.
    let mut de = Node::new("de");
    de.configure_as(
        "none",
        &format!(
            "[smpp]\nlisten = [\"127.0.0.1:{}\"]\n{}\n{}",
            de.smpp,
            tls_peer(
                "fr",
                fr.smpp,
                "pw-defr",
                &hash_password("pw-frde"),
                &other_ca
            ),
            channels(&["de", "fr"])
        ),
    );
    de.start();
    wait_until(
        "de says why it cannot bind",
        Duration::from_secs(20),
        || de.log_has(&["peer link failed", "peer=fr", "TLS handshake"]),
    );
    let line = de
        .log()
        .lines()
        .find(|l| l.contains("peer link failed"))
        .unwrap_or_default()
        .to_string();
    eprintln!("the link that trusts another CA says: {line}");
    assert!(
        line.contains("UnknownIssuer") || line.contains("unknown issuer"),
        "{line}"
    );
    assert!(!de.log_has(&["bound to peer site"]), "{}", de.log());
    // France logged a failed handshake from it.
    wait_until(
        "fr logs the refused handshake",
        Duration::from_secs(5),
        || fr.log_has(&["TLS handshake failed"]),
    );
}
