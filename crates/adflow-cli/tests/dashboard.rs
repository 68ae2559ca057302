//! `adflow run --http`: the dashboard at `/`, driven by headless Chromium (Debian's
//! `chromium`, `scripts/services/chromium.sh install`) while the run lingers. The numbers the
//! page shows equal the tables computed here from the file sink's changelogs: per campaign and
//! channel and per channel (orders, cost, GMV, ROI, refusal rate, ...), suppressed persons,
//! open anomalies per kind, triggers in total, per kind and per hour; dead letters and messages.

mod common;

use adflow_model::output::{div_round_half_away, Fixed, OutputRow};
use adflow_model::{Change, Table};
use common::{adflow, end_linger, free_port, ok, wait_or_kill};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `chromium`; `None` (the test is skipped) only with `ADFLOW_SKIP_SERVICE_TESTS=1`,
/// else a missing browser fails the test.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromium"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipped: ADFLOW_SKIP_SERVICE_TESTS=1 and no chromium on PATH");
            None
        }
        None => panic!(
            "chromium is not installed: run `scripts/services/chromium.sh install`, or set \
             ADFLOW_SKIP_SERVICE_TESTS=1"
        ),
    }
}

/// The current rows of `table` in `out` (rows whose signs sum to a positive number).
fn current(out: &Path, table: Table) -> Vec<OutputRow> {
    let text = std::fs::read_to_string(out.join(format!("{}.jsonl", table.name()))).unwrap();
    let mut sums: BTreeMap<OutputRow, i64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let c = Change::from_json_line(table, line).unwrap();
        *sums.entry(c.row).or_default() += c.sign;
    }
    sums.into_iter()
        .filter(|(_, s)| *s > 0)
        .map(|(r, _)| r)
        .collect()
}

/// What the page shows for a campaign and channel, or a channel, as the page formats it.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
struct Shown(BTreeMap<String, String>);

#[derive(Default)]
struct Sums {
    impressions: i64,
    clicks: i64,
    cost_fen: i64,
    orders: i64,
    gmv_fen: i64,
    signed: i64,
    refused: i64,
}

fn yuan(fen: i64) -> String {
    Fixed::<2>(fen).to_string()
}

impl Sums {
    fn shown(&self) -> Shown {
        let ratio = |num: i64, den: i64| {
            (den != 0).then(|| Fixed::<2>(div_round_half_away(num as i128, den as i128) as i64))
        };
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("impressions", self.impressions.to_string()),
            ("clicks", self.clicks.to_string()),
            ("cost", yuan(self.cost_fen)),
            ("orders", self.orders.to_string()),
            ("gmv", yuan(self.gmv_fen)),
            (
                "roi",
                ratio(self.gmv_fen * 100, self.cost_fen).map_or("–".into(), |r| r.to_string()),
            ),
            ("signed", self.signed.to_string()),
            ("refused", self.refused.to_string()),
            (
                "refusal_rate",
                ratio(self.refused * 10_000, self.signed + self.refused)
                    .map_or("–".into(), |r| format!("{r}%")),
            ),
        ] {
            m.insert(k.to_string(), v);
        }
        Shown(m)
    }
}

/// The page as Chromium rendered it, read by plain string search (the page's own markup:
/// `id="..."` on single numbers, `data-*` on table rows and chart bars).
struct Dom(String);

impl Dom {
    /// The text of the element with `id`.
    fn text(&self, id: &str) -> String {
        let at = self
            .0
            .find(&format!(" id=\"{id}\""))
            .unwrap_or_else(|| panic!("no element #{id}"));
        let rest = &self.0[at..];
        let start = rest.find('>').unwrap() + 1;
        let end = rest[start..].find('<').unwrap();
        unescape(&rest[start..start + end])
    }

    /// The inside of `<tbody id="...">`.
    fn tbody(&self, id: &str) -> &str {
        let open = format!("<tbody id=\"{id}\">");
        let at = self
            .0
            .find(&open)
            .unwrap_or_else(|| panic!("no tbody #{id}"))
            + open.len();
        let end = self.0[at..].find("</tbody>").unwrap();
        &self.0[at..at + end]
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the start tag `tag` (its text up to `>`).
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let end = tag[at..].find('"')?;
    Some(unescape(&tag[at..at + end]))
}

/// The rows of a table body: the start tag's attributes `keys`, and each `data-field` cell.
fn rows(body: &str, keys: &[&str]) -> BTreeMap<Vec<String>, Shown> {
    let mut out = BTreeMap::new();
    for tr in body.split("<tr").skip(1) {
        let tag = &tr[..tr.find('>').unwrap()];
        let Some(key) = keys
            .iter()
            .map(|k| attr(tag, k))
            .collect::<Option<Vec<_>>>()
        else {
            continue; // the "none" row of an empty table
        };
        let mut fields = BTreeMap::new();
        for td in tr.split("<td").skip(1) {
            let td_tag = &td[..td.find('>').unwrap()];
            if let Some(f) = attr(td_tag, "data-field") {
                let text = &td[td_tag.len() + 1..];
                fields.insert(f, unescape(&text[..text.find('<').unwrap()]));
            }
        }
        assert!(out.insert(key, Shown(fields)).is_none(), "a row twice");
    }
    out
}

#[test]
fn the_dashboard_shows_the_tables() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in"), dir.path().join("out"));
    ok(adflow()
        .args([
            "generate", "--seed", "3", "--users", "1000", "--days", "7", "--output",
        ])
        .arg(&input));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let err_path = dir.path().join("run.err");
    let child = adflow()
        .args(["run", "--workers", "2", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .args([
            "--http",
            &format!("127.0.0.1:{port}"),
            "--http-linger",
            "120",
        ])
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = Some(child);

    // The run's summary line, once whole: every table is written, the server lingers.
    let started = Instant::now();
    let summary = loop {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("adflow run: ")) {
            if text.contains(&format!("{l}\n")) {
                break l.to_string();
            }
        }
        if let Some(st) = child.as_mut().unwrap().try_wait().unwrap() {
            panic!("adflow run exited ({st}) before its summary: {text}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run did not finish: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // Virtual time runs only while no fetch is pending: 10 s of it are ~5 polls, each with
    // its answers rendered, before the DOM is dumped.
    let dom_path = dir.path().join("dom.html");
    let browser = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
            "--virtual-time-budget=10000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("chromium").display()
        ))
        .arg(&url)
        .stdout(std::fs::File::create(&dom_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (st, browser_err) = wait_or_kill(browser, Duration::from_secs(120), "chromium");
    assert!(st.success(), "chromium failed: {browser_err}");
    let (st, _) = end_linger(child.take().unwrap(), "adflow run --http");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&err_path).unwrap()
    );
    let dom = Dom(std::fs::read_to_string(&dom_path).unwrap());

    // The page polled and rendered both feeds without an error.
    let polls: u32 = attr(&dom.0[dom.0.find("<body").unwrap()..], "data-polls")
        .unwrap()
        .parse()
        .unwrap();
    assert!(polls >= 1, "the page never rendered its feeds");
    assert_eq!(dom.text("error"), "");
    assert_eq!(dom.text("ready"), "ready");

    // Per campaign and channel, and per channel: sums of the current campaign_metrics rows.
    let mut by_cc: BTreeMap<Vec<String>, Sums> = BTreeMap::new();
    let mut by_channel: BTreeMap<Vec<String>, Sums> = BTreeMap::new();
    let mut total = Sums::default();
    for row in current(&out, Table::CampaignMetrics) {
        let OutputRow::CampaignMetrics(r) = row else {
            unreachable!()
        };
        for s in [
            by_cc
                .entry(vec![r.campaign_id.clone(), r.channel.clone()])
                .or_default(),
            by_channel.entry(vec![r.channel.clone()]).or_default(),
            &mut total,
        ] {
            s.impressions += r.impressions;
            s.clicks += r.clicks;
            s.cost_fen += r.cost_fen;
            s.orders += r.orders;
            s.gmv_fen += r.gmv_fen;
            s.signed += r.signed;
            s.refused += r.refused;
        }
    }
    assert!(by_cc.len() > 10, "a data set with campaigns");
    assert!(total.refused > 0 && total.orders > 0);
    let want: BTreeMap<_, _> = by_cc.iter().map(|(k, s)| (k.clone(), s.shown())).collect();
    let shown = rows(dom.tbody("campaigns"), &["data-campaign", "data-channel"]);
    assert_eq!(shown.len(), want.len());
    for (k, w) in &want {
        assert_eq!(shown.get(k), Some(w), "campaign and channel {k:?}");
    }
    let want: BTreeMap<_, _> = by_channel
        .iter()
        .map(|(k, s)| (k.clone(), s.shown()))
        .collect();
    assert_eq!(rows(dom.tbody("channels"), &["data-channel"]), want);
    let t = total.shown();
    assert_eq!(dom.text("total-cost"), t.0["cost"]);
    assert_eq!(dom.text("total-gmv"), t.0["gmv"]);
    assert_eq!(dom.text("total-roi"), t.0["roi"]);
    assert_eq!(dom.text("total-refusal-rate"), t.0["refusal_rate"]);

    // Suppressed persons: distinct person_id of the current rows.
    let suppressed = current(&out, Table::SuppressedPersons);
    let persons: BTreeSet<String> = suppressed
        .iter()
        .map(|r| match r {
            OutputRow::SuppressedPerson(p) => p.person_id.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert!(!persons.is_empty());
    assert_eq!(dom.text("suppressed-persons"), persons.len().to_string());

    // Open anomalies per kind.
    let mut open: BTreeMap<Vec<String>, Shown> = BTreeMap::new();
    let mut open_total = 0;
    for r in current(&out, Table::Anomalies) {
        let OutputRow::Anomaly(a) = r else {
            unreachable!()
        };
        if a.closed_ts.is_none() {
            open_total += 1;
            let e = open.entry(vec![a.kind.clone()]).or_default();
            let n: i64 = e.0.get("open").map_or(0, |v| v.parse().unwrap());
            e.0.insert("open".into(), (n + 1).to_string());
        }
    }
    assert!(open_total > 0);
    assert_eq!(rows(dom.tbody("anomaly-kinds"), &["data-kind"]), open);
    assert_eq!(dom.text("open-anomalies"), open_total.to_string());

    // Triggers: in total, per kind, and per hour of due_ts (the chart's bars).
    let mut per_hour: BTreeMap<i64, i64> = BTreeMap::new();
    let mut per_kind: BTreeMap<Vec<String>, Shown> = BTreeMap::new();
    let triggers = current(&out, Table::Triggers);
    for r in &triggers {
        let OutputRow::Trigger(t) = r else {
            unreachable!()
        };
        *per_hour
            .entry(t.due_ts.div_euclid(3_600_000) * 3_600_000)
            .or_default() += 1;
        let e = per_kind.entry(vec![t.kind.clone()]).or_default();
        let n: i64 = e.0.get("triggers").map_or(0, |v| v.parse().unwrap());
        e.0.insert("triggers".into(), (n + 1).to_string());
    }
    assert!(!triggers.is_empty());
    assert_eq!(dom.text("triggers-total"), triggers.len().to_string());
    assert_eq!(rows(dom.tbody("trigger-kinds"), &["data-kind"]), per_kind);
    let svg_at = dom.0.find("<svg id=\"triggers-chart\"").unwrap();
    let svg = &dom.0[svg_at..svg_at + dom.0[svg_at..].find("</svg>").unwrap()];
    assert_eq!(
        attr(svg, "data-total"),
        Some(triggers.len().to_string()),
        "chart total"
    );
    let bars: BTreeMap<i64, i64> = svg
        .split("<rect")
        .skip(1)
        .map(|r| {
            let tag = &r[..r.find('>').unwrap()];
            (
                attr(tag, "data-hour").unwrap().parse().unwrap(),
                attr(tag, "data-count").unwrap().parse().unwrap(),
            )
        })
        .collect();
    // The chart draws the last 7 days (168 hours) that end at the last hour with a trigger.
    let last = *per_hour.keys().last().unwrap();
    let want: BTreeMap<i64, i64> = per_hour
        .range(last - 167 * 3_600_000..)
        .map(|(h, n)| (*h, *n))
        .collect();
    assert_eq!(bars, want);

    // Pipeline health: dead letters and messages as the run reported them.
    let nums: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // "adflow run: M messages (E events, L late, D duplicates, X dead letters) -> …"
    let (messages, dead_letters) = (nums[0], nums[4]);
    assert_eq!(current(&out, Table::DeadLetters).len() as u64, dead_letters);
    assert_eq!(dom.text("dead-letters"), dead_letters.to_string());
    let streams = rows(dom.tbody("streams"), &["data-stream"]);
    let shown_messages: u64 = streams
        .values()
        .map(|s| s.0["messages"].parse::<u64>().unwrap())
        .sum();
    assert_eq!(shown_messages, messages);
    let sinks = rows(dom.tbody("sinks"), &["data-sink"]);
    assert_eq!(sinks[&vec!["file".to_string()]].0["errors"], "0");
}
