"""The tutorial examples and the schedules gallery run briefly and teach what they claim.

Each script's ``main`` runs with tiny settings and ``out=tmp_path``; its
figure is checked (a real PNG of a sane size) and so is the claim of its
lesson, from the numbers it returns.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import gradchain as gc
from tests.example_loader import load_example
from tests.registry import NAMES, SCHEDULES

gd = load_example("tutorial_gradient_descent")
minibatch = load_example("tutorial_minibatch_sgd")
decay = load_example("tutorial_lr_decay")
regularization = load_example("tutorial_regularization")
choosing = load_example("tutorial_choosing_hyperparameters")
gallery = load_example("schedules_gallery")


def assert_png(path: Path, min_width: int = 600, max_side: int = 4000) -> None:
    """A non-empty PNG whose width and height are in a sane range."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 10_000, (path, len(data))
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert min_width <= width <= max_side and 200 <= height <= max_side, (width, height)


# tutorial_gradient_descent


def test_gradient_descent_on_x_squared_follows_the_closed_form(tmp_path):
    rates = (0.01, 0.1, 0.4, 0.9, 1.0, 1.1)
    iterates = gd.main(steps=12, learning_rates=rates, x0=10.0, out=tmp_path)
    assert_png(tmp_path / "tutorial_gradient_descent.png")
    for lr in rates:
        exact = (1.0 - 2.0 * lr) ** np.arange(13) * 10.0
        np.testing.assert_allclose(iterates[lr], exact, rtol=1e-5, err_msg=f"lr={lr}")
        assert gd.relative_error(iterates[lr], exact) < 1e-5


def test_gradient_descent_converges_below_lr_1_oscillates_at_1_diverges_above():
    for lr in (0.01, 0.1, 0.5, 0.9, 0.99):
        assert abs(gd.descend(lr, 10.0, 40)[-1]) < 10.0, lr
    assert np.all(np.abs(gd.descend(1.0, 10.0, 7)) == 10.0)  # +10, -10, +10, ...
    assert abs(gd.descend(1.01, 10.0, 40)[-1]) > 10.0
    assert gd.descend(0.5, 10.0, 1)[-1] == 0.0  # 1 / f'': one step to the minimum
    assert [gd.regime(lr) for lr in (0.01, 0.1, 0.5, 0.9, 1.0, 1.1)] == [
        "slow",
        "converges",
        "one step",
        "zig-zags in",
        "oscillates",
        "diverges",
    ]


# tutorial_minibatch_sgd


def test_smaller_batches_are_noisier_and_stall_higher(tmp_path):
    result = minibatch.main(epochs=15, batch_sizes=(1, 8, 32, 0), out=tmp_path)
    assert_png(tmp_path / "tutorial_minibatch_sgd.png")
    noise, floor, steps = result["noise"], result["floor"], result["steps"]
    sizes = sorted(noise)  # 1, 8, 32, 354 (the full batch)
    assert sizes[-1] == 354 and steps[354] == 15 and steps[1] == 15 * 354
    jitter = [noise[b] for b in sizes]
    assert jitter == sorted(jitter, reverse=True), jitter  # smaller batch, noisier loss
    assert floor[1] > floor[8] > floor[32], floor


# tutorial_lr_decay


def test_decayed_rates_end_below_the_constant_rate_from_the_same_start(tmp_path):
    floors = decay.main(epochs=30, batch_size=8, decay_every=5, decay_rate=0.5, out=tmp_path)
    assert_png(tmp_path / "tutorial_lr_decay.png")
    constant = floors["constant"]
    decayed = {name: f for name, f in floors.items() if name != "constant"}
    assert len(decayed) == 2
    for name, floor in decayed.items():
        assert floor < 0.5 * constant, (name, floor, constant)


def test_step_decay_counts_epochs_in_optimizer_steps():
    schedules = decay.make_schedules(0.03, steps_per_epoch=44, decay_every=25, decay_rate=0.5)
    step_decay = schedules["step decay (x0.5 every 25 epochs)"]
    assert float(step_decay(25 * 44 - 1)) == pytest.approx(0.03)
    assert float(step_decay(25 * 44)) == pytest.approx(0.015)
    inverse_sqrt = schedules["lr0 / (1 + sqrt(epoch))"]
    assert float(inverse_sqrt(4 * 44)) == pytest.approx(0.01)  # 0.03 / (1 + sqrt(4))


# tutorial_regularization


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    out = tmp_path_factory.mktemp("regularization")
    result = regularization.main(epochs=1500, strengths=9, max_strength=3.0, out=out)
    assert_png(out / "tutorial_regularization.png")
    return result


def test_l1_zeroes_more_weights_as_its_strength_grows(paths):
    zeros = (np.abs(paths["L1"]) < regularization.ZERO_TOL).sum(axis=1)
    assert np.all(np.diff(zeros) >= 0), zeros
    assert zeros[0] == 0 and zeros[-1] == paths["L1"].shape[1], zeros  # from none to all


def test_l2_shrinks_the_weight_norm_monotonically_but_zeroes_none(paths):
    norms = np.linalg.norm(paths["L2"], axis=1)
    assert np.all(np.diff(norms) < 0), norms
    assert not np.any(np.abs(paths["L2"]) < regularization.ZERO_TOL)


def test_l2_path_matches_the_ridge_closed_form_where_gd_has_converged(paths):
    data = regularization.common.diabetes(seed=0)
    x = np.asarray(data.x_train, np.float64)
    y = np.asarray(data.y_train, np.float64)
    n = x.shape[0]
    for lam, w in zip(paths["strength"], paths["L2"], strict=True):
        if lam < 0.05:
            continue  # the shallowest direction needs more steps there
        # Centred data, bias unregularised: grad of MSE + lam/2 ||w||^2 is zero at
        ridge = np.linalg.solve(2 * x.T @ x / n + lam * np.eye(x.shape[1]), 2 * x.T @ y / n)
        np.testing.assert_allclose(w, ridge, atol=2e-3, err_msg=f"lam={lam}")


# tutorial_choosing_hyperparameters


def test_choosing_hyperparameters_derives_its_advice_from_the_measurements(tmp_path):
    rates = (0.001, 0.01, 0.1, 1.0)
    result = choosing.main(
        epochs=30, learning_rates=rates, batch_sizes=(1, 16, 0), budget_epochs=5, out=tmp_path
    )
    assert_png(tmp_path / "tutorial_choosing_hyperparameters.png")
    sweep = result["learning_rate"]
    assert sweep["diverged"] == [1.0]
    assert 0.001 in sweep["too_small"]
    best = sweep["best"]
    assert best in (0.01, 0.1)
    k = rates.index(best)
    finals = [choosing.tail_mean(c) for c in sweep["train"]]
    assert finals[k] == min(f for f in finals if np.isfinite(f))  # the best ends lowest
    advice = "\n".join(result["advice"])
    assert f"{best:g} ended lowest" in advice and "1 diverged" in advice
    # At a fixed budget the full batch takes 5 steps: it is not the lowest.
    batches = result["batch_size"]
    assert set(batches) == {1, 16, 354}
    assert choosing.tail_mean(batches[354]) > min(choosing.tail_mean(c) for c in batches.values())
    assert 0 < result["flat_epoch"] <= 30


def test_flat_epoch_is_where_99_percent_of_the_improvement_is_made():
    curve = np.array([1.0, 0.5, 0.2, 0.1, 0.09, 0.0901, 0.09])
    assert choosing.flat_epoch(curve) == 4  # 1 - 0.99 * 0.91 = 0.0991 first reached there
    assert choosing.diverged(np.array([1.0, 2.0, np.inf]))
    assert not choosing.diverged(np.array([1.0, 0.5]))


# schedules_gallery


def test_gallery_draws_every_public_schedule(tmp_path):
    values = gallery.main(steps=60, out=tmp_path)
    assert_png(tmp_path / "schedules_gallery.png")
    names = gallery.schedule_names(gallery.gallery())
    missing = sorted(SCHEDULES - names)
    assert not missing, f"add these public schedules to examples/schedules_gallery.py: {missing}"
    assert names <= set(gc.__all__)
    for title, curve in values.items():
        assert curve.shape == (60,) and np.all(np.isfinite(curve)), title


def test_every_public_schedule_factory_is_registered_as_a_schedule():
    looks_like_one = {
        name
        for name in gc.__all__
        if name.endswith(("_schedule", "_schedules")) or name == "exponential_decay"
    }
    looks_like_one -= NAMES  # transforms that take a schedule, such as scale_by_schedule
    assert looks_like_one <= SCHEDULES, sorted(looks_like_one - SCHEDULES)


def test_gallery_titles_are_the_calls_that_made_the_schedules():
    calls = gallery.gallery(100)
    joined = next(c for c in calls if c.name == "join_schedules")
    assert joined.source == (
        "join_schedules([linear_schedule(0.0, 1.0, 20), cosine_decay_schedule(1.0, 80)], [20])"
    )
    for call in calls:
        rebuilt = eval(call.source, {name: getattr(gc, name) for name in gc.__all__})
        steps = np.arange(100)
        np.testing.assert_array_equal(
            gallery.evaluate(rebuilt, 100), gallery.evaluate(call.schedule, 100), call.source
        )
        assert steps.size == 100


def test_every_tutorial_parses_its_documented_command():
    assert gd._parse_args(["--steps", "30"]).steps == 30
    assert minibatch._parse_args(["--epochs", "200"]).batch_sizes == [1, 8, 32, 0]
    assert decay._parse_args(["--epochs", "200"]).decay_every == 25
    assert regularization._parse_args(["--epochs", "2000"]).strengths == 25
    assert choosing._parse_args(["--epochs", "100"]).budget_epochs == 20
    assert gallery._parse_args([]).steps == 1000
