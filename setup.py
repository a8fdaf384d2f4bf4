"""Build the compiled bound kernels ``gmbound._C`` (package metadata lives in pyproject.toml).

    pip install --no-build-isolation -e .        # or: pip install --no-build-isolation .

``--no-build-isolation`` makes the build use the torch that is already installed, so the
extension matches it. Environment switches:

* ``GMBOUND_CUDA=1`` / ``GMBOUND_CUDA=0``: force / skip the CUDA kernels (default: build them
  when nvcc is found through ``CUDA_HOME``);
* ``GMBOUND_DEBUG=1``: ``-O0 -g`` instead of ``-O3``;
* ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``): the GPU architectures to compile for (default:
  the visible GPUs', or ``9.0`` when none is visible);
* ``MAX_JOBS``: parallel compile jobs for ninja.
"""
from __future__ import annotations

import glob
import os
import shutil

from setuptools import setup


def _toolkit_root() -> str | None:
    """The CUDA toolkit that ``nvcc`` on PATH belongs to.

    torch guesses CUDA_HOME as the parent of nvcc's directory; with a wrapper or link such as
    /usr/local/bin/nvcc that gives /usr/local, where the link step finds no libcudart. Keep the
    first candidate that really holds a toolkit (headers and nvcc).
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) and \
                os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    return None


if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
    _root = _toolkit_root()
    if _root:
        os.environ["CUDA_HOME"] = _root  # read by torch.utils.cpp_extension at import

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("GMBOUND_CUDA", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        if CUDA_HOME is None:
            raise RuntimeError("GMBOUND_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to it "
                               "(the directory holding bin/nvcc)")
        return True
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return False
    if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        print(f"gmbound: nvcc found under {CUDA_HOME} but no CUDA headers there: building the CPU kernels "
              "only (set CUDA_HOME to the toolkit to build the CUDA kernels)")
        return False
    return True


def _sources(pattern: str) -> list[str]:
    # Relative paths: setuptools rejects absolute source paths in some versions.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def extensions():
    with_cuda = _want_cuda()
    debug = os.environ.get("GMBOUND_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = [f'-DGMBOUND_TORCH_VERSION="{torch.__version__}"']
    # at::parallel_for is OpenMP-based in torch builds; -fopenmp lets our loops use torch's pool
    # (libgomp.so.1 resolves to the copy torch has already loaded).
    # -fno-trapping-math (as torch itself is built) lets gcc vectorise the branch-free selects
    cxx = opt + defines + ["-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    kwargs = dict(extra_link_args=["-fopenmp"], include_dirs=[os.path.join(HERE, "csrc")])
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # torch infers the architectures from the visible GPUs and fails when there are none
            # (a build machine or CI with nvcc but no GPU): default to Hopper, our target.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
            print("gmbound: no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling CUDA kernels for "
                  "sm_90 (H100/H200); set TORCH_CUDA_ARCH_LIST to choose others")
        sources += _sources("csrc/cuda/*.cu")
        cxx.append("-DGMBOUND_WITH_CUDA")
        nvcc = opt + defines + ["-DGMBOUND_WITH_CUDA", "--expt-relaxed-constexpr",
                                "-lineinfo"]
        return [CUDAExtension("gmbound._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)]
    return [CppExtension("gmbound._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
