"""What only the GPU backends have: Triton's and CUDA's backend selection, the CUDA host emulation's own check
(thread order), half-precision inputs and TF32 tensor cores. The cases every backend shares (float64 parity, the
float32 rule, holes, packed = padded, empty batches, determinism, gradcheck/opcheck) are in
tests/test_backend_conformance.py.

Without a GPU the Triton kernels run in the interpreter (conftest.py sets TRITON_INTERPRET=1 before triton is
imported) and the CUDA kernels' program bodies in their host emulation (GTKERNELS_CUDA_EMULATE=1, set by
``helpers.use_backend``; csrc/cuda/emulation.cpp); with a GPU, on CUDA tensors. Run with ``-s`` to see the
measured errors.
"""
import dataclasses

import pytest
import torch

import gtkernels
from gtkernels._backends import resolve_backend
from helpers import (ATTENTION, ENCODING, GPU, Problem, assert_within_2x, backend_skip_reason,
                     mlp_params, qm9_molecules, random_molecules, rel_err, run, summation_terms, use_backend)

DEVICE = torch.device("cuda" if GPU else "cpu")
PSI = [50, 50, 50]


@pytest.fixture
def cuda(monkeypatch):
    """The cuda backend (its host emulation without a GPU), or a skip with the reason."""
    return use_backend("cuda", monkeypatch)


def _report(what, err):
    print(f"[gpu backend] {what}: {err:.3g}")
    return err


# ------------------------------------------------------------------------------------------------------- selection
def test_triton_backend_selection(monkeypatch):
    if backend_skip_reason("triton"):
        pytest.skip(backend_skip_reason("triton"))
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
    if backend_skip_reason("cuda"):
        pytest.skip(backend_skip_reason("cuda"))
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


def test_cuda_emulation_is_independent_of_thread_order(monkeypatch, cuda):
    """No thread reads, within a phase, what another writes: running each phase's threads backwards changes
    no bit of any output or gradient (the emulation's check of the kernels' barrier discipline)."""
    if GPU:
        pytest.skip("host emulation of the CUDA kernels only")
    mols = random_molecules([40, 6, 1], seed=12)
    attention = ATTENTION.problem(mols, PSI, 3, 4, dtype=torch.float32, param_seed=0)
    encoding = Problem(mols, [attention.tensors[3]], mlp_params([50], dtype=torch.float32, seed=2), attention.mask,
                       None)
    forward = (run(ATTENTION, attention, cuda), run(ENCODING, encoding, cuda))
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE_ORDER", "reverse")
    backward = (run(ATTENTION, attention, cuda), run(ENCODING, encoding, cuda))
    for (out_f, g_f), (out_b, g_b) in zip(forward, backward):
        assert torch.equal(out_f, out_b)
        for a, b in zip(g_f, g_b):
            assert torch.equal(a, b)


def test_cuda_half_precision_inputs(cuda):
    """float16 / bfloat16 inputs are computed in float32 and returned in their dtype, lse in float32."""
    mols = random_molecules([7, 3], seed=13)
    problem64 = ATTENTION.problem(mols, PSI, 2, 8, param_seed=2)
    exact, _ = run(ATTENTION, problem64, "reference")
    for dtype in (torch.float16, torch.bfloat16):
        problem = problem64.cast(dtype)
        pos = problem64.tensors[3].detach().float().requires_grad_()   # positions stay float32/float64
        problem = dataclasses.replace(problem, tensors=[*problem.tensors[:3], pos])
        ref, _ = run(ATTENTION, problem, "reference")
        out, grads = run(ATTENTION, problem, cuda)
        assert out.dtype == dtype and all(g.dtype == t.dtype for g, t in zip(grads, [*problem.tensors,
                                                                                     *problem.params]))
        assert_within_2x(f"attn {dtype} out", out.double(), ref.double(), exact,
                         [summation_terms(mols, 2, 8)["out"]], dtype)


def _tf32_problems():
    """(float64, float32) problems of the attention (ψω of the paper) and of the encoding (φ with one hidden
    h→h layer: the encoding's tensor-core matmul) on 4 QM9 molecules."""
    attention = ATTENTION.problem(qm9_molecules(4), PSI, 4, 16, param_seed=2)
    encoding = Problem(attention.mols, [attention.tensors[3]], mlp_params([50, 50], seed=4), attention.mask, None,
                       attention.heads, attention.d)
    return [(ATTENTION, attention, attention.cast(torch.float32)),
            (ENCODING, encoding, encoding.cast(torch.float32))]


def test_cuda_tensor_core_path_tiling(cuda, monkeypatch):
    """The TF32 path's tiles, padding and strides: with the operand rounding switched off (host emulation only)
    it must agree with float64 as well as the exact float32 path does (2x rule)."""
    if GPU:
        pytest.skip("host emulation of the CUDA kernels only")
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE_TF32_ROUNDING", "0")
    for op, problem64, problem32 in _tf32_problems():
        exact, exact_g = run(op, problem64, "reference")
        ref, ref_g = run(op, problem32, "reference")
        out, out_g = run(op, problem32, cuda, precision="tf32")
        assert_within_2x(f"tf32 tiling {op.name}", [out, *out_g], [ref, *ref_g], [exact, *exact_g],
                         problem32.terms(op))


def test_cuda_tf32_tensor_cores(cuda):
    """precision="tf32": ψω/φ hidden layers on TF32 tensor cores (10-bit mantissa). Measured on these inputs
    (host emulation, rounding as the GPU's cvt.rna.tf32): out 5e-4, gradients up to 7e-2 (the first ψ layer's
    weight gradient, a sum with cancellation); bounds 4x. The error must exceed the exact path's: TF32 ran."""
    (_, attention64, attention32), (_, encoding64, encoding32) = _tf32_problems()
    exact, exact_g = run(ATTENTION, attention64, "reference")
    ieee, _ = run(ATTENTION, attention32, cuda)
    out, grads = run(ATTENTION, attention32, cuda, precision="tf32")
    err = _report("attn tf32 out", rel_err(out, exact))
    assert rel_err(ieee, exact) < err < 2e-3
    for name, a, e in zip(ATTENTION.grad_names(attention32), grads, exact_g):
        assert _report(f"  d{name} tf32", rel_err(a, e)) < 0.3, name
    s_exact, _ = run(ENCODING, encoding64, "reference")
    s, _ = run(ENCODING, encoding32, cuda, precision="tf32")
    assert 1e-6 < _report("enc tf32 s", rel_err(s, s_exact)) < 2e-3


# --------------------------------------------------------------------------------------------------- R-MAT model
def test_rmat_model_on_triton_matches_the_released_maths():
    """The whole R-MAT model (tiny preset, 2 layers) on the committed featurised molecules (tests/data/
    rmat_sample.npz: FreeSolv and solubility, up to 48 atoms, so the GPU kernels take several key blocks) on the
    triton backend against the eager released maths on the same weights: float64 output and every parameter
    gradient to 1e-9 (u and c2ᴷ: exactly 0), and float32 output to 1e-4 of float64. Needs no RDKit: the GPU
    machine runs it."""
    if backend_skip_reason("triton"):
        pytest.skip(backend_skip_reason("triton"))
    import numpy as np
    from gtkernels.data.rmat_data import rmat_sample
    from gtkernels.models import RMAT
    from gtkernels.rmat_task import RMATBatcher
    sample = rmat_sample()
    idx = np.array([0, 12, 13])          # both sets' largest molecules and one more
    batcher = RMATBatcher(sample)
    packed, _ = batcher.batch(idx, DEVICE, "packed")
    padded, _ = batcher.batch(idx, DEVICE, "padded")
    assert int(padded["mask"].sum(1).max()) == 48
    torch.manual_seed(0)
    model = RMAT("tiny", backend="triton", validate=False).to(DEVICE).double()
    out = model(**packed)
    out.sum().backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want = model.reference_forward(padded["features"], padded["pos"], padded["graph_code"], padded["mask"])
    want.sum().backward()
    assert _report("rmat model float64 out", rel_err(out, want)) < 1e-10
    for name, p in model.named_parameters():
        if name.endswith(("relative_u", "relative_K.nn.3.bias")):
            assert fused[name].abs().max() == 0, name
            continue
        assert rel_err(fused[name], p.grad) < 1e-9, name
    out32 = model.float()(**packed)
    assert _report("rmat model float32 out", rel_err(out32, want)) < 1e-4
