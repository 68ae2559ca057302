//! The resumable sink (live mode) against a real server (`ADFLOW_CLICKHOUSE_URL`): checkpoints,
//! a crash (the sink dropped without `close`) after changes beyond the last checkpoint, a
//! crash in the middle of a checkpoint's batch, a crash during `resume`, double resumes, and
//! journal pruning. Each test works in its own database.

mod common;

use adflow_clickhouse::{ClickHouseConfig, ClickHouseError, ClickHouseSink, ResumeReport};
use adflow_model::{Change, OutputRow, Sink, Table};
use common::proxy::{start_proxy, upstream_addr, ProxyFaults};
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn resumable(config: &ClickHouseConfig) -> ClickHouseSink {
    let mut c = config.clone();
    c.apply_schema = true;
    ClickHouseSink::resume(c).unwrap()
}

const T0: i64 = 1_700_000_000_000; // mixed_changelog's first timestamp
const H: i64 = 3_600_000;

/// `changes` sorted by version and cut at each of `frontiers` (ascending): part `i` holds the
/// versions below `frontiers[i]` and at or above the previous one.
fn split(mut changes: Vec<Change>, frontiers: &[i64]) -> Vec<Vec<Change>> {
    changes.sort_by_key(|c| c.version);
    let mut parts = vec![Vec::new(); frontiers.len() + 1];
    for c in changes {
        let i = frontiers.iter().take_while(|f| c.version >= **f).count();
        parts[i].push(c);
    }
    assert!(parts.iter().all(|p| !p.is_empty()), "empty part");
    parts
}

/// Hands `part` over the way the engine does: calls of about `per_call` changes, each with a
/// frontier above all its versions and at most the next call's first version; the last call's
/// frontier is `upto`.
fn write_engine_style(sink: &mut dyn Sink, part: &[Change], per_call: usize, upto: i64) {
    let mut calls: Vec<Vec<Change>> = Vec::new();
    let mut current: Vec<Change> = Vec::new();
    for c in part {
        if current.len() >= per_call && current.last().is_some_and(|l| l.version < c.version) {
            calls.push(std::mem::take(&mut current));
        }
        current.push(c.clone());
    }
    if !current.is_empty() {
        calls.push(current);
    }
    for (i, call) in calls.iter().enumerate() {
        let frontier = match calls.get(i + 1) {
            Some(next) => next[0].version,
            None => upto,
        };
        assert!(call.iter().all(|c| c.version < frontier));
        sink.write(call.clone(), frontier).unwrap();
    }
}

fn wait_durable(sink: &ClickHouseSink, frontier: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.durable_frontier() < frontier {
        assert!(
            Instant::now() < deadline,
            "durable frontier stuck at {} (want {frontier})",
            sink.durable_frontier()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn optimize_all(config: &ClickHouseConfig) {
    for t in Table::ALL {
        run_sql(
            config,
            &format!("OPTIMIZE TABLE {}.{} FINAL", config.database, t.name()),
        );
    }
}

/// What cancelling "every row with `version >= frontier`" in the tables would leave (the
/// rows with `version < frontier` whose signs sum positive), per table, as row counts.
fn naive_counts_below(config: &ClickHouseConfig, frontier: i64) -> BTreeMap<Table, u64> {
    Table::ALL
        .iter()
        .map(|t| {
            let cols = column_list(*t);
            let sql = format!(
                "SELECT count() FROM (SELECT {cols} FROM {db}.{t} WHERE batch_marker = '' AND version < {frontier} \
                 GROUP BY {cols} HAVING sum(sign) > 0)",
                db = config.database,
                t = t.name(),
            );
            (*t, query_u64(config, &sql))
        })
        .collect()
}

fn column_list(t: Table) -> String {
    // The columns of the row (what the `_current` view groups by).
    let sql = adflow_clickhouse::schema_sql("x");
    let start = sql
        .find(&format!(
            "CREATE VIEW IF NOT EXISTS `x`.`{}_current` AS\nSELECT ",
            t.name()
        ))
        .unwrap();
    let rest = &sql[start..];
    let select = rest.lines().nth(1).unwrap();
    select
        .trim_start_matches("SELECT ")
        .trim_end_matches(", max(`version`) AS last_version")
        .to_string()
}

fn counts(m: &BTreeMap<Table, Vec<OutputRow>>) -> BTreeMap<Table, u64> {
    m.iter().map(|(t, v)| (*t, v.len() as u64)).collect()
}

fn undo_markers(config: &ClickHouseConfig) -> u64 {
    Table::ALL
        .iter()
        .map(|t| {
            query_u64(
                config,
                &format!(
                    "SELECT count() FROM {}.{} WHERE batch_marker LIKE '%-undo'",
                    config.database,
                    t.name()
                ),
            )
        })
        .sum()
}

#[test]
fn crash_after_a_checkpoint_then_resume_cancels_what_followed_it() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "resume_undo");
    let all = mixed_changelog(200);
    let want_all = expected(&all);
    // Checkpoints in the middle of the orders, and between the anomalies' opening (24 h after
    // their order) and closing (30 h): many rows are inserted before the last checkpoint and
    // retracted after it.
    let (f1, f2, f3) = (T0 + 100_000, T0 + 27 * H, T0 + 30 * H + 100_000);
    let parts = split(all, &[f1, f2, f3]);
    let (a1, a2, b, c) = (&parts[0], &parts[1], &parts[2], &parts[3]);
    let a: Vec<Change> = a1.iter().chain(a2).cloned().collect();
    let want_a = expected(&a);
    assert_ne!(want_a, want_all);

    // A fresh database: nothing to resume.
    let mut sink = resumable(&config);
    assert_eq!(
        sink.resume_report(),
        Some(&ResumeReport {
            frontier: i64::MIN,
            ..ResumeReport::default()
        })
    );
    assert_eq!(sink.resume_checkpoint(), None);
    assert_eq!(sink.resume_frontier(Table::Triggers), i64::MIN);

    // Two checkpoints, as live mode stores them: set_checkpoint, then flush.
    write_engine_style(&mut sink, a1, 40, f1);
    sink.set_checkpoint("cp-1");
    sink.flush().unwrap();
    write_engine_style(&mut sink, a2, 40, f2);
    sink.set_checkpoint("cp-2");
    sink.flush().unwrap();
    assert_eq!(sink.durable_frontier(), f2);
    // The same checkpoint again is not stored twice.
    sink.set_checkpoint("cp-2");
    sink.flush().unwrap();
    assert_eq!(sink.stats().checkpoints_stored, 2);

    // More changes, written (batch_ms) but never checkpointed; then a crash.
    write_engine_style(&mut sink, b, 40, f3);
    wait_durable(&sink, f3);
    drop(sink);
    assert_ne!(
        actual(&config),
        want_a,
        "the changes after the checkpoint are visible"
    );

    // Merges (forced here) cancel rows written before the checkpoint against retractions
    // written after it: cancelling "the rows with version >= F" would now be wrong.
    optimize_all(&config);
    assert_ne!(
        naive_counts_below(&config, f2),
        counts(&want_a),
        "merges lost the rows that existed at the checkpoint: a version-based cancellation cannot restore them"
    );

    // A resume that crashes half-way: INSERTs into `anomalies` are refused, and it gives up.
    let faults = ProxyFaults::default();
    faults
        .one_request_per_connection
        .store(true, Ordering::SeqCst);
    faults.refuse_inserts_into(Some("anomalies"));
    let mut via_proxy = config.clone();
    via_proxy.url = start_proxy(upstream_addr(&url), faults.clone());
    via_proxy.retry.max_attempts = Some(3);
    let err = ClickHouseSink::resume(via_proxy)
        .err()
        .expect("the resume through the proxy fails");
    assert!(matches!(err, ClickHouseError::GaveUp { .. }), "{err}");
    let partly = undo_markers(&config);
    assert!(partly > 0, "the failed resume cancelled some INSERTs first");

    // The next resume finishes the job, cancelling nothing twice.
    let sink2 = resumable(&config);
    let report = sink2.resume_report().unwrap().clone();
    assert_eq!(report.frontier, f2);
    assert_eq!(report.checkpoint.as_deref(), Some("cp-2"));
    assert_eq!(report.inserts_redone, 0);
    assert!(report.inserts_undone > 0, "{report:?}");
    assert_eq!(sink2.resume_checkpoint().as_deref(), Some("cp-2"));
    for t in Table::ALL {
        assert_eq!(sink2.resume_frontier(t), f2, "{t}");
    }
    assert_eq!(sink2.durable_frontier(), f2);
    assert_eq!(actual(&config), want_a);
    assert_eq!(undo_markers(&config), partly + report.inserts_undone);

    // A second crash right after resuming, and a double resume: nothing left to do.
    drop(sink2);
    let mut sink3 = resumable(&config);
    let report = sink3.resume_report().unwrap().clone();
    assert_eq!(report.frontier, f2);
    assert_eq!(report.inserts_undone, 0, "{report:?}");
    assert_eq!(report.inserts_redone, 0, "{report:?}");
    assert_eq!(actual(&config), want_a);

    // The replaying engine hands over the changes from the checkpoint on: nothing twice.
    write_engine_style(&mut sink3, b, 40, f3);
    sink3.set_checkpoint("cp-3");
    sink3.flush().unwrap();
    let last = c.iter().map(|c| c.version).max().unwrap() + 1;
    write_engine_style(&mut sink3, c, 40, last);
    sink3.set_checkpoint("cp-4");
    sink3.close().unwrap();
    assert_eq!(actual(&config), want_all);
    optimize_all(&config);
    assert_eq!(actual(&config), want_all);

    // Resuming after a clean close: the last checkpoint, nothing to undo.
    let sink4 = resumable(&config);
    let report = sink4.resume_report().unwrap().clone();
    assert_eq!(report.frontier, last);
    assert_eq!(report.checkpoint.as_deref(), Some("cp-4"));
    assert_eq!((report.inserts_undone, report.inserts_redone), (0, 0));
    drop(sink4);
    assert_eq!(actual(&config), want_all);
    drop_database(&config);
}

#[test]
fn crash_in_the_middle_of_a_checkpoint_batch_then_resume_completes_it() {
    let Some(url) = server_url() else { return };
    let mut config = fresh_config(&url, "resume_redo");
    // One batch per flush.
    config.batch_rows = 5_000;
    config.max_pending_rows = 20_000;
    config.batch_ms = 600_000;
    let all = mixed_changelog(60);
    let want_all = expected(&all);
    let (f1, f2) = (T0 + 30_000, T0 + 27 * H);
    let parts = split(all, &[f1, f2]);
    let (a, b, c) = (&parts[0], &parts[1], &parts[2]);
    let ab: Vec<Change> = a.iter().chain(b).cloned().collect();
    let want_ab = expected(&ab);

    let faults = ProxyFaults::default();
    faults
        .one_request_per_connection
        .store(true, Ordering::SeqCst);
    let mut via_proxy = config.clone();
    via_proxy.url = start_proxy(upstream_addr(&url), faults.clone());
    via_proxy.retry.max_attempts = Some(3);
    via_proxy.apply_schema = true;
    let mut sink = ClickHouseSink::resume(via_proxy).unwrap();
    write_engine_style(&mut sink, a, 50, f1);
    sink.set_checkpoint("cp-1");
    sink.flush().unwrap();
    // The checkpoint's batch is journaled, the tables before `triggers` get their rows, then
    // the writer gives up (a crash half-way through the batch).
    faults.refuse_inserts_into(Some("triggers"));
    write_engine_style(&mut sink, b, 50, f2);
    sink.set_checkpoint("cp-2");
    let err = sink.flush().unwrap_err().to_string();
    assert!(err.contains("gave up"), "{err}");
    drop(sink);
    assert_ne!(actual(&config), want_ab);
    assert_ne!(actual(&config), expected(a));

    let sink = resumable(&config);
    let report = sink.resume_report().unwrap().clone();
    assert_eq!(report.frontier, f2, "{report:?}");
    assert_eq!(report.checkpoint.as_deref(), Some("cp-2"));
    assert!(report.inserts_redone >= 1, "{report:?}");
    assert_eq!(report.inserts_undone, 0, "{report:?}");
    assert_eq!(actual(&config), want_ab);
    drop(sink);
    // Again: nothing left to redo.
    let mut sink = resumable(&config);
    assert_eq!(sink.resume_report().unwrap().inserts_redone, 0);
    let last = c.iter().map(|c| c.version).max().unwrap() + 1;
    write_engine_style(&mut sink, c, 50, last);
    sink.set_checkpoint("cp-3");
    sink.close().unwrap();
    assert_eq!(actual(&config), want_all);
    drop_database(&config);
}

#[test]
fn one_release_far_above_the_cap_is_written_in_bounded_batches() {
    let Some(url) = server_url() else { return };
    let mut config = fresh_config(&url, "resume_cut");
    config.batch_rows = 100;
    config.max_pending_rows = 200;
    let all = mixed_changelog(60);
    assert!(all.len() > 1_000, "{}", all.len());
    let last = all.iter().map(|c| c.version).max().unwrap() + 1;
    let mut sink = resumable(&config);
    // One call, as the engine hands over a catch-up: before, it became one journal INSERT of
    // the whole release.
    sink.write(all.clone(), last).unwrap();
    sink.set_checkpoint("cp-end");
    sink.flush().unwrap();
    let stats = sink.stats();
    assert!(
        stats.batches_journaled as usize >= all.len() / 200,
        "{stats:?} for {} changes",
        all.len()
    );
    assert_eq!(stats.checkpoints_stored, 1, "{stats:?}");
    assert_eq!(sink.durable_frontier(), last);
    sink.close().unwrap();
    assert_eq!(actual(&config), expected(&all));
    let sink = resumable(&config);
    let report = sink.resume_report().unwrap().clone();
    assert_eq!(report.frontier, last, "{report:?}");
    assert_eq!(report.checkpoint.as_deref(), Some("cp-end"));
    assert_eq!(
        report.inserts_redone + report.inserts_undone,
        0,
        "{report:?}"
    );
    drop(sink);
    assert_eq!(actual(&config), expected(&all));
    drop_database(&config);
}

#[test]
fn changes_at_or_beyond_the_frontier_wait_for_it() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "resume_held");
    let mut sink = resumable(&config);
    let early = ch(trigger("o1", "review_coupon", None, 500), 500, 1);
    let now = ch(trigger("o2", "review_coupon", None, 100), 100, 1);
    // `early` is handed over before the frontier passes its version.
    sink.write(vec![now.clone(), early.clone()], 200).unwrap();
    sink.set_checkpoint("cp-200");
    sink.flush().unwrap();
    assert_eq!(sink.durable_frontier(), 200);
    assert_eq!(actual(&config), expected(std::slice::from_ref(&now)));
    drop(sink); // crash: `early` was never written, and is not needed
    let mut sink = resumable(&config);
    assert_eq!(sink.resume_frontier(Table::Triggers), 200);
    assert_eq!(actual(&config), expected(std::slice::from_ref(&now)));
    // The engine hands `early` over again after the restart.
    sink.write(vec![early.clone()], 300).unwrap();
    sink.flush().unwrap();
    assert_eq!(actual(&config), expected(std::slice::from_ref(&now)));
    sink.write(vec![], 501).unwrap();
    sink.set_checkpoint("cp-501");
    sink.close().unwrap();
    assert_eq!(actual(&config), expected(&[now, early]));
    drop_database(&config);
}

#[test]
fn checkpoints_set_while_the_engine_replays_below_the_resume_frontier_are_ignored() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "resume_replay");
    let mut sink = resumable(&config);
    let row = ch(trigger("o1", "review_coupon", None, 100), 100, 1);
    sink.write(vec![row.clone()], 200).unwrap();
    sink.set_checkpoint("cp-200");
    sink.flush().unwrap();
    drop(sink);
    let mut sink = resumable(&config);
    assert_eq!(sink.resume_frontier(Table::Triggers), 200);
    // Replaying: the engine's frontier is still below 200, its checkpoints describe it.
    sink.write(vec![], 150).unwrap();
    sink.set_checkpoint("cp-150-replaying");
    sink.flush().unwrap();
    assert_eq!(sink.stats().checkpoints_stored, 0);
    drop(sink);
    let mut sink = resumable(&config);
    assert_eq!(sink.resume_checkpoint().as_deref(), Some("cp-200"));
    // Past the resume frontier, checkpoints are stored again.
    sink.write(vec![], 250).unwrap();
    sink.set_checkpoint("cp-250");
    sink.close().unwrap();
    let sink = resumable(&config);
    assert_eq!(sink.resume_checkpoint().as_deref(), Some("cp-250"));
    assert_eq!(sink.resume_frontier(Table::Triggers), 250);
    drop(sink);
    assert_eq!(actual(&config), expected(&[row]));
    drop_database(&config);
}

#[test]
fn journal_keeps_only_partitions_from_the_newest_checkpoint_on() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "resume_prune");
    runtime()
        .block_on(adflow_clickhouse::apply_schema_with(&config))
        .unwrap();
    // An old checkpoint (partition 0) and a newer one in partition 2, as a long run leaves
    // them.
    run_sql(
        &config,
        &format!(
            "INSERT INTO {}.adflow_journal (seq, batch_id, frontier, has_checkpoint, checkpoint, chunk, insert_id, table_name, payload, written_ms) \
             VALUES (5, 'old-b5', 100, 1, 'cp-old', 0, '', '', '', 0), (3000, 'old-b3000', 200, 1, 'cp-3000', 0, '', '', '', 0)",
            config.database
        ),
    );
    let journal_rows = |seq: u64| {
        query_u64(
            &config,
            &format!(
                "SELECT count() FROM {}.adflow_journal WHERE seq = {seq}",
                config.database
            ),
        )
    };
    let mut sink = resumable(&config);
    assert_eq!(sink.resume_frontier(Table::Anomalies), 200);
    assert_eq!(sink.resume_checkpoint().as_deref(), Some("cp-3000"));
    let row = ch(suppressed("u1", "stalled_parcel", 250), 250, 1);
    sink.write(vec![row.clone()], 260).unwrap();
    sink.set_checkpoint("cp-260");
    sink.flush().unwrap();
    assert_eq!(journal_rows(5), 0, "partition 0 dropped");
    assert_eq!(
        journal_rows(3000),
        1,
        "the partition of the previous checkpoint is kept"
    );
    assert_eq!(journal_rows(3001), 2, "batch row and one INSERT");
    sink.close().unwrap();
    let sink = resumable(&config);
    assert_eq!(sink.resume_report().unwrap().checkpoint_batch, Some(3001));
    assert_eq!(sink.resume_checkpoint().as_deref(), Some("cp-260"));
    drop(sink);
    assert_eq!(actual(&config), expected(&[row]));
    drop_database(&config);
}

#[test]
fn resume_refuses_what_it_cannot_resume() {
    let Some(url) = server_url() else { return };
    // No schema (no journal table).
    let config = fresh_config(&url, "resume_refuse");
    let err = ClickHouseSink::resume(config.clone()).err().unwrap();
    assert!(matches!(err, ClickHouseError::Resume(_)), "{err}");
    assert!(err.to_string().contains("adflow_journal"), "{err}");
    // Tables written by a file-mode sink (no journal; its set_checkpoint is ignored).
    let mut c = config.clone();
    c.apply_schema = true;
    let mut sink = ClickHouseSink::new(c).unwrap();
    write_in_order(&mut sink, mixed_changelog(3), 100);
    sink.set_checkpoint("ignored");
    sink.close().unwrap();
    assert_eq!(
        query_u64(
            &config,
            &format!("SELECT count() FROM {}.adflow_journal", config.database)
        ),
        0
    );
    let err = ClickHouseSink::resume(config.clone()).err().unwrap();
    assert!(matches!(err, ClickHouseError::Resume(_)), "{err}");
    assert!(err.to_string().contains("without a journal"), "{err}");
    drop_database(&config);
    // No server: retried, then given up when max_attempts is set.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut nowhere = ClickHouseConfig::new(format!("http://127.0.0.1:{port}"), "adflow_nowhere");
    nowhere.retry.initial_backoff_ms = 10;
    nowhere.retry.max_backoff_ms = 20;
    nowhere.retry.max_attempts = Some(2);
    let err = ClickHouseSink::resume(nowhere).err().unwrap();
    assert!(matches!(err, ClickHouseError::GaveUp { .. }), "{err}");
}

/// Live mode flushes in the background (`start_flush`, then `flush_done` polled) and goes on
/// handing over changes meanwhile: the checkpoint is stored with exactly the changes below its
/// frontier, and a crash afterwards resumes to it, cancelling the later ones.
#[test]
fn a_background_flush_stores_its_checkpoint_while_later_changes_arrive() {
    let Some(url) = server_url() else { return };
    let config = fresh_config(&url, "resume_background");
    let all = mixed_changelog(200);
    let (f1, f2) = (T0 + 100_000, T0 + 27 * H);
    let parts = split(all, &[f1, f2]);
    let (a, b) = (&parts[0], &parts[1]);
    let want_a = expected(a);

    let mut sink = resumable(&config);
    write_engine_style(&mut sink, a, 40, f1);
    sink.set_checkpoint("cp-1");
    sink.start_flush().unwrap();
    write_engine_style(&mut sink, b, 40, f2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sink.flush_done().unwrap() {
        assert!(
            Instant::now() < deadline,
            "the background flush never completed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(sink.durable_frontier() >= f1);
    assert_eq!(sink.stats().checkpoints_stored, 1);
    // The later changes are written too (batch_ms), then the process dies.
    wait_durable(&sink, f2);
    drop(sink);

    let sink2 = resumable(&config);
    let report = sink2.resume_report().unwrap().clone();
    assert_eq!(report.frontier, f1);
    assert_eq!(report.checkpoint.as_deref(), Some("cp-1"));
    assert_eq!(actual(&config), want_a);
    drop(sink2);
    drop_database(&config);
}
