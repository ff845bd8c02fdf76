"""Drop-in modules backed by the fused ops (same parameters and state-dict names as :mod:`gtkernels_py`)."""
from .attention import FusedGeometricAttention, FusedGeometricInnerAttention
from .encoding import GeometricEncoding

__all__ = ["FusedGeometricAttention", "FusedGeometricInnerAttention", "GeometricEncoding"]
