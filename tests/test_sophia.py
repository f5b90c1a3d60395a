"""Sophia-H and Hutchinson's estimator: against Optax 0.2.8, the paper, two test functions.

Liu, Li, Hall, Liang and Ma, "Sophia: A Scalable Stochastic Second-order
Optimizer for Language Model Pre-training", 2023 (arXiv:2305.14342), Algorithm 3.

Keys: both libraries split the state's key into (next key, subkey) and the
subkey into one key per leaf, so with the same seed the Rademacher vectors, and
so the whole runs, are the same; the parity test compares them bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import gradchain as gc
from tests.ranges import NON_NEGATIVE, POSITIVE, RATE
from tests.registry import half_squared_norm, with_fn
from tests.test_adaptive import parity_problem

PARAMS, _ = parity_problem(11)
_RNG = np.random.default_rng(5)
CURVATURE = jax.tree.map(lambda p: jnp.asarray(_RNG.normal(size=p.shape), jnp.float32), PARAMS)


def objective(params: Any) -> jax.Array:
    """A non-convex, non-separable objective: curvature of both signs, and a coupling term."""
    leaves = zip(jax.tree.leaves(CURVATURE), jax.tree.leaves(params), strict=True)
    total = sum((jnp.sum(a * p**2 + 0.1 * p**4) for a, p in leaves), jnp.float32(0.0))
    w = params["layers"][0]["w"]
    return total + 0.5 * jnp.sum(w[:, :1] * w[:, 1:2])


def _run(lib: Any, tx: Any, steps: int = 100) -> tuple[Any, Any, Any]:
    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        updates, state = tx.update(jax.grad(objective)(params), state, params, obj_fn=objective)
        return (lib.apply_updates(params, updates), state), updates

    (params, state), updates = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), None, steps)
    return updates, params, state


SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "clipped_often": dict(b1=0.9, b2=0.95, gamma=0.05, weight_decay=1e-2, update_interval=3),
    "no_clip_seed": dict(
        clip_threshold=None,
        gamma=1.0,
        eps=1e-3,
        hessian_diagonal_fn="seed",
        weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
    ),
}


def _make(lib: Any, settings: dict[str, Any]) -> Any:
    kw = dict(settings)
    if kw.get("hessian_diagonal_fn") == "seed":
        estimator = getattr(lib, "hutchinson_estimator_diag_hessian", None) or (
            contrib.hutchinson_estimator_diag_hessian
        )
        kw["hessian_diagonal_fn"] = estimator(jax.random.PRNGKey(42))
    make = lib.sophia if lib is gc else contrib.sophia
    return make(1e-2, **kw)


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_sophia_matches_optax_bit_for_bit_over_100_steps_with_the_same_keys(
    settings: dict[str, Any],
) -> None:
    @jax.jit
    def both() -> tuple[Any, Any]:
        got = _run(gc, _make(gc, settings))
        with jax.numpy_dtype_promotion("standard"):
            want = _run(optax, _make(optax, settings))
        return got, want

    (u, p, s), (u_o, p_o, s_o) = both()
    for got, want in ((u, u_o), (p, p_o), (s[0].mu, s_o[0].mu), (s[0].nu, s_o[0].nu)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(s[0].hessian_fn_state.key, s_o[0].hessian_fn_state.key)


def test_hutchinson_matches_optax_and_is_exact_for_a_separable_objective() -> None:
    est = gc.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(3))
    est_o = contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(3))
    h, state = est.update(PARAMS, est.init(PARAMS), PARAMS, obj_fn=objective)
    with jax.numpy_dtype_promotion("standard"):
        h_o, state_o = est_o.update(PARAMS, est_o.init(PARAMS), PARAMS, obj_fn=objective)
    for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(h_o), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(state.key, state_o.key)
    separable, _ = est.update(PARAMS, state, PARAMS, obj_fn=half_squared_norm)
    for leaf in jax.tree.leaves(separable):  # the Hessian of |p|^2 / 2 is the identity
        np.testing.assert_array_equal(leaf, np.ones_like(leaf))


def test_a_typed_key_gives_the_estimates_of_its_raw_key_data_and_a_serializable_state() -> None:
    typed = gc.hutchinson_estimator_diag_hessian(jax.random.key(7))
    raw = gc.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(7))
    h_t, s_t = typed.update(PARAMS, typed.init(PARAMS), PARAMS, obj_fn=objective)
    h_r, s_r = raw.update(PARAMS, raw.init(PARAMS), PARAMS, obj_fn=objective)
    for a, b in zip(jax.tree.leaves(h_t), jax.tree.leaves(h_r), strict=True):
        np.testing.assert_array_equal(a, b)
    assert s_t.key.dtype == jnp.uint32
    np.testing.assert_array_equal(s_t.key, s_r.key)
    restored = flax.serialization.from_bytes(s_t, flax.serialization.to_bytes(s_t))
    np.testing.assert_array_equal(restored.key, s_t.key)


def test_the_estimate_is_unbiased_for_a_coupled_quadratic() -> None:
    a = jnp.array([[2.0, 0.7, -0.3], [0.7, 1.0, 0.5], [-0.3, 0.5, 3.0]])
    est = gc.hutchinson_estimator_diag_hessian(0)
    x = jnp.zeros(3)

    def body(state: Any, _: Any) -> tuple[Any, jax.Array]:
        h, state = est.update(x, state, x, obj_fn=lambda p: 0.5 * p @ a @ p)
        return state, h

    _, hs = jax.lax.scan(body, est.init(x), None, 4000)
    # Each estimate is diag(a) + a sum of +-off-diagonal terms; their mean tends to 0.
    np.testing.assert_allclose(hs.mean(0), jnp.diag(a), atol=0.05)


# --- the paper's equations in float64 ---------------------------------------------------------


def test_updates_match_the_papers_clipped_step_in_float64() -> None:
    """Liu et al. 2023, Algorithm 3: m EMA, h EMA every k steps, clip(m / max(gamma h, eps), 1)."""
    rng = np.random.default_rng(0)
    n, steps, k = 6, 40, 3
    lr, b1, b2, eps, wd, gamma, clip = 0.05, 0.9, 0.95, 1e-3, 0.1, 0.2, 0.5
    diag = rng.uniform(-1.0, 4.0, n)  # curvatures of both signs: clipped and unclipped steps
    x0 = rng.normal(size=n)

    def objective_1d(p: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(jnp.asarray(diag, jnp.float32) * p**2)

    tx = gc.sophia(
        lr,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=wd,
        gamma=gamma,
        clip_threshold=clip,
        update_interval=k,
    )

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], jax.Array]:
        p, s = carry
        u, s = tx.update(jax.grad(objective_1d)(p), s, p, obj_fn=objective_1d)
        return (gc.apply_updates(p, u), s), u

    p32 = jnp.asarray(x0, jnp.float32)
    _, got = jax.jit(lambda: jax.lax.scan(step, (p32, tx.init(p32)), None, steps))()

    # float64 loop; for a separable quadratic the Hutchinson estimate is exactly diag.
    x, m, h = x0.copy(), np.zeros(n), np.zeros(n)
    want, clipped = [], 0
    for t in range(1, steps + 1):
        g = diag * x
        m = b1 * m + (1 - b1) * g
        ratio = (m / (1 - b1**t)) / np.maximum(gamma * h, eps)
        clipped += int(np.sum(np.abs(ratio) > clip))
        u = -lr * (np.clip(ratio, -clip, clip) + wd * x)
        if (t - 1) % k == 0:
            h = b2 * h + (1 - b2) * diag
        x = x + u
        want.append(u)
    assert 0 < clipped < steps * n  # both branches of the clip were taken
    np.testing.assert_allclose(got, np.stack(want), rtol=2e-5, atol=1e-7)


# --- two test functions -------------------------------------------------------------------


def _minimize(tx: Any, start: jax.Array, loss: Callable[[jax.Array], jax.Array], steps: int) -> Any:
    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params, obj_fn=loss)
        return (gc.apply_updates(params, updates), state), None

    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, steps)[0][0])(start)


def test_sophia_minimizes_a_parabola_and_the_rosenbrock_function_in_float32() -> None:
    minimum = jnp.array([1.0, -1.0, 1.0])
    parabola = lambda w: jnp.sum((w - minimum) ** 2)  # noqa: E731
    final = _minimize(
        gc.sophia(0.05, weight_decay=0.0), jnp.array([-1.0, 10.0, 1.0]), parabola, 2000
    )
    np.testing.assert_allclose(final, minimum, atol=1e-2)
    rosen = lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2  # noqa: E731
    tx = gc.sophia(gc.cosine_decay_schedule(0.02, 5000, 1e-2), weight_decay=0.0, gamma=0.05)
    final = _minimize(tx, jnp.zeros(2), rosen, 5000)
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(final, jnp.ones(2), atol=1e-2)


# --- behaviour ------------------------------------------------------------------------------


def test_the_hessian_product_runs_only_on_the_steps_that_use_it() -> None:
    calls = []

    def counted(p: jax.Array) -> jax.Array:
        jax.debug.callback(lambda: calls.append(1))
        return jnp.sum(p**2)

    tx = gc.sophia(0.1, update_interval=4)
    p = jnp.ones(3)
    state = tx.init(p)
    step = jax.jit(lambda g, s: tx.update(g, s, p, obj_fn=counted))
    for _ in range(8):
        _, state = step(p, state)
    jax.effects_barrier()
    assert len(calls) == 2  # steps 0 and 4 only: the estimate is under lax.cond


def test_hyperparameters_are_readable_and_settable_by_name() -> None:
    tx = gc.sophia(0.1, gamma=0.05, clip_threshold=0.5)
    state = tx.init(PARAMS)
    hp = gc.get_hyperparams(state)
    assert sorted(hp) == [
        "b1",
        "b2",
        "clip_threshold",
        "eps",
        "gamma",
        "learning_rate",
        "weight_decay",
    ]
    state = gc.set_hyperparams(state, gamma=0.2)
    assert float(gc.get_hyperparams(state)["gamma"]) == pytest.approx(0.2)
    assert "clip_threshold" not in gc.get_hyperparams(
        gc.sophia(0.1, clip_threshold=None).init(jnp.ones(1))
    )


def test_sophia_without_obj_fn_says_how_to_pass_it() -> None:
    tx = gc.sophia(0.1)
    with pytest.raises(
        TypeError,
        match=r"^hutchinson_estimator_diag_hessian: update needs the "
        r"objective: call `update\(updates, state, params, obj_fn=f\)`",
    ):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: gc.sophia(0.1, update_interval=0), ValueError, r"`update_interval` must be > 0"),
        (
            lambda: gc.sophia(0.1, update_interval=2.5),
            TypeError,
            "`update_interval` must be an int",
        ),
        (
            lambda: gc.sophia(0.1, hessian_diagonal_fn=gc.hutchinson_estimator_diag_hessian),
            TypeError,
            "`hessian_diagonal_fn` is the function",
        ),
        (lambda: gc.hutchinson_estimator_diag_hessian("seed"), TypeError, "`random_seed` must be"),
        (
            lambda: gc.hutchinson_estimator_diag_hessian(jnp.zeros(3, jnp.uint32)),
            ValueError,
            r"shape \(2,\)",
        ),
    ],
)
def test_bad_settings_raise_at_construction(
    make: Callable[[], Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        make()


def test_the_registry_case_runs_through_with_fn() -> None:
    tx = with_fn("obj_fn", gc.sophia(0.1))
    updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


# --- tables for tests/test_errors.py and tests/test_optax_parity.py ---------------------------

FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "sophia": (lambda **kw: with_fn("obj_fn", gc.sophia(**kw)), {"learning_rate": 0.1}),
}
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("sophia", "learning_rate", NON_NEGATIVE, "sophia"),
    ("sophia", "b1", RATE, "sophia"),
    ("sophia", "b2", RATE, "sophia"),
    ("sophia", "eps", NON_NEGATIVE, "sophia"),
    ("sophia", "weight_decay", NON_NEGATIVE, "sophia"),
    ("sophia", "gamma", NON_NEGATIVE, "sophia"),
    ("sophia", "clip_threshold", POSITIVE, "sophia"),
]
OPTAX_PARITY_NAMES = frozenset({"sophia", "hutchinson_estimator_diag_hessian"})
