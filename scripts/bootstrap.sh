#!/usr/bin/env bash
# Prepare this checkout on a Debian 12 machine: system packages (installed
# only when missing), a virtualenv in .venv, and burstio built into it.
# Safe to run again: it installs only what is missing and rebuilds burstio.
#
#   scripts/bootstrap.sh test|bench
set -euo pipefail
cd "$(dirname "$0")/.."

purpose=${1:?usage: scripts/bootstrap.sh test|bench}
case "$purpose" in
  test)  extra="test,docs" ;;
  bench) extra="bench" ;;
  *) echo "bootstrap: unknown purpose '$purpose' (test or bench)" >&2; exit 2 ;;
esac

# build: compiler, Python headers and venv, the system's liburing;
# run: sockperf (latency peer), perf (syscall counts), taskset (util-linux),
# ip and tc (iproute2: the bench's and tests' own network namespaces),
# ethtool (the lab turns GRO on for NAPI), dnsperf (the dns bench's client);
# tests only: clang (the shipped XDP bytecode is checked against a fresh
# compile of its sources) and capsh (libcap2-bin: children without a capability).
packages=(build-essential python3-dev python3-venv liburing-dev sockperf linux-perf util-linux iproute2
          ethtool dnsperf)
if [ "$purpose" = test ]; then
  packages+=(clang libcap2-bin)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: burstio needs Python >= 3.11; $python is $("$python" -V 2>&1)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# setuptools reuses build/lib.*: a module renamed or removed since the last build would
# be installed again from there, so build from the sources alone
rm -rf build/lib.* build/bdist.*
.venv/bin/python -m pip install -q ".[$extra]"
