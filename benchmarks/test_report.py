"""The report command on a small synthetic pytest-benchmark JSON (quick; part of the CI smoke)."""
from __future__ import annotations

import json
import os

from benchmarks import report


def _bench(group, label, median, **info):
    base = dict(op="attention", label=label, backend=label, mode="fwd", heads=8, d_k=64, layout="padded",
                augmented=False, family="qm9", molecules=256, atoms=4600, n_max=29, pairs=90_000,
                dense_pairs=215_296, psi_flops=918_000_000, peak_mib=100.0 if label == "reference" else 1.0)
    base.update(info)
    return {"group": group, "name": f"test[{group}-{label}]", "extra_info": base,
            "stats": {"median": median, "stddev": 0.0, "rounds": 3}}


def test_report_smoke(tmp_path):
    benches = []
    for b, scale in ((256, 1), (1024, 4)):
        g = f"attention qm9-{b}-padded h8xd64 fwd"
        for label, t in (("reference", 0.1), ("cpu", 0.01), ("compile", 0.05), ("sdpa", 0.005)):
            benches.append(_bench(g, label, t * scale, molecules=b))
    for n, scale in ((256, 1), (1024, 16)):
        g = f"attention n{n} h8xd64 fwd"
        for label, t in (("reference", 0.2), ("cpu", 0.02)):
            benches.append(_bench(g, label, t * scale, family="single", molecules=1, n_max=n, pairs=n * n,
                                  peak_mib=0.0 if label == "cpu" else 50.0 * scale))
    benches.append(_bench("train_step small qm9aug-32-packed", "cpu", 0.03, op="train_step", mode="train",
                          preset="small", layout="packed", augmented=True, molecules=32))
    data = {"machine_info": {"gtkernels": {"device": "test CPU", "torch": "x", "triton": "y", "commit": "abc",
                                           "command": "pytest benchmarks", "skipped": {"t[a]": "too big"}}},
            "benchmarks": benches}
    path = tmp_path / "fake-suite.json"
    path.write_text(json.dumps(data))
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "fake-suite.md").read_text()
    assert "| cpu | 10 ms | 25.6 k mol/s | 10× | 5× |" in md           # speed-ups vs reference and compile
    assert "**sdpa**" in md and "no gate" in md                       # listed where gtkernels is not the fastest
    assert "too big" in md and "test CPU" in md
    pngs = sorted(os.listdir(tmp_path / "out"))
    assert "fake-suite-attention-single-h8-fwd.png" in pngs and "fake-suite-attention-qm9-h8-fwd.png" in pngs
    assert all((tmp_path / "out" / p).stat().st_size > 1000 for p in pngs if p.endswith(".png"))
