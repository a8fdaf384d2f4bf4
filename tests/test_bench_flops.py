"""benchmarks/bench_bounds.py's fraction-of-peak lines: a measured rate above the assumed peak is
flagged (a VM's cpuinfo gives the nominal clock, below the boost the cores run at)."""
from __future__ import annotations

from benchmark_scripts import load_benchmark


def _result(bench, gflop, cpu_s):
    return bench.Result("dm-large", 10, "gm-train", "cpu", 8, cpu_s, [cpu_s], 1.0, "samples/s", None,
                        cpu_median_s=cpu_s, gflop=gflop)


def test_a_rate_above_the_peak_is_flagged(monkeypatch):
    bench = load_benchmark("bench_bounds")
    monkeypatch.setattr(bench, "sgemm_gflops", lambda: (80.0, 80.0))
    below = bench.flop_lines([_result(bench, 600.0, 7.5)], 100.0, "given", 1)       # 80 GFLOP/s of 100
    assert not any(line.startswith("warning") for line in below)
    assert "80.0 % of one core's peak" in below[-1]
    above = bench.flop_lines([_result(bench, 600.0, 5.0)], 100.0, "given", 1)       # 120 GFLOP/s of 100
    assert above[-1].startswith("warning: 120.0 GFLOP per CPU second") and "--peak-gflops" in above[-1]
    monkeypatch.setattr(bench, "sgemm_gflops", lambda: (240.0, 120.0))             # the matmul alone, 2 threads
    assert bench.flop_lines([], 200.0, "given", 2)[-1].startswith("warning: 120.0")
