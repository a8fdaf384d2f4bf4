"""benchmarks/bench_bounds.py's FLOP-rate lines: each step's rate as a fraction of the large sgemm measured in
the same rounds (not of a nominal clock); a given peak that a measured rate exceeds is flagged."""
from __future__ import annotations

from benchmark_scripts import load_benchmark


def _result(bench, gflop, cpu_s, wall_s=None, sgemm=(80.0, 80.0)):
    wall_s = cpu_s if wall_s is None else wall_s
    return bench.Result("dm-small", 10, "gm-train", "cpu", 64, wall_s, [wall_s], 1.0, "samples/s", None,
                        cpu_median_s=cpu_s, gflop=gflop, sgemm_wall_gflops=sgemm[0], sgemm_cpu_gflops=sgemm[1])


def test_rates_are_fractions_of_the_sgemm_measured_in_the_same_run():
    bench = load_benchmark("bench_bounds")
    # 600 GFLOP in 10 s CPU = 60 GFLOP per CPU second, of an sgemm at 80: 75 %; wall 20 s: 30 of 40 = 75 %
    line = bench.flop_lines([_result(bench, 600.0, 10.0, 20.0, sgemm=(40.0, 80.0))], 1)[0]
    assert "60.0 GFLOP per CPU second = 75.0 % of the sgemm's 80.0" in line
    assert "30.0 GFLOP/s = 75.0 % of the sgemm's 40.0" in line
    assert "peak" not in line  # no nominal clock unless a peak is given


def test_a_rate_above_a_given_peak_is_flagged():
    bench = load_benchmark("bench_bounds")
    below = bench.flop_lines([_result(bench, 600.0, 7.5)], 1, 100.0)        # 80 GFLOP/s of 100
    assert not any(line.startswith("warning") for line in below)
    assert "80.0 % of the given peak" in below[1]
    above = bench.flop_lines([_result(bench, 600.0, 5.0)], 1, 100.0)        # 120 GFLOP/s of 100
    assert above[-1].startswith("warning: 120.0 GFLOP per CPU second")
    # the sgemm itself above a given peak (2 threads: 100 a core)
    assert bench.flop_lines([_result(bench, 60.0, 1.0, sgemm=(240.0, 120.0))], 2, 200.0)[-1].startswith(
        "warning: 120.0")


def test_the_probe_runs_in_the_rounds_of_the_steps(monkeypatch):
    bench = load_benchmark("bench_bounds")
    calls = []
    monkeypatch.setattr(bench, "sgemm_gflops", lambda repeats=5: calls.append(repeats) or (50.0, 70.0 + len(calls)))
    monkeypatch.setattr(bench, "count_step_gflop", lambda *a: 1.0)
    res = bench.run_case("dm-small", 1, "gm-train", 2, bench.torch.device("cpu"), ["reference"], 3, flops=True)
    assert len(calls) == 3 and res[0].sgemm_cpu_gflops == 72.0 and res[0].sgemm_wall_gflops == 50.0
