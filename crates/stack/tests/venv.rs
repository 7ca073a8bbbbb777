//! Issue 2's bad input for the SecantusDB venv: a missing Python and a failing install each give
//! one clear line saying what to do, and leave no venv marked as good.
//!
//! One test per binary: both change PATH, which is process-wide.

use saldo_stack::venv::Venv;

#[test]
fn a_missing_python_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("requirements.txt");
    std::fs::write(&req, "secantusdb==0.7.0b3\n").unwrap();
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: this test binary runs this one test; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("PATH", empty.path()) };
    let err = Venv::ensure(&dir.path().join("venv"), &req)
        .err()
        .expect("no python, no venv");
    let text = format!("{err:#}");
    assert!(
        text.contains("python3 not found") && text.contains("apt-get install"),
        "{text}"
    );
    assert!(!dir.path().join("venv/.saldo-requirements").exists());
}
