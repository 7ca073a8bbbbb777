#!/usr/bin/env bash
# The API's OpenAPI document against the whole stack: `saldo up --detach` in a temporary folder,
# schemathesis (pinned in tools/requirements-tools.txt) generating requests from the document
# the API serves, every check on, then `saldo down` whatever happened. Zero failures to pass.
#
#   tests/contract/run.sh                 # a fresh random seed (printed at the end)
#   SALDO_ST_SEED=123 tests/contract/run.sh   # repeat a run
#   SALDO_ST_EXAMPLES=200 tests/contract/run.sh   # more examples per operation (default 40)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
saldo="$repo/target/debug/saldo"
st="$repo/.saldo/tools-venv/bin/st"
[ -x "$saldo" ] || { echo "contract: $saldo is missing: build with cargo build --bins" >&2; exit 1; }
[ -x "$st" ] || { echo "contract: $st is missing: ./dev test installs tools/requirements-tools.txt" >&2; exit 1; }
root=$(mktemp -d /tmp/saldo-contract-XXXXXX)
cleanup() {
  "$saldo" --repo "$repo" --root "$root" down >/dev/null 2>&1 || true
  rm -rf "$root"
}
trap cleanup EXIT
"$saldo" --repo "$repo" --root "$root" up --detach >/dev/null || {
  echo "contract: the stack did not start; its log:" >&2
  cat "$root/logs/saldo.log" >&2 || true
  exit 1
}
api=$("$repo/.saldo/tools-venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["api"]["url"])' "$root/stack.json")
# A warehouse user, as Static Web Apps would sign one in, so PUT /api/products/{id} is tested past
# its role check (without one every generated principal is refused with 401/403).
principal=$(printf '%s' '{"identityProvider":"github","userId":"schemathesis","userDetails":"st","userRoles":["anonymous","authenticated","warehouse"]}' | base64 -w0)
seed=()
[ -n "${SALDO_ST_SEED:-}" ] && seed=(--seed "$SALDO_ST_SEED")
cd "$root"
# Expected warning: "POST /api/orders mostly rejected generated data". Generated product ids are
# mostly not in the catalogue (422 unknown_products, allowed in schemathesis.toml); the document's
# examples and the stateful phase place real orders.
# Excluded check, and why: `unsupported_method` expects 405 for a method a route does not list.
# The Azure Functions host answers 404 for any method its function.json does not name (the local
# host stand-in does the same, and the document says so in its description); that answer is the
# platform's, not the API's, so it stays.
"$st" --config-file "$here/schemathesis.toml" run "$api/api/openapi.json" \
  --checks all --exclude-checks unsupported_method \
  --max-examples "${SALDO_ST_EXAMPLES:-40}" \
  --header "x-ms-client-principal: $principal" \
  --request-timeout 15 \
  --generation-database none \
  --no-color \
  "${seed[@]}"
