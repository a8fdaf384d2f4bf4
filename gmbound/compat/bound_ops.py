"""The nodes of a ``gmbound.compat.BoundedModule``'s graph, under auto_LiRPA's class names.

auto_LiRPA turns a model into a graph of ``Bound<Op>`` nodes that scripts look up by name
(``model.final_name``, ``model[name].output_name``) or by class (``isinstance(node, BoundExp)``
to read the loss-fusion offset ``max_input``). gmbound.compat keeps such a graph for the same
look-ups: one node per model input and per layer, plus the four nodes of a loss-fusion wrapper.
The nodes hold no parameters (the layers stay the model's own modules, so ``state_dict`` keys
are the model's) and do no bounding themselves: the bounds come from gmbound's engine.

Names: ``"/k"``, numbered in graph order, the inputs first. As in auto_LiRPA, wrapping a model
in ``CrossEntropyWrapper`` adds an input (the labels) and so shifts the numbers of the model's
layers by one; ``cifar_training.py`` relies on exactly that
(``model_loss[model.final_name].output_name[0]`` is the wrapped model's output node).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..layers import Normalize


class Bound(nn.Module):
    """A graph node: ``name``, ``input_name`` / ``output_name`` (lists of node names), ``ori_name``.

    ``ori_name`` is the module path of the layer in the wrapped model (``"3"``, ``"model.3"``), or
    ``"input_k"`` for an input. ``layer`` is that module (not registered here: it stays the model's).
    """

    def __init__(self, name: str, ori_name: str, layer: Optional[nn.Module] = None):
        super().__init__()
        self.name = name
        self.ori_name = ori_name
        self.input_name: list[str] = []
        self.output_name: list[str] = []
        object.__setattr__(self, "layer", layer)
        self.perturbed = False

    def extra_repr(self) -> str:
        return f"name={self.name!r}, ori_name={self.ori_name!r}, inputs={self.input_name}"


class BoundInput(Bound):
    """A model input (``input_0`` the data, ``input_1`` the labels of a loss-fusion wrapper)."""


class BoundLinear(Bound):
    """``nn.Linear``."""


class BoundConv(Bound):
    """``nn.Conv2d``."""


class BoundRelu(Bound):
    """``nn.ReLU``."""


class BoundFlatten(Bound):
    """``nn.Flatten``."""


class BoundBatchNormalization(Bound):
    """``nn.BatchNorm1d`` / ``nn.BatchNorm2d``."""


class BoundNormalize(Bound):
    """``gmbound.Normalize`` (auto_LiRPA would trace it to a subtraction and a division)."""


class BoundIdentity(Bound):
    """``nn.Identity`` or ``nn.Dropout`` (no-ops for the bounds)."""


class BoundAdd(Bound):
    """A residual sum of two nodes."""


class BoundReshape(Bound):
    """``view`` / ``reshape`` / ``flatten`` in a traced forward."""


class BoundAveragePool(Bound):
    """``AvgPool2d`` / ``AdaptiveAvgPool2d`` / ``F.avg_pool2d``."""


class BoundPad(Bound):
    """Zero padding in a traced forward."""


class BoundConstantAffine(Bound):
    """Multiplication or addition by a constant in a traced forward."""


class BoundGatherElements(Bound):
    """Loss fusion: ``y_label = gather(y, labels)``."""


class BoundSub(Bound):
    """Loss fusion: ``z = y - y_label``."""


class BoundExp(Bound):
    """Loss fusion: ``exp(z - max_input)``.

    ``max_input`` ``[B, 1]`` is the offset the loss-fusion trainers add back,
    ``loss = mean(log(ub) + max_input)``. As in auto_LiRPA it is the row maximum of what the last
    pass saw: the clean ``z`` after a forward pass (detached), the upper interval bounds of ``z``
    after an IBP call (with its gradient), the same maximum detached after a CROWN-IBP call.
    """

    def __init__(self, name: str, ori_name: str, layer: Optional[nn.Module] = None):
        super().__init__(name, ori_name, layer)
        self.max_input: torch.Tensor | float = 0


class BoundReduceSum(Bound):
    """Loss fusion: the sum over classes, the graph's output."""


_LAYER_NODES: tuple[tuple[type, type], ...] = (
    (nn.Linear, BoundLinear), (nn.Conv2d, BoundConv), (nn.ReLU, BoundRelu), (nn.Flatten, BoundFlatten),
    (nn.modules.batchnorm._BatchNorm, BoundBatchNormalization), (Normalize, BoundNormalize),
    (nn.Identity, BoundIdentity), (nn.Dropout, BoundIdentity))


# gmbound's bound-op classes (gmbound.ops) -> node classes, for ops without a module of their own
_OP_NODES = {"LinearOp": BoundLinear, "Conv2dOp": BoundConv, "ReLUOp": BoundRelu, "FlattenOp": BoundFlatten,
             "ReshapeOp": BoundReshape, "ChannelAffineOp": BoundBatchNormalization, "AddOp": BoundAdd,
             "AvgPool2dOp": BoundAveragePool, "PadOp": BoundPad, "ConstantAffineOp": BoundConstantAffine}


def node_class_for_op(op) -> type:
    """The node class for one of gmbound's bound ops (by its module where it has one)."""
    module = getattr(op, "module", None)
    if module is not None:
        cls = node_class_for(module)
        if cls is not Bound:
            return cls
    return _OP_NODES.get(type(op).__name__, Bound)


def node_class_for(layer: nn.Module) -> type:
    """The node class for a layer gmbound bounds (``Bound`` for anything else)."""
    for layer_type, node_type in _LAYER_NODES:
        if isinstance(layer, layer_type):
            return node_type
    return Bound
