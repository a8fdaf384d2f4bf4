"""The error for auto_LiRPA features outside the subset ``gmbound.compat`` implements."""
from __future__ import annotations


class UnsupportedFeatureError(NotImplementedError):
    """An auto_LiRPA feature (norm, bound method, option, argument) outside gmbound.compat's subset.

    The message names the feature and, where there is one, the gmbound way to get the same thing.
    Layers outside the subset raise ``gmbound.UnsupportedLayerError`` instead, as the native API does.
    """
