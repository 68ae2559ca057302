//! `cargo run --release -p adflow-gen --example gen -- --output DIR [--seed N ...]`: the
//! generator without the `adflow` binary (for timing and debugging).

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: adflow_gen::GenerateArgs,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let report = adflow_gen::generate(&cli.args)?;
    println!("{report}");
    Ok(())
}
