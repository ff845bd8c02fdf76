"""gtkernels_py: the pure-PyTorch reference of every gtkernels op and module (the executable spec).

Plain eager PyTorch, no optimisation: the test oracle, the benchmark baseline, and the fallback backend.
"""
from .functional import geometric_attention, geometric_encoding, inverse_distances, phi, psi
from .modules import (EncoderBlock, GEGLU, GeometricAttention, GeometricEncoding, GeometricInnerAttention,
                      GeometricTransformer, PsiMLP)

__all__ = ["geometric_attention", "geometric_encoding", "inverse_distances", "psi", "phi", "PsiMLP",
           "GeometricInnerAttention", "GeometricAttention", "GeometricEncoding", "GEGLU", "EncoderBlock",
           "GeometricTransformer"]
