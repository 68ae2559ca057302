//! Kdniao HTTP client: instant queries (1002/8001/8002) and subscriptions (1008/8008).
//!
//! Requests are `application/x-www-form-urlencoded` POSTs of `RequestData`, `EBusinessID`,
//! `RequestType`, `DataSign`, `DataType=2`. The sign is computed over exactly the
//! `RequestData` string sent, and every field is form-encoded exactly once
//! ([`form_body`]). Each attempt waits for a rate-limit token; network errors and HTTP 5xx
//! are retried (`http.retries` times, `http.retry_delay_ms` apart); sign and parameter
//! errors are not retried and are logged as alerts; a quota error makes the client refuse
//! further Kdniao calls for `http.quota_backoff_ms`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::answer::KdniaoAnswer;
use crate::config::{Endpoints, HttpConfig, KdniaoConfig};
use crate::error::{KdniaoError, Provider, ProviderError};
use crate::ratelimit::RateLimiter;
use crate::secret::Secret;
use crate::sign::data_sign;
use crate::telemetry::{record_request, Endpoint};
use crate::track::clean_waybill;

/// Carriers that require `CustomerName` (last 4 digits of the sender's or receiver's phone).
pub const CARRIERS_NEEDING_CUSTOMER_NAME: [&str; 3] = ["SF", "ZTO", "KYSY"];

/// A waybill to query or subscribe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaybillRequest {
    /// Kdniao carrier code (`SF`, `ZTO`, ...), upper-cased.
    pub shipper_code: String,
    /// Cleaned waybill number.
    pub logistic_code: String,
    /// Our order id, sent as `OrderCode` (may be empty).
    #[serde(default)]
    pub order_code: String,
    /// Last 4 digits of a phone; sent only for carriers that need it.
    #[serde(default)]
    pub customer_name: Option<String>,
}

impl WaybillRequest {
    /// Builds a request, cleaning the waybill number and the carrier code, and reducing
    /// a phone number to its last 4 digits.
    pub fn new(shipper_code: &str, logistic_code: &str) -> Self {
        WaybillRequest {
            shipper_code: shipper_code.trim().to_ascii_uppercase(),
            logistic_code: clean_waybill(logistic_code),
            order_code: String::new(),
            customer_name: None,
        }
    }

    /// Sets `OrderCode`.
    pub fn with_order_code(mut self, order_code: &str) -> Self {
        self.order_code = order_code.to_string();
        self
    }

    /// Sets `CustomerName` from a phone number or its last 4 digits (non-digits dropped).
    pub fn with_phone(mut self, phone: &str) -> Self {
        let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 4 {
            self.customer_name = Some(digits[digits.len() - 4..].iter().collect());
        }
        self
    }

    /// True when the carrier requires `CustomerName`.
    pub fn needs_customer_name(&self) -> bool {
        CARRIERS_NEEDING_CUSTOMER_NAME.contains(&self.shipper_code.as_str())
    }

    /// The `RequestData` JSON. `CustomerName` is included only for SF, ZTO and KYSY.
    pub fn request_data(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert("OrderCode".into(), self.order_code.clone().into());
        m.insert("ShipperCode".into(), self.shipper_code.clone().into());
        m.insert("LogisticCode".into(), self.logistic_code.clone().into());
        if self.needs_customer_name() {
            if let Some(c) = &self.customer_name {
                m.insert("CustomerName".into(), c.clone().into());
            }
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// The form body of a Kdniao request; each value is form-encoded exactly once.
pub fn form_body(request_data: &str, ebusiness_id: &str, request_type: u16, sign: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("RequestData", request_data)
        .append_pair("EBusinessID", ebusiness_id)
        .append_pair("RequestType", &request_type.to_string())
        .append_pair("DataSign", sign)
        .append_pair("DataType", "2")
        .finish()
}

/// Classifies a Kdniao answer body.
pub fn classify_answer(provider: Provider, body: &str) -> Result<KdniaoAnswer, ProviderError> {
    let answer: KdniaoAnswer =
        serde_json::from_str(body).map_err(|e| ProviderError::Malformed {
            provider,
            message: format!("{e}"),
        })?;
    if answer.success || answer.is_no_traces() {
        return Ok(answer);
    }
    let reason = answer.reason.clone().unwrap_or_default();
    Err(if reason.starts_with("非法参数") {
        ProviderError::BadSign { provider, reason }
    } else if reason.contains("没有可用套餐") {
        ProviderError::Quota { provider, reason }
    } else if reason.starts_with("无效的输入") {
        ProviderError::InvalidParam { provider, reason }
    } else {
        ProviderError::Rejected { provider, reason }
    })
}

/// Runs `attempt` with the retry policy: retryable errors are retried `retries` times,
/// `delay` apart.
pub(crate) async fn with_retries<T, F, Fut>(
    retries: u32,
    delay: Duration,
    what: &str,
    mut attempt: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut n = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && n < retries => {
                n += 1;
                tracing::warn!(what, attempt = n, error = %e, "retrying after transient error");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                if matches!(
                    e,
                    ProviderError::BadSign { .. } | ProviderError::InvalidParam { .. }
                ) {
                    tracing::error!(alert = true, what, error = %e, "provider rejected request; not retrying (check EBusinessID/AppKey/parameters)");
                }
                return Err(e);
            }
        }
    }
}

/// Builds a reqwest client with the configured timeout.
pub(crate) fn http_client(http: &HttpConfig) -> Result<reqwest::Client, KdniaoError> {
    reqwest::Client::builder()
        .timeout(http.timeout())
        .connect_timeout(http.timeout())
        .build()
        .map_err(|e| KdniaoError::Config(format!("HTTP client: {e}")))
}

/// Maps a reqwest error to a provider error without the URL's query (there is none) or
/// body (which holds only the sign).
pub(crate) fn transport_error(provider: Provider, e: &reqwest::Error) -> ProviderError {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect failed"
    } else {
        "request failed"
    };
    ProviderError::Network {
        provider,
        message: kind.to_string(),
    }
}

/// Kdniao client. Cheap to clone; clones share the rate limiter and quota state.
#[derive(Clone)]
pub struct KdniaoClient {
    http: reqwest::Client,
    ebusiness_id: String,
    app_key: Secret,
    endpoints: Endpoints,
    query_type: u16,
    subscribe_type: u16,
    cfg: HttpConfig,
    limiter: Arc<RateLimiter>,
    quota_until: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for KdniaoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdniaoClient")
            .field("ebusiness_id", &self.ebusiness_id)
            .field("app_key", &self.app_key)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl KdniaoClient {
    /// A client for the given configuration.
    pub fn new(cfg: &KdniaoConfig) -> Result<Self, KdniaoError> {
        Ok(KdniaoClient {
            http: http_client(&cfg.http)?,
            ebusiness_id: cfg.ebusiness_id.clone(),
            app_key: cfg.app_key.clone(),
            endpoints: cfg.effective_endpoints(),
            query_type: cfg.query_request_type,
            subscribe_type: cfg.subscribe_request_type,
            cfg: cfg.http.clone(),
            limiter: Arc::new(RateLimiter::new(
                cfg.http.rate_limit_per_sec,
                cfg.http.burst,
            )),
            quota_until: Arc::new(Mutex::new(None)),
        })
    }

    /// Instant query with the configured RequestType (1002/8001/8002).
    pub async fn query(&self, req: &WaybillRequest) -> Result<KdniaoAnswer, ProviderError> {
        let url = if self.query_type == 1002 {
            self.endpoints.query_url.clone()
        } else {
            self.endpoints.value_added_url.clone()
        };
        self.call(Endpoint::TrackQuery, self.query_type, &url, req)
            .await
    }

    /// Subscribes a waybill (1008/8008); pushes then arrive as 101/102.
    pub async fn subscribe(&self, req: &WaybillRequest) -> Result<KdniaoAnswer, ProviderError> {
        let url = self.endpoints.subscribe_url.clone();
        self.call(Endpoint::Subscribe, self.subscribe_type, &url, req)
            .await
    }

    async fn call(
        &self,
        endpoint: Endpoint,
        request_type: u16,
        url: &str,
        req: &WaybillRequest,
    ) -> Result<KdniaoAnswer, ProviderError> {
        if let Some(until) = *self.quota_until.lock().await {
            if Instant::now() < until {
                return Err(ProviderError::Quota {
                    provider: Provider::Kdniao,
                    reason: "backing off after 没有可用套餐".into(),
                });
            }
        }
        if req.needs_customer_name() && req.customer_name.is_none() {
            tracing::warn!(shipper_code = %req.shipper_code, logistic_code = %req.logistic_code, "carrier needs CustomerName but none is known");
        }
        let request_data = req.request_data();
        let sign = data_sign(&request_data, &self.app_key);
        let body = form_body(&request_data, &self.ebusiness_id, request_type, &sign);
        let what = format!("kdniao {request_type} {}", req.logistic_code);
        let result = with_retries(self.cfg.retries, self.cfg.retry_delay(), &what, move || {
            self.attempt(endpoint, url, body.clone())
        })
        .await;
        if let Err(ProviderError::Quota { .. }) = &result {
            let until = Instant::now() + Duration::from_millis(self.cfg.quota_backoff_ms);
            *self.quota_until.lock().await = Some(until);
            tracing::error!(
                alert = true,
                backoff_ms = self.cfg.quota_backoff_ms,
                "kdniao quota exhausted; backing off"
            );
        }
        result
    }

    /// One HTTP attempt, counted and timed ([`crate::telemetry`]) after the rate limiter's
    /// wait.
    async fn attempt(
        &self,
        endpoint: Endpoint,
        url: &str,
        body: String,
    ) -> Result<KdniaoAnswer, ProviderError> {
        self.limiter.acquire().await;
        let started = std::time::Instant::now();
        let r = self.send(url, body).await;
        record_request(endpoint, Provider::Kdniao, r.is_ok(), started.elapsed());
        r
    }

    async fn send(&self, url: &str, body: String) -> Result<KdniaoAnswer, ProviderError> {
        let resp = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(Provider::Kdniao, &e))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(ProviderError::ServerError {
                provider: Provider::Kdniao,
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(ProviderError::HttpStatus {
                provider: Provider::Kdniao,
                status: status.as_u16(),
            });
        }
        let text = resp
            .text()
            .await
            .map_err(|e| transport_error(Provider::Kdniao, &e))?;
        classify_answer(Provider::Kdniao, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_body_encodes_sign_once() {
        let body = form_body("{'a':'b c'}", "1", 1002, "ab+c/d==");
        assert_eq!(
            body,
            "RequestData=%7B%27a%27%3A%27b+c%27%7D&EBusinessID=1&RequestType=1002&DataSign=ab%2Bc%2Fd%3D%3D&DataType=2"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(decoded[3], ("DataSign".to_string(), "ab+c/d==".to_string()));
    }

    #[test]
    fn request_data_has_customer_name_only_where_needed() {
        let sf = WaybillRequest::new(" sf ", "1189-5490 7573").with_phone("138 0013 5678");
        assert_eq!(
            sf.request_data(),
            r#"{"CustomerName":"5678","LogisticCode":"118954907573","OrderCode":"","ShipperCode":"SF"}"#
        );
        let yto = WaybillRequest::new("YTO", "yt1").with_phone("13800135678");
        assert_eq!(
            yto.request_data(),
            r#"{"LogisticCode":"YT1","OrderCode":"","ShipperCode":"YTO"}"#
        );
    }

    #[test]
    fn classification_of_answers() {
        let p = Provider::Kdniao;
        let bad = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/error_invalid_datasign.json"
        ))
        .unwrap();
        assert!(matches!(
            classify_answer(p, &bad),
            Err(ProviderError::BadSign { .. })
        ));
        assert!(matches!(
            classify_answer(p, r#"{"Success":false,"Reason":"业务错误[没有可用套餐]"}"#),
            Err(ProviderError::Quota { .. })
        ));
        assert!(matches!(
            classify_answer(p, r#"{"Success":false,"Reason":"无效的输入[ShipperCode]"}"#),
            Err(ProviderError::InvalidParam { .. })
        ));
        assert!(classify_answer(p, r#"{"Success":false,"Reason":null,"Traces":[]}"#).is_ok());
        assert!(classify_answer(
            p,
            r#"{"Success":true,"State":"0","Reason":"暂无轨迹信息","Traces":[]}"#
        )
        .is_ok());
        assert!(matches!(
            classify_answer(p, "<html>"),
            Err(ProviderError::Malformed { .. })
        ));
    }
}
