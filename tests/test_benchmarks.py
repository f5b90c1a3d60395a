"""The benchmarks still run: a ``--quick`` pass yields every ratio (nothing about speed)."""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import jax
import pytest

import gradchain as gc

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(BENCHMARKS))  # bench_step imports its sibling step_contenders
bench_step = load_benchmark("bench_step")


def test_quick_step_benchmark_runs_every_contender_and_yields_every_ratio(tmp_path, capsys):
    out = tmp_path / "step.md"
    report = bench_step.main(quick=True, memory="none", out=out)
    table, skipped = bench_step.sc.contenders()
    names = [c.name for c in table]
    assert {
        "roofline",
        "optax adamw",
        "optax chain5",
        "gradchain adamw",
        "gradchain chain5",
    } <= set(names)
    print_reasons = capsys.readouterr().out
    for reason in skipped:  # a contender left out says why, in the output and the report
        assert f"left out: {reason}" in print_reasons and reason in report.text
    scenarios = [s.name for s in bench_step.QUICK]
    assert [(r.scenario, r.contender) for r in report.results] == [
        (s, n) for s in scenarios for n in names
    ]
    rat = bench_step.ratios(report.results)
    for r in report.results:
        assert len(r.first_call) == 1 and len(r.step) == 5
        assert all(t > 0 for t in r.first_call + r.step)
        assert r.agreement <= bench_step.AGREEMENT
        assert r.state_bytes >= 8  # every contender keeps two float32 moments
        assert (r.kernels is None) == r.contender.startswith("torch")
        x = rat[(r.scenario, r.contender)]
        for value in (x.step_over_t, x.step_over_optax, x.first_over_optax):
            assert math.isfinite(value) and value > 0
        if r.contender == "roofline":
            assert x.step_over_t == 1.0
        if r.contender.startswith("optax"):
            assert x.step_over_optax == 1.0 == x.first_over_optax
    assert out.read_text() == report.text
    assert report.text.count("| 1x10k |") == len(names)
    goals = bench_step.goals(report.results, report.state_rows)
    assert {g.goal for g in goals} >= {
        "one leaf: Adam/AdamW step <= 1.1 T",
        "state <= 8 bytes/param",
        "state <= 4 bytes/param",
        "state ~0 bytes/param",
    }


def test_step_benchmark_state_options_measure_their_bytes_per_parameter():
    rows = {label: (target, got) for label, target, got in bench_step.state_bytes_table()}
    assert rows["optax adamw"][1] == pytest.approx(8.0, abs=1e-3)
    for target, got in rows.values():
        assert got <= 1.02 * target if target else got < 0.1


def test_step_benchmark_refuses_a_contender_that_disagrees_with_optax():
    sc = bench_step.sc
    table, _ = sc.contenders(torch=False)
    base = [c for c in table if c.name in ("roofline", "optax adamw", "optax chain5")]

    def doubled_decay(lib):  # off by lr * wd * p = 1e-5 |p|: ten times the tolerance
        return lib.adamw(sc.LR, b1=sc.B1, b2=sc.B2, eps=sc.EPS, weight_decay=2 * sc.WD)

    wrong = sc.Contender(
        "gradchain adamw", "adamw", functools.partial(sc._build_tx, gc, doubled_decay, False)
    )
    with pytest.raises(AssertionError, match=r"disagree with Optax.*gradchain adamw"):
        bench_step.run_scenario(bench_step.QUICK[0], [*base, wrong], 1, 1, 0, log=lambda _: None)


def test_step_benchmark_memory_probe_runs_in_a_fresh_process():
    (m,) = bench_step.run_probes([("gradchain adamw", "1x10k")], jobs=1, log=lambda line: None)
    assert (m.scenario, m.contender) == ("1x10k", "gradchain adamw")
    # params, gradients and two moments of 10k float32: at least 160 kB planned by XLA
    assert m.xla_peak is not None and m.xla_peak >= 4 * 10_000 * 4
    assert m.xla_temp is not None and m.xla_temp >= 0
    assert m.rss_run >= 0 and (m.rss_step is None or m.rss_step >= 0)


def test_count_fusions_counts_fusion_instructions_only():
    compiled = (
        jax.jit(lambda x: (x * 2 + 1, jax.numpy.sin(x) * 3)).lower(jax.numpy.ones(8)).compile()
    )
    text = compiled.as_text()
    assert bench_step.count_fusions(text) >= 1
    assert bench_step.count_fusions("%f = f32[] fusion(%a), calls=%c\n%fused_computation") == 1


def test_step_cli_defaults_are_the_documented_full_run():
    args = bench_step._parse_args([])
    assert (args.rounds, args.compile_rounds, args.warmups, args.memory) == (20, 2, 3, None)
    assert args.scenarios is None and not args.quick
    assert [s.name for s in bench_step.FULL] == [
        "1x1M",
        "1x10M",
        "1x50M",
        "10x1M",
        "100x100k",
        "1000x10k",
        "1000x1k",
    ]


@pytest.mark.slow  # three compilations of the digits MLP, ~10 s
def test_quick_sweep_benchmark_reports_every_ratio(capsys):
    bench_sweep = load_benchmark("bench_sweep")
    (row,) = bench_sweep.main(quick=True)
    assert row.k == 2
    for ratio in (row.run_ratio, row.total_ratio, row.naive_ratio):
        assert math.isfinite(ratio) and ratio > 0
    assert "| 2 |" in capsys.readouterr().out
