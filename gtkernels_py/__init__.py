"""gtkernels_py: the pure-PyTorch reference of every gtkernels op and module (the executable spec).

Plain eager PyTorch, no optimisation: the test oracle, the benchmark baseline, and the fallback backend.
"""
from .functional import geometric_attention, geometric_encoding, inverse_distances, phi, psi
from .modules import (EncoderBlock, GEGLU, GeometricAttention, GeometricEncoding, GeometricInnerAttention,
                      GeometricTransformer, PsiMLP)
from .relative_attention import (MultiHeadRelativeAttention, RelationMLP, RelativeAttention, distance_basis,
                                 hop_counts, hop_one_hot, phi_relation, relation_features, relative_attention)

__all__ = ["geometric_attention", "geometric_encoding", "inverse_distances", "psi", "phi", "PsiMLP",
           "GeometricInnerAttention", "GeometricAttention", "GeometricEncoding", "GEGLU", "EncoderBlock",
           "GeometricTransformer",
           "relative_attention", "distance_basis", "hop_one_hot", "hop_counts", "relation_features", "phi_relation",
           "RelationMLP", "RelativeAttention", "MultiHeadRelativeAttention"]
