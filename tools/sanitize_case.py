"""A small batch through the cuda backend, forward and backward, attention and encoding: the workload that
`compute-sanitizer --tool memcheck|racecheck|synccheck` runs in tools/gpu_session.sh.

Usage: python tools/sanitize_case.py   (needs a CUDA build of gtkernels._C and a GPU)
"""
import sys

import numpy as np
import torch

import gtkernels
from gtkernels.data import Molecule, pad


def main() -> int:
    if "cuda" not in gtkernels.backends():
        print("cuda backend not available:", gtkernels.backends())
        return 1
    rng = np.random.default_rng(0)
    mols = [Molecule(-1, np.ones(n, np.uint8), rng.uniform(-4, 4, (n, 3))) for n in (1, 5, 29, 40, 3)]
    _, pos, mask = pad(mols)
    dev = torch.device("cuda")
    pos, mask = pos.to(dev).double().requires_grad_(), mask.to(dev)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        q, k, v = (torch.randn(*mask.shape, 4, 8, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        attn = gtkernels.FusedGeometricAttention(32, 4).to(dev)
        psi = [p.to(dtype) for p in attn.transform_dist.params()]
        out = gtkernels.geometric_attention(q, k, v, pos, psi, mask, backend="cuda")
        out.float().square().sum().backward()
        phi = [p.to(dev) for p in gtkernels.GeometricEncoding(8).params()]
        s = gtkernels.geometric_encoding(pos, phi, mask, backend="cuda")
        s.square().sum().backward()
    torch.cuda.synchronize()
    print("sanitize case ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
