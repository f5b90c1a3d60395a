"""GaLore: against Optax 0.2.8, against the paper's projection in float64, and on a regression.

Parity is bit-identical at the time of writing (the same SVD and the same
contractions), so RTOL is 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax import contrib as oc

import gradchain as gc
from tests.ranges import FINITE, NON_NEGATIVE
from tests.test_adaptive import assert_trees_close, trajectories

_OPTIONS: list[dict[str, Any]] = [
    dict(rank=2, update_proj_gap=7),
    dict(rank=128),  # capped at min(m, n)
    dict(rank=1, update_proj_gap=10, scale=0.25),
]


@pytest.mark.parametrize("kw", _OPTIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_galore_and_scale_by_galore_match_optax_at_every_step(kw: dict[str, Any]) -> None:
    got, want = trajectories(
        lambda: gc.galore(0.01, weight_decay=0.1, **kw),
        lambda: oc.galore(0.01, weight_decay=0.1, **kw),
    )
    assert_trees_close(got[0], want[0], "updates")
    assert_trees_close(got[1], want[1], "params")
    got, want = trajectories(lambda: gc.scale_by_galore(**kw), lambda: oc.scale_by_galore(**kw))
    assert_trees_close(got[0], want[0], "updates")


OPTAX_PARITY_NAMES = frozenset({"galore", "scale_by_galore"})


def galore_sgd_ref(grads: np.ndarray, rank: int, gap: int, scale: float) -> np.ndarray:
    """GaLore's projection in float64, with an identity base optimizer.

    Zhao et al. (2024), arXiv:2403.03507, Algorithm 1:
    P_t from the top-r singular vectors of G_t every `gap` steps (longer side), update
    scale * P P^T G (or G Q Q^T), in float64.
    """
    out, proj = [], None
    for t, g in enumerate(grads.astype(np.float64)):
        left = g.shape[0] >= g.shape[1]
        if t % gap == 0:
            u, _, vt = np.linalg.svd(g, full_matrices=False)
            proj = u[:, :rank] if left else vt[:rank].T
        assert proj is not None
        out.append(scale * (proj @ proj.T @ g if left else g @ proj @ proj.T))
    return np.stack(out)


@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_the_projection_matches_the_papers_algorithm_in_float64(shape: tuple[int, int]) -> None:
    grads = np.random.default_rng(0).normal(size=(9, *shape)).astype(np.float32)
    tx = gc.scale_by_galore(rank=2, update_proj_gap=4, scale=0.5, base_optimizer=gc.identity())

    def step(state: Any, g: jax.Array) -> Any:
        u, state = tx.update(g, state)
        return state, u

    _, got = jax.lax.scan(step, tx.init(jnp.zeros(shape)), jnp.asarray(grads))
    np.testing.assert_allclose(got, galore_sgd_ref(grads, 2, 4, 0.5), rtol=1e-4, atol=1e-5)


def test_the_state_inits_from_shapes_and_keeps_moments_at_rank_size() -> None:
    params = {
        "w": jax.ShapeDtypeStruct((16, 6), jnp.float32),
        "b": jax.ShapeDtypeStruct((6,), jnp.float32),
    }
    state = gc.scale_by_galore(rank=2).init(params)
    assert state.projector["w"].shape == (16, 2)
    assert state.base_optimizer_state.mu["w"].shape == (2, 6)
    assert state.base_optimizer_state.mu["b"].shape == (6,)
    assert float(gc.get_hyperparams(state)["scale"]) == 1.0


def test_an_unprojected_leaf_that_changed_shape_is_refused_naming_its_path() -> None:
    tx = gc.scale_by_galore(rank=1, base_optimizer=gc.identity())  # no state of its own
    state = tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3), "s": jnp.zeros(())})
    assert all(x.size > 0 for x in jax.tree.leaves(state.projector))  # Orbax saves them
    with pytest.raises(ValueError, match=r"^scale_by_galore: .* at \['b'\]: \(4,\) against \(3,\)"):
        tx.update({"w": jnp.zeros((4, 3)), "b": jnp.zeros(4), "s": jnp.zeros(())}, state)


def test_a_stacked_layer_is_projected_matrix_by_matrix() -> None:
    g = np.random.default_rng(1).normal(size=(3, 6, 4)).astype(np.float32)
    dims = gc.GaLoreDimensionNumbers(-2, -1)
    tx = gc.scale_by_galore(rank=2, base_optimizer=gc.identity(), weight_dimension_numbers=dims)
    u, state = tx.update(jnp.asarray(g), tx.init(jnp.zeros((3, 6, 4))))
    assert state.projector.shape == (3, 6, 2)
    for i in range(3):
        np.testing.assert_allclose(u[i], galore_sgd_ref(g[i : i + 1], 2, 1, 1.0)[0], atol=1e-5)


def test_galore_minimizes_a_matrix_regression_a_parabola_and_rosenbrock_in_scan() -> None:
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))
    y = a @ jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))

    def minimize(tx: Any, loss: Callable[[Any], jax.Array], x0: Any, steps: int) -> float:
        def step(carry: Any, _: Any) -> Any:
            x, s = carry
            u, s = tx.update(jax.grad(loss)(x), s, x)
            return (gc.apply_updates(x, u), s), None

        (x, _), _ = jax.jit(lambda: jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps))()
        return float(loss(x))

    regression = lambda w: jnp.mean((a @ w - y) ** 2)  # noqa: E731
    w0 = jnp.zeros((8, 6))
    tx = gc.galore(gc.cosine_decay_schedule(0.1, 400), rank=2, update_proj_gap=10)
    assert minimize(tx, regression, w0, 400) < 1e-3 * float(regression(w0))
    parabola = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    assert (
        minimize(
            gc.galore(gc.cosine_decay_schedule(0.1, 300), rank=1, update_proj_gap=5),
            parabola,
            jnp.zeros((3, 3)),
            300,
        )
        < 1e-3
    )
    rosen = lambda x: (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2  # noqa: E731
    tx = gc.galore(gc.cosine_decay_schedule(0.02, 3000), rank=1)
    assert minimize(tx, rosen, jnp.array([-1.0, 1.0]), 3000) < 1e-2


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_galore": (gc.scale_by_galore, {}),
    "galore": (gc.galore, {"learning_rate": 0.1}),
}

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale_by_galore", "scale", FINITE, "scale_by_galore"),
    ("galore", "learning_rate", NON_NEGATIVE, "galore"),
    ("galore", "scale", FINITE, "galore"),
    ("galore", "weight_decay", NON_NEGATIVE, "galore"),
]
