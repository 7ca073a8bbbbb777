//! `saldo verify`: where to read, the checks, and the report printed.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{Options, Source, check, read};

/// Which database an audit reads when it is not the local stack's: the arguments `verify` and
/// `demo --azure` share.
#[derive(clap::Args)]
pub struct DatabaseArgs {
    /// Audit this database instead of the local stack's (e.g. the Cosmos DB connection string).
    #[arg(long, env = "SALDO_MONGODB_URI")]
    pub mongodb: Option<String>,
    /// The database name (with --mongodb).
    #[arg(long, default_value = "saldo")]
    pub database: String,
    /// A node as NAME=URL (with --mongodb; repeat), to tell a stopped region's lag from a fault.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
}

impl DatabaseArgs {
    /// The database given by `--mongodb` and its nodes; `None` without `--mongodb`.
    pub fn source(&self) -> Result<Option<Source>> {
        let Some(uri) = &self.mongodb else {
            return Ok(None);
        };
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                n.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.trim_end_matches('/').to_string()))
                    .with_context(|| format!("--node {n:?}: give NAME=URL"))
            })
            .collect::<Result<_>>()?;
        Ok(Some(Source {
            uri: uri.clone(),
            database: self.database.clone(),
            nodes,
        }))
    }
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Seconds after which a decided transaction must be in every running node's ledger.
    #[arg(long, default_value_t = 60)]
    horizon_secs: u64,
    /// Seconds after which an undecided transaction counts as stuck.
    #[arg(long, default_value_t = 120)]
    stuck_after_secs: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn verify(root: &std::path::Path, args: VerifyArgs) -> Result<std::process::ExitCode> {
    let src = match args.db.source()? {
        Some(src) => src,
        None => Source::local(&saldo_stack::Manifest::load(root)?)?,
    };
    let opts = Options {
        horizon: Duration::from_secs(args.horizon_secs),
        stuck_after: Duration::from_secs(args.stuck_after_secs),
    };
    let report = check(&read(&src).await?, &opts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
        println!();
        if report.ok() {
            println!("saldo verify: consistent");
        } else {
            println!(
                "saldo verify: INCONSISTENT ({})",
                report.failed().join(", ")
            );
        }
    }
    Ok(if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(2)
    })
}
