"""The package's map (ARCHITECTURE.md) holds: imports go one way between parts, and no module shadows the
standard library. A new import against the grain fails here, not in a reader's head."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchsent"

# Lower tiers never import higher ones (a part may import its own tier). The longest matching prefix decides.
TIERS = {
    "batchsent.errors": 0,
    "batchsent.data": 1,
    "batchsent.state": 1,
    "batchsent.settings": 2,
    "batchsent.runtime": 2,
    "batchsent.model": 3,
    "batchsent.cache": 4,
    "batchsent.report": 4,
    "batchsent.engine": 5,  # the contract: checks, fingerprint, record, summary, manifest
    "batchsent.engine.local": 6,
    "batchsent.engine.ray": 6,
    "batchsent.engine.runner": 7,
    "batchsent.api": 8,
    "batchsent": 8,
    "batchsent.cli": 9,
    "batchsent.__main__": 10,
}
# `from batchsent import __version__`: set first thing in the package's __init__, before it imports anything.
ROOT_NAMES_READ_ANYWHERE = {"__version__"}


def tier(module: str) -> int:
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in TIERS:
            return TIERS[prefix]
    raise AssertionError(f"{module}: in no tier of the map")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[dotted.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every ``from batchsent... import`` in a file, at any depth, TYPE_CHECKING too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; the package imports absolutely")
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "batchsent":
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.startswith("batchsent")]
    return found


def test_every_import_goes_down_the_map():
    against = []
    known = modules()
    for module, path in known.items():
        for line, target, names in imports_of(path):
            targets = [target]
            if target == "batchsent":  # `from batchsent import x`: a submodule, or a name of the package itself
                targets = [f"batchsent.{name}" for name in names if name not in ROOT_NAMES_READ_ANYWHERE]
                targets = [name if name in known else "batchsent" for name in targets]
            for imported in targets:
                if tier(imported) > tier(module):
                    against.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported}")
    assert not against, "imports against the map (ARCHITECTURE.md):\n" + "\n".join(against)


def test_the_map_names_every_part():
    for module in modules():
        tier(module)


def test_no_module_shadows_the_standard_library():
    shadowing = sorted(
        module for module in modules() if module.rsplit(".", 1)[-1] in sys.stdlib_module_names and "." in module
    )
    assert not shadowing, f"named like standard-library modules: {shadowing}"
