//! Kuaidi100 (快递100) backup provider: real-time query `poll/query.do`.
//!
//! Form fields `customer`, `param` (JSON `{"com","num","phone"}`) and
//! `sign = UPPER(md5_hex(param + key + customer))`. Answers are converted to
//! [`KdniaoAnswer`]s with Kuaidi100's state mapped to Kdniao codes ([`map_state`]) and
//! carrier codes mapped from Kdniao's ([`carrier_code`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use crate::answer::{KdniaoAnswer, RawTrace};
use crate::client::{http_client, transport_error, with_retries, WaybillRequest};
use crate::config::{HttpConfig, Kuaidi100Config};
use crate::error::{KdniaoError, Provider, ProviderError};
use crate::ratelimit::RateLimiter;
use crate::secret::Secret;
use crate::sign::kuaidi100_sign;
use crate::telemetry::{record_request, Endpoint};

/// Kuaidi100's state mapped to Kdniao's `(State, StateEx)`.
///
/// | Kuaidi100 | meaning | Kdniao |
/// |---|---|---|
/// | 0 | 在途 in transit | 2 / 2 |
/// | 1 | 揽收 collected | 1 / 1 |
/// | 2 | 疑难 problem | 4 / 4 |
/// | 3 | 签收 signed | 3 / 3 |
/// | 4 | 退签 return signed | 4 / 406 |
/// | 5 | 派件 out for delivery | 2 / 202 |
/// | 6 | 退回 returning | 4 / 407 |
/// | 7 | 转投 forwarded | 5 / 5 |
/// | 8, 10–13 | customs | 6 / 6 |
/// | 14 | 拒签 refused | 4 / 404 |
/// | other | unknown | 2 / none |
pub fn map_state(kuaidi100_state: &str) -> (&'static str, Option<&'static str>) {
    match kuaidi100_state.trim() {
        "0" => ("2", Some("2")),
        "1" => ("1", Some("1")),
        "2" => ("4", Some("4")),
        "3" => ("3", Some("3")),
        "4" => ("4", Some("406")),
        "5" => ("2", Some("202")),
        "6" => ("4", Some("407")),
        "7" => ("5", Some("5")),
        "8" | "10" | "11" | "12" | "13" => ("6", Some("6")),
        "14" => ("4", Some("404")),
        _ => ("2", None),
    }
}

/// Kdniao → Kuaidi100 carrier codes (Kuaidi100 wants lower-case names).
pub fn default_carrier_code(kdniao: &str) -> Option<&'static str> {
    Some(match kdniao {
        "SF" => "shunfeng",
        "ZTO" => "zhongtong",
        "YTO" => "yuantong",
        "YD" => "yunda",
        "STO" => "shentong",
        "JD" => "jd",
        "JDKY" => "jingdongkuaiyun",
        "EMS" => "ems",
        "YZPY" => "youzhengguonei",
        "JTSD" => "jtexpress",
        "DBL" => "debangkuaidi",
        "HTKY" => "huitongkuaidi",
        "UC" => "youshuwuliu",
        "ZJS" => "zhaijisong",
        "KYSY" => "kuayue",
        "ANE" => "annengwuliu",
        _ => return None,
    })
}

/// The Kuaidi100 carrier code for a Kdniao code: the configured override, else the
/// built-in table, else the code lower-cased.
pub fn carrier_code(kdniao: &str, overrides: &BTreeMap<String, String>) -> String {
    overrides
        .get(kdniao)
        .cloned()
        .or_else(|| default_carrier_code(kdniao).map(str::to_string))
        .unwrap_or_else(|| kdniao.to_ascii_lowercase())
}

/// A Kuaidi100 answer (success or failure shape).
#[derive(Debug, Deserialize)]
struct K100Answer {
    #[serde(default)]
    result: Option<bool>,
    #[serde(default, rename = "returnCode", deserialize_with = "opt_str")]
    return_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, deserialize_with = "opt_str")]
    state: Option<String>,
    #[serde(default)]
    data: Option<Vec<K100Trace>>,
}

#[derive(Debug, Deserialize)]
struct K100Trace {
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    ftime: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    location: Option<String>,
}

fn opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(v) => Some(v.to_string()),
    })
}

/// Converts a Kuaidi100 answer body for `req` into a Kdniao-shaped answer, or an error.
pub fn parse_answer(req: &WaybillRequest, body: &str) -> Result<KdniaoAnswer, ProviderError> {
    let p = Provider::Kuaidi100;
    let a: K100Answer = serde_json::from_str(body).map_err(|e| ProviderError::Malformed {
        provider: p,
        message: e.to_string(),
    })?;
    let message = a.message.clone().unwrap_or_default();
    if a.result == Some(false) {
        let code = a.return_code.clone().unwrap_or_default();
        let reason = format!("returnCode {code}: {message}");
        if code == "500" {
            // Kuaidi100's "查询无结果" (no result yet): like Kdniao's "no traces", not an error.
            tracing::info!(logistic_code = %req.logistic_code, message = %message, "kuaidi100: no traces");
            return Ok(empty_answer(req));
        }
        return Err(match code.as_str() {
            "501" | "502" => ProviderError::ServerError {
                provider: p,
                status: code.parse().unwrap_or(502),
            },
            "503" => ProviderError::BadSign {
                provider: p,
                reason,
            },
            "601" => ProviderError::Quota {
                provider: p,
                reason,
            },
            "400" if message.contains("签名") || message.contains("sign") => {
                ProviderError::BadSign {
                    provider: p,
                    reason,
                }
            }
            "400" => ProviderError::InvalidParam {
                provider: p,
                reason,
            },
            _ => ProviderError::Rejected {
                provider: p,
                reason,
            },
        });
    }
    let traces: Vec<RawTrace> = a
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|t| RawTrace {
            accept_time: t.time.or(t.ftime),
            accept_station: t.context,
            remark: None,
            action: None,
            location: t.location,
        })
        .collect();
    let (state, state_ex) = match &a.state {
        Some(s) if !traces.is_empty() => {
            let (st, ex) = map_state(s);
            (Some(st.to_string()), ex.map(str::to_string))
        }
        _ => (Some("0".to_string()), None),
    };
    Ok(KdniaoAnswer {
        state,
        state_ex,
        traces,
        ..empty_answer(req)
    })
}

fn empty_answer(req: &WaybillRequest) -> KdniaoAnswer {
    KdniaoAnswer {
        ebusiness_id: None,
        order_code: Some(req.order_code.clone()).filter(|s| !s.is_empty()),
        shipper_code: Some(req.shipper_code.clone()),
        logistic_code: Some(req.logistic_code.clone()),
        success: true,
        reason: None,
        state: Some("0".to_string()),
        state_ex: None,
        location: None,
        traces: Vec::new(),
    }
}

/// Kuaidi100 query client.
#[derive(Clone)]
pub struct Kuaidi100Client {
    http: reqwest::Client,
    customer: String,
    key: Secret,
    url: String,
    carriers: BTreeMap<String, String>,
    cfg: HttpConfig,
    limiter: Arc<RateLimiter>,
}

impl std::fmt::Debug for Kuaidi100Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kuaidi100Client")
            .field("customer", &self.customer)
            .field("key", &self.key)
            .field("url", &self.url)
            .finish()
    }
}

impl Kuaidi100Client {
    /// A client; timeouts and retries follow `http`.
    pub fn new(k: &Kuaidi100Config, http: &HttpConfig) -> Result<Self, KdniaoError> {
        Ok(Kuaidi100Client {
            http: http_client(http)?,
            customer: k.customer.clone(),
            key: k.key.clone(),
            url: k.url.clone(),
            carriers: k.carriers.clone(),
            cfg: http.clone(),
            limiter: Arc::new(RateLimiter::new(k.rate_limit_per_sec, 1)),
        })
    }

    /// The `param` JSON for a request.
    pub fn param(&self, req: &WaybillRequest) -> String {
        let mut m = serde_json::Map::new();
        m.insert(
            "com".into(),
            carrier_code(&req.shipper_code, &self.carriers).into(),
        );
        m.insert("num".into(), req.logistic_code.clone().into());
        if let Some(phone) = &req.customer_name {
            m.insert("phone".into(), phone.clone().into());
        }
        serde_json::Value::Object(m).to_string()
    }

    /// Queries one waybill, with the same retry policy as Kdniao.
    pub async fn query(&self, req: &WaybillRequest) -> Result<KdniaoAnswer, ProviderError> {
        let param = self.param(req);
        let sign = kuaidi100_sign(&param, &self.key, &self.customer);
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("customer", &self.customer)
            .append_pair("sign", &sign)
            .append_pair("param", &param)
            .finish();
        let what = format!("kuaidi100 {}", req.logistic_code);
        let body = &body;
        with_retries(
            self.cfg.retries,
            self.cfg.retry_delay(),
            &what,
            move || async move {
                self.limiter.acquire().await;
                let started = std::time::Instant::now();
                let r = self.send(req, body).await;
                record_request(
                    Endpoint::TrackQuery,
                    Provider::Kuaidi100,
                    r.is_ok(),
                    started.elapsed(),
                );
                r
            },
        )
        .await
    }

    /// One HTTP attempt.
    async fn send(&self, req: &WaybillRequest, body: &str) -> Result<KdniaoAnswer, ProviderError> {
        let resp = self
            .http
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport_error(Provider::Kuaidi100, &e))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(ProviderError::ServerError {
                provider: Provider::Kuaidi100,
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(ProviderError::HttpStatus {
                provider: Provider::Kuaidi100,
                status: status.as_u16(),
            });
        }
        let text = resp
            .text()
            .await
            .map_err(|e| transport_error(Provider::Kuaidi100, &e))?;
        parse_answer(req, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_mapping() {
        assert_eq!(map_state("0"), ("2", Some("2")));
        assert_eq!(map_state("3"), ("3", Some("3")));
        assert_eq!(map_state("4"), ("4", Some("406")));
        assert_eq!(map_state("5"), ("2", Some("202")));
        assert_eq!(map_state("6"), ("4", Some("407")));
        assert_eq!(map_state("14"), ("4", Some("404")));
        assert_eq!(map_state("99"), ("2", None));
        assert_eq!(carrier_code("SF", &BTreeMap::new()), "shunfeng");
        let mut o = BTreeMap::new();
        o.insert("DBL".to_string(), "debangwuliu".to_string());
        assert_eq!(carrier_code("DBL", &o), "debangwuliu");
        assert_eq!(carrier_code("XYZ", &o), "xyz");
    }

    #[test]
    fn parses_success_and_failure() {
        let req = WaybillRequest::new("YTO", "yt123");
        let a = parse_answer(
            &req,
            r#"{"message":"ok","nu":"YT123","ischeck":"1","com":"yuantong","status":"200","state":"3",
               "data":[{"time":"2024-01-02 10:00:00","ftime":"2024-01-02 10:00:00","context":"已签收"},
                       {"time":"2024-01-01 09:00:00","context":"已揽收"}]}"#,
        )
        .unwrap();
        assert_eq!(a.state.as_deref(), Some("3"));
        assert_eq!(a.state_ex.as_deref(), Some("3"));
        assert_eq!(a.traces.len(), 2);
        assert_eq!(a.logistic_code.as_deref(), Some("YT123"));
        assert!(matches!(
            parse_answer(
                &req,
                r#"{"result":false,"returnCode":"400","message":"找不到对应公司"}"#
            ),
            Err(ProviderError::InvalidParam { .. })
        ));
        let none = parse_answer(
            &req,
            r#"{"result":false,"returnCode":"500","message":"查询无结果"}"#,
        )
        .unwrap();
        assert!(none.traces.is_empty() && none.is_no_traces());
        assert!(matches!(
            parse_answer(
                &req,
                r#"{"result":false,"returnCode":"601","message":"key已过期"}"#
            ),
            Err(ProviderError::Quota { .. })
        ));
    }
}
