"""Model zoo: published parameter counts, shapes, layer structure, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gmbound.layers import Normalize
from gmbound.models import MODEL_NAMES, build_model

# Gowal et al. (2018) / CROWN-IBP parameter counts for MNIST inputs (1 x 28 x 28).
PUBLISHED_MNIST_PARAMS = {"dm-small": 329_606, "dm-medium": 893_418, "dm-large": 13_257_290}
MNIST_FLATTEN = {"dm-small": 3200, "dm-medium": 1024, "dm-large": 25088}

ALLOWED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d, Normalize)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_MNIST_PARAMS))
def test_published_param_counts(name: str) -> None:
    model = build_model(name, 1, 28)
    assert n_params(model) == PUBLISHED_MNIST_PARAMS[name]
    first_fc = next(m for m in model if isinstance(m, nn.Linear))
    assert first_fc.in_features == MNIST_FLATTEN[name]


def test_cnn7_is_dm_large_plus_batchnorm() -> None:
    model = build_model("cnn7", 1, 28)
    bns = [m for m in model if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    # One BN per conv (64, 64, 128, 128, 128) and one after FC512; each has weight and bias.
    assert [bn.num_features for bn in bns] == [64, 64, 128, 128, 128, 512]
    assert n_params(model) == PUBLISHED_MNIST_PARAMS["dm-large"] + 2 * (64 + 64 + 3 * 128 + 512)
    # BN sits between the affine layer and its ReLU.
    for i, m in enumerate(model):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert isinstance(model[i - 1], (nn.Conv2d, nn.Linear))
            assert isinstance(model[i + 1], nn.ReLU)


def test_mlp_sizes() -> None:
    assert n_params(build_model("mlp", 1, 28)) == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    model = build_model("mlp", 1, 28, hidden=(64,))
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [64, 10]


FEED_FORWARD = tuple(n for n in MODEL_NAMES if n != "resnet20")


@pytest.mark.parametrize("name", FEED_FORWARD)
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_output_shape_and_structure(name: str, shape: tuple[int, int]) -> None:
    channels, size = shape
    model = build_model(name, channels, size, n_classes=7).eval()
    assert model(torch.rand(3, channels, size, size)).shape == (3, 7)
    assert all(isinstance(m, ALLOWED) for m in model)
    # Every affine layer but the last is followed (after an optional BN) by a ReLU.
    affine = [i for i, m in enumerate(model) if isinstance(m, (nn.Conv2d, nn.Linear))]
    for i in affine[:-1]:
        nxt = model[i + 1]
        if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nxt = model[i + 2]
        assert isinstance(nxt, nn.ReLU), (name, i)
    assert affine[-1] == len(model) - 1


def test_cifar_flatten_sizes() -> None:
    # 32 -> (32-4)//2+1 = 15 -> 12 for dm-small; dm-large halves once: 16 x 16 x 128.
    assert build_model("dm-small", 3, 32)[5].in_features == 32 * 12 * 12
    assert build_model("dm-large", 3, 32)[11].in_features == 128 * 16 * 16


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError) as info:
        build_model("resnet50", 1, 28)
    for name in MODEL_NAMES:
        assert name in str(info.value)


def test_bad_keyword_and_small_input() -> None:
    with pytest.raises(TypeError, match="dm-small"):
        build_model("dm-small", 1, 28, hidden=(3,))
    with pytest.raises(ValueError, match="too small"):
        build_model("dm-medium", 1, 8)


def test_normalize_first() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    model = build_model("dm-small", 3, 32, normalize=(mean, std)).eval()
    assert isinstance(model[0], Normalize)
    assert isinstance(model[1], nn.Conv2d)
    # Same weights without the layer, fed normalised inputs, give the same logits.
    bare = nn.Sequential(*list(model)[1:])
    x = torch.rand(2, 3, 32, 32)
    x_norm = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(model(x), bare(x_norm))
    assert n_params(model) == n_params(build_model("dm-small", 3, 32))  # buffers, not parameters
    with pytest.raises(ValueError, match="3 mean and std"):
        build_model("dm-small", 3, 32, normalize=((0.5,), (0.5,)))


def test_resnet20_matches_the_paper():
    """He et al. (2016), Table 6: ResNet-20 for CIFAR-10 has 0.27M parameters (19 convolutions + the classifier)."""
    model = build_model("resnet20", 3, 32)
    assert n_params(model) == 269_722 and round(n_params(model) / 1e6, 2) == 0.27
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and [c.out_channels for c in convs][::6] == [16, 16, 32, 64]
    assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]) == 19
    for shape in [(1, 28), (3, 32)]:
        net = build_model("resnet20", shape[0], shape[1], n_classes=7, normalize=([0.5] * shape[0], [0.2] * shape[0]))
        assert net.eval()(torch.rand(2, shape[0], shape[1], shape[1])).shape == (2, 7)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        from gmbound.models import CifarResNet

        CifarResNet(21, 3, 10)


def test_resnet20_is_bounded_soundly():
    import gmbound

    torch.manual_seed(0)
    model = build_model("resnet20", 1, 8, n_classes=4).double()
    for m in model.modules():  # trained-like statistics, so that the bounds are finite and not vacuous
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(4.0)
    model.eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    b = gmbound.BoundedSequential(model).bounds(x, 0.01, method="crown-ibp", x_min=0, x_max=1)
    pts = (x + (torch.rand((32,) + x.shape, dtype=torch.float64) * 2 - 1) * 0.01).clamp(0, 1)
    with torch.no_grad():
        out = model(pts.flatten(0, 1)).view(32, 2, 4)
    assert (out >= b.lower[0] - 1e-10).all() and (out <= b.upper[0] + 1e-10).all()
