"""Make (or check) the committed QM9 sample tests/data/qm9_sample.npz and its provenance file.

    python tools/make_qm9_sample.py            # rewrite tests/data/qm9_sample.npz + qm9_sample.provenance.json
    python tools/make_qm9_sample.py --check    # rebuild in memory, compare with the committed file
                                               # (exit 1 if not equal)

Needs the PyPI package ``qm9pack`` installed (it ships QM9 as CSV). Its data folder is found from the installed
distribution (``importlib.util.find_spec``, which does not run the package: ``import qm9pack`` itself needs
``pkg_resources``); its version from ``importlib.metadata``. Which molecules, and what is kept, is described in
gtkernels/data/qm9_sample.py. Two passes over the 225 MB of CSV (atom counts, then the chosen rows): a few seconds.
The .npz is written byte-reproducibly (fixed zip timestamps, fixed order) for a given numpy and zlib.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import io
import json
import os
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gtkernels.data.elements import ATOMIC_NUMBERS  # noqa: E402
from gtkernels.data.qm9 import QM9_SIZE  # noqa: E402
from gtkernels.data.qm9_sample import DEFAULT_PATH, EXTRA_PROPERTIES, GROUPS, qm9_sample  # noqa: E402
from gtkernels.data.qm9pack_csv import CSV_PARTS, _parse_coordinates, qm9pack_data_dir  # noqa: E402
from gtkernels.data.units import TARGET_NAMES, TARGETS  # noqa: E402

SEED = 0
N_RANDOM = 1024      # the benchmarks' largest QM9 batch
N_HEAD = 8           # the benchmarks' smoke molecules
ROT_COLUMNS = ("RotA_GHz", "RotB_GHz", "RotC_GHz")


def _rows(data_dir):
    csv.field_size_limit(1 << 24)
    for part in CSV_PARTS:
        with open(os.path.join(data_dir, part), newline="") as fh:
            yield from csv.DictReader(fh)


def _number(text: str) -> float:
    return float(text.replace("*^", "e"))


def selection(n_atoms: np.ndarray) -> dict:
    """Rows (0-based, qm9pack order) of each group, from every molecule's atom count."""
    n = len(n_atoms)
    return {"random": np.sort(np.random.default_rng(SEED).choice(n, size=N_RANDOM, replace=False)),
            "head": np.arange(min(N_HEAD, n)),
            "largest": np.flatnonzero(n_atoms == n_atoms.max())}


def build(data_dir: str) -> dict:
    n_atoms = np.array([int(r["N_atoms"]) for r in _rows(data_dir)], dtype=np.int64)
    if len(n_atoms) != QM9_SIZE:
        raise SystemExit(f"qm9pack has {len(n_atoms)} molecules, expected {QM9_SIZE}")
    groups = selection(n_atoms)
    rows = np.unique(np.concatenate(list(groups.values())))
    wanted = set(rows.tolist())
    scales = np.array([t.scale for t in TARGETS])
    zs, poss, index, tgt, rot = [], [], [], [], []
    for i, r in enumerate(_rows(data_dir)):
        if i not in wanted:
            continue
        z = np.array([ATOMIC_NUMBERS[s.strip("'\" ")] for s in r["Elements"].strip("[]").split(",")], np.uint8)
        pos = _parse_coordinates(r["XYZ_Ang"])
        if len(z) != int(r["N_atoms"]) or pos.shape != (len(z), 3):
            raise SystemExit(f"row {i}: {len(z)} elements, positions {pos.shape}, N_atoms {r['N_atoms']}")
        zs.append(z)
        poss.append(pos)
        index.append(int(r["Index"]))
        tgt.append([_number(r[t.column]) for t in TARGETS])
        rot.append([_number(r[c]) for c in ROT_COLUMNS])
    offsets = np.zeros(len(zs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(z) for z in zs])
    arrays = {
        "z": np.concatenate(zs), "pos": np.concatenate(poss), "offsets": offsets,
        "index": np.array(index, np.int64), "row": rows.astype(np.int64),
        # the same float64 product as gtkernels.data.qm9 (CSV value × unit scale): bit-identical to QM9.targets
        "targets": np.array(tgt, np.float64) * scales, "target_names": np.array(TARGET_NAMES),
        "rot": np.array(rot, np.float64),
    }
    for g in GROUPS:
        arrays[f"group_{g}"] = np.searchsorted(rows, groups[g]).astype(np.int64)
    return arrays


def write_npz(path: str, arrays: dict) -> None:
    """``np.savez_compressed`` with fixed timestamps (so the bytes only depend on the arrays), written atomically."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance(data_dir: str, arrays: dict, npz_path: str) -> dict:
    counts = np.diff(arrays["offsets"])
    groups = {g: arrays[f"group_{g}"] for g in GROUPS}
    return {
        "file": os.path.relpath(npz_path, ROOT),
        "sha256": sha256(npz_path),
        "bytes": os.path.getsize(npz_path),
        "source": {"package": "qm9pack", "version": importlib.metadata.version("qm9pack"),
                   "files": {p: sha256(os.path.join(data_dir, p)) for p in CSV_PARTS},
                   "rows": QM9_SIZE},
        "made_by": "python tools/make_qm9_sample.py",
        "selection": {
            "random": f"numpy.random.default_rng({SEED}).choice({QM9_SIZE}, size={N_RANDOM}, replace=False) "
                      "over the rows in qm9pack order (part1, part2, part3): the molecules of "
                      f"gtkernels.data.sample_molecules({N_RANDOM}, seed={SEED}), the benchmarks' QM9 pool",
            "head": f"the first {N_HEAD} rows (QM9 indices 1..{N_HEAD}), the benchmarks' smoke molecules",
            "largest": "every row whose N_atoms is the dataset's largest (29)",
            "stored": "the union of the three groups, in ascending row order; group_<name> = positions into it",
        },
        "molecules": int(len(arrays["index"])), "atoms": int(len(arrays["z"])),
        "atoms_min_max": [int(counts.min()), int(counts.max())],
        "group_sizes": {g: int(len(v)) for g, v in groups.items()},
        "arrays": {
            "z": "uint8 [T] atomic numbers", "pos": "float64 [T, 3] positions in Å, parsed from the CSV (unrounded)",
            "offsets": "int64 [M+1]", "index": "int64 [M] QM9 index (CSV column Index)",
            "row": "int64 [M] 0-based row in qm9pack order (= gtkernels.data.QM9 row)",
            "targets": "float64 [M, 12] CSV value x gtkernels.data.units scale, columns target_names: "
                       + ", ".join(f"{t.name} [{t.unit}] <- {t.column}" for t in TARGETS),
            "target_names": "str [12]",
            "rot": "float64 [M, 3] rotational constants " + ", ".join(
                f"{n} <- {c}" for n, c in zip(EXTRA_PROPERTIES, ROT_COLUMNS)) + " (GHz)",
            **{f"group_{g}": "int64 positions into the sample" for g in GROUPS},
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare the committed file with a rebuild; write nothing")
    ap.add_argument("--out", default=DEFAULT_PATH, help="where the .npz goes (default: %(default)s)")
    args = ap.parse_args(argv)
    data_dir = qm9pack_data_dir()
    arrays = build(data_dir)
    if args.check:
        have = qm9_sample(args.out)
        ok = True
        for name, want in arrays.items():
            got = {"z": have.z, "pos": have.pos, "offsets": have.offsets, "index": have.index, "row": have.row,
                   "targets": have._targets, "target_names": np.array(have.target_names), "rot": have._rot,
                   **{f"group_{g}": have.groups[g] for g in GROUPS}}[name]
            if got.shape != want.shape or not np.array_equal(got, want):
                print(f"{name}: differs from a rebuild from qm9pack {importlib.metadata.version('qm9pack')}")
                ok = False
        print(f"{args.out}: {'matches' if ok else 'does NOT match'} a rebuild ({len(have)} molecules)")
        return 0 if ok else 1
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_npz(args.out, arrays)
    prov = provenance(data_dir, arrays, args.out)
    with open(os.path.splitext(args.out)[0] + ".provenance.json", "w") as fh:
        json.dump(prov, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {args.out}: {prov['molecules']} molecules, {prov['atoms']} atoms, {prov['bytes']} bytes, "
          f"groups {prov['group_sizes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
