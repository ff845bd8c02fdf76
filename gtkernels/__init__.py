"""gtkernels: fused kernels for the Geometric Transformer (Choukroun & Wolf, IJCAI 2022) and R-MAT's relative
molecule attention (Maziarka et al., 2024).

>>> import gtkernels
>>> gtkernels.backends()          # e.g. ['reference', 'cpu']
>>> attn = gtkernels.FusedGeometricAttention(d_model=128, num_heads=8)
>>> y = attn(x, pos, mask)        # x [B, N, 128], pos [B, N, 3] in Å, mask [B, N] bool
"""
from . import _openmp  # noqa: F401,I001 - first: sets the OpenMP wait policy before anything imports torch
from ._backends import backends, extension_available
from .cpu_heap import keep_freed_memory
from .nn import FusedGeometricAttention, FusedRelativeAttention, GeometricEncoding
from .ops import (BatchGeometry, decode_graph_relation, encode_graph_relation, geometric_attention,
                  geometric_encoding, pack_graph_code, prepare_geometry, relative_attention)

__version__ = "0.1.0"
__all__ = ["backends", "extension_available", "geometric_attention", "geometric_encoding", "prepare_geometry",
           "BatchGeometry", "FusedGeometricAttention", "GeometricEncoding", "relative_attention",
           "encode_graph_relation", "decode_graph_relation", "pack_graph_code", "FusedRelativeAttention",
           "keep_freed_memory"]
