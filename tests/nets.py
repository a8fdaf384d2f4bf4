"""Small random networks and box sampling shared by the bound tests."""
from __future__ import annotations

import torch
from torch import nn

import gmbound


def mlp(seed: int, in_features: int = 6, n_out: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                         nn.Linear(10, n_out)).double()


def cnn(seed: int, n_out: int = 5) -> nn.Sequential:
    """Input ``[1, 7, 7]``; strided, padded and dilated convolutions, a nested Sequential, Normalize first."""
    torch.manual_seed(seed)
    return nn.Sequential(
        gmbound.Normalize([0.4], [0.3]),
        nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU()),
        nn.Conv2d(3, 4, 2, stride=1, padding=1, dilation=2), nn.ReLU(), nn.Identity(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, n_out)).double().eval()


def cnn_bn(seed: int, n_out: int = 5) -> nn.Sequential:
    """Like CNN-7 in miniature: BatchNorm after the convolution and the hidden linear layer."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=1, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=0), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, n_out)).double()
    for m in net:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # non-trivial statistics and affine part
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


NETS = {"mlp": (mlp, (6,)), "cnn": (cnn, (1, 7, 7)), "cnn_bn": (cnn_bn, (2, 6, 6))}


def make_case(name: str, seed: int, batch: int = 3):
    """A net, a batch in ``[0, 1]`` and labels, all float64."""
    factory, in_shape = NETS[name]
    net = factory(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand((batch,) + in_shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        n_out = net(x).shape[1]
    y = torch.randint(0, n_out, (batch,), generator=g)
    return net, x, y


def sample_box(x: torch.Tensor, radius: float, n: int, x_min: float, x_max: float, seed: int) -> torch.Tensor:
    """``n`` points per sample from the clipped box: half uniform, half vertices (where bounds are tight).

    Returns ``[n, B, *S]``.
    """
    g = torch.Generator().manual_seed(seed)
    lower = (x - radius).clamp(min=x_min)
    upper = (x + radius).clamp(max=x_max)
    u = torch.rand((n,) + x.shape, generator=g, dtype=x.dtype)
    u[: n // 2] = (u[: n // 2] > 0.5).to(x.dtype)
    return lower + u * (upper - lower)


def self_labelled_conv(seed: int, n: int, n_flipped: int) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A small conv net (input ``[1, 7, 7]``, 4 classes) and ``n`` random inputs labelled by the net
    itself, except the first ``n_flipped`` labels, shifted by one class (clean errors): evaluations see
    certified, uncertified and misclassified samples alike."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 16),
                          nn.ReLU(), nn.Linear(16, 4)).double().eval()
    x = torch.rand(n, 1, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:n_flipped] = (y[:n_flipped] + 1) % 4
    return model, x, y
