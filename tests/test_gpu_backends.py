"""The GPU backends — Triton kernels (gtkernels.triton) and C++/CUDA kernels (csrc/cuda) — against the
reference (gtkernels_py) and the C++ CPU backend. Every test runs once per backend.

Without a GPU they run on CPU tensors: Triton in its interpreter (conftest.py sets TRITON_INTERPRET=1 before
triton is imported), the CUDA kernels' program bodies in their host emulation (GTKERNELS_CUDA_EMULATE=1, set
by the `backend` fixture; csrc/cuda/emulation.cpp); with a GPU, on CUDA tensors. Shapes are small: the interpreter executes every block op in
numpy. float64: forward and every gradient (q, k, v, pos, each ψω/φ parameter) to 1e-10 relative. float32:
error against the float64 reference at most 2× that of the reference run in float32 (FlashAttention's rule),
floor 1e-6. Run with ``-s`` to see the measured errors.
"""
import os

import pytest
import torch

import gtkernels  # noqa: E402
import gtkernels_py as R  # noqa: E402
from gtkernels._backends import resolve_backend  # noqa: E402
from gtkernels.ops import registry  # noqa: E402
from gtkernels.ops.layout import padded_segments, padded_to_rows  # noqa: E402
from helpers import (assert_two_x_rule, attention_inputs, mlp_params, qm9_molecules, random_molecules, rel_err,
                     summation_terms)  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU_BACKENDS = ("triton", "cuda")


def _skip_reason(backend):
    if backend == "triton":
        if not gtkernels._backends.triton_available():
            return "triton is not installed"
        if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
            return "no CUDA and TRITON_INTERPRET is not 1"
    elif not gtkernels.extension_available():
        return "gtkernels._C not built"
    elif torch.cuda.is_available() and not gtkernels._backends.cuda_kernels_built():
        return "gtkernels._C was built without the CUDA kernels"
    return None


@pytest.fixture(params=GPU_BACKENDS)
def backend(request, monkeypatch):
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    if request.param == "cuda" and not torch.cuda.is_available():
        monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "1")
    return request.param
ORACLES = ["reference"] + (["cpu"] if gtkernels.extension_available() else [])
TOL64 = 1e-10


def _report(what, err):
    print(f"[gpu backend] {what}: {err:.3g}")
    return err


def _grads(out, inputs, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)
    return torch.autograd.grad((out * w).sum(), inputs, allow_unused=True)


def _on(device, tensors):
    """Leaf copies of ``tensors`` on ``device`` (requires_grad kept for floating tensors)."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
        elif t.is_floating_point():
            out.append(t.detach().to(device).requires_grad_(t.requires_grad))
        else:
            out.append(t.to(device))
    return out


def _attention(inputs, psi, backend, precision="ieee"):
    """Output and gradients (q, k, v, pos, ψ...) of ``backend`` on copies of the CPU inputs, returned on CPU."""
    device = DEVICE if backend in GPU_BACKENDS else torch.device("cpu")
    q, k, v, pos, mask, cu = _on(device, inputs)
    psi = _on(device, psi)
    out = gtkernels.geometric_attention(q, k, v, pos, psi, mask, cu_seqlens=cu, backend=backend, precision=precision)
    grads = _grads(out, [q, k, v, pos, *psi])
    return out.detach().cpu(), [g.cpu() for g in grads]


def _encoding(inputs, phi, backend, precision="ieee"):
    device = DEVICE if backend in GPU_BACKENDS else torch.device("cpu")
    pos, mask, cu = _on(device, inputs)
    phi = _on(device, phi)
    s = gtkernels.geometric_encoding(pos, phi, mask, cu_seqlens=cu, backend=backend, precision=precision)
    return s.detach().cpu(), [g.cpu() for g in _grads(s, [pos, *phi])]


def _names(n_params):
    return ["q", "k", "v", "pos"] + [f"psi[{i}]" for i in range(n_params)]


def _holes(inputs):
    """Padded inputs with padding slots scattered inside the molecules (a permutation of the atom axis)."""
    q, k, v, pos, mask, cu = inputs
    perm = torch.randperm(mask.shape[1], generator=torch.Generator().manual_seed(7))
    return [t.detach()[:, perm].requires_grad_() for t in (q, k, v, pos)] + [mask[:, perm], cu]


# ----------------------------------------------------------------------------------------------------- attention
ATTN_CASES = [  # (molecule sizes, heads, d_k, ψω hidden widths, layouts)
    ([5, 1, 7, 2], 3, 2, [50, 50, 50], ("padded", "packed")),  # paper's ψω (50 → 64 padded), one-atom molecule
    ([4, 6], 1, 16, [7], ("padded",)),                         # 0 hidden h→h layers, width 7, d_k 16
    ([6, 3], 256, 2, [50, 50, 50], ("padded",)),               # the paper's 256 heads
    ([70, 5], 2, 2, [50, 50, 50], ("padded", "packed")),       # 3 key blocks of 32: rescaling, multi-block bwd
    ([3, 2], 2, 3, [], ("packed",)),                           # ψ a single Linear(1→1)
    ([9, 0, 3], 3, 1, [128, 128, 128, 128], ("packed",)),       # widest ψω, 3 hidden layers, empty molecule
]
ATTN_PARAMS = [pytest.param(s, h, d, w, lay, id=f"{'-'.join(map(str, s))}_h{h}_d{d}_psi{len(w)}_{lay}")
               for s, h, d, w, lays in ATTN_CASES for lay in lays]


@pytest.mark.parametrize("sizes,heads,d,widths,layout", ATTN_PARAMS)
def test_attention_float64(sizes, heads, d, widths, layout, backend):
    mols = random_molecules(sizes, seed=len(sizes))
    inputs = attention_inputs(mols, heads, d, layout=layout)
    if layout == "padded":
        inputs = _holes(inputs)
    psi = mlp_params(widths, seed=1)
    out, grads = _attention(inputs, psi, backend)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    for oracle in ORACLES:
        ref, ref_g = _attention(inputs, psi, oracle)
        assert _report(f"attn {sizes} h{heads} d{d} {layout} f64 out vs {oracle}", rel_err(out, ref)) < TOL64
        for name, a, b in zip(_names(len(psi)), grads, ref_g):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            assert _report(f"  d{name} vs {oracle}", rel_err(a, b)) < TOL64, name


@pytest.mark.parametrize("mols,heads,d", [
    pytest.param("qm9", 4, 16, id="qm9_h4_d16"),
    pytest.param([70, 9], 3, 2, id="70-9_h3_d2"),
])
def test_attention_float32_two_x_rule(mols, heads, d, backend):
    mols = qm9_molecules(4) if mols == "qm9" else random_molecules(mols, seed=3)
    inputs64 = attention_inputs(mols, heads, d)
    psi64 = mlp_params([50, 50, 50], seed=2)
    inputs32 = [t.detach().float().requires_grad_() if t is not None and t.is_floating_point() else t
                for t in inputs64]
    psi32 = [p.detach().float().requires_grad_() for p in psi64]
    exact, exact_g = _attention(inputs64, psi64, "reference")
    ref32, ref32_g = _attention(inputs32, psi32, "reference")
    out32, out32_g = _attention(inputs32, psi32, backend)
    assert out32.dtype == torch.float32
    terms = summation_terms(mols, heads, d)
    assert_two_x_rule("attn f32 out", out32, ref32, exact, terms["out"])
    for name, a, r, e in zip(_names(len(psi32)), out32_g, ref32_g, exact_g):
        assert_two_x_rule(f"d{name} f32", a, r, e, terms[name.split("[")[0]])


def test_attention_degenerate_rows_are_zero_not_nan(backend):
    mols = random_molecules([4, 3, 1], seed=4)
    q, k, v, pos, mask, _ = attention_inputs(mols, 2, 2)
    mask = mask.clone()
    mask[1] = False                    # a molecule that is all padding
    inputs = [q, k, v, pos, mask, None]
    psi = mlp_params([50, 50, 50])
    out, grads = _attention(inputs, psi, backend)
    assert torch.isfinite(out).all() and (out[~mask] == 0).all() and (out[2] == 0).all()  # lone atom: 0
    for g in grads:
        assert torch.isfinite(g).all()
    for g in grads[:4]:
        assert (g[~mask] == 0).all()
    ref, ref_g = _attention(inputs, psi, "reference")
    assert rel_err(out, ref) < TOL64
    for a, b in zip(grads, ref_g):
        assert rel_err(a, b) < TOL64


def test_attention_lse_and_rows_layout_match_cpu(backend):
    """The op-level results (out and the un-gated lse, −inf for rows with no key) equal the C++ kernels'."""
    if "cpu" not in ORACLES:
        pytest.skip("gtkernels._C not built")
    mols = random_molecules([5, 1, 3], seed=5)
    q, k, v, pos, mask, _ = attention_inputs(mols, 3, 4)
    seg, valid = padded_segments(q.shape[0], q.shape[1], mask, q.device)
    rows = [padded_to_rows(t.detach()) for t in (q, k, v)] + [padded_to_rows(pos.detach())]
    psi = [p.detach() for p in mlp_params([50, 50, 50])]
    out_c, lse_c = registry.attention_fwd(*rows, psi, seg, valid, q.shape[1], 0.5, "ieee", "cpu")
    out_t, lse_t = registry.attention_fwd(*_on(DEVICE, rows), _on(DEVICE, psi), seg.to(DEVICE),
                                          valid.to(DEVICE), q.shape[1], 0.5, "ieee", backend)
    out_t, lse_t = out_t.cpu(), lse_t.cpu()
    assert lse_t.dtype == torch.float64 and lse_t.shape == lse_c.shape
    assert torch.equal(torch.isinf(lse_t), torch.isinf(lse_c))
    finite = torch.isfinite(lse_c)
    assert _report("lse vs cpu", rel_err(lse_t[finite], lse_c[finite])) < TOL64
    assert rel_err(out_t, out_c) < TOL64


def test_attention_gradients_are_deterministic(backend):
    mols = random_molecules([20, 7], seed=9)
    inputs = attention_inputs(mols, 2, 4, dtype=torch.float32, layout="packed")
    psi = mlp_params([50, 50, 50], dtype=torch.float32)
    _, g1 = _attention(inputs, psi, backend)
    _, g2 = _attention(inputs, psi, backend)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_attention_empty_batch(backend):
    for shape in [(0, 5, 2, 3), (3, 0, 2, 3)]:
        q = torch.zeros(shape, dtype=torch.float64, device=DEVICE, requires_grad=True)
        pos = torch.zeros(shape[:2] + (3,), dtype=torch.float64, device=DEVICE)
        out = gtkernels.geometric_attention(q, q, q, pos, _on(DEVICE, mlp_params([4])), backend=backend)
        assert out.shape == shape
        out.sum().backward()


def test_attention_gradcheck_and_opcheck(backend):
    mols = random_molecules([3, 1, 2], seed=2)
    q, k, v, pos, mask, _ = _on(DEVICE, attention_inputs(mols, 2, 2))
    psi = _on(DEVICE, mlp_params([5, 5], seed=3))

    def f(q, k, v, pos, *psi):
        return gtkernels.geometric_attention(q, k, v, pos, list(psi), mask, backend=backend, validate=False)

    assert torch.autograd.gradcheck(f, (q, k, v, pos, *psi), eps=1e-6, atol=1e-7, fast_mode=True)
    seg, valid = padded_segments(q.shape[0], q.shape[1], mask, q.device)
    rows = [padded_to_rows(t.detach()).requires_grad_() for t in (q, k, v, pos)]
    torch.library.opcheck(registry.attention_fwd, (*rows, psi, seg, valid, q.shape[1], 0.5, "ieee", backend))


# ------------------------------------------------------------------------------------------------------ encoding
ENC_CASES = [  # (molecule sizes, φ hidden widths, layout)
    ([5, 1, 7, 2], [50], "padded"),
    ([5, 1, 7, 2], [50], "packed"),
    ([70, 3], [7, 9], "padded"),     # 3 blocks of 32; one hidden h→h layer, widths 7 → 9
    ([4, 2], [], "packed"),          # φ = GELU(Linear(1→1))
    ([6, 0, 3], [16, 16, 16, 16], "packed"),  # 3 hidden layers, empty molecule
]


@pytest.mark.parametrize("sizes,widths,layout", ENC_CASES)
def test_encoding_float64(sizes, widths, layout, backend):
    mols = random_molecules(sizes, seed=11)
    q, k, v, pos, mask, cu = attention_inputs(mols, 1, 1, layout=layout)
    inputs = [pos, mask, cu]
    if layout == "padded":
        _, _, _, pos, mask, _ = _holes([q, k, v, pos, mask, cu])
        inputs = [pos, mask, None]
    phi = mlp_params(widths, seed=4)
    s, grads = _encoding(inputs, phi, backend)
    if mask is not None:
        assert (s[~mask] == 0).all()
    for oracle in ORACLES:
        ref, ref_g = _encoding(inputs, phi, oracle)
        assert _report(f"enc {sizes} {layout} f64 s vs {oracle}", rel_err(s, ref)) < TOL64
        for name, a, b in zip(["pos"] + [f"phi[{i}]" for i in range(len(phi))], grads, ref_g):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            assert _report(f"  d{name} vs {oracle}", rel_err(a, b)) < TOL64, name


def test_encoding_float32_two_x_rule(backend):
    mols = qm9_molecules(4)
    _, _, _, pos, mask, _ = attention_inputs(mols, 1, 1)
    phi64 = mlp_params([50], seed=4)
    phi32 = [p.detach().float().requires_grad_() for p in phi64]
    pos32 = pos.detach().float().requires_grad_()
    exact, exact_g = _encoding([pos, mask, None], phi64, "reference")
    ref32, ref32_g = _encoding([pos32, mask, None], phi32, "reference")
    out32, out32_g = _encoding([pos32, mask, None], phi32, backend)
    assert out32.dtype == torch.float32
    terms = summation_terms(mols)
    assert_two_x_rule("enc f32 s", out32, ref32, exact, terms["s"])
    for name, a, r, e in zip(["enc_pos"] + ["phi"] * len(phi32), out32_g, ref32_g, exact_g):
        assert_two_x_rule(f"d{name} f32", a, r, e, terms[name])


def test_encoding_gradcheck_and_opcheck(backend):
    mols = random_molecules([3, 4, 1], seed=6)
    _, _, _, pos, mask, _ = _on(DEVICE, attention_inputs(mols, 1, 1))
    phi = _on(DEVICE, mlp_params([6], seed=5))

    def f(pos, *phi):
        return gtkernels.geometric_encoding(pos, list(phi), mask, backend=backend, validate=False)

    assert torch.autograd.gradcheck(f, (pos, *phi), eps=1e-6, atol=1e-7, fast_mode=True)
    seg, valid = padded_segments(pos.shape[0], pos.shape[1], mask, pos.device)
    torch.library.opcheck(registry.encoding_fwd, (padded_to_rows(pos.detach()).requires_grad_(), phi, seg, valid,
                                                  pos.shape[1], "ieee", backend))


# ------------------------------------------------------------------------------------------------------- selection
def test_triton_backend_selection(monkeypatch):
    if _skip_reason("triton"):
        pytest.skip(_skip_reason("triton"))
    assert "triton" in gtkernels.backends()
    cpu = torch.device("cpu")
    if gtkernels.extension_available():
        assert resolve_backend("auto", cpu, torch.float32) == "cpu"   # auto on CPU never picks the interpreter
    with pytest.raises(NotImplementedError, match="dropout"):
        resolve_backend("triton", DEVICE, torch.float32, dropout_p=0.1)
    with pytest.raises(ValueError, match="width <= 128"):
        resolve_backend("triton", DEVICE, torch.float32, mlp_ok=False)
    if torch.cuda.is_available():
        assert resolve_backend("auto", torch.device("cuda"), torch.float32) == "triton"
    else:
        assert resolve_backend("triton", cpu, torch.float64) == "triton"
        with pytest.raises(TypeError, match="float32 and float64"):
            resolve_backend("triton", cpu, torch.float16)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="backend='cpu' or 'reference'"):
            resolve_backend("triton", cpu, torch.float32)


def test_cuda_backend_selection(monkeypatch):
    if _skip_reason("cuda"):
        pytest.skip(_skip_reason("cuda"))
    cpu = torch.device("cpu")
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "0")
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        resolve_backend("cuda", cpu, torch.float32)
    if not torch.cuda.is_available():
        assert "cuda" not in gtkernels.backends()
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "1")
    assert "cuda" in gtkernels.backends()
    assert resolve_backend("cuda", cpu, torch.float16) == "cuda"
    assert resolve_backend("auto", cpu, torch.float32) == "cpu"   # auto on CPU never picks the emulation
    with pytest.raises(NotImplementedError, match="dropout"):
        resolve_backend("cuda", cpu, torch.float32, dropout_p=0.1)
    with pytest.raises(ValueError, match="width <= 128"):
        resolve_backend("cuda", cpu, torch.float32, mlp_ok=False)


def test_cuda_emulation_is_independent_of_thread_order(monkeypatch, backend):
    """No thread reads, within a phase, what another writes: running each phase's threads backwards changes
    no bit of any output or gradient (the emulation's check of the kernels' barrier discipline)."""
    if backend != "cuda" or torch.cuda.is_available():
        pytest.skip("host emulation of the CUDA kernels only")
    mols = random_molecules([40, 6, 1], seed=12)
    inputs = attention_inputs(mols, 3, 4, dtype=torch.float32)
    psi = mlp_params([50, 50, 50], dtype=torch.float32)
    phi = mlp_params([50], dtype=torch.float32, seed=2)
    forward = (_attention(inputs, psi, "cuda"), _encoding([inputs[3], inputs[4], None], phi, "cuda"))
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE_ORDER", "reverse")
    backward = (_attention(inputs, psi, "cuda"), _encoding([inputs[3], inputs[4], None], phi, "cuda"))
    for (out_f, g_f), (out_b, g_b) in zip(forward, backward):
        assert torch.equal(out_f, out_b)
        for a, b in zip(g_f, g_b):
            assert torch.equal(a, b)


def test_cuda_half_precision_inputs(backend):
    """float16 / bfloat16 inputs are computed in float32 and returned in their dtype, lse in float32."""
    if backend != "cuda":
        pytest.skip("cuda backend")
    mols = random_molecules([7, 3], seed=13)
    inputs64 = attention_inputs(mols, 2, 8)
    psi64 = mlp_params([50, 50, 50], seed=2)
    exact, _ = _attention(inputs64, psi64, "reference")
    for dtype in (torch.float16, torch.bfloat16):
        inputs = [t.detach().to(dtype).requires_grad_() if t is not None and t.is_floating_point() and t.dim() > 2
                  else t for t in inputs64]
        inputs[3] = inputs64[3].detach().float().requires_grad_()   # positions stay float32/float64
        psi = [p.detach().to(dtype).requires_grad_() for p in psi64]
        ref, _ = _attention(inputs, psi, "reference")
        out, grads = _attention(inputs, psi, "cuda")
        assert out.dtype == dtype and all(g.dtype == t.dtype for g, t in zip(grads, [*inputs[:4], *psi]))
        assert_two_x_rule(f"attn {dtype} out", out.double(), ref.double(), exact,
                          summation_terms(mols, 2, 8)["out"], dtype)


def _tf32_cases():
    mols = qm9_molecules(4)
    inputs64 = attention_inputs(mols, 4, 16)
    psi64 = mlp_params([50, 50, 50], seed=2)
    inputs32 = [t.detach().float().requires_grad_() if t is not None and t.is_floating_point() else t
                for t in inputs64]
    psi32 = [p.detach().float().requires_grad_() for p in psi64]
    phi64 = mlp_params([50, 50], seed=4)   # one hidden h→h layer: the encoding's tensor-core matmul
    phi32 = [p.detach().float().requires_grad_() for p in phi64]
    return mols, inputs64, psi64, inputs32, psi32, phi64, phi32


def test_cuda_tensor_core_path_tiling(backend, monkeypatch):
    """The TF32 path's tiles, padding and strides: with the operand rounding switched off (host emulation only)
    it must agree with float64 as well as the exact float32 path does (2x rule)."""
    if backend != "cuda" or torch.cuda.is_available():
        pytest.skip("host emulation of the CUDA kernels only")
    mols, inputs64, psi64, inputs32, psi32, phi64, phi32 = _tf32_cases()
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE_TF32_ROUNDING", "0")
    pos64, pos32 = (t[3] for t in (inputs64, inputs32))
    for run64, run32 in [((inputs64, psi64), (inputs32, psi32)),
                         (([pos64, inputs64[4], None], phi64), ([pos32, inputs32[4], None], phi32))]:
        attention = len(run64[0]) == 6
        fn = _attention if attention else _encoding
        exact, exact_g = fn(*run64, "reference")
        ref, ref_g = fn(*run32, "reference")
        out, out_g = fn(*run32, "cuda", precision="tf32")
        names = _names(len(psi32)) if attention else ["enc_pos"] + ["phi"] * len(phi32)
        terms = summation_terms(mols, 4, 16)
        assert_two_x_rule("tf32 tiling out", out, ref, exact, terms["out" if attention else "s"])
        for name, a, r, e in zip(names, out_g, ref_g, exact_g):
            assert_two_x_rule(f"tf32 tiling d{name}", a, r, e, terms[name.split("[")[0]])


def test_cuda_tf32_tensor_cores(backend, monkeypatch):
    """precision="tf32": ψω/φ hidden layers on TF32 tensor cores (10-bit mantissa). Measured on these inputs
    (host emulation, rounding as the GPU's cvt.rna.tf32): out 5e-4, gradients up to 7e-2 (the first ψ layer's
    weight gradient, a sum with cancellation); bounds 4x. The error must exceed the exact path's: TF32 ran."""
    if backend != "cuda":
        pytest.skip("cuda backend")
    _, inputs64, psi64, inputs32, psi32, phi64, phi32 = _tf32_cases()
    exact, exact_g = _attention(inputs64, psi64, "reference")
    ieee, _ = _attention(inputs32, psi32, "cuda")
    out, grads = _attention(inputs32, psi32, "cuda", precision="tf32")
    err = _report("attn tf32 out", rel_err(out, exact))
    assert rel_err(ieee, exact) < err < 2e-3
    for name, a, e in zip(_names(len(psi32)), grads, exact_g):
        assert _report(f"  d{name} tf32", rel_err(a, e)) < 0.3, name
    pos64, pos32 = inputs64[3], inputs32[3]
    s_exact, _ = _encoding([pos64, inputs64[4], None], phi64, "reference")
    s, _ = _encoding([pos32, inputs32[4], None], phi32, "cuda", precision="tf32")
    assert 1e-6 < _report("enc tf32 s", rel_err(s, s_exact)) < 2e-3
