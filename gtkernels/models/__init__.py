"""Full models built on the fused modules."""
from .transformer import PRESETS, FusedEncoderBlock, GeometricTransformer

__all__ = ["GeometricTransformer", "FusedEncoderBlock", "PRESETS"]
