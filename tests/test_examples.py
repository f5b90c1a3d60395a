"""The examples run briefly and fit what they claim to fit.

``examples/linear_regression.py`` is checked against closed-form answers on
its own data: the least-squares optimum (NumPy ``lstsq``) and the Lasso
solution (scikit-learn), which its L1 row must reproduce.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from sklearn.linear_model import Lasso

import gradchain as gc
from tests.example_loader import load_example

lr = load_example("linear_regression")

SHORT = 60  # epochs of the quick run of main
BATCH = 32


@pytest.fixture(scope="module")
def data():
    return lr.load_data()


@pytest.fixture(scope="module")
def optimum(data) -> tuple[np.ndarray, float]:
    """Least-squares weights and bias (float64), and the optimal MSE."""
    x = np.c_[np.asarray(data.x, np.float64), np.ones(data.x.shape[0])]
    y = np.asarray(data.y, np.float64)
    solution, *_ = np.linalg.lstsq(x, y, rcond=None)
    return solution, float(np.mean((x @ solution - y) ** 2))


@pytest.fixture(scope="module")
def short_run() -> dict[str, float]:
    return lr.main(steps=SHORT, batch_size=BATCH, learning_rate=0.1, seed=0)


def methods(epochs: int) -> dict[str, object]:
    built = lr.make_methods(epochs, 442, BATCH, 0.1)
    return {m.name: m for m in built}


def test_main_reports_every_method(short_run):
    assert len(short_run) == 10
    assert "Adam" in short_run and "GD (full batch)" in short_run


def test_every_method_beats_predicting_the_mean_but_not_the_optimum(short_run, optimum):
    _, best = optimum
    for name, loss in short_run.items():
        assert math.isfinite(loss), name
        assert loss < 0.6, (name, loss)  # predicting the mean scores 1.0
        assert loss > best - 1e-5, (name, loss, best)  # nothing beats least squares


def test_step_decay_waits_100_epochs_not_100_steps(short_run):
    # 60 epochs are 780 mini-batch steps: no decay yet, so the rows coincide.
    assert short_run["SGD + step decay"] == short_run[f"SGD (batch {BATCH})"]


@pytest.fixture(scope="module")
def long_gd(data):
    """Plain full-batch GD over 200 epochs."""
    return lr.fit(methods(200)["GD (full batch)"], data, 200, jax.random.key(0))


def test_full_batch_gd_loss_decreases_with_more_steps(short_run, long_gd):
    assert long_gd.steps == 200
    assert long_gd.loss < short_run["GD (full batch)"] - 1e-4
    # Below 2 / curvature, full-batch GD never increases the loss.
    assert np.all(np.diff(long_gd.losses) <= 1e-7)


@pytest.mark.parametrize("batch_size", [None, BATCH])
def test_l2_weight_decay_equals_l2_loss_term_for_sgd(data, long_gd, batch_size):
    lam, key = lr.L2_STRENGTH, jax.random.key(1)
    decay = lr.Method(
        "decay",
        gc.chain(gc.add_decayed_weights(lam, lr.WEIGHTS_ONLY), gc.sgd(0.1)),
        batch_size,
    )
    term = lr.Method("term", gc.sgd(0.1), batch_size, l2_in_loss=lam)
    a, b = (lr.fit(m, data, 200, key) for m in (decay, term))
    for name in ("w", "b"):
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-6, atol=1e-7)
    # ... and it does regularise: the weights shrink.
    assert np.linalg.norm(a.params["w"]) < np.linalg.norm(long_gd.params["w"]) - 0.02


def test_l1_zeroes_the_weights_the_lasso_zeroes(data, long_gd):
    l1 = lr.fit(methods(200)["GD + L1 (cosine lr)"], data, 200, jax.random.key(0))
    assert lr.zero_weights(long_gd.params) == 0
    assert lr.zero_weights(l1.params) >= 4
    # The same minimiser: sklearn's Lasso minimises MSE / 2 + alpha * ||w||_1.
    lasso = Lasso(alpha=lr.L1_STRENGTH / 2, tol=1e-10, max_iter=100_000)
    lasso.fit(np.asarray(data.x, np.float64), np.asarray(data.y, np.float64))
    w = np.asarray(l1.params["w"])
    np.testing.assert_array_equal(np.abs(w) < lr.ZERO_TOL, lasso.coef_ == 0)
    np.testing.assert_allclose(w, lasso.coef_, atol=5e-3)


def test_adam_reaches_the_least_squares_optimum(data, optimum):
    solution, best = optimum
    epochs = 1500
    result = lr.fit(methods(epochs)["Adam"], data, epochs, jax.random.key(0))
    assert result.loss - best < 1e-4 * best
    np.testing.assert_allclose(result.params["w"], solution[:-1], atol=5e-3)


def test_steps_per_epoch_drops_the_last_partial_batch():
    assert lr.steps_per_epoch(442, None) == 1
    assert lr.steps_per_epoch(442, 32) == 13
    with pytest.raises(ValueError, match="batch_size"):
        lr.steps_per_epoch(442, 0)


def test_cli_parses_the_readme_command():
    args = lr._parse_args(["--steps", "500"])
    assert (args.steps, args.batch_size, args.learning_rate, args.seed) == (500, 32, 0.1, 0)
