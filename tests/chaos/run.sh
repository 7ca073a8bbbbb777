#!/usr/bin/env bash
# A short `saldo chaos` against a real, throw-away stack: `saldo up --detach` in a temporary
# folder, about 60 s of purchases under a seeded nemesis, then `saldo down` whatever happened.
# The history and the timeline are kept in tests/chaos/artifacts/<seed>/.
#
#   SALDO_CHAOS_SEED     the seed (default 1; replay a failure with the seed it printed)
#   SALDO_CHAOS_SECONDS  seconds of load (default 60)
#   SALDO_CHAOS_FAULTS   fault kinds, comma-separated (default below; `saldo chaos --help` lists them)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
saldo="$repo/target/debug/saldo"
[ -x "$saldo" ] || { echo "chaos: $saldo is missing: build with cargo build --bins" >&2; exit 1; }
seed=${SALDO_CHAOS_SEED:-1}
seconds=${SALDO_CHAOS_SECONDS:-60}
faults=${SALDO_CHAOS_FAULTS:-kill-db,kill-topic,kill-host,kill-handler,kill-api,pause,region}
root=$(mktemp -d /tmp/saldo-chaos-XXXXXX)
cleanup() {
  "$saldo" --repo "$repo" --root "$root" down >/dev/null 2>&1 || true
  mkdir -p "$here/artifacts"
  if [ -d "$root/chaos/$seed" ]; then
    rm -rf "${here:?}/artifacts/$seed"
    cp -r "$root/chaos/$seed" "$here/artifacts/$seed"
  fi
  rm -rf "$root"
}
trap cleanup EXIT
# The emulator's retry delays at 1/10 keep the run short; the fleet's timings are saldo up's own.
"$saldo" --repo "$repo" --root "$root" up --detach --time-scale 10 >/dev/null || {
  echo "chaos: the stack did not start; its log:" >&2
  cat "$root/logs/saldo.log" >&2 || true
  exit 1
}
"$saldo" --repo "$repo" --root "$root" chaos --seed "$seed" --seconds "$seconds" --rate 2 --faults "$faults"
