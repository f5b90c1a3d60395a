"""conditionally_transform, conditionally_mask, flatten and maximize.

The wrappers are checked against Optax 0.2.8 step by step: the same inner
arithmetic runs in both, so updates agree to rtol 1e-6. ``maximize`` (which
Optax lacks) is checked against the minimiser of the negated objective.
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

PARAMS = {
    "w": jnp.array([1.0, -2.0, 3.0]),
    "layers": [{"k": jnp.ones((2, 3)), "b": jnp.array(0.5)}],
}


def _grads(seed: int, like: Any = PARAMS) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), like)


def _run(tx: Any, steps: int = 8, extra: Callable[[int], dict[str, Any]] | None = None) -> list:
    state = tx.init(PARAMS)
    update = jax.jit(tx.update)
    out = []
    for i in range(steps):
        kwargs = extra(i) if extra else {}
        updates, state = update(_grads(i), state, PARAMS, **kwargs)
        out.append(updates)
    return out


def _assert_close(ours: list, theirs: list) -> None:
    for a, b in zip(ours, theirs, strict=True):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


@pytest.mark.parametrize("wrapper", ["conditionally_transform", "conditionally_mask"])
def test_conditional_wrappers_match_optax_step_by_step(wrapper: str):
    def make(lib: Any) -> Any:
        return getattr(lib, wrapper)(lib.adam(0.1), lambda step: step % 3 != 1)

    ours = _run(make(gc))
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(make(optax))
    _assert_close(ours, theirs)


def test_forwarded_extra_args_reach_the_condition_as_in_optax():
    def make(lib: Any) -> Any:
        return lib.conditionally_mask(
            lib.sgd(0.1, momentum=0.9), lambda step, loss: loss < 1.0, forward_extra_args=True
        )

    def losses(i: int) -> dict[str, Any]:
        return {"loss": jnp.asarray(0.5 if i % 2 else 2.0)}

    ours = _run(make(gc), extra=losses)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(make(optax), extra=losses)
    _assert_close(ours, theirs)
    assert all(float(jnp.abs(u["w"]).sum()) == 0.0 for u in ours[::2])


def test_skipped_steps_keep_the_inner_state_and_still_count():
    tx = gc.conditionally_transform(gc.scale_by_adam(), lambda step: step >= 2)
    state = tx.init(PARAMS)
    for i in range(4):
        updates, state = jax.jit(tx.update)(_grads(i), state)
        if i < 2:  # passed through unchanged
            jax.tree.map(np.testing.assert_array_equal, updates, _grads(i))
    assert int(state.step) == 4
    assert int(state.inner_state.step) == 2


def test_a_condition_that_is_not_a_boolean_scalar_is_refused_while_tracing():
    for bad, got in (
        (lambda step: step % 2, "int32"),
        (lambda step: jnp.ones(2) > 0, r"bool\[2\]"),
    ):
        tx = gc.conditionally_transform(gc.sgd(0.1), bad)
        with pytest.raises(
            TypeError,
            match=rf"^conditionally_transform: `should_transform_fn` must return a boolean "
            rf"scalar; got {got}.*step % 4 == 0",
        ):
            jax.jit(tx.update)(PARAMS, tx.init(PARAMS))


def test_an_inner_transform_that_changes_dtypes_is_refused_with_a_reason():
    to_bf16 = gc.stateless(lambda u, p: jax.tree.map(lambda x: x.astype(jnp.bfloat16), u))
    tx = gc.conditionally_mask(to_bf16, lambda step: step > 0)
    with pytest.raises(TypeError, match=r"^conditionally_mask: the inner transformation changes"):
        tx.update(PARAMS, tx.init(PARAMS))


# flatten


def test_flatten_matches_optax_on_a_nested_tree():
    def make(lib: Any) -> Any:
        return lib.flatten(lib.chain(lib.clip_by_global_norm(1.0), lib.adamw(0.1)))

    ours = _run(make(gc))
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(make(optax))
    _assert_close(ours, theirs)


def test_flatten_runs_the_inner_transform_on_one_vector_and_keeps_leaf_dtypes():
    params = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(4, jnp.float32)}
    tx = gc.flatten(gc.adam(0.1))
    state = tx.init(params)
    assert state[0].mu.shape == (10,) and state[0].mu.dtype == jnp.float32
    grads = _grads(0, params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert {k: v.dtype for k, v in updates.items()} == {"a": jnp.bfloat16, "b": jnp.float32}
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    assert sorted(gc.get_hyperparams(new_state)) == ["b1", "b2", "eps", "eps_root", "learning_rate"]
    unflat, _ = gc.adam(0.1).update(grads, gc.adam(0.1).init(params), params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-2), updates, unflat)


# maximize


def test_maximize_makes_any_optimizer_climb():
    def objective(x: jax.Array) -> jax.Array:
        return -jnp.sum((x - 3.0) ** 2)

    for inner in (gc.sgd(0.1), gc.adam(0.1)):
        tx = gc.chain(gc.maximize(), inner)
        x = jnp.zeros(2)
        state = tx.init(x)

        @jax.jit
        def step(x: jax.Array, state: Any, tx: Any = tx) -> tuple[jax.Array, Any]:
            updates, state = tx.update(jax.grad(objective)(x), state, x)
            return gc.apply_updates(x, updates), state

        for _ in range(200):
            x, state = step(x, state)
        np.testing.assert_allclose(x, 3.0, atol=0.05)


def test_maximize_first_keeps_weight_decay_pulling_towards_zero():
    params = {"w": jnp.array([2.0])}
    ascend = gc.chain(gc.maximize(), gc.adamw(0.1, weight_decay=0.5))
    descend_negated = gc.adamw(0.1, weight_decay=0.5)
    grads = {"w": jnp.array([0.3])}
    up, _ = ascend.update(grads, ascend.init(params), params)
    ref, _ = descend_negated.update({"w": -grads["w"]}, descend_negated.init(params), params)
    np.testing.assert_allclose(up["w"], ref["w"], rtol=1e-7)
