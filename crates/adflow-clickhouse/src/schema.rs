//! The ClickHouse schema of the spec §4 output tables, and its versioned migrations.
//!
//! # Layout
//! Each output table `<t>` is a changelog table: the row's columns (spec §4 names), then
//! `version Int64` (event-time ms at which the change takes effect), `sign Int8` (+1 insert,
//! −1 retract) and `batch_marker String` (empty on every data row; see [`crate::sink`]).
//!
//! The engine is `CollapsingMergeTree(sign)` ordered by **every** row column (the table's key
//! first; a `Nullable` column `c` as `isNull(c), ifNull(c, zero)`). Background merges may then
//! cancel a +1 and a −1 of the *same row* whatever their versions, which keeps the sign of
//! `sum(sign)` of every row (so the current contents) unchanged while compacting history.
//! (`VersionedCollapsingMergeTree(sign, version)` is not used: it only cancels pairs that share
//! a version, but a retraction here carries the version at which it takes effect, not the
//! version of the insert it cancels; and ordering by the key alone would let the retraction of
//! an old row cancel the insert of its replacement at the same version.)
//!
//! Each table has a view `<t>_current`: the rows whose signs sum to a positive number (spec
//! §4), with `last_version`, the largest version among the row's changes. BI queries use it.
//!
//! Types work on ClickHouse 18.16 and current releases: times `Int64` epoch ms, money `Int64`
//! fen, booleans `UInt8`, `credit` `Decimal(18, 6)`, `refusal_rate` `Decimal(18, 4)`, `cpc_fen`
//! `Decimal(18, 2)`, `details` the JSON object as `String`. No partitioning: one INSERT of up
//! to [`crate::MAX_BATCH_ROWS`] rows is one part, written atomically.
//!
//! Migration 2 adds `adflow_journal`, the write-ahead journal of a resumable sink (live mode:
//! checkpoints and the INSERTs of every batch, see [`crate::sink`]).
//!
//! # Migrations
//! `<db>.schema_migrations (version UInt32, name String, applied_ms Int64)` records applied
//! versions. Every statement is `IF NOT EXISTS`, and a migration is recorded after its
//! statements succeed, so applying again (or after a crash half-way) is a no-op.

use crate::config::ClickHouseConfig;
use crate::error::ClickHouseError;
use adflow_model::Table;
use std::fmt::Write as _;

/// One column of an output table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    pub name: &'static str,
    pub ty: &'static str,
}

const S: &str = "String";
const NS: &str = "Nullable(String)";
const I: &str = "Int64";
const NI: &str = "Nullable(Int64)";
const B: &str = "UInt8";

/// Columns of a table (spec §4 order) and the columns of its key (spec §4).
pub(crate) fn columns(table: Table) -> (&'static [Column], &'static [&'static str]) {
    match table {
        Table::Attribution => (
            &[
                Column {
                    name: "order_id",
                    ty: S,
                },
                Column {
                    name: "person_id",
                    ty: S,
                },
                Column {
                    name: "model",
                    ty: S,
                },
                Column {
                    name: "campaign_id",
                    ty: S,
                },
                Column {
                    name: "channel",
                    ty: S,
                },
                Column {
                    name: "click_event_id",
                    ty: S,
                },
                Column {
                    name: "click_ts",
                    ty: I,
                },
                Column {
                    name: "order_ts",
                    ty: I,
                },
                Column {
                    name: "credit",
                    ty: "Decimal(18, 6)",
                },
                Column {
                    name: "amount_fen",
                    ty: I,
                },
                Column {
                    name: "credited_fen",
                    ty: I,
                },
            ],
            &["order_id", "model", "click_event_id"],
        ),
        Table::OrderStatus => (
            &[
                Column {
                    name: "order_id",
                    ty: S,
                },
                Column {
                    name: "person_id",
                    ty: S,
                },
                Column {
                    name: "amount_fen",
                    ty: I,
                },
                Column {
                    name: "order_ts",
                    ty: I,
                },
                Column {
                    name: "phone_masked",
                    ty: NS,
                },
                Column {
                    name: "campaign_id",
                    ty: NS,
                },
                Column {
                    name: "channel",
                    ty: NS,
                },
                Column {
                    name: "shipper_code",
                    ty: NS,
                },
                Column {
                    name: "logistic_code",
                    ty: NS,
                },
                Column {
                    name: "delivery",
                    ty: S,
                },
                Column {
                    name: "delivery_ts",
                    ty: NI,
                },
                Column {
                    name: "cancelled",
                    ty: B,
                },
                Column {
                    name: "after_sale",
                    ty: B,
                },
                Column {
                    name: "refunded",
                    ty: B,
                },
                Column {
                    name: "effective",
                    ty: B,
                },
            ],
            &["order_id"],
        ),
        Table::CampaignMetrics => (
            &[
                Column {
                    name: "campaign_id",
                    ty: S,
                },
                Column {
                    name: "channel",
                    ty: S,
                },
                Column {
                    name: "hour",
                    ty: I,
                },
                Column {
                    name: "impressions",
                    ty: I,
                },
                Column {
                    name: "clicks",
                    ty: I,
                },
                Column {
                    name: "cost_fen",
                    ty: I,
                },
                Column {
                    name: "click_cost_fen",
                    ty: I,
                },
                Column {
                    name: "orders",
                    ty: I,
                },
                Column {
                    name: "gmv_fen",
                    ty: I,
                },
                Column {
                    name: "signed",
                    ty: I,
                },
                Column {
                    name: "refused",
                    ty: I,
                },
                Column {
                    name: "effective",
                    ty: I,
                },
                Column {
                    name: "refusal_rate",
                    ty: "Nullable(Decimal(18, 4))",
                },
                Column {
                    name: "cpc_fen",
                    ty: "Nullable(Decimal(18, 2))",
                },
            ],
            &["campaign_id", "channel", "hour"],
        ),
        Table::Anomalies => (
            &[
                Column {
                    name: "kind",
                    ty: S,
                },
                Column { name: "key", ty: S },
                Column {
                    name: "opened_ts",
                    ty: I,
                },
                Column {
                    name: "closed_ts",
                    ty: NI,
                },
                Column {
                    name: "details",
                    ty: S,
                },
            ],
            &["kind", "key", "opened_ts"],
        ),
        Table::Triggers => (
            &[
                Column {
                    name: "trigger_id",
                    ty: S,
                },
                Column {
                    name: "kind",
                    ty: S,
                },
                Column {
                    name: "order_id",
                    ty: S,
                },
                Column {
                    name: "person_id",
                    ty: S,
                },
                Column {
                    name: "campaign_id",
                    ty: NS,
                },
                Column {
                    name: "due_ts",
                    ty: I,
                },
            ],
            &["trigger_id"],
        ),
        Table::SuppressedPersons => (
            &[
                Column {
                    name: "person_id",
                    ty: S,
                },
                Column {
                    name: "reason",
                    ty: S,
                },
                Column {
                    name: "since_ts",
                    ty: I,
                },
            ],
            &["person_id", "reason"],
        ),
        Table::DeadLetters => (
            &[
                Column {
                    name: "stream",
                    ty: S,
                },
                Column {
                    name: "position",
                    ty: S,
                },
                Column { name: "raw", ty: S },
                Column {
                    name: "reason",
                    ty: S,
                },
                Column {
                    name: "seen_ts",
                    ty: I,
                },
            ],
            &["stream", "position"],
        ),
    }
}

/// The name of the current-contents view of `table`: `<table>_current`.
pub fn current_view(table: Table) -> String {
    format!("{}_current", table.name())
}

/// True for names usable unquoted as a database: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// `name` as a back-quoted identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for ch in name.chars() {
        if ch == '`' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('`');
    out
}

/// `db`.`name`, quoted.
pub(crate) fn qualified(database: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(database), quote_ident(name))
}

fn zero_of(ty: &str) -> String {
    let inner = ty
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(ty);
    if inner == S {
        "''".into()
    } else if let Some(rest) = inner.strip_prefix("Decimal(18, ") {
        format!("toDecimal64(0, {}", rest)
    } else {
        format!("to{inner}(0)")
    }
}

fn sort_key(table: Table) -> String {
    let (cols, key) = columns(table);
    let mut ordered: Vec<&Column> = key
        .iter()
        .filter_map(|k| cols.iter().find(|col| col.name == *k))
        .collect();
    ordered.extend(cols.iter().filter(|col| !key.contains(&col.name)));
    let mut parts = vec![quote_ident("batch_marker")];
    for col in ordered {
        let q = quote_ident(col.name);
        if col.ty.starts_with("Nullable(") {
            parts.push(format!("isNull({q})"));
            parts.push(format!("ifNull({q}, {})", zero_of(col.ty)));
        } else {
            parts.push(q);
        }
    }
    parts.join(", ")
}

/// `CREATE TABLE IF NOT EXISTS` of the changelog table of `table`.
pub(crate) fn create_table_sql(database: &str, table: Table) -> String {
    let (cols, _) = columns(table);
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (\n",
        qualified(database, table.name())
    );
    for col in cols {
        let _ = writeln!(sql, "    {} {},", quote_ident(col.name), col.ty);
    }
    sql.push_str("    `version` Int64,\n    `sign` Int8,\n    `batch_marker` String\n");
    let _ = write!(
        sql,
        ") ENGINE = CollapsingMergeTree(`sign`)\nORDER BY ({})",
        sort_key(table)
    );
    sql
}

/// `CREATE VIEW IF NOT EXISTS <table>_current`: the rows whose signs sum positive.
pub(crate) fn create_view_sql(database: &str, table: Table) -> String {
    let (cols, _) = columns(table);
    let list = cols
        .iter()
        .map(|col| quote_ident(col.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE VIEW IF NOT EXISTS {} AS\nSELECT {list}, max(`version`) AS last_version\nFROM {}\nWHERE `batch_marker` = ''\nGROUP BY {list}\nHAVING sum(`sign`) > 0",
        qualified(database, &current_view(table)),
        qualified(database, table.name()),
    )
}

/// One schema migration: a version, a name and idempotent statements.
#[derive(Clone, Debug)]
pub struct Migration {
    /// Recorded in `schema_migrations.version`; migrations apply in increasing order.
    pub version: u32,
    /// A short description.
    pub name: &'static str,
    /// The statements, each idempotent (`IF NOT EXISTS`).
    pub statements: Vec<String>,
}

/// Every migration for `database`, in order.
pub fn migrations(database: &str) -> Vec<Migration> {
    let mut first = Vec::new();
    for table in Table::ALL {
        first.push(create_table_sql(database, table));
        first.push(create_view_sql(database, table));
    }
    vec![
        Migration {
            version: 1,
            name: "changelog tables and current views",
            statements: first,
        },
        Migration {
            version: 2,
            name: "journal of the resumable sink",
            statements: vec![create_journal_sql(database)],
        },
    ]
}

/// The journal of a resumable sink (live mode), see [`crate::sink`].
pub const JOURNAL_TABLE: &str = "adflow_journal";

/// Batches per partition of the journal: whole partitions before the latest checkpoint are
/// dropped.
pub(crate) const JOURNAL_PARTITION_BATCHES: u64 = 1024;

/// `CREATE TABLE IF NOT EXISTS adflow_journal`: one row per batch (`chunk = 0`, `insert_id =
/// ''`, with the engine checkpoint if the batch carries one) and one row per INSERT of the
/// batch (`chunk` = 1, 2, ... in write order, its id and its rows as JSON), all written in one
/// INSERT before the batch's data.
pub(crate) fn create_journal_sql(database: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n    `seq` UInt64,\n    `batch_id` String,\n    `frontier` Int64,\n    `has_checkpoint` UInt8,\n    `checkpoint` String,\n    `chunk` UInt32,\n    `insert_id` String,\n    `table_name` String,\n    `payload` String,\n    `written_ms` Int64\n) ENGINE = MergeTree\nPARTITION BY intDiv(`seq`, {JOURNAL_PARTITION_BATCHES})\nORDER BY (`seq`, `chunk`)",
        qualified(database, JOURNAL_TABLE)
    )
}

fn create_database_sql(database: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {}", quote_ident(database))
}

fn create_migrations_table_sql(database: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (`version` UInt32, `name` String, `applied_ms` Int64)\nENGINE = MergeTree ORDER BY `version`",
        qualified(database, "schema_migrations")
    )
}

fn record_migration_sql(database: &str, m: &Migration) -> String {
    let table = qualified(database, "schema_migrations");
    format!(
        "INSERT INTO {table} (`version`, `name`, `applied_ms`)\nSELECT toUInt32({v}), '{name}', toInt64(toUInt64(now())) * 1000 FROM system.one\nWHERE toUInt32({v}) NOT IN (SELECT `version` FROM {table})",
        v = m.version,
        name = m.name.replace('\\', "\\\\").replace('\'', "\\'"),
    )
}

/// The whole schema of `database` as a script that `clickhouse-client --multiquery` runs
/// (what `adflow schema` prints). Running it again is a no-op; it records the migration
/// versions in `schema_migrations` like [`apply_schema`] does.
pub fn schema_sql(database: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- adflow ClickHouse schema for database {database} (ClickHouse 18.16 or later).\n-- Idempotent: every statement is IF NOT EXISTS; applied versions go to schema_migrations.\n"
    );
    let _ = writeln!(out, "{};\n", create_database_sql(database));
    let _ = writeln!(out, "{};\n", create_migrations_table_sql(database));
    for m in migrations(database) {
        let _ = writeln!(out, "-- migration {}: {}", m.version, m.name);
        for s in &m.statements {
            let _ = writeln!(out, "{s};\n");
        }
        let _ = writeln!(out, "{};\n", record_migration_sql(database, &m));
    }
    out
}

/// What [`apply_schema`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaReport {
    /// Migration versions applied by this call.
    pub applied: Vec<u32>,
    /// Migration versions that were already recorded (skipped).
    pub already_applied: Vec<u32>,
}

/// Applies the schema migrations to `database` on the server at `url` (what `adflow schema
/// --apply URL` runs). The user and password come from `ADFLOW_CLICKHOUSE_USER` and
/// `ADFLOW_CLICKHOUSE_PASSWORD` when set. Applying again is a no-op.
pub async fn apply_schema(url: &str, database: &str) -> Result<SchemaReport, ClickHouseError> {
    let mut config = ClickHouseConfig::new(url, database);
    config.user = std::env::var("ADFLOW_CLICKHOUSE_USER")
        .ok()
        .filter(|u| !u.is_empty());
    apply_schema_with(&config).await
}

/// [`apply_schema`] with the server, database and credentials of `config`.
pub async fn apply_schema_with(config: &ClickHouseConfig) -> Result<SchemaReport, ClickHouseError> {
    config.validate()?;
    let client = config.client();
    let database = &config.database;
    let timeout = config.request_timeout();
    execute(&client, &create_database_sql(database), timeout).await?;
    execute(&client, &create_migrations_table_sql(database), timeout).await?;
    let applied = applied_versions(&client, database, timeout).await?;
    let mut report = SchemaReport::default();
    for m in migrations(database) {
        if applied.contains(&m.version) {
            report.already_applied.push(m.version);
            continue;
        }
        tracing::info!(version = m.version, name = m.name, database = %database, "applying ClickHouse migration");
        for s in &m.statements {
            execute(&client, s, timeout).await?;
        }
        execute(&client, &record_migration_sql(database, &m), timeout).await?;
        report.applied.push(m.version);
    }
    Ok(report)
}

/// Versions recorded in `<database>.schema_migrations`, ascending.
pub async fn applied_migrations(config: &ClickHouseConfig) -> Result<Vec<u32>, ClickHouseError> {
    applied_versions(&config.client(), &config.database, config.request_timeout()).await
}

async fn applied_versions(
    client: &clickhouse::Client,
    database: &str,
    timeout: std::time::Duration,
) -> Result<Vec<u32>, ClickHouseError> {
    let sql = format!(
        "SELECT DISTINCT `version` FROM {} ORDER BY `version`",
        qualified(database, "schema_migrations")
    );
    let fut = client.query(&sql).fetch_all::<u32>();
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| ClickHouseError::client("read schema_migrations", e)),
        Err(_) => Err(ClickHouseError::Timeout {
            context: "read schema_migrations".into(),
            timeout_ms: timeout.as_millis() as u64,
        }),
    }
}

/// Runs one statement with a timeout.
pub(crate) async fn execute(
    client: &clickhouse::Client,
    sql: &str,
    timeout: std::time::Duration,
) -> Result<(), ClickHouseError> {
    let context = || {
        let first = sql.lines().next().unwrap_or_default();
        format!("execute `{first}`")
    };
    match tokio::time::timeout(timeout, client.query(sql).execute()).await {
        Ok(r) => r.map_err(|e| ClickHouseError::client(context(), e)),
        Err(_) => Err(ClickHouseError::Timeout {
            context: context(),
            timeout_ms: timeout.as_millis() as u64,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_orders_by_every_column_key_first() {
        let sql = create_table_sql("adflow", Table::OrderStatus);
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS `adflow`.`order_status` ("));
        assert!(sql.contains(
            "ORDER BY (`batch_marker`, `order_id`, `person_id`, `amount_fen`, `order_ts`, isNull(`phone_masked`), ifNull(`phone_masked`, '')"
        ), "{sql}");
        let sql = create_table_sql("adflow", Table::CampaignMetrics);
        assert!(
            sql.contains("ifNull(`cpc_fen`, toDecimal64(0, 2))"),
            "{sql}"
        );
        assert!(
            sql.contains("ifNull(`refusal_rate`, toDecimal64(0, 4))"),
            "{sql}"
        );
        let sql = create_table_sql("adflow", Table::Anomalies);
        assert!(sql.contains("ifNull(`closed_ts`, toInt64(0))"), "{sql}");
    }

    #[test]
    fn schema_script_covers_every_table_and_view() {
        let sql = schema_sql("adflow");
        for t in Table::ALL {
            assert!(sql.contains(&format!("`adflow`.`{}` (", t.name())), "{t}");
            assert!(
                sql.contains(&format!("`adflow`.`{}_current` AS", t.name())),
                "{t}"
            );
        }
        assert!(sql.contains("schema_migrations"));
        assert!(sql.contains("`adflow`.`adflow_journal` ("));
        assert!(sql.contains("-- migration 2: journal of the resumable sink"));
    }

    #[test]
    fn identifiers() {
        assert!(is_valid_identifier("adflow_test1"));
        assert!(!is_valid_identifier("1x"));
        assert!(!is_valid_identifier(""));
        assert_eq!(quote_ident("a`b"), "`a\\`b`");
    }
}
