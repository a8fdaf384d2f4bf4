"""The compiled extension is there when it must be (no module-level skip here, unlike test_kernels*.py)."""
import os

import pytest

from gmbound import _extension


def test_extension_present_when_required():
    """CI sets GMBOUND_REQUIRE_EXTENSION=1: a broken build must fail here, not skip every compiled test."""
    if os.environ.get("GMBOUND_REQUIRE_EXTENSION") != "1":
        pytest.skip("GMBOUND_REQUIRE_EXTENSION is not set")
    assert _extension.available(), _extension.unavailable_reason()
    if os.environ.get("GMBOUND_CUDA") == "1":
        assert _extension.has_cuda_kernels(), "GMBOUND_CUDA=1 but gmbound._C has no CUDA kernels"


def test_missing_extension_reason_names_the_build_command():
    """Whatever the state of the build, the reason given for a missing extension says how to build it."""
    if _extension.available():
        assert _extension.unavailable_reason() is None
    else:
        assert _extension.BUILD_HINT in _extension.unavailable_reason()
