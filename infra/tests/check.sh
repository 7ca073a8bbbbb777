#!/usr/bin/env bash
# Offline checks of infra/ (nothing here reaches Azure):
#   1. every .bicep parses (pycep-parser; checkov passes over files it cannot parse, so first);
#   2. the templates keep the architecture's rules and agree with functions-host/;
#   3. each script's --dry-run prints the commands the templates and functions-host/ imply,
#      and bad input is refused in one line before anything runs;
#   4. checkov lints the templates, once over the folder; every skipped check carries a reason;
#   5. shellcheck passes on every script.
# Ends with "infra checks: N passed, M failed"; exits non-zero on any failure. About 30 s.
#
# Tools: .saldo/tools-venv (pip install -r tools/requirements-tools.txt) and shellcheck (apt).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY=".saldo/tools-venv/bin/python"
CHECKOV=".saldo/tools-venv/bin/checkov"

passed=0
failed=0
ok() {
  passed=$((passed + 1))
  printf 'ok - %s\n' "$1"
}
fail() {
  failed=$((failed + 1))
  printf 'FAIL - %s\n' "$1"
}
finish() {
  printf 'infra checks: %d passed, %d failed\n' "$passed" "$failed"
  if ((failed)); then
    exit 1
  fi
  exit 0
}

# --- Tools: say exactly how to get them. ---
missing=0
if ! [[ -x "$PY" ]] || ! "$PY" -c 'import pycep' 2>/dev/null || ! [[ -x "$CHECKOV" ]]; then
  printf 'missing: pycep-parser and checkov in .saldo/tools-venv; install with:\n' >&2
  printf '  python3 -m venv .saldo/tools-venv && .saldo/tools-venv/bin/pip install -r tools/requirements-tools.txt\n' >&2
  missing=1
fi
if ! command -v shellcheck >/dev/null 2>&1; then
  printf 'missing: shellcheck; install with: apt-get install -y shellcheck\n' >&2
  missing=1
fi
if ((missing)); then
  fail "tools installed"
  finish
fi
ok "tools installed"

# --- 1-3: parsing, rules and dry runs (one line per check from the helper). ---
helper_out="$(mktemp)"
trap 'rm -f "$helper_out"' EXIT
"$PY" infra/tests/check_infra.py >"$helper_out" 2>&1 || true
grep -v '^RESULT ' "$helper_out" || true
if result="$(grep '^RESULT ' "$helper_out")"; then
  read -r _ p f <<<"$result"
  passed=$((passed + p))
  failed=$((failed + f))
else
  fail "check_infra.py ran to the end (it crashed; output above)"
fi

# --- 4: checkov, once over the folder, JSON report judged here. ---
# Only when every template parsed: checkov reports success on files it cannot parse.
if grep -q '^FAIL - bicep parses' "$helper_out"; then
  fail "checkov (skipped: a template does not parse)"
else
  report="$(mktemp)"
  trap 'rm -f "$helper_out" "$report"' EXIT
  "$CHECKOV" --directory infra --skip-path tests/fixtures --framework bicep arm --skip-download --output json >"$report" 2>/dev/null || true
  if verdict="$("$PY" - "$report" <<'EOF'
import json, sys
def bad(msg):
    print(msg)
    sys.exit(1)
text = open(sys.argv[1]).read()
if not text.strip():
    bad("checkov printed no report")
data = json.loads(text)
reports = data if isinstance(data, list) else [data]
bicep = [r for r in reports if r.get("check_type") == "bicep"]
if not bicep:
    bad("checkov scanned no Bicep resources")
problems = []
for r in reports:
    s = r["summary"]
    if s.get("parsing_errors"):
        problems.append(f"{r['check_type']}: {s['parsing_errors']} parsing errors")
    for c in r["results"].get("failed_checks", []):
        problems.append(f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}")
    for c in r["results"].get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        if not reason or reason == "No comment provided" or len(reason.strip()) < 20:
            problems.append(f"{c['check_id']} {c['resource']} skipped without a reason")
if problems:
    bad("; ".join(problems))
s = bicep[0]["summary"]
print(f"{s['passed']} passed, {s['skipped']} skipped with reasons, {s['resource_count']} resources")
EOF
)"; then
    ok "checkov: $verdict"
  else
    fail "checkov: ${verdict:-see above}"
  fi
fi

# --- 5: shellcheck, one check per script. ---
for script in infra/scripts/* infra/tests/*.sh; do
  if out="$(shellcheck -x -P SCRIPTDIR "$script" 2>&1)"; then
    ok "shellcheck $script"
  else
    fail "shellcheck $script"
    printf '%s\n' "$out"
  fi
done

finish
