"""Schedule-free: against Optax 0.2.8, the paper's recurrence, two test functions, eval_params.

Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, "The Road Less Scheduled",
NeurIPS 2024 (arXiv:2405.15682), equations (1)-(3) and Algorithm 1.

Optax parity: ``z`` is bit-identical; Optax forms the new ``y`` from ``y``, ``z``
and ``x`` by an algebraically equal expression with other roundings, so the
parameters ``y`` and ``x`` agree to ``RTOL`` (measured: 6e-7 relative to the
leaf's largest value over 100 steps) and the updates, differences of nearly
equal numbers, to ``RTOL`` times the parameters' scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import gradchain as gc
from tests.ranges import NON_NEGATIVE, RATE, UNIT
from tests.test_adaptive import parity_problem

PARAMS, GRADS = parity_problem(17)
RTOL = 5e-6


def _run(lib: Any, tx: Any, eval_fn: Callable[[Any, Any], Any]) -> Any:
    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        params = lib.apply_updates(params, updates)
        return (params, state), (updates, params, eval_fn(state, params))

    return jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), GRADS)


MAKES: dict[str, Callable[[Any], Any]] = {
    "sgd": lambda lib: lib.schedule_free_sgd(0.1, b1=0.9, weight_decay=1e-2),
    "adamw": lambda lib: lib.schedule_free_adamw(1e-2, b1=0.95, weight_decay=1e-2),
    "wrapper": lambda lib: lib.schedule_free(lib.sgd(0.05), 0.05, weight_lr_power=1.0),
}


def _make(name: str, lib: Any) -> Any:
    if name == "wrapper" and lib is optax:
        return contrib.schedule_free(optax.sgd(0.05), 0.05, weight_lr_power=1.0)
    return MAKES[name](gc if lib is gc else contrib)


@pytest.mark.parametrize("name", MAKES)
def test_matches_optax_over_100_steps_without_warmup(name: str) -> None:
    @jax.jit
    def both() -> tuple[Any, Any]:
        got = _run(gc, _make(name, gc), gc.schedule_free_eval_params)
        with jax.numpy_dtype_promotion("standard"):
            want = _run(optax, _make(name, optax), contrib.schedule_free_eval_params)
        return got, want

    ((_, s), (u, y, x)), ((_, s_o), (u_o, y_o, x_o)) = both()
    for a, b in zip(jax.tree.leaves(s.z), jax.tree.leaves(s_o.z), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * float(np.max(np.abs(b))))
    for got, want in ((y, y_o), (x, x_o), (u, u_o)):
        for a, b, p in zip(
            jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(y_o), strict=True
        ):
            scale = float(np.max(np.abs(p)))  # the parameters' scale, also for the updates
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * scale)
    np.testing.assert_allclose(s.weight_sum, s_o.weight_sum, rtol=1e-6)


def test_with_warmup_optax_lags_z_one_step_behind_its_weights() -> None:
    """Optax's base SGD starts its warmup at 0 while its weights use the next step's rate.

    gradchain with Optax's two schedules reproduces Optax; gradchain's own alias
    uses one schedule, starting at lr / warmup (the authors' code), and moves on
    its first step where Optax's does not.
    """
    lr, warm = 0.1, 5

    def shifted(step: jax.Array) -> jax.Array:
        return gc.linear_schedule(0.0, lr, warm)(step + 1)

    ours_like_optax = gc.schedule_free(gc.sgd(gc.linear_schedule(0.0, lr, warm)), shifted)
    with jax.numpy_dtype_promotion("standard"):
        theirs = contrib.schedule_free_sgd(lr, warmup_steps=warm)
        (_, _), (_, y_o, _) = jax.jit(
            lambda: _run(optax, theirs, contrib.schedule_free_eval_params)
        )()
    (_, _), (_, y, _) = jax.jit(lambda: _run(gc, ours_like_optax, gc.schedule_free_eval_params))()
    for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(y_o), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * float(np.max(np.abs(b))))
    ours = gc.schedule_free_sgd(lr, warmup_steps=warm)
    first, _ = ours.update(PARAMS, ours.init(PARAMS), PARAMS)
    with jax.numpy_dtype_promotion("standard"):
        first_o, _ = theirs.update(PARAMS, theirs.init(PARAMS), PARAMS)
    assert all(float(jnp.max(jnp.abs(u))) < 1e-6 for u in jax.tree.leaves(first_o))  # rounding
    assert all(float(jnp.max(jnp.abs(u))) > 1e-4 for u in jax.tree.leaves(first))


def test_the_papers_recurrence_in_float64() -> None:
    """Y = (1-b) z + b x; z -= lr_t g(y); x = (1-c) x + c z, c = w_t / sum w, w = max lr^r."""
    rng = np.random.default_rng(3)
    n, steps, warm, lr, b, r, wd = 5, 60, 7, 0.05, 0.9, 2.0, 0.01
    a = rng.uniform(0.5, 3.0, n)
    start = rng.normal(size=n)

    def loss(w: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(jnp.asarray(a, jnp.float32) * w**2)

    tx = gc.schedule_free_sgd(lr, warmup_steps=warm, b1=b, weight_decay=wd, weight_lr_power=r)

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], Any]:
        y, s = carry
        u, s = tx.update(jax.grad(loss)(y), s, y)
        y = gc.apply_updates(y, u)
        return (y, s), (y, gc.eval_params(s, y))

    y32 = jnp.asarray(start, jnp.float32)
    _, (ys, xs) = jax.jit(lambda: jax.lax.scan(step, (y32, tx.init(y32)), None, steps))()
    z = x = y = start.copy()
    lr_max = weight_sum = 0.0
    want_y, want_x = [], []
    for t in range(steps):
        lr_t = lr * min(1.0, (t + 1) / warm)
        z = z - lr_t * (a * y + wd * y)
        lr_max = max(lr_max, lr_t)
        weight_sum += lr_max**r
        c = lr_max**r / weight_sum
        x = (1 - c) * x + c * z
        y = (1 - b) * z + b * x
        want_y.append(y)
        want_x.append(x)
    np.testing.assert_allclose(ys, np.stack(want_y), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(xs, np.stack(want_x), rtol=2e-5, atol=1e-6)


def _minimize(tx: Any, start: jax.Array, loss: Callable[[jax.Array], jax.Array], steps: int) -> Any:
    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        w, s = carry
        u, s = tx.update(jax.grad(loss)(w), s, w)
        return (gc.apply_updates(w, u), s), None

    def run(p: jax.Array) -> Any:
        w, s = jax.lax.scan(step, (p, tx.init(p)), None, steps)[0]
        return gc.eval_params(s, w)

    return jax.jit(run)(start)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gc.schedule_free_sgd(1.5e-3, warmup_steps=100),
        lambda: gc.schedule_free_adamw(2e-2, warmup_steps=100),
    ],
    ids=["sgd", "adamw"],
)
def test_aliases_minimize_a_parabola_and_the_rosenbrock_function(make: Callable[[], Any]) -> None:
    minimum = jnp.array([1.0, -1.0, 1.0])
    final = _minimize(
        make(), jnp.array([-1.0, 10.0, 1.0]), lambda w: jnp.sum((w - minimum) ** 2) * 500, 10000
    )
    np.testing.assert_allclose(final, minimum, atol=1e-2)
    rosen = lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2  # noqa: E731
    final = _minimize(make(), jnp.zeros(2), rosen, 40000)
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(final, jnp.ones(2), atol=1e-2)


def _equal(a: Any, b: Any) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b)))


def test_eval_params_finds_the_state_at_any_depth_and_init_from_shapes_is_exact() -> None:
    tx = gc.named_chain(("clip", gc.clip_by_global_norm(1.0)), ("sf", gc.schedule_free_sgd(0.1)))
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
    s_concrete, s_abstract = tx.init(PARAMS), tx.init(abstract)
    assert _equal(gc.eval_params(s_abstract, PARAMS), PARAMS)  # before any update, x = y
    first = jax.tree.map(lambda x: x[0], GRADS)
    u1, s1 = tx.update(first, s_concrete, PARAMS)
    u2, s2 = tx.update(first, s_abstract, PARAMS)
    assert _equal((u1, s1), (u2, s2))
    y1 = gc.apply_updates(PARAMS, u1)
    assert _equal(gc.eval_params(s1, y1), gc.schedule_free_eval_params(s1, y1))
    assert not _equal(gc.eval_params(s1, y1), y1)


def test_schedule_free_eval_params_of_another_state_says_so() -> None:
    with pytest.raises(ValueError, match=r"^schedule_free_eval_params: the state .* holds no"):
        gc.schedule_free_eval_params(gc.adam(0.1).init(PARAMS), PARAMS)


def test_b1_and_the_rate_are_settable_hyperparameters() -> None:
    state = gc.schedule_free(gc.sgd(0.1), 0.1).init(PARAMS)
    assert {"b1", "weight_lr_power"} <= set(gc.get_hyperparams(state))
    state = gc.set_hyperparams(state, b1=0.5)
    assert float(gc.get_hyperparams(state)["b1"]) == 0.5


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "schedule_free": (gc.schedule_free, {"base_optimizer": gc.sgd(0.1), "learning_rate": 0.1}),
    "schedule_free_sgd": (gc.schedule_free_sgd, {}),
    "schedule_free_adamw": (gc.schedule_free_adamw, {}),
}
_COMMON = [("b1", UNIT), ("weight_lr_power", NON_NEGATIVE), ("learning_rate", NON_NEGATIVE)]
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    *[(f, a, k, f) for f in FACTORIES for a, k in _COMMON],
    ("schedule_free_sgd", "weight_decay", NON_NEGATIVE, "schedule_free_sgd"),
    ("schedule_free_adamw", "weight_decay", NON_NEGATIVE, "schedule_free_adamw"),
    ("schedule_free_adamw", "b2", RATE, "schedule_free_adamw"),
    ("schedule_free_adamw", "eps", NON_NEGATIVE, "schedule_free_adamw"),
]
OPTAX_PARITY_NAMES = frozenset(
    {"schedule_free", "schedule_free_sgd", "schedule_free_adamw", "schedule_free_eval_params"}
)
