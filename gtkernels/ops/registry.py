"""The ``torch.library`` custom ops of gtkernels, with fake (meta) kernels and autograd formulas.

Every op works on the "segments of rows" layout shared by all compiled backends:
``q, k, v: [R, H, D]``, ``pos: [R, 3]`` (always float64: distances are computed in float64),
``seg: int64 [B + 1]`` row boundaries of the molecules, ``valid: bool [R]`` or None (False marks a padding
row) and ``max_atoms``, a host int bounding every molecule's row count (FlashAttention's ``max_seqlen``: the
GPU backends size their launch grids with it and never copy ``seg`` to the host). ``seg``'s values are checked
where ``seg`` is on the CPU (the CPU backend, the host emulation of the CUDA kernels); on CUDA tensors the cuda
backend does not check them (:func:`~gtkernels.prepare_geometry` validates ``cu_seqlens`` / ``max_seqlen`` once
per forward when ``validate=True``): its kernels clamp ``seg`` into ``[0, R]`` and write NaN into every output of
a molecule with more rows than ``max_atoms``. ``precision`` ("ieee" or "tf32") selects the GPU backends' float32
matmuls. The public functions in :mod:`gtkernels.ops.attention` /
:mod:`gtkernels.ops.encoding` convert the padded and packed layouts to it (:mod:`gtkernels.ops.geometry`).

The ``backend`` string argument selects the implementation (``"cpu"`` and ``"cuda"``: ``torch.ops.gtkernels_C``,
dispatched on the tensors' device; ``"cuda"`` on CPU tensors: the host emulation of the CUDA kernels,
``torch.ops.gtkernels_C.cuda_emulated_*``; ``"triton"``: :mod:`gtkernels.triton`; same signatures).
These ops are opaque to ``torch.compile`` (no graph breaks) thanks to the fake kernels.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..contract import lse_dtype


class _EmulatedCuda:
    """The CUDA kernels' program bodies run on the host (csrc/cuda/emulation.cpp), for CPU tensors."""

    def __getattr__(self, name):
        return getattr(torch.ops.gtkernels_C, "cuda_emulated_" + name)


def _kernels(backend: str, device: torch.device):
    if backend == "cuda" and device.type == "cpu":
        return _EmulatedCuda()
    if backend in ("cpu", "cuda"):
        return torch.ops.gtkernels_C
    if backend == "triton":
        from .. import triton as triton_kernels  # imported on first use: importing triton is slow
        return triton_kernels
    raise ValueError(f"no compiled kernels for backend {backend!r}")


# ---------------------------------------------------------------------------------------------------- attention
@torch.library.custom_op("gtkernels::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi: List[Tensor], seg: Tensor,
                  valid: Optional[Tensor], max_atoms: int, scale: float, precision: str,
                  backend: str) -> Tuple[Tensor, Tensor]:
    """Fused geometric attention forward. Returns ``out [R, H, D]`` and the un-gated ``lse [R, H]``."""
    return tuple(_kernels(backend, q.device).attention_fwd(q, k, v, pos, psi, seg, valid, max_atoms, scale,
                                                           precision))


@attention_fwd.register_fake
def _(q, k, v, pos, psi, seg, valid, max_atoms, scale, precision, backend):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=lse_dtype(q.dtype))


@torch.library.custom_op("gtkernels::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi: List[Tensor], seg: Tensor,
                  valid: Optional[Tensor], max_atoms: int, scale: float, precision: str, out: Tensor, lse: Tensor,
                  backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tensor]]:
    """Fused backward by recomputation: returns ``dq, dk, dv, dpos`` and the ψω parameter gradients."""
    kernels = _kernels(backend, q.device)
    dq, dk, dv, dpos, dpsi = kernels.attention_bwd(dout, q, k, v, pos, psi, seg, valid, max_atoms, scale,
                                                   precision, out, lse)
    return dq, dk, dv, dpos, list(dpsi)


@attention_bwd.register_fake
def _(dout, q, k, v, pos, psi, seg, valid, max_atoms, scale, precision, out, lse, backend):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(pos),
            [torch.empty_like(p) for p in psi])


def _attention_setup(ctx, inputs, output):
    q, k, v, pos, psi, seg, valid, max_atoms, scale, precision, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, pos, seg, valid, out, lse, *psi)
    ctx.max_atoms, ctx.scale, ctx.precision, ctx.backend = max_atoms, scale, precision, backend


def _attention_backward(ctx, dout, dlse):
    q, k, v, pos, seg, valid, out, lse, *psi = ctx.saved_tensors
    dq, dk, dv, dpos, dpsi = attention_bwd(dout.contiguous(), q, k, v, pos, psi, seg, valid, ctx.max_atoms,
                                           ctx.scale, ctx.precision, out, lse, ctx.backend)
    return dq, dk, dv, dpos, dpsi, None, None, None, None, None, None


attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


# ---------------------------------------------------------------------------------------------------- encoding
@torch.library.custom_op("gtkernels::encoding_fwd", mutates_args=())
def encoding_fwd(pos: Tensor, phi: List[Tensor], seg: Tensor, valid: Optional[Tensor], max_atoms: int,
                 precision: str, backend: str) -> Tensor:
    """Fused geometric encoding forward: ``s [R]`` = Σ_j φ(rinv_ij) over the real atoms of each molecule."""
    return _kernels(backend, pos.device).encoding_fwd(pos, phi, seg, valid, max_atoms, precision)


@encoding_fwd.register_fake
def _(pos, phi, seg, valid, max_atoms, precision, backend):
    return phi[0].new_empty(pos.shape[:1])


@torch.library.custom_op("gtkernels::encoding_bwd", mutates_args=())
def encoding_bwd(ds: Tensor, pos: Tensor, phi: List[Tensor], seg: Tensor, valid: Optional[Tensor], max_atoms: int,
                 precision: str, backend: str) -> Tuple[Tensor, List[Tensor]]:
    """Backward of :func:`encoding_fwd`: returns ``dpos [R, 3]`` and the φ parameter gradients."""
    dpos, dphi = _kernels(backend, pos.device).encoding_bwd(ds, pos, phi, seg, valid, max_atoms, precision)
    return dpos, list(dphi)


@encoding_bwd.register_fake
def _(ds, pos, phi, seg, valid, max_atoms, precision, backend):
    return torch.empty_like(pos), [torch.empty_like(p) for p in phi]


def _encoding_setup(ctx, inputs, output):
    pos, phi, seg, valid, max_atoms, precision, backend = inputs
    ctx.save_for_backward(pos, seg, valid, *phi)
    ctx.max_atoms, ctx.precision, ctx.backend = max_atoms, precision, backend


def _encoding_backward(ctx, ds):
    pos, seg, valid, *phi = ctx.saved_tensors
    dpos, dphi = encoding_bwd(ds.contiguous(), pos, phi, seg, valid, ctx.max_atoms, ctx.precision, ctx.backend)
    return dpos, dphi, None, None, None, None, None


encoding_fwd.register_autograd(_encoding_backward, setup_context=_encoding_setup)


# ------------------------------------------------------------------------------------------ relative attention
# R-MAT (docs/semantics.md §6.5). Rows layout as above, plus ``code: int16 [P]`` (molecule after molecule, each
# n_b × n_b block row-major), φ_K, φ_V as ``[W1, c1, W2, c2]``, optional ``u, v_rel [H, D]`` and bool
# ``dummy [R]``. The kernels never see ``u``: its logit term k_i·u_h, like c2ᴷ's, is constant along j and
# cancelled by the softmax, so both get a gradient of exactly 0 (the reference's autograd gives rounding noise).
@torch.library.custom_op("gtkernels::relative_attention_fwd", mutates_args=())
def relative_attention_fwd(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, code: Tensor, phi_k: List[Tensor],
                           phi_v: List[Tensor], u: Optional[Tensor], v_rel: Optional[Tensor], seg: Tensor,
                           valid: Optional[Tensor], dummy: Optional[Tensor], max_atoms: int,
                           backend: str) -> Tuple[Tensor, Tensor]:
    """Fused R-MAT relative attention forward: ``z [R, H, D]`` and ``lse [R, H]`` of the logits without their
    per-row constants."""
    return tuple(_kernels(backend, q.device).relative_attention_fwd(q, k, v, pos, code, phi_k, phi_v, v_rel, seg,
                                                                    valid, dummy, max_atoms))


@relative_attention_fwd.register_fake
def _(q, k, v, pos, code, phi_k, phi_v, u, v_rel, seg, valid, dummy, max_atoms, backend):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=lse_dtype(q.dtype))


@torch.library.custom_op("gtkernels::relative_attention_bwd", mutates_args=())
def relative_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, code: Tensor,
                           phi_k: List[Tensor], phi_v: List[Tensor], v_rel: Optional[Tensor], seg: Tensor,
                           valid: Optional[Tensor], dummy: Optional[Tensor], max_atoms: int, out: Tensor, lse: Tensor,
                           backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tensor], List[Tensor], Tensor]:
    """Backward by recomputation from lse: ``dq, dk, dv, dpos``, the φ_K and φ_V gradients (that of c2ᴷ is 0) and
    ``dv_rel [H, D]`` (0 when v_rel is None)."""
    dq, dk, dv, dpos, dphi_k, dphi_v, dv_rel = _kernels(backend, q.device).relative_attention_bwd(
        dout, q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy, max_atoms, out, lse)
    return dq, dk, dv, dpos, list(dphi_k), list(dphi_v), dv_rel


@relative_attention_bwd.register_fake
def _(dout, q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy, max_atoms, out, lse, backend):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(pos),
            [torch.empty_like(p) for p in phi_k], [torch.empty_like(p) for p in phi_v], q.new_empty(q.shape[1:]))


def _relative_setup(ctx, inputs, output):
    q, k, v, pos, code, phi_k, phi_v, u, v_rel, seg, valid, dummy, max_atoms, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, pos, code, u, v_rel, seg, valid, dummy, out, lse, *phi_k, *phi_v)
    ctx.max_atoms, ctx.backend = max_atoms, backend


def _relative_backward(ctx, dout, dlse):
    q, k, v, pos, code, u, v_rel, seg, valid, dummy, out, lse, *phi = ctx.saved_tensors
    dq, dk, dv, dpos, dphi_k, dphi_v, dv_rel = relative_attention_bwd(
        dout.contiguous(), q, k, v, pos, code, phi[:4], phi[4:], v_rel, seg, valid, dummy, ctx.max_atoms, out, lse,
        ctx.backend)
    du = None if u is None else torch.zeros_like(u)
    return (dq, dk, dv, dpos, None, dphi_k, dphi_v, du, None if v_rel is None else dv_rel, None, None, None, None,
            None)


relative_attention_fwd.register_autograd(_relative_backward, setup_context=_relative_setup)
