"""Demo: geometric attention on real QM9 molecules, eager reference vs the fused kernels.

``python -m gtkernels.demo [--molecules 128] [--repeats 3]`` draws a random batch of QM9 molecules (from the
``qm9pack`` package), runs the paper's attention layer with the same weights through ``gtkernels_py`` and
through the fused backend, checks they agree, and prints time and molecules/s for forward and
forward+backward at two widths: d_model 128 with 8 heads, and the paper's d_model 512 with 256 heads.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import gtkernels
import gtkernels_py
from gtkernels.data import pad, sample_molecules


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, default=128, help="batch size (default 128)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions, median reported (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    fused_backend = "cpu" if "cpu" in gtkernels.backends() else "reference"
    print(f"gtkernels {gtkernels.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"backends {gtkernels.backends()}")
    print(f"loading {args.molecules} random QM9 molecules from qm9pack ...", flush=True)
    mols = sample_molecules(args.molecules, args.seed)
    z, pos, mask = pad(mols)
    n = mask.sum(1).float()
    print(f"batch: {len(mols)} molecules, {n.mean():.1f} atoms on average (max {int(n.max())}), padded to "
          f"{z.shape[1]}\n")

    print(f"{'d_model x heads':>16} {'pass':>9} {'reference':>11} {'fused':>11} {'speed-up':>9} "
          f"{'molecules/s':>12} {'max |diff|':>11}")
    for d_model, heads in ((128, 8), (512, 256)):
        torch.manual_seed(args.seed)
        ref = gtkernels_py.GeometricAttention(d_model, heads)
        fused = gtkernels.FusedGeometricAttention(d_model, heads, backend=fused_backend)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(z.shape + (d_model,))
        with torch.no_grad():
            diff = float((fused(x, pos, mask) - ref(x, pos, mask)).abs().max())
        for label, needs_grad in (("forward", False), ("fwd+bwd", True)):
            def run(module):
                def step():
                    xi = x.detach().requires_grad_(needs_grad)
                    with torch.set_grad_enabled(needs_grad):
                        y = module(xi, pos, mask)
                        if needs_grad:
                            y.square().sum().backward()
                return step
            t_ref = _median_time(run(ref), args.repeats)
            t_fused = _median_time(run(fused), args.repeats)
            print(f"{d_model:>9} x {heads:<4} {label:>9} {t_ref * 1e3:>9.1f}ms {t_fused * 1e3:>9.1f}ms "
                  f"{t_ref / t_fused:>8.1f}x {len(mols) / t_fused:>12.0f} {diff:>11.2e}", flush=True)
    print(f"\nfused backend: {fused_backend!r}. Benchmarks with memory: `make bench`.")


if __name__ == "__main__":
    main()
