"""The whole R-MAT model (gtkernels_py.rmat.RMAT, gtkernels.models.RMAT) against a transcription of the released
huggingmolecules ``RMatModel`` (its layout, its state-dict names), and the fused model against the eager one."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gtkernels.models import RMAT, RMAT_PRESETS
from gtkernels.ops.relation_code import decode_graph_relation, unpack_graph_code
from gtkernels_py.rmat import RMAT as SpecRMAT
from tests.test_relative_reference import released_bessel, released_self_attention

DT = torch.float64


def _batch(n_sizes=(6, 3, 9, 1), seed=0):
    """Synthetic featurised molecules, padded: node features as the featuriser writes them (dummy first),
    bonded chains, positions; ``(features [B, N, 37], pos [B, N, 3], code [B, N, N], mask [B, N])``."""
    from gtkernels.ops.relation_code import encode_graph_relation
    gen = np.random.default_rng(seed)
    B, N = len(n_sizes), max(n_sizes) + 1
    features = torch.zeros(B, N, 37, dtype=DT)
    pos = torch.zeros(B, N, 3, dtype=DT)
    code = torch.zeros(B, N, N, dtype=torch.int16)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for b, n in enumerate(n_sizes):
        features[b, 0, 1] = 1
        for i in range(1, n + 1):   # element, degree, H count, charge one-hots + ring / aromatic flags
            for start, width in ((2, 11), (13, 6), (19, 5), (24, 11)):
                features[b, i, start + gen.integers(width)] = 1
            features[b, i, 35:] = torch.from_numpy(gen.integers(0, 2, 2)).to(DT)
        pos[b, 1:n + 1] = torch.from_numpy(gen.normal(size=(n, 3)) * 2.0)
        bonds = torch.zeros(n + 1, n + 1, 8, dtype=torch.int64)
        hops = torch.full((n + 1, n + 1), -1, dtype=torch.int64)
        hops[0, 0] = 0
        for i in range(n):
            for j in range(n):
                hops[i + 1, j + 1] = abs(i - j)          # a chain
            if i + 1 < n:
                t = 1 + int(gen.integers(4))
                bonds[i + 1, i + 2, t] = bonds[i + 2, i + 1, t] = 1
                bonds[i + 1, i + 2, 6] = bonds[i + 2, i + 1, 6] = int(gen.integers(2))
        code[b, :n + 1, :n + 1] = encode_graph_relation(bonds, hops)
        mask[b, :n + 1] = True
    return features, pos, code, mask


def released_model(sd, node_features, edges_att, h, n_layers):
    """huggingmolecules RMatModel.forward at eval, transcribed from models_rmat.py / models_common_utils.py:
    node features [B, N, 37], edges_att [B, C, N, N] channel-first; ``sd`` holds its state-dict names."""
    mask = torch.sum(torch.abs(node_features), dim=-1) != 0
    x = F.linear(node_features, sd["src_embed.lut.weight"], sd["src_embed.lut.bias"])

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])

    for layer in range(n_layers):
        pre = f"encoder.layers.{layer}."
        attn = {k[len(pre + "self_attn."):]: v for k, v in sd.items() if k.startswith(pre + "self_attn.")}
        x = x + released_self_attention(attn, ln(x, pre + "sublayer.0.norm"), edges_att, mask.to(x.dtype), h)
        y = ln(x, pre + "sublayer.1.norm")
        ff = pre + "feed_forward.linears."
        y = F.leaky_relu(F.linear(y, sd[ff + "0.weight"], sd[ff + "0.bias"]), 0.1)
        x = x + F.linear(y, sd[pre + "feed_forward.linears.1.weight"], sd[pre + "feed_forward.linears.1.bias"])
    x = ln(x, "encoder.norm")
    m = mask.unsqueeze(-1).to(x.dtype)
    out_masked = x * m
    att = F.linear(torch.tanh(F.linear(out_masked, sd["generator.att_net.0.weight"])), sd["generator.att_net.2.weight"])
    att = torch.softmax(att.masked_fill(m == 0, -1e9), dim=1)
    pooled = torch.matmul(att.transpose(-1, -2), out_masked).reshape(x.shape[0], -1)
    return F.linear(pooled, sd["generator.proj.weight"], sd["generator.proj.bias"])


def _bessel64(dist, num_radial=32, cutoff=20.0, exponent=5.0):
    """released_bessel with nπ in float64 (the released layer rounds it to float32, a 1e-7 relative phase
    error that the spec does not copy, docs/semantics.md §6.2)."""
    x = (dist[..., None] + 1e-6) / cutoff
    p = exponent + 1
    env = 1 / x - (p + 1) * (p + 2) / 2 * x ** (p - 1) + p * (p + 2) * x ** p - p * (p + 1) / 2 * x ** (p + 1)
    env = torch.where(x < 1, env, torch.zeros_like(x))
    return (env * torch.sin(math.pi * torch.arange(1, num_radial + 1, dtype=DT) * x)).permute(0, 3, 1, 2)


def _released_edges(pos, code, mask, basis=_bessel64):
    """The released collate's edges_att [B, 46, N, N]: bond + hop channels (0 on padding), the basis of the
    distance matrix (10⁶ Å on the dummy node's pairs, 0 on padded pairs, so their basis is that of d = 0)."""
    pairs = mask[:, :, None] & mask[:, None, :]
    graph = decode_graph_relation(code, DT, validate=False).masked_fill(~pairs[..., None], 0.0)
    dist = torch.cdist(pos, pos)
    dist[:, 0, :], dist[:, :, 0] = 1e6, 1e6
    dist = dist.masked_fill(~(mask[:, :, None] & mask[:, None, :]), 0.0)
    return torch.cat([graph.permute(0, 3, 1, 2), basis(dist).to(DT)], dim=1)


def _random_state(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=gen, dtype=DT) * (0.5 / math.sqrt(v.shape[-1]) if v.dim() > 1 else 0.2)
          for k, v in model.state_dict().items()}
    for k in sd:
        if k.endswith("norm.weight"):
            sd[k] = 1.0 + sd[k]
    model.load_state_dict(sd, strict=True)
    return sd


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])   # triton: the interpreter on CPU
def test_fused_and_spec_models_match_released_transcription(backend):
    """One state dict into the released transcription, the eager spec and the fused model: float64 agreement."""
    features, pos, code, mask = _batch()
    model = RMAT("tiny", backend=backend).to(DT).eval()
    sd = _random_state(model)
    spec = SpecRMAT(num_layers=2, d_model=32, num_heads=4, d_ff=64).to(DT).eval()
    spec.load_state_dict(sd, strict=True)
    with torch.no_grad():
        want = released_model(sd, features, _released_edges(pos, code, mask), h=4, n_layers=2)
        got = model(features, pos, code, mask)
        eager = model.reference_forward(features, pos, code, mask)
        # the spec takes b channel-last; the released collate's padded pairs hold the basis of d = 0, which the
        # spec zeroes: they are never read (padded keys are masked), so the outputs agree all the same
        spec_out = spec(features, _released_edges(pos, code, mask).permute(0, 2, 3, 1), mask)
        as_released = released_model(sd, features, _released_edges(pos, code, mask, released_bessel), h=4,
                                     n_layers=2)
    assert want.shape == got.shape == (4, 1)
    for out in (got, eager, spec_out):
        torch.testing.assert_close(out, want, rtol=1e-11, atol=1e-11)
    # with the released float32 nπ: the phase error only
    torch.testing.assert_close(got, as_released, rtol=1e-5, atol=1e-6)


def test_packed_equals_padded_and_gradients_match_eager():
    features, pos, code, mask = _batch(seed=2)
    model = RMAT("tiny", backend="cpu").to(DT)
    _random_state(model, seed=3)
    counts = mask.sum(1)
    cu = torch.zeros(len(counts) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(counts, 0)
    pairs = mask[:, :, None] & mask[:, None, :]
    packed = model(features[mask], pos[mask], code[pairs], cu_seqlens=cu, max_seqlen=int(counts.max()))
    padded = model(features, pos, code, mask)
    torch.testing.assert_close(packed, padded, rtol=1e-12, atol=1e-12)
    assert torch.equal(unpack_graph_code(code[pairs], cu.long(), code.shape[1])[pairs], code[pairs])
    packed.sum().backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.reference_forward(features, pos, code, mask).sum().backward()
    for name, p in model.named_parameters():
        if name.endswith(("relative_u", "relative_K.nn.3.bias")):   # exactly 0 fused, rounding noise eager
            assert fused[name].abs().max() == 0 and p.grad.abs().max() < 1e-12, name
            continue
        torch.testing.assert_close(fused[name], p.grad, rtol=1e-9, atol=1e-11, msg=name)


def test_released_state_dict_names_and_shapes():
    """The full RMatModel's parameter names and shapes at R-MAT's released configuration (d_model 768, 12 heads,
    10 layers, feed-forward 1536, grover pooling 128 → 4, d_atom 37, d_edge 46), written out from its code."""
    d, h, dk, c, ff = 768, 12, 64, 46, 1536
    want = {"src_embed.lut.weight": (d, 37), "src_embed.lut.bias": (d,), "encoder.norm.weight": (d,),
            "encoder.norm.bias": (d,), "generator.att_net.0.weight": (128, d), "generator.att_net.2.weight": (4, 128),
            "generator.proj.weight": (1, 4 * d), "generator.proj.bias": (1,)}
    for layer in range(10):
        pre = f"encoder.layers.{layer}."
        for i in range(3):
            want[f"{pre}self_attn.linear_layers.{i}.weight"] = (d, d)
            want[f"{pre}self_attn.linear_layers.{i}.bias"] = (d,)
        want[f"{pre}self_attn.output_linear.weight"], want[f"{pre}self_attn.output_linear.bias"] = (d, d), (d,)
        want[f"{pre}self_attn.attention.relative_u"] = (1, h, 1, dk)
        want[f"{pre}self_attn.attention.relative_v"] = (1, h, 1, dk, 1)
        for name in ("relative_K", "relative_V"):
            want[f"{pre}self_attn.attention.{name}.nn.0.weight"] = (dk, c)
            want[f"{pre}self_attn.attention.{name}.nn.0.bias"] = (dk,)
            want[f"{pre}self_attn.attention.{name}.nn.3.weight"] = (d, dk)
            want[f"{pre}self_attn.attention.{name}.nn.3.bias"] = (d,)
        want[f"{pre}feed_forward.linears.0.weight"], want[f"{pre}feed_forward.linears.0.bias"] = (ff, d), (ff,)
        want[f"{pre}feed_forward.linears.1.weight"], want[f"{pre}feed_forward.linears.1.bias"] = (d, ff), (d,)
        for i in range(2):
            want[f"{pre}sublayer.{i}.norm.weight"], want[f"{pre}sublayer.{i}.norm.bias"] = (d,), (d,)
    with torch.device("meta"):
        got = {k: tuple(v.shape) for k, v in RMAT("released").state_dict().items()}
        spec = {k: tuple(v.shape) for k, v in SpecRMAT().state_dict().items()}
    assert got == want and spec == want
    assert RMAT_PRESETS["released"] == dict(num_layers=10, d_model=768, num_heads=12, d_ff=1536)


def test_xavier_initialisation_and_dtype():
    torch.manual_seed(0)
    model = RMAT("tiny")
    w = model.src_embed.lut.weight
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    features, pos, code, mask = _batch()
    assert model(features.float(), pos, code, mask).dtype == torch.float32


def test_bad_inputs_name_the_argument():
    model = RMAT("tiny", backend="cpu")
    features, pos, code, mask = _batch()
    f = features.float()
    with pytest.raises(ValueError, match="features must be"):
        model(f[..., :36], pos, code, mask)
    with pytest.raises(ValueError, match="pos must have shape"):
        model(f, pos[:, :-1], code, mask)
    with pytest.raises(TypeError, match="graph_code must be a torch.Tensor"):
        model(f, pos, code.numpy(), mask)
    bad = code.clone()
    bad[0, 1, 2] = 1000
    with pytest.raises(ValueError, match="invalid graph code"):
        model(f, pos, bad, mask)
    with pytest.raises(ValueError, match="unknown R-MAT preset"):
        RMAT("huge")
    with pytest.raises(ValueError, match="divisible"):
        RMAT("tiny", num_heads=5)
