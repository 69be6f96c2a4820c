"""The package's layout as the README's table draws it: each module's size and what of ours it imports.

    python -m bench.layout [PACKAGE_DIR]        # default: imgsync/ beside this folder

Prints one line per module: lines of code (non-blank, non-comment), then the modules of the package it imports
(``->``; inside a package, its own modules by name). Also checks the rules of the layout: nothing outside
``cli/`` imports it; ``bitrix``, ``localfs``, ``store`` and ``s3`` (every module of each package) import nothing
of ours but errors, models, redact and their own package; the emulator imports nothing of ours but errors and
models; ``sync.plan`` (the skip rule, pure) imports neither the portal nor the store; only ``store/*`` holds SQL
on the ``images`` table; only ``bitrix/*`` catches ``requests`` errors, and only ``bitrix/errors.py`` translates
them (names ``requests.exceptions``); only ``s3/*`` (and the emulator's S3 server) catches botocore's, boto3's or
s3transfer's. Exit 1 when a rule is broken, so it can
run in CI (``tests/test_layout.py`` does, and also checks that the README's table names every module).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SEPARATE = {"bitrix", "localfs", "store", "s3"}
# What the edge modules may import of ours (STYLE.md's table; redact is the one redaction helper).
LEAF_IMPORTS = {"__init__", "errors", "models", "redact"}
SQL_ON_IMAGES = re.compile(r"\b(from|into|update)\s+images\b", re.IGNORECASE)
EMULATOR_IMPORTS = {"errors", "models"}
# The plan is pure: it decides from the portal's answer and the stored row, it asks neither (STYLE.md).
PURE = {"sync.plan": {"bitrix", "catalog", "store", "s3", "runner"}}
# The one translation point of each library's errors (STYLE.md: errors are translated at the edge, once).
# An owner that is a package (``bitrix``) is every module in it; its translation table is in ``TRANSLATION``.
TRANSLATES = {
    "bitrix": re.compile(r"^\s*except\b.*\brequests\.|\brequests\.exceptions\b", re.MULTILINE),
    "s3": re.compile(
        r"^\s*from (botocore|boto3|s3transfer)(\.\w+)*\s+import\s+exceptions\b|"
        r"^\s*from (botocore|boto3|s3transfer)\.exceptions import",
        re.MULTILINE,
    ),
}
# The one module of a package that turns the library's exception classes into ours.
TRANSLATION = {"bitrix.errors": re.compile(r"\brequests\.exceptions\b")}
PACKAGES = {
    "bitrix",
    "s3",
    "store",
}  # packages whose modules obey their package's rules and show their arrows inside it


def owner_of(name: str) -> str:
    """The module or package a rule is written for: ``bitrix`` for ``bitrix.auth``, else the module."""
    top = name.split(".")[0]
    return top if top in PACKAGES else name


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def ours(node: ast.AST, package_parts: list[str], package: str) -> set[str]:
    """The package's modules that an import statement names, relative to the package root."""
    found: set[str] = set()
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package_parts[: len(package_parts) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found |= {".".join([*base, a.name]) for a in node.names}
        elif node.module and node.module.startswith(package + "."):
            found.add(node.module[len(package) + 1 :])
    elif isinstance(node, ast.Import):
        found |= {a.name[len(package) + 1 :] for a in node.names if a.name.startswith(package + ".")}
    return {"__init__" if f in ("__version__", "") else f for f in found}


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "imgsync"
    package = root.name
    modules: dict[str, tuple[int, set[str], str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        text = path.read_text()
        tree = ast.parse(text)
        loc = sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
        parts = [] if name == "__init__" else name.split(".")
        package_parts = parts if path.name == "__init__.py" else parts[:-1]
        imports: set[str] = set()
        for node in ast.walk(tree):
            imports |= ours(node, package_parts, package)
        inside = owner_of(name) if owner_of(name) in PACKAGES else None
        top = {
            i if i.startswith("emulator") or (inside and i.split(".")[0] == inside) else i.split(".")[0]
            for i in imports
        } - {name}
        modules[name] = (loc, top, text)
    broken: list[str] = []
    for name, (loc, imports, text) in modules.items():
        arrows = ", ".join(sorted(imports)) or "-"
        print(f"{name:<22} {loc:>5}  -> {arrows}")
        if "cli" in imports and name != "__main__" and name.split(".")[0] != "cli":  # cli/ is one package
            broken.append(f"{name} imports cli")
        if name in PURE and imports & PURE[name]:
            broken.append(f"{name} imports {sorted(imports & PURE[name])}")
        outside_own = {i for i in imports if i.split(".")[0] != owner_of(name)}
        if owner_of(name) in SEPARATE and outside_own - LEAF_IMPORTS:
            broken.append(f"{name} imports {sorted(outside_own - LEAF_IMPORTS)}")
        if owner_of(name) != "store" and not name.startswith("emulator") and SQL_ON_IMAGES.search(text):
            broken.append(f"{name} holds SQL on the images table")
        if name.startswith("emulator"):
            outside = {i for i in imports if not i.startswith("emulator")} - EMULATOR_IMPORTS
            if outside:
                broken.append(f"{name} imports {sorted(outside)}")
        for owner, pattern in TRANSLATES.items():
            if owner_of(name) != owner and name != "emulator.s3" and pattern.search(text):
                broken.append(f"{name} catches the errors that only {owner} translates")
        for translator, pattern in TRANSLATION.items():
            if owner_of(name) == owner_of(translator) and name != translator and pattern.search(text):
                broken.append(f"{name} translates the errors that only {translator} translates")
    print(f"{'total':<22} {sum(v[0] for v in modules.values()):>5}")
    for line in broken:
        print(f"rule broken: {line}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
