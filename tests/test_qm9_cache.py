"""The QM9 HDF5 cache: created with the permissions of an ordinary new file, and a damaged one is rebuilt
with a warning that names the file and what was wrong (never silently)."""
import logging
import os
import stat

import h5py
import numpy as np
import pytest

from conftest import requires_qm9pack
from gtkernels.data import QM9
from gtkernels.data.qm9 import cache_path


@requires_qm9pack
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_cache_file_mode_follows_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ds = QM9(cache=str(tmp_path), limit=5, progress=False)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(ds.path).st_mode)
    assert mode == 0o666 & ~umask, f"cache created with mode {oct(mode)}, expected {oct(0o666 & ~umask)}"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")], "temporary file left behind"


@requires_qm9pack
@pytest.mark.parametrize("damage, reason", [("garbage", "OSError"), ("flip", "checksum mismatch")])
def test_damaged_cache_rebuild_is_logged(tmp_path, caplog, damage, reason):
    QM9(cache=str(tmp_path), limit=5, progress=False)
    path = cache_path(str(tmp_path), 5)
    if damage == "garbage":
        with open(path, "wb") as fh:
            fh.write(b"not an hdf5 file")
    else:
        with h5py.File(path, "r+") as f:
            f["targets"][1, 2] = 123.0
    with caplog.at_level(logging.WARNING, logger="gtkernels.data.qm9"):
        again = QM9(cache=str(tmp_path), limit=5, progress=False)
    assert again.rebuilt and len(again.index) == 5 and np.isfinite(again.targets("U0")).all()
    msgs = [r.getMessage() for r in caplog.records if r.name == "gtkernels.data.qm9"]
    assert len(msgs) == 1 and path in msgs[0] and "damaged" in msgs[0] and reason in msgs[0], msgs


@requires_qm9pack
def test_missing_cache_is_built_without_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gtkernels.data.qm9"):
        QM9(cache=str(tmp_path), limit=3, progress=False)
    assert not [r for r in caplog.records if r.name == "gtkernels.data.qm9"]
