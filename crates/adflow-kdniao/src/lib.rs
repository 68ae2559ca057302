//! adflow's Kdniao (快递鸟) logistics connector.
//!
//! * [`client`]: Kdniao instant query (1002/8001/8002) and subscribe (1008/8008), signed
//!   with [`sign::data_sign`], rate limited ([`ratelimit`]), with retries.
//! * [`kuaidi100`]: the Kuaidi100 backup provider; [`tracker`]: failover and the durable
//!   failed queue.
//! * [`answer`]: lenient parsing of every Kdniao answer shape; [`track`]: answers →
//!   spec §1 `logistics` `track` events with stable `event_id`s.
//! * [`sink`]: the [`sink::TrackPublisher`] trait (file implementation here; the Kafka one is
//!   `adflow_kafka::KafkaTrackPublisher`, so this crate needs no Kafka client) and the
//!   deduplicating [`sink::TrackSink`]; [`dead_letter`]: traces that cannot become events,
//!   kept in `<state_dir>/dead_letters.jsonl`.
//! * [`receiver`]: the HTTP push receiver (with header, body and idle timeouts, a body
//!   limit and a connection limit); [`subscribe`]: subscriptions and the poller.
//! * [`sandbox`]: a stand-in Kdniao/Kuaidi100 server for tests and demos; [`replay`] turns a
//!   `logistics.jsonl` into its waybills.
//! * [`telemetry`]: request and receiver metrics (Prometheus text on `--http ADDR`).
//! * [`cli`]: [`KdniaoCommand`] and [`run`], mounted by the binary as `adflow kdniao`.
//!
//! Secrets ([`Secret`]) never appear in logs, errors, `Debug` output or outputs.

pub mod answer;
pub mod cli;
pub mod client;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod kuaidi100;
pub mod ratelimit;
pub mod receiver;
pub mod replay;
pub mod sandbox;
pub mod secret;
pub mod sign;
pub mod sink;
pub mod subscribe;
pub mod telemetry;
pub mod track;
pub mod tracker;

pub use cli::{run, run_with_publisher, KdniaoCommand};
pub use config::KdniaoConfig;
pub use error::{KdniaoError, Provider, ProviderError, PublishError};
pub use secret::Secret;
pub use sink::{FilePublisher, TrackPublisher, TrackSink};
pub use track::TrackEvent;
