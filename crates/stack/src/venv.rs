//! The Python virtual environment that holds SecantusDB (the local stand-in for Cosmos DB).
//!
//! It lives inside the repository (`.saldo/venv`, git-ignored) and is built from the pinned
//! `tools/requirements-secantus.txt`, so nothing is installed globally. A stamp file records the
//! requirements it was built from; a changed pin rebuilds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct Venv {
    pub dir: PathBuf,
}

impl Venv {
    pub fn secantusd(&self) -> PathBuf {
        self.dir.join("bin").join("secantusd-py")
    }

    /// The venv's Python, which runs `tools/secantusd.py` (SecantusDB with Cosmos DB's
    /// transaction time limit).
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python3")
    }

    /// Makes sure the venv exists and matches the pinned requirements; installs it if not.
    pub fn ensure(dir: &Path, requirements: &Path) -> Result<Venv> {
        let venv = Venv {
            dir: dir.to_path_buf(),
        };
        let wanted = std::fs::read_to_string(requirements)
            .with_context(|| format!("reading {}", requirements.display()))?;
        let stamp = dir.join(".saldo-requirements");
        if venv.secantusd().is_file()
            && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted)
        {
            return Ok(venv);
        }
        let python = which("python3").context(
            "python3 not found: install Python 3.11 or newer with venv support \
             (apt-get install -y python3 python3-venv), then run again",
        )?;
        eprintln!(
            "saldo: creating the Python venv for SecantusDB in {} (once) ...",
            dir.display()
        );
        run(
            Command::new(&python).args(["-m", "venv"]).arg(dir),
            "python3 -m venv",
        )
        .context(
            "could not create the venv: install python3-venv (apt-get install -y python3-venv)",
        )?;
        let pip = dir.join("bin").join("pip");
        run(
            Command::new(&pip).args(["install", "--quiet", "--disable-pip-version-check", "-r"]).arg(requirements),
            "pip install",
        )
        .with_context(|| {
            format!(
                "installing {} into the venv failed: check that PyPI is reachable, or delete {} and run again",
                requirements.display(),
                dir.display()
            )
        })?;
        if !venv.secantusd().is_file() {
            bail!(
                "the venv was installed but {} is missing",
                venv.secantusd().display()
            );
        }
        std::fs::write(&stamp, wanted)?;
        Ok(venv)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
