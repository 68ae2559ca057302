//! The monitoring files of `deploy/`: the Prometheus alerting rules and their unit tests
//! (`promtool`), the example Prometheus configuration, and the Grafana dashboards.
//!
//! * `promtool check rules`, `promtool test rules` and `promtool check config` must succeed.
//!   promtool comes from Debian's `prometheus` package (`scripts/services/promtool.sh
//!   install`, run by `scripts/test.sh`); without it the tests fail, unless
//!   `ADFLOW_SKIP_SERVICE_TESTS=1`.
//! * Every metric that the rules and the operations dashboard query is one adflow exports: it
//!   is listed in `docs/operations.md`, and every metric listed there is a string literal in
//!   the sources (`crates/*/src`).
//! * Every dashboard panel has a query in its data source's model; the BI dashboard reads only
//!   `_current` views of the ClickHouse schema, and with `ADFLOW_CLICKHOUSE_URL` every BI
//!   query runs on a real server over a generated data set.

mod common;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn dashboard(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

/// promtool on `PATH` (or `/usr/bin/promtool`); `None` (the test is skipped) only with
/// `ADFLOW_SKIP_SERVICE_TESTS=1`, else a missing promtool fails the test.
fn promtool() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|f| f.is_file())
    });
    let found = on_path.or_else(|| {
        let f = PathBuf::from("/usr/bin/promtool");
        f.is_file().then_some(f)
    });
    match found {
        Some(f) => Some(f),
        None if std::env::var("ADFLOW_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipped: ADFLOW_SKIP_SERVICE_TESTS=1 and no promtool");
            None
        }
        None => panic!(
            "promtool is not installed: run scripts/services/promtool.sh install (or set \
             ADFLOW_SKIP_SERVICE_TESTS=1)"
        ),
    }
}

fn run_promtool(args: &[&str]) {
    let Some(bin) = promtool() else { return };
    let out = Command::new(&bin)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
}

#[test]
fn alert_rules_pass_promtool_check() {
    run_promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    run_promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
}

#[test]
fn prometheus_config_is_valid() {
    run_promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}

/// The alerts of `alerts.yml`: (name, the text of its rule up to the next rule or group).
fn alert_rules() -> Vec<(String, String)> {
    let text = read("deploy/prometheus/alerts.yml");
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            rules.push((name.trim().to_string(), String::new()));
        } else if t.starts_with("- name:") {
            rules.push((String::new(), String::new()));
        } else if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    rules.retain(|(n, _)| !n.is_empty());
    rules
}

#[test]
fn every_alert_has_a_duration_a_severity_annotations_and_a_unit_test() {
    let rules = alert_rules();
    assert!(rules.len() >= 10, "only {} alerts", rules.len());
    let tests = read("deploy/prometheus/alerts_test.yml");
    for (name, body) in &rules {
        for key in ["expr:", "for:", "summary:", "description:"] {
            assert!(body.contains(key), "alert {name} has no {key}");
        }
        assert!(
            body.contains("severity: critical") || body.contains("severity: warning"),
            "alert {name} has no severity label (critical or warning)"
        );
        // The measured value, except for state alerts (`== 0`: the value says nothing).
        assert!(
            body.contains("{{ $value") || body.contains("== 0"),
            "alert {name}: its annotations do not show the value"
        );
        // Fires in a unit test (exp_alerts under its name with labels) ...
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(&format!("{name}\n")) && t.contains("exp_labels:"));
        assert!(
            fires,
            "alert {name}: no unit test in alerts_test.yml shows it firing"
        );
    }
    // ... and the thresholds of the article are the ones in the rules.
    let text = read("deploy/prometheus/alerts.yml");
    for needle in [
        "> 0.001",
        "adflow_kdniao_request_duration_seconds_bucket",
        "> 3",
        "adflow_freshness_seconds_bucket",
        "> 10",
    ] {
        assert!(text.contains(needle), "alerts.yml lacks {needle:?}");
    }
}

/// Every `adflow_…` metric name in `text` (a name ends at the first character that is not a
/// lower-case letter, a digit or `_`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("adflow_") {
        let start = i + at;
        let before_ok = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The metrics listed in the tables of `docs/operations.md` (rows whose first cell is a
/// metric name in backticks; templates such as `adflow_kdniao_receiver_<counter>_total` are
/// not names).
fn documented_metrics() -> BTreeSet<String> {
    let doc = read("docs/operations.md");
    let mut out = BTreeSet::new();
    for line in doc.lines() {
        let Some(rest) = line.trim_start().strip_prefix("| `adflow_") else {
            continue;
        };
        let name = format!("adflow_{}", rest.split('`').next().unwrap());
        if !name.contains('<') {
            out.insert(name);
        }
    }
    out
}

/// The `adflow_…` string literals of the sources, `crates/*/src/**/*.rs`.
fn source_literals() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("\"adflow_").skip(1) {
                    if let Some(lit) = part.split('"').next() {
                        out.insert(format!("adflow_{lit}"));
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for c in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            walk(&src, &mut out);
        }
    }
    out
}

#[test]
fn documented_metrics_are_in_the_sources() {
    let documented = documented_metrics();
    assert!(
        documented.len() >= 20,
        "docs/operations.md lists only {documented:?}"
    );
    let literals = source_literals();
    for name in &documented {
        assert!(
            literals.contains(name),
            "docs/operations.md lists {name}, which no crate's sources name"
        );
    }
}

/// `name` is a documented metric, or a series of a documented histogram.
fn is_exported(name: &str, documented: &BTreeSet<String>) -> bool {
    documented.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|b| documented.contains(b)))
}

/// The panels of a dashboard, rows' nested panels included, rows themselves excluded.
fn panels(d: &Value) -> Vec<&Value> {
    fn collect<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                collect(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    collect(&d["panels"], &mut out);
    out
}

fn operations_exprs() -> Vec<String> {
    let d = dashboard("deploy/grafana/adflow-operations.json");
    panels(&d)
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn rules_and_operations_dashboard_query_only_exported_metrics() {
    let documented = documented_metrics();
    let mut used = metric_names(&read("deploy/prometheus/alerts.yml"));
    let rules_used = used.len();
    for e in operations_exprs() {
        used.extend(metric_names(&e));
    }
    assert!(rules_used >= 10, "alerts.yml uses only {used:?}");
    let unknown: Vec<_> = used
        .iter()
        .filter(|n| !is_exported(n, &documented))
        .collect();
    assert!(
        unknown.is_empty(),
        "not exported by adflow (not in docs/operations.md): {unknown:?}"
    );
    // The dashboard shows what the brief asks for.
    let all = operations_exprs().join("\n");
    for m in [
        "adflow_input_messages_total",
        "adflow_freshness_seconds_bucket",
        "adflow_watermark_seconds",
        "adflow_consumer_lag_messages",
        "adflow_dead_letters_total",
        "adflow_sink_rows_total",
        "adflow_sink_flush_duration_seconds_bucket",
        "adflow_sink_errors_total",
        "adflow_sink_unavailable_seconds_total",
        "adflow_kdniao_requests_total",
        "adflow_kdniao_request_duration_seconds_bucket",
        "adflow_webhook_deliveries_total",
        "adflow_webhook_retries_total",
        "adflow_webhook_failures_total",
    ] {
        assert!(
            all.contains(m),
            "the operations dashboard does not show {m}"
        );
    }
}

#[test]
fn every_operations_panel_has_a_prometheus_query() {
    let d = dashboard("deploy/grafana/adflow-operations.json");
    let ps = panels(&d);
    assert!(ps.len() >= 15, "only {} panels", ps.len());
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vars.contains(&"datasource"), "no datasource variable");
    for p in ps {
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "panel {title}: empty expr");
            assert!(t["refId"].is_string(), "panel {title}: no refId");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "panel {title}: unbalanced parentheses in {expr}"
            );
        }
    }
}

/// The BI panels' SQL: (title, rawSql).
fn bi_queries() -> Vec<(String, String)> {
    let d = dashboard("deploy/grafana/adflow-bi.json");
    let mut out = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap().to_string();
        for t in p["targets"].as_array().unwrap() {
            out.push((
                title.clone(),
                t["rawSql"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

#[test]
fn every_bi_panel_has_a_clickhouse_sql_query() {
    let d = dashboard("deploy/grafana/adflow-bi.json");
    let ps = panels(&d);
    assert!(ps.len() >= 12, "only {} panels", ps.len());
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vars.contains(&"datasource") && vars.contains(&"database"));
    for p in ps {
        let title = p["title"].as_str().unwrap();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["type"], "grafana-clickhouse-datasource",
                "{title}"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert_eq!(t["editorType"], "sql", "{title}");
            let sql = t["rawSql"].as_str().unwrap_or_default();
            assert!(
                sql.trim_start().starts_with("SELECT"),
                "panel {title}: rawSql is not a SELECT"
            );
            // The plugin's formats: 0 time series, 1 table; queryType to match.
            match (t["format"].as_u64(), t["queryType"].as_str()) {
                (Some(0), Some("timeseries")) => assert!(
                    sql.contains(" AS time") && sql.contains("ORDER BY time"),
                    "panel {title}: a time series needs a `time` column, ordered"
                ),
                (Some(1), Some("table")) => {}
                other => panic!("panel {title}: format/queryType {other:?}"),
            }
        }
    }
}

/// The objects `FROM ${database}.X` / `JOIN ${database}.X` of a query.
fn objects(sql: &str) -> Vec<String> {
    sql.split("${database}.")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn bi_dashboard_reads_current_views_of_the_schema() {
    let schema = adflow_clickhouse::schema_sql("adflow");
    let views: BTreeSet<String> = schema
        .split("CREATE VIEW IF NOT EXISTS `adflow`.`")
        .skip(1)
        .map(|s| s.split('`').next().unwrap().to_string())
        .collect();
    assert!(views.len() >= 7, "views in the schema: {views:?}");
    let mut seen = BTreeSet::new();
    for (title, sql) in bi_queries() {
        let objs = objects(&sql);
        assert!(
            !objs.is_empty(),
            "panel {title}: no ${{database}}.<view> in {sql}"
        );
        assert!(
            !sql.contains("adflow."),
            "panel {title}: names the database instead of ${{database}}"
        );
        for o in objs {
            assert!(
                o.ends_with("_current") && views.contains(&o),
                "panel {title}: {o} is not a _current view of the schema ({views:?})"
            );
            seen.insert(o);
        }
    }
    for v in [
        "campaign_metrics_current",
        "order_status_current",
        "attribution_current",
        "anomalies_current",
        "triggers_current",
        "suppressed_persons_current",
    ] {
        assert!(seen.contains(v), "the BI dashboard does not read {v}");
    }
}

/// A query as Grafana sends it: the dashboard variables replaced (the whole range of times).
fn interpolate(sql: &str, db: &str) -> String {
    sql.replace("${database}", db)
        .replace("${__from}", "0")
        .replace("${__to}", "4102444800000")
}

#[test]
fn bi_queries_run_on_clickhouse() {
    let Some(url) = common::clickhouse_url() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let mut args = adflow_gen::GenerateArgs::with_output(&input);
    args.seed = 5;
    args.users = 150;
    args.days = 3;
    adflow_gen::generate(&args).unwrap();
    let db = format!("adflow_deploy_{}", std::process::id());
    common::ok(
        common::adflow()
            .args(["run", "--workers", "2", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(tmp.path().join("out"))
            .arg("--sink")
            .arg(format!("clickhouse={url}?database={db}")),
    );
    let config = adflow_clickhouse::ClickHouseConfig::new(url, db.clone());
    let client = config.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut empty = Vec::new();
    for (title, sql) in bi_queries() {
        let sql = interpolate(&sql, &db);
        let out = rt
            .block_on(async { client.query(&sql).fetch_bytes("TSV")?.collect().await })
            .unwrap_or_else(|e| panic!("panel {title}: the query failed: {e}\n{sql}"));
        let rows = out.iter().filter(|&&b| b == b'\n').count();
        eprintln!("{rows:>5} rows: {title}");
        if rows == 0 {
            empty.push(title);
        }
    }
    rt.block_on(async {
        client
            .query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await
    })
    .unwrap();
    // Open anomalies and suppressed people depend on the data set's last hours; every other
    // panel has rows.
    let allowed = |t: &str| t.contains("nomalies") || t.contains("uppressed");
    let unexpected: Vec<_> = empty.iter().filter(|t| !allowed(t)).collect();
    assert!(
        unexpected.is_empty(),
        "panels without rows on the generated data: {unexpected:?}"
    );
}
