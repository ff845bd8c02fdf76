"""Triton kernels of gtkernels (DESIGN.md §5), same signatures and results as ``torch.ops.gtkernels_C.*``:

    attention_fwd(q, k, v, pos, psi, seg, valid, scale) -> (out, lse)
    attention_bwd(dout, q, k, v, pos, psi, seg, valid, scale, out, lse) -> (dq, dk, dv, dpos, dpsi)
    encoding_fwd(pos, phi, seg, valid) -> s
    encoding_bwd(ds, pos, phi, seg, valid) -> (dpos, dphi)

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before
triton is imported). ``gtkernels.triton._common.PRECISION`` selects the float32 ``tl.dot`` precision
("ieee", the default, or the opt-in "tf32").
"""
from .attention_bwd import attention_bwd
from .attention_fwd import attention_fwd
from .encoding import encoding_bwd, encoding_fwd

__all__ = ["attention_fwd", "attention_bwd", "encoding_fwd", "encoding_bwd"]
