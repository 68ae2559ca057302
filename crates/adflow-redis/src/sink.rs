//! [`RedisSink`]: an [`adflow_model::Sink`] that keeps the current `suppressed_persons` and
//! each person's open orders as Redis hashes (layout in [`crate::keys`], `docs/redis.md`).
//!
//! # Semantics
//! - **Deltas only.** `write` projects each change of `suppressed_persons` and `order_status`
//!   onto its hash field ([`crate::keys::Entry`]; other tables are dropped at once) and sums
//!   the signs per entry in memory; a +1 and a −1 of the same entry cancel. Nothing is sent
//!   before `flush`; no key is ever scanned or recomputed from the whole state.
//! - **One transaction per flush.** `flush` turns the consolidated changes into `HDEL`s and
//!   `HSET`s ([`crate::keys::plan`]) and sends them, together with an `HSET` of the progress
//!   hash `<prefix>progress` (`seq` + 1, `frontier`, and in live mode the engine's
//!   checkpoint), as one `MULTI`/`EXEC`. A reader therefore always sees the keys of the tables
//!   at one frontier, the one in the progress hash, never a half-applied batch.
//! - **Exactly once.** Before each attempt the sink `WATCH`es the progress hash and reads its
//!   `seq`: equal to the last committed one, the transaction is sent; one higher after an
//!   attempt whose outcome was unknown (the connection dropped around `EXEC`), it was applied
//!   and is not sent again; anything else means another writer uses the prefix and the sink
//!   fails. A change to the progress hash between `WATCH` and `EXEC` aborts the transaction
//!   (another writer): the sink fails, nothing is applied.
//! - **Retries.** A connection error, timeout (`timeout_s`, every connect, read and write) or
//!   a server that is loading or read-only is retried with exponential backoff (100 ms
//!   doubling to 2 s) for at most `retry_s` (default 30 s) per operation; then the sink fails
//!   with an error naming the operation, the attempts and the last error, and every later
//!   `write`/`flush` fails too (the engine stops non-zero). Other server errors (a key of
//!   another type under the prefix, out of memory, authentication) fail at once.
//! - **Frontier.** [`Sink::durable_frontier`] is the frontier of the last committed
//!   transaction (or the handed-over frontier when a flush had nothing to write).
//!
//! # File mode ([`RedisSink::new`])
//! A run starts from empty tables, so it starts from empty keys: when the progress hash shows
//! that an earlier file-mode run wrote the prefix, every key under the prefix is deleted
//! first (`SCAN`/`UNLINK`, once, at start). A prefix written by a live run is refused (it holds
//! a checkpoint that file mode would destroy). Everything is written by the final flush, in
//! one transaction.
//!
//! # Live mode ([`RedisSink::resume`])
//! A *funnel* (phase-2) sink like ClickHouse: the engine calls `set_checkpoint` and `flush`
//! once every process has made its phase-1 sinks durable for the round. The sink stores the
//! checkpoint with the changes below its frontier in the same transaction, so the keys always
//! equal the tables at the checkpoint in the progress hash. On restart it reads that hash and
//! reports the checkpoint through [`Sink::resume_checkpoint`] / [`Sink::resume_points`] (only
//! the last one: the keys hold no history) and its frontier through [`Sink::resume_frontier`];
//! changes below that frontier are dropped if handed over again, and checkpoints set while the
//! replaying engine is still below it are ignored. [`Sink::resume_to`] accepts only that
//! checkpoint.
//!
//! Changes handed over at or above the frontier of their `write` (the engine sends none) are
//! held back until the frontier passes them. Should changes arrive between `set_checkpoint`
//! and `flush`, or a flush come without a checkpoint in live mode (the engine does neither),
//! they are committed without a checkpoint: the progress hash then holds none, and a
//! restart refuses the prefix instead of resuming from data past its checkpoint.

use crate::buffer::Buffer;
use crate::config::RedisConfig;
use crate::error::RedisSinkError;
use crate::keys::{self, Batch, FORMAT};
use adflow_model::{Change, Sink, SinkError, Table};
use redis::{ConnectionLike, RetryMethod};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SINK_NAME: &str = "redis";

/// Counters of a running sink (monotonic since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisSinkStats {
    /// Changes handed over through `write` (every table).
    pub changes_received: u64,
    /// Of those, changes of `suppressed_persons` and open `order_status` rows.
    pub changes_kept: u64,
    /// Changes below the resume frontier, dropped.
    pub changes_below_resume: u64,
    /// Hash fields set and deleted.
    pub fields_set: u64,
    pub fields_deleted: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Checkpoints stored with them.
    pub checkpoints_stored: u64,
    /// Failed attempts (each retried, or the last one before the sink failed).
    pub failed_attempts: u64,
    /// Transactions found applied after an attempt with unknown outcome (not resent).
    pub commits_found_applied: u64,
    /// Keys deleted at the start of a file-mode run.
    pub keys_cleared: u64,
}

/// What the progress hash said when the sink started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Transactions committed to the prefix so far.
    pub seq: u64,
    /// Every change below it is in the keys (`i64::MIN`: nothing written).
    pub frontier: i64,
    /// The engine checkpoint stored with the keys (live mode).
    pub checkpoint: Option<String>,
    /// `file` or `live`; `None` when the prefix was never written.
    pub mode: Option<String>,
}

/// What a failed attempt means.
enum Failure {
    /// Worth another attempt (connection, timeout, loading, read-only).
    Retry(redis::RedisError),
    /// Not: fail now.
    Fatal(RedisSinkError),
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Self {
        if retryable(&e) {
            Failure::Retry(e)
        } else {
            Failure::Fatal(RedisSinkError::Command {
                context: "command".into(),
                source: e,
            })
        }
    }
}

fn retryable(e: &redis::RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return false;
    }
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::RetryImmediately
                | RetryMethod::WaitAndRetry
                | RetryMethod::RefreshSlotsAndRetry
        )
}

/// Writes the suppressed persons and open orders to Redis; see the module docs.
pub struct RedisSink {
    config: RedisConfig,
    client: redis::Client,
    con: Option<redis::Connection>,
    resumable: bool,
    /// Buffered changes and checkpoints.
    buf: Buffer,
    durable: i64,
    /// The progress hash at start.
    resumed: Progress,
    /// The `seq` of the last transaction committed (or found at start).
    seq: u64,
    failed: Option<String>,
    stats: RedisSinkStats,
}

impl RedisSink {
    /// File mode: starts from empty keys (clearing what an earlier file-mode run wrote under
    /// the prefix), keeps no checkpoint. Needs the server (retried for `retry_s`).
    pub fn new(config: RedisConfig) -> Result<Self, RedisSinkError> {
        let mut sink = Self::open(config, false)?;
        let p = sink.resumed.clone();
        match p.mode.as_deref() {
            Some("live") => {
                return Err(RedisSinkError::State(format!(
                    "the prefix {:?} holds a live run's keys (checkpoint at frontier {}); a file-mode run would overwrite them: use another prefix (?prefix=) or database",
                    sink.config.prefix, p.frontier
                )))
            }
            Some(_) => {
                let n = sink.clear_prefix()?;
                tracing::info!(prefix = %sink.config.prefix, keys = n, "redis sink: cleared the keys of an earlier file-mode run");
            }
            None => {}
        }
        sink.resumed = Progress {
            frontier: i64::MIN,
            ..Progress::default()
        };
        sink.seq = 0;
        Ok(sink)
    }

    /// Live mode: continues from the keys and checkpoint an earlier live run committed under
    /// the prefix (see the module docs); starts empty when the prefix was never written. Fails
    /// when the prefix holds a file-mode run's keys, or keys committed without a checkpoint.
    pub fn resume(config: RedisConfig) -> Result<Self, RedisSinkError> {
        let mut sink = Self::open(config, true)?;
        let p = sink.resumed.clone();
        match (p.mode.as_deref(), &p.checkpoint) {
            (None, _) => tracing::info!(prefix = %sink.config.prefix, "redis sink: fresh prefix"),
            (Some("live"), Some(cp)) => {
                tracing::info!(prefix = %sink.config.prefix, frontier = p.frontier, seq = p.seq, "redis sink: resuming from its checkpoint");
                sink.buf = Buffer::new(p.frontier, Some((cp.clone(), p.frontier)));
                sink.durable = p.frontier;
            }
            (Some("live"), None) => {
                return Err(RedisSinkError::State(format!(
                    "the prefix {:?} holds changes up to frontier {} committed without a checkpoint: it cannot be resumed; delete its keys or use another prefix",
                    sink.config.prefix, p.frontier
                )))
            }
            (Some(mode), _) => {
                return Err(RedisSinkError::State(format!(
                    "the prefix {:?} holds the keys of a {mode}-mode run, which live mode cannot resume: delete them or use another prefix (?prefix=) or database",
                    sink.config.prefix
                )))
            }
        }
        Ok(sink)
    }

    fn open(config: RedisConfig, resumable: bool) -> Result<Self, RedisSinkError> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| RedisSinkError::Config(format!("{:?}: {e}", config.url)))?;
        let mut sink = RedisSink {
            config,
            client,
            con: None,
            resumable,
            buf: Buffer::new(i64::MIN, None),
            durable: i64::MIN,
            resumed: Progress::default(),
            seq: 0,
            failed: None,
            stats: RedisSinkStats::default(),
        };
        let p = sink.read_progress()?;
        sink.seq = p.seq;
        sink.resumed = p;
        Ok(sink)
    }

    /// The progress hash found at start (file mode: reset after clearing).
    pub fn resumed(&self) -> &Progress {
        &self.resumed
    }

    /// Counters since start.
    pub fn stats(&self) -> RedisSinkStats {
        self.stats
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// Runs `op` on a connection, reconnecting and retrying (see *Retries*).
    fn with_retry<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut redis::Connection, u32) -> Result<T, Failure>,
    ) -> Result<T, RedisSinkError> {
        let started = Instant::now();
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self.connection() {
                Ok(con) => op(con, attempt),
                Err(e) => Err(Failure::from(e)),
            };
            let e = match result {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => {
                    self.con = None;
                    return Err(match e {
                        RedisSinkError::Command { source, .. } => RedisSinkError::Command {
                            context: what.to_string(),
                            source,
                        },
                        other => other,
                    });
                }
                Err(Failure::Retry(e)) => e,
            };
            self.con = None;
            self.stats.failed_attempts += 1;
            let elapsed = started.elapsed();
            if elapsed + backoff > self.config.retry_for {
                tracing::error!(operation = what, attempts = attempt, error = %e, "redis sink: giving up");
                return Err(RedisSinkError::Unavailable {
                    context: what.to_string(),
                    attempts: attempt,
                    secs: elapsed.as_secs_f64(),
                    budget_s: self.config.retry_for.as_secs_f64(),
                    source: e,
                });
            }
            tracing::warn!(operation = what, attempt, error = %e, backoff_ms = backoff.as_millis() as u64, "redis sink: attempt failed; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, redis::RedisError> {
        let con = match self.con.take() {
            Some(c) if c.is_open() => c,
            _ => {
                let t = self.config.io_timeout;
                let con = self.client.get_connection_with_timeout(t)?;
                con.set_read_timeout(Some(t))?;
                con.set_write_timeout(Some(t))?;
                con
            }
        };
        Ok(self.con.insert(con))
    }

    fn read_progress(&mut self) -> Result<Progress, RedisSinkError> {
        let key = keys::progress_key(&self.config.prefix);
        let map: HashMap<String, String> = self.with_retry("read progress", |con, _| {
            Ok(redis::cmd("HGETALL").arg(&key).query(con)?)
        })?;
        parse_progress(&key, &map)
    }

    /// Deletes every key under the prefix (file mode, at start), the progress hash last.
    fn clear_prefix(&mut self) -> Result<u64, RedisSinkError> {
        let pattern = format!("{}*", glob_escape(&self.config.prefix));
        let progress = keys::progress_key(&self.config.prefix);
        let n = self.with_retry("clear prefix", |con, _| {
            let mut cursor = 0u64;
            let mut n = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(con)?;
                let found: Vec<String> = found.into_iter().filter(|k| *k != progress).collect();
                if !found.is_empty() {
                    let d: u64 = redis::cmd("UNLINK").arg(&found).query(con)?;
                    n += d;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let d: u64 = redis::cmd("UNLINK").arg(&progress).query(con)?;
            Ok(n + d)
        })?;
        self.stats.keys_cleared += n;
        Ok(n)
    }

    /// Commits `batch` with the progress `frontier` (and `checkpoint`) in one transaction.
    fn commit(
        &mut self,
        batch: &Batch,
        frontier: i64,
        checkpoint: Option<&str>,
    ) -> Result<(), RedisSinkError> {
        let prefix = self.config.prefix.clone();
        let plan = keys::plan(&prefix, batch);
        if plan.odd_sums > 0 || plan.conflicts > 0 {
            tracing::warn!(
                odd_sums = plan.odd_sums,
                conflicts = plan.conflicts,
                "redis sink: the changelog held a row twice or two current rows for one field; applied by sign"
            );
        }
        let progress = keys::progress_key(&prefix);
        let expected = self.seq;
        let next = expected + 1;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, ops) in &plan.keys {
            if !ops.del.is_empty() {
                pipe.cmd("HDEL").arg(key).arg(&ops.del).ignore();
            }
            if !ops.set.is_empty() {
                let mut c = redis::cmd("HSET");
                c.arg(key);
                for (f, v) in &ops.set {
                    c.arg(f).arg(v);
                }
                pipe.add_command(c).ignore();
            }
        }
        let mode = if self.resumable { "live" } else { "file" };
        let mut c = redis::cmd("HSET");
        c.arg(&progress)
            .arg("format")
            .arg(FORMAT)
            .arg("seq")
            .arg(next)
            .arg("frontier")
            .arg(frontier)
            .arg("mode")
            .arg(mode)
            .arg("updated_ms")
            .arg(now_ms());
        if let Some(cp) = checkpoint {
            c.arg("checkpoint").arg(cp);
        }
        pipe.add_command(c).ignore();
        if checkpoint.is_none() {
            pipe.cmd("HDEL").arg(&progress).arg("checkpoint").ignore();
        }
        let mut found_applied = false;
        self.with_retry("commit", |con, attempt| {
            redis::cmd("WATCH").arg(&progress).exec(con)?;
            let seq: Option<u64> = redis::cmd("HGET").arg(&progress).arg("seq").query(con)?;
            let seq = seq.unwrap_or(0);
            if seq == next && attempt > 1 {
                redis::cmd("UNWATCH").exec(con)?;
                found_applied = true;
                return Ok(());
            }
            if seq != expected {
                let _ = redis::cmd("UNWATCH").exec(con);
                return Err(Failure::Fatal(RedisSinkError::State(format!(
                    "{progress} has seq {seq}, this sink expected {expected}: another writer uses the prefix {prefix:?}"
                ))));
            }
            let done: Option<redis::Value> = pipe.query(con)?;
            match done {
                Some(_) => Ok(()),
                None => Err(Failure::Fatal(RedisSinkError::State(format!(
                    "{progress} changed during the commit: another writer uses the prefix {prefix:?}"
                )))),
            }
        })?;
        let (dels, sets) = plan.ops();
        self.seq = next;
        self.durable = self.durable.max(frontier);
        self.stats.commits += 1;
        self.stats.fields_set += sets as u64;
        self.stats.fields_deleted += dels as u64;
        if found_applied {
            self.stats.commits_found_applied += 1;
        }
        if checkpoint.is_some() {
            self.stats.checkpoints_stored += 1;
        }
        tracing::debug!(
            seq = next,
            frontier,
            fields_set = sets,
            fields_deleted = dels,
            checkpoint = checkpoint.is_some(),
            "redis sink: committed"
        );
        Ok(())
    }

    fn check_failed(&self) -> Result<(), SinkError> {
        match &self.failed {
            Some(m) => Err(sink_error(m.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: RedisSinkError) -> SinkError {
        let m = e.to_string();
        tracing::error!(error = %m, "redis sink failed; no further writes");
        self.failed = Some(m.clone());
        sink_error(m)
    }
}

fn sink_error(message: String) -> SinkError {
    SinkError::Other {
        sink: SINK_NAME.into(),
        message,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn parse_progress(key: &str, map: &HashMap<String, String>) -> Result<Progress, RedisSinkError> {
    if map.is_empty() {
        return Ok(Progress {
            frontier: i64::MIN,
            ..Progress::default()
        });
    }
    let bad = |what: &str| {
        RedisSinkError::State(format!(
            "{key}: {what} (not a progress hash of this sink: is the prefix used by something else?)"
        ))
    };
    if let Some(f) = map.get("format") {
        if f != FORMAT {
            return Err(bad(&format!(
                "key layout format {f:?}, this build writes {FORMAT}"
            )));
        }
    }
    let seq = map
        .get("seq")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("no seq"))?;
    let frontier = map
        .get("frontier")
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| bad("no frontier"))?;
    Ok(Progress {
        seq,
        frontier,
        checkpoint: map.get("checkpoint").cloned(),
        mode: Some(map.get("mode").cloned().ok_or_else(|| bad("no mode"))?),
    })
}

impl Sink for RedisSink {
    fn name(&self) -> &str {
        SINK_NAME
    }

    /// Only these two tables become keys: the engine copies no other row for this sink.
    fn wants(&self, table: Table) -> bool {
        matches!(table, Table::SuppressedPersons | Table::OrderStatus)
    }

    /// Consolidates the changes of `suppressed_persons` and `order_status` in memory; sends
    /// nothing. Changes below the resume frontier are dropped.
    fn write(&mut self, changes: Vec<Change>, frontier: i64) -> Result<(), SinkError> {
        self.check_failed()?;
        self.stats.changes_received += changes.len() as u64;
        let taken = self.buf.write(changes, frontier);
        self.stats.changes_kept += taken.kept;
        self.stats.changes_below_resume += taken.below_resume;
        Ok(())
    }

    /// Commits what was handed over (the checkpoint's part with the checkpoint, in one
    /// transaction) and returns once Redis has it.
    fn flush(&mut self) -> Result<(), SinkError> {
        self.check_failed()?;
        for commit in self.buf.take_commits() {
            if self.resumable && commit.checkpoint.is_none() {
                tracing::warn!(
                    frontier = commit.frontier,
                    "redis sink: committing changes without a checkpoint; a restart cannot resume this prefix"
                );
            }
            if let Err(e) =
                self.commit(&commit.batch, commit.frontier, commit.checkpoint.as_deref())
            {
                return Err(self.fail(e));
            }
            self.buf.committed(&commit);
        }
        self.durable = self.durable.max(self.buf.frontier());
        Ok(())
    }

    fn durable_frontier(&self) -> i64 {
        self.durable
    }

    fn resume_frontier(&self, _table: Table) -> i64 {
        self.buf.resume_below()
    }

    /// Live mode: the next `flush` stores `checkpoint` with the changes handed over so far.
    /// Ignored in file mode, for a checkpoint equal to the one stored last, and while the
    /// frontier handed over has not passed the frontier resumed from (the replaying engine's
    /// checkpoints then describe less than the keys hold).
    fn set_checkpoint(&mut self, checkpoint: &str) {
        if self.resumable {
            self.buf.set_checkpoint(checkpoint);
        }
    }

    fn resume_checkpoint(&self) -> Option<String> {
        if self.resumable {
            self.resumed.checkpoint.clone()
        } else {
            None
        }
    }

    fn resumable(&self) -> bool {
        self.resumable
    }

    /// Only the checkpoint the keys hold (or the empty state for a fresh prefix).
    fn resume_points(&self) -> Vec<Option<String>> {
        vec![self.resume_checkpoint()]
    }

    fn resume_to(&mut self, checkpoint: Option<&str>) -> Result<(), SinkError> {
        if checkpoint == self.resume_checkpoint().as_deref() {
            Ok(())
        } else {
            Err(sink_error(format!(
                "the keys under {:?} hold only checkpoint {:?}; they cannot be restored to {:?}",
                self.config.prefix,
                self.resume_checkpoint(),
                checkpoint
            )))
        }
    }
}

impl Drop for RedisSink {
    fn drop(&mut self) {
        let unsent = self.buf.unsent();
        if unsent > 0 && self.failed.is_none() {
            tracing::warn!(
                entries = unsent,
                durable_frontier = self.durable,
                "redis sink dropped without flush: changes above the durable frontier are not written"
            );
        }
    }
}

/// For tests: how long `with_retry` may take at most with `config` (budget plus one attempt's
/// timeout).
pub fn worst_case_wait(config: &RedisConfig) -> Duration {
    config.retry_for + config.io_timeout + config.max_backoff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_is_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\:"), "a\\*b\\?\\[c\\]\\\\:");
    }

    #[test]
    fn progress_parses() {
        let empty = parse_progress("p", &HashMap::new()).unwrap();
        assert_eq!(empty.frontier, i64::MIN);
        assert_eq!(empty.mode, None);
        let m: HashMap<String, String> = [
            ("format", "1"),
            ("seq", "4"),
            ("frontier", "1000"),
            ("mode", "live"),
            ("checkpoint", "cp"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = parse_progress("p", &m).unwrap();
        assert_eq!(
            p,
            Progress {
                seq: 4,
                frontier: 1000,
                checkpoint: Some("cp".into()),
                mode: Some("live".into())
            }
        );
        let mut bad = m.clone();
        bad.insert("format".into(), "9".into());
        assert!(parse_progress("p", &bad).is_err());
        let mut bad = m;
        bad.remove("seq");
        assert!(parse_progress("p", &bad).is_err());
    }

    /// A closed port: the sink fails with a clear error once `retry_s` is spent, not later.
    #[test]
    fn unreachable_server_fails_within_the_budget() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}?retry_s=1&timeout_s=1"))
            .unwrap();
        let started = Instant::now();
        let err = match RedisSink::resume(cfg.clone()) {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => e,
        };
        let took = started.elapsed();
        assert!(took <= worst_case_wait(&cfg), "took {took:?}");
        let text = err.to_string();
        assert!(
            text.contains("read progress") && text.contains("attempts"),
            "{text}"
        );
    }
}
