"""benchmarks/gpu_check.py --dry-run: the GPU check's steps on the CPU at tiny sizes, so the script a
lent GPU runs is known to work before a GPU is there."""
from __future__ import annotations

import json

import pytest

from benchmark_scripts import load_benchmark
from backends import needs_extension


def _load():
    return load_benchmark("gpu_check")


@needs_extension
def test_gpu_check_dry_run(tmp_path, capsys):
    gpu_check = _load()
    rc = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads((tmp_path / "results.json").read_text())
    assert [(s["name"], s["status"]) for s in result["steps"]] == [
        ("build", "PASS"), ("tests", "PASS"), ("sanitizer", "PASS"), ("grid", "PASS")]
    assert "0 failures, 0 errors, 0 skipped" in result["steps"][1]["detail"]
    for key in ("device", "torch", "torch_cuda", "nvcc", "commit"):
        assert key in result["meta"]
    # the grid: every task, reference and compiled, TF32 off and on
    seen = {(r["task"], r["backend"], r["tf32"]) for r in result["rows"]}
    assert seen == {(t, b, f) for t in ("ibp", "crown-ibp", "gm-train") for b in ("reference", "cpu")
                    for f in (False, True)}
    assert all(r["median_s"] > 0 for r in result["rows"])
    md = (tmp_path / "results.md").read_text()
    assert "| dm-small | 1 | 2 | gm-train | on | cpu |" in md and "commit" in md


def test_gpu_check_refuses_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert _load().main(["--out", str(tmp_path)]) == 2
