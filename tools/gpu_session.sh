#!/usr/bin/env bash
# tools/gpu_session.sh: everything a lent GPU machine is for, in ONE call of at most 8 minutes (a 470 s deadline for
# the steps, GTK_SESSION_S, plus the report; the rest of the 540 s timeout is margin).
#
# Call it with the device tool, from this repository, carrying nothing (no wheels: it needs neither qm9pack nor ase;
# the QM9 molecules come from the committed tests/data/qm9_sample.npz):
#     run(command="bash tools/gpu_session.sh", timeout_s=540)
# or, so that the results name the commit even if the copied tree has no .git:
#     run(command="GTK_COMMIT=<short sha, written out> bash tools/gpu_session.sh", timeout_s=540)
# On the bare machine it runs, in order:
#   a  env       nvidia-smi, torch / triton / CUDA / nvcc / compute-sanitizer versions, date, commit
#   b  build     FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 python3 setup.py build_ext --inplace
#   c  tests     the cuda/triton cases of tests/test_backend_conformance.py and tests/test_model.py,
#                tests/test_gpu_backends.py, and test_padding_nan.py /
#                test_no_host_sync.py when present; per-test timeout (pytest-timeout), no -x, pytest-xdist -n 6
#   d  sanitize  compute-sanitizer memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1), initcheck, racecheck, synccheck on
#                tools/sanitize_case.py (triton and cuda, forward+backward); runs beside c (checks, not timings)
#   e  bench     pytest benchmarks/test_attention.py -k ...: QM9 batches of 256 and 1,024 molecules (padded: eager
#                reference, torch.compile, triton, cuda; packed: triton, cuda) and one N = 4,096 system, at the
#                paper's width (256 heads x d_k 2, psi 1->50->50->50->1), forward+backward; three pytest runs
#                (one per size, so a cut-off keeps the earlier figures), merged into one JSON
#   f  report    the Markdown result file, ready to commit under benchmarks/results/
# Each step runs under `timeout` (its budget, never past the session's deadline) and prints its time. What comes
# back from $OUT (8 files): gpu-<device>-<date>.md (for benchmarks/results/), gpu-<device>-<date>.json
# (pytest-benchmark, merged), session.log (this output), env.txt, build.log, tests.log (the full pytest log),
# sanitize.log (the four tools' output), bench.log (the three benchmark runs' output). The reply's output_tail
# ends with the step-timing table and the summaries.
#
# Dry run on a machine without a GPU (same steps; qm9pack, ase and the network hidden from Python by
# tools/dry_run/sitecustomize.py; nvidia-smi and compute-sanitizer skipped with a line saying so; Triton tests in
# the interpreter, TRITON_INTERPRET=1, CUDA tests on the kernels' host emulation, GTKERNELS_CUDA_EMULATE=1;
# benchmarks on CPU with the cpu backend as the fused one; no overall deadline unless GTK_SESSION_S is set):
#     PYTHON=/path/to/venv/python bash tools/gpu_session.sh --dry-run        # results in build/gpu-session-dry-run/
#
# Knobs: PYTHON (python3), OUT, GTK_SESSION_S, GTK_XDIST (workers for step c; 0 = none), GTK_TEST_TIMEOUT (s per
# test, 90), GTK_BENCH_TARGET_S (timed seconds per benchmark, 0.5), GTK_BENCH_K_QM9 / GTK_BENCH_K_SINGLE (the -k
# selections), GTK_SKIP (comma-separated steps to leave out: tests, sanitize, bench), GTK_DRY_RUN_SCALE (budgets
# x 8 in the dry run).
set -uo pipefail
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/tools/gpu_session.sh"
cd "$ROOT"

# ------------------------------------------------------------------------------------------- one step's body
# `bash tools/gpu_session.sh __step NAME` runs one step (the driver below calls it under `timeout`).
if [ "${1:-}" = "__step" ]; then
  step_name="$2"
  case "$step_name" in
  env)
    date -u +"date            %Y-%m-%dT%H:%M:%SZ"
    echo "commit          $COMMIT"
    echo "host            $(uname -srm), $(nproc) cores, $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB RAM"}')"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap --format=csv,noheader \
        | sed 's/^/gpu             /'
    else
      echo "gpu             SKIPPED nvidia-smi: not found (no GPU on this machine)"
    fi
    "$PY" - <<'EOF'
import sys, torch
print(f"python          {sys.version.split()[0]} ({sys.executable})")
print(f"torch           {torch.__version__}, CUDA {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device          {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
try:
    import triton
    print(f"triton          {triton.__version__}")
except Exception as exc:
    print(f"triton          does not import: {exc}")
from torch.utils.cpp_extension import CUDA_HOME
print(f"CUDA_HOME       {CUDA_HOME}")
for name in ("numpy", "pytest", "pytest_benchmark", "pytest_timeout", "xdist", "h5py", "qm9pack", "ase"):
    try:
        import importlib
        m = importlib.import_module(name)
        print(f"{name:15s} {getattr(m, '__version__', 'present')}")
    except Exception as exc:
        print(f"{name:15s} absent ({type(exc).__name__}: {str(exc)[:100]})")
EOF
    if command -v nvcc >/dev/null; then echo "nvcc            $(nvcc --version | tail -1)"; else echo "nvcc            not found"; fi
    if command -v compute-sanitizer >/dev/null; then
      echo "sanitizer       $(compute-sanitizer --version 2>&1 | tail -1)"
    else
      echo "sanitizer       not found"
    fi
    if command -v nvidia-smi >/dev/null; then echo; nvidia-smi; fi
    ;;
  build)
    if [ "$DRY" = 1 ]; then
      echo "dry run: CPU torch, so no FORCE_CUDA (the device runs FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0)"
      "$PY" setup.py build_ext --inplace
    else
      FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$PY" setup.py build_ext --inplace
    fi
    ;;
  tests)
    files=(tests/test_backend_conformance.py tests/test_gpu_backends.py tests/test_model.py)
    k="((test_backend_conformance or test_model) and (cuda or triton)) or test_gpu_backends"
    for extra in test_padding_nan test_no_host_sync test_host_sync test_cuda_unchecked_segments; do
      if [ -f "tests/$extra.py" ]; then files+=("tests/$extra.py"); k="$k or $extra"; fi
    done
    args=(-p no:cacheprovider -v -rfEs --durations=15 -k "$k")
    if "$PY" -c "import pytest_timeout" 2>/dev/null; then
      args+=(--timeout="${GTK_TEST_TIMEOUT:-90}")
    else
      echo "pytest-timeout is not installed: no per-test timeout (the step's own timeout still applies)"
    fi
    workers="${GTK_XDIST:-6}"
    if [ "$workers" != 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
      args+=(-n "$workers")
    else
      echo "pytest-xdist not used (GTK_XDIST=$workers or not installed): tests run in one process"
    fi
    echo "+ $PY -m pytest ${files[*]} ${args[*]}"
    "$PY" -m pytest "${files[@]}" "${args[@]}"
    ;;
  sanitize)
    # every timeout below ends before this step's own (STEP_END): a nested `timeout` runs in a process group of
    # its own, which the step's timeout would not reach
    left=$(( STEP_END - $(date +%s) - 10 ))
    (( left < 5 )) && left=5                  # (timeout 0 would mean no timeout at all)
    echo "+ $PY tools/sanitize_case.py   (plain run first: checks the case, warms the Triton cache)"
    timeout --kill-after=5 $(( left < 90 ? left : 90 )) "$PY" tools/sanitize_case.py
    echo "plain run exit $?"
    if ! command -v compute-sanitizer >/dev/null; then
      echo "SKIPPED compute-sanitizer: not found on this machine (no CUDA toolkit / no GPU); only the plain run above ran"
      exit 0
    fi
    # the four tools at once (their own processes; the GPU is shared, nothing here is timed)
    left=$(( STEP_END - $(date +%s) - 15 ))
    tool_s=$(( ${GTK_SANITIZE_TOOL_S:-90} < left ? ${GTK_SANITIZE_TOOL_S:-90} : left ))
    if (( tool_s < 15 )); then
      echo "SKIPPED compute-sanitizer: only $left s left in this step"; exit 124
    fi
    echo "compute-sanitizer: memcheck, initcheck, racecheck, synccheck at once, $tool_s s each at most"
    pids=()
    for tool in memcheck initcheck racecheck synccheck; do
      (
        [ "$tool" = memcheck ] && export PYTORCH_NO_CUDA_MEMORY_CACHING=1
        t0=$(date +%s)
        timeout --kill-after=5 "$tool_s" compute-sanitizer --tool "$tool" --error-exitcode 9 \
          --print-limit 20 "$PY" tools/sanitize_case.py >"$WORK/sanitize-$tool.log" 2>&1
        echo "compute-sanitizer $tool exit $? in $(( $(date +%s) - t0 )) s" >>"$WORK/sanitize-$tool.log"
      ) &
      pids+=($!)
    done
    wait "${pids[@]}"
    for tool in memcheck initcheck racecheck synccheck; do
      echo "=============================== $tool"
      cat "$WORK/sanitize-$tool.log"
    done
    ;;
  bench)
    part="$3"; json="$4"
    if [ "$part" = qm9 ]; then
      k="${GTK_BENCH_K_QM9:-h256xd2 and fwd+bwd and (qm9-256 or qm9-1024) and not flex and not sdpa and (padded or not reference)}"
      [ -n "${5:-}" ] && k="$k and $5"
    else
      k="${GTK_BENCH_K_SINGLE:-h256xd2 and fwd+bwd and n4096 and not flex and not sdpa}"
    fi
    args=(-p no:cacheprovider -q -rs -k "$k" --benchmark-json="$json")
    "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout="${GTK_BENCH_TEST_TIMEOUT:-90}")
    echo "+ GTK_BENCH_TARGET_S=$GTK_BENCH_TARGET_S GTK_BENCH_MAX_CALL_S=$GTK_BENCH_MAX_CALL_S $PY -m pytest benchmarks/test_attention.py ${args[*]}"
    "$PY" -m pytest benchmarks/test_attention.py "${args[@]}"
    ;;
  *)
    echo "unknown step $step_name"; exit 2 ;;
  esac
  exit $?
fi

# ------------------------------------------------------------------------------------------------- driver
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; elif [ -n "${1:-}" ]; then
  echo "usage: bash tools/gpu_session.sh [--dry-run]" >&2; exit 2
fi
export DRY
export PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gtk-gpu-session.XXXXXX")"
export WORK
if [ "$DRY" = 1 ]; then
  OUT="${OUT:-$ROOT/build/gpu-session-dry-run}"
  TOTAL="${GTK_SESSION_S:-100000}"
  SCALE="${GTK_DRY_RUN_SCALE:-8}"     # 2 CPU cores and the Triton interpreter: budgets x 8
  # Python as on the device: no qm9pack, no ase, no network (tools/dry_run/sitecustomize.py); Triton in its
  # interpreter (set before triton is imported). The cuda tests set GTKERNELS_CUDA_EMULATE=1 themselves
  # (tests/helpers.py use_backend) and so does tools/sanitize_case.py.
  export PYTHONPATH="$ROOT/tools/dry_run:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export TRITON_INTERPRET=1
  export GTK_BENCH_MAX_CALL_S="${GTK_BENCH_MAX_CALL_S:-20}"
else
  OUT="${OUT:-/tmp/out}"
  TOTAL="${GTK_SESSION_S:-470}"
  SCALE=1
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export GTK_BENCH_MAX_CALL_S="${GTK_BENCH_MAX_CALL_S:-60}"
fi
export GTK_BENCH_TARGET_S="${GTK_BENCH_TARGET_S:-0.5}"
mkdir -p "$OUT"
export OUT
COMMIT="$(git rev-parse --short HEAD 2>/dev/null)"
[ -n "$COMMIT" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && COMMIT="$COMMIT+dirty"
COMMIT="${COMMIT:-${GTK_COMMIT:-unknown (no .git here; pass GTK_COMMIT=<sha>)}}"
export COMMIT GTK_COMMIT="${GTK_COMMIT:-$COMMIT}"
DAY="$(date -u +%Y-%m-%d)"
T0=$(date +%s)
RESERVE=15     # seconds kept for the report
[ "$DRY" = 1 ] && [ "$OUT" = "$ROOT/build/gpu-session-dry-run" ] && rm -f "$OUT"/*   # as $OUT on the device
exec > >(tee "$OUT/session.log") 2>&1
TEE_PID=$!
TIMINGS="$WORK/timings.tsv"
: >"$TIMINGS"

elapsed() { echo $(( $(date +%s) - T0 )); }
skipped() {
  case ",${GTK_SKIP:-}," in
    *",$1,"*) echo "== $1: SKIPPED (GTK_SKIP)"; printf '%s\t-\t0\t%s\n' "$1" "skipped: GTK_SKIP" >>"$TIMINGS"; return 0 ;;
  esac
  return 1
}

# run_step LABEL BUDGET LATER LOG CMD...: CMD under timeout, output appended to LOG, its time recorded. The timeout
# is BUDGET (x SCALE in the dry run), cut so that LATER seconds (the least the later steps need) and the report's
# RESERVE still fit before the deadline.
run_step() {
  local label="$1" budget=$(( $2 * SCALE )) later="$3" log="$4"; shift 4
  local left=$(( TOTAL - $(elapsed) - RESERVE - later ))
  local t=$(( budget < left ? budget : left ))
  if (( t < 10 )); then
    echo "== [$(elapsed) s] $label: SKIPPED, only $left s left of the $TOTAL s session for it"
    printf '%s\t%s\t%s\t%s\n' "$label" "$budget" 0 "skipped: no time left" >>"$TIMINGS"
    return 124
  fi
  echo "== [$(elapsed) s] $label: start (budget $t s) -> $(basename "$log")"
  local s=$(date +%s)
  # STEP_END: when this step's timeout fires; a step that starts timeouts of its own keeps them inside it
  STEP_END=$(( s + t )) timeout --kill-after=10 "$t" "$@" >>"$log" 2>&1
  local rc=$? dt=$(( $(date +%s) - s ))
  local note="exit $rc"
  { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && note="TIMED OUT after $t s"
  echo "== [$(elapsed) s] $label: $note in $dt s"
  printf '%s\t%s\t%s\t%s\n' "$label" "$t" "$dt" "$note" >>"$TIMINGS"
  return $rc
}

MODE_TEXT="GPU machine"
[ "$DRY" = 1 ] && MODE_TEXT="DRY RUN on a CPU machine (qm9pack, ase and network hidden from Python)"
echo "gtkernels GPU session: $MODE_TEXT; deadline $TOTAL s; results in $OUT; commit $COMMIT"

# a. environment
run_step "a env" 30 300 "$OUT/env.txt" bash "$SELF" __step env
sed -n '1,/^$/p' "$OUT/env.txt" | sed '/^$/d'

# b. build
if run_step "b build" 240 210 "$OUT/build.log" bash "$SELF" __step build; then
  "$PY" -c "import gtkernels, gtkernels._C as C; print('built: backends', gtkernels.backends(), '| CUDA kernels', C.with_cuda())" 2>&1 \
    | tee -a "$OUT/build.log"
else
  echo "build FAILED; last lines of build.log:"; tail -25 "$OUT/build.log"
  export GTKERNELS_ALLOW_NO_EXTENSION=1   # the Triton tests can still run
fi

# c. tests, with d. compute-sanitizer beside them
if ! skipped sanitize; then
  run_step "d sanitize" 120 210 "$OUT/sanitize.log" bash "$SELF" __step sanitize &
  SAN_PID=$!
fi
if ! skipped tests; then
  run_step "c tests" 120 210 "$OUT/tests.log" bash "$SELF" __step tests
fi
[ -n "${SAN_PID:-}" ] && wait "$SAN_PID"

# e. benchmarks (three runs: a cut-off keeps the earlier figures)
JSONS=()
if ! skipped bench; then
  run_step "e bench qm9-256" 80 90 "$OUT/bench.log" bash "$SELF" __step bench qm9 "$WORK/bench-256.json" "qm9-256" \
    ; [ -s "$WORK/bench-256.json" ] && JSONS+=("$WORK/bench-256.json")
  run_step "e bench qm9-1024" 70 45 "$OUT/bench.log" bash "$SELF" __step bench qm9 "$WORK/bench-1024.json" "qm9-1024" \
    ; [ -s "$WORK/bench-1024.json" ] && JSONS+=("$WORK/bench-1024.json")
  run_step "e bench n4096" 60 0 "$OUT/bench.log" bash "$SELF" __step bench single "$WORK/bench-n4096.json" \
    ; [ -s "$WORK/bench-n4096.json" ] && JSONS+=("$WORK/bench-n4096.json")
fi

# f. report
t_report=$(date +%s)
if [ "$DRY" = 1 ]; then STEM="dry-run-cpu-$DAY"; else
  STEM="gpu-$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null | tr 'A-Z' 'a-z' \
    | sed 's/^nvidia //; s/[^a-z0-9]\+/-/g; s/-$//')-$DAY"
fi
MD="$OUT/$STEM.md"
export MD STEM TIMINGS TOTAL
"$PY" - "$OUT/$STEM.json" "${JSONS[@]}" <<'EOF'
"""Merge the benchmark JSONs; write the Markdown: benchmark report (benchmarks.report) + session sections."""
import json, os, re, subprocess, sys
out_json, parts = sys.argv[1], sys.argv[2:]
md_path, dry = os.environ["MD"], os.environ["DRY"] == "1"
merged, commands = None, []
for p in parts:
    try:
        d = json.load(open(p))
    except (OSError, ValueError):
        continue
    g = d.get("machine_info", {}).get("gtkernels", {})
    commands.append(g.get("command", "?").replace(os.environ["WORK"] + "/", ""))
    if merged is None:
        merged = d
        continue
    merged["benchmarks"] += d.get("benchmarks", [])
    mg = merged["machine_info"]["gtkernels"]
    mg.setdefault("skipped", {}).update(g.get("skipped", {}))
    mg["wall_s"] = round(mg.get("wall_s", 0) + g.get("wall_s", 0), 1)
    mg["load_at_end"] = g.get("load_at_end", "?")
knobs = (f"GTK_BENCH_TARGET_S={os.environ['GTK_BENCH_TARGET_S']} GTK_BENCH_MAX_CALL_S={os.environ['GTK_BENCH_MAX_CALL_S']}")
session_cmd = "bash tools/gpu_session.sh" + (" --dry-run" if dry else "")
text = []
if merged is not None and merged.get("benchmarks"):
    merged["machine_info"]["gtkernels"]["command"] = " ; ".join(commands)
    json.dump(merged, open(out_json, "w"), indent=1)
    title = ("DRY RUN (CPU, not GPU figures) of tools/gpu_session.sh" if dry else
             f"GPU session: {merged['machine_info']['gtkernels'].get('device', '?')}") + f", {os.environ.get('STEM', '')}"
    notes = [f"made by `{session_cmd}` (step e), with {knobs}; the three pytest runs above, merged",
             "QM9 molecules from the committed sample tests/data/qm9_sample.npz (group random = "
             "sample_molecules(1024, seed=0)); batches of 256 / 1,024 are the first 256 / 1,024 of a fixed shuffle"]
    r = subprocess.run([sys.executable, "-m", "benchmarks.report", out_json, "--out", os.path.dirname(md_path),
                        "--no-plots", "--title", title] + sum([["--note", n] for n in notes], []),
                       capture_output=True, text=True)
    if r.returncode == 0:
        text = open(os.path.splitext(out_json)[0] + ".md").read().rstrip("\n").split("\n")
    else:
        text = [f"# {title}", "", "benchmarks.report failed:", "", "```", r.stderr[-3000:], "```"]
else:
    text = [f"# {'DRY RUN of ' if dry else ''}tools/gpu_session.sh, {os.environ.get('STEM', '')}", "",
            "No benchmark figures in this session (see the step timings and bench.log)."]
env = open(os.path.join(os.environ["OUT"], "env.txt")).read().split("\n\n")[0] if os.path.exists(
    os.path.join(os.environ["OUT"], "env.txt")) else "(no env.txt)"
text += ["", "## GPU session" if not dry else "## Session (dry run)", "",
         f"Command: `{session_cmd}`" + (" (device tool: `run(command=\"GTK_COMMIT=<sha> bash tools/gpu_session.sh\", "
                                        "timeout_s=540)`)" if not dry else ""), "", "```", env.strip(), "```", ""]
rows = [l.split("\t") for l in open(os.environ["TIMINGS"]).read().splitlines() if l.strip()]
text += ["| step | budget s | took s | result |", "| --- | ---: | ---: | --- |"]
text += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
total = sum(int(took) for step, _, took, _ in rows if took.isdigit() and not step.startswith("d "))
text += ["", f"Steps c (tests) and d (compute-sanitizer) run at the same time; sum of the other steps {total} s.", ""]
def tail_lines(path, pattern, limit=40):
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return ["(no log)"]
    return [l for l in lines if re.search(pattern, l)][-limit:]
text += ["### Tests (step c)", "", "```"]
text += tail_lines(os.path.join(os.environ["OUT"], "tests.log"),
                   r"^(FAILED|ERROR|SKIPPED|=+ .*(passed|failed|error|skipped|no tests ran).* =+$)|Timeout") or ["(nothing)"]
text += ["```", "", "### compute-sanitizer (step d)", "", "```"]
text += tail_lines(os.path.join(os.environ["OUT"], "sanitize.log"),
                   r"SUMMARY|compute-sanitizer .* exit|SKIPPED|sanitize case|FAILED|NOT RUN|rel\. error|plain run") or ["(nothing)"]
text += ["```", "", "### Benchmark runs (step e)", "", "```"]
text += tail_lines(os.path.join(os.environ["OUT"], "bench.log"),
                   r"^(FAILED|ERROR|SKIPPED|\+ GTK_BENCH|[0-9]+ (passed|failed)|=+ .*(passed|failed|error|skipped).* =+$)|Timeout") or ["(nothing)"]
text += ["```", ""]
open(md_path, "w").write("\n".join(text) + "\n")
print(f"wrote {md_path}")
EOF
printf '%s\t%s\t%s\t%s\n' "f report" "$RESERVE" "$(( $(date +%s) - t_report ))" "wrote $(basename "$MD")" >>"$TIMINGS"

# summary at the end of the output (what the device tool's output_tail shows)
echo
echo "================ step timings (session $(elapsed) s of $TOTAL s; c and d ran together)"
awk -F'\t' '{printf "  %-18s budget %5s s  took %5s s  %s\n", $1, $2, $3, $4}' "$TIMINGS"
echo "================ tests"
grep -E "^(FAILED|ERROR)|^=+ .*(passed|failed|error|no tests ran).* =+$" "$OUT/tests.log" 2>/dev/null | tail -25
echo "================ sanitizer"
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|compute-sanitizer .* exit|SKIPPED|sanitize case|plain run" "$OUT/sanitize.log" 2>/dev/null
echo "================ benchmarks ($MD)"
grep -E "^\| attention" "$MD" 2>/dev/null | head -12
grep -E "^=+ .*(passed|failed|error|skipped).* =+$|^FAILED|^ERROR" "$OUT/bench.log" 2>/dev/null | tail -8
echo "================ files in $OUT"
ls -la "$OUT" | tail -n +2
rm -rf "$WORK"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
