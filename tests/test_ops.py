"""Custom-op registration (opcheck), torch.compile, and state-dict compatibility with the paper's code."""
import pytest
import torch
import torch.nn as nn

import gtkernels
import gtkernels_py
from conftest import requires_extension
from gtkernels.ops import registry
from gtkernels.ops.layout import packed_segments, padded_segments, padded_to_rows
from helpers import attention_inputs, mlp_params, random_molecules, rel_err

# Parameter names of the paper's MultiHeadedAttention and Pos_encoding (yoniLc/GeometricTransformerMolecule).
PAPER_ATTENTION_KEYS = {f"linears.{i}.weight" for i in range(4)} | {
    f"transform_dist.seq.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")}
PAPER_ENCODING_KEYS = {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "embed.weight", "embed.bias"}


def test_state_dict_names_follow_the_paper():
    assert set(gtkernels.FusedGeometricAttention(32, 4).state_dict()) == PAPER_ATTENTION_KEYS
    assert set(gtkernels.GeometricEncoding(32).state_dict()) == PAPER_ENCODING_KEYS
    sd = gtkernels.FusedGeometricAttention(32, 4).state_dict()
    assert sd["linears.0.weight"].shape == (32, 32) and sd["transform_dist.seq.2.weight"].shape == (50, 50)


MAXA = 5  # the largest molecule of _row_inputs


def _row_inputs(dtype, layout):
    mols = random_molecules([5, 1, 3])
    q, k, v, pos, mask, cu = attention_inputs(mols, 2, 3, dtype=dtype, layout=layout)
    psi = mlp_params([6, 6], dtype=dtype)
    if layout == "packed":
        seg, valid = packed_segments(cu), None
    else:
        seg, valid = padded_segments(q.shape[0], q.shape[1], mask, q.device)
        q, k, v, pos = (padded_to_rows(t).detach().requires_grad_() for t in (q, k, v, pos))
    pos = pos.detach().double().requires_grad_()  # the kernels take float64 positions
    return q, k, v, pos, psi, seg, valid


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_opcheck(dtype, layout):
    q, k, v, pos, psi, seg, valid = _row_inputs(dtype, layout)
    scale = 0.5
    torch.library.opcheck(registry.attention_fwd, (q, k, v, pos, psi, seg, valid, MAXA, scale, "ieee", "cpu"))
    out, lse = registry.attention_fwd(q, k, v, pos, psi, seg, valid, MAXA, scale, "ieee", "cpu")
    dout = torch.randn_like(out)
    # the backward op has no autograd formula (no double backward): opcheck it on plain tensors
    plain = [t.detach() for t in (q, k, v, pos)]
    torch.library.opcheck(registry.attention_bwd,
                          (dout.detach(), *plain, [p.detach() for p in psi], seg, valid, MAXA, scale, "ieee",
                           out.detach(), lse.detach(), "cpu"))
    phi = mlp_params([5], dtype=dtype)
    torch.library.opcheck(registry.encoding_fwd, (pos, phi, seg, valid, MAXA, "ieee", "cpu"))
    ds = torch.randn(pos.shape[0], dtype=dtype)
    torch.library.opcheck(registry.encoding_bwd, (ds, pos.detach(), [p.detach() for p in phi], seg, valid, MAXA,
                                                   "ieee", "cpu"))


class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 32, padding_idx=0)
        self.enc = gtkernels.GeometricEncoding(32)
        self.attn = gtkernels.FusedGeometricAttention(32, 4)
        self.out = nn.Linear(32, 1)

    def forward(self, z, pos, mask):
        x = self.emb(z) + self.enc(pos, mask)
        x = x + self.attn(x, pos, mask)
        return (self.out(x).squeeze(-1) * mask).sum(-1)


@requires_extension
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = _TinyModel()
    mols = random_molecules([6, 3, 9])
    from gtkernels.data import pad
    z, pos, mask = pad(mols)
    z = z.clamp(max=9)
    pos.requires_grad_()
    eager = model(z, pos, mask)
    (g_eager,) = torch.autograd.grad(eager.sum(), pos)
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(z, pos, mask)
    (g_got,) = torch.autograd.grad(got.sum(), pos)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_got, g_eager, rtol=1e-4, atol=1e-5)


def test_backends_listing_and_auto():
    names = gtkernels.backends()
    assert names[0] == "reference"
    assert ("cpu" in names) == gtkernels.extension_available()


def test_reference_backend_equals_gtkernels_py():
    mols = random_molecules([4, 2])
    q, k, v, pos, mask, _ = attention_inputs(mols, 2, 2)
    psi = mlp_params([5])
    torch.testing.assert_close(gtkernels.geometric_attention(q, k, v, pos, psi, mask, backend="reference"),
                               gtkernels_py.geometric_attention(q, k, v, pos, psi, mask), rtol=0, atol=0)


def test_import_without_extension_falls_back_to_reference():
    """`import gtkernels` works without the compiled extension: reference only, and 'cpu' says how to build."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['gtkernels._C'] = None\n"
        "import torch, gtkernels\n"
        "names = gtkernels.backends()  # 'triton' may be listed too (GPU, or TRITON_INTERPRET=1)\n"
        "assert names[0] == 'reference' and 'cpu' not in names, names\n"
        "m = gtkernels.FusedGeometricAttention(8, 2)\n"
        "y = m(torch.randn(1, 3, 8), torch.tensor([[[0., 0, 0], [1, 0, 0], [0, 1.5, 0]]]))\n"
        "assert y.shape == (1, 3, 8)\n"
        "try:\n"
        "    gtkernels.FusedGeometricAttention(8, 2, backend='cpu')\n"
        "except RuntimeError as e:\n"
        "    assert 'pip install --no-build-isolation -e .' in str(e)\n"
        "else:\n"
        "    raise SystemExit('backend=cpu without _C did not raise')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", ["auto", "reference", "cuda"])
def test_fused_attention_under_autocast_by_itself(backend, monkeypatch):
    """FusedGeometricAttention alone under torch.autocast: the projections come out in bfloat16 while ψω's weights
    stay float32; the layer runs the fused op in bfloat16 where the backend takes it (cuda: ψω cast down), else
    in float32 (the cpu kernels, the reference), and returns autocast's dtype, close to the float32 result."""
    if backend == "cuda":
        if not gtkernels.extension_available():
            pytest.skip("gtkernels._C not built")
        monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "1")
    torch.manual_seed(0)
    layer = gtkernels.FusedGeometricAttention(64, 8, backend=backend)
    mols = random_molecules([7, 4], seed=3)
    q, _, _, pos, mask, _ = attention_inputs(mols, 1, 1, dtype=torch.float32)
    x = torch.randn(*mask.shape, 64)
    exact = layer(x, pos.detach(), mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, pos.detach(), mask)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float()[mask], exact[mask]) < 3e-2
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(xg, pos.detach(), mask).float().sum().backward()
    assert torch.isfinite(xg.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())
