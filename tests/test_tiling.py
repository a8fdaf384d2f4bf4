"""Tiling (radius, sample) rows: a tiled call gives the bounds and gradients of one untiled call."""
from __future__ import annotations

import pytest
import torch

import gmbound
from gmbound.bounded import BoundedSequential
from gmbound.engine import chunking, set_tile_budget, tile_budget
from gmbound.losses import gm_loss
from nets import make_case
from backends import BACKENDS

TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def _restore_budget():
    yield
    set_tile_budget(None)


@pytest.fixture
def count_tiles(monkeypatch):
    """Counts the untiled calls a bound call is split into."""
    calls = []
    inner = BoundedSequential._bounds_strict

    def spy(self, ops, x, radii, *args):
        calls.append((radii.shape[0], x.shape[0]))
        return inner(self, ops, x, radii, *args)
    monkeypatch.setattr(BoundedSequential, "_bounds_strict", spy)
    return calls


def test_plan_keeps_whole_batches_of_radii_and_a_floor_of_rows():
    row = 1000
    assert chunking.plan(10, 8, row, budget=0) == (10, 8)                      # 0: untiled
    assert chunking.plan(10, 8, row, budget=10 ** 9) == (10, 8)                # fits: one tile
    assert chunking.plan(10, 64, row, budget=128 * row) == (2, 64)             # whole batches of radii
    assert chunking.plan(10, 64, row, budget=32 * row) == (1, 32)              # the batch split
    assert chunking.plan(10, 64, row, budget=row) == (1, chunking.MIN_ROWS)    # never below the floor
    assert chunking.plan(10, 64, row, budget=row, min_rows=256) == (4, 64)     # IBP's floor: 256 rows
    assert chunking.row_bytes([(1, 4, 4), (3, 5, 5), (10,)], 9, True, 8) == 75 * 9 * 8
    assert chunking.row_bytes([(1, 4, 4), (3, 5, 5), (10,)], 9, False, 4) == 75 * 4 * 4


def test_budget_settings_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="tile budget"):
        set_tile_budget(-1)
    monkeypatch.setenv("GMBOUND_TILE_MB", "lots")
    with pytest.raises(ValueError, match="GMBOUND_TILE_MB"):
        tile_budget()
    monkeypatch.setenv("GMBOUND_TILE_MB", "0.5")
    assert tile_budget() == 2 ** 19
    assert tile_budget("meta") == 0  # only CPU calls are tiled
    set_tile_budget(123)
    assert tile_budget() == 123


def _bounds_and_grads(net, x, radii, C, method, backend, x_min, x_max):
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    b = BoundedSequential(net).bounds(x, radii, C, method=method, x_min=x_min, x_max=x_max, backend=backend)
    (b.lower.sum() - 0.5 * b.upper.sum()).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    return b.lower.detach(), b.upper.detach(), x.grad, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,batch,n_radii,tiles,method", [
    ("cnn", 17, 2, 4, "ibp"), ("cnn", 17, 2, 4, "crown-ibp"), ("mlp", 5, 7, 3, "crown-ibp"),
    ("mlp", 5, 7, 3, "crown"), ("cnn_bn", 18, 2, 4, "crown-ibp"), ("cnn_bn", 17, 1, 2, "crown")])
def test_tiled_equals_one_call(backend, name, batch, n_radii, tiles, method, count_tiles, monkeypatch):
    monkeypatch.setattr(chunking, "MIN_ROWS_INTERVALS", chunking.MIN_ROWS)  # IBP tiled alike, to compare
    net, x, y = make_case(name, seed=3, batch=batch)
    n_out = net(x).shape[1]
    C = torch.randn(batch, 3, n_out, dtype=x.dtype, generator=torch.Generator().manual_seed(5))
    radii = torch.linspace(0.02, 0.2, n_radii, dtype=x.dtype).unsqueeze(1) * (1 + torch.rand(batch, dtype=x.dtype))
    x_min = torch.zeros_like(x)  # per-sample domain limits: split with the batch
    x_max = torch.ones_like(x[0])
    set_tile_budget(0)
    want = _bounds_and_grads(net, x, radii, C, method, backend, x_min, x_max)
    assert count_tiles == [(n_radii, batch)]
    count_tiles.clear()
    set_tile_budget(1)  # one byte: tiles of MIN_ROWS rows
    got = _bounds_and_grads(net, x, radii, C, method, backend, x_min, x_max)
    assert len(count_tiles) == tiles and sum(n * b for n, b in count_tiles) == n_radii * batch
    for w, g in zip(want[:3], got[:3]):
        torch.testing.assert_close(g, w, **TIGHT)
    for w, g in zip(want[3], got[3]):
        torch.testing.assert_close(g, w, **TIGHT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiled_gm_loss_and_no_spec(backend, count_tiles):
    net, x, y = make_case("mlp", seed=4, batch=24)
    results = []
    for budget in (0, 1):
        set_tile_budget(budget)
        net.zero_grad(set_to_none=True)
        res = gm_loss(net, x, y, 0.2, n_radii=4, kappa=0.3, x_min=0.0, x_max=1.0, backend=backend)
        res.loss.backward()
        out = gmbound.compute_bounds(net, x, [0.05, 0.1], method="crown-ibp", x_min=0.0, x_max=1.0,
                                     backend=backend)
        results.append((res.loss.detach(), [p.grad.clone() for p in net.parameters()], out.lower, out.upper))
    assert len(count_tiles) > 4  # the second round was tiled
    (l0, g0, lo0, up0), (l1, g1, lo1, up1) = results
    torch.testing.assert_close(l1, l0, **TIGHT)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(lo1, lo0, **TIGHT)
    torch.testing.assert_close(up1, up0, **TIGHT)


def test_bad_spec_is_named_before_tiling():
    net, x, y = make_case("mlp", seed=1, batch=20)
    set_tile_budget(1)
    with pytest.raises(gmbound.BoundInputError, match=r"B=20"):
        BoundedSequential(net).bounds(x, [0.1, 0.2], torch.zeros(19, 2, 4, dtype=x.dtype), method="crown-ibp")


def test_interval_passes_keep_tiles_of_at_least_256_rows(count_tiles):
    """IBP holds no Lambda: its tiles stay large (small ones only cost; see chunking.MIN_ROWS_INTERVALS)."""
    net, x, _ = make_case("cnn", seed=2, batch=100)
    set_tile_budget(1)
    BoundedSequential(net).bounds(x, torch.linspace(0.01, 0.1, 6, dtype=x.dtype), method="ibp")
    assert count_tiles == [(2, 100), (2, 100), (2, 100)]
    count_tiles.clear()
    BoundedSequential(net).bounds(x, 0.1, torch.ones(100, 1, 5, dtype=x.dtype), method="crown-ibp")
    assert len(count_tiles) == 7  # CROWN-IBP: tiles of MIN_ROWS = 16 rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,batch,n_radii,tile_radii", [("mlp", 5, 7, [3, 3, 1]), ("cnn_bn", 6, 5, [2, 2, 1])])
def test_crown_ibp_tiles_share_one_interval_pass(backend, name, batch, n_radii, tile_radii, count_tiles, monkeypatch):
    """CROWN-IBP tiles holding whole batches run one interval pass for all their radii, on slices
    of which each tile back-substitutes: bounds (IBP, CROWN-IBP and their mix) and gradients equal
    those of one untiled call."""
    from gmbound import propagation
    passes = []
    inner = propagation.relu_intervals

    def spy(graph, box, prims):
        passes.append(box[0].shape[0])
        return inner(graph, box, prims)
    monkeypatch.setattr(propagation, "relu_intervals", spy)
    net, x, y = make_case(name, seed=6, batch=batch)
    n_out = net(x).shape[1]
    C = torch.randn(batch, 3, n_out, dtype=x.dtype, generator=torch.Generator().manual_seed(7))
    radii = torch.linspace(0.02, 0.2, n_radii, dtype=x.dtype).unsqueeze(1) * (1 + torch.rand(batch, dtype=x.dtype))
    for beta in (1.0, 0.4):
        results = []
        for budget in (0, 1):
            set_tile_budget(budget)
            passes.clear()
            count_tiles.clear()
            net.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_(True)
            b = BoundedSequential(net).bounds(xg, radii, C, method="crown-ibp", beta=beta, x_min=0.0, x_max=1.0,
                                              backend=backend)
            (b.lower.sum() - 0.5 * b.upper.sum()).backward()
            results.append((b.lower.detach(), b.upper.detach(), xg.grad, [p.grad.clone() for p in net.parameters()]))
        assert passes == [n_radii]  # the tiled call: one interval pass for all radii
        assert [n for n, _ in count_tiles] == tile_radii and all(s == batch for _, s in count_tiles)
        (want, got) = results
        for w, g in zip(want[:3], got[:3]):
            torch.testing.assert_close(g, w, **TIGHT)
        for w, g in zip(want[3], got[3]):
            torch.testing.assert_close(g, w, **TIGHT)


def test_interval_pass_groups_are_whole_crown_tiles():
    tiles = chunking.Tiles(2, 64)
    assert chunking.radii_per_interval_pass(tiles, 10, 64, 1000, budget=10 ** 9) == 10            # all radii
    assert chunking.radii_per_interval_pass(tiles, 10, 64, 1000, budget=1) == 4                   # 256 rows
    assert chunking.radii_per_interval_pass(tiles, 10, 64, 1000, budget=384 * 1000) == 6          # 3 tiles
    assert chunking.radii_per_interval_pass(chunking.Tiles(1, 32), 10, 64, 1000, budget=1) == 1  # split batch
    assert chunking.radii_per_interval_pass(chunking.Tiles(10, 64), 10, 64, 1000, budget=1) == 10  # one tile
