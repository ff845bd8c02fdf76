"""Fused CPU kernels vs the eager reference (gtkernels_py): geometric attention and encoding.

``pytest benchmarks/`` measures; ``pytest benchmarks -k smoke --benchmark-disable`` only checks they run.
Shapes: a QM9 batch of 128 real molecules (18 atoms on average, max 29, padded) at d_model 128 / 8 heads and
at the paper's d_model 512 / 256 heads (d_k 2), and one 1,000-atom system with 8 heads × 16.
"""
from __future__ import annotations

import functools

import pytest
import torch

import gtkernels
from benchmarks.memory import peak_extra_mib
from gtkernels.data import pad, sample_molecules

BACKENDS = [b for b in ("reference", "cpu") if b in gtkernels.backends()]
SHAPES = {  # name: (molecules, heads, d_k)
    "smoke": ("tiny", 2, 4),
    "qm9x128-h8xd16": ("qm9", 8, 16),
    "qm9x128-h256xd2": ("qm9", 256, 2),
    "n1000-h8xd16": ("big", 8, 16),
}


@functools.lru_cache(maxsize=None)
def _batch(kind: str):
    if kind == "qm9":
        return pad(sample_molecules(128, seed=0))
    g = torch.Generator().manual_seed(0)
    n = 1000 if kind == "big" else 5
    pos = torch.rand(1 if kind == "big" else 3, n, 3, generator=g) * (10.0 * n) ** (1 / 3) * 2
    return torch.ones(pos.shape[:2], dtype=torch.int64), pos, torch.ones(pos.shape[:2], dtype=torch.bool)


def _inputs(shape: str):
    kind, heads, d = SHAPES[shape]
    _, pos, mask = _batch(kind)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(tuple(mask.shape) + (heads, d), generator=g) for _ in range(3))
    psi = gtkernels.FusedGeometricAttention(heads * d, heads).transform_dist.params()
    return q, k, v, pos.clone(), mask, [p.detach() for p in psi]


def _run(benchmark, shape, fn):
    rounds = 1 if shape == "smoke" else 5
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0 if shape == "smoke" else 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(benchmark, shape, mode, backend):
    q, k, v, pos, mask, psi = _inputs(shape)
    leaves = [t.requires_grad_(mode != "fwd") for t in (q, k, v, pos, *psi)]

    def step():
        with torch.set_grad_enabled(mode != "fwd"):
            out = gtkernels.geometric_attention(q, k, v, pos, psi, mask, backend=backend, validate=False)
            if mode != "fwd":
                torch.autograd.grad(out.sum(), leaves)

    benchmark.group = f"attention {shape} {mode}"
    benchmark.extra_info.update(backend=backend, molecules=mask.shape[0], atoms=int(mask.sum()),
                                peak_mib=peak_extra_mib(step, q.device))
    _run(benchmark, shape, step)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", ["smoke", "qm9x128-h8xd16", "n1000-h8xd16"])
def test_encoding(benchmark, shape, mode, backend):
    _, _, _, pos, mask, _ = _inputs(shape)
    phi = [p.detach().requires_grad_(mode != "fwd") for p in gtkernels.GeometricEncoding(8).params()]
    pos.requires_grad_(mode != "fwd")

    def step():
        with torch.set_grad_enabled(mode != "fwd"):
            s = gtkernels.geometric_encoding(pos, phi, mask, backend=backend, validate=False)
            if mode != "fwd":
                torch.autograd.grad(s.sum(), [pos, *phi])

    benchmark.group = f"encoding {shape} {mode}"
    benchmark.extra_info.update(backend=backend, molecules=mask.shape[0], atoms=int(mask.sum()),
                                peak_mib=peak_extra_mib(step, pos.device))
    _run(benchmark, shape, step)
