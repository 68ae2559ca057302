//! Connector configuration: a TOML file (every table `deny_unknown_fields`) and/or the
//! environment. Environment variables override the file:
//!
//! | variable | field |
//! |---|---|
//! | `KDNIAO_EBUSINESS_ID` | `ebusiness_id` |
//! | `KDNIAO_APP_KEY` | `app_key` |
//! | `KDNIAO_ENVIRONMENT` | `environment` (`production` or `sandbox`) |
//! | `KDNIAO_API_URL` | all three `endpoints` URLs (e.g. a local stand-in) |
//! | `KUAIDI100_CUSTOMER`, `KUAIDI100_KEY` | `kuaidi100.customer`, `kuaidi100.key` |
//! | `KUAIDI100_URL` | `kuaidi100.url` |
//!
//! Example:
//! ```toml
//! ebusiness_id = "1237100"
//! app_key = "..."            # better: KDNIAO_APP_KEY
//! environment = "sandbox"
//! query_request_type = 8001
//! [http]
//! timeout_ms = 3000
//! [receiver]             # the push receiver's connection limits (these are the defaults)
//! header_timeout_ms = 10000
//! body_timeout_ms = 30000
//! idle_timeout_ms = 60000
//! max_connections = 256
//! max_body_bytes = 2097152
//! [kuaidi100]
//! customer = "..."
//! key = "..."
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::KdniaoError;
use crate::secret::Secret;

/// Kdniao's published production endpoints (a preset; override with `[endpoints]`).
pub const PRODUCTION_QUERY_URL: &str = "https://api.kdniao.com/Ebusiness/EbusinessOrderHandle.aspx";
/// Kdniao's newer production gateway for 8001/8002 and subscriptions (a preset).
pub const PRODUCTION_API_URL: &str = "https://api.kdniao.com/api/dist";
/// Kdniao's sandbox gateway (a preset).
pub const SANDBOX_URL: &str =
    "http://sandboxapi.kdniao.com:8080/kdniaosandbox/gateway/exterfaceInvoke.json";
/// Kuaidi100's real-time query endpoint (the default of `kuaidi100.url`).
pub const KUAIDI100_QUERY_URL: &str = "https://poll.kuaidi100.com/poll/query.do";

/// Everything the Kdniao connector needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdniaoConfig {
    /// Merchant id (`EBusinessID`). Overridden by `KDNIAO_EBUSINESS_ID`. Required.
    #[serde(default)]
    pub ebusiness_id: String,
    /// The AppKey that signs requests and verifies pushes. Overridden by `KDNIAO_APP_KEY`.
    /// Required. Never logged.
    #[serde(default = "empty_secret")]
    pub app_key: Secret,
    /// Which endpoint preset to use when `endpoints` is not given. Default `production`.
    #[serde(default)]
    pub environment: Environment,
    /// Explicit endpoints; when absent the preset of `environment` is used.
    #[serde(default)]
    pub endpoints: Option<Endpoints>,
    /// RequestType of instant queries: 1002 (State only), 8001 (value-added, StateEx and
    /// per-trace Action) or 8002 (like 8001, ShipperCode optional). Default 8001.
    #[serde(default = "default_query_type")]
    pub query_request_type: u16,
    /// RequestType of subscriptions: 1008 (pushes arrive as 101) or 8008 (pushes arrive
    /// as 102 with StateEx/Action). Default 8008.
    #[serde(default = "default_subscribe_type")]
    pub subscribe_request_type: u16,
    /// Timeouts, retries, rate limit.
    #[serde(default)]
    pub http: HttpConfig,
    /// The safety-net poller of quiet waybills.
    #[serde(default)]
    pub poll: PollConfig,
    /// Connection timeouts and limits of the push receiver (`adflow kdniao receive`).
    #[serde(default)]
    pub receiver: ReceiverConfig,
    /// Backup provider; failover is disabled when absent.
    #[serde(default)]
    pub kuaidi100: Option<Kuaidi100Config>,
    /// Where durable state lives (emitted event ids, subscribed waybills, failed queue).
    /// Default: `<output dir>/.kdniao` in file mode, else required.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

fn empty_secret() -> Secret {
    Secret::new("")
}
fn default_query_type() -> u16 {
    8001
}
fn default_subscribe_type() -> u16 {
    8008
}

/// Endpoint preset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Kdniao production (`api.kdniao.com`).
    #[default]
    Production,
    /// Kdniao sandbox (`sandboxapi.kdniao.com`).
    Sandbox,
}

/// Kdniao endpoint URLs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// URL for RequestType 1002.
    pub query_url: String,
    /// URL for RequestType 8001/8002.
    pub value_added_url: String,
    /// URL for RequestType 1008/8008.
    pub subscribe_url: String,
}

impl Endpoints {
    /// Kdniao's production endpoints.
    pub fn production() -> Self {
        Endpoints {
            query_url: PRODUCTION_QUERY_URL.to_string(),
            value_added_url: PRODUCTION_API_URL.to_string(),
            subscribe_url: PRODUCTION_API_URL.to_string(),
        }
    }

    /// Kdniao's sandbox endpoint (one gateway for everything).
    pub fn sandbox() -> Self {
        Self::single(SANDBOX_URL)
    }

    /// One URL for every request type (a stand-in server, a proxy).
    pub fn single(url: &str) -> Self {
        Endpoints {
            query_url: url.to_string(),
            value_added_url: url.to_string(),
            subscribe_url: url.to_string(),
        }
    }
}

/// Transport resilience settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Per-request timeout in milliseconds. Default 3000.
    pub timeout_ms: u64,
    /// Retries after the first attempt for network errors, timeouts and HTTP 5xx.
    /// Default 3. Sign and parameter errors are never retried.
    pub retries: u32,
    /// Delay between retries in milliseconds. Default 5000.
    pub retry_delay_ms: u64,
    /// Kdniao requests per second (token bucket refill rate). Default 20.
    pub rate_limit_per_sec: f64,
    /// Token bucket capacity. Default 1, so that no 1-second window holds more than
    /// `rate_limit_per_sec` requests.
    pub burst: u32,
    /// After a quota error (`没有可用套餐`), Kdniao is not asked again for this long
    /// (milliseconds); queries go straight to the backup. Default 600000 (10 min).
    pub quota_backoff_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout_ms: 3000,
            retries: 3,
            retry_delay_ms: 5000,
            rate_limit_per_sec: 20.0,
            burst: 1,
            quota_backoff_ms: 600_000,
        }
    }
}

impl HttpConfig {
    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// The delay between retries.
    pub fn retry_delay(&self) -> Duration {
        Duration::from_millis(self.retry_delay_ms)
    }
}

/// The safety-net poller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// A subscribed, not yet final waybill whose latest track (or subscription, if it has
    /// none) is older than this many seconds is queried. Default 21600 (6 h).
    pub quiet_after_secs: u64,
    /// How often the receiver's background poller runs, in seconds; 0 disables it.
    /// Default 0 (run `adflow kdniao poll` from a scheduler instead).
    pub interval_secs: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            quiet_after_secs: 6 * 3600,
            interval_secs: 0,
        }
    }
}

/// The push receiver's protection against slow, silent and oversized clients. Every
/// value must be at least 1.
///
/// The three timeouts split a connection's life as an HTTP/1.1 server sees it:
/// * `header_timeout_ms`: a request's head (request line and headers) must be complete
///   this long after the connection was accepted (first request) or after its first byte
///   arrived (later requests on a kept-alive connection); else the connection is closed.
/// * `body_timeout_ms`: once the head is in, the whole body must arrive within this long;
///   else the push is answered HTTP 408 (Kdniao's JSON reply, `Success:false`).
/// * `idle_timeout_ms`: a kept-alive connection may wait this long after a response for
///   the first byte of its next request; else it is closed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Deadline for a request head, in milliseconds. Default 10000.
    pub header_timeout_ms: u64,
    /// Deadline for a request body once its head is in, in milliseconds. Default 30000.
    pub body_timeout_ms: u64,
    /// How long a kept-alive connection may sit idle between requests, in milliseconds.
    /// Default 60000.
    pub idle_timeout_ms: u64,
    /// Connections served at once. Beyond it new connections are not accepted: they wait
    /// in the listen backlog (bounded by the kernel) until a connection ends. Default 256.
    pub max_connections: usize,
    /// Largest request body accepted, in bytes; a larger one is answered HTTP 413 with
    /// Kdniao's JSON reply (`Success:false`). Default 2097152 (2 MiB).
    pub max_body_bytes: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 256,
            max_body_bytes: 2 * 1024 * 1024,
        }
    }
}

impl ReceiverConfig {
    /// The request-head deadline.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    /// The request-body deadline.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
    /// The keep-alive idle limit.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Checks that every value is at least 1.
    pub fn validate(&self) -> Result<(), KdniaoError> {
        for (name, value) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
        ] {
            if value == 0 {
                return Err(KdniaoError::Config(format!(
                    "receiver.{name} must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

/// Kuaidi100 backup provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kuaidi100Config {
    /// The `customer` code Kuaidi100 assigned.
    pub customer: String,
    /// The signing key. Never logged.
    pub key: Secret,
    /// Query endpoint. Default `https://poll.kuaidi100.com/poll/query.do`.
    #[serde(default = "default_k100_url")]
    pub url: String,
    /// Requests per second to Kuaidi100. Default 20.
    #[serde(default = "default_k100_rate")]
    pub rate_limit_per_sec: f64,
    /// Extra or overriding Kdniao → Kuaidi100 carrier codes (e.g. `SF = "shunfeng"`).
    #[serde(default)]
    pub carriers: BTreeMap<String, String>,
}

/// A finite, strictly positive rate (NaN and infinities are rejected).
fn is_positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn default_k100_url() -> String {
    KUAIDI100_QUERY_URL.to_string()
}
fn default_k100_rate() -> f64 {
    20.0
}

impl KdniaoConfig {
    /// A configuration with the given credentials and every default.
    pub fn new(ebusiness_id: impl Into<String>, app_key: Secret) -> Self {
        KdniaoConfig {
            ebusiness_id: ebusiness_id.into(),
            app_key,
            environment: Environment::Production,
            endpoints: None,
            query_request_type: default_query_type(),
            subscribe_request_type: default_subscribe_type(),
            http: HttpConfig::default(),
            poll: PollConfig::default(),
            receiver: ReceiverConfig::default(),
            kuaidi100: None,
            state_dir: None,
        }
    }

    /// Parses a TOML document (no environment applied, not validated).
    pub fn from_toml_str(text: &str) -> Result<Self, KdniaoError> {
        toml::from_str(text).map_err(|e| KdniaoError::Config(format!("config file: {e}")))
    }

    /// Loads the file when given (else starts from defaults), applies the process
    /// environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, KdniaoError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| KdniaoError::io(p, e))?;
                Self::from_toml_str(&text)?
            }
            None => KdniaoConfig::new("", Secret::new("")),
        };
        cfg.apply_env(|name| std::env::var(name).ok());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies environment overrides read through `lookup` (see the module docs).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("KDNIAO_EBUSINESS_ID") {
            self.ebusiness_id = v.trim().to_string();
        }
        if let Some(v) = get("KDNIAO_APP_KEY") {
            self.app_key = Secret::new(v.trim());
        }
        if let Some(v) = get("KDNIAO_ENVIRONMENT") {
            match v.trim() {
                "sandbox" => self.environment = Environment::Sandbox,
                "production" => self.environment = Environment::Production,
                other => tracing::warn!(value = other, "ignoring unknown KDNIAO_ENVIRONMENT"),
            }
        }
        if let Some(v) = get("KDNIAO_API_URL") {
            self.endpoints = Some(Endpoints::single(v.trim()));
        }
        if let (Some(customer), Some(key)) = (get("KUAIDI100_CUSTOMER"), get("KUAIDI100_KEY")) {
            let url = get("KUAIDI100_URL").unwrap_or_else(default_k100_url);
            let mut k = self.kuaidi100.take().unwrap_or(Kuaidi100Config {
                customer: String::new(),
                key: Secret::new(""),
                url: url.clone(),
                rate_limit_per_sec: default_k100_rate(),
                carriers: BTreeMap::new(),
            });
            k.customer = customer.trim().to_string();
            k.key = Secret::new(key.trim());
            k.url = url;
            self.kuaidi100 = Some(k);
        } else if let (Some(url), Some(k)) = (get("KUAIDI100_URL"), self.kuaidi100.as_mut()) {
            k.url = url;
        }
    }

    /// Checks required fields and value ranges.
    pub fn validate(&self) -> Result<(), KdniaoError> {
        if self.ebusiness_id.trim().is_empty() {
            return Err(KdniaoError::Config(
                "EBusinessID missing: set KDNIAO_EBUSINESS_ID or `ebusiness_id`".into(),
            ));
        }
        if self.app_key.is_empty() {
            return Err(KdniaoError::Config(
                "AppKey missing: set KDNIAO_APP_KEY or `app_key`".into(),
            ));
        }
        if !matches!(self.query_request_type, 1002 | 8001 | 8002) {
            return Err(KdniaoError::Config(format!(
                "query_request_type must be 1002, 8001 or 8002, not {}",
                self.query_request_type
            )));
        }
        if !matches!(self.subscribe_request_type, 1008 | 8008) {
            return Err(KdniaoError::Config(format!(
                "subscribe_request_type must be 1008 or 8008, not {}",
                self.subscribe_request_type
            )));
        }
        if !is_positive(self.http.rate_limit_per_sec) || self.http.burst == 0 {
            return Err(KdniaoError::Config(
                "http.rate_limit_per_sec must be > 0 and http.burst >= 1".into(),
            ));
        }
        self.receiver.validate()?;
        if let Some(k) = &self.kuaidi100 {
            if k.customer.is_empty() || k.key.is_empty() || !is_positive(k.rate_limit_per_sec) {
                return Err(KdniaoError::Config(
                    "kuaidi100 needs customer, key and a positive rate_limit_per_sec".into(),
                ));
            }
        }
        Ok(())
    }

    /// The endpoints in force: `endpoints` when given, else the preset of `environment`.
    pub fn effective_endpoints(&self) -> Endpoints {
        match (&self.endpoints, self.environment) {
            (Some(e), _) => e.clone(),
            (None, Environment::Production) => Endpoints::production(),
            (None, Environment::Sandbox) => Endpoints::sandbox(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_env_overrides_and_presets() {
        let mut cfg = KdniaoConfig::from_toml_str(
            "ebusiness_id = \"1\"\napp_key = \"file-key\"\nenvironment = \"sandbox\"\n[http]\nretries = 1\n",
        )
        .unwrap();
        assert_eq!(cfg.effective_endpoints(), Endpoints::sandbox());
        assert_eq!(cfg.http.retries, 1);
        assert_eq!(cfg.http.timeout_ms, 3000);
        cfg.apply_env(|n| match n {
            "KDNIAO_APP_KEY" => Some("env-key".into()),
            "KDNIAO_API_URL" => Some("http://127.0.0.1:9/x".into()),
            _ => None,
        });
        assert_eq!(cfg.app_key.expose(), "env-key");
        assert_eq!(
            cfg.effective_endpoints(),
            Endpoints::single("http://127.0.0.1:9/x")
        );
        cfg.validate().unwrap();
        assert!(!format!("{cfg:?}").contains("env-key"));
    }

    #[test]
    fn receiver_limits_have_defaults_and_are_validated() {
        let cfg = KdniaoConfig::from_toml_str("ebusiness_id = \"1\"\napp_key = \"k\"\n").unwrap();
        assert_eq!(cfg.receiver, ReceiverConfig::default());
        assert_eq!(cfg.receiver.header_timeout(), Duration::from_secs(10));
        assert_eq!(cfg.receiver.body_timeout(), Duration::from_secs(30));
        assert_eq!(cfg.receiver.idle_timeout(), Duration::from_secs(60));
        assert_eq!(
            (cfg.receiver.max_connections, cfg.receiver.max_body_bytes),
            (256, 2 * 1024 * 1024)
        );
        let cfg = KdniaoConfig::from_toml_str(
            "ebusiness_id = \"1\"\napp_key = \"k\"\n[receiver]\nheader_timeout_ms = 500\nmax_connections = 8\n",
        )
        .unwrap();
        assert_eq!(cfg.receiver.header_timeout_ms, 500);
        assert_eq!(cfg.receiver.max_connections, 8);
        assert_eq!(cfg.receiver.body_timeout_ms, 30_000);
        cfg.validate().unwrap();
        let cfg = KdniaoConfig::from_toml_str(
            "ebusiness_id = \"1\"\napp_key = \"k\"\n[receiver]\nmax_connections = 0\n",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("receiver.max_connections"), "{err}");
        assert!(KdniaoConfig::from_toml_str("[receiver]\nheader_timeout = 5\n").is_err());
    }

    #[test]
    fn unknown_fields_and_missing_credentials_are_rejected() {
        assert!(KdniaoConfig::from_toml_str("ebusiness_id = \"1\"\nappkey = \"x\"\n").is_err());
        let cfg = KdniaoConfig::from_toml_str("ebusiness_id = \"1\"\n").unwrap();
        assert!(cfg.validate().is_err());
        assert_eq!(
            KdniaoConfig::new("1", Secret::new("k")).effective_endpoints(),
            Endpoints::production()
        );
    }
}
