"""Training CLI: learning on a QM9 subset, exact resume, crash-during-save recovery, evaluate/predict, DDP."""
import os
import subprocess
import sys

import pytest
import torch

from gtkernels.cli import run as cli
from gtkernels.train import load_checkpoint
from conftest import requires_ase, requires_qm9pack

pytestmark = requires_qm9pack   # trains on subsets of the full dataset (QM9(limit=N) reads qm9pack's CSV)

COMMON = ["--preset", "tiny", "--no-progress", "--threads", "1"]  # 1 thread: robust on a shared, busy CI box


@pytest.fixture(scope="module", autouse=True)
def cache(private_qm9_cache):
    """GTKERNELS_CACHE in a folder of this module's own (tests/conftest.py)."""
    return private_qm9_cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("run") / "u0")
    summary = cli(["train", "--limit", "1500", "--epochs", "4", "--lr", "1e-3", "--run-dir", run, *COMMON])
    return run, summary


def _metrics(run):
    import csv
    with open(os.path.join(run, "metrics.csv")) as fh:
        return list(csv.DictReader(fh))


def test_validation_mae_falls(trained):
    run, summary = trained
    rows = _metrics(run)
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3, 4]
    first, last = float(rows[0]["val_mae"]), float(rows[-1]["val_mae"])
    assert last < 0.75 * first, (first, last)
    assert summary["molecules_per_s"] > 0 and summary["best_val_mae"] <= last
    best = load_checkpoint(os.path.join(run, "best.pt"))  # weights_only=True
    assert "model" in best and os.path.exists(os.path.join(run, "split.json"))


def _weights(run):
    return load_checkpoint(os.path.join(run, "last.pt"))


def test_resume_is_exact(tmp_path):
    args = ["--limit", "400", "--lr", "1e-3", "--patience", "0", "--factor", "0.5", *COMMON]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    cli(["train", "--epochs", "2", "--run-dir", a, *args])
    cli(["train", "--epochs", "4", "--run-dir", a, "--resume", *args])
    cli(["train", "--epochs", "4", "--run-dir", b, *args])
    ca, cb = _weights(a), _weights(b)
    assert ca["state"]["epoch"] == cb["state"]["epoch"] == 4
    for k in cb["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert ca["scheduler"] == cb["scheduler"]
    assert [r["val_mae"] for r in _metrics(a)] == [r["val_mae"] for r in _metrics(b)]


def test_time_budget_resume_mid_epoch(tmp_path):
    run = str(tmp_path / "t")
    cli(["train", "--limit", "3000", "--time-budget", "0.5", "--run-dir", run, *COMMON])
    state = _weights(run)["state"]
    assert state["epoch"] == 0 and 0 < state["batch"]
    cli(["train", "--epochs", "1", "--run-dir", run, "--resume", *COMMON])
    assert _weights(run)["state"]["epoch"] == 1


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run = str(tmp_path / "c")
    args = ["--limit", "300", "--run-dir", run, *COMMON]
    cli(["train", "--epochs", "1", *args])
    before = _weights(run)
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")   # a partial file, then the process "dies"
        raise KeyboardInterrupt("simulated kill during save")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        cli(["train", "--epochs", "2", "--resume", *args])
    monkeypatch.setattr(torch, "save", real_save)
    assert any(f.endswith(".pt.tmp") for f in os.listdir(run))  # the half-written file, never renamed
    after = _weights(run)  # still the complete epoch-1 checkpoint
    assert after["state"] == before["state"]
    cli(["train", "--epochs", "2", "--resume", *args])
    assert _weights(run)["state"]["epoch"] == 2
    assert len(_metrics(run)) == 2


def test_evaluate_writes_plots(trained, capsys):
    run, _ = trained
    r = cli(["evaluate", run])
    out = capsys.readouterr().out
    assert "test MAE U0" in out and "meV" in out
    assert r["n"] > 0 and r["mae"] > 0
    for key in ("parity_plot", "learning_curve"):
        assert os.path.getsize(r[key]) > 1000 and open(r[key], "rb").read(4) == b"\x89PNG"


@requires_ase   # predict reads (extended) XYZ files with ase
def test_predict_and_errors(trained, tmp_path, capsys):
    run, _ = trained
    good = tmp_path / "mols.xyz"
    good.write_text("5\nmethane\nC 0 0 0\nH 0.63 0.63 0.63\nH -0.63 -0.63 0.63\nH -0.63 0.63 -0.63\n"
                    "H 0.63 -0.63 -0.63\n3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    values = cli(["predict", run, str(good)])
    assert len(values) == 2
    assert -1.2e6 < values[0] < -1.0e6   # methane's U0 ≈ −1.1015e6 meV
    assert "U0 =" in capsys.readouterr().out
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nx\nH 0 0 0\nH 0.7 0\n")
    with pytest.raises(SystemExit):
        cli(["predict", run, str(bad)])
    err = capsys.readouterr().err
    assert "bad.xyz, line 4" in err
    # an element the training set did not have is predicted with a warning, from the
    # training domain that train stored in config.json
    import json
    with open(os.path.join(run, "config.json")) as fh:
        domain = json.load(fh)["domain"]
    assert domain["elements"] == [1, 6, 7, 8, 9] and domain["max_atoms"] <= 29 and 0.9 < domain["min_distance"] < 1.2
    si = tmp_path / "si.xyz"
    si.write_text("1\nx\nSi 0 0 0\n")
    assert len(cli(["predict", run, str(si)])) == 1
    assert "warning: " in (err := capsys.readouterr().err) and "contain Si, which the training data did not have" in err


def test_ddp_gloo_two_processes(tmp_path, cache):
    run = str(tmp_path / "ddp")
    env = dict(os.environ, GTKERNELS_CACHE=cache, OMP_NUM_THREADS="1")
    env.pop("GTKERNELS_MALLOC", None)   # each rank trains with the CPU block cache (gtkernels/cpu_heap.py)
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "gtkernels", "train", "--limit", "300", "--epochs", "1", "--batch-size", "16",
           "--run-dir", run, "--preset", "tiny", "--no-progress", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)   # the launcher and its workers: no orphaned processes left behind
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    ck = _weights(run)
    # --batch-size 16 is the global batch: 8 molecules per process and step, so the 252 training molecules of
    # --limit 300 make 32 per-process batches, 16 steps (with 16 per process it would be 8 steps)
    assert ck["state"]["epoch"] == 1 and ck["state"]["step"] == 16
    assert ck["config"]["batch_size"] == 16 and ck["config"]["batch_per_process"] == 8
    assert "batch 16 molecules per step (2 processes x 8)" in out
    assert "CPU memory: freed blocks of 1 MiB and more kept for reuse" in out


def test_padded_bucketed_warmup_variant(tmp_path, capsys):
    """The other switches run: padded layout, bucketing, warm-up, lr scaling, clipping, extensive-only
    augmentation on an intensive target (so no merging), --amp on CPU (a note, float32)."""
    run = str(tmp_path / "v")
    s = cli(["train", "--target", "gap", "--limit", "200", "--epochs", "1", "--layout", "padded", "--bucket",
             "--warmup-steps", "3", "--lr-scaling", "sqrt", "--batch-size", "64", "--clip", "1.0",
             "--augment", "extensive", "--amp", "--run-dir", run, *COMMON])
    assert s["unit"] == "meV" and s["step"] > 0
    assert "GPU only" in capsys.readouterr().err
    import json
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["lr"] == pytest.approx(2e-4 * 2 ** 0.5) and cfg["amp"] is False


def test_sigkill_at_a_random_moment_then_resume(tmp_path, cache):
    """A real `kill -9` while training (and checkpointing every few steps): the run resumes and finishes."""
    import signal
    import time as _time
    run = str(tmp_path / "k")
    env = dict(os.environ, GTKERNELS_CACHE=cache)
    cmd = [sys.executable, "-m", "gtkernels", "train", "--limit", "2000", "--epochs", "2", "--eval-every", "3",
           "--max-val", "20", "--run-dir", run, *COMMON]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = _time.time() + 60
    while not os.path.exists(os.path.join(run, "last.pt")) and _time.time() < deadline:
        _time.sleep(0.05)
    _time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cli(["train", "--epochs", "2", "--resume", "--run-dir", run, *COMMON])
    assert _weights(run)["state"]["epoch"] == 2
    steps = [int(r["step"]) for r in _metrics(run)]
    assert steps == sorted(set(steps))   # no duplicated or out-of-order rows after the crash


def test_train_subset_is_a_fixed_draw_of_the_training_split(tmp_path):
    import json
    import numpy as np
    from gtkernels.data import make_split, train_subset
    full = make_split(400, seed=0)
    a = train_subset(full["train"], 50, seed=0)
    assert len(a) == 50 == len(set(a.tolist())) and set(a.tolist()) <= set(full["train"].tolist())
    assert np.array_equal(a, train_subset(full["train"], 50, seed=0))
    assert not np.array_equal(a, train_subset(full["train"], 50, seed=1))
    assert np.array_equal(train_subset(full["train"], 10_000, seed=0), full["train"])
    run = str(tmp_path / "sub")
    cli(["train", "--epochs", "1", "--limit", "400", "--train-subset", "50", "--run-dir", run, *COMMON])
    with open(os.path.join(run, "split.json")) as fh:
        split = json.load(fh)
    assert split["train"] == a.tolist()                              # trained on exactly the draw
    assert split["val"] == full["val"].tolist() and split["test"] == full["test"].tolist()   # stay whole
