"""``BoundedSequential``: the public front door for multi-radius bounds of a model (a Sequential or any traced nn.Module)."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
from torch import nn

from . import propagation
from .engine import chunking, get_primitives, tile_budget
from .graph import BoundGraph
from .network import build_graph
from .ops import ChannelAffineOp, UnsupportedLayerError
from .precision import strict_float32
from .specification import margin_spec
from .validation import (BoundInputError, DomainLike, RadiusLike, as_domain, as_radii, check_domain,
                         check_input, check_labels, check_spec)

METHODS = ("ibp", "crown-ibp", "crown")
_METHOD_ALIASES = {"ibp": "ibp", "crown-ibp": "crown-ibp", "crown_ibp": "crown-ibp", "crownibp": "crown-ibp",
                   "crown": "crown", "full-crown": "crown"}


_SHAPE_CACHE_SIZE = 64


class Bounds(NamedTuple):
    """Lower and upper bounds, radius axis first: ``[N, B, K]`` (or ``[N, B, *out]`` without ``C``)."""

    lower: torch.Tensor
    upper: Optional[torch.Tensor]


def _method(name: str) -> str:
    key = name.lower() if isinstance(name, str) else name
    if key not in _METHOD_ALIASES:
        raise BoundInputError(f"method must be one of {METHODS}, got {name!r}")
    return _METHOD_ALIASES[key]


def _check_beta(beta: Union[float, torch.Tensor]) -> float:
    b = float(beta)
    if not 0.0 <= b <= 1.0:
        raise BoundInputError(f"beta must lie in [0, 1], got {b}")
    return b


class BoundedSequential(nn.Module):
    """Wraps a model and bounds it for many radii at once.

    ``model``: an ``nn.Sequential`` (nested ones flattened) of the supported layers, or any
    ``nn.Module`` whose forward torch.fx can trace into supported nodes (residual sums, average
    pooling, ``F.relu``, ``view``, constants, ...; see ``gmbound.ops.registry``). Anything else
    raises ``UnsupportedLayerError`` naming the layer and its index (Sequential) or the node, its
    op and its source line (traced graph). ``BoundedNetwork`` is the same class.
    So does a layer that is not what its type says: a subclass replacing ``forward`` (in a
    Sequential; a traced model is traced through it), a forward hook or pre-hook (on a layer, a
    container or globally), or ``torch.nn.utils.prune`` pruning. The wrapped model's parameters
    (and layers) are read at every call: train or edit it as usual.

    Soundness: in float64 the bounds contain every output of every point of the box up to
    float64 rounding; float32 bounds can in principle be violated by a few ulps of the
    outputs' magnitude. Certify in float64 where that matters (``model.double()``).
    BatchNorm in training mode uses the statistics of the clean batch (as it normalises it).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._trace_cache: dict = {}
        build_graph(model, self._trace_cache)  # validate now, so an unsupported layer fails at construction
        self.model = model
        self._shape_cache: dict[tuple, list[tuple[int, ...]]] = {}

    # ------------------------------------------------------------------ helpers
    def _graph(self) -> BoundGraph:
        """Fresh ops each call (the trace itself is cached): they see the modules' current layers, modes and hooks."""
        if self._forward_hooks or self._forward_pre_hooks:
            raise UnsupportedLayerError(
                "the BoundedSequential has a forward hook or pre-hook: it would change net(x) but not the bounds. "
                "Remove it (handle.remove())")
        return build_graph(self.model, self._trace_cache)

    def _first_param(self) -> Optional[torch.Tensor]:
        return next(iter(self.model.parameters()), None)

    def _shapes(self, graph: BoundGraph, x: torch.Tensor) -> list[tuple[int, ...]]:
        # Keyed by the layers' shapes too: a layer replaced after a call must not reuse stale shapes.
        key = (tuple(x.shape[1:]), x.dtype, graph.signature())
        if key not in self._shape_cache:
            if len(self._shape_cache) >= _SHAPE_CACHE_SIZE:  # a model edited in a loop must not grow it forever
                self._shape_cache.clear()
            self._shape_cache[key] = graph.infer_shapes(tuple(x.shape[1:]))
        return self._shape_cache[key]

    @staticmethod
    def _clean_forward(graph: BoundGraph, x: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return graph.forward(x, update_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's ordinary output."""
        return self._clean_forward(self._graph(), x)

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, "BatchStats"]:
        """The ordinary output, and the batch statistics its training-mode BatchNorms normalised ``x`` with.

        ``interval_pass(x, ..., stats=...)`` on the very same ``x`` then bounds with those statistics
        instead of running the clean forward pass again (a trainer calls ``model(x)`` first anyway).
        """
        graph = self._graph()
        out = self._clean_forward(graph, x)
        return out, BatchStats(x, x._version, {id(op.module): op.batch_stats for op in graph.ops
                                               if isinstance(op, ChannelAffineOp) and op.uses_batch_stats})

    # ------------------------------------------------------------------ bounds
    def bounds(self, x: torch.Tensor, eps: RadiusLike, C: Optional[torch.Tensor] = None, *,
               method: str = "ibp", beta: Union[float, torch.Tensor] = 1.0,
               x_min: DomainLike = None, x_max: DomainLike = None, bound_upper: bool = True,
               backend: str = "auto", crown_chunk: Optional[int] = None, allow_tf32: bool = False) -> Bounds:
        """Bounds of ``C f(x')`` over ``||x' - x||_inf <= r`` (clipped to ``[x_min, x_max]``) for every radius.

        ``eps``: a number, a vector ``[N]`` or per-sample radii ``[N, B]``; ``C``: ``[B, K, n_out]`` or
        None for bounds of the outputs themselves. ``method``: ``"ibp"``, ``"crown-ibp"`` (IBP
        intermediate bounds, one CROWN pass from ``C``; ``beta`` mixes it with IBP:
        ``beta * CROWN-IBP + (1 - beta) * IBP``) or ``"crown"`` (full CROWN, for evaluation;
        ``crown_chunk`` identity rows are back-substituted at once, by default as many as fit the
        memory budget of ``gmbound.memory``).
        Returns ``Bounds(lower, upper)`` of shape ``[N, B, K]`` (``[N, B, *out]`` when ``C`` is None);
        ``upper`` is None when ``bound_upper=False`` (half the work). The call and the gradients
        of its bounds run with float32 products in full float32 (no TF32 on cuBLAS / cuDNN, no
        reduced precision on oneDNN; see ``gmbound.precision``) unless ``allow_tf32=True``.
        """
        if crown_chunk is not None and (isinstance(crown_chunk, bool) or not isinstance(crown_chunk, int)
                                        or crown_chunk < 1):
            raise BoundInputError(f"crown_chunk must be a positive int or None (from free memory), got {crown_chunk!r}")
        graph = self._graph()
        x, radii, lo, hi = self._prepare(x, eps, x_min, x_max)
        if any(isinstance(op, ChannelAffineOp) and op.uses_batch_stats for op in graph.ops):
            # train-mode BatchNorm: bound with this batch's statistics, leaving the running ones alone
            self._clean_forward(graph, x, update_running_stats=False)
        return self._bounds(graph, x, radii, lo, hi, C, _method(method), _check_beta(beta), bound_upper,
                            backend, crown_chunk, allow_tf32)

    def interval_pass(self, x: torch.Tensor, eps: RadiusLike, *, x_min: DomainLike = None, x_max: DomainLike = None,
                      backend: str = "auto", allow_tf32: bool = False,
                      stats: Optional["BatchStats"] = None) -> "IntervalPass":
        """Run the interval pass of one box once and keep it, for several specifications and methods.

        ``pass_.bounds(C, method=...)`` then gives what ``bounds`` gives for ``"ibp"`` and
        ``"crown-ibp"``, all calls sharing the same intermediate (pre-ReLU) intervals and their
        autograd graph: an IBP call followed by a CROWN-IBP call costs one interval pass, not two.
        This is auto_LiRPA's reuse of intermediate bounds; unlike ``bounds``, the pass is not tiled
        (its intervals are needed whole), and it sees the parameters as they were when it ran.
        ``stats``: from ``forward_with_stats`` of this very ``x`` (the same data, unmodified since),
        whose BatchNorm statistics are used instead of a second clean forward pass.
        """
        graph = self._graph()
        x, radii, lo, hi = self._prepare(x, eps, x_min, x_max)
        batch_norms = [op for op in graph.ops if isinstance(op, ChannelAffineOp) and op.uses_batch_stats]
        if stats is not None and _same_data(stats, x) and all(id(op.module) in stats.per_module for op in batch_norms):
            for op in batch_norms:
                op.batch_stats = stats.per_module[id(op.module)]
        elif batch_norms:
            self._clean_forward(graph, x, update_running_stats=False)
        return IntervalPass(self, graph, x, radii, lo, hi, backend, allow_tf32)

    def _prepare(self, x, eps, x_min, x_max):
        check_input(x, self._first_param())
        radii = as_radii(eps, x)
        lo, hi = as_domain(x_min, x, "x_min"), as_domain(x_max, x, "x_max")
        check_domain(x, lo, hi)
        return x, radii, lo, hi

    def _bounds(self, graph, x, radii, lo, hi, C, method, beta, bound_upper, backend, crown_chunk,
                allow_tf32: bool = False) -> Bounds:
        shapes = self._shapes(graph, x)
        n_out = math.prod(shapes[graph.output])
        if C is not None:
            check_spec(C, x, n_out)  # before tiling, so errors name the whole batch
        if x.shape[0] == 0:  # an empty batch: empty bounds of the right shape, on every backend
            empty = x.new_zeros((radii.shape[0], 0) + ((C.shape[1],) if C is not None else shapes[graph.output]))
            return Bounds(empty, empty.clone() if bound_upper else None)
        k = (C.shape[1] if C is not None else n_out) * (2 if bound_upper else 1)
        crown = method != "ibp"
        tiles = chunking.plan(radii.shape[0], x.shape[0], chunking.row_bytes(shapes, k, crown, x.element_size()),
                              tile_budget(x.device), chunking.MIN_ROWS if crown else chunking.MIN_ROWS_INTERVALS)

        def bound(x_, radii_, lo_, hi_, C_):
            return self._bounds_strict(graph, x_, radii_, lo_, hi_, C_, method, beta, bound_upper, backend, crown_chunk)

        group = tiles.radii
        if method == "crown-ibp":
            group = chunking.radii_per_interval_pass(tiles, radii.shape[0], x.shape[0],
                                                     chunking.row_bytes(shapes, k, False, x.element_size()),
                                                     tile_budget(x.device))

        def bound_group(x_, radii_, lo_, hi_, C_):
            # one interval pass for the group's radii, then CROWN-IBP per tile of them on its slices
            prims = get_primitives(backend, x_.device)
            state = propagation.relu_intervals(graph, prims.input_box(x_, radii_, lo_, hi_), prims)
            parts = [self._bounds_strict(graph, x_, radii_[n0:n0 + tiles.radii], lo_, hi_, C_, method, beta,
                                         bound_upper, backend, crown_chunk, state.radii(n0, n0 + tiles.radii))
                     for n0 in range(0, radii_.shape[0], tiles.radii)]
            upper = None if parts[0].upper is None else torch.cat([p.upper for p in parts])
            return torch.cat([p.lower for p in parts]), upper
        with strict_float32(not allow_tf32):
            if group > tiles.radii:
                return Bounds(*chunking.run_tiled(bound_group, chunking.Tiles(group, x.shape[0]), x, radii, lo, hi, C))
            return Bounds(*chunking.run_tiled(bound, tiles, x, radii, lo, hi, C))

    def _bounds_strict(self, graph, x, radii, lo, hi, C, method, beta, bound_upper, backend,
                       crown_chunk, state: Optional[propagation.IntervalState] = None) -> Bounds:
        shapes = self._shapes(graph, x)
        out_shape = shapes[graph.output]
        n_out = 1
        for s in out_shape:
            n_out *= s
        prims = get_primitives(backend, x.device)
        box = None if state is not None else prims.input_box(x, radii, lo, hi)
        if C is None:
            if method == "ibp":  # plain intervals all the way: no specification needed
                lower, upper = propagation.output_intervals(graph, box, prims, state)
                return Bounds(lower, upper if bound_upper else None)
            spec = torch.eye(n_out, dtype=x.dtype, device=x.device).expand(x.shape[0], n_out, n_out)
        else:
            check_spec(C, x, n_out)
            spec = C
        k = spec.shape[1]
        if bound_upper:
            spec = torch.cat([spec, -spec], dim=1)
        spec = spec.reshape(spec.shape[:2] + out_shape)
        if method == "crown":
            lb = propagation.full_crown_bounds(graph, shapes, box, spec, prims, crown_chunk)
        else:
            want_crown = method == "crown-ibp" and beta > 0
            want_ibp = method == "ibp" or beta < 1
            res = propagation.spec_bounds(graph, shapes, box, spec, prims, want_ibp, want_crown, state)
            if not want_crown:
                lb = res.ibp
            elif not want_ibp:
                lb = res.crown
            else:
                lb = beta * res.crown + (1 - beta) * res.ibp
        lower = lb[..., :k]
        upper = -lb[..., k:] if bound_upper else None
        if C is None:
            lower = lower.reshape(lower.shape[:2] + out_shape)
            upper = upper.reshape(upper.shape[:2] + out_shape) if upper is not None else None
        return Bounds(lower, upper)

    def margin_bounds(self, x: torch.Tensor, y: torch.Tensor, eps: RadiusLike, *, method: str = "crown-ibp",
                      beta: Union[float, torch.Tensor] = 1.0, x_min: DomainLike = None,
                      x_max: DomainLike = None, backend: str = "auto", allow_tf32: bool = False) -> torch.Tensor:
        """Certified lower bounds ``m(x, r)`` of the margins ``f_y - f_j`` (``j != y``, ascending): ``[N, B, n - 1]``."""
        return self.logits_and_margins(x, y, eps, method=method, beta=beta, x_min=x_min, x_max=x_max,
                                       backend=backend, allow_tf32=allow_tf32)[1]

    def _labelled_logits(self, graph: BoundGraph, x: torch.Tensor, y: torch.Tensor, what: str) -> torch.Tensor:
        """The clean logits ``[B, n]`` (first, so train-mode BatchNorm bounds with this batch's
        statistics), after checking that they are 2-D and that ``y`` labels them."""
        logits = self._clean_forward(graph, x)
        if logits.dim() != 2:
            raise BoundInputError(f"{what} need logits [B, n_classes] from the model; it outputs {tuple(logits.shape)}")
        check_labels(y, x, logits.shape[1])
        return logits

    def logits_and_margins(self, x: torch.Tensor, y: torch.Tensor, eps: RadiusLike, *,
                           method: str = "crown-ibp", beta: Union[float, torch.Tensor] = 1.0,
                           x_min: DomainLike = None, x_max: DomainLike = None,
                           backend: str = "auto", allow_tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean logits ``f(x)`` ``[B, n]`` and the margin lower bounds ``[N, B, n - 1]`` in one go.

        The clean pass runs first, so train-mode BatchNorm layers bound with this batch's statistics.
        ``allow_tf32`` as in :meth:`bounds`.
        """
        graph = self._graph()
        x, radii, lo, hi = self._prepare(x, eps, x_min, x_max)
        logits = self._labelled_logits(graph, x, y, "margin bounds")
        spec = margin_spec(y, logits.shape[1], dtype=x.dtype)
        margins = self._bounds(graph, x, radii, lo, hi, spec, _method(method), _check_beta(beta), False,
                               backend, None, allow_tf32).lower
        return logits, margins


    def fused_cross_entropy(self, x: torch.Tensor, y: torch.Tensor, eps: RadiusLike, *, method: str = "crown-ibp",
                            beta: Union[float, torch.Tensor] = 1.0, x_min: DomainLike = None,
                            x_max: DomainLike = None, backend: str = "auto",
                            allow_tf32: bool = False) -> "FusedCrossEntropy":
        """Loss fusion: upper bounds of ``max CE(f(x'), y)`` over each box with one CROWN-IBP row per (radius, sample).

        ``method`` ``"crown-ibp"`` (mixed with the IBP bound by ``beta``, see
        ``specification.fused_cross_entropy_bound``) or ``"ibp"`` (``log(1 + sum_j exp(u_j))``, equal to the
        cross-entropy of the IBP robust logits). The clean pass runs first (train-mode BatchNorm bounds with
        this batch's statistics); the bound is never below the clean cross-entropy (``x`` is in the box).
        """
        method = _method(method)
        if method == "crown":
            raise BoundInputError("loss fusion serves method 'ibp' or 'crown-ibp' (training bounds); full CROWN "
                                  "bounds the margins: use margin_bounds(..., method='crown')")
        beta = _check_beta(beta)
        graph = self._graph()
        x, radii, lo, hi = self._prepare(x, eps, x_min, x_max)
        logits = self._labelled_logits(graph, x, y, "loss fusion bounds")
        n_classes = logits.shape[1]
        if n_classes < 2:
            raise BoundInputError("loss fusion needs at least 2 classes")
        spec = margin_spec(y, n_classes, dtype=x.dtype)
        crown = method == "crown-ibp" and beta > 0
        shapes = self._shapes(graph, x)
        if x.shape[0] == 0:
            empty = x.new_zeros((radii.shape[0], 0))
            return FusedCrossEntropy(logits, empty, empty.clone())
        # Lambda of the CROWN pass has one row; the IBP fold's 2 (n - 1) rows live on the last layers only
        tiles = chunking.plan(radii.shape[0], x.shape[0], chunking.row_bytes(shapes, 1, crown, x.element_size()),
                              tile_budget(x.device), chunking.MIN_ROWS if crown else chunking.MIN_ROWS_INTERVALS)
        group = tiles.radii
        if crown:
            group = chunking.radii_per_interval_pass(tiles, radii.shape[0], x.shape[0],
                                                     chunking.row_bytes(shapes, 1, False, x.element_size()),
                                                     tile_budget(x.device))

        def bound_group(x_, radii_, lo_, hi_, spec_):
            # one interval pass for the group's radii, then the fused bound per CROWN tile of them
            prims = get_primitives(backend, x_.device)
            state = propagation.relu_intervals(graph, prims.input_box(x_, radii_, lo_, hi_), prims)
            y_ = _labels_of(spec_)
            parts = [propagation.fused_cross_entropy_bounds(graph, shapes, None, spec_, y_, prims, beta, crown,
                                                            state.radii(n0, n0 + tiles.radii))
                     for n0 in range(0, radii_.shape[0], tiles.radii)]
            return torch.cat(parts), None
        with strict_float32(not allow_tf32):
            out, _ = chunking.run_tiled(bound_group, chunking.Tiles(max(group, tiles.radii), tiles.samples),
                                        x, radii, lo, hi, spec)
        clean_ce = torch.nn.functional.cross_entropy(logits, y.long(), reduction="none")
        # x lies in every box, so CE(f(x), y) <= max CE: a floor that only rounding of the CROWN row can undercut
        return FusedCrossEntropy(logits, torch.maximum(out[..., 0], clean_ce), out[..., 1])


def _same_data(stats: "BatchStats", x: torch.Tensor) -> bool:
    """``x`` has the memory, layout, dtype and device of the input of ``stats``, not written to since
    (views of one tensor, e.g. a BoundedTensor's ``plain()`` taken twice, share memory and version)."""
    a = stats.x
    return (a.device == x.device and a.dtype == x.dtype and a.shape == x.shape and a.stride() == x.stride()
            and a.data_ptr() == x.data_ptr() and x._version == stats.version)


def _labels_of(spec: torch.Tensor) -> torch.Tensor:
    """The labels of a ``margin_spec`` (the column holding +1 in every row): ``[B]``."""
    return spec[:, 0].argmax(-1)


class FusedCrossEntropy(NamedTuple):
    """``BoundedSequential.fused_cross_entropy``: clean logits ``[B, n]``, the upper bounds of the worst-case
    cross-entropy ``[N, B]`` and the IBP upper bound of ``max_j (f_j - f_y)`` ``[N, B]`` (``< 0``: IBP-verified)."""

    logits: torch.Tensor
    bound: torch.Tensor
    ibp_max_z: torch.Tensor


class BatchStats(NamedTuple):
    """The batch statistics (mean, biased variance) of each training-mode BatchNorm module for input ``x``."""

    x: torch.Tensor
    version: int        # x._version when the statistics were taken: an in-place write since voids them
    per_module: dict


class IntervalPass:
    """The kept interval pass of one input box (``BoundedSequential.interval_pass``)."""

    def __init__(self, net: BoundedSequential, graph: BoundGraph, x: torch.Tensor, radii: torch.Tensor,
                 lo: Optional[torch.Tensor], hi: Optional[torch.Tensor], backend: str, allow_tf32: bool):
        self._net, self._graph, self._x, self._radii, self._lo, self._hi = net, graph, x, radii, lo, hi
        self._backend, self._allow_tf32 = backend, allow_tf32
        self._state: Optional[propagation.IntervalState] = None
        if x.shape[0] > 0:  # an empty batch has no pass to keep (bounds() returns empty bounds)
            prims = get_primitives(backend, x.device)
            with strict_float32(not allow_tf32):
                self._state = propagation.relu_intervals(graph, prims.input_box(x, radii, lo, hi), prims)

    def bounds(self, C: Optional[torch.Tensor] = None, *, method: str = "ibp", beta: Union[float, torch.Tensor] = 1.0,
               bound_upper: bool = True) -> Bounds:
        """As ``BoundedSequential.bounds`` on the kept box, for ``method`` ``"ibp"`` or ``"crown-ibp"``."""
        method = _method(method)
        if method == "crown":
            raise BoundInputError("an interval pass serves method 'ibp' or 'crown-ibp'; full CROWN computes its "
                                  "own intermediate bounds: call bounds(..., method='crown')")
        beta = _check_beta(beta)
        if self._state is None:
            return self._net._bounds(self._graph, self._x, self._radii, self._lo, self._hi, C, method, beta,
                                     bound_upper, self._backend, None, self._allow_tf32)
        with strict_float32(not self._allow_tf32):  # _bounds_strict checks C
            return self._net._bounds_strict(self._graph, self._x, self._radii, self._lo, self._hi, C, method, beta,
                                            bound_upper, self._backend, None, self._state)


def compute_bounds(model: nn.Module, x: torch.Tensor, eps: RadiusLike, C: Optional[torch.Tensor] = None,
                   **kwargs) -> Bounds:
    """Functional form of ``BoundedSequential(model).bounds(x, eps, C, **kwargs)``."""
    net = model if isinstance(model, BoundedSequential) else BoundedSequential(model)
    return net.bounds(x, eps, C, **kwargs)


BoundedNetwork = BoundedSequential  # the same class: it bounds any supported nn.Module, not only Sequentials
