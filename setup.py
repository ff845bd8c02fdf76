"""Build gtkernels and its compiled extension gtkernels._C.

    pip install --no-build-isolation -e .        # editable; torch must already be installed
    python setup.py build_ext --inplace          # in-place build of gtkernels/_C*.so

The extension always holds the CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp, OpenMP). The CUDA sources
(csrc/cuda/*.cu) are added, as a CUDAExtension, when torch has CUDA (or FORCE_CUDA=1) and CUDA_HOME is set,
and never when GTKERNELS_CPU_ONLY=1.

Environment switches:
    GTKERNELS_CPU_ONLY=1   never build CUDA sources
    FORCE_CUDA=1           build CUDA sources even where no GPU is visible (needs a CUDA build of torch)
    GTKERNELS_PORTABLE=1   no -march=native (a binary that runs on any x86-64 / aarch64 of its kind)

torch is a build-time requirement that is deliberately not listed in install_requires: install the torch
build you want (CPU or a CUDA flavour) first, then build with --no-build-isolation.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:  # pragma: no cover - torch is a prerequisite
        raise RuntimeError(
            "gtkernels needs PyTorch installed before it is built "
            "(pip install torch, then pip install --no-build-isolation -e .)") from exc

    cpp_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                       + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                        + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))

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
    install_requires=["numpy"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
    entry_points={"console_scripts": ["gtkernels=gtkernels.cli:main"]},
)
