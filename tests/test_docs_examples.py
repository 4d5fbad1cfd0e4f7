"""The Python examples of the README and of every docs page run as written and print what they say.

Every ```python block of README.md and docs/*.md is an example and runs here; a block that is
deliberately not runnable (an API sketch) uses another fence, ```{code-block} python, which
Sphinx renders alike. Every ``print(...)`` in an example states its result in a comment,
between backticks, on its own line or on a comment line right below it::

    print(n, lengths.sum())   # `10 1000`: anything after the backticks explains
    print(sset.describe())    # `io_uring ...`  (``...`` stands for any text)

The test runs each example with every print tagged by its line, then checks
that each printed line matches its print's stated result, and that every
print with a stated result printed at least once. Test ids name the page and
the block's index on it (``README-0``, ``burstsocket-2``).
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

from burstio.napi.lab import LabError, require_privileges
from support.paths import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```([^\n`]*)\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
#: fences (their first word) that are not Python examples; a Python block under any other name would go unrun
OTHER_FENCES = {"", "sh", "text", "c", "json", "{eval-rst}", "{toctree}", "{include}", "{code-block}"}


def page_id(page) -> str:
    return page.stem


def examples() -> list[tuple[str, str]]:
    """(test id, code) of every ```python block, page by page."""
    out = []
    for page in PAGES:
        blocks = [code for lang, code in FENCE.findall(page.read_text()) if lang.strip() == "python"]
        out += [(f"{page_id(page)}-{i}", textwrap.dedent(code)) for i, code in enumerate(blocks)]
    return out


EXAMPLES = examples()
PRINT = re.compile(r"(?<![\w.])print\(")
STATED = re.compile(r"#\s*`([^`]*)`")
# one write(2) per line: lines printed by forked processes cannot interleave
PRELUDE = '''\
import builtins as _b, io as _io, os as _os
def __readme_print__(_line, *args, **kwargs):
    _s = _io.StringIO()
    _b.print(*args, file=_s, **{k: v for k, v in kwargs.items() if k not in ("file", "flush")})
    for _text in _s.getvalue().splitlines():
        _os.write(1, f"{_line}:{_text}\\n".encode())
'''


def stated_results(code: str) -> dict[int, re.Pattern]:
    """{line number of a print: the pattern its output lines must match}."""
    lines = code.splitlines()
    out = {}
    for i, line in enumerate(lines):
        if not PRINT.search(line.split("#", 1)[0]):
            continue
        m = STATED.search(line)
        if m is None and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("#"):
            m = STATED.search(lines[i + 1])
        assert m, f"example line {i + 1} prints without stating its result: {line.strip()}"
        out[i + 1] = re.compile(".*?".join(re.escape(part) for part in m.group(1).split("...")) + "$")
    return out


def tagged(code: str) -> str:
    """The example with every print call tagged with its line number."""
    lines = code.splitlines()
    for i, line in enumerate(lines):
        code_part, sep, comment = line.partition("#")
        lines[i] = PRINT.sub(f"__readme_print__({i + 1}, ", code_part, count=1) + sep + comment
    return PRELUDE + "\n".join(lines) + "\n"


def test_readme_opens_with_the_quickstart():
    """The README's quickstart: burstio.aio.install() and a batch echo server on BurstSocket."""
    readme = [code for name, code in EXAMPLES if name.startswith("README-")]
    assert any("burstio.aio.install(" in code for code in readme)
    assert any("recv_batch(" in code and "send_batch(" in code and "BurstSocket" in code for code in readme)


def test_every_code_block_is_an_example_or_says_it_is_not():
    """A block fenced ```py, ```python3 or ```pycon would look like an example and never run."""
    odd = [f"{page.relative_to(ROOT)}: ```{lang}" for page in PAGES for lang, _ in FENCE.findall(page.read_text())
           if lang.strip() != "python" and (lang.split() or [""])[0] not in OTHER_FENCES]
    assert not odd, "fences that are neither a run example (python) nor a known other kind:\n" + "\n".join(odd)


def test_stated_results_are_read():
    code = 'x = 1\nprint(x, "a b")   # `1 a ...`: why\nprint(2)\n# `2`\n'
    want = stated_results(code)
    assert sorted(want) == [2, 3]
    assert want[2].match("1 a b") and not want[2].match("2 a b")
    assert want[3].match("2") and not want[3].match("22")
    with pytest.raises(AssertionError, match="prints without stating its result"):
        stated_results("print(1)  # one\n")


@pytest.mark.parametrize("code", [code for _, code in EXAMPLES], ids=[name for name, _ in EXAMPLES])
def test_example_prints_what_it_states(code):
    want = stated_results(code)
    if re.search(r"\bLab\(", code):  # an example that makes a lab needs root, as its comment says
        try:
            require_privileges()
        except (PermissionError, LabError) as e:
            pytest.skip(str(e))
    if code.startswith("# needs: root") and os.geteuid() != 0:
        pytest.skip("the example declares that it needs root (it makes namespaces, XDP programs, AF_XDP sockets)")
    r = subprocess.run([sys.executable, "-c", tagged(code)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    printed: dict[int, list[str]] = {}
    for out in r.stdout.splitlines():
        line, sep, text = out.partition(":")
        assert sep and line.isdigit() and int(line) in want, f"unexpected output: {out!r}"
        printed.setdefault(int(line), []).append(text)
    for line, pattern in want.items():
        assert printed.get(line), f"example line {line} printed nothing (stated `{pattern.pattern}`)"
        for text in printed[line]:
            assert pattern.match(text), f"example line {line} printed {text!r}, the page says `{pattern.pattern}`"
