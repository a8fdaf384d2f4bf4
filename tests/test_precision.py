"""The float32 precision policy (gmbound.precision): no TF32 / reduced-precision products in bounds or
their gradients unless opted into, under torch's old (allow_tf32) and new (fp32_precision) APIs.

These run on the CPU: the settings are process-wide flags that torch keeps with or without a GPU,
and reading them is what used to crash.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import gmbound
from gmbound import precision, propagation
from backends import needs_extension

NEW_API = precision.uses_fp32_precision_api()
needs_new_api = pytest.mark.skipif(not NEW_API, reason="this torch has no fp32_precision attributes (torch < 2.9)")


def _holders():
    b = torch.backends
    names = [(b, None), (b.cudnn, None), (b.mkldnn, None), (b.cuda, "matmul"), (b.cudnn, "conv"),
             (b.cudnn, "rnn"), (b.mkldnn, "matmul"), (b.mkldnn, "conv")]
    out = []
    for mod, op in names:
        h = getattr(mod, op) if op else mod
        if hasattr(h, "fp32_precision"):
            out.append(h)
    return out


@pytest.fixture
def restore_precision():
    """Leave torch's precision flags as they were (the new API's, parents first, then the old ones)."""
    holders = _holders()
    saved_new = [h.fp32_precision for h in holders]
    yield
    for h, v in zip(holders, saved_new):
        h.fp32_precision = v
    if not holders:
        return
    # the old API reads again once the new settings are back where they were
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # noqa: B018


def _user_sets_tf32():
    """``torch.backends.fp32_precision = "tf32"`` as in a fresh process: the per-op settings inherit it
    (an earlier legacy ``allow_tf32 = False``, as the kernel tests' fixtures set, pins cuBLAS's to
    "ieee" in torch 2.11 until it is reset to "none")."""
    for holder in precision._leaves():
        holder.fp32_precision = "none"
    torch.backends.fp32_precision = "tf32"
    assert _effective() == ("tf32", "tf32")


def _effective():
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(),
                         nn.Linear(5, 3))


@needs_new_api
@pytest.mark.parametrize("setting", ["global", "leaves"])
def test_strict_float32_under_the_new_api(setting, restore_precision):
    """torch.backends.fp32_precision = "tf32" made every strict block (every CUDA bounds() call) raise."""
    if setting == "global":
        _user_sets_tf32()
    else:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    before = [h.fp32_precision for h in _holders()]
    with precision.strict_float32():
        assert precision.strict_active()
        assert _effective() == ("ieee", "ieee")  # cuDNN convolutions included
        assert torch.backends.mkldnn.conv.fp32_precision == "ieee"
    assert not precision.strict_active()
    assert [h.fp32_precision for h in _holders()] == before
    with precision.strict_float32(enabled=False):
        assert not precision.strict_active()
        assert _effective() == ("tf32", "tf32")


def test_strict_float32_under_the_old_api(monkeypatch, restore_precision):
    """On torch without fp32_precision only the allow_tf32 flags are used."""
    monkeypatch.setattr(precision, "_leaves", lambda: [])
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with precision.strict_float32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with precision.strict_float32(enabled=False):
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@needs_new_api
def test_old_api_settings_survive_a_strict_block(restore_precision):
    """A user who set TF32 through allow_tf32 gets it back, still readable through allow_tf32."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with precision.strict_float32():
            assert _effective() == ("ieee", "ieee")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_strict_float32_restores_after_an_error(restore_precision):
    before = [h.fp32_precision for h in _holders()]
    with pytest.raises(ValueError):
        with precision.strict_float32():
            raise ValueError("boom")
    assert [h.fp32_precision for h in _holders()] == before
    assert not precision.strict_active()


@needs_new_api
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_bounds_run_under_the_policy(allow_tf32, monkeypatch, restore_precision):
    """bounds() applies the policy on every device (oneDNN too) unless allow_tf32=True."""
    _user_sets_tf32()
    seen = []
    spec_bounds = propagation.spec_bounds

    def spy(*args, **kwargs):
        seen.append(_effective() + (torch.backends.mkldnn.conv.fp32_precision,))
        return spec_bounds(*args, **kwargs)

    monkeypatch.setattr(propagation, "spec_bounds", spy)
    net = gmbound.BoundedSequential(_model())
    x = torch.rand(2, 1, 6, 6)
    out = net.bounds(x, [0.1], method="crown-ibp", x_min=0, x_max=1, allow_tf32=allow_tf32)
    assert torch.isfinite(out.lower).all()
    assert seen and all(s == (("tf32",) * 3 if allow_tf32 else ("ieee",) * 3) for s in seen)
    assert _effective() == ("tf32", "tf32")


class _Recorder:
    """Stands in for torch.ops.gmbound in the autograd formulas: notes the precision each backward
    op runs under, then runs it."""

    def __init__(self, ops):
        self._ops, self.seen = ops, []

    def __getattr__(self, name):
        op = getattr(self._ops, name)
        if not name.endswith("_backward"):
            return op

        def run(*args):
            self.seen.append((name,) + _effective())
            return op(*args)

        return run


@needs_new_api
@needs_extension
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_backward_ops_follow_the_forward_policy(allow_tf32, monkeypatch, restore_precision):
    """loss.backward() runs after the bounds call has returned; the compiled backward ops must still
    run strict (TF32 only when the forward opted in)."""
    from gmbound.engine import _ops

    recorder = _Recorder(_ops.ops)
    monkeypatch.setattr(_ops, "ops", recorder)
    _user_sets_tf32()
    model = _model()
    net = gmbound.BoundedSequential(model)
    x = torch.rand(2, 1, 6, 6)
    out = net.bounds(x, [0.1, 0.2], method="crown-ibp", x_min=0, x_max=1, backend="cpu", allow_tf32=allow_tf32)
    assert _effective() == ("tf32", "tf32")  # back to the user's settings ...
    (out.lower.sum() - out.upper.sum()).backward()  # ... when the gradients are computed
    names = {s[0] for s in recorder.seen}
    assert {"interval_input_conv2d_backward", "concretize_backward"} <= names
    want = ("tf32", "tf32") if allow_tf32 else ("ieee", "ieee")
    assert all(s[1:] == want for s in recorder.seen), recorder.seen
    assert all(p.grad is not None for p in model.parameters())
