"""Drawdown curves by certified radius: the bisection agrees with the exhaustive grid where it must
(IBP), never reports a radius no direct bound call certified, carries only real adversarial points
upward, and the audit still catches a false certificate."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import gmbound
import gmbound.evaluate as ev
from gmbound.cli import _eval_config, build_parser
from gmbound.config import DEFAULTS
from gmbound.drawdown import certified_matrix, largest_certified_index, pgd_sweep
from gmbound.evaluate import UnsoundBoundError, certified, evaluate

from nets import self_labelled_conv

GRID = [round(0.005 * i, 4) for i in range(21)]          # 0 .. 0.1, 21 radii


def conv_case(seed=0, n=40):
    """A small conv net; labels are its own predictions except a few flipped ones (clean errors)."""
    return self_labelled_conv(seed, n, n_flipped=4)


def first_failure(cert: torch.Tensor) -> torch.Tensor:
    """``[B]``: index of the first uncertified radius of each column of ``cert [N, B]`` (N if none)."""
    n = cert.shape[0]
    idx = torch.arange(n)[:, None].expand_as(cert)
    return torch.where(~cert, idx, n).amin(0)


# ----------------------------------------------------------------------------- the search alone
@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [1, 2, 5, 51, 64])
def test_search_is_exact_on_a_monotone_predicate(k, n):
    g = torch.Generator().manual_seed(n * 10 + k)
    threshold = torch.randint(-1, n, (200,), generator=g)   # certified exactly at indices <= threshold
    calls = []

    def certify_at(s, p):
        calls.append(p.shape[1])
        return p <= threshold[s][None]

    top = largest_certified_index(certify_at, torch.full((200,), -1), torch.full((200,), n), k=k)
    assert torch.equal(top, threshold)
    # each round shrinks the bracket (width n + 1) by about k + 1
    assert len(calls) <= math.ceil(math.log(n + 1, k + 1)) + 1


@pytest.mark.parametrize("k", [1, 3])
def test_search_on_a_non_monotone_predicate_reports_only_direct_certificates(k):
    g = torch.Generator().manual_seed(k)
    n, b = 51, 300
    table = torch.rand(n, b, generator=g) < 0.7           # certified at random radii: anything goes
    top = largest_certified_index(lambda s, p: table[p, s[None].expand_as(p)], torch.full((b,), -1),
                                  torch.full((b,), n), k=k)
    hit = top >= 0
    assert table[top[hit], torch.arange(b)[hit]].all()    # a direct certificate at the reported radius
    assert (top >= first_failure(table) - 1).all()        # every radius below the first failure is covered
    assert not table[0, ~hit].any()                      # -1 only where the first radius fails
    with pytest.raises(ValueError, match="lo < hi"):
        largest_certified_index(lambda s, p: p > 0, torch.tensor([3]), torch.tensor([3]))


def test_certified_matrix():
    m = certified_matrix(torch.tensor([-1, 0, 2]), 4)
    assert m.T.tolist() == [[False] * 4, [True, False, False, False], [True, True, True, False]]


# ----------------------------------------------------------------------------- real bounds
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ibp_bisection_equals_the_exhaustive_grid_per_sample(dtype):
    model, x, y = conv_case()
    model, x = model.to(dtype), x.to(dtype)
    net = gmbound.BoundedSequential(model)
    radii = torch.tensor(GRID, dtype=dtype)
    full = certified(net, x, y, radii, "ibp")                                    # [N, B] every radius
    assert torch.equal(full, certified_matrix(first_failure(full) - 1, len(GRID)))  # IBP: nested certificates
    top = largest_certified_index(lambda s, p: certified(net, x[s], y[s], radii[p], "ibp"),
                                  torch.full((len(y),), -1), torch.full((len(y),), len(GRID)))
    assert torch.equal(certified_matrix(top, len(GRID)), full)
    assert 0 < int(full.sum()) < full.numel()                                    # the grid is interesting


@pytest.mark.parametrize("verifier", ["crown-ibp", "crown"])
def test_crown_bisection_is_sound_and_covers_the_exhaustive_prefix(verifier):
    model, x, y = conv_case(seed=1)
    net = gmbound.BoundedSequential(model)
    radii = torch.tensor(GRID, dtype=x.dtype)
    full = certified(net, x, y, radii, verifier)
    top = largest_certified_index(lambda s, p: certified(net, x[s], y[s], radii[p], verifier),
                                  torch.full((len(y),), -1), torch.full((len(y),), len(GRID)))
    hit = top >= 0
    # a certificate at the reported radius, checked by a direct call on one radius per sample
    direct = certified(net, x[hit], y[hit], radii[top[hit]][None], verifier)[0]
    assert direct.all()
    # never below the exhaustive grid's first failure; so per radius, bisection certifies every
    # sample whose exhaustive certificates are nested up to it
    assert (top >= first_failure(full) - 1).all()
    prefix = certified_matrix(first_failure(full) - 1, len(GRID))
    assert (certified_matrix(top, len(GRID)) | ~prefix).all()


def test_evaluate_both_ways_ibp_identical_crown_ibp_sound():
    model, x, y = conv_case(seed=2, n=60)
    loader = DataLoader(TensorDataset(x, y), batch_size=25)
    kw = dict(verifiers=["ibp", "crown-ibp"], pgd_steps=10, pgd_restarts=2, dtype=torch.float64, seed=5)
    ex = evaluate(model, loader, GRID, exhaustive=True, **kw)
    bi = evaluate(model, loader, GRID, **kw)
    assert ex.radius_search["mode"] == "exhaustive" and bi.radius_search["mode"] == "bisection"
    assert bi.verified_error["ibp"] == ex.verified_error["ibp"]
    assert bi.standard_error == ex.standard_error and bi.sound and ex.sound
    assert bi.pgd_error[0] == ex.pgd_error[0] == bi.standard_error
    # the work it saves
    evals = bi.radius_search["bound_evaluations"]
    assert max(evals.values()) < ex.radius_search["bound_evaluations"]["ibp"] / 2
    assert bi.pgd["attacks"] < ex.pgd["attacks"]
    # PGD never beats a certificate, in either mode; the best verifier is at least each one
    for res in (ex, bi):
        for errs in res.verified_error.values():
            assert all(p <= v for p, v in zip(res.pgd_error, errs))
        assert all(a <= min(ib, cr) for a, ib, cr in zip(res.verified_error_any, res.verified_error["ibp"],
                                                         res.verified_error["crown-ibp"]))
    # deterministic given the seed
    again = evaluate(model, loader, GRID, **kw)
    assert again.pgd_error == bi.pgd_error and again.verified_error == bi.verified_error
    assert again.radius_search == bi.radius_search


def test_clean_errors_are_bounded_once_and_broken_everywhere():
    model, x, y = conv_case(n=30)
    loader = DataLoader(TensorDataset(x, y), batch_size=30)
    seen = []

    def counting(net, xs, ys, radii, verifier, **kw):
        seen.append((radii.shape, int((ys != model(xs).argmax(1)).sum())))
        return certified(net, xs, ys, radii, verifier, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(ev, "certified", counting)
    try:
        res = evaluate(model, loader, GRID, verifiers=["ibp"], pgd_steps=0, dtype=torch.float64)
    finally:
        mp.undo()
    # the 4 clean errors are in the first call only (one radius each), then out of the search
    assert seen[0][1] == 4 and all(wrong == 0 for _, wrong in seen[1:])
    assert res.pgd_error == [4 / 30] * len(GRID)


# ----------------------------------------------------------------------------- PGD
def test_adversarial_points_carried_upward_lie_in_every_larger_box_and_are_misclassified():
    model, x, y = conv_case(seed=3, n=40)
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]
    clean_wrong = model(x).argmax(1) != y
    gen = torch.Generator().manual_seed(0)
    sweep = pgd_sweep(model, x, y, grid, clean_wrong=clean_wrong, steps=10, restarts=2, loss="margin",
                      generator=gen)
    at = sweep.broken_at
    assert (at[clean_wrong] == 0).all()
    carried = (at >= 0) & (at < len(grid) - 1) & ~clean_wrong
    assert int(carried.sum()) >= 3                      # points really are carried up, at several radii
    assert len(set(at[carried].tolist())) >= 2
    with torch.no_grad():
        pred = model(sweep.x_adv).argmax(1)
    for b in range(len(y)):
        if at[b] < 0:
            assert not sweep.broken[:, b].any() and torch.equal(sweep.x_adv[b], x[b])
            continue
        assert pred[b] != y[b]                          # misclassified ...
        dist = float((sweep.x_adv[b] - x[b]).abs().max())
        assert sweep.x_adv[b].min() >= 0 and sweep.x_adv[b].max() <= 1
        for j, r in enumerate(grid):                    # ... and inside every clipped box from its radius up
            assert bool(sweep.broken[j, b]) == (j >= at[b])
            if j >= at[b]:
                assert dist <= r + 1e-12, (b, j)
    # skipped (certified) pairs are not attacked: nothing to attack, nothing broken but the clean errors
    gen = torch.Generator().manual_seed(0)
    none = pgd_sweep(model, x, y, grid, clean_wrong=clean_wrong, skip=torch.ones(len(grid), len(y), dtype=torch.bool),
                     steps=10, generator=gen)
    assert none.attacks == 0 and torch.equal(none.broken_at >= 0, clean_wrong)


def test_audit_catches_a_false_certificate_in_bisection_mode(monkeypatch):
    model, x, y = conv_case(seed=4, n=40)
    loader = DataLoader(TensorDataset(x, y), batch_size=40)

    def everything_certified(net, xs, ys, radii, verifier, **kw):
        return torch.ones(radii.shape[0], xs.shape[0], dtype=torch.bool)

    monkeypatch.setattr(ev, "certified", everything_certified)
    grid = [0.0, 0.05, 0.1, 0.2]
    res = evaluate(model, loader, grid, verifiers=["ibp"], pgd_steps=10, dtype=torch.float64, strict=False)
    audit = res.radius_search["pgd_audit"]
    assert audit["ran"] and audit["attacks"] == 36 and audit["broken"] > 0
    assert res.unsound["ibp"][0] == 4                     # the clean errors "certified" at radius 0
    assert res.unsound["ibp"][-1] == audit["broken"]      # the audit's finds, at the largest radius
    with pytest.raises(UnsoundBoundError, match="UNSOUND"):
        evaluate(model, loader, grid, verifiers=["ibp"], pgd_steps=10, dtype=torch.float64)
    quiet = evaluate(model, loader, grid, verifiers=["ibp"], pgd_steps=10, dtype=torch.float64, strict=False,
                     pgd_audit=False)
    assert not quiet.radius_search["pgd_audit"]["ran"] and quiet.unsound["ibp"] == [4, 0, 0, 0]


def test_cli_flags_choose_the_mode():
    assert DEFAULTS["eval"]["exhaustive"] is False and DEFAULTS["eval"]["pgd_audit"] is True
    args = build_parser().parse_args(["eval", "--checkpoint", "c.pt", "--exhaustive", "--no-pgd-audit"])
    e = _eval_config({}, args)
    assert e["exhaustive"] is True and e["pgd_audit"] is False
    e = _eval_config({"eval": {"exhaustive": True}}, build_parser().parse_args(["eval", "--checkpoint", "c.pt"]))
    assert e["exhaustive"] is True and e["pgd_audit"] is True
