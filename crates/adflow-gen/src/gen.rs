//! The simulation: a world of campaigns, users and devices, swept hour by hour; every event is
//! queued for its stream (with an emission key = event time + a small jitter) and written, in
//! key order, once the sweep has passed its hour, so files come out in event-time order with
//! only a few seconds of local disorder and memory holds only the pending future events.

use crate::write::{push_money, push_ts, StreamOut, TsForm};
use crate::{GenError, GenReport, GenerateArgs};
use adflow_model::time::{DAY, HOUR, MINUTE, SECOND};
use adflow_model::StreamKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::time::Instant;

const CHANNELS: [&str; 4] = ["douyin", "tencent", "baidu", "taobao"];
const CHANNEL_SHORT: [&str; 4] = ["dy", "tx", "bd", "tb"];
const SHIPPERS: [&str; 8] = ["SF", "ZTO", "YTO", "YD", "STO", "JD", "EMS", "JTSD"];
/// Relative sessions per local hour (0..23), +08:00.
const DIURNAL: [f64; 24] = [
    0.5, 0.3, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.0, 1.1, 1.2, 1.4, 1.3, 1.1, 1.1, 1.1, 1.2,
    1.3, 1.5, 1.8, 2.0, 1.8, 1.1,
];
const PRICES_FEN: [u64; 12] = [
    990, 1990, 2990, 3900, 5990, 9900, 12800, 19900, 29900, 59900, 129900, 35,
];
const PROVINCES: [&str; 8] = [
    "上海市浦东新区",
    "北京市朝阳区",
    "广东省深圳市南山区",
    "浙江省杭州市西湖区",
    "江苏省南京市鼓楼区",
    "四川省成都市武侯区",
    "湖北省武汉市洪山区",
    "广东省广州市天河区",
];
const ROADS: [&str; 6] = [
    "世纪大道",
    "建国路",
    "科技园南路",
    "文三路",
    "中山北路",
    "人民南路",
];
const STATIONS: [&str; 6] = [
    "上海转运中心",
    "北京顺义集散中心",
    "深圳南山营业部",
    "杭州中转场",
    "成都双流分拨中心",
    "武汉转运中心",
];

pub(crate) struct Campaign {
    pub(crate) id: String,
    pub(crate) channels: Vec<u8>,
    pub(crate) ctr: f64,
    pub(crate) cvr: f64,
    pub(crate) cpc_fen: u64,
    /// Per-impression CPM cost in fen, `None` for CPC-only campaigns.
    pub(crate) cpm_fen: Option<u64>,
    /// No impressions (nor clicks) from this time on.
    pub(crate) stop_ts: Option<i64>,
}

pub(crate) struct User {
    pub(crate) id: String,
    /// Indexes into the device table, primary first.
    pub(crate) devices: Vec<u32>,
    /// Per device: whether clicks from it carry the user id (logged-in app).
    pub(crate) logged_in: Vec<bool>,
    pub(crate) phone: String,
}

/// A generated event before formatting. Strings are indexes into the world's tables.
pub(crate) enum Body {
    Imp {
        camp: u32,
        chan: u8,
        dev: u32,
        cost: Option<u64>,
    },
    Click {
        camp: u32,
        chan: u8,
        dev: u32,
        cost: u64,
        /// Logged-in user; `Some(u32::MAX)` writes a junk user id.
        user: Option<u32>,
    },
    Order {
        order: u32,
        user: u32,
        amount: u64,
        /// 0 user's phone, 1 absent, 2 junk, 3 someone else's phone (a gift).
        phone_mode: u8,
        addr: u32,
    },
    Status {
        order: u32,
        status: &'static str,
    },
    Ship {
        order: u32,
        shipper: u8,
        waybill: u32,
    },
    Track {
        shipper: u8,
        waybill: u32,
        state: u32,
        state_ex: Option<u32>,
    },
    Link {
        dev: Option<u32>,
        user: Option<u32>,
        /// Phone of this user.
        phone_of: Option<u32>,
    },
}

pub(crate) struct Ev {
    pub(crate) key: i64,
    pub(crate) seq: u64,
    pub(crate) ts: i64,
    pub(crate) body: Body,
}

/// The simulated world: campaigns, users, devices, waybills, and the events it has generated
/// but not written yet. `generate` sweeps it hour by hour; `crate::live` drives the same
/// methods incrementally.
pub(crate) struct World {
    pub(crate) rng: StdRng,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) campaigns: Vec<Campaign>,
    pub(crate) camp_cum: Vec<f64>,
    pub(crate) users: Vec<User>,
    pub(crate) devices: Vec<String>,
    /// Devices of anonymous visitors.
    pub(crate) anon: Vec<u32>,
    pub(crate) waybills: Vec<String>,
    pub(crate) n_orders: u32,
    /// Events not yet written, per stream.
    pub(crate) pending: [Vec<Ev>; 4],
    pub(crate) seq: u64,
    pub(crate) ev_ids: [u64; 4],
    pub(crate) line: String,
    /// `--time-scale`: event times are written at `start + (ts − start) / time_scale`.
    pub(crate) time_scale: i64,
    /// Inserted into every `event_id` (after the type prefix) and `order_id` (after the `O`):
    /// empty for `generate`; a per-run tag for the live generator, so that two runs against
    /// the same topics never share an event or order id.
    pub(crate) tag: String,
}

/// Campaigns, users and devices of a world, drawn from the seed's generator.
pub(crate) struct Population {
    pub(crate) campaigns: Vec<Campaign>,
    pub(crate) camp_cum: Vec<f64>,
    pub(crate) users: Vec<User>,
    pub(crate) devices: Vec<String>,
    pub(crate) anon: Vec<u32>,
}

/// Draws `n_camp` campaigns and `n_users` users with their devices, anonymous visitors'
/// devices and shared household devices (no campaign stops: the caller sets `stop_ts`).
pub(crate) fn population(rng: &mut StdRng, n_users: u32, n_camp: u32) -> Population {
    let mut campaigns = Vec::new();
    let mut camp_cum = Vec::new();
    let mut cum = 0.0;
    for i in 0..n_camp {
        let ch = rng.gen_range(0..4u8);
        let mut channels = vec![ch];
        if rng.gen_bool(0.25) {
            channels.push((ch + 1 + rng.gen_range(0..3u8)) % 4);
        }
        let weight = rng.gen_range(0.3..2.0) * if i == 0 { 2.5 } else { 1.0 };
        cum += weight;
        camp_cum.push(cum);
        campaigns.push(Campaign {
            id: format!("cmp-{}-{:03}", CHANNEL_SHORT[ch as usize], i + 1),
            channels,
            ctr: rng.gen_range(0.01..0.06),
            cvr: rng.gen_range(0.05..0.18),
            cpc_fen: rng.gen_range(20..500),
            cpm_fen: if rng.gen_bool(0.6) {
                Some(rng.gen_range(1..9))
            } else {
                None
            },
            stop_ts: None,
        });
    }

    // Users and devices.
    let mut devices = Vec::new();
    let mut users = Vec::new();
    for u in 0..n_users {
        let nd = match rng.gen_range(0..100) {
            0..=54 => 1,
            55..=84 => 2,
            _ => 3,
        };
        let mut ds = Vec::new();
        let mut logged = Vec::new();
        for k in 0..nd {
            devices.push(if rng.gen_bool(0.4) {
                hex_id(rng, 32).to_uppercase()
            } else {
                hex_id(rng, 16)
            });
            ds.push((devices.len() - 1) as u32);
            logged.push(rng.gen_bool(if k == 0 { 0.7 } else { 0.3 }));
        }
        let prefix = ["138", "139", "186", "135", "150", "177", "199"][rng.gen_range(0..7)];
        users.push(User {
            id: format!("u{:07}", u * 7 + rng.gen_range(0..7)),
            devices: ds,
            logged_in: logged,
            phone: format!("{prefix}{:08}", rng.gen_range(0..100_000_000u64)),
        });
    }
    let n_anon = (n_users / 3).max(20);
    let mut anon = Vec::new();
    for _ in 0..n_anon {
        devices.push(hex_id(rng, 16));
        anon.push((devices.len() - 1) as u32);
    }
    // Households: a shared tablet appears among another user's devices too.
    for u in 0..users.len() {
        if rng.gen_bool(0.02) {
            let other = rng.gen_range(0..users.len());
            if other != u {
                let d = users[u].devices[0];
                users[other].devices.push(d);
                users[other].logged_in.push(false);
            }
        }
    }
    Population {
        campaigns,
        camp_cum,
        users,
        devices,
        anon,
    }
}

pub(crate) fn hex_id(rng: &mut StdRng, len: usize) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    (0..len).map(|_| H[rng.gen_range(0..16)] as char).collect()
}

fn local_hour(ts: i64) -> usize {
    ((ts + 8 * HOUR).rem_euclid(DAY) / HOUR) as usize
}

impl World {
    pub(crate) fn push(&mut self, stream: StreamKind, ts: i64, body: Body) {
        if ts < self.start || ts >= self.end {
            return;
        }
        // A few seconds of local disorder for about a third of the events.
        let key = if self.rng.gen_bool(0.3) {
            ts + self.rng.gen_range(0..3 * SECOND)
        } else {
            ts
        };
        self.seq += 1;
        self.pending[stream.index()].push(Ev {
            key,
            seq: self.seq,
            ts,
            body,
        });
    }

    /// The identity links of `user`, at random times in `[start, start + span)` (device links
    /// up to a day later): device/user or device/phone for some devices, user/phone for some
    /// users, and a rare link to a junk device id.
    pub(crate) fn user_links(&mut self, u: u32, start: i64, span: i64) {
        let nd = self.users[u as usize].devices.len();
        for k in 0..nd {
            let p = if k == 0 { 0.3 } else { 0.7 };
            if self.rng.gen_bool(p) {
                let ts = start + self.rng.gen_range(0..span + DAY);
                let d = self.users[u as usize].devices[k];
                let by_phone = self.rng.gen_bool(0.3);
                let body = Body::Link {
                    dev: Some(d),
                    user: (!by_phone).then_some(u),
                    phone_of: by_phone.then_some(u),
                };
                self.push(StreamKind::Identity, ts, body);
            }
        }
        if self.rng.gen_bool(0.4) {
            let ts = start + self.rng.gen_range(0..span);
            self.push(
                StreamKind::Identity,
                ts,
                Body::Link {
                    dev: None,
                    user: Some(u),
                    phone_of: Some(u),
                },
            );
        }
        if self.rng.gen_bool(0.01) {
            let ts = start + self.rng.gen_range(0..span);
            self.push(
                StreamKind::Identity,
                ts,
                Body::Link {
                    dev: Some(u32::MAX),
                    user: Some(u),
                    phone_of: None,
                },
            );
        }
    }

    pub(crate) fn pick_campaign(&mut self) -> u32 {
        let total = self.camp_cum.last().copied().unwrap_or(1.0);
        let x = self.rng.gen::<f64>() * total;
        let i = self.camp_cum.partition_point(|&c| c <= x);
        i.min(self.campaigns.len() - 1) as u32
    }

    fn click_cost(&mut self, camp: u32, factor: f64) -> u64 {
        let base = self.campaigns[camp as usize].cpc_fen as f64 * factor;
        let jitter = self.rng.gen_range(0.75..1.25);
        ((base * jitter).round() as u64).max(1)
    }

    /// A browsing session of `user` (or an anonymous visitor when `None`) starting at `t`.
    pub(crate) fn session(&mut self, user: Option<u32>, t0: i64) {
        let (dev, logged_in) = match user {
            Some(u) => {
                let us = &self.users[u as usize];
                let slot = if us.devices.len() > 1 && self.rng.gen_bool(0.35) {
                    self.rng.gen_range(1..us.devices.len())
                } else {
                    0
                };
                (us.devices[slot], us.logged_in[slot])
            }
            None => {
                let i = self.rng.gen_range(0..self.anon.len());
                (self.anon[i], false)
            }
        };
        let n = self.rng.gen_range(3..=30);
        let mut t = t0;
        for _ in 0..n {
            t += self.rng.gen_range(5..90) * SECOND + self.rng.gen_range(0..1000);
            let camp = self.pick_campaign();
            let c = &self.campaigns[camp as usize];
            if c.stop_ts.is_some_and(|s| t >= s) {
                continue;
            }
            let chan = if c.channels.len() > 1 && self.rng.gen_bool(0.3) {
                c.channels[1]
            } else {
                c.channels[0]
            };
            let (ctr, cvr, cpm) = (c.ctr, c.cvr, c.cpm_fen);
            let cost = match cpm {
                Some(f) if self.rng.gen_bool(0.9) => Some(f),
                _ => None,
            };
            self.push(
                StreamKind::AdEvents,
                t,
                Body::Imp {
                    camp,
                    chan,
                    dev,
                    cost,
                },
            );
            if !self.rng.gen_bool(ctr) {
                continue;
            }
            let ct = t + self.rng.gen_range(1..20) * SECOND + self.rng.gen_range(0..1000);
            let cost = self.click_cost(camp, 1.0);
            let click_user = match user {
                Some(u) if logged_in && self.rng.gen_bool(0.85) => Some(u),
                _ if self.rng.gen_bool(0.005) => Some(u32::MAX),
                _ => None,
            };
            self.push(
                StreamKind::AdEvents,
                ct,
                Body::Click {
                    camp,
                    chan,
                    dev,
                    cost,
                    user: click_user,
                },
            );
            if let Some(u) = user {
                if self.rng.gen_bool(cvr) {
                    let r = self.rng.gen::<f64>();
                    let delay = if r < 0.55 {
                        self.rng.gen_range(MINUTE..HOUR)
                    } else if r < 0.8 {
                        self.rng.gen_range(HOUR..DAY)
                    } else if r < 0.94 {
                        self.rng.gen_range(DAY..6 * DAY)
                    } else {
                        // A returning buyer, outside the 7-day window of this click.
                        self.rng.gen_range(7 * DAY + MINUTE..9 * DAY)
                    };
                    let ot = ct + delay;
                    // The device that clicked anonymously gets linked to the user only later
                    // (after the click and the order): the attribution must be corrected.
                    if !logged_in && click_user.is_none() && self.rng.gen_bool(0.3) {
                        let lt = ot + self.rng.gen_range(HOUR..3 * DAY);
                        self.push(
                            StreamKind::Identity,
                            lt,
                            Body::Link {
                                dev: Some(dev),
                                user: Some(u),
                                phone_of: None,
                            },
                        );
                    }
                    self.order(u, ot);
                }
            }
        }
    }

    fn new_waybill(&mut self, shipper: u8) -> u32 {
        let r = &mut self.rng;
        let w = match SHIPPERS[shipper as usize] {
            "SF" => format!(
                "SF{}",
                r.gen_range(1_000_000_000_000u64..10_000_000_000_000)
            ),
            "JD" => format!("JDVA{}", r.gen_range(10_000_000_000u64..100_000_000_000)),
            "YTO" => format!(
                "YT{}",
                r.gen_range(1_000_000_000_000u64..10_000_000_000_000)
            ),
            "JTSD" => format!(
                "JT{}",
                r.gen_range(1_000_000_000_000u64..10_000_000_000_000)
            ),
            "EMS" => format!("E{}CN", r.gen_range(100_000_000u64..1_000_000_000)),
            "ZTO" => format!("7{}", r.gen_range(10_000_000_000u64..100_000_000_000)),
            "STO" => format!("77{}", r.gen_range(10_000_000_000u64..100_000_000_000)),
            _ => format!("43{}", r.gen_range(10_000_000_000u64..100_000_000_000)),
        };
        self.waybills.push(w);
        (self.waybills.len() - 1) as u32
    }

    /// An order of `user` at `t` and everything that follows from it: amendments, status
    /// events, shipment and the parcel's tracks.
    pub(crate) fn order(&mut self, user: u32, t: i64) {
        if t >= self.end {
            return;
        }
        let order = self.n_orders;
        self.n_orders += 1;
        let amount = PRICES_FEN[self.rng.gen_range(0..PRICES_FEN.len())];
        let phone_mode = match self.rng.gen_range(0..100) {
            0..=84 => 0,
            85..=91 => 1,
            92..=96 => 2,
            _ => 3,
        };
        let addr = self.rng.gen_range(0..10_000);
        self.push(
            StreamKind::Orders,
            t,
            Body::Order {
                order,
                user,
                amount,
                phone_mode,
                addr,
            },
        );
        // An amended order (coupon applied): a second `order` event, which defines the order.
        if self.rng.gen_bool(0.02) {
            let at = t + self.rng.gen_range(MINUTE..30 * MINUTE);
            self.push(
                StreamKind::Orders,
                at,
                Body::Order {
                    order,
                    user,
                    amount: amount.saturating_sub(500).max(100),
                    phone_mode,
                    addr,
                },
            );
        }
        let r = self.rng.gen::<f64>();
        if r < 0.04 {
            // Cancelled soon after ordering; most are never shipped.
            let ct = t + self.rng.gen_range(5 * MINUTE..2 * HOUR);
            self.status(order, ct, "cancelled");
            if self.rng.gen_bool(0.7) {
                return;
            }
        } else if r < 0.05 {
            // Never shipped: the buyer opens an after-sale case, then gets a refund.
            let at = t + self.rng.gen_range(3 * DAY..5 * DAY);
            self.status(order, at, "after_sale");
            {
                let d = self.rng.gen_range(HOUR..DAY);
                self.status(order, at + d, "refunded");
            }
            return;
        }
        let ship_ts = t + self.rng.gen_range(2 * HOUR..30 * HOUR);
        let shipper = self.rng.gen_range(0..SHIPPERS.len()) as u8;
        // A merged parcel: this order ships in the previous order's box.
        if self.rng.gen_bool(0.003) && !self.waybills.is_empty() {
            let waybill = (self.waybills.len() - 1) as u32;
            self.push(
                StreamKind::Orders,
                ship_ts,
                Body::Ship {
                    order,
                    shipper,
                    waybill,
                },
            );
            return;
        }
        let mut waybill = self.new_waybill(shipper);
        self.push(
            StreamKind::Orders,
            ship_ts,
            Body::Ship {
                order,
                shipper,
                waybill,
            },
        );
        let mut track_start = ship_ts;
        // Re-shipped under a new waybill: the first one is collected and then abandoned.
        if self.rng.gen_bool(0.015) {
            let first = waybill;
            let ct = ship_ts + self.rng.gen_range(HOUR..4 * HOUR);
            self.push(
                StreamKind::Logistics,
                ct,
                Body::Track {
                    shipper,
                    waybill: first,
                    state: 1,
                    state_ex: Some(1),
                },
            );
            waybill = self.new_waybill(shipper);
            track_start = ct + self.rng.gen_range(HOUR..6 * HOUR);
            self.push(
                StreamKind::Orders,
                track_start,
                Body::Ship {
                    order,
                    shipper,
                    waybill,
                },
            );
        }
        let outcome = self.tracks(shipper, waybill, track_start);
        match outcome {
            Outcome::Signed(st) => {
                if self.rng.gen_bool(0.06) {
                    let at = st + self.rng.gen_range(HOUR / 2..6 * DAY);
                    self.status(order, at, "after_sale");
                    if self.rng.gen_bool(0.6) {
                        {
                            let d = self.rng.gen_range(HOUR..3 * DAY);
                            self.status(order, at + d, "refunded");
                        }
                    }
                } else if self.rng.gen_bool(0.01) {
                    {
                        let d = self.rng.gen_range(HOUR..5 * DAY);
                        self.status(order, st + d, "refunded");
                    }
                }
            }
            Outcome::Refused(rt) => {
                if self.rng.gen_bool(0.7) {
                    {
                        let d = self.rng.gen_range(DAY..4 * DAY);
                        self.status(order, rt + d, "refunded");
                    }
                }
            }
            Outcome::Other => {}
        }
    }

    fn status(&mut self, order: u32, ts: i64, status: &'static str) {
        self.push(StreamKind::Orders, ts, Body::Status { order, status });
    }

    /// The Kdniao track sequence of a parcel shipped at `t`.
    fn tracks(&mut self, shipper: u8, waybill: u32, t: i64) -> Outcome {
        // Free Kdniao accounts get `State` only; paying ones `StateEx` as well.
        let with_ex = self.rng.gen_bool(0.8);
        let mut seq: Vec<(i64, u32)> = Vec::new();
        let mut t = t + self.rng.gen_range(HOUR..8 * HOUR);
        if self.rng.gen_bool(0.1) {
            seq.push((t, 10));
            t += self.rng.gen_range(HOUR..10 * HOUR);
        }
        seq.push((t, 1));
        let r = self.rng.gen::<f64>();
        let transits = self.rng.gen_range(2..=4);
        let stall_at = if r < 0.06 {
            Some(self.rng.gen_range(0..transits))
        } else {
            None
        };
        let codes = [206, 2, 204, 201, 205];
        for i in 0..transits {
            t += self.rng.gen_range(2 * HOUR..10 * HOUR);
            if stall_at == Some(i) {
                t += self.rng.gen_range(20 * HOUR..60 * HOUR);
            }
            seq.push((t, codes[i.min(codes.len() - 1)]));
        }
        let mut outcome = Outcome::Other;
        if r < 0.015 {
            // Lost in transit: nothing after the last scan (an open stall).
        } else if r < 0.08 {
            // A run of exception scans, then (mostly) back on track.
            let ex = [405, 412, 413, 402, 403, 4, 414, 418];
            for _ in 0..self.rng.gen_range(1..=3) {
                t += self.rng.gen_range(2 * HOUR..20 * HOUR);
                seq.push((t, ex[self.rng.gen_range(0..ex.len())]));
            }
            if self.rng.gen_bool(0.8) {
                t += self.rng.gen_range(2 * HOUR..30 * HOUR);
                seq.push((t, 2));
                outcome = self.deliver(&mut seq, &mut t);
            }
        } else if r < 0.14 {
            // Refused at the door, returned to the sender.
            t += self.rng.gen_range(6 * HOUR..20 * HOUR);
            if self.rng.gen_bool(0.7) {
                seq.push((t, 202));
                t += self.rng.gen_range(HOUR..5 * HOUR);
            }
            seq.push((t, 404));
            outcome = Outcome::Refused(t);
            t += self.rng.gen_range(4 * HOUR..30 * HOUR);
            seq.push((t, 407));
            if self.rng.gen_bool(0.7) {
                t += self.rng.gen_range(DAY..3 * DAY);
                seq.push((t, 406));
            }
        } else {
            outcome = self.deliver(&mut seq, &mut t);
            if r > 0.995 {
                // Signed, then reported refused afterwards (counts as in transit).
                t += self.rng.gen_range(DAY..2 * DAY);
                seq.push((t, 404));
            }
        }
        for (ts, code) in seq {
            let state = match code {
                10 => 0,
                1 => 1,
                3 | 300..=399 => 3,
                4 | 400..=499 => 4,
                _ => 2,
            };
            // Without StateEx the coarse State is all there is.
            let state_ex = with_ex.then_some(code);
            self.push(
                StreamKind::Logistics,
                ts,
                Body::Track {
                    shipper,
                    waybill,
                    state,
                    state_ex,
                },
            );
        }
        outcome
    }

    /// Out for delivery (on a morning), then signed.
    fn deliver(&mut self, seq: &mut Vec<(i64, u32)>, t: &mut i64) -> Outcome {
        *t += self.rng.gen_range(2 * HOUR..14 * HOUR);
        seq.push((*t, 202));
        *t += self.rng.gen_range(20 * MINUTE..6 * HOUR);
        let signed = [301, 3, 302, 304, 311, 301];
        seq.push((*t, signed[self.rng.gen_range(0..signed.len())]));
        Outcome::Signed(*t)
    }

    fn cpc_burst(&mut self, camp: u32, w0: i64, factor: f64) {
        let chan = self.campaigns[camp as usize].channels[0];
        for w in 0..13 {
            let n = if w == 12 {
                self.rng.gen_range(22..=30)
            } else {
                self.rng.gen_range(5..=8)
            };
            let f = if w == 12 { factor } else { 1.0 };
            for _ in 0..n {
                let ts = w0 + w * 5 * MINUTE + self.rng.gen_range(0..5 * MINUTE);
                let dev = self.anon[self.rng.gen_range(0..self.anon.len())];
                let cost = self.click_cost(camp, f);
                self.push(
                    StreamKind::AdEvents,
                    ts,
                    Body::Click {
                        camp,
                        chan,
                        dev,
                        cost,
                        user: None,
                    },
                );
            }
        }
    }

    fn format(&mut self, stream: StreamKind, ev: &Ev) {
        let form = TsForm::pick(&mut self.rng, stream);
        let ts = self.start + (ev.ts - self.start) / self.time_scale;
        self.write_line(stream, ts, form, &ev.body);
    }

    /// Writes the JSON line of `body` into `self.line`, with `ts` in the given form and the
    /// stream's next `event_id`.
    pub(crate) fn write_line(&mut self, stream: StreamKind, ts: i64, form: TsForm, body: &Body) {
        let id_no = self.ev_ids[stream.index()];
        self.ev_ids[stream.index()] += 1;
        let money_style = self.rng.gen_range(0..4);
        let rng = &mut self.rng;
        let line = &mut self.line;
        let tag = self.tag.as_str();
        line.clear();
        match body {
            Body::Imp {
                camp,
                chan,
                dev,
                cost,
            } => {
                let _ = write!(
                    line,
                    r#"{{"type":"impression","event_id":"imp-{tag}{id_no:08}","#
                );
                push_ts(line, ts, form);
                let _ = write!(
                    line,
                    r#","campaign_id":"{}","channel":"{}","device_id":"{}""#,
                    self.campaigns[*camp as usize].id,
                    CHANNELS[*chan as usize],
                    self.devices[*dev as usize]
                );
                if let Some(c) = cost {
                    line.push_str(",\"cost\":");
                    push_money(line, *c, money_style);
                }
            }
            Body::Click {
                camp,
                chan,
                dev,
                cost,
                user,
            } => {
                let _ = write!(
                    line,
                    r#"{{"type":"click","event_id":"clk-{tag}{id_no:08}","#
                );
                push_ts(line, ts, form);
                let _ = write!(
                    line,
                    r#","campaign_id":"{}","channel":"{}","device_id":"{}","cost":"#,
                    self.campaigns[*camp as usize].id,
                    CHANNELS[*chan as usize],
                    self.devices[*dev as usize]
                );
                push_money(line, *cost, money_style);
                match user {
                    Some(u32::MAX) => {
                        let j = ["null", "undefined", "0", ""][rng.gen_range(0..4)];
                        let _ = write!(line, r#","user_id":"{j}""#);
                    }
                    Some(u) => {
                        let _ = write!(line, r#","user_id":"{}""#, self.users[*u as usize].id);
                    }
                    None => {}
                }
            }
            Body::Order {
                order,
                user,
                amount,
                phone_mode,
                addr,
            } => {
                let _ = write!(
                    line,
                    r#"{{"type":"order","event_id":"ord-ev-{tag}{id_no:08}","#
                );
                push_ts(line, ts, form);
                let _ = write!(
                    line,
                    r#","order_id":"O{tag}{:010}","user_id":"{}","amount":"#,
                    order, self.users[*user as usize].id
                );
                push_money(line, *amount, money_style);
                match phone_mode {
                    0 => {
                        let p = &self.users[*user as usize].phone;
                        let _ = match rng.gen_range(0..4) {
                            0 => write!(
                                line,
                                r#","phone":"+86 {} {} {}""#,
                                &p[..3],
                                &p[3..7],
                                &p[7..]
                            ),
                            1 => write!(line, r#","phone":"{}-{}-{}""#, &p[..3], &p[3..7], &p[7..]),
                            _ => write!(line, r#","phone":"{p}""#),
                        };
                    }
                    2 => {
                        let j = ["null", "", "0", "unknown"][rng.gen_range(0..4)];
                        let _ = write!(line, r#","phone":"{j}""#);
                    }
                    3 => {
                        let _ = write!(
                            line,
                            r#","phone":"139{:08}""#,
                            (*addr as u64 * 7919 + *order as u64) % 100_000_000
                        );
                    }
                    _ => {}
                }
                if addr % 10 != 0 {
                    let _ = write!(
                        line,
                        r#","address":"{}{}{}号{}室""#,
                        PROVINCES[*addr as usize % PROVINCES.len()],
                        ROADS[(*addr as usize / 8) % ROADS.len()],
                        addr % 999 + 1,
                        addr % 30 * 100 + addr % 7 + 101
                    );
                }
            }
            Body::Status { order, status } => {
                let _ = write!(
                    line,
                    r#"{{"type":"order_status","event_id":"st-ev-{tag}{id_no:08}","#
                );
                push_ts(line, ts, form);
                let _ = write!(
                    line,
                    r#","order_id":"O{tag}{order:010}","status":"{status}""#
                );
            }
            Body::Ship {
                order,
                shipper,
                waybill,
            } => {
                let _ = write!(
                    line,
                    r#"{{"type":"shipment","event_id":"sh-ev-{tag}{id_no:08}","#
                );
                push_ts(line, ts, form);
                let sc = SHIPPERS[*shipper as usize];
                let sc = if rng.gen_bool(0.1) {
                    sc.to_lowercase()
                } else {
                    sc.to_string()
                };
                let w = messy_waybill(rng, &self.waybills[*waybill as usize], 0.35);
                let _ = write!(
                    line,
                    r#","order_id":"O{tag}{order:010}","shipper_code":"{sc}","logistic_code":"{w}""#
                );
            }
            Body::Track {
                shipper,
                waybill,
                state,
                state_ex,
            } => {
                let _ = write!(
                    line,
                    r#"{{"type":"track","event_id":"trk-{tag}{id_no:09}","#
                );
                push_ts(line, ts, form);
                let w = messy_waybill(rng, &self.waybills[*waybill as usize], 0.05);
                let _ = write!(
                    line,
                    r#","shipper_code":"{}","logistic_code":"{w}","state":"#,
                    SHIPPERS[*shipper as usize]
                );
                if rng.gen_bool(0.5) {
                    let _ = write!(line, "\"{state}\"");
                } else {
                    let _ = write!(line, "{state}");
                }
                if let Some(x) = state_ex {
                    if rng.gen_bool(0.5) {
                        let _ = write!(line, ",\"state_ex\":\"{x}\"");
                    } else {
                        let _ = write!(line, ",\"state_ex\":{x}");
                    }
                }
                if rng.gen_bool(0.6) {
                    let _ = write!(
                        line,
                        r#","station":"{}""#,
                        STATIONS[rng.gen_range(0..STATIONS.len())]
                    );
                }
            }
            Body::Link {
                dev,
                user,
                phone_of,
            } => {
                let _ = write!(line, r#"{{"type":"link","event_id":"lnk-{tag}{id_no:08}","#);
                push_ts(line, ts, form);
                if let Some(d) = dev {
                    if *d == u32::MAX {
                        line.push_str(r#","device_id":"00000000-0000-0000-0000-000000000000""#);
                    } else {
                        let _ = write!(line, r#","device_id":"{}""#, self.devices[*d as usize]);
                    }
                }
                if let Some(u) = user {
                    let _ = write!(line, r#","user_id":"{}""#, self.users[*u as usize].id);
                }
                if let Some(u) = phone_of {
                    let _ = write!(line, r#","phone":"{}""#, self.users[*u as usize].phone);
                }
            }
        }
        line.push('}');
    }
}

enum Outcome {
    Signed(i64),
    Refused(i64),
    Other,
}

/// A waybill number as a shop system might type it: lower case, spaces, dashes, padding.
fn messy_waybill(rng: &mut StdRng, clean: &str, p: f64) -> String {
    if !rng.gen_bool(p) {
        return clean.to_string();
    }
    match rng.gen_range(0..4) {
        0 => clean.to_lowercase(),
        1 => {
            let mut s = String::with_capacity(clean.len() + 4);
            for (i, c) in clean.chars().enumerate() {
                if i > 0 && i % 4 == 0 {
                    s.push(' ');
                }
                s.push(c);
            }
            s
        }
        2 => {
            let mid = clean.len() / 2;
            format!("{}-{}", &clean[..mid], &clean[mid..])
        }
        _ => format!("  {} ", clean.to_lowercase()),
    }
}

/// Generates the four files described in the crate docs into `args.output`.
pub fn generate(args: &GenerateArgs) -> Result<GenReport, GenError> {
    let began = Instant::now();
    if args.users == 0 || args.days == 0 {
        return Err(GenError::InvalidArgs(
            "--users and --days must be at least 1".into(),
        ));
    }
    if !(args.sessions_per_user_day >= 0.0 && args.sessions_per_user_day <= 1000.0) {
        return Err(GenError::InvalidArgs(
            "--sessions-per-user-day must be between 0 and 1000".into(),
        ));
    }
    if args.duplicates_per_mille > 1000 || args.malformed_per_mille > 1000 {
        return Err(GenError::InvalidArgs(
            "per-mille rates must be at most 1000".into(),
        ));
    }
    if args.start_ms < 0 || args.start_ms > adflow_model::time::MAX_TS - 400 * DAY {
        return Err(GenError::InvalidArgs("--start-ms out of range".into()));
    }
    std::fs::create_dir_all(&args.output).map_err(|source| GenError::Io {
        path: args.output.clone(),
        source,
    })?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let start = args.start_ms - args.start_ms.rem_euclid(HOUR);
    let end = start + args.days as i64 * DAY;

    // Campaigns, users and devices.
    let n_camp = if args.campaigns > 0 {
        args.campaigns
    } else {
        (20 + args.users / 100).min(50)
    };
    let Population {
        mut campaigns,
        camp_cum,
        users,
        devices,
        anon,
    } = population(&mut rng, args.users, n_camp);
    // Campaign 0 (the busiest) runs out of budget at 15:00 local on ~60 % of the period.
    let stop_day = (args.days as i64 * 6) / 10;
    // Local midnight (+08:00) at or before the start.
    let day0 = start - (start + 8 * HOUR).rem_euclid(DAY);
    let stop_ts = day0 + stop_day * DAY + 15 * HOUR;
    let stop_ts = stop_ts - stop_ts.rem_euclid(5 * MINUTE);
    if stop_ts > start + HOUR && stop_ts + 5 * MINUTE <= end {
        campaigns[0].stop_ts = Some(stop_ts);
    }

    let stream_seed = |s: u64| {
        args.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(s)
    };
    let mut outs = Vec::new();
    for s in StreamKind::ALL {
        outs.push(StreamOut::create(
            s,
            args.output.join(format!("{}.jsonl", s.name())),
            StdRng::seed_from_u64(stream_seed(s.index() as u64 + 1)),
            args.duplicates_per_mille,
            args.malformed_per_mille,
        )?);
    }

    let mut w = World {
        rng,
        start,
        end,
        campaigns,
        camp_cum,
        users,
        devices,
        anon,
        waybills: Vec::new(),
        n_orders: 0,
        pending: Default::default(),
        seq: 0,
        ev_ids: [0; 4],
        line: String::with_capacity(512),
        time_scale: args.time_scale.max(1) as i64,
        tag: String::new(),
    };

    // Identity links, at random times (some after the clicks and orders they connect).
    let span = end - start;
    for u in 0..w.users.len() as u32 {
        w.user_links(u, start, span);
    }

    // CPC spikes (factor 2.0–2.4) and near misses (1.25), in busy daytime hours.
    let mut spikes = 0;
    let mut near = 0;
    let cpc_campaigns: Vec<u32> = (1..w.campaigns.len() as u32).collect();
    for i in 0..args.cpc_spikes as i64 {
        for miss in [false, true] {
            if miss && i % 2 == 1 {
                continue;
            }
            if cpc_campaigns.is_empty() {
                break;
            }
            let camp = cpc_campaigns[w.rng.gen_range(0..cpc_campaigns.len())];
            let day = (i * 2 + miss as i64) % args.days as i64;
            let hour_local = 10 + (i * 3 + miss as i64 * 5) % 9;
            let w0 = day0 + day * DAY + hour_local * HOUR;
            if w0 < start || w0 + 65 * MINUTE > end {
                continue;
            }
            let factor = if miss {
                1.25
            } else {
                w.rng.gen_range(2.0..2.4)
            };
            w.cpc_burst(camp, w0, factor);
            if miss {
                near += 1;
            } else {
                spikes += 1;
            }
        }
    }
    // The stopping campaign is busy (≥ 12 impressions per 5 minutes) just before it stops.
    if let Some(stop) = w.campaigns[0].stop_ts {
        let chan = w.campaigns[0].channels[0];
        for k in 1..=3 {
            let w0 = stop - k * 5 * MINUTE;
            for _ in 0..w.rng.gen_range(12..=16) {
                let ts = w0 + w.rng.gen_range(0..5 * MINUTE);
                let dev = w.anon[w.rng.gen_range(0..w.anon.len())];
                w.push(
                    StreamKind::AdEvents,
                    ts,
                    Body::Imp {
                        camp: 0,
                        chan,
                        dev,
                        cost: None,
                    },
                );
            }
        }
    }

    // The sweep.
    let n_users = w.users.len() as u32;
    let diurnal_mean: f64 = DIURNAL.iter().sum::<f64>() / 24.0;
    let mut h = start;
    while h < end {
        let lh = local_hour(h);
        let expect =
            args.users as f64 * args.sessions_per_user_day / 24.0 * DIURNAL[lh] / diurnal_mean;
        let n = expect.floor() as u64 + w.rng.gen_bool(expect.fract()) as u64;
        for _ in 0..n {
            let t0 = h + w.rng.gen_range(0..HOUR);
            if w.rng.gen_bool(0.2) {
                w.session(None, t0);
            } else {
                // Skewed: some users are much more active than others.
                let x: f64 = w.rng.gen::<f64>();
                let u = (x.powf(1.5) * n_users as f64) as u32;
                w.session(Some(u.min(n_users - 1)), t0);
            }
        }
        // Organic orders (no click needed), about 2 % of users a day.
        let expect = args.users as f64 * 0.02 / 24.0 * DIURNAL[lh] / diurnal_mean;
        let n = expect.floor() as u64 + w.rng.gen_bool(expect.fract()) as u64;
        for _ in 0..n {
            let u = w.rng.gen_range(0..n_users);
            let t = h + w.rng.gen_range(0..HOUR);
            w.order(u, t);
        }
        drain(&mut w, &mut outs, h)?;
        h += HOUR;
    }
    drain(&mut w, &mut outs, i64::MAX)?;

    let mut report = GenReport {
        campaigns: n_camp,
        users: args.users,
        devices: w.devices.len() as u32,
        orders: w.n_orders as u64,
        cpc_spikes: spikes,
        cpc_near_misses: near,
        start_ms: start,
        end_ms: end,
        ..Default::default()
    };
    for (i, o) in outs.into_iter().enumerate() {
        report.streams[i] = o.finish()?;
    }
    report.elapsed = began.elapsed();
    Ok(report)
}

/// Writes every pending event with emission key below `until`, in (key, seq) order. (A sort
/// of each hour's batch is much friendlier to caches than a heap of all pending events.)
fn drain(w: &mut World, outs: &mut [StreamOut], until: i64) -> Result<(), GenError> {
    for s in StreamKind::ALL {
        let all = std::mem::take(&mut w.pending[s.index()]);
        let (mut ready, rest): (Vec<Ev>, Vec<Ev>) = all.into_iter().partition(|e| e.key < until);
        w.pending[s.index()] = rest;
        ready.sort_unstable_by_key(|e| (e.key, e.seq));
        for ev in &ready {
            w.format(s, ev);
            // Malformed lines get their `ts` from the key: compressed like the events' times.
            let key = w.start + (ev.key - w.start) / w.time_scale;
            outs[s.index()].emit(key, &w.line)?;
        }
    }
    Ok(())
}
