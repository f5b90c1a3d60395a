"""Shampoo: blocked Kronecker preconditioning with inverse roots every k steps, grafted.

1. The papers' algorithm in float64 NumPy (``shampoo_reference``), step by step: blocks
   cut as Anil et al. (2020) cut them, statistics per block and axis, inverse roots by
   ``eigh`` at the start step and every k steps, grafting per layer (Agarwal et al. 2020)
   onto Adam, RMSProp, AdaGrad or SGD, the first moment preconditioned as in Shi et al.
   (2023). gradchain's roots come from the coupled Newton iteration in float32, so the
   comparison is to ``RTOL`` (measured: below 2e-4 over these runs).
2. The stacked-by-shape layout: the 5x7 / block 3 structure; a tree gives each leaf
   exactly what it gets alone; padding of statistics to a bucket leaves the roots exact.
3. Adam before ``start_preconditioning_step`` (grafting onto Adam is Adam until then).
4. Convergence: parabola and Rosenbrock in ``lax.scan``; the digits MLP.
5. Compile time on wide trees (100 leaves by default, 1000 under ``--slow``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from gradchain import _shampoo_blocks
from tests.example_loader import digits_validation_accuracy
from tests.ranges import NON_NEGATIVE, RATE, UNIT

RTOL = 1e-3

# --- 1. The papers' algorithm in float64 -------------------------------------------------


def _root(stat: np.ndarray, p: int, eps: float) -> np.ndarray:
    """(S + eps * lambda_max I)^(-1/p) by eigendecomposition, in float64."""
    w, v = np.linalg.eigh(stat)
    w = w + eps * max(w.max(), np.finfo(np.float32).tiny)
    return (v * w ** (-1.0 / p)) @ v.T


def _blocks_of(shape: tuple[int, ...], block_size: int) -> list[tuple[slice, ...]]:
    """Anil et al.'s partition: n // b blocks of b along each axis, then the remainder."""
    per_axis = [[slice(s, min(s + block_size, n)) for s in range(0, n, block_size)] for n in shape]
    return [tuple(c) for c in itertools.product(*per_axis)]


def _contract(x: np.ndarray, mats: list[np.ndarray]) -> np.ndarray:
    for d, m in enumerate(mats):  # x <- x contracted with m along axis d
        x = np.moveaxis(np.tensordot(m, x, axes=([1], [d])), 0, d)
    return x


def shampoo_reference(
    grads: list[np.ndarray],
    *,
    block_size: int = 128,
    beta1: float = 0.9,
    beta2: float = 0.999,
    matrix_eps: float = 1e-6,
    graft_type: str = "adam",
    graft_beta2: float = 0.999,
    graft_eps: float = 1e-8,
    every: int = 1,
    start: int = 1,
    exponent: int | None = None,
    nesterov: bool = False,
) -> list[np.ndarray]:
    """Shampoo's updates for one parameter, step by step, in float64.

    Gupta et al. (2018) Algorithm 1 generalised as in Anil et al. (2020): per block,
    L_d <- beta2 L_d + (1 - beta2) G_(d) G_(d)^T (plain sums when beta2 = 1); roots
    (L_d + eps lambda_max I)^(-1/(2k)) at step `start` and every `every` steps after,
    identity before; P = M-hat contracted with every root; grafted per parameter:
    P * |D| / |P| with D the grafting direction of M-hat (Shi et al. 2023's order).
    """
    shape = grads[0].shape
    squeezed = tuple(n for n in shape if n != 1)
    shampoo = len(squeezed) >= 2 and 0 not in shape
    p = exponent or 2 * len(squeezed)
    cuts = _blocks_of(squeezed, block_size) if shampoo else []
    stats = [[np.zeros((s.stop - s.start,) * 2) for s in c] for c in cuts]
    roots = [[np.eye(s.stop - s.start) for s in c] for c in cuts]
    m = np.zeros(shape)
    v = np.zeros(shape)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        m = beta1 * m + (1 - beta1) * g
        m_hat = m / (1 - beta1**t)
        if nesterov:
            m_hat = beta1 * m / (1 - beta1 ** (t + 1)) + (1 - beta1) * g / (1 - beta1**t)
        if graft_type == "adagrad":
            v = v + g * g
            d = m_hat / (np.sqrt(v) + graft_eps)
        elif graft_type in ("adam", "rmsprop"):
            v = graft_beta2 * v + (1 - graft_beta2) * g * g
            v_hat = v / (1 - graft_beta2**t) if graft_type == "adam" else v
            d = m_hat / (np.sqrt(v_hat) + graft_eps)
        else:
            d = m_hat
        if not shampoo:
            out.append(d)
            continue
        gs, ms = g.reshape(squeezed), m_hat.reshape(squeezed)
        w = 1.0 if beta2 == 1.0 else 1 - beta2
        precond = np.zeros(squeezed)
        for i, c in enumerate(cuts):
            block = gs[c]
            for ax in range(len(c)):
                unfolded = np.moveaxis(block, ax, 0).reshape(block.shape[ax], -1)
                stats[i][ax] = beta2 * stats[i][ax] + w * unfolded @ unfolded.T
            if t >= start and (t - start) % every == 0:
                roots[i] = [_root(s, p, matrix_eps) for s in stats[i]]
            precond[c] = _contract(ms[c], roots[i])
        precond = precond.reshape(shape)
        if graft_type != "none":
            precond = precond * np.linalg.norm(d) / np.linalg.norm(precond)
        out.append(precond if t >= start else d)
    return out


def _grads(shape: tuple[int, ...], steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(steps)]


def _run(tx: gc.GradientTransformation, grads: list[Any]) -> list[Any]:
    """The transform's updates for a sequence of gradient trees, jitted."""
    state = tx.init(grads[0])
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(g, state)
        out.append(u)
    return out


SHAPES = {"a": (5, 7), "b": (3, 4, 5), "c": (6,), "d": (1, 4, 2), "e": (2, 0), "f": ()}
"""Every kind of leaf: a blocked matrix, a 3-tensor, a vector, a squeezed matrix, empty, scalar."""

# Stale roots (every > 1) act on directions outside the range of the statistics they were
# computed from, where the float32 Newton iterate is least accurate: a larger matrix_eps
# there keeps the comparison at RTOL.
REFERENCE_CASES: list[Any] = [
    dict(),
    dict(graft_type="rmsprop", beta2=0.9, graft_beta2=0.9, every=3, start=2, matrix_eps=1e-4),
    dict(graft_type="adagrad", beta2=1.0, beta1=0.0, nesterov=True),
    dict(graft_type="none", beta1=0.0, beta2=1.0),
    pytest.param(dict(graft_type="sgd", nesterov=True, matrix_eps=1e-3), marks=pytest.mark.slow),
    pytest.param(dict(every=3, start=2, block_size=4, matrix_eps=1e-4), marks=pytest.mark.slow),
    pytest.param(dict(start=4, graft_type="sgd", block_size=128), marks=pytest.mark.slow),
    pytest.param(dict(exponent=2, beta2=0.95), marks=pytest.mark.slow),
]


def _build(kw: dict[str, Any]) -> gc.GradientTransformation:
    kw = dict(kw)
    return gc.scale_by_shampoo(
        kw.pop("block_size", 3),
        preconditioning_compute_steps=kw.pop("every", 1),
        start_preconditioning_step=kw.pop("start", 1),
        exponent_override=kw.pop("exponent", None),
        **kw,
    )


@pytest.mark.parametrize("kw", REFERENCE_CASES, ids=lambda kw: ",".join(kw) or "default")
def test_updates_match_the_float64_algorithm_step_by_step(kw: dict[str, Any]) -> None:
    steps = 6
    grads = {k: _grads(shape, steps, seed=i) for i, (k, shape) in enumerate(SHAPES.items())}
    want = {k: shampoo_reference(g, **{"block_size": 3, **kw}) for k, g in grads.items()}
    got = _run(_build(kw), [{k: jnp.asarray(g[t]) for k, g in grads.items()} for t in range(steps)])
    for t in range(steps):
        for k in SHAPES:
            w, u = want[k][t], got[t][k]
            assert u.shape == w.shape and u.dtype == jnp.float32
            atol = RTOL * float(np.abs(w).max(initial=0.0))
            np.testing.assert_allclose(u, w, rtol=RTOL, atol=atol, err_msg=f"step {t + 1}, {k}")


# --- 2. The stacked-by-shape layout ----------------------------------------------------------


def test_a_5x7_matrix_with_block_size_3_has_the_blocks_of_anil_et_al() -> None:
    tx = gc.scale_by_shampoo(block_size=3)
    state = tx.init({"w": jnp.zeros((5, 7)), "b": jnp.zeros(7)})
    # rows [3, 2] x columns [3, 3, 1]: one statistic per block and axis, stacked by shape
    layout = {k: [s.shape for s in v] for k, v in state.stats.items()}
    assert layout == {
        "2x1": [(1, 2, 2), (1, 1, 1)],
        "2x3": [(2, 2, 2), (2, 3, 3)],
        "3x1": [(1, 3, 3), (1, 1, 1)],
        "3x3": [(2, 3, 3), (2, 3, 3)],
    }
    assert {k: v.shape for k, v in state.mu.items()} == {
        "2x1": (1, 2, 1),
        "2x3": (2, 2, 3),
        "3x1": (1, 3, 1),
        "3x3": (2, 3, 3),
        "diagonal": (7,),  # the vector: the grafting method alone
    }


def test_a_tree_gives_each_leaf_exactly_what_it_gets_alone() -> None:
    shapes = {"a": (5, 7), "c": (6, 3), "d": (4,)}
    steps = 4
    grads = {k: _grads(s, steps, seed=i) for i, (k, s) in enumerate(shapes.items())}
    tx = gc.scale_by_shampoo(3, start_preconditioning_step=2)
    together = _run(tx, [{k: jnp.asarray(g[t]) for k, g in grads.items()} for t in range(steps)])
    for k in shapes:
        alone = _run(tx, [{k: jnp.asarray(grads[k][t])} for t in range(steps)])
        for t in range(steps):
            np.testing.assert_allclose(together[t][k], alone[t][k], rtol=1e-5, atol=1e-7)


def test_padding_a_statistic_to_its_bucket_leaves_its_root_exact() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 5))
    stat = (g @ g.T).astype(np.float32)[None]
    padded = np.zeros((1, 8, 8), np.float32)
    padded[0, :3, :3] = stat[0]
    eye = jnp.eye(8)[None]
    root = _shampoo_blocks._batched_roots(padded, eye, jnp.float32(1e-6), p=4, max_error=0.1)
    np.testing.assert_allclose(
        root[0, :3, :3], _root(stat[0].astype(np.float64), 4, 1e-6), rtol=1e-4
    )
    assert _shampoo_blocks.bucket_size(3) == 8 and _shampoo_blocks.bucket_size(65) == 128


# --- 3. Grafting onto Adam is Adam until preconditioning starts ----------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_before_the_start_step_the_update_is_adams_bit_for_bit_in_float32(nesterov: bool) -> None:
    shapes = {"w": (5, 4), "b": (4,)}
    steps = 5
    grads = [
        {k: jnp.asarray(_grads(s, steps, i)[t]) for i, (k, s) in enumerate(shapes.items())}
        for t in range(steps)
    ]
    got = _run(gc.scale_by_shampoo(start_preconditioning_step=steps + 1, nesterov=nesterov), grads)
    with jax.numpy_dtype_promotion("standard"):
        want = _run(optax.scale_by_adam(nesterov=nesterov), grads)  # type: ignore[arg-type]
    for u, w in zip(got, want, strict=True):
        for k in shapes:
            np.testing.assert_allclose(u[k], w[k], rtol=1e-6, atol=1e-7)


# --- 4. Convergence ---------------------------------------------------------------------------


def _minimize(tx: Any, loss: Callable[[Any], jax.Array], params: Any, steps: int) -> jax.Array:
    def body(carry: Any, _: Any) -> tuple[Any, None]:
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return (gc.apply_updates(p, updates), state), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))(
        (params, tx.init(params))
    )
    return loss(params)


def test_minimizes_a_matrix_parabola_in_scan() -> None:
    target = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    scales = jnp.asarray([[1.0], [3.0], [10.0], [0.3], [1.0], [2.0]], jnp.float32)

    def loss(p: Any) -> jax.Array:
        return jnp.sum(scales * (p["w"] - target) ** 2) + jnp.sum((p["b"] - 1.0) ** 2)

    params = {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}
    tx = gc.shampoo(
        0.05, block_size=4, start_preconditioning_step=5, preconditioning_compute_steps=5
    )
    assert float(_minimize(tx, loss, params, 400)) < 1e-4


def test_minimizes_rosenbrock_in_scan() -> None:
    def loss(p: Any) -> jax.Array:
        x, y = p["xy"][0, 0], p["xy"][0, 1]
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    params = {"xy": jnp.asarray([[-1.0, 1.5]], jnp.float32)}  # a (1, 2) matrix: a vector
    tx = gc.shampoo(0.05, beta1=0.9, start_preconditioning_step=1)
    assert float(_minimize(tx, loss, params, 2000)) < 1e-3


def test_trains_the_digits_mlp_to_95_percent_validation_accuracy_in_300_steps() -> None:
    tx = gc.shampoo(
        3e-3,
        block_size=32,
        start_preconditioning_step=10,
        preconditioning_compute_steps=10,
        weight_decay=1e-4,
    )
    assert digits_validation_accuracy(tx, steps=300) >= 0.95


# --- 5. Compile time on wide trees -----------------------------------------------------------


def _compile_seconds(tx: Any, params: Any) -> float:
    state = tx.init(params)
    start = time.perf_counter()
    jax.jit(tx.update).lower(params, state, params).compile()
    return time.perf_counter() - start


def _wide_tree(n: int, shapes: Any) -> list[jax.Array]:
    return [jnp.zeros(shapes[i % len(shapes)], jnp.float32) for i in range(n)]


MIXED = [(64, 64), (64,), (256, 64), (3, 3, 16, 32), (200, 100), ()]


@pytest.mark.parametrize(
    ("leaves", "shapes", "bound"),
    [
        (100, [(32, 32), (32,)], 8.0),
        pytest.param(1000, MIXED, 20.0, marks=pytest.mark.slow),
    ],
)
def test_compiles_a_wide_tree_within_a_few_adam_compiles(
    leaves: int, shapes: Any, bound: float
) -> None:
    """Trace + compile of the update against gc.adam's on the same tree.

    Measured with 1000 leaves: on a 16-core CPU, 1.2x optax.adam's wall time for 64x64
    leaves and 1.3x for the mixed shapes (8.3 s and 10.5 s), but 8-9x its CPU time (XLA
    compiles distinct kernels in parallel, and Adam's per-leaf kernels are identical across
    leaves of one shape, so compiled once); on 2 loaded cores 65 s against 5.5 s (12x).
    """
    params = _wide_tree(leaves, shapes)
    tx = gc.shampoo(1e-3, preconditioning_compute_steps=10)
    adam = _compile_seconds(gc.adam(1e-3), params)
    shampoo = _compile_seconds(tx, params)
    assert shampoo < bound * max(adam, 0.5), (shampoo, adam)


# --- 6. Errors -----------------------------------------------------------------------------

FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_shampoo": (gc.scale_by_shampoo, {}),
    "shampoo": (gc.shampoo, {"learning_rate": 0.1}),
}

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    *[
        (factory, arg, kind, "scale_by_shampoo")
        for factory in ("scale_by_shampoo", "shampoo")
        for arg, kind in (
            ("beta1", RATE),
            ("beta2", UNIT),
            ("matrix_eps", NON_NEGATIVE),
            ("graft_beta2", RATE),
            ("graft_eps", NON_NEGATIVE),
        )
    ],
    ("shampoo", "learning_rate", NON_NEGATIVE, "shampoo"),
    ("shampoo", "weight_decay", NON_NEGATIVE, "shampoo"),
]


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(block_size=0), ValueError, r"`block_size` must be > 0; got 0"),
        (dict(block_size=2.0), TypeError, r"`block_size` must be an integer"),
        (dict(preconditioning_compute_steps=0), ValueError, r"`preconditioning_compute_steps`"),
        (dict(start_preconditioning_step=0), ValueError, r"`start_preconditioning_step`"),
        (dict(exponent_override=0), ValueError, r"`exponent_override` must be > 0"),
        (dict(graft_type="adamw"), ValueError, r"`graft_type` must be one of .*'adamw'"),
    ],
)
def test_bad_structural_arguments_are_refused_at_construction(
    kw: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=rf"^scale_by_shampoo: {match}"):
        gc.scale_by_shampoo(**kw)


def test_updates_of_another_shape_are_refused_naming_the_path_and_both_shapes() -> None:
    tx = gc.scale_by_shampoo(block_size=4)
    state = tx.init({"w": jnp.zeros((4, 4))})
    match = r"^scale_by_shampoo: .* disagree in shape at \['w'\]: \(4, 8\) against \(4, 4\)"
    with pytest.raises(ValueError, match=match):
        tx.update({"w": jnp.zeros((4, 8))}, state)


def test_vectors_that_swapped_shapes_are_refused_though_their_groups_still_fit() -> None:
    # mu keeps both vectors in one flat group of 11: only the layout's records can tell,
    # and they hold no zero-size array (Orbax cannot save one).
    tx = gc.scale_by_shampoo(block_size=4)
    state = tx.init({"a": jnp.zeros(5), "b": jnp.zeros(6), "s": jnp.zeros(())})
    assert all(x.size > 0 for x in jax.tree.leaves(state.layout))
    match = r"^scale_by_shampoo: .* disagree in shape at \['a'\]: \(6,\) against \(5,\)"
    with pytest.raises(ValueError, match=match):
        tx.update({"a": jnp.zeros(6), "b": jnp.zeros(5), "s": jnp.zeros(())}, state)


def test_a_state_whose_groups_were_edited_is_refused_naming_the_layouts() -> None:
    tx = gc.scale_by_shampoo(block_size=4)
    state = tx.init({"w": jnp.zeros((4, 4))})
    state = state._replace(mu={"4x4": jnp.zeros((2, 4, 4))})
    with pytest.raises(ValueError, match=r"^scale_by_shampoo: `state.mu` holds \{'4x4': float32"):
        tx.update({"w": jnp.zeros((4, 4))}, state)


def test_complex_matrices_are_refused_naming_the_path() -> None:
    params = {"w": jnp.ones((3, 2), jnp.complex64)}
    with pytest.raises(
        TypeError, match=r"^scale_by_shampoo: the parameter at \['w'\] is complex64"
    ):
        gc.scale_by_shampoo().init(params)
