"""The op registry and the primitive contract: one list of what is supported, one contract for both primitive sets."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import gmbound
from gmbound.engine.contract import FusedPrimitives, Primitives
from gmbound.ops.registry import MODULE_RULES, supported_layers
from gmbound.reference import primitives as R
from backends import needs_extension


def _members(protocol) -> list[str]:
    return [n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")]


def test_the_reference_set_satisfies_the_contract():
    for name in _members(Primitives):
        assert callable(getattr(R, name, None)), name


@needs_extension
def test_the_compiled_set_satisfies_the_contract_and_fuses_on_tensors():
    from gmbound.engine import compiled as C

    for name in _members(Primitives) + _members(FusedPrimitives):
        assert callable(getattr(C, name, None)), name
    assert "network" not in inspect.getsource(C)  # the engine no longer reaches up for op objects
    g = torch.Generator().manual_seed(0)
    lam = torch.randn(2, 3, 4, 5, 4, 4, generator=g, dtype=torch.float64)
    lower = torch.randn(2, 3, 5, 4, 4, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(2, 3, 5, 4, 4, generator=g, dtype=torch.float64)
    w, b = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    conv = ((2, 2), (1, 1), (1, 1), (1, 1))  # 8x8 -> 4x4 with stride 2, padding 1
    got = C.relu_affine_backward(lam, lower, upper, w, b, conv)
    lam_z, t1 = R.relu_backward(lam, lower, upper)
    want, t2 = R.conv2d_backward(lam_z, w, b, *conv)
    assert want.shape[-2:] == (8, 8)
    torch.testing.assert_close(got[0], want)
    torch.testing.assert_close(got[1], t1 + t2)
    lam, lower = lam.flatten(3), lower.flatten(2)
    upper = lower + 1.0
    wl = torch.randn(80, 7, generator=g, dtype=torch.float64)
    got = C.relu_affine_backward(lam, lower, upper, wl, None)
    lam_z, t1 = R.relu_backward(lam, lower, upper)
    torch.testing.assert_close(got[0], R.linear_backward(lam_z, wl, None)[0])
    torch.testing.assert_close(got[1], t1)


def test_one_list_of_supported_layers():
    from gmbound.compat.bounded_module import SUPPORTED_LAYERS

    assert SUPPORTED_LAYERS == supported_layers() == tuple(r.label for r in MODULE_RULES)
    with pytest.raises(gmbound.UnsupportedLayerError) as info:
        gmbound.BoundedSequential(nn.Sequential(nn.Linear(2, 2), nn.SELU()))
    assert all(label in str(info.value) for label in supported_layers())
