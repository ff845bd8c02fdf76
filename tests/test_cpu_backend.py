"""The fused C++ CPU kernels against the reference (gtkernels_py).

float64: forward and every gradient to 1e-10 relative. float32: the fused error against the float64 reference
must be at most 2× the error of the reference itself run in float32 (FlashAttention's rule), with a floor of
1e-6 relative (a few float32 ulps after the ~50-term ψω dot products and the softmax sums).
"""
import pytest
import torch

import gtkernels
import gtkernels_py as R
from conftest import requires_cpu
from helpers import (assert_two_x_rule, attention_inputs, mlp_params, qm9_molecules, random_molecules, rel_err,
                     summation_terms)

pytestmark = requires_cpu

CASES = [  # (molecule sizes, heads, d_k, ψω hidden widths)
    ([5, 1, 7, 2], 2, 3, [50, 50, 50]),       # the paper's ψω, a one-atom molecule
    ([29, 17, 3], 256, 2, [50, 50, 50]),      # the paper's heads
    ([4, 6], 1, 16, [7]),                     # 0 hidden h→h layers
    ([9, 3, 12], 3, 1, [128, 128, 128, 128]),  # widest ψω, 3 hidden layers
    ([2, 2, 0, 3], 4, 5, [1, 1]),             # empty molecule, width 1
]


def _grads(out, inputs, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad((out * w).sum(), inputs, allow_unused=True)


def _attention_pair(mols, heads, d, widths, dtype, layout, backend):
    q, k, v, pos, mask, cu = attention_inputs(mols, heads, d, dtype=dtype, layout=layout)
    psi = mlp_params(widths, dtype=dtype, seed=1)
    out = gtkernels.geometric_attention(q, k, v, pos, psi, mask, cu_seqlens=cu, backend=backend)
    return out, _grads(out, [q, k, v, pos, *psi])


def _holes(q, k, v, pos, mask):
    perm = torch.randperm(mask.shape[1], generator=torch.Generator().manual_seed(7))
    return q[:, perm], k[:, perm], v[:, perm], pos[:, perm], mask[:, perm]


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("sizes,heads,d,widths", CASES)
def test_attention_float64(sizes, heads, d, widths, layout):
    mols = random_molecules(sizes, seed=len(sizes))
    ref, ref_g = _attention_pair(mols, heads, d, widths, torch.float64, layout, "reference")
    out, out_g = _attention_pair(mols, heads, d, widths, torch.float64, layout, "cpu")
    assert rel_err(out, ref) < 1e-10
    for name, a, b in zip(["q", "k", "v", "pos"] + [f"psi{i}" for i in range(len(ref_g) - 4)], out_g, ref_g):
        assert rel_err(a, b) < 1e-10, name


def test_attention_padding_holes_and_real_molecules():
    mols = qm9_molecules(6)
    q, k, v, pos, mask, _ = attention_inputs(mols, 4, 8)
    q, k, v, pos, mask = (t.detach() for t in _holes(q, k, v, pos, mask))
    psi = mlp_params([50, 50, 50], seed=2)
    for t in (q, k, v, pos):
        t.requires_grad_()
    outs = {b: gtkernels.geometric_attention(q, k, v, pos, psi, mask, backend=b) for b in ("reference", "cpu")}
    assert rel_err(outs["cpu"], outs["reference"]) < 1e-10
    assert (outs["cpu"][~mask] == 0).all()
    for a, b in zip(_grads(outs["cpu"], [q, k, v, pos, *psi]), _grads(outs["reference"], [q, k, v, pos, *psi])):
        assert rel_err(a, b) < 1e-10


def test_attention_packed_equals_padded():
    mols = random_molecules([8, 3, 1, 11])
    q, k, v, pos, mask, _ = attention_inputs(mols, 3, 4, layout="padded")
    qp, kp, vp, posp, _, cu = attention_inputs(mols, 3, 4, layout="packed")
    psi = mlp_params([50, 50, 50])
    padded = gtkernels.geometric_attention(q, k, v, pos, psi, mask, backend="cpu")
    packed = gtkernels.geometric_attention(qp, kp, vp, posp, psi, cu_seqlens=cu, backend="cpu")
    torch.testing.assert_close(packed, padded[mask], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("sizes,heads,d", [([29, 18, 9, 1], 8, 16), ([23, 12], 256, 2)])
def test_attention_float32_two_x_rule(sizes, heads, d):
    mols = random_molecules(sizes, seed=3)
    widths = [50, 50, 50]
    exact, exact_g = _attention_pair(mols, heads, d, widths, torch.float64, "padded", "reference")
    ref32, ref32_g = _attention_pair(mols, heads, d, widths, torch.float32, "padded", "reference")
    out32, out32_g = _attention_pair(mols, heads, d, widths, torch.float32, "padded", "cpu")
    assert out32.dtype == torch.float32
    terms = summation_terms(mols, heads, d)
    assert_two_x_rule("attn f32 out", out32, ref32, exact, terms["out"])
    for name, a, r, e in zip(["q", "k", "v", "pos"] + ["psi"] * (2 * len(widths) + 2), out32_g, ref32_g, exact_g):
        assert_two_x_rule(f"d{name} f32", a, r, e, terms[name])


def test_attention_large_molecule():
    mols = random_molecules([300], seed=5)
    ref, ref_g = _attention_pair(mols, 2, 4, [50, 50, 50], torch.float64, "packed", "reference")
    out, out_g = _attention_pair(mols, 2, 4, [50, 50, 50], torch.float64, "packed", "cpu")
    assert rel_err(out, ref) < 1e-10
    for a, b in zip(out_g, ref_g):
        assert rel_err(a, b) < 1e-10


def test_attention_empty_batch():
    for shape in [(0, 5, 2, 3), (3, 0, 2, 3)]:
        q = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        pos = torch.zeros(shape[:2] + (3,), dtype=torch.float64)
        out = gtkernels.geometric_attention(q, q, q, pos, mlp_params([4]), backend="cpu")
        assert out.shape == shape
        out.sum().backward()


def test_attention_gradients_are_deterministic():
    mols = random_molecules([20, 13, 7, 25], seed=9)
    _, g1 = _attention_pair(mols, 4, 4, [50, 50, 50], torch.float32, "packed", "cpu")
    _, g2 = _attention_pair(mols, 4, 4, [50, 50, 50], torch.float32, "packed", "cpu")
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_attention_gradcheck():
    mols = random_molecules([4, 1, 3], seed=2)
    q, k, v, pos, mask, _ = attention_inputs(mols, 2, 2)
    psi = mlp_params([5, 5], seed=3)

    def f(q, k, v, pos, *psi):
        return gtkernels.geometric_attention(q, k, v, pos, list(psi), mask, backend="cpu", validate=False)

    assert torch.autograd.gradcheck(f, (q, k, v, pos, *psi), eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------------ encoding
def _encoding_pair(mols, widths, dtype, layout, backend):
    _, _, _, pos, mask, cu = attention_inputs(mols, 1, 1, dtype=dtype, layout=layout)
    phi = mlp_params(widths, dtype=dtype, seed=4)
    s = gtkernels.geometric_encoding(pos, phi, mask, cu_seqlens=cu, backend=backend)
    return s, _grads(s, [pos, *phi])


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("sizes,widths", [([5, 1, 7, 2], [50]), ([29, 0, 3], [16, 16]), ([40], [128, 128, 128])])
def test_encoding_float64(sizes, widths, layout):
    mols = random_molecules(sizes, seed=11)
    ref, ref_g = _encoding_pair(mols, widths, torch.float64, layout, "reference")
    out, out_g = _encoding_pair(mols, widths, torch.float64, layout, "cpu")
    assert rel_err(out, ref) < 1e-10
    for a, b in zip(out_g, ref_g):
        assert rel_err(a, b) < 1e-10


def test_encoding_float32_and_qm9():
    mols = qm9_molecules(8)
    exact, exact_g = _encoding_pair(mols, [50], torch.float64, "padded", "reference")
    ref32, ref32_g = _encoding_pair(mols, [50], torch.float32, "padded", "reference")
    out32, out32_g = _encoding_pair(mols, [50], torch.float32, "padded", "cpu")
    terms = summation_terms(mols)
    assert_two_x_rule("enc f32 s", out32, ref32, exact, terms["s"])
    for name, a, r, e in zip(["enc_pos", "phi", "phi", "phi", "phi"], out32_g, ref32_g, exact_g):
        assert_two_x_rule(f"d{name} f32", a, r, e, terms[name])


def test_encoding_gradcheck():
    mols = random_molecules([3, 4, 1], seed=6)
    _, _, _, pos, mask, _ = attention_inputs(mols, 1, 1)
    phi = mlp_params([6], seed=5)

    def f(pos, *phi):
        return gtkernels.geometric_encoding(pos, list(phi), mask, backend="cpu", validate=False)

    assert torch.autograd.gradcheck(f, (pos, *phi), eps=1e-6, atol=1e-7)


# -------------------------------------------------------------------------------------------------------- modules
def test_module_matches_reference_module_via_saved_state_dict(tmp_path):
    torch.manual_seed(0)
    ref = R.GeometricAttention(64, 8).double()
    torch.save(ref.state_dict(), tmp_path / "attn.pt")
    fused = gtkernels.FusedGeometricAttention(64, 8, backend="cpu").double()
    fused.load_state_dict(torch.load(tmp_path / "attn.pt", weights_only=True))
    mols = qm9_molecules(4)
    from gtkernels.data import pad
    z, pos, mask = pad(mols, torch.float64)
    x = torch.randn(z.shape + (64,), dtype=torch.float64)
    torch.testing.assert_close(fused(x, pos, mask), ref(x, pos, mask), rtol=1e-10, atol=1e-12)

    enc_ref = R.GeometricEncoding(64).double()
    enc = gtkernels.GeometricEncoding(64, backend="cpu").double()
    enc.load_state_dict(enc_ref.state_dict())
    torch.testing.assert_close(enc(pos, mask), enc_ref(pos, mask), rtol=1e-10, atol=1e-12)


def test_fused_module_invariances():
    """Rotation/translation invariance, permutation equivariance and padding independence, through the kernels."""
    torch.manual_seed(2)
    attn = gtkernels.FusedGeometricAttention(32, 4, backend="cpu").double()
    from gtkernels.data import pad
    z, pos, mask = pad(qm9_molecules(3), torch.float64)
    x = torch.randn(z.shape + (32,), dtype=torch.float64)
    base = attn(x, pos, mask)
    rot, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    torch.testing.assert_close(attn(x, pos @ rot.T + torch.tensor([1.0, -4.0, 2.5], dtype=torch.float64), mask),
                               base)
    perm = torch.randperm(z.shape[1])
    torch.testing.assert_close(attn(x[:, perm], pos[:, perm], mask[:, perm]), base[:, perm])
    extra = 3
    x2 = torch.cat([x, torch.randn(x.shape[0], extra, 32, dtype=x.dtype)], 1)
    pos2 = torch.cat([pos, torch.randn(x.shape[0], extra, 3, dtype=pos.dtype)], 1)
    mask2 = torch.cat([mask, torch.zeros(x.shape[0], extra, dtype=torch.bool)], 1)
    torch.testing.assert_close(attn(x2, pos2, mask2)[:, :z.shape[1]][mask], base[mask])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_float64_positions_keep_far_fragments_exact(backend):
    """The paper's augmentation puts a second molecule 1e4 Å away. float32 coordinates there resolve ~1e-3 Å;
    float64 positions with float32 features keep the result at float32 accuracy."""
    a, b = qm9_molecules(2, seed=4)
    pos64 = torch.cat([torch.from_numpy(a.pos), torch.from_numpy(b.pos) + 1e4])
    cu = torch.tensor([0, pos64.shape[0]], dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(pos64.shape[0], 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    psi = mlp_params([50, 50, 50], seed=1)
    exact = R.geometric_attention(q, k, v, pos64, psi, cu_seqlens=cu)
    psi32 = [p.detach().float() for p in psi]

    def run(pos):
        return gtkernels.geometric_attention(q.float(), k.float(), v.float(), pos, psi32, cu_seqlens=cu,
                                             backend=backend)

    err64, err32 = rel_err(run(pos64), exact), rel_err(run(pos64.float()), exact)
    assert err64 < 1e-5
    assert err32 > 10 * err64
    pos = pos64.clone().requires_grad_()
    run(pos).sum().backward()
    assert pos.grad.dtype == torch.float64 and torch.isfinite(pos.grad).all()
