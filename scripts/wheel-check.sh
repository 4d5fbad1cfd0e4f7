#!/usr/bin/env bash
# Prove that a wheel from scripts/wheel.sh installs and works where nothing could build
# burstio: a clean Debian 12 root (debootstrap --variant=minbase) with python3,
# python3-venv, ca-certificates and the tools the unprivileged tests run (sockperf,
# dnsperf, ip), and no compiler, no Python headers, no liburing (asserted). In that root, as
# an unprivileged user: a fresh virtualenv, the wheel and its test extra from the package
# index this machine's pip uses, then pytest on a copy of tests/ (with the README, docs,
# pyproject.toml and setup.py the tests read; never src/: the wheel is what is tested).
# Tests that need root skip, saying why; the script ends with the counts and the reasons.
#
#   scripts/wheel-check.sh dist/burstio-*.whl [PYTEST ARGS]     (as root)
#
# The root is made once in build/wheel-check-root and reused (remade when the package
# list below changes; DEBIAN_MIRROR picks the mirror). Everything the run mounts (/proc, /sys, /dev, /dev/shm, /tmp, the
# host's pip configuration and name resolution) lives in a mount and PID namespace of its
# own: it is gone when the run ends, also on failure, and so is every process it started.
# Property tests replay CI's fixed examples (HYPOTHESIS_PROFILE=ci) unless HYPOTHESIS_PROFILE
# says otherwise. Logs: build/wheel-check-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
root=$repo/build/wheel-check-root
user=checker
run=/home/$user/run  # inside the root
packages=(python3 python3-venv ca-certificates sockperf dnsperf iproute2)

# ---- inside the namespaces (the script runs itself there; see the end) --------------------

in_namespace() {  # ROOT WHEEL_NAME BIND... -- PYTEST ARGS
  local r=$1 wheel_name=$2
  shift 2
  local binds=()
  while [ "$1" != "--" ]; do binds+=("$1"); shift; done
  shift
  mount -t proc proc "$r/proc"
  mount -t sysfs sysfs "$r/sys"
  mount --rbind /dev "$r/dev"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/dev/shm"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/tmp"
  # the host's name resolution and every file or directory its pip configuration names,
  # read-only at the same path
  local p
  for p in /etc/hosts /etc/resolv.conf "${binds[@]}"; do
    [ -e "$p" ] || continue
    if [ -d "$p" ]; then mkdir -p "$r$p"; else mkdir -p "$(dirname "$r$p")"; [ -e "$r$p" ] || : >"$r$p"; fi
    mount --bind "$p" "$r$p"
    mount -o remount,bind,ro "$r$p"
  done

  as_user() {
    chroot "$r" setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs \
      env -i HOME="/home/$user" USER="$user" LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
      HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" "$@"
  }
  as_user sh -c '[ "$(id -u)" -ne 0 ]' || { echo "wheel-check: the tests would run as root" >&2; return 1; }
  as_user bash "$run/run-tests.sh" "$wheel_name" "$@" </dev/null
}

if [ "${1:-}" = "--in-namespace" ]; then
  shift
  in_namespace "$@"
  exit
fi

# ---- on the host ---------------------------------------------------------------------

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: scripts/wheel-check.sh WHEEL [PYTEST ARGS]   (a wheel from scripts/wheel.sh)" >&2
  exit 2
fi
wheel=$(realpath "$1")
shift
if [ "$(id -u)" -ne 0 ]; then
  echo "wheel-check: needs root (debootstrap, chroot, mounts); the tests themselves run unprivileged" >&2
  exit 2
fi
mkdir -p build
rm -f build/wheel-check-pytest.log

# Nothing may be mounted under the root from outside a run's namespace (removing or
# rebuilding it would then reach through to the host's files).
mounted_under_root() { awk -v r="$root" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo; }
if [ -n "$(mounted_under_root)" ]; then
  echo "wheel-check: mounts under $root on the host (not made by this script?): $(mounted_under_root | paste -sd' ')" >&2
  exit 1
fi

# 1. the root, made once
want="bookworm minbase ${packages[*]} user=$user"
if [ ! -f "$root/.wheel-check" ] || [ "$(cat "$root/.wheel-check")" != "$want" ]; then
  if ! command -v debootstrap >/dev/null; then
    echo "wheel-check: installing debootstrap" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  echo "wheel-check: making a Debian 12 root in $root (once)" >&2
  rm -rf "$root" "$root.new"
  include=$(IFS=,; echo "${packages[*]}")
  debootstrap --variant=minbase --include="$include" bookworm "$root.new" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
      >build/wheel-check-debootstrap.log 2>&1 || {
    tail -n 20 build/wheel-check-debootstrap.log >&2
    echo "wheel-check: debootstrap failed (build/wheel-check-debootstrap.log)" >&2
    exit 1
  }
  chroot "$root.new" useradd --create-home --shell /bin/bash "$user"
  chroot "$root.new" apt-get clean
  echo "$want" >"$root.new/.wheel-check"
  mv "$root.new" "$root"
fi

# 2. what the root must not have (the previous run's files removed first, so that
# nothing of a wheel is in it): a compiler, the Python headers, liburing in any form
home=$root/home/$user
rm -rf "$home/run"
problems=()
for pkg in gcc gcc-12 cpp clang tcc python3-dev python3.11-dev libpython3.11-dev liburing2 liburing-dev; do
  if chroot "$root" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    problems+=("package $pkg is installed")
  fi
done
for tool in cc gcc c99 clang tcc; do
  if chroot "$root" sh -c "command -v $tool" >/dev/null; then problems+=("$tool is on PATH"); fi
done
found=$(cd "$root" && find . -xdev \( -name Python.h -o -name 'liburing*' \) -print | head -5)
[ -z "$found" ] || problems+=("found in the root: $found")
for pkg in "${packages[@]}"; do
  chroot "$root" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    problems+=("package $pkg is missing")
done
if ((${#problems[@]})); then
  printf 'wheel-check: the root is not what it must be: %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "wheel-check: root $root: Debian $(cat "$root/etc/debian_version"), $(chroot "$root" python3 -V)," \
     "no compiler, no Python headers, no liburing"

# 3. the run's files: the wheel, the tests and what they read; no src/, no csrc/
mkdir -p "$home/run"
cp "$wheel" "$home/run/"
tar -C "$repo" --exclude=__pycache__ -cf - tests docs README.md CONTRIBUTING.md CHANGELOG.md pyproject.toml setup.py |
  tar -C "$home/run" -xf -
uid=$(chroot "$root" id -u "$user")
gid=$(chroot "$root" id -g "$user")
# what the unprivileged user runs in the root
cat >"$home/run/run-tests.sh" <<'EOF'
set -euo pipefail
cd ~/run
wheel=$1
shift
now() { date +%s.%N; }
took() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f} s")' "$1" "$2"; }
t0=$(now); python3 -m venv venv
t1=$(now); venv/bin/pip install -q --no-cache-dir "./$wheel" >pip-wheel.log 2>&1 || { cat pip-wheel.log; exit 1; }
t2=$(now); venv/bin/pip install -q "./$wheel[test]" >pip-test.log 2>&1 || { cat pip-test.log; exit 1; }
t3=$(now)
echo "wheel-check: venv $(took "$t0" "$t1"), wheel install $(took "$t1" "$t2")," \
     "test dependencies $(took "$t2" "$t3")"
# the installed wheel is what runs: burstio from the venv, liburing from the wheel
venv/bin/python - <<'PY'
import os
import subprocess
import sys

import burstio
import burstio._native as native

venv = os.path.realpath("venv")
where = os.path.realpath(burstio.__file__)
if not where.startswith(venv + os.sep):
    sys.exit(f"wheel-check: burstio imported from {where}, not from the venv {venv}")
ldd = subprocess.run(["ldd", native.__file__], capture_output=True, text=True, check=True).stdout
uring = [line.split() for line in ldd.splitlines() if "liburing" in line]
if len(uring) != 1 or not uring[0][2].startswith(venv + os.sep) or "/burstio.libs/" not in uring[0][2]:
    sys.exit(f"wheel-check: the extension does not load the bundled liburing:\n{ldd}")
print(f"wheel-check: burstio {burstio.__version__} from {where}; liburing from {uring[0][2]}")
PY
set +e
venv/bin/pytest -p no:cacheprovider -q -ra tests "$@" >pytest.log 2>&1
status=$?
set -e
exit "$status"
EOF
chown -R "$uid:$gid" "$home"

# pip in the root uses this machine's index configuration: its effective settings (files
# and PIP_* variables) as the root's /etc/pip.conf; the files and directories they name
# are mounted read-only at the same paths for the run
binds=$(python3 - "$root/etc/pip.conf" <<'EOF'
import ast
import os
import subprocess
import sys

out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                     check=True).stdout
settings: dict[tuple[str, str], str] = {}
from_env = {}
for line in out.splitlines():
    key, sep, value = line.partition("=")
    if not sep:
        continue
    section, _, name = key.partition(".")
    if section == ":env:":
        from_env[("global", name)] = ast.literal_eval(value)
    else:
        settings[(section, name)] = ast.literal_eval(value)
settings.update(from_env)  # PIP_* variables win over files, as in pip
sections: dict[str, list[str]] = {}
paths = set()
for (section, name), value in sorted(settings.items()):
    sections.setdefault(section, []).append(f"{name} = {value}")
    for word in value.split():
        path = os.path.normpath(word.removeprefix("file://"))
        if word.startswith("file://") and os.path.basename(path) == "simple":
            path = os.path.dirname(path)  # a local index's pages link to files beside "simple"
        if path.startswith("/") and os.path.exists(path):
            paths.add(path)
with open(sys.argv[1], "w") as f:
    f.write("# written by scripts/wheel-check.sh from the host's pip configuration\n")
    for section, lines in sections.items():
        f.write(f"[{section}]\n" + "\n".join(lines) + "\n")
print("\n".join(sorted(paths)))
EOF
)
mapfile -t bind_list <<<"$binds"

# 4. the run, in namespaces of its own
echo "wheel-check: testing $(basename "$wheel") as $user (log: build/wheel-check-pytest.log)"
set +e
unshare --mount --propagation private --pid --fork \
  "$repo/scripts/wheel-check.sh" --in-namespace "$root" "$(basename "$wheel")" "${bind_list[@]}" -- "$@"
status=$?
set -e
cp "$home/run/pytest.log" build/wheel-check-pytest.log 2>/dev/null || true
leftover=$(mounted_under_root)
if [ -n "$leftover" ]; then
  echo "wheel-check: mounts left on the host: $leftover" >&2
  status=1
fi
if [ -f build/wheel-check-pytest.log ]; then
  tail -n 1 build/wheel-check-pytest.log
  python3 - build/wheel-check-pytest.log <<'EOF'
import collections
import re
import sys

reasons: collections.Counter[str] = collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r"SKIPPED \[(\d+)\] [^:]+:\d+: (.*)", line)
    if m:
        reasons[m.group(2).strip()] += int(m.group(1))
for reason, n in reasons.most_common():
    print(f"  skipped {n:4d}: {reason}")
EOF
fi
exit "$status"
