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


def _setup_module():
    """setup.py as a module: importing it defines its helpers and builds nothing."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    spec = importlib.util.spec_from_file_location("gmbound_setup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_cuda_archs_carry_ptx():
    """With no GPU at build time the kernels must still load on an A100 or a GPU newer than sm_90:
    machine code for 8.0 and 9.0 and PTX (JIT-compiled by the driver) for anything newer."""
    setup = _setup_module()
    archs = setup.arch_list_default({}, gpu_visible=False)
    assert archs is not None and "+PTX" in archs
    assert {"8.0", "9.0"} <= {a.replace("+PTX", "") for a in archs.split(";")}
    assert setup.arch_list_default({"TORCH_CUDA_ARCH_LIST": "9.0"}, gpu_visible=False) is None  # the user's
    assert setup.arch_list_default({}, gpu_visible=True) is None  # torch's: the visible GPUs'


def test_old_setuptools_stops_with_an_instruction():
    setup = _setup_module()
    with pytest.raises(SystemExit, match=r"setuptools >= 77.*found 65\.5\.0.*pip install 'setuptools>=77'"):
        setup.check_setuptools("65.5.0")
    setup.check_setuptools("77.0.3")
    setup.check_setuptools("81.0.0")
