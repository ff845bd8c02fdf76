"""What every backend agrees on, stated once: the kernels' limits, activation ids, dtypes, the lse rule and R-MAT's
relation facts (the graph code's bit layout, the distance basis' constants).

The compiled kernels state the same facts in ``csrc/contract.h``; ``gtkernels._C.contract()`` exports them and
``tests/test_contract.py`` checks that the two agree. Python code (the op layer, the fake kernels, the Triton
launch wrappers and kernels) reads them from here and nowhere else. The distance ε is part of the semantics
(docs/semantics.md), so its one Python home is the executable spec, :mod:`gtkernels_py.functional`.
"""
from __future__ import annotations

import enum
from typing import Dict, Tuple

import torch

from gtkernels_py.functional import DISTANCE_EPS
from gtkernels_py.relative_attention import (BASIS_CUTOFF, BOND_CHANNELS, DISTANCE_CHANNELS, DISTANCE_OFFSET,
                                             ENVELOPE_EXPONENT, HOP_CHANNELS, LEAKY_SLOPE, MAX_HOP)

__all__ = ["DISTANCE_EPS", "MAX_MLP_WIDTH", "MAX_MLP_LAYERS", "MAX_MLP_HIDDEN", "Activation", "PSI_ACTIVATIONS",
           "PHI_ACTIVATIONS", "BACKEND_DTYPES", "lse_dtype", "LEAKY_SLOPE", "DISTANCE_CHANNELS", "BASIS_CUTOFF",
           "ENVELOPE_EXPONENT", "DISTANCE_OFFSET", "BOND_CHANNELS", "HOP_CHANNELS", "MAX_HOP", "GRAPH_CHANNELS",
           "MASK_FLAG_BIT", "BOND_TYPE_SHIFT", "BOND_TYPES", "FLAG_SHIFT", "FLAG_BITS", "HOP_SHIFT", "HOP_BUCKETS",
           "NO_PATH", "FIELD_MASK", "CODE_LIMIT", "as_dict"]

#: Widest Linear layer of ψω/φ the fused kernels run (units).
MAX_MLP_WIDTH = 128
#: Most Linear layers of ψω/φ the fused kernels run: Linear(1→h), up to three hidden h→h, Linear(h→1).
MAX_MLP_LAYERS = 5
#: Hidden (h→h) layers that leaves between the first and the last.
MAX_MLP_HIDDEN = MAX_MLP_LAYERS - 2


class Activation(enum.IntEnum):
    """Activation ids passed to every kernel (C++ ``gt::Activation``, Triton constexprs)."""
    NONE = 0
    RELU = 1
    GELU = 2   # exact (erf) GELU


#: ψω = Linear → ReLU → ... → Linear: (hidden activation, output activation).
PSI_ACTIVATIONS: Tuple[Activation, Activation] = (Activation.RELU, Activation.NONE)
#: φ = Linear → GELU → ... → Linear → GELU.
PHI_ACTIVATIONS: Tuple[Activation, Activation] = (Activation.GELU, Activation.GELU)

#: Input dtypes each compiled backend accepts (float16/bfloat16 compute in float32). The Triton interpreter
#: (CPU tensors) runs float32 and float64 only.
BACKEND_DTYPES: Dict[str, Tuple[torch.dtype, ...]] = {
    "cpu": (torch.float32, torch.float64),
    "triton": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved log-sum-exp for inputs of ``dtype``: float64 for float64, float32 otherwise (float32,
    float16 and bfloat16 all accumulate in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------ R-MAT (docs/semantics.md §6)
# The maths' constants (LeakyReLU slope, basis size, cutoff, envelope exponent, distance offset, channel counts)
# have their Python home in the spec, gtkernels_py.relative_attention, and are re-exported here.

#: Channels of b_ij the int16 graph code stands for (bond, then hop one-hot).
GRAPH_CHANNELS = BOND_CHANNELS + HOP_CHANNELS

# The graph code's bit layout (gtkernels.ops.relation_code documents it; the kernels decode it).
MASK_FLAG_BIT = 0
BOND_TYPE_SHIFT = 1
#: Bond types 1..BOND_TYPES are channels 1..BOND_TYPES; 0 is "no bond".
BOND_TYPES = 4
#: The aromatic, conjugated and in-ring flags (channels 5, 6, 7) are bits FLAG_SHIFT, +1, +2.
FLAG_SHIFT = 4
FLAG_BITS = (FLAG_SHIFT, FLAG_SHIFT + 1, FLAG_SHIFT + 2)
HOP_SHIFT = 7
#: Hop buckets 0..HOP_BUCKETS − 1 are channels 8..13: hop counts 0..MAX_HOP − 1, MAX_HOP or more, no path.
HOP_BUCKETS = HOP_CHANNELS
NO_PATH = MAX_HOP + 1
#: Each multi-bit field (bond type, hop bucket) is 3 bits wide.
FIELD_MASK = 0b111
#: Every valid code is below this.
CODE_LIMIT = 1 << (HOP_SHIFT + 3)


def as_dict() -> Dict[str, object]:
    """The facts ``gtkernels._C.contract()`` also reports, under the same keys."""
    return {"distance_eps": DISTANCE_EPS, "max_mlp_width": MAX_MLP_WIDTH, "max_mlp_layers": MAX_MLP_LAYERS,
            "act_none": int(Activation.NONE), "act_relu": int(Activation.RELU), "act_gelu": int(Activation.GELU),
            "relation_leaky_slope": LEAKY_SLOPE, "relation_basis_size": DISTANCE_CHANNELS,
            "relation_cutoff": BASIS_CUTOFF, "relation_envelope_exponent": ENVELOPE_EXPONENT,
            "relation_distance_offset": DISTANCE_OFFSET, "relation_bond_channels": BOND_CHANNELS,
            "relation_hop_channels": HOP_CHANNELS, "code_mask_flag_bit": MASK_FLAG_BIT,
            "code_bond_type_shift": BOND_TYPE_SHIFT, "code_bond_types": BOND_TYPES, "code_flag_shift": FLAG_SHIFT,
            "code_hop_shift": HOP_SHIFT, "code_hop_buckets": HOP_BUCKETS, "code_field_mask": FIELD_MASK,
            "code_limit": CODE_LIMIT}
