"""What every backend agrees on, stated once: the kernels' limits, activation ids, dtypes and the lse rule.

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

__all__ = ["DISTANCE_EPS", "MAX_MLP_WIDTH", "MAX_MLP_LAYERS", "MAX_MLP_HIDDEN", "Activation", "PSI_ACTIVATIONS",
           "PHI_ACTIVATIONS", "BACKEND_DTYPES", "lse_dtype", "as_dict"]

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


def as_dict() -> Dict[str, object]:
    """The facts ``gtkernels._C.contract()`` also reports, under the same keys."""
    return {"distance_eps": DISTANCE_EPS, "max_mlp_width": MAX_MLP_WIDTH, "max_mlp_layers": MAX_MLP_LAYERS,
            "act_none": int(Activation.NONE), "act_relu": int(Activation.RELU), "act_gelu": int(Activation.GELU)}
