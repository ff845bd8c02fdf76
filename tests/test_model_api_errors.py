"""Wrong input to the model and the attention module raises ValueError / TypeError naming the argument and its
shape (never an IndexError or a broadcasting error from inside torch); the model's repr names public classes."""
import re

import pytest
import torch

import gtkernels
import gtkernels_py
from gtkernels.data import pack, pad
from gtkernels.models import GeometricTransformer
from gtkernels.nn import FusedGeometricAttention
from helpers import qm9_molecules


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GeometricTransformer("tiny", num_layers=1, backend="reference").double()


def _ch4():
    z = torch.tensor([[6, 1, 1, 1, 1]])
    pos = torch.tensor([[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                         [0.63, -0.63, -0.63]]], dtype=torch.float64)
    return z, pos


def test_atomic_number_beyond_embedding(model):
    z, pos = _ch4()
    z[0, 2] = 92
    with pytest.raises(ValueError, match=r"z contains atomic number 92 .*molecule 0, atom 2.*1\.\.49 \(max_z = 50"):
        model(z, pos)
    z[0, 2] = -3
    with pytest.raises(ValueError, match=r"z contains -3"):
        model(z, pos)


def test_pos_shape_must_match_z(model):
    z, pos = _ch4()
    with pytest.raises(ValueError, match=r"pos must have shape \(1, 5, 3\) to match z \(1, 5\), got \(1, 4, 3\)"):
        model(z, pos[:, :4])


def test_one_dimensional_z_needs_cu_seqlens(model):
    z, pos = _ch4()
    with pytest.raises(ValueError, match=r"z has shape \(5,\).*cu_seqlens.*padded batch z \[B, N\]"):
        model(z[0], pos[0])
    with pytest.raises(ValueError, match=r"with cu_seqlens, z must be packed \[T\], got shape \(1, 5\)"):
        model(z, pos, cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(TypeError, match="z must be an integer tensor.*float32"):
        model(z.float(), pos)


def test_uint8_z_as_molecule_stores_it(model):
    mols = qm9_molecules(3)
    assert mols[0].z.dtype.name == "uint8"
    z, pos, mask = pad(mols, torch.float64)
    want = model(z, pos, mask)
    got = model(z.to(torch.uint8), pos, mask)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    # uint8 must index the embedding, not act as a boolean mask: the answer differs from an all-carbon one
    assert not torch.allclose(model(torch.full_like(z, 6) * mask, pos, mask), want)
    zp, pp, cu = pack(mols, torch.float64)
    assert torch.allclose(model(zp.to(torch.uint8), pp, cu_seqlens=cu), want, rtol=1e-12, atol=0)
    assert torch.allclose(model(zp.int(), pp, cu_seqlens=cu), want, rtol=1e-12, atol=0)


def test_attention_dtype_mismatch_is_a_clear_type_error():
    attn = FusedGeometricAttention(16, 4, backend="reference")
    x, pos = torch.randn(1, 3, 16, dtype=torch.float64), torch.randn(1, 3, 3) * 2
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but FusedGeometricAttention's weights are "
                                        r"torch.float32.*x.to\(torch.float32\).*module.to\(torch.float64\)"):
        attn(x, pos)
    assert attn(x.float(), pos).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the input: not an error
        assert attn(x.float(), pos).dtype == torch.bfloat16


def test_repr_names_only_public_classes():
    for m in (GeometricTransformer("tiny", num_layers=1), FusedGeometricAttention(16, 4)):
        text = repr(m)
        assert not re.findall(r"\b_\w*\(", text), text
        public = (gtkernels, gtkernels.nn, gtkernels.models, gtkernels_py, torch.nn)
        for sub in m.modules():
            cls = type(sub)
            assert not cls.__name__.startswith("_")
            assert any(getattr(ns, cls.__name__, None) is cls for ns in public), cls
