"""tools/: the dry-run import blocker of tools/gpu_session.sh (tools/dry_run/sitecustomize.py) and the script's syntax.

The blocker must make this machine look like the lent GPU machine to Python: no qm9pack, no ase, no network,
while the committed QM9 sample still loads. Each case runs a fresh interpreter with the blocker on PYTHONPATH.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKER = os.path.join(ROOT, "tools", "dry_run")


def _run(code: str, **env) -> dict:
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([BLOCKER, ROOT]), **env)
    full_env.pop("GTKERNELS_CUDA_EMULATE", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_blocker_hides_qm9pack_ase_and_the_network(tmp_path):
    hidden_file = tmp_path / "site" / "qm9pack" / "data" / "qm9_part1.csv"
    hidden_file.parent.mkdir(parents=True)
    fd = os.open(hidden_file, os.O_WRONLY | os.O_CREAT)   # not open(): this suite may itself run under the blocker
    os.write(fd, b"Index\n1\n")
    os.close(fd)
    out = _run(f"""
        import importlib.util, json, socket
        res = {{}}
        for name in ("qm9pack", "ase", "ase.io"):
            try:
                __import__(name); res[name] = "imported"
            except ModuleNotFoundError as exc:
                res[name] = str(exc)
        try:
            importlib.util.find_spec("qm9pack"); res["find_spec"] = "found"
        except ModuleNotFoundError:
            res["find_spec"] = "refused"
        try:
            open({str(hidden_file)!r}); res["open"] = "opened"
        except FileNotFoundError:
            res["open"] = "refused"
        s = socket.socket()
        try:
            s.connect(("192.0.2.1", 9)); res["connect"] = "connected"
        except OSError as exc:
            res["connect"] = exc.errno
        try:
            socket.getaddrinfo("pypi.org", 443); res["dns"] = "resolved"
        except socket.gaierror:
            res["dns"] = "refused"
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
        socket.create_connection(srv.getsockname(), timeout=5).close()
        res["loopback"] = "ok"
        from gtkernels.data import QM9, qm9_sample
        from gtkernels.data.qm9pack_csv import qm9pack_data_dir
        res["sample"] = len(qm9_sample())
        try:
            qm9pack_data_dir(); res["data_dir"] = "found"
        except ModuleNotFoundError:
            res["data_dir"] = "refused"
        print(json.dumps(res))
        """)
    assert "hidden by the dry run" in out["qm9pack"] and "hidden by the dry run" in out["ase"]
    assert out["ase.io"] != "imported"
    assert out["find_spec"] == out["open"] == out["dns"] == out["data_dir"] == "refused"
    assert out["connect"] == 101 and out["loopback"] == "ok"
    assert out["sample"] > 1000          # the committed sample needs none of it


def test_blocker_hides_metadata_and_can_be_switched_off():
    code = """
        import importlib.metadata as md, json
        res = {}
        try:
            import colorsys; res["import"] = "imported"
        except ModuleNotFoundError:
            res["import"] = "refused"
        try:
            md.version("pytest"); res["version"] = "found"
        except md.PackageNotFoundError:
            res["version"] = "refused"
        res["listed"] = any((d.metadata["Name"] or "").lower() == "pytest" for d in md.distributions())
        print(json.dumps(res))
        """
    on = _run(code, GTK_DRY_RUN_HIDE="colorsys,pytest")
    assert on == {"import": "refused", "version": "refused", "listed": False}
    off = _run(code, GTK_DRY_RUN_HIDE="colorsys,pytest", GTK_DRY_RUN_BLOCKER="0")
    assert off == {"import": "imported", "version": "found", "listed": True}


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_session_script_parses_and_refuses_unknown_arguments():
    script = os.path.join(ROOT, "tools", "gpu_session.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    r = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
