//! `adflow run --http`: `/metrics` parses as Prometheus text (a real parser) and its counters
//! equal the run's report; `/health` and `/ready` answer.

mod common;

use common::{
    adflow, end_linger, free_port, http_get as get, ok, parse_metrics as parse, sample as value,
    sample_sum as sum,
};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The input of the test: a generated data set with its first ad events moved to the end of
/// `ad_events.jsonl`, so they arrive late (allowed lateness 0; read in batches, so the
/// watermark has moved by then), and a line that is not JSON at the end of `orders.jsonl`.
fn input(dir: &Path) {
    ok(adflow()
        .args([
            "generate", "--seed", "11", "--users", "300", "--days", "4", "--output",
        ])
        .arg(dir.join("in")));
    let ads = dir.join("in/ad_events.jsonl");
    let text = std::fs::read_to_string(&ads).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut moved: Vec<&str> = lines[20..].to_vec();
    moved.extend(&lines[..20]);
    std::fs::write(&ads, moved.join("\n") + "\n").unwrap();
    let orders = dir.join("in/orders.jsonl");
    let mut text = std::fs::read_to_string(&orders).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&orders, text).unwrap();
    std::fs::write(dir.join("cfg.toml"), "allowed_lateness = \"0s\"\n").unwrap();
}

#[test]
fn metrics_parse_as_prometheus_text_and_equal_the_run_report() {
    let dir = tempfile::tempdir().unwrap();
    input(dir.path());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let out = dir.path().join("out");
    let child = adflow()
        .args(["run", "--workers", "2", "--input"])
        .arg(dir.path().join("in"))
        .arg("--output")
        .arg(&out)
        .arg("--config")
        .arg(dir.path().join("cfg.toml"))
        .args([
            "--http",
            &format!("127.0.0.1:{port}"),
            "--http-linger",
            "60",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The run completes (OUT/_SUCCESS), then the server lingers with the final counts.
    let started = Instant::now();
    while !out.join("_SUCCESS").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not complete"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&format!("{base}/health")).map(|r| r.0), Some(200));
    assert_eq!(
        get(&format!("{base}/ready")),
        Some((200, "ready\n".to_string()))
    );
    let (status, text) = get(&format!("{base}/metrics")).expect("/metrics answers");
    assert_eq!(status, 200);
    let (st, stderr) = end_linger(child, "adflow run --http");
    assert!(st.success(), "{stderr}");

    let (scrape, samples) = parse(&text);
    // Counters are typed as counters and end in _total; every sample is adflow's.
    for s in &scrape.samples {
        assert!(s.metric.starts_with("adflow_"), "{}", s.metric);
        if matches!(s.value, prometheus_parse::Value::Counter(_)) {
            assert!(s.metric.ends_with("_total"), "{}", s.metric);
        }
    }
    assert!(scrape.docs.contains_key("adflow_input_messages_total"));

    // The run's report: the summary line and _SUCCESS.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_SUCCESS")).unwrap()).unwrap();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("adflow run: "))
        .expect("summary line");
    let nums: Vec<f64> = line
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter_map(|w| w.parse().ok())
        .collect();
    // "adflow run: M messages (E events, L late, D duplicates, X dead letters) -> C changes …"
    let (late, dups) = (nums[2], nums[3]);
    assert!(late > 0.0, "the test input has late events: {line}");
    assert!(dups > 0.0, "{line}");

    let f = |k: &str| summary[k].as_f64().unwrap();
    assert_eq!(sum(&samples, "adflow_input_messages_total"), f("messages"));
    assert_eq!(sum(&samples, "adflow_input_events_total"), f("events"));
    assert_eq!(
        sum(&samples, "adflow_dead_letters_total"),
        f("dead_letters")
    );
    assert_eq!(sum(&samples, "adflow_output_changes_total"), f("changes"));
    assert_eq!(sum(&samples, "adflow_input_late_events_total"), late);
    assert_eq!(sum(&samples, "adflow_input_duplicates_total"), dups);
    // Per stream and per table, against the input and the output files.
    for stream in ["ad_events", "orders", "logistics", "identity"] {
        let lines = std::fs::read_to_string(dir.path().join(format!("in/{stream}.jsonl")))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        assert_eq!(
            value(
                &samples,
                "adflow_input_messages_total",
                &[("stream", stream)]
            ),
            lines as f64,
            "{stream}"
        );
    }
    assert_eq!(
        value(
            &samples,
            "adflow_dead_letters_total",
            &[("stream", "orders")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "adflow_input_late_events_total",
            &[("stream", "ad_events")]
        ),
        late
    );
    for table in [
        "attribution",
        "order_status",
        "campaign_metrics",
        "anomalies",
        "triggers",
        "suppressed_persons",
        "dead_letters",
    ] {
        let lines = std::fs::read_to_string(out.join(format!("{table}.jsonl")))
            .unwrap()
            .lines()
            .count();
        assert_eq!(
            value(&samples, "adflow_output_changes_total", &[("table", table)]),
            lines as f64,
            "{table}"
        );
    }
    assert_eq!(
        value(&samples, "adflow_sink_rows_total", &[("sink", "file")]),
        f("changes")
    );
    assert_eq!(
        value(&samples, "adflow_sink_errors_total", &[("sink", "file")]),
        0.0
    );
    assert_eq!(value(&samples, "adflow_ready", &[]), 1.0);
    // Live state: every update an arrangement added (batches, merges) is released with the
    // dataflow at the end — the count balances to exactly 0.
    let arranged = value(
        &samples,
        "adflow_live_records",
        &[("collection", "arrangements")],
    );
    assert_eq!(arranged, 0.0);
    // W ends at the largest event time (file mode), handed to the sinks.
    let w = value(&samples, "adflow_watermark_seconds", &[]);
    let end = f("final_watermark") / 1000.0;
    assert!((w - end).abs() < 2.0, "watermark {w} vs final {end}");
    assert!(
        text.contains("adflow_sink_flush_duration_seconds_count{sink=\"file\"} 1"),
        "{text}"
    );
}

/// Live mode: after a run over pre-produced topics has caught up and stopped (idle), the
/// scrape served during `--http-linger` counts exactly what the run's summary line reports,
/// every partition's consumer lag is 0, `/ready` is 200, and every consumed message has a
/// freshness sample.
#[test]
fn live_metrics_equal_the_run_report_and_lag_drains_to_zero() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::live_setup(dir);
    let prefix = common::topic_prefix("metrics");
    ok(&mut common::produce(dir, &brokers, &prefix, None));
    let lines: usize = ["ad_events", "orders", "logistics", "identity"]
        .iter()
        .map(|s| {
            std::fs::read_to_string(dir.join(format!("in/{s}.jsonl")))
                .map(|t| t.lines().count())
                .unwrap_or(0)
        })
        .sum();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let err_path = dir.join("err.log");
    let child = common::run_kafka(dir, &brokers, &prefix, "kafka")
        .args(["--exit-when-idle", "3"])
        .args([
            "--http",
            &format!("127.0.0.1:{port}"),
            "--http-linger",
            "60",
        ])
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let summary = loop {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        // Only a whole line: stderr is unbuffered, so the summary may be caught half-written.
        if let Some(l) = text
            .split_inclusive('\n')
            .find(|l| l.starts_with("adflow run --kafka: ") && l.ends_with('\n'))
        {
            break l.trim_end().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the live run did not end: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        get(&format!("{base}/ready")),
        Some((200, "ready\n".to_string()))
    );
    let (status, text) = get(&format!("{base}/metrics")).expect("/metrics answers");
    assert_eq!(status, 200);
    let (st, _) = end_linger(child, "adflow run --kafka --http");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&err_path).unwrap()
    );

    let (_, samples) = parse(&text);
    // "adflow run --kafka: M messages (E events, L late, D duplicates, X dead letters) -> C changes …"
    let nums: Vec<f64> = summary
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums[0], lines as f64, "{summary}");
    assert_eq!(sum(&samples, "adflow_input_messages_total"), nums[0]);
    assert_eq!(sum(&samples, "adflow_input_events_total"), nums[1]);
    assert_eq!(sum(&samples, "adflow_input_late_events_total"), nums[2]);
    assert_eq!(sum(&samples, "adflow_input_duplicates_total"), nums[3]);
    assert_eq!(sum(&samples, "adflow_dead_letters_total"), nums[4]);
    assert_eq!(sum(&samples, "adflow_output_changes_total"), nums[5]);
    let lags: Vec<f64> = samples
        .iter()
        .filter(|((n, _), _)| n == "adflow_consumer_lag_messages")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(lags.len(), 16, "4 streams x 4 partitions: {text}");
    assert!(lags.iter().all(|&l| l == 0.0), "{lags:?}");
    assert_eq!(value(&samples, "adflow_ready", &[]), 1.0);
    let count_line = format!("adflow_freshness_seconds_count {}", nums[0]);
    assert!(text.contains(&count_line), "no `{count_line}` in {text}");
}
