"""The matrix-optimizer example trains every optimizer side by side, reports it, and plots it.

One short run of ``examples/matrix_optimizers.py`` (``STEPS`` steps) is shared by the
tests; it is dominated by compiling six training loops. The thresholds below were
measured on that run with seeds 0, 1 and 2 (see each test) and leave a wide margin.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
from pathlib import Path

import pytest

from tests.example_loader import load_example

mo = load_example("matrix_optimizers")

STEPS = 100


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("matrix")


@pytest.fixture(scope="module")
def run_main(out: Path) -> tuple[dict, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        runs = mo.main(steps=STEPS, out=out)
    return runs, printed.getvalue()


@pytest.fixture(scope="module")
def runs(run_main: tuple[dict, str]) -> dict:
    return run_main[0]


def test_every_optimizer_is_reported_with_finite_numbers(runs):
    assert tuple(runs) == mo.OPTIMIZERS
    for name, run in runs.items():
        assert run.learning_rate == mo.LEARNING_RATES[name]
        numbers = (run.train_loss, run.val_loss, run.val_accuracy, run.steps_per_second)
        assert all(math.isfinite(x) for x in numbers), run
        assert run.steps_per_second > 0 and run.compile_seconds > 0


def test_the_curves_start_together_and_run_to_the_last_step(runs):
    starts = {float(run.train_curve[0]) for run in runs.values()}
    assert len(starts) == 1  # same seed, same initial MLP
    for run in runs.values():
        assert run.steps[0] == 0 and run.steps[-1] == STEPS
        assert len(run.steps) == mo.CURVE_POINTS + 1
        assert run.train_curve.shape == run.accuracy_curve.shape == run.steps.shape
        assert run.train_curve[-1] == run.train_loss


def test_every_optimizer_is_far_above_chance_after_a_short_run(runs):
    # Chance is 10% and the initial loss about 2.4. After 100 steps every optimizer
    # validates at 85-99% and divides the loss by 1.5 (Muon, SOAP: their searched rates
    # are small and start slowly) to 570 (measured, seeds 0-2).
    for run in runs.values():
        assert run.val_accuracy > 0.75, run
        assert run.train_loss < run.train_curve[0] / 1.3, run


def test_the_routing_and_the_table_are_printed(run_main):
    text = run_main[1]
    assert "0/w        (64, 128)   matrix    1 x 64 x 128" in text
    assert "0/b        (128,)      fallback" in text
    for name in mo.OPTIMIZERS:
        assert f"\n{name} " in text
    assert "compilation excluded" in text


def test_the_figure_is_a_png_of_sensible_size(runs, out):
    data = (out / "matrix_optimizers.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert 1000 <= width <= 2000 and 400 <= height <= 800, (width, height)
    assert 30_000 < len(data) < 1_000_000


def test_soap_on_matrices_only_is_a_visible_partition():
    tx = mo.make_optimizer("SOAP (matrices only)", 1e-3)
    params = {"w": mo.jnp.ones((4, 3)), "b": mo.jnp.zeros(3)}
    assert mo.gc.explain(tx, params).assignment == {"b": "fallback", "w": "matrix"}
    assert "matrix/learning_rate" in mo.gc.get_hyperparams(tx.init(params))


def test_the_cli_defaults_and_flags():
    assert vars(mo._parse_args([])) == {
        "steps": 1000,
        "batch_size": 64,
        "seed": 0,
        "out": mo.DEFAULT_OUT,
        "search": False,
    }
    args = mo._parse_args(["--steps", "50", "--batch-size", "16", "--out", "figs", "--search"])
    assert (args.steps, args.batch_size, args.out, args.search) == (50, 16, Path("figs"), True)
