//! Reading the current contents back as model rows (tests, benchmarks, end-to-end checks that
//! compare ClickHouse with file mode).

use crate::config::ClickHouseConfig;
use crate::error::ClickHouseError;
use crate::schema::{columns, current_view, qualified, quote_ident};
use adflow_model::{OutputRow, Table};

/// The current contents of `table` (its `<table>_current` view) as model rows, sorted: every
/// row whose signs sum to a positive number, once.
pub async fn current_contents(
    config: &ClickHouseConfig,
    table: Table,
) -> Result<Vec<OutputRow>, ClickHouseError> {
    let (cols, _) = columns(table);
    let list = cols
        .iter()
        .map(|c| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {list} FROM {}",
        qualified(&config.database, &current_view(table))
    );
    let context = format!("read {}", current_view(table));
    let client = config.client();
    let fut = async {
        client
            .query(&sql)
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .fetch_bytes("JSONEachRow")?
            .collect()
            .await
    };
    let timeout = config.request_timeout();
    let bytes = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| ClickHouseError::client(context.clone(), e))?,
        Err(_) => {
            return Err(ClickHouseError::Timeout {
                context,
                timeout_ms: timeout.as_millis() as u64,
            })
        }
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| ClickHouseError::Protocol {
        context: context.clone(),
        message: format!("answer is not UTF-8: {e}"),
    })?;
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| ClickHouseError::Protocol {
                context: context.clone(),
                message: format!("bad JSON row {line:?}: {e}"),
            })?;
        if let Some(obj) = v.as_object_mut() {
            for col in cols {
                let Some(val) = obj.get_mut(col.name) else {
                    continue;
                };
                if col.ty == "UInt8" {
                    // Booleans are stored as UInt8.
                    *val = serde_json::Value::Bool(val.as_u64().unwrap_or(0) != 0);
                } else if col.name == "details" {
                    // The JSON object is stored as text.
                    if let Some(s) = val.as_str() {
                        *val = serde_json::from_str(s).map_err(|e| ClickHouseError::Protocol {
                            context: context.clone(),
                            message: format!("details is not JSON: {e}"),
                        })?;
                    }
                }
            }
        }
        rows.push(
            OutputRow::from_json(table, v).map_err(|e| ClickHouseError::Protocol {
                context: context.clone(),
                message: format!("row does not match the model: {e}: {line}"),
            })?,
        );
    }
    rows.sort();
    Ok(rows)
}
