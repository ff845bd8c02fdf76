"""The cross-backend facts are stated once, and csrc/'s folders follow its concerns.

* ``gtkernels._C.contract()`` (the constants of csrc/contract.h) equals ``gtkernels.contract.as_dict()``, and no
  other csrc file states those constants.
* The include graph of csrc/ (parsed from its ``#include "..."`` lines): no file under csrc/cpu reaches csrc/cuda;
  no file in a device folder includes a header outside it whose own includes lead back into a device folder; the
  device folders hold device files only (no torch headers).
* Registration: ops.cpp holds the schemas only (no TORCH_LIBRARY_IMPL); every backend file that registers ends
  with its TORCH_LIBRARY_IMPL.
The checkers are also run on small trees laid out as csrc/ was before (tmp_path), where they must fail.
"""
import pathlib
import re

import pytest

from gtkernels import contract

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
#: Folders of device files (compiled by nvcc only), relative to the csrc root.
DEVICE_DIRS = ("cuda/kernels",)
SOURCE_SUFFIXES = {".h", ".cuh", ".cpp", ".cu"}
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


#: Comments and string / character literals, in the order they start (so "//" in a string, or "/*" in a
#: line comment, is not taken for a comment).
_TOKENS = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.DOTALL)


def _strip_comments(src: str) -> str:
    """Source without comments (literals kept: #include "..." names are string-like)."""
    return _TOKENS.sub(lambda m: " " if m.group(0).startswith(("//", "/*")) else m.group(0), src)


def _sources(root: pathlib.Path):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)


def _includes(path: pathlib.Path, root: pathlib.Path):
    """The files `path` includes with #include "...": looked up beside `path`, then at the csrc root (-Icsrc),
    as the preprocessor does. An include found in neither place raises."""
    found = []
    for name in INCLUDE.findall(_strip_comments(path.read_text())):
        for base in (path.parent, root):
            candidate = (base / name).resolve()
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            raise FileNotFoundError(f"{path.relative_to(root)}: #include \"{name}\" not found")
    return found


def _closure(path: pathlib.Path, root: pathlib.Path):
    """Every file `path` reaches through its includes (itself not included unless a cycle leads back)."""
    seen, todo = set(), list(_includes(path, root))
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(_includes(f, root))
    return seen


def _under(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return folder.resolve() in path.resolve().parents


def cpu_reaches_cuda(root: pathlib.Path):
    """'cpu file -> cuda file' for every file under cpu/ whose includes reach a file under cuda/."""
    problems = []
    for f in _sources(root / "cpu"):
        for g in sorted(_closure(f, root)):
            if _under(g, root / "cuda"):
                problems.append(f"{f.relative_to(root)} -> {g.relative_to(root.resolve())}")
    return problems


def device_round_trips(root: pathlib.Path, device_dirs=DEVICE_DIRS):
    """'device file -> header -> device file' for every header outside the device folders, included by a device
    file, whose own includes lead back into a device folder."""
    folders = [root / d for d in device_dirs]

    def in_device(p):
        return any(_under(p, d) for d in folders)

    problems = []
    for folder in folders:
        for f in _sources(folder):
            for h in _includes(f, root):
                if in_device(h):
                    continue
                for g in sorted(_closure(h, root)):
                    if in_device(g):
                        problems.append(f"{f.relative_to(root)} -> {h.relative_to(root.resolve())} -> "
                                        f"{g.relative_to(root.resolve())}")
    return problems


def device_files_with_torch(root: pathlib.Path, device_dirs=DEVICE_DIRS):
    """Files of a device folder that include a torch header (device folders hold device files only)."""
    torch_header = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10)/', re.MULTILINE)
    return [str(f.relative_to(root)) for d in device_dirs for f in _sources(root / d)
            if torch_header.search(_strip_comments(f.read_text()))]


def registration_problems(root: pathlib.Path):
    """ops.cpp must hold TORCH_LIBRARY and no TORCH_LIBRARY_IMPL; a file with TORCH_LIBRARY_IMPL must end with it."""
    problems = []
    ops = _strip_comments((root / "ops.cpp").read_text())
    if "TORCH_LIBRARY_IMPL" in ops:
        problems.append("ops.cpp holds a TORCH_LIBRARY_IMPL (it is the schema file)")
    if not re.search(r"\bTORCH_LIBRARY\s*\(", ops):
        problems.append("ops.cpp holds no TORCH_LIBRARY (the schemas)")
    for f in _sources(root):
        code = _strip_comments(f.read_text())
        starts = [m.start() for m in re.finditer(r"\bTORCH_LIBRARY_IMPL\s*\(", code)]
        if not starts:
            continue
        depth, end = 0, None
        for i in range(code.index("{", starts[-1]), len(code)):
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            if depth == 0:
                end = i
                break
        if end is None or code[end + 1:].strip():
            problems.append(f"{f.relative_to(root)} does not end with its TORCH_LIBRARY_IMPL")
    return problems


#: The contract's constants, as a definition (or the bare ε literal) would state them: in contract.h only.
CONTRACT_DEFINITIONS = {name: rf"\b{name}\s*=" for name in
                        ("kDistanceEps", "kMaxWidth", "kMaxLayers", "kActNone", "kActRelu", "kActGelu",
                         "kLeakySlope", "kBasisSize", "kBasisCutoff", "kEnvelopeExponent", "kDistanceOffset",
                         "kBondChannels", "kHopChannels", "kCodeMaskFlagBit", "kCodeBondTypeShift",
                         "kCodeBondTypes", "kCodeFlagShift", "kCodeHopShift", "kCodeHopBuckets", "kCodeFieldMask",
                         "kCodeLimit")}
CONTRACT_DEFINITIONS["the literal 1e-16"] = r"(?<![\w.])1e-16\b"


def restated_facts(root: pathlib.Path):
    """'file: name' for every file but contract.h that states one of the contract's constants."""
    problems = []
    for f in _sources(root):
        if f.name == "contract.h":
            continue
        code = _strip_comments(f.read_text())
        problems += [f"{f.relative_to(root)}: {name}" for name, pattern in CONTRACT_DEFINITIONS.items()
                     if re.search(pattern, code)]
    return problems


# ------------------------------------------------------------------------------------------------ the real tree
def test_compiled_contract_matches_python():
    try:
        from gtkernels import _C
    except ImportError as exc:
        pytest.skip(f"gtkernels._C is not built ({exc}); python setup.py build_ext --inplace")
    assert _C.contract() == contract.as_dict()


def test_contract_facts_are_stated_in_contract_h_only():
    assert (CSRC / "contract.h").is_file()
    assert restated_facts(CSRC) == []


def test_cpu_does_not_include_cuda():
    assert cpu_reaches_cuda(CSRC) == []


def test_device_folder_includes_do_not_run_back_up():
    assert all((CSRC / d).is_dir() and any((CSRC / d).glob("*.cu")) for d in DEVICE_DIRS)
    assert device_round_trips(CSRC) == []


def test_device_folder_holds_device_files_only():
    assert device_files_with_torch(CSRC) == []


def test_schemas_in_ops_cpp_and_each_backend_registers_at_its_end():
    assert registration_problems(CSRC) == []


def test_every_include_resolves():
    for f in _sources(CSRC):
        _includes(f, CSRC)


# ------------------------------------------------------------------ the checkers fail on the layout they replace
def _tree(root: pathlib.Path, files: dict) -> pathlib.Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


OLD_LAYOUT = {
    "pair_math.h": "#pragma once\nconstexpr double kDistanceEps = 1e-16;\nconstexpr int kMaxWidth = 128;\n",
    "contract.h": "#pragma once\n",
    "fused_glue.h": '#pragma once\n#include <ATen/ATen.h>\n#include "cuda/block_kernels.h"\n',
    "ops.cpp": ('#include <torch/library.h>\nTORCH_LIBRARY(gtkernels_C, m) { m.def("f() -> ()"); }\n'
                "TORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) { m.impl(\"f\", &f); }\n"),
    "cpu/cuda_emulation.cpp": '#include "../fused_glue.h"\nTORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) {}\nint x;\n',
    "cpu/attention_cpu.cpp": '#include "../pair_math.h"\n',
    "cuda/block_kernels.h": '#pragma once\n#include "../pair_math.h"\n',
    "cuda/kernels/attention.cu": '#include "../../fused_glue.h"\n#include "launch.h"\n',
    "cuda/kernels/launch.h": '#pragma once\n#include <torch/library.h>\n',
    "cuda/ops_cuda.cpp": '#include <torch/library.h>\n#include "../fused_glue.h"\n#include "kernels/launch.h"\n',
}


def test_checkers_flag_the_old_layout(tmp_path):
    old = OLD_LAYOUT.copy()
    old["fused_glue.h"] += '#include "cuda/kernels/launch.h"\n'   # a root header that reaches the device folder
    root = _tree(tmp_path, old)
    assert cpu_reaches_cuda(root) == ["cpu/cuda_emulation.cpp -> cuda/block_kernels.h",
                                      "cpu/cuda_emulation.cpp -> cuda/kernels/launch.h"]
    assert device_round_trips(root) == ["cuda/kernels/attention.cu -> fused_glue.h -> cuda/kernels/launch.h"]
    assert device_files_with_torch(root) == ["cuda/kernels/launch.h"]
    assert registration_problems(root) == ["ops.cpp holds a TORCH_LIBRARY_IMPL (it is the schema file)",
                                           "cpu/cuda_emulation.cpp does not end with its TORCH_LIBRARY_IMPL"]
    assert restated_facts(root) == ["pair_math.h: kDistanceEps", "pair_math.h: kMaxWidth",
                                    "pair_math.h: the literal 1e-16"]
    # With cuda/ as the device folder, as it was: the CUDA glue ran back up to the root and down again.
    old_device = device_round_trips(root, ("cuda",))
    assert "cuda/ops_cuda.cpp -> fused_glue.h -> cuda/block_kernels.h" in old_device
    assert "cuda/ops_cuda.cpp" in device_files_with_torch(root, ("cuda",))


def test_checkers_accept_a_clean_tree(tmp_path):
    root = _tree(tmp_path, {
        "contract.h": "#pragma once\nconstexpr double kDistanceEps = 1e-16;\n",
        "pair_math.h": '#pragma once\n#include "contract.h"  // kDistanceEps = 1e-16 in a comment is fine\n',
        "ops.cpp": '#include <torch/library.h>\n// no TORCH_LIBRARY_IMPL here\nTORCH_LIBRARY(gtkernels_C, m) {}\n',
        "cpu/attention_cpu.cpp": '#include "../pair_math.h"\nTORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) { f({1}); }\n',
        "cuda/block_programs.h": '#pragma once\n#include "../pair_math.h"\n',
        "cuda/emulation.cpp": '#include "block_programs.h"\n',
        "cuda/kernels/attention.cu": '#include "launch.h"\n#include "../block_programs.h"\n',
        "cuda/kernels/launch.h": '#pragma once\n#include "../block_programs.h"\n',
    })
    assert cpu_reaches_cuda(root) == []
    assert device_round_trips(root) == []
    assert device_files_with_torch(root) == []
    assert registration_problems(root) == []
    assert restated_facts(root) == []


def test_comment_stripping_keeps_code_after_slash_star_in_a_line_comment():
    src = '// see cpu/*_cpu.cpp\nTORCH_LIBRARY(x, m) { m.def("a // b"); }\n/* TORCH_LIBRARY_IMPL */\n'
    code = _strip_comments(src)
    assert "TORCH_LIBRARY(x, m)" in code and '"a // b"' in code and "IMPL" not in code


def test_unresolved_include_raises(tmp_path):
    root = _tree(tmp_path, {"ops.cpp": '#include "missing.h"\n'})
    with pytest.raises(FileNotFoundError, match="missing.h"):
        _includes(root / "ops.cpp", root)
