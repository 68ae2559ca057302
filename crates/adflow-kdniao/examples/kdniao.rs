//! Standalone runner for the connector's commands, until the integrator mounts
//! [`adflow_kdniao::KdniaoCommand`] in the `adflow` binary:
//!
//! ```text
//! cargo run -p adflow-kdniao --example kdniao -- receive --listen 127.0.0.1:8080 --output out/
//! ```

use clap::Parser;

/// `kdniao <subcommand>` (same as `adflow kdniao <subcommand>`).
#[derive(Debug, Parser)]
#[command(name = "kdniao")]
struct Cli {
    #[command(subcommand)]
    command: adflow_kdniao::KdniaoCommand,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match adflow_kdniao::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
