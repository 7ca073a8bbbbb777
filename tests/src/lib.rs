//! Test harness for whole-system tests (see `saldo_stack` for the launcher itself).
