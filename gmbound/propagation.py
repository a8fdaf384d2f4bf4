"""Multi-radius bound propagation: IBP, CROWN-IBP and full CROWN over a list of bound ops.

The drivers here are written once and run on any *primitive set* (``prims``): the
pure-PyTorch oracle in ``gmbound.reference.primitives`` or the compiled kernels in
``gmbound.engine``. Both give the same numbers; only speed differs.

All bounds are *lower* bounds of ``C f(x')`` over the boxes; an upper bound is the negated
lower bound of ``-C``, so both come from one pass over ``[C; -C]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from . import memory
from .network import (BoundOp, ChannelAffineOp, Conv2dOp, FlattenOp, LinearOp, ReLUOp,
                      conv_output_padding)

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass
class IntervalState:
    """Interval bounds ``[N, B, *S]`` after ``position`` ops; ``relu_pending``: a ReLU still to apply.

    ReLUs are applied lazily, by the next affine step reading its input (``relu_input``), so
    the pre-activation bounds that CROWN needs stay available and the ReLU costs no pass.
    """

    position: int
    lower: torch.Tensor
    upper: torch.Tensor
    relu_pending: bool = False
    pre_relu: dict[int, Interval] = field(default_factory=dict)  # ReLU op position -> pre-activation


def interval_step(op: BoundOp, state: IntervalState, prims) -> None:
    """Advance ``state`` through one op by interval arithmetic."""
    l, u, pending = state.lower, state.upper, state.relu_pending
    if isinstance(op, ReLUOp):
        if pending:  # two ReLUs in a row: the first one acts
            l, u = prims.relu_bounds(l, u)
        state.pre_relu[state.position] = (l, u)
        pending = True
    elif isinstance(op, FlattenOp):
        l, u = l.flatten(2), u.flatten(2)
    elif isinstance(op, LinearOp):
        l, u = prims.interval_linear(l, u, op.weight, op.bias, pending)
        pending = False
    elif isinstance(op, Conv2dOp):
        l, u = prims.interval_conv2d(l, u, op.weight, op.bias, op.stride, op.padding, op.dilation, pending)
        pending = False
    elif isinstance(op, ChannelAffineOp):
        scale, shift = op.scale_shift()
        l, u = prims.interval_channel_affine(l, u, scale, shift, pending)
        pending = False
    else:  # build_ops only produces the types above
        raise TypeError(f"no interval step for {op.name}")
    state.lower, state.upper, state.relu_pending = l, u, pending
    state.position += 1


def interval_pass(ops: list[BoundOp], state: IntervalState, stop: int, prims) -> IntervalState:
    """Run interval steps from ``state.position`` up to (not including) op ``stop``."""
    while state.position < stop:
        interval_step(ops[state.position], state, prims)
    return state


def backward_pass(ops: list[BoundOp], shapes: list[tuple[int, ...]], lam: torch.Tensor, start: int,
                  stop: int, pre_relu: dict[int, Interval], prims) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitute ``lam`` (coefficients on the output of op ``stop - 1``) down to the input of op ``start``.

    Returns Lambda on that input ``[M, B, K, *S]`` and the accumulated bias ``[M, B, K]``.
    """
    bias = torch.zeros(lam.shape[:3], dtype=lam.dtype, device=lam.device)
    # Optional: a primitive set may step through a ReLU and the Linear / Conv2d below it at once.
    fused = getattr(prims, "relu_affine_backward", None)
    j = stop - 1
    while j >= start:
        op, term = ops[j], None
        if (fused is not None and isinstance(op, ReLUOp) and j - 1 >= start
                and isinstance(ops[j - 1], (LinearOp, Conv2dOp))):
            lam, term = fused(lam, *pre_relu[j], ops[j - 1], shapes[j - 1], shapes[j])
            j -= 1  # the affine op below the ReLU is done too
        elif isinstance(op, ReLUOp):
            lam, term = prims.relu_backward(lam, *pre_relu[j])
        elif isinstance(op, FlattenOp):
            lam = lam.reshape(lam.shape[:3] + shapes[j])
        elif isinstance(op, LinearOp):
            lam, term = prims.linear_backward(lam, op.weight, op.bias)
        elif isinstance(op, Conv2dOp):
            out_pad = conv_output_padding(op, shapes[j][1:], shapes[j + 1][1:])
            lam, term = prims.conv2d_backward(lam, op.weight, op.bias, op.stride, op.padding, op.dilation, out_pad)
        elif isinstance(op, ChannelAffineOp):
            lam, term = prims.channel_affine_backward(lam, *op.scale_shift())
        else:
            raise TypeError(f"no backward step for {op.name}")
        if term is not None:
            bias = bias + term
        j -= 1
    return lam, bias


def last_relu_end(ops: list[BoundOp]) -> int:
    """Position just after the last ReLU (0 when the network is affine)."""
    return max((i + 1 for i, op in enumerate(ops) if isinstance(op, ReLUOp)), default=0)


@dataclass
class PropagationResult:
    """Lower bounds of the specification rows, per method that was asked for (``[N, B, K]``)."""

    ibp: Optional[torch.Tensor] = None
    crown: Optional[torch.Tensor] = None


def spec_bounds(ops: list[BoundOp], shapes: list[tuple[int, ...]], box: Interval, spec: torch.Tensor,
                prims, want_ibp: bool, want_crown: bool) -> PropagationResult:
    """IBP and / or CROWN-IBP lower bounds of ``spec . f(x')`` (``spec``: ``[B, K, *out]``).

    IBP runs intervals up to the last ReLU and folds the specification into the trailing affine
    layers by back-substitution (the "elision of the last layer"); CROWN-IBP back-substitutes
    through the whole network, relaxing each ReLU with its IBP pre-activation bounds.
    """
    tail = last_relu_end(ops)
    state = interval_pass(ops, IntervalState(0, *box), tail, prims)
    lam0 = spec.unsqueeze(0)  # [1, B, K, *out]: the same for every radius until the first ReLU
    result = PropagationResult()
    if want_ibp:
        lam, bias = backward_pass(ops, shapes, lam0, tail, len(ops), {}, prims)
        result.ibp = prims.concretize(lam, state.lower, state.upper, state.relu_pending) + bias
    if want_crown:
        if tail == 0 and result.ibp is not None:
            result.crown = result.ibp  # an affine network: both are the exact back-substitution
        else:
            lam, bias = backward_pass(ops, shapes, lam0, 0, len(ops), state.pre_relu, prims)
            result.crown = prims.concretize(lam, box[0], box[1], False) + bias
    return result


def _block_is_exact(ops: list[BoundOp], start: int, stop: int) -> bool:
    """Interval arithmetic is exact through at most one non-diagonal affine map."""
    return sum(not isinstance(op, (ChannelAffineOp, FlattenOp)) for op in ops[start:stop]) <= 1


def _identity_rows(shape: tuple[int, ...], rows: slice, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of the identity on a layer of per-sample ``shape``, as a spec ``[1, B, k, *shape]``."""
    d = 1
    for s in shape:
        d *= s
    idx = torch.arange(d, device=like.device)[rows]
    eye = torch.zeros(len(idx), d, dtype=like.dtype, device=like.device)
    eye[torch.arange(len(idx), device=like.device), idx] = 1
    return eye.reshape((1, 1, len(idx)) + shape).expand(1, batch, len(idx), *shape)


def full_crown_pre_relu(ops: list[BoundOp], shapes: list[tuple[int, ...]], box: Interval, prims,
                        chunk: Optional[int] = None) -> dict[int, Interval]:
    """Pre-activation bounds of every ReLU, each from its own CROWN backward pass.

    Each layer's bounds are intersected with the interval step from the tightened bounds below
    it: both are sound, so the intersection is sound and at least as tight as either.
    ``chunk`` limits the identity rows back-substituted at once (memory ``~ chunk x layer size``);
    None derives it per layer from the memory budget (``gmbound.memory``).
    """
    state = IntervalState(0, *box)
    last_relu = -1
    for j, op in enumerate(ops):
        if not isinstance(op, ReLUOp):
            continue
        interval_pass(ops, state, j, prims)
        lower, upper = state.lower, state.upper
        if state.relu_pending:
            lower, upper = prims.relu_bounds(lower, upper)
        if last_relu >= 0 or not _block_is_exact(ops, 0, j):
            shape, batch = shapes[j], box[0].shape[1]
            d = lower[0, 0].numel()
            step = chunk or memory.crown_chunk(d, lower.shape[0], batch, memory.widest_layer(shapes[:j + 1]),
                                               lower.dtype, lower.device)
            lows, ups = [], []
            for s in range(0, d, step):
                eye = _identity_rows(shape, slice(s, min(d, s + step)), batch, lower)
                spec = torch.cat([eye, -eye], dim=2)
                lam, bias = backward_pass(ops, shapes, spec, 0, j, state.pre_relu, prims)
                lb = prims.concretize(lam, box[0], box[1], False) + bias  # [N, B, 2k]
                k = eye.shape[2]
                lows.append(lb[:, :, :k])
                ups.append(-lb[:, :, k:])
            crown_l = torch.cat(lows, 2).reshape(lower.shape)
            crown_u = torch.cat(ups, 2).reshape(upper.shape)
            lower, upper = torch.maximum(lower, crown_l), torch.minimum(upper, crown_u)
        # restart the interval pass from the tightened bounds of this ReLU
        state.lower, state.upper, state.relu_pending = lower, upper, False
        interval_step(op, state, prims)
        last_relu = j
    return state.pre_relu


def full_crown_bounds(ops: list[BoundOp], shapes: list[tuple[int, ...]], box: Interval, spec: torch.Tensor,
                      prims, chunk: Optional[int] = None) -> torch.Tensor:
    """Full CROWN lower bound of ``spec . f(x')``: every ReLU relaxed with CROWN pre-activation bounds.

    Tighter intermediate bounds do not make the final CROWN bound tighter entry by entry (the
    adaptive lower slopes can switch), so the result keeps, per entry, the larger of the full
    CROWN and the CROWN-IBP lower bound: both are sound, so their maximum is, and it is never
    looser than CROWN-IBP. One extra backward pass, small next to the intermediate ones.
    """
    pre_relu = full_crown_pre_relu(ops, shapes, box, prims, chunk)
    lam, bias = backward_pass(ops, shapes, spec.unsqueeze(0), 0, len(ops), pre_relu, prims)
    full = prims.concretize(lam, box[0], box[1], False) + bias
    crown_ibp = spec_bounds(ops, shapes, box, spec, prims, want_ibp=False, want_crown=True).crown
    return torch.maximum(full, crown_ibp)
