"""Hyperparameters are state: readable by name, settable without recompiling.

Covers get_hyperparams / set_hyperparams on transforms, chains, named chains,
masks and inject_hyperparams, under jit, vmap and lax.scan.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}


def _grads(seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), PARAMS)


def _run(tx: Any, state: Any, steps: int, start: int = 0) -> tuple[Any, Any]:
    params = PARAMS
    for seed in range(start, start + steps):
        updates, state = tx.update(_grads(seed), state, params)
        params = gc.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize(
    ("tx", "names"),
    [
        (gc.sgd(0.1), ["learning_rate"]),
        (gc.sgd(0.1, momentum=0.9), ["decay", "learning_rate"]),
        (gc.adam(1e-3), ["b1", "b2", "eps", "eps_root", "learning_rate"]),
        (gc.adamw(1e-3), ["b1", "b2", "eps", "eps_root", "learning_rate", "weight_decay"]),
        (gc.rmsprop(1e-3, momentum=0.9), ["0/decay", "2/decay", "eps", "learning_rate"]),
        (gc.adagrad(1e-2), ["eps", "learning_rate"]),
    ],
)
def test_every_alias_reports_its_hyperparameters_by_name(tx: Any, names: list[str]):
    assert sorted(gc.get_hyperparams(tx.init(PARAMS))) == names


def test_values_are_float32_scalars_equal_to_the_arguments():
    hp = gc.get_hyperparams(gc.adamw(0.25, b1=0.5, weight_decay=0.125).init(PARAMS))
    assert {k: float(v) for k, v in hp.items()} == {
        "learning_rate": 0.25,
        "b1": 0.5,
        "b2": np.float32(0.999),
        "eps": np.float32(1e-8),
        "eps_root": 0.0,
        "weight_decay": 0.125,
    }
    assert all(v.dtype == jnp.float32 and v.shape == () for v in hp.values())


def test_scheduled_learning_rate_is_reported_at_the_step_the_next_update_takes():
    schedule = gc.linear_schedule(1.0, 0.0, 10)
    tx = gc.adam(schedule)
    state = tx.init(PARAMS)
    for step in range(4):
        assert float(gc.get_hyperparams(state)["learning_rate"]) == pytest.approx(schedule(step))
        _, state = tx.update(_grads(step), state)


def test_named_chain_names_prefix_the_keys():
    tx = gc.named_chain(("clip", gc.clip_by_global_norm(1.0)), ("opt", gc.adam(1e-3)))
    keys = sorted(gc.get_hyperparams(tx.init(PARAMS)))
    assert keys == ["clip/max_norm", "opt/b1", "opt/b2", "opt/eps", "opt/eps_root",
                    "opt/learning_rate"]  # fmt: skip


def test_colliding_names_keep_their_chain_positions():
    tx = gc.chain(gc.add_decayed_weights(0.1), gc.add_decayed_weights(0.2))
    hp = gc.get_hyperparams(tx.init(PARAMS))
    assert {k: round(float(v), 3) for k, v in hp.items()} == {
        "0/weight_decay": 0.1,
        "1/weight_decay": 0.2,
    }


def test_set_learning_rate_matches_building_with_it():
    tx = gc.adamw(1e-3, weight_decay=1e-2)
    changed = gc.set_hyperparams(tx.init(PARAMS), learning_rate=0.05, weight_decay=0.5)
    built = gc.adamw(0.05, weight_decay=0.5)
    chex.assert_trees_all_equal(_run(tx, changed, 5)[0], _run(built, built.init(PARAMS), 5)[0])


def test_set_decay_rate_matches_building_with_it_exactly():
    # b2 near 1 is where float32 loses 1 - b2; set_hyperparams keeps the exact complement.
    tx = gc.adam(1e-2)
    changed = gc.set_hyperparams(tx.init(PARAMS), b2=0.9999, b1=0.8)
    built = gc.adam(1e-2, b1=0.8, b2=0.9999)
    chex.assert_trees_all_equal(_run(tx, changed, 5), _run(built, built.init(PARAMS), 5))


def test_set_under_jit_does_not_recompile():
    tx = gc.adam(1e-3)
    traces = 0

    @jax.jit
    def step(state: Any, lr: jax.Array) -> Any:
        nonlocal traces
        traces += 1
        state = gc.set_hyperparams(state, learning_rate=lr)
        return tx.update(_grads(0), state, PARAMS)

    state = tx.init(PARAMS)
    outs = [step(state, jnp.float32(lr))[0]["w"] for lr in (0.1, 0.2, 0.4)]
    assert traces == 1
    np.testing.assert_allclose(outs[1], 2 * outs[0], rtol=1e-6)
    np.testing.assert_allclose(outs[2], 4 * outs[0], rtol=1e-6)


def test_vmap_over_learning_rates_equals_separate_runs():
    tx = gc.sgd(0.1, momentum=0.9)
    lrs = jnp.array([0.01, 0.1, 0.3])

    def train(lr: jax.Array) -> Any:
        state = gc.set_hyperparams(tx.init(PARAMS), learning_rate=lr)

        def body(carry: Any, seed: jax.Array) -> tuple[Any, None]:
            params, state = carry
            grads = jax.tree.map(lambda p: jnp.sin(p + seed), params)
            updates, state = tx.update(grads, state, params)
            return (gc.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(body, (PARAMS, state), jnp.arange(5.0))
        return params

    swept = jax.jit(jax.vmap(train))(lrs)
    for i, lr in enumerate(lrs):
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], swept), train(lr), rtol=1e-6)


def test_set_inside_scan_changes_the_rate_midway():
    tx = gc.sgd(1.0)

    def body(state: Any, lr: jax.Array) -> tuple[Any, jax.Array]:
        state = gc.set_hyperparams(state, learning_rate=lr)
        updates, state = tx.update(jnp.ones(1), state)
        return state, updates[0]

    _, steps = jax.lax.scan(body, tx.init(jnp.zeros(1)), jnp.array([1.0, 0.5, 0.25]))
    np.testing.assert_allclose(steps, [-1.0, -0.5, -0.25])


def test_masked_and_inject_states_report_their_hyperparameters():
    masked = gc.masked(gc.add_decayed_weights(0.3), {"w": True, "b": False})
    assert [round(float(v), 3) for v in gc.get_hyperparams(masked.init(PARAMS)).values()] == [0.3]
    injected = gc.inject_hyperparams(gc.sgd)(learning_rate=0.2, momentum=0.5)
    hp = gc.get_hyperparams(injected.init(PARAMS))
    assert {k: round(float(v), 3) for k, v in hp.items()} == {"learning_rate": 0.2, "momentum": 0.5}


def test_inject_hyperparams_keeps_float32_for_bfloat16_params():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    state = gc.inject_hyperparams(gc.adam)(learning_rate=1e-3).init(params)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32


def test_inject_hyperparams_names_static_args_for_integer_arguments():
    # SOAP's preconditioning period must be a Python integer; stored as a float32 array it is
    # refused at construction, and the error says how to keep it static.
    with pytest.raises(
        TypeError, match=r"(?s)precondition_frequency.*static_args=.*precondition_freq"
    ):
        gc.inject_hyperparams(gc.soap)(learning_rate=1e-3)
    static = ("precondition_frequency", "max_precond_dim")
    tx = gc.inject_hyperparams(gc.soap, static_args=static)(learning_rate=1e-3)
    assert set(tx.init(PARAMS).hyperparams) >= {"learning_rate", "b1"}


def test_set_on_inject_state_changes_the_next_update():
    tx = gc.inject_hyperparams(gc.sgd)(learning_rate=0.1)
    state = gc.set_hyperparams(tx.init(PARAMS), learning_rate=2.0)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, PARAMS), state)
    assert float(updates["b"]) == -2.0
