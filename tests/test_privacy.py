"""DP-SGD: Optax 0.2.8 with the same key, the paper's equations, the noise's distribution.

Our key handling matches Optax's (each update splits the key into one to carry
and one per leaf), so the comparison with ``optax.contrib`` uses the same key:
the noise is the same, the results agree to an ulp of each leaf. The noise is
also checked in distribution (its mean and variance over many draws), and
without noise the update is checked against a float64 NumPy loop of Abadi et al. 2016, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from tests.ranges import NON_NEGATIVE, POSITIVE, RATE
from tests.registry import on_example_batches
from tests.test_adaptive import parabola, rosenbrock

BATCH, STEPS = 6, 40
_rng = np.random.default_rng(11)
PARAMS = {"w": _rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
# per-example gradients, every leaf (STEPS, BATCH, *shape); norms from about 0.3 to 8
_scales = np.exp(_rng.uniform(np.log(0.1), np.log(2.5), size=(STEPS, BATCH, 1)))
PER_EXAMPLE = {
    "w": (_rng.normal(size=(STEPS, BATCH, 12)) * _scales).reshape(STEPS, BATCH, 4, 3),
    "b": _rng.normal(size=(STEPS, BATCH, 3)) * _scales,
}
PER_EXAMPLE = jax.tree.map(lambda x: x.astype(np.float32), PER_EXAMPLE)


def _run(lib: Any, tx: Any) -> tuple[Any, Any]:
    def step(carry: Any, g: Any) -> tuple[Any, Any]:
        params, state = carry
        u, state = tx.update(g, state, params)
        return (lib.apply_updates(params, u), state), u

    (params, _), updates = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), PER_EXAMPLE)
    return updates, params


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.differentially_private_aggregate(1.0, 1.1, key=jax.random.key(3)),
        lambda m: m.dpsgd(0.05, 0.5, 0.8, 7, momentum=0.9, nesterov=True),
        lambda m: m.dpsgd(0.05, 2.0, 0.0, 0),
    ],
    ids=["aggregate", "dpsgd_nesterov", "dpsgd_no_noise"],
)
@pytest.mark.filterwarnings("ignore:.*seed.*deprecated:DeprecationWarning")  # Optax's dpsgd
def test_matches_optax_contrib_with_the_same_key(make: Callable[[Any], Any]) -> None:
    # The same key draws the same noise; the clipped sums differ from Optax's by an ulp at
    # most (gradchain's per_example_global_norm_clip scales and sums in its own order).
    # Measured: 1.9e-7 of each leaf's largest value, updates and final parameters.
    got = jax.jit(lambda: _run(gc, make(gc)))()
    with jax.numpy_dtype_promotion("standard"):
        want = jax.jit(lambda: _run(optax, make(optax.contrib)))()
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=3e-7 * float(np.max(np.abs(w))))


def dp_mean_ref(per_example: np.ndarray, clip: float) -> np.ndarray:
    """Abadi et al. 2016, Algorithm 1 without the noise: clip each g_i to norm C, average."""
    flat = per_example.reshape(per_example.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.maximum(1.0, norms / clip)).mean(axis=0)


def test_without_noise_the_update_is_the_mean_of_the_clipped_gradients_in_float64() -> None:
    tx = gc.differentially_private_aggregate(1.0, 0.0, key=0)
    state, update = tx.init(PARAMS), jax.jit(tx.update)
    for t in range(5):
        g = jax.tree.map(lambda x: x[t], PER_EXAMPLE)  # noqa: B023
        u, state = update(g, state)
        joined = np.concatenate([np.asarray(g["b"]), np.asarray(g["w"]).reshape(BATCH, -1)], 1)
        want = dp_mean_ref(joined, 1.0)
        got = np.concatenate([np.asarray(u["b"]), np.asarray(u["w"]).ravel()])
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-8)


def test_the_noise_is_gaussian_with_deviation_noise_multiplier_times_clip_over_batch() -> None:
    clip, sigma, draws = 0.5, 2.0, 4000
    tx = gc.differentially_private_aggregate(clip, sigma, key=jax.random.key(42))
    zeros = {"w": jnp.zeros((BATCH, 5))}

    def step(state: Any, _: Any) -> tuple[Any, Any]:
        u, state = tx.update(zeros, state)
        return state, u["w"]

    noise = np.asarray(jax.jit(lambda: jax.lax.scan(step, tx.init(None), None, draws)[1])())
    z = noise.ravel() * BATCH / (clip * sigma)  # standard normal if the deviation is right
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)
    assert abs(np.corrcoef(noise[:-1, 0], noise[1:, 0])[0, 1]) < 0.1  # fresh keys each step


def test_the_key_makes_runs_reproducible_and_advances_in_the_state() -> None:
    def first_two(key: Any) -> tuple[Any, Any]:
        tx = gc.differentially_private_aggregate(1.0, 1.0, key=key)
        state = tx.init(PARAMS)
        g = jax.tree.map(lambda x: x[0], PER_EXAMPLE)
        u1, state = tx.update(g, state)
        u2, state = tx.update(g, state)
        return u1["b"], u2["b"]

    a1, a2 = first_two(jax.random.key(5))
    b1, _ = first_two(5)  # an integer seed is the same key
    c1, _ = first_two(jax.random.PRNGKey(5))  # and so is the legacy key
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a1, c1)
    assert not np.allclose(a1, a2)
    assert not np.allclose(a1, first_two(6)[0])


def test_the_state_is_plain_arrays_that_flax_serializes() -> None:
    from flax import serialization

    tx = gc.dpsgd(0.1, 1.0, 1.0, seed=3)
    state = tx.init(PARAMS)
    _, state = tx.update(jax.tree.map(lambda x: x[0], PER_EXAMPLE), state, PARAMS)
    restored: Any = serialization.from_bytes(state, serialization.to_bytes(state))
    dp_state: Any = state[0]
    np.testing.assert_array_equal(restored[0].rng_key, dp_state.rng_key)
    assert dp_state.rng_key.dtype == jnp.uint32


def test_a_missing_or_doubled_or_bad_key_is_refused() -> None:
    fn = "differentially_private_aggregate"
    with pytest.raises(ValueError, match=rf"^{fn}: the noise needs a random key you choose"):
        gc.differentially_private_aggregate(1.0, 1.0)
    with pytest.raises(ValueError, match=rf"^{fn}: give `key` or `seed`, not both"):
        gc.differentially_private_aggregate(1.0, 1.0, key=0, seed=0)
    with pytest.raises(TypeError, match=rf"^{fn}: `key` must be a jax.random.key"):
        gc.differentially_private_aggregate(1.0, 1.0, key="0")  # type: ignore[arg-type]


def test_per_example_gradients_of_different_batch_sizes_are_refused_naming_paths() -> None:
    tx = gc.differentially_private_aggregate(1.0, 1.0, key=0)
    bad = {"w": jnp.ones((4, 3)), "b": jnp.ones((5, 3))}
    with pytest.raises(ValueError, match=r"per_example_global_norm_clip.*\['b'\]|\['w'\]"):
        tx.update(bad, tx.init(None))


CONVERGE_STEPS = 5000


@pytest.mark.parametrize("problem", [parabola, rosenbrock])
def test_dpsgd_minimizes_a_parabola_and_the_rosenbrock_function(problem: Any) -> None:
    start, minimum, loss = problem()
    rate = gc.cosine_decay_schedule(0.01, CONVERGE_STEPS, 1e-3)
    tx = gc.dpsgd(rate, 1.0, 0.01, seed=0, momentum=0.9)

    def step(carry: Any, _: Any) -> tuple[Any, None]:
        params, state = carry
        g = jax.grad(loss)(params)
        u, state = tx.update(jnp.stack([g] * 4), state, params)  # four identical examples
        return (gc.apply_updates(params, u), state), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, CONVERGE_STEPS)[0][0])
    final = run(start)
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(final, minimum, rtol=0, atol=1e-2)


def _aggregate(**kw: Any) -> Any:
    return on_example_batches(gc.differentially_private_aggregate(**kw))


def _dpsgd(**kw: Any) -> Any:
    return on_example_batches(gc.dpsgd(**kw))


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "differentially_private_aggregate": (
        _aggregate,
        {"l2_norm_clip": 1.0, "noise_multiplier": 0.5, "key": 0},
    ),
    "dpsgd": (
        _dpsgd,
        {"learning_rate": 0.1, "l2_norm_clip": 1.0, "noise_multiplier": 0.5, "seed": 0},
    ),
}
_AGG = "differentially_private_aggregate"
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    (_AGG, "l2_norm_clip", POSITIVE, _AGG),
    (_AGG, "noise_multiplier", NON_NEGATIVE, _AGG),
    ("dpsgd", "l2_norm_clip", POSITIVE, _AGG),
    ("dpsgd", "noise_multiplier", NON_NEGATIVE, _AGG),
    ("dpsgd", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    ("dpsgd", "momentum", RATE, "dpsgd"),
    ("dpsgd", "weight_decay", NON_NEGATIVE, "add_decayed_weights"),
]
OPTAX_PARITY_NAMES = frozenset({"differentially_private_aggregate", "dpsgd"})
