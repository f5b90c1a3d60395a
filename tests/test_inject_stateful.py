"""inject_stateful_hyperparams and WrappedSchedule against Optax 0.2.8.

The inner optimizer gets the same hyperparameter values in both libraries, so
updates agree to rtol 1e-6 with float32 parameters. With bfloat16 parameters
Optax casts constant hyperparameters to bfloat16; gradchain keeps float32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.ones((2, 2))}


def _quietly(f: Any, *args: Any) -> Any:
    with pytest.warns(DeprecationWarning, match="inject_stateful_hyperparams is deprecated"):
        return f(*args)


class LossDriven:
    """A stateful schedule: the learning rate halves whenever the loss fails to improve."""

    def init(self) -> dict[str, jax.Array]:
        return {"lr": jnp.array(0.5), "best": jnp.array(jnp.inf)}

    def update(self, state: dict[str, jax.Array], **extra_args: Any) -> dict[str, jax.Array]:
        loss = extra_args["loss"]
        worse = loss >= state["best"]
        lr = jnp.where(worse, state["lr"] / 2, state["lr"])
        return {"lr": lr, "best": jnp.minimum(loss, state["best"])}

    def __call__(self, state: dict[str, jax.Array], **extra_args: Any) -> jax.Array:
        return state["lr"]


def _run(lib: Any, steps: int = 8) -> list[tuple[Any, dict[str, Any]]]:
    inject = lib.inject_stateful_hyperparams
    if lib is optax:  # Optax 0.2.8 deprecates it in favour of its inject_hyperparams
        inject = functools.partial(_quietly, optax.inject_stateful_hyperparams)
    tx = inject(lib.sgd)(
        learning_rate=LossDriven(),
        momentum=lib.WrappedSchedule(lib.linear_schedule(0.0, 0.9, 5)),
    )
    state = tx.init(PARAMS)
    update = jax.jit(tx.update)
    out = []
    rng = np.random.default_rng(0)
    for i in range(steps):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), PARAMS)
        loss = jnp.asarray([3.0, 2.0, 2.5, 2.6, 1.0, 1.5, 0.5, 0.7][i])
        updates, state = update(grads, state, PARAMS, loss=loss)
        out.append((updates, dict(state.hyperparams)))
    return out


def test_inject_stateful_hyperparams_matches_optax_step_by_step():
    ours = _run(gc)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(optax)
    for (u, hp), (ref_u, ref_hp) in zip(ours, theirs, strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), u, ref_u)
        for k in ref_hp:
            np.testing.assert_allclose(hp[k], ref_hp[k], rtol=1e-6)
    # the value the last update used: halved after the losses 2.5, 2.6 and 1.5
    assert float(ours[-1][1]["learning_rate"]) == 0.0625


def test_hyperparameters_stay_float32_with_bfloat16_params_where_optax_casts_them():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    schedule = gc.WrappedSchedule(gc.constant_schedule(1e-3))
    state = gc.inject_stateful_hyperparams(gc.sgd)(learning_rate=schedule, momentum=0.9).init(
        params
    )
    assert {k: v.dtype for k, v in state.hyperparams.items()} == {
        "learning_rate": jnp.float32,
        "momentum": jnp.float32,
    }
    assert float(state.hyperparams["momentum"]) == np.float32(0.9)
    with jax.numpy_dtype_promotion("standard"):
        ref = _quietly(optax.inject_stateful_hyperparams, optax.sgd)(
            learning_rate=optax.WrappedSchedule(optax.constant_schedule(1e-3)), momentum=0.9
        )
        assert ref.init(params).hyperparams["momentum"].dtype == jnp.bfloat16


def test_constants_are_read_and_set_through_get_and_set_hyperparams():
    tx = gc.inject_stateful_hyperparams(gc.sgd)(learning_rate=LossDriven(), momentum=0.0)
    state = tx.init(PARAMS)
    assert sorted(gc.get_hyperparams(state)) == ["learning_rate", "momentum"]
    state = gc.set_hyperparams(state, momentum=0.5)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    for loss in (2.0, 1.0):
        updates, state = tx.update(grads, state, PARAMS, loss=jnp.asarray(loss))
    np.testing.assert_allclose(updates["w"], -0.5 * 1.5)  # momentum 0.5 was used, not 0.0


def test_plain_schedules_are_wrapped_and_saturate_at_the_int32_maximum():
    tx = gc.inject_stateful_hyperparams(gc.sgd)(learning_rate=gc.constant_schedule(0.1))
    state = tx.init(PARAMS)
    assert isinstance(state.hyperparams_states["learning_rate"], gc.WrappedScheduleState)
    top = np.iinfo(np.int32).max
    state = state._replace(
        hyperparams_states={"learning_rate": gc.WrappedScheduleState(jnp.asarray(top, jnp.int32))}
    )
    _, state = tx.update(PARAMS, state)
    assert int(state.hyperparams_states["learning_rate"].step) == top


def test_bad_arguments_are_explained():
    with pytest.raises(TypeError, match=r"^WrappedSchedule: `schedule_fn` must be a function"):
        gc.WrappedSchedule(0.1)  # type: ignore[arg-type]

    class Vector(LossDriven):
        def __call__(self, state: dict[str, jax.Array], **extra_args: Any) -> jax.Array:
            return jnp.ones(2)

    with pytest.raises(TypeError, match=r"^inject_stateful_hyperparams: the schedule of "):
        gc.inject_stateful_hyperparams(gc.sgd)(learning_rate=Vector())
