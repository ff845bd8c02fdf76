"""Shared test data: random and real molecules, attention inputs in both layouts, random MLP weights."""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np
import torch

from gtkernels.data import Molecule, pack, pad, qm9_sample


def random_molecule(n: int, rng: np.random.Generator, min_dist: float = 0.9) -> Molecule:
    """``n`` atoms in a box sized for ~1 atom/Å³·0.1, at least ``min_dist`` Å apart; Z from H, C, N, O, F."""
    side = max(1.5, (10.0 * n) ** (1 / 3))
    pts: List[np.ndarray] = []
    while len(pts) < n:
        p = rng.uniform(-side, side, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in pts):
            pts.append(p)
    z = rng.choice(np.array([1, 6, 7, 8, 9], dtype=np.uint8), size=n)
    return Molecule(-1, z, np.array(pts).reshape(n, 3))


def random_molecules(sizes: Sequence[int], seed: int = 0) -> List[Molecule]:
    rng = np.random.default_rng(seed)
    return [random_molecule(n, rng) for n in sizes]


def qm9_molecules(count: int, seed: int = 0) -> List[Molecule]:
    """``count`` real QM9 molecules from the committed sample (tests/data/qm9_sample.npz; no qm9pack needed):
    the ``count // 2`` largest first (29 atoms, QM9's largest), then a random draw (``seed``) from the sample."""
    sample = qm9_sample()
    largest = np.argsort(-sample.n_atoms, kind="stable")[:count // 2]
    drawn = np.random.default_rng(seed).choice(len(sample), count - count // 2, replace=False)
    return [sample.molecule(int(i)) for i in np.concatenate([largest, drawn])]


def mlp_params(widths: Sequence[int], dtype=torch.float64, seed: int = 0, gain: float = 1.0) -> List[torch.Tensor]:
    """Random ``[W0, b0, ...]`` for an MLP of layer widths ``1 → widths... → 1``, leaf tensors needing grad."""
    g = torch.Generator().manual_seed(seed)
    dims = [1, *widths, 1]
    out = []
    for a, b in zip(dims[:-1], dims[1:]):
        w = torch.randn(b, a, generator=g, dtype=torch.float64) * gain / max(a, 1) ** 0.5
        bias = torch.randn(b, generator=g, dtype=torch.float64) * 0.3
        out += [w.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()]
    return out


def attention_inputs(mols: Sequence[Molecule], heads: int, d: int, dtype=torch.float64, layout: str = "padded",
                     seed: int = 0):
    """``(q, k, v, pos, mask_or_None, cu_seqlens_or_None)`` for ``mols``; q, k, v, pos require grad.

    Padded and packed inputs of the same ``seed`` hold the same values for each real atom.
    """
    z, pos, mask = pad(mols, torch.float64)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(z.shape) + (heads, d)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    if layout == "padded":
        tensors = [t.to(dtype).requires_grad_() for t in (q, k, v, pos)]
        return (*tensors, mask, None)
    _, _, cu = pack(mols)
    tensors = [t[mask].to(dtype).requires_grad_() for t in (q, k, v, pos)]
    return (*tensors, None, cu)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max(max |b|, 1e-30)."""
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)) if b.numel() else 0.0


# ------------------------------------------------------------------------------------------ the low-precision rule
def summation_terms(mols: Sequence[Molecule], heads: int = 1, d: int = 1) -> dict:
    """How many products enter one element of each result, the summation length of the error bound below.

    Attention: ``out``, ``dq``, ``dk``, ``dv`` sum over the keys of a row and the head dimension (n·d);
    ``dpos`` over the partners and every head (n·H·d); the ψω parameter gradients over every pair of the batch
    and every head (Σn²·H·d). The encoding: ``s`` and ``dpos`` over the partners (n), φ's gradients over every
    pair (Σn²).
    """
    n = max((len(m.z) for m in mols), default=1)
    pairs = sum(len(m.z) ** 2 for m in mols)
    return {"out": n * d, "q": n * d, "k": n * d, "v": n * d, "pos": n * heads * d, "psi": pairs * heads * d,
            "s": n, "enc_pos": n, "phi": pairs}


def two_x_bound(ref: torch.Tensor, exact: torch.Tensor, n_terms: int, dtype=torch.float32) -> float:
    """FlashAttention's rule: a low-precision result may be off the float64 value by at most twice the error of
    the reference run in the same precision. Floor: eps(dtype)·√n_terms, the growth of rounding error along an
    n-term sum (a random walk of n roundings of relative size eps). A single reference run can be luckily
    accurate on one element; the floor keeps a dependency's new summation order from failing a correct kernel,
    while a real defect (a lost term, half-precision accumulation) is orders of magnitude above it."""
    return max(2.0 * rel_err(ref, exact), torch.finfo(dtype).eps * math.sqrt(max(n_terms, 1)))


def assert_two_x_rule(what: str, got: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, n_terms: int,
                      dtype=torch.float32) -> float:
    """Asserts :func:`two_x_bound` for ``got``; prints the error and bound (see them with ``pytest -s``)."""
    bound = two_x_bound(ref, exact, n_terms, dtype)
    err = rel_err(got, exact)
    print(f"[2x rule] {what}: {err:.3g} (bound {bound:.3g}, reference {rel_err(ref, exact):.3g})")
    assert err <= bound, f"{what}: error {err:.3g} above the bound {bound:.3g} (n_terms {n_terms})"
    return err


def tiny_energy_model(backend: str = "auto", gain: float = 3.0, seed: int = 0):
    """A seeded random ``tiny`` U0 model (meV): per-atom μ −3000 meV, σ 200 meV, QM9's U0 atomrefs, and its
    distance MLPs (encoding φ, attention ψω) scaled by ``gain`` so that forces are large (~0.5 eV/Å on CH3OH)."""
    from gtkernels.data.units import atomref
    from gtkernels.models import GeometricTransformer
    torch.manual_seed(seed)
    m = GeometricTransformer("tiny", backend=backend, target="U0", mean=-3000.0, std=200.0,
                             atomref=torch.as_tensor(atomref("U0")))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "encoding" in name or "transform_dist" in name:
                p.mul_(gain)
    return m.eval()


def tiny_run(run_dir: str, domain=None, backend: str = "auto") -> str:
    """A run folder (config.json + best.pt) holding :func:`tiny_energy_model`, without training; ``domain``
    (default: that of the committed QM9 sample) as ``train`` stores it."""
    import json
    import os
    from gtkernels.data.molecules import training_domain
    os.makedirs(run_dir, exist_ok=True)
    m = tiny_energy_model(backend)
    config = {"target": "U0", "unit": "meV", "model": {"preset": "tiny"}, "backend": backend,
              "domain": training_domain(qm9_sample()) if domain is None else domain}
    with open(os.path.join(run_dir, "config.json"), "w") as fh:
        json.dump(config, fh)
    torch.save({"model": m.state_dict()}, os.path.join(run_dir, "best.pt"))
    return run_dir
