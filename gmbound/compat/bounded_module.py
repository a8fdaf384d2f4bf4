"""``BoundedModule``: auto_LiRPA's front door over gmbound's ``BoundedSequential``.

``compute_bounds`` returns auto_LiRPA's shapes (``[B, K]``, no radius axis); the methods named
``gm_*`` are gmbound's extensions (several radii in one pass, the GM loss) and do not exist in
auto_LiRPA.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import nn

from ..bounded import BoundedSequential
from ..losses import GMLossResult, WeightShape, gm_loss as _native_gm_loss
from ..network import UnsupportedLayerError, build_ops, infer_shapes
from ..validation import BoundInputError
from ._box import native_box, nested_boxes
from .bounded_tensor import BoundedTensor
from .errors import UnsupportedFeatureError
from .perturbations import PerturbationLpNorm, is_default

SUPPORTED_LAYERS = ("Linear", "Conv2d (groups=1, zero padding)", "ReLU", "Flatten", "BatchNorm1d/2d",
                    "gmbound.Normalize", "Identity", "Dropout (eval mode)")

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
                     "use_full_conv_alpha", "disabled_optimization"}
# bound_opts that change the bounds, with the one value gmbound computes.
_SEMANTIC_OPTS = {"relu": ("adaptive", "CROWN-IBP's adaptive lower slope (1 if u > -l else 0)"),
                  "ibp_relative": (False, "absolute intervals"),
                  "loss_fusion": (False, "the plain graph (wrap the model, not a loss)")}


def resolve_method(method: Optional[str], IBP: bool = False, forward: bool = False) -> str:
    """gmbound's method (``"ibp"``, ``"crown-ibp"``, ``"crown"``) for auto_LiRPA's ``method``/``IBP``/``forward``.

    As in auto_LiRPA: ``"backward"``/``"CROWN"`` take their intermediate bounds from IBP when
    ``IBP=True`` (that is CROWN-IBP) and from CROWN otherwise; ``method=None`` with ``IBP=True`` is IBP.
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


def check_bound_opts(bound_opts: Optional[dict]) -> dict:
    """Accept the options that do not change the bounds (or that ask for what gmbound computes)."""
    opts = dict(bound_opts or {})
    for key, value in opts.items():
        if key in _SEMANTIC_OPTS:
            wanted, what = _SEMANTIC_OPTS[key]
            if value != wanted and not (isinstance(value, str) and isinstance(wanted, str)
                                        and value.lower() == wanted.lower()):
                raise UnsupportedFeatureError(f"bound_opts[{key!r}]={value!r} is outside gmbound.compat's subset; "
                                              f"gmbound computes {key}={wanted!r} ({what})")
        elif key not in _PERFORMANCE_OPTS:
            warnings.warn(f"gmbound.compat ignores bound_opts[{key!r}] (unknown to it)", stacklevel=3)
    return opts


def _first_input(inputs) -> torch.Tensor:
    """The single model input from auto_LiRPA's forms: ``x``, ``(x,)`` or ``[x]``."""
    while isinstance(inputs, (tuple, list)):
        if len(inputs) != 1:
            raise UnsupportedFeatureError(f"gmbound.compat bounds single-input models; got {len(inputs)} inputs")
        inputs = inputs[0]
    if not isinstance(inputs, torch.Tensor):
        raise BoundInputError(f"the model input must be a tensor or BoundedTensor, got {type(inputs).__name__}")
    return inputs


class BoundedModule(nn.Module):
    """auto_LiRPA's ``BoundedModule`` for ``nn.Sequential`` models of gmbound's layers.

    ``BoundedModule(model, global_input, bound_opts=None, device="auto")``. ``model`` must be an
    ``nn.Sequential`` (nested ones allowed) of the layers in ``SUPPORTED_LAYERS``; anything else
    raises ``gmbound.UnsupportedLayerError`` naming it. The model's own modules are registered
    under their own names, so ``parameters()``, ``state_dict()`` and ``train()``/``eval()`` act on
    the model itself (a ``state_dict`` saved here loads into the plain model and back).

    * ``model(x)``: the ordinary output; a ``BoundedTensor`` input also becomes the input that
      ``compute_bounds(x=None)`` bounds (as in auto_LiRPA).
    * ``compute_bounds(x=(x,), C=C, method=..., IBP=..., bound_lower=, bound_upper=)`` -> ``(lb, ub)``,
      each ``[B, K]`` (``[B, *out]`` without ``C``), None where not asked for.
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
        if not isinstance(model, nn.Sequential):
            raise UnsupportedLayerError(
                f"gmbound.compat.BoundedModule wraps nn.Sequential models; got {type(model).__name__}. auto_LiRPA "
                "traces any forward(); gmbound.compat does not: write the model as an nn.Sequential of "
                f"{', '.join(SUPPORTED_LAYERS)}")
        try:
            net = BoundedSequential(model)
        except UnsupportedLayerError as err:
            raise UnsupportedLayerError(f"gmbound.compat.BoundedModule: {err}") from err
        if device != "auto":
            model.to(device)
        for name, child in model.named_children():
            self.add_module(name, child)
        # Kept outside the module registry so that parameters and state_dict keys are the model's own.
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_net", net)
        self._input: Optional[torch.Tensor] = None
        self._ibp_cache: Optional[tuple] = None
        if global_input is not None:
            self._check_global_input(global_input)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (CPU for a model without any)."""
        param = next(self._model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def original_model(self) -> nn.Sequential:
        """The wrapped model (its parameters are this module's parameters)."""
        return self._model

    @property
    def bounded_sequential(self) -> BoundedSequential:
        """gmbound's native wrapper of the same model: ``.bounds`` with the radius axis, ``margin_bounds``, ..."""
        return self._net

    def _check_global_input(self, global_input) -> None:
        x = _first_input(global_input)
        param = next(self._model.parameters(), None)
        dtype = param.dtype if param is not None else x.dtype
        try:
            infer_shapes(build_ops(self._model), tuple(x.shape[1:]), dtype, x.device)
        except ValueError as err:
            raise BoundInputError(f"global_input of shape {tuple(x.shape)} does not fit the model: {err}") from None

    def train(self, mode: bool = True) -> "BoundedModule":
        super().train(mode)
        self._model.train(mode)
        return self

    # ------------------------------------------------------------------ inputs
    def _set_input(self, inputs) -> torch.Tensor:
        x = _first_input(inputs)
        self._input = x
        self._ibp_cache = None
        return x.plain() if isinstance(x, BoundedTensor) else x

    def _current(self) -> tuple[torch.Tensor, Optional[PerturbationLpNorm]]:
        if self._input is None:
            raise BoundInputError("no input yet: pass x=(BoundedTensor(x, ptb),) or call model(x) first")
        x = self._input
        if isinstance(x, BoundedTensor):
            return x.plain(), x.ptb
        return x, None

    def forward(self, *inputs, method_opt: Optional[str] = None, **kwargs):
        """``model(x)``: the model's output. ``model(method_opt="compute_bounds", ...)`` is ``compute_bounds(...)``."""
        if method_opt == "compute_bounds":
            return self.compute_bounds(**kwargs)
        if method_opt not in (None, "forward"):
            raise UnsupportedFeatureError(f"method_opt={method_opt!r} is outside gmbound.compat's subset "
                                          "(it knows 'forward' and 'compute_bounds')")
        for key in ("disable_multi_gpu", "no_replicas", "clear_forward_only"):
            kwargs.pop(key, None)
        if kwargs.pop("final_node_name", None) is not None:
            raise UnsupportedFeatureError("final_node_name is outside gmbound.compat's subset: it returns the "
                                          "model's output")
        if kwargs:
            raise UnsupportedFeatureError(f"forward argument(s) {sorted(kwargs)} are outside gmbound.compat's subset")
        return self._model(self._set_input(inputs))

    # ------------------------------------------------------------------ bounds
    def _check_own_hooks(self) -> None:
        """A hook on this wrapper changes ``model(x)`` but not the bounds (the model's own are checked natively)."""
        if self._forward_hooks or self._forward_pre_hooks:
            raise UnsupportedLayerError("gmbound.compat.BoundedModule has a forward hook or pre-hook: it would change "
                                        "model(x) but not the bounds. Remove it (handle.remove())")

    def _radius_bounds(self, x, eps, x_min, x_max, C, method, beta, bound_lower, bound_upper):
        """gmbound's bounds with the radius axis kept; the lower or upper one None where not wanted."""
        self._check_own_hooks()
        net = self._net
        if bound_lower or C is None:
            b = net.bounds(x, eps, C, method=method, beta=beta, x_min=x_min, x_max=x_max, bound_upper=bound_upper)
            return (b.lower if bound_lower else None), (b.upper if bound_upper else None)
        # Upper bounds only: the lower bound of -C f, negated (what gmbound does for its upper bound).
        if not isinstance(C, torch.Tensor):
            raise BoundInputError(f"C must be a torch.Tensor, got {type(C).__name__}")
        b = net.bounds(x, eps, -C, method=method, beta=beta, x_min=x_min, x_max=x_max, bound_upper=False)
        return None, -b.lower

    def compute_bounds(self, x=None, aux=None, C: Optional[torch.Tensor] = None, method: Optional[str] = "backward",
                       IBP: bool = False, forward: bool = False, bound_lower: bool = True, bound_upper: bool = True,
                       reuse_ibp: bool = False, return_A: bool = False, final_node_name: Optional[str] = None,
                       **kwargs):
        """Bounds of ``C f`` over the input's box, as auto_LiRPA returns them: ``(lb, ub)``, each ``[B, K]``.

        ``x``: ``(BoundedTensor,)`` (or the tensor itself), or None to reuse the last input (from
        ``model(x)`` or an earlier call). ``method``: ``"IBP"``; ``"CROWN-IBP"`` (also
        ``"IBP+backward"``); ``"CROWN"``/``"backward"`` (CROWN-IBP when ``IBP=True``); None with
        ``IBP=True`` (IBP). ``C``: ``[B, K, n_out]`` or None (bounds of the outputs). A side not asked
        for (``bound_lower``/``bound_upper`` False) is returned as None. ``reuse_ibp=True`` with
        ``method=None, IBP=True`` returns the previous IBP bounds of the same input and ``C``.
        """
        if not bound_lower and not bound_upper:
            raise BoundInputError("at least one of bound_lower and bound_upper must be True")
        if aux is not None:
            raise UnsupportedFeatureError("aux is outside gmbound.compat's subset (it is for non-L-inf perturbations)")
        if return_A:
            raise UnsupportedFeatureError("return_A=True (linear coefficients) is outside gmbound.compat's subset")
        if final_node_name is not None:
            raise UnsupportedFeatureError("final_node_name is outside gmbound.compat's subset: it bounds the model's "
                                          "output")
        unused = [k for k, v in kwargs.items() if not is_default(v)]
        if unused:
            raise UnsupportedFeatureError(f"compute_bounds argument(s) {sorted(unused)} are outside gmbound.compat's "
                                          "subset")
        gm_method = resolve_method(method, IBP, forward)
        if x is not None:
            self._set_input(x)
        if gm_method == "ibp" and reuse_ibp and self._ibp_cache is not None and self._ibp_cache[0] is C:
            return self._ibp_cache[1]
        plain, ptb = self._current()
        eps, x_min, x_max = native_box(plain, ptb)
        lower, upper = self._radius_bounds(plain, eps, x_min, x_max, C, gm_method, 1.0, bound_lower, bound_upper)
        result = (lower[0] if lower is not None else None, upper[0] if upper is not None else None)
        if gm_method == "ibp":
            self._ibp_cache = (C, result)
        return result

    # ------------------------------------------------------------------ gmbound's extensions
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
        gm_method = resolve_method(method, IBP)
        if x is not None:
            self._set_input(x)
        plain, ptb = self._current()
        gm_eps, _, x_min, x_max = nested_boxes(plain, ptb, None, eps)
        self._check_own_hooks()
        return _native_gm_loss(self._net, plain, y, gm_eps, n_radii=n_radii, weights=weights, kappa=kappa, beta=beta,
                               method=gm_method, x_min=x_min, x_max=x_max, stochastic=stochastic, generator=generator)
