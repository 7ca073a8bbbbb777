#!/usr/bin/env bash
# Browser tests against a real, throw-away stack: `saldo up --detach` in a temporary folder,
# Playwright in Debian's Chromium against it, then `saldo down` whatever happened.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
saldo="$repo/target/debug/saldo"
[ -x "$saldo" ] || { echo "e2e: $saldo is missing: build with cargo build --bins" >&2; exit 1; }
root=$(mktemp -d /tmp/saldo-e2e-XXXXXX)
cleanup() {
  "$saldo" --repo "$repo" --root "$root" down >/dev/null 2>&1 || true
  rm -rf "$root"
}
trap cleanup EXIT
"$saldo" --repo "$repo" --root "$root" up --detach >/dev/null || {
  echo "e2e: the stack did not start; its log:" >&2
  cat "$root/logs/saldo.log" >&2 || true
  exit 1
}
cd "$here"
SALDO_STACK="$root/stack.json" npx playwright test
