//! Pipeline settings: the defaults of spec §5 plus adflow's own engine knobs, read from a TOML
//! file (every field optional; unknown fields are rejected).
//!
//! Durations are written as strings with a unit: `"7d"`, `"24h"`, `"5m"`, `"5s"`, `"250ms"`.

use crate::time::{DAY, HOUR, MINUTE, SECOND};
use serde::{Deserialize, Deserializer, Serialize};

/// A duration in milliseconds, written `"7d"`, `"24h"`, `"5m"`, `"30s"` or `"250ms"` in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Millis(pub i64);

impl Millis {
    /// Parses `"<integer><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
    pub fn parse(text: &str) -> Result<Millis, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {t:?} needs a unit (ms, s, m, h, d)"))?;
        let (num, unit) = t.split_at(split);
        let n: i64 = num
            .parse()
            .map_err(|_| format!("duration {t:?} must start with a whole number"))?;
        let scale = match unit {
            "ms" => 1,
            "s" => SECOND,
            "m" | "min" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            _ => return Err(format!("duration {t:?}: unknown unit {unit:?}")),
        };
        n.checked_mul(scale)
            .map(Millis)
            .ok_or_else(|| format!("duration {t:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Millis::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An attribution model of spec §4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    LastClick,
    FirstClick,
    Linear,
    TimeDecay,
    PositionBased,
}

impl Model {
    /// All five models.
    pub const ALL: [Model; 5] = [
        Model::LastClick,
        Model::FirstClick,
        Model::Linear,
        Model::TimeDecay,
        Model::PositionBased,
    ];

    /// The model's name as written in `attribution.model`.
    pub fn name(self) -> &'static str {
        match self {
            Model::LastClick => "last_click",
            Model::FirstClick => "first_click",
            Model::Linear => "linear",
            Model::TimeDecay => "time_decay",
            Model::PositionBased => "position_based",
        }
    }
}

/// Every setting, with the defaults of spec §5. See `docs/configuration.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Attribution look-back window (default 7 days).
    pub attribution_window: Millis,
    /// Half-life of the `time_decay` model (default 7 days).
    pub time_decay_half_life: Millis,
    /// Models emitted (default all five). `last_click` is always computed because
    /// `order_status` and `campaign_metrics` use it, but only emitted when listed.
    pub models: Vec<Model>,
    /// Allowed lateness: the watermark trails the largest seen `ts` by this much (default 5 s;
    /// live mode 300 ms unless set, see [`Settings::for_live`]).
    pub allowed_lateness: Millis,
    /// Dedup horizon (default 1 hour): a second event with the same stream and `event_id` is
    /// ignored until both the watermark and the largest event `ts` seen have advanced this
    /// much past the largest time seen when the first copy arrived.
    pub dedup_horizon: Millis,
    /// Stall threshold for `stalled_parcel` (default 24 h).
    pub stall_threshold: Millis,
    /// CPC spike window length (default 5 min).
    pub cpc_window: Millis,
    /// Number of preceding windows forming the CPC baseline (default 12).
    pub cpc_baseline_windows: u32,
    /// Spike ratio, as a decimal string (default "1.5").
    pub cpc_ratio: String,
    /// Minimum clicks in the spiking window (default 20).
    pub cpc_min_clicks: i64,
    /// Minimum clicks in the baseline windows together (default 50).
    pub cpc_min_baseline_clicks: i64,
    /// No-impression window length (default 5 min).
    pub no_impression_window: Millis,
    /// Number of preceding windows that must each have had impressions (default 3).
    pub no_impression_lookback: u32,
    /// Minimum impressions in each preceding window (default 10).
    pub no_impression_min: i64,
    /// Replenishment delay after the first signed track (default 3 days).
    pub replenishment_delay: Millis,
    /// Zone of zone-less timestamps, as `+08:00` (default China Standard Time).
    pub time_zone: String,
    /// How long after its event time a record can still change outputs (default 14 days).
    /// State older than this is retracted from the dataflow so memory stays bounded; output
    /// rows whose inputs expire are frozen (the expiry is not written as a retraction); input
    /// events older than `watermark − state_retention` are rejected to `dead_letters`.
    pub state_retention: Millis,
    /// Engine tick (default 1 s; live mode 100 ms unless set, see [`Settings::for_live`]): input events take effect at their `ts` rounded up to a
    /// multiple of the tick, so all changes a tick causes to one row consolidate into one
    /// retraction and one insertion. Timers keep their exact times. `"1ms"` gives per-millisecond
    /// versions.
    pub tick: Millis,
    /// Environment variable holding the phone HMAC secret (default `ADFLOW_PHONE_SECRET`;
    /// when unset a built-in development secret is used and a warning is logged).
    pub phone_secret_env: String,
    /// `[kafka]`: the live source (`adflow run --kafka`); command-line flags override it.
    pub kafka: KafkaSettings,
    /// `[clickhouse]`: settings of the sink `--sink clickhouse=URL` starts (`batch_rows`,
    /// `batch_ms`, `max_pending_rows`, `user`, `password_env`, `[clickhouse.retry]`, … as in
    /// `docs/clickhouse.md`); the flag's URL gives `url` and `database`. Kept as TOML here (this
    /// crate does not know the sink's type); `adflow` checks it when it loads the file.
    pub clickhouse: Option<toml::Table>,
    /// `[actions]`: trigger webhooks, operator alerts, campaign pauses (`docs/actions.md`).
    /// Absent: no action is taken (the tables are still written).
    pub actions: Option<ActionsSettings>,
    /// Which settings the file gave explicitly (see [`Settings::for_live`]).
    #[serde(skip)]
    pub given: Given,
}

/// The settings a settings file gave explicitly, where file and live mode have different
/// defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Given {
    pub tick: bool,
    pub allowed_lateness: bool,
}

/// Live mode's default engine tick (file mode: 1 s), chosen for freshness: see
/// [`Settings::for_live`].
pub const LIVE_TICK: Millis = Millis(100);
/// Live mode's default allowed lateness (file mode and spec §5: 5 s), chosen for freshness:
/// once caught up, W = now − lateness, so nothing is released sooner than this after its `ts`.
pub const LIVE_ALLOWED_LATENESS: Millis = Millis(300);

/// The `[kafka]` table of the settings file. See `docs/kafka.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port[,host:port...]` (empty: give `--kafka`).
    pub brokers: String,
    /// Prefix of the topic names (`<prefix>ad_events`, ..., `<prefix>dead_letters`).
    pub topic_prefix: String,
    /// Consumer group id under which offsets are committed (default `adflow`).
    pub group_id: String,
    /// Accepted for compatibility, no effect any more (default 10 s): live mode lets a
    /// caught-up partition never hold event time back, without waiting (spec §2).
    pub idle_timeout: Millis,
    /// How often sinks are flushed and offsets committed (default 1 s).
    pub commit_interval: Millis,
    /// Once a stop (signal, `--exit-when-idle`) has begun, how long nothing may move (no
    /// frontier progress, nothing handed to a sink, no checkpoint round) before the run gives
    /// up on its final checkpoint and exits with an error (default 120 s).
    pub stop_stall_timeout: Millis,
    /// Extra librdkafka properties (security, timeouts, ...), passed through as they are.
    /// Keys adflow manages itself (group, auto-commit, offsets, ...) are rejected.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: String::new(),
            topic_prefix: String::new(),
            group_id: "adflow".into(),
            idle_timeout: Millis(10 * SECOND),
            commit_interval: Millis(SECOND),
            stop_stall_timeout: Millis(120 * SECOND),
            properties: Default::default(),
        }
    }
}

/// The `[actions]` table: what leaves the pipeline as calls to other systems. See
/// `docs/actions.md`. Every action goes through a durable outbox in `outbox`, keyed by a
/// stable id, so that it is sent at most once per id whatever restarts happen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsSettings {
    /// Directory of the durable outbox (default: `<output>/_actions` of `adflow run`, or
    /// required when there is no `--output`).
    pub outbox: Option<String>,
    /// How long one HTTP call may take before it counts as a network error (default 10 s).
    pub timeout: Millis,
    /// Retries after a network error, a 5xx or a 429 answer (default 3); then the action goes
    /// to the failed queue (`adflow actions replay-failed`). Other 4xx answers fail at once.
    pub retries: u32,
    /// Delay between attempts (default 5 s).
    pub retry_delay: Millis,
    /// Calls in flight at once per action kind (default 4).
    pub concurrency: u32,
    /// When a run ends, how long it waits for the actions still being sent (default 30 s);
    /// what is left stays pending in the outbox and is sent by the next run.
    pub drain_timeout: Millis,
    /// When set, an action whose time (a trigger's `due_ts`, an anomaly's `opened_ts`) is
    /// older than this behind the wall clock when it is decided is recorded as `expired`
    /// instead of being sent: replays of old topics then do not reach customers. Default:
    /// unset (everything is sent).
    pub max_age: Option<Millis>,
    /// `[actions.webhook]`: every trigger, as a signed JSON webhook.
    pub webhook: Option<WebhookSettings>,
    /// `[actions.alerts]`: operator alerts for anomalies.
    pub alerts: Option<AlertSettings>,
    /// `[actions.pause_campaign]`: pause a campaign on a CPC spike or when it went dark.
    pub pause_campaign: Option<PauseSettings>,
}

impl Default for ActionsSettings {
    fn default() -> Self {
        ActionsSettings {
            outbox: None,
            timeout: Millis(10 * SECOND),
            retries: 3,
            retry_delay: Millis(5 * SECOND),
            concurrency: 4,
            drain_timeout: Millis(30 * SECOND),
            max_age: None,
            webhook: None,
            alerts: None,
            pause_campaign: None,
        }
    }
}

/// `[actions.webhook]`: the trigger webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The receiver (`http://` or `https://`); every trigger is POSTed here.
    pub url: String,
    /// Environment variable holding the HMAC-SHA256 signing secret (default
    /// `ADFLOW_WEBHOOK_SECRET`; it must be set and non-empty).
    #[serde(default = "default_webhook_secret_env")]
    pub secret_env: String,
}

fn default_webhook_secret_env() -> String {
    "ADFLOW_WEBHOOK_SECRET".into()
}

/// Where operator alerts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertTarget {
    /// A WeCom (企业微信) group robot: its `markdown` message JSON.
    Wecom,
    /// A generic JSON webhook, signed like the trigger webhook when `secret_env` is set.
    Webhook,
}

/// `[actions.alerts]`: operator alerts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// `wecom` or `webhook`.
    pub target: AlertTarget,
    /// The robot's URL (`https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...`) or the
    /// webhook's.
    pub url: String,
    /// Generic webhook only: environment variable with the signing secret (unset: unsigned).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Anomaly kinds alerted once per interval (default `cpc_spike`, `no_impressions`).
    #[serde(default = "default_alert_kinds")]
    pub kinds: Vec<String>,
    /// Alert once when the number of open `stalled_parcel` intervals rises above this
    /// (default 100; 0 disables), again only after it has fallen to it or below.
    #[serde(default = "default_count_threshold")]
    pub stalled_parcels_above: u64,
    /// The same for open `delivery_exception` intervals (default 100; 0 disables).
    #[serde(default = "default_count_threshold")]
    pub delivery_exceptions_above: u64,
}

fn default_alert_kinds() -> Vec<String> {
    vec!["cpc_spike".into(), "no_impressions".into()]
}

fn default_count_threshold() -> u64 {
    100
}

/// `[actions.pause_campaign]`: pausing campaigns on anomalies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseSettings {
    /// Send the pause calls (default false: dry run, each decision is logged and counted).
    #[serde(default)]
    pub enabled: bool,
    /// Where the pause call is POSTed (required when enabled).
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable with the signing secret (default `ADFLOW_WEBHOOK_SECRET`).
    #[serde(default = "default_webhook_secret_env")]
    pub secret_env: String,
    /// Anomaly kinds that pause their campaign (default `cpc_spike`, `no_impressions`).
    #[serde(default = "default_alert_kinds")]
    pub kinds: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            attribution_window: Millis(7 * DAY),
            time_decay_half_life: Millis(7 * DAY),
            models: Model::ALL.to_vec(),
            allowed_lateness: Millis(5 * SECOND),
            dedup_horizon: Millis(HOUR),
            stall_threshold: Millis(24 * HOUR),
            cpc_window: Millis(5 * MINUTE),
            cpc_baseline_windows: 12,
            cpc_ratio: "1.5".into(),
            cpc_min_clicks: 20,
            cpc_min_baseline_clicks: 50,
            no_impression_window: Millis(5 * MINUTE),
            no_impression_lookback: 3,
            no_impression_min: 10,
            replenishment_delay: Millis(3 * DAY),
            time_zone: "+08:00".into(),
            state_retention: Millis(14 * DAY),
            tick: Millis(SECOND),
            phone_secret_env: "ADFLOW_PHONE_SECRET".into(),
            kafka: KafkaSettings::default(),
            clickhouse: None,
            actions: None,
            given: Given::default(),
        }
    }
}

/// Why a settings file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid settings: {0}")]
    Invalid(String),
}

impl Settings {
    /// Parses settings from TOML text; missing fields keep their defaults.
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        let mut s: Settings =
            toml::from_str(text).map_err(|e| SettingsError::Invalid(e.to_string()))?;
        let table: toml::Table =
            toml::from_str(text).map_err(|e| SettingsError::Invalid(e.to_string()))?;
        s.given.tick = table.contains_key("tick");
        s.given.allowed_lateness = table.contains_key("allowed_lateness");
        s.validate()?;
        Ok(s)
    }

    /// These settings for live mode: `tick` and `allowed_lateness` that the settings file does
    /// not set take the live defaults ([`LIVE_TICK`], [`LIVE_ALLOWED_LATENESS`]) instead of the
    /// file-mode ones. Final table contents do not depend on either (events take effect at
    /// their exact `ts` rounded to the tick, late events are applied exactly); they decide how
    /// soon a change is released (freshness) and how many intermediate versions a row goes
    /// through (a smaller tick consolidates less: more output changes for a replay).
    pub fn for_live(mut self) -> Settings {
        if !self.given.tick {
            self.tick = LIVE_TICK;
        }
        if !self.given.allowed_lateness {
            self.allowed_lateness = LIVE_ALLOWED_LATENESS;
        }
        self
    }

    /// Checks ranges and formats.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        for (name, v) in [
            ("attribution_window", self.attribution_window),
            ("time_decay_half_life", self.time_decay_half_life),
            ("stall_threshold", self.stall_threshold),
            ("cpc_window", self.cpc_window),
            ("no_impression_window", self.no_impression_window),
            ("state_retention", self.state_retention),
            ("tick", self.tick),
            ("kafka.idle_timeout", self.kafka.idle_timeout),
            ("kafka.commit_interval", self.kafka.commit_interval),
            ("kafka.stop_stall_timeout", self.kafka.stop_stall_timeout),
        ] {
            if v.0 <= 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.allowed_lateness.0 < 0 || self.dedup_horizon.0 < 0 || self.replenishment_delay.0 < 0
        {
            return bad("durations must not be negative".into());
        }
        if self.models.is_empty() {
            return bad(format!(
                "models is empty: list at least one of {}",
                Model::ALL
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.cpc_baseline_windows == 0 || self.no_impression_lookback == 0 {
            return bad("window counts must be at least 1".into());
        }
        self.cpc_ratio_scaled()?;
        self.zone_offset_minutes()?;
        if let Some(a) = &self.actions {
            a.validate()?;
        }
        Ok(())
    }

    /// The CPC spike ratio × 1000 (e.g. 1500 for "1.5").
    pub fn cpc_ratio_scaled(&self) -> Result<i64, SettingsError> {
        crate::money::parse_decimal(&self.cpc_ratio, 3)
            .map_err(|e| SettingsError::Invalid(format!("cpc_ratio: {e}")))
    }

    /// The configured zone as minutes east of UTC.
    pub fn zone_offset_minutes(&self) -> Result<i32, SettingsError> {
        let z = self.time_zone.trim();
        let err = || SettingsError::Invalid(format!("time_zone {z:?} must look like +08:00"));
        let (sign, rest) = match z.as_bytes().first() {
            Some(b'+') => (1, &z[1..]),
            Some(b'-') => (-1, &z[1..]),
            _ if z == "Z" || z == "UTC" => return Ok(0),
            _ => return Err(err()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(err)?;
        let h: i32 = h.parse().map_err(|_| err())?;
        let m: i32 = m.parse().map_err(|_| err())?;
        if h > 23 || m > 59 {
            return Err(err());
        }
        Ok(sign * (h * 60 + m))
    }
}

/// Anomaly kinds an alert or a pause may name.
const ANOMALY_KINDS: [&str; 5] = [
    "stalled_parcel",
    "delivery_exception",
    "cpc_spike",
    "no_impressions",
    "spend_mismatch",
];

impl ActionsSettings {
    /// Checks URLs, kinds and ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(format!("[actions] {m}")));
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if self.timeout.0 <= 0 || self.retry_delay.0 < 0 || self.drain_timeout.0 < 0 {
            return bad(
                "timeout must be positive, retry_delay and drain_timeout not negative".into(),
            );
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if let Some(w) = &self.webhook {
            if !url_ok(&w.url) {
                return bad(format!(
                    "webhook.url {:?} must be http:// or https://",
                    w.url
                ));
            }
        }
        if let Some(a) = &self.alerts {
            if !url_ok(&a.url) {
                return bad(format!(
                    "alerts.url {:?} must be http:// or https://",
                    a.url
                ));
            }
            if let Some(k) = a
                .kinds
                .iter()
                .find(|k| !ANOMALY_KINDS.contains(&k.as_str()))
            {
                return bad(format!("alerts.kinds: unknown anomaly kind {k:?}"));
            }
        }
        if let Some(p) = &self.pause_campaign {
            if let Some(k) = p
                .kinds
                .iter()
                .find(|k| !matches!(k.as_str(), "cpc_spike" | "no_impressions"))
            {
                return bad(format!(
                    "pause_campaign.kinds: {k:?} is not a campaign anomaly (cpc_spike, no_impressions)"
                ));
            }
            match &p.url {
                Some(u) if !url_ok(u) => {
                    return bad(format!(
                        "pause_campaign.url {u:?} must be http:// or https://"
                    ))
                }
                None if p.enabled => return bad("pause_campaign.enabled needs a url".into()),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::from_toml("attribution_window = \"3d\"\nmodels = [\"last_click\"]\n")
            .unwrap();
        assert_eq!(s.attribution_window, Millis(3 * DAY));
        assert_eq!(s.models, vec![Model::LastClick]);
        assert_eq!(s.stall_threshold, Millis(24 * HOUR));
        assert_eq!(s.zone_offset_minutes().unwrap(), 480);
        assert_eq!(s.cpc_ratio_scaled().unwrap(), 1500);
        assert!(Settings::from_toml("no_such = 1").is_err());
        assert!(Settings::from_toml("stall_threshold = \"24\"").is_err());
        assert_eq!(Millis::parse("250ms"), Ok(Millis(250)));
    }

    #[test]
    fn kafka_table() {
        let s = Settings::from_toml(
            "[kafka]\nbrokers = \"b:9092\"\nidle_timeout = \"2s\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n",
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "b:9092");
        assert_eq!(s.kafka.idle_timeout, Millis(2 * SECOND));
        assert_eq!(s.kafka.commit_interval, Millis(SECOND));
        assert_eq!(s.kafka.group_id, "adflow");
        assert_eq!(s.kafka.properties["security.protocol"], "SSL");
        assert!(Settings::from_toml("[kafka]\nbogus = 1\n").is_err());
        assert!(Settings::from_toml("[kafka]\nidle_timeout = \"0s\"\n").is_err());
    }

    #[test]
    fn live_mode_defaults_apply_only_where_the_file_is_silent() {
        let s = Settings::from_toml("").unwrap().for_live();
        assert_eq!(
            (s.tick, s.allowed_lateness),
            (LIVE_TICK, LIVE_ALLOWED_LATENESS)
        );
        let s = Settings::from_toml("tick = \"1s\"\n").unwrap().for_live();
        assert_eq!(
            (s.tick, s.allowed_lateness),
            (Millis(SECOND), LIVE_ALLOWED_LATENESS)
        );
        let s = Settings::from_toml("allowed_lateness = \"5s\"\n")
            .unwrap()
            .for_live();
        assert_eq!(
            (s.tick, s.allowed_lateness),
            (LIVE_TICK, Millis(5 * SECOND))
        );
        // File mode keeps the spec's defaults.
        let s = Settings::from_toml("").unwrap();
        assert_eq!(
            (s.tick, s.allowed_lateness),
            (Millis(SECOND), Millis(5 * SECOND))
        );
    }

    #[test]
    fn actions_table() {
        let s = Settings::from_toml(
            "[actions]\noutbox = \"/tmp/o\"\nretries = 2\n[actions.webhook]\nurl = \"http://127.0.0.1:9/t\"\n[actions.alerts]\ntarget = \"wecom\"\nurl = \"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k\"\nstalled_parcels_above = 5\n[actions.pause_campaign]\n",
        )
        .unwrap();
        let a = s.actions.unwrap();
        assert_eq!(a.retries, 2);
        assert_eq!(a.retry_delay, Millis(5 * SECOND));
        assert_eq!(a.webhook.unwrap().secret_env, "ADFLOW_WEBHOOK_SECRET");
        let al = a.alerts.unwrap();
        assert_eq!(al.target, AlertTarget::Wecom);
        assert_eq!(
            (al.stalled_parcels_above, al.delivery_exceptions_above),
            (5, 100)
        );
        assert_eq!(al.kinds, vec!["cpc_spike", "no_impressions"]);
        let p = a.pause_campaign.unwrap();
        assert!(!p.enabled && p.url.is_none());
        for bad in [
            "[actions.webhook]\nurl = \"ftp://x\"\n",
            "[actions.pause_campaign]\nenabled = true\n",
            "[actions.alerts]\ntarget = \"sms\"\nurl = \"http://x\"\n",
            "[actions.alerts]\ntarget = \"webhook\"\nurl = \"http://x\"\nkinds = [\"nope\"]\n",
            "[actions]\nbogus = 1\n",
        ] {
            assert!(Settings::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_empty_model_list_is_rejected_with_the_names() {
        let e = Settings::from_toml("models = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models is empty") && e.contains("last_click"),
            "{e}"
        );
    }
}
