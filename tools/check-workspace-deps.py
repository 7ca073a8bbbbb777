#!/usr/bin/env python3
"""Fails when the workspace declares a dependency that no member uses.

`cargo machete` finds a crate's unused dependencies, but not a `[workspace.dependencies]`
entry that no member refers to: such an entry pins a version nobody builds (an unmaintained
crate can linger there unnoticed). Run from the repository root; exit 1 names each one.
"""
import glob
import sys
import tomllib


def load(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


root = load("Cargo.toml")
declared = set(root["workspace"]["dependencies"])
members = []
for pattern in root["workspace"]["members"]:
    members += glob.glob(f"{pattern}/Cargo.toml")

used = set()
for path in members:
    manifest = load(path)
    tables = [manifest.get(k, {}) for k in ("dependencies", "dev-dependencies", "build-dependencies")]
    for target in manifest.get("target", {}).values():
        tables += [target.get(k, {}) for k in ("dependencies", "dev-dependencies", "build-dependencies")]
    for table in tables:
        for name, spec in table.items():
            if isinstance(spec, dict) and spec.get("workspace"):
                used.add(name)

unused = sorted(declared - used)
if unused:
    for name in unused:
        print(f"Cargo.toml: [workspace.dependencies] {name} is used by no member; remove it")
    sys.exit(1)
print(f"workspace dependencies: all {len(declared)} used by a member ({len(members)} members)")
