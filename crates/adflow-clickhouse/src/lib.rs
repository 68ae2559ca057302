//! ClickHouse output for adflow: the changelog schema of the spec §4 tables with versioned,
//! idempotent migrations ([`schema_sql`], [`apply_schema`]), and [`ClickHouseSink`], an
//! [`adflow_model::Sink`] that batches, consolidates and writes changes exactly once, retrying
//! through outages, and, made with [`ClickHouseSink::resume`], keeps live mode's checkpoints
//! and resumes from them after a crash.
//!
//! Compatibility: ClickHouse 18.16 (Debian's package) and current releases. The official
//! `clickhouse` crate is used over HTTP with `with_validation(false)` (validation needs the
//! `RowBinaryWithNamesAndTypes` format, which 18.16 lacks; rows go as plain `RowBinary`) and
//! without compression. No `DateTime64`, `LowCardinality`, async inserts or new settings.
//!
//! See `docs/clickhouse.md` for the table layout, the views and example dashboard queries.

mod config;
mod error;
mod read;
mod rows;
pub mod schema;
pub mod sink;

pub use config::{ClickHouseConfig, RetryConfig, MAX_BATCH_ROWS};
pub use error::ClickHouseError;
pub use read::current_contents;
pub use schema::JOURNAL_TABLE;
pub use schema::{
    applied_migrations, apply_schema, apply_schema_with, current_view, migrations, schema_sql,
    Migration, SchemaReport,
};
pub use sink::{ClickHouseSink, ResumeReport, SinkStats};
