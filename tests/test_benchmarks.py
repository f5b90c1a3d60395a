"""The benchmarks still run: a ``--quick`` pass yields every ratio (nothing about speed)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import jax
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench_adam = load_benchmark("bench_adam")


def test_quick_adam_benchmark_reports_a_ratio_per_case(capsys):
    rows = bench_adam.main(quick=True)
    cases = {(r.optimizer, r.tree, r.metric) for r in rows}
    assert cases == {
        (opt, tree, metric)
        for opt in ("adam", "adamw")
        for tree in ("1 leaf", "10 leaves")
        for metric in ("first call", "step")
    }
    for r in rows:
        assert r.gradchain_s > 0 and r.optax_s > 0
        assert math.isfinite(r.ratio) and r.ratio == r.gradchain_s / r.optax_s
        q1, q2, q3 = r.round_ratios
        assert 0 < q1 <= q2 <= q3 < math.inf
    report = capsys.readouterr().out
    assert "gradchain / Optax" in report
    assert report.count("| adam") == len(rows)


def test_optax_gets_standard_promotion_exactly_when_strict_breaks_it():
    with jax.numpy_dtype_promotion("strict"):
        assert bench_adam.optax_needs_standard_promotion()
    with jax.numpy_dtype_promotion("standard"):
        assert not bench_adam.optax_needs_standard_promotion()


def test_cli_defaults_are_the_documented_full_run():
    args = bench_adam._parse_args([])
    assert (args.size, args.leaves, args.rounds, args.compile_rounds) == (
        10_000_000,
        [1, 1000],
        50,
        3,
    )
    assert bench_adam._parse_args(["--quick"]).quick


@pytest.mark.slow  # three compilations of the digits MLP, ~10 s
def test_quick_sweep_benchmark_reports_every_ratio(capsys):
    bench_sweep = load_benchmark("bench_sweep")
    (row,) = bench_sweep.main(quick=True)
    assert row.k == 2
    for ratio in (row.run_ratio, row.total_ratio, row.naive_ratio):
        assert math.isfinite(ratio) and ratio > 0
    assert "| 2 |" in capsys.readouterr().out
