//! `adflow report`: what a file-mode run found, from the changelogs' current contents.

use adflow_model::output::{AnomalyRow, OrderStatusRow};
use adflow_model::{Change, OutputRow, Table};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The output directory of `adflow run`.
    #[arg(long)]
    output: PathBuf,
    /// Rows per ranking.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// Current contents of a changelog: rows whose signs sum positive.
pub fn current(dir: &Path, table: Table) -> Result<Vec<OutputRow>> {
    let path = dir.join(format!("{}.jsonl", table.name()));
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut sums: HashMap<OutputRow, i64> = HashMap::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let c = Change::from_json_line(table, &line)
            .with_context(|| format!("bad line in {}", path.display()))?;
        *sums.entry(c.row).or_default() += c.sign;
    }
    let mut rows: Vec<OutputRow> = sums
        .into_iter()
        .filter(|(_, s)| *s > 0)
        .map(|(r, _)| r)
        .collect();
    rows.sort();
    Ok(rows)
}

/// Per (campaign, channel): gmv, orders, cost, signed, refused.
type CampaignTotals = (i64, i64, i64, i64, i64);

fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, (fen % 100).abs())
}

pub fn report(a: &ReportArgs) -> Result<()> {
    println!("== adflow report: {}", a.output.display());
    println!("-- rows per table (current contents)");
    let mut all = BTreeMap::new();
    for t in Table::ALL {
        let rows = current(&a.output, t)?;
        println!("   {:<20} {:>8}", t.name(), rows.len());
        all.insert(t, rows);
    }
    // Top campaigns by last-click attributed GMV.
    let mut gmv: HashMap<(String, String), CampaignTotals> = HashMap::new();
    for r in &all[&Table::CampaignMetrics] {
        if let OutputRow::CampaignMetrics(m) = r {
            let e = gmv
                .entry((m.campaign_id.clone(), m.channel.clone()))
                .or_default();
            e.0 += m.gmv_fen;
            e.1 += m.orders;
            e.2 += m.cost_fen;
            e.3 += m.signed;
            e.4 += m.refused;
        }
    }
    let mut ranked: Vec<_> = gmv.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    println!("-- top campaigns by last-click attributed GMV");
    println!(
        "   {:<14} {:<10} {:>12} {:>7} {:>11} {:>6} {:>9}",
        "campaign", "channel", "gmv_cny", "orders", "cost_cny", "roi", "refusal"
    );
    for ((c, ch), (g, o, cost, s, rf)) in ranked.iter().take(a.top) {
        let roi = if *cost > 0 {
            format!("{:.2}", *g as f64 / *cost as f64)
        } else {
            "-".into()
        };
        let refusal = if s + rf > 0 {
            format!("{:.1}%", 100.0 * *rf as f64 / (*s + *rf) as f64)
        } else {
            "-".into()
        };
        println!(
            "   {:<14} {:<10} {:>12} {:>7} {:>11} {:>6} {:>9}",
            c,
            ch,
            yuan(*g),
            o,
            yuan(*cost),
            roi,
            refusal
        );
    }
    let mut worst: Vec<_> = ranked.iter().filter(|(_, v)| v.3 + v.4 >= 5).collect();
    worst.sort_by(|a, b| {
        let ra = a.1 .4 as f64 / (a.1 .3 + a.1 .4) as f64;
        let rb = b.1 .4 as f64 / (b.1 .3 + b.1 .4) as f64;
        rb.total_cmp(&ra).then(a.0.cmp(&b.0))
    });
    println!("-- worst refusal rates (campaigns with >= 5 delivered or refused orders)");
    for ((c, ch), (_, _, _, s, rf)) in worst.iter().take(a.top) {
        println!(
            "   {:<14} {:<10} refused {:>4} of {:>4}  ({:.1}%)",
            c,
            ch,
            rf,
            s + rf,
            100.0 * *rf as f64 / (*s + *rf) as f64
        );
    }
    // Orders by delivery.
    let mut delivery: BTreeMap<String, usize> = BTreeMap::new();
    for r in &all[&Table::OrderStatus] {
        if let OutputRow::OrderStatus(OrderStatusRow { delivery: d, .. }) = r {
            *delivery.entry(d.clone()).or_default() += 1;
        }
    }
    println!("-- orders by delivery: {delivery:?}");
    let mut kinds: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for r in &all[&Table::Anomalies] {
        if let OutputRow::Anomaly(AnomalyRow {
            kind, closed_ts, ..
        }) = r
        {
            *kinds
                .entry((kind.clone(), closed_ts.is_none()))
                .or_default() += 1;
        }
    }
    println!("-- anomalies found (kind, still open): {kinds:?}");
    let mut trig: BTreeMap<String, usize> = BTreeMap::new();
    for r in &all[&Table::Triggers] {
        if let OutputRow::Trigger(t) = r {
            *trig.entry(t.kind.clone()).or_default() += 1;
        }
    }
    println!("-- triggers decided: {trig:?}");
    println!(
        "-- suppressed persons now: {}",
        all[&Table::SuppressedPersons].len()
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &all[&Table::DeadLetters] {
        if let OutputRow::DeadLetter(d) = r {
            let key: String = d
                .reason
                .split(':')
                .next()
                .unwrap_or("")
                .chars()
                .take(40)
                .collect();
            *reasons.entry(key).or_default() += 1;
        }
    }
    println!("-- dead letters by reason: {reasons:?}");
    Ok(())
}
