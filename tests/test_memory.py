"""Full CROWN's chunk size from the memory budget (gmbound.memory): derived, capped, and really used."""
from __future__ import annotations

import pytest
import torch

import gmbound
from gmbound import memory, propagation
from nets import make_case


def test_parse_size():
    assert memory.parse_size("4GiB") == 4 * 2 ** 30
    assert memory.parse_size("512 MB") == 512 * 10 ** 6
    assert memory.parse_size("1e9") == 10 ** 9
    assert memory.parse_size("64KiB") == 65536
    for bad in ("lots", "4 GiBs", "-1GiB", "0"):
        with pytest.raises(ValueError, match="GMBOUND_CROWN_MEMORY"):
            memory.parse_size(bad)


def test_chunk_of_the_issues_example(monkeypatch):
    """DM-large on MNIST (widest layer 64 x 28 x 28), N = 8, B = 32, float32: 512 rows at once would
    want about 110 GB; on a GPU with 140 GB free the chunk must fit half of it."""
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (140 * 10 ** 9, 141 * 10 ** 9))
    widest = 64 * 28 * 28
    per_row = 2 * 8 * 32 * widest * 4 * memory.LIVE_COPIES
    assert 512 * per_row > 100 * 10 ** 9  # what the old fixed chunk of 512 asked for
    k = memory.crown_chunk(widest, 8, 32, widest, torch.float32, "cuda")
    assert k == 70 * 10 ** 9 // per_row and k * per_row <= 70 * 10 ** 9
    # the environment variable caps the GPU budget too
    monkeypatch.setenv(memory.ENV_VAR, "8GiB")
    assert memory.memory_budget("cuda") == 8 * 2 ** 30
    assert memory.crown_chunk(widest, 8, 32, widest, torch.float32, "cuda") == 8 * 2 ** 30 // per_row


def test_cpu_budget_and_limits(monkeypatch):
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    assert memory.memory_budget("cpu") == memory.CPU_BUDGET_BYTES
    monkeypatch.setenv(memory.ENV_VAR, "1MiB")
    assert memory.memory_budget("cpu") == 2 ** 20
    assert memory.crown_chunk(10 ** 6, 10, 64, 10 ** 6, torch.float64, "cpu") == 1   # at least one row
    assert memory.crown_chunk(5, 1, 1, 5, torch.float32, "cpu") == 5                 # at most the layer
    monkeypatch.setenv(memory.ENV_VAR, "plenty")
    with pytest.raises(ValueError, match="GMBOUND_CROWN_MEMORY='plenty'"):
        memory.memory_budget("cpu")


def test_full_crown_chunks_by_the_budget_on_cpu(monkeypatch):
    """With a small CPU cap, full CROWN back-substitutes the layers in several chunks, and the bounds
    are those of one pass."""
    net, x, _ = make_case("cnn", 0)
    bnet = gmbound.BoundedSequential(net)
    one_pass = bnet.bounds(x, [0.05, 0.1], method="crown", x_min=0, x_max=1, crown_chunk=10_000)
    rows = []
    identity_rows = propagation._identity_rows

    def spy(shape, sl, batch, like):
        rows.append(sl.stop - sl.start)
        return identity_rows(shape, sl, batch, like)

    monkeypatch.setattr(propagation, "_identity_rows", spy)
    # a budget of 5 rows 49 wide (cnn's layers hold 48 to 64 values per sample); N = 2, B = 3, float64
    monkeypatch.setenv(memory.ENV_VAR, str(2 * 2 * 3 * 49 * 8 * memory.LIVE_COPIES * 5))
    chunked = bnet.bounds(x, [0.05, 0.1], method="crown", x_min=0, x_max=1)
    assert len(rows) > 3 and max(rows) <= 5  # many chunks of at most 5 rows
    torch.testing.assert_close(chunked.lower, one_pass.lower)
    torch.testing.assert_close(chunked.upper, one_pass.upper)
    rows.clear()
    monkeypatch.delenv(memory.ENV_VAR)
    bnet.bounds(x, [0.05, 0.1], method="crown", x_min=0, x_max=1)  # 2 GiB: each layer in one pass
    layers = len(rows)
    assert layers >= 1 and all(r > 5 for r in rows)


def test_bad_crown_chunk_is_refused():
    net, x, _ = make_case("mlp", 0)
    bnet = gmbound.BoundedSequential(net)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(gmbound.BoundInputError, match="crown_chunk must be a positive int or None"):
            bnet.bounds(x, 0.1, method="crown", crown_chunk=bad)
