"""Drop-in modules backed by the fused ops (same parameters and state-dict names as :mod:`gtkernels_py`)."""
from .attention import FusedGeometricAttention, FusedGeometricInnerAttention
from .encoding import GeometricEncoding
from .relative_attention import FusedRelativeAttention, FusedRelativeInnerAttention

__all__ = ["FusedGeometricAttention", "FusedGeometricInnerAttention", "GeometricEncoding", "FusedRelativeAttention",
           "FusedRelativeInnerAttention"]
