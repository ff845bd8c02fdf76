"""What only the cpu backend has: its OpenMP threads. (The cases every backend shares are in
tests/test_backend_conformance.py.)

gtkernels sets a short OpenMP spin (GOMP_SPINCOUNT) before torch loads libgomp, unless the user chose a
policy or torch came first: spinning barriers made 2 threads on a loaded machine ~40x slower
(benchmarks/results/oversubscription-cpu.md)."""
import os
import subprocess
import sys

import pytest

from gtkernels import _openmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sets_short_spin_when_nothing_chosen():
    env = {}
    assert _openmp.configure(env, modules={}) == f"set GOMP_SPINCOUNT={_openmp.SPIN_COUNT}"
    assert env == {"GOMP_SPINCOUNT": str(_openmp.SPIN_COUNT)}
    assert 0 < _openmp.SPIN_COUNT <= 1000


@pytest.mark.parametrize("env, why", [({"OMP_WAIT_POLICY": "ACTIVE"}, "OMP_WAIT_POLICY=ACTIVE set by the user"),
                                      ({"GOMP_SPINCOUNT": "5"}, "GOMP_SPINCOUNT=5 set by the user"),
                                      ({"GTKERNELS_OMP_WAIT": "keep"}, "GTKERNELS_OMP_WAIT=keep")])
def test_user_choice_wins(env, why):
    before = dict(env)
    assert why in _openmp.configure(env, modules={})
    assert env == before


def test_too_late_after_torch():
    env = {}
    assert "torch was imported before gtkernels" in _openmp.configure(env, modules={"torch": object()})
    assert env == {}


def _spin_in_child(code):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GTKERNELS_OMP_WAIT")}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_import_order_in_a_fresh_interpreter():
    first = _spin_in_child("import os, gtkernels, torch; print(os.environ.get('GOMP_SPINCOUNT'))")
    assert first == str(_openmp.SPIN_COUNT)
    late = _spin_in_child("import os, torch, gtkernels; print(os.environ.get('GOMP_SPINCOUNT'))")
    assert late == "None"


def test_makefile_test_target_uses_the_package_spin():
    """``make test`` sets the same spin for pytest (which imports torch first), so the value lives in sync."""
    text = open(os.path.join(ROOT, "Makefile")).read()
    assert f",,GOMP_SPINCOUNT={_openmp.SPIN_COUNT})" in text
