"""Trust ratios, block scalings, normalizers, small elementwise transforms, and their optimizers.

1. Optax parity. Each transform and alias runs 50 steps of the same random
   float32 gradients on a nested pytree, under ``jit`` and ``lax.scan``, beside
   Optax 0.2.8's; the updates at every step, the final parameters and the
   per-parameter state agree to ``RTOL`` (bit-identical at the time of
   writing). ``add_noise`` and ``noisy_sgd`` included: the same key gives the
   same draws. Where gradchain differs on purpose, a test pins the difference:
   Fromage with a schedule (Optax's ``mult - 1`` cancels in float32), an
   all-zero update normalized (Optax: NaN), the key of ``add_noise`` (Optax
   refuses ``jax.random.PRNGKey`` keys, falls back to seed 0 without one, and
   keeps a typed key that flax cannot serialize).
2. The papers. Each transform and alias against a float64 NumPy loop of its
   paper's equations, 60 steps on a small pytree.
3. Two test functions. Every alias minimizes a parabola and the Rosenbrock
   function in float32 within a fixed number of steps, inside ``lax.scan``.
   (Complex parameters are left out: Signum's sign, the non-negativity and
   the Gaussian noise have no single complex meaning.)

Optax mixes int32 counts with Python floats, which strict promotion refuses, so
every Optax call runs under ``jax.numpy_dtype_promotion("standard")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from tests.ranges import FINITE, NON_NEGATIVE, POSITIVE, RATE
from tests.test_adaptive import (
    decay_mask,
    parity_problem,
    per_parameter_state,
    schedule,
    trajectories,
)

# --- 1. Optax parity -----------------------------------------------------------------------

RTOL = 1e-6  # bit-identical where the arithmetic is the same; room for a fused multiply-add
ATOL_FRACTION = 1e-7  # times the leaf's largest value: what stands in for 0
STEPS = 50
PARAMS, GRADS = parity_problem(11)
GRADS = jax.tree.map(lambda g: g[:STEPS], GRADS)
Make = Callable[[Any], Any]


STATE_FIELDS = frozenset({"mu", "nu", "trace", "ema", "found_nan"})


def assert_trees_close(got: Any, want: Any, what: str, rtol: float = RTOL) -> None:
    """Same leaves, shapes and dtypes; values within rtol (ATOL_FRACTION of the leaf near 0)."""
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves), what
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert (g.shape, g.dtype) == (w.shape, w.dtype), what
        atol = ATOL_FRACTION * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=what)


def assert_runs_agree(make_gc: Callable[[], Any], make_optax: Callable[[], Any]) -> None:
    (got_u, got_p, got_s), (want_u, want_p, want_s) = trajectories(
        make_gc, make_optax, (PARAMS, GRADS)
    )
    assert_trees_close(got_u, want_u, "updates")
    assert_trees_close(got_p, want_p, "final params")
    got_fields = per_parameter_state(got_s, STATE_FIELDS)
    want_fields = per_parameter_state(want_s, STATE_FIELDS)
    assert [n for n, _ in got_fields] == [n for n, _ in want_fields]
    for (name, got), (_, want) in zip(got_fields, want_fields, strict=True):
        assert_trees_close(got, want, f"state.{name}")


M, S = decay_mask, schedule
# (id, make(lib)): the same call builds both libraries' transformation.
SAME_CALL: list[tuple[str, Make]] = [
    ("scale_by_trust_ratio-floors", lambda m: m.scale_by_trust_ratio(0.5, 0.01, 1e-3)),
    # Scaled down: alone, updates proportional to the weights make them grow geometrically.
    ("scale_by_param_block_norm", lambda m: m.chain(m.scale_by_param_block_norm(), m.scale(-1e-2))),
    (
        "scale_by_param_block_rms",
        lambda m: m.chain(m.scale_by_param_block_rms(0.1), m.scale(-1e-2)),
    ),
    ("normalize_by_update_norm", lambda m: m.normalize_by_update_norm()),
    ("centralize", lambda m: m.centralize()),
    ("keep_params_nonnegative", lambda m: m.keep_params_nonnegative()),
    ("zero_nans", lambda m: m.zero_nans()),
    ("add_noise", lambda m: m.add_noise(0.1, 0.55, key=3)),
    ("lamb-weight_decay_mask_schedule", lambda m: m.lamb(S, weight_decay=0.1, mask=M)),
    ("lars", lambda m: m.lars(0.1)),
    ("lars-masks_nesterov", lambda m: m.lars(S, 1e-3, M, 0.01, 1e-6, M, 0.8, True)),
    ("fromage-min_norm", lambda m: m.fromage(0.1, 0.5)),
    ("noisy_sgd-schedule", lambda m: m.noisy_sgd(S, 0.1, 0.3, key=jax.random.key(5))),
    ("signum-schedule", lambda m: m.signum(S, 0.5)),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in SAME_CALL])
def test_updates_params_and_state_match_optax_at_every_step(make: Make) -> None:
    assert_runs_agree(lambda: make(gc), lambda: make(optax))


def test_normalize_matches_optax_contrib_normalize() -> None:
    assert_runs_agree(gc.normalize, optax.contrib.normalize)


def test_zero_nans_matches_optax_on_gradients_with_nans() -> None:
    grads = {"a": jnp.array([1.0, jnp.nan, -2.0]), "b": jnp.array([jnp.inf]), "c": jnp.ones(2)}
    tx, ref = gc.zero_nans(), optax.zero_nans()
    got, got_state = tx.update(grads, tx.init(grads))
    want, want_state = ref.update(grads, ref.init(grads))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)
    assert got_state.found_nan == want_state.found_nan == {"a": True, "b": False, "c": False}


@pytest.mark.parametrize("scale", [0.25, -1.0, 0.0])
def test_scale_gradient_matches_optax_forward_and_backward(scale: float) -> None:
    x = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}

    def loss(lib: Any, x: Any) -> jax.Array:
        y = lib.scale_gradient(x, scale)
        return jnp.sum(jnp.sin(y["w"]) * y["b"])

    with jax.numpy_dtype_promotion("standard"):
        want_value, want_grad = jax.value_and_grad(lambda x: loss(optax, x))(x)
    got_value, got_grad = jax.value_and_grad(lambda x: loss(gc, x))(x)
    assert float(got_value) == float(want_value)
    for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL)


def test_scale_gradient_keeps_dtypes_and_passes_integers_through() -> None:
    x = {"h": jnp.ones(3, jnp.bfloat16), "i": jnp.arange(3)}
    out = gc.scale_gradient(x, 0.5)
    assert out["i"] is x["i"]
    grad = jax.grad(lambda h: jnp.sum(gc.scale_gradient(h, 0.5).astype(jnp.float32)))(x["h"])
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_array_equal(grad, jnp.full(3, 0.5, jnp.bfloat16))


def _fromage_float64(lr: np.ndarray, p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The updates of 1 Fromage step for each rate in ``lr``, in float64 (one layer)."""
    ratio = np.linalg.norm(p) / np.linalg.norm(g)
    return (p - lr[:, None] * ratio * g) / np.sqrt(1 + lr[:, None] ** 2) - p


def test_fromage_with_a_schedule_keeps_the_digits_optax_loses_to_cancellation() -> None:
    # Optax 0.2.8 computes 1 / sqrt(1 + lr^2) - 1 in float32 for a schedule, which cancels:
    # for lr ~ 1e-3 the shrink term lr^2 / 2 keeps one or two correct digits. gradchain
    # computes it as lr^2 / (s (1 + s)). Where the gradient is 0 the update is the shrink
    # term alone: measured, gradchain is off by 6e-8 relative there, Optax by 6e-2.
    rates = np.array([1e-3, 3e-3, 1e-2, 3e-2, 0.1], np.float32)
    p = np.array([1.0, -2.0, 0.5], np.float32)
    g = np.array([1e-3, 0.0, 0.0], np.float32)
    want = _fromage_float64(rates.astype(np.float64), p.astype(np.float64), g.astype(np.float64))

    def run(lib: Any) -> np.ndarray:
        tx = lib.fromage(lambda step: jnp.asarray(rates)[step])

        def body(state: Any, _: Any) -> tuple[Any, Any]:
            u, state = tx.update(jnp.asarray(g), state, jnp.asarray(p))
            return state, u

        return np.asarray(jax.lax.scan(body, tx.init(jnp.asarray(p)), None, len(rates))[1])

    got = run(gc)
    with jax.numpy_dtype_promotion("standard"):
        theirs = run(optax)
    assert np.max(np.abs(got - want) / np.abs(want)) < 1e-6
    assert np.max(np.abs(theirs - want) / np.abs(want)) > 1e-2


@pytest.mark.parametrize(
    "make", [lambda m: m.normalize_by_update_norm(eps=0.0), lambda m: m.contrib.normalize()]
)
def test_an_all_zero_update_normalizes_to_zero_where_optax_returns_nan(make: Make) -> None:
    zeros = {"a": jnp.zeros(3), "b": jnp.zeros(())}
    ours = make(_GcWithContrib())
    got, _ = ours.update(zeros, ours.init(zeros))
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(got))
    ref = make(optax)
    with jax.numpy_dtype_promotion("standard"):
        want, _ = ref.update(zeros, ref.init(zeros))
    assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree.leaves(want))


class _GcWithContrib:
    """gradchain, with ``contrib.normalize`` spelled as Optax spells it."""

    class contrib:  # noqa: N801 (Optax's module name)
        normalize = staticmethod(gc.normalize)

    def __getattr__(self, name: str) -> Any:
        return getattr(gc, name)


def test_add_noise_takes_a_prngkey_and_needs_an_explicit_key() -> None:
    params = jnp.zeros(4)
    from_int = gc.add_noise(1.0, 0.0, 7)
    from_key = gc.add_noise(1.0, 0.0, jax.random.key(7))
    from_raw = gc.add_noise(1.0, 0.0, jax.random.PRNGKey(7))  # Optax 0.2.8 raises here
    from_seed = gc.add_noise(1.0, 0.0, seed=7)  # Optax's older spelling
    outs = [tx.update(params, tx.init(params))[0] for tx in (from_int, from_key, from_raw)]
    outs.append(from_seed.update(params, from_seed.init(params))[0])
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    with jax.numpy_dtype_promotion("standard"), pytest.raises(TypeError):
        optax.add_noise(1.0, 0.0, jax.random.PRNGKey(7)).init(params)
    with pytest.raises(ValueError, match=r"^add_noise: `key` is required: an int seed or a jax"):
        gc.add_noise(1.0, 0.0)
    with pytest.raises(ValueError, match=r"^add_noise: give `key` or `seed`, not both"):
        gc.add_noise(1.0, 0.0, 1, seed=2)
    with pytest.raises(TypeError, match=r"^add_noise: `key` must be an int seed or a single"):
        gc.add_noise(1.0, 0.0, jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match=r"^add_noise: `key` is required"):
        gc.noisy_sgd(0.1)


def test_add_noise_state_serializes_and_resumes_the_same_noise() -> None:
    tx = gc.noisy_sgd(0.1, key=0)
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    _, state = tx.update(params, state, params)
    restored = flax.serialization.from_bytes(state, flax.serialization.to_bytes(state))
    want, _ = tx.update(params, state, params)
    got, _ = tx.update(params, restored, params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax.noisy_sgd(0.1, key=0).init(params)
    with pytest.raises(TypeError, match="PRNGKey dtype"):  # Optax's typed key does not
        flax.serialization.to_bytes(theirs)


def test_the_cases_cover_every_name_of_this_family() -> None:
    covered = {name.split("-")[0] for name, _ in SAME_CALL} | {"normalize", "scale_gradient"}
    assert covered == OPTAX_PARITY_NAMES


OPTAX_PARITY_NAMES = frozenset(
    {
        "scale_by_trust_ratio",
        "scale_by_param_block_norm",
        "scale_by_param_block_rms",
        "normalize_by_update_norm",
        "normalize",  # optax.contrib.normalize
        "centralize",
        "add_noise",
        "keep_params_nonnegative",
        "zero_nans",
        "scale_gradient",
        "lamb",
        "lars",
        "fromage",
        "noisy_sgd",
        "signum",
    }
)
"""The names this file compares with Optax (tests/test_optax_parity.py counts them as covered)."""


# --- 2. The papers' equations, in float64 ----------------------------------------------------

REF_STEPS = 60
REF_RTOL = 3e-6  # float32 rounding, accumulated over the run
REF_RTOL_ADAM = 3e-5  # LAMB's float32 debiasing 1 - 0.999^t, as in tests/test_adaptive.py
REF_SHAPES = {"b": (3,), "s": (), "w": (4, 3), "z": (2,)}  # jax.tree order
REF_SCALES = {"b": 0.1, "s": 10.0, "w": 1.0, "z": 1.0}


def _ref_problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A small float32 problem; the layer ``z`` starts at zero (the trust ratio's 1 branch)."""
    rng = np.random.default_rng(5)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in REF_SHAPES.items()}
    params["z"][:] = 0.0
    grads = {
        k: (REF_SCALES[k] * rng.normal(size=(REF_STEPS, *s))).astype(np.float32)
        for k, s in REF_SHAPES.items()
    }
    return params, grads


REF_PARAMS, REF_GRADS = _ref_problem()
Layers = list[np.ndarray]  # one float64 array per leaf, in jax.tree order


def _layers(tree: Any) -> Layers:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(x * x)))


def _trust(u: np.ndarray, w: np.ndarray, c: float = 1.0, eps: float = 0.0, floor: float = 0) -> Any:
    """The layer-wise trust ratio of LARS (You et al. 2017, eq. 6) and LAMB (2020, Alg. 2)."""
    wn, un = max(_norm(w), floor), max(_norm(u), floor)
    return c * wn / (un + eps) if wn > 0 and un > 0 else 1.0


def _run_transform(tx: Any) -> list[Layers]:
    """Each step's output of a transform, with the parameters fixed at REF_PARAMS."""
    params = jax.tree.map(jnp.asarray, REF_PARAMS)
    state, out = tx.init(params), []
    step = jax.jit(tx.update)
    for t in range(REF_STEPS):
        updates, state = step(
            jax.tree.map(lambda g, t=t: jnp.asarray(g[t]), REF_GRADS), state, params
        )
        out.append(_layers(updates))
    return out


def _run_optimizer(tx: Any) -> tuple[list[Layers], Layers]:
    """Each step's updates of an optimizer, and the final parameters."""
    params = jax.tree.map(jnp.asarray, REF_PARAMS)

    def body(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (gc.apply_updates(params, updates), state), updates

    grads = jax.tree.map(jnp.asarray, REF_GRADS)
    (final, _), updates = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), grads))(params)
    stacked = _layers(updates)
    return [[x[t] for x in stacked] for t in range(REF_STEPS)], _layers(final)


def _assert_close(got: list[Layers], want: list[Layers], rtol: float) -> None:
    """Each layer's output against its own size (at least its RMS over the run)."""
    for i in range(len(want[0])):
        g = np.stack([step[i] for step in got])
        w = np.stack([step[i] for step in want])
        scale = np.maximum(np.abs(w), np.sqrt(np.mean(w**2, axis=0)))
        err = np.max(np.abs(g - w) / np.where(scale > 0, scale, 1.0), initial=0.0)
        assert err <= rtol, f"layer {i} off by {err:.2e} relative"


def _grads(t: int) -> Layers:
    return [np.asarray(g[t], np.float64) for g in jax.tree.leaves(REF_GRADS)]


W0 = _layers(REF_PARAMS)


def trust_ratio_ref(c: float, eps: float, floor: float) -> list[Layers]:
    return [
        [g * _trust(g, w, c, eps, floor) for g, w in zip(_grads(t), W0, strict=True)]
        for t in range(REF_STEPS)
    ]


def centralize_ref(keep_axis: int) -> list[Layers]:
    """Yong et al. 2020, eq. 4: each unit's gradient minus its mean, for weights of >= 2 dims."""

    def centre(g: np.ndarray) -> np.ndarray:
        if g.ndim < 2:
            return g
        axes = tuple(a for a in range(g.ndim) if a != keep_axis % g.ndim)
        return g - g.mean(axis=axes, keepdims=True)

    return [[centre(g) for g in _grads(t)] for t in range(REF_STEPS)]


def _global(t: int, s: float, eps: float) -> Layers:
    gs = _grads(t)
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in gs))
    return [g * s / (norm + eps) for g in gs]


TRANSFORM_REFS: list[tuple[str, Callable[[], Any], Callable[[], list[Layers]]]] = [
    ("scale_by_trust_ratio", gc.scale_by_trust_ratio, lambda: trust_ratio_ref(1.0, 0.0, 0.0)),
    (
        "scale_by_trust_ratio-floors",
        lambda: gc.scale_by_trust_ratio(1.0, 0.5, 1e-2),
        lambda: trust_ratio_ref(0.5, 1e-2, 1.0),
    ),
    (
        "scale_by_param_block_norm",
        lambda: gc.scale_by_param_block_norm(1e-2),
        lambda: [
            [g * max(_norm(w), 1e-2) for g, w in zip(_grads(t), W0, strict=True)]
            for t in range(REF_STEPS)
        ],
    ),
    (
        "scale_by_param_block_rms",
        lambda: gc.scale_by_param_block_rms(1e-2),
        lambda: [
            [g * max(math.sqrt(np.mean(w * w)), 1e-2) for g, w in zip(_grads(t), W0, strict=True)]
            for t in range(REF_STEPS)
        ],
    ),
    (
        "normalize_by_update_norm",
        lambda: gc.normalize_by_update_norm(-2.0, 1e-3),
        lambda: [_global(t, -2.0, 1e-3) for t in range(REF_STEPS)],
    ),
    ("normalize", gc.normalize, lambda: [_global(t, 1.0, 0.0) for t in range(REF_STEPS)]),
    ("centralize", gc.centralize, lambda: centralize_ref(0)),
    ("centralize-flax_layout", lambda: gc.centralize(keep_axis=-1), lambda: centralize_ref(-1)),
    (
        "keep_params_nonnegative",
        gc.keep_params_nonnegative,
        lambda: [
            [np.where(w + g < 0, -w, g) for g, w in zip(_grads(t), W0, strict=True)]
            for t in range(REF_STEPS)
        ],
    ),
]


@pytest.mark.parametrize(("make", "ref"), [pytest.param(m, r, id=i) for i, m, r in TRANSFORM_REFS])
def test_transform_outputs_match_the_equations_in_float64(
    make: Callable[[], Any], ref: Callable[[], list[Layers]]
) -> None:
    _assert_close(_run_transform(make()), ref(), REF_RTOL)


def lamb_ref(lr: float, wd: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6) -> Any:
    """LAMB, You et al. 2020, Algorithm 2, with phi the identity.

    r = m_hat / (sqrt(v_hat) + eps) + wd w, w <- w - lr ||w|| / ||r|| r per layer.
    """
    w = [x.copy() for x in W0]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    out = []
    for t in range(1, REF_STEPS + 1):
        step = []
        for i, g in enumerate(_grads(t - 1)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            r = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps) + wd * w[i]
            step.append(-lr * _trust(r, w[i]) * r)
        w = [x + u for x, u in zip(w, step, strict=True)]
        out.append(step)
    return out, w


def lars_ref(lr: float, wd: float, c: float, mu: float, nesterov: bool) -> Any:
    """LARS, You et al. 2017, Algorithm 1.

    local_lr = c ||w|| / ||g + wd w||, v <- mu v + lr local_lr (g + wd w), w <- w - v
    (Nesterov: w <- w - (lr local_lr (g + wd w) + mu v)).
    """
    w = [x.copy() for x in W0]
    vel = [np.zeros_like(x) for x in w]
    out = []
    for t in range(REF_STEPS):
        step = []
        for i, g in enumerate(_grads(t)):
            r = g + wd * w[i]
            d = lr * _trust(r, w[i], c) * r
            vel[i] = d + mu * vel[i]
            step.append(-(d + mu * vel[i]) if nesterov else -vel[i])
        w = [x + u for x, u in zip(w, step, strict=True)]
        out.append(step)
    return out, w


def fromage_ref(lr: float, floor: float = 1e-6) -> Any:
    """Fromage, Bernstein et al. 2020, Algorithm 1.

    w <- (w - lr ||w|| / ||g|| g) / sqrt(1 + lr^2) per layer.
    """
    w = [x.copy() for x in W0]
    out = []
    for t in range(REF_STEPS):
        step = []
        for i, g in enumerate(_grads(t)):
            new = (w[i] - lr * _trust(g, w[i], floor=floor) * g) / math.sqrt(1 + lr * lr)
            step.append(new - w[i])
        w = [x + u for x, u in zip(w, step, strict=True)]
        out.append(step)
    return out, w


def signum_ref(lr: float, beta: float, wd: float = 0.0) -> Any:
    """Signum, Bernstein et al. 2018, Algorithm 3.

    m <- beta m + (1 - beta) g, w <- w - lr sign(m); with the house rule's decoupled
    decay, w <- w - lr (sign(m) + wd w).
    """
    w = [x.copy() for x in W0]
    m = [np.zeros_like(x) for x in w]
    out = []
    for t in range(REF_STEPS):
        step = []
        for i, g in enumerate(_grads(t)):
            m[i] = beta * m[i] + (1 - beta) * g
            step.append(-lr * (np.sign(m[i]) + wd * w[i]))
        w = [x + u for x, u in zip(w, step, strict=True)]
        out.append(step)
    return out, w


OPTIMIZER_REFS: list[tuple[str, Callable[[], Any], Callable[[], Any], float]] = [
    ("lamb", lambda: gc.lamb(1e-2, weight_decay=0.1), lambda: lamb_ref(1e-2, 0.1), REF_RTOL_ADAM),
    (
        "lars",
        lambda: gc.lars(0.5, 1e-2, trust_coefficient=0.01),
        lambda: lars_ref(0.5, 1e-2, 0.01, 0.9, False),
        REF_RTOL,
    ),
    (
        "lars-nesterov",
        lambda: gc.lars(0.5, 0.0, trust_coefficient=0.02, momentum=0.8, nesterov=True),
        lambda: lars_ref(0.5, 0.0, 0.02, 0.8, True),
        REF_RTOL,
    ),
    ("fromage", lambda: gc.fromage(0.05), lambda: fromage_ref(0.05), REF_RTOL),
    ("fromage-small_rate", lambda: gc.fromage(1e-3), lambda: fromage_ref(1e-3), REF_RTOL),
    ("signum", lambda: gc.signum(1e-2, 0.9), lambda: signum_ref(1e-2, 0.9), REF_RTOL),
    (
        "signum-weight_decay",
        lambda: gc.signum(1e-2, 0.5, weight_decay=0.1),
        lambda: signum_ref(1e-2, 0.5, 0.1),
        REF_RTOL,
    ),
]


@pytest.mark.parametrize(
    ("make", "ref", "rtol"), [pytest.param(m, r, t, id=i) for i, m, r, t in OPTIMIZER_REFS]
)
def test_optimizer_updates_and_final_params_match_the_papers_equations_in_float64(
    make: Callable[[], Any], ref: Callable[[], Any], rtol: float
) -> None:
    got_u, got_w = _run_optimizer(make())
    want_u, want_w = ref()
    _assert_close(got_u, want_u, rtol)
    for i, (g, w) in enumerate(zip(got_w, want_w, strict=True)):
        summed = np.abs(W0[i]) + sum(np.abs(step[i]) for step in want_u)
        assert np.max(np.abs(g - w) / summed, initial=0.0) <= rtol, f"final layer {i}"


def test_the_reference_problem_reaches_the_trust_ratios_zero_branch() -> None:
    assert not np.any(REF_PARAMS["z"]) and np.all(REF_GRADS["z"] != 0)
    assert any(x.ndim >= 2 for x in W0)  # centralize has something to centre


def test_add_noise_draws_as_documented_with_the_papers_variance() -> None:
    # Neelakantan et al. 2015, section 2: g + N(0, eta / (1 + t)^gamma). The draws follow the
    # key schedule of the docstring: next, noise = split(key); leaf i from split(noise, n)[i].
    eta, gamma, steps = 0.3, 0.55, 6
    params = {"a": jnp.zeros((50, 40)), "b": jnp.zeros(7)}
    tx = gc.add_noise(eta, gamma, key=11)
    state = tx.init(params)
    key = jax.random.key(11)
    for t in range(steps):
        grads = jax.tree.map(lambda p, t=t: jnp.full_like(p, float(t)), params)
        updates, state = tx.update(grads, state)
        key, noise_key = jax.random.split(key)
        leaf_keys = jax.random.split(noise_key, 2)
        sigma = math.sqrt(eta / (1 + t) ** gamma)
        for k, (name, p) in zip(leaf_keys, sorted(params.items()), strict=True):
            z = np.asarray(jax.random.normal(k, p.shape), np.float64)
            np.testing.assert_allclose(updates[name], t + sigma * z, rtol=1e-6, atol=1e-6)
        # In distribution: the standard deviation of 2,000 draws is sigma within 5 %.
        noise = np.asarray(updates["a"], np.float64) - t
        assert abs(noise.std() / sigma - 1) < 0.05
        assert abs(noise.mean()) < 4 * sigma / math.sqrt(noise.size)
    assert int(state.step) == steps


def test_noisy_sgd_is_sgd_on_the_noisy_gradient() -> None:
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    noisy, _ = gc.add_noise(0.01, 0.55, key=4).update(
        grads, gc.add_noise(0.01, 0.55, key=4).init(params)
    )
    tx = gc.noisy_sgd(0.1, key=4)
    updates, _ = tx.update(grads, tx.init(params), params)
    for u, n in zip(jax.tree.leaves(updates), jax.tree.leaves(noisy), strict=True):
        np.testing.assert_allclose(u, -0.1 * np.asarray(n), rtol=1e-6)


# --- 3. Two test functions, in float32, inside lax.scan --------------------------------------

CONVERGE_STEPS = 10_000
CONVERGE_ATOL = 1e-2  # on every coordinate of the minimizer (Optax's own alias test allows 3e-2)


def parabola() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    start, minimum = jnp.array([-1.0, 10.0, 1.0]), jnp.array([1.0, -1.0, 1.0])
    return start, minimum, lambda w: jnp.sum((w - minimum) ** 2)


def rosenbrock() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    return jnp.zeros(2), jnp.ones(2), lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


def _decaying(peak: float) -> Any:
    return gc.cosine_decay_schedule(peak, CONVERGE_STEPS, alpha=1e-3)


# Layer-wise methods step in proportion to the weights' norm, and Signum by a fixed size:
# each needs a decaying rate to settle. Noisy SGD needs a rate below 2 / (Rosenbrock's
# curvature at the minimum, ~1000), and as large as that to travel the valley in time.
CONVERGING: list[tuple[str, Callable[[], Any]]] = [
    ("lamb", lambda: gc.lamb(_decaying(1e-2))),
    ("lars", lambda: gc.lars(_decaying(0.1), trust_coefficient=1e-2)),
    ("fromage", lambda: gc.fromage(_decaying(1e-2))),
    ("noisy_sgd", lambda: gc.noisy_sgd(1.5e-3, key=0)),
    ("signum", lambda: gc.signum(_decaying(1e-2), weight_decay=1e-5)),
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


# --- 4. Hyperparameters as state, dtypes, and mistakes refused --------------------------------


def test_every_numeric_hyperparameter_is_readable_and_settable_in_the_state() -> None:
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    state = gc.lars(0.1, weight_decay=1e-3).init(params)
    hp = gc.get_hyperparams(state)
    assert sorted(hp) == [
        "decay",
        "eps",
        "learning_rate",
        "min_norm",
        "trust_coefficient",
        "weight_decay",
    ]
    assert float(hp["trust_coefficient"]) == pytest.approx(1e-3)
    state = gc.set_hyperparams(state, trust_coefficient=0.5)
    assert float(gc.get_hyperparams(state)["trust_coefficient"]) == 0.5
    noise = gc.get_hyperparams(gc.noisy_sgd(0.1, 0.2, 0.3, key=0).init(params))
    assert {k: round(float(v), 3) for k, v in noise.items()} == {
        "eta": 0.2,
        "gamma": 0.3,
        "learning_rate": 0.1,
    }


HOUSE_RULE: dict[str, Callable[..., Any]] = {
    "fromage": lambda **kw: gc.fromage(0.1, **kw),
    "noisy_sgd": lambda **kw: gc.noisy_sgd(0.1, key=0, **kw),
    "signum": lambda **kw: gc.signum(0.1, **kw),
}


@pytest.mark.parametrize("make", HOUSE_RULE.values(), ids=HOUSE_RULE.keys())
def test_a_weight_decay_is_added_before_the_rate_and_settable_to_exactly_none(
    make: Callable[..., Any],
) -> None:
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.ones(2)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    plain = make()
    decayed = make(weight_decay=0.5, mask=decay_mask)
    state = decayed.init(params)
    names = [n for n in gc.get_hyperparams(state) if n.endswith("weight_decay")]
    name = min(names, key=lambda n: n.split("/")[0])  # the house rule's comes first
    assert float(gc.get_hyperparams(state)[name]) == 0.5
    want, _ = plain.update(grads, plain.init(params), params)
    got, _ = decayed.update(grads, state, params)
    np.testing.assert_array_equal(got["b"], want["b"])  # masked out
    assert not np.allclose(got["w"], want["w"])
    zero, _ = decayed.update(grads, gc.set_hyperparams(state, {name: 0.0}), params)
    for z, w in zip(jax.tree.leaves(zero), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(z, w)


def test_a_trust_coefficient_set_in_the_state_changes_the_update() -> None:
    params, grads = jnp.array([3.0, 4.0]), jnp.array([0.0, 2.0])
    tx = gc.scale_by_trust_ratio()
    state = gc.set_hyperparams(tx.init(params), trust_coefficient=0.5)
    u, _ = tx.update(grads, state, params)
    assert u.tolist() == [0.0, 2.5]  # 0.5 * 5 / 2 * 2


@pytest.mark.parametrize(
    "make",
    [
        gc.scale_by_trust_ratio,
        gc.scale_by_param_block_norm,
        gc.scale_by_param_block_rms,
        gc.normalize,
        gc.centralize,
        gc.keep_params_nonnegative,
        lambda: gc.add_noise(0.1, 0.5, key=0),
        lambda: gc.lamb(1e-3),
        lambda: gc.fromage(1e-2),
    ],
)
def test_bfloat16_updates_stay_bfloat16_and_are_computed_in_float32(
    make: Callable[[], Any],
) -> None:
    params = {"w": jnp.full((4, 3), 0.5, jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    grads = jax.tree.map(
        lambda p: jnp.linspace(-1, 1, p.size).reshape(p.shape).astype(p.dtype), params
    )
    tx = make()
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    f32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    ref, _ = make().update(
        jax.tree.map(lambda x: x.astype(jnp.float32), grads), make().init(f32), f32
    )
    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(u, np.float32), r, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: gc.centralize(keep_axis=1.0),  # type: ignore[arg-type]
            TypeError,
            r"^centralize: `keep_axis` must be an int; got float 1\.0",
        ),
        (
            lambda: gc.fromage(0.1, mask=decay_mask),
            ValueError,
            r"^fromage: `mask` selects .* `weight_decay` is None",
        ),
        (
            lambda: gc.signum(0.1, mask=decay_mask),
            ValueError,
            r"^signum: `mask` selects .* `weight_decay` is None",
        ),
        (
            lambda: gc.noisy_sgd(0.1, key=0, mask=decay_mask),
            ValueError,
            r"^noisy_sgd: `mask` selects .* `weight_decay` is None",
        ),
    ],
    ids=["centralize_axis", "fromage_mask", "signum_mask", "noisy_sgd_mask"],
)
def test_bad_settings_raise_at_construction_naming_transform_argument_and_value(
    build: Callable[[], Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build()


def test_keep_params_nonnegative_refuses_complex_parameters_while_tracing() -> None:
    params = jnp.ones(2, jnp.complex64)
    tx = gc.keep_params_nonnegative()
    with pytest.raises(TypeError, match=r"^keep_params_nonnegative: complex parameters"):
        jax.eval_shape(tx.update, params, tx.init(params), params)


# --- The tables tests/test_errors.py runs (hyperparameters at construction) ---------------------

_LR = {"learning_rate": 0.1}
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_trust_ratio": (gc.scale_by_trust_ratio, {}),
    "scale_by_param_block_norm": (gc.scale_by_param_block_norm, {}),
    "scale_by_param_block_rms": (gc.scale_by_param_block_rms, {}),
    "normalize_by_update_norm": (gc.normalize_by_update_norm, {}),
    "add_noise": (gc.add_noise, {"eta": 0.01, "gamma": 0.55, "key": 0}),
    # scale_gradient is a function, not a factory: this checks its `scale` on the spot.
    "scale_gradient": (
        lambda **kw: (gc.scale_gradient(jnp.ones(2), **kw), gc.identity())[1],
        {"scale": 1.0},
    ),
    "lamb": (gc.lamb, _LR),
    "lars": (gc.lars, _LR),
    "fromage": (gc.fromage, _LR),
    "noisy_sgd": (gc.noisy_sgd, {**_LR, "key": 0}),
    "signum": (gc.signum, _LR),
}
_LEARNING_RATE = ("learning_rate", NON_NEGATIVE, "scale_by_learning_rate")
_WEIGHT_DECAY = ("weight_decay", NON_NEGATIVE, "add_decayed_weights")
# (factory, argument, valid range, the function the message names)
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale_by_trust_ratio", "min_norm", NON_NEGATIVE, "scale_by_trust_ratio"),
    ("scale_by_trust_ratio", "trust_coefficient", POSITIVE, "scale_by_trust_ratio"),
    ("scale_by_trust_ratio", "eps", NON_NEGATIVE, "scale_by_trust_ratio"),
    ("scale_by_param_block_norm", "min_scale", NON_NEGATIVE, "scale_by_param_block_norm"),
    ("scale_by_param_block_rms", "min_scale", NON_NEGATIVE, "scale_by_param_block_rms"),
    ("normalize_by_update_norm", "scale_factor", FINITE, "normalize_by_update_norm"),
    ("normalize_by_update_norm", "eps", NON_NEGATIVE, "normalize_by_update_norm"),
    ("add_noise", "eta", NON_NEGATIVE, "add_noise"),
    ("add_noise", "gamma", NON_NEGATIVE, "add_noise"),
    ("scale_gradient", "scale", FINITE, "scale_gradient"),
    ("lamb", *_LEARNING_RATE),
    *[("lamb", arg, RATE, "scale_by_adam") for arg in ("b1", "b2")],
    *[("lamb", arg, NON_NEGATIVE, "scale_by_adam") for arg in ("eps", "eps_root")],
    ("lamb", *_WEIGHT_DECAY),
    ("lars", *_LEARNING_RATE),
    ("lars", *_WEIGHT_DECAY),
    ("lars", "trust_coefficient", POSITIVE, "scale_by_trust_ratio"),
    ("lars", "eps", NON_NEGATIVE, "scale_by_trust_ratio"),
    ("lars", "momentum", RATE, "lars"),
    ("fromage", "learning_rate", NON_NEGATIVE, "fromage"),
    ("fromage", "min_norm", NON_NEGATIVE, "scale_by_trust_ratio"),
    ("fromage", *_WEIGHT_DECAY),
    ("noisy_sgd", *_LEARNING_RATE),
    ("noisy_sgd", "eta", NON_NEGATIVE, "add_noise"),
    ("noisy_sgd", "gamma", NON_NEGATIVE, "add_noise"),
    ("noisy_sgd", *_WEIGHT_DECAY),
    ("signum", *_LEARNING_RATE),
    ("signum", "beta", RATE, "signum"),
    ("signum", *_WEIGHT_DECAY),
]
