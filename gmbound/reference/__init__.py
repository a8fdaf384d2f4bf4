"""The pure-PyTorch reference path: the oracle for every compiled kernel."""
from . import primitives

__all__ = ["primitives"]
