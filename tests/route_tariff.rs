//! Tariffs: longest-prefix match, the CSV format and its errors, and a 100k-prefix file.

use std::collections::HashMap;
use std::path::Path;

use mail2sms::route::tariff::{Cost, Prefix, PrefixTableBuilder, Tariff};
use proptest::prelude::*;

fn tariff(entries: &[(&str, &str)]) -> Tariff {
    Tariff::from_entries(
        entries
            .iter()
            .map(|(p, c)| (p.parse().unwrap(), Cost::parse_decimal(c).unwrap())),
    )
    .unwrap()
}

/// Each row: a number and the prefix (and cost) that must price it, or none.
#[test]
fn longest_prefix_match_table() {
    let t = tariff(&[
        ("1", "0.01"),
        ("33", "0.05"),
        ("336", "0.03"),
        ("3361", "0.02"),
        ("33612345678", "0.001"),
        ("44", "0.04"),
        ("447", "0.035"),
        ("447700900", "0.5"),
        ("123456789012345", "9"),
        ("99", "0"),
    ]);
    let cases: &[(&str, Option<(&str, &str)>)] = &[
        // Overlapping prefixes: the longest that the number starts with wins.
        ("33477858589", Some(("33", "0.05"))),
        ("33612345670", Some(("3361", "0.02"))),
        ("33612345678", Some(("33612345678", "0.001"))),
        ("336123456789", Some(("33612345678", "0.001"))),
        ("33698765432", Some(("336", "0.03"))),
        ("447700900123", Some(("447700900", "0.5"))),
        ("447700901123", Some(("447", "0.035"))),
        ("442079460000", Some(("44", "0.04"))),
        // One-digit prefix: the whole of zone 1.
        ("12125550100", Some(("1", "0.01"))),
        ("1", Some(("1", "0.01"))),
        // Fifteen-digit prefix, and numbers longer than any prefix.
        ("123456789012345", Some(("123456789012345", "9"))),
        ("12345678901234567890", Some(("123456789012345", "9"))),
        ("12345678901234", Some(("1", "0.01"))),
        // A free destination is a match with cost zero, not "no tariff".
        ("99123", Some(("99", "0"))),
        // No match: no prefix, a number shorter than every matching prefix, empty input.
        ("49301234567", None),
        ("3", None),
        ("4", None),
        ("", None),
        // A separator ends the lookup: what precedes it is matched, never what follows.
        ("33-612345678", Some(("33", "0.05"))),
        ("+33612345678", None),
    ];
    for (number, want) in cases {
        let got = t.lookup(number.as_bytes());
        let got = got.map(|m| (m.prefix.as_str().to_string(), m.cost));
        let want = want.map(|(p, c)| (p.to_string(), Cost::parse_decimal(c).unwrap()));
        assert_eq!(got, want, "number {number}");
    }
    assert_eq!(t.len(), 10);
}

#[test]
fn empty_tariff_matches_nothing() {
    let t = Tariff::from_entries([]).unwrap();
    assert!(t.is_empty());
    assert_eq!(t.lookup(b"33612345678"), None);
    let table = PrefixTableBuilder::new().finish();
    assert_eq!(table.longest_match(b"1"), None);
}

#[test]
fn same_prefix_twice_is_refused() {
    let e = Tariff::from_entries([
        ("33".parse().unwrap(), Cost(1)),
        ("+33".parse().unwrap(), Cost(2)),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("prefix +33 is given twice"), "{e}");
}

/// Each row: CSV text, then the line and column of the error and a fragment of its message, or
/// the prefixes (with costs) it must give.
#[test]
fn csv_format_and_errors() {
    type Want = Result<&'static [(&'static str, u64)], (usize, usize, &'static str)>;
    let cases: &[(&str, Want)] = &[
        (
            "prefix,cost\n33,0.05\n336,0.03\n",
            Ok(&[("33", 50_000), ("336", 30_000)]),
        ),
        // No header, a BOM, CRLF, blanks, comments, quotes, + signs, ; and tab separators.
        (
            "\u{feff}# price list\r\n\r\n33,0.05 # France\r\n\"+336\";\"0.03\"\r\n44\t0.04\r\n  447 ,  0.035\r\n",
            Ok(&[
                ("33", 50_000),
                ("336", 30_000),
                ("44", 40_000),
                ("447", 35_000),
            ]),
        ),
        ("Destination;Price\n1;0.0085\n", Ok(&[("1", 8_500)])),
        ("# nothing\n\n", Ok(&[])),
        ("", Ok(&[])),
        // Errors, located.
        (
            "prefix,cost\n33,0.05\n3x6,0.03\n",
            Err((3, 1, "not a prefix of digits")),
        ),
        ("33,0.05\n336, abc\n", Err((2, 6, "not a cost"))),
        ("33,0,05\n", Err((1, 1, "decimal point, not a comma"))),
        ("33;0,05\n", Err((1, 4, "with a point, not a comma"))),
        ("33\n", Err((1, 1, "expected two fields"))),
        ("33,0.05,FR\n", Err((1, 1, "found 3"))),
        ("33,-0.05\n", Err((1, 4, "negative"))),
        ("33,0.0000001\n", Err((1, 4, "more than six decimals"))),
        ("0033,0.05\n", Err((1, 1, "starts with 0"))),
        ("1234567890123456,1\n", Err((1, 1, "more than 15 digits"))),
        (",0.05\n", Err((1, 1, "is empty"))),
        ("33,5000\n", Err((1, 4, "largest tariff"))),
        // A word after the first data line is not a header but an error.
        ("33,0.05\nprefix,cost\n", Err((2, 1, "not a prefix"))),
        // The same prefix twice names both lines, whatever their order.
        ("33,0.05\n44,0.04\n+33,0.06\n", Err((3, 1, "lines 1 and 3"))),
    ];
    for (text, want) in cases {
        match (Tariff::parse_csv(text), want) {
            (Ok(t), Ok(entries)) => {
                let got: Vec<(String, u64)> = t
                    .entries()
                    .iter()
                    .map(|(p, c)| (p.as_str().to_string(), c.0))
                    .collect();
                let want: Vec<(String, u64)> =
                    entries.iter().map(|(p, c)| (p.to_string(), *c)).collect();
                assert_eq!(got, want, "{text:?}");
            }
            (Err(e), Err((line, column, fragment))) => {
                assert_eq!((e.line, e.column), (*line, *column), "{text:?}: {e}");
                assert!(e.message.contains(fragment), "{text:?}: {e}");
            }
            (got, _) => panic!("{text:?}: unexpected {got:?}"),
        }
    }
}

/// A CSV error read through the configuration names the CSV file, its line, and the key that
/// names the file.
#[test]
fn csv_errors_in_a_config_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fr.csv"),
        "prefix,cost\n33,0.04\n336,0.02\n337,0..02\n",
    )
    .unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        r#"
[site]
name = "uk"
default_country = "GB"
sms_domains = ["sms"]
[store]
path = "q.db"
[[peer]]
name = "fr"
[[channel]]
name = "fr-modems"
kind = "modems"
site = "fr"
tariff_file = "fr.csv"
"#,
    )
    .unwrap();
    let e = mail2sms::config::load(&config).unwrap_err();
    assert_eq!(e.file, dir.path().join("fr.csv"));
    assert_eq!((e.line, e.column), (4, 5));
    assert_eq!(e.key, "channel[0].tariff_file");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:4:5: channel[0].tariff_file: `0..02` is not a cost",
            dir.path().join("fr.csv").display()
        )),
        "{shown}"
    );

    std::fs::remove_file(dir.path().join("fr.csv")).unwrap();
    let e = mail2sms::config::load(&config).unwrap_err();
    assert_eq!(e.file, config);
    assert_eq!(e.line, 14, "{e}");
    assert!(e.message.contains("cannot read"), "{e}");
}

/// Draws `n` distinct realistic prefixes (country code, then 0 to 7 more digits).
fn draw_prefixes(seed: u64, n: usize) -> Vec<String> {
    const CC: &[&str] = &[
        "1", "7", "20", "27", "30", "31", "32", "33", "34", "39", "41", "44", "46", "49", "55",
        "61", "81", "86", "91", "212", "234", "351", "353", "358", "420", "852", "971",
    ];
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut set = std::collections::BTreeSet::new();
    while set.len() < n {
        let mut p = CC[(next() % CC.len() as u64) as usize].to_string();
        for _ in 0..next() % 8 {
            p.push(char::from(b'0' + (next() % 10) as u8));
        }
        set.insert(p);
    }
    set.into_iter().collect()
}

fn naive_longest<'a>(map: &'a HashMap<String, u64>, number: &str) -> Option<(&'a str, u64)> {
    (1..=number.len().min(15))
        .rev()
        .find_map(|l| map.get_key_value(&number[..l]))
        .map(|(k, v)| (k.as_str(), *v))
}

/// A realistic size: 100k prefixes in a CSV file, read through the configuration, agree with a
/// naive lookup on every prefix and on numbers around them.
#[test]
fn hundred_thousand_prefix_csv() {
    let prefixes = draw_prefixes(0x5EED, 100_000);
    let mut csv = String::from("prefix,cost\n# generated\n");
    let mut map = HashMap::new();
    for (i, p) in prefixes.iter().enumerate() {
        let cost = 1_000 + (i as u64 * 7_919) % 200_000;
        csv.push_str(&format!("{p},{}\n", Cost(cost)));
        map.insert(p.clone(), cost);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.csv"), &csv).unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        "[site]\nname = \"uk\"\ndefault_country = \"GB\"\nsms_domains = [\"sms\"]\n[store]\npath = \"q.db\"\n\
         [[channel]]\nname = \"provider\"\nkind = \"smpp\"\nsite = \"uk\"\ntariff_file = \"big.csv\"\n",
    )
    .unwrap();
    let cfg = mail2sms::config::load(&config).unwrap();
    let t = &cfg.routing.channels[0].tariff;
    assert_eq!(t.len(), 100_000);
    for p in &prefixes {
        let m = t.lookup(p.as_bytes()).unwrap();
        assert_eq!((m.prefix.as_str(), m.cost.0), (p.as_str(), map[p]));
        // A number under the prefix, and one that differs in its last digit.
        let longer = format!("{p}0123456789");
        let want = naive_longest(&map, &longer);
        let got = t
            .lookup(longer.as_bytes())
            .map(|m| (m.prefix.as_str().to_string(), m.cost.0));
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v)), "{longer}");
        let mut other = p.clone().into_bytes();
        let last = other.len() - 1;
        other[last] = b'0' + (other[last] - b'0' + 1) % 10;
        let other = String::from_utf8(other).unwrap();
        let want = naive_longest(&map, &other);
        let got = t
            .lookup(other.as_bytes())
            .map(|m| (m.prefix.as_str().to_string(), m.cost.0));
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v)), "{other}");
    }
    // The routing plan built from it prices the same way.
    let router = mail2sms::route::Router::from_config(&cfg).unwrap();
    for p in prefixes.iter().step_by(97) {
        let r = router.rank(&format!("+{p}99"), 2).unwrap();
        let best = r.best().unwrap();
        let want = naive_longest(&map, &format!("{p}99")).unwrap().1;
        assert_eq!(best.choice.total, Cost(want * 2), "{p}");
    }
    assert!(Path::new(&dir.path().join("big.csv")).exists());
}

proptest! {
    /// Any set of prefixes: the table answers what a naive scan answers.
    #[test]
    fn table_agrees_with_a_naive_scan(
        prefixes in proptest::collection::btree_set("[1-9][0-9]{0,6}", 0..60),
        numbers in proptest::collection::vec("[0-9]{0,12}", 1..40),
    ) {
        let prefixes: Vec<String> = prefixes.into_iter().collect();
        let mut b = PrefixTableBuilder::new();
        for (i, p) in prefixes.iter().enumerate() {
            b.insert(p.as_bytes(), i as u32);
        }
        let table = b.finish();
        prop_assert_eq!(table.len(), prefixes.len());
        for n in numbers.iter().chain(prefixes.iter()) {
            let naive = prefixes
                .iter()
                .enumerate()
                .filter(|(_, p)| n.starts_with(p.as_str()))
                .max_by_key(|(_, p)| p.len())
                .map(|(i, p)| (p.len(), i as u32));
            let got = table.longest_match(n.as_bytes()).map(|m| (m.len, m.value));
            prop_assert_eq!(got, naive, "number {}", n);
        }
    }

    /// Prefix text never panics the parser and only valid prefixes come out.
    #[test]
    fn prefix_parser_takes_anything(s in ".{0,20}") {
        if let Ok(p) = s.parse::<Prefix>() {
            prop_assert!(!p.is_empty() && p.len() <= 15);
            prop_assert!(p.as_bytes().iter().all(u8::is_ascii_digit));
            prop_assert!(p.as_bytes()[0] != b'0');
        }
    }

    /// CSV text never panics the parser.
    #[test]
    fn csv_parser_takes_anything(s in "[0-9a-z,;\t#\" .+\n-]{0,200}") {
        let _ = Tariff::parse_csv(&s);
    }
}
