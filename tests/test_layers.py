"""The floors of docs/architecture.md hold: no module of sparseg imports from a higher floor."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "sparseg"


def floors() -> dict[str, int]:
    """``group -> floor`` from the ```floors block of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```floors\n(.*?)```", text, re.DOTALL).group(1)
    table = {}
    for line in block.splitlines():
        number, _, groups = line.partition(":")
        for group in groups.split():
            table[group] = int(number.split()[0])
    return table


def group(module: str, table: dict[str, int]) -> str:
    """The floor group of a dotted module name: ``engine.trainer`` or ``data`` (longest listed prefix)."""
    parts = module.split(".")[1:] or ["__init__"]
    for size in (2, 1):
        name = ".".join(parts[:size])
        if name in table:
            return name
    return ".".join(parts[:2])


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every sparseg import in a file (functions included); ``from sparseg import x`` names
    module ``sparseg.x`` when that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*full.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*full.split("."))).is_dir()
                found.append((node.lineno, full if is_module else node.module))
    return [(line, name) for line, name in found if name == "sparseg" or name.startswith("sparseg.")]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def upward_imports() -> list[str]:
    table = floors()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = group(module_name(path), table)
        if importer not in table:
            problems.append(f"{path.relative_to(ROOT)}: '{importer}' is on no floor of docs/architecture.md")
            continue
        for line, name in imports(path):
            target = group(name, table)
            if target not in table:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {name}, on no floor")
            elif table[target] > table[importer]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {importer} (floor {table[importer]}) imports "
                                f"{name} (floor {table[target]})")
    return problems


def test_no_import_runs_upward():
    assert upward_imports() == []


def test_an_upward_import_is_found(monkeypatch):
    """The walk sees imports inside functions: config importing methods would be reported."""
    text = (PACKAGE / "config.py").read_text() + "\n\ndef _late():\n    from sparseg.methods import method_class\n"
    original = Path.read_text
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **k: text if self == PACKAGE / "config.py" else original(self, *a, **k))
    assert any("config.py" in p and "sparseg.methods" in p for p in upward_imports())
