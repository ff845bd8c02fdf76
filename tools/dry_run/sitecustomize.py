"""Import blocker for ``bash tools/gpu_session.sh --dry-run``: makes a CPU machine look like the lent GPU machine
to Python, which has no ``qm9pack`` (its 104 MB wheel cannot travel), no ``ase`` and no network.

Python runs this file at start-up when its folder is on PYTHONPATH (the dry run puts it first), in every Python
process the session starts (pytest, its subprocesses, compute-sanitizer's child). It

- makes ``import qm9pack`` / ``import ase`` (and ``importlib.util.find_spec`` of them) raise ModuleNotFoundError,
  and ``importlib.metadata`` report them as not installed (``GTK_DRY_RUN_HIDE``: comma-separated names);
- makes ``open()`` of anything inside a ``qm9pack`` folder raise FileNotFoundError (so a lookup of its data
  folder through a site-packages path fails too);
- makes socket connections (and name look-ups) to anything but this machine (loopback, Unix sockets) fail
  with OSError, as on the device machine, where nothing outside it can be reached.

``GTK_DRY_RUN_BLOCKER=0`` switches it off. Nothing here changes files or the environment of the machine.
"""
import builtins
import importlib.abc
import importlib.metadata
import io
import ipaddress
import os
import socket
import sys

_HIDDEN = frozenset(n.strip() for n in os.environ.get("GTK_DRY_RUN_HIDE", "qm9pack,ase").split(",") if n.strip())
_WHY = "hidden by the dry run of tools/gpu_session.sh: the GPU machine has no {}"


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


class _HideModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} ({_WHY.format(top)})", name=fullname)
        return None


def _install_metadata_filter():
    meta = importlib.metadata
    hidden = {_norm(n) for n in _HIDDEN}
    original_from_name = meta.Distribution.from_name.__func__
    original_discover = meta.Distribution.discover.__func__

    def from_name(cls, name):
        if _norm(name) in hidden:
            raise meta.PackageNotFoundError(name)
        return original_from_name(cls, name)

    def discover(cls, **kwargs):
        for dist in original_discover(cls, **kwargs):
            try:
                name = dist.metadata["Name"] or ""
            except Exception:  # noqa: BLE001 - a broken distribution: let it through as before
                name = ""
            if _norm(name) not in hidden:
                yield dist

    meta.Distribution.from_name = classmethod(from_name)
    meta.Distribution.discover = classmethod(discover)


def _install_open_filter():
    real_open = builtins.open
    hidden_dirs = [os.sep + n + os.sep for n in _HIDDEN]

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(file))
            for d in hidden_dirs:
                if d in path:
                    raise FileNotFoundError(2, f"No such file ({_WHY.format(d.strip(os.sep))})", path)
        return real_open(file, *args, **kwargs)

    builtins.open = guarded_open
    io.open = guarded_open


def _is_local(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "", None) or host == socket.gethostname():
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _install_network_filter():
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def refuse(address):
        return OSError(101, f"Network is unreachable (the dry run of tools/gpu_session.sh allows no connection "
                            f"to {address!r}: the GPU machine reaches nothing outside it)")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
            raise refuse(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
            raise refuse(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local((host,)):
            raise socket.gaierror(socket.EAI_NONAME, f"name look-up of {host!r} refused by the dry run")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo = getaddrinfo


if os.environ.get("GTK_DRY_RUN_BLOCKER", "1") != "0":
    sys.meta_path.insert(0, _HideModules())
    _install_metadata_filter()
    _install_open_filter()
    _install_network_filter()
