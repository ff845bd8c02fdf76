"""Shared machinery of the benchmark suite: device, budgets, inputs, FLOP counts, measurement, metadata.

Every benchmark runs one *label* (a gtkernels backend, ``compile``, ``flex`` or ``sdpa``) on one *shape*
(a QM9 batch or a single system) and records what ``python -m benchmarks.report`` needs in
``benchmark.extra_info``. Cases that would not fit this machine are skipped with the estimate in the reason.

Environment knobs:

``GTK_BENCH_FULL=1``         run everything, ignoring the memory and time estimates below
``GTK_BENCH_MAX_GIB``        memory budget per call in GiB (default: 35 % of available RAM on CPU, 80 % of free
                             GPU memory on CUDA); a case whose estimated peak exceeds it is skipped
``GTK_BENCH_MAX_CALL_S``     time budget per call in seconds (default 60); slower estimates are skipped
``GTK_BENCH_TARGET_S``       timing seconds per benchmark (default 1.5): rounds = target / call time, 1..10
``GTK_BENCH_DEVICE``         ``cpu`` or ``cuda`` (default: cuda when available)
"""
from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch

import gtkernels
from benchmarks.memory import PeakMeter, peak_extra_mib

GIB = 2 ** 30
FULL = os.environ.get("GTK_BENCH_FULL", "0") == "1"
MAX_CALL_S = float(os.environ.get("GTK_BENCH_MAX_CALL_S", "60"))
TARGET_S = float(os.environ.get("GTK_BENCH_TARGET_S", "1.5"))
MAX_ROUNDS = 10
DEVICE = torch.device(os.environ.get("GTK_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
MODES = ("fwd", "fwd+bwd")
#: heads × d_k: the paper's (d_model 512, 256 heads) and a common one (d_model 512, 8 heads)
HEADS = {"h256xd2": (256, 2), "h8xd64": (8, 64)}


# ------------------------------------------------------------------------------------------ labels and machine
def backend_labels() -> List[str]:
    """The gtkernels backends benchmarked on ``DEVICE``: ``reference`` always, ``cpu`` for CPU tensors,
    ``triton``/``cuda`` for CUDA tensors (never the Triton interpreter: it is a test tool, not a backend to time)."""
    fits = {"reference": True, "cpu": DEVICE.type == "cpu", "triton": DEVICE.type == "cuda",
            "cuda": DEVICE.type == "cuda"}
    return [b for b in gtkernels.backends() if fits.get(b, False)]


def fused_labels() -> List[str]:
    return [b for b in backend_labels() if b != "reference"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def device_name() -> str:
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name(DEVICE)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


@functools.lru_cache(maxsize=None)
def versions() -> Dict[str, str]:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - optional dependency, any import failure means "absent"
        triton_version = "absent"
    return {"torch": torch.__version__, "triton": triton_version, "gtkernels": gtkernels.__version__,
            "cuda": torch.version.cuda or "none"}


def available_bytes() -> int:
    """Memory a call may use: free GPU memory on CUDA, MemAvailable on CPU."""
    if DEVICE.type == "cuda":
        free, _ = torch.cuda.mem_get_info(DEVICE)
        return free
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GIB


@functools.lru_cache(maxsize=None)
def memory_budget() -> float:
    """Bytes a single benchmarked call may be estimated to need (``GTK_BENCH_MAX_GIB`` overrides)."""
    if os.environ.get("GTK_BENCH_MAX_GIB"):
        return float(os.environ["GTK_BENCH_MAX_GIB"]) * GIB
    return available_bytes() * (0.8 if DEVICE.type == "cuda" else 0.35)


def skip_if_too_big(label: str, est_bytes: float, est_seconds: Optional[float] = None) -> None:
    """``pytest.skip`` with the estimate when a case exceeds the memory or time budget (unless GTK_BENCH_FULL=1)."""
    if FULL:
        return
    if est_bytes > memory_budget():
        pytest.skip(f"{label}: estimated peak {est_bytes / GIB:.1f} GiB > budget {memory_budget() / GIB:.1f} GiB "
                    f"on {DEVICE.type} (set GTK_BENCH_MAX_GIB=... or GTK_BENCH_FULL=1 to run it)")
    if est_seconds is not None and est_seconds > MAX_CALL_S:
        pytest.skip(f"{label}: estimated {est_seconds:.0f} s per call > {MAX_CALL_S:.0f} s on this {DEVICE.type} "
                    f"(set GTK_BENCH_MAX_CALL_S=... or GTK_BENCH_FULL=1 to run it)")


# ------------------------------------------------------------------------------------------------------ FLOPs
def mlp_flops(params: Sequence[torch.Tensor]) -> int:
    """Forward FLOPs of one evaluation of an MLP ``[W0, b0, W1, b1, ...]`` (one pair): Σ 2·in·out over the
    Linear layers, the hidden layers counted as the matmuls they are in the fused kernels (activations and bias
    adds left out). ψω of the paper (1→50→50→50→1): 10,200."""
    return int(sum(2 * w.shape[0] * w.shape[1] for w in params[::2]))


def pass_flops(params: Sequence[torch.Tensor], pairs: int, mode: str) -> int:
    """ψω/φ FLOPs of one pass over ``pairs`` (Σn², ordered) pairs: forward ×1; forward+backward ×3 (backward =
    2× forward, the usual convention). The same count for every label: the work of the plain formulation. The
    fused kernels' recomputation of ψω in the backward is not counted, and neither is their saving: the CPU
    kernels evaluate ψω once per unordered pair (rinv_ij = rinv_ji), so their real rate is about half."""
    return mlp_flops(params) * int(pairs) * (1 if mode == "fwd" else 3)


# ---------------------------------------------------------------------------------------------------- shapes
@dataclasses.dataclass
class Batch:
    """One benchmark input: positions and layout (padded ``mask`` or packed ``cu_seqlens``) of a set of systems."""
    name: str
    family: str               # "qm9" (batches), "single" (one system of N atoms), "smoke"
    layout: str               # "padded" or "packed"
    z: torch.Tensor
    pos: torch.Tensor
    mask: Optional[torch.Tensor]
    cu_seqlens: Optional[torch.Tensor]
    sizes: np.ndarray         # atoms per system
    augmented: bool = False

    @property
    def molecules(self) -> int:  # systems in the batch (an augmented pair counts as one sample)
        return len(self.sizes)

    @property
    def atoms(self) -> int:
        return int(self.sizes.sum())

    @property
    def n_max(self) -> int:
        return int(self.sizes.max()) if len(self.sizes) else 0

    @property
    def pairs(self) -> int:
        """Σ n_b²: the pairs of real atoms (the work of a packed/fused pass)."""
        return int((self.sizes.astype(np.int64) ** 2).sum())

    @property
    def dense_pairs(self) -> int:
        """Pairs an implementation that materialises the layout touches: B·N² padded, Σ n_b² packed."""
        return self.molecules * self.n_max ** 2 if self.layout == "padded" else self.pairs

    @property
    def rows_numel(self) -> int:  # rows of q / k / v: B·N padded, T packed
        return self.molecules * self.n_max if self.layout == "padded" else self.atoms

    @property
    def rows_shape(self) -> tuple:
        return tuple(self.mask.shape) if self.layout == "padded" else (self.atoms,)

    def info(self) -> dict:
        return dict(shape=self.name, family=self.family, layout=self.layout, augmented=self.augmented,
                    system="single" if self.name.split("-")[-1].startswith("n") else "qm9",
                    molecules=self.molecules, batch_size=self.molecules, atoms=self.atoms, n_max=self.n_max,
                    pairs=self.pairs, dense_pairs=self.dense_pairs)


QM9_SIZES = (256, 1024)
SINGLE_SIZES = (256, 1024, 4096, 8192)


def qm9_shape_names(sizes=QM9_SIZES) -> List[str]:
    return [f"qm9{'aug' if aug else ''}-{b}-{layout}" for b in sizes for aug in (False, True)
            for layout in ("padded", "packed")]


SMOKE_SHAPES = ["smoke-qm9-padded", "smoke-qm9aug-packed", "smoke-n64"]
SHAPES = SMOKE_SHAPES + qm9_shape_names() + [f"n{n}" for n in SINGLE_SIZES]


@functools.lru_cache(maxsize=1)
def qm9_pool():
    """1,024 QM9 molecules drawn at random (seed 0), in random order: the real size distribution. A batch of B is
    the first B of them. They come from the committed sample (gtkernels.data.qm9_sample, group ``random``: the
    molecules ``sample_molecules(1024, seed=0)`` reads from qm9pack), so no qm9pack is needed."""
    from gtkernels.data import qm9_sample
    mols = qm9_sample().molecules("random")
    assert len(mols) >= max(QM9_SIZES), f"the QM9 sample has {len(mols)} random molecules, fewer than {max(QM9_SIZES)}"
    order = np.random.default_rng(0).permutation(len(mols))
    return [mols[i] for i in order]


@functools.lru_cache(maxsize=1)
def smoke_pool():
    """The first 8 QM9 molecules (3 to 8 atoms), from the committed sample (group ``head``): the CI smoke shapes."""
    from gtkernels.data import qm9_sample
    return qm9_sample().molecules("head")


def _from_packed(name, family, layout, z, pos, cu, augmented):
    from gtkernels.data import packed_to_padded
    sizes = (cu[1:] - cu[:-1]).numpy().astype(np.int64)
    if layout == "packed":
        return Batch(name, family, layout, z, pos, None, cu, sizes, augmented)
    zp, pp, mask = packed_to_padded(z, pos, cu)
    return Batch(name, family, layout, zp, pp, mask, None, sizes, augmented)


@functools.lru_cache(maxsize=None)
def get_batch(name: str) -> Batch:
    """The input of shape ``name`` (see ``SHAPES``), on ``DEVICE``. Positions are float32, except augmented
    batches whose merged fragments sit 1e4 Å apart: float64, as the trainer builds them."""
    from gtkernels.data import merge_pairs, pack
    if name.startswith("n") or name == "smoke-n64":
        n = int(name.rsplit("n", 1)[1])
        g = torch.Generator().manual_seed(0)
        # one random system at ~80 Å³ per atom (liquid-like density), all atoms real
        pos = torch.rand(n, 3, generator=g) * (80.0 * n) ** (1 / 3)
        cu = torch.tensor([0, n], dtype=torch.int32)
        b = _from_packed(name, "smoke" if name.startswith("smoke") else "single", "padded",
                         torch.ones(n, dtype=torch.int64), pos, cu, False)
    else:
        family = "smoke" if name.startswith("smoke") else "qm9"
        kind, rest = name.split("-", 1)[-1].split("-", 1) if family == "smoke" else name.split("-", 1)
        augmented = kind.endswith("aug")
        if family == "smoke":
            mols, layout = smoke_pool(), rest
        else:
            count, layout = rest.split("-")
            mols = qm9_pool()[:int(count)]
        z, pos, cu = pack(mols, dtype=torch.float64)
        if augmented:
            z, pos, cu, _ = merge_pairs(z.numpy(), pos.numpy(), cu.numpy(), np.zeros(len(mols)))
            z, pos, cu = torch.from_numpy(z), torch.from_numpy(pos), torch.from_numpy(cu).to(torch.int32)
        else:
            pos = pos.float()
        b = _from_packed(name, family, layout, z, pos, cu, augmented)
    return dataclasses.replace(b, **{f: getattr(b, f).to(DEVICE) for f in ("z", "pos", "mask", "cu_seqlens")
                                     if getattr(b, f) is not None})


def is_smoke(shape: str) -> bool:
    return shape.startswith("smoke")


# --------------------------------------------------------------------------------------------- measurement
def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def measure(benchmark, fn: Callable[[], object], info: dict, predicted_s: Optional[float] = None) -> None:
    """Benchmark ``fn`` and record ``info``, the peak memory, the rounds and the machine in extra_info.

    ``predicted_s`` (one call, from the test's first call) decides the plan: a quick case gets an untimed
    warm-up call, then rounds = ``GTK_BENCH_TARGET_S`` / the call time (1 to 10); a slow one (≥ 1 s) goes
    straight to its rounds. The peak memory is measured around the first timed round (``PeakMeter`` start/stop
    in pytest-benchmark's untimed setup/teardown; the RSS and CUDA meters add nothing inside the call; the
    profiler meter, ``GTK_BENCH_CPU_MEMORY=profiler``, gets a call of its own). With ``--benchmark-disable`` (the
    CI smoke) there is one call, under the meter.
    """
    extra = dict(info)
    extra.update(device=device_name(), device_type=DEVICE.type, **versions(), threads=torch.get_num_threads())
    meter = PeakMeter(DEVICE)
    extra["memory_method"] = meter.method
    if benchmark.disabled:
        extra["peak_mib"], extra["rounds"] = peak_extra_mib(fn, DEVICE), 0
        benchmark.extra_info.update(extra)
        return
    call_s = predicted_s
    if call_s is None or call_s < 1.0:
        t0 = time.perf_counter()
        fn()                                   # warm-up, untimed
        sync()
        call_s = time.perf_counter() - t0
    rounds = int(min(MAX_ROUNDS, max(1, TARGET_S // max(call_s, 1e-9))))
    if meter.method == "profiler":
        extra["peak_mib"] = peak_extra_mib(fn, DEVICE)
    state = {"round": 0}

    def setup():
        if state["round"] == 0 and "peak_mib" not in extra:
            meter.start()

    def teardown():
        if state["round"] == 0 and "peak_mib" not in extra:
            extra["peak_mib"] = meter.stop()
        state["round"] += 1

    extra["rounds"] = rounds
    benchmark.extra_info.update(extra)
    benchmark.pedantic(lambda: (fn(), sync()), setup=setup, teardown=teardown, rounds=rounds, iterations=1,
                       warmup_rounds=0)
    benchmark.extra_info["peak_mib"] = extra["peak_mib"]


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float = 2e-4) -> float:
    """Check an alternative's output against the oracle (relative to the oracle's largest entry); return the error."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite outputs"
    err = float((got - want).abs().max()) if got.numel() else 0.0
    scale = float(want.abs().max()) if want.numel() else 0.0
    assert err <= rtol * max(scale, 1e-12) + 1e-7, f"{name}: max error {err:.3g} vs oracle scale {scale:.3g}"
    return err


_ORACLE: Dict[tuple, tuple] = {}


def oracle(case: tuple, estimate: Callable[[str], tuple], forward: Callable[[str], torch.Tensor]) -> tuple:
    """``(name, forward output)`` that every label of ``case`` is checked against: the first of the reference and
    the fused backends whose forward fits the budgets (``estimate(name)``: bytes and seconds or None of one
    ``forward(name)`` call, which runs without autograd); ``pytest.skip`` when none fits. Kept for the last
    ``case`` (the labels of a case run one after another)."""
    if case not in _ORACLE:
        for name in ["reference"] + fused_labels():
            try:
                skip_if_too_big(name, *estimate(name))
            except pytest.skip.Exception:
                continue
            with torch.no_grad():
                want = forward(name)
            _ORACLE.clear()
            _ORACLE[case] = (name, want)
            break
        else:
            pytest.skip("no oracle fits the budget for this shape")
    return _ORACLE[case]


def first_call(label: str, forward: Callable[[], torch.Tensor], grad: bool, info: dict, oracle_name: str,
               want: Optional[torch.Tensor]) -> None:
    """Run ``forward()`` once untimed: record its time in ``info["first_call_s"]``, check its output against the
    oracle's (``want``, from ``oracle_name``; skipped when the label is the oracle) and that it is finite."""
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        out = forward()
    info["first_call_s"] = time.perf_counter() - t0
    if want is not None and oracle_name != label:
        info["max_abs_err"] = assert_close(f"{label} vs {oracle_name}", out, want)
        info["checked_against"] = oracle_name
    assert torch.isfinite(out).all(), f"{label}: non-finite outputs (rows without keys must give 0)"
