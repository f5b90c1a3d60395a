"""Adafactor and SM3: against Optax 0.2.8, against their papers, on two test functions.

1. Optax parity: 100 steps of random float32 gradients on a nested pytree, under
   ``jit`` and ``lax.scan``; updates, final parameters and moments within RTOL.
   Adafactor is not bit-identical: gradchain weighs the new statistics by
   ``t**-c`` computed directly, Optax by ``1 - (1 - t**-c)`` (measured: 4e-7
   relative in the updates over 100 steps), so RTOL_ADAFACTOR = 1e-5.
2. Optax 0.2.8's defects, pinned: Adafactor's ``decay_offset`` gives NaN on a
   fresh state; SM3 raises IndexError on a scalar parameter.
3. The papers' equations in float64 NumPy (Shazeer and Stern 2018, Algorithms 4
   and 5; Anil et al. 2019, SM3-II).
4. Convergence on a parabola (also complex64) and the Rosenbrock function, in ``lax.scan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from tests.ranges import NON_NEGATIVE, POSITIVE, RATE, UNIT
from tests.test_adaptive import (
    assert_trees_close,
    decay_mask,
    parity_problem,
)

RTOL = 1e-6
RTOL_ADAFACTOR = 1e-5
PARAMS, GRADS = parity_problem(11)  # leaves (5, 3), (3,), (7, 4) and a scalar
NO_SCALAR = {k: v for k, v in PARAMS.items() if k != "scale"}  # Optax's SM3 fails on scalars
NO_SCALAR_GRADS = {k: v for k, v in GRADS.items() if k != "scale"}


def _run(lib: Any, tx: Any, params: Any, grads: Any) -> tuple[Any, Any, Any]:
    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], Any]:
        p, s = carry
        u, s = tx.update(g, s, p)
        return (lib.apply_updates(p, u), s), u

    (p, s), u = jax.lax.scan(step, (params, tx.init(params)), grads)
    return u, p, s


def _both(make: Callable[[Any], Any], params: Any, grads: Any) -> tuple[Any, Any]:
    @jax.jit
    def run(params: Any, grads: Any) -> tuple[Any, Any]:
        got = _run(gc, make(gc), params, grads)
        with jax.numpy_dtype_promotion("standard"):
            want = _run(optax, make(optax), params, grads)
        return got, want

    return run(params, grads)


def _factored_moments(state: Any) -> list[Any]:
    """Every moment leaf of every factored state, the (1,) placeholders included (Optax's too)."""
    out: list[Any] = []
    for node in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v_row")):
        if hasattr(node, "v_row"):
            for name in ("v_row", "v_col", "v"):
                out += jax.tree.leaves(getattr(node, name))
    return out


def M(p: Any) -> Any:  # noqa: N802  (short, as in tests/test_adaptive.py)
    return decay_mask(p)


def S(step: Any) -> Any:  # noqa: N802
    return gc.exponential_decay(1e-2, 10, 0.8)(step)


ADAFACTOR: list[tuple[str, Callable[[Any], Any]]] = [
    ("scale_by_factored_rms", lambda m: m.scale_by_factored_rms(min_dim_size_to_factor=3)),
    ("scale_by_factored_rms-unfactored", lambda m: m.scale_by_factored_rms(False)),
    (
        "scale_by_factored_rms-hyperparams",
        lambda m: m.scale_by_factored_rms(True, 0.5, 0, 4, 1e-3),
    ),
    ("adafactor-defaults", lambda m: m.adafactor(1e-2)),
    ("adafactor", lambda m: m.adafactor(1e-2, 3)),
    (
        "adafactor-momentum_decay_mask",
        lambda m: m.adafactor(
            S, 3, momentum=0.9, weight_decay_rate=1e-3, weight_decay_mask=M, clipping_threshold=0.5
        ),
    ),
    (
        "adafactor-plain",
        lambda m: m.adafactor(0.1, 3, 0.6, multiply_by_parameter_scale=False, eps=1e-20),
    ),
]
SM3: list[tuple[str, Callable[[Any], Any]]] = [
    ("scale_by_sm3", lambda m: m.scale_by_sm3()),
    ("scale_by_sm3-ema", lambda m: m.scale_by_sm3(0.5, 0.95, 1e-3)),
    ("sm3", lambda m: m.sm3(1e-2)),
    ("sm3-momentum", lambda m: m.sm3(0.1, 0.5)),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in ADAFACTOR])
def test_adafactor_matches_optax_to_the_rounding_of_its_decay_weight(make: Any) -> None:
    (got_u, got_p, got_s), (want_u, want_p, want_s) = _both(make, PARAMS, GRADS)
    assert_trees_close(got_u, want_u, "updates", RTOL_ADAFACTOR)
    assert_trees_close(got_p, want_p, "final params", RTOL_ADAFACTOR)
    got_moments, want_moments = _factored_moments(got_s), _factored_moments(want_s)
    assert [x.shape for x in got_moments] == [x.shape for x in want_moments]  # placeholders too
    for got, want in zip(got_moments, want_moments, strict=True):
        assert_trees_close(got, want, "moments", RTOL_ADAFACTOR)


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in SM3])
def test_sm3_matches_optax_at_every_step(make: Any) -> None:
    (got_u, got_p, got_s), (want_u, want_p, want_s) = _both(make, NO_SCALAR, NO_SCALAR_GRADS)
    assert_trees_close(got_u, want_u, "updates")
    assert_trees_close(got_p, want_p, "final params")
    got_sm3 = got_s if hasattr(got_s, "mu") else got_s[0]
    want_sm3 = want_s if hasattr(want_s, "mu") else want_s[0]
    assert_trees_close(got_sm3.mu, want_sm3.mu, "state.mu")
    assert_trees_close(got_sm3.nu, want_sm3.nu, "state.nu")


OPTAX_PARITY_NAMES = frozenset({"scale_by_factored_rms", "adafactor", "scale_by_sm3", "sm3"})
"""The names this file compares with Optax (tests/test_optax_parity.py counts them)."""


def test_the_parity_cases_cover_every_name_claimed() -> None:
    assert {i.split("-")[0] for i, _ in ADAFACTOR + SM3} == OPTAX_PARITY_NAMES


# --- 2. Optax 0.2.8's defects, fixed ------------------------------------------------------


def test_a_decay_offset_beyond_the_step_restarts_the_average_where_optax_returns_nan() -> None:
    params = {"w": jnp.ones((4, 3))}
    grads = {"w": jnp.full((4, 3), 0.5)}
    with jax.numpy_dtype_promotion("standard"):
        ref = optax.scale_by_factored_rms(step_offset=5, min_dim_size_to_factor=2)
        theirs, _ = ref.update(grads, ref.init(params), params)
    assert bool(jnp.all(jnp.isnan(theirs["w"])))
    tx = gc.scale_by_factored_rms(step_offset=5, min_dim_size_to_factor=2)
    ours, _ = tx.update(grads, tx.init(params))
    fresh, _ = gc.scale_by_factored_rms(min_dim_size_to_factor=2).update(grads, tx.init(params))
    np.testing.assert_array_equal(ours["w"], fresh["w"])  # t = 1: the first step's scaling


def test_sm3_works_on_scalar_parameters_where_optax_raises() -> None:
    with jax.numpy_dtype_promotion("standard"), pytest.raises(IndexError):
        ref = optax.scale_by_sm3()
        ref.update(jnp.float32(2.0), ref.init(jnp.float32(1.0)))
    tx = gc.scale_by_sm3(b1=0.0)
    u, state = tx.update(jnp.float32(-2.0), tx.init(jnp.float32(1.0)))
    assert round(float(u), 6) == -1.0 and [float(a) for a in state.mu] == [4.0]


def test_the_new_statistics_weight_is_accurate_at_a_million_steps_where_optaxs_is_not() -> None:
    t = 10**6
    exact = t**-0.8
    ours = float((jnp.float32(t)) ** -jnp.float32(0.8))
    with jax.numpy_dtype_promotion("standard"):
        theirs = float(1.0 - (1.0 - jnp.asarray(t, jnp.float32) ** -0.8))
    assert abs(ours - exact) / exact < 1e-6
    assert abs(theirs - exact) / exact > 1e-4  # measured: 3.7e-4 (up to 2e-3 near t = 1e6)


def test_state_shapes_keep_the_axes_the_module_docstring_names_and_init_from_shapes() -> None:
    params = {"m": jax.ShapeDtypeStruct((4, 300, 200), jnp.bfloat16), "v": jnp.ones(5)}
    state = gc.scale_by_factored_rms().init(params)
    assert state.v_row["m"].shape == (4, 200)  # the largest axis (300) removed
    assert state.v_col["m"].shape == (4, 300)  # the second-largest (200) removed
    assert state.v["m"].shape == (1,) and state.v["v"].shape == (5,)  # (1,): Optax's, not empty
    assert state.v_row["v"].shape == state.v_col["v"].shape == (1,)
    assert state.v_row["m"].dtype == jnp.bfloat16
    square = gc.scale_by_factored_rms(min_dim_size_to_factor=2).init(jnp.ones((3, 3)))
    assert square.v_row.shape == square.v_col.shape == (3,)


def test_sm3_accumulators_are_float32_for_bfloat16_params_and_keep_growing() -> None:
    tx = gc.scale_by_sm3(b1=0.0)
    params = jnp.ones((2, 3), jnp.bfloat16)
    state = tx.init(params)
    assert [a.dtype for a in state.mu] == [jnp.float32, jnp.float32]
    step = jax.jit(tx.update)
    for _ in range(600):
        _, state = step(jnp.ones((2, 3), jnp.bfloat16), state)
    assert float(state.mu[0][0]) == 600.0  # a bfloat16 sum would stop at 256


def test_a_shape_mismatch_names_the_path_and_the_parameters_shape() -> None:
    tx = gc.scale_by_factored_rms(min_dim_size_to_factor=2)
    state = tx.init({"w": jnp.ones((4, 3))})
    with pytest.raises(
        ValueError, match=r"^scale_by_factored_rms: .* at \['w'\]: \(4, 5\) against \(4, 3\)"
    ):
        tx.update({"w": jnp.ones((4, 5))}, state)


# --- 3. The papers' equations, in float64 --------------------------------------------------

REF_STEPS = 60


def factored_rms_ref(grads: np.ndarray, c: float = 0.8, eps: float = 1e-30) -> np.ndarray:
    """Adafactor's scaling of one (n, m) matrix, n < m, in float64 (Algorithm 4, no clipping)."""
    n, m = grads.shape[1:]
    r, col = np.zeros(n), np.zeros(m)
    out = []
    for t, g in enumerate(grads, start=1):
        beta = 1 - t**-c
        sq = g * g + eps
        r = beta * r + (1 - beta) * sq.mean(axis=1)
        col = beta * col + (1 - beta) * sq.mean(axis=0)
        v_hat = np.outer(r, col) / r.mean()
        out.append(g / np.sqrt(v_hat))
    return np.stack(out)


def sm3_ref(grads: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """SM3-II on an (n, m) matrix with the row and column cover, in float64, no momentum."""
    n, m = grads.shape[1:]
    mu_r, mu_c = np.zeros(n), np.zeros(m)
    out = []
    for g in grads:
        nu = np.minimum(mu_r[:, None], mu_c[None, :]) + g * g
        safe = np.where(nu > 0, nu + eps, 1.0)
        out.append(np.where(nu > 0, g / np.sqrt(safe), 0.0))
        mu_r, mu_c = nu.max(axis=1), nu.max(axis=0)
    return np.stack(out)


def _ref_grads() -> np.ndarray:
    rng = np.random.default_rng(3)
    g = rng.normal(size=(REF_STEPS, 3, 5))
    g[:5, 0] = 0.0  # a row of zeros: SM3's 0/0 branch, Adafactor's epsilon
    return g


def _gradchain_run(tx: Any, grads: np.ndarray) -> np.ndarray:
    def step(s: Any, g: Any) -> tuple[Any, Any]:
        u, s = tx.update(g, s)
        return s, u

    g32 = jnp.asarray(grads, jnp.float32)
    return np.asarray(jax.lax.scan(step, tx.init(g32[0]), g32)[1], np.float64)


def test_factored_rms_follows_the_papers_equations_in_float64() -> None:
    grads = _ref_grads()
    got = _gradchain_run(gc.scale_by_factored_rms(min_dim_size_to_factor=2), grads)
    np.testing.assert_allclose(got, factored_rms_ref(grads), rtol=2e-6, atol=1e-6)


def test_sm3_follows_the_papers_equations_in_float64() -> None:
    grads = _ref_grads()
    got = _gradchain_run(gc.scale_by_sm3(b1=0.0, eps=0.0), grads)
    np.testing.assert_allclose(got, sm3_ref(grads), rtol=2e-6, atol=1e-7)


# --- 4. Convergence, inside lax.scan ------------------------------------------------------

CONVERGE_STEPS = 10_000
CONVERGE_ATOL = 1e-2


def _decaying(peak: float) -> Any:
    return gc.cosine_decay_schedule(peak, CONVERGE_STEPS, alpha=1e-3)


def parabola() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    start, minimum = jnp.array([-1.0, 10.0, 1.0]), jnp.array([1.0, -1.0, 1.0])
    return start, minimum, lambda w: jnp.sum((w - minimum) ** 2)


def complex_parabola() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    start = jnp.array([-1.0 + 2j, 10.0, 1j], jnp.complex64)
    minimum = jnp.array([1.0, -1.0 - 1j, 1.0], jnp.complex64)
    return start, minimum, lambda w: jnp.sum(jnp.abs(w - minimum) ** 2)


def rosenbrock() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    return jnp.zeros(2), jnp.ones(2), lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


CONVERGING = [
    ("adafactor", parabola, lambda: gc.adafactor(_decaying(0.05), momentum=0.9)),
    ("adafactor", rosenbrock, lambda: gc.adafactor(_decaying(0.05), momentum=0.9)),
    ("adafactor", complex_parabola, lambda: gc.adafactor(_decaying(0.05), momentum=0.9)),
    (
        "adafactor",
        complex_parabola,
        lambda: gc.adafactor(_decaying(0.05), multiply_by_parameter_scale=False),
    ),
    ("sm3", parabola, lambda: gc.sm3(1.0)),
    ("sm3", rosenbrock, lambda: gc.sm3(1.0)),
    ("sm3", complex_parabola, lambda: gc.sm3(1.0)),
]


@pytest.mark.parametrize(
    ("problem", "make"),
    [pytest.param(p, m, id=f"{n}-{p.__name__}") for n, p, m in CONVERGING],
)
def test_each_alias_minimizes_a_parabola_and_the_rosenbrock_function(
    problem: Callable[[], Any], make: Callable[[], Any]
) -> None:
    start, minimum, loss = problem()
    tx = make()

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        params, state = carry
        grad = jnp.conj(jax.grad(loss)(params))  # the descent direction for complex parameters
        updates, state = tx.update(grad, state, params)
        return (gc.apply_updates(params, updates), state), None

    final = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, CONVERGE_STEPS)[0][0])(
        start
    )
    assert final.dtype == start.dtype
    np.testing.assert_allclose(final, minimum, rtol=0, atol=CONVERGE_ATOL)


# --- Tables for tests/test_errors.py ------------------------------------------------------

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale_by_factored_rms", "decay_rate", UNIT, "scale_by_factored_rms"),
    ("scale_by_factored_rms", "epsilon", POSITIVE, "scale_by_factored_rms"),
    ("adafactor", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    ("adafactor", "decay_rate", UNIT, "scale_by_factored_rms"),
    ("adafactor", "clipping_threshold", POSITIVE, "adafactor"),
    ("adafactor", "momentum", RATE, "adafactor"),
    ("adafactor", "weight_decay_rate", NON_NEGATIVE, "adafactor"),
    ("adafactor", "eps", POSITIVE, "adafactor"),
    ("scale_by_sm3", "b1", RATE, "scale_by_sm3"),
    ("scale_by_sm3", "b2", UNIT, "scale_by_sm3"),
    ("scale_by_sm3", "eps", NON_NEGATIVE, "scale_by_sm3"),
    ("sm3", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    ("sm3", "momentum", RATE, "sm3"),
]
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_factored_rms": (gc.scale_by_factored_rms, {}),
    "adafactor": (gc.adafactor, {"learning_rate": 0.1}),
    "scale_by_sm3": (gc.scale_by_sm3, {}),
    "sm3": (gc.sm3, {"learning_rate": 0.1}),
}


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: gc.scale_by_factored_rms(step_offset=-1), r"`step_offset` must be >= 0; got -1"),
        (
            lambda: gc.scale_by_factored_rms(min_dim_size_to_factor=0),
            r"`min_dim_size_to_factor` must be > 0; got 0",
        ),
        (
            lambda: gc.adafactor(weight_decay_mask=M),
            r"^adafactor: `weight_decay_mask` selects .* `weight_decay_rate` is None",
        ),
    ],
    ids=["step_offset", "min_dim", "mask_without_decay"],
)
def test_bad_integer_settings_and_a_lone_mask_raise_at_construction(
    build: Callable[[], Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_hyperparameters_are_state_readable_and_settable_by_name() -> None:
    tx = gc.adafactor(0.1, momentum=0.9)
    state = tx.init({"w": jnp.ones((2, 2))})
    hp = gc.get_hyperparams(state)
    assert {"decay_rate", "epsilon", "learning_rate", "decay"} <= set(hp)
    state = gc.set_hyperparams(state, decay_rate=0.5)
    assert math.isclose(float(gc.get_hyperparams(state)["decay_rate"]), 0.5)
