"""Every bad input raises a clear error naming the argument (never a crash or a silently wrong answer)."""
import pytest
import torch

import gtkernels
from conftest import requires_extension
from helpers import attention_inputs, mlp_params, random_molecules


@pytest.fixture
def padded():
    mols = random_molecules([4, 3])
    q, k, v, pos, mask, _ = attention_inputs(mols, 2, 3)
    return [t.detach() for t in (q, k, v, pos)] + [mask, mlp_params([5, 5])]


def attn(q, k, v, pos, mask, psi, **kw):
    return gtkernels.geometric_attention(q, k, v, pos, psi, mask, **kw)


def test_good_input_passes(padded):
    attn(*padded)


@pytest.mark.parametrize("mutate,error,match", [
    (lambda a: a.__setitem__(0, a[0][0, 0]), ValueError, "q must have 3 or 4 dimensions"),
    (lambda a: a.__setitem__(1, a[1][:, :3]), ValueError, "q, k, v must have one shape"),
    (lambda a: a.__setitem__(3, a[3][..., :2]), ValueError, "pos must have shape"),
    (lambda a: a.__setitem__(4, a[4][:, :2]), ValueError, "mask has shape"),
    (lambda a: a.__setitem__(4, a[4].float()), TypeError, "mask must be a bool"),
    (lambda a: a.__setitem__(2, a[2].float()), TypeError, "v has dtype torch.float32"),
    (lambda a: a.__setitem__(0, "q"), TypeError, "q must be a torch.Tensor"),
    (lambda a: a.__setitem__(5, a[5][:3]), ValueError, "psi_params"),
    (lambda a: a.__setitem__(5, [a[5][0], a[5][1], a[5][0], a[5][1]]), ValueError, "do not chain"),
    (lambda a: a.__setitem__(5, [p.float() for p in a[5]]), TypeError, r"psi_params\[0\] has dtype"),
    (lambda a: a[3].__setitem__((0, 1, 0), float("nan")), ValueError, "non-finite coordinate at molecule 0, atom 1"),
    (lambda a: a[3].__setitem__((1, 2), a[3][1, 0] + 1e-4), ValueError, "atoms 0 and 2 of molecule 1"),
])
def test_bad_attention_input(padded, mutate, error, match):
    mutate(padded)
    with pytest.raises(error, match=match):
        attn(*padded)


def test_padding_atoms_may_sit_anywhere(padded):
    """Coordinates of padding slots (even NaN or duplicates) are ignored, not rejected."""
    q, k, v, pos, mask, psi = padded
    pos = pos.clone()
    pos[1, 3] = float("nan")
    assert torch.isfinite(attn(q, k, v, pos, mask, psi)).all()


def test_close_atoms_check_can_be_turned_off(padded):
    padded[3][1, 2] = padded[3][1, 0] + 1e-4
    attn(*padded, validate=False)
    m = gtkernels.FusedGeometricAttention(6, 2, validate=False).double()
    m(torch.randn(2, 4, 6, dtype=torch.float64), padded[3], padded[4])


def test_mask_and_cu_seqlens_together(padded):
    with pytest.raises(ValueError, match="not both"):
        attn(*padded, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))


@pytest.fixture
def packed():
    mols = random_molecules([4, 3])
    q, k, v, pos, _, cu = attention_inputs(mols, 2, 3, layout="packed")
    return [t.detach() for t in (q, k, v, pos)] + [mlp_params([5]), cu]


@pytest.mark.parametrize("cu,error,match", [
    ([0, 4, 6], ValueError, "end at the number of packed rows"),
    ([1, 4, 7], ValueError, "start at 0"),
    ([0, 5, 4, 7], ValueError, "non-decreasing"),
    ([0.0, 4.0, 7.0], TypeError, "cu_seqlens must be int32"),
])
def test_bad_cu_seqlens(packed, cu, error, match):
    q, k, v, pos, psi, _ = packed
    dtype = torch.float32 if isinstance(cu[0], float) else torch.int32
    with pytest.raises(error, match=match):
        gtkernels.geometric_attention(q, k, v, pos, psi, cu_seqlens=torch.tensor(cu, dtype=dtype))


def test_packed_without_cu_seqlens(packed):
    q, k, v, pos, psi, _ = packed
    with pytest.raises(ValueError, match="pass cu_seqlens"):
        gtkernels.geometric_attention(q, k, v, pos, psi)


def test_module_errors():
    with pytest.raises(ValueError, match="divisible"):
        gtkernels.FusedGeometricAttention(30, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        gtkernels.FusedGeometricAttention(32, 4, backend="gpu")
    m = gtkernels.FusedGeometricAttention(32, 4)
    with pytest.raises(ValueError, match="x must end with d_model = 32"):
        m(torch.randn(2, 5, 16), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="pos must have shape"):
        m(torch.randn(2, 5, 32), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        m(torch.randn(2, 5, 32), torch.randn(2, 5, 3), cu_seqlens=torch.tensor([0, 2], dtype=torch.int32))


def test_encoding_errors():
    phi = mlp_params([5])
    with pytest.raises(ValueError, match="pos must end with 3 coordinates"):
        gtkernels.geometric_encoding(torch.randn(2, 4, 2, dtype=torch.float64), phi)
    with pytest.raises(TypeError, match=r"phi_params\[2\] has dtype torch.float32"):
        gtkernels.geometric_encoding(torch.randn(2, 4, 3), phi[:2] + [p.float() for p in phi[2:]])
    with pytest.raises(TypeError, match="pos must be float32 or float64"):
        gtkernels.geometric_encoding(torch.randn(2, 4, 3).half(), phi)


@requires_extension
def test_backend_that_cannot_run_says_what_would(padded, monkeypatch):
    monkeypatch.delenv("GTKERNELS_CUDA_EMULATE", raising=False)
    q, k, v, pos, mask, psi = padded
    with pytest.raises(TypeError, match="backend='cpu' supports float32 and float64"):
        attn(q.half(), k.half(), v.half(), pos, mask, [p.half() for p in psi], backend="cpu")
    with pytest.raises(NotImplementedError, match="dropout"):
        attn(*padded, dropout_p=0.1, backend="cpu")
    with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors"):
        attn(*padded, backend="cuda")
    wide = mlp_params([200])
    with pytest.raises(ValueError, match="width <= 128"):
        attn(q, k, v, pos, mask, wide, backend="cpu")
    # auto falls back to the reference for what the kernels cannot run, and says nothing wrong
    torch.testing.assert_close(attn(q, k, v, pos, mask, wide),
                               attn(q, k, v, pos, mask, wide, backend="reference"))


def test_degenerate_inputs_give_zeros(padded):
    q, k, v, pos, mask, psi = padded
    lonely = torch.zeros_like(mask)
    lonely[:, 0] = True  # one-atom molecules
    out = attn(q, k, v, pos, lonely, psi)
    assert torch.isfinite(out).all() and (out == 0).all()
    out = attn(q, k, v, pos, torch.zeros_like(mask), psi)  # all padding
    assert (out == 0).all()


def test_gpu_backends_are_checked_per_call_not_at_construction(monkeypatch):
    """A module is built on the CPU and moved to the GPU: backend='triton' must not fail at construction."""
    monkeypatch.delenv("GTKERNELS_CUDA_EMULATE", raising=False)
    attn = gtkernels.FusedGeometricAttention(8, 2, backend="triton")
    assert attn.backend == "triton"
    assert gtkernels.FusedGeometricAttention(8, 2, backend="cuda").backend == "cuda"
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        gtkernels.FusedGeometricAttention(8, 2, backend="cuda")(torch.randn(1, 3, 8),
                                                               torch.tensor([[[0., 0, 0], [1, 0, 0], [0, 1.5, 0]]]))
