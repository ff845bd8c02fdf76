"""NaN or Inf in padding slots (mask False) never changes a real result, on every backend.

A padded batch carries garbage in its padding slots: here NaN and ±Inf written into the padding rows of q, k,
v and of the upstream gradient (and of the encoding's upstream gradient). The outputs at real rows and every
gradient at real rows (q, k, v, pos) and of the ψω/φ parameters must be finite and equal to the run with
clean padding. Padding slots are scattered inside the molecules (not only at the end).
"""

import pytest
import torch

import gtkernels
from helpers import COMPILED_BACKENDS, attention_inputs, backend_device, mlp_params, random_molecules, use_backend

BACKENDS = ("reference", *COMPILED_BACKENDS)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    return use_backend(request.param, monkeypatch)


def _padded_batch(dtype):
    """Molecules of 5, 3, 7 and 1 atoms padded to 7, padding slots scattered by a permutation of the atom axis."""
    mols = random_molecules([5, 3, 7, 1], seed=31)
    q, k, v, pos, mask, _ = attention_inputs(mols, 2, 4, dtype=dtype)
    perm = torch.randperm(mask.shape[1], generator=torch.Generator().manual_seed(3))
    q, k, v, pos = (t.detach()[:, perm] for t in (q, k, v, pos))
    return q, k, v, pos, mask[:, perm]


def _poison(x, pad, seed):
    """``x`` with NaN, +Inf and −Inf at random places of its padding slots ``pad`` (bool over the leading dims)."""
    x = x.clone()
    g = torch.Generator().manual_seed(seed)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=x.dtype)
    fill = junk[torch.randint(0, 3, x[pad].shape, generator=g)]
    x[pad] = fill
    return x


def _attention(backend, q, k, v, pos, mask, psi, upstream):
    dev = backend_device(backend)
    leaves = [t.detach().to(dev).requires_grad_() for t in (q, k, v, pos, *psi)]
    out = gtkernels.geometric_attention(*leaves[:4], leaves[4:], mask.to(dev), backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_outputs=upstream.to(dev))
    return out.detach().cpu(), [g.cpu() for g in grads]


def _assert_same(name, dirty, clean):
    assert torch.isfinite(dirty).all(), f"{name}: not finite"
    assert torch.equal(dirty, clean), f"{name}: differs from the clean run by {(dirty - clean).abs().max():.3g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_attention_ignores_nan_in_padding(backend, dtype):
    q, k, v, pos, mask = _padded_batch(dtype)
    psi = [p.detach().to(dtype) for p in mlp_params([50, 50, 50], seed=2)]
    pad = ~mask
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(dtype)
    clean_out, clean_g = _attention(backend, q, k, v, pos, mask, psi, upstream)
    dirty = [_poison(t, pad, seed) for seed, t in enumerate((q, k, v))]
    dirty_out, dirty_g = _attention(backend, *dirty, pos, mask, psi, _poison(upstream, pad, 9))
    _assert_same("out at real rows", dirty_out[mask], clean_out[mask])
    for name, a, b in zip(["q", "k", "v", "pos"], dirty_g[:4], clean_g[:4]):
        _assert_same(f"d{name} at real rows", a[mask], b[mask])
    for i, (a, b) in enumerate(zip(dirty_g[4:], clean_g[4:])):
        _assert_same(f"dpsi[{i}]", a, b)


def test_encoding_ignores_nan_in_padding_upstream(backend):
    _, _, _, pos, mask = _padded_batch(torch.float64)
    phi = [p.detach() for p in mlp_params([50], seed=5)]
    upstream = torch.randn(mask.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    runs = []
    for up in (upstream, _poison(upstream, ~mask, 7)):
        dev = backend_device(backend)
        leaves = [t.detach().to(dev).requires_grad_() for t in (pos, *phi)]
        s = gtkernels.geometric_encoding(leaves[0], leaves[1:], mask.to(dev), backend=backend)
        grads = torch.autograd.grad(s, leaves, grad_outputs=up.to(dev))
        runs.append((s.detach().cpu(), [g.cpu() for g in grads]))
    (s_c, g_c), (s_d, g_d) = runs
    _assert_same("s", s_d, s_c)
    _assert_same("dpos at real rows", g_d[0][mask], g_c[0][mask])
    for i, (a, b) in enumerate(zip(g_d[1:], g_c[1:])):
        _assert_same(f"dphi[{i}]", a, b)
