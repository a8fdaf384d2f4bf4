"""Bound operations: one class per op, each owning its interval step, CROWN step and output shape.

``registry`` maps module types and traced graph functions to these classes and lists what is
supported.
"""
from .activation import ReLUOp
from .affine import ChannelAffineOp, Conv2dOp, LinearOp, conv_output_padding
from .base import BoundOp, Interval, UnsupportedLayerError, materialise
from .elementwise import AddOp, ConstantAffineOp
from .pooling import AvgPool2dOp
from .shape import FlattenOp, PadOp, ReshapeOp

__all__ = ["BoundOp", "Interval", "UnsupportedLayerError", "materialise", "ReLUOp", "LinearOp", "Conv2dOp",
           "ChannelAffineOp", "conv_output_padding", "AddOp", "ConstantAffineOp", "AvgPool2dOp", "FlattenOp",
           "PadOp", "ReshapeOp"]
