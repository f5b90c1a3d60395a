"""AdEMAMix, simplified AdEMAMix, ADOPT, ACProp and MADGRAD: Optax, the papers, two functions.

1. Optax 0.2.8 parity (``optax.contrib``), 100 steps of the shared random float32
   problem under ``jit`` and ``lax.scan``: updates at every step and the final
   parameters agree to ``RTOL`` (bit-identical where the arithmetic is the same).
   Two differences are on purpose and pinned: Optax's ADOPT computes ``1 - b``
   in float32 (ours keeps it exact, as every gradchain rate), and Optax's
   MADGRAD forms its update as ``x_{k+1} - x_k``, which rounds it to the
   parameters' precision (ours keeps the update's own).
2. The papers: each transform against a float64 NumPy loop of its equations.
3. Every alias minimizes a parabola and the Rosenbrock function in float32
   inside ``lax.scan``.
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
from tests.ranges import NON_NEGATIVE, RATE
from tests.test_adaptive import (
    GRADS,
    PARAMS,
    assert_trees_close,
    decay_mask,
    parabola,
    rosenbrock,
    trajectories,
)

RTOL = 1e-6
# Simplified AdEMAMix's momentum is an undamped sum of gradients of both signs: a coordinate
# whose sum nears 0 keeps an absolute error of a few float32 ulps of the terms. Measured:
# 2.9e-6 relative at most (an FMA fused differently), so the 1e-5.
RTOL_SUM = 1e-5
Make = Callable[[Any], Any]


def _schedule(step: Any) -> Any:
    return gc.exponential_decay(0.5, 10, 0.8)(step)


def _b3_schedule(step: Any) -> Any:
    return gc.linear_schedule(0.9, 0.999, 50)(step)


# (id, make(lib)): the same call builds gradchain's transform and optax.contrib's.
SAME_CALL: list[tuple[str, Make, float]] = [
    ("scale_by_ademamix", lambda m: m.scale_by_ademamix(), RTOL),
    (
        "scale_by_ademamix-schedules",
        lambda m: m.scale_by_ademamix(b3=_b3_schedule, alpha=_schedule, eps_root=1e-8),
        RTOL,
    ),
    ("ademamix-mask", lambda m: m.ademamix(1e-2, weight_decay=0.1, mask=decay_mask), RTOL),
    ("scale_by_simplified_ademamix", lambda m: m.scale_by_simplified_ademamix(alpha=2.0), RTOL),
    ("simplified_ademamix", lambda m: m.simplified_ademamix(1e-3, weight_decay=0.1), RTOL_SUM),
    # betas whose 1 - b is exact in float32 (see test_adopt_keeps_one_minus_b_exact...)
    ("scale_by_adopt", lambda m: m.scale_by_adopt(0.75, 0.875), RTOL),
    (
        "scale_by_adopt-nesterov",
        lambda m: m.scale_by_adopt(0.5, 0.75, 1e-4, nesterov=True, use_clipping=False),
        RTOL,
    ),
    ("adopt", lambda m: m.adopt(_schedule, 0.75, 0.875), RTOL),
    ("scale_by_acprop", lambda m: m.scale_by_acprop(), RTOL),
    ("acprop", lambda m: m.acprop(1e-2, weight_decay=0.1, mask=decay_mask), RTOL),
]


def _contrib(make: Make) -> Callable[[], Any]:
    return lambda: make(optax.contrib)


@pytest.mark.parametrize(("make", "rtol"), [pytest.param(m, r, id=i) for i, m, r in SAME_CALL])
def test_updates_and_params_match_optax_contrib_at_every_step(make: Make, rtol: float) -> None:
    (got_u, got_p, _), (want_u, want_p, _) = trajectories(lambda: make(gc), _contrib(make))
    assert_trees_close(got_u, want_u, "updates", rtol)
    assert_trees_close(got_p, want_p, "final params", rtol)


def _flat(tree: Any, lead: int = 0) -> np.ndarray:
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    return np.concatenate([x.reshape(*x.shape[:lead], -1) for x in leaves], axis=-1)


def test_madgrad_is_closer_to_float64_than_optax_which_rounds_updates_to_the_params() -> None:
    # Optax's update is x_{k+1} - x_k: an exact zero becomes +-1 ulp of x (-3e-8 at step 1 on
    # a zero gradient), small updates lose their low bits, and the losses add up over steps.
    # Ours computes c ((x_0 - x_k) - s / (cbrt(nu) + eps)) directly. Measured after 100 steps:
    # 1.7e-7 from a float64 run (ours), 1.1e-4 (Optax's).
    def make(m: Any) -> Any:
        return m.scale_by_madgrad(1e-2)

    (_, got, _), (_, theirs, _) = trajectories(lambda: make(gc), _contrib(make))
    w0 = _flat(PARAMS)
    want = w0 + madgrad_ref(_flat(GRADS, 1), w0, 1e-2, 0.9, 1e-6).sum(0)
    ours_err = np.max(np.abs(_flat(got) - want))
    optax_err = np.max(np.abs(_flat(theirs) - want))
    assert ours_err < 1e-6 and optax_err > 100 * ours_err, (ours_err, optax_err)


def test_madgrads_chain_matches_optax_up_to_optaxs_rounding() -> None:
    def make(m: Any) -> Any:
        return m.madgrad(_schedule, 0.5, weight_decay=0.1)

    (got_u, got_p, _), (want_u, want_p, _) = trajectories(lambda: make(gc), _contrib(make))
    assert_trees_close(got_p, want_p, "final params", 1e-3)
    np.testing.assert_allclose(_flat(got_u, 1), _flat(want_u, 1), rtol=0, atol=1e-5)


def adopt_ref(g: np.ndarray, b1: float, b2: float, eps: float, clip: bool = True) -> np.ndarray:
    """ADOPT, Taniguchi et al. 2024, Algorithm 2 (with clipping c_t = t^(1/4)), float64."""
    m, v, out = np.zeros(g.shape[1:]), g[0] ** 2, [np.zeros(g.shape[1:])]
    for t in range(1, len(g)):
        x = g[t] / np.maximum(np.sqrt(v), eps)
        if clip:
            x = np.clip(x, -(t**0.25), t**0.25)
        m = b1 * m + (1 - b1) * x
        out.append(m)
        v = b2 * v + (1 - b2) * g[t] ** 2
    return np.stack(out)


def test_adopt_keeps_one_minus_b_exact_where_optax_rounds_it_in_float32() -> None:
    g = _flat(GRADS, lead=1)
    want = adopt_ref(g, 0.9, 0.9999, 1e-6)
    grads = GRADS

    def run(lib: Any, tx: Any) -> Any:
        def step(state: Any, gi: Any) -> tuple[Any, Any]:
            u, state = tx.update(gi, state, PARAMS)
            return state, u

        return jax.lax.scan(step, tx.init(PARAMS), grads)[1]

    got = _flat(jax.jit(lambda: run(gc, gc.scale_by_adopt()))(), 1)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _flat(jax.jit(lambda: run(optax, optax.contrib.scale_by_adopt()))(), 1)
    scale = np.sqrt(np.mean(want**2, axis=0)) + 1e-12
    ours_err = np.max(np.abs(got - want) / scale)
    optax_err = np.max(np.abs(theirs - want) / scale)
    assert ours_err < 2e-5 < optax_err, (ours_err, optax_err)


# --- 2. The papers, float64 -------------------------------------------------------------------

REF_STEPS = 60
_rng = np.random.default_rng(3)
REF_PARAMS = {"w": _rng.normal(size=(3, 2)).astype(np.float32), "b": np.float32([0.5, -1.0])}
REF_GRADS = jax.tree.map(
    lambda p: _rng.normal(size=(REF_STEPS, *p.shape)).astype(np.float32), REF_PARAMS
)
REF_GRADS["b"][:2] = 0.0  # zero gradients at the start: ADOPT's eps, ACProp's first step


def ademamix_ref(g: np.ndarray, w0: np.ndarray, b1: float, b2: float, b3: Any, alpha: Any) -> Any:
    """AdEMAMix, Pagliardini et al. 2024, Algorithm 1 (eps = 0, no weight decay), float64."""
    m1, m2, nu, out = 0 * w0, 0 * w0, 0 * w0, []
    for t in range(1, len(g) + 1):
        b3_t, a_t = b3(t - 1), alpha(t - 1)
        m1 = b1 * m1 + (1 - b1) * g[t - 1]
        m2 = b3_t * m2 + (1 - b3_t) * g[t - 1]
        nu = b2 * nu + (1 - b2) * g[t - 1] ** 2
        out.append((m1 / (1 - b1**t) + a_t * m2) / (np.sqrt(nu / (1 - b2**t)) + 1e-8))
    return np.stack(out)


def simplified_ref(g: np.ndarray, w0: np.ndarray, b1: float, b2: float, alpha: float) -> Any:
    """Simplified AdEMAMix, Morwani et al. 2025 (eps = 1e-8), float64."""
    m, nu, out = 0 * w0, 0 * w0, []
    for t in range(1, len(g) + 1):
        m = b1 * m + g[t - 1]
        nu = b2 * nu + (1 - b2) * g[t - 1] ** 2
        out.append((m + alpha * g[t - 1]) / (np.sqrt(nu / (1 - b2**t)) + 1e-8))
    return np.stack(out)


def acprop_ref(g: np.ndarray, w0: np.ndarray, b1: float, b2: float, eps: float) -> Any:
    """ACProp, Zhuang et al. 2021: g_t over the previous error variance (eps_root = 0).

    REF_GRADS["b"] starts with two exact zeros, so s = 0 there at step 3: the root is 1.
    """
    m, s, out = 0 * w0, 0 * w0, []
    for t in range(1, len(g) + 1):
        root = np.sqrt(s / (1 - b2 ** max(t - 1, 1))) if t > 1 else np.ones_like(w0)
        root = np.where(s > 0, root, 1.0)  # no past variance: divide by 1, not by eps
        out.append(g[t - 1] / (root + eps))
        s = b2 * s + (1 - b2) * (g[t - 1] - m) ** 2
        m = b1 * m + (1 - b1) * g[t - 1]
    return np.stack(out)


def madgrad_ref(g: np.ndarray, w0: np.ndarray, lr: float, momentum: float, eps: float) -> Any:
    """MADGRAD, Defazio and Jelassi 2021, Algorithm 1, float64 (updates x_{k+1} - x_k)."""
    s, nu, x, out = 0 * w0, 0 * w0, w0.copy(), []
    for k in range(len(g)):
        lam = lr * np.sqrt(k + 1)
        s, nu = s + lam * g[k], nu + lam * g[k] ** 2
        z = w0 - s / (np.cbrt(nu) + eps)
        new_x = momentum * x + (1 - momentum) * z
        out.append(new_x - x)
        x = new_x
    return np.stack(out)


def madgrad_fixed_x_ref(g: np.ndarray, lr: float, momentum: float, eps: float) -> Any:
    """MADGRAD's update when x_k stays at x_0 (the parameters held fixed): c (z - x_0)."""
    lam = lr * np.sqrt(np.arange(1, len(g) + 1))[:, None]
    s, nu = np.cumsum(lam * g, 0), np.cumsum(lam * g**2, 0)
    return -(1 - momentum) * s / (np.cbrt(nu) + eps)


def _ramp(step: Any) -> Any:
    return 4.0 * np.minimum(step / 30.0, 1.0)


REFERENCES: list[tuple[str, Callable[[], Any], Callable[[Any, Any], Any]]] = [
    (
        "scale_by_ademamix",
        lambda: gc.scale_by_ademamix(0.9, 0.99, 0.995, 3.0),
        lambda g, w0: ademamix_ref(g, w0, 0.9, 0.99, lambda t: 0.995, lambda t: 3.0),
    ),
    (
        "scale_by_ademamix-alpha_schedule",
        lambda: gc.scale_by_ademamix(alpha=gc.linear_schedule(0.0, 4.0, 30), b3=0.999),
        lambda g, w0: ademamix_ref(g, w0, 0.9, 0.999, lambda t: 0.999, _ramp),
    ),
    (
        "scale_by_simplified_ademamix",
        lambda: gc.scale_by_simplified_ademamix(0.9, 0.99, 2.0),
        lambda g, w0: simplified_ref(g, w0, 0.9, 0.99, 2.0),
    ),
    (
        "scale_by_acprop",
        lambda: gc.scale_by_acprop(0.9, 0.99, 1e-8, 0.0),
        lambda g, w0: acprop_ref(g, w0, 0.9, 0.99, 1e-8),
    ),
    (
        "scale_by_adopt",
        lambda: gc.scale_by_adopt(0.9, 0.999),
        lambda g, w0: adopt_ref(g, 0.9, 0.999, 1e-6),
    ),
    (
        "scale_by_madgrad",
        lambda: gc.scale_by_madgrad(0.05, 0.9, 1e-6),
        lambda g, w0: madgrad_fixed_x_ref(g, 0.05, 0.9, 1e-6),
    ),
]


# With alpha ramping to 4, m1_hat and alpha * m2 nearly cancel on some steps: their float32
# roundings, relative to the result, reach 1.0e-5 (measured), so that case allows 3e-5.
REF_RTOL = {"scale_by_ademamix-alpha_schedule": 3e-5}


@pytest.mark.parametrize(
    ("make", "ref", "rtol"),
    [pytest.param(m, r, REF_RTOL.get(i, 1e-5), id=i) for i, m, r in REFERENCES],
)
def test_updates_match_the_papers_equations_in_float64(
    make: Callable[[], Any], ref: Callable[[Any, Any], Any], rtol: float
) -> None:
    tx = make()
    params = jax.tree.map(jnp.asarray, REF_PARAMS)

    def step(state: Any, g: Any) -> tuple[Any, Any]:
        u, state = tx.update(g, state, params)  # parameters held fixed: x_k = x_0
        return state, u

    got = _flat(jax.jit(lambda: jax.lax.scan(step, tx.init(params), REF_GRADS)[1])(), 1)
    want = ref(_flat(REF_GRADS, 1), _flat(REF_PARAMS))
    scale = np.maximum(np.abs(want), np.sqrt(np.mean(want**2, axis=0)))
    err = np.max(np.abs(got - want) / np.where(scale > 0, scale, 1.0))
    assert err <= rtol, f"updates off by {err:.2e} relative"


def test_madgrad_returns_towards_the_first_params_along_a_trajectory() -> None:
    tx = gc.scale_by_madgrad(0.05, 0.9, 1e-6)
    params = jax.tree.map(jnp.asarray, REF_PARAMS)

    def step(carry: Any, g: Any) -> tuple[Any, Any]:
        p, state = carry
        u, state = tx.update(g, state, p)
        return (gc.apply_updates(p, u), state), u

    got = jax.jit(lambda: jax.lax.scan(step, (params, tx.init(params)), REF_GRADS)[1])()
    want = madgrad_ref(_flat(REF_GRADS, 1), _flat(REF_PARAMS), 0.05, 0.9, 1e-6)
    np.testing.assert_allclose(_flat(got, 1), want, rtol=1e-4, atol=1e-6)


# --- MADGRAD's x0: taken at the first update, so init needs only shapes ------------------------


def test_madgrad_inits_from_shape_dtype_structs_and_takes_x0_at_the_first_update() -> None:
    tx = gc.scale_by_madgrad(0.1)
    params = {"w": jnp.array([1.0, -2.0])}
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    state = tx.init(abstract)
    assert float(jnp.sum(jnp.abs(state.x0["w"]))) == 0.0
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
    np.testing.assert_array_equal(state.x0["w"], params["w"])
    _, state = tx.update({"w": jnp.ones(2)}, state, {"w": jnp.zeros(2)})
    np.testing.assert_array_equal(state.x0["w"], params["w"])  # kept afterwards


def test_madgrad_without_params_says_it_needs_them() -> None:
    tx = gc.scale_by_madgrad(0.1)
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"^scale_by_madgrad: update needs the current parameters"):
        tx.update({"w": jnp.ones(2)}, state)


def test_adopt_first_update_is_zero_and_records_the_squared_gradient() -> None:
    tx = gc.scale_by_adopt()
    u, state = tx.update(jnp.array([2.0, -3.0]), tx.init(jnp.zeros(2)))
    np.testing.assert_array_equal(u, 0.0)
    np.testing.assert_array_equal(state.nu, [4.0, 9.0])


def test_acprop_divides_by_one_where_optax_divides_by_eps_having_seen_no_variance() -> None:
    grads = [jnp.array([0.0, 1.0]), jnp.array([0.0, 1.0]), jnp.array([2.0, 1.0])]

    def run(lib: Any) -> Any:
        tx = lib.scale_by_acprop(eps_root=0.0)
        state = tx.init(jnp.zeros(2))
        for g in grads:
            u, state = tx.update(g, state)
        return u

    np.testing.assert_allclose(run(gc)[0], 2.0, rtol=1e-6)  # g / (1 + eps)
    with jax.numpy_dtype_promotion("standard"):
        assert float(run(optax.contrib)[0]) > 1e15  # g / eps


def test_hyperparameters_are_state_readable_and_settable_by_name() -> None:
    tx = gc.ademamix(1e-3, b3=0.999, alpha=gc.linear_schedule(0.0, 5.0, 100))
    state = tx.init({"w": jnp.ones(2)})
    hp = gc.get_hyperparams(state)
    assert {"b3", "alpha", "learning_rate", "weight_decay"} <= set(hp)
    state = gc.set_hyperparams(state, b3=0.99)
    assert round(float(gc.get_hyperparams(state)["b3"]), 6) == 0.99
    assert float(state[0].hparams.complement["b3"]) == pytest.approx(0.01, rel=1e-6)


# --- 3. Two test functions, float32, inside lax.scan -------------------------------------------

CONVERGE_STEPS = 5000
CONVERGE_ATOL = 1e-2


def _decaying(peak: float) -> Any:
    return gc.cosine_decay_schedule(peak, CONVERGE_STEPS, alpha=1e-3)


# ACProp divides g_t by the past error variance, so Rosenbrock's sudden gradients need a
# small rate, a larger eps and a short b2 to settle.
CONVERGING: list[tuple[str, Callable[[], Any]]] = [
    ("ademamix", lambda: gc.ademamix(_decaying(0.05), b3=0.999, alpha=2.0)),
    ("simplified_ademamix", lambda: gc.simplified_ademamix(_decaying(5e-3), b1=0.9, alpha=1.0)),
    ("adopt", lambda: gc.adopt(_decaying(0.05))),
    ("acprop", lambda: gc.acprop(_decaying(3e-4), b2=0.9, eps=1e-4)),
    ("madgrad", lambda: gc.madgrad(_decaying(0.05))),
]


@pytest.mark.parametrize("problem", [parabola, rosenbrock])
@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in CONVERGING])
def test_every_alias_minimizes_a_parabola_and_the_rosenbrock_function(
    make: Callable[[], Any], problem: Callable[[], Any]
) -> None:
    start, minimum, loss = problem()
    tx = make()

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (gc.apply_updates(params, updates), state), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, CONVERGE_STEPS)[0][0])
    final = run(start)
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(final, minimum, rtol=0, atol=CONVERGE_ATOL)


# --- Tables for tests/test_errors.py and tests/test_optax_parity.py ----------------------------

_LR = {"learning_rate": 0.1}
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_ademamix": (gc.scale_by_ademamix, {}),
    "ademamix": (gc.ademamix, _LR),
    "scale_by_simplified_ademamix": (gc.scale_by_simplified_ademamix, {}),
    "simplified_ademamix": (gc.simplified_ademamix, _LR),
    "scale_by_adopt": (gc.scale_by_adopt, {}),
    "adopt": (gc.adopt, _LR),
    "scale_by_acprop": (gc.scale_by_acprop, {}),
    "acprop": (gc.acprop, _LR),
    "scale_by_madgrad": (gc.scale_by_madgrad, _LR),
    "madgrad": (gc.madgrad, _LR),
}
_TRANSFORM_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "scale_by_ademamix": (
        ("b1", RATE),
        ("b2", RATE),
        ("b3", RATE),
        ("alpha", NON_NEGATIVE),
        ("eps", NON_NEGATIVE),
        ("eps_root", NON_NEGATIVE),
    ),
    "scale_by_simplified_ademamix": (
        ("b1", RATE),
        ("b2", RATE),
        ("alpha", NON_NEGATIVE),
        ("eps", NON_NEGATIVE),
        ("eps_root", NON_NEGATIVE),
    ),
    "scale_by_adopt": (("b1", RATE), ("b2", RATE), ("eps", NON_NEGATIVE)),
    "scale_by_acprop": (
        ("b1", RATE),
        ("b2", RATE),
        ("eps", NON_NEGATIVE),
        ("eps_root", NON_NEGATIVE),
    ),
    "scale_by_madgrad": (
        ("learning_rate", NON_NEGATIVE),
        ("momentum", RATE),
        ("eps", NON_NEGATIVE),
    ),
}
_ALIAS_OF = {
    "ademamix": "scale_by_ademamix",
    "simplified_ademamix": "scale_by_simplified_ademamix",
    "adopt": "scale_by_adopt",
    "acprop": "scale_by_acprop",
    "madgrad": "scale_by_madgrad",
}
_LR_ROW = ("learning_rate", NON_NEGATIVE, "scale_by_learning_rate")
_WD_ROW = ("weight_decay", NON_NEGATIVE, "add_decayed_weights")
# (factory, argument, valid range, the function the message names)
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    *[(fn, arg, kind, fn) for fn, args in _TRANSFORM_ARGS.items() for arg, kind in args],
    *[
        (alias, arg, kind, fn)
        for alias, fn in _ALIAS_OF.items()
        for arg, kind in _TRANSFORM_ARGS[fn]
        if not (alias == "madgrad" and arg == "learning_rate")
    ],
    *[(alias, *_LR_ROW) for alias in _ALIAS_OF if alias != "madgrad"],
    ("madgrad", "learning_rate", NON_NEGATIVE, "scale_by_madgrad"),
    *[(alias, *_WD_ROW) for alias in _ALIAS_OF],
]
OPTAX_PARITY_NAMES = frozenset(
    {
        "scale_by_ademamix",
        "ademamix",
        "scale_by_simplified_ademamix",
        "simplified_ademamix",
        "scale_by_adopt",
        "adopt",
        "scale_by_acprop",
        "acprop",
        "scale_by_madgrad",
        "madgrad",
    }
)
