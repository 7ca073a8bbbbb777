//! A venv whose install fails names the file and what to do, and is not marked as good, so the
//! next start tries again.

use saldo_stack::venv::Venv;

#[test]
fn a_failing_install_says_what_to_do_and_is_retried_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("requirements.txt");
    // A line pip cannot parse: refused at once, without asking any registry.
    std::fs::write(&req, "not a requirement line\n").unwrap();
    let venv = dir.path().join("venv");
    let err = Venv::ensure(&venv, &req).err().expect("the install fails");
    let text = format!("{err:#}");
    assert!(
        text.contains("requirements.txt") && text.contains("delete"),
        "{text}"
    );
    assert!(
        !venv.join(".saldo-requirements").exists(),
        "a failed venv is not marked as good"
    );
}
