//! Where the repository, the stack's state folder and the binaries are.

use std::path::PathBuf;

use anyhow::{Context, Result};
use saldo_stack::config::find_repo;

use crate::Cli;

pub struct Paths {
    pub repo: PathBuf,
    pub root: PathBuf,
    pub bin_dir: PathBuf,
}

pub fn paths(cli: &Cli) -> Result<Paths> {
    let exe = std::env::current_exe().context("locating the saldo binary")?;
    let bin_dir = exe.parent().context("binary has no folder")?.to_path_buf();
    let repo = match &cli.repo {
        Some(r) => r.clone(),
        None => std::env::current_dir()
            .ok()
            .and_then(|d| find_repo(&d))
            .or_else(|| find_repo(&bin_dir))
            .context("not inside the Saldo repository: cd into it or pass --repo")?,
    };
    let repo = repo
        .canonicalize()
        .with_context(|| format!("{} does not exist", repo.display()))?;
    let root = cli.root.clone().unwrap_or_else(|| repo.join(".saldo"));
    std::fs::create_dir_all(&root)?;
    let root = root.canonicalize()?;
    Ok(Paths {
        repo,
        root,
        bin_dir,
    })
}
