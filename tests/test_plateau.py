"""reduce_on_plateau: Optax 0.2.8's numbers, a float64 reference, Optax's negative-loss defect.

Parity: 300 noisy losses under ``lax.scan``; the scales and updates are
bit-identical to ``optax.contrib.reduce_on_plateau``'s for positive losses.
For negative losses Optax's test ``v < (1 - rtol) b - atol`` counts a worse
loss as an improvement; ours measures the margin against ``|b|``.
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
from tests.ranges import NON_NEGATIVE, RATE, UNIT
from tests.registry import with_objective

_rng = np.random.default_rng(0)
LOSSES = np.asarray(
    np.cumsum(_rng.normal(size=300) * 0.2) + 50 + 3 * np.cos(np.arange(300) / 7), np.float32
)
SETTINGS = [
    {},
    {"factor": 0.5, "patience": 3, "cooldown": 2},
    {"factor": 0.7, "patience": 2, "rtol": 1e-3, "atol": 0.01, "accumulation_size": 3},
    {"factor": 0.5, "patience": 1, "min_scale": 0.05},
]


def _run(lib: Any, kwargs: dict[str, Any], losses: np.ndarray) -> tuple[Any, Any]:
    tx = lib.reduce_on_plateau(**kwargs)
    params = {"w": jnp.ones(2)}

    def step(state: Any, loss: jax.Array) -> tuple[Any, Any]:
        updates, state = tx.update({"w": jnp.full(2, 2.0)}, state, params, value=loss)
        return state, (updates["w"], state.scale)

    return jax.jit(lambda: jax.lax.scan(step, tx.init(params), losses)[1])()


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: "-".join(k) or "defaults")
def test_scales_and_updates_match_optax_contrib_for_positive_losses(kwargs: dict) -> None:
    got_u, got_scale = _run(gc, kwargs, LOSSES)
    with jax.numpy_dtype_promotion("standard"):
        want_u, want_scale = _run(optax.contrib, kwargs, LOSSES)
    np.testing.assert_array_equal(got_scale, want_scale)
    np.testing.assert_array_equal(got_u, want_u)
    assert float(got_scale[-1]) < 1.0  # the run reaches plateaus


def plateau_ref(
    losses: np.ndarray,
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> np.ndarray:
    """The scale after each update, in float64: PyTorch's ReduceLROnPlateau ('rel' mode on |b|)."""
    scale, best, bad, cool, window, out = 1.0, np.inf, 0, 0, [], []
    for loss in losses.astype(np.float64):
        window.append(loss)
        if len(window) == accumulation_size:
            v = float(np.mean(window))
            window = []
            improved = v < best - rtol * abs(best) - atol if np.isfinite(best) else True
            if improved:
                best = v
            if improved or cool > 0:
                bad = 0
                cool = max(cool - 1, 0)
            else:
                bad += 1
                if bad >= patience:
                    scale, bad, cool = max(scale * factor, min_scale), 0, cooldown
        out.append(scale)
    return np.array(out)


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: "-".join(k) or "defaults")
def test_scales_follow_a_float64_loop_of_the_rule(kwargs: dict) -> None:
    _, got = _run(gc, kwargs, LOSSES)
    np.testing.assert_allclose(got, plateau_ref(LOSSES, **kwargs), rtol=1e-6)


def test_a_worse_negative_loss_is_no_improvement_where_optax_counts_it_as_one() -> None:
    losses = np.asarray(-100.0 + np.arange(30) * 0.5, np.float32)  # a negative loss getting worse
    kwargs = {"factor": 0.5, "patience": 2, "rtol": 0.1}
    _, got = _run(gc, kwargs, losses)
    with jax.numpy_dtype_promotion("standard"):
        _, theirs = _run(optax.contrib, kwargs, losses)
    assert float(got[-1]) < 1e-3  # dropped every 2 checks
    assert float(theirs[-1]) == 1.0  # -99.5 < 0.9 * -100: "improved", never drops
    np.testing.assert_allclose(got, plateau_ref(losses, **kwargs), rtol=1e-6)


def test_the_scale_is_state_and_the_settings_are_hyperparameters() -> None:
    tx = gc.chain(gc.sgd(0.1), gc.reduce_on_plateau(factor=0.5, patience=1))
    params = jnp.ones(2)
    state = tx.init(params)
    hp = gc.get_hyperparams(state)
    assert {"factor", "rtol", "atol", "min_scale", "learning_rate"} <= set(hp)
    state = gc.set_hyperparams(state, factor=0.25)
    for loss in (1.0, 1.0):
        updates, state = tx.update(jnp.ones(2), state, params, value=jnp.float32(loss))
    assert float(state[1].scale) == 0.25
    np.testing.assert_allclose(updates, -0.025)


def test_a_missing_value_raises_saying_how_to_pass_the_loss() -> None:
    tx = gc.reduce_on_plateau()
    state = tx.init(jnp.ones(2))
    for update in (tx.update, jax.jit(tx.update)):
        with pytest.raises(ValueError, match=r"^reduce_on_plateau: update needs `value=`"):
            update(jnp.ones(2), state)


def test_a_loss_that_is_not_a_scalar_is_refused() -> None:
    tx = gc.reduce_on_plateau()
    with pytest.raises(ValueError, match=r"`value` must be a scalar.*\(3,\)"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)), value=jnp.ones(3))


def test_integer_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^reduce_on_plateau: `accumulation_size` must be > 0"):
        gc.reduce_on_plateau(accumulation_size=0)
    with pytest.raises(TypeError, match=r"^reduce_on_plateau: `patience` must be an integer"):
        gc.reduce_on_plateau(patience=2.5)  # type: ignore[arg-type]


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "reduce_on_plateau": (lambda **kw: with_objective(gc.reduce_on_plateau(**kw)), {}),
}
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("reduce_on_plateau", "factor", UNIT, "reduce_on_plateau"),
    ("reduce_on_plateau", "rtol", RATE, "reduce_on_plateau"),
    ("reduce_on_plateau", "atol", NON_NEGATIVE, "reduce_on_plateau"),
    ("reduce_on_plateau", "min_scale", NON_NEGATIVE, "reduce_on_plateau"),
]
OPTAX_PARITY_NAMES = frozenset({"reduce_on_plateau"})
