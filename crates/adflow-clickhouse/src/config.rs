//! Configuration of the ClickHouse sink (`[sinks.clickhouse]` or similar in the adflow config).

use crate::error::ClickHouseError;
use serde::Deserialize;
use std::time::Duration;

/// Largest `batch_rows`: one INSERT must stay a single ClickHouse block (default
/// `max_insert_block_size` is 1,048,576 rows) so that it is written atomically as one part.
pub const MAX_BATCH_ROWS: usize = 1_000_000;

/// Settings of [`crate::ClickHouseSink`] and the schema tools.
///
/// Every field has a default; unknown fields are rejected. The password is never written in the
/// config: it is read from the environment variable named by `password_env`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface of the server, e.g. `http://127.0.0.1:8123`. Default
    /// `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding the output tables (created by the schema migrations). Default `adflow`.
    pub database: String,
    /// User name; `None` uses the server's `default` user. Default `None`.
    pub user: Option<String>,
    /// Name of the environment variable that holds the password. When that variable is unset
    /// or empty, no password is sent. Default `ADFLOW_CLICKHOUSE_PASSWORD`.
    pub password_env: String,
    /// A batch is sent once it holds this many changes (after consolidation it may hold fewer
    /// rows). 1..=1,000,000. Default 50,000.
    pub batch_rows: usize,
    /// ... or once its oldest change has waited this long, in milliseconds. Default 1,000.
    pub batch_ms: u64,
    /// `write` blocks (back-pressure) while this many changes wait to be sent, and a batch (one
    /// journal INSERT) holds at most this many changes, cut between versions (a single version
    /// with more is written whole). Must be at least `batch_rows`. Default 200,000.
    pub max_pending_rows: usize,
    /// Run the schema migrations when the sink starts. Default `false` (run `adflow schema
    /// --apply` instead).
    pub apply_schema: bool,
    /// Retry behaviour for inserts and checks.
    pub retry: RetryConfig,
}

/// Exponential backoff for failed requests. The sink retries until the request succeeds,
/// blocking the caller once its buffer is full, unless `max_attempts` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First wait after a failure, in milliseconds. Default 100.
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts, in milliseconds. Default 5,000.
    pub max_backoff_ms: u64,
    /// Give up (the sink then fails every later `write`/`flush` with an error) after this many
    /// failed attempts of one request. `None` (default): retry forever, logging every failure.
    pub max_attempts: Option<u32>,
    /// Limit for one request (an INSERT, or a check query), in milliseconds. Default 30,000.
    pub request_timeout_ms: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "adflow".into(),
            user: None,
            password_env: "ADFLOW_CLICKHOUSE_PASSWORD".into(),
            batch_rows: 50_000,
            batch_ms: 1_000,
            max_pending_rows: 200_000,
            apply_schema: false,
            retry: RetryConfig::default(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            max_attempts: None,
            request_timeout_ms: 30_000,
        }
    }
}

impl ClickHouseConfig {
    /// A default config pointing at `url` and `database`.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        ClickHouseConfig {
            url: url.into(),
            database: database.into(),
            ..ClickHouseConfig::default()
        }
    }

    /// Checks ranges and names; returns the first problem found.
    pub fn validate(&self) -> Result<(), ClickHouseError> {
        let bad = |m: String| Err(ClickHouseError::Config(m));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad(format!("url must be an http(s) URL, got {:?}", self.url));
        }
        if !crate::schema::is_valid_identifier(&self.database) {
            return bad(format!(
                "database must match [A-Za-z_][A-Za-z0-9_]*, got {:?}",
                self.database
            ));
        }
        if self.batch_rows == 0 || self.batch_rows > MAX_BATCH_ROWS {
            return bad(format!(
                "batch_rows must be in 1..={MAX_BATCH_ROWS}, got {}",
                self.batch_rows
            ));
        }
        if self.max_pending_rows < self.batch_rows {
            return bad(format!(
                "max_pending_rows ({}) must be at least batch_rows ({})",
                self.max_pending_rows, self.batch_rows
            ));
        }
        if self.retry.initial_backoff_ms == 0
            || self.retry.max_backoff_ms < self.retry.initial_backoff_ms
        {
            return bad("retry: need 0 < initial_backoff_ms <= max_backoff_ms".into());
        }
        if self.retry.request_timeout_ms == 0 {
            return bad("retry.request_timeout_ms must be positive".into());
        }
        if self.retry.max_attempts == Some(0) {
            return bad("retry.max_attempts must be positive when set".into());
        }
        Ok(())
    }

    /// The password from the environment variable `password_env`, if set and non-empty.
    pub fn password(&self) -> Option<String> {
        std::env::var(&self.password_env)
            .ok()
            .filter(|p| !p.is_empty())
    }

    /// Builds a client for this server (no default database, RowBinary without schema
    /// validation, no compression: see the crate docs for why).
    pub fn client(&self) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(self.url.clone())
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        if let Some(user) = &self.user {
            client = client.with_user(user.clone());
        }
        if let Some(password) = self.password() {
            client = client.with_password(password);
        }
        client
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.retry.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_fields_are_rejected() {
        ClickHouseConfig::default().validate().unwrap();
        let c: ClickHouseConfig = serde_json::from_str(
            r#"{"url":"http://127.0.0.1:18123","database":"x","batch_rows":10,"retry":{"max_attempts":3}}"#,
        )
        .unwrap();
        assert_eq!(c.batch_rows, 10);
        assert_eq!(c.retry.max_attempts, Some(3));
        assert_eq!(c.retry.initial_backoff_ms, 100);
        assert!(serde_json::from_str::<ClickHouseConfig>(r#"{"password":"x"}"#).is_err());
        assert!(serde_json::from_str::<ClickHouseConfig>(r#"{"retry":{"tries":1}}"#).is_err());
    }

    #[test]
    fn validation_rejects_bad_values() {
        let d = ClickHouseConfig::default;
        let bad = [
            ClickHouseConfig {
                batch_rows: 0,
                ..d()
            },
            ClickHouseConfig {
                batch_rows: MAX_BATCH_ROWS + 1,
                ..d()
            },
            ClickHouseConfig {
                database: "a-b".into(),
                ..d()
            },
            ClickHouseConfig {
                max_pending_rows: 1,
                ..d()
            },
            ClickHouseConfig {
                url: "127.0.0.1:8123".into(),
                ..d()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
