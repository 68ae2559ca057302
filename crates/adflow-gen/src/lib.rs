//! adflow's synthetic data generator: realistic, deterministic (per seed) input for the four
//! streams of the data contract (`shared/spec/README.md` §1), written as JSON Lines files
//! `DIR/{ad_events,orders,logistics,identity}.jsonl`.
//!
//! What the data contains:
//! * campaigns (20–50 by default) on `douyin`, `tencent`, `baidu`, `taobao` (some on two
//!   channels), impressions (CPM cost, sometimes absent) and clicks (CPC cost) of user sessions
//!   with a day/night rhythm; money written as numbers and strings (`0.35`, `"0.35"`, `199`,
//!   `"199.00"`);
//! * registered users with one to three devices, anonymous visitors, logged-in clicks with a
//!   `user_id`, identity links (device/user, device/phone, user/phone) some of which arrive after
//!   the click and the order they connect, shared household devices, junk identifiers;
//! * orders shortly or days after a click (inside and, for long runs, outside the 7-day
//!   window), organic orders, amended orders (a second `order` event), phones in several forms
//!   and junk phones, addresses;
//! * `order_status` events (`cancelled`, `after_sale`, `refunded`), shipments with messy waybill
//!   numbers (spaces, `-`, lower case), re-shipments and merged parcels, Kdniao track sequences
//!   (codes as numbers and strings, `state` + `state_ex`) with signings, refusals and returns
//!   (404/407/406), exception runs, out-for-delivery (202), stalls of 24 h and more, parcels
//!   still in flight at the end;
//! * CPC spikes (a busy hour of clicks, then a 5-minute window with ≥ 20 clicks at about twice
//!   the price) and a near miss (1.25×), and one campaign that stops getting impressions after
//!   a busy stretch (so `no_impressions` fires);
//! * all timestamp forms: epoch ms, RFC 3339 (`Z` and `+08:00`), `yyyy-MM-dd HH:mm:ss` and
//!   `yyyy/MM/dd HH:mm:ss` with and without `.SSS` (zone-less forms are +08:00);
//! * exact duplicate lines shortly after their original (within 100 lines and 10 minutes of
//!   event time), and malformed lines (not JSON, missing fields, wrong types, unknown `type`,
//!   bad `ts`, bad amounts or codes).
//!
//! Every line of a file is in event-time order up to a local disorder of at most 3 seconds.
//! The same arguments always give byte-identical files.
//!
//! [`LiveGen`] (module `live`) runs the same world endlessly for `adflow produce --live`: one
//! event per call, stamped with the caller's wall clock, delays compressed (one simulated day
//! per second by default), plus the `ad_reports` stream.

mod gen;
mod live;
mod write;

use adflow_model::StreamKind;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use gen::generate;
pub use live::{
    LiveConfig, LiveEvent, LiveGen, LiveStream, DEFAULT_LIVE_USERS, DEFAULT_REPORT_INTERVAL_MS,
    DEFAULT_SIM_DAY_MS,
};

/// 2024-06-03 00:00:00 +08:00 (a Monday), the default start of the generated period.
pub const DEFAULT_START_MS: i64 = 1_717_344_000_000;

/// Arguments of `adflow generate`.
#[derive(Clone, Debug, clap::Args)]
pub struct GenerateArgs {
    /// Directory to write `ad_events.jsonl`, `orders.jsonl`, `logistics.jsonl` and
    /// `identity.jsonl` into (created when missing; existing files are replaced).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Seed of the random generator: the same arguments give identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of registered users (anonymous visitors come on top, about 30 %).
    #[arg(long, default_value_t = 2000)]
    pub users: u32,
    /// Length of the generated period in days.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Number of campaigns; 0 picks 20–50 from the number of users.
    #[arg(long, default_value_t = 0)]
    pub campaigns: u32,
    /// Start of the period, epoch milliseconds (default 2024-06-03 00:00 +08:00).
    #[arg(long, default_value_t = DEFAULT_START_MS)]
    pub start_ms: i64,
    /// Average browsing sessions per user and day (each 3–30 impressions).
    #[arg(long, default_value_t = 3.0)]
    pub sessions_per_user_day: f64,
    /// Exact duplicate lines per thousand lines, per file.
    #[arg(long, default_value_t = 5)]
    pub duplicates_per_mille: u32,
    /// Malformed lines per thousand lines, per file.
    #[arg(long, default_value_t = 2)]
    pub malformed_per_mille: u32,
    /// Number of CPC spikes to inject (each also gets a near miss every other spike).
    #[arg(long, default_value_t = 3)]
    pub cpc_spikes: u32,
    /// Compresses event time: every event is written at `start + (ts − start) / N`, so the
    /// same events arrive N times denser (a high-rate data set for throughput benchmarks, like
    /// a brand with N times the traffic; business delays such as delivery days and 24 h stalls
    /// shrink with it). 1 keeps real timing.
    #[arg(long, default_value_t = 1)]
    pub time_scale: u32,
}

impl GenerateArgs {
    /// The default arguments, writing into `output`.
    pub fn with_output(output: impl Into<PathBuf>) -> Self {
        GenerateArgs {
            output: output.into(),
            seed: 42,
            users: 2000,
            days: 7,
            campaigns: 0,
            start_ms: DEFAULT_START_MS,
            sessions_per_user_day: 3.0,
            duplicates_per_mille: 5,
            malformed_per_mille: 2,
            cpc_spikes: 3,
            time_scale: 1,
        }
    }
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Line counts of one generated file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Distinct valid events (each parses with `adflow_model::event::parse_event`).
    pub events: u64,
    /// Exact duplicate lines of valid events.
    pub duplicates: u64,
    /// Malformed lines (each fails to parse).
    pub malformed: u64,
    /// All lines: `events + duplicates + malformed`.
    pub lines: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default)]
pub struct GenReport {
    /// Counts per stream, indexed by [`StreamKind::index`].
    pub streams: [StreamCounts; 4],
    pub campaigns: u32,
    pub users: u32,
    pub devices: u32,
    /// Distinct order ids.
    pub orders: u64,
    /// Injected CPC spikes (and near misses, which should not fire).
    pub cpc_spikes: u32,
    pub cpc_near_misses: u32,
    /// The period `[start_ms, end_ms)` all event times lie in.
    pub start_ms: i64,
    pub end_ms: i64,
    pub elapsed: Duration,
}

impl GenReport {
    /// The counts of one stream.
    pub fn stream(&self, s: StreamKind) -> StreamCounts {
        self.streams[s.index()]
    }

    /// Lines over all files.
    pub fn total_lines(&self) -> u64 {
        self.streams.iter().map(|c| c.lines).sum()
    }
}

impl fmt::Display for GenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in StreamKind::ALL {
            let c = self.stream(s);
            writeln!(
                f,
                "{:<10} {:>10} events {:>7} duplicates {:>6} malformed {:>12} bytes",
                s.name(),
                c.events,
                c.duplicates,
                c.malformed,
                c.bytes
            )?;
        }
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} campaigns, {} users, {} devices, {} orders, {} cpc spikes (+{} near misses); \
             {} lines in {:.2} s ({:.0} lines/s)",
            self.campaigns,
            self.users,
            self.devices,
            self.orders,
            self.cpc_spikes,
            self.cpc_near_misses,
            self.total_lines(),
            secs,
            self.total_lines() as f64 / secs.max(1e-9)
        )
    }
}
