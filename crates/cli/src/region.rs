//! `saldo region stop|start`: a region's Function App stopped or started, as Azure does it.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use saldo_stack::Manifest;
use saldo_stack::manifest::HostAction;

#[derive(Subcommand)]
pub enum RegionAction {
    /// Stop the region's Function App: it answers 403 and runs nothing until started.
    Stop { region: String },
    /// Start the region's Function App again; it catches up from its peers.
    Start { region: String },
}

pub async fn region(root: &std::path::Path, action: RegionAction) -> Result<ExitCode> {
    let m = Manifest::load(root)?;
    let (act, region, done) = match &action {
        RegionAction::Stop { region } => (HostAction::Stop, region, "stopped"),
        RegionAction::Start { region } => (HostAction::Start, region, "started"),
    };
    m.require_node(region)?.control(act).await?;
    println!("saldo: region {region} {done}");
    Ok(ExitCode::SUCCESS)
}
