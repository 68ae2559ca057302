//! Integration tests against a real ClickHouse server (`ADFLOW_CLICKHOUSE_URL`; see
//! `common::server_url`). Each test works in its own database.

mod common;

use adflow_clickhouse::{apply_schema, apply_schema_with, ClickHouseConfig, ClickHouseSink};
use adflow_model::{Sink, Table};
use common::proxy::{start_proxy, upstream_addr, ProxyFaults};
use common::*;
use std::sync::atomic::Ordering;

#[test]
fn migrations_apply_once_and_reapply_as_no_op() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "migrations");
    let rt = runtime();
    let first = rt.block_on(apply_schema(&url, &config.database)).unwrap();
    assert_eq!(first.applied, vec![1, 2]);
    assert!(first.already_applied.is_empty());
    let tables_sql = format!(
        "SELECT count() FROM system.tables WHERE database = '{}'",
        config.database
    );
    let tables = query_u64(&config, &tables_sql);
    assert_eq!(
        tables, 16,
        "7 tables, 7 views, schema_migrations, adflow_journal"
    );
    for _ in 0..2 {
        let again = rt.block_on(apply_schema_with(&config)).unwrap();
        assert!(again.applied.is_empty(), "{again:?}");
        assert_eq!(again.already_applied, vec![1, 2]);
    }
    assert_eq!(query_u64(&config, &tables_sql), 16);
    let recorded = format!("SELECT count() FROM {}.schema_migrations", config.database);
    assert_eq!(query_u64(&config, &recorded), 2);
    drop_database(&config);
}

#[test]
fn printed_schema_script_runs_and_is_idempotent() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "script");
    let script = adflow_clickhouse::schema_sql(&config.database);
    let statements: Vec<&str> = script
        .split(";\n")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && !s.lines().all(|l| l.trim().starts_with("--")))
        .collect();
    assert!(statements.len() >= 19, "{}", statements.len());
    for _ in 0..2 {
        for s in &statements {
            run_sql(&config, s);
        }
    }
    let recorded = format!("SELECT count() FROM {}.schema_migrations", config.database);
    assert_eq!(query_u64(&config, &recorded), 2);
    // The API sees the script's migrations as applied.
    let report = runtime().block_on(apply_schema_with(&config)).unwrap();
    assert_eq!(report.already_applied, vec![1, 2]);
    drop_database(&config);
}

fn sink_for(config: &ClickHouseConfig) -> ClickHouseSink {
    let mut c = config.clone();
    c.apply_schema = true;
    ClickHouseSink::new(c).unwrap()
}

#[test]
fn changelog_with_retractions_gives_exact_current_contents() {
    let Some(url) = server_url() else { return };
    let mut config = fresh_config(&url, "contents");
    config.batch_rows = 37; // many INSERTs per table, chunks split inside a batch
    let changes = mixed_changelog(120);
    let want = expected(&changes);
    for t in Table::ALL {
        assert!(!want[&t].is_empty(), "test data covers {t}");
    }
    let mut sink = sink_for(&config);
    let frontier = write_in_order(&mut sink, changes.clone(), 53);
    sink.flush().unwrap();
    assert_eq!(sink.durable_frontier(), frontier);
    let stats = sink.stats();
    assert_eq!(stats.changes_received, changes.len() as u64);
    assert!(stats.changes_cancelled > 0, "{stats:?}");
    sink.close().unwrap();
    let got = actual(&config);
    assert_eq!(got, want);
    // Background merges (forced here) collapse history without changing the contents.
    for t in Table::ALL {
        run_sql(
            &config,
            &format!("OPTIMIZE TABLE {}.{} FINAL", config.database, t.name()),
        );
    }
    assert_eq!(actual(&config), want);
    // Only the marker rows and the surviving changes are left in the order_status table.
    let raw = query_u64(
        &config,
        &format!(
            "SELECT count() FROM {}.order_status WHERE batch_marker = ''",
            config.database
        ),
    );
    assert_eq!(raw, want[&Table::OrderStatus].len() as u64);
    drop_database(&config);
}

#[test]
fn changes_in_any_order_within_a_call_and_frontier_only_calls() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "order");
    let mut sink = sink_for(&config);
    assert_eq!(sink.durable_frontier(), i64::MIN);
    let mut changes = mixed_changelog(10);
    changes.reverse();
    let want = expected(&changes);
    let max = changes.iter().map(|c| c.version).max().unwrap();
    sink.write(changes, max + 1).unwrap();
    sink.write(vec![], max + 1000).unwrap();
    sink.flush().unwrap();
    assert_eq!(sink.durable_frontier(), max + 1000);
    sink.close().unwrap();
    assert_eq!(actual(&config), want);
    drop_database(&config);
}

#[test]
fn retry_after_unknown_outcome_does_not_double_count() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "unknown");
    runtime().block_on(apply_schema_with(&config)).unwrap();
    let faults = ProxyFaults::default();
    faults.drop_after_answer.store(3, Ordering::SeqCst);
    let mut via_proxy = config.clone();
    via_proxy.url = start_proxy(upstream_addr(&url), faults.clone());
    let changes = mixed_changelog(60);
    let want = expected(&changes);
    let mut sink = ClickHouseSink::new(via_proxy).unwrap();
    write_in_order(&mut sink, changes, 1000);
    sink.flush().unwrap();
    let stats = sink.stats();
    sink.close().unwrap();
    // The proxy drops connections whose *first* request is an INSERT; keep-alive decides how
    // many of the 3 budgeted drops happen. Each one is an INSERT the server applied.
    let dropped = faults.dropped.load(Ordering::SeqCst) as u64;
    assert!(dropped >= 1, "no connection was dropped");
    assert!(stats.failed_attempts >= dropped, "{stats:?}");
    assert_eq!(stats.inserts_found_applied, dropped, "{stats:?}");
    assert_eq!(actual(&config), want);
    // No data row was written twice. The tables are CollapsingMergeTree: background merges
    // drop +1/-1 pairs, so the raw row count depends on when the server merged; the sum of
    // the signs does not, and equals the number of current rows only if no INSERT landed twice.
    let signs: u64 = Table::ALL
        .iter()
        .map(|t| {
            query_u64(
                &config,
                &format!(
                    "SELECT toUInt64(sum(sign)) FROM {}.{} WHERE batch_marker = ''",
                    config.database,
                    t.name()
                ),
            )
        })
        .sum();
    let current: u64 = want.values().map(|rows| rows.len() as u64).sum();
    assert_eq!(signs, current, "{stats:?}");
    assert!(stats.rows_written >= current, "{stats:?}");
    drop_database(&config);
}

#[test]
fn retry_after_insert_lost_before_the_server_resends_it() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "lost");
    runtime().block_on(apply_schema_with(&config)).unwrap();
    let faults = ProxyFaults::default();
    faults.drop_before_forward.store(4, Ordering::SeqCst);
    let mut via_proxy = config.clone();
    via_proxy.url = start_proxy(upstream_addr(&url), faults.clone());
    let changes = mixed_changelog(30);
    let want = expected(&changes);
    let mut sink = ClickHouseSink::new(via_proxy).unwrap();
    write_in_order(&mut sink, changes, 500);
    sink.flush().unwrap();
    let stats = sink.stats();
    sink.close().unwrap();
    let dropped = faults.dropped.load(Ordering::SeqCst) as u64;
    assert!(dropped >= 1, "no connection was dropped");
    assert_eq!(stats.inserts_found_applied, 0, "{stats:?}");
    assert!(stats.failed_attempts >= dropped, "{stats:?}");
    assert_eq!(actual(&config), want);
    drop_database(&config);
}

#[test]
fn gives_up_with_an_error_only_when_max_attempts_is_set() {
    // No server needed: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = ClickHouseConfig::new(format!("http://127.0.0.1:{port}"), "adflow_nowhere");
    config.retry.initial_backoff_ms = 10;
    config.retry.max_backoff_ms = 20;
    config.retry.max_attempts = Some(3);
    let mut sink = ClickHouseSink::new(config).unwrap();
    sink.write(mixed_changelog(1), 10).unwrap();
    let err = sink.flush().unwrap_err().to_string();
    assert!(err.contains("gave up after 3 attempts"), "{err}");
    assert!(sink.write(vec![], 11).is_err());
    assert_eq!(sink.durable_frontier(), i64::MIN);
    assert_eq!(sink.stats().failed_attempts, 3);
}

#[test]
fn dashboard_queries_in_the_docs_run() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "docs");
    let mut sink = sink_for(&config);
    write_in_order(&mut sink, mixed_changelog(40), 200);
    sink.close().unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/clickhouse.md"
    ))
    .unwrap();
    let queries = sql_blocks(&doc);
    assert!(
        queries.len() >= 4,
        "docs/clickhouse.md has {} sql blocks",
        queries.len()
    );
    let client = config.client();
    let rt = runtime();
    let mut with_rows = 0;
    for q in &queries {
        let sql = q.replace("adflow.", &format!("{}.", config.database));
        let out = rt
            .block_on(async { client.query(&sql).fetch_bytes("TSV")?.collect().await })
            .unwrap_or_else(|e| panic!("docs query failed: {e}\n{sql}"));
        if !out.is_empty() {
            with_rows += 1;
        }
    }
    assert_eq!(
        with_rows,
        queries.len(),
        "every documented query returns rows on the test data"
    );
    drop_database(&config);
}

/// The ```sql blocks of a markdown file that are SELECT queries (the DDL block is skipped).
fn sql_blocks(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sql") => current = Some(String::new()),
            (Some(q), l) if l.starts_with("```") => {
                let q = std::mem::take(q);
                current = None;
                if q.trim_start().to_uppercase().starts_with("SELECT") {
                    out.push(q);
                }
            }
            (Some(q), _) => {
                q.push_str(line);
                q.push('\n');
            }
            _ => {}
        }
    }
    out
}
