"""The AOT gate (tools/triton_aot.py, `make triton-check`) compiles what the package launches: its representative
calls reach every value of every specialisation axis, and its verdict fails on what it must fail on."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from gtkernels.contract import MAX_MLP_HIDDEN, MAX_MLP_WIDTH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "triton_aot.py")

pytest.importorskip("triton")


def _load_tool():
    spec = importlib.util.spec_from_file_location("triton_aot", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def captured():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    names = ",".join(c["name"] for c in _load_tool().configs())
    p = subprocess.run([sys.executable, TOOL, "--_capture", names], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _values(records, kernel, name):
    return {a.get("v") for r in records if r["kernel"] == kernel for a in r["args"] if a["name"] == name}


def test_capture_has_no_host_errors(captured):
    assert captured["errors"] == []
    assert {r["kernel"] for r in captured["records"]} == set(_load_tool().KERNELS)


def test_every_axis_value_is_compiled(captured):
    """Block sizes, dtypes and precisions, MLP widths (HP) and depths (NH), head dims (small and tl.dot paths)
    and the padding mask, for each of the four kernels: the values the launchers can choose."""
    from gtkernels.triton import launch
    rec = captured["records"]
    for kernel in (k for k in _load_tool().KERNELS if not k.startswith("_relative")):
        assert _values(rec, kernel, "BM") == set(launch.WARPS), kernel                       # 16 and 32
        assert _values(rec, kernel, "HAS_VALID") == {True, False}, kernel
        assert _values(rec, kernel, "HP") >= {16, 64, MAX_MLP_WIDTH}, kernel
        assert _values(rec, kernel, "NH") == set(range(-1, MAX_MLP_HIDDEN + 1)), kernel    # Linear(1→1) .. 3 hidden
        assert _values(rec, kernel, "CD") == {"fp32", "fp64"}, kernel
        assert _values(rec, kernel, "DD") == {"fp32", "fp64", "fp16", "bf16"}, kernel
        assert _values(rec, kernel, "PREC") == {"ieee", "tf32"}, kernel
        if kernel.startswith("_attention"):
            assert _values(rec, kernel, "SMALL") == {True, False}, kernel
            assert _values(rec, kernel, "DP") >= {1, 2, 4, 16, 64, launch.MAX_HEAD_DIM}, kernel
    # R-MAT: its forward takes both blocks, its backward 16 and two orientations; with and without a mask and dummy
    # nodes, both head-dim paths, φ hidden widths from 16 to the widest
    for kernel in ("_relative_fwd_kernel", "_relative_bwd_kernel"):
        assert _values(rec, kernel, "BM") == ({16} if "bwd" in kernel else set(launch.WARPS)), kernel
        assert _values(rec, kernel, "HAS_VALID") == {True, False}, kernel
        assert _values(rec, kernel, "HAS_DUMMY") == {True, False}, kernel
        assert _values(rec, kernel, "SMALL") == {True, False}, kernel
        assert _values(rec, kernel, "HU") >= {16, 64, MAX_MLP_WIDTH}, kernel
        assert _values(rec, kernel, "CD") == {"fp32", "fp64"}, kernel
    assert _values(rec, "_relative_bwd_kernel", "KEYS") == {False, True}
    # float32 runs both precisions (the only dtype where they differ)
    f32 = {a["v"] for r in rec for a in r["args"] if a["name"] == "PREC"
           and any(b["name"] == "DD" and b["v"] == "fp32" for b in r["args"])}
    assert f32 == {"ieee", "tf32"}


def test_the_gate_fails_over_a_limit():
    tool = _load_tool()
    ax = {"kernel": "attn fwd", "dtype": "float32", "prec": "ieee", "valid": True, "BM": 32, "DP": 2, "HP": 64,
          "NH": 2, "CP": 32}
    ok = {"ok": True, "shared": 6144, "regs": 200, "spill_stores": 0, "spill_loads": 0, "local": 0, "mma": 0,
          "compile_s": 3.0}
    assert tool.problems(ok, 90) == []
    assert "spills" in tool.problems(dict(ok, spill_stores=4, spill_loads=4), 80)[0]
    assert "shared memory" in tool.problems(dict(ok, shared=tool.SMEM_LIMIT[80] + 1), 80)[0]
    assert "compile error" in tool.problems({"ok": False, "error": "boom"}, 90)[0]
    report = tool.report([(ax, 90, ok, [], ["c"])], "info", [], [])
    assert "| attn fwd | float32 | ieee | yes | 32 | 2 | 64 | 2 | 32 | sm_90 | 0 | 6,144 | 200 | 0 / 0 |" in report


def test_ladder_starts_with_the_default_and_changes_no_scratch():
    from gtkernels.triton import launch
    const = {"BM": 32, "BN": 32, "UB": 32, "CP": 32, "num_warps": 8, "RG": 8}
    rungs = launch.ladder(const)
    assert rungs[0] == {} and len(rungs) == 4
    assert all(set(r) <= {"UB", "num_warps", "RG"} for r in rungs)          # CP (the scratch size) never changes
    assert all(r["RG"] == r["num_warps"] * 32 // const["BN"] for r in rungs if "num_warps" in r)   # a pair per thread
    assert launch.ladder({"BM": 16, "BN": 16, "UB": 16, "num_warps": 4}) == [{}, {"num_warps": 8, "RG": 16}]

