#!/usr/bin/env bash
# Compile burstio's XDP programs (src/burstio/xdp/bpf/*.bpf.c) into the
# objects the package ships (*.bpf.o next to them). Needs clang with the BPF
# target (Debian 12: clang 14); installing burstio does not: the objects are
# in the repository, and tests/test_xdp_bpf.py checks that they are what
# this script makes from the sources.
#
#   scripts/build-bpf.sh            # rebuild every object
#   scripts/build-bpf.sh OUTDIR     # build into OUTDIR instead (the test does)
set -euo pipefail
cd "$(dirname "$0")/.."

clang=${CLANG:-clang}
out=${1:-src/burstio/xdp/bpf}
src=src/burstio/xdp/bpf
arch_include=/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
mkdir -p "$out"
for c in "$src"/*.bpf.c; do
  name=$(basename "$c" .c)
  "$clang" -target bpf -O2 -g0 -Wall -Werror -I"$arch_include" -I"$src" -c "$c" -o "$out/$name.o"
done
