"""Rules Azure enforces only at deployment time, checked offline (issue 14, item 6).

Each rule takes the folder of a template set (main.bicep + modules/) so that it can be run both on
infra/ (must pass) and on infra/tests/fixtures/refused/ (templates that reintroduce a problem this
file exists to catch: must fail). check_infra.py runs both.

1. Cosmos DB for MongoDB refuses a collection without a shard key in a database with shared
   throughput ("Shared throughput collection should have a partition key"), and runs
   multi-document transactions only inside one unsharded collection: so every collection in a
   shared-throughput database is either sharded or has throughput of its own, and the collections
   the store runs transactions in are unsharded (hence dedicated). Every collection the code opens
   is declared (a collection created implicitly by a first write would be unsharded, in the shared
   database: refused).
2. Static Web Apps documents Consumption, Premium and Dedicated as the plans of a linked
   ("bring your own") Functions backend, and on Flex Consumption App Service authentication (the
   mechanism that locks a linked backend to its Static Web App) is not enforced. So the linked
   backend's plan must be one of the documented ones.
3. The local Event Grid emulator must accept the subscription body infra/ deploys: every field of
   event-subscriptions.bicep's `properties` is one the emulator's parser
   (crates/eventgrid/src/subscription.rs) reads, so the local runs exercise what Azure is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]

_parsed: dict[Path, dict[str, Any]] = {}


def parse(path: Path) -> dict[str, Any]:
    path = path.resolve()
    if path not in _parsed:
        _parsed[path] = BicepParser().parse(file_path=path)
    return _parsed[path]


def bicep_files(folder: Path) -> list[Path]:
    return [folder / "main.bicep", *sorted((folder / "modules").glob("*.bicep"))]


def unwrap(config: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module declaration, inside any `for` or `if`."""
    while isinstance(config, dict) and ("loop_type" in config or ("condition" in config and "config" in config)):
        config = config["config"]
    return config


# --------------------------------------------------------------------------------------------
# 1. Cosmos DB collections
# --------------------------------------------------------------------------------------------
COLLECTION_TYPE = "Microsoft.DocumentDB/databaseAccounts/mongodbDatabases/collections"
DATABASE_TYPE = "Microsoft.DocumentDB/databaseAccounts/mongodbDatabases"

# Collections the store runs multi-document transactions in, so they must be unsharded:
# - warehouse: products and "applied" markers change together (crates/store/src/mongo/execute.rs);
# - ledger_<node>: a node's sequence numbers are allocated in the ledger collection itself, so the
#   feed design may allocate them in a transaction with the entry (issue 11); unsharded keeps
#   that open whatever the fleet settles on.
TRANSACTIONAL = {"warehouse", "ledger_<region>"}


def eval_names(tree: dict[str, Any], expr: Any) -> list[str]:
    """Collection names a Bicep array expression stands for, with `<region>` for a loop item."""
    variables = tree.get("variables", {})
    if isinstance(expr, list):
        out: list[str] = []
        for e in expr:
            out += eval_names(tree, e) if not isinstance(e, str) else [e]
        return out
    if isinstance(expr, str):
        assert expr in variables, f"cannot evaluate '{expr}' offline (not a variable of the template)"
        return eval_names(tree, variables[expr]["value"])
    if isinstance(expr, dict) and "loop_type" in expr:
        item = expr["loop_type"]["detail"]["item_name"]
        config = expr["config"]
        assert isinstance(config, str), f"loop body {config!r} is not a string template"
        return [config.replace("${" + item + "}", "<region>")]
    if isinstance(expr, dict) and "function" in expr and expr["function"]["type"] == "concat":
        out = []
        for arg in expr["function"]["parameters"].values():
            out += eval_names(tree, arg)
        return out
    raise AssertionError(f"cannot evaluate {expr!r} offline")


def has_throughput(options: Any) -> bool:
    return isinstance(options, dict) and ("autoscaleSettings" in options or "throughput" in options)


def collections(folder: Path) -> list[dict[str, Any]]:
    """Every collection declaration: its names, whether it is sharded, has dedicated throughput,
    and whether its database shares throughput."""
    found = []
    for path in bicep_files(folder):
        tree = parse(path)
        resources = tree.get("resources", {})
        for symbol, res in resources.items():
            if res["type"] != COLLECTION_TYPE:
                continue
            outer = res["config"]
            body = unwrap(outer)
            if "loop_type" in outer:
                detail = outer["loop_type"]["detail"]
                names = eval_names(tree, detail["array_name"])
            else:
                names = [body["name"]]
            parent = resources.get(body.get("parent", ""))
            assert parent and parent["type"] == DATABASE_TYPE, f"{path.name}: collection {symbol} has no database parent in the file"
            db_options = unwrap(parent["config"])["properties"].get("options")
            props = body["properties"]
            found.append(
                {
                    "where": f"{path.name}: {symbol}",
                    "names": names,
                    "sharded": bool(props["resource"].get("shardKey")),
                    "dedicated": has_throughput(props.get("options")),
                    "shared_database": has_throughput(db_options),
                }
            )
    assert found, "no Cosmos DB collection is declared"
    return found


def used_collections(unresolved: list[str] | None = None) -> set[str]:
    """The collections the code opens, `<region>` standing for the node name. Arguments that
    cannot be read offline go to `unresolved` (reported, never silently dropped)."""
    names = set()
    opened = re.compile(r'\.collection(?:_with_options)?(?:::<[^>]*>)?\(\s*&?(format!\([^)]*\)|"[^"]*"|[\w.:]+)')
    for path in sorted((ROOT / "crates").glob("*/src/**/*.rs")):
        if path.parts[-3] == "eventgrid":
            continue  # the emulator's own files, not the database
        text = path.read_text()
        constants = dict(re.findall(r'const (\w+): &str = "(\w+)";', text))
        for arg in opened.findall(text):
            arg = arg.strip()
            literal = re.fullmatch(r'"(\w+)"', arg)
            per_node = re.fullmatch(r'format!\("(\w+?)_\{[\w.]*\}"(?:,\s*[\w.]+)?\)', arg)
            if literal:
                names.add(literal.group(1))
            elif per_node:
                names.add(f"{per_node.group(1)}_<region>")
            elif arg.split("::")[-1] in constants:
                names.add(constants[arg.split("::")[-1]])
            elif unresolved is not None:
                unresolved.append(f"{path.relative_to(ROOT)}: `{arg}`")
            else:
                raise AssertionError(f"{path.relative_to(ROOT)}: cannot tell which collection `{arg}` opens offline")
    assert names, "found no collection names in crates/"
    return names


def rule_shared_throughput_needs_shard_key(folder: Path) -> None:
    problems = []
    for c in collections(folder):
        if c["shared_database"] and not c["dedicated"] and not c["sharded"]:
            problems.append(
                f"{c['where']} ({', '.join(c['names'])}): unsharded in a shared-throughput database "
                "(Cosmos DB refuses it: 'Shared throughput collection should have a partition key')"
            )
        if not c["shared_database"] and not c["dedicated"]:
            problems.append(f"{c['where']}: no throughput at all (neither its own nor its database's)")
    assert not problems, "; ".join(problems)


def rule_transactions_in_unsharded_collections(folder: Path) -> str:
    declared: dict[str, dict[str, Any]] = {}
    for c in collections(folder):
        for n in c["names"]:
            assert n not in declared, f"collection {n} declared twice ({declared[n]['where']}, {c['where']})"
            declared[n] = c
    unresolved: list[str] = []
    missing = used_collections(unresolved) - set(declared)
    assert not missing, f"the code opens collections the templates do not declare: {sorted(missing)}"
    sharded = sorted(n for n in TRANSACTIONAL if declared.get(n, {}).get("sharded"))
    assert not sharded, f"transactions need unsharded collections, but {sharded} are sharded"
    undeclared = sorted(TRANSACTIONAL - set(declared))
    assert not undeclared, f"transactional collections not declared: {undeclared}"
    return f"collections opened by a name this check cannot read (declare them by hand): {unresolved}" if unresolved else ""


# --------------------------------------------------------------------------------------------
# 2. The Static Web App's linked backend
# --------------------------------------------------------------------------------------------
# Plans Static Web Apps documents for a linked Functions app (static-web-apps/apis-functions:
# Consumption, Premium, Dedicated), as sku.tier values of Microsoft.Web/serverfarms.
LINKABLE_TIERS = {
    "Dynamic": "Consumption",
    "ElasticPremium": "Premium",
    "Basic": "Dedicated",
    "Standard": "Dedicated",
    "Premium": "Dedicated",
    "PremiumV2": "Dedicated",
    "PremiumV3": "Dedicated",
    "PremiumMV3": "Dedicated",
    "Isolated": "Dedicated",
    "IsolatedV2": "Dedicated",
}


def accessor(expr: Any) -> list[str]:
    """`a.b.c` as ['a', 'b', 'c']."""
    if isinstance(expr, str):
        assert re.fullmatch(r"[A-Za-z_]\w*", expr), f"cannot follow {expr!r} offline"
        return [expr]
    if isinstance(expr, dict) and expr.get("operator", {}).get("type") == "property_accessor":
        ops = expr["operator"]["operands"]
        return accessor(ops["operand_1"]) + accessor(ops["operand_2"])
    raise AssertionError(f"cannot follow {expr!r} offline")


Frame = tuple[Path, dict[str, Any], "Frame | None"]


def resolve_resource(path: Path, expr: Any, binding: dict[str, Any], caller: "tuple[Path, dict[str, Any], Any] | None", depth: int = 0) -> tuple[Path, str, dict[str, Any], Any]:
    """Follows `<module>.outputs.<name>`, `<param>` and `<resource>.id` across files to the
    resource whose id `expr` is. Returns (file, resource symbol, that file's parameter binding,
    its caller frame)."""
    assert depth < 20, "resource id chain too deep"
    tree = parse(path)
    chain = accessor(expr)
    head = chain[0]
    if len(chain) == 1 and head in tree.get("parameters", {}):
        assert head in binding and caller is not None, f"{path.name}: parameter {head} is not bound"
        cpath, cbinding, ccaller = caller
        return resolve_resource(cpath, binding[head], cbinding, ccaller, depth + 1)
    if len(chain) == 3 and chain[1] == "outputs" and head in tree.get("modules", {}):
        mod = tree["modules"][head]
        target = (path.parent / mod["detail"]["path"]).resolve()
        params = unwrap(mod["config"]).get("params", {})
        out = parse(target)["outputs"][chain[2]]["value"]
        return resolve_resource(target, out, params, (path, binding, caller), depth + 1)
    if len(chain) == 2 and chain[1] == "id" and head in tree.get("resources", {}):
        return path, head, binding, caller
    raise AssertionError(f"{path.name}: cannot follow {'.'.join(chain)} to a resource offline")


def linked_backend_plan(folder: Path) -> tuple[str, str]:
    """(app, plan tier) of the Static Web App's linked backend."""
    main = folder / "main.bicep"
    tree = parse(main)
    for mod_symbol, mod in tree.get("modules", {}).items():
        target = (main.parent / mod["detail"]["path"]).resolve()
        for res_symbol, res in parse(target).get("resources", {}).items():
            if res["type"] != "Microsoft.Web/staticSites/linkedBackends":
                continue
            backend_id = unwrap(res["config"])["properties"]["backendResourceId"]
            params = unwrap(mod["config"]).get("params", {})
            spath, site, sbinding, scaller = resolve_resource(target, backend_id, params, (main, {}, None))
            site_res = parse(spath)["resources"][site]
            assert site_res["type"] == "Microsoft.Web/sites", f"the linked backend is a {site_res['type']}"
            farm = unwrap(site_res["config"])["properties"]["serverFarmId"]
            ppath, plan, _, _ = resolve_resource(spath, farm, sbinding, scaller)
            plan_res = parse(ppath)["resources"][plan]
            assert plan_res["type"] == "Microsoft.Web/serverfarms", f"serverFarmId leads to a {plan_res['type']}"
            sku = unwrap(plan_res["config"])["sku"]
            return f"{spath.name}: {site}", sku.get("tier", "")
    raise AssertionError("no Microsoft.Web/staticSites/linkedBackends resource found")


def rule_linked_backend_plan(folder: Path) -> None:
    where, tier = linked_backend_plan(folder)
    assert tier in LINKABLE_TIERS, (
        f"the Static Web App's linked backend ({where}) is on plan tier {tier!r}; Static Web Apps "
        f"documents Consumption, Premium and Dedicated ({', '.join(sorted(LINKABLE_TIERS))}), and "
        "on Flex Consumption the lock to the Static Web App (App Service authentication) is not enforced"
    )


# --------------------------------------------------------------------------------------------
# 3. Subscription fields the emulator accepts
# --------------------------------------------------------------------------------------------
SUBSCRIPTION_RS = ROOT / "crates" / "eventgrid" / "src" / "subscription.rs"

# Fields infra/ deploys that the emulator's parser does not read yet, each with who adds it.
# A field listed here is reported (never silently passed); once the parser reads it, the check
# says so, and the entry should go.
PENDING: dict[str, str] = {}


def camel(snake: str) -> str:
    first, *rest = snake.split("_")
    return first + "".join(w[:1].upper() + w[1:] for w in rest)


def rust_structs(text: str) -> dict[str, dict[str, str]]:
    """serde structs of a Rust file: name -> {JSON field name: Rust type}."""
    structs: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?struct (\w+)\s*\{(.*?)\n\}", text, re.S):
        attrs, name, body = m.groups()
        camel_case = 'rename_all = "camelCase"' in attrs
        fields: dict[str, str] = {}
        rename = None
        aliases: list[str] = []
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("//"):
                continue
            if line.startswith("#["):
                r = re.search(r'\brename\s*=\s*"([^"]+)"', line)
                rename = r.group(1) if r else rename
                aliases += re.findall(r'\balias\s*=\s*"([^"]+)"', line)
                continue
            f = re.match(r"(?:pub(?:\([^)]*\))?\s+)?(?:r#)?(\w+)\s*:\s*(.+?),?$", line)
            if f:
                rust_name, ty = f.groups()
                for json_name in [rename or (camel(rust_name) if camel_case else rust_name), *aliases]:
                    fields[json_name] = ty
                rename, aliases = None, []
        structs[name] = fields
    return structs


def inner_type(ty: str) -> str:
    while True:
        m = re.fullmatch(r"(?:Option|Vec|Box)<(.+)>", ty.strip())
        if not m:
            return ty.strip()
        ty = m.group(1)


def unknown_fields(value: Any, struct: str, structs: dict[str, dict[str, str]], path: str) -> list[str]:
    if struct not in structs or not isinstance(value, dict):
        return []
    out = []
    for key, v in value.items():
        here = f"{path}.{key}" if path else key
        if key not in structs[struct]:
            out.append(here)
            continue
        ty = inner_type(structs[struct][key])
        items = v if isinstance(v, list) else [v]
        for item in items:
            out += unknown_fields(item, ty, structs, here)
    return out


def subscription_properties(folder: Path) -> dict[str, Any]:
    for path in bicep_files(folder):
        for res in parse(path).get("resources", {}).values():
            if res["type"].lower().endswith("/eventsubscriptions") and not res.get("existing"):
                return unwrap(res["config"])["properties"]
    raise AssertionError("no event subscription is declared")


def refused_fields(text: str) -> list[str]:
    """Fields the emulator parses only to refuse them (its `not_implemented` list)."""
    m = re.search(r"let not_implemented = \[(.*?)\n\s*\];", text, re.S)
    assert m, f"{SUBSCRIPTION_RS.relative_to(ROOT)} has no `not_implemented` list: the check must learn its new shape"
    return re.findall(r'\(\s*"([\w.]+)"\s*,', m.group(1))


def field_paths(value: Any, path: str = "") -> list[str]:
    if not isinstance(value, dict):
        return []
    out = []
    for key, v in value.items():
        here = f"{path}.{key}" if path else key
        out.append(here)
        for item in v if isinstance(v, list) else [v]:
            out += field_paths(item, here)
    return out


def rule_subscription_fields_accepted(folder: Path, pending: dict[str, str] = PENDING) -> str:
    text = SUBSCRIPTION_RS.read_text()
    refused_by_name = sorted(set(field_paths(subscription_properties(folder))) & set(refused_fields(text)))
    assert not refused_by_name, (
        f"subscription fields the emulator refuses as not implemented (a local run could not create "
        f"the subscription infra/ deploys): {refused_by_name}"
    )
    structs = rust_structs(text)
    assert "Properties" in structs, f"{SUBSCRIPTION_RS.relative_to(ROOT)} has no `struct Properties`: the check must learn its new shape"
    unknown = unknown_fields(subscription_properties(folder), "Properties", structs, "")
    # A pending field excuses only itself: once the parser reads it, its sub-fields count.
    waiting = sorted(u for u in unknown if u in pending)
    refused = sorted(u for u in unknown if u not in pending)
    assert not refused, (
        f"subscription fields the emulator's parser does not read (the local runs would silently ignore "
        f"them): {refused}"
    )
    notes = []
    if waiting:
        notes.append("pending in the emulator: " + ", ".join(f"{t} ({pending[t]})" for t in waiting))
    accepted_now = sorted(p for p in set(pending) - set(waiting) if p in subscription_properties(folder))
    if accepted_now:
        notes.append(f"now read by the emulator, drop from PENDING: {accepted_now}")
    return "; ".join(notes)
