#!/usr/bin/env bash
# Calls on the lent GPU machine (the library's `device` tool), each within its 10-minute limit; everything
# lands in $OUT. A fresh machine is bare, so every call builds first (about 2 minutes).
#   run(command="bash tools/gpu_session.sh test", carry=[".whl"], timeout_s=600)    build, tests on CUDA,
#                                                                                   compute-sanitizer
#   run(command="bash tools/gpu_session.sh bench", carry=[".whl"], timeout_s=600)   build, pytest benchmarks/
#                                                                                   + report
# The device image has torch (CUDA), triton, nvcc, pytest, pytest-benchmark, h5py, matplotlib and tqdm; carry
# wheels of the rest (qm9pack, ase) in .whl (see /work/.library/device/README.md).
set -uo pipefail
export PYTHONUNBUFFERED=1
MODE="${1:-test}"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -1
} 2>&1 | tee "$OUT/env.txt"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" python3 setup.py build_ext --inplace \
  >"$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -c "import gtkernels; print('backends', gtkernels.backends())" | tee -a "$OUT/env.txt"
if [ "$MODE" = "test" ]; then
  timeout 300 python3 -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -40 | tee "$OUT/tests.log"
  for tool in memcheck racecheck synccheck; do
    timeout 60 compute-sanitizer --tool "$tool" --error-exitcode 9 python3 tools/sanitize_case.py 2>&1 | tail -5
    echo "compute-sanitizer $tool exit ${PIPESTATUS[0]}"
  done 2>&1 | tee "$OUT/sanitize.log"
else
  # The QM9-batch and single-system attention groups first (the targets); -k narrows further.
  GTK_BENCH_MAX_CALL_S="${GTK_BENCH_MAX_CALL_S:-20}" timeout 420 python3 -m pytest benchmarks -q \
    -p no:cacheprovider -k "${BENCH_K:-attention}" --benchmark-json="$OUT/gpu-benchmarks.json" 2>&1 \
    | tail -60 | tee "$OUT/benchmarks.log"
  # at most 8 files come back from $OUT: the plots are made here afterwards from the JSON
  python3 -m benchmarks.report "$OUT/gpu-benchmarks.json" --out "$OUT" --no-plots 2>&1 | tail -5
fi
