"""Gradient accumulation: multi_steps / MultiSteps and apply_every.

Against Optax 0.2.8 step by step (updates, parameters, inner states, counters;
bit-compatible, rtol 1e-6), against the arithmetic of a mean and a sum, and
against a memory budget measured with XLA's ``memory_analysis()`` on a
9.4M-parameter MLP: params + grads + Adam's moments + one accumulator, where
Optax's MultiSteps holds more (optax issues #472, #528).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.25]]), "b": jnp.array([0.1, -0.2])}


def _grads(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), PARAMS)


def _with_nan(grads: Any) -> Any:
    return {**grads, "w": grads["w"].at[0, 1].set(jnp.nan)}


def _steps(tx: Any, grads: list[Any]) -> list[tuple[Any, Any, Any]]:
    """(updates, params, state) after each step of a jitted training loop."""
    step = jax.jit(tx.update)
    params, state, out = PARAMS, tx.init(PARAMS), []
    for g in grads:
        updates, state = step(g, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        out.append((updates, params, state))
    return out


def _optax_steps(tx: Any, grads: list[Any]) -> list[tuple[Any, Any, Any]]:
    with jax.numpy_dtype_promotion("standard"):
        return _steps(tx, grads)


def _close(got: Any, want: Any) -> None:
    """Close to rtol 1e-6, and to 1e-7 of a leaf's largest value for elements near 0.

    The accumulated gradients are bit-identical to Optax's (see
    test_the_accumulated_gradients_passed_on_are_bit_identical_to_optaxs); Adam inside
    our lax.cond is fused differently by XLA (an FMA), which moves nu by an ulp now
    and then, and cancellation in mu makes that 5e-6 relative in a near-zero update.
    """
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        atol = 1e-7 * float(np.max(np.abs(y), initial=0.0))
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=atol)


def _compare_with_optax(got: list[Any], want: list[Any], k: Callable[[int], bool]) -> None:
    """Updates, params, Adam's moments and counters at every step; acc_grads mid-cycle."""
    for t, ((u, p, s), (u_ref, p_ref, s_ref)) in enumerate(zip(got, want, strict=True)):
        _close((u, p), (u_ref, p_ref))
        inner, inner_ref = s.inner_opt_state[0], s_ref.inner_opt_state[0]  # scale_by_adam's
        _close((inner.mu, inner.nu), (inner_ref.mu, inner_ref.nu))
        assert int(inner.step) == int(inner_ref.count) == int(s.gradient_step), t
        assert (int(s.mini_step), int(s.gradient_step)) == (
            int(s_ref.mini_step),
            int(s_ref.gradient_step),
        ), t
        if not k(t):  # after an emitting step Optax zeroes acc_grads; ours keeps the mean
            chex.assert_trees_all_close(s.acc_grads, s_ref.acc_grads, rtol=1e-6, atol=0)


@pytest.mark.parametrize("use_grad_mean", [True, False], ids=["mean", "sum"])
def test_multi_steps_matches_optax_over_three_accumulation_cycles(use_grad_mean: bool):
    grads = [_grads(t) for t in range(10)]
    got = _steps(gc.MultiSteps(gc.adam(1e-2), 3, use_grad_mean).gradient_transformation(), grads)
    want = _optax_steps(optax.MultiSteps(optax.adam(1e-2), 3, use_grad_mean), grads)
    _compare_with_optax(got, want, lambda t: t % 3 == 2)
    assert [int(s.gradient_step) for _, _, s in got] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]


def test_multi_steps_matches_optax_with_a_schedule_of_k_and_skipped_nan_mini_steps():
    grads = [_grads(t) for t in range(12)]
    grads[1], grads[5] = _with_nan(grads[1]), _with_nan(grads[5])
    sizes = lambda step: 2 + step % 2  # noqa: E731 - 2, 3, 2, 3... mini-steps per step
    ours = gc.MultiSteps(gc.adam(1e-2), sizes, should_skip_update_fn=gc.skip_not_finite)
    ref = optax.MultiSteps(optax.adam(1e-2), sizes, should_skip_update_fn=optax.skip_not_finite)
    got, want = _steps(ours.gradient_transformation(), grads), _optax_steps(ref, grads)
    emitted = [bool(ours.has_updated(s)) for _, _, s in got]
    _compare_with_optax(got, want, lambda t: emitted[t])
    assert emitted == [bool(ref.has_updated(s)) for _, _, s in want]
    assert [t for t, e in enumerate(emitted) if e] == [2, 6, 8, 11]
    for (_, _, s), (_, _, s_ref) in zip(got, want, strict=True):
        assert jax.tree.map(int, s.skip_state) == jax.tree.map(int, s_ref.skip_state)


@pytest.mark.parametrize("use_grad_mean", [True, False], ids=["mean", "sum"])
def test_the_accumulated_gradients_passed_on_are_bit_identical_to_optaxs(use_grad_mean: bool):
    grads = [_grads(t) for t in range(9)]
    grads[4] = _with_nan(grads[4])
    skip = dict(should_skip_update_fn=gc.skip_not_finite)
    got = _steps(gc.multi_steps(gc.identity(), 3, use_grad_mean, **skip), grads)
    skip = dict(should_skip_update_fn=optax.skip_not_finite)
    want = _optax_steps(optax.MultiSteps(optax.identity(), 3, use_grad_mean, **skip), grads)
    for (u, _, _), (u_ref, _, _) in zip(got, want, strict=True):
        chex.assert_trees_all_equal(u, u_ref)  # (where nothing is emitted, 0.0 == -0.0)


def test_the_mean_and_the_sum_are_those_of_the_cycles_gradients():
    grads = [_grads(t) for t in range(6)]
    g = np.stack([np.asarray(x["w"], np.float64) for x in grads])
    mean = _steps(gc.multi_steps(gc.sgd(1.0), 3), grads)
    total = _steps(gc.multi_steps(gc.sgd(1.0), 3, use_grad_mean=False), grads)
    every = _steps(gc.apply_every(3), grads)
    for t in range(6):
        cycle = g[t - t % 3 : t + 1]
        emits = t % 3 == 2
        np.testing.assert_allclose(mean[t][0]["w"], -cycle.mean(0) * emits, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(total[t][0]["w"], -cycle.sum(0) * emits, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(every[t][0]["w"], cycle.sum(0) * emits, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(mean[t][2].acc_grads["w"], cycle.mean(0), rtol=1e-6)


def test_apply_every_matches_optax_step_by_step():
    grads = [_grads(t) for t in range(8)]
    got = _steps(gc.chain(gc.apply_every(3), gc.adam(1e-2)), grads)
    want = _optax_steps(optax.chain(optax.apply_every(3), optax.adam(1e-2)), grads)
    for (u, p, _), (u_ref, p_ref, _) in zip(got, want, strict=True):
        chex.assert_trees_all_close((u, p), (u_ref, p_ref), rtol=1e-6, atol=0)


def test_skip_functions_match_optax():
    for updates in (_grads(0), _with_nan(_grads(1)), {"a": jnp.array([jnp.inf, jnp.nan])}):
        for mine, theirs in (
            (gc.skip_not_finite, optax.skip_not_finite),
            (
                functools.partial(gc.skip_large_updates, max_squared_norm=3.0),
                functools.partial(optax.skip_large_updates, max_squared_norm=3.0),
            ),
        ):
            skip, info = mine(updates, jnp.int32(0), None)
            with jax.numpy_dtype_promotion("standard"):
                skip_ref, info_ref = theirs(updates, jnp.int32(0), None)
            assert bool(skip) == bool(skip_ref)
            chex.assert_trees_all_close(info, info_ref, rtol=1e-6)


def test_k_is_settable_state_and_a_smaller_k_emits_at_once():
    tx = gc.multi_steps(gc.sgd(1.0), 4)
    state = tx.init(PARAMS)
    assert sorted(gc.get_hyperparams(state)) == ["every_k_schedule", "learning_rate"]
    step = jax.jit(tx.update)
    for t in range(3):
        _, state = step(_grads(t), state)
    updates, state = step(_grads(3), gc.set_hyperparams(state, every_k_schedule=2))
    want = -np.mean([np.asarray(_grads(t)["b"]) for t in range(4)], 0)
    np.testing.assert_allclose(updates["b"], want, rtol=1e-6)  # 4 mini-steps reached k = 2
    assert int(state.mini_step) == 0 and int(state.gradient_step) == 1


def test_low_precision_params_keep_their_dtypes_with_a_float32_accumulator():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    tx = gc.MultiSteps(gc.adam(1e-2), 2).gradient_transformation()
    state, step = tx.init(params), jax.jit(tx.update)
    assert {x.dtype for x in jax.tree.leaves(state.acc_grads)} == {jnp.dtype(jnp.float32)}
    for t in range(3):
        grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), _grads(t))
        updates, new_state = step(grads, state, params)
        assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
        chex.assert_trees_all_equal_dtypes(new_state, state)
        state = new_state


def test_a_should_skip_function_that_returns_no_bool_is_refused_naming_it():
    tx = gc.multi_steps(
        gc.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (gc.global_norm(u), {})
    )
    with pytest.raises(ValueError, match=r"^multi_steps: `should_skip_update_fn` must return \(a "):
        tx.init(PARAMS)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: gc.MultiSteps(gc.sgd(0.1), 0),
            ValueError,
            r"^multi_steps: `every_k_schedule` must be > 0",
        ),
        (lambda: gc.multi_steps(gc.sgd(0.1), 2.5), TypeError, r"`every_k_schedule` must be an int"),
        (
            lambda: gc.MultiSteps(gc.adam, 2),
            TypeError,
            r"^multi_steps: `opt` is the function `adam`",
        ),
        (lambda: gc.apply_every(0), ValueError, r"^apply_every: `k` must be > 0; got 0"),
        (lambda: gc.apply_every(2, accumulator_dtype=jnp.int8), ValueError, r"floating dtype"),
        (lambda: gc.skip_large_updates(PARAMS, 0, None, -1.0), ValueError, r"must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_naming_the_function(
    build: Callable[[], Any], error: type[Exception], match: str
):
    with pytest.raises(error, match=match):
        build()


# --- Memory, measured by XLA: one accumulator, no more ------------------------------------

WIDTHS = (1024, 2048, 2048, 1024, 1024)  # an MLP of 9,443,328 float32 parameters
BATCH = 8


class Memory(NamedTuple):
    peak: int  # arguments + outputs - aliased (donated) + temporaries, in bytes
    arguments: int
    outputs: int
    temp: int


def _mlp() -> Any:
    pairs = itertools.pairwise(WIDTHS)
    return {
        f"l{i}": {
            "w": jax.ShapeDtypeStruct((a, b), jnp.float32),
            "b": jax.ShapeDtypeStruct((b,), jnp.float32),
        }
        for i, (a, b) in enumerate(pairs)
    }


def _loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    for i in range(len(WIDTHS) - 1):
        x = jnp.tanh(x @ params[f"l{i}"]["w"] + params[f"l{i}"]["b"][None, :])
    return jnp.mean((x - y) ** 2)


def _memory(lib: Any, tx: Any, grads_from_loss: bool) -> Memory:
    """The compiled training step's memory, params and state donated; nothing is allocated."""
    params = _mlp()
    state = jax.eval_shape(tx.init, params)
    batch = jax.ShapeDtypeStruct((BATCH, WIDTHS[0]), jnp.float32)

    def apply(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return lib.apply_updates(params, updates), state

    def train_step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
        return apply(params, state, jax.grad(_loss)(params, x, y))

    step, args = (train_step, (batch, batch)) if grads_from_loss else (apply, (params,))
    with jax.numpy_dtype_promotion("standard"):  # Optax's MultiSteps needs it
        stats = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, *args).compile()
    m = stats.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return Memory(
        peak + m.temp_size_in_bytes,
        m.argument_size_in_bytes,
        m.output_size_in_bytes,
        m.temp_size_in_bytes,
    )


P = 4 * sum(a * b + b for a, b in itertools.pairwise(WIDTHS))  # 36.0 MiB
BATCH_BYTES = 2 * 4 * BATCH * WIDTHS[0]  # x and y
SCALARS = 4096  # counters, hyperparameters, tuple tables: measured 1.3 KiB


def test_multi_steps_training_step_holds_one_accumulator_beyond_params_grads_and_adam():
    # Measured (JAX 0.10.2, CPU): Adam alone 3.67 P (132.4 MiB; XLA fuses part of the
    # gradient away), ours 5.00 P (180.2 MiB), Optax's MultiSteps 6.22 P (224.2 MiB).
    ours = _memory(gc, gc.MultiSteps(gc.adam(1e-3), 4).gradient_transformation(), True)
    budget = P + P + 2 * P + P + BATCH_BYTES  # params, grads, Adam's mu and nu, one accumulator
    assert budget - SCALARS <= ours.peak <= budget + SCALARS, ours.peak / P
    theirs = _memory(optax, optax.MultiSteps(optax.adam(1e-3), 4).gradient_transformation(), True)
    assert theirs.peak > budget + P, theirs.peak / P  # Optax: 2.2 P of temporaries


def test_with_gradients_given_the_only_temporary_is_the_update_leaving_the_cond():
    # The inner update runs inside lax.cond, so its output is written out once (1 P) before
    # apply_updates reads it; Optax's MultiSteps also copies Adam's moments and accumulator.
    ours = _memory(gc, gc.MultiSteps(gc.adam(1e-3), 4).gradient_transformation(), False)
    assert ours.temp <= P + SCALARS, ours.temp / P  # 36.0 MiB; peak 6 P = 216.1 MiB
    theirs = _memory(optax, optax.MultiSteps(optax.adam(1e-3), 4).gradient_transformation(), False)
    assert theirs.temp >= 3 * P, theirs.temp / P  # 108.1 MiB; peak 8 P = 288.2 MiB
    every = _memory(gc, gc.chain(gc.apply_every(4), gc.adam(1e-3)), False)
    assert every.temp <= SCALARS  # apply_every needs no cond: its sum fuses into Adam's update
