//! `cargo run --release -p adflow-reference --example reference -- INPUT_DIR [OUT_DIR]`:
//! computes the reference tables of INPUT_DIR, prints row counts, and, when OUT_DIR (an engine
//! run's changelog directory) is given, diffs it against them (exit status 1 on a difference).
//! With `REF_WRITE=DIR` it also writes the tables there as changelogs.

use adflow_reference::{compute, diff, read_changelog_dir, RefConfig};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(input) = args.first() else {
        eprintln!("usage: reference INPUT_DIR [OUT_DIR]");
        std::process::exit(2);
    };
    let began = Instant::now();
    let expected = compute(&PathBuf::from(input), &RefConfig::default())?;
    println!(
        "reference computed in {:.2} s",
        began.elapsed().as_secs_f64()
    );
    for (table, rows) in &expected {
        println!("{:<20} {:>8} rows", table.name(), rows.len());
    }
    if let Ok(dir) = std::env::var("REF_WRITE") {
        adflow_reference::write_tables_dir(&expected, &PathBuf::from(dir))?;
    }
    if let Some(out) = args.get(1) {
        let actual = read_changelog_dir(&PathBuf::from(out))?;
        match diff(&expected, &actual) {
            None => println!("{out}: identical"),
            Some(report) => {
                println!("{report}");
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
