"""The alternatives gtkernels is measured against, besides its own reference: FlexAttention, SDPA, torch.compile.

- ``flex``: the exact FlexAttention formulation of geometric attention. g = ψω(rinv)² is materialised once
  ([B, N, N]), then two ``flex_attention`` calls with the log-sum-exp: one whose score_mod adds log g (g = 0 →
  −∞), one plain; both mask padding and self with −∞. Since softmax(S + log g)·V = Σ_j e^{S_ij} g_ij V_j /
  Σ_j e^{S_ij} g_ij, multiplying by exp(LSE₁ − LSE₀) = Σ_j e^{S_ij} g_ij / Σ_j e^{S_ij} gives
  Σ_j softmax(S)_ij g_ij V_j, the gated, un-renormalised product. Rows with no allowed key give 0.
- ``sdpa``: ``F.scaled_dot_product_attention`` with a bool mask of padding and self-exclusion and *no gate*:
  the lower bound, what the gate costs. Rows with no allowed key are given their own atom (so no NaN) and
  zeroed afterwards.
- ``compile``: ``torch.compile(fullgraph=True, dynamic=False)`` of the reference function, padded layout.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gtkernels_py.functional import inverse_distances, psi as psi_mlp, real_pairs

COMPILE_PACKED_REASON = ("compile: gtkernels_py's packed path loops over molecules in Python (cu_seqlens.tolist()), "
                         "which torch.compile cannot trace as one graph; compile is measured on the padded layout")
SDPA_PACKED_REASON = ("sdpa: PyTorch's SDPA has no variable-length layout taking a mask; a block-diagonal T×T mask "
                      "would do B× the work, so SDPA is measured on the padded layout only")


# --------------------------------------------------------------------------------------------------- compile
def compiled(fn):
    """A fresh ``torch.compile`` of ``fn`` for one shape (dynamo caches reset: no recompile limit, no reuse)."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False)


# ------------------------------------------------------------------------------------------------------ SDPA
def sdpa_masks(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """``(attn_mask [B, 1, N, N] bool, row_valid [B, 1, N, 1])``: real j ≠ i; a row with no such key may attend
    to itself (SDPA would give NaN or garbage) and is zeroed by ``row_valid``."""
    allowed = real_pairs(mask, include_self=False)
    row_valid = allowed.any(-1)
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    attn = allowed | (eye & ~row_valid[..., None])
    return attn[:, None], row_valid[:, None, :, None].to(torch.float32)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor, row_valid: Tensor) -> Tensor:
    """Masked SDPA without the gate, ``q, k, v [B, N, H, D]`` → ``[B, N, H, D]``."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask)
    return (out * row_valid.to(out.dtype)).transpose(1, 2)


# ------------------------------------------------------------------------------------------------------ Flex
def _flex_module():
    try:
        from torch.nn.attention import flex_attention as fa
    except Exception as exc:  # noqa: BLE001 - torch too old or built without it
        return None, f"torch.nn.attention.flex_attention does not import in torch {torch.__version__}: {exc}"
    return fa, None


def _flex_call(flex_fn, q, k, v, score_mod, block_mask=None):
    """``(out, lse)`` from either API (``return_aux=AuxRequest(lse=True)``, or the older ``return_lse=True``)."""
    fa, _ = _flex_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is unfused; that is the point on CPU
        if hasattr(fa, "AuxRequest"):
            out, aux = flex_fn(q, k, v, score_mod=score_mod, block_mask=block_mask,
                               return_aux=fa.AuxRequest(lse=True))
            return out, aux.lse
        return flex_fn(q, k, v, score_mod=score_mod, block_mask=block_mask, return_lse=True)


@functools.lru_cache(maxsize=None)
def flex_problem(device_type: str, compiled_flex: bool, backward: bool) -> Optional[str]:
    """None when flex_attention with the log-sum-exp works on this device (compiled or eager, with or without
    backward), else the error, found by trying it once on a tiny input."""
    fa, err = _flex_module()
    if fa is None:
        return err
    q, k, v = (torch.randn(1, 1, 16, 8, device=device_type, requires_grad=backward) for _ in range(3))
    bias = torch.zeros(16, 16, device=device_type, requires_grad=backward)  # a captured tensor, as log g
    fn = torch.compile(fa.flex_attention, dynamic=False) if compiled_flex else fa.flex_attention
    try:
        with torch.set_grad_enabled(backward):
            out, lse = _flex_call(fn, q, k, v, lambda s, b, h, i, j: s + bias[i, j])
            if backward:
                (out.sum() + lse.sum()).backward()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"; the reason is reported
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    finally:
        if compiled_flex:
            torch._dynamo.reset()
    return None


def flex_plan(device: torch.device, mode: str, layout: str) -> Tuple[Optional[str], str]:
    """``(impl, reason)``: impl ``"compiled"`` (fused kernel), ``"eager"`` (PyTorch's unfused implementation,
    which materialises the B×H×N×N scores), or None with the reason why flex cannot run this case."""
    backward = mode != "fwd"
    compiled_err = flex_problem(device.type, True, backward)
    if compiled_err is None:
        return "compiled", ""
    if layout == "packed":
        return None, ("flex: the packed layout needs compiled, block-sparse FlexAttention (a document mask); "
                      f"compiled flex with the LSE fails on {device.type} in torch {torch.__version__} "
                      f"({compiled_err}), and eager flex would materialise T×T scores")
    eager_err = flex_problem(device.type, False, backward)
    if eager_err is None:
        return "eager", (f"compiled flex with the LSE fails on {device.type} in torch {torch.__version__} "
                         f"({compiled_err}); eager (unfused) flex_attention measured instead")
    return None, (f"flex: no FlexAttention {'with backward ' if backward else ''}on {device.type} in torch "
                  f"{torch.__version__}: compiled: {compiled_err}; eager: {eager_err}")


class FlexGeometricAttention:
    """The exact two-call FlexAttention formulation on a padded batch (module docstring), ``impl`` "eager" or
    "compiled". ``__call__(q, k, v, pos, psi_params)`` with ``q, k, v [B, N, H, D]`` → ``[B, N, H, D]``."""

    def __init__(self, mask: Tensor, impl: str):
        fa, err = _flex_module()
        if fa is None:
            raise RuntimeError(err)
        self.mask, self.impl = mask, impl
        self.allowed = real_pairs(mask, include_self=False)
        self.bias0 = torch.zeros(self.allowed.shape, device=mask.device).masked_fill(~self.allowed, float("-inf"))
        self.block_mask = None
        if impl == "compiled":
            self.flex = torch.compile(fa.flex_attention, dynamic=False)
            self.gate_fn = torch.compile(self._log_gate, dynamic=False)
            valid = mask

            def mask_mod(b, h, i, j):
                return valid[b, i] & valid[b, j] & (i != j)
            b, n = mask.shape
            self.block_mask = fa.create_block_mask(mask_mod, b, None, n, n, device=mask.device.type)
        else:
            self.flex, self.gate_fn = fa.flex_attention, self._log_gate

    def _log_gate(self, pos: Tensor, psi_params: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
        gate = psi_mlp(inverse_distances(pos, self.mask).to(dtype), psi_params) ** 2   # [B, N, N] materialised
        return torch.log(gate).masked_fill(~self.allowed, float("-inf"))               # log 0 = −inf

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi_params: Sequence[Tensor]) -> Tensor:
        log_g = self.gate_fn(pos, psi_params, q.dtype)
        bias0 = self.bias0.to(q.dtype)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        o1, lse1 = _flex_call(self.flex, qt, kt, vt, lambda s, b, h, i, j: s + log_g[b, i, j], self.block_mask)
        _, lse0 = _flex_call(self.flex, qt, kt, vt, lambda s, b, h, i, j: s + bias0[b, i, j], self.block_mask)
        ratio = torch.where(torch.isfinite(lse0), torch.exp(lse1 - lse0), torch.zeros_like(lse0))
        return (o1 * ratio[..., None].to(o1.dtype)).transpose(1, 2)
