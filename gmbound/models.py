"""Model zoo: the DeepMind IBP networks (Gowal et al. 2018), CNN-7 and a small MLP, by name.

Every model is a flat ``nn.Sequential`` of Conv2d / Linear / BatchNorm / ReLU / Flatten (plus an
optional leading ``Normalize``), because that is all the bound engine accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn as nn

# A conv spec is (out_channels, kernel, stride, padding); "VALID" in the papers is padding 0.
ConvSpec = tuple[int, int, int, int]

_DM_SMALL_CONVS: list[ConvSpec] = [(16, 4, 2, 0), (32, 4, 1, 0)]
_DM_MEDIUM_CONVS: list[ConvSpec] = [(32, 3, 1, 0), (32, 4, 2, 0), (64, 3, 1, 0), (64, 4, 2, 0)]
_DM_LARGE_CONVS: list[ConvSpec] = [
    (64, 3, 1, 1),
    (64, 3, 1, 1),
    (128, 3, 2, 1),
    (128, 3, 1, 1),
    (128, 3, 1, 1),
]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a square convolution."""
    return (size + 2 * padding - kernel) // stride + 1


def _conv_net(
    in_channels: int,
    in_size: int,
    n_classes: int,
    convs: Sequence[ConvSpec],
    hidden: Sequence[int],
    batch_norm: bool = False,
) -> list[nn.Module]:
    """Conv stack, Flatten, FC stack, final FC; ReLU after every layer but the last.

    With ``batch_norm`` a BatchNorm sits between each conv / hidden FC and its ReLU (CNN-7).
    """
    layers: list[nn.Module] = []
    channels, size = in_channels, in_size
    for out_ch, k, s, p in convs:
        new_size = _conv_out(size, k, s, p)
        if new_size < 1:
            raise ValueError(f"input size {in_size} is too small for this model's convolutions")
        layers.append(nn.Conv2d(channels, out_ch, k, stride=s, padding=p))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
        channels, size = out_ch, new_size
    layers.append(nn.Flatten())
    features = channels * size * size
    for width in hidden:
        layers.append(nn.Linear(features, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        features = width
    layers.append(nn.Linear(features, n_classes))
    return layers


def _dm_small(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_SMALL_CONVS, [100])


def _dm_medium(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_MEDIUM_CONVS, [512, 512])


def _dm_large(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_LARGE_CONVS, [512])


def _cnn7(c: int, s: int, n: int) -> list[nn.Module]:
    return _conv_net(c, s, n, _DM_LARGE_CONVS, [512], batch_norm=True)


def _mlp(c: int, s: int, n: int, hidden: Sequence[int] = (256, 256)) -> list[nn.Module]:
    # An MLP is the conv net with no convolutions: Flatten, then the FC stack.
    return _conv_net(c, s, n, [], hidden)


_BUILDERS: dict[str, Callable[..., list[nn.Module]]] = {
    "dm-small": _dm_small,
    "dm-medium": _dm_medium,
    "dm-large": _dm_large,
    "cnn7": _cnn7,
    "mlp": _mlp,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(
    name: str,
    in_channels: int,
    in_size: int,
    n_classes: int = 10,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    **kwargs: object,
) -> nn.Sequential:
    """Build model ``name`` (one of ``MODEL_NAMES``) for square ``in_channels x in_size`` inputs.

    ``normalize=(mean, std)`` prepends a per-channel ``gmbound.layers.Normalize`` so the model
    takes pixels in [0, 1]; the certified box then lives in pixel space. Extra keywords go to the
    builder (only ``mlp`` takes one: ``hidden``, a sequence of hidden widths).
    """
    key = name.lower().replace("_", "-")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    try:
        layers = _BUILDERS[key](in_channels, in_size, n_classes, **kwargs)
    except TypeError as err:
        # Most likely a keyword the builder does not take: say which model refused it.
        raise TypeError(f"model {key!r}: {err}") from err
    if normalize is not None:
        # Imported here so that models.py has no import-time dependency on layers.py.
        from gmbound.layers import Normalize

        mean, std = normalize
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"normalize needs {in_channels} mean and std values, got {len(mean)} and {len(std)}"
            )
        layers.insert(0, Normalize(mean, std))
    return nn.Sequential(*layers)
