"""``BoundedModule``: auto_LiRPA's front door over gmbound's ``BoundedSequential``.

``compute_bounds`` returns auto_LiRPA's shapes (``[B, K]``, no radius axis) and follows its rule
for intermediate bounds (see ``compute_bounds``); the methods named ``gm_*`` are gmbound's
extensions (several radii in one pass, the GM loss) and do not exist in auto_LiRPA.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import nn

from ..bounded import BoundedSequential
from ..losses import GMLossResult, WeightShape, gm_loss as _native_gm_loss
from ..network import LinearOp, UnsupportedLayerError, build_graph
from ..ops.registry import supported_layers
from ..validation import BoundInputError
from . import loss_fusion as fusion
from ._box import native_box, nested_boxes
from ._lirpa_state import is_lirpa_state_dict, translate_lirpa_state_dict
from ._node_graph import build_node_graph
from .bound_ops import Bound, BoundExp
from .bounded_tensor import BoundedTensor
from .errors import UnsupportedFeatureError
from .perturbations import PerturbationLpNorm, is_default

SUPPORTED_LAYERS = supported_layers()

# auto_LiRPA method names (case-insensitive) -> gmbound's, and those outside the subset.
_IBP_NAMES = ("ibp",)
_CROWN_IBP_NAMES = ("crown-ibp", "ibp+backward", "ibp+crown", "crown_ibp")
_BACKWARD_NAMES = ("backward", "crown")
_OUTSIDE_METHODS = ("forward", "forward+backward", "crown-optimized", "alpha-crown", "dynamic-forward",
                    "dynamic-forward+backward", "forward+crown")
SUPPORTED_METHODS = ("IBP", "CROWN-IBP", "IBP+backward", "CROWN", "backward", "None (with IBP=True)")

# bound_opts that only tune auto_LiRPA's speed or memory: accepted and ignored.
_PERFORMANCE_OPTS = {"conv_mode", "sparse_intermediate_bounds", "sparse_conv_intermediate_bounds",
                     "sparse_intermediate_bounds_with_ibp", "sparse_features_alpha", "sparse_spec_alpha",
                     "deterministic", "verbosity", "optimize_bound_args", "crown_batch_size", "final_shape",
                     "use_full_conv_alpha", "disabled_optimization", "minimum_sparsity",
                     "use_full_conv_alpha_thresh", "forward_max_dim", "optimize_graph"}
# bound_opts that change the bounds, with the values gmbound computes (None: auto_LiRPA's default).
_RELU_WHAT = "CROWN-IBP's adaptive lower slope (1 if u > -l else 0)"
_SEMANTIC_OPTS = {"activation_bound_option": ((None, "adaptive"), _RELU_WHAT),
                  "relu": ((None, "adaptive"), _RELU_WHAT),
                  "ibp_relative": ((None, False), "absolute intervals"),
                  "loss_fusion": ((None, False, True), "loss fusion with a CrossEntropyWrapper"),
                  "compare_crown_with_ibp": ((None, False), "CROWN bounds as they are"),
                  "forward_refinement": ((None, False), "no forward refinement"),
                  "enable_opt_interm_bounds": ((None, False), "no optimised intermediate bounds"),
                  "bound_every_node": ((None, False), "bounds of the needed nodes only"),
                  "forward_before_compute_bounds": ((None, False), "no extra forward pass"),
                  "clip_in_alpha_crown": ((None, False), "no alpha-CROWN")}


def resolve_method(method: Optional[str], IBP: bool = False, forward: bool = False) -> str:
    """gmbound's method (``"ibp"``, ``"crown-ibp"``, ``"crown"``) for auto_LiRPA's ``method``/``IBP``/``forward``.

    As in auto_LiRPA: ``"backward"``/``"CROWN"`` take their intermediate bounds from IBP when
    ``IBP=True`` (that is CROWN-IBP) and from CROWN otherwise; ``method=None`` with ``IBP=True`` is
    IBP. (``BoundedModule.compute_bounds`` also reuses an earlier IBP call's intermediate bounds.)
    """
    if forward:
        raise UnsupportedFeatureError("forward-mode bounds (forward=True) are outside gmbound.compat's subset; "
                                      f"use one of {SUPPORTED_METHODS}")
    if method is None:
        if IBP:
            return "ibp"
        raise BoundInputError("method=None computes no bound unless IBP=True; "
                              "pass method='IBP', 'CROWN-IBP' or 'CROWN'")
    if not isinstance(method, str):
        raise BoundInputError(f"method must be a string or None, got {type(method).__name__}")
    key = method.strip().lower()
    if key in _IBP_NAMES:
        return "ibp"
    if key in _CROWN_IBP_NAMES:
        return "crown-ibp"
    if key in _BACKWARD_NAMES:
        return "crown-ibp" if IBP else "crown"
    if key in _OUTSIDE_METHODS:
        raise UnsupportedFeatureError(f"method={method!r} is an auto_LiRPA method outside gmbound.compat's subset; "
                                      f"use one of {SUPPORTED_METHODS}")
    raise BoundInputError(f"unknown method {method!r}; gmbound.compat supports {SUPPORTED_METHODS}")


def _split_method(method: Optional[str], IBP: bool, forward: bool) -> tuple[bool, bool]:
    """auto_LiRPA's ``(method, IBP)`` as ``(run IBP, then run a backward pass)``."""
    gm = resolve_method(method, IBP, forward)
    if gm == "ibp":
        return True, False
    if gm == "crown-ibp":
        return True, True
    return False, True


def check_bound_opts(bound_opts: Optional[dict]) -> dict:
    """Accept the options that do not change the bounds (or that ask for what gmbound computes)."""
    opts = dict(bound_opts or {})
    for key, value in opts.items():
        if key in _SEMANTIC_OPTS:
            allowed, what = _SEMANTIC_OPTS[key]
            plain = value.lower() if isinstance(value, str) else value
            if not any(plain == a and type(plain) is type(a) for a in allowed):
                raise UnsupportedFeatureError(
                    f"bound_opts[{key!r}]={value!r} is outside gmbound.compat's subset; gmbound computes "
                    f"{what} (accepted values: {[a for a in allowed]})")
        elif key not in _PERFORMANCE_OPTS:
            warnings.warn(f"gmbound.compat ignores bound_opts[{key!r}] (unknown to it)", stacklevel=3)
    return opts


def _sides(bound, C, bound_lower: bool, bound_upper: bool):
    """``(lower or None, upper or None)`` from ``bound(C, bound_upper) -> Bounds``.

    Upper bounds alone are the negated lower bounds of ``-C`` (what gmbound does for its upper bound).
    """
    if bound_lower or C is None:
        b = bound(C, bound_upper)
        return (b.lower if bound_lower else None), (b.upper if bound_upper else None)
    if not isinstance(C, torch.Tensor):
        raise BoundInputError(f"C must be a torch.Tensor, got {type(C).__name__}")
    return None, -bound(-C, False).lower


def _flat_inputs(inputs) -> list:
    """auto_LiRPA's input forms (``x``, ``(x,)``, ``(x, labels)``, nested) as a flat list."""
    if isinstance(inputs, (tuple, list)):
        out = []
        for item in inputs:
            out.extend(_flat_inputs(item))
        return out
    return [inputs]


class BoundedModule(nn.Module):
    """auto_LiRPA's ``BoundedModule`` for models of gmbound's layers.

    ``BoundedModule(model, global_input, bound_opts=None, device="auto")``. ``model``: an
    ``nn.Sequential`` (nested ones allowed) of the layers in ``SUPPORTED_LAYERS``, any ``nn.Module``
    whose forward torch.fx traces into them and the functions of
    ``gmbound.ops.registry.supported_functions()`` (residual sums, average pooling, ``view``, ...),
    or a ``CrossEntropyWrapper`` of one with ``bound_opts={"loss_fusion": True}``; anything else
    raises ``gmbound.UnsupportedLayerError`` naming the layer or traced node. The model's own
    modules are registered under their own names, so ``parameters()``, ``state_dict()`` and
    ``train()``/``eval()`` act on the model itself (a ``state_dict`` saved here loads into the plain
    model and back; an auto_LiRPA ``BoundedModule`` state_dict, keys ``"/N.param"``, loads too).

    * ``model(x)``: the ordinary output; a ``BoundedTensor`` input also becomes the input that
      ``compute_bounds(x=None)`` bounds (as in auto_LiRPA).
    * ``compute_bounds(x=(x,), C=C, method=..., IBP=..., bound_lower=, bound_upper=)`` -> ``(lb, ub)``,
      each ``[B, K]`` (``[B, *out]`` without ``C``), None where not asked for.
    * The graph, as auto_LiRPA names it: ``final_name``, ``final_node()``, ``output_name``,
      ``input_name``, ``model[name]`` (nodes of ``gmbound.compat.bound_ops``).
    * ``gm_loss(x, y, n_radii=, weights=, kappa=, beta=, method=)`` and ``gm_bounds(...)``:
      gmbound's multi-radius extensions.
    """

    def __init__(self, model: nn.Module, global_input=None, bound_opts: Optional[dict] = None,
                 auto_batch_dim: bool = True, device: Union[str, torch.device] = "auto", verbose: bool = False,
                 custom_ops: Optional[dict] = None):
        super().__init__()
        if isinstance(model, (BoundedModule, BoundedSequential)):
            model = model.original_model if isinstance(model, BoundedModule) else model.model
        if custom_ops:
            raise UnsupportedFeatureError("custom_ops are outside gmbound.compat's subset (it bounds a fixed set "
                                          f"of layers: {', '.join(SUPPORTED_LAYERS)})")
        if not auto_batch_dim:
            raise UnsupportedFeatureError("auto_batch_dim=False is outside gmbound.compat's subset "
                                          "(the batch axis is always the first)")
        self.bound_opts = check_bound_opts(bound_opts)
        wrapper = isinstance(model, fusion.CrossEntropyWrapper)
        if wrapper and not self.bound_opts.get("loss_fusion"):
            raise UnsupportedFeatureError(
                "gmbound.compat bounds a CrossEntropyWrapper only with bound_opts={'loss_fusion': True} (loss "
                "fusion, auto_LiRPA's way to train with it); bound the model itself otherwise")
        inner = model.model if wrapper else model
        try:
            net = BoundedSequential(inner)
        except UnsupportedLayerError as err:
            raise UnsupportedLayerError(f"gmbound.compat.BoundedModule: {err}") from err
        if device != "auto":
            model.to(device)
        for name, child in model.named_children():
            self.add_module(name, child)
        # Kept outside the module registry so that parameters and state_dict keys are the model's own.
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_net", net)
        self._fusion = wrapper
        bound_graph = build_graph(inner)
        self._last_is_linear = isinstance(bound_graph.nodes[bound_graph.output].op, LinearOp)
        graph = build_node_graph(inner, "model." if wrapper else "", loss_fusion_wrapper=wrapper,
                                 bound_graph=bound_graph)
        for name, node in graph.items():
            self.add_module(name, node)
        self._node_names = list(graph)
        self._model_output_name = [n for n in graph if graph[n].layer is not None][-1]
        self._reset()
        self._input: Optional[list] = None
        if global_input is not None:
            self._check_global_input(global_input)

    # ------------------------------------------------------------------ the graph, auto_LiRPA's names
    @property
    def final_name(self) -> str:
        """Name of the output node (for a loss-fusion wrapper: the sum, not the model's logits)."""
        return self._node_names[-1]

    @property
    def output_name(self) -> list[str]:
        return [self.final_name]

    @property
    def input_name(self) -> list[str]:
        return [n for n in self._node_names if not self._modules[n].input_name]

    @property
    def root_names(self) -> list[str]:
        return self.input_name

    def final_node(self) -> Bound:
        return self._modules[self.final_name]

    def nodes(self) -> list[Bound]:
        return [self._modules[n] for n in self._node_names]

    def __getitem__(self, name: str) -> Bound:
        if name not in self._node_names:
            raise KeyError(f"no node named {name!r}; the nodes are {self._node_names}")
        return self._modules[name]

    def _exp_node(self) -> Optional[BoundExp]:
        return next((n for n in self.nodes() if isinstance(n, BoundExp)), None)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (CPU for a model without any)."""
        param = next(self._model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def original_model(self) -> nn.Module:
        """The wrapped model (its parameters are this module's parameters)."""
        return self._model

    @property
    def bounded_sequential(self) -> BoundedSequential:
        """gmbound's native wrapper of the (inner) Sequential: ``.bounds`` with the radius axis, ..."""
        return self._net

    def _check_global_input(self, global_input) -> None:
        x = self._split_inputs(global_input, check_labels=False)[0]
        try:
            build_graph(self._net.model).infer_shapes(tuple(x.shape[1:]))
        except ValueError as err:
            raise BoundInputError(f"global_input of shape {tuple(x.shape)} does not fit the model: {err}") from None

    def train(self, mode: bool = True) -> "BoundedModule":
        super().train(mode)
        self._model.train(mode)
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load the model's own keys, or an auto_LiRPA ``BoundedModule``'s (``"/N.param"``, ``"/N.buffer"``)."""
        if is_lirpa_state_dict(state_dict):
            state_dict = translate_lirpa_state_dict(state_dict, self.state_dict())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ inputs
    def _reset(self) -> None:
        """Forget the intermediate bounds of the last input (auto_LiRPA clears them on a new input)."""
        self._interm: Optional[str] = None     # kind of intermediate bounds held: None, "ibp" or "crown"
        self._ibp_cache: Optional[tuple] = None
        self._z_box: Optional[tuple] = None    # loss fusion: the IBP interval of z = y - y_label
        self._pass = None                      # the input's interval pass (gmbound.bounded.IntervalPass)
        self._stats = None                     # BatchNorm statistics of model(x) on this input (BatchStats)

    def _split_inputs(self, inputs, check_labels: bool = True) -> list:
        flat = _flat_inputs(inputs)
        wanted = 2 if self._fusion else 1
        if len(flat) != wanted:
            what = "(x, labels)" if self._fusion else "a single input"
            raise UnsupportedFeatureError(f"gmbound.compat bounds single-input models (a CrossEntropyWrapper: x and "
                                          f"labels); this one takes {what}, got {len(flat)} inputs")
        if not isinstance(flat[0], torch.Tensor):
            raise BoundInputError(f"the model input must be a tensor or BoundedTensor, got {type(flat[0]).__name__}")
        if self._fusion and check_labels:
            n_out = self._n_classes(flat[0])
            flat[1] = fusion.check_labels_for(flat[1], flat[0].shape[0], n_out)
        return flat

    def _n_classes(self, x: torch.Tensor) -> int:
        graph = build_graph(self._net.model)
        return graph.infer_shapes(tuple(x.shape[1:]))[graph.output][-1]

    def _set_input(self, inputs) -> list:
        flat = self._split_inputs(inputs)
        self._input = flat
        self._reset()
        return [t.plain() if isinstance(t, BoundedTensor) else t for t in flat]

    def _current(self) -> tuple[torch.Tensor, Optional[PerturbationLpNorm]]:
        if self._input is None:
            raise BoundInputError("no input yet: pass x=(BoundedTensor(x, ptb),) or call model(x) first")
        x = self._input[0]
        if isinstance(x, BoundedTensor):
            return x.plain(), x.ptb
        return x, None

    def _labels(self) -> torch.Tensor:
        return self._input[1]

    def _target(self, final_node_name: Optional[str]) -> str:
        """``"output"`` (the graph's output) or ``"logits"`` (a loss-fusion wrapper's model output)."""
        if final_node_name is None or final_node_name == self.final_name:
            return "output"
        if self._fusion and final_node_name == self._model_output_name:
            return "logits"
        raise UnsupportedFeatureError(
            f"final_node_name={final_node_name!r}: gmbound.compat bounds the output node {self.final_name!r}"
            + (f" or the wrapped model's output {self._model_output_name!r}" if self._fusion else "")
            + ", not intermediate nodes")

    def forward(self, *inputs, method_opt: Optional[str] = None, final_node_name: Optional[str] = None, **kwargs):
        """``model(x)``: the model's output. ``model(method_opt="compute_bounds", ...)`` is ``compute_bounds(...)``.

        A loss-fusion wrapper takes ``(x, labels)`` and returns ``sum_j exp(z_j - max_j z_j)``
        (``[B, 1]``, as auto_LiRPA's fused graph), or the model's logits with
        ``final_node_name=`` the model's output node.
        """
        for key in ("disable_multi_gpu", "no_replicas", "clear_forward_only", "get_property", "node_class",
                    "att_name"):
            kwargs.pop(key, None)
        if method_opt == "compute_bounds":
            return self.compute_bounds(final_node_name=final_node_name, **kwargs)
        if method_opt not in (None, "forward"):
            raise UnsupportedFeatureError(f"method_opt={method_opt!r} is outside gmbound.compat's subset "
                                          "(it knows 'forward' and 'compute_bounds')")
        if kwargs:
            raise UnsupportedFeatureError(f"forward argument(s) {sorted(kwargs)} are outside gmbound.compat's subset")
        target = self._target(final_node_name)
        plain = self._set_input(inputs)
        if not self._fusion:
            out, self._stats = self._net.forward_with_stats(plain[0])
            return out
        y, self._stats = self._net.forward_with_stats(plain[0])
        if target == "logits":
            return y
        out, m = fusion.fused_forward(y, plain[1])
        self._exp_node().max_input = m
        return out

    # ------------------------------------------------------------------ bounds
    def _check_own_hooks(self) -> None:
        """A hook on this wrapper changes ``model(x)`` but not the bounds (the model's own are checked natively)."""
        if self._forward_hooks or self._forward_pre_hooks:
            raise UnsupportedLayerError("gmbound.compat.BoundedModule has a forward hook or pre-hook: it would change "
                                        "model(x) but not the bounds. Remove it (handle.remove())")

    def _radius_bounds(self, x, eps, x_min, x_max, C, method, beta, bound_lower, bound_upper):
        """gmbound's bounds with the radius axis kept; the lower or upper one None where not wanted."""
        self._check_own_hooks()
        return _sides(lambda C_, upper: self._net.bounds(x, eps, C_, method=method, beta=beta, x_min=x_min,
                                                          x_max=x_max, bound_upper=upper),
                      C, bound_lower, bound_upper)

    def _one_box(self, C, method, bound_lower, bound_upper):
        """Bounds ``[B, K]`` of ``C f`` on the current input's box.

        An IBP call runs the interval pass of the input and keeps it (``gmbound.bounded.IntervalPass``);
        a CROWN-IBP call reads the kept one, so the IBP call and the CROWN-IBP call after it share
        their intermediate bounds, as in auto_LiRPA: one interval pass, one autograd graph through it.
        """
        plain, ptb = self._current()
        eps, x_min, x_max = native_box(plain, ptb)
        if method == "crown":
            lower, upper = self._radius_bounds(plain, eps, x_min, x_max, C, method, 1.0, bound_lower, bound_upper)
        else:
            self._check_own_hooks()
            if method == "ibp" or self._pass is None:
                self._pass = self._net.interval_pass(plain, eps, x_min=x_min, x_max=x_max, stats=self._stats)
            lower, upper = _sides(lambda C_, upper: self._pass.bounds(C_, method=method, bound_upper=upper),
                                  C, bound_lower, bound_upper)
        return (lower[0] if lower is not None else None, upper[0] if upper is not None else None)

    def compute_bounds(self, x=None, aux=None, C: Optional[torch.Tensor] = None, method: Optional[str] = "backward",
                       IBP: bool = False, forward: bool = False, bound_lower: bool = True, bound_upper: bool = True,
                       reuse_ibp: bool = False, return_A: bool = False, final_node_name: Optional[str] = None,
                       **kwargs):
        """Bounds of ``C f`` over the input's box, as auto_LiRPA returns them: ``(lb, ub)``, each ``[B, K]``.

        ``x``: ``(BoundedTensor,)`` (or the tensor itself; ``(x, labels)`` for a loss-fusion
        wrapper), or None to reuse the last input (from ``model(x)`` or an earlier call).
        ``method``: ``"IBP"``; ``"CROWN-IBP"`` (also ``"IBP+backward"``); ``"CROWN"``/``"backward"``;
        None with ``IBP=True`` (IBP). ``C``: ``[B, K, n_out]`` or None (bounds of the outputs). A side
        not asked for (``bound_lower``/``bound_upper`` False) is returned as None.

        Intermediate bounds follow auto_LiRPA's rule: they belong to the input and are kept until
        a new input arrives (``model(x)`` or ``x=`` here). So a ``"backward"`` call takes them from
        IBP when ``IBP=True`` **or when an earlier call on the same input ran IBP**: the trainers'
        pair ``compute_bounds(IBP=True, C=c, method=None)`` then
        ``compute_bounds(IBP=False, C=c, method="backward")`` gives IBP, then CROWN-IBP (not full
        CROWN). A ``"backward"`` call on a fresh input runs full CROWN. As in auto_LiRPA, the
        reused intermediate bounds are those the IBP call computed (with the parameters of that
        moment), kept with their autograd graph, not recomputed.
        ``reuse_ibp=True`` with ``method=None, IBP=True`` returns the previous IBP bounds of the same
        input and ``C``.
        """
        if not bound_lower and not bound_upper:
            raise BoundInputError("at least one of bound_lower and bound_upper must be True")
        if aux is not None:
            raise UnsupportedFeatureError("aux is outside gmbound.compat's subset (it is for non-L-inf perturbations)")
        if return_A:
            raise UnsupportedFeatureError("return_A=True (linear coefficients) is outside gmbound.compat's subset")
        unused = [k for k, v in kwargs.items() if not is_default(v)]
        if unused:
            raise UnsupportedFeatureError(f"compute_bounds argument(s) {sorted(unused)} are outside gmbound.compat's "
                                          "subset")
        run_ibp, run_backward = _split_method(method, IBP, forward)
        target = self._target(final_node_name)
        if x is not None:
            self._set_input(x)
        self._current()  # an input is needed from here on
        if self._fusion and target == "output":
            return self._fused_bounds(C, run_ibp, run_backward, bound_lower, bound_upper, reuse_ibp)
        result = None
        if run_ibp:
            if reuse_ibp and not run_backward and self._ibp_cache is not None and self._ibp_cache[0] is C:
                return self._ibp_cache[1]
            if self._interm == "crown":
                raise UnsupportedFeatureError(
                    "IBP after a CROWN call on the same input: auto_LiRPA would propagate intervals from the "
                    "CROWN intermediate bounds it keeps, which gmbound.compat does not reproduce; pass the "
                    "input again (x=...) to start from fresh intermediate bounds")
            result = self._one_box(C, "ibp", bound_lower, bound_upper)
            self._interm = "ibp"
            self._ibp_cache = (C, result)
        if not run_backward:
            return result
        if self._interm == "ibp":
            return self._one_box(C, "crown-ibp", bound_lower, bound_upper)
        self._interm = "crown"
        return self._one_box(C, "crown", bound_lower, bound_upper)

    def _fused_bounds(self, C, run_ibp, run_backward, bound_lower, bound_upper, reuse_ibp):
        """Bounds ``[B, 1]`` of a loss-fusion wrapper's output (see ``gmbound.compat.loss_fusion``)."""
        if C is not None:
            raise UnsupportedFeatureError("loss fusion bounds the fused loss itself: pass C=None (the wrapped model's "
                                          f"logits take C with final_node_name={self._model_output_name!r})")
        exp_node = self._exp_node()
        if run_ibp:
            if reuse_ibp and not run_backward and self._ibp_cache is not None:
                return self._ibp_cache[1]
            if self._interm == "crown":
                raise UnsupportedFeatureError("IBP after a CROWN call on the same input is outside gmbound.compat's "
                                              "subset; pass the input again (x=...)")
            self._z_box = self._difference_interval()
            lower, upper, exp_node.max_input = fusion.exp_sum_interval(*self._z_box)
            self._interm = "ibp"
            result = (lower if bound_lower else None, upper if bound_upper else None)
            self._ibp_cache = (None, result)
            if not run_backward:
                return result
        if self._z_box is None:
            raise UnsupportedFeatureError(
                "loss fusion with full CROWN (a 'backward' call without an IBP call on the same input) is outside "
                "gmbound.compat's subset; use CROWN-IBP: compute_bounds(IBP=True, method='backward', ...) or an IBP "
                "call first")
        if bound_lower:
            raise UnsupportedFeatureError("loss fusion's backward pass bounds the loss from above only: pass "
                                          "bound_lower=False, bound_upper=True")
        upper, exp_node.max_input = fusion.fused_crown_upper(self._z_box, self._labels(), self._logit_upper)
        return None, upper

    def _difference_interval(self):
        """IBP interval of ``z = y - y_label`` ``[B, n]``, as auto_LiRPA's loss-fusion IBP computes it."""
        plain, _ = self._current()
        labels = self._labels()
        if self._last_is_linear:  # the label subtraction folded into the last Linear layer
            spec = fusion.difference_spec(labels, self._n_classes(plain), plain.dtype)
            return self._one_box(spec, "ibp", True, True)
        lower, upper = self._one_box(None, "ibp", True, True)
        return fusion.difference_interval_from_logits(lower, upper, labels)

    def _logit_upper(self, spec: torch.Tensor) -> torch.Tensor:
        """CROWN-IBP upper bound ``[B, K]`` of ``spec . y`` on the current box (IBP intermediate bounds)."""
        return self._one_box(spec, "crown-ibp", False, True)[1]

    # ------------------------------------------------------------------ gmbound's extensions
    def _no_fusion(self, what: str) -> None:
        if self._fusion:
            raise UnsupportedFeatureError(f"{what} bounds the model's margins: call it on a BoundedModule of the "
                                          "model itself, not of its CrossEntropyWrapper")

    def gm_bounds(self, x=None, *, n_radii: Optional[int] = None, radii=None, eps: Optional[float] = None,
                  C: Optional[torch.Tensor] = None, method: Optional[str] = "CROWN-IBP", IBP: bool = False,
                  beta: float = 1.0, bound_lower: bool = True, bound_upper: bool = True):
        """gmbound extension: bounds at several radii in one pass, ``(lb, ub)`` each ``[N, B, K]``.

        Box ``i`` is ``[max(x - r_i, x_L), min(x + r_i, x_U)]`` inside the input's box ``[x_L, x_U]``.
        Give ``radii`` (``[N]``, in the units of ``x``) or ``n_radii`` for ``r_i = i/N * eps``, where
        ``eps`` defaults to the smallest radius whose box is the input's whole box (then the last
        radius gives ``compute_bounds``' bounds). ``beta`` mixes CROWN-IBP with IBP
        (``beta * CROWN-IBP + (1 - beta) * IBP``) for ``method="CROWN-IBP"``.
        """
        self._no_fusion("gm_bounds")
        if (n_radii is None) == (radii is None):
            raise BoundInputError("give exactly one of n_radii and radii")
        if not bound_lower and not bound_upper:
            raise BoundInputError("at least one of bound_lower and bound_upper must be True")
        gm_method = resolve_method(method, IBP)
        if x is not None:
            self._set_input(x)
        plain, ptb = self._current()
        if radii is not None:
            radii = torch.as_tensor(radii, dtype=plain.dtype, device=plain.device).reshape(-1)
        gm_eps, radii, x_min, x_max = nested_boxes(plain, ptb, radii, eps)
        if radii is None:
            if n_radii < 1:
                raise BoundInputError(f"n_radii must be at least 1, got {n_radii}")
            radii = torch.arange(1, n_radii + 1, dtype=plain.dtype, device=plain.device) / n_radii * gm_eps
        return self._radius_bounds(plain, radii, x_min, x_max, C, gm_method, beta, bound_lower, bound_upper)

    def gm_loss(self, x, y: torch.Tensor, *, n_radii: int = 10, weights: WeightShape = "inverse",
                kappa: float = 0.5, beta: float = 1.0, method: Optional[str] = "CROWN-IBP", IBP: bool = False,
                eps: Optional[float] = None, stochastic: bool = False,
                generator: Optional[torch.Generator] = None) -> GMLossResult:
        """gmbound extension: the GM loss ``kappa CE(f(x), y) + (1 - kappa) sum_i c_i CE(-m(x, r_i), y)``.

        ``x``: the ``BoundedTensor`` (or ``(x,)``, or None for the last input); ``y``: labels ``[B]``.
        The radii ``r_i = i/N * eps`` and their boxes are those of ``gm_bounds``: with ``n_radii=1``
        and ``weights`` anything, the robust part is the usual robust cross-entropy on the input's box.
        ``method``: ``"CROWN-IBP"`` (mixed with IBP by ``beta``), ``"IBP"`` or ``"CROWN"``. Returns
        ``gmbound.GMLossResult`` (``.loss``, ``.natural_loss``, ``.robust_loss``, ``.natural_error``,
        ``.verified_error`` per radius, ``.radii``, ``.weights``, ``.logits``). The loss runs the clean
        forward pass itself (train-mode BatchNorm updates its running statistics there).
        """
        self._no_fusion("gm_loss")
        gm_method = resolve_method(method, IBP)
        if x is not None:
            self._set_input(x)
        plain, ptb = self._current()
        gm_eps, _, x_min, x_max = nested_boxes(plain, ptb, None, eps)
        self._check_own_hooks()
        return _native_gm_loss(self._net, plain, y, gm_eps, n_radii=n_radii, weights=weights, kappa=kappa, beta=beta,
                               method=gm_method, x_min=x_min, x_max=x_max, stochastic=stochastic, generator=generator)
