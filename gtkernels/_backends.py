"""Which backends exist on this machine, and which one runs a given request.

Backends: ``reference`` (gtkernels_py, always), ``cpu`` (fused C++/OpenMP kernels in ``gtkernels._C``),
``triton`` (Triton kernels in :mod:`gtkernels.triton`: CUDA tensors, or CPU tensors under the Triton
interpreter, ``TRITON_INTERPRET=1`` set before triton is imported) and ``cuda`` (C++/CUDA kernels in
``gtkernels._C`` when it was built with CUDA: CUDA tensors, or CPU tensors through the host emulation of the
same kernel code when ``GTKERNELS_CUDA_EMULATE=1``). ``auto`` picks the fastest one that can run the request:
``cpu`` for CPU tensors; for CUDA tensors ``triton``, else ``cuda`` (neither has been timed on a GPU yet, so
the order is provisional); ``reference`` where none can run it. A backend that cannot run a request raises an
error naming one that would; it never silently substitutes.
triton is imported lazily (it is slow to import and optional).
"""
from __future__ import annotations

import functools
import logging
import os
from typing import List, Optional

import torch

from .contract import BACKEND_DTYPES, MAX_MLP_LAYERS, MAX_MLP_WIDTH

_EXTENSION_ERROR: Optional[BaseException] = None
try:  # the compiled extension registers torch.ops.gtkernels_C.*
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on machines without a build
    _EXTENSION_ERROR = exc

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
#: Float32 matmul precision of the GPU backends: "ieee" (exact, the default) or "tf32" (TF32 tensor cores).
PRECISIONS = ("ieee", "tf32")
CPU_DTYPES = BACKEND_DTYPES["cpu"]
TRITON_DTYPES = BACKEND_DTYPES["triton"]
CUDA_DTYPES = BACKEND_DTYPES["cuda"]


def extension_available() -> bool:
    """True when the compiled extension ``gtkernels._C`` imported."""
    return _EXTENSION_ERROR is None


def cuda_kernels_built() -> bool:
    """True when ``gtkernels._C`` holds the CUDA kernels (built where torch had CUDA, or with FORCE_CUDA=1)."""
    return extension_available() and bool(_C.with_cuda())


def cuda_emulating() -> bool:
    """True when ``backend="cuda"`` runs the CUDA kernels' code on CPU tensors (``GTKERNELS_CUDA_EMULATE=1``)."""
    return os.environ.get("GTKERNELS_CUDA_EMULATE", "0") == "1" and extension_available()


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    """None when ``import triton`` works (tried once, on first need), else the reason."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_available() -> bool:
    """True when the triton package imports."""
    return _triton_import_error() is None


def triton_interpreting() -> bool:
    """True when Triton kernels run in the interpreter on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backends() -> List[str]:
    """Names of the backends usable on this machine, e.g. ``['reference', 'cpu']``."""
    names = ["reference"]
    if extension_available():
        names.append("cpu")
    if (torch.cuda.is_available() or triton_interpreting()) and triton_available():
        names.append("triton")
    if (cuda_kernels_built() and torch.cuda.is_available()) or cuda_emulating():
        names.append("cuda")
    return names



def mlp_fits_kernels(params) -> bool:
    """True when an MLP ``[W0, b0, ...]`` is within the compiled kernels' width and depth limits."""
    return len(params) // 2 <= MAX_MLP_LAYERS and max(p.shape[0] for p in params[::2]) <= MAX_MLP_WIDTH


def check_precision(precision: str) -> None:
    """``precision`` is one of :data:`PRECISIONS`."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_backend_at_construction(backend: str) -> None:
    """What a module can check before it knows its inputs' device: the name, and that a CPU backend was built.

    Device-bound backends (triton, cuda) are checked per call: a module is usually built on the CPU and moved.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        resolve_backend(backend, torch.device("cpu"), torch.float32)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, dropout_p: float = 0.0,
                    mlp_ok: bool = True) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into a concrete backend able to run this request, or raise.

    ``mlp_ok`` says whether the request's ψω/φ MLP fits the compiled kernels (:func:`mlp_fits_kernels`).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if (device.type == "cpu" and extension_available() and dtype in CPU_DTYPES and dropout_p == 0.0
                and mlp_ok):
            return "cpu"
        if (device.type == "cuda" and dtype in TRITON_DTYPES and dropout_p == 0.0 and mlp_ok
                and triton_available()):
            return "triton"
        if (device.type == "cuda" and dtype in CUDA_DTYPES and dropout_p == 0.0 and mlp_ok
                and cuda_kernels_built()):
            return "cuda"
        _log_auto_fallback(device, dtype, dropout_p, mlp_ok)
        return "reference"
    if backend == "reference":
        return backend
    if backend == "triton":
        return _check_triton(device, dtype, dropout_p, mlp_ok)
    if backend == "cuda":
        return _check_cuda(device, dtype, dropout_p, mlp_ok)
    # backend == "cpu"
    if not extension_available():
        raise RuntimeError(
            "backend='cpu' needs the compiled extension gtkernels._C, which failed to import "
            f"({_EXTENSION_ERROR}). Build it with `pip install --no-build-isolation -e .`, "
            "or use backend='reference'.")
    if device.type != "cpu":
        raise ValueError(f"backend='cpu' runs on CPU tensors, got tensors on {device}; "
                         "use backend='reference' (or 'auto') for them")
    if dtype not in CPU_DTYPES:
        raise TypeError(f"backend='cpu' supports float32 and float64, got {dtype}; "
                        "cast the inputs or use backend='reference'")
    return _check_fused_limits("cpu", dropout_p, mlp_ok)


#: Backends that run :func:`gtkernels.relative_attention` (R-MAT); its cuda kernels are not built yet.
RELATIVE_BACKENDS = ("reference", "cpu", "triton")


def resolve_relative_backend(backend: str, device: Optional[torch.device] = None,
                             dtype: Optional[torch.dtype] = None, dropout_p: float = 0.0,
                             phi_dropout_p: float = 0.0) -> str:
    """The backend of an R-MAT relative-attention request.

    ``auto`` picks ``cpu`` for float32/float64 CPU tensors and ``triton`` for CUDA tensors, both without dropout
    (the fused kernels implement none), else ``reference``. ``cuda``, which has no R-MAT kernels yet, raises
    ``NotImplementedError`` naming the ones that run. With ``device`` None (a module's construction) only the name
    and, for ``cpu``, the build are checked.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in RELATIVE_BACKENDS + ("auto",):
        raise NotImplementedError(f"backend={backend!r}: the fused kernels of relative_attention (R-MAT) are not "
                                  "built yet for it; use backend='cpu' (CPU tensors), 'triton' (CUDA tensors) or "
                                  "'reference' (or 'auto', which picks one)")
    dropout = dropout_p != 0.0 or phi_dropout_p != 0.0
    if backend == "auto":
        if device is None or dropout:
            return "reference"
        if device.type == "cpu" and extension_available() and dtype in CPU_DTYPES:
            return "cpu"
        if device.type == "cuda" and dtype in TRITON_DTYPES and triton_available():
            return "triton"
        return "reference"
    if backend in ("cpu", "triton"):
        if backend == "cpu" and device is None:
            device, dtype = torch.device("cpu"), torch.float32
        if device is not None:
            resolve_backend(backend, device, dtype)   # the build, the device and the dtype
        if dropout:
            raise NotImplementedError(
                f"backend={backend!r} does not implement dropout in relative_attention (dropout_p={dropout_p}, "
                f"phi_dropout_p={phi_dropout_p}); use backend='reference' (or 'auto', which picks it) to train "
                "with dropout")
    return backend


_FALLBACKS_LOGGED = set()


def _log_auto_fallback(device: torch.device, dtype: torch.dtype, dropout_p: float, mlp_ok: bool) -> None:
    """Warn (logger ``gtkernels``, once per reason) that ``auto`` runs the slow reference backend, and why.
    Silent while torch.compile traces (a compiled graph has no side effects to log)."""
    if torch.compiler.is_compiling():
        return
    if dropout_p != 0.0:
        reason = f"dropout_p={dropout_p} (no fused kernel implements attention dropout)"
    elif not mlp_ok:
        reason = f"an MLP beyond the fused kernels' limits ({MAX_MLP_LAYERS} layers of width <= {MAX_MLP_WIDTH})"
    elif device.type == "cpu" and not extension_available():
        reason = f"gtkernels._C is not built ({_EXTENSION_ERROR})"
    elif device.type == "cpu":
        reason = f"{dtype} on CPU (the cpu kernels take float32 and float64)"
    elif device.type == "cuda" and not (triton_available() or cuda_kernels_built()):
        reason = "CUDA tensors, but neither triton nor the CUDA kernels of gtkernels._C are installed"
    else:
        reason = f"{dtype} on {device.type}"
    if reason in _FALLBACKS_LOGGED:
        return
    _FALLBACKS_LOGGED.add(reason)
    logging.getLogger("gtkernels").warning("backend='auto' runs the slow 'reference' backend: %s", reason)


def _check_fused_limits(backend: str, dropout_p: float, mlp_ok: bool) -> str:
    """What no fused kernel implements: MLPs beyond the width/depth limits, and dropout on A."""
    if not mlp_ok:
        raise ValueError(f"backend={backend!r} supports MLPs of at most {MAX_MLP_LAYERS} Linear layers of width <= "
                         f"{MAX_MLP_WIDTH}; use backend='reference' for wider or deeper ones")
    if dropout_p != 0.0:
        raise NotImplementedError(
            f"backend={backend!r} does not implement attention dropout (dropout_p={dropout_p}); the paper uses 0. "
            "Use backend='reference' (or 'auto', which picks it) to train with dropout")
    return backend


def _check_triton(device: torch.device, dtype: torch.dtype, dropout_p: float, mlp_ok: bool) -> str:
    if not triton_available():
        raise RuntimeError(f"backend='triton' needs the triton package, which failed to import "
                           f"({_triton_import_error()}); `pip install triton`, or use backend='reference'"
                           + (" or 'cpu'" if extension_available() else ""))
    if device.type == "cpu":
        if not triton_interpreting():
            raise ValueError("backend='triton' runs on CUDA tensors (CPU tensors only under the Triton interpreter, "
                             "TRITON_INTERPRET=1 set before triton is imported); got CPU tensors: use "
                             "backend='cpu' or 'reference' (or 'auto')")
        if dtype not in CPU_DTYPES:
            raise TypeError(f"backend='triton' under the interpreter supports float32 and float64, got {dtype}; "
                            "cast the inputs or use backend='reference'")
    elif device.type != "cuda":
        raise ValueError(f"backend='triton' runs on CUDA tensors, got tensors on {device}; "
                         "use backend='reference'")
    elif dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' supports float32, float64, float16 and bfloat16, got {dtype}; "
                        "cast the inputs or use backend='reference'")
    return _check_fused_limits("triton", dropout_p, mlp_ok)


def _check_cuda(device: torch.device, dtype: torch.dtype, dropout_p: float, mlp_ok: bool) -> str:
    if device.type == "cpu" and cuda_emulating():
        if dtype not in CUDA_DTYPES:
            raise TypeError(f"backend='cuda' supports float32, float64, float16 and bfloat16, got {dtype}")
        return _check_fused_limits("cuda", dropout_p, mlp_ok)
    if device.type != "cuda":
        raise ValueError(f"backend='cuda' runs on CUDA tensors, got tensors on {device} (CPU tensors only under "
                         "the host emulation, GTKERNELS_CUDA_EMULATE=1); use backend='cpu' or 'reference' "
                         "(or 'auto')")
    if not extension_available():
        raise RuntimeError(f"backend='cuda' needs the compiled extension gtkernels._C, which failed to import "
                           f"({_EXTENSION_ERROR}); use backend='triton' or 'reference'")
    if not cuda_kernels_built():
        raise RuntimeError("backend='cuda': this build of gtkernels._C has no CUDA kernels (it was built with a "
                           "CPU-only torch or GTKERNELS_CPU_ONLY=1). Rebuild with a CUDA torch "
                           "(`FORCE_CUDA=1 pip install --no-build-isolation -e .`), or use backend='triton' or "
                           "'reference'")
    if dtype not in CUDA_DTYPES:
        raise TypeError(f"backend='cuda' supports float32, float64, float16 and bfloat16, got {dtype}; "
                        "cast the inputs or use backend='reference'")
    return _check_fused_limits("cuda", dropout_p, mlp_ok)
