"""Offline checks of infra/: the Bicep templates, checkov's verdict, and the scripts' --dry-run
output against the templates and functions-host/.

Run by infra/tests/check.sh with the tools venv's Python. Prints one line per check,
"ok - NAME" or "FAIL - NAME: why", and last "RESULT <passed> <failed>".

Nothing here can reach Azure. What it can do is make sure that the scripts, the templates and
the function folders agree with each other: the same app names for the same prefix and regions,
every function published and verified, the webhook path Event Grid is given is the route the
worker serves, every timer schedule an app setting, no secret in a parameter file or the output.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from pycep import BicepParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
import azure_rules  # noqa: E402 - next to this file

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCRIPTS = INFRA / "scripts"
FUNCTIONS_HOST = ROOT / "functions-host"

passed = 0
failed = 0


def check(name: str, fn: Callable[[], None]) -> None:
    """Run one check; an AssertionError (or any error) fails it with its message."""
    global passed, failed
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - every error is a failed check, reported by name
        failed += 1
        msg = str(err) or type(err).__name__
        print(f"FAIL - {name}: {msg}", flush=True)
    else:
        passed += 1
        print(f"ok - {name}", flush=True)


# --------------------------------------------------------------------------------------------
# Bicep
# --------------------------------------------------------------------------------------------
_parsed: dict[Path, dict[str, Any]] = {}


def parse(path: Path) -> dict[str, Any]:
    if path not in _parsed:
        _parsed[path] = BicepParser().parse(file_path=path)
    return _parsed[path]


def interpolate(template: str, env: dict[str, str]) -> str:
    """Evaluate a Bicep string whose ${...} parts are plain identifiers bound in env."""

    def sub(m: re.Match[str]) -> str:
        ident = m.group(1)
        assert ident in env, f"cannot evaluate '${{{ident}}}' in '{template}' offline"
        return env[ident]

    return re.sub(r"\$\{([^}]*)\}", sub, template)


def bicep_names(prefix: str, regions: list[str]) -> dict[str, Any]:
    """The resource names main.bicep derives from prefix and regions."""
    variables = parse(INFRA / "main.bicep")["variables"]
    env = {"prefix": prefix}

    def plain(var: str) -> str:
        value = variables[var]["value"]
        assert isinstance(value, str), f"main.bicep variable {var} is not a plain string template"
        return interpolate(value, env)

    loop = variables["workerAppNames"]["value"]
    assert isinstance(loop, dict) and "loop_type" in loop, "workerAppNames is not a for-expression"
    detail = loop["loop_type"]["detail"]
    assert detail["array_name"] == "regions", "workerAppNames does not loop over regions"
    workers = [interpolate(loop["config"], {**env, detail["item_name"]: r}) for r in regions]
    return {
        "resourceGroup": plain("resourceGroupName"),
        "workers": workers,
        "api": plain("apiAppName"),
        "topic": plain("topicName"),
        "cosmos": plain("cosmosAccountName"),
        "site": plain("staticSiteName"),
    }


# --------------------------------------------------------------------------------------------
# functions-host
# --------------------------------------------------------------------------------------------
def function_names(app: str) -> list[str]:
    return sorted(p.parent.name for p in (FUNCTIONS_HOST / app).glob("*/function.json"))


def function_json(app: str, fn: str) -> dict[str, Any]:
    return json.loads((FUNCTIONS_HOST / app / fn / "function.json").read_text())


def host_json(app: str) -> dict[str, Any]:
    return json.loads((FUNCTIONS_HOST / app / "host.json").read_text())


def http_path(app: str, fn: str) -> str:
    """The URL path of an HTTP function: /<routePrefix>/<route> (route parameters dropped)."""
    prefix = host_json(app).get("extensions", {}).get("http", {}).get("routePrefix", "api")
    trigger = next(b for b in function_json(app, fn)["bindings"] if b["type"] == "httpTrigger")
    route = trigger.get("route", fn)
    route = re.sub(r"/?\{[^}]*\}", "", route)
    return "/" + "/".join(part for part in (prefix, route) if part)


# --------------------------------------------------------------------------------------------
# Scripts
# --------------------------------------------------------------------------------------------
def run_script(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    for var in ("SALDO_PREFIX", "SALDO_REGIONS", "SALDO_STATIC_SITE_LOCATION"):
        full_env.pop(var, None)
    if env:
        full_env.update(env)
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        cwd=ROOT,
    )


def commands(proc: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The '+ ' lines of a dry run, split into words."""
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.strip()}"
    out = []
    for line in proc.stdout.splitlines():
        if line.startswith("+ "):
            out.append(shlex.split(line[2:]))
    assert out, "printed no command"
    return out


def option(cmd: list[str], name: str) -> str:
    assert name in cmd, f"{name} missing from: {' '.join(cmd)}"
    return cmd[cmd.index(name) + 1]


def starts(cmd: list[str], *words: str) -> bool:
    return cmd[: len(words)] == list(words)


def find(cmds: list[list[str]], *words: str) -> list[int]:
    return [i for i, c in enumerate(cmds) if starts(c, *words)]


def check_deploy_dry_run(prefix: str | None, regions: list[str]) -> None:
    args = ["--dry-run"]
    if prefix is not None:
        args += ["--prefix", prefix]
        args += ["--regions", ",".join(regions)]
    proc = run_script("deploy", *args)
    cmds = commands(proc)
    names = bicep_names(prefix or "saldo", regions)
    rg = names["resourceGroup"]

    # Only trace lines on stdout: the dry run is a list of commands.
    stray = [line for line in proc.stdout.splitlines() if line and not line.startswith("+ ")]
    assert not stray, f"non-command lines in the dry run: {stray[:3]}"
    # No generated key may appear (48 hex characters, see new_key in lib.sh).
    assert not re.search(r"\b[0-9a-f]{48}\b", proc.stdout), "a generated key appears in the output"

    # Templates: three passes (none, keys, events; see main.bicep), same template and scope.
    deployments = find(cmds, "az", "deployment", "sub", "create")
    assert len(deployments) == 3, f"expected 3 template deployments, found {len(deployments)}"
    wirings = parse(INFRA / "main.bicep")["parameters"]["wiring"]
    allowed = next(d["argument"] for d in wirings["decorators"] if d.get("type") == "allowed")
    assert allowed == ["none", "keys", "events"], f"main.bicep's wiring allows {allowed}"
    for i, wire in zip(deployments, allowed):
        c = cmds[i]
        assert option(c, "--template-file") == "infra/main.bicep", "wrong template"
        assert option(c, "--location") == regions[0], "deployment location is not the primary region"
        params = [w for w in c if "=" in w and not w.startswith("@")]
        kv = dict(p.split("=", 1) for p in params)
        assert kv.get("prefix") == (prefix or "saldo"), f"prefix parameter {kv.get('prefix')}"
        assert json.loads(kv["regions"]) == regions, f"regions parameter {kv['regions']}"
        assert kv.get("wiring") == wire, f"pass {wire}: wiring={kv.get('wiring')}"
        assert "@infra/main.parameters.json" in c, "main.parameters.json not passed"

    # Publishing: exactly the apps the template creates, each from its staged folder.
    publishes = find(cmds, "cd")
    published = []
    for i in publishes:
        c = cmds[i]
        rest = c[c.index("&&") + 1 :]
        assert rest[:4] == ["func", "azure", "functionapp", "publish"], f"unexpected: {' '.join(c)}"
        published.append(rest[4])
        assert c[1] == f".saldo/deploy/{rest[4]}", f"{rest[4]} is published from {c[1]}"
    expected_apps = names["workers"] + [names["api"]]
    assert sorted(published) == sorted(expected_apps), f"published {published}, template has {expected_apps}"

    # Each staged folder gets its functions-host folder and the binary host.json names.
    for app_name in expected_apps:
        kind = "api" if app_name == names["api"] else "worker"
        stage = f".saldo/deploy/{app_name}"
        binary = host_json(kind)["customHandler"]["description"]["defaultExecutablePath"]
        copies = [c for c in cmds if c[:1] == ["cp"] and c[-1].startswith(stage)]
        sources = {c[-2] for c in copies}
        assert f"functions-host/{kind}/." in sources, f"{app_name}: functions-host/{kind} not staged"
        assert f"target/x86_64-unknown-linux-musl/release/{binary}" in sources, f"{app_name}: {binary} not staged"
        assert "infra/publish/local.settings.json" in sources, f"{app_name}: Core Tools is not told the runtime"
        settings = json.loads((INFRA / "publish" / "local.settings.json").read_text())
        assert settings["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "custom", "local.settings.json: runtime is not custom"
        shown = sorted(
            option(c, "--function-name")
            for c in cmds
            if starts(c, "az", "functionapp", "function", "show") and option(c, "--name") == app_name
        )
        assert shown == function_names(kind), f"{app_name}: verifies {shown}, functions-host/{kind} has {function_names(kind)}"
        for c in cmds:
            if starts(c, "az", "functionapp") and "--name" in c and option(c, "--name") == app_name:
                assert option(c, "--resource-group") == rg, f"{app_name} looked up in {option(c, '--resource-group')}"

    # The handshake probes hit the very path the subscriptions use and the worker serves: first
    # with the master key (the host runs code), then, after the keys pass, with the `eventgrid`
    # key in the URL exactly as the subscription carries it (the key is loaded).
    webhook = http_path("worker", "eventgrid")
    curl_idx = [i for i, c in enumerate(cmds) if c[:1] == ["curl"]]
    api_probe = [i for i in curl_idx if cmds[i][-1].startswith(f"https://{names['api']}.azurewebsites.net/")]
    running = [i for i in curl_idx if cmds[i][-1] in {f"https://{w}.azurewebsites.net{webhook}" for w in names["workers"]}]
    keyed = [i for i in curl_idx if cmds[i][-1] in {f"https://{w}.azurewebsites.net{webhook}?code=<redacted>" for w in names["workers"]}]
    assert sorted(api_probe + running + keyed) == curl_idx, f"unexpected probes {[cmds[i][-1] for i in curl_idx]}"
    assert len(running) == len(keyed) == len(names["workers"]), f"probes: {len(running)} running, {len(keyed)} keyed"
    for i in running:
        assert "x-functions-key: <redacted>" in cmds[i], "the first handshake is not sent with the master key"
    for i in keyed:
        assert not any(w.startswith("x-functions-key") for w in cmds[i]), "the keyed handshake must use only the subscription's ?code="
    # The API lock probe: straight to the app, a forged principal with the warehouse role, a read.
    assert len(api_probe) == 1, f"expected one direct probe of the API, found {len(api_probe)}"
    probe = cmds[api_probe[0]]
    assert "--data" not in probe and "--request" not in probe, "the API lock probe must not change anything"
    forged = next(w for w in probe if w.startswith("x-ms-client-principal: "))
    principal = json.loads(base64.b64decode(forged.split(": ", 1)[1]))
    assert "warehouse" in principal["userRoles"], "the forged principal does not claim the warehouse role"

    # Order: build, pass 1, publish, API lock, handshake, keys, keyed handshake, subscriptions, SPA.
    build = find(cmds, "cargo", "build")
    assert len(build) == 1, "expected one cargo build"
    assert option(cmds[build[0]], "--target") == "x86_64-unknown-linux-musl", "not a musl build"
    swa = find(cmds, "env")
    assert swa and "swa" in cmds[swa[0]], "no swa deploy"
    order = [
        build[0], deployments[0], min(publishes), max(publishes), api_probe[0],
        min(running), max(running), deployments[1], min(keyed), max(keyed), deployments[2], swa[0],
    ]
    assert order == sorted(order), (
        "steps out of order (build, templates, publish, API lock, handshake, keys, keyed handshake, subscriptions, SPA)"
    )
    swa_cmd = cmds[swa[0]]
    config_dir = option(swa_cmd, "--swa-config-location")
    assert config_dir == swa_cmd[swa_cmd.index("deploy") + 1] == "frontend/dist", "swa deploys another folder than the build output"
    # Vite copies frontend/public into frontend/dist, so the routes and roles travel with the build.
    assert (ROOT / "frontend/public/staticwebapp.config.json").is_file(), "frontend/public/staticwebapp.config.json is missing"
    site_cmds = [c for c in cmds if starts(c, "az", "staticwebapp")]
    assert site_cmds and all(option(c, "--name") == names["site"] for c in site_cmds), "Static Web App name differs from the template"
    # Read-only checks come before anything is changed.
    first_change = min(find(cmds, "az", "provider", "register") + build)
    for i in find(cmds, "az", "account", "show") + find(cmds, "az", "functionapp", "list-flexconsumption-locations"):
        assert i < first_change, "a prerequisite check runs after something was changed"


def check_bad_input(script: str, *args: str) -> None:
    proc = run_script(script, *args)
    assert proc.returncode != 0, f"{script} {' '.join(args)} exited 0"
    assert "+ " not in proc.stdout, f"{script} {' '.join(args)} printed commands before refusing"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"{script} {' '.join(args)}: expected one line on stderr, got {lines}"


def fake_bin(tmp: Path, tools: dict[str, str]) -> Path:
    """A PATH with the basic utilities the scripts use and the given fake tools."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for util in ("bash", "dirname", "basename", "sed", "sort", "od", "tr", "mktemp", "chmod", "cat", "rm", "grep", "env"):
        real = subprocess.run(["bash", "-c", f"command -v {util}"], capture_output=True, text=True).stdout.strip()
        assert real, f"{util} not found on this machine"
        (bin_dir / util).symlink_to(real)
    log = tmp / "calls.log"
    for name, body in tools.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\n{body}\n')
        script.chmod(0o755)
    return bin_dir


def check_prerequisites() -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # No az at all: refused with the missing tool named, nothing run.
        bin_dir = fake_bin(tmp, {})
        proc = run_script("deploy", env={"PATH": str(bin_dir)})
        assert proc.returncode != 0, "deploy without az exited 0"
        assert "missing tool 'az'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # Every tool there, musl target installed, but not logged in.
        ok = "exit 0"
        bin_dir = fake_bin(
            tmp,
            {
                "az": 'if [ "$1 $2" = "account show" ]; then echo "Please run az login" >&2; exit 1; fi\nexit 0',
                "rustup": 'echo x86_64-unknown-linux-musl',
                "func": ok, "cargo": ok, "musl-gcc": ok, "npm": ok, "swa": ok, "curl": ok,
            },
        )
        proc = run_script("deploy", env={"PATH": str(bin_dir)})
        assert proc.returncode != 0, "deploy while logged out exited 0"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "not logged in" in lines[0], f"stderr: {lines}"
        calls = (tmp / "calls.log").read_text().splitlines()
        assert calls == ["rustup target list --installed", "az account show --query id --output tsv"], f"ran {calls}"

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # Logged in, but a region without Flex Consumption: refused before anything changes.
        bin_dir = fake_bin(
            tmp,
            {
                "az": 'if [ "$2" = "list-flexconsumption-locations" ]; then printf "westeurope\\nnortheurope\\n"; fi\nexit 0',
                "rustup": "echo x86_64-unknown-linux-musl",
                "func": "exit 0", "cargo": "exit 0", "musl-gcc": "exit 0", "npm": "exit 0", "swa": "exit 0", "curl": "exit 0",
            },
        )
        proc = run_script("deploy", env={"PATH": str(bin_dir)})
        assert proc.returncode != 0, "deploy to a region without Flex Consumption exited 0"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "swedencentral" in lines[0] and "Flex" in lines[0], f"stderr: {lines}"
        calls = (tmp / "calls.log").read_text().splitlines()
        assert not [c for c in calls if "create" in c or "register" in c or c.startswith("cargo")], f"ran {calls}"


REAL_RUN_TOOLS = ("az", "func", "cargo", "rustup", "musl-gcc", "npm", "swa", "curl", "cp")
FAKE_MASTER_KEY = "fake-master-key-0123456789"
FAKE_TOKEN = "fake-deployment-token-0123456789"

# Fake tools for a "real" deploy: each logs its argv (fields separated by \x1f) and answers like
# Azure would, enough for the script to go on. Nothing leaves the machine.
FAKE_TOOLS = {
    "az": r"""
case "$1 $2" in
"account show") echo 00000000-0000-0000-0000-000000000000 ;;
"functionapp list-flexconsumption-locations") printf 'westeurope\nnortheurope\nswedencentral\n' ;;
"functionapp keys")
  q=""; n=""; prev=""
  for a in "$@"; do [ "$prev" = --query ] && q="$a"; [ "$prev" = --name ] && n="$a"; prev="$a"; done
  case "$q" in
  masterKey) echo "%(master)s" ;;
  functionKeys.*)
    # FAKE_KEY_<name>: the host key every worker holds (none: a first deploy);
    # FAKE_KEY_ODD_APP: one app holding another value.
    k="FAKE_KEY_${q#functionKeys.}"; v="${!k}"
    [ -n "$v" ] && [ "$n" = "$FAKE_KEY_ODD_APP" ] && v="odd-$v"
    [ -n "$v" ] && echo "$v" ;;
  esac ;;
"functionapp function") for a in "$@"; do [ "$prev" = --function-name ] && echo "$a"; prev="$a"; done ;;
"staticwebapp secrets") echo "%(token)s" ;;
"staticwebapp show") echo fake.azurestaticapps.net ;;
"deployment sub")
  if [ "$3" = create ]; then
    case " $* " in *" wiring=events "*)
      f="$FAKE_STATE/events-failures"
      if [ -f "$f" ] && [ "$(cat "$f")" -gt 0 ]; then
        echo $(( $(cat "$f") - 1 )) > "$f"
        echo "ERROR: webhook validation handshake failed" >&2; exit 1
      fi ;;
    esac
    for a in "$@"; do
      case "$a" in @/*) f="${a#@}"
        grep -q fleetKey "$f" && grep -q eventGridKey "$f" && [ "$(stat -c %%a "$f")" = 600 ] && echo "$f" >> "$SECRETS_SEEN"
        cat "$f" >> "$FAKE_STATE/params.log" ;;
      esac
    done
  fi ;;
esac
exit 0""" % {"master": FAKE_MASTER_KEY, "token": FAKE_TOKEN},
    "func": 'pwd >> "$FUNC_CWD"',
    "rustup": "echo x86_64-unknown-linux-musl",
    "curl": r"""case " $* " in *" --write-out "*) printf '%s' "${FAKE_API_STATUS:-401}"; exit 0 ;; esac
for a in "$@"; do case "$a" in *validationCode*) code="${a#*validationCode\":\"}"; code="${code%%%%\"*}" ;; esac; done
printf '{"validationResponse":"%s"}' "$code" """,
    "swa": '[ "$SWA_CLI_DEPLOYMENT_TOKEN" = "%s" ] || { echo "no deployment token" >&2; exit 1; }' % FAKE_TOKEN,
}


def normalize(words: list[str]) -> list[str]:
    out = []
    for w in words:
        if w.startswith("@/") or w == "@<secrets-file>":
            w = "@SECRETS"
        w = w.replace(FAKE_MASTER_KEY, "<redacted>")
        # The generated keys differ from run to run (48 hex characters, see new_key in lib.sh).
        w = re.sub(r"\b[0-9a-f]{48}\b", "<redacted>", w)
        out.append(w)
    return out


def fake_deploy(
    tmp: Path, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], Path, dict[str, str]]:
    """A "real" deploy with fake tools on PATH (each logs its argv to calls.log), from a copy of
    what the scripts read, so the run stages its folders away from this tree."""
    import shutil

    root = tmp / "repo"
    shutil.copytree(INFRA / "scripts", root / "infra" / "scripts")
    shutil.copytree(FUNCTIONS_HOST, root / "functions-host")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for util in ("bash", "dirname", "basename", "sed", "sort", "od", "tr", "mktemp", "chmod", "cat", "rm", "mkdir", "grep", "env", "stat", "pwd", "sleep"):
        real = shutil.which(util)
        assert real, f"{util} not found on this machine"
        (bin_dir / util).symlink_to(real)
    log = tmp / "calls.log"
    for tool in REAL_RUN_TOOLS:
        body = FAKE_TOOLS.get(tool, "exit 0")
        (bin_dir / tool).write_text(
            f"#!/bin/bash\n{{ printf '%s\\x1f' {tool} \"$@\"; printf '\\n'; }} >> {log}\n{body}\n"
        )
        (bin_dir / tool).chmod(0o755)
    env = {
        "PATH": str(bin_dir),
        "SECRETS_SEEN": str(tmp / "secrets"),
        "FUNC_CWD": str(tmp / "func-cwd"),
        "FAKE_STATE": str(tmp),
        "SALDO_DEPLOY_WIRE_DELAY": "0",
        **(extra_env or {}),
    }
    script = root / "infra" / "scripts" / "deploy"
    real = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=120, env=env)
    return real, log, env


def logged_calls(log: Path) -> list[list[str]]:
    return [normalize(line.split("\x1f")[:-1]) for line in log.read_text().splitlines()]


def wiring_of(call: list[str]) -> str | None:
    if call[:4] != ["az", "deployment", "sub", "create"]:
        return None
    return next((w.split("=", 1)[1] for w in call if w.startswith("wiring=")), "?")


def check_real_run_matches_dry_run() -> None:
    """A deploy with fake tools runs exactly the commands its dry run printed, in order."""
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        real, log, env = fake_deploy(tmp)
        root = tmp / "repo"
        script = root / "infra" / "scripts" / "deploy"
        assert real.returncode == 0, f"deploy with fake tools exited {real.returncode}: {real.stderr.strip()[-300:]}"
        dry = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=120, env=env)
        planned = []
        for words in commands(dry):
            if words[0] == "cd":
                words = words[words.index("&&") + 1 :]
            if words[0] == "env":
                words = [w for w in words[1:] if "=" not in w]
            if words[0] in REAL_RUN_TOOLS:
                planned.append(normalize(words))
        ran = logged_calls(log)
        for i, (p, r) in enumerate(zip(planned, ran)):
            assert p == r, f"command {i + 1}: dry run printed {' '.join(p)!r}, the real run ran {' '.join(r)!r}"
        assert len(planned) == len(ran), f"dry run printed {len(planned)} tool commands, the real run ran {len(ran)}"
        # The keys went to the templates in a private file, which is gone afterwards.
        seen = (tmp / "secrets").read_text().split()
        assert len(seen) == 3, f"expected the three template deployments to get the keys file, got {len(seen)}"
        assert not any(Path(f).exists() for f in seen), "the keys file outlived the deploy"
        # func publish ran inside each staged folder, which holds the app's host.json.
        cwds = (tmp / "func-cwd").read_text().split()
        assert cwds and all(Path(c).parent == root / ".saldo" / "deploy" for c in cwds), f"func ran in {cwds}"
        assert re.search(r"^shop: +https://fake\.azurestaticapps\.net$", real.stdout, re.M), "no shop URL printed"
        for secret in (FAKE_MASTER_KEY, FAKE_TOKEN):
            assert secret not in real.stdout + real.stderr, "a secret was printed"
        assert not re.search(r"\b[0-9a-f]{48}\b", real.stdout + real.stderr), "a generated key was printed"
        # The keyed handshake carried the very key the templates were given for `eventgrid`.
        keyed = [c for c in (line.split("\x1f") for line in log.read_text().splitlines()) if c[0] == "curl" and "?code=" in c[-2]]
        assert keyed and all(re.search(r"\?code=[0-9a-f]{48}$", c[-2]) for c in keyed), "the keyed handshake lacks the generated key"


def check_subscriptions_retried() -> None:
    """Pass 3 (the subscriptions) is retried when a handshake fails, at most
    SALDO_DEPLOY_WIRE_ATTEMPTS times, and nothing after it runs until it succeeded."""
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "events-failures").write_text("2")
        real, log, _ = fake_deploy(tmp, {"SALDO_DEPLOY_WIRE_ATTEMPTS": "3"})
        assert real.returncode == 0, f"deploy that meets two failed handshakes exited {real.returncode}: {real.stderr.strip()[-300:]}"
        calls = logged_calls(log)
        wirings = [w for w in map(wiring_of, calls) if w]
        assert wirings == ["none", "keys", "events", "events", "events"], f"deployments ran: {wirings}"
        assert real.stderr.count("the event subscriptions failed (attempt") == 2, real.stderr
        assert re.search(r"^shop: ", real.stdout, re.M), "the deploy did not finish after converging"

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "events-failures").write_text("99")
        real, log, _ = fake_deploy(tmp, {"SALDO_DEPLOY_WIRE_ATTEMPTS": "2"})
        assert real.returncode != 0, "deploy whose subscriptions never succeed exited 0"
        last = real.stderr.strip().splitlines()[-1]
        assert "failed 2 times" in last, f"last line: {last}"
        calls = logged_calls(log)
        wirings = [w for w in map(wiring_of, calls) if w]
        assert wirings == ["none", "keys", "events", "events"], f"deployments ran: {wirings}"
        assert not [c for c in calls if c[0] in ("npm", "swa")], "the SPA was deployed although the subscriptions failed"

    with tempfile.TemporaryDirectory() as t:
        real, _, _ = fake_deploy(Path(t), {"SALDO_DEPLOY_WIRE_ATTEMPTS": "zero"})
        lines = real.stderr.strip().splitlines()
        assert real.returncode != 0 and len(lines) == 1 and "SALDO_DEPLOY_WIRE_ATTEMPTS" in lines[0], f"stderr: {lines}"


def check_keys_kept_on_redeploy() -> None:
    """A redeploy keeps the host keys every worker already holds (no window in which callers
    with the old key are refused); a first deploy, workers that disagree or --rotate-keys get
    fresh ones."""
    kept = {"FAKE_KEY_fleet": "kept-fleet-key-0123456789", "FAKE_KEY_eventgrid": "kept-eventgrid-key-0123456789"}

    def run(extra: dict[str, str], args: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], list[list[str]], str]:
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            real, log, _ = fake_deploy(tmp, extra, args)
            assert real.returncode == 0, f"deploy exited {real.returncode}: {real.stderr.strip()[-300:]}"
            params = [json.loads(line) for line in (tmp / "params.log").read_text().splitlines()]
            raw = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
            return params, raw, real.stdout + real.stderr

    params, raw, out = run(kept)
    assert len(params) == 3, f"{len(params)} deployments got the keys file"
    for p in params:
        assert p["fleetKey"]["value"] == kept["FAKE_KEY_fleet"], "the fleet key was rotated on a redeploy"
        assert p["eventGridKey"]["value"] == kept["FAKE_KEY_eventgrid"], "the eventgrid key was rotated on a redeploy"
    keyed = [c[-1] for c in raw if c[0] == "curl" and "?code=" in c[-1]]
    assert keyed and all(u.endswith("?code=" + kept["FAKE_KEY_eventgrid"]) for u in keyed), f"keyed probes: {keyed}"
    assert not any(v in out for v in kept.values()), "a kept key was printed"

    for extra, args, why in (
        (kept, ("--rotate-keys",), "--rotate-keys"),
        ({**kept, "FAKE_KEY_ODD_APP": "saldo-worker-northeurope"}, (), "workers that disagree"),
        ({}, (), "a first deploy"),
    ):
        params, raw, _ = run(extra, args)
        for p in params:
            for name in ("fleetKey", "eventGridKey"):
                assert re.fullmatch(r"[0-9a-f]{48}", p[name]["value"]), f"{why}: {name} is not a fresh key"
        assert params[0]["fleetKey"]["value"] != params[0]["eventGridKey"]["value"], "both keys are the same"
        if args:
            asked = [c for c in raw if c[:3] == ["az", "functionapp", "keys"] and "masterKey" not in c]
            assert not asked, f"{why}: the existing keys were read anyway"


def check_api_lock_enforced() -> None:
    """An API app that answers a direct request (a forged principal, past the Static Web App)
    stops the deploy before any key or subscription is created."""
    for status in ("200", "000"):
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            real, log, _ = fake_deploy(tmp, {"FAKE_API_STATUS": status})
            assert real.returncode != 0, f"deploy whose API answers {status} directly exited 0"
            lines = real.stderr.strip().splitlines()
            assert len(lines) == 1 and "not locked to its Static Web App" in lines[0], f"stderr: {lines}"
            wirings = [w for w in map(wiring_of, logged_calls(log)) if w]
            assert wirings == ["none"], f"deployments ran although the API is open: {wirings}"


def check_region_dry_run() -> None:
    regions = ["westeurope", "northeurope", "swedencentral"]
    names = bicep_names("saldo", regions)
    for action in ("stop", "start"):
        for region, app in zip(regions, names["workers"]):
            cmds = commands(run_script("region", "--dry-run", action, region))
            acting = find(cmds, "az", "functionapp", action)
            assert len(acting) == 1, f"region {action} {region}: {len(acting)} commands"
            c = cmds[acting[0]]
            assert option(c, "--name") == app and option(c, "--resource-group") == names["resourceGroup"], " ".join(c)
            probes = [c[-1] for c in cmds if c[:1] == ["curl"]]
            expected = [f"https://{app}.azurewebsites.net{http_path('worker', 'status')}"] if action == "start" else []
            assert probes == expected, f"region {action} {region} probes {probes}"


def check_status_dry_run() -> None:
    regions = ["westeurope", "northeurope", "swedencentral"]
    names = bicep_names("saldo", regions)
    cmds = commands(run_script("status", "--dry-run"))
    shown = sorted(option(c, "--name") for c in cmds if starts(c, "az", "functionapp", "show"))
    assert shown == sorted(names["workers"] + [names["api"]]), f"status shows {shown}"
    status_path = http_path("worker", "status")
    urls = sorted(c[-1] for c in cmds if c[:1] == ["curl"])
    assert urls == sorted(f"https://{w}.azurewebsites.net{status_path}" for w in names["workers"]), f"{urls}"
    assert function_json("worker", "status")["bindings"][0]["authLevel"] == "anonymous", "status probe needs an anonymous status function"
    subs = [c for c in cmds if starts(c, "az", "eventgrid", "topic", "event-subscription", "list")]
    assert subs and option(subs[0], "--topic-name") == names["topic"], "status lists another topic"
    outputs = parse(INFRA / "main.bicep")["outputs"]
    assert "deadLetterStorageName" in outputs, "status reads output deadLetterStorageName, which main.bicep lacks"


def check_teardown_dry_run() -> None:
    names = bicep_names("saldo", ["westeurope"])
    cmds = commands(run_script("teardown", "--dry-run"))
    deletes = find(cmds, "az", "group", "delete")
    assert len(deletes) == 1 and option(cmds[deletes[0]], "--name") == names["resourceGroup"], "teardown deletes another group"


# --------------------------------------------------------------------------------------------
# Templates against functions-host and the architecture's rules
# --------------------------------------------------------------------------------------------
def app_settings(module: str) -> dict[str, Any]:
    tree = parse(INFRA / "modules" / module)
    return tree["modules"]["app"]["config"]["params"]["appSettings"]


def check_worker_settings() -> None:
    settings = app_settings("worker-app.bicep")
    needed = set()
    for fn in function_names("worker"):
        for binding in function_json("worker", fn)["bindings"]:
            for value in binding.values():
                if isinstance(value, str):
                    needed.update(re.findall(r"%([A-Za-z0-9_]+)%", value))
    missing = needed - settings.keys()
    assert not missing, f"function.json uses app settings the template does not set: {sorted(missing)}"
    required = {
        "SALDO_NODE", "SALDO_REGION", "SALDO_MONGODB_URI", "SALDO_DATABASE", "SALDO_TOPIC_ENDPOINT",
        "SALDO_PUBLIC_URL", "SALDO_PEERS", "SALDO_FLEET", "SALDO_FLEET_KEY", "SALDO_TAKEOVER_MS", "SALDO_LIVENESS_MS",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
    }
    assert required <= settings.keys(), f"worker settings missing: {sorted(required - settings.keys())}"
    api = app_settings("api-app.bicep")
    assert {"SALDO_NODES", "SALDO_FLEET_KEY", "SALDO_MONGODB_URI", "SALDO_TOPIC_ENDPOINT"} <= api.keys(), "API settings incomplete"
    for name, s in (("worker", settings), ("api", api)):
        # Keyless in Azure: the topic refuses keys, so no app may be given one.
        assert "SALDO_TOPIC_KEY" not in s, f"{name} app gets SALDO_TOPIC_KEY"
        # Flex Consumption sets the runtime in functionAppConfig and refuses this setting.
        assert "FUNCTIONS_WORKER_RUNTIME" not in s, f"{name} app sets FUNCTIONS_WORKER_RUNTIME"


def check_templates_rules() -> None:
    topic = parse(INFRA / "modules" / "event-topic.bicep")["resources"]["topic"]["config"]["properties"]
    assert topic["disableLocalAuth"] is True, "topic accepts keys"
    assert topic["inputSchema"] == "EventGridSchema", "topic schema"
    cosmos = parse(INFRA / "modules" / "cosmos-mongo.bicep")["resources"]["account"]["config"]["properties"]
    assert cosmos["enableMultipleWriteLocations"] is False, "multi-region writes would oversell"
    caps = {c["name"] for c in cosmos["capabilities"]}
    assert "EnableMongoRetryableWrites" in caps, "retryable writes capability missing"
    assert float(cosmos["apiProperties"]["serverVersion"]) >= 4.2, "server version below 4.2"
    flex = parse(INFRA / "modules" / "flex-function-app.bicep")["resources"]["app"]["config"]["properties"]
    assert flex["functionAppConfig"]["runtime"]["name"] == "custom", "not a custom handler runtime"
    # The API's Dedicated plan takes the runtime as an app setting, set in the module itself.
    dedicated = (INFRA / "modules" / "dedicated-function-app.bicep").read_text()
    assert "FUNCTIONS_WORKER_RUNTIME: 'custom'" in dedicated, "the API app does not run a custom handler"
    assert "FUNCTIONS_EXTENSION_VERSION: '~4'" in dedicated, "the API app does not pin Functions 4"
    subs = parse(INFRA / "modules" / "event-subscriptions.bicep")["resources"]["subscriptions"]["config"]
    assert subs["loop_type"]["detail"]["array_name"] == "regions", "not one subscription per region"
    props = subs["config"]["properties"]
    url = props["destination"]["properties"]["endpointUrl"]
    m = re.search(r"azurewebsites\.net(/[^?]*)\?code=", url)
    assert m and m.group(1) == http_path("worker", "eventgrid"), f"subscription endpoint {url} is not the eventgrid route"
    trigger = function_json("worker", "eventgrid")["bindings"][0]
    assert trigger["authLevel"] == "function" and "post" in trigger["methods"], "eventgrid must be a POST function-key webhook"
    assert "deadLetterWithResourceIdentity" in props and "retryPolicy" in props, "no dead-letter or retry policy"
    assert "maxEventsPerBatch" in props["destination"]["properties"], "no batching"
    # The database URI comes from the account at deployment time, never from a literal.
    for module in ("worker-app.bicep", "api-app.bicep"):
        text = (INFRA / "modules" / module).read_text()
        assert "mongodb://" not in text and "AccountKey=" not in text, f"{module}: a literal connection string"
        assert "listConnectionStrings()" in text, f"{module}: SALDO_MONGODB_URI not read from the account"
    # Every parameter whose name says it holds a key is @secure.
    for path in [INFRA / "main.bicep", *sorted((INFRA / "modules").glob("*.bicep"))]:
        for pname, p in parse(path).get("parameters", {}).items():
            # appSettings carries the database connection string (flex-function-app.bicep).
            if re.search(r"(key|secret|password)$", pname, re.I) or pname == "appSettings":
                assert any(d.get("type") == "secure" for d in p["decorators"]), f"{path.name}: parameter {pname} is not @secure()"


def check_module_wiring() -> None:
    """What a Bicep compiler would catch first: every module gets exactly the parameters it
    declares (all required ones, no unknown ones), and every `<module>.outputs.<name>` exists."""
    files = [INFRA / "main.bicep", *sorted((INFRA / "modules").glob("*.bicep"))]
    for path in files:
        tree = parse(path)
        modules = tree.get("modules", {})
        for symbol, mod in modules.items():
            target = (path.parent / mod["detail"]["path"]).resolve()
            declared = parse(target).get("parameters", {})
            config = mod["config"]
            while "loop_type" in config or ("condition" in config and "config" in config and "params" not in config):
                config = config["config"]
            passed = set(config.get("params", {}))
            unknown = passed - set(declared)
            assert not unknown, f"{path.name}: module {symbol} passes unknown parameters {sorted(unknown)}"
            required = {n for n, p in declared.items() if p.get("default") is None}
            missing = required - passed
            assert not missing, f"{path.name}: module {symbol} lacks parameters {sorted(missing)}"
            outputs = set(parse(target).get("outputs", {}))
            text = path.read_text()
            for m in re.finditer(rf"\b{symbol}(?:\[[^\]]*\])?\.outputs\.(\w+)", text):
                assert m.group(1) in outputs, f"{path.name}: {symbol}.outputs.{m.group(1)} is not an output of {target.name}"


def check_skips_documented() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in sorted((INFRA / "modules").glob("*.bicep")) + [INFRA / "main.bicep"]:
        for m in re.finditer(r"checkov:skip=([A-Z_0-9]+)", path.read_text()):
            row = re.search(rf"^\| {m.group(1)} \| `{path.name}`", readme, re.M)
            assert row, f"{m.group(1)} skipped in {path.name} but not listed in infra/README.md"


def check_event_types() -> None:
    """The subscriptions let through every event type the core defines (a new type would
    otherwise be dropped by Event Grid's filter without anyone noticing)."""
    events = (ROOT / "crates" / "core" / "src" / "events.rs").read_text()
    defined = set(re.findall(r'^pub const [A-Z_]+: &str = "([a-z][A-Za-z]+)";', events, re.M))
    assert defined, "found no event type constants in crates/core/src/events.rs"
    subs = parse(INFRA / "modules" / "event-subscriptions.bicep")["resources"]["subscriptions"]["config"]["config"]
    included = set(subs["properties"]["filter"]["includedEventTypes"])
    assert included == defined, f"subscriptions filter {sorted(included)}, the core defines {sorted(defined)}"


def check_parameters_file() -> None:
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = parse(INFRA / "main.bicep")["parameters"]
    unknown = set(params) - set(declared)
    assert not unknown, f"main.parameters.json sets undeclared parameters {sorted(unknown)}"
    secure = {n for n, p in declared.items() if any(d.get("type") == "secure" for d in p["decorators"])}
    assert secure, "main.bicep declares no secure parameter (fleetKey, eventGridKey expected)"
    assert not (secure & set(params)), f"main.parameters.json holds secrets {sorted(secure & set(params))}"
    lib = (SCRIPTS / "lib.sh").read_text()

    def default(var: str) -> str:
        m = re.search(rf'^readonly {var}="([^"]*)"', lib, re.M)
        assert m, f"lib.sh has no {var}"
        return m.group(1)

    assert params["prefix"]["value"] == default("DEFAULT_PREFIX"), "default prefix differs between lib.sh and main.parameters.json"
    assert params["regions"]["value"] == default("DEFAULT_REGIONS").split(","), "default regions differ"
    assert declared["regions"]["default"] == params["regions"]["value"], "main.bicep's default regions differ"
    assert params["staticSiteLocation"]["value"] == default("DEFAULT_STATIC_SITE_LOCATION"), "default Static Web App region differs"


def check_with_note(name: str, fn: Callable[[], str | None]) -> None:
    """Like check, with the rule's note (if any) after the name."""
    note: list[str] = []
    check(name, lambda: note.append(fn() or ""))
    if note and note[0]:
        print(f"  note - {name}: {note[0]}", flush=True)


def expect_failure(rule: Callable[[Path], Any], folder: Path, why: str) -> None:
    """The rule must refuse the templates in folder, for the reason it exists (proof that it can
    fail, and not for some other reason)."""
    try:
        rule(folder)
    except AssertionError as err:
        assert why in str(err), f"{rule.__name__} refused {folder.name} for another reason: {err}"
        return
    raise AssertionError(f"{rule.__name__} accepted {folder.relative_to(ROOT)}, which it exists to refuse")


# Each rule with the fixture it must refuse (infra/tests/fixtures/: `refused` is infra/ before
# issue 14 plus a subscription field the emulator does not read; `refused-sharded` shards the
# transactional collections).
REFUSED_BY = [
    ("unsharded collections in a shared-throughput database", azure_rules.rule_shared_throughput_needs_shard_key, "refused", "should have a partition key"),
    ("the linked backend on Flex Consumption", azure_rules.rule_linked_backend_plan, "refused", "'FlexConsumption'"),
    ("a subscription field the emulator ignores", azure_rules.rule_subscription_fields_accepted, "refused", "['expirationTimeUtc']"),
    ("transactional collections sharded", azure_rules.rule_transactions_in_unsharded_collections, "refused-sharded", "need unsharded collections"),
]


def main() -> int:
    bicep_files = [INFRA / "main.bicep", *sorted((INFRA / "modules").glob("*.bicep"))]
    for path in bicep_files:
        check(f"bicep parses: {path.relative_to(ROOT)}", lambda path=path: parse(path))
    if failed:
        print(f"RESULT {passed} {failed}")
        return 1

    def modules_exist() -> None:
        for name, mod in parse(INFRA / "main.bicep")["modules"].items():
            target = INFRA / mod["detail"]["path"]
            assert target.is_file(), f"module {name} points to missing {target}"

    check("main.bicep's modules exist", modules_exist)
    for app in ("worker", "api"):
        check(f"functions-host/{app} has functions", lambda app=app: (function_names(app) or (_ for _ in ()).throw(AssertionError("none"))))
    check("worker app settings cover function.json and the architecture", check_worker_settings)
    check("templates keep the architecture's rules", check_templates_rules)
    check("main.parameters.json: no secrets, same defaults as the scripts", check_parameters_file)
    check("modules get the parameters they declare and have the outputs used", check_module_wiring)
    check("every skipped checkov check is listed in infra/README.md", check_skips_documented)
    check("subscriptions pass every event type of crates/core", check_event_types)
    check("deploy --dry-run matches templates and functions-host (defaults)", lambda: check_deploy_dry_run(None, ["westeurope", "northeurope", "swedencentral"]))
    check("deploy --dry-run matches templates and functions-host (other prefix and regions)", lambda: check_deploy_dry_run("shop-demo2", ["northeurope", "eastus2"]))
    check("region --dry-run stops and starts each region's app", check_region_dry_run)
    check("status --dry-run probes every app and the topic", check_status_dry_run)
    check("teardown --dry-run deletes the resource group", check_teardown_dry_run)
    bad = [
        ("deploy", "--dry-run", "--regions", "westeurope,atlantis"),
        ("deploy", "--dry-run", "--prefix", "Saldo"),
        ("deploy", "--dry-run", "--prefix", "ab"),
        ("deploy", "--dry-run", "--prefix", "much-too-long-prefix"),
        ("deploy", "--dry-run", "--prefix", "bad--name"),
        ("deploy", "--dry-run", "--regions", "westeurope,westeurope"),
        ("deploy", "--dry-run", "--regions", "westeurope,northeurope,swedencentral,uksouth,francecentral,eastus"),
        ("deploy", "--dry-run", "--static-site-location", "northeurope"),
        ("deploy", "--dry-run", "--what"),
        ("region", "--dry-run", "stop", "eastus"),
        ("region", "--dry-run", "pause", "westeurope"),
        ("region", "--dry-run", "stop"),
        ("status", "--dry-run", "--prefix", "-x-"),
        ("teardown",),
    ]
    for args in bad:
        check(f"refused in one line: {' '.join(args)}", lambda args=args: check_bad_input(*args))
    # Deployment-time rules of Azure (issue 14): pass on infra/, fail on the refused fixtures.
    rules = [
        ("shared-throughput collections have a shard key", azure_rules.rule_shared_throughput_needs_shard_key),
        ("transactions run in unsharded collections; every collection the code opens is declared", azure_rules.rule_transactions_in_unsharded_collections),
        ("the Static Web App's linked backend is on a plan it documents", azure_rules.rule_linked_backend_plan),
        ("every subscription field is one the emulator's parser reads", azure_rules.rule_subscription_fields_accepted),
    ]
    for name, rule in rules:
        check_with_note(name, lambda rule=rule: rule(INFRA))
    for name, rule, fixture, why in REFUSED_BY:
        check(
            f"refused fixture fails: {name}",
            lambda rule=rule, fixture=fixture, why=why: expect_failure(rule, INFRA / "tests" / "fixtures" / fixture, why),
        )
    check("deploy with fake tools runs exactly what its dry run prints", check_real_run_matches_dry_run)
    check("deploy retries the subscriptions a bounded number of times and converges", check_subscriptions_retried)
    check("deploy stops when the API answers a request that bypassed the Static Web App", check_api_lock_enforced)
    check("a redeploy keeps the host keys the workers share; --rotate-keys and a first deploy make new ones", check_keys_kept_on_redeploy)
    check("deploy refuses missing tools, a logged-out CLI and non-Flex regions before changing anything", check_prerequisites)
    print(f"RESULT {passed} {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
