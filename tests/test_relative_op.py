"""The public R-MAT op gtkernels.relative_attention, its graph code and FusedRelativeAttention, against the spec
(gtkernels_py.relative_attention with b_ij from relation_features on float channels)."""
import itertools
import math

import pytest
import torch

import gtkernels
import gtkernels_py
from helpers import backend_skip_reason
from gtkernels.ops.relation_code import (CODE_LIMIT, check_graph_code, decode_graph_relation, encode_graph_relation,
                                         pack_graph_code)
from gtkernels_py import hop_counts, hop_one_hot, relation_features

DT = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)
#: The fused backends of this op (triton: its interpreter here, TRITON_INTERPRET=1 from tests/conftest.py).
FUSED = ["cpu", "triton"]


def _skip_unless_runs(backend):
    reason = backend_skip_reason(backend) if backend != "auto" else backend_skip_reason("cpu")
    if reason is not None:
        pytest.skip(reason)


# ---------------------------------------------------------------- the graph code

def _all_bond_rows():
    """Every valid bond-channel row: mask flag × bond type (none, 4 one-hot) × 3 flags (80 rows)."""
    rows = []
    for flag, bond_type, flags in itertools.product((0, 1), range(5), itertools.product((0, 1), repeat=3)):
        row = [float(flag)] + [float(bond_type == t) for t in range(1, 5)] + [float(f) for f in flags]
        rows.append(row)
    return torch.tensor(rows, dtype=DT)


def test_decode_encode_round_trip_every_combination():
    bonds = _all_bond_rows()
    hops = torch.tensor([-3, -1, 0, 1, 2, 3, 4, 5, 17])
    bond = bonds[:, None, :].expand(-1, hops.numel(), -1)
    hop = hops[None, :].expand(bonds.shape[0], -1)
    code = encode_graph_relation(bond, hop)
    assert code.dtype == torch.int16 and code.shape == hop.shape
    want = torch.cat([bond, hop_one_hot(hop).to(DT)], dim=-1)
    assert torch.equal(decode_graph_relation(code, DT), want)
    # 80 bond rows × 6 hop buckets are 480 distinct codes, all below CODE_LIMIT
    assert torch.unique(code).numel() == 480 and int(code.max()) < CODE_LIMIT and int(code.min()) >= 0
    # bool and integer bond channels give the same code
    assert torch.equal(encode_graph_relation(bond.bool(), hop), code)
    assert torch.equal(encode_graph_relation(bond.long(), hop.int()), code)


def test_every_valid_code_decodes_and_re_encodes():
    valid = []
    for value in range(-2, CODE_LIMIT + 3):
        try:
            check_graph_code("code", torch.tensor([value], dtype=torch.int16))
        except ValueError:
            continue
        valid.append(value)
    assert len(valid) == 480
    code = torch.tensor(valid, dtype=torch.int16)
    channels = decode_graph_relation(code, DT)
    hops = torch.where(channels[:, 13] == 1, -1, channels[:, 8:13].argmax(-1))
    assert torch.equal(encode_graph_relation(channels[:, :8], hops), code)


@pytest.mark.parametrize("mutate,match", [
    (lambda b, h: (b[..., :7], h), "bond_features must end with 8 bond channels"),
    (lambda b, h: (b.index_fill(-1, torch.tensor([3]), 0.5), h), "bond_features must hold 0 or 1"),
    (lambda b, h: (b.index_fill(-1, torch.tensor([1, 4]), 1.0), h), "bond_features channels 1–4"),
    (lambda b, h: (b, h.double()), "hop_counts must be an integer tensor"),
    (lambda b, h: (b, h[:, :1]), "hop_counts must have shape"),
])
def test_encode_rejects_invalid_input(mutate, match):
    bond, hops = torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=match):
        encode_graph_relation(*mutate(bond, hops))


@pytest.mark.parametrize("value", [5 << 1, 6 << 7, 7 << 7, CODE_LIMIT, -1])
def test_decode_rejects_invalid_codes(value):
    code = torch.zeros(2, 2, dtype=torch.int16)
    code[1, 0] = value
    with pytest.raises(ValueError, match=r"code holds an invalid graph code .* at index \[1, 0\]"):
        decode_graph_relation(code)
    # unchecked, the out-of-range field decodes to zero channels, the rest as usual
    assert torch.isfinite(decode_graph_relation(code, validate=False)).all()
    with pytest.raises(ValueError, match="code must be a torch.int16"):
        decode_graph_relation(code.int())


# ---------------------------------------------------------------- inputs: molecules with a dummy node

def _batch(lengths=(6, 3, 1), N=7, H=2, d_k=3, seed=0, dummy=True):
    """Random molecules, atom 0 the dummy node (when ``dummy``), padded to N, with their featuriser inputs."""
    gen = torch.Generator().manual_seed(seed)
    B, C = len(lengths), 46
    mask = torch.arange(N)[None, :] < torch.tensor(lengths, dtype=torch.int64)[:, None]
    dummies = mask & (torch.arange(N)[None, :] == 0) if dummy else torch.zeros_like(mask)
    located = mask & ~dummies
    adjacency = torch.zeros(B, N, N, dtype=torch.bool)
    bond = torch.zeros(B, N, N, 8, dtype=DT)
    rows = _all_bond_rows()[:, 1:].unique(dim=0)
    rows = rows[rows[:, :4].sum(-1) == 1]                         # a bond has one type
    for b, n in enumerate(lengths):
        start = 1 if dummy else 0
        for i in range(start + 1, n):                              # a tree with a random parent per atom
            j = int(torch.randint(start, i, (1,), generator=gen))
            if i == n - 1 and n > start + 2:
                continue                                            # leave the last atom a separate fragment
            adjacency[b, i, j] = adjacency[b, j, i] = True
            feats = torch.cat([torch.zeros(1, dtype=DT), rows[int(torch.randint(len(rows), (1,), generator=gen))]])
            bond[b, i, j] = bond[b, j, i] = feats
    hops = hop_counts(adjacency)
    pos = torch.randn(B, N, 3, generator=gen, dtype=DT) * 2.0
    pos[~mask] = math.nan                                           # padding positions are never read
    pos[dummies] = math.nan                                         # nor the dummy node's
    q, k, v = (torch.randn(B, N, H, d_k, generator=gen, dtype=DT) for _ in range(3))
    for t in (q, k, v):
        t[~mask] = math.nan
    phi_k, phi_v = ([torch.randn(d_k, C, generator=gen, dtype=DT) * C ** -0.5,
                     torch.randn(d_k, generator=gen, dtype=DT) * 0.3,
                     torch.randn(H * d_k, d_k, generator=gen, dtype=DT) * d_k ** -0.5,
                     torch.randn(H * d_k, generator=gen, dtype=DT) * 0.3] for _ in range(2))
    u, v_rel = (torch.randn(H, d_k, generator=gen, dtype=DT) for _ in range(2))
    code = encode_graph_relation(bond, hops)
    code[~(mask[:, :, None] & mask[:, None, :])] = -7               # codes of padded pairs are never read
    return dict(q=q, k=k, v=v, pos=pos, mask=mask, dummy=dummies, located=located, bond=bond, hops=hops,
                code=code, phi_k=phi_k, phi_v=phi_v, u=u, v_rel=v_rel)


def _featuriser_distances(pos, located):
    """The released featuriser's distances: Euclidean between located atoms (0 on their diagonal), 10⁶ Å for
    every pair with the dummy node, its diagonal included."""
    p = pos.masked_fill(~located[..., None], 0.0)
    n = pos.shape[1]
    eye = torch.eye(n, dtype=torch.bool)
    both = located[:, :, None] & located[:, None, :] & ~eye
    sq = ((p[:, :, None] - p[:, None, :]) ** 2).sum(-1)
    d = torch.where(both, torch.where(both, sq, 1.0).sqrt(), 0.0)
    return torch.where(located[:, :, None] & located[:, None, :], d, 1e6)


def _spec(x, **over):
    x = {**x, **over}
    rel = relation_features(x["bond"], x["hops"], _featuriser_distances(x["pos"], x["located"]), x["mask"])
    return gtkernels_py.relative_attention(x["q"], x["k"], x["v"], rel, x["phi_k"], x["phi_v"], x["mask"],
                                           u=x["u"], v_rel=x["v_rel"])


def _op(x, **kw):
    return gtkernels.relative_attention(x["q"], x["k"], x["v"], x["pos"], x["code"], x["phi_k"], x["phi_v"],
                                        x["mask"], dummy=x["dummy"], u=x["u"], v_rel=x["v_rel"], **kw)


def _leaves(x):
    """Copies of the differentiable inputs of ``x`` that require grad."""
    y = dict(x)
    for name in ("q", "k", "v", "pos", "u", "v_rel"):
        y[name] = x[name].clone().requires_grad_()
    y["phi_k"] = [p.clone().requires_grad_() for p in x["phi_k"]]
    y["phi_v"] = [p.clone().requires_grad_() for p in x["phi_v"]]
    return y


def _grads(y, out):
    weight = torch.linspace(-1, 2, out.numel(), dtype=DT).reshape(out.shape)
    (out.nan_to_num(0.0) * weight).sum().backward()
    return [y[n].grad for n in ("q", "k", "v", "pos", "u", "v_rel")] + [p.grad for p in y["phi_k"] + y["phi_v"]]


# ---------------------------------------------------------------- op == spec

def _fused_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """A fused backend's float64 gradient: within 1e-10 of the tensor's largest entry (the conformance suite's
    bound), or within TIGHT's atol (u's and c2ᴷ's gradients: the reference's rounding noise, the kernels' 0).
    The fused backward's softmax term is p (dα − delta) with delta = dout·out (FlashAttention's identity), whose
    rounding is ε·|dout|·|out| per row, where the reference's autograd forms Σ α dα from the same dα: on a row
    whose softmax is saturated the reference cancels exactly and the fused kernel to ε·|out|."""
    assert float((got - want).abs().max()) <= max(1e-10 * float(want.abs().max()), TIGHT["atol"])


@pytest.mark.parametrize("backend", ["reference", "auto", *FUSED])
def test_padded_op_matches_spec_values_and_gradients(backend):
    _skip_unless_runs(backend)
    x = _batch()
    clean = dict(x, pos=x["pos"].nan_to_num(0.0), q=x["q"].nan_to_num(0.0), k=x["k"].nan_to_num(0.0),
                 v=x["v"].nan_to_num(0.0))
    a, b = _leaves(x), _leaves(clean)
    got, want = _op(a, backend=backend), _spec(b)
    torch.testing.assert_close(got, want, **TIGHT)
    assert (got[~x["mask"]] == 0).all()
    for g, w in zip(_grads(a, got), _grads(b, want)):
        assert torch.isfinite(g).all()
        if backend == "reference":
            torch.testing.assert_close(g, w, **TIGHT)
        else:
            _fused_close(g, w)
    assert (a["pos"].grad[x["dummy"] | ~x["mask"]] == 0).all() and (a["pos"].grad[x["located"]] != 0).any()


def test_dropout_draws_as_the_spec():
    """With dropout the op runs the spec's random draws in the spec's order: one seed, one answer."""
    x = _batch(seed=7)
    clean = dict(x, q=x["q"].nan_to_num(0.0), k=x["k"].nan_to_num(0.0), v=x["v"].nan_to_num(0.0))
    rel = relation_features(x["bond"], x["hops"], _featuriser_distances(x["pos"], x["located"]), x["mask"])
    torch.manual_seed(3)
    got = _op(x, dropout_p=0.3, phi_dropout_p=0.2)
    torch.manual_seed(3)
    want = gtkernels_py.relative_attention(clean["q"], clean["k"], clean["v"], rel, x["phi_k"], x["phi_v"],
                                           x["mask"], u=x["u"], v_rel=x["v_rel"], dropout_p=0.3, phi_dropout_p=0.2)
    torch.testing.assert_close(got, want, **TIGHT)
    assert not torch.allclose(got, _op(x))


def test_packed_equals_padded():
    x = _batch(lengths=(6, 0, 3, 1), seed=1)
    mask = x["mask"]
    lengths = mask.sum(1)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32)
    a, b = _leaves(x), _leaves(x)
    padded = _op(a)
    packed_code = pack_graph_code(x["code"], cu)
    assert packed_code.shape == (int((lengths ** 2).sum()),)
    packed = gtkernels.relative_attention(b["q"][mask], b["k"][mask], b["v"][mask], b["pos"][mask], packed_code,
                                          b["phi_k"], b["phi_v"], dummy=x["dummy"][mask], cu_seqlens=cu,
                                          u=b["u"], v_rel=b["v_rel"])
    torch.testing.assert_close(packed, padded[mask], **TIGHT)
    weight = torch.linspace(-1, 2, padded[mask].numel(), dtype=DT).reshape(packed.shape)
    (padded[mask] * weight).sum().backward()
    (packed * weight).sum().backward()
    for name in ("q", "k", "v", "pos"):
        torch.testing.assert_close(b[name].grad, a[name].grad, **TIGHT)
    for p, r in zip(b["phi_k"] + b["phi_v"], a["phi_k"] + a["phi_v"]):
        torch.testing.assert_close(p.grad, r.grad, **TIGHT)
    # a known max_seqlen gives the same, and a geometry prepared once is accepted in place of pos
    again = gtkernels.relative_attention(x["q"][mask], x["k"][mask], x["v"][mask], x["pos"][mask], packed_code,
                                         x["phi_k"], x["phi_v"], dummy=x["dummy"][mask], cu_seqlens=cu,
                                         max_seqlen=7, u=x["u"], v_rel=x["v_rel"])
    torch.testing.assert_close(again, packed.detach(), **TIGHT)


def test_geometry_and_no_dummy_and_no_mask():
    x = _batch(lengths=(5, 5), N=5, dummy=False, seed=2)
    x["code"] = encode_graph_relation(x["bond"], x["hops"])
    want = _spec(x)
    geom = gtkernels.prepare_geometry(x["pos"])
    got = gtkernels.relative_attention(x["q"], x["k"], x["v"], geom, x["code"], x["phi_k"], x["phi_v"],
                                       u=x["u"], v_rel=x["v_rel"])
    torch.testing.assert_close(got, want, **TIGHT)
    torch.testing.assert_close(_op(dict(x, mask=None, dummy=None)), want, **TIGHT)


def test_one_atom_and_empty_inputs():
    x = _batch(lengths=(1, 2), N=3, seed=3)                      # a lone dummy node; a dummy node and one atom
    torch.testing.assert_close(_op(x), _spec(dict(x, q=x["q"].nan_to_num(0), k=x["k"].nan_to_num(0),
                                                  v=x["v"].nan_to_num(0))), **TIGHT)
    e = _batch(lengths=(), N=4)
    assert _op(e).shape == (0, 4, 2, 3)
    cu = torch.zeros(1, dtype=torch.int32)
    out = gtkernels.relative_attention(*(torch.zeros(0, 2, 3, dtype=DT) for _ in range(3)),
                                       torch.zeros(0, 3, dtype=DT), torch.zeros(0, dtype=torch.int16), e["phi_k"],
                                       e["phi_v"], cu_seqlens=cu)
    assert out.shape == (0, 2, 3)
    nothing = _batch(lengths=(0, 0), N=4)                          # every slot padding (NaN inputs)
    assert (_op(nothing) == 0).all()


def test_compile_fullgraph():
    x = _batch(seed=4)

    def run(q, k, v, pos, code, mask, dummy):
        return gtkernels.relative_attention(q, k, v, pos, code, x["phi_k"], x["phi_v"], mask, dummy=dummy,
                                            u=x["u"], v_rel=x["v_rel"], validate=False)

    args = (x["q"], x["k"], x["v"], x["pos"], x["code"], x["mask"], x["dummy"])
    compiled = torch.compile(run, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), run(*args), **TIGHT)


@pytest.mark.parametrize("backend", FUSED)
def test_compile_fullgraph_fused_backend_with_gradients(backend):
    """A fused backend's custom ops under torch.compile (inductor, fullgraph): values and gradients as eager."""
    _skip_unless_runs(backend)
    x = _batch(seed=4)

    def run(q, k, v, pos, code, mask, dummy, w2k):
        phi_k = [x["phi_k"][0], x["phi_k"][1], w2k, x["phi_k"][3]]
        return gtkernels.relative_attention(q, k, v, pos, code, phi_k, x["phi_v"], mask, dummy=dummy,
                                            u=x["u"], v_rel=x["v_rel"], backend=backend, validate=False)

    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True)
    results = []
    for fn in (run, compiled):
        leaves = [x[n].nan_to_num(0.0).requires_grad_() for n in ("q", "k", "v", "pos")]
        w2k = x["phi_k"][2].clone().requires_grad_()
        out = fn(*leaves, x["code"], x["mask"], x["dummy"], w2k)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=DT).view(out.shape)).sum(),
                                    [*leaves, w2k])
        results.append((out, grads))
    torch.testing.assert_close(results[1][0], results[0][0], **TIGHT)
    for g, w in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g, w, **TIGHT)


# ---------------------------------------------------------------- the module

@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_module_loads_spec_state_dict_and_matches(backend):
    _skip_unless_runs(backend)
    x = _batch(seed=5)
    d_model, heads = 12, 3
    torch.manual_seed(0)
    spec = gtkernels_py.MultiHeadRelativeAttention(d_model, heads).to(DT).eval()
    spec.load_state_dict({n: torch.randn_like(t) * 0.4 for n, t in spec.state_dict().items()})
    fused = gtkernels.FusedRelativeAttention(d_model, heads, backend=backend).to(DT).eval()
    assert list(fused.state_dict()) == list(spec.state_dict())
    fused.load_state_dict(spec.state_dict(), strict=True)
    mask = x["mask"]
    feats = torch.randn(*mask.shape, d_model, dtype=DT)
    rel = relation_features(x["bond"], x["hops"], _featuriser_distances(x["pos"], x["located"]), mask)
    want = spec(feats, rel, mask)
    got = fused(feats, x["pos"], x["code"], mask, dummy=x["dummy"])
    torch.testing.assert_close(got, want, **TIGHT)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), mask.sum(1).cumsum(0)]).to(torch.int32)
    packed = fused(feats[mask], x["pos"][mask], pack_graph_code(x["code"], cu), dummy=x["dummy"][mask],
                   cu_seqlens=cu)
    torch.testing.assert_close(packed, want[mask], **TIGHT)
    assert isinstance(fused.attention, gtkernels.nn.FusedRelativeInnerAttention) and fused.backend == backend
    torch.manual_seed(1)
    spec_init = gtkernels_py.MultiHeadRelativeAttention(d_model, heads).state_dict()
    torch.manual_seed(1)
    fused_init = gtkernels.FusedRelativeAttention(d_model, heads).state_dict()
    assert all(torch.equal(spec_init[n], fused_init[n]) for n in spec_init)


def test_module_errors():
    with pytest.raises(ValueError, match="divisible"):
        gtkernels.FusedRelativeAttention(30, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        gtkernels.FusedRelativeAttention(12, 3, backend="gpu")
    with pytest.raises(NotImplementedError, match="backend='cuda'.*not built yet.*'reference'"):
        gtkernels.FusedRelativeAttention(12, 3, backend="cuda")
    m = gtkernels.FusedRelativeAttention(12, 3)
    code = torch.zeros(2, 5, 5, dtype=torch.int16)
    with pytest.raises(ValueError, match="x must end with d_model = 12"):
        m(torch.randn(2, 5, 6), torch.randn(2, 5, 3), code)
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        m(torch.randn(2, 5, 12, dtype=DT), torch.randn(2, 5, 3), code)


# ---------------------------------------------------------------- errors

@pytest.fixture
def inputs():
    return _batch(lengths=(4, 3), N=4, seed=6)


def _set(name, fn):
    return lambda x: x.__setitem__(name, fn(x))


@pytest.mark.parametrize("mutate,error,match", [
    (_set("q", lambda x: x["q"][0, 0]), ValueError, "q must have 3 or 4 dimensions"),
    (_set("k", lambda x: x["k"][:, :3]), ValueError, "q, k, v must have one shape"),
    (_set("v", lambda x: x["v"].float()), TypeError, "v has dtype torch.float32"),
    (_set("pos", lambda x: x["pos"][..., :2]), ValueError, "pos must have shape"),
    (_set("pos", lambda x: x["pos"].half()), TypeError, "pos must be float32 or float64"),
    (_set("mask", lambda x: x["mask"][:, :2]), ValueError, "mask has shape"),
    (_set("code", lambda x: x["code"].int()), TypeError, "graph_code must be a torch.int16"),
    (_set("code", lambda x: x["code"][:, :3]), ValueError, r"graph_code must have shape \(2, 4, 4\)"),
    (_set("code", lambda x: x["code"].index_fill(2, torch.tensor([1]), 6 << 7)), ValueError,
     r"graph_code holds an invalid graph code 768 at index \[0, 0, 1\]"),
    (_set("phi_k", lambda x: x["phi_k"][:3]), ValueError, r"phi_k_params must be a list \[W1, c1, W2, c2\]"),
    (_set("phi_k", lambda x: [x["phi_k"][0][:, :14]] + x["phi_k"][1:]), ValueError,
     r"phi_k_params\[0\] must read C = 14 graph channels"),
    (_set("phi_v", lambda x: x["phi_v"][:2] + [x["phi_v"][2][:, :2], x["phi_v"][3]]), ValueError,
     "phi_v_params: W1 .* do not chain"),
    (_set("phi_v", lambda x: [x["phi_v"][0][:, :40]] + x["phi_v"][1:]), ValueError, "one relation width"),
    (_set("phi_k", lambda x: x["phi_k"][:2] + [p.float() for p in x["phi_k"][2:]]), TypeError,
     r"phi_k_params\[2\] has dtype torch.float32"),
    (_set("u", lambda x: x["u"][:1]), ValueError, r"u must have shape \(H, d_k\) = \(2, 3\)"),
    (_set("v_rel", lambda x: x["v_rel"].float()), TypeError, "v_rel has dtype torch.float32"),
    (_set("dummy", lambda x: x["dummy"].long()), TypeError, "dummy must be a bool tensor"),
    (_set("dummy", lambda x: x["dummy"][:, :2]), ValueError, r"dummy must have shape \(2, 4\)"),
    (lambda x: x["pos"].__setitem__((1, 2, 0), math.nan), ValueError, "non-finite coordinate at molecule 1, atom 2"),
    (lambda x: x["pos"].__setitem__((0, 3), x["pos"][0, 1] + 1e-4), ValueError, "atoms 1 and 3 of molecule 0"),
])
def test_bad_input(inputs, mutate, error, match):
    mutate(inputs)
    with pytest.raises(error, match=match):
        _op(inputs)


def test_what_is_not_checked_is_not_read(inputs):
    """Padded pairs' codes, and the dummy node's position, may hold anything; validate=False skips the checks."""
    x = inputs
    x["pos"][:, 0] = x["pos"][0, 1]                 # the dummy nodes sit on an atom: no closeness error
    base = _op(x)
    assert torch.isfinite(base[x["mask"]]).all()
    bad = x["code"].clone()
    bad[0, 1, 2] = 7 << 7
    _op(dict(x, code=bad), validate=False)


@pytest.mark.parametrize("kw,error,match", [
    (dict(backend="cuda"), NotImplementedError, "backend='cuda': the fused kernels of relative_attention"),
    (dict(backend="cuda"), NotImplementedError, "not built yet for it; use backend='cpu'.* 'triton'.* or 'reference'"),
    (dict(backend="triton", dropout_p=0.1), NotImplementedError, "backend='triton' does not implement dropout"),
    (dict(backend="cpu", dropout_p=0.1), NotImplementedError, "backend='cpu' does not implement dropout"),
    (dict(backend="cpu", phi_dropout_p=0.1), NotImplementedError, "backend='cpu' does not implement dropout"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(dropout_p=1.0), ValueError, r"dropout_p must be in \[0, 1\)"),
    (dict(phi_dropout_p=-0.1), ValueError, r"phi_dropout_p must be in \[0, 1\)"),
    (dict(cu_seqlens=torch.tensor([0, 4, 7], dtype=torch.int32)), ValueError, "not both"),
])
def test_bad_options(inputs, kw, error, match):
    with pytest.raises(error, match=match):
        _op(inputs, **kw)


def test_bad_packed_code(inputs):
    x, mask = inputs, inputs["mask"]
    cu = torch.tensor([0, 4, 7], dtype=torch.int32)
    code = pack_graph_code(x["code"], cu)

    def run(code, **kw):
        return gtkernels.relative_attention(x["q"][mask], x["k"][mask], x["v"][mask], x["pos"][mask], code,
                                            x["phi_k"], x["phi_v"], dummy=x["dummy"][mask], cu_seqlens=cu, **kw)

    run(code)
    with pytest.raises(ValueError, match=r"graph_code must have P = Σ n_b² = 25 packed pair codes"):
        run(code[:-1])
    with pytest.raises(ValueError, match=r"graph_code must have shape \[P\]"):
        run(code[None])
    with pytest.raises(ValueError, match="max_seqlen = 3 but the largest molecule"):
        run(code, max_seqlen=3)
    code[3] = -1
    with pytest.raises(ValueError, match=r"graph_code holds an invalid graph code -1 at index \[3\]"):
        run(code)
