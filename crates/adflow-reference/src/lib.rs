//! The batch reference of adflow's outputs (spec §4): a straightforward computation, with plain
//! loops and maps, of the FINAL contents of every output table for a bounded file run
//! (`DIR/<stream>.jsonl`). It shares only parsing and row types with the streaming engine
//! (`adflow_model`), so that disagreements between the two reveal bugs.
//!
//! Semantics (the engine follows the same decisions):
//!
//! * **Input.** Each file is split on `\n` (a final empty piece after the last newline is not
//!   a line); every line is one message. Lines are parsed with
//!   [`adflow_model::event::parse_event`]; a failure becomes a `dead_letters` row with position
//!   `<stream>.jsonl:<line>` (1-based), the parse error as reason, `raw` =
//!   [`adflow_model::event::raw_excerpt`] and `seen_ts` = 0 (wall clock, never compared). An
//!   empty line in the middle of a file is a message too (reason `empty message`).
//! * **Duplicates.** A second event with the same (stream, `event_id`) is dropped, whatever its
//!   content; the first occurrence in file order is kept (the generator only writes exact
//!   copies shortly after the original, well within the 1-hour dedup horizon).
//! * **Watermark.** `W_final` = the largest `ts` of all valid events (file mode: W ends at the
//!   largest ts, not at infinity), or, with [`RefConfig::end_watermark_ms`] = `Some(w)`,
//!   `max(largest ts, w)`: a live run that has caught up and gone idle ends with W following
//!   the wall clock (`now − allowed lateness`), so every timer due before then has fired.
//!   `W_final` is the only thing the watermark decides; it gates exactly the timer-driven rows:
//!   an open stall after the last track (`opened_ts ≤ W_final`, and through it
//!   `suppressed_persons` and the suppression of triggers), replenishment (`due_ts ≤
//!   W_final`) and `no_impressions` (window end `≤ W_final`). Nothing else depends on it: the
//!   tables are defined by event time, so a far-future `W_final` fires timers and changes
//!   nothing else (the engine's state retention — expiring state and freezing rows — is an
//!   implementation bound the reference does not model; see `end_watermark_ms`). Without
//!   valid events and without an end watermark, no timer fires. (`spend_mismatch`, also a
//!   W-gated row in spec §4, is not computed: `ad_reports` is not parsed by `adflow_model`
//!   yet.)
//! * **Identity.** Nodes `user:<id>`, `device:<id>`, `phone:<hash>`; edges from every link
//!   event (a star over its nodes), every click with a user id (device–user; a junk device
//!   adds no node) and every `order` event with a phone (user–phone). A person is a connected
//!   component over ALL edges in the data regardless of time; `person_id` is the smallest user
//!   id (string order) in it. An order's person is the component of its user.
//! * **Orders.** If an `order_id` has several `order` events, the latest by (`ts`, `event_id`)
//!   defines it (amount, user, phone, `order_ts`). Its waybill is the `logistic_code` of its
//!   latest shipment by (`ts`, `event_id`). Tracks join waybills by cleaned logistic code; when
//!   several orders point at one waybill, each of them gets it. Status events, shipments and
//!   tracks of unknown orders produce no `order_status` row (tracks still drive anomalies).
//! * **Attribution.** Candidates = distinct clicks whose device node or user node is in the
//!   order's component with `T − window ≤ click_ts ≤ T`, ordered by (`click_ts`,
//!   `click_event_id`). Credits are `Fixed<6>`: last/first = 1; linear = `from_ratio(1, n)`;
//!   position_based: n = 1 → 1, n = 2 → 0.5 each, n ≥ 3 → 0.4 first and last and
//!   `from_ratio(2, 10·(n−2))` each other; time_decay: f64 weights `2^(−(T − click_ts)/H)`,
//!   each normalised weight rounded half away from zero to 6 decimals
//!   (`(w / Σw × 1e6).round()`). `credited_fen = div_round_half_away(amount_fen × credit,
//!   10^6)`. last_click/first_click emit one row, the other models one row per candidate.
//!   Organic orders (no candidate) have no rows.
//! * **order_status.** Tracks of the waybill ordered by (`ts`, `event_id`); code = `state_ex`
//!   else `state`. `refused` when a track with code 404/406/407 has no signed-class track
//!   (3, 301, 302, 304, 311) before it; otherwise by the latest code (0/10 `shipped`, 1
//!   `collected`, 202/211 `out_for_delivery`, signed class `signed`, exception class
//!   (4, 401–403, 405, 412–423) `exception`, anything else — including 404/406/407 after a
//!   signing — `in_transit`); `shipped` with a shipment but no track, `none` without shipment.
//!   `delivery_ts` = ts of the latest track. Flags from the order's status events (any ts).
//!   campaign/channel from the last-click attribution.
//! * **campaign_metrics.** Key (campaign, channel, hour = `ts − ts mod 3 600 000`). Impressions,
//!   clicks and costs by their own ts; orders/gmv/signed/refused/effective by `order_ts` of the
//!   orders last-click-attributed to the campaign (with that click's channel).
//!   `refusal_rate = Fixed<4>::from_ratio(refused, signed + refused)`, `cpc_fen =
//!   Fixed<2>::from_ratio(click_cost_fen, clicks)`, null when the denominator is 0. Rows only
//!   where some count or cost is non-zero.
//! * **anomalies.** `stalled_parcel`: for each track that is not final (signed class, 406,
//!   415) and has a next track with gap ≥ threshold → [ts + threshold, next.ts]; the last
//!   track, if not final and `W_final ≥ ts + threshold` → [ts + threshold, null]. Details
//!   `{"order_id","person_id","last_state"}` (the smallest order id whose waybill it is, and its
//!   person; nulls when none; `last_state` = the stalled track's code). `delivery_exception`:
//!   maximal runs of consecutive exception-class codes → [first.ts, next-after-run.ts or null],
//!   details `{"order_id","person_id","state"}` (`state` = the run's first code).
//!   `cpc_spike` per campaign_id (all channels), epoch-aligned windows: clicks_w ≥ min clicks,
//!   the baseline windows w−12..w−1 (empty ones count 0) have ≥ min baseline clicks, and
//!   `cost_w / clicks_w ≥ ratio × cost_b / clicks_b` compared exactly in integers; details
//!   `{"cpc_fen","baseline_cpc_fen","clicks"}` (Fixed<2> values); no W gating.
//!   `no_impressions` per campaign_id: window w with 0 impressions while w−1..w−3 each had
//!   ≥ min, and `W_final ≥` the end of w; details `{"previous_impressions"}`. Windowed
//!   anomalies are closed at the window's end.
//!   Details are JSON objects; they are compared in the canonical form that
//!   `serde_json::Value::to_string` gives (what reading a changelog line yields).
//! * **triggers.** Per order: `review_coupon` at the first track with code 202; `replenishment`
//!   at the first signed-class track + delay, only if `W_final ≥ due` and no cancelled /
//!   after_sale / refunded status event of the order has `ts ≤ due`; `substitute` at
//!   min(first 404/406/407 track, earliest after_sale status) — after_sale alone, without a
//!   waybill, qualifies. A trigger is skipped when the order's person has a stalled_parcel or
//!   delivery_exception interval (over the waybills of all the person's orders) with
//!   `opened_ts ≤ due_ts < closed_ts` (null closed = +∞).
//! * **suppressed_persons.** Per person and reason: the person's parcels' intervals with null
//!   `closed_ts` → one row with `since_ts` = the smallest `opened_ts`.

mod compute;
mod tables;

pub use compute::compute;
pub use tables::{comparable, diff, read_changelog_dir, write_tables_dir};

use adflow_model::config::Settings;
use adflow_model::event::ParseConfig;
use adflow_model::time::{DAY, HOUR, MINUTE, SECOND};
use adflow_model::{OutputRow, Table};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The final current contents of every output table.
pub type Tables = BTreeMap<Table, BTreeSet<OutputRow>>;

/// The settings of spec §5 that the outputs depend on. Times in milliseconds.
#[derive(Clone, Debug)]
pub struct RefConfig {
    /// Attribution window (default 7 days).
    pub window_ms: i64,
    /// Time-decay half-life (default 7 days).
    pub half_life_ms: i64,
    /// Allowed lateness (default 5 s). Documented for completeness: in file mode the final
    /// watermark is the largest ts, so it does not change the final tables (an end watermark
    /// given in [`RefConfig::end_watermark_ms`] is taken as it is, lateness already applied).
    pub allowed_lateness_ms: i64,
    /// Stall threshold (default 24 h).
    pub stall_threshold_ms: i64,
    /// CPC window (default 5 min).
    pub cpc_window_ms: i64,
    /// Number of baseline windows before the window (default 12).
    pub cpc_baseline_windows: i64,
    /// Spike ratio as a fraction `num / den` (default 3/2 = 1.5).
    pub cpc_ratio_num: i64,
    pub cpc_ratio_den: i64,
    /// Minimum clicks in the window (default 20).
    pub cpc_min_clicks: i64,
    /// Minimum clicks in the baseline windows together (default 50).
    pub cpc_min_baseline_clicks: i64,
    /// No-impression window (default 5 min).
    pub no_imp_window_ms: i64,
    /// Windows before that must each have had `no_imp_min` impressions (default 3).
    pub no_imp_lookback: i64,
    /// Minimum impressions of each lookback window (default 10).
    pub no_imp_min: i64,
    /// Replenishment delay after the first signing (default 3 days).
    pub replenishment_delay_ms: i64,
    /// Attribution models emitted (default all five: `last_click`, `first_click`, `linear`,
    /// `time_decay`, `position_based`). `order_status` and `campaign_metrics` use the last
    /// click whatever this says.
    pub models: Vec<String>,
    /// Zone of zone-less timestamps and the phone secret (defaults: +08:00 and
    /// `ParseConfig::default()`'s secret).
    pub parse: ParseConfig,
    /// Where event time ends (spec §2). `None` (the default): file mode, W ends at the largest
    /// `ts` of the input. `Some(w)`: W ends at `max(largest ts, w)` — a live run that caught up
    /// with its topics and went idle, where W follows the wall clock (pass `now − allowed
    /// lateness`). Every timer due at or before that W fires (open stalls, replenishment,
    /// `no_impressions`, and what follows from open stalls: `suppressed_persons` and the
    /// suppression of triggers); nothing else changes. The reference models the spec's tables,
    /// which are defined by event time: it does not model the engine's `state_retention`
    /// (state expiry and frozen rows). The engine agrees with it while W stays within the
    /// retention (default 14 days) of the data; a W further out brings expiry into play in
    /// the engine (parcel intervals re-emitted without their order and person, the persons'
    /// suppression withdrawn, `cpc_spike`/`no_impressions` rows retracted), so compare a
    /// far-future end only under a retention that covers it.
    pub end_watermark_ms: Option<i64>,
}

impl RefConfig {
    /// The reference configuration of pipeline `settings` (spec §5 settings file), with the
    /// phone HMAC `phone_secret`.
    pub fn from_settings(settings: &Settings, phone_secret: Vec<u8>) -> Result<Self, RefError> {
        let bad = |e: adflow_model::config::SettingsError| RefError::Config(e.to_string());
        Ok(RefConfig {
            window_ms: settings.attribution_window.0,
            half_life_ms: settings.time_decay_half_life.0,
            allowed_lateness_ms: settings.allowed_lateness.0,
            stall_threshold_ms: settings.stall_threshold.0,
            cpc_window_ms: settings.cpc_window.0,
            cpc_baseline_windows: settings.cpc_baseline_windows as i64,
            cpc_ratio_num: settings.cpc_ratio_scaled().map_err(bad)?,
            cpc_ratio_den: 1000,
            cpc_min_clicks: settings.cpc_min_clicks,
            cpc_min_baseline_clicks: settings.cpc_min_baseline_clicks,
            no_imp_window_ms: settings.no_impression_window.0,
            no_imp_lookback: settings.no_impression_lookback as i64,
            no_imp_min: settings.no_impression_min,
            replenishment_delay_ms: settings.replenishment_delay.0,
            models: settings
                .models
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            parse: ParseConfig {
                zone_offset_minutes: settings.zone_offset_minutes().map_err(bad)?,
                phone_secret,
            },
            end_watermark_ms: None,
        })
    }
}

impl Default for RefConfig {
    fn default() -> Self {
        RefConfig {
            window_ms: 7 * DAY,
            half_life_ms: 7 * DAY,
            allowed_lateness_ms: 5 * SECOND,
            stall_threshold_ms: 24 * HOUR,
            cpc_window_ms: 5 * MINUTE,
            cpc_baseline_windows: 12,
            cpc_ratio_num: 3,
            cpc_ratio_den: 2,
            cpc_min_clicks: 20,
            cpc_min_baseline_clicks: 50,
            no_imp_window_ms: 5 * MINUTE,
            no_imp_lookback: 3,
            no_imp_min: 10,
            replenishment_delay_ms: 3 * DAY,
            models: [
                "last_click",
                "first_click",
                "linear",
                "time_decay",
                "position_based",
            ]
            .iter()
            .map(|m| m.to_string())
            .collect(),
            parse: ParseConfig::default(),
            end_watermark_ms: None,
        }
    }
}

/// Why the reference could not run.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a changelog line: {source}")]
    Changelog {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}
