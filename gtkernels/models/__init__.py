"""Full models built on the fused modules."""
from .rmat import RMAT, RMAT_PRESETS
from .transformer import PRESETS, FusedEncoderBlock, GeometricTransformer

__all__ = ["GeometricTransformer", "FusedEncoderBlock", "PRESETS", "RMAT", "RMAT_PRESETS"]
