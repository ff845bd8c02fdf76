"""A NaN or Inf coordinate of a real atom, with the checks off, gives NaN for its molecule on every backend.

With ``validate=False`` (and inside ``torch.compile``, where the data-dependent checks are skipped) nothing
stops non-finite positions. The contract (docs/semantics.md §2): the outputs at the real rows of the molecule
holding the bad coordinate are NaN, on every backend as in the reference, never finite-looking numbers; every
other molecule of the batch keeps exactly the result of a clean run. (The ``cpu``/``cuda`` kernels once mapped
NaN to 0 in ψω's ReLU, and every backend mapped an Inf coordinate to rinv = 1/Inf = 0.)
"""
import pytest
import torch

import gtkernels
from helpers import attention_inputs, backend_device, mlp_params, random_molecules
from test_padding_nan import backend  # noqa: F401 (the backend fixture, with its skips)

SIZES = [5, 3, 4]          # molecule 1 gets the bad coordinate
BAD = 1




def _inputs(layout, bad_value):
    mols = random_molecules(SIZES, seed=5)
    q, k, v, pos, mask, cu = attention_inputs(mols, 2, 4, layout=layout)
    pos = pos.detach().clone()
    dirty = pos.clone()
    if layout == "padded":
        dirty[BAD, 1, 2] = bad_value
        rows = [mask[b].nonzero()[:, 0] + b * mask.shape[1] for b in range(len(SIZES))]
    else:
        dirty[int(cu[BAD]) + 1, 2] = bad_value
        rows = [torch.arange(int(cu[b]), int(cu[b + 1])) for b in range(len(SIZES))]
    return (q.detach(), k.detach(), v.detach()), pos, dirty, mask, cu, rows


def _flat_rows(t, layout):
    """``t`` with its layout's leading dims ([B, N] or [T]) flattened to one row axis."""
    return t.reshape(-1, *t.shape[2 if layout == "padded" else 1:])


def _check(name, dirty, clean, rows, layout):
    dirty, clean = _flat_rows(dirty, layout), _flat_rows(clean, layout)
    bad = dirty[rows[BAD]]
    assert torch.isnan(bad).all(), f"{name}: the molecule with a non-finite coordinate has finite outputs {bad}"
    for b, r in enumerate(rows):
        if b != BAD:
            assert torch.equal(dirty[r], clean[r]), f"{name}: molecule {b} changed by another's bad coordinate"


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_attention(backend, layout, bad_value):
    (q, k, v), pos, dirty, mask, cu, rows = _inputs(layout, bad_value)
    psi = [p.detach() for p in mlp_params([8, 8], seed=1)]
    dev = backend_device(backend)

    def run(p):
        leaves = [t.to(dev).requires_grad_() for t in (q, k, v, p)]
        out = gtkernels.geometric_attention(*leaves, [w.to(dev) for w in psi],
                                            mask=None if mask is None else mask.to(dev),
                                            cu_seqlens=None if cu is None else cu.to(dev),
                                            backend=backend, validate=False)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        return out.detach().cpu(), [g.cpu() for g in grads]

    out, grads = run(dirty)
    out_clean, grads_clean = run(pos)
    assert torch.isfinite(out_clean).all()
    _check("out", out, out_clean, rows, layout)
    for name, g, gc in zip(("dq", "dk", "dv"), grads, grads_clean):
        _check(name, g, gc, rows, layout)
    dpos = _flat_rows(grads[3], layout)
    assert not torch.isfinite(dpos[rows[BAD]]).all(), "dpos of the bad molecule is finite"


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_encoding(backend, layout, bad_value):
    _, pos, dirty, mask, cu, rows = _inputs(layout, bad_value)
    phi = [p.detach() for p in mlp_params([8], seed=2)]
    dev = backend_device(backend)

    def run(p):
        return gtkernels.geometric_encoding(p.to(dev), [w.to(dev) for w in phi],
                                            mask=None if mask is None else mask.to(dev),
                                            cu_seqlens=None if cu is None else cu.to(dev),
                                            backend=backend, validate=False).cpu()

    _check("s", run(dirty), run(pos), rows, layout)


def test_validate_true_still_raises():
    _, _, dirty, mask, _, _ = _inputs("padded", float("nan"))
    with pytest.raises(ValueError, match="non-finite coordinate at molecule 1, atom 1"):
        gtkernels.geometric_encoding(dirty, mlp_params([8], seed=2), mask=mask)


def test_compiled_module_gives_nan(backend):
    """Inside torch.compile the checks are skipped: the op itself must still propagate NaN."""
    if backend == "triton":
        pytest.skip("torch.compile of the Triton backend is covered on GPU by tests/test_gpu_backends.py")
    torch.manual_seed(0)
    enc = gtkernels.GeometricEncoding(8, hidden=8, backend=backend).double()
    _, pos, dirty, mask, _, rows = _inputs("padded", float("nan"))
    compiled = torch.compile(enc, backend="eager", fullgraph=True)
    with torch.no_grad():
        got, clean = compiled(dirty, mask), enc(pos, mask)
    _check("compiled encoding", got, clean, rows, "padded")
