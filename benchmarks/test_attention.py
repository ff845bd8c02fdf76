"""Geometric attention op: every gtkernels backend vs eager gtkernels_py, torch.compile, FlexAttention, SDPA.

``pytest benchmarks/test_attention.py`` measures; ``-k smoke --benchmark-disable`` only checks that each label runs.
Group = op, shape, heads × d_k, mode; labels: the gtkernels backends of this device (``reference`` = eager
gtkernels_py, ``cpu`` = fused C++, ``triton`` on CUDA), ``compile`` (torch.compile of gtkernels_py), ``flex``
(exact two-call FlexAttention formulation) and ``sdpa`` (SDPA *without* the gate: the lower bound).
Every alternative's forward output is checked once against an oracle (the reference where it fits, else the
fused backend) before it is timed. "fwd" runs without autograd; "fwd+bwd" takes gradients of q, k, v, positions and
every ψω weight (SDPA: q, k, v).
"""
from __future__ import annotations

import functools

import pytest
import torch

import gtkernels
import gtkernels_py
from benchmarks import baselines
from benchmarks.common import (DEVICE, HEADS, MODES, SHAPES, backend_labels, first_call, get_batch,
                               is_smoke, measure, oracle, pass_flops, skip_if_too_big)
from gtkernels_py.modules import PsiMLP

LABELS = backend_labels() + ["compile", "flex", "sdpa"]
# the CI smoke: both head shapes for the backends, the baselines on one case; compile in one mode only (a cold
# inductor cache makes each compilation ~10 s on 2 cores)
SMOKE_BASELINE_CASE = ("smoke-qm9-padded", "h8xd64")
SMOKE_COMPILE_MODE = "fwd+bwd"
CASES = [(s, h) for s in SHAPES for h in HEADS]


# ------------------------------------------------------------------------------------------------- estimates
def estimate(label: str, batch, heads: int, d_k: int, mode: str):
    """(bytes, seconds or None) of one call, from the shape: what decides the skips. Calibrated on the 2-core
    CPU runs in benchmarks/results; the time is only estimated on CPU."""
    fwd = mode == "fwd"
    dense, pairs = batch.dense_pairs, batch.pairs
    pos64 = 48 if batch.pos.dtype == torch.float64 else 0
    cpu = DEVICE.type == "cpu"
    if label in ("reference", "compile"):
        # B×N×N×50 ψω activations (kept for backward) + B×H×N×N scores / probabilities / gated matrix, plus
        # copies of q, k, v-sized tensors; bytes fitted to the resident-set peaks of 2-core CPU runs
        per_pair = (400 + pos64 + 12 * heads) if fwd else (1000 + 2 * pos64 + 20 * heads)
        per_row = heads * d_k * 4 * (4 if fwd else 8)
        us = (0.5 + 0.012 * heads) if fwd else (1.5 + 0.035 * heads)
        # packed: a Python loop over molecules, whose einsum backward grows with the heads (per-molecule copies)
        python = batch.molecules * ((1 + 0.02 * heads) if fwd else (5 + 0.18 * heads)) * 1e-3 \
            if batch.layout == "packed" else 0.0
        return dense * per_pair + batch.rows_numel * per_row, (dense * us * 1e-6 + python if cpu else None)
    if label == "flex":  # g materialised eagerly, then flex's own scores
        per_pair = 400 + pos64 + 16 * heads
        return dense * per_pair, (dense * (0.6 + 0.035 * heads) * 1e-6 if cpu else None)
    if label == "sdpa":
        return dense + 8 * batch.rows_numel * heads * d_k * 4, (
            dense * heads * (2 + d_k / 16) * 1e-9 * (1 if fwd else 4) if cpu else None)
    # fused backends: O(rows × H × d_k), nothing N×N
    return 12 * batch.rows_numel * heads * d_k * 4, (
        pairs * ((70 + 0.3 * heads) if fwd else (270 + 0.8 * heads)) * 1e-9 if cpu else None)


# ---------------------------------------------------------------------------------------------------- inputs
@functools.lru_cache(maxsize=2)
def inputs(shape: str, heads_key: str):
    """q, k, v (``[B, N, H, D]`` padded, ``[T, H, D]`` packed) and ψω weights (1→50→50→50→1), float32."""
    batch = get_batch(shape)
    heads, d_k = HEADS[heads_key]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(batch.rows_shape + (heads, d_k), generator=g).to(DEVICE) for _ in range(3))
    torch.manual_seed(0)
    psi = [p.detach().to(DEVICE) for p in PsiMLP().params()]
    return batch, q, k, v, psi


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,heads_key", CASES, ids=[f"{s}-{h}" for s, h in CASES])
def test_attention(benchmark, shape, heads_key, mode, label):
    heads, d_k = HEADS[heads_key]
    if is_smoke(shape) and label in ("compile", "flex", "sdpa") and (shape, heads_key) != SMOKE_BASELINE_CASE:
        pytest.skip("smoke: the baselines run on one smoke case only")
    if is_smoke(shape) and label == "compile" and mode != SMOKE_COMPILE_MODE:
        pytest.skip(f"smoke: compile runs in {SMOKE_COMPILE_MODE} mode only")
    batch = get_batch(shape)
    if batch.layout == "packed" and label in ("compile", "sdpa"):
        pytest.skip(baselines.COMPILE_PACKED_REASON if label == "compile" else baselines.SDPA_PACKED_REASON)
    flex_impl, flex_note = baselines.flex_plan(DEVICE, mode, batch.layout) if label == "flex" else (None, "")
    if label == "flex" and flex_impl is None:
        pytest.skip(flex_note)
    est_bytes, est_s = estimate(label, batch, heads, d_k, mode)
    skip_if_too_big(f"{label} {shape} {heads_key} {mode}", est_bytes, est_s)

    batch, q, k, v, psi = inputs(shape, heads_key)
    grad = mode != "fwd"
    q, k, v, pos = (t.detach().requires_grad_(grad) for t in (q, k, v, batch.pos))
    psi = [p.detach().requires_grad_(grad) for p in psi]
    leaves = [q, k, v, pos, *psi]
    info = dict(op="attention", label=label, backend=label, mode=mode, heads=heads, d_k=d_k, **batch.info(),
                psi_flops=pass_flops(psi, batch.pairs, mode))

    if label in backend_labels():
        def forward():
            return gtkernels.geometric_attention(q, k, v, pos, psi, batch.mask, cu_seqlens=batch.cu_seqlens,
                                                 backend=label, validate=False)
    elif label == "compile":
        fn = baselines.compiled(gtkernels_py.geometric_attention)

        def forward():
            return fn(q, k, v, pos, psi, batch.mask)
    elif label == "flex":
        flex = baselines.FlexGeometricAttention(batch.mask, flex_impl)
        info.update(impl=flex_impl, note=flex_note)

        def forward():
            return flex(q, k, v, pos, psi)
    else:  # sdpa: no gate, no ψω
        attn_mask, row_valid = baselines.sdpa_masks(batch.mask)
        leaves, info["psi_flops"] = [q, k, v], 0

        def forward():
            return baselines.sdpa_attention(q, k, v, attn_mask, row_valid)

    # The alternative must compute the same thing before it is timed. This first call (in the mode's grad
    # state) is also the compilation of compile / compiled flex, whose time is recorded as first_call_s.
    # reference and sdpa have nothing to compare with: when slow (estimated > 5 s) they skip it.
    name, want = (label, None) if label in ("reference", "sdpa") else oracle(
        ("attention", shape, heads_key), lambda b: estimate(b, batch, heads, d_k, "fwd"),
        lambda b: gtkernels.geometric_attention(q, k, v, pos, psi, batch.mask, cu_seqlens=batch.cu_seqlens,
                                                backend=b, validate=False))
    predicted = None
    if want is None and est_s is not None and est_s > 5:
        predicted = est_s
    else:
        first_call(label, forward, grad, info, name, want)
        if not (label == "compile" or flex_impl == "compiled"):
            predicted = info["first_call_s"] * (3 if grad else 1)

    def step():
        with torch.set_grad_enabled(grad):
            out = forward()
            if grad:
                torch.autograd.grad(out.sum(), leaves)

    benchmark.group = f"attention {shape} {heads_key} {mode}"
    measure(benchmark, step, info, predicted)
