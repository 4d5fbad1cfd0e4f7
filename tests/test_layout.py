"""docs/ARCHITECTURE.md names every source file of the repository, and only files that exist.

The layout block of the architecture doc is the map a newcomer reads; this test keeps it true:
adding, moving or deleting a source file without updating the map fails here.
"""
from __future__ import annotations

import re

import pytest

from support.paths import ROOT

if not (ROOT / "src" / "burstio").is_dir():  # e.g. scripts/wheel-check.sh: tests beside an installed wheel
    pytest.skip("the repository's source tree is not here: no layout to check", allow_module_level=True)

DOC = ROOT / "docs" / "ARCHITECTURE.md"
SOURCE_DIRS = ("src", "csrc", "tests", "scripts", ".ci", "examples", "docs")
SOURCE_SUFFIXES = {".py", ".pyi", ".c", ".h", ".sh", ".md", ".toml", ".bpf", ".txt"}
SKIP_PARTS = {"__pycache__", ".venv", "build", ".hypothesis", ".pytest_cache", "_build"}


def source_files() -> set[str]:
    out = set()
    for top in SOURCE_DIRS:
        base = ROOT / top
        if not base.is_dir():
            continue
        for p in base.rglob("*"):
            rel = p.relative_to(ROOT)
            if not p.is_file() or SKIP_PARTS & set(rel.parts) or any(s.endswith(".egg-info") for s in rel.parts):
                continue
            if p.suffix in SOURCE_SUFFIXES or (top == ".ci" and p.suffix == ""):
                out.add(rel.as_posix())
    return out


def layout_entries() -> set[str]:
    text = DOC.read_text()
    m = re.search(r"<!-- layout: begin -->(.*?)<!-- layout: end -->", text, re.DOTALL)
    assert m, "docs/ARCHITECTURE.md has no layout block"
    names = set()
    for line in m.group(1).splitlines():
        # a line names a file: "path   what it is" (in a code block); "dir/{a,b}.c" lists several
        words = line.split()
        first = words[0].strip("`") if words else ""
        if not first or first.startswith(("```", "#")):
            continue
        brace = re.fullmatch(r"(.*)\{(.*)\}(.*)", first)
        if brace:
            names |= {brace.group(1) + part.strip() + brace.group(3) for part in brace.group(2).split(",")}
        else:
            names.add(first)
    return names


def test_every_source_file_is_in_the_layout():
    missing = sorted(source_files() - layout_entries())
    assert not missing, f"add these to the layout in docs/ARCHITECTURE.md: {missing}"


def test_the_layout_names_only_files_that_exist():
    gone = sorted(n for n in layout_entries() if not (ROOT / n).is_file())
    assert not gone, f"the layout in docs/ARCHITECTURE.md names files that do not exist: {gone}"


# a path to a repository file, as code and docs cite them
_CITED = re.compile(r"(?<![\w./-])((?:src|csrc|tests|docs|scripts|examples)/[\w./-]*\w|[A-Z][A-Z_]+\.md)\b")


def test_files_cite_only_files_of_the_repository():
    """Comments and docs may point at files by path; each such path must exist (a glob-free
    path, or a directory)."""
    bad = []
    for rel in sorted(source_files() | {"README.md", "CONTRIBUTING.md", "CHANGELOG.md"}):
        text = (ROOT / rel).read_text(errors="replace")
        for m in _CITED.finditer(text):
            cited = m.group(1).rstrip(".")
            if any(ch in cited for ch in "*{<"):
                continue
            # a bare file name (ending in .md) is a top-level file or one in docs/
            where = [ROOT / cited] if "/" in cited else [ROOT / cited, ROOT / "docs" / cited]
            if not any(w.exists() for w in where):
                bad.append(f"{rel}: {cited}")
    assert not bad, "paths cited that are not in the repository:\n" + "\n".join(bad)
