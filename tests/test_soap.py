"""SOAP (Vyas et al., 2024): the algorithm box, the authors' reference behaviour, convergence.

What the NumPy reference follows (``_numpy_soap``, float64):

- Algorithm 3 of the paper: ``G' = Q_L^T G Q_R``; ``M`` (the first moment) in the
  original space, rotated every step; ``V`` (the second moment) in the rotated
  space; ``N = Q_L (M' / (sqrt(V) + eps)) Q_R^T``; then ``L, R`` updated with
  ``G G^T``, ``G^T G`` (``shampoo_beta``), the bases refreshed when ``t % f == 0``.
- The authors' code (github.com/nikhilvyas/SOAP) where the box is silent: the
  first call only sets ``L, R`` and the bases by ``eigh`` (eigenvalues decreasing)
  and returns a zero update, ``t`` counting from the next call; a refresh is one
  power-iteration step ``Q <- QR(P Q)`` with the columns of ``Q`` first sorted by
  ``diag(Q^T P Q)`` (decreasing) and ``V`` permuted alike; a tensor gets one factor
  per axis (the gradient contracted with itself over the other axes); an axis
  longer than ``max_precond_dim`` gets none.
- Bias correction in Adam's form ``(M'/(1-b1^t)) / (sqrt(V/(1-b2^t)) + eps)``
  (the authors put ``eps`` on the uncorrected root; the two differ by
  ``eps * (1 - sqrt(1-b2^t))``, below 1e-8 here).

Shapes are chosen so that every eigenbasis is determined up to signs (to which
the update is invariant): one gradient's ``G G^T`` of an (m, n) matrix has a
null space of dimension ``m - n``; at most 1 here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from gradchain._eigenbasis import merge_small_dims
from tests.example_loader import digits_validation_accuracy
from tests.ranges import NON_NEGATIVE, RATE

# --- the reference --------------------------------------------------------------------------


def _rotate(x: np.ndarray, qs: list[np.ndarray | None], back: bool = False) -> np.ndarray:
    for i, q in enumerate(qs):
        if q is not None:
            x = np.moveaxis(np.tensordot(x, q.T if back else q, axes=([i], [0])), -1, i)
    return x


def _numpy_soap(
    grads: list[np.ndarray],
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    freq: int = 10,
    max_dim: int = 10000,
) -> list[np.ndarray]:
    """SOAP's updates for a sequence of gradients of one tensor, in float64."""
    sb = b2 if shampoo_beta is None else shampoo_beta
    shape = grads[0].shape
    sides = [d <= max_dim for d in shape]
    gg = [np.zeros((d, d)) if s else None for d, s in zip(shape, sides, strict=True)]
    qs: list[np.ndarray | None] | None = None
    m, v, t, outs = np.zeros(shape), np.zeros(shape), 0, []
    for g in grads:
        if qs is None:
            outs.append(np.zeros(shape))  # the first call only sets the bases
        else:
            t += 1
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * _rotate(g, qs) ** 2
            n = (_rotate(m, qs) / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            outs.append(_rotate(n, qs, back=True))
        for i in range(len(shape)):
            if gg[i] is not None:
                other = [a for a in range(len(shape)) if a != i]
                gg[i] = sb * gg[i] + (1 - sb) * np.tensordot(g, g, axes=(other, other))
        if qs is None:
            qs = [None if p is None else np.linalg.eigh(p)[1][:, ::-1] for p in gg]
        elif t % freq == 0:
            for i, (p, q) in enumerate(zip(gg, qs, strict=True)):
                if p is None or q is None:
                    continue
                order = np.argsort(-np.diag(q.T @ p @ q), kind="stable")
                v = np.take(v, order, axis=i)
                qs[i] = np.linalg.qr(p @ q[:, order])[0]
    return outs


def _run(tx: Any, grads: list[Any], params: Any) -> list[Any]:
    update = jax.jit(tx.update)
    state, outs = tx.init(params), []
    for g in grads:
        u, state = update(g, state, params)
        outs.append(u)
    return outs


_CASES = [((3, 3), 1), ((3, 4), 3), ((4, 3), 2), ((2, 3, 4), 2), ((5, 4), 4)]


@pytest.mark.parametrize(("shape", "freq"), _CASES, ids=lambda x: str(x))
def test_updates_match_a_float64_numpy_loop_of_the_algorithm_at_every_step(
    shape: tuple[int, ...], freq: int
) -> None:
    rng = np.random.default_rng(sum(shape) + freq)
    grads = [rng.normal(size=shape) for _ in range(10)]
    want = _numpy_soap(grads, b1=0.9, b2=0.95, shampoo_beta=0.8, freq=freq)
    with jax.enable_x64(True):
        tx = gc.scale_by_soap(b1=0.9, b2=0.95, shampoo_beta=0.8, precondition_frequency=freq)
        got = _run(tx, [jnp.asarray(g) for g in grads], jnp.zeros(shape, jnp.float64))
        for step, (u, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(u, w, rtol=1e-9, atol=1e-9, err_msg=f"step {step}")


def test_float32_updates_follow_the_float64_reference_to_float32_accuracy() -> None:
    rng = np.random.default_rng(7)
    grads = [rng.normal(size=(4, 3)) for _ in range(10)]
    want = _numpy_soap(grads, freq=3)
    got = _run(
        gc.scale_by_soap(precondition_frequency=3),
        [jnp.asarray(g, jnp.float32) for g in grads],
        jnp.zeros((4, 3)),
    )
    for u, w in zip(got, want, strict=True):
        assert u.dtype == jnp.float32
        np.testing.assert_allclose(u, w, rtol=1e-3, atol=1e-3)


def test_axes_longer_than_max_precond_dim_keep_the_identity() -> None:
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(3, 6)) for _ in range(8)]
    want = _numpy_soap(grads, freq=2, max_dim=4)
    with jax.enable_x64(True):
        tx = gc.scale_by_soap(precondition_frequency=2, max_precond_dim=4)
        state = tx.init(jnp.zeros((3, 6), jnp.float64))
        assert [x.shape for x in state.factors.gg] == [(1, 3, 3)]  # the left side only
        got = _run(tx, [jnp.asarray(g) for g in grads], jnp.zeros((3, 6), jnp.float64))
    for u, w in zip(got, want, strict=True):
        np.testing.assert_allclose(u, w, rtol=1e-9, atol=1e-9)


def test_merge_small_dims_follows_the_authors_rule() -> None:
    assert merge_small_dims((2, 3, 4, 5), 12) == (6, 4, 5)
    assert merge_small_dims((3, 3, 64, 128), 1000) == (576, 128)
    assert merge_small_dims((1, 4, 2), 10000) == (8,)
    assert merge_small_dims((5000, 3), 1000) == (5000, 3)


def test_merge_dims_preconditions_the_merged_tensor() -> None:
    rng = np.random.default_rng(2)
    grads = [jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32) for _ in range(6)]
    tx = gc.scale_by_soap(precondition_frequency=2, max_precond_dim=12, merge_dims=True)
    state = tx.init(grads[0])
    assert [x.shape for x in state.factors.gg] == [(1, 6, 6), (1, 4, 4), (1, 5, 5)]
    merged = gc.scale_by_soap(precondition_frequency=2, max_precond_dim=12)
    want = _run(merged, [g.reshape(6, 4, 5) for g in grads], grads[0].reshape(6, 4, 5))
    got = _run(tx, grads, grads[0])
    for u, w in zip(got, want, strict=True):
        np.testing.assert_allclose(u, w.reshape(2, 3, 4, 5), rtol=1e-6, atol=1e-6)


def test_vectors_scalars_and_unrotatable_matrices_get_exactly_adam() -> None:
    params = {"b": jnp.ones(5), "s": jnp.ones(()), "wide": jnp.ones((20, 30))}
    rng = np.random.default_rng(3)
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(6)
    ]
    kw = dict(b1=0.9, b2=0.99, eps=1e-6)
    got = _run(gc.soap(0.1, weight_decay=0.01, max_precond_dim=10, **kw), grads, params)
    want = _run(gc.adamw(0.1, weight_decay=0.01, **kw), grads, params)
    chex.assert_trees_all_equal(got, want)
    with jax.numpy_dtype_promotion("standard"):
        ref = _run(optax.adamw(0.1, weight_decay=0.01, **kw), grads, params)
    chex.assert_trees_all_close(got, ref, rtol=1e-6, atol=1e-7)


def test_precondition_1d_gives_vectors_a_full_factor() -> None:
    tx = gc.scale_by_soap(precondition_1d=True, max_precond_dim=4)
    state = tx.init({"short": jnp.ones(3), "long": jnp.ones(5)})
    assert [x.shape for x in state.factors["short"].gg] == [(1, 3, 3)]
    assert state.factors["long"].gg == ()


def test_stacked_layers_get_one_pair_of_factors_per_layer() -> None:
    rng = np.random.default_rng(4)
    grads = [jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32) for _ in range(6)]
    tx = gc.scale_by_soap(
        precondition_frequency=2, weight_dimension_numbers=gc.MuonDimensionNumbers(-2, -1)
    )
    state = tx.init(grads[0])
    assert [x.shape for x in state.factors.gg] == [(2, 3, 3), (2, 4, 4)]
    got = _run(tx, grads, grads[0])
    for layer in range(2):
        alone = _run(
            gc.scale_by_soap(precondition_frequency=2), [g[layer] for g in grads], grads[0][layer]
        )
        for u, w in zip(got, alone, strict=True):
            np.testing.assert_allclose(u[layer], w, rtol=1e-5, atol=1e-5)


def test_bases_change_only_on_refresh_steps_and_statistics_stay_float32() -> None:
    params = {"w": jnp.ones((3, 4), jnp.bfloat16)}
    tx = gc.scale_by_soap(precondition_frequency=3)
    state = tx.init(params)
    rng = np.random.default_rng(5)
    changed = []
    for _ in range(8):
        g = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.bfloat16)}
        u, new = jax.jit(tx.update)(g, state, params)
        assert u["w"].dtype == jnp.bfloat16 and new.nu["w"].dtype == jnp.bfloat16
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.factors))
        changed.append(not np.array_equal(new.factors["w"].q[0], state.factors["w"].q[0]))
        state = new
    # call 1: eigh; then t = call - 1, refreshed when t % 3 == 0: calls 4 and 7
    assert changed == [True, False, False, True, False, False, True, False]


def test_hyperparameters_live_in_the_state() -> None:
    state = gc.soap(0.01, shampoo_beta=0.9).init({"w": jnp.ones((2, 2))})
    hp = gc.get_hyperparams(state)
    assert {k: round(float(v), 3) for k, v in hp.items()} == {
        "b1": 0.95,
        "b2": 0.95,
        "eps": 0.0,
        "shampoo_beta": 0.9,
        "weight_decay": 0.01,
        "learning_rate": 0.01,
    }


def test_a_complex_matrix_or_a_bad_routing_is_refused_naming_the_problem() -> None:
    tx = gc.scale_by_soap()
    w = jnp.ones((2, 2), jnp.complex64)
    with pytest.raises(TypeError, match=r"^scale_by_soap: the update at leaf 0 is complex"):
        tx.update(w, tx.init(w))
    routed = gc.scale_by_soap(weight_dimension_numbers={"w": gc.MuonDimensionNumbers(0, 5)})
    with pytest.raises(ValueError, match=r"scale_by_soap: the MuonDimensionNumbers at w"):
        routed.init({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match=r"^scale_by_soap: `precondition_frequency` must be > 0"):
        gc.scale_by_soap(precondition_frequency=0)
    with pytest.raises(TypeError, match=r"^scale_by_soap: `max_precond_dim` must be an integer"):
        gc.scale_by_soap(max_precond_dim=2.5)  # type: ignore[arg-type]


# --- convergence ----------------------------------------------------------------------------


def _minimize(tx: Any, f: Callable[[jax.Array], jax.Array], x0: jax.Array, steps: int) -> float:
    def body(carry: Any, _: Any) -> tuple[Any, None]:
        x, state = carry
        u, state = tx.update(jax.grad(f)(x), state, x)
        return (gc.apply_updates(x, u), state), None

    (x, _), _ = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
    return float(f(x))


def test_soap_minimizes_a_parabola_and_the_rosenbrock_function() -> None:
    def parabola(x: jax.Array) -> jax.Array:
        return jnp.sum((x - jnp.array([[1.0, -2.0], [3.0, 0.5]])) ** 2)

    def rosenbrock(x: jax.Array) -> jax.Array:  # a (1, 2) matrix
        a, b = x[0, 0], x[0, 1]
        return (1 - a) ** 2 + 100 * (b - a**2) ** 2

    sched = gc.cosine_decay_schedule(0.1, 500)
    assert _minimize(gc.soap(sched, weight_decay=0.0), parabola, jnp.zeros((2, 2)), 500) < 1e-3
    sched = gc.cosine_decay_schedule(0.02, 2000)
    tx = gc.soap(sched, b1=0.9, b2=0.99, weight_decay=0.0)
    assert _minimize(tx, rosenbrock, jnp.array([[-1.0, 1.0]]), 2000) < 1e-2


def test_soap_beats_adam_per_step_on_an_ill_conditioned_least_squares_problem() -> None:
    rng = np.random.default_rng(6)
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]  # ill-conditioned, not axis-aligned
    spectrum = rotation @ np.diag(np.logspace(0, 2, 16)) @ rotation.T
    a = jnp.asarray(rng.normal(size=(64, 16)) @ spectrum / 8, jnp.float32)
    target = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    b = a @ target

    def loss(w: jax.Array) -> jax.Array:
        return 0.5 * jnp.mean((a @ w - b) ** 2) / jnp.mean(b**2)

    def best(make: Callable[[Any], Any]) -> float:
        lrs = (0.03, 0.1, 0.3)  # each optimizer at its best rate, cosine-decayed over 200 steps
        return min(
            _minimize(make(gc.cosine_decay_schedule(lr, 200)), loss, jnp.zeros((16, 8)), 200)
            for lr in lrs
        )

    soap = best(lambda lr: gc.soap(lr, 0.9, 0.99, weight_decay=0.0, precondition_frequency=5))
    adam = best(lambda lr: gc.adam(lr, 0.9, 0.99))
    assert soap < 0.01 * adam, (soap, adam)  # measured: 2e-8 against 9e-4


def test_soap_trains_the_digits_mlp_to_95_percent_in_300_steps() -> None:
    acc = digits_validation_accuracy(gc.soap(3e-3, weight_decay=1e-4), steps=300)
    assert acc >= 0.95, acc


# --- tables for tests/test_errors.py ----------------------------------------------------------

FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_soap": (gc.scale_by_soap, {}),
    "soap": (gc.soap, {}),
}

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale_by_soap", "b1", RATE, "scale_by_soap"),
    ("scale_by_soap", "b2", RATE, "scale_by_soap"),
    ("scale_by_soap", "shampoo_beta", RATE, "scale_by_soap"),
    ("scale_by_soap", "eps", NON_NEGATIVE, "scale_by_soap"),
    ("soap", "learning_rate", NON_NEGATIVE, "soap"),
    ("soap", "b1", RATE, "scale_by_soap"),
    ("soap", "b2", RATE, "scale_by_soap"),
    ("soap", "shampoo_beta", RATE, "scale_by_soap"),
    ("soap", "eps", NON_NEGATIVE, "scale_by_soap"),
    ("soap", "weight_decay", NON_NEGATIVE, "soap"),
]
