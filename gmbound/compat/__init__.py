"""auto_LiRPA's training interface, for the networks gmbound bounds: switch a trainer by its imports.

Replace ::

    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

with ::

    from gmbound.compat import BoundedModule, BoundedTensor
    from gmbound.compat.perturbations import PerturbationLpNorm

and the loop runs on gmbound's engine. One more call gives the GM loss:
``model.gm_loss(x, labels, n_radii=10, weights="inverse", kappa=kappa, beta=beta).loss``.

The subset (everything else raises ``UnsupportedFeatureError``, a ``NotImplementedError``, or
``gmbound.UnsupportedLayerError`` for a model, saying what is outside it):

* ``BoundedModule(model, global_input, bound_opts=None, device="auto")``: ``model`` an ``nn.Sequential``
  (nested ones allowed) of Linear, Conv2d (groups=1, zero padding), ReLU, Flatten, BatchNorm1d/2d,
  ``gmbound.Normalize``, AvgPool2d, AdaptiveAvgPool2d, Identity, eval-mode Dropout, or any
  ``nn.Module`` whose forward torch.fx traces into these and residual sums, ``F.relu``, average
  pooling, ``view`` / ``flatten`` and constants (``gmbound.ops.registry``). No custom_ops, no
  multi-input models.
  ``bound_opts``: speed/memory options are ignored; ``relu`` must be ``"adaptive"`` (the default),
  ``ibp_relative`` and ``loss_fusion`` False; unknown keys are ignored with a warning.
* ``PerturbationLpNorm(eps=0, norm=np.inf, x_L=None, x_U=None)``: only ``norm=np.inf``. The box is
  auto_LiRPA's: ``[x_L, x_U]`` where given, ``x -/+ eps`` otherwise; where ``x`` lies outside it (a
  rounding error of the trainer's clamping, typically) it is widened to contain ``x`` (still sound).
* ``BoundedTensor(x, ptb)``; ``model(x)`` (also ``model(method_opt="compute_bounds", ...)``).
* ``compute_bounds(x=(x,) or None, C=None, method=..., IBP=False, bound_lower=True, bound_upper=True,
  reuse_ibp=False)`` -> ``(lb, ub)`` of shape ``[B, K]``. Methods: ``"IBP"``, ``"CROWN-IBP"``
  (= ``"IBP+backward"``), ``"CROWN"``/``"backward"`` (CROWN-IBP with ``IBP=True``), None with
  ``IBP=True``. Outside: forward mode, alpha-CROWN / CROWN-Optimized, ``return_A``, ``aux``,
  ``final_node_name``, intermediate-bound arguments.
* gmbound's extensions (not in auto_LiRPA): ``model.gm_loss(...)`` and ``model.gm_bounds(...)``
  (bounds with a radius axis ``[N, B, K]``); ``model.bounded_sequential`` is the native wrapper.

Differences to keep in mind: gmbound's CROWN (full backward) keeps the tighter of itself and
CROWN-IBP, so its bounds can be tighter than auto_LiRPA's (never looser; both sound). IBP folds
``C`` into the last linear layer, as auto_LiRPA does.
"""
from ..network import UnsupportedLayerError
from ..validation import BoundInputError
from .bounded_module import SUPPORTED_LAYERS, SUPPORTED_METHODS, BoundedModule, resolve_method
from .bounded_tensor import BoundedTensor
from .errors import UnsupportedFeatureError
from .perturbations import PerturbationLpNorm

__all__ = ["BoundedModule", "BoundedTensor", "PerturbationLpNorm", "UnsupportedFeatureError",
           "UnsupportedLayerError", "BoundInputError", "SUPPORTED_LAYERS", "SUPPORTED_METHODS", "resolve_method"]
