"""Every compiled backend against the reference (gtkernels_py), every op, one set of cases.

Backends (``helpers.COMPILED_BACKENDS``): ``cpu`` (fused C++), ``cuda`` (C++/CUDA kernels; without a GPU their
host emulation, ``GTKERNELS_CUDA_EMULATE=1``) and ``triton`` (without a GPU its interpreter, ``TRITON_INTERPRET=1``
set by conftest.py before triton is imported); each is skipped with the reason when it cannot run here. Ops
(``helpers.OPS``): geometric attention, the geometric encoding and R-MAT's relative attention (whose cases skip
the backends without its kernels: "not built for this op"). A new backend joins COMPILED_BACKENDS, a new op
OPS and the shape tables below (``test_every_op_has_every_case`` checks that none is missing).

float64: forward and every gradient (each input tensor, each ψω/φ parameter) to 1e-10 relative of the reference
and of the cpu backend. float32: the error against the float64 reference at most 2× that of the reference run in
float32 plus a rounding floor (FlashAttention's rule, ``helpers.assert_within_2x``; that the rule still fails
real defects: ``test_float32_rule_fails_real_defects``). The host emulation and the interpreter execute
every block op on the host, so they run the small cases only; a ``large`` case runs on the cpu backend and on
GPUs. Run with ``-s`` to see the measured errors.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import pytest
import torch

import gtkernels
import gtkernels_py
from helpers import (ATTENTION, COMPILED_BACKENDS, ENCODING, OPS, RELATIVE, Op, Problem, assert_within_2x,
                     backend_device, emulated, mlp_params, on_backend, on_device, qm9_molecules, random_molecules,
                     rel_err, run, skip_unbuilt, two_x_bound, use_backend)

TOL64 = 1e-10
ORACLES = ("reference", "cpu")


@pytest.fixture(params=COMPILED_BACKENDS)
def backend(request, monkeypatch):
    """A compiled backend (skipped with the reason when it cannot run here); ``reference`` by indirect
    parametrization."""
    return use_backend(request.param, monkeypatch)


def _report(what, err):
    print(f"[conformance] {what}: {err:.3g}")
    return err


def _oracles(backend):
    """The backends a result is compared with: the reference, and the cpu backend where built."""
    return [o for o in ORACLES if o != backend and (o == "reference" or gtkernels.extension_available())]


# ---------------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """Inputs of one op: molecules (atom counts, or ``qm9`` with their count), MLP hidden widths, heads and d_k
    (attention), layout ("padded", "packed" or "holes": padded with padding slots scattered inside the
    molecules). ``large``: skipped where the backend is emulated."""
    op: Op
    sizes: Tuple[int, ...]
    widths: Tuple[int, ...]
    heads: int = 1
    d: int = 1
    layout: str = "padded"
    qm9: bool = False                  # sizes = (count,): qm9_molecules(count) from the committed sample
    mols_seed: Optional[int] = None    # random_molecules' seed; None: len(sizes)
    param_seed: int = 1
    large: bool = False
    fast_mode: bool = False            # gradcheck's fast_mode (and opcheck with it)

    def molecules(self):
        if self.qm9:
            return qm9_molecules(self.sizes[0])
        return random_molecules(self.sizes, seed=len(self.sizes) if self.mols_seed is None else self.mols_seed)

    def problem(self, dtype=torch.float64) -> Problem:
        return self.op.problem(self.molecules(), self.widths, self.heads, self.d, dtype=dtype, layout=self.layout,
                               param_seed=self.param_seed)

    @property
    def id(self):
        mols = f"qm9x{self.sizes[0]}" if self.qm9 else "-".join(map(str, self.sizes))
        heads = f"_h{self.heads}_d{self.d}" if self.op is not ENCODING else ""
        return f"{self.op.name}_{mols}{heads}_mlp{len(self.widths)}_{self.layout}" + ("_large" if self.large else "")


def A(sizes, heads, d, widths, **kw):
    return Case(ATTENTION, tuple(sizes), tuple(widths), heads, d, **kw)


def E(sizes, widths, **kw):
    return Case(ENCODING, tuple(sizes), tuple(widths), **kw)


def R(sizes, heads, d, widths, **kw):
    """A relative-attention case; widths = (φ's hidden width[, distance-basis size]), see helpers.RelativeOp."""
    return Case(RELATIVE, tuple(sizes), tuple(widths), heads, d, **kw)


PSI = (50, 50, 50)   # the paper's ψω hidden widths

CASES = {
    "float64": [
        # the cpu backend's shapes (large)
        *[A(s, h, d, w, layout=lay, large=True) for s, h, d, w in [
            ([5, 1, 7, 2], 2, 3, PSI),                   # the paper's ψω, a one-atom molecule
            ([29, 17, 3], 256, 2, PSI),                  # the paper's heads
            ([4, 6], 1, 16, [7]),                        # 0 hidden h→h layers
            ([9, 3, 12], 3, 1, [128, 128, 128, 128]),    # widest ψω, 3 hidden layers
            ([2, 2, 0, 3], 4, 5, [1, 1]),                # empty molecule, width 1
        ] for lay in ("padded", "packed")],
        A([6], 4, 8, PSI, qm9=True, layout="holes", param_seed=2, large=True),    # real molecules, holes
        A([300], 2, 4, PSI, layout="packed", mols_seed=5, large=True),            # one large molecule
        *[E(s, w, layout=lay, mols_seed=11, param_seed=4, large=True)
          for s, w in [([5, 1, 7, 2], [50]), ([29, 0, 3], [16, 16]), ([40], [128, 128, 128])]
          for lay in ("padded", "packed")],
        # small shapes, every backend
        A([5, 1, 7, 2], 3, 2, PSI, layout="holes"),  # paper's ψω (50 → 64 padded), one-atom molecule
        A([5, 1, 7, 2], 3, 2, PSI, layout="packed"),
        A([4, 6], 1, 16, [7], layout="holes"),       # 0 hidden h→h layers, width 7, d_k 16
        A([6, 3], 256, 2, PSI, layout="holes"),      # the paper's 256 heads
        A([70, 5], 2, 2, PSI, layout="holes"),       # 3 key blocks of 32: rescaling, multi-block backward
        A([70, 5], 2, 2, PSI, layout="packed"),
        A([3, 2], 2, 3, [], layout="packed"),        # ψ a single Linear(1→1)
        A([9, 0, 3], 3, 1, [128, 128, 128, 128], layout="packed"),  # widest ψω, 3 hidden layers, empty molecule
        *[E(s, w, layout=lay, mols_seed=11, param_seed=4) for s, w, lay in [
            ([5, 1, 7, 2], [50], "holes"),
            ([5, 1, 7, 2], [50], "packed"),
            ([70, 3], [7, 9], "holes"),              # 3 blocks of 32; one hidden h→h layer, widths 7 → 9
            ([4, 2], [], "packed"),                  # φ = GELU(Linear(1→1))
            ([6, 0, 3], [16, 16, 16, 16], "packed"),  # 3 hidden layers, empty molecule
        ]],
        R([5, 1, 7, 2], 2, 3, [3], layout="holes"),          # dummy nodes, a one-atom molecule (itself its key)
        R([5, 1, 7, 2], 2, 3, [3], layout="packed"),
        R([70, 5], 2, 4, [4], layout="packed"),              # two row / key blocks of 64
        R([9, 0, 3], 3, 2, [5, 7], layout="padded"),         # d_hidden != d_k, 7 basis functions, empty molecule
        R([6], 4, 8, [8], qm9=True, layout="holes", param_seed=2, large=True),   # real molecules, holes
        R([150], 2, 4, [4], layout="packed", mols_seed=5, large=True),         # three blocks: every phase
    ],
    "float32": [
        A([29, 18, 9, 1], 8, 16, PSI, mols_seed=3, large=True),
        A([23, 12], 256, 2, PSI, mols_seed=3, large=True),
        E([8], [50], qm9=True, param_seed=4, large=True),
        A([4], 4, 16, PSI, qm9=True, param_seed=2),
        A([70, 9], 3, 2, PSI, mols_seed=3, param_seed=2),
        E([4], [50], qm9=True, param_seed=4),
        R([29, 18, 9, 1], 4, 8, [8], mols_seed=3),
        R([70, 9], 2, 4, [4], mols_seed=3, param_seed=2),
    ],
    # molecule 1 is made all padding; molecule 2 is a single atom
    "degenerate": [A([4, 3, 1], 2, 2, PSI, mols_seed=4, param_seed=0),
                   E([4, 3, 1], [50], mols_seed=4, param_seed=0),
                   R([4, 3, 1], 2, 2, [2], mols_seed=4, param_seed=0)],
    "packed_padded": [A([8, 3, 1, 11], 3, 4, PSI, mols_seed=0, param_seed=0),
                      E([8, 3, 1, 11], [50], mols_seed=0, param_seed=0),
                      R([8, 3, 1, 11], 3, 4, [4], mols_seed=0, param_seed=0)],
    "determinism": [A([20, 13, 7, 25], 4, 4, PSI, layout="packed", mols_seed=9, param_seed=0, large=True),
                    A([20, 7], 2, 4, PSI, layout="packed", mols_seed=9, param_seed=0),
                    E([20, 7], [50], layout="packed", mols_seed=9, param_seed=0),
                    R([20, 70, 7], 2, 4, [4], layout="packed", mols_seed=9, param_seed=0)],
    "gradcheck": [A([4, 1, 3], 2, 2, [5, 5], mols_seed=2, param_seed=3, large=True),
                  E([3, 4, 1], [6], mols_seed=6, param_seed=5, large=True),
                  A([3, 1, 2], 2, 2, [5, 5], mols_seed=2, param_seed=3, fast_mode=True),
                  E([3, 4, 1], [6], mols_seed=6, param_seed=5, fast_mode=True),
                  R([4, 1, 3], 2, 2, [3, 4], mols_seed=2, param_seed=3, large=True),
                  R([3, 1, 2], 2, 2, [3, 4], mols_seed=2, param_seed=3, fast_mode=True)],
}


def cases(kind):
    return [pytest.param(c, id=c.id) for c in CASES[kind]]


def _skip_if_large(case, backend):
    skip_unbuilt(case.op, backend)
    if case.large and emulated(backend):
        pytest.skip(f"large case: {backend} is emulated on the host here (its small cases cover it)")


def test_every_op_has_every_case():
    for kind, table in CASES.items():
        assert {c.op.name for c in table} == {op.name for op in OPS}, kind


# ------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case", cases("float64"))
def test_float64_parity(case, backend):
    _skip_if_large(case, backend)
    problem = case.problem()
    out, grads = run(case.op, problem, backend)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    if problem.mask is not None:
        assert (out[~problem.mask] == 0).all()
    for oracle in _oracles(backend):
        ref, ref_g = run(case.op, problem, oracle)
        assert _report(f"{case.id} {backend} out vs {oracle}", rel_err(out, ref)) < TOL64
        for name, a, b in zip(case.op.grad_names(problem), grads, ref_g):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            assert _report(f"  d{name} vs {oracle}", rel_err(a, b)) < TOL64, name


@pytest.mark.parametrize("case", cases("float32"))
def test_float32_within_2x_of_reference(case, backend):
    _skip_if_large(case, backend)
    problem64 = case.problem()
    problem32 = problem64.cast(torch.float32)
    exact, exact_g = run(case.op, problem64, "reference")
    ref32, ref32_g = run(case.op, problem32, "reference")
    out32, out32_g = run(case.op, problem32, backend)
    assert out32.dtype == torch.float32
    assert_within_2x(f"{case.id} {backend} f32", [out32, *out32_g], [ref32, *ref32_g], [exact, *exact_g],
                     problem32.terms(case.op))


def _first_case(kind, op):
    return next(c for c in CASES[kind] if c.op is op)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_float32_rule_fails_real_defects(op):
    """The float32 bound is loose enough for any summation order and still far below what a defect costs: the
    reference's own float32 output rounded once to bfloat16 (an intermediate stored in half precision), and, for
    the attention ops, one real key's value row dropped (a lost term) both exceed it."""
    case = _first_case("float32", op)
    problem64 = case.problem()
    problem32 = problem64.cast(torch.float32)
    exact, _ = run(op, problem64, "reference")
    ref32, _ = run(op, problem32, "reference")
    bound = two_x_bound(ref32, exact, problem32.terms(op)[0])
    assert rel_err(ref32, exact) <= bound
    assert rel_err(ref32.bfloat16().float(), exact) > 10 * bound
    if "v" in op.tensor_names:
        v = problem32.tensors[op.tensor_names.index("v")].detach().clone()
        row = (0, 1) if problem32.mask is not None else (1,)      # atom 1 of molecule 0: a real atom
        v[row] = 0.0
        tensors = [v.requires_grad_() if n == "v" else t for n, t in zip(op.tensor_names, problem32.tensors)]
        lost, _ = run(op, dataclasses.replace(problem32, tensors=tensors), "reference")
        assert rel_err(lost, exact) > 10 * bound


@pytest.mark.parametrize("case", cases("degenerate"))
def test_degenerate_rows_are_zero_not_nan(case, backend):
    skip_unbuilt(case.op, backend)
    problem = case.problem()
    mask = problem.mask.clone()
    mask[1] = False                    # a molecule that is all padding
    problem = dataclasses.replace(problem, mask=mask)
    out, grads = run(case.op, problem, backend)
    assert torch.isfinite(out).all() and (out[~mask] == 0).all()
    if case.op.lone_atom_value is not None:
        assert (out[2] == case.op.lone_atom_value).all()
    for g in grads:
        assert torch.isfinite(g).all()
    for g in grads[:len(problem.tensors)]:
        assert (g[~mask] == 0).all()
    for oracle in _oracles(backend):
        ref, ref_g = run(case.op, problem, oracle)
        assert rel_err(out, ref) < TOL64
        for a, b in zip(grads, ref_g):
            assert rel_err(a, b) < TOL64


@pytest.mark.parametrize("case", cases("packed_padded"))
def test_packed_equals_padded(case, backend):
    skip_unbuilt(case.op, backend)
    mols = case.molecules()
    padded = case.op.problem(mols, case.widths, case.heads, case.d, layout="padded", param_seed=case.param_seed)
    packed = case.op.problem(mols, case.widths, case.heads, case.d, layout="packed", param_seed=case.param_seed)
    with torch.no_grad():
        out_padded = case.op(on_backend(padded, backend), backend).cpu()
        out_packed = case.op(on_backend(packed, backend), backend).cpu()
    torch.testing.assert_close(out_packed, out_padded[padded.mask], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_empty_batch(op, backend):
    skip_unbuilt(op, backend)
    device = backend_device(backend)
    for batch, atoms in [(0, 5), (3, 0)]:
        problem = op.zeros(batch, atoms, heads=2, d=3, device=device)
        out = op(problem, backend)
        assert out.shape == op.out_shape(problem)
        out.sum().backward()


@pytest.mark.parametrize("case", cases("determinism"))
def test_gradients_are_deterministic(case, backend):
    _skip_if_large(case, backend)
    problem = case.problem(torch.float32)
    out1, g1 = run(case.op, problem, backend)
    out2, g2 = run(case.op, problem, backend)
    assert torch.equal(out1, out2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", cases("gradcheck"))
def test_gradcheck_and_opcheck(case, backend):
    """gradcheck of the public op; with ``fast_mode`` (every backend) also torch.library.opcheck of its forward
    op, the fake kernel and the autograd registration included."""
    _skip_if_large(case, backend)
    problem = on_backend(case.problem(), backend)
    n = len(problem.tensors)

    def f(*leaves):
        call = dataclasses.replace(problem, tensors=list(leaves[:n]), params=list(leaves[n:]))
        return case.op(call, backend, validate=False)

    assert torch.autograd.gradcheck(f, (*problem.tensors, *problem.params), eps=1e-6, atol=1e-7,
                                    fast_mode=case.fast_mode)
    if case.fast_mode:
        torch.library.opcheck(*case.op.rows_call(problem, backend))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES["float64"]
                                  if c.op is RELATIVE and c.layout == "holes"])
def test_relative_cancelled_constants_get_zero_gradients(case, backend):
    """c2ᴷ's and u's logit terms are constant along j: the fused kernels give them a gradient of exactly 0, the
    reference's autograd one at rounding level (float64)."""
    _skip_if_large(case, backend)
    for name in (backend, "reference"):
        problem = on_backend(case.problem(), name)
        for t in ("c2k", "u"):
            problem.extra[t].requires_grad_()
        out = case.op(problem, name)
        grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), [problem.extra["c2k"], problem.extra["u"],
                                                                           problem.params[2]])
        if name == backend:
            assert (grads[0] == 0).all() and (grads[1] == 0).all()
        else:
            scale = grads[2].abs().max()
            assert grads[0].abs().max() <= 1e-12 * scale and grads[1].abs().max() <= 1e-12 * scale


def test_attention_lse_and_rows_layout_match_cpu(backend):
    """The op-level results (out and the un-gated lse, −inf for rows with no key) equal the C++ kernels'."""
    if backend == "cpu":
        pytest.skip("the cpu backend is this case's oracle")
    if not gtkernels.extension_available():
        pytest.skip("gtkernels._C not built")
    mols = random_molecules([5, 1, 3], seed=5)
    problem = ATTENTION.problem(mols, PSI, 3, 4, param_seed=0)
    problem = dataclasses.replace(problem, params=[p.detach() for p in problem.params])
    op, args_c = ATTENTION.rows_call(problem, "cpu")
    out_c, lse_c = op(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args_c))
    _, args_t = ATTENTION.rows_call(on_backend(problem, backend), backend)
    out_t, lse_t = (t.cpu() for t in op(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args_t)))
    assert lse_t.dtype == torch.float64 and lse_t.shape == lse_c.shape
    assert torch.equal(torch.isinf(lse_t), torch.isinf(lse_c))
    finite = torch.isfinite(lse_c)
    assert _report("lse vs cpu", rel_err(lse_t[finite], lse_c[finite])) < TOL64
    assert rel_err(out_t, out_c) < TOL64


# ------------------------------------------------------------------------------------------------- modules
def test_modules_match_reference_modules_via_saved_state_dict(tmp_path, backend):
    if emulated(backend):
        pytest.skip(f"large case: {backend} is emulated on the host here")
    device = backend_device(backend)
    torch.manual_seed(0)
    ref = gtkernels_py.GeometricAttention(64, 8).double()
    torch.save(ref.state_dict(), tmp_path / "attn.pt")
    fused = gtkernels.FusedGeometricAttention(64, 8, backend=backend).double()
    fused.load_state_dict(torch.load(tmp_path / "attn.pt", weights_only=True))
    mols = qm9_molecules(4)
    from gtkernels.data import pad
    z, pos, mask = pad(mols, torch.float64)
    x = torch.randn(z.shape + (64,), dtype=torch.float64)
    fused_out = fused.to(device)(*on_device(device, [x, pos, mask])).cpu()
    torch.testing.assert_close(fused_out, ref(x, pos, mask), rtol=1e-10, atol=1e-12)

    enc_ref = gtkernels_py.GeometricEncoding(64).double()
    enc = gtkernels.GeometricEncoding(64, backend=backend).double()
    enc.load_state_dict(enc_ref.state_dict())
    enc_out = enc.to(device)(*on_device(device, [pos, mask])).cpu()
    torch.testing.assert_close(enc_out, enc_ref(pos, mask), rtol=1e-10, atol=1e-12)


def test_fused_module_invariances(backend):
    """Rotation/translation invariance, permutation equivariance and padding independence, through the kernels."""
    if emulated(backend):
        pytest.skip(f"large case: {backend} is emulated on the host here")
    device = backend_device(backend)
    torch.manual_seed(2)
    module = gtkernels.FusedGeometricAttention(32, 4, backend=backend).double().to(device)

    def attn(*tensors):
        return module(*on_device(device, tensors)).cpu()

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


@pytest.mark.parametrize("backend", ["reference", *COMPILED_BACKENDS], indirect=True)
def test_float64_positions_keep_far_fragments_exact(backend):
    """The paper's augmentation puts a second molecule 1e4 Å away. float32 coordinates there resolve ~1e-3 Å;
    float64 positions with float32 features keep the result at float32 accuracy."""
    if emulated(backend):
        pytest.skip(f"large case: {backend} is emulated on the host here")
    device = backend_device(backend)
    a, b = qm9_molecules(2, seed=4)
    pos64 = torch.cat([torch.from_numpy(a.pos), torch.from_numpy(b.pos) + 1e4])
    cu = torch.tensor([0, pos64.shape[0]], dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(pos64.shape[0], 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    psi = mlp_params([50, 50, 50], seed=1)
    exact = gtkernels_py.geometric_attention(q, k, v, pos64, psi, cu_seqlens=cu)
    psi32 = on_device(device, [p.detach().float() for p in psi])

    q32, k32, v32, cu = on_device(device, [q.float(), k.float(), v.float(), cu])

    def attend(pos):
        return gtkernels.geometric_attention(q32, k32, v32, pos, psi32, cu_seqlens=cu, backend=backend)

    err64 = rel_err(attend(pos64.to(device)).cpu(), exact)
    err32 = rel_err(attend(pos64.float().to(device)).cpu(), exact)
    assert err64 < 1e-5
    assert err32 > 10 * err64
    pos = pos64.clone().to(device).requires_grad_()
    attend(pos).sum().backward()
    assert pos.grad.dtype == torch.float64 and torch.isfinite(pos.grad).all()


@pytest.mark.parametrize("case", [pytest.param(R([20, 3, 1], 2, 4, [4], mols_seed=3), id="relative_20-3-1_h2_d4")])
def test_triton_gpu_launch_geometry(case, monkeypatch):
    """Under the interpreter the launchers take whole tiles (fewer, larger numpy ops), so the block loops of the
    GPU geometry (pair, unit, channel and product blocks; the position-gradient row groups; the forward's 32-row
    tile with 16-row backward tiles) would run once each. This case takes the GPU's geometry, so they iterate:
    float32 under the 2× rule."""
    backend = use_backend("triton", monkeypatch)
    from gtkernels.triton import launch
    monkeypatch.setattr(launch, "INTERPRETER_GEOMETRY", False)
    problem64 = case.problem()
    problem32 = problem64.cast(torch.float32)
    exact, exact_g = run(case.op, problem64, "reference")
    ref32, ref32_g = run(case.op, problem32, "reference")
    out32, out32_g = run(case.op, problem32, backend)
    assert_within_2x(f"{case.id} triton (GPU geometry) f32", [out32, *out32_g], [ref32, *ref32_g],
                     [exact, *exact_g], problem32.terms(case.op))
