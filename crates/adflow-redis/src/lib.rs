//! Redis output for adflow: [`RedisSink`] keeps two families of keys that an ad server reads in
//! well under a millisecond before it shows a dunning or repurchase ad:
//!
//! - `<prefix>suppressed:<person_id>` — a hash `reason` → `since_ts` holding the person's
//!   current `suppressed_persons` rows (spec §4); no key when the person is not suppressed;
//! - `<prefix>orders:<person_id>` — a hash `order_id` → `delivery` holding the person's *open*
//!   orders from the current `order_status` (not cancelled, not refunded, `delivery` neither
//!   `signed` nor `refused`: [`keys::is_open`]); no key when the person has none;
//!
//! plus `<prefix>progress`, the frontier (and in live mode the engine checkpoint) the keys
//! stand for. The prefix defaults to `adflow:`.
//!
//! The keys are maintained from the changelog's deltas only: a retraction deletes its hash
//! field (and Redis the hash with its last field), an insertion sets it. Changes are
//! consolidated in memory and each flush applies them with the progress hash in one
//! `MULTI`/`EXEC`, so the keys always equal the tables at the frontier the progress hash
//! names, and a restarted live run resumes from that checkpoint without applying anything
//! twice. Connection failures are retried with backoff for a bounded time (`retry_s`), then
//! the sink fails with a clear error. See [`sink`] for the exact semantics and `docs/redis.md`
//! for the layout, example reads and their cost.

mod buffer;
mod config;
mod error;
pub mod keys;
pub mod sink;

pub use config::{RedisConfig, DEFAULT_PREFIX};
pub use error::RedisSinkError;
/// The Redis client this crate is built on (for tests and tools that read the keys).
pub use redis;
pub use sink::{Progress, RedisSink, RedisSinkStats};
