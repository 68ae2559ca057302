//! `[actions]` in `adflow run`, and `adflow actions ...`: the failed queue and the outbox's
//! state. See docs/actions.md.

use adflow_actions::Deliverer;
use adflow_model::config::{ActionsSettings, Settings};
use adflow_model::Sink;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `adflow actions ...`.
#[derive(clap::Subcommand)]
pub(crate) enum ActionsCmd {
    /// Send every action in the failed queue again (with the configured retries); each ends
    /// delivered or failed again. Exits 1 when some are still failed.
    ReplayFailed(OutboxArgs),
    /// Print the outbox's actions by kind and state (pending, delivered, failed, dry_run,
    /// expired, cancelled) as JSON.
    Status(OutboxArgs),
}

#[derive(clap::Args)]
pub(crate) struct OutboxArgs {
    /// The outbox directory (default: `[actions] outbox` of the settings file).
    #[arg(long, value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// Settings file with the `[actions]` table (targets, secrets' variables, retries).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl OutboxArgs {
    fn resolve(&self) -> Result<(PathBuf, ActionsSettings)> {
        let settings = crate::load_settings(self.config.as_ref())?;
        let actions = settings.actions.unwrap_or_default();
        let dir = match (&self.outbox, &actions.outbox) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => PathBuf::from(d),
            (None, None) => {
                bail!("give --outbox DIR or a settings file whose [actions] sets outbox")
            }
        };
        if !dir.is_dir() {
            bail!("the outbox {} does not exist", dir.display());
        }
        Ok((dir, actions))
    }
}

pub(crate) fn cmd_actions(cmd: ActionsCmd) -> Result<()> {
    match cmd {
        ActionsCmd::Status(a) => {
            let (dir, _) = a.resolve()?;
            let counts = adflow_actions::status(&dir)?;
            println!("{}", serde_json::to_string_pretty(&counts)?);
            Ok(())
        }
        ActionsCmd::ReplayFailed(a) => {
            if a.config.is_none() {
                bail!("replay-failed needs --config FILE: the [actions] targets to send to");
            }
            let (dir, actions) = a.resolve()?;
            let r = adflow_actions::replay_failed(&dir, &actions)
                .with_context(|| format!("replaying the failed queue of {}", dir.display()))?;
            eprintln!(
                "adflow actions replay-failed: {} tried, {} delivered, {} still failed",
                r.tried, r.delivered, r.failed
            );
            if r.failed > 0 {
                bail!("{} actions are still in the failed queue", r.failed);
            }
            Ok(())
        }
    }
}

/// The running actions of `adflow run`: the sink to add and the delivery to wait for.
pub(crate) struct RunActions {
    deliverer: Arc<Deliverer>,
    drain: Duration,
}

/// Starts `[actions]`, if configured: the actions sink (resumable in live mode) and its
/// delivery threads.
pub(crate) fn start(
    settings: &Settings,
    output: Option<&Path>,
    resumable: bool,
) -> Result<Option<(Box<dyn Sink>, RunActions)>> {
    let Some(a) = &settings.actions else {
        return Ok(None);
    };
    let zone = settings.zone_offset_minutes()?;
    let (sink, deliverer) =
        adflow_actions::start(a, output, zone, resumable).context("starting [actions]")?;
    Ok(Some((
        Box::new(sink),
        RunActions {
            deliverer,
            drain: Duration::from_millis(a.drain_timeout.0.max(0) as u64),
        },
    )))
}

impl RunActions {
    /// After a run: waits (at most `drain_timeout`) for the actions still being sent.
    pub(crate) fn finish(self) -> Result<()> {
        let left = self.deliverer.drain(self.drain);
        if let Some(e) = self.deliverer.fatal() {
            bail!("actions: {e}");
        }
        if left > 0 {
            tracing::warn!(
                left,
                "actions still being sent when the run ended: they stay pending in the outbox and the next run sends them"
            );
        }
        self.deliverer.stop();
        Ok(())
    }
}
