import os

import torch

if not torch.cuda.is_available():  # Triton kernels then run on CPU tensors in the interpreter (set before import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The in-process trainer runs (tests/test_train.py) would install gtkernels' CPU block cache
# (gtkernels/cpu_heap.py) into this process for every later test, which then keeps up to half the machine's
# memory in freed blocks of the test suite's many sizes. Tests of the cache run it in subprocesses without this.
os.environ.setdefault("GTKERNELS_MALLOC", "keep")

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


#: the compiled extension gtkernels._C is built (the cpu backend, and the cuda backend's kernels or their emulation)
requires_extension = pytest.mark.skipif(not gtkernels.extension_available(), reason="gtkernels._C not built")


def _qm9pack_missing():
    """None when qm9pack's CSV files are installed, else why not (the package is located, never imported)."""
    from gtkernels.data.qm9pack_csv import CSV_PARTS, qm9pack_data_dir
    try:
        folder = qm9pack_data_dir()
    except Exception as exc:  # noqa: BLE001 - ModuleNotFoundError, or an import blocker's error
        return f"{type(exc).__name__}: {exc}"
    missing = [p for p in CSV_PARTS if not os.path.isfile(os.path.join(folder, p))]
    return f"{folder} lacks {', '.join(missing)}" if missing else None


QM9PACK_MISSING = _qm9pack_missing()
#: tests of the full dataset (the HDF5 cache of all 130,831 molecules, training); CI installs qm9pack, so they
#: run there. Everything else reads the committed sample tests/data/qm9_sample.npz.
requires_qm9pack = pytest.mark.skipif(
    QM9PACK_MISSING is not None,
    reason=f"needs the full QM9 dataset of the PyPI package qm9pack, which is not available here "
           f"({QM9PACK_MISSING}); the other tests use the committed sample tests/data/qm9_sample.npz")


def _ase_missing():
    import importlib.util
    try:
        return None if importlib.util.find_spec("ase") is not None else "ase is not installed"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


ASE_MISSING = _ase_missing()
requires_ase = pytest.mark.skipif(
    ASE_MISSING is not None, reason=f"needs ase (pip install ase) to read XYZ files / as a calculator: {ASE_MISSING}")


@pytest.fixture(scope="module")
def private_qm9_cache(tmp_path_factory):
    """GTKERNELS_CACHE pointed at a fresh folder for one test module (subsets only: the first N molecules are
    converted in well under a second), then restored."""
    path = str(tmp_path_factory.mktemp("cache"))
    old = os.environ.get("GTKERNELS_CACHE")
    os.environ["GTKERNELS_CACHE"] = path
    yield path
    if old is None:
        del os.environ["GTKERNELS_CACHE"]
    else:
        os.environ["GTKERNELS_CACHE"] = old
