"""Geometric positional-encoding op s_i = Σ_j φ(rinv_ij): gtkernels backends vs eager gtkernels_py and its compile.

Same shapes and labels as test_attention.py, without heads (φ = 1→50→1, GELU); there is no FlexAttention or SDPA
form of this op. "fwd+bwd" takes gradients of the positions and every φ weight.
"""
from __future__ import annotations


import pytest
import torch

import gtkernels
import gtkernels_py
from benchmarks import baselines
from benchmarks.common import (DEVICE, MODES, SHAPES, backend_labels, first_call, get_batch, is_smoke, measure,
                               oracle, pass_flops, skip_if_too_big)

LABELS = backend_labels() + ["compile"]
SMOKE_BASELINE_SHAPE, SMOKE_COMPILE_MODE = "smoke-qm9-padded", "fwd"


def estimate(label: str, batch, mode: str):
    """(bytes, seconds or None) of one call: the reference materialises B×N×N×50 φ activations."""
    fwd, cpu = mode == "fwd", DEVICE.type == "cpu"
    pos64 = 48 if batch.pos.dtype == torch.float64 else 0
    if label in ("reference", "compile"):
        python = batch.molecules * (0.3e-3 if fwd else 1e-3) if batch.layout == "packed" else 0.0
        return batch.dense_pairs * ((420 if fwd else 460) + pos64), (
            batch.dense_pairs * (0.16 if fwd else 0.45) * 1e-6 + python if cpu else None)
    return 8 * batch.rows_numel * 8, (batch.pairs * (25 if fwd else 80) * 1e-9 if cpu else None)


def phi_params():
    torch.manual_seed(0)
    return [p.detach().to(DEVICE) for p in gtkernels_py.GeometricEncoding(512).params()]


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_encoding(benchmark, shape, mode, label):
    if is_smoke(shape) and label == "compile" and (shape, mode) != (SMOKE_BASELINE_SHAPE, SMOKE_COMPILE_MODE):
        pytest.skip("smoke: compile runs on one smoke case only")
    batch = get_batch(shape)
    if batch.layout == "packed" and label == "compile":
        pytest.skip(baselines.COMPILE_PACKED_REASON)
    skip_if_too_big(f"{label} encoding {shape} {mode}", *estimate(label, batch, mode))

    grad = mode != "fwd"
    pos = batch.pos.detach().requires_grad_(grad)
    phi = [p.requires_grad_(grad) for p in phi_params()]
    leaves = [pos, *phi]
    info = dict(op="encoding", label=label, backend=label, mode=mode, heads=0, d_k=0, **batch.info(),
                psi_flops=pass_flops(phi, batch.pairs, mode))
    if label == "compile":
        fn = baselines.compiled(gtkernels_py.geometric_encoding)

        def forward():
            return fn(pos, phi, batch.mask)
    else:
        def forward():
            return gtkernels.geometric_encoding(pos, phi, batch.mask, cu_seqlens=batch.cu_seqlens, backend=label,
                                                validate=False)

    name, want = (label, None) if label == "reference" else oracle(
        ("encoding", shape), lambda b: estimate(b, batch, "fwd"),
        lambda b: gtkernels.geometric_encoding(pos, phi, batch.mask, cu_seqlens=batch.cu_seqlens, backend=b,
                                               validate=False))
    first_call(label, forward, grad, info, name, want)

    def step():
        with torch.set_grad_enabled(grad):
            s = forward()
            if grad:
                torch.autograd.grad(s.sum(), leaves)

    benchmark.group = f"encoding {shape} {mode}"
    measure(benchmark, step, info, None if label == "compile" else info["first_call_s"] * (3 if grad else 1))
