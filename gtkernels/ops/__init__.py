"""gtkernels ops: fused geometric attention and encoding as autograd-aware ``torch.library`` custom ops, and
R-MAT's relative attention (its reference backend so far) with its per-pair graph code."""
from .attention import geometric_attention
from .encoding import geometric_encoding
from .geometry import BatchGeometry, prepare_geometry
from .relation_code import decode_graph_relation, encode_graph_relation, pack_graph_code
from .relative_attention import relative_attention

__all__ = ["geometric_attention", "geometric_encoding", "prepare_geometry", "BatchGeometry", "relative_attention",
           "encode_graph_relation", "decode_graph_relation", "pack_graph_code"]
