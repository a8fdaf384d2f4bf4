"""Bound operations: one class per op, each owning its interval step, CROWN step and output shape.

``registry`` maps module types and traced graph functions to these classes and lists what is
supported.
"""
from .activation import ReLUOp
from .affine import ChannelAffineOp, Conv2dOp, LinearOp, conv_output_padding
from .base import BoundOp, Interval, UnsupportedLayerError, materialise
from .elementwise import AddOp, ConstantAffineOp, ProductOp
from .convex import ConvexOp, ELUOp, ExpOp, SoftplusOp
from .nonlinear import AbsOp, ClampOp, ElementwiseOp, LeakyReLUOp, SigmoidOp, SquareOp, TanhOp
from .pooling import AvgPool2dOp, MaxPool2dOp
from .shape import FlattenOp, PadOp, ReshapeOp
from .smooth_relu import GELUOp, MishOp, SiLUOp, SmoothReLUOp
from .structure import CatOp, ReduceOp, SliceOp

__all__ = ["BoundOp", "Interval", "UnsupportedLayerError", "materialise", "ReLUOp", "LinearOp", "Conv2dOp",
           "ChannelAffineOp", "conv_output_padding", "AddOp", "ConstantAffineOp", "ProductOp", "AvgPool2dOp",
           "MaxPool2dOp", "FlattenOp", "PadOp", "ReshapeOp", "CatOp", "ReduceOp", "SliceOp", "ElementwiseOp",
           "TanhOp", "SigmoidOp", "GELUOp", "LeakyReLUOp", "AbsOp", "ClampOp", "ExpOp", "SquareOp",
           "ConvexOp", "SoftplusOp", "ELUOp", "SmoothReLUOp", "SiLUOp", "MishOp"]
