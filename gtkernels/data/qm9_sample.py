"""A committed sample of real QM9 molecules (``tests/data/qm9_sample.npz``): no ``qm9pack`` needed.

The tests, the benchmarks' QM9 batch shapes and the GPU session (``tools/gpu_session.sh``, on a machine where
the 104 MB ``qm9pack`` wheel cannot travel) read their molecules from it. It holds, for each molecule of the
sample, the atomic numbers, the positions in Å as float64 parsed from qm9pack's CSV (not rounded, not float32),
the QM9 index, the row in qm9pack's order (= the row of :class:`~gtkernels.data.QM9`) and the 15 scalar QM9
properties: the 12 targets of :mod:`.units` in its units (bit-identical to ``QM9.targets``) and the rotational
constants A, B, C in GHz. Three groups name why a molecule is in it:

- ``random``: the rows ``numpy.random.default_rng(0).choice(130831, 1024, replace=False)``, i.e. exactly the
  molecules :func:`~gtkernels.data.sample_molecules` ``(1024, seed=0)`` reads (the benchmarks' QM9 pool);
- ``head``: the first 8 molecules of QM9 (3 to 8 atoms; the benchmarks' smoke shapes);
- ``largest``: every molecule with QM9's largest atom count (29; 35 of them).

``tools/make_qm9_sample.py`` makes the file (and ``--check`` compares it with the CSV); its provenance (package
version, CSV sha256, the file's own sha256) is in ``tests/data/qm9_sample.provenance.json``. The file is part
of a source checkout, not of an installed wheel: elsewhere point ``GTKERNELS_QM9_SAMPLE`` (or ``path``) at it.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional

import numpy as np

from .qm9pack_csv import Molecule

#: the file in a source checkout: <repo>/tests/data/qm9_sample.npz
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "tests", "data", "qm9_sample.npz")
GROUPS = ("random", "head", "largest")
#: the rotational constants, stored beside the 12 targets of :mod:`.units` (GHz, as QM9 gives them)
EXTRA_PROPERTIES = ("A", "B", "C")
ARRAYS = ("z", "pos", "offsets", "index", "row", "targets", "target_names", "rot", *(f"group_{g}" for g in GROUPS))


def sample_path(path: Optional[str] = None) -> str:
    """``path``, else ``$GTKERNELS_QM9_SAMPLE``, else :data:`DEFAULT_PATH`."""
    return os.path.expanduser(path or os.environ.get("GTKERNELS_QM9_SAMPLE") or DEFAULT_PATH)


class QM9Sample:
    """The sample's arrays, with :class:`~gtkernels.data.QM9`'s accessors (``targets``, ``molecule``, ``n_atoms``).

    ``z`` uint8 ``[T]``, ``pos`` float64 ``[T, 3]`` (Å), ``offsets`` int64 ``[M+1]``, ``index`` int64 ``[M]``
    (QM9 index), ``row`` int64 ``[M]`` (0-based row in qm9pack's order, ascending), ``groups[name]`` int64
    positions into the sample (see the module docstring).
    """

    def __init__(self, arrays: Dict[str, np.ndarray], path: str = ""):
        self.path = path
        self.z, self.pos, self.offsets = arrays["z"], arrays["pos"], arrays["offsets"]
        self.index, self.row = arrays["index"], arrays["row"]
        self._targets, self._rot = arrays["targets"], arrays["rot"]
        self.target_names = tuple(str(s) for s in arrays["target_names"])
        self.groups = {g: arrays[f"group_{g}"] for g in GROUPS}
        self.n_atoms = np.diff(self.offsets)
        m, t = len(self.index), len(self.z)
        ok = (self.z.dtype == np.uint8 and self.pos.dtype == np.float64 and self.pos.shape == (t, 3)
              and self.offsets.shape == (m + 1,) and self.offsets[0] == 0 and self.offsets[-1] == t
              and bool((self.n_atoms >= 1).all()) and self.row.shape == (m,)
              and self._targets.shape == (m, len(self.target_names)) and self._rot.shape == (m, 3)
              and all(len(v) == 0 or (v.min() >= 0 and v.max() < m) for v in self.groups.values()))
        if not ok:
            raise ValueError(f"{path}: inconsistent QM9 sample arrays (remake it with tools/make_qm9_sample.py)")

    def __len__(self) -> int:
        return len(self.index)

    def targets(self, name: str) -> np.ndarray:
        """float64 ``[M]``: a target of :mod:`.units` in its unit, or ``"A"``, ``"B"``, ``"C"`` (GHz)."""
        if name in EXTRA_PROPERTIES:
            return self._rot[:, EXTRA_PROPERTIES.index(name)]
        from .units import target
        target(name)
        return self._targets[:, self.target_names.index(name)]

    def molecule(self, i: int) -> Molecule:
        """The i-th molecule of the sample (float64 positions; ``index`` = its QM9 index)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return Molecule(int(self.index[i]), self.z[a:b], self.pos[a:b])

    def molecules(self, group: Optional[str] = None) -> List[Molecule]:
        """Every molecule (ascending QM9 row), or those of ``group`` (``random``, ``head``, ``largest``), in row
        order."""
        if group is None:
            return [self.molecule(i) for i in range(len(self))]
        if group not in self.groups:
            raise ValueError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")
        return [self.molecule(int(i)) for i in self.groups[group]]


@functools.lru_cache(maxsize=4)
def _load(path: str) -> QM9Sample:
    if not os.path.exists(path):
        raise FileNotFoundError(f"QM9 sample {path} not found: it is committed under tests/data/ of the source "
                                "tree (set GTKERNELS_QM9_SAMPLE to its path, or remake it with "
                                "tools/make_qm9_sample.py where qm9pack is installed)")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ARRAYS if k not in f.files]
        if missing:
            raise ValueError(f"{path}: not a QM9 sample (missing {', '.join(missing)})")
        arrays = {k: f[k] for k in ARRAYS}
    return QM9Sample(arrays, path)


def qm9_sample(path: Optional[str] = None) -> QM9Sample:
    """The committed QM9 sample (read once per path and process; treat its arrays as read-only)."""
    return _load(os.path.abspath(sample_path(path)))
