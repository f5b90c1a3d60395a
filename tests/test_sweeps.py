"""Sweeps and the learning-rate finder: vmapped runs are the runs, errors name the fix.

Float tolerance: a vmapped run and the same run alone compute the same
arithmetic, but XLA may block a batched matmul differently from an unbatched
one, so losses agree to about one float32 rounding per step; over the 30
steps compared here that stays below rtol 1e-5.
"""

from __future__ import annotations

import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from tests.example_loader import load_example

X = jax.random.normal(jax.random.key(0), (32, 3))
Y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.3
DATA = (X, Y)
STEPS = 30


def mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def init(key):
    return {"w": jax.random.normal(key, (3,)), "b": jnp.zeros([])}


def train_alone(tx, params_by_seed, steps=STEPS):
    """The reference: a plain Python loop of one jitted step per seed, no vmap, no scan."""
    step = jax.jit(lambda p, s: _step(tx, p, s))
    out = []
    for params in params_by_seed:
        state = tx.init(params)
        losses = []
        for _ in range(steps):
            loss, params, state = step(params, state)
            losses.append(float(loss))
        out.append((np.array(losses), params))
    return out


def _step(tx, params, state):
    loss, grads = jax.value_and_grad(mse)(params, DATA)
    updates, state = tx.update(grads, state, params)
    return loss, gc.apply_updates(params, updates), state


def seed_params(seed):
    init_key, _ = jax.random.split(jax.random.key(seed))
    return init(init_key)


def test_each_vmapped_run_follows_the_trajectory_it_takes_alone():
    seeds = (0, 7)
    result = gc.sweep(
        gc.adam(0.1),
        mse,
        init,
        {"learning_rate": [0.01, 0.05, 0.05], "b1": [0.9, 0.5, 0.9]},
        data=DATA,
        steps=STEPS,
        seeds=seeds,
        grid=False,
        return_params=True,
    )
    assert result.losses.shape == (3, 2, STEPS)
    for c in range(3):
        lr, b1 = float(result.configs["learning_rate"][c]), float(result.configs["b1"][c])
        alone = train_alone(gc.adam(lr, b1=b1), [seed_params(seed) for seed in seeds])
        for s, (losses, params) in enumerate(alone):
            np.testing.assert_allclose(result.losses[c, s], losses, rtol=1e-5)
            np.testing.assert_allclose(result.params["w"][c, s], params["w"], rtol=1e-5)
            final = float(mse(params, DATA))
            np.testing.assert_allclose(result.metrics["loss"][c, s], final, rtol=1e-5)


def test_a_grid_is_every_combination_learning_rate_major():
    result = gc.sweep(
        gc.adam(0.1),
        mse,
        init,
        {"learning_rate": [0.01, 0.05], "b1": [0.5, 0.9]},
        data=DATA,
        steps=2,
    )
    np.testing.assert_array_equal(result.configs["learning_rate"], [0.01, 0.01, 0.05, 0.05])
    np.testing.assert_array_equal(result.configs["b1"], [0.5, 0.9, 0.5, 0.9])
    assert result.losses.shape == (4, 1, 2)


def test_a_factory_sweeps_a_schedule_peak_the_state_cannot_hold():
    def factory(peak):
        return gc.sgd(gc.cosine_decay_schedule(peak, STEPS))

    result = gc.sweep(factory, mse, init, {"peak": [0.01, 0.1]}, data=DATA, steps=STEPS)
    for c, peak in enumerate([0.01, 0.1]):
        ((losses, _),) = train_alone(factory(peak), [seed_params(0)])
        np.testing.assert_allclose(result.losses[c, 0], losses, rtol=1e-5)


def test_a_factory_and_set_hyperparams_give_the_same_sweep():
    values = {"learning_rate": [0.01, 0.1], "weight_decay": [0.0, 0.5]}
    by_state = gc.sweep(gc.adamw(0.1), mse, init, values, data=DATA, steps=STEPS)
    by_factory = gc.sweep(gc.adamw, mse, init, values, data=DATA, steps=STEPS)
    np.testing.assert_allclose(by_state.losses, by_factory.losses, rtol=1e-6)


def test_named_chain_hyperparameters_are_swept_by_their_prefixed_names():
    tx = gc.named_chain(("decay", gc.add_decayed_weights(0.0)), ("opt", gc.sgd(0.1)))
    result = gc.sweep(
        tx, mse, init, {"decay/weight_decay": [0.0, 1.0]}, data=DATA, steps=5, grid=False
    )
    assert result.metrics["loss"][1, 0] > result.metrics["loss"][0, 0]  # decay fights the fit


def test_seeds_start_from_different_initial_parameters_and_configs_share_them():
    result = gc.sweep(
        gc.sgd(0.1), mse, init, {"learning_rate": [0.01, 0.1]}, data=DATA, steps=3, seeds=(0, 1)
    )
    first = result.losses[:, :, 0]  # before any update: the initial loss
    np.testing.assert_array_equal(first[0], first[1])  # each seed's init shared across configs
    assert first[0, 0] != first[0, 1]
    np.testing.assert_allclose(first[0, 1], float(mse(seed_params(1), DATA)), rtol=1e-6)


def test_a_key_dependent_batch_function_gives_each_seed_its_own_batches():
    def batches(key):
        order = jax.vmap(lambda k: jax.random.permutation(k, 32)[:8])(jax.random.split(key, 6))
        return X[order], Y[order]

    params = {"w": jnp.zeros(3), "b": jnp.zeros([])}
    result = gc.sweep(
        gc.sgd(0.1), mse, params, {"learning_rate": [0.1]}, batches=batches, seeds=(0, 1)
    )
    assert result.losses.shape == (1, 2, 6)
    assert not np.array_equal(result.losses[0, 0], result.losses[0, 1])


def test_chunking_gives_the_same_numbers_as_one_vmap():
    args = (gc.adam(0.1), mse, init, {"learning_rate": np.geomspace(1e-3, 1e-1, 5)})
    whole = gc.sweep(*args, data=DATA, steps=STEPS, seeds=(0, 1))
    chunked = gc.sweep(*args, data=DATA, steps=STEPS, seeds=(0, 1), chunk_size=3)
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=1e-6)
    np.testing.assert_allclose(chunked.metrics["loss"], whole.metrics["loss"], rtol=1e-6)


def test_pre_batched_arrays_are_scanned_one_batch_per_step():
    batches = (X.reshape(4, 8, 3), Y.reshape(4, 8))
    params = {"w": jnp.zeros(3), "b": jnp.zeros([])}
    result = gc.sweep(
        gc.sgd(0.1),
        mse,
        params,
        {"learning_rate": [0.0, 0.1]},
        batches=batches,
        eval_fn=lambda p: mse(p, DATA),
    )
    assert result.losses.shape == (2, 1, 4)
    expected = [float(mse(params, (batches[0][t], batches[1][t]))) for t in range(4)]
    np.testing.assert_allclose(result.losses[0, 0], expected, rtol=1e-6)  # lr 0: never moves
    assert result.best("eval") == {"learning_rate": 0.1}


def test_best_never_picks_a_diverged_run():
    result = gc.sweep(
        gc.sgd(0.1), mse, init, {"learning_rate": [1e-3, 0.1, 100.0]}, data=DATA, steps=STEPS
    )
    assert not np.isfinite(result.metrics["loss"][2, 0]) or result.metrics["loss"][2, 0] > 1e6
    assert result.scores()[2] == np.inf or result.scores()[2] > 1e6
    assert result.best() == {"learning_rate": 0.1}
    assert result.mean_losses.shape == (3, STEPS)
    assert result.compile_seconds > 0 and result.run_seconds > 0


def test_unknown_name_is_refused_listing_the_available_ones():
    with pytest.raises(KeyError, match=r"'lr'.*'b1', 'b2', 'eps', 'eps_root', 'learning_rate'"):
        gc.sweep(gc.adam(0.1), mse, init, {"lr": [0.1]}, data=DATA, steps=2)


def test_a_flag_of_a_factory_is_not_a_numeric_hyperparameter():
    with pytest.raises(TypeError, match=r"'nesterov' is not a numeric hyperparameter"):
        gc.sweep(gc.sgd, mse, init, {"nesterov": [0.0, 1.0]}, data=DATA, steps=2)
    with pytest.raises(KeyError, match=r"takes no argument 'momentun'.*'momentum'"):
        gc.sweep(gc.sgd, mse, init, {"momentun": [0.5]}, data=DATA, steps=2)


def test_a_scheduled_name_points_to_the_factory_form():
    tx = gc.sgd(gc.cosine_decay_schedule(0.1, 10))
    with pytest.raises(ValueError, match=r"'learning_rate' follows a schedule.*factory"):
        gc.sweep(tx, mse, init, {"learning_rate": [0.1]}, data=DATA, steps=2)


def test_an_integer_schedule_argument_swept_through_a_factory_says_why_it_fails():
    def factory(warmup):
        return gc.adamw(gc.warmup_cosine_decay_schedule(0.0, 0.1, warmup, 100))

    with pytest.raises(TypeError, match=r"factory failed.*\['warmup'\].*integer size"):
        gc.sweep(factory, mse, init, {"warmup": [5, 10]}, data=DATA, steps=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"hyperparams": {"learning_rate": [0.1, 0.2], "b1": [0.9]}, "grid": False},
            ValueError,
            r"zipped.*one length.*'learning_rate': 2, 'b1': 1",
        ),
        ({"hyperparams": {"learning_rate": []}}, ValueError, "at least one value"),
        ({"hyperparams": {"learning_rate": [0.1, np.nan]}}, ValueError, "all finite"),
        ({"hyperparams": {"learning_rate": ["a"]}}, TypeError, "real numbers"),
        ({"hyperparams": {"learning_rate": [True]}}, TypeError, "real numbers"),
        ({"hyperparams": {"learning_rate": [[0.1]]}}, ValueError, "1-D"),
        ({"hyperparams": {}}, ValueError, "empty"),
        ({"batches": DATA}, ValueError, "exactly one of `data=`"),
        ({"data": None}, ValueError, "exactly one of `data=`"),
        ({"steps": None}, ValueError, "pass `steps=`"),
        ({"seeds": ()}, ValueError, "seeds"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        (
            {"init_params": {"w": jnp.zeros(3), "b": jnp.zeros([])}, "seeds": (0, 1)},
            ValueError,
            "every seed would train the same run",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(kwargs, error, match):
    args = {
        "hyperparams": {"learning_rate": [0.1]},
        "init_params": init,
        "data": DATA,
        "steps": 2,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        gc.sweep(gc.sgd(0.1), mse, **args)


def test_batches_and_steps_must_agree():
    with pytest.raises(ValueError, match=r"`steps=3` but `batches` holds 4"):
        gc.sweep(
            gc.sgd(0.1),
            mse,
            init,
            {"learning_rate": [0.1]},
            batches=(X.reshape(4, 8, 3), Y.reshape(4, 8)),
            steps=3,
        )


# The learning-rate finder, on the diabetes linear model (a fixed problem with a
# hard stability edge at 2 / largest curvature).


def test_the_finder_suggestion_is_stable_across_seeds_and_near_the_grid_best(tmp_path):
    # examples/lr_finder.py on diabetes: mini-batch SGD (batch 32), 16 rates in
    # [1e-4, 3], a 200-step finder; the grid and the suggestion trained 1000 steps.
    lr_finder = load_example("lr_finder")
    out = lr_finder.main(
        finder_steps=200,
        full_steps=1000,
        num_rates=16,
        seeds=4,
        problems=("diabetes",),
        out=tmp_path,
    )["diabetes"]
    suggestion, per_seed = out["suggestion"], np.array(out["per_seed"])
    # Stable: every seed's own suggestion within a factor 1.5 of the suggestion.
    assert np.all(np.abs(np.log(per_seed / suggestion)) < np.log(1.5)), per_seed
    # Near the grid's best rate (within a factor 10: the loss is flat between
    # them, at the noise floor of mini-batch SGD), and as good: its final loss
    # within 2% of the best grid rate's.
    assert abs(np.log(suggestion / out["grid_best"])) < np.log(10), out
    assert out["gap"] < 0.02, out
    assert_png(out["figure"])


def test_the_finder_stays_below_the_stability_edge_of_full_batch_gd():
    # Full-batch GD on mse: Hessian 2 E[x x^T] (with the bias); past 2 / lambda_max it diverges.
    x1 = jnp.concatenate([X, jnp.ones((32, 1))], axis=1)
    edge = 2 / float(jnp.linalg.eigvalsh(2 * x1.T @ x1 / 32).max())
    params = {"w": jnp.zeros(3), "b": jnp.zeros([])}
    found = gc.find_learning_rate(
        gc.sgd(0.1),
        mse,
        params,
        data=DATA,
        steps=50,
        min_lr=1e-3,
        max_lr=10.0,
        num_rates=20,
        seeds=(0,),
    )
    assert found.suggestion < edge
    assert found.suggestion > edge / 10
    assert np.isinf(found.final[found.rates > 1.1 * edge]).all()  # diverged rates never win


def test_the_finder_refuses_bad_ranges():
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        gc.find_learning_rate(gc.sgd(0.1), mse, init, data=DATA, steps=2, min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match="num_rates"):
        gc.find_learning_rate(gc.sgd(0.1), mse, init, data=DATA, steps=2, num_rates=2)
    with pytest.raises(ValueError, match="smoothing"):
        gc.find_learning_rate(gc.sgd(0.1), mse, init, data=DATA, steps=2, smoothing=1.0)


def test_the_finder_plots_on_an_axes_it_is_given(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = gc.find_learning_rate(
        gc.sgd(0.1), mse, init, data=DATA, steps=10, num_rates=5, seeds=(0, 1)
    )
    fig, ax = plt.subplots()
    assert found.plot(ax) is ax
    assert ax.get_xscale() == "log"
    fig.savefig(tmp_path / "finder.png")
    plt.close(fig)
    assert_png(tmp_path / "finder.png")


# The examples, run briefly.


def assert_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, path
    width, height = struct.unpack(">II", data[16:24])
    assert 300 <= width <= 3000 and 200 <= height <= 2000, (width, height)


def test_sweep_example_finds_a_reasonable_grid_point(tmp_path):
    sweep = load_example("sweep")
    out = sweep.main(steps=60, seeds=1, out=tmp_path)
    assert out["runs"] == len(sweep.LEARNING_RATES) * len(sweep.WEIGHT_DECAYS)
    assert out["best"]["learning_rate"] >= 1e-3  # 60 steps: the small rates have not moved
    assert out["val_loss"] < 1.0 and out["val_accuracy"] > 0.7
    assert_png(out["figure"])


@pytest.mark.slow
def test_sweep_example_runs_the_nnx_model_chunked(tmp_path):
    sweep = load_example("sweep")
    out = sweep.main(steps=60, seeds=1, nnx=True, chunk_size=16, out=tmp_path)
    assert out["val_accuracy"] > 0.7
    assert_png(out["figure"])


@pytest.mark.slow
def test_lr_finder_example_on_digits(tmp_path):
    lr_finder = load_example("lr_finder")
    out = lr_finder.main(
        finder_steps=100, full_steps=300, num_rates=10, seeds=2, problems=("digits",), out=tmp_path
    )["digits"]
    # Adam at these rates is noisy run to run (a 0.3% change of rate moved the final
    # loss by 2x in a trial), so: within a factor 4 of the grid's best rate, and a
    # validation loss within 3x of the grid's best (a minimum over noisy runs).
    assert abs(np.log(out["suggestion"] / out["grid_best"])) < np.log(4), out
    assert out["suggestion_val_loss"] < 3 * out["grid_best_val_loss"], out
    assert_png(out["figure"])


def test_batch_size_example_reads_steps_and_examples_to_target():
    tradeoff = load_example("batch_size_tradeoff")
    curve = np.array([2.0, 1.0, 0.4, 0.2])
    assert tradeoff.first_below(curve, 0.5) == 3
    assert tradeoff.first_below(curve, 0.1) is None
    np.testing.assert_allclose(tradeoff.ema(np.full((2, 5), 3.0)), 3.0)  # debiased: no warm-up


@pytest.mark.slow  # two compilations of the digits MLP, ~15 s
def test_batch_size_example_shows_the_trade_off(tmp_path):
    tradeoff = load_example("batch_size_tradeoff")
    out = tradeoff.main(
        steps=150,
        batch_sizes=(16, 128),
        learning_rates=(3e-3, 3e-2),
        seeds=1,
        target=0.5,
        out=tmp_path,
    )
    small, large = out["rows"][16], out["rows"][128]
    assert large["steps_to_target"] is not None and small["steps_to_target"] is not None
    assert large["steps_to_target"] <= small["steps_to_target"]  # fewer steps per batch...
    assert large["examples_to_target"] >= small["examples_to_target"]  # ...more examples
    assert_png(out["figure"])
