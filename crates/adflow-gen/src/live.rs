//! The live generator behind `adflow produce --live`: an endless, incremental version of
//! [`crate::generate`]'s world, for load tests against a running pipeline.
//!
//! It drives the *same* simulation as `adflow generate` (the same campaigns, users, devices,
//! browsing sessions, clicks, orders, amendments, `order_status` events, shipments with messy
//! waybill numbers, Kdniao track sequences with signings, refusals, returns and exception
//! runs, identity links, junk identifiers, phone and money forms) and adds the fifth stream of
//! the data contract, `ad_reports`. What differs:
//!
//! * **Time.** Every emitted event's `ts` is the wall clock (epoch ms, a JSON number) passed to
//!   [`LiveGen::next_event`] at the moment it is sent, never earlier than the previous event's.
//!   Internally the world runs on a simulated clock and events are emitted in simulated-time
//!   order, so every person's sequence stays causal: impression, then click, then the order,
//!   its status events and its shipment, then the parcel's tracks in Kdniao state order, and
//!   identity links before or after (some after the click and order they connect, as in the
//!   generator).
//! * **Compressed delays.** A load test lasts minutes, so the simulated clock runs about
//!   [`LiveConfig::sim_day_ms`] real milliseconds per simulated day (default 1000: one day per
//!   second, a speed-up of 86 400). A browsing session lasts a few milliseconds, an order
//!   follows its click after a millisecond to 9 s, a parcel is shipped 0.1–1.3 s after the
//!   order, its Kdniao states come 0.1–0.4 s apart and it is signed (or refused, or returned)
//!   about 0.3–3 s after shipment (a stall adds 1–2.5 s); a refund follows within seconds. The
//!   speed is not exact: the simulated clock advances with the events emitted, and the session
//!   arrival rate is set from [`LiveConfig::rate`] so that the sessions and their consequences
//!   produce about `rate` events per real second at that speed. Business timers of the pipeline (24 h
//!   stalls, the 3-day replenishment, the 7-day window) work on the real `ts`, so within a
//!   short run no parcel stalls and every order is inside its click's window.
//! * **Not generated live:** the generator's injected CPC spikes and the campaign that goes
//!   dark (they are shaped in 5-minute windows of event time, meaningless at this speed), the
//!   day/night rhythm (the rate is the caller's), exact duplicates and malformed lines (every
//!   line parses; `event_id`s are unique within each stream).
//! * **Identifiers.** The population (users, devices, phones, campaigns, report accounts)
//!   depends on the seed only, so repeated runs see the same people. Event ids and order ids
//!   carry a run tag derived from [`LiveConfig::start_ms`] (`imp-<tag>-00000001`,
//!   `O<tag>-0000000001`), and the dynamics are seeded with the seed and `start_ms`, so two runs
//!   against the same topics never share an event id, an order id or (but by chance) a waybill.
//!   For a given config and sequence of clock readings the output is identical.
//! * **`ad_reports`.** Every [`LiveConfig::report_interval_ms`] (default 1 s) of wall clock the
//!   platforms are "pulled": one `report` per (campaign, channel) with a report API
//!   (`douyin` → `oceanengine`, `tencent` → `tencent`, `baidu` → `baidu`; `taobao` has none)
//!   that had ad events in the current wall-clock hour, with the running `impressions`,
//!   `clicks` and `cost` of the ad events emitted so far in that hour (a later report of the
//!   same hour restates the earlier one), plus a final report of the previous hour after the
//!   hour changes. `hour` is written in the platform's form (Ocean Engine and Baidu
//!   `yyyy-MM-dd HH:mm:ss` in +08:00, Tencent epoch ms).
//!
//! Memory: the population, the events scheduled but not yet due (seconds of them) and one
//! waybill number per parcel so far (about 30 bytes; a 10-minute run at 100 000 events/s ships
//! about 150 000 parcels).
//!
//! Per event the generator formats into a reused buffer (no JSON value tree) and returns the
//! spec §1 message key alongside the line: `device_id`, `order_id`, the cleaned
//! `logistic_code`, none for identity, `campaign_id` for reports.

use crate::gen::{population, Body, Population, World};
use crate::write::{push_money, push_time, TsForm};
use crate::GenError;
use adflow_model::time::{DAY, HOUR};
use adflow_model::StreamKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::{self, Write as _};

/// Registered users of a live run unless told otherwise.
pub const DEFAULT_LIVE_USERS: u32 = 20_000;
/// Real milliseconds per simulated day unless told otherwise (see the module docs).
pub const DEFAULT_SIM_DAY_MS: i64 = 1000;
/// Wall-clock milliseconds between two pulls of the ad platforms' reports.
pub const DEFAULT_REPORT_INTERVAL_MS: i64 = 1000;

const CHANNEL_NAMES: [&str; 4] = ["douyin", "tencent", "baidu", "taobao"];
/// The report platform of each channel (`taobao` has none).
const PLATFORMS: [Option<&str>; 4] = [Some("oceanengine"), Some("tencent"), Some("baidu"), None];
/// Identity links of a user first seen at `t` come within this (plus a day for devices).
const LINK_SPAN: i64 = 3 * DAY;
/// Organic orders (no click) per session: the generator's 2 % of users a day over its 3
/// sessions per user and day.
const ORGANIC_PER_SESSION: f64 = 0.02 / 3.0;
/// Events per order on average (amendment, status events, shipment, about seven tracks).
const EVENTS_PER_ORDER: f64 = 9.0;
/// Simulated start; only the order of simulated times matters.
const SIM_START: i64 = crate::DEFAULT_START_MS;

/// The five input streams of spec §1, `ad_reports` included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LiveStream {
    AdEvents,
    Orders,
    Logistics,
    Identity,
    AdReports,
}

impl LiveStream {
    /// All streams, in a fixed order (the four of [`StreamKind::ALL`], then `ad_reports`).
    pub const ALL: [LiveStream; 5] = [
        LiveStream::AdEvents,
        LiveStream::Orders,
        LiveStream::Logistics,
        LiveStream::Identity,
        LiveStream::AdReports,
    ];

    /// The stream's topic name (before any prefix).
    pub fn name(self) -> &'static str {
        match self.stream_kind() {
            Some(s) => s.name(),
            None => "ad_reports",
        }
    }

    /// A dense index (0..5), the position in [`LiveStream::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The model's stream, `None` for `ad_reports` (not parsed by `adflow_model` yet).
    pub fn stream_kind(self) -> Option<StreamKind> {
        match self {
            LiveStream::AdEvents => Some(StreamKind::AdEvents),
            LiveStream::Orders => Some(StreamKind::Orders),
            LiveStream::Logistics => Some(StreamKind::Logistics),
            LiveStream::Identity => Some(StreamKind::Identity),
            LiveStream::AdReports => None,
        }
    }

    fn of(kind: StreamKind) -> LiveStream {
        match kind {
            StreamKind::AdEvents => LiveStream::AdEvents,
            StreamKind::Orders => LiveStream::Orders,
            StreamKind::Logistics => LiveStream::Logistics,
            StreamKind::Identity => LiveStream::Identity,
        }
    }
}

impl fmt::Display for LiveStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of a [`LiveGen`].
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Seed: the population depends on it alone, the dynamics on it and `start_ms`.
    pub seed: u64,
    /// Registered users (anonymous visitors come on top, a third as many devices).
    pub users: u32,
    /// Number of campaigns; 0 picks 20–50 from the number of users, as `generate` does.
    pub campaigns: u32,
    /// Events per second the caller will draw; sets the session arrival rate so that the
    /// simulated clock runs at about `sim_day_ms` per simulated day.
    pub rate: f64,
    /// Wall clock (epoch ms) at the start of the run: the run tag of the ids.
    pub start_ms: i64,
    /// Real milliseconds per simulated day (the delay compression).
    pub sim_day_ms: i64,
    /// Wall-clock milliseconds between report pulls.
    pub report_interval_ms: i64,
}

impl LiveConfig {
    /// The defaults for a run at `rate` events/s starting at `start_ms`.
    pub fn new(seed: u64, users: u32, rate: f64, start_ms: i64) -> LiveConfig {
        LiveConfig {
            seed,
            users,
            campaigns: 0,
            rate,
            start_ms,
            sim_day_ms: DEFAULT_SIM_DAY_MS,
            report_interval_ms: DEFAULT_REPORT_INTERVAL_MS,
        }
    }
}

/// One event ready to send. Borrows the generator until the next call.
#[derive(Clone, Copy, Debug)]
pub struct LiveEvent<'a> {
    pub stream: LiveStream,
    /// The event's `ts` (epoch ms), also the Kafka message timestamp to use.
    pub ts: i64,
    /// The spec §1 message key (`None` for identity links).
    pub key: Option<&'a str>,
    /// The JSON object, one line, no newline.
    pub line: &'a str,
}

/// An event of the world waiting for its simulated time.
struct Pending {
    ts: i64,
    seq: u64,
    stream: StreamKind,
    body: Body,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.seq) == (other.ts, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// Reversed: the earliest (ts, seq) is the greatest, on top of the max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.ts, other.seq).cmp(&(self.ts, self.seq))
    }
}

/// Ad events of one (campaign, channel) in one hour.
#[derive(Clone, Copy, Default)]
struct Tally {
    impressions: u64,
    clicks: u64,
    cost_fen: u64,
}

impl Tally {
    fn is_empty(&self) -> bool {
        self.impressions == 0 && self.clicks == 0 && self.cost_fen == 0
    }
}

/// The ad platforms' side: hourly tallies and the queue of reports to send.
struct Reports {
    interval: i64,
    next_pull: i64,
    /// Start of the current wall-clock hour and its tallies, per campaign and channel.
    hour: i64,
    cur: Vec<[Tally; 4]>,
    /// The previous hour, still to be reported finally when `prev_due`.
    prev_hour: i64,
    prev: Vec<[Tally; 4]>,
    prev_due: bool,
    /// (campaign, channel, previous hour?) to report, in order.
    queue: VecDeque<(u32, u8, bool)>,
    /// Account id of each campaign on its platform.
    accounts: Vec<[String; 4]>,
}

impl Reports {
    fn new(rng: &mut StdRng, n_camp: usize, start_ms: i64, interval: i64) -> Reports {
        // A few accounts per platform; each campaign belongs to one of them.
        let mut pool: [Vec<String>; 4] = Default::default();
        for _ in 0..3 {
            pool[0].push(
                rng.gen_range(1_600_000_000_000_000u64..1_800_000_000_000_000)
                    .to_string(),
            );
            pool[1].push(rng.gen_range(20_000_000u64..40_000_000).to_string());
            pool[2].push(rng.gen_range(30_000_000u64..40_000_000).to_string());
        }
        let accounts = (0..n_camp)
            .map(|c| std::array::from_fn(|ch| pool[ch].get(c % 3).cloned().unwrap_or_default()))
            .collect();
        let hour = start_ms - start_ms.rem_euclid(HOUR);
        Reports {
            interval,
            next_pull: start_ms + interval,
            hour,
            cur: vec![[Tally::default(); 4]; n_camp],
            prev_hour: hour - HOUR,
            prev: vec![[Tally::default(); 4]; n_camp],
            prev_due: false,
            queue: VecDeque::new(),
            accounts,
        }
    }

    /// Moves to the hour of `now` if it changed.
    fn roll(&mut self, now: i64) {
        let hour = now - now.rem_euclid(HOUR);
        if hour == self.hour {
            return;
        }
        // The hour that ended gets its final report at the next pull (after a jump of more
        // than an hour, the hours in between had no events).
        std::mem::swap(&mut self.prev, &mut self.cur);
        self.prev_hour = self.hour;
        self.prev_due = true;
        for t in &mut self.cur {
            *t = [Tally::default(); 4];
        }
        self.hour = hour;
    }

    fn count(&mut self, now: i64, camp: u32, chan: u8, click: bool, cost_fen: u64) {
        self.roll(now);
        if let Some(t) = self
            .cur
            .get_mut(camp as usize)
            .and_then(|c| c.get_mut(chan as usize))
        {
            if click {
                t.clicks += 1;
            } else {
                t.impressions += 1;
            }
            t.cost_fen += cost_fen;
        }
    }

    /// At a pull time, queues the reports of the previous hour (once, after it ended) and of
    /// the current hour.
    fn pull(&mut self, now: i64) {
        if now < self.next_pull {
            return;
        }
        self.next_pull = if now - self.next_pull >= self.interval {
            now + self.interval
        } else {
            self.next_pull + self.interval
        };
        self.roll(now);
        if self.prev_due {
            self.prev_due = false;
            for (c, tallies) in self.prev.iter().enumerate() {
                for (ch, t) in tallies.iter().enumerate() {
                    if PLATFORMS[ch].is_some() && !t.is_empty() {
                        self.queue.push_back((c as u32, ch as u8, true));
                    }
                }
            }
        }
        for (c, tallies) in self.cur.iter().enumerate() {
            for (ch, t) in tallies.iter().enumerate() {
                if PLATFORMS[ch].is_some() && !t.is_empty() {
                    self.queue.push_back((c as u32, ch as u8, false));
                }
            }
        }
    }
}

/// Where the key of the current event is.
enum KeyAt {
    None,
    Device(u32),
    Waybill(u32),
    Campaign(u32),
    /// In `LiveGen::key`.
    Buf,
}

/// The endless generator (see the module docs): call [`LiveGen::next_event`] with the wall
/// clock once per event to send.
pub struct LiveGen {
    world: World,
    heap: BinaryHeap<Pending>,
    /// Simulated time of the next session arrival, and the mean gap between arrivals.
    arrival_clock: f64,
    mean_gap: f64,
    /// Users whose identity links have been scheduled.
    seen: Vec<bool>,
    last_ts: i64,
    key: String,
    key_at: KeyAt,
    reports: Reports,
    report_ids: u64,
    counts: [u64; 5],
    stream: LiveStream,
}

/// `n` in base 36 (lower case).
fn base36(mut n: u64) -> String {
    const D: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Events per browsing session, with its clicks and the orders (and their follow-ups) they
/// lead to, for the given campaigns.
fn events_per_session(pop: &Population) -> f64 {
    let mut prev = 0.0;
    let (mut w_sum, mut ctr_sum, mut conv_sum) = (0.0, 0.0, 0.0);
    for (c, cum) in pop.campaigns.iter().zip(&pop.camp_cum) {
        let w = cum - prev;
        prev = *cum;
        w_sum += w;
        ctr_sum += w * c.ctr;
        conv_sum += w * c.ctr * c.cvr;
    }
    let w_sum: f64 = if w_sum > 0.0 { w_sum } else { 1.0 };
    let impressions = 16.5; // 3..=30 per session
    let clicks = impressions * ctr_sum / w_sum;
    // 80 % of the sessions are registered users', whose clicks may convert.
    let orders = 0.8 * impressions * conv_sum / w_sum + ORGANIC_PER_SESSION;
    impressions + clicks + orders * EVENTS_PER_ORDER
}

impl LiveGen {
    /// A generator for `cfg`.
    pub fn new(cfg: &LiveConfig) -> Result<LiveGen, GenError> {
        if cfg.users == 0 {
            return Err(GenError::InvalidArgs("--users must be at least 1".into()));
        }
        if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
            return Err(GenError::InvalidArgs(format!(
                "the rate must be a positive number, got {}",
                cfg.rate
            )));
        }
        if cfg.sim_day_ms < 1 || cfg.report_interval_ms < 1 {
            return Err(GenError::InvalidArgs(
                "sim_day_ms and report_interval_ms must be at least 1".into(),
            ));
        }
        if cfg.start_ms < 0 || cfg.start_ms > adflow_model::time::MAX_TS {
            return Err(GenError::InvalidArgs(format!(
                "start_ms {} is out of range",
                cfg.start_ms
            )));
        }
        let mut pop_rng = StdRng::seed_from_u64(cfg.seed);
        let n_camp = if cfg.campaigns > 0 {
            cfg.campaigns
        } else {
            (20 + cfg.users / 100).min(50)
        };
        let pop = population(&mut pop_rng, cfg.users, n_camp);
        let reports = Reports::new(
            &mut pop_rng,
            pop.campaigns.len(),
            cfg.start_ms,
            cfg.report_interval_ms,
        );
        // Simulated ms per event = (DAY / sim_day_ms) * (1000 / rate).
        let sim_ms_per_event = DAY as f64 / cfg.sim_day_ms as f64 * 1000.0 / cfg.rate;
        let mean_gap = (events_per_session(&pop) * sim_ms_per_event).max(1.0);
        let dyn_seed = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (cfg.start_ms as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ 0x6C69_7665; // "live"
        let tag = format!("{}-", base36(cfg.start_ms as u64));
        let Population {
            campaigns,
            camp_cum,
            users,
            devices,
            anon,
        } = pop;
        let n_users = users.len();
        let world = World {
            rng: StdRng::seed_from_u64(dyn_seed),
            start: SIM_START,
            end: i64::MAX / 4,
            campaigns,
            camp_cum,
            users,
            devices,
            anon,
            waybills: Vec::new(),
            n_orders: 0,
            pending: Default::default(),
            seq: 0,
            ev_ids: [1; 4],
            line: String::with_capacity(512),
            time_scale: 1,
            tag,
        };
        Ok(LiveGen {
            world,
            heap: BinaryHeap::new(),
            arrival_clock: SIM_START as f64,
            mean_gap,
            seen: vec![false; n_users],
            last_ts: i64::MIN,
            key: String::with_capacity(32),
            key_at: KeyAt::None,
            reports,
            report_ids: 1,
            counts: [0; 5],
            stream: LiveStream::AdEvents,
        })
    }

    /// The run tag in every event and order id (ends with `-`).
    pub fn run_tag(&self) -> &str {
        &self.world.tag
    }

    /// Events emitted so far per stream, indexed by [`LiveStream::index`].
    pub fn counts(&self) -> [u64; 5] {
        self.counts
    }

    /// Simulated ms of the next session arrival.
    fn next_arrival(&self) -> i64 {
        self.arrival_clock as i64
    }

    /// One arrival: a browsing session (a fifth anonymous, the rest skewed towards active
    /// users, whose identity links are scheduled when first seen), sometimes an organic order.
    fn arrive(&mut self) {
        let t0 = self.next_arrival();
        let w = &mut self.world;
        let u: f64 = w.rng.gen();
        self.arrival_clock += -(1.0 - u).ln() * self.mean_gap;
        let n_users = w.users.len() as u32;
        if w.rng.gen_bool(0.2) {
            w.session(None, t0);
        } else {
            let x: f64 = w.rng.gen();
            let u = ((x.powf(1.5) * n_users as f64) as u32).min(n_users - 1);
            if let Some(seen) = self.seen.get_mut(u as usize) {
                if !*seen {
                    *seen = true;
                    w.user_links(u, t0, LINK_SPAN);
                }
            }
            w.session(Some(u), t0);
        }
        if w.rng.gen_bool(ORGANIC_PER_SESSION) {
            let u = w.rng.gen_range(0..n_users);
            w.order(u, t0);
        }
        for s in StreamKind::ALL {
            for ev in w.pending[s.index()].drain(..) {
                self.heap.push(Pending {
                    ts: ev.ts,
                    seq: ev.seq,
                    stream: s,
                    body: ev.body,
                });
            }
        }
    }

    /// The next event to send, with `ts` = `now_ms` (or the previous event's `ts` if the clock
    /// went back).
    pub fn next_event(&mut self, now_ms: i64) -> LiveEvent<'_> {
        let now = now_ms.max(self.last_ts);
        self.last_ts = now;
        self.reports.pull(now);
        if let Some((camp, chan, prev)) = self.reports.queue.pop_front() {
            self.write_report(now, camp, chan, prev);
        } else {
            self.write_world_event(now);
        }
        self.counts[self.stream.index()] += 1;
        let w = &self.world;
        let key = match self.key_at {
            KeyAt::None => None,
            KeyAt::Device(d) => w.devices.get(d as usize).map(String::as_str),
            KeyAt::Waybill(b) => w.waybills.get(b as usize).map(String::as_str),
            KeyAt::Campaign(c) => w.campaigns.get(c as usize).map(|c| c.id.as_str()),
            KeyAt::Buf => Some(self.key.as_str()),
        };
        LiveEvent {
            stream: self.stream,
            ts: now,
            key,
            line: &w.line,
        }
    }

    fn write_world_event(&mut self, now: i64) {
        let p = loop {
            // Every arrival at or before an event's simulated time is generated before it is
            // emitted, so nothing generated later can belong before it.
            if self
                .heap
                .peek()
                .is_some_and(|p| p.ts <= self.next_arrival())
            {
                if let Some(p) = self.heap.pop() {
                    break p;
                }
            }
            self.arrive();
        };
        self.world
            .write_line(p.stream, now, TsForm::EpochMs, &p.body);
        self.stream = LiveStream::of(p.stream);
        self.key_at = match p.body {
            Body::Imp {
                camp,
                chan,
                dev,
                cost,
            } => {
                self.reports
                    .count(now, camp, chan, false, cost.unwrap_or(0));
                KeyAt::Device(dev)
            }
            Body::Click {
                camp,
                chan,
                dev,
                cost,
                ..
            } => {
                self.reports.count(now, camp, chan, true, cost);
                KeyAt::Device(dev)
            }
            Body::Order { order, .. } | Body::Status { order, .. } | Body::Ship { order, .. } => {
                self.key.clear();
                let _ = write!(self.key, "O{}{order:010}", self.world.tag);
                KeyAt::Buf
            }
            Body::Track { waybill, .. } => KeyAt::Waybill(waybill),
            Body::Link { .. } => KeyAt::None,
        };
    }

    fn write_report(&mut self, now: i64, camp: u32, chan: u8, prev: bool) {
        let r = &self.reports;
        let (hour, t) = if prev {
            (r.prev_hour, r.prev[camp as usize][chan as usize])
        } else {
            (r.hour, r.cur[camp as usize][chan as usize])
        };
        let platform = PLATFORMS[chan as usize].unwrap_or("unknown");
        let w = &mut self.world;
        let money_style = w.rng.gen_range(0..4);
        let line = &mut w.line;
        line.clear();
        let _ = write!(
            line,
            r#"{{"type":"report","event_id":"rpt-{}{:08}","ts":{now},"platform":"{platform}","account_id":"{}","campaign_id":"{}","channel":"{}","hour":"#,
            w.tag,
            self.report_ids,
            r.accounts[camp as usize][chan as usize],
            w.campaigns[camp as usize].id,
            CHANNEL_NAMES[chan as usize],
        );
        self.report_ids += 1;
        let form = if platform == "tencent" {
            TsForm::EpochMs
        } else {
            TsForm::Dash
        };
        push_time(line, hour, form);
        let _ = write!(
            line,
            r#","impressions":{},"clicks":{},"cost":"#,
            t.impressions, t.clicks
        );
        push_money(line, t.cost_fen, money_style);
        line.push('}');
        self.stream = LiveStream::AdReports;
        self.key_at = KeyAt::Campaign(camp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_model::event::{parse_event, Body as Ev, ParseConfig};
    use std::collections::{HashMap, HashSet};

    const T0: i64 = 1_733_000_000_000;

    /// `n` events at `rate`/s on a fake clock starting at `T0`.
    fn run(cfg: &LiveConfig, n: u64) -> Vec<(LiveStream, i64, Option<String>, String)> {
        let mut g = LiveGen::new(cfg).unwrap();
        (0..n)
            .map(|i| {
                let now = T0 + (i as f64 * 1000.0 / cfg.rate) as i64;
                let e = g.next_event(now);
                assert_eq!(e.ts, now);
                (
                    e.stream,
                    e.ts,
                    e.key.map(str::to_string),
                    e.line.to_string(),
                )
            })
            .collect()
    }

    fn cfg(seed: u64) -> LiveConfig {
        LiveConfig::new(seed, 300, 2000.0, T0)
    }

    #[test]
    fn deterministic_for_a_seed_and_clock() {
        let a = run(&cfg(7), 20_000);
        let b = run(&cfg(7), 20_000);
        let c = run(&cfg(8), 20_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Another start: the same people, other ids.
        let mut other = cfg(7);
        other.start_ms = T0 + 1;
        let d = run(&other, 2000);
        let ids = |v: &[(LiveStream, i64, Option<String>, String)]| -> HashSet<String> {
            v.iter()
                .map(|(_, _, _, l)| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["event_id"].as_str().unwrap().to_string()
                })
                .collect()
        };
        assert!(ids(&a).is_disjoint(&ids(&d)));
    }

    /// Every line parses (the four model streams with `parse_event`, reports field by field),
    /// every stream and type appears, event ids are unique per stream, keys follow spec §1,
    /// and every order's events come in causal order.
    #[test]
    fn lines_parse_and_sequences_are_causal() {
        // 6 s of a 2000 ev/s run.
        let evs = run(&cfg(3), 12_000);
        let pc = ParseConfig::default();
        let mut types: HashMap<&'static str, u64> = HashMap::new();
        let mut ids: HashSet<(LiveStream, String)> = HashSet::new();
        let mut last_ts = i64::MIN;
        // Per order: index of its first order event, its shipments' waybills.
        let mut order_at: HashMap<String, usize> = HashMap::new();
        let mut waybill_order: HashMap<String, (String, usize)> = HashMap::new();
        let mut checked_tracks = 0;
        let mut checked_ships = 0;
        for (i, (stream, ts, key, line)) in evs.iter().enumerate() {
            assert!(*ts >= last_ts, "ts goes back at {line}");
            last_ts = *ts;
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["event_id"].as_str().unwrap().to_string();
            assert!(ids.insert((*stream, id)), "duplicate event id: {line}");
            let Some(kind) = stream.stream_kind() else {
                // A report: spec §1 fields, money and counts.
                assert_eq!(v["type"], "report");
                assert_eq!(v["ts"].as_i64(), Some(*ts));
                assert!(
                    ["oceanengine", "tencent", "baidu"].contains(&v["platform"].as_str().unwrap())
                );
                assert!(!v["account_id"].as_str().unwrap().is_empty());
                let camp = v["campaign_id"].as_str().unwrap();
                assert_eq!(key.as_deref(), Some(camp));
                assert!(v["channel"].is_string());
                let hour = match &v["hour"] {
                    serde_json::Value::Number(n) => n.as_i64().unwrap(),
                    serde_json::Value::String(s) => {
                        adflow_model::time::parse_ts_text(s, 480).unwrap()
                    }
                    other => panic!("hour {other}"),
                };
                assert_eq!(hour % HOUR, 0);
                assert!(hour <= *ts && *ts - hour < 2 * HOUR);
                assert!(v["impressions"].is_u64() && v["clicks"].is_u64());
                let cost = match &v["cost"] {
                    serde_json::Value::String(s) => s.clone(),
                    n => n.to_string(),
                };
                adflow_model::money::parse_fen(&cost).unwrap();
                *types.entry("report").or_default() += 1;
                continue;
            };
            let ev =
                parse_event(kind, line.as_bytes(), &pc).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(ev.ts, *ts);
            let ty = match &ev.body {
                Ev::Impression { .. } => "impression",
                Ev::Click { .. } => "click",
                Ev::Order { .. } => "order",
                Ev::OrderStatus { .. } => "order_status",
                Ev::Shipment { .. } => "shipment",
                Ev::Track { .. } => "track",
                Ev::Link { .. } => "link",
            };
            *types.entry(ty).or_default() += 1;
            // The key is the one `adflow produce` derives from the line (spec §1).
            let expected = match kind {
                StreamKind::AdEvents => v["device_id"].as_str().map(str::to_string),
                StreamKind::Orders => v["order_id"].as_str().map(str::to_string),
                StreamKind::Logistics => Some(adflow_model::identity::clean_waybill(
                    v["logistic_code"].as_str().unwrap(),
                )),
                StreamKind::Identity => None,
            };
            assert_eq!(key, &expected, "{line}");
            match &ev.body {
                Ev::Order { order_id, .. } => {
                    order_at.entry(order_id.to_string()).or_insert(i);
                }
                Ev::OrderStatus { order_id, .. } => {
                    assert!(order_at.contains_key(&order_id.to_string()), "{line}");
                }
                Ev::Shipment {
                    order_id,
                    logistic_code,
                    ..
                } => {
                    let at = order_at.get(&order_id.to_string()).copied();
                    assert!(
                        at.is_some_and(|a| a < i),
                        "shipment before its order: {line}"
                    );
                    waybill_order
                        .entry(logistic_code.to_string())
                        .or_insert((order_id.to_string(), i));
                    checked_ships += 1;
                }
                Ev::Track { logistic_code, .. } => {
                    let (_, ship_at) = waybill_order
                        .get(&logistic_code.to_string())
                        .unwrap_or_else(|| panic!("track before its shipment: {line}"));
                    assert!(*ship_at < i);
                    checked_tracks += 1;
                }
                _ => {}
            }
        }
        for ty in [
            "impression",
            "click",
            "order",
            "order_status",
            "shipment",
            "track",
            "link",
            "report",
        ] {
            assert!(
                types.get(ty).copied().unwrap_or(0) > 0,
                "no {ty}: {types:?}"
            );
        }
        assert!(checked_ships > 10 && checked_tracks > 50, "{types:?}");
    }

    /// Each waybill's Kdniao states follow the generator's sequences: collected (or the
    /// "no track yet" code 0) first, then transit, and nothing after a signing but the rare
    /// late 404; 407/406 only after a 404.
    #[test]
    fn track_sequences_follow_kdniao_order() {
        let evs = run(&cfg(11), 30_000);
        let pc = ParseConfig::default();
        let mut seqs: HashMap<String, Vec<u32>> = HashMap::new();
        for (stream, _, _, line) in &evs {
            if *stream != LiveStream::Logistics {
                continue;
            }
            if let Ok(ev) = parse_event(StreamKind::Logistics, line.as_bytes(), &pc) {
                if let Ev::Track {
                    logistic_code,
                    state,
                    state_ex,
                    ..
                } = ev.body
                {
                    seqs.entry(logistic_code.to_string())
                        .or_default()
                        .push(state_ex.unwrap_or(state));
                }
            }
        }
        assert!(seqs.len() > 20, "{} waybills", seqs.len());
        let mut signed = 0;
        for (w, codes) in &seqs {
            assert!(matches!(codes[0], 0 | 1 | 10), "{w}: {codes:?}");
            let is_signed = |c: u32| matches!(c, 3 | 301 | 302 | 304 | 311);
            if let Some(p) = codes.iter().position(|&c| is_signed(c)) {
                signed += 1;
                assert!(codes[p + 1..].iter().all(|&c| c == 404), "{w}: {codes:?}");
            }
            if let Some(p) = codes.iter().position(|&c| c == 407 || c == 406) {
                assert!(codes[..p].contains(&404), "{w}: {codes:?}");
            }
        }
        assert!(signed > 0);
    }

    /// The rate sets the session arrivals: the simulated day takes about `sim_day_ms` of the
    /// fake clock, whatever the rate; and a backwards clock never makes `ts` go back.
    #[test]
    fn speed_follows_the_rate_and_ts_never_goes_back() {
        for rate in [500.0, 20_000.0] {
            let c = LiveConfig::new(1, 2000, rate, T0);
            let mut g = LiveGen::new(&c).unwrap();
            let n = (rate * 5.0) as u64; // five seconds
            for i in 0..n {
                g.next_event(T0 + (i as f64 * 1000.0 / rate) as i64);
            }
            let sim_days = (g.next_arrival() - SIM_START) as f64 / DAY as f64;
            assert!(
                (3.0..8.0).contains(&sim_days),
                "rate {rate}: {sim_days} days"
            );
        }
        let mut g = LiveGen::new(&cfg(1)).unwrap();
        assert_eq!(g.next_event(T0 + 10).ts, T0 + 10);
        assert_eq!(g.next_event(T0 + 5).ts, T0 + 10);
        assert_eq!(g.next_event(T0 + 11).ts, T0 + 11);
    }

    #[test]
    fn reports_tally_the_emitted_ad_events_of_the_hour() {
        // A clock that crosses an hour boundary after 2 s.
        let start = T0 - T0.rem_euclid(HOUR) + HOUR - 2000;
        let c = LiveConfig::new(5, 300, 2000.0, start);
        let mut g = LiveGen::new(&c).unwrap();
        let mut sums: HashMap<(String, String, i64), (u64, u64)> = HashMap::new();
        let mut last: HashMap<(String, String, i64), (u64, u64)> = HashMap::new();
        for i in 0..10_000u64 {
            let now = start + (i as f64 * 0.5) as i64;
            let e = g.next_event(now);
            let v: serde_json::Value = serde_json::from_str(e.line).unwrap();
            let hour = now - now.rem_euclid(HOUR);
            match e.stream {
                LiveStream::AdEvents => {
                    let k = (
                        v["campaign_id"].as_str().unwrap().to_string(),
                        v["channel"].as_str().unwrap().to_string(),
                        hour,
                    );
                    let s = sums.entry(k).or_default();
                    if v["type"] == "click" {
                        s.1 += 1;
                    } else {
                        s.0 += 1;
                    }
                }
                LiveStream::AdReports => {
                    let h = match &v["hour"] {
                        serde_json::Value::Number(n) => n.as_i64().unwrap(),
                        serde_json::Value::String(s) => {
                            adflow_model::time::parse_ts_text(s, 480).unwrap()
                        }
                        _ => unreachable!(),
                    };
                    let k = (
                        v["campaign_id"].as_str().unwrap().to_string(),
                        v["channel"].as_str().unwrap().to_string(),
                        h,
                    );
                    let got = (
                        v["impressions"].as_u64().unwrap(),
                        v["clicks"].as_u64().unwrap(),
                    );
                    // Never more than what was sent, never less than the previous report.
                    let sent = sums.get(&k).copied().unwrap_or_default();
                    assert!(
                        got.0 <= sent.0 && got.1 <= sent.1,
                        "{k:?}: {got:?} > {sent:?}"
                    );
                    let before = last.insert(k.clone(), got).unwrap_or_default();
                    assert!(got.0 >= before.0 && got.1 >= before.1);
                }
                _ => {}
            }
        }
        // The hour that ended got final reports with exactly its totals.
        let first_hour = start - start.rem_euclid(HOUR);
        let finals: Vec<_> = sums.iter().filter(|(k, _)| k.2 == first_hour).collect();
        assert!(!finals.is_empty());
        for (k, sent) in finals {
            if k.1 == "taobao" {
                assert!(!last.contains_key(k));
            } else {
                assert_eq!(last.get(k), Some(sent), "{k:?}");
            }
        }
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(LiveGen::new(&LiveConfig::new(1, 0, 10.0, T0)).is_err());
        assert!(LiveGen::new(&LiveConfig::new(1, 10, 0.0, T0)).is_err());
        assert!(LiveGen::new(&LiveConfig::new(1, 10, f64::NAN, T0)).is_err());
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
