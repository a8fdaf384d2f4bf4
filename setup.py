"""Build the compiled bound kernels ``gmbound._C`` (package metadata lives in pyproject.toml).

    pip install --no-build-isolation -e .        # or: pip install --no-build-isolation .

``--no-build-isolation`` makes the build use the torch (and setuptools >= 77) that is already
installed, so the extension matches it. Environment switches:

* ``GMBOUND_CUDA=1`` / ``GMBOUND_CUDA=0``: force / skip the CUDA kernels (default: build them
  when nvcc is found through ``CUDA_HOME``);
* ``GMBOUND_DEBUG=1``: ``-O0 -g`` instead of ``-O3``;
* ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``): the GPU architectures to compile for (default:
  the visible GPUs', or ``8.0;9.0+PTX`` when none is visible: A100 and H100/H200 machine code, and
  PTX that newer GPUs compile at load time);
* ``MAX_JOBS``: parallel compile jobs for ninja.

Importing this file defines the helpers only; the build runs when setuptools executes it.
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import Mapping, Optional

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))

# pyproject.toml gives the licence as an SPDX string (PEP 639), which setuptools reads from 77 on;
# older ones (65.5 comes with Python 3.11's venv) stop with a cryptic `project.license` error.
MIN_SETUPTOOLS = (77, 0)

# Architectures when no GPU is visible at build time (a build machine, CI): sm_80 (A100) and sm_90
# (H100/H200) machine code, plus sm_90 PTX so that a newer GPU JIT-compiles the kernels at load
# time instead of failing with "no kernel image is available".
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def check_setuptools(version: str = setuptools.__version__) -> None:
    """Stop with a plain instruction when setuptools is too old to read pyproject.toml."""
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_SETUPTOOLS:
        raise SystemExit(f"gmbound needs setuptools >= 77 to build (found {version}): "
                         "pip install 'setuptools>=77', then build again")


def arch_list_default(env: Mapping[str, str], gpu_visible: bool) -> Optional[str]:
    """The TORCH_CUDA_ARCH_LIST to set, or None to leave torch's choice (the env's, or the visible GPUs')."""
    if env.get("TORCH_CUDA_ARCH_LIST") or gpu_visible:
        return None
    return DEFAULT_ARCH_LIST


def _toolkit_root() -> Optional[str]:
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


def _want_cuda(cuda_home: Optional[str]) -> bool:
    flag = os.environ.get("GMBOUND_CUDA", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        if cuda_home is None:
            raise RuntimeError("GMBOUND_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to it "
                               "(the directory holding bin/nvcc)")
        return True
    if cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return False
    if not os.path.exists(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        print(f"gmbound: nvcc found under {cuda_home} but no CUDA headers there: building the CPU kernels "
              "only (set CUDA_HOME to the toolkit to build the CUDA kernels)")
        return False
    return True


def _sources(pattern: str) -> list[str]:
    # Relative paths: setuptools rejects absolute source paths in some versions.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    with_cuda = _want_cuda(CUDA_HOME)
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
        archs = arch_list_default(os.environ, torch.cuda.is_available())
        if archs:
            # torch infers the architectures from the visible GPUs and fails when there are none
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
            print(f"gmbound: no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling CUDA kernels for "
                  f"{archs}; set TORCH_CUDA_ARCH_LIST to choose others")
        sources += _sources("csrc/cuda/*.cu")
        cxx.append("-DGMBOUND_WITH_CUDA")
        nvcc = opt + defines + ["-DGMBOUND_WITH_CUDA", "--expt-relaxed-constexpr",
                                "-lineinfo"]
        return [CUDAExtension("gmbound._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)]
    return [CppExtension("gmbound._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]


def replacing_build_ext(base: type) -> type:
    """``base`` whose copies of the built library into the source tree (editable installs, --inplace)
    replace the old file by a new inode (copy to a temporary, then ``os.replace``).

    setuptools overwrites it in place, truncating a file that running processes (a training run
    in the background) have mapped: they die with SIGBUS. Replaced, the old inode lives on for them.
    """

    class ReplacingBuildExt(base):
        def copy_file(self, infile, outfile, *args, **kwargs):
            target = outfile if not os.path.isdir(outfile) else os.path.join(outfile, os.path.basename(infile))
            if not (os.path.isfile(target) and target.endswith((".so", ".pyd"))):
                return super().copy_file(infile, outfile, *args, **kwargs)
            tmp = f"{target}.{os.getpid()}.tmp"
            shutil.copy2(infile, tmp)
            os.replace(tmp, target)
            return target, 1

    return ReplacingBuildExt


def main() -> None:
    check_setuptools()
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        root = _toolkit_root()
        if root:
            os.environ["CUDA_HOME"] = root  # read by torch.utils.cpp_extension at import
    from torch.utils.cpp_extension import BuildExtension

    setuptools.setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": replacing_build_ext(BuildExtension.with_options(use_ninja=True))},
    )


if __name__ == "__main__":
    main()
