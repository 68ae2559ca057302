//! Error types. No variant ever carries a secret: provider reasons are Kdniao's or
//! Kuaidi100's own text (which may echo a *sign*, never a key), and URLs carry no key
//! because every secret-derived value travels in the request body.

use std::path::PathBuf;

/// Errors of the connector's commands and components.
#[derive(Debug, thiserror::Error)]
pub enum KdniaoError {
    /// Missing or invalid configuration (file, environment or flags).
    #[error("configuration error: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be bound or a server failed.
    #[error("server error on {addr}: {source}")]
    Server {
        /// The address concerned.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A provider call failed (after retries and failover where they apply).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Track events could not be handed on.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl KdniaoError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KdniaoError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Which provider an answer or an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Kdniao (快递鸟), the primary provider.
    Kdniao,
    /// Kuaidi100 (快递100), the backup provider.
    Kuaidi100,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Kdniao => "kdniao",
            Provider::Kuaidi100 => "kuaidi100",
        })
    }
}

/// Why one provider call failed. [`ProviderError::is_retryable`] says whether the same
/// request may be tried again; [`ProviderError::allows_failover`] whether the backup
/// provider should be asked instead.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Connection failure or timeout. Retried.
    #[error("{provider}: network error: {message}")]
    Network {
        /// Provider.
        provider: Provider,
        /// The transport's description (no secret: URLs carry none).
        message: String,
    },
    /// HTTP 5xx. Retried.
    #[error("{provider}: HTTP {status}")]
    ServerError {
        /// Provider.
        provider: Provider,
        /// HTTP status.
        status: u16,
    },
    /// Other unexpected HTTP status. Not retried.
    #[error("{provider}: unexpected HTTP {status}")]
    HttpStatus {
        /// Provider.
        provider: Provider,
        /// HTTP status.
        status: u16,
    },
    /// Bad sign or wrong merchant id/key (`非法参数[...]`). Not retried; alert.
    #[error("{provider}: rejected credentials or sign: {reason}")]
    BadSign {
        /// Provider.
        provider: Provider,
        /// The provider's reason text.
        reason: String,
    },
    /// Bad parameter (`无效的输入[...]`, e.g. carrier code). Not retried; alert.
    #[error("{provider}: invalid parameter: {reason}")]
    InvalidParam {
        /// Provider.
        provider: Provider,
        /// The provider's reason text.
        reason: String,
    },
    /// Package not enabled or quota spent (`业务错误[没有可用套餐]`). Backed off; fail over.
    #[error("{provider}: quota exhausted: {reason}")]
    Quota {
        /// Provider.
        provider: Provider,
        /// The provider's reason text.
        reason: String,
    },
    /// Any other business failure (`Success:false` with a reason).
    #[error("{provider}: request failed: {reason}")]
    Rejected {
        /// Provider.
        provider: Provider,
        /// The provider's reason text.
        reason: String,
    },
    /// The answer was not the JSON we expect.
    #[error("{provider}: malformed answer: {message}")]
    Malformed {
        /// Provider.
        provider: Provider,
        /// What was wrong.
        message: String,
    },
    /// No backup provider is configured and the primary failed.
    #[error("no provider could answer; request parked in the failed queue: {last}")]
    Parked {
        /// The last error seen.
        last: Box<ProviderError>,
    },
}

impl ProviderError {
    /// True for errors worth trying again unchanged: network errors, timeouts, HTTP 5xx.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Network { .. } | ProviderError::ServerError { .. }
        )
    }

    /// True when the backup provider should be asked. A bad parameter (e.g. an unknown
    /// carrier code) would fail there too, so it is the only error that does not fail over.
    pub fn allows_failover(&self) -> bool {
        !matches!(self, ProviderError::InvalidParam { .. })
    }

    /// True when the request may succeed later (so it belongs in the failed queue).
    /// Parameter errors never will.
    pub fn is_parkable(&self) -> bool {
        !matches!(self, ProviderError::InvalidParam { .. })
    }
}

/// Track events could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Writing or syncing a file failed.
    #[error("publishing track events to {path} failed: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Any other publisher failure (e.g. a Kafka producer error from the integrator's
    /// implementation).
    #[error("publishing track events failed: {0}")]
    Other(String),
}
