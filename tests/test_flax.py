"""Flax accepts gradchain transforms: nnx.Optimizer and Linen's TrainState."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.training import train_state

import gradchain as gc

X = jax.random.normal(jax.random.key(0), (64, 3))
Y = X @ jnp.array([[1.0], [2.0], [-1.0]]) + 0.5


def test_nnx_optimizer_trains_with_a_scheduled_adamw():
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    schedule = gc.warmup_cosine_decay_schedule(0.0, 0.1, 5, 200)
    opt = nnx.Optimizer(model, gc.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)

    @nnx.jit
    def step(model: nnx.Linear, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        opt.update(model, grads)
        return loss

    first = float(step(model, opt))
    for _ in range(150):
        last = float(step(model, opt))
    assert last < 1e-2 * first
    # In NNX the state's leaves are OptArray variables; the names are the same.
    hp = gc.get_hyperparams(opt.opt_state)
    assert float(hp["learning_rate"][...]) == float(schedule(151))


def test_linen_train_state_applies_gradients():
    module = nn.Dense(1)
    state = train_state.TrainState.create(
        apply_fn=module.apply, params=module.init(jax.random.key(1), X), tx=gc.adam(0.1)
    )

    @jax.jit
    def step(state: train_state.TrainState) -> tuple[train_state.TrainState, jax.Array]:
        def loss_fn(params: dict) -> jax.Array:
            return jnp.mean((state.apply_fn(params, X) - Y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    state, first = step(state)
    for _ in range(100):
        state, last = step(state)
    assert float(last) < 1e-2 * float(first)
    assert float(gc.get_hyperparams(state.opt_state)["learning_rate"]) == float(jnp.float32(0.1))


def test_nnx_optimizer_accepts_a_weight_decay_mask_built_from_the_model_state():
    # The mask holds nnx.Param nodes where update sees plain arrays: matched by key.
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    mask = jax.tree.map(lambda p: p.ndim > 1, nnx.state(model, nnx.Param))
    opt = nnx.Optimizer(model, gc.adamw(0.1, weight_decay=0.5, mask=mask), wrt=nnx.Param)
    zero = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    bias, kernel = model.bias[...], model.kernel[...]
    opt.update(model, zero)  # zero gradients: only the masked-in decay moves a weight
    assert jnp.array_equal(model.bias[...], bias)
    assert jnp.allclose(model.kernel[...], kernel * (1 - 0.1 * 0.5))
