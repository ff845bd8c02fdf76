import os

import torch

if not torch.cuda.is_available():  # Triton kernels then run on CPU tensors in the interpreter (set before import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import gtkernels  # noqa: E402


def pytest_sessionstart(session):
    # A build that silently failed must not turn the compiled-backend tests into skips.
    if not gtkernels.extension_available() and os.environ.get("GTKERNELS_ALLOW_NO_EXTENSION") != "1":
        from gtkernels._backends import _EXTENSION_ERROR
        raise pytest.UsageError(
            f"gtkernels._C did not import ({_EXTENSION_ERROR}); build it (`make build`) or set "
            "GTKERNELS_ALLOW_NO_EXTENSION=1 to run the reference-only tests")


requires_cpu = pytest.mark.skipif(not gtkernels.extension_available(), reason="gtkernels._C not built")
