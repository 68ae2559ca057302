//! Prints the ClickHouse schema script (`adflow schema` prints the same), or applies it.
//!
//! ```text
//! cargo run -p adflow-clickhouse --example schema -- [DATABASE]            # print
//! cargo run -p adflow-clickhouse --example schema -- DATABASE --apply URL  # apply
//! ```

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let database = args.first().map(String::as_str).unwrap_or("adflow");
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("--apply"), Some(url)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(adflow_clickhouse::apply_schema(url, database))?;
            println!(
                "applied {:?}, already applied {:?}",
                report.applied, report.already_applied
            );
        }
        (None, _) => print!("{}", adflow_clickhouse::schema_sql(database)),
        _ => anyhow::bail!("usage: schema [DATABASE] [--apply URL]"),
    }
    Ok(())
}
