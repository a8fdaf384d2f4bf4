"""gmbound: certified-robust training with global, monotonically decreasing multi-radius bounds.

Public API (see README.md):

* ``BoundedSequential`` (alias ``BoundedNetwork``), ``compute_bounds``, ``Bounds``: multi-radius IBP /
  CROWN-IBP / CROWN bounds of a Sequential or a torch.fx-traceable ``nn.Module``
* ``Normalize``: per-channel normalisation layer (keeps the perturbation box in pixel space)
* ``margin_spec``, ``robust_logits``: the margin specification and the robust-loss logits
* ``verified_mask``: verified = every margin lower bound > 0 (NaN never counts as verified)
* ``gm_loss``, ``gm_radii``, ``radius_weights``, ``WEIGHT_SHAPES``, ``GMLossResult``: the GM loss
* ``CrownIBPSchedule``, ``linear_ramp``, ``smooth_ramp``: CROWN-IBP's schedules
* ``UnsupportedLayerError``, ``BoundInputError``: the errors bad input raises

Beside it: ``gmbound.models`` (model zoo), ``gmbound.data`` (data sets), ``gmbound.train`` /
``gmbound.evaluate`` / ``gmbound.certify`` (the ``gmbound`` command line) and ``gmbound.compat``
(auto_LiRPA's ``BoundedModule`` / ``BoundedTensor`` / ``PerturbationLpNorm`` subset; see
examples/README.md). ``gmbound.compat`` stays out of this namespace: its ``compute_bounds`` returns
no radius axis, unlike ``gmbound.compute_bounds``.
"""
from .bounded import METHODS, Bounds, BoundedNetwork, BoundedSequential, compute_bounds
from .certificates import verified_mask
from .layers import Normalize
from .losses import WEIGHT_SHAPES, GMLossResult, gm_loss, gm_radii, radius_weights
from .network import UnsupportedLayerError
from .schedules import CrownIBPSchedule, ScheduleValues, linear_ramp, smooth_ramp
from .specification import margin_spec, robust_logits
from .validation import BoundInputError

__version__ = "0.1.0"

__all__ = [
    "BoundedSequential", "BoundedNetwork", "Bounds", "compute_bounds", "METHODS", "Normalize",
    "margin_spec", "robust_logits", "verified_mask",
    "gm_loss", "gm_radii", "radius_weights", "WEIGHT_SHAPES", "GMLossResult",
    "CrownIBPSchedule", "ScheduleValues", "linear_ramp", "smooth_ramp",
    "UnsupportedLayerError", "BoundInputError", "__version__",
]
