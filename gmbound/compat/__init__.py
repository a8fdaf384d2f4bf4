"""auto_LiRPA's training interface, for the networks gmbound bounds: switch a trainer by its imports.

Rename ``auto_LiRPA`` to ``gmbound.compat`` in every import::

    from gmbound.compat import BoundedModule, BoundedTensor, BoundDataParallel, CrossEntropyWrapper
    from gmbound.compat.perturbations import *          # PerturbationLpNorm, np, torch, ...
    from gmbound.compat.utils import MultiAverageMeter, logger, get_spec_matrix, sync_params
    from gmbound.compat.eps_scheduler import LinearScheduler, SmoothedScheduler, AdaptiveScheduler, FixedScheduler
    from gmbound.compat.bound_ops import BoundExp

and the loop runs on gmbound's engine, with auto_LiRPA's numbers for the subset below. One more
call gives the GM loss: ``model.gm_loss(x, labels, n_radii=10, weights="inverse", kappa=kappa,
beta=beta).loss``.

The subset (everything else raises ``UnsupportedFeatureError``, a ``NotImplementedError``, or
``gmbound.UnsupportedLayerError`` for a model, saying what is outside it):

* ``BoundedModule(model, global_input, bound_opts=None, device="auto")``: ``model`` an ``nn.Sequential``
  (nested ones allowed) of the layers gmbound bounds, or any ``nn.Module`` whose forward torch.fx
  traces into those layers and the supported functions (the README's table of supported operations,
  generated from ``gmbound.ops.registry``: Linear, Conv2d, BatchNorm, ReLU and the other
  activations, pooling, residual sums, products, slicing, concatenation, ...); or a
  ``CrossEntropyWrapper`` of one with ``bound_opts={"loss_fusion": True}``. No custom_ops.
  ``bound_opts``: speed/memory options are ignored; ``activation_bound_option`` (and the older
  ``relu``) must be None or ``"adaptive"`` (``"same-slope"``, ``"zero-lb"``, ``"one-lb"`` are
  refused); unknown keys warn.
* ``PerturbationLpNorm(eps=0, norm=np.inf, x_L=None, x_U=None)``: only ``norm=np.inf``. The box is
  auto_LiRPA's: ``[x_L, x_U]`` where given, ``x -/+ eps`` otherwise; where ``x`` lies outside it (a
  rounding error of the trainer's clamping, typically) it is widened to contain ``x`` (still sound).
* ``BoundedTensor(x, ptb)``; ``model(x)`` (also ``model(method_opt="compute_bounds", ...)``).
* ``compute_bounds(x=(x,) or None, C=None, method=..., IBP=False, bound_lower=True, bound_upper=True,
  reuse_ibp=False, final_node_name=None)`` -> ``(lb, ub)`` of shape ``[B, K]``. Methods: ``"IBP"``,
  ``"CROWN-IBP"`` (= ``"IBP+backward"``), ``"CROWN"``/``"backward"``, None with ``IBP=True``.
  Intermediate bounds follow auto_LiRPA: a ``"backward"`` call reuses the IBP bounds of an earlier
  call on the same input (CROWN-IBP), and runs full CROWN on a fresh input.
* Loss fusion (``CrossEntropyWrapper``, ``BoundExp.max_input``), ``BoundDataParallel`` (one
  device), the graph's names (``final_name``, ``final_node()``, ``output_name``), auto_LiRPA
  ``state_dict`` keys, and the modules ``utils``, ``eps_scheduler``, ``bound_ops``.
* gmbound's extensions (not in auto_LiRPA): ``model.gm_loss(...)`` and ``model.gm_bounds(...)``
  (bounds with a radius axis ``[N, B, K]``); ``model.bounded_sequential`` is the native wrapper.

Differences to keep in mind: gmbound's CROWN (full backward) keeps the tighter of itself and
CROWN-IBP, so its bounds can be tighter than auto_LiRPA's (never looser; both sound). IBP folds
``C`` into the last linear layer, as auto_LiRPA does. ``BoundDataParallel`` does not split batches.
"""
from ..network import UnsupportedLayerError
from ..validation import BoundInputError
from .bound_multi_gpu import BoundDataParallel
from .bounded_module import SUPPORTED_LAYERS, SUPPORTED_METHODS, BoundedModule, resolve_method
from .bounded_tensor import BoundedParameter, BoundedTensor
from .errors import UnsupportedFeatureError
from .loss_fusion import CrossEntropyWrapper
from .perturbations import PerturbationLinear, PerturbationLpNorm, PerturbationSynonym


def register_custom_op(*args, **kwargs):
    """auto_LiRPA's hook for new operators: refused (gmbound bounds a fixed set of layers)."""
    raise UnsupportedFeatureError("register_custom_op is outside gmbound.compat's subset: gmbound bounds a fixed set of "
                                  f"layers ({', '.join(SUPPORTED_LAYERS)})")


unregister_custom_op = register_custom_op

__all__ = ["BoundedModule", "BoundedTensor", "BoundedParameter", "BoundDataParallel", "CrossEntropyWrapper",
           "PerturbationLpNorm", "PerturbationSynonym", "PerturbationLinear", "UnsupportedFeatureError",
           "UnsupportedLayerError", "BoundInputError", "SUPPORTED_LAYERS", "SUPPORTED_METHODS", "resolve_method",
           "register_custom_op", "unregister_custom_op"]
