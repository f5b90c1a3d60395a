"""Evaluation parameters: lookahead against Optax, ema_params against NumPy, eval_params.

Lookahead is checked step by step against Optax 0.2.8 (the same float32
arithmetic up to the order of two additions, so rtol 1e-6); the parameter EMA,
which Optax does not have, against a float64 NumPy loop of its definition.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": [jnp.array(0.5), jnp.ones((2, 2))]}
TARGET = jax.tree.map(lambda p: jnp.full_like(p, 0.25), PARAMS)


def _grad(params: Any) -> Any:
    """The gradient of a quadratic bowl around TARGET, with a different curvature per leaf."""
    return jax.tree.map(lambda p, t: 3.0 * (p - t) + 0.1, params, TARGET)


def _random_grads(seed: int, like: Any = PARAMS) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), like)


# Lookahead


def _lookahead_run(lib: Any, fast: Any, reset: bool, steps: int = 12) -> list[Any]:
    tx = lib.lookahead(fast, sync_period=3, slow_step_size=0.5, reset_state=reset)
    params = lib.LookaheadParams.init_synced(PARAMS)
    state = tx.init(params)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        updates, state = tx.update(_grad(params.fast), state, params)
        return lib.apply_updates(params, updates), state

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append((params.fast, params.slow))
    return out


@pytest.mark.parametrize("reset", [False, True], ids=["keep_state", "reset_state"])
@pytest.mark.parametrize("fast", ["sgd", "adam"])
def test_lookahead_matches_optax_step_by_step(fast: str, reset: bool):
    make = {"sgd": lambda lib: lib.sgd(0.05, momentum=0.9), "adam": lambda lib: lib.adam(0.05)}
    ours = _lookahead_run(gc, make[fast](gc), reset)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _lookahead_run(optax, make[fast](optax), reset)
    for (f, s), (of, os) in zip(ours, theirs, strict=True):
        for a, b in ((f, of), (s, os)):
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def test_lookahead_moves_slow_weights_only_at_sync_and_restarts_fast_from_them():
    tx = gc.lookahead(gc.sgd(1.0), sync_period=2, slow_step_size=0.5)
    params = gc.LookaheadParams.init_synced(jnp.array([0.0]))
    state = tx.init(params)
    seen = []
    for _ in range(4):
        updates, state = tx.update(jnp.array([-1.0]), state, params)  # fast moves +1 per step
        params = gc.apply_updates(params, updates)
        seen.append((float(params.fast[0]), float(params.slow[0]), int(state.steps_since_sync)))
    # after 2 fast steps fast would be 2; slow moves half-way (1) and fast restarts there
    assert seen == [(1.0, 0.0, 1), (1.0, 1.0, 0), (2.0, 1.0, 1), (2.0, 2.0, 0)]


def test_lookahead_slow_step_size_is_a_settable_hyperparameter():
    tx = gc.lookahead(gc.sgd(1.0), sync_period=1, slow_step_size=0.5)
    params = gc.LookaheadParams.init_synced(jnp.array([0.0]))
    state = tx.init(params)
    assert sorted(gc.get_hyperparams(state)) == ["learning_rate", "slow_step_size"]
    state = gc.set_hyperparams(state, slow_step_size=1.0)
    updates, state = tx.update(jnp.array([-1.0]), state, params)
    assert float(gc.apply_updates(params, updates).slow[0]) == 1.0


def test_lookahead_reset_keeps_hyperparameters_set_by_hand():
    tx = gc.lookahead(gc.adam(0.1), sync_period=1, slow_step_size=0.5, reset_state=True)
    params = gc.LookaheadParams.init_synced(jnp.array([0.0]))
    state = gc.set_hyperparams(tx.init(params), learning_rate=0.01)
    _, state = tx.update(jnp.array([1.0]), state, params)
    assert int(state.fast_state[0].step) == 0  # the Adam state restarted ...
    assert float(gc.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.01)  # ... not lr


def test_lookahead_explains_plain_params_and_bad_hyperparameters():
    tx = gc.lookahead(gc.sgd(0.1), sync_period=2, slow_step_size=0.5)
    with pytest.raises(TypeError, match=r"^lookahead: init needs a LookaheadParams.*init_synced"):
        tx.init(PARAMS)
    state = tx.init(gc.LookaheadParams.init_synced(PARAMS))
    with pytest.raises(TypeError, match=r"^lookahead: update needs a LookaheadParams"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(ValueError, match=r"^lookahead: the trees `updates` and `params.fast`"):
        tx.update(gc.LookaheadParams.init_synced(PARAMS), state, gc.LookaheadParams(PARAMS, PARAMS))
    with pytest.raises(ValueError, match=r"^lookahead: `sync_period` must be > 0; got 0"):
        gc.lookahead(gc.sgd(0.1), sync_period=0, slow_step_size=0.5)
    with pytest.raises(TypeError, match=r"^lookahead: `fast_optimizer` is the function `sgd`"):
        gc.lookahead(gc.sgd, sync_period=2, slow_step_size=0.5)


# Parameter EMA


def _iterates_and_averages(tx: Any, params: Any, steps: int) -> tuple[list[Any], list[Any]]:
    state = tx.init(params)
    update = jax.jit(tx.update)
    iterates, averages = [], []
    for seed in range(steps):
        updates, state = update(_random_grads(seed, params), state, params)
        params = gc.apply_updates(params, updates)
        iterates.append(params)
        averages.append(gc.eval_params(state, params))
    return iterates, averages


def _reference(iterates: list[Any], start: Any, decay: float, debias: bool) -> list[Any]:
    """The definition, in float64: a zero-started EMA divided by 1 - decay**t, or a plain EMA."""
    ema = jax.tree.map(lambda p: np.zeros(p.shape), start)
    avg = jax.tree.map(lambda p: np.asarray(p, np.float64), start)
    out = []
    for t, it in enumerate(iterates, 1):
        it64 = jax.tree.map(lambda p: np.asarray(p, np.float64), it)
        if debias:
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, it64)
            correction = 1 - decay**t
            avg = jax.tree.map(lambda e, c=correction: e / c, ema)
        else:
            avg = jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, avg, it64)
        out.append(avg)
    return out


@pytest.mark.parametrize("debias", [True, False])
def test_ema_params_holds_the_average_of_the_iterates_after_each_update(debias: bool):
    tx = gc.chain(gc.sgd(0.1, momentum=0.5), gc.ema_params(0.9, debias=debias))
    iterates, averages = _iterates_and_averages(tx, PARAMS, 30)
    for ours, ref in zip(averages, _reference(iterates, PARAMS, 0.9, debias), strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6), ours, ref)


def test_ema_params_first_average_is_the_first_iterate_exactly_even_for_decay_near_one():
    tx = gc.chain(gc.sgd(0.1), gc.ema_params(0.9999))
    iterates, averages = _iterates_and_averages(tx, PARAMS, 2)
    jax.tree.map(np.testing.assert_array_equal, averages[0], iterates[0])
    # 1 - 0.9999**2 in float32 keeps few digits; computed with expm1/log1p it is exact to 1e-6
    ref = _reference(iterates, PARAMS, 0.9999, True)[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), averages[1], ref)


def test_ema_params_keeps_a_float32_average_of_bfloat16_params_and_returns_bfloat16():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    tx = gc.chain(gc.sgd(0.01), gc.ema_params(0.99, accumulator_dtype=jnp.float32))
    state = tx.init(params)
    iterates, averages = _iterates_and_averages(tx, params, 20)
    _, final = jax.jit(tx.update)(_random_grads(99, params), state, params)
    assert {x.dtype for x in jax.tree.leaves(final[1].ema)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(averages[-1])} == {jnp.dtype(jnp.bfloat16)}
    ref = _reference(iterates, params, 0.99, True)[-1]
    # The only error left is the final rounding to bfloat16 (8 bits of mantissa).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.float64(a), b, rtol=2**-8), averages[-1], ref
    )


def test_ema_params_needs_params_and_checks_them():
    tx = gc.ema_params(0.9)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"^ema_params: update needs the current parameters"):
        tx.update(PARAMS, state)
    with pytest.raises(ValueError, match=r"^ema_params: .*disagree in shape at \['w'\]"):
        tx.update(PARAMS, state, {**PARAMS, "w": jnp.ones(4)})


# eval_params


def test_eval_params_returns_params_when_nothing_is_averaged():
    state = gc.adam(0.1).init(PARAMS)
    assert gc.eval_params(state, PARAMS) is PARAMS


def test_eval_params_finds_the_average_in_named_chains_and_inject_hyperparams_under_jit():
    for tx in (
        gc.named_chain(("opt", gc.sgd(0.5)), ("avg", gc.ema_params(0.5))),
        gc.inject_hyperparams(gc.ema_params)(decay=0.5),
    ):
        state = tx.init(PARAMS)
        _, state = tx.update(_random_grads(0), state, PARAMS)
        ema = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, gc.EmaParamsState))
        expected = next(x for x in ema if isinstance(x, gc.EmaParamsState)).ema
        got = jax.jit(gc.eval_params)(state, PARAMS)
        jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_eval_params_fills_masked_out_leaves_with_the_trained_params():
    mask = {"w": True, "b": [False, False]}
    tx = gc.chain(gc.sgd(1.0), gc.masked(gc.ema_params(0.5), mask))
    state = tx.init(PARAMS)
    new = {"w": jnp.zeros(3), "b": [jnp.array(7.0), jnp.full((2, 2), 7.0)]}
    got = gc.eval_params(state, new)
    np.testing.assert_array_equal(got["w"], PARAMS["w"])  # the average: the initial params
    jax.tree.map(np.testing.assert_array_equal, got["b"], new["b"])  # not averaged: as given


def test_eval_params_merges_averages_of_disjoint_parameter_groups():
    labels = {"w": "a", "b": ["b", "b"]}
    tx = gc.partition(
        {
            "a": gc.chain(gc.sgd(0.1), gc.ema_params(0.5)),
            "b": gc.chain(gc.adam(0.1), gc.ema_params(0.9)),
        },
        labels,
    )
    state = tx.init(PARAMS)
    updates, state = tx.update(_random_grads(1), state, PARAMS)
    new = gc.apply_updates(PARAMS, updates)
    got = gc.eval_params(state, new)
    jax.tree.map(np.testing.assert_allclose, got, new)  # the first debiased average: the iterate


def test_eval_params_refuses_two_averages_of_one_parameter_naming_both_paths():
    tx = gc.chain(gc.ema_params(0.5), gc.sgd(0.1), gc.ema_params(0.9))
    state = tx.init(PARAMS)
    with pytest.raises(
        ValueError,
        match=r"^eval_params: two states define the evaluation value of params\['b'\]\[0\]: "
        r"the EmaParamsState at state\[0\] and the EmaParamsState at state\[2\]",
    ):
        gc.eval_params(state, PARAMS)


def test_eval_params_returns_lookahead_slow_weights_and_refuses_an_ema_inside_it():
    tx = gc.lookahead(gc.sgd(0.1), sync_period=2, slow_step_size=0.5)
    params = gc.LookaheadParams(PARAMS, TARGET)
    assert gc.eval_params(tx.init(params), params) is TARGET
    with pytest.raises(TypeError, match=r"^eval_params: the LookaheadState at state: .*LookaheadP"):
        gc.eval_params(tx.init(params), PARAMS)
    nested = gc.lookahead(gc.chain(gc.sgd(0.1), gc.ema_params(0.9)), 2, 0.5)
    with pytest.raises(
        ValueError,
        match=r"^eval_params: found 2 states .*\(the LookaheadState at state, the EmaParamsState "
        r"at state.fast_state\[1\]\), and they cannot be combined: the EmaParamsState",
    ):
        gc.eval_params(nested.init(params), params)


class _ToyScheduleFreeState(NamedTuple):
    """A stand-in for a later transform: its state only has to define eval_params."""

    z: Any

    def eval_params(self, params: Any) -> Any:
        return jax.tree.map(lambda z, y: (z + y) / 2, self.z, params)


def test_a_new_state_type_plugs_into_eval_params_by_defining_the_method():
    state = (gc.sgd(0.1).init(PARAMS), {"sf": _ToyScheduleFreeState(TARGET)})
    got = gc.eval_params(state, PARAMS)
    jax.tree.map(
        np.testing.assert_allclose, got, jax.tree.map(lambda a, b: (a + b) / 2, PARAMS, TARGET)
    )
