//! How the demo stops and starts the region: the local host, or `infra/scripts/region`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use saldo_stack::manifest::HostAction;

/// How the demo stops and starts the region.
pub(super) enum Control {
    Local(saldo_stack::manifest::NodeEntry),
    Script {
        script: std::path::PathBuf,
        dry_run: bool,
        extra: Vec<String>,
    },
}

impl Control {
    pub(super) async fn act(&self, region: &str, stop: bool) -> Result<()> {
        match self {
            Control::Local(n) => {
                n.control(if stop {
                    HostAction::Stop
                } else {
                    HostAction::Start
                })
                .await
            }
            Control::Script {
                script,
                dry_run,
                extra,
            } => {
                let mut cmd = tokio::process::Command::new(script);
                cmd.arg(if stop { "stop" } else { "start" }).arg(region);
                if *dry_run {
                    cmd.arg("--dry-run");
                }
                cmd.args(extra);
                let status = tokio::time::timeout(Duration::from_secs(600), cmd.status())
                    .await
                    .context("infra/scripts/region took over 10 minutes")?
                    .with_context(|| format!("running {}", script.display()))?;
                if !status.success() {
                    bail!("{} failed ({status})", script.display());
                }
                Ok(())
            }
        }
    }
}
