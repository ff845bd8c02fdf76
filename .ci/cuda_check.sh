#!/usr/bin/env bash
# Compile-check of the CUDA sources without a GPU: every device file csrc/cuda/kernels/*.cu with nvcc -c for sm_80
# and sm_90, printing each kernel's registers, stack and spills (-Xptxas -v) so that a spill regression is
# visible, and the CUDA glue csrc/cuda/*.cpp (ops_cuda.cpp, emulation.cpp) with the host compiler
# (-fsyntax-only) against torch's headers.
# Fails on any compile error, and on any spill when GTKERNELS_FAIL_ON_SPILL=1.
# Usage: .ci/cuda_check.sh [python]   (python: the interpreter whose torch headers to use; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ]; then
  echo "cuda-check: nvcc not found, skipped"
  exit 0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "cuda-check: $("$NVCC" --version | tail -1)"
spills=0
for arch in sm_80 sm_90; do
  for cu in csrc/cuda/kernels/*.cu; do
    log="$out/$(basename "$cu" .cu)-$arch.log"
    if ! "$NVCC" -c -std=c++17 -O3 --expt-relaxed-constexpr -Werror all-warnings -arch="$arch" -Xptxas -v \
        -Icsrc "$cu" -o "$out/$(basename "$cu" .cu)-$arch.o" >"$log" 2>&1; then
      cat "$log"
      echo "cuda-check: FAILED to compile $cu for $arch"
      exit 1
    fi
    # One line per kernel: name, registers, stack, spills.
    awk -v arch="$arch" '
      /Compiling entry function/ { match($0, /_ZN[^'"'"']*/); name = substr($0, RSTART, RLENGTH) }
      /bytes stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
      /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15);
        printf "  %-6s %-60s regs %3d  stack %4d B  spill %s/%s B\n", arch, name, regs, stack, spill_st, spill_ld }
    ' "$log" | c++filt -n | sed 's/gt::blk:://g'; echo
    s=$(grep -Eo '[0-9]+ bytes spill (stores|loads)' "$log" | awk '{t += $1} END {print t + 0}')
    spills=$((spills + s))
  done
done
inc=$("$PY" -c 'from torch.utils.cpp_extension import include_paths
print(" ".join("-I" + p for p in include_paths()))')
# A CPU build of torch ships c10/cuda headers but not the generated cuda_cmake_macros.h: stub it.
mkdir -p "$out/stub/c10/cuda/impl"
echo "#pragma once" >"$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
# nvcc's own installation (it may be a wrapper script elsewhere): the TOP it reports with -v.
cuda_top="${CUDA_HOME:-$("$NVCC" -v -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)}"
cuda_inc="$cuda_top/include"
for cpp in csrc/cuda/*.cpp; do
  ${CXX:-c++} -std=c++17 -fsyntax-only -Wall -Wno-c++20-extensions -Icsrc $inc -I"$out/stub" -I"$cuda_inc" \
    -DTORCH_API_INCLUDE_EXTENSION_H "$cpp"
  echo "  glue   $cpp: syntax ok"
done
echo "cuda-check: ok (total spill bytes: $spills)"
if [ "${GTKERNELS_FAIL_ON_SPILL:-0}" = "1" ] && [ "$spills" -gt 0 ]; then
  echo "cuda-check: spills present and GTKERNELS_FAIL_ON_SPILL=1"
  exit 1
fi
