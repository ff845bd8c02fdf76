#!/usr/bin/env python3
"""Ahead-of-time gate of the Triton kernels: every specialisation the package launches, compiled for sm_80 (A100)
and sm_90 (H100/H200) on a machine without a GPU, must compile, fit the shared memory of one CTA and spill
nothing.

    python tools/triton_aot.py                      # the full gate: capture, compile, table, exit status
    python tools/triton_aot.py --list               # the representative calls (configurations)
    python tools/triton_aot.py --configs qm9-paper-float32-ieee --arch 90 --jobs 2
    python tools/triton_aot.py --md benchmarks/results/triton-aot-3.9.md   # also write the Markdown table

1. Capture. A subprocess with TRITON_INTERPRET=1 runs representative calls of the public ops (forward and
   backward of gtkernels.geometric_attention / geometric_encoding, backend="triton": QM9 batches padded and
   packed, molecules of <= 16 atoms, a 1,000-atom system, 256 x 2 and 8 x 64 heads, every dtype and precision,
   MLPs from a single Linear to 3 hidden layers of width 128, head dims 1 to 128), with each kernel's ``run``
   replaced by a recorder: argument dtypes, int values, pointer alignment, constexprs and launch options.
   Nothing is executed (the launchers never read kernel results), so float16/bfloat16 — refused by the
   interpreter — are recorded too.
2. Compile. Each distinct specialisation (what Triton's runtime keys its cache on) is compiled in a fresh
   process without the interpreter: the kernel's own runtime binder turns the recorded arguments into the
   signature, constexprs and divisibility attributes of a real launch, then
   ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``.
3. Measure: shared memory (metadata), registers, stack and local memory (cuobjdump --dump-resource-usage of the
   cubin), spill stores/loads (ptxas -v on the PTX, with the ptxas Triton uses for that arch), tensor-core
   instructions in the PTX, compile time. Exit 1 on a compile error, shared memory over the limit, or a spill.

Results are cached in --cache (default build/triton-aot), keyed by the triton version, a hash of
gtkernels/triton/*.py and gtkernels/contract.py (which the kernels read) and the specialisation, so a re-run
compiles only what changed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = {
    "_attention_fwd_kernel": "gtkernels.triton.attention",
    "_attention_bwd_kernel": "gtkernels.triton.attention",
    "_encoding_fwd_kernel": "gtkernels.triton.encoding",
    "_encoding_bwd_kernel": "gtkernels.triton.encoding",
    "_relative_fwd_kernel": "gtkernels.triton.relative_attention",
    "_relative_bwd_kernel": "gtkernels.triton.relative_attention",
}
SHORT = {"_attention_fwd_kernel": "attn fwd", "_attention_bwd_kernel": "attn bwd", "_encoding_fwd_kernel": "enc fwd",
         "_encoding_bwd_kernel": "enc bwd",
         "_relative_fwd_kernel": "rel fwd", "_relative_bwd_kernel": "rel bwd"}
#: Shared memory one CTA may use (CUDA programming guide: 163 KB on 8.0, 227 KB on 9.0).
SMEM_LIMIT = {80: 166_912, 90: 232_448}
ARCH_NAME = {80: "sm_80 (A100)", 90: "sm_90 (H100/H200)"}


# ------------------------------------------------------------------------------------------- configurations
def _config(name, **kw):
    base = dict(batch="qm9", layout="padded", heads=256, dk=2, psi=[50, 50, 50], phi=[50], dtype="float32",
                precision="ieee")
    base.update(kw)
    base["name"] = name
    return base


def configs():
    """The representative calls: the shapes users run (QM9, paper heads) and the corners of every axis
    (block 16 and 32, HAS_VALID, head dims, MLP widths and depths), for every dtype and precision."""
    shapes = [
        ("qm9-paper", {}),                                                  # 256 x 2, padded, block 32
        ("qm9-h8d64", dict(heads=8, dk=64, phi=[16, 16])),                  # d_k 64 (tl.dot), phi 1 hidden
        ("qm9-packed", dict(layout="packed", heads=16, dk=4)),              # no padding mask, d_k 4
        ("small-h4d16", dict(batch="small", heads=4, dk=16, psi=[7], phi=[])),   # block 16, psi no hidden
        ("single1000-h2d32", dict(batch="single1000", heads=2, dk=32, psi=[50, 50])),   # many key blocks
        ("qm9-widest", dict(heads=2, dk=128, psi=[128] * 4, phi=[128] * 4)),     # widest, deepest, d_k 128
        ("small-linear", dict(batch="small", heads=3, dk=1, psi=[], phi=[32, 32, 32])),   # psi = Linear(1->1)
    ]
    modes = [("float32", "ieee"), ("float32", "tf32"), ("float64", "ieee"), ("bfloat16", "ieee"),
             ("float16", "ieee")]
    geometric = [_config(f"{s}-{d}-{p}", dtype=d, precision=p, **kw) for s, kw in shapes for d, p in modes]
    # R-MAT relative attention (op "relative"): phi = [φ hidden width, distance-basis size]; float16/bfloat16
    # inputs run the float32 kernels (the launcher converts), so float32 and float64 cover every specialisation
    relative = [
        ("rmat-drug-released", dict(batch="drug", heads=12, dk=64, phi=[64, 32])),   # the released layer, block 32
        ("rmat-drug-packed", dict(batch="drug", layout="packed", heads=8, dk=32, phi=[32, 32])),   # no mask
        ("rmat-small-h4d16", dict(batch="small", heads=4, dk=16, phi=[16, 8])),      # block 16, narrow φ
        ("rmat-single256-h2d4", dict(batch="single256", heads=2, dk=4, phi=[128, 32])),   # key blocks, d_k 4
    ]
    relative = [_config(f"{s}-{d}", op="relative", dtype=d, precision="ieee", psi=[], **kw)
                for s, kw in relative for d in ("float32", "float64")]
    return geometric + relative


def _sizes(batch, gen):
    import torch
    if batch == "qm9":
        n = torch.randint(3, 30, (48,), generator=gen)
        n[0] = 29                      # the largest QM9 molecule: block 32
        return n.tolist()
    if batch == "small":
        n = torch.randint(2, 17, (24,), generator=gen)
        n[0] = 16
        return n.tolist()
    if batch == "drug":                # drug-like molecules with R-MAT's dummy node: 11 to 62 rows
        n = torch.randint(11, 63, (16,), generator=gen)
        n[0] = 62
        return n.tolist()
    if batch == "single256":
        return [256]
    return [1000]


# ------------------------------------------------------------------------------------------------- capture
def capture(names):
    """Runs under TRITON_INTERPRET=1: the launch records of the named configurations."""
    import importlib
    import torch
    import triton.language as tl
    import gtkernels
    import gtkernels._backends
    from gtkernels.triton import launch

    launch.INTERPRETER_GEOMETRY = False    # record the GPU's chunk sizes and blocks, not the interpreter's
    records, errors = [], []
    context = {}
    for kname, mod in KERNELS.items():
        kern = getattr(importlib.import_module(mod), kname)
        arg_names = list(kern.arg_names)

        def run(*args, grid, warmup, _name=kname, _arg_names=arg_names, **kwargs):
            bound = dict(zip(_arg_names, args))
            options = {}
            for k, v in kwargs.items():
                (bound if k in _arg_names else options)[k] = v
            rec = []
            for a in _arg_names:
                v = bound[a]
                if isinstance(v, torch.Tensor):
                    rec.append({"name": a, "t": "tensor", "dtype": str(v.dtype).replace("torch.", ""),
                                "aligned": v.data_ptr() % 16 == 0})
                elif isinstance(v, tl.dtype):
                    rec.append({"name": a, "t": "tl.dtype", "v": str(v)})
                elif isinstance(v, bool):
                    rec.append({"name": a, "t": "bool", "v": v})
                elif isinstance(v, (int, float, str)):
                    rec.append({"name": a, "t": type(v).__name__, "v": v})
                else:
                    raise TypeError(f"{_name}: cannot record argument {a} of type {type(v).__name__}")
            records.append({"config": context["config"], "kernel": _name, "args": rec, "options": options})

        kern.run = run
    saved = gtkernels._backends.CPU_DTYPES
    # accepted on CUDA; nothing executes here
    gtkernels._backends.CPU_DTYPES = tuple(saved) + (torch.float16, torch.bfloat16)
    by_name = {c["name"]: c for c in configs()}
    for name in names:
        cfg = by_name[name]
        context["config"] = name
        try:
            _run_config(cfg)
        except Exception as exc:  # a host-side failure is a finding too
            errors.append({"config": name, "error": f"{type(exc).__name__}: {exc}"})
    gtkernels._backends.CPU_DTYPES = saved
    return {"records": records, "errors": errors}


def _run_config(cfg):
    import torch
    import gtkernels

    gen = torch.Generator().manual_seed(0)

    def mlp_params(widths):   # [W0, b0, ...] of Linear(1→w0) ... Linear(wn→1)
        dims = [1, *widths, 1]
        return [t for a, b in zip(dims[:-1], dims[1:])
                for t in (torch.randn(b, a, generator=gen) / a ** 0.5, torch.randn(b, generator=gen) * 0.3)]

    dt = getattr(torch, cfg["dtype"])
    sizes = _sizes(cfg["batch"], gen)
    if cfg.get("op") == "relative":
        return _run_relative(cfg, sizes, dt, gen)
    pos_list = [torch.rand(n, 3, generator=gen, dtype=torch.float64) * (1.5 * n) ** (1 / 3) * 2 for n in sizes]
    if cfg["layout"] == "packed":
        pos = torch.cat(pos_list)
        cu = torch.zeros(len(sizes) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(sizes), 0)
        lead, kw = (pos.shape[0],), dict(cu_seqlens=cu, max_seqlen=max(sizes))
    elif len(sizes) == 1:                                  # one system: padded [1, N] without a mask
        pos, lead, kw = pos_list[0][None], (1, sizes[0]), {}
    else:
        nmax = max(sizes)
        pos = torch.zeros(len(sizes), nmax, 3, dtype=torch.float64)
        mask = torch.zeros(len(sizes), nmax, dtype=torch.bool)
        for b, (n, p) in enumerate(zip(sizes, pos_list)):
            pos[b, :n], mask[b, :n] = p, True
        lead, kw = (len(sizes), nmax), dict(mask=mask)
    common = dict(backend="triton", precision=cfg["precision"], validate=False)
    q, k, v = (torch.randn(*lead, cfg["heads"], cfg["dk"], generator=gen).to(dt).requires_grad_() for _ in range(3))
    psi = [p.detach().to(dt).requires_grad_() for p in mlp_params(cfg["psi"])]
    out = gtkernels.geometric_attention(q, k, v, pos.clone().requires_grad_(), psi, **kw, **common)
    out.backward(torch.ones_like(out))
    phi = [p.detach().to(dt).requires_grad_() for p in mlp_params(cfg["phi"])]
    s = gtkernels.geometric_encoding(pos.clone().requires_grad_(), phi, **kw, **common)
    s.backward(torch.ones_like(s))


def _run_relative(cfg, sizes, dt, gen):
    """gtkernels.relative_attention forward and backward (backend="triton") on random molecules, atom 0 of each a
    dummy node (not in a single system), random valid graph codes."""
    import torch
    import gtkernels
    from gtkernels.contract import GRAPH_CHANNELS
    from gtkernels.ops.relation_code import encode_graph_relation, pack_graph_code

    batch, nmax = len(sizes), max(sizes)
    mask = torch.arange(nmax)[None, :] < torch.tensor(sizes)[:, None]
    pos = torch.rand(batch, nmax, 3, generator=gen, dtype=torch.float64) * 8.0
    bond = torch.zeros(batch, nmax, nmax, 8)
    bond[..., 1] = (torch.rand(batch, nmax, nmax, generator=gen) < 0.1).float()
    hops = torch.randint(-1, 6, (batch, nmax, nmax), generator=gen)
    code = encode_graph_relation(bond, hops)
    dummy = (torch.arange(nmax)[None, :] == 0) & mask
    heads, dk = cfg["heads"], cfg["dk"]
    hidden, basis = cfg["phi"]
    channels = GRAPH_CHANNELS + basis

    def phi():
        return [(torch.randn(hidden, channels, generator=gen) * channels ** -0.5).to(dt).requires_grad_(),
                torch.zeros(hidden, dtype=dt, requires_grad=True),
                (torch.randn(heads * dk, hidden, generator=gen) * hidden ** -0.5).to(dt).requires_grad_(),
                torch.zeros(heads * dk, dtype=dt, requires_grad=True)]

    q, k, v = (torch.randn(batch, nmax, heads, dk, generator=gen).to(dt) for _ in range(3))
    kw = dict(mask=mask, dummy=dummy)
    if cfg["layout"] == "packed":
        cu = torch.zeros(batch + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(sizes), 0)
        code = pack_graph_code(code, cu)
        q, k, v, pos, dummy = (t[mask] for t in (q, k, v, pos, dummy))
        kw = dict(cu_seqlens=cu, max_seqlen=nmax, dummy=dummy)
    elif batch == 1:                   # one system without a mask or a dummy node
        kw = {}
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    z = gtkernels.relative_attention(q, k, v, pos.requires_grad_(), code, phi(), phi(), backend="triton",
                                     validate=False, **kw)
    z.backward(torch.ones_like(z))


def spec_key(rec):
    """What Triton's runtime keys a compiled kernel on: types, ints specialised (== 1, divisible by 16),
    pointer alignment, constexprs, options."""
    parts = [rec["kernel"]]
    for a in rec["args"]:
        if a["t"] == "tensor":
            parts.append(f'*{a["dtype"]}:{a["aligned"]}')
        elif a["t"] == "int":
            parts.append(f'i:{a["v"] == 1}:{a["v"] % 16 == 0}:{-2**31 <= a["v"] < 2**31}')
        elif a["t"] == "float":
            parts.append("f")
        else:
            parts.append(f'{a["name"]}={a["v"]}')
    parts.append(json.dumps(rec["options"], sort_keys=True))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- compile
class _MockTensor:
    """What the runtime binder reads from a tensor argument: its dtype and data_ptr (alignment)."""

    def __init__(self, dtype, aligned):
        self.dtype, self._ptr = dtype, 4096 if aligned else 4100

    def data_ptr(self):
        return self._ptr


def _bin(name):
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _ptxas(cc):
    from triton.backends.nvidia.compiler import get_ptxas
    try:
        return get_ptxas(cc).path
    except TypeError:
        return get_ptxas().path


def compile_one(rec, cc):
    """Runs in a fresh process without the interpreter. Returns the measurements of one specialisation."""
    import importlib
    import torch
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(importlib.import_module(KERNELS[rec["kernel"]]), rec["kernel"])
    values = {}
    for a in rec["args"]:
        if a["t"] == "tensor":
            values[a["name"]] = _MockTensor(getattr(torch, a["dtype"]), a["aligned"])
        elif a["t"] == "tl.dtype":
            values[a["name"]] = tl.dtype(a["v"])
        else:
            values[a["name"]] = a["v"]
    constexpr_names = {p.name for p in fn.params if p.is_constexpr}
    pos_args = [values[n] for n in fn.arg_names if n not in constexpr_names]
    kwargs = {n: values[n] for n in fn.arg_names if n in constexpr_names}
    kwargs.update(rec["options"])
    kwargs["debug"] = False
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*pos_args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    t0 = time.time()
    try:
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                target=target, options=options.__dict__)
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-3000:]}", "compile_s": time.time() - t0}
    res = {"ok": True, "compile_s": round(time.time() - t0, 1), "shared": kernel.metadata.shared,
           "num_warps": kernel.metadata.num_warps}
    ptx = kernel.asm["ptx"]
    res["mma"] = len(re.findall(r"\bmma\.sync\.aligned", ptx)) + len(re.findall(r"\bwgmma\.mma_async", ptx))
    with tempfile.TemporaryDirectory() as td:
        cubin, ptx_path = os.path.join(td, "k.cubin"), os.path.join(td, "k.ptx")
        with open(cubin, "wb") as fh:
            fh.write(kernel.asm["cubin"])
        with open(ptx_path, "w") as fh:
            fh.write(ptx)
        usage = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True, text=True)
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage.stdout)
        if m:
            res.update(regs=int(m.group(1)), stack=int(m.group(2)), local=int(m.group(4)))
        arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
        log = subprocess.run([_ptxas(cc), "-v", f"--gpu-name={arch}", ptx_path, "-o", os.path.join(td, "v.cubin")],
                             capture_output=True, text=True).stderr
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        if m:
            res.update(spill_stores=int(m.group(1)), spill_loads=int(m.group(2)))
        else:
            res.update(ok=False, error=f"no ptxas spill report: {log[-1000:]}")
    return res


# ------------------------------------------------------------------------------------------------- driver
def _source_hash():
    h = hashlib.sha256()
    folder = os.path.join(ROOT, "gtkernels", "triton")
    paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".py")]
    for path in paths + [os.path.join(ROOT, "gtkernels", "contract.py")]:
        with open(path, "rb") as fh:
            h.update(os.path.basename(path).encode() + fh.read())
    return h.hexdigest()[:16]


def _python(args, env_extra=None, timeout=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # triton 3.9 warns when unset; 1 is its default
    env.update(env_extra or {})
    return subprocess.run([sys.executable, os.path.abspath(__file__)] + args, env=env, capture_output=True, text=True,
                          timeout=timeout)


def problems(res, cc):
    """What fails the gate in one compile result: a compile error, shared memory over the limit, any spill."""
    if not res.get("ok"):
        return ["compile error: " + (res.get("error") or "?").splitlines()[0][:160]]
    out = []
    if res["shared"] > SMEM_LIMIT[cc]:
        out.append(f"shared memory {res['shared']} B > {SMEM_LIMIT[cc]} B")
    if res.get("spill_stores", 0) + res.get("spill_loads", 0) + res.get("local", 0):
        out.append(f"spills {res.get('spill_stores')} / {res.get('spill_loads')} B, local {res.get('local')} B")
    return out


def _axes(rec):
    a = {x["name"]: x.get("v") for x in rec["args"]}
    dt = next(x["dtype"] for x in rec["args"] if x["t"] == "tensor" and x["name"] in ("Q", "DS", "S"))
    orientation = {None: "", False: " (J queries)", True: " (J keys)"}[a.get("KEYS")]
    return {"kernel": SHORT[rec["kernel"]] + orientation, "dtype": dt, "prec": a.get("PREC"),
            "valid": a.get("HAS_VALID"),
            "BM": a.get("BM"), "DP": a.get("DP", "-"), "HP": a.get("HP", a.get("HU")), "NH": a.get("NH", "-"),
            "CP": a.get("CP", a.get("PG"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="80,90", help="compute capabilities (default 80,90)")
    ap.add_argument("--configs", default="all", help="comma-separated configuration names (default all)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    ap.add_argument("--cache", default=os.path.join(ROOT, "build", "triton-aot"), help="result cache folder")
    ap.add_argument("--md", help="also write the Markdown report here")
    ap.add_argument("--json", help="also write every record and result here")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one compile may take")
    ap.add_argument("--list", action="store_true", help="list the configurations and exit")
    ap.add_argument("--_capture", help=argparse.SUPPRESS)
    ap.add_argument("--_compile", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._capture is not None:                         # child: capture under the interpreter
        print(json.dumps(capture(args._capture.split(","))))
        return 0
    if args._compile is not None:                         # child: one compile
        with open(args._compile) as fh:
            job = json.load(fh)
        print(json.dumps(compile_one(job["record"], job["cc"])))
        return 0
    if args.list:
        for c in configs():
            print(f'{c["name"]:34s} {c["batch"]:10s} {c["layout"]:7s} H={c["heads"]:<3d} d_k={c["dk"]:<4d} '
                  f'psi={c["psi"]} phi={c["phi"]}')
        return 0

    import triton
    names = [c["name"] for c in configs()] if args.configs == "all" else args.configs.split(",")
    archs = [int(a) for a in args.arch.split(",")]
    t_start = time.time()
    cap = _python(["--_capture", ",".join(names)], {"TRITON_INTERPRET": "1"})
    if cap.returncode != 0:
        sys.exit(f"capture failed:\n{cap.stdout[-2000:]}\n{cap.stderr[-4000:]}")
    captured = json.loads(cap.stdout.strip().splitlines()[-1])
    t_capture = time.time() - t_start
    uniq = {}
    for r in captured["records"]:
        uniq.setdefault(spec_key(r), dict(r, configs=[]))["configs"].append(r["config"])
    src = _source_hash()
    cache_dir = os.path.join(args.cache, f"triton-{triton.__version__}-{src}")
    os.makedirs(cache_dir, exist_ok=True)
    jobs = [(k, cc) for k in uniq for cc in archs]

    sys.path.insert(0, ROOT)           # the checkout's gtkernels (also where it is not installed)
    from gtkernels.triton.launch import ladder

    def compile_job(record, cc, tag):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump({"record": record, "cc": cc}, fh)
        try:
            p = _python(["--_compile", fh.name], timeout=args.timeout)
            return (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip()
                    else {"ok": False, "error": f"compile process failed (rc {p.returncode}): {p.stderr[-2000:]}"})
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"compile took more than {args.timeout} s"}
        finally:
            os.unlink(fh.name)

    def work(job):
        """The launcher's ladder (gtkernels.triton.launch.ladder), walked as at a first launch on a GPU: the
        first spill-free rung is what runs."""
        key, cc = job
        path = os.path.join(cache_dir, f"{key}-{cc}.json")
        if os.path.exists(path):
            with open(path) as fh:
                return job, json.load(fh), True
        rec = uniq[key]
        const = {a["name"]: a.get("v") for a in rec["args"]}
        const.update(rec["options"])
        tried = []
        for n, rung in enumerate(ladder(const)):
            variant = json.loads(json.dumps(rec))
            for a in variant["args"]:
                if a["name"] in rung:
                    a["v"] = rung[a["name"]]
            variant["options"].update({k: v for k, v in rung.items() if k in variant["options"]})
            res = compile_job(variant, cc, n)
            tried.append(res.get("spill_stores"))
            if res.get("ok") and not res.get("spill_stores") and not res.get("spill_loads") and not res.get("local"):
                break
        res.update(rung=n, rung_config=rung, tried_spills=tried)
        with open(path, "w") as out:
            json.dump(res, out)
        return job, res, False

    results, cached = {}, 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for n, (job, res, hit) in enumerate(pool.map(work, jobs), 1):
            results[job] = res
            cached += hit
    rows, failures = [], []
    for key, rec in sorted(uniq.items(), key=lambda kv: tuple(str(v) for v in _axes(kv[1]).values())):
        for cc in archs:
            res = results[(key, cc)]
            ax = _axes(rec)
            found = problems(res, cc)
            rows.append((ax, cc, res, found, rec["configs"]))
            if found:
                failures.append((ax, cc, found))
    import platform
    import datetime
    import torch
    command = "python tools/triton_aot.py " + " ".join(a for a in sys.argv[1:])
    info = (f"Command: `{command.strip()}` ({datetime.date.today().isoformat()}, {platform.node() or 'host'}: "
            f"{os.cpu_count()} CPU cores, no GPU needed; torch {torch.__version__}). "
            f"triton {triton.__version__}, ptxas {_ptxas_version(archs)}; kernel sources {src}; "
            f"{len(captured['records'])} launches captured from {len(names)} calls in {t_capture:.0f} s; "
            f"{len(uniq)} specialisations x {len(archs)} archs = {len(jobs)} compiles ({cached} cached); "
            f"total {time.time() - t_start:.0f} s with {args.jobs} jobs")
    text = report(rows, info, captured["errors"], failures)
    print(text)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "records": list(uniq.values()),
                       "results": {f"{k}-{cc}": r for (k, cc), r in results.items()}}, fh, indent=1)
    if failures or captured["errors"]:
        print(f"\nFAILED: {len(failures)} specialisation(s) over a limit or not compiling, "
              f"{len(captured['errors'])} host error(s)", file=sys.stderr)
        return 1
    return 0


def _ptxas_version(archs):
    out = []
    for cc in archs:
        try:
            v = subprocess.run([_ptxas(cc), "--version"], capture_output=True, text=True).stdout
            out.append(f"{ARCH_NAME[cc].split()[0]}: " + re.findall(r"release ([\d.]+)", v)[0])
        except Exception:
            out.append(f"sm_{cc}: ?")
    return ", ".join(out)


def report(rows, info, host_errors, failures):
    """The Markdown table of the gate."""
    lines = ["# Triton kernels compiled ahead of time", "", info, "",
             "Limits: shared memory per CTA " + ", ".join(f"{ARCH_NAME[c]} {SMEM_LIMIT[c]:,} B" for c in SMEM_LIMIT)
             + "; spills and local memory 0.", "",
             "rel fwd / rel bwd (R-MAT relative attention): HP is φ's hidden width padded (HU), CP the pairs per "
             "block of φ's first layer (PG).", "",
             "rung: the launch configuration of gtkernels.triton.launch.ladder that runs (0 the default; 1 unit blocks "
             "of 16; 2 the other warp count; 3 both), the first spill-free one, as chosen at a first launch on a GPU.",
             "",
             "| kernel | dtype | prec | mask | BM | DP | HP | NH | CP | arch | rung | smem B | regs | spill st/ld B | "
             "mma | compile s | status |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
             "| ---: | --- |"]
    for ax, cc, res, problems, _ in rows:
        status = "ok" if not problems else "**" + "; ".join(problems) + "**"
        lines.append(f"| {ax['kernel']} | {ax['dtype']} | {ax['prec']} | {'yes' if ax['valid'] else 'no'} | "
                     f"{ax['BM']} | {ax['DP']} | {ax['HP']} | {ax['NH']} | {ax['CP']} | sm_{cc} | "
                     f"{res.get('rung', 0)} | "
                     f"{res.get('shared', '-'):,} | {res.get('regs', '-')} | "
                     f"{res.get('spill_stores', '-')} / {res.get('spill_loads', '-')} | {res.get('mma', '-')} | "
                     f"{res.get('compile_s', '-')} | {status} |" if res.get("ok") else
                     f"| {ax['kernel']} | {ax['dtype']} | {ax['prec']} | {'yes' if ax['valid'] else 'no'} | "
                     f"{ax['BM']} | {ax['DP']} | {ax['HP']} | {ax['NH']} | {ax['CP']} | sm_{cc} | - | - | - | - | - | "
                     f"{res.get('compile_s', '-')} | {status} |")
    ok = [r for r in rows if r[2].get("ok")]
    if ok:
        worst = max(ok, key=lambda r: r[2]["shared"] / SMEM_LIMIT[r[1]])
        slow = max(ok, key=lambda r: r[2]["compile_s"])
        lines += ["", f"Largest shared memory: {worst[2]['shared']:,} B ({worst[0]['kernel']}, sm_{worst[1]}); most "
                  f"registers: {max(r[2].get('regs', 0) for r in ok)}; slowest compile: {slow[2]['compile_s']} s "
                  f"({slow[0]['kernel']} {slow[0]['dtype']}, sm_{slow[1]}): about what a first call on a GPU pays, "
                  f"once per specialisation (Triton caches it on disk)."]
    for e in host_errors:
        lines.append(f"\nHost error in {e['config']}: {e['error']}")
    rungs = {}
    for r in rows:
        rungs[r[2].get("rung", 0)] = rungs.get(r[2].get("rung", 0), 0) + 1
    lines.append(f"\n{len(rows) - len(failures)} of {len(rows)} specialisations within the limits; rungs used: "
                 + ", ".join(f"{k}: {v}" for k, v in sorted(rungs.items())) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
