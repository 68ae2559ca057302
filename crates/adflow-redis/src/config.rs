//! [`RedisConfig`]: where the sink writes and how long it retries.

use crate::error::RedisSinkError;
use std::time::Duration;

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "adflow:";

/// The settings of a [`crate::RedisSink`], parsed from
/// `redis://HOST:PORT[/DB][?prefix=P&retry_s=S&timeout_s=T]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
    /// The server URL without this crate's query parameters (what the `redis` crate opens:
    /// `redis://[user:password@]host:port[/db]`).
    pub url: String,
    /// Prepended to every key (`prefix=`, default `adflow:`). The sink owns every key under
    /// it.
    pub prefix: String,
    /// How long a failing operation (connect, read, commit) is retried, with exponential
    /// backoff, before the sink fails with a clear error (`retry_s=`, default 30 s).
    pub retry_for: Duration,
    /// Connect, read and write timeout of one attempt (`timeout_s=`, default 10 s): a server
    /// that stops answering counts as a failed attempt, never as a hang.
    pub io_timeout: Duration,
    /// First backoff between attempts (doubles up to [`RedisConfig::max_backoff`]).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RedisConfig {
    /// Defaults for `url` (a `redis://` URL without query).
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            retry_for: Duration::from_secs(30),
            io_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// Parses `redis://HOST:PORT[/DB][?prefix=P&retry_s=S&timeout_s=T]` (`rediss://` and
    /// `redis+unix://` are not supported by this build). Other query parameters are an error.
    pub fn from_url(url: &str) -> Result<RedisConfig, RedisSinkError> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        if !base.starts_with("redis://") {
            return Err(RedisSinkError::Config(format!(
                "{url:?}: expected redis://HOST:PORT[/DB][?prefix=P]"
            )));
        }
        let mut cfg = RedisConfig::new(base);
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "prefix" => cfg.prefix = percent_decode(v)?,
                "retry_s" => cfg.retry_for = secs(k, v)?,
                "timeout_s" => cfg.io_timeout = secs(k, v)?,
                other => {
                    return Err(RedisSinkError::Config(format!(
                        "{url:?}: unknown parameter {other:?} (known: prefix, retry_s, timeout_s)"
                    )))
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), RedisSinkError> {
        redis::Client::open(self.url.as_str())
            .map_err(|e| RedisSinkError::Config(format!("{:?}: {e}", self.url)))?;
        if self.io_timeout.is_zero() {
            return Err(RedisSinkError::Config("timeout_s must be positive".into()));
        }
        Ok(())
    }
}

fn secs(name: &str, v: &str) -> Result<Duration, RedisSinkError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| RedisSinkError::Config(format!("{name}={v:?}: expected seconds")))
}

/// Decodes `%XX` escapes (a prefix may hold `:` or other URL characters).
fn percent_decode(v: &str) -> Result<String, RedisSinkError> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = v
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| RedisSinkError::Config(format!("prefix={v:?}: bad % escape")))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| RedisSinkError::Config(format!("prefix={v:?}: not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = RedisConfig::from_url("redis://127.0.0.1:16379").unwrap();
        assert_eq!(c.url, "redis://127.0.0.1:16379");
        assert_eq!(c.prefix, "adflow:");
        assert_eq!(c.retry_for, Duration::from_secs(30));
    }

    #[test]
    fn query_parameters() {
        let c = RedisConfig::from_url(
            "redis://127.0.0.1:16379/3?prefix=t1%3Ax:&retry_s=1.5&timeout_s=2",
        )
        .unwrap();
        assert_eq!(c.url, "redis://127.0.0.1:16379/3");
        assert_eq!(c.prefix, "t1:x:");
        assert_eq!(c.retry_for, Duration::from_millis(1500));
        assert_eq!(c.io_timeout, Duration::from_secs(2));
        assert_eq!(
            RedisConfig::from_url("redis://h:1?prefix=").unwrap().prefix,
            ""
        );
    }

    #[test]
    fn bad_urls() {
        for u in [
            "http://127.0.0.1:16379",
            "redis://h:1?db=2",
            "redis://h:1?retry_s=x",
            "redis://h:1?timeout_s=0",
            "redis://h:1?prefix=%zz",
        ] {
            assert!(RedisConfig::from_url(u).is_err(), "{u}");
        }
    }
}
