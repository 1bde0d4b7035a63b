//! Ranking: every cost term, every exclusion, the tie-break, the forwarded scope; reloads; and
//! the routing sections of the configuration with their located errors.

use std::path::Path;
use std::sync::Arc;

use mail2sms::config::{self, Config};
use mail2sms::route::{Cost, Exclusions, Router, RouterState, Scope};

const SITE: &str = r#"
[site]
name = "uk"
default_country = "GB"
sms_domains = ["sms"]
[store]
path = "q.db"
"#;

/// Three sites; uk is this one. Costs chosen so every term shows in a total.
const ORG: &str = r#"
[[peer]]
name = "fr"
forwarding_cost = 0.002
[[peer]]
name = "de"
forwarding_cost = "0.003"

[[channel]]
name = "uk-modems"
kind = "modems"
site = "uk"
tariff = { "44" = 0.03, "33" = 0.11 }

[[channel]]
name = "uk-smpp"
kind = "smpp"
site = "uk"
tariff = { "+44" = 0.035, "+49" = 0.05 }

[[channel]]
name = "fr-modems"
kind = "modems"
site = "fr"
tariff = { "33" = 0.04, "336" = 0.02, "3361" = 0.01 }

[[channel]]
name = "de-peer"
kind = "peer"
site = "de"
tariff = { "49" = 0.02, "33" = 0.037 }
"#;

fn parse(text: &str) -> Result<Config, config::ConfigError> {
    config::parse(Path::new("/etc/mail2sms/gw.toml"), &format!("{SITE}{text}"))
}

fn org(extra: &str) -> Config {
    parse(&format!("{ORG}{extra}")).unwrap_or_else(|e| panic!("{e}"))
}

/// The ranking in one line per candidate: `channel tariff+forwarding+workload=total`, or
/// `channel x reasons` when excluded.
fn lines(r: &mail2sms::route::Ranking) -> Vec<String> {
    r.candidates()
        .map(|c| {
            let k = c.choice;
            if k.is_included() {
                format!(
                    "{} {}+{}+{}={}",
                    c.channel, k.tariff, k.forwarding, k.workload, k.total
                )
            } else {
                let reasons: Vec<&str> = k.excluded.reasons().collect();
                format!("{} x {}", c.channel, reasons.join(", "))
            }
        })
        .collect()
}

type Setup = fn(&RouterState);

/// What a row shows, extra configuration, live state, number, parts, the ranking.
type Row = (
    &'static str,
    &'static str,
    Setup,
    &'static str,
    u32,
    &'static [&'static str],
);

/// A channel at fr whose block covers prefixes its own tariff prices.
const FR_SMPP_BLOCKED: &str = "[[channel]]\nname = \"fr-smpp\"\nkind = \"smpp\"\nsite = \"fr\"\n\
    tariff = { \"33\" = 0.03, \"336\" = 0.005, \"3361\" = 0.001 }\nblocked_prefixes = [\"336\"]\n";

/// Each row: what it shows, extra configuration, live state, number, parts, and the ranking.
#[test]
fn ranking_table() {
    let none: Setup = |_| {};
    let cases: &[Row] = &[
        (
            "tariff x parts plus forwarding; the cheapest site wins; no tariff excludes",
            "",
            none,
            "+33612345678",
            2,
            &[
                "fr-modems 0.02+0.002+0=0.022",
                "de-peer 0.074+0.003+0=0.077",
                "uk-modems 0.22+0+0=0.22",
                "uk-smpp x no tariff for this prefix",
            ],
        ),
        (
            "forwarding decides between close tariffs; longest prefix per channel",
            "",
            none,
            "+33477858589",
            1,
            &[
                "de-peer 0.037+0.003+0=0.04",
                "fr-modems 0.04+0.002+0=0.042",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x no tariff for this prefix",
            ],
        ),
        (
            "a local channel costs no forwarding",
            "",
            none,
            "+447700900123",
            3,
            &[
                "uk-modems 0.09+0+0=0.09",
                "uk-smpp 0.105+0+0=0.105",
                "de-peer x no tariff for this prefix",
                "fr-modems x no tariff for this prefix",
            ],
        ),
        (
            "workload: 100 parts at 1/s is 100 s, x 0.001 = 0.1 at fr, which now loses",
            "[routing]\nworkload_weight = 0.001\n",
            |s| s.set_workload("fr", 100, 1.0),
            "+33612345678",
            2,
            &[
                "de-peer 0.074+0.003+0=0.077",
                "fr-modems 0.02+0.002+0.1=0.122",
                "uk-modems 0.22+0+0=0.22",
                "uk-smpp x no tariff for this prefix",
            ],
        ),
        (
            "workload of this site counts too",
            "[routing]\nworkload_weight = 0.001\n",
            |s| s.set_workload("uk", 30, 2.0),
            "+447700900123",
            1,
            &[
                "uk-modems 0.03+0+0.015=0.045",
                "uk-smpp 0.035+0+0.015=0.05",
                "de-peer x no tariff for this prefix",
                "fr-modems x no tariff for this prefix",
            ],
        ),
        (
            "a stalled site (queue, no throughput) counts max_backlog_secs",
            "[routing]\nworkload_weight = 0.001\nmax_backlog_secs = 60\n",
            |s| s.set_workload("fr", 5, 0.0),
            "+33612345678",
            1,
            &[
                "de-peer 0.037+0.003+0=0.04",
                "fr-modems 0.01+0.002+0.06=0.072",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x no tariff for this prefix",
            ],
        ),
        (
            "an empty queue counts nothing, whatever the throughput",
            "[routing]\nworkload_weight = 0.001\n",
            |s| s.set_workload("fr", 0, 0.0),
            "+33612345678",
            1,
            &[
                "fr-modems 0.01+0.002+0=0.012",
                "de-peer 0.037+0.003+0=0.04",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x no tariff for this prefix",
            ],
        ),
        (
            "a site detected down is excluded",
            "",
            |s| {
                s.set_site_up("fr", false);
            },
            "+33612345678",
            1,
            &[
                "de-peer 0.037+0.003+0=0.04",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x no tariff for this prefix",
                "fr-modems x site down",
            ],
        ),
        (
            "a site down and back up is used again",
            "",
            |s| {
                s.set_site_up("fr", false);
                s.set_site_up("fr", true);
            },
            "+33612345678",
            1,
            &[
                "fr-modems 0.01+0.002+0=0.012",
                "de-peer 0.037+0.003+0=0.04",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x no tariff for this prefix",
            ],
        ),
        (
            "a channel down is excluded, its site's other channels stay",
            "",
            |s| {
                s.set_channel_up("uk-modems", false);
            },
            "+447700900123",
            1,
            &[
                "uk-smpp 0.035+0+0=0.035",
                "uk-modems x channel down",
                "de-peer x no tariff for this prefix",
                "fr-modems x no tariff for this prefix",
            ],
        ),
        (
            "a peer marked down by the configuration starts down",
            "[[peer]]\nname = \"es\"\nup = false\n[[channel]]\nname = \"es-modems\"\nkind = \"modems\"\nsite = \"es\"\ntariff = { \"49\" = 0.001 }\n",
            none,
            "+49301234567",
            1,
            &[
                "de-peer 0.02+0.003+0=0.023",
                "uk-smpp 0.05+0+0=0.05",
                "uk-modems x no tariff for this prefix",
                "es-modems x site down",
                "fr-modems x no tariff for this prefix",
            ],
        ),
        (
            "a blocked destination excludes every channel, each with all its reasons",
            "[routing]\nblocked_prefixes = [\"+3361\"]\n",
            |s| {
                s.set_site_up("de", false);
            },
            "+33612345678",
            1,
            &[
                "uk-modems x blocked",
                "uk-smpp x blocked, no tariff for this prefix",
                "de-peer x blocked, site down",
                "fr-modems x blocked",
            ],
        ),
        (
            "a channel's block beats its own tariff, at the same prefix and longer ones",
            FR_SMPP_BLOCKED,
            none,
            "+33612345678",
            1,
            &[
                "fr-modems 0.01+0.002+0=0.012",
                "de-peer 0.037+0.003+0=0.04",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x no tariff for this prefix",
                "fr-smpp x blocked on this channel",
            ],
        ),
        (
            "outside its block the channel's tariff applies",
            FR_SMPP_BLOCKED,
            none,
            "+33477858589",
            1,
            &[
                "fr-smpp 0.03+0.002+0=0.032",
                "de-peer 0.037+0.003+0=0.04",
                "fr-modems 0.04+0.002+0=0.042",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x no tariff for this prefix",
            ],
        ),
        (
            "allowed channels: the longest rule decides",
            "[routing.allowed_channels]\n\"+33\" = [\"uk-modems\", \"de-peer\"]\n\"336\" = [\"fr-modems\"]\n",
            none,
            "+33612345678",
            1,
            &[
                "fr-modems 0.01+0.002+0=0.012",
                "uk-modems x not allowed",
                "uk-smpp x not allowed, no tariff for this prefix",
                "de-peer x not allowed",
            ],
        ),
        (
            "allowed channels: a shorter rule where the longer does not match",
            "[routing.allowed_channels]\n\"+33\" = [\"uk-modems\", \"de-peer\"]\n\"336\" = [\"fr-modems\"]\n",
            none,
            "+33477858589",
            1,
            &[
                "de-peer 0.037+0.003+0=0.04",
                "uk-modems 0.11+0+0=0.11",
                "uk-smpp x not allowed, no tariff for this prefix",
                "fr-modems x not allowed",
            ],
        ),
        (
            "no channel has a tariff: everything excluded, nothing chosen",
            "",
            none,
            "+8613800138000",
            1,
            &[
                "uk-modems x no tariff for this prefix",
                "uk-smpp x no tariff for this prefix",
                "de-peer x no tariff for this prefix",
                "fr-modems x no tariff for this prefix",
            ],
        ),
    ];
    for (what, extra, setup, number, parts, want) in cases {
        let state = RouterState::new();
        let router = Router::new(&org(extra).routing, state.clone()).unwrap();
        setup(&state);
        let r = router.rank(number, *parts).unwrap();
        assert_eq!(lines(&r), *want, "{what}");
        assert_eq!(
            r.best().is_none(),
            want.iter().all(|l| l.contains(" x ")),
            "{what}"
        );
    }
}

/// Nothing usable: a message waits when a candidate is only down, and fails when every
/// candidate is excluded by the configuration.
#[test]
fn unroutable_messages_wait_for_health_or_fail() {
    let router = Router::from_config(&org("[routing]\nblocked_prefixes = [\"+3361\"]\n")).unwrap();
    let state = router.state();
    state.set_site_up("fr", false);
    state.set_site_up("de", false);
    state.set_channel_up("uk-modems", false);
    // +3362: every candidate with a tariff is down.
    let r = router.rank("+33623456789", 1).unwrap();
    assert!(r.best().is_none() && r.may_recover());
    // +3361 is blocked: down or not, it will never go.
    let r = router.rank("+33612345678", 1).unwrap();
    assert!(r.best().is_none() && !r.may_recover());
    // No tariff anywhere.
    let r = router.rank("+8613800138000", 1).unwrap();
    assert!(r.best().is_none() && !r.may_recover());
    // The explanation says the same.
    let plan = router.plan();
    let waits = plan
        .explain("+33623456789", 1, Scope::Organization)
        .unwrap()
        .render();
    assert!(
        waits.contains("no route: the message waits until a site or channel above is back up"),
        "{waits}"
    );
    let never = plan
        .explain("+33612345678", 1, Scope::Organization)
        .unwrap()
        .render();
    assert!(
        never.contains("no route: the message cannot be sent"),
        "{never}"
    );
    state.set_site_up("fr", true);
    let fine = router
        .plan()
        .explain("+33623456789", 1, Scope::Organization)
        .unwrap()
        .render();
    assert!(!fine.contains("no route"), "{fine}");
    assert_eq!(
        router
            .rank("+33623456789", 1)
            .unwrap()
            .best()
            .unwrap()
            .channel,
        "fr-modems"
    );
}

/// Equal totals: this site first, then by site name, then by channel name, whatever the order
/// in the file.
#[test]
fn ties_are_broken_local_first_then_site_then_channel() {
    let cfg = parse(
        r#"
[[peer]]
name = "fr"
[[peer]]
name = "de"
[[channel]]
name = "aa-fr"
kind = "smpp"
site = "fr"
tariff = { "33" = 0.05 }
[[channel]]
name = "zz-local"
kind = "smpp"
site = "uk"
tariff = { "33" = 0.05 }
[[channel]]
name = "mm-de"
kind = "smpp"
site = "de"
tariff = { "33" = 0.05 }
[[channel]]
name = "bb-fr"
kind = "modems"
site = "fr"
tariff = { "3" = 0.05 }
[[channel]]
name = "aa-local"
kind = "modems"
site = "uk"
tariff = { "33" = 0.05 }
"#,
    )
    .unwrap();
    let router = Router::from_config(&cfg).unwrap();
    for _ in 0..3 {
        let r = router.rank("+33612345678", 1).unwrap();
        let order: Vec<&str> = r.candidates().map(|c| c.channel).collect();
        assert_eq!(order, ["aa-local", "zz-local", "mm-de", "aa-fr", "bb-fr"]);
        assert!(r.candidates().all(|c| c.choice.total == Cost(50_000)));
        let best = r.best().unwrap();
        assert!(best.local);
        assert_eq!((best.site, best.kind.as_str()), ("uk", "modems"));
    }
}

/// A message a peer forwarded here is only ranked over this site's channels.
#[test]
fn forwarded_messages_stay_here() {
    let router = Router::from_config(&org("")).unwrap();
    let r = router.rank_forwarded("+33612345678", 2).unwrap();
    assert_eq!(
        lines(&r),
        [
            "uk-modems 0.22+0+0=0.22",
            "uk-smpp x no tariff for this prefix"
        ]
    );
    assert!(r.candidates().all(|c| c.local));
}

#[test]
fn numbers_are_checked() {
    let router = Router::from_config(&org("")).unwrap();
    for bad in [
        "",
        "+",
        "33 6",
        "+33-6",
        "abc",
        "++33",
        "123456789012345678901",
        "+٣٣",
    ] {
        let e = router.rank(bad, 1).unwrap_err();
        assert!(
            e.to_string().contains("is not a number in E.164 form"),
            "{bad}: {e}"
        );
    }
    // With or without +, 20 digits at most, and zero parts counts as one.
    let a = router.rank("+33612345678", 1).unwrap();
    let b = router.rank("33612345678", 0).unwrap();
    assert_eq!(a.choices, b.choices);
    assert!(router.rank("12345678901234567890", 1).is_ok());
}

/// A ranking keeps the plan it was made with, so names stay right across a reload.
#[test]
fn a_ranking_outlives_a_reload() {
    let router = Router::from_config(&org("")).unwrap();
    let before = router.rank("+33612345678", 1).unwrap();
    let renamed = org("").routing;
    let mut renamed = renamed;
    renamed.channels.retain(|c| c.name != "fr-modems");
    router.reload_routing(&renamed).unwrap();
    assert_eq!(before.best().unwrap().channel, "fr-modems");
    assert_eq!(
        router
            .rank("+33612345678", 1)
            .unwrap()
            .best()
            .unwrap()
            .channel,
        "de-peer"
    );
}

#[test]
fn reload_swaps_tables_reports_changes_and_keeps_live_state() {
    let router = Router::from_config(&org("")).unwrap();
    let state = router.state().clone();
    state.set_site_up("de", false);
    state.set_workload("fr", 10, 1.0);

    let new = parse(
        &(ORG.replace("forwarding_cost = 0.002", "forwarding_cost = 0.001")
            .replace("\"336\" = 0.02, \"3361\" = 0.01", "\"336\" = 0.015, \"337\" = 0.02")
            .replace(
                "[[channel]]\nname = \"uk-smpp\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"+44\" = 0.035, \"+49\" = 0.05 }\n",
                "[[channel]]\nname = \"uk-sms\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"+44\" = 0.033 }\n",
            )
            + "[routing]\nworkload_weight = 0.001\nblocked_prefixes = [\"+881\"]\n[routing.allowed_channels]\n\"+44\" = [\"uk-modems\"]\n"),
    )
    .unwrap();
    let report = router.reload(&new).unwrap();
    assert_eq!(
        report.changes,
        [
            "peer fr: forwarding cost 0.002 -> 0.001",
            "channel uk-sms added (smpp at uk, 1 prefixes)",
            "channel fr-modems: tariff 3 -> 3 prefixes (1 added, 1 removed, 1 repriced)",
            "channel uk-smpp removed",
            "workload weight 0.001 per second of backlog, counted up to 3600 s (was 0, 3600 s)",
            "blocked prefixes now [+881]",
            "allowed channels now [+44: uk-modems]",
        ]
    );
    // The new tables are in use, with the live state reported before the reload.
    let r = router.rank("+33612345678", 1).unwrap();
    assert_eq!(
        lines(&r),
        [
            "fr-modems 0.015+0.001+0.01=0.026",
            "uk-modems 0.11+0+0=0.11",
            "uk-sms x no tariff for this prefix",
            "de-peer x site down",
        ]
    );
    // The same file again changes nothing.
    assert!(router.reload(&new).unwrap().changes.is_empty());

    // `up` changed in the file is applied (an admin taking a site out by hand) ...
    let mut down = new.clone();
    down.routing.peers.iter_mut().for_each(|p| p.up = false);
    let report = router.reload(&down).unwrap();
    assert_eq!(
        report.changes,
        [
            "peer fr: marked down by the configuration",
            "peer de: marked down by the configuration"
        ]
    );
    assert_eq!(state.site_up("fr"), Some(false));
    // ... but an unchanged `up` does not override what detection reported since.
    state.set_site_up("fr", true);
    router.reload(&down).unwrap();
    assert_eq!(state.site_up("fr"), Some(true));
}

/// What the SIGHUP handler does with a file that has an error: the error names the file and
/// line, and the tables in use stay, until a good file comes.
#[test]
fn reload_keeps_the_old_tables_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("fr.csv");
    let toml = dir.path().join("gw.toml");
    std::fs::write(&csv, "33,0.04\n336,0.02\n").unwrap();
    std::fs::write(
        &toml,
        format!("{SITE}[[peer]]\nname = \"fr\"\n[[channel]]\nname = \"fr-modems\"\nkind = \"modems\"\nsite = \"fr\"\ntariff_file = \"fr.csv\"\n"),
    )
    .unwrap();
    let router = Router::from_config(&config::load(&toml).unwrap()).unwrap();
    let plan = router.plan();

    std::fs::write(&csv, "33,0.04\n336,0.02\n337,O.02\n").unwrap();
    let e = config::load(&toml).unwrap_err();
    assert_eq!((e.file.as_path(), e.line), (csv.as_path(), 3));
    assert!(Arc::ptr_eq(&plan, &router.plan()));
    assert_eq!(
        router.rank("+33612345678", 1).unwrap().choices[0].total,
        Cost(20_000)
    );

    // A reload the router itself refuses leaves the tables too.
    std::fs::write(&csv, "33,0.04\n336,0.03\n").unwrap();
    let mut renamed = config::load(&toml).unwrap();
    renamed.routing.local = "london".into();
    let e = router.reload(&renamed).unwrap_err();
    assert!(e.to_string().contains("renamed by restarting"), "{e}");
    assert!(Arc::ptr_eq(&plan, &router.plan()));

    // The good file is taken.
    let report = router.reload(&config::load(&toml).unwrap()).unwrap();
    assert_eq!(
        report.changes,
        ["channel fr-modems: tariff 2 -> 2 prefixes (0 added, 0 removed, 1 repriced)"]
    );
    assert_eq!(
        router.rank("+33612345678", 1).unwrap().choices[0].total,
        Cost(30_000)
    );
}

/// Health and workload reports arrive from other threads while decisions run.
#[test]
fn state_changes_from_other_threads_are_seen() {
    let router = Arc::new(Router::from_config(&org("")).unwrap());
    let state = router.state().clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..2000 {
                state.set_site_up("fr", i % 2 == 0);
                state.set_workload("de", i, 1.0);
            }
            state.set_site_up("fr", false);
        });
        s.spawn(|| {
            for _ in 0..2000 {
                let r = router.rank("+33612345678", 1).unwrap();
                assert_eq!(r.choices.len(), 4);
            }
        });
    });
    let r = router.rank("+33612345678", 1).unwrap();
    let fr = r.candidates().find(|c| c.channel == "fr-modems").unwrap();
    assert!(fr.choice.excluded.contains(Exclusions::SITE_DOWN));
}

/// Each row: routing sections, the key the error names, its line (counted in the routing text,
/// which follows the 7 lines of the site and store), and a fragment of the message.
#[test]
fn routing_config_errors_name_key_and_line() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "[[peer]]\nname = \"uk\"\n",
            "peer[0].name",
            2,
            "this site's own name",
        ),
        (
            "[[peer]]\nname = \"fr\"\n[[peer]]\nname = \"fr\"\n",
            "peer[1].name",
            4,
            "names two peers",
        ),
        (
            "[[peer]]\nname = \"f r\"\n",
            "peer[0].name",
            2,
            "letters, digits",
        ),
        (
            "[[peer]]\nname = \"fr\"\naddress = 1\n",
            "peer[0].address",
            3,
            "unknown field",
        ),
        (
            "[[peer]]\nname = \"fr\"\nforwarding_cost = -1\n",
            "peer[0].forwarding_cost",
            3,
            "negative",
        ),
        (
            "[[channel]]\nname = \"x\"\nkind = \"modems\"\nsite = \"es\"\ntariff = { \"34\" = 0.1 }\n",
            "channel[0].site",
            4,
            "neither this site",
        ),
        (
            "[[channel]]\nname = \"x\"\nkind = \"peer\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n",
            "channel[0].site",
            4,
            "must name a [[peer]]",
        ),
        (
            "[[channel]]\nname = \"x\"\nkind = \"gsm\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n",
            "channel[0].kind",
            3,
            "unknown variant `gsm`",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"modems\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n[[channel]]\nname = \"b\"\nkind = \"modems\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n",
            "channel[1].kind",
            8,
            "already has a modems channel (`a`)",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n",
            "channel[1].name",
            7,
            "names two channels",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\n",
            "channel[0]",
            1,
            "needs a tariff",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\ntariff_file = \"a.csv\"\n",
            "channel[0].tariff_file",
            6,
            "not both",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\n[channel.tariff]\n\"34\" = 0.1\n\"3x\" = 0.2\n",
            "channel[0].tariff.3x",
            7,
            "not a prefix of digits",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\n[channel.tariff]\n\"34\" = 0.1\n\"35\" = \"0,2\"\n",
            "channel[0].tariff.35",
            7,
            "not a comma",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1, \"+34\" = 0.2 }\n",
            "channel[0].tariff",
            5,
            "given twice",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\nblocked_prefixes = [\"34\", \"0034\"]\n",
            "channel[0].blocked_prefixes[1]",
            6,
            "starts with 0",
        ),
        (
            "[routing]\nworkload_weight = 5000\n",
            "routing.workload_weight",
            2,
            "at most 1000",
        ),
        (
            "[routing]\nmax_backlog_secs = 0\n",
            "routing.max_backlog_secs",
            2,
            "between 1 and",
        ),
        (
            "[routing]\nblocked_prefixes = [\"+33\", \"x\"]\n",
            "routing.blocked_prefixes[1]",
            2,
            "not a prefix",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n[routing.allowed_channels]\n\"+44\" = [\"a\", \"b\"]\n",
            "routing.allowed_channels.+44[1]",
            7,
            "`b` is not a [[channel]] name",
        ),
        (
            "[routing.allowed_channels]\n\"+44\" = []\n",
            "routing.allowed_channels.+44",
            2,
            "empty list",
        ),
        (
            "[[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"34\" = 0.1 }\n[routing.allowed_channels]\n\"44\" = [\"a\"]\n\"+44\" = [\"a\"]\n",
            "routing.allowed_channels.44",
            7,
            "given twice",
        ),
    ];
    let offset = SITE.lines().count();
    for (text, key, line, fragment) in cases {
        let e = parse(text).expect_err(text);
        assert_eq!(&e.key, key, "key for {text:?}: {e}");
        assert_eq!(e.line, line + offset, "line for {text:?}: {e}");
        assert!(e.message.contains(fragment), "message for {text:?}: {e}");
    }
}

#[test]
fn routing_sections_are_optional_and_default_sensibly() {
    let cfg = parse("").unwrap();
    let r = &cfg.routing;
    assert_eq!(r.local, "uk");
    assert!(r.peers.is_empty() && r.channels.is_empty());
    assert_eq!(r.workload_weight, Cost::ZERO);
    assert_eq!(r.max_backlog.as_secs(), 3600);
    let router = Router::from_config(&cfg).unwrap();
    let ranking = router.rank("+33612345678", 1).unwrap();
    assert!(ranking.choices.is_empty() && ranking.best().is_none());
    // Peers are up unless the file says otherwise; costs may be integers or strings.
    let cfg = org("");
    assert!(cfg.routing.peers.iter().all(|p| p.up));
    assert_eq!(cfg.routing.peers[1].forwarding_cost, Cost(3_000));
}

/// More than 16 candidates, and totals beyond 47 bits, take the general ordering path; it must
/// order exactly as the fast one.
#[test]
fn many_candidates_and_huge_costs_order_alike() {
    let mut text = String::from("[[peer]]\nname = \"far\"\nforwarding_cost = 200000000\n");
    // 20 local channels whose prices go down as their names go up, two pairs tying.
    for i in 0..20u32 {
        let price = match i {
            3 | 4 => 50,
            10 | 11 => 20,
            _ => 100 - i,
        };
        text.push_str(&format!(
            "[[channel]]\nname = \"c{i:02}\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = {{ \"33\" = 0.{price:03} }}\n"
        ));
    }
    text.push_str("[[channel]]\nname = \"far-link\"\nkind = \"peer\"\nsite = \"far\"\ntariff = { \"33\" = 0 }\n");
    let router = Router::from_config(&parse(&text).unwrap()).unwrap();
    let r = router.rank("+33612345678", 1).unwrap();
    let got: Vec<(String, u64)> = r
        .candidates()
        .map(|c| (c.channel.to_string(), c.choice.total.0))
        .collect();
    let mut want = got.clone();
    want.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    assert_eq!(got, want);
    let first: Vec<&str> = got.iter().take(5).map(|(n, _)| n.as_str()).collect();
    assert_eq!(first, ["c10", "c11", "c03", "c04", "c19"]);
    assert_eq!(
        got.last().unwrap(),
        &("far-link".to_string(), 200_000_000 * 1_000_000)
    );

    // A few candidates, one beyond 47 bits: the general path too.
    let small = "[[peer]]\nname = \"far\"\nforwarding_cost = 200000000\n\
        [[channel]]\nname = \"a\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff = { \"33\" = 0.5 }\n\
        [[channel]]\nname = \"b\"\nkind = \"modems\"\nsite = \"far\"\ntariff = { \"33\" = 0.01 }\n\
        [[channel]]\nname = \"c\"\nkind = \"modems\"\nsite = \"uk\"\ntariff = { \"33\" = 0.5 }\n";
    let router = Router::from_config(&parse(small).unwrap()).unwrap();
    router.state().set_channel_up("a", false);
    let r = router.rank("+33612345678", 1).unwrap();
    let order: Vec<&str> = r.candidates().map(|c| c.channel).collect();
    assert_eq!(order, ["c", "b", "a"]);
}
