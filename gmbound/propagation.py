"""Multi-radius bound propagation over a bound graph: IBP, CROWN-IBP and full CROWN.

The drivers here are written once and run on any *primitive set* (``prims``, see
``gmbound.engine.contract``): the pure-PyTorch oracle in ``gmbound.reference.primitives`` or the
compiled kernels in ``gmbound.engine``. Both give the same numbers; only speed differs.

IBP walks the graph forward in topological order; CROWN walks it backward in reverse
topological order, summing the Lambdas that reach a node from its several consumers. All radii
travel together: bound tensors carry the radius axis first.

All bounds are *lower* bounds of ``C f(x')`` over the boxes; an upper bound is the negated
lower bound of ``-C``, so both come from one pass over ``[C; -C]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import memory
from .graph import BoundGraph
from .ops.base import Interval, Shape, materialise
from .ops.shape import FlattenOp

Pair = tuple[torch.Tensor, torch.Tensor]


class IntervalState:
    """Interval bounds of the nodes computed so far, and the input bounds of each nonlinear node.

    ReLUs are applied lazily (``Interval.relu_pending``), by the op that reads them, so the
    pre-activation bounds that CROWN needs stay available and a ReLU costs no pass. Other
    nonlinear ops (``kind == "nonlinear"``: tanh, max pooling, a product, ...) keep the actual
    bounds of their inputs in ``pre_relu`` (a pair; a tuple of pairs for several inputs), which
    their CROWN step relaxes with.
    """

    def __init__(self, box: Pair):
        self.values: dict[int, Interval] = {0: Interval(box[0], box[1])}
        self.pre_relu: dict[int, object] = {}  # nonlinear node -> the bounds its relaxation needs

    def radii(self, start: int, stop: int) -> "IntervalState":
        """The same intervals for radii ``start:stop`` alone: views, so gradients reach this state.

        A tensor without the radius axis in full (one shared by all radii, leading size 1) stays whole.
        """
        n = self.values[0].lower.shape[0]

        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[start:stop] if t.shape[0] == n else t
        part = IntervalState((cut(self.values[0].lower), cut(self.values[0].upper)))
        part.values = {i: Interval(cut(v.lower), cut(v.upper), v.relu_pending) for i, v in self.values.items()}
        part.pre_relu = {i: _map_tensors(cut, pre) for i, pre in self.pre_relu.items()}
        return part

    def compute(self, graph: BoundGraph, nodes: set[int], prims) -> None:
        """Interval steps for ``nodes`` (closed under inputs) not yet computed, in topological order."""
        for i in sorted(nodes):
            if i in self.values:
                continue
            node = graph.nodes[i]
            value = node.op.interval(prims, *(self.values[j] for j in node.inputs))
            if node.op.kind == "relu":
                self.pre_relu[i] = (value.lower, value.upper)
            elif node.op.kind == "nonlinear":
                ins = tuple(materialise(self.values[j], prims) for j in node.inputs)
                self.pre_relu[i] = ins[0] if len(ins) == 1 else ins
            self.values[i] = value


def _map_tensors(fn, tree):
    """``fn`` applied to every tensor of a nest of tuples."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    return tuple(_map_tensors(fn, t) for t in tree)


def backward(graph: BoundGraph, shapes: list[Shape], start: int, lam: torch.Tensor, stop: set[int],
             pre_relu: dict[int, Pair], prims) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Back-substitute ``lam`` (coefficients on the output of node ``start``) until the nodes ``stop``.

    Walks the nodes below ``start`` in reverse topological order; a node's Lambda is the sum of
    what its consumers send it. Returns Lambda on each ``stop`` node reached (``[M, B, K, *S]``)
    and the accumulated bias ``[M, B, K]``. Node 0 (the input) always stops the walk.
    """
    bias = torch.zeros(lam.shape[:3], dtype=lam.dtype, device=lam.device)
    # Optional: a primitive set may step through a ReLU and the Linear / Conv2d below it at once.
    fused = getattr(prims, "relu_affine_backward", None)
    pending: dict[int, torch.Tensor] = {start: lam}
    reached: dict[int, torch.Tensor] = {}
    for i in range(start, -1, -1):
        if i not in pending:
            continue
        lam = pending.pop(i)
        if i == 0 or i in stop:
            reached[i] = lam
            continue
        node = graph.nodes[i]
        op, below = node.op, node.inputs[0]
        slope = op.relu_slope()
        args = None
        if (fused is not None and slope is not None and below != 0 and below not in stop
                and hasattr(graph.nodes[below].op, "fused_args") and len(graph.users[below]) == 1):
            args = graph.nodes[below].op.fused_args(shapes[graph.nodes[below].inputs[0]], shapes[below])
        if args is not None:
            # a (leaky) ReLU and the affine op below it (whose only consumer it is) in one step
            # a Linear reading a Flatten: Lambda straight onto the image, in the kernels' layout
            image = _flattened_image(graph, shapes, graph.nodes[below].inputs[0], stop) if args[2] is None else None
            lam_in, term = fused(lam, *pre_relu[i], *args, negative_slope=slope,
                                 **({"unflatten": image} if image else {}))
            lams, inputs = [lam_in], graph.nodes[below].inputs
        else:
            lams, term = op.backward(prims, lam, [shapes[j] for j in node.inputs], shapes[i], pre_relu.get(i))
            inputs = node.inputs
        for j, lam_j in zip(inputs, lams):
            pending[j] = pending[j] + lam_j if j in pending else lam_j
        if term is not None:
            bias = bias + term
    return reached, bias


def _flattened_image(graph: BoundGraph, shapes: list[Shape], node: int, stop: set[int]) -> Optional[Shape]:
    """``(C, H, W)`` when ``node`` only flattens a ``[C, H, W]`` image for one consumer (and is no stop)."""
    op = graph.nodes[node].op
    if node == 0 or node in stop or not isinstance(op, FlattenOp) or len(graph.users[node]) != 1:
        return None
    image = shapes[graph.nodes[node].inputs[0]]
    return tuple(image) if len(image) == 3 else None


def _concretize(reached: dict[int, torch.Tensor], values: dict[int, Interval], prims) -> torch.Tensor:
    """Lower bound of ``sum_i lam_i . a_i`` over the interval of every reached node (``[N, B, K]``)."""
    total = None
    for i in sorted(reached):
        v = values[i]
        term = prims.concretize(reached[i], v.lower, v.upper, v.relu_pending)
        total = term if total is None else total + term
    return total


@dataclass
class PropagationResult:
    """Lower bounds of the specification rows, per method that was asked for (``[N, B, K]``)."""

    ibp: Optional[torch.Tensor] = None
    crown: Optional[torch.Tensor] = None


def output_intervals(graph: BoundGraph, box: Pair, prims, state: Optional[IntervalState] = None) -> Pair:
    """Plain interval bounds of the network's output ``[N, B, *out]`` (continuing ``state`` if given)."""
    state = state if state is not None else IntervalState(box)
    state.compute(graph, graph.ancestors([graph.output]), prims)
    return materialise(state.values[graph.output], prims)


def relu_intervals(graph: BoundGraph, box: Pair, prims) -> IntervalState:
    """The interval pass up to the last ReLUs: what both IBP and CROWN-IBP start from."""
    state = IntervalState(box)
    state.compute(graph, graph.ancestors(graph.relus(graph.ancestors([graph.output]))), prims)
    return state


def spec_bounds(graph: BoundGraph, shapes: list[Shape], box: Pair, spec: torch.Tensor, prims, want_ibp: bool,
                want_crown: bool, state: Optional[IntervalState] = None) -> PropagationResult:
    """IBP and / or CROWN-IBP lower bounds of ``spec . f(x')`` (``spec``: ``[B, K, *out]``).

    IBP runs intervals up to the last ReLUs and folds the specification into the affine ops
    after them by back-substitution (the "elision of the last layer"); CROWN-IBP
    back-substitutes through the whole graph, relaxing each ReLU with its IBP pre-activation bounds.
    ``state``: the interval pass of ``box`` from an earlier call (``relu_intervals``), reused as is.
    """
    relus = graph.relus(graph.ancestors([graph.output]))
    if state is None:
        state = relu_intervals(graph, box, prims)
    lam0 = spec.unsqueeze(0)  # [1, B, K, *out]: the same for every radius until the first ReLU
    result = PropagationResult()
    if want_ibp:
        reached, bias = backward(graph, shapes, graph.output, lam0, set(relus), {}, prims)
        result.ibp = _concretize(reached, state.values, prims) + bias
    if want_crown:
        if not relus and result.ibp is not None:
            result.crown = result.ibp  # an affine network: both are the exact back-substitution
        else:
            reached, bias = backward(graph, shapes, graph.output, lam0, set(), state.pre_relu, prims)
            result.crown = _concretize(reached, state.values, prims) + bias
    return result


def fused_cross_entropy_bounds(graph: BoundGraph, shapes: list[Shape], box: Pair, spec: torch.Tensor,
                               y: torch.Tensor, prims, beta: float, crown: bool,
                               state: Optional[IntervalState] = None) -> torch.Tensor:
    """Loss fusion: an upper bound of ``max CE(f(x'), y)`` over each box, and the IBP worst margin (``[N, B, 2]``).

    ``spec``: ``margin_spec(y)`` (``[B, n - 1, n]``). The intervals of ``z_j = f_j - f_y`` come from IBP with
    the specification folded into the affine ops after the last ReLUs (as ``spec_bounds``' IBP, 2 (n - 1)
    rows through the last layers only); then, when ``crown``, ONE CROWN-IBP row per (radius, sample), the
    chord of ``exp`` on those intervals (``specification.fused_cross_entropy_bound``), is back-substituted
    through the whole graph. ``[..., 1]`` is ``max_j u_j``, the IBP bound of the largest ``z_j``
    (``< 0``: IBP-verified).
    """
    from .specification import fused_cross_entropy_bound  # the shared math (no import cycle at load time)
    relus = graph.relus(graph.ancestors([graph.output]))
    if state is None:
        state = relu_intervals(graph, box, prims)
    k = spec.shape[1]
    rows = torch.cat([-spec, spec], dim=1).unsqueeze(0)     # lower bounds of z = -C f and of -z = C f
    reached, bias = backward(graph, shapes, graph.output, rows, set(relus), {}, prims)
    lb = _concretize(reached, state.values, prims) + bias    # [N, B, 2K]
    z_lower, z_upper = lb[..., :k], -lb[..., k:]

    def crown_upper(lam: torch.Tensor) -> torch.Tensor:
        # upper bound of lam . f = -(lower bound of -lam . f); Lambda [N, B, 1, n] differs per radius
        reached_c, bias_c = backward(graph, shapes, graph.output, -lam.unsqueeze(2), set(), state.pre_relu, prims)
        return -(_concretize(reached_c, state.values, prims) + bias_c)[..., 0]
    bound = fused_cross_entropy_bound(z_lower, z_upper, y, spec.shape[2], beta, crown_upper if crown else None)
    return torch.stack([bound, z_upper.max(-1)[0]], dim=-1)


def _block_is_exact(graph: BoundGraph, node: int) -> bool:
    """Interval arithmetic is exact up to ``node`` when it is reached through at most one non-diagonal affine map.

    (No ReLU and no merge of two branches below it either.)
    """
    ops = [graph.nodes[i].op for i in graph.ancestors([node]) if i != 0]
    if any(op.kind in ("relu", "merge", "nonlinear") for op in ops):
        return False
    return sum(op.kind != "diagonal" for op in ops) <= 1


def _identity_rows(shape: tuple[int, ...], rows: slice, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of the identity on a layer of per-sample ``shape``, as a spec ``[1, B, k, *shape]``."""
    d = 1
    for s in shape:
        d *= s
    idx = torch.arange(d, device=like.device)[rows]
    eye = torch.zeros(len(idx), d, dtype=like.dtype, device=like.device)
    eye[torch.arange(len(idx), device=like.device), idx] = 1
    return eye.reshape((1, 1, len(idx)) + shape).expand(1, batch, len(idx), *shape)


def full_crown_pre_relu(graph: BoundGraph, shapes: list[Shape], box: Pair, prims,
                        chunk: Optional[int] = None) -> dict[int, Pair]:
    """Pre-activation bounds of every ReLU (the input bounds of every nonlinear node), each from CROWN passes.

    Each layer's bounds are intersected with the interval step from the tightened bounds below
    it: both are sound, so the intersection is sound and at least as tight as either.
    ``chunk`` limits the identity rows back-substituted at once (memory ``~ chunk x layer size``);
    None derives it per layer from the memory budget (``gmbound.memory``).
    """
    state = IntervalState(box)
    for j in graph.relus(graph.ancestors([graph.output])):
        for n_in, p in enumerate(graph.nodes[j].inputs):  # the pre-activation node(s)
            if p in graph.nodes[j].inputs[:n_in]:
                continue  # the same node read twice (x * x): tightened already
            state.compute(graph, graph.ancestors([p]), prims)
            lower, upper = materialise(state.values[p], prims)
            if graph.relus(graph.ancestors([p])) or not _block_is_exact(graph, p):
                lower, upper = _crown_tightened(graph, shapes, p, j, lower, upper, box, state, prims, chunk)
            # continue the interval pass from the tightened bounds of this node's input
            state.values[p] = Interval(lower, upper)
        state.compute(graph, {j}, prims)
    return state.pre_relu


def _crown_tightened(graph: BoundGraph, shapes: list[Shape], p: int, j: int, lower: torch.Tensor,
                     upper: torch.Tensor, box: Pair, state: IntervalState, prims,
                     chunk: Optional[int]) -> Pair:
    """The bounds of node ``p`` (read by nonlinear node ``j``) intersected with its CROWN bounds."""
    batch = box[0].shape[1]
    d = lower[0, 0].numel()
    step = chunk or memory.crown_chunk(d, lower.shape[0], batch, memory.widest_layer(shapes[:j + 1]),
                                       lower.dtype, lower.device)
    lows, ups = [], []
    for s in range(0, d, step):
        eye = _identity_rows(shapes[p], slice(s, min(d, s + step)), batch, lower)
        spec = torch.cat([eye, -eye], dim=2)
        reached, bias = backward(graph, shapes, p, spec, set(), state.pre_relu, prims)
        lb = _concretize(reached, state.values, prims) + bias  # [N, B, 2k]
        k = eye.shape[2]
        lows.append(lb[:, :, :k])
        ups.append(-lb[:, :, k:])
    crown_l = torch.cat(lows, 2).reshape(lower.shape)
    crown_u = torch.cat(ups, 2).reshape(upper.shape)
    return torch.maximum(lower, crown_l), torch.minimum(upper, crown_u)


def full_crown_bounds(graph: BoundGraph, shapes: list[Shape], box: Pair, spec: torch.Tensor, prims,
                      chunk: Optional[int] = None) -> torch.Tensor:
    """Full CROWN lower bound of ``spec . f(x')``: every ReLU relaxed with CROWN pre-activation bounds.

    Tighter intermediate bounds do not make the final CROWN bound tighter entry by entry (the
    adaptive lower slopes can switch), so the result keeps, per entry, the larger of the full
    CROWN and the CROWN-IBP lower bound: both are sound, so their maximum is, and it is never
    looser than CROWN-IBP. One extra backward pass, small next to the intermediate ones.
    """
    pre_relu = full_crown_pre_relu(graph, shapes, box, prims, chunk)
    reached, bias = backward(graph, shapes, graph.output, spec.unsqueeze(0), set(), pre_relu, prims)
    full = prims.concretize(reached[0], box[0], box[1], False) + bias
    crown_ibp = spec_bounds(graph, shapes, box, spec, prims, want_ibp=False, want_crown=True).crown
    return torch.maximum(full, crown_ibp)
