"""A small workload for compute-sanitizer (memcheck, initcheck, racecheck, synccheck) in tools/gpu_session.sh:
both GPU backends, triton and cuda, forward and backward of attention and encoding, padded and packed.

    python tools/sanitize_case.py [--backends triton,cuda]

Five molecules of 1, 5, 29, 40 and 3 atoms (a one-atom molecule, QM9's largest, two key blocks of 32), 4 heads of
d_k 8, ψω 1→50→50→50→1. Per backend: padded float32, float64 and (on a GPU) bfloat16, packed float32; then the
encoding padded float32 and packed float64. Every output and gradient must be finite; where both backends ran,
their float32 outputs must agree (rel. 1e-4). Kept small so each sanitizer tool runs well under a minute.
Without a GPU (the dry run of tools/gpu_session.sh) it runs on CPU tensors: cuda through its kernels' host
emulation (GTKERNELS_CUDA_EMULATE=1), triton in its interpreter (TRITON_INTERPRET=1, no bfloat16).
Exit status 0 when every requested backend ran and passed, 1 otherwise.
"""
import argparse
import os
import sys
import time

import torch

GPU = torch.cuda.is_available()
if not GPU:  # before gtkernels (and so triton) is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("GTKERNELS_CUDA_EMULATE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gtkernels  # noqa: E402
from gtkernels._backends import cuda_kernels_built, triton_available  # noqa: E402
from gtkernels.data import Molecule, pack, pad  # noqa: E402

SIZES = (1, 5, 29, 40, 3)


def unavailable(backend: str):
    if backend == "triton":
        return None if triton_available() else "triton does not import"
    if not gtkernels.extension_available():
        return "gtkernels._C is not built"
    if GPU and not cuda_kernels_built():
        return "gtkernels._C was built without the CUDA kernels (FORCE_CUDA=1 at build time)"
    return None


def _finite(what, tensors):
    bad = [i for i, t in enumerate(tensors) if t is not None and not torch.isfinite(t.float()).all()]
    if bad:
        raise AssertionError(f"{what}: non-finite values in outputs/gradients {bad}")


def run_backend(backend: str, dev: torch.device) -> dict:
    rng = np.random.default_rng(0)
    mols = [Molecule(-1, np.full(n, 6, np.uint8), rng.uniform(-4, 4, (n, 3)) * (n / 8) ** (1 / 3)) for n in SIZES]
    _, pos_pad, mask = pad(mols, torch.float64)
    _, pos_pack, cu = pack(mols, torch.float64)
    torch.manual_seed(0)
    attn = gtkernels.FusedGeometricAttention(32, 4)
    psi64 = [p.detach().double().to(dev) for p in attn.transform_dist.params()]
    phi64 = [p.detach().double().to(dev) for p in gtkernels.GeometricEncoding(8).params()]
    dtypes = [torch.float32, torch.float64] + ([torch.bfloat16] if GPU else [])
    cases = [("padded", dt) for dt in dtypes] + [("packed", torch.float32)]
    outs = {}
    g = torch.Generator().manual_seed(1)
    for layout, dtype in cases:
        if layout == "padded":
            pos, m, c, rows = pos_pad.to(dev), mask.to(dev), None, tuple(mask.shape)
        else:
            pos, m, c, rows = pos_pack.to(dev), None, cu.to(dev), (int(cu[-1]),)
        pos = pos.detach().requires_grad_()
        q, k, v = (torch.randn(*rows, 4, 8, generator=g, dtype=torch.float64).to(dev, dtype).requires_grad_()
                   for _ in range(3))
        psi = [p.to(dtype).requires_grad_() for p in psi64]
        t0 = time.perf_counter()
        out = gtkernels.geometric_attention(q, k, v, pos, psi, m, cu_seqlens=c, backend=backend)
        grads = torch.autograd.grad(out.float().square().sum(), [q, k, v, pos, *psi])
        _finite(f"{backend} attention {layout} {dtype}", [out, *grads])
        outs[(layout, dtype)] = out.detach().float().cpu()
        print(f"  {backend} attention {layout:6s} {str(dtype):14s} fwd+bwd ok ({time.perf_counter() - t0:.2f} s)")
    for layout, dtype in (("padded", torch.float32), ("packed", torch.float64)):
        pos = (pos_pad if layout == "padded" else pos_pack).to(dev, dtype).requires_grad_()
        phi = [p.to(dtype).requires_grad_() for p in phi64]
        s = gtkernels.geometric_encoding(pos, phi, mask.to(dev) if layout == "padded" else None,
                                         cu_seqlens=cu.to(dev) if layout == "packed" else None, backend=backend)
        grads = torch.autograd.grad(s.square().sum(), [pos, *phi])
        _finite(f"{backend} encoding {layout} {dtype}", [s, *grads])
        print(f"  {backend} encoding  {layout:6s} {str(dtype):14s} fwd+bwd ok")
    if GPU:
        torch.cuda.synchronize()
    return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="triton,cuda", help="comma-separated: triton, cuda (default: both)")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if GPU else "cpu")
    where = torch.cuda.get_device_name(0) if GPU else "CPU (triton interpreter, cuda host emulation)"
    print(f"sanitize case on {where}")
    results, failed = {}, []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        why = unavailable(backend)
        if why:
            print(f"  {backend}: NOT RUN: {why}")
            failed.append(backend)
            continue
        try:
            results[backend] = run_backend(backend, dev)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other backend
            print(f"  {backend}: FAILED: {type(exc).__name__}: {exc}")
            failed.append(backend)
    if "triton" in results and "cuda" in results:
        for key in (("padded", torch.float32), ("packed", torch.float32)):
            a, b = results["triton"][key], results["cuda"][key]
            err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            ok = err < 1e-4
            print(f"  triton vs cuda attention {key[0]} float32: rel. error {err:.2e} {'ok' if ok else 'TOO LARGE'}")
            if not ok:
                failed.append("triton-vs-cuda")
    print("sanitize case ok" if not failed else f"sanitize case FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
