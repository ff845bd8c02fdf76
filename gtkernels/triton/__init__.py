"""Triton kernels of gtkernels (docs/semantics.md §4), same signatures and results as ``torch.ops.gtkernels_C.*``:

    attention_fwd(q, k, v, pos, psi, seg, valid, max_atoms, scale, precision) -> (out, lse)
    attention_bwd(dout, q, k, v, pos, psi, seg, valid, max_atoms, scale, precision, out, lse)
        -> (dq, dk, dv, dpos, dpsi)
    encoding_fwd(pos, phi, seg, valid, max_atoms, precision) -> s
    encoding_bwd(ds, pos, phi, seg, valid, max_atoms, precision) -> (dpos, dphi)
    relative_attention_fwd(q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy, max_atoms) -> (z, lse)
    relative_attention_bwd(dout, q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy, max_atoms, out, lse)
        -> (dq, dk, dv, dpos, dphi_k, dphi_v, dv_rel)

One file per op (kernels and launchers: :mod:`.attention`, :mod:`.encoding`, :mod:`.relative_attention`), the
shared ``@triton.jit`` helpers in :mod:`.helpers`, the host side of a launch in :mod:`.launch`. Runs on CUDA
tensors, and on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported).
"""
from .attention import attention_bwd, attention_fwd
from .encoding import encoding_bwd, encoding_fwd
from .relative_attention import relative_attention_bwd, relative_attention_fwd

__all__ = ["attention_fwd", "attention_bwd", "encoding_fwd", "encoding_bwd", "relative_attention_fwd",
           "relative_attention_bwd"]
