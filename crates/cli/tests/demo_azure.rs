//! `saldo demo --azure` drives the region through `infra/scripts/region`: its dry run prints the
//! exact Azure commands for stopping and starting the region, buys nothing and needs no account.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn saldo(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .arg("--repo")
        .arg(repo())
        .arg("--root")
        .arg(std::env::temp_dir().join("saldo-demo-azure-test"))
        .args(args)
        .env_remove("SALDO_MONGODB_URI")
        .output()
        .expect("run saldo");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_azure_dry_run_stops_and_starts_the_region_through_the_operator_script() {
    let (code, out) = saldo(&["demo", "--azure", "--dry-run", "--region", "northeurope"]);
    assert_eq!(code, 0, "{out}");
    let stop = out
        .find("az functionapp stop --resource-group saldo-rg --name saldo-worker-northeurope")
        .unwrap_or_else(|| panic!("no stop command:\n{out}"));
    let start = out
        .find("az functionapp start --resource-group saldo-rg --name saldo-worker-northeurope")
        .unwrap_or_else(|| panic!("no start command:\n{out}"));
    assert!(stop < start, "stop comes before start:\n{out}");
    assert!(out.contains("nothing was bought or changed"), "{out}");
}

#[test]
fn the_azure_demo_says_what_it_is_missing() {
    let (code, out) = saldo(&["demo", "--azure", "--region", "northeurope"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--azure needs --api"), "{out}");
    // An unknown region is refused by the script before anything runs.
    let (code, out) = saldo(&["demo", "--azure", "--dry-run", "--region", "atlantis"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("unknown region"), "{out}");
}
