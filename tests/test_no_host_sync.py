"""Static check: the CUDA glue makes no host synchronisation per op call (so that a training step can be
captured in a CUDA graph).

The glue (csrc/cuda/glue.h, csrc/mlp_pack.h, csrc/op_checks.h, csrc/cuda/ops_cuda.cpp, the block programs and the
device files in csrc/cuda/kernels) decides everything from shapes and host ints (max_atoms): it must never copy a
tensor to the host (``.cpu()``, ``kCPU``, ``.item()``, ``tolist``), read device memory through a host pointer
(``data_ptr`` outside kernel arguments), build a tensor from host data and upload it (``from_blob``, factories
without a tensor's options, ``.to(device)``), call a blocking CUDA API (``cudaMemcpy`` without Async,
``cudaMalloc``/``cudaFree``, ``cuda*Synchronize``), or use an ATen op whose result shape or value the host must
wait for (``nonzero``, ``masked_select``, ``unique``, ...).
seg's values are read on the host only in op_checks.h's check_segment_values, which requires a CPU seg and is
called by the glue only for one. The checker is tested on snippets of the glue before it was made sync-free.
"""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
GLUE = sorted({CSRC / "mlp_pack.h", CSRC / "op_checks.h", CSRC / "cuda" / "glue.h", CSRC / "cuda" / "ops_cuda.cpp",
               CSRC / "cuda" / "block_programs.h", *(CSRC / "cuda" / "kernels").glob("*")})

FORBIDDEN = [  # (regex, what it is)
    (r"\.cpu\s*\(", ".cpu(): a device-to-host copy"),
    (r"\bkCPU\b", "kCPU: a host tensor (a copy to or from the host)"),
    (r"\.item\s*[<(]", ".item(): a device-to-host copy"),
    (r"\btolist\b", "tolist: a device-to-host copy"),
    (r"_local_scalar_dense|\.is_nonzero\s*\(|\.equal\s*\(|\ballclose\s*\(", "a scalar read on the host"),
    (r"\b(nonzero|masked_select|unique|unique_consecutive|repeat_interleave|argwhere)\s*\(",
     "an op whose output shape depends on tensor values (a host sync)"),
    (r"\bfrom_blob\b|\bat::tensor\s*\(|\btorch::tensor\s*\(", "a tensor made from host data"),
    (r"\.to\s*\(\s*(dev|device)\b", ".to(device): a copy between devices"),
    (r"\bpin_memory\b|\bnon_blocking\b", "a host-device transfer"),
    (r"\baccessor\s*<", "a host accessor"),
    (r"\bcuda(Device|Stream|Event)Synchronize\b|\.synchronize\s*\(", "a blocking CUDA synchronisation"),
    (r"\bcudaMemcpy(?!(HostTo|DeviceTo|Default|Kind))\w*\b(?<!Async)", "a blocking cudaMemcpy (not Async)"),
    (r"\bcudaMemcpyDeviceToHost\b", "a device-to-host copy"),
    (r"\bcudaMalloc\w*|\bcudaFree\w*|\bcudaMallocHost\b|\bcudaHostAlloc\b", "cudaMalloc/cudaFree: synchronising"),
]
FACTORIES = r"\bat::(empty|zeros|ones|full|arange|linspace|rand|randn|randint)\s*\("
# data_ptr: only as a kernel argument or view field (x.f = t.data_ptr<T>() [+ offset];), or returned by a helper.
DATA_PTR_OK = re.compile(r"^\s*(\w+(\.\w+)+(\[\w+\])?\s*=\s*[\w.>:\-]+\s*\.\s*(template\s+)?data_ptr<\w+>\(\)"
                         r"(\s*\+\s*[\w\[\]]+)?\s*;|return\b.*data_ptr<\w+>\(\).*;)\s*$")


def _strip(src: str) -> str:
    """Source without comments and string literals (so that messages and explanations do not count)."""
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    src = re.sub(r'"(\\.|[^"\\])*"', '""', src)
    src = re.sub(r"'(\\.|[^'\\])'", "''", src)
    return re.sub(r"//[^\n]*", "", src)


def _call_args(src: str, start: int) -> str:
    """The text between the parenthesis at ``start`` and its match."""
    depth = 0
    for i in range(start, len(src)):
        depth += {"(": 1, ")": -1}.get(src[i], 0)
        if depth == 0:
            return src[start + 1:i]
    return src[start + 1:]


def _function_bodies(src: str, name: str):
    """Bodies of the function definitions called ``name`` (text from the name to the matching brace)."""
    for m in re.finditer(rf"\b{name}\s*\([^;{{]*\)\s*{{", src):
        depth, i = 0, m.end() - 1
        for j in range(i, len(src)):
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            if depth == 0:
                yield src[m.start():j + 1]
                break


def host_sync_problems(src: str, filename: str = "<src>"):
    """``file:line: problem: code`` for every host copy or synchronisation the checker finds in ``src``."""
    code = _strip(src)
    # check_segment_values reads seg on the host: allowed only as op_checks.h defines it (CPU seg required).
    allowed_spans = []
    for body in _function_bodies(code, "check_segment_values"):
        first = body[body.index("{") + 1:].strip()
        if filename.endswith("op_checks.h") and first.startswith("TORCH_CHECK(seg.is_cpu()"):
            start = code.index(body)
            allowed_spans.append((start, start + len(body)))
    problems = []

    def report(pos, what):
        line = code.count("\n", 0, pos) + 1
        problems.append(f"{filename}:{line}: {what}: {code.splitlines()[line - 1].strip()}")

    def allowed(pos):
        return any(a <= pos < b for a, b in allowed_spans)

    for pattern, what in FORBIDDEN:
        for m in re.finditer(pattern, code):
            report(m.start(), what)
    for m in re.finditer(FACTORIES, code):
        if ".options()" not in _call_args(code, m.end() - 1):
            report(m.start(), "a tensor factory without a tensor's options (a host tensor)")
    for m in re.finditer(r"\b(data_ptr|const_data_ptr|mutable_data_ptr)\b", code):
        if allowed(m.start()):
            continue
        line = code.splitlines()[code.count("\n", 0, m.start())]
        if not DATA_PTR_OK.match(line):
            report(m.start(), "data_ptr outside a kernel argument (a host read of device memory?)")
    for m in re.finditer(r"\bcheck_segment_values\s*\(", code):
        if allowed(m.start()) or any(m.start() == a for a, _ in allowed_spans):
            continue
        before = code[max(0, m.start() - 80):m.start()]
        if not re.search(r"seg\.is_cpu\(\)\s*&&[^;]*$", before):
            report(m.start(), "check_segment_values on a seg that may be on the GPU")
    return problems


@pytest.mark.parametrize("path", GLUE, ids=lambda p: str(p.relative_to(CSRC)))
def test_cuda_glue_has_no_host_copies(path):
    problems = host_sync_problems(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, "host copies / synchronisations in the CUDA glue:\n" + "\n".join(problems)


def test_the_glue_files_exist():
    names = {p.name for p in GLUE}
    assert {"glue.h", "mlp_pack.h", "op_checks.h", "ops_cuda.cpp", "block_programs.h", "launch.h"} <= names


# The glue as it was (each snippet made at least one blocking copy per op call): the checker must flag them all.
OLD_GLUE = {
    "seg to host": "const at::Tensor host = seg.is_cpu() ? seg : seg.cpu();",
    "host tile table": "at::Tensor host = at::empty({n, B::kTileFields}, at::kLong);",
    "tile upload": "return device.is_cpu() ? host : host.to(device);",
    "params to host": "for (const auto& p : params) host.push_back(p.detach().cpu());",
    "mma weights to host": "const at::Tensor W = params[2 * l].detach().to(at::kCPU, at::kFloat).contiguous();",
    "host mma buffer": "at::Tensor host = at::zeros({std::max<int64_t>(total, 1)}, at::kFloat);",
    "packed upload": "d.buffer = host.buffer.to(device);",
    "host seg read": "const int64_t* s = seg_host.data_ptr<int64_t>();\nfor (int b = 0; b < n; ++b) use(s[b]);",
    "host write": "T* base = pk.buffer.template data_ptr<T>();",
    "seg check on any device": "void f(const at::Tensor& seg) { check_segment_values(seg, R, max_atoms); }",
    "scalar read": "const int64_t n = seg[-1].item<int64_t>();",
    "blocking memcpy": "cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);",
    "device sync": "cudaDeviceSynchronize();",
    "stream sync": "cudaStreamSynchronize(stream);",
    "nonzero": "auto idx = valid.nonzero();",
}


@pytest.mark.parametrize("snippet", OLD_GLUE.values(), ids=OLD_GLUE.keys())
def test_checker_flags_host_copies(snippet):
    assert host_sync_problems(snippet), snippet


def test_checker_accepts_the_sync_free_idioms():
    ok = """
    a.q = q.data_ptr<T>();  // kernel argument
    m.wt[l] = pk.buffer.template data_ptr<T>() + off_wt[l];
    return valid.has_value() ? valid->data_ptr<bool>() : nullptr;
    at::Tensor out = at::zeros_like(q);
    at::Tensor lse = at::full({R, H}, -1.0, q.options());
    pk.buffer = at::zeros({n}, params[0].options().dtype(at::kFloat));
    if (seg.is_cpu() && !Launcher::skip_segment_checks()) check_segment_values(seg, R, max_atoms);
    TORCH_CHECK(x, "seg.cpu() would block");  // .cpu() in a message or comment
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream);
    """
    assert host_sync_problems(ok) == []
