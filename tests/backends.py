"""Which compiled backends this machine has, as pytest marks and parameter lists shared by the tests.

One place for the skip reasons, so a test that needs the compiled extension or a GPU says why it was
skipped in the same words everywhere (CI has no GPU; a machine without a C++ build has no extension).
"""
from __future__ import annotations

import pytest
import torch

from gmbound import _extension

HAVE_EXT = _extension.available()
NO_EXT = _extension.unavailable_reason() or "gmbound._C not built: pip install --no-build-isolation -e ."
needs_extension = pytest.mark.skipif(not HAVE_EXT, reason=NO_EXT)

NO_GPU = "no CUDA GPU: CUDA kernels compiled but not run here"
NO_CUDA_KERNELS = "gmbound._C was built without CUDA kernels"

# Devices for the compiled kernels: "cuda" only where a GPU is present and the build has CUDA kernels.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU),
                                pytest.mark.skipif(HAVE_EXT and not _extension.has_cuda_kernels(),
                                                   reason=NO_CUDA_KERNELS)]),
]

# Engine backends compared against each other: the pure-PyTorch oracle and the compiled CPU kernels.
BACKENDS = ["reference", pytest.param("cpu", marks=needs_extension)]
