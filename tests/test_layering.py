"""The layout's directions, checked on every import statement, lazy ones inside functions included.

The round rules (`protocol/rules/`) are pure: they import nothing of the chain client, keys,
runtime, p2p, the command line, or any role. `protocol/` as a whole imports no role. `node/` and
`coordinator/` never import each other, and neither imports the devnet. The README's layout map
names every package of the tree, and nothing that is not there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("protocol", "node", "coordinator", "devnet")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every `thinkmesh.*` module an import statement in `path` names (relative to the package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, name.removeprefix("thinkmesh.")) for name in names if name.startswith("thinkmesh.")]
    return found


def _sources(layer: str) -> list[Path]:
    return sorted(p for p in (REPO / layer).rglob("*.py") if "__pycache__" not in p.parts)


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{line} imports thinkmesh.{name}"
        for path in _sources(layer)
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("protocol/rules", ("protocol.chain", "protocol.keys", "protocol.runtime", "protocol.p2p", "protocol.cli",
                        "node", "coordinator", "devnet")),
    ("protocol", ("node", "coordinator", "devnet")),
    ("node", ("coordinator", "devnet")),
    ("coordinator", ("node", "devnet")),
])
def test_layer_imports_only_downward(layer, forbidden):
    assert _violations(layer, forbidden) == []


def test_the_checker_sees_lazy_imports(tmp_path, monkeypatch):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from thinkmesh.coordinator.work import verifier\n    import thinkmesh.node.ops\n")
    assert [name for _, name in _imports(module)] == [
        "coordinator.work", "coordinator.work.verifier", "node.ops",
    ]


def _packages() -> set[str]:
    """Every package directory under the role layers, as a path like `protocol/rules`."""
    return {
        str(init.parent.relative_to(REPO))
        for layer in ("protocol", "node", "coordinator")
        for init in (REPO / layer).rglob("__init__.py")
        if init.parent != REPO / layer
    }


def _readme_map() -> set[str]:
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Layout", 1)[1].split("```", 2)[1]
    packages, top = set(), None
    for line in block.splitlines():
        entry = re.match(r"^( *)([\w]+)/", line)
        if not entry:
            continue
        indent, name = entry.groups()
        if not indent:
            top = name
        elif top in ("protocol", "node", "coordinator"):
            packages.add(f"{top}/{name}")
    return packages


def test_readme_layout_names_every_package():
    assert _readme_map() == _packages()


def test_pyproject_ships_every_package_and_its_data():
    """A package missing from `packages` works from a checkout and breaks an install."""
    import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        "thinkmesh." + ".".join(init.parent.relative_to(REPO).parts)
        for layer in LAYERS
        for init in (REPO / layer).rglob("__init__.py")
    }
    assert set(setup["packages"]) - {"thinkmesh"} == on_disk
    for package, patterns in setup["package-data"].items():
        directory = REPO.joinpath(*package.split(".")[1:])
        assert all(list(directory.glob(pattern)) for pattern in patterns), package
