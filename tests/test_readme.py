"""The README's Python examples run as written."""
import os
import re
import subprocess
import sys

import pytest

from burstio.napi.lab import LabError, require_privileges
from support.paths import ROOT

README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=[f"example{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    if re.search(r"\bLab\(", code):  # an example that makes a lab needs root, as its comment says
        try:
            require_privileges()
        except (PermissionError, LabError) as e:
            pytest.skip(str(e))
    if code.startswith("# needs: root") and os.geteuid() != 0:
        pytest.skip("the example declares that it needs root (it makes namespaces, XDP programs, AF_XDP sockets)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
