"""gtkernels ops: fused geometric attention and encoding as autograd-aware ``torch.library`` custom ops."""
from .attention import geometric_attention
from .encoding import geometric_encoding
from .geometry import BatchGeometry, prepare_geometry

__all__ = ["geometric_attention", "geometric_encoding", "prepare_geometry", "BatchGeometry"]
