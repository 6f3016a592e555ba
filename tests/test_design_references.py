"""Every `§` reference in sparseg/ names a design note and a heading that exists in it.

Convention: ``name.md §N`` cites section N of the note ``name.md`` (docs/design/, else docs/methods/); a bare
``§N`` cites the nearest ``name.md §…`` before it in the same file. A heading ``## 4. Title``,
``### 4.2 Title`` or ``### §2 Title`` is section 4, 4.2 or 2."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"(?:([a-z_]+\.md) )?§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#+ §?(\d+(?:\.\d+)*)\.? ", re.MULTILINE)
MD_NAME = re.compile(r"\b[A-Za-z_][\w-]*\.md\b")


def note(name: str) -> Path | None:
    for folder in ("docs/design", "docs/methods"):
        if (ROOT / folder / name).is_file():
            return ROOT / folder / name
    return None


def citations() -> list[tuple[str, str, str]]:
    """(file, note, section) of every `§` in sparseg/, bare ones resolved by the convention above."""
    found = []
    for path in sorted((ROOT / "sparseg").rglob("*.py")):
        current = None
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            current = match.group(1) or current
            found.append((str(path.relative_to(ROOT)), current, match.group(2)))
    return found


def test_every_reference_resolves_to_a_heading():
    assert citations()
    bare = [(file, section) for file, name, section in citations() if name is None]
    assert not bare, f"bare § with no `name.md §` before it in the file: {bare}"
    sections = {}
    unresolved = []
    for file, name, section in citations():
        if name not in sections:
            path = note(name)
            sections[name] = set(HEADING.findall(path.read_text(encoding="utf-8"))) if path else set()
        if section not in sections[name]:
            unresolved.append(f"{file}: {name} §{section}")
    assert not unresolved


def test_every_cited_note_is_in_the_repository():
    """A ``name.md`` named anywhere in sparseg/ exists in the repository (not only in a sibling checkout)."""
    present = {path.name for path in [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md")]}
    cited = {name for path in (ROOT / "sparseg").rglob("*.py") for name in MD_NAME.findall(path.read_text("utf-8"))}
    assert cited and not cited - present


def test_method_guides_cite_the_notes_in_the_repository():
    """The method guides and design notes point at docs/design/, not at a specification folder outside."""
    stale = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "docs").glob("*/*.md"))
             if "shared/design" in path.read_text(encoding="utf-8")]
    assert not stale
