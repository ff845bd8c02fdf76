"""Shared test data and checks: random and real molecules, attention inputs in both layouts, random MLP weights,
the low-precision rule, the compiled backends (with their skip reasons) and the ops as the conformance suite
(tests/test_backend_conformance.py) runs them."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import List, Optional, Sequence

import numpy as np
import pytest
import torch

import gtkernels
from gtkernels.data import Molecule, pack, pad, qm9_sample


def random_molecule(n: int, rng: np.random.Generator, min_dist: float = 0.9) -> Molecule:
    """``n`` atoms in a box sized for ~1 atom/Å³·0.1, at least ``min_dist`` Å apart; Z from H, C, N, O, F."""
    side = max(1.5, (10.0 * n) ** (1 / 3))
    pts: List[np.ndarray] = []
    while len(pts) < n:
        p = rng.uniform(-side, side, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in pts):
            pts.append(p)
    z = rng.choice(np.array([1, 6, 7, 8, 9], dtype=np.uint8), size=n)
    return Molecule(-1, z, np.array(pts).reshape(n, 3))


def random_molecules(sizes: Sequence[int], seed: int = 0) -> List[Molecule]:
    rng = np.random.default_rng(seed)
    return [random_molecule(n, rng) for n in sizes]


def qm9_molecules(count: int, seed: int = 0) -> List[Molecule]:
    """``count`` real QM9 molecules from the committed sample (tests/data/qm9_sample.npz; no qm9pack needed):
    the ``count // 2`` largest first (29 atoms, QM9's largest), then a random draw (``seed``) from the sample."""
    sample = qm9_sample()
    largest = np.argsort(-sample.n_atoms, kind="stable")[:count // 2]
    drawn = np.random.default_rng(seed).choice(len(sample), count - count // 2, replace=False)
    return [sample.molecule(int(i)) for i in np.concatenate([largest, drawn])]


def mlp_params(widths: Sequence[int], dtype=torch.float64, seed: int = 0, gain: float = 1.0) -> List[torch.Tensor]:
    """Random ``[W0, b0, ...]`` for an MLP of layer widths ``1 → widths... → 1``, leaf tensors needing grad."""
    g = torch.Generator().manual_seed(seed)
    dims = [1, *widths, 1]
    out = []
    for a, b in zip(dims[:-1], dims[1:]):
        w = torch.randn(b, a, generator=g, dtype=torch.float64) * gain / max(a, 1) ** 0.5
        bias = torch.randn(b, generator=g, dtype=torch.float64) * 0.3
        out += [w.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()]
    return out


def attention_inputs(mols: Sequence[Molecule], heads: int, d: int, dtype=torch.float64, layout: str = "padded",
                     seed: int = 0):
    """``(q, k, v, pos, mask_or_None, cu_seqlens_or_None)`` for ``mols``; q, k, v, pos require grad.

    Padded and packed inputs of the same ``seed`` hold the same values for each real atom.
    """
    z, pos, mask = pad(mols, torch.float64)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(z.shape) + (heads, d)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    if layout == "padded":
        tensors = [t.to(dtype).requires_grad_() for t in (q, k, v, pos)]
        return (*tensors, mask, None)
    _, _, cu = pack(mols)
    tensors = [t[mask].to(dtype).requires_grad_() for t in (q, k, v, pos)]
    return (*tensors, None, cu)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max(max |b|, 1e-30)."""
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)) if b.numel() else 0.0


# ------------------------------------------------------------------------------------------ the low-precision rule
def summation_terms(mols: Sequence[Molecule], heads: int = 1, d: int = 1, mlp_fan_in: int = 0) -> dict:
    """How many products enter one element of each result, the summation length of the error bound below.

    Attention: ``out``, ``dq``, ``dk``, ``dv`` sum over the keys of a row and the head dimension (n·d), plus the
    sums inside the MLP whose output weights every pair (ψω's gate, R-MAT's φ: ``mlp_fan_in``, the fan-ins of
    its layers), whose rounding enters every term; ``dpos`` over the partners and every head (n·H·d, plus the
    same); the MLP's parameter gradients over every pair of the batch and every head (Σn²·H·d). The encoding:
    ``s`` and ``dpos`` over the partners (n), φ's gradients over every pair (Σn²).
    """
    n = max((len(m.z) for m in mols), default=1)
    pairs = sum(len(m.z) ** 2 for m in mols)
    f = mlp_fan_in
    return {"out": n * d + f, "q": n * d + f, "k": n * d + f, "v": n * d + f, "pos": n * heads * d + f,
            "psi": pairs * heads * d, "s": n, "enc_pos": n, "phi": pairs}


def two_x_bound(ref: torch.Tensor, exact: torch.Tensor, n_terms: int, dtype=torch.float32) -> float:
    """FlashAttention's rule as its own tests write it: a low-precision result may be off the float64 value by
    twice the error of the reference run in the same precision *plus* a rounding floor (``rtol·err_pt + atol``,
    a sum, not the larger of the two). Floor: eps(dtype)·√n_terms, the growth of rounding error along an n-term
    sum (a random walk of n roundings of relative size eps: its standard deviation), times √(2 ln M) for a
    tensor of M elements, since :func:`rel_err` takes the largest error of the M and the largest of M such walks
    sits about √(2 ln M) deviations out (≈ 4 for the conformance tensors).

    Why a sum: one reference run is one draw of its rounding error, and the fused kernels sum in another order
    (tiles, recomputation from lse) whose error is a draw of the same size. With the larger of the two, a
    correct kernel failed whenever the reference drew low and the floor sat just under 2× it: the interpreter's
    float32 relative-attention dv came out at 2.03× the reference on one CI machine and passed on another (the
    same code; numpy's and torch's BLAS pick their float32 kernels by CPU). A real defect (a lost term, a wrong
    sign, half-precision accumulation) is orders of magnitude above either term."""
    spread = math.sqrt(max(2.0 * math.log(max(ref.numel(), 1)), 1.0))
    return 2.0 * rel_err(ref, exact) + torch.finfo(dtype).eps * math.sqrt(max(n_terms, 1)) * spread


def assert_within_2x(what: str, fused, ref, exact, n_terms: Sequence[int], dtype=torch.float32) -> None:
    """Asserts :func:`two_x_bound` for every tensor of ``fused`` (a tensor, or a sequence: an output and its
    gradients), against ``ref`` (the reference run in ``dtype``) and ``exact`` (the float64 reference), with
    ``n_terms[i]`` the summation length of the i-th tensor. Prints each error and bound (``pytest -s``)."""
    if isinstance(fused, torch.Tensor):
        fused, ref, exact = [fused], [ref], [exact]
    assert len(fused) == len(ref) == len(exact) == len(n_terms), what
    for i, (got, r, e, n) in enumerate(zip(fused, ref, exact, n_terms)):
        bound = two_x_bound(r, e, n, dtype)
        err = rel_err(got, e)
        print(f"[2x rule] {what}[{i}]: {err:.3g} (bound {bound:.3g}, reference {rel_err(r, e):.3g})")
        assert err <= bound, f"{what}[{i}]: error {err:.3g} above the bound {bound:.3g} (n_terms {n})"


# ---------------------------------------------------------------------------------------------------- backends
#: The compiled backends; every case of tests/test_backend_conformance.py runs on each of them.
COMPILED_BACKENDS = ("cpu", "cuda", "triton")
GPU = torch.cuda.is_available()


def backend_skip_reason(backend: str) -> Optional[str]:
    """None when ``backend`` runs here, else why not. Without a GPU, ``cuda`` runs its kernels' host emulation
    (``GTKERNELS_CUDA_EMULATE=1``, see :func:`use_backend`) and ``triton`` its interpreter (``TRITON_INTERPRET=1``,
    set by tests/conftest.py before triton is imported)."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not gtkernels._backends.triton_available():
            return "triton is not installed"
        if not (GPU or os.environ.get("TRITON_INTERPRET") == "1"):
            return "no CUDA and TRITON_INTERPRET is not 1"
        return None
    if not gtkernels.extension_available():
        return "gtkernels._C not built"
    if backend == "cuda" and GPU and not gtkernels._backends.cuda_kernels_built():
        return "gtkernels._C was built without the CUDA kernels"
    return None


def use_backend(backend: str, monkeypatch) -> str:
    """Skips with the reason when ``backend`` cannot run here; switches on the CUDA host emulation without a GPU."""
    reason = backend_skip_reason(backend)
    if reason:
        pytest.skip(f"backend {backend!r}: {reason}")
    if backend == "cuda" and not GPU:
        monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "1")
    return backend


def backend_device(backend: str) -> torch.device:
    """Where ``backend`` takes its tensors: CUDA for the GPU backends on a GPU machine, else the CPU."""
    return torch.device("cuda") if GPU and backend in ("cuda", "triton") else torch.device("cpu")


def emulated(backend: str) -> bool:
    """True when a GPU backend runs on the host (host emulation, interpreter): slow, so it runs small cases only."""
    return backend in ("cuda", "triton") and not GPU


def on_device(device, tensors):
    """Leaf copies of ``tensors`` on ``device`` (requires_grad kept for floating tensors; None kept)."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
        elif t.is_floating_point():
            out.append(t.detach().to(device).requires_grad_(t.requires_grad))
        else:
            out.append(t.to(device))
    return out


def weighted_grads(out: torch.Tensor, inputs, seed: int = 0):
    """Gradients of ``Σ out·w`` (``w`` seeded standard normal) with respect to ``inputs``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)
    return torch.autograd.grad((out * w).sum(), inputs, allow_unused=True)


# --------------------------------------------------------------------------------------------------------- ops
@dataclasses.dataclass
class Problem:
    """The inputs of one op call, on the CPU: ``tensors`` (attention q, k, v, pos; encoding pos) and ``params``
    (the ψω/φ weights) are the leaves gradients are taken of; ``mask`` (padded) or ``cu_seqlens`` (packed)."""
    mols: list
    tensors: list
    params: list
    mask: Optional[torch.Tensor]
    cu_seqlens: Optional[torch.Tensor]
    heads: int = 1
    d: int = 1
    #: further inputs of the op that gradients are not taken of (the relative attention's graph code, dummy flags,
    #: and its cancelled constants c2ᴷ and u)
    extra: dict = dataclasses.field(default_factory=dict)

    def cast(self, dtype) -> "Problem":
        """The same values as leaves of ``dtype`` (mask and cu_seqlens shared)."""
        extra = {n: t.to(dtype) if t is not None and t.is_floating_point() else t for n, t in self.extra.items()}
        return dataclasses.replace(self, tensors=[t.detach().to(dtype).requires_grad_() for t in self.tensors],
                                   params=[p.detach().to(dtype).requires_grad_() for p in self.params], extra=extra)

    def terms(self, op: "Op") -> List[int]:
        """The summation length (:func:`summation_terms`) of ``op``'s output and of each gradient."""
        fan_in = sum(p.shape[1] for p in self.params if p.dim() == 2) if op.param_term == "psi" else 0
        terms = summation_terms(self.mols, self.heads, self.d, fan_in)
        return [terms[n] for n in (op.out_term, *op.tensor_terms, *[op.param_term] * len(self.params))]


def holes(mask: torch.Tensor, *tensors: torch.Tensor):
    """Padding slots scattered inside the molecules: one permutation (seed 7) of the atom axis of ``mask`` and of
    every padded tensor; the tensors come back as fresh leaves needing grad."""
    perm = torch.randperm(mask.shape[1], generator=torch.Generator().manual_seed(7))
    return mask[:, perm], [t.detach()[:, perm].requires_grad_() for t in tensors]


class Op:
    """One public op (``gtkernels.<name>``) as the conformance cases use it: inputs, call, gradients' names and
    summation lengths, and its ``torch.library`` forward op for opcheck. A new op subclasses this and joins OPS."""
    name = ""
    tensor_names: Sequence[str] = ()
    tensor_terms: Sequence[str] = ()      # keys of summation_terms for the gradient of each tensor
    param_name = ""
    param_term = ""
    out_term = ""
    #: the output of a molecule's single atom, when the op's definition fixes it (None: it does not)
    lone_atom_value: Optional[float] = None
    #: the compiled backends with kernels for this op (the others are skipped: "not built for this op")
    backends: Sequence[str] = ("cpu", "cuda", "triton")

    def problem(self, mols, widths, heads: int = 1, d: int = 1, dtype=torch.float64, layout: str = "padded",
                param_seed: int = 1) -> Problem:
        """Inputs for ``mols``: ``layout`` "padded", "packed" or "holes" (padded, with :func:`holes`); the
        MLP of hidden ``widths`` from ``mlp_params(widths, seed=param_seed)``."""
        q, k, v, pos, mask, cu = attention_inputs(mols, heads, d, dtype=dtype,
                                                  layout="packed" if layout == "packed" else "padded")
        tensors = [q, k, v, pos][-len(self.tensor_names):]
        if layout == "holes":
            mask, tensors = holes(mask, *tensors)
        return Problem(list(mols), tensors, mlp_params(widths, dtype=dtype, seed=param_seed), mask, cu, heads, d)

    def zeros(self, batch: int, atoms: int, heads: int, d: int, device) -> Problem:
        """A padded problem of ``batch`` × ``atoms`` zeros (either may be 0), with a ψω/φ of one hidden layer."""
        raise NotImplementedError

    def out_shape(self, problem: Problem) -> tuple:
        raise NotImplementedError

    def __call__(self, problem: Problem, backend: str, **kw) -> torch.Tensor:
        raise NotImplementedError

    def grad_names(self, problem: Problem) -> List[str]:
        return [*self.tensor_names, *[f"{self.param_name}[{i}]" for i in range(len(problem.params))]]

    def rows_call(self, problem: Problem, backend: str):
        """``(op, args)``: the op's ``torch.library`` forward op and its arguments in the rows layout (padded
        ``problem`` on its device), for ``torch.library.opcheck``."""
        raise NotImplementedError


class AttentionOp(Op):
    name = "attention"
    tensor_names = ("q", "k", "v", "pos")
    tensor_terms = ("q", "k", "v", "pos")
    param_name, param_term, out_term = "psi", "psi", "out"
    lone_atom_value = 0.0     # no key besides itself: the row attends to nothing

    def zeros(self, batch, atoms, heads, d, device):
        q = torch.zeros((batch, atoms, heads, d), dtype=torch.float64, device=device, requires_grad=True)
        pos = torch.zeros((batch, atoms, 3), dtype=torch.float64, device=device)
        return Problem([], [q, q, q, pos], on_device(device, mlp_params([4])), None, None, heads, d)

    def out_shape(self, problem):
        return problem.tensors[0].shape

    def __call__(self, problem, backend, **kw):
        q, k, v, pos = problem.tensors
        return gtkernels.geometric_attention(q, k, v, pos, problem.params, problem.mask,
                                             cu_seqlens=problem.cu_seqlens, backend=backend, **kw)

    def rows_call(self, problem, backend):
        from gtkernels.ops import registry
        from gtkernels.ops.layout import padded_segments, padded_to_rows
        q = problem.tensors[0]
        seg, valid = padded_segments(q.shape[0], q.shape[1], problem.mask, q.device)
        rows = [padded_to_rows(t.detach()).requires_grad_() for t in problem.tensors]
        return registry.attention_fwd, (*rows, problem.params, seg, valid, q.shape[1], 0.5, "ieee", backend)


class EncodingOp(Op):
    name = "encoding"
    tensor_names = ("pos",)
    tensor_terms = ("enc_pos",)
    param_name, param_term, out_term = "phi", "phi", "s"

    def zeros(self, batch, atoms, heads, d, device):
        pos = torch.zeros((batch, atoms, 3), dtype=torch.float64, device=device, requires_grad=True)
        return Problem([], [pos], on_device(device, mlp_params([4])), None, None)

    def out_shape(self, problem):
        return problem.tensors[0].shape[:-1]

    def __call__(self, problem, backend, **kw):
        return gtkernels.geometric_encoding(problem.tensors[0], problem.params, problem.mask,
                                            cu_seqlens=problem.cu_seqlens, backend=backend, **kw)

    def rows_call(self, problem, backend):
        from gtkernels.ops import registry
        from gtkernels.ops.layout import padded_segments, padded_to_rows
        pos = problem.tensors[0]
        seg, valid = padded_segments(pos.shape[0], pos.shape[1], problem.mask, pos.device)
        return registry.encoding_fwd, (padded_to_rows(pos.detach()).requires_grad_(), problem.params, seg, valid,
                                       pos.shape[1], "ieee", backend)


def _random_codes(batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Valid int16 graph codes ``[batch, n, n]`` (every bond type, flag and hop bucket drawn uniformly)."""
    from gtkernels import contract
    fields = [(2, contract.MASK_FLAG_BIT), (contract.BOND_TYPES + 1, contract.BOND_TYPE_SHIFT),
              *[(2, bit) for bit in contract.FLAG_BITS], (contract.HOP_BUCKETS, contract.HOP_SHIFT)]
    code = torch.zeros((batch, n, n), dtype=torch.int64)
    for size, shift in fields:
        code |= torch.randint(size, (batch, n, n), generator=gen) << shift
    return code.to(torch.int16)


class RelativeOp(Op):
    """R-MAT's relative attention (``gtkernels.relative_attention``). ``widths = (d_hidden[, basis size])``: φ's
    hidden width (default d_k) and the number of distance-basis functions (default 32). Atom 0 of every
    molecule of more than two atoms is a dummy node; graph codes are random valid codes. The leaves are q, k, v,
    pos and ``[W1ᴷ, c1ᴷ, W2ᴷ, W1ⱽ, c1ⱽ, W2ⱽ, c2ⱽ, v_rel]``; c2ᴷ and u, whose terms the softmax cancels, sit in
    ``extra`` (their zero gradients: test_relative_cancelled_constants_get_zero_gradients)."""
    name = "relative_attention"
    tensor_names = ("q", "k", "v", "pos")
    tensor_terms = ("q", "k", "v", "pos")
    param_name, param_term, out_term = "phi", "psi", "out"
    backends = ("cpu", "triton")

    @staticmethod
    def _params(heads, d, widths, dtype, seed, device=None):
        from gtkernels.contract import GRAPH_CHANNELS
        hidden = widths[0] if widths else d
        channels = GRAPH_CHANNELS + (widths[1] if len(widths) > 1 else 32)
        g = torch.Generator().manual_seed(seed)

        def rand(*shape, gain=1.0):
            return (torch.randn(shape, generator=g, dtype=torch.float64) * gain).to(dtype)

        w1k, c1k, w2k, c2k = (rand(hidden, channels, gain=channels ** -0.5), rand(hidden, gain=0.3),
                              rand(heads * d, hidden, gain=hidden ** -0.5), rand(heads * d, gain=0.3))
        w1v, c1v, w2v, c2v = (rand(hidden, channels, gain=channels ** -0.5), rand(hidden, gain=0.3),
                              rand(heads * d, hidden, gain=hidden ** -0.5), rand(heads * d, gain=0.3))
        u, v_rel = rand(heads, d, gain=0.5), rand(heads, d, gain=0.5)
        params = [t.requires_grad_() for t in (w1k, c1k, w2k, w1v, c1v, w2v, c2v, v_rel)]
        return on_device(device, params) if device is not None else params, dict(c2k=c2k, u=u)

    def problem(self, mols, widths, heads=1, d=1, dtype=torch.float64, layout="padded", param_seed=1):
        from gtkernels.ops.relation_code import pack_graph_code
        q, k, v, pos, mask, _ = attention_inputs(mols, heads, d, dtype=dtype)
        batch, n = mask.shape
        code = _random_codes(batch, n, torch.Generator().manual_seed(100 + param_seed))
        sizes = mask.sum(1)
        dummy = (torch.arange(n)[None, :] == 0) & (sizes[:, None] > 2)
        tensors = [q, k, v, pos]
        if layout == "holes":
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(7))
            mask, tensors = holes(mask, *tensors)
            code, dummy = code[:, perm][:, :, perm], dummy[:, perm]
        params, extra = self._params(heads, d, widths, dtype, param_seed)
        cu = None
        if layout == "packed":
            cu = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(torch.int32)
            tensors = [t.detach()[mask].requires_grad_() for t in tensors]
            code, dummy, mask = pack_graph_code(code, cu), dummy[mask], None
        extra.update(code=code, dummy=dummy)
        return Problem(list(mols), tensors, params, mask, cu, heads, d, extra)

    def zeros(self, batch, atoms, heads, d, device):
        q = torch.zeros((batch, atoms, heads, d), dtype=torch.float64, device=device, requires_grad=True)
        pos = torch.zeros((batch, atoms, 3), dtype=torch.float64, device=device)
        params, extra = self._params(heads, d, (4, 2), torch.float64, 0, device)
        extra = {n: t.to(device) for n, t in extra.items()}
        extra.update(code=torch.zeros((batch, atoms, atoms), dtype=torch.int16, device=device), dummy=None)
        return Problem([], [q, q, q, pos], params, None, None, heads, d, extra)

    def out_shape(self, problem):
        return problem.tensors[0].shape

    @staticmethod
    def _phi(problem, params):
        w1k, c1k, w2k, w1v, c1v, w2v, c2v, v_rel = params
        return [w1k, c1k, w2k, problem.extra["c2k"]], [w1v, c1v, w2v, c2v], v_rel

    def __call__(self, problem, backend, **kw):
        q, k, v, pos = problem.tensors
        phi_k, phi_v, v_rel = self._phi(problem, problem.params)
        x = problem.extra
        return gtkernels.relative_attention(q, k, v, pos, x["code"], phi_k, phi_v, problem.mask, dummy=x["dummy"],
                                            cu_seqlens=problem.cu_seqlens, u=x["u"], v_rel=v_rel, backend=backend,
                                            **kw)

    def rows_call(self, problem, backend):
        from gtkernels.ops import registry
        from gtkernels.ops.layout import padded_segments, padded_to_rows
        q = problem.tensors[0]
        seg, valid = padded_segments(q.shape[0], q.shape[1], problem.mask, q.device)
        rows = [padded_to_rows(t.detach()).requires_grad_() for t in problem.tensors]
        phi_k, phi_v, v_rel = self._phi(problem, problem.params)
        x = problem.extra
        dummy = None if x["dummy"] is None else x["dummy"].reshape(-1).contiguous()
        return registry.relative_attention_fwd, (*rows, x["code"].reshape(-1).contiguous(), phi_k, phi_v, x["u"],
                                                 v_rel, seg, valid, dummy, q.shape[1], backend)


ATTENTION, ENCODING, RELATIVE = AttentionOp(), EncodingOp(), RelativeOp()
#: Every public op; the conformance cases run on each (their shapes: test_backend_conformance.CASES).
OPS = (ATTENTION, ENCODING, RELATIVE)


def skip_unbuilt(op: Op, backend: str) -> None:
    """Skips when ``backend`` has no kernels for ``op``."""
    if backend != "reference" and backend not in op.backends:
        pytest.skip(f"backend {backend!r}: not built for this op ({op.name})")


def on_backend(problem: Problem, backend: str) -> Problem:
    """``problem``'s tensors copied (as leaves) to ``backend``'s device."""
    device = backend_device(backend)
    tensors, params = on_device(device, problem.tensors), on_device(device, problem.params)
    mask, cu = on_device(device, [problem.mask, problem.cu_seqlens])
    extra = dict(zip(problem.extra, on_device(device, [t.detach() if t is not None else None
                                                       for t in problem.extra.values()])))
    return dataclasses.replace(problem, tensors=tensors, params=params, mask=mask, cu_seqlens=cu, extra=extra)


def run(op: Op, problem: Problem, backend: str, **kw):
    """``(out, grads)`` of ``op`` on ``backend`` (on copies of ``problem`` on its device), returned on the CPU;
    grads: of :func:`weighted_grads`, for every tensor and parameter."""
    problem = on_backend(problem, backend)
    out = op(problem, backend, **kw)
    grads = weighted_grads(out, [*problem.tensors, *problem.params])
    return out.detach().cpu(), [g.cpu() for g in grads]


def tiny_energy_model(backend: str = "auto", gain: float = 3.0, seed: int = 0):
    """A seeded random ``tiny`` U0 model (meV): per-atom μ −3000 meV, σ 200 meV, QM9's U0 atomrefs, and its
    distance MLPs (encoding φ, attention ψω) scaled by ``gain`` so that forces are large (~0.5 eV/Å on CH3OH)."""
    from gtkernels.data.units import atomref
    from gtkernels.models import GeometricTransformer
    torch.manual_seed(seed)
    m = GeometricTransformer("tiny", backend=backend, target="U0", mean=-3000.0, std=200.0,
                             atomref=torch.as_tensor(atomref("U0")))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "encoding" in name or "transform_dist" in name:
                p.mul_(gain)
    return m.eval()


def tiny_run(run_dir: str, domain=None, backend: str = "auto") -> str:
    """A run folder (config.json + best.pt) holding :func:`tiny_energy_model`, without training; ``domain``
    (default: that of the committed QM9 sample) as ``train`` stores it."""
    import json
    import os
    from gtkernels.data.molecules import training_domain
    os.makedirs(run_dir, exist_ok=True)
    m = tiny_energy_model(backend)
    config = {"target": "U0", "unit": "meV", "model": {"preset": "tiny"}, "backend": backend,
              "domain": training_domain(qm9_sample()) if domain is None else domain}
    with open(os.path.join(run_dir, "config.json"), "w") as fh:
        json.dump(config, fh)
    torch.save({"model": m.state_dict()}, os.path.join(run_dir, "best.pt"))
    return run_dir
