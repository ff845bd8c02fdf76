"""The `gtkernels` command as users meet it: exit status, --version, one-line errors for ordinary mistakes,
options checked before the run folder is written, config.json describing its checkpoint, --resume refusing
conflicting options, the global --batch-size, plots named by split, the start-up line, progress bars."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import gtkernels
from gtkernels import cli, train
from gtkernels.train import RunError, build_model, load_checkpoint, new_config
from conftest import QM9PACK_MISSING, requires_qm9pack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--no-progress", "--threads", "1"]
ENTRY = "import sys; from gtkernels.cli import main; sys.exit(main())"   # what the console script runs


@pytest.fixture(scope="module", autouse=True)
def cache(private_qm9_cache):
    """GTKERNELS_CACHE in a folder of this module's own (tests/conftest.py)."""
    return private_qm9_cache


def _console(*args, cwd=ROOT, exe=None):
    """The console script's entry point in a fresh interpreter (this checkout's package)."""
    cmd = [exe] if exe else [sys.executable, "-c", ENTRY]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _main(argv, capsys):
    """``cli.main`` in this process: (exit status, stdout, stderr)."""
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str, *must):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for m in must:
        assert m in lines[0], (m, lines[0])
    assert "weights_only" not in err
    return lines[0]


def _fake_run(folder, target="U0", preset="tiny"):
    """A run folder with a checkpoint of an untrained model (no QM9 needed): config.json, split.json, best/last.pt."""
    args = train.make_parser().parse_args(["--target", target, "--preset", preset, "--epochs", "1"])
    config = new_config(args, torch.device("cpu"), 1)
    model = build_model(config)
    os.makedirs(folder, exist_ok=True)
    ckpt = {"model": model.state_dict(), "config": config, "version": train.CKPT_VERSION}
    for name in ("best.pt", "last.pt"):
        train.save_atomic(ckpt, os.path.join(folder, name))
    train.write_json_atomic(config, os.path.join(folder, "config.json"))
    with open(os.path.join(folder, "split.json"), "w") as fh:
        json.dump({"train": [0], "val": [1], "test": [2]}, fh)
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real 1-epoch training on 200 molecules; (run folder, what it printed)."""
    if QM9PACK_MISSING is not None:
        pytest.skip(f"needs the full QM9 dataset of qm9pack ({QM9PACK_MISSING})")
    run = str(tmp_path_factory.mktemp("tiny") / "u0")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli.run(["train", "--limit", "200", "--epochs", "1", "--run-dir", run, *TINY])
    return run, buf.getvalue()


# ---------------------------------------------------------------------------------- 5: exit status, --version
def test_console_script_exit_status_and_version(tmp_path):
    """0 on success, 2 on bad usage, 1 on failure, from the console script's entry point in a new interpreter."""
    r = _console("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"gtkernels {gtkernels.__version__}") and "torch" in r.stdout
    r = _console("train", "--batch-size", "0", "--epochs", "1")
    assert r.returncode == 2
    _one_line_error(r.stderr, "--batch-size", "0")
    run = _fake_run(str(tmp_path / "damaged"))
    open(os.path.join(run, "best.pt"), "wb").close()
    r = _console("evaluate", run)
    assert r.returncode == 1
    _one_line_error(r.stderr, "best.pt", "empty")


def test_main_exit_status(tmp_path, capsys):
    """The same entry point in this process, for the other cases."""
    assert _main(["train", "--help"], capsys)[0] == 0
    assert _main(["--help"], capsys)[0] == 0
    code, _, err = _main([], capsys)
    assert code == 2 and "give a command" in err
    code, _, err = _main(["bogus"], capsys)
    assert code == 2 and "unknown command 'bogus'" in err
    code, _, err = _main(["evaluate", str(tmp_path / "nowhere")], capsys)
    assert code == 2
    _one_line_error(err, "nowhere", "does not exist")


@requires_qm9pack
def test_console_script_success_is_exit_0(tmp_path, capsys):
    """`gtkernels train ... && gtkernels evaluate ...` evaluates: a successful train exits with 0."""
    run = str(tmp_path / "r")
    r = _console("train", "--limit", "150", "--epochs", "1", "--run-dir", run, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    code, out, err = _main(["evaluate", run, "--no-progress"], capsys)
    assert code == 0, err
    assert "test MAE U0" in out


def test_installed_console_script():
    """The `gtkernels` script beside this interpreter (in CI: an editable install of this checkout)."""
    exe = shutil.which("gtkernels", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip(f"no gtkernels script beside {sys.executable} (package not installed in this environment)")
    where = subprocess.run([sys.executable, "-c", "import gtkernels, os; print(os.path.dirname(gtkernels.__file__))"],
                           cwd=os.path.dirname(sys.executable), capture_output=True, text=True).stdout.strip()
    if os.path.realpath(where) != os.path.realpath(os.path.join(ROOT, "gtkernels")):
        pytest.skip(f"the installed gtkernels script runs another checkout ({where})")
    r = _console("--version", exe=exe)
    assert r.returncode == 0 and gtkernels.__version__ in r.stdout
    r = _console("train", "--limit", "-5", "--epochs", "1", exe=exe)
    assert r.returncode == 2
    _one_line_error(r.stderr, "--limit", "-5")


# ------------------------------------------------------------- 2: nothing written on bad options, config == checkpoint
def test_bad_options_write_nothing(tmp_path, capsys):
    run = tmp_path / "r"
    for argv in (["--batch-size", "0", "--epochs", "1"], ["--limit", "-5", "--epochs", "1"],
                 ["--epochs", "0"], ["--time-budget", "-1"], [], ["--epochs", "1", "--num-heads", "3"],
                 ["--epochs", "1", "--eval-every", "ten"]):
        code, _, err = _main(["train", *argv, "--run-dir", str(run), *TINY], capsys)
        assert code == 2, (argv, err)
        assert not run.exists(), argv
    code, _, err = _main(["train", "--run-dir", str(run), *TINY], capsys)
    _one_line_error(err, "--epochs", "--time-budget")


@requires_qm9pack
def test_failed_then_corrected_train_config_describes_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    # a first attempt that fails while training (after the folder was made) leaves no run folder behind
    real = train._train

    def failing(*a, **k):
        raise RuntimeError("simulated failure in the first epoch")
    monkeypatch.setattr(train, "_train", failing)
    with pytest.raises(RuntimeError):
        cli.run(["train", "--target", "mu", "--limit", "150", "--epochs", "1", "--run-dir", str(run), *TINY])
    assert not run.exists()
    monkeypatch.setattr(train, "_train", real)
    # files an older version left after a failed attempt (mu, other sizes, no last.pt) are replaced, not kept
    _fake_run(str(run), target="mu", preset="small")
    os.remove(run / "last.pt")
    cli.run(["train", "--target", "U0", "--limit", "150", "--epochs", "1", "--run-dir", str(run), *TINY])
    capsys.readouterr()
    config = json.load(open(run / "config.json"))
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(str(run / name))["config"] == config, name
    assert config["target"] == "U0" and config["unit"] == "meV" and config["model"]["preset"] == "tiny"
    assert json.load(open(run / "split.json"))["meta"]["n_molecules"] == 150
    code, out, err = _main(["evaluate", str(run), "--no-progress"], capsys)
    assert code == 0, err
    assert "test MAE U0" in out and "meV" in out


def test_resume_refuses_conflicting_options(tmp_path, capsys):
    run = _fake_run(str(tmp_path / "r"))
    before = os.path.getmtime(os.path.join(run, "last.pt"))
    code, _, err = _main(["train", "--resume", "--run-dir", run, "--epochs", "3", "--target", "gap", "--lr", "1e-3",
                          "--batch-size", "64", "--preset", "tiny", *TINY], capsys)
    assert code == 2
    line = _one_line_error(err, "--target gap (run: U0)", "--lr 0.001 (run: 0.0002)", "--batch-size 64 (run: 32)")
    assert "--preset" not in line   # given, but the run's own value
    assert os.path.getmtime(os.path.join(run, "last.pt")) == before
    code, _, err = _main(["train", "--resume", "--run-dir", str(tmp_path / "none"), "--epochs", "1"], capsys)
    assert code == 2
    _one_line_error(err, "none", "does not exist")
    code, _, err = _main(["train", "--run-dir", run, "--epochs", "1", *TINY], capsys)   # a new run over an old
    assert code == 2
    _one_line_error(err, "already holds a run", "--resume")


# ------------------------------------------------------------------------------- 7: --batch-size is the global batch
def test_batch_size_is_global_over_processes(tmp_path, capsys, monkeypatch):
    assert train.per_process_batch(1024, 4) == 256 and train.per_process_batch(32, 1) == 32
    with pytest.raises(RunError, match="--batch-size 30 .* 4 processes.*28 or 32"):
        train.per_process_batch(30, 4)
    args = train.make_parser().parse_args(["--batch-size", "1024", "--lr-scaling", "sqrt", "--epochs", "1"])
    cfg = new_config(args, torch.device("cpu"), world=4)
    assert cfg["batch_size"] == 1024 and cfg["batch_per_process"] == 256
    assert cfg["lr"] == pytest.approx(2e-4 * (1024 / 32) ** 0.5)   # scaled by the global batch
    assert new_config(args, torch.device("cpu"), world=1)["lr"] == cfg["lr"]
    help_text = train.make_parser().format_help()
    assert "over all processes" in help_text and "global" in help_text
    monkeypatch.setenv("WORLD_SIZE", "2")   # checked before torch.distributed is set up
    code, _, err = _main(["train", "--batch-size", "15", "--epochs", "1", "--run-dir", str(tmp_path / "r"), *TINY],
                         capsys)
    assert code == 2 and not (tmp_path / "r").exists()
    _one_line_error(err, "--batch-size 15", "2 processes")


# ------------------------------------------------------------------------------------------------ 9: errors
def test_error_run_dir_missing(tmp_path, capsys):
    code, _, err = _main(["evaluate", str(tmp_path / "missing")], capsys)
    assert code == 2
    _one_line_error(err, "missing", "does not exist")


def test_error_run_dir_without_checkpoint(tmp_path, capsys):
    code, _, err = _main(["evaluate", str(tmp_path)], capsys)   # an empty folder
    assert code == 2
    _one_line_error(err, str(tmp_path), "not a run folder")
    run = _fake_run(str(tmp_path / "r"))
    for f in ("best.pt", "last.pt"):
        os.remove(os.path.join(run, f))
    code, _, err = _main(["evaluate", run], capsys)
    assert code == 2
    _one_line_error(err, run, "no best.pt or last.pt", "before the first checkpoint")


def test_error_empty_checkpoint(tmp_path, capsys):
    run = _fake_run(str(tmp_path / "r"))
    open(os.path.join(run, "best.pt"), "wb").close()
    code, _, err = _main(["evaluate", run], capsys)
    assert code == 1
    _one_line_error(err, os.path.join(run, "best.pt"), "empty", "--checkpoint")


def test_error_truncated_checkpoint(tmp_path, capsys):
    run = _fake_run(str(tmp_path / "r"))
    path = os.path.join(run, "last.pt")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    code, _, err = _main(["evaluate", run, "--checkpoint", "last"], capsys)
    assert code == 1
    _one_line_error(err, path, "truncated or damaged")
    code, _, err = _main(["train", "--resume", "--run-dir", run, "--epochs", "2"], capsys)
    assert code == 1
    _one_line_error(err, path, "cannot be resumed")


def test_error_garbage_checkpoint(tmp_path, capsys):
    run = _fake_run(str(tmp_path / "r"))
    path = os.path.join(run, "best.pt")
    open(path, "wb").write(os.urandom(3000))
    code, _, err = _main(["evaluate", run], capsys)
    assert code == 1
    _one_line_error(err, path, "not a checkpoint of gtkernels train")
    torch.save(torch.nn.Linear(2, 2), path)   # a pickled module (what the paper's Main.py saves)
    code, _, err = _main(["evaluate", run], capsys)
    assert code == 1
    _one_line_error(err, path, "load_official")
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(RunError, match="no 'model' weights"):
        train.load_run(run)


def test_error_batch_size_zero(capsys):
    code, _, err = _main(["train", "--batch-size", "0", "--epochs", "1"], capsys)
    assert code == 2
    _one_line_error(err, "--batch-size", "'0'", ">= 1")


def test_error_limit_negative(capsys):
    code, _, err = _main(["train", "--limit", "-5", "--epochs", "1"], capsys)
    assert code == 2
    _one_line_error(err, "--limit", "'-5'", ">= 1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable GPU")
def test_error_device_cuda_without_cuda(tmp_path, capsys):
    code, _, err = _main(["train", "--device", "cuda", "--epochs", "1", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and not (tmp_path / "r").exists()
    _one_line_error(err, "--device cuda", "--device cpu")
    run = _fake_run(str(tmp_path / "e"))
    code, _, err = _main(["evaluate", run, "--device", "cuda:0"], capsys)
    assert code == 2
    _one_line_error(err, "--device cuda:0")
    code, _, err = _main(["evaluate", run, "--device", "gpu"], capsys)
    assert code == 2
    _one_line_error(err, "--device gpu", "not a device")


# --------------------------------------------------------------------------- 3, 18, 20: evaluate, logs, help, bars
@requires_qm9pack
def test_evaluate_val_split_names_its_plots(tiny_run, capsys, monkeypatch):
    import matplotlib.axes
    titles = []
    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, t, *a, **k: (titles.append(t), real(self, t, *a, **k))[1])
    run, _ = tiny_run
    rv = cli.run(["evaluate", run, "--split", "val", "--no-progress"])
    rt = cli.run(["evaluate", run, "--no-progress"])
    assert os.path.basename(rv["parity_plot"]) == "val_parity.png"
    assert os.path.basename(rt["parity_plot"]) == "test_parity.png"
    assert os.path.getsize(rv["parity_plot"]) > 1000 and os.path.getsize(rt["parity_plot"]) > 1000
    assert open(rv["parity_plot"], "rb").read() != open(rt["parity_plot"], "rb").read()
    parity_titles = [t for t in titles if "MAE" in t]
    assert "validation MAE" in parity_titles[0] and "test MAE" in parity_titles[1], parity_titles
    assert json.load(open(os.path.join(run, "val_metrics.json")))["split"] == "val"
    out = capsys.readouterr().out
    assert "val MAE U0" in out and "test MAE U0" in out


@requires_qm9pack
def test_train_logs_runtime_and_units(tiny_run):
    _, out = tiny_run
    first = out.splitlines()[0]
    for part in (f"gtkernels {gtkernels.__version__}", f"torch {torch.__version__}", "device cpu",
                 "backend cpu (from auto)", "float32", "1 CPU thread"):
        assert part in first, (part, first)
    epoch_line = next(ln for ln in out.splitlines() if ln.startswith("epoch "))
    assert "val MAE" in epoch_line and epoch_line.split("train MAE ")[1].split()[1] == "meV"


@requires_qm9pack
def test_evaluate_runtime_options_and_progress_bar(tiny_run, capsys, monkeypatch):
    run, _ = tiny_run
    monkeypatch.setattr(train, "PROGRESS_MIN", 0)   # the bar's threshold: a test split of 17 molecules is 'long'
    code, out, err = _main(["evaluate", run, "--backend", "reference", "--threads", "1", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "backend reference" in err and "device cpu" in err and "1 CPU thread" in err
    assert "test set: 100%" in err   # the progress bar
    code, _, err = _main(["evaluate", run, "--no-progress", "--threads", "0"], capsys)
    assert code == 2
    _one_line_error(err, "--threads")


def test_auto_fallback_to_reference_is_logged_once(caplog):
    from gtkernels import _backends
    _backends._FALLBACKS_LOGGED.discard("torch.float16 on CPU (the cpu kernels take float32 and float64)")
    with caplog.at_level("WARNING", logger="gtkernels"):
        for _ in range(3):
            assert _backends.resolve_backend("auto", torch.device("cpu"), torch.float16) == "reference"
        assert _backends.resolve_backend("auto", torch.device("cpu"), torch.float32) != "reference" or \
            not gtkernels.extension_available()
    msgs = [r.getMessage() for r in caplog.records if "reference" in r.getMessage()]
    assert len(msgs) == 1 and "float16 on CPU" in msgs[0], msgs


def test_train_help_is_plain_and_says_what_is_required():
    text = train.make_parser().format_help()
    assert "``" not in text and ":func:" not in text
    assert "--epochs" in text and "--time-budget" in text and "required" in text
    assert "gtkernels train" in text


@requires_qm9pack
def test_time_budget_bar_and_time_based_validation(tmp_path, capsys, monkeypatch):
    """With --time-budget the bar counts its seconds, and --eval-every 0.5s validates inside the epoch (a fake
    clock that advances 0.05 s per reading drives both; no real timing)."""
    ticks = iter(range(10 ** 7))
    monkeypatch.setattr(train, "_clock", lambda: next(ticks) * 0.05)
    run = tmp_path / "t"
    cli.run(["train", "--limit", "1500", "--time-budget", "2", "--eval-every", "0.5s", "--max-val", "20",
             "--run-dir", str(run), "--preset", "tiny", "--threads", "1"])
    err = capsys.readouterr().err
    assert "of the time budget" in err and "/2 s" in err
    import csv
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) >= 3, rows
    assert all(0 < float(r["epoch"]) < 1 for r in rows)   # one epoch is 40 steps: all points inside it
    assert load_checkpoint(str(run / "last.pt"))["state"]["epoch"] == 0
