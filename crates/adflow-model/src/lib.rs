//! adflow's event model: the data contract of `shared/spec/README.md` as Rust types.
//!
//! * [`stream`]: the four input streams and where a raw message came from.
//! * [`time`], [`money`]: event-time and money parsing (integer fen, never floating point).
//! * [`event`]: parsing one raw JSON line into a validated [`event::Event`], or a one-line
//!   rejection reason that becomes a `dead_letters` row.
//! * [`identity`]: identifier nodes, junk filtering, phone hashing and masking.
//! * [`output`]: the output tables of spec §4 as row structs, and [`output::Change`], one
//!   changelog entry (`row`, `version`, `sign`).
//! * [`sink`]: the contract every output sink (files, ClickHouse, webhooks) implements.
//!
//! This crate does no I/O.

pub mod config;
pub mod durable;
pub mod event;
pub mod identity;
pub mod money;
pub mod output;
pub mod sink;
pub mod stream;
pub mod sym;
pub mod time;

pub use output::{Change, OutputRow, Table};
pub use sink::{Sink, SinkError};
pub use stream::{Position, RawMessage, StreamKind};
pub use sym::Sym;
