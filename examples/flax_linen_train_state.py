r"""Flax Linen's ``TrainState`` with a gradchain optimizer: unchanged Flax code.

A two-layer Linen MLP learns the bundled 8x8 digits (1,437 training and 360
validation images, no download) with the standard Flax recipe::

    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    ...
    state = state.apply_gradients(grads=grads)

where ``tx`` is ``gc.adamw(...)`` instead of ``optax.adamw(...)``. Nothing else
changes: ``TrainState`` only needs ``tx.init`` and ``tx.update``, and gradchain
transformations have both, with Optax's signatures. (``tests/test_flax.py``
checks the same on a linear model; this script is the worked example.)

What gradchain adds: every numeric hyperparameter lives in the optimizer
state, ``state.opt_state``, as a float32 scalar. So the script can

* read them: ``gc.get_hyperparams(state.opt_state)`` gives ``learning_rate``,
  ``b1``, ``b2``, ``eps``, ``eps_root`` and ``weight_decay`` by name;
* change one between two steps: ``gc.set_hyperparams(state.opt_state,
  learning_rate=...)`` returns a new state, which goes back into the
  ``TrainState`` with ``state.replace(opt_state=...)``. Here the learning rate
  drops tenfold at ``--drop-at`` (a hand-made step schedule, say because the
  validation accuracy stopped improving). The jitted step takes the value as
  data, so it does not recompile: the script counts its traces and prints 1.

With Optax, the same needs the optimizer wrapped in
``optax.inject_hyperparams`` from the start; a plain ``optax.adamw`` keeps its
learning rate as a Python constant baked into the compiled step.

The state is also an ordinary pytree of NamedTuples, dicts and arrays, so
``flax.serialization.to_bytes(state)`` / ``from_bytes(target, blob)`` save and
restore the whole ``TrainState``, optimizer moments and hyperparameters
included (the tests check the round trip).

Run it (a few seconds)::

    python examples/flax_linen_train_state.py --steps 400 --drop-at 300

Things to try: ``--drop-at 0`` (no drop: the loss at the end is noisier),
``--learning-rate 0.1`` (too large for Adam here: the accuracy suffers),
``--weight-decay 0.5`` (strong decoupled decay pulls the weights towards zero
and costs accuracy).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

import common
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training import train_state

import gradchain as gc


class LinenMLP(nn.Module):
    """A ReLU MLP written in Flax Linen: hidden layers, then a linear head."""

    hidden: Sequence[int] = (64,)
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits of shape ``(*x.shape[:-1], classes)``."""
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.classes)(x)


def create_state(
    learning_rate: float, weight_decay: float, seed: int, hidden: Sequence[int] = (64,)
) -> train_state.TrainState:
    """A fresh ``TrainState`` of :class:`LinenMLP` with ``gc.adamw``.

    Args:
      learning_rate: AdamW's learning rate.
      weight_decay: AdamW's decoupled weight decay.
      seed: seeds the initial parameters.
      hidden: widths of the hidden layers.

    Returns:
      The state at step 0.
    """
    model = LinenMLP(hidden=tuple(hidden))
    params = model.init(jax.random.key(seed), jnp.zeros((1, 64), jnp.float32))["params"]
    tx = gc.adamw(learning_rate, weight_decay=weight_decay)
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def main(
    steps: int = 400,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    drop_at: int = 300,
    log_every: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Trains the Linen MLP on digits with ``TrainState`` and ``gc.adamw``.

    Args:
      steps: optimizer steps, >= 1.
      batch_size: images per step (drawn at random, with a key per step).
      learning_rate: the initial learning rate.
      weight_decay: AdamW's decoupled weight decay.
      drop_at: the step before which the learning rate is divided by 10 with
        ``gc.set_hyperparams``; 0 (or >= steps) never drops it.
      log_every: print the training loss every this many steps.
      seed: seeds the parameters, the data split and the batches.

    Returns:
      ``train_loss`` (mean over the last ``log_every`` steps),
      ``val_accuracy``, ``learning_rate`` (read back from the state at the
      end), ``hyperparams`` (all of them, as floats), ``traces`` (how many
      times the train step was compiled) and ``state`` (the final TrainState).
    """
    data = common.digits(seed)
    state = create_state(learning_rate, weight_decay, seed)
    batch_key = jax.random.key(seed + 1)
    traces = 0

    @functools.partial(jax.jit, donate_argnums=0)  # the TrainState is updated in place
    def train_step(
        state: train_state.TrainState, step: jax.Array
    ) -> tuple[train_state.TrainState, jax.Array]:
        nonlocal traces
        traces += 1  # runs while tracing only
        idx = jax.random.choice(
            jax.random.fold_in(batch_key, step), data.x_train.shape[0], (batch_size,)
        )
        x, y = data.x_train[idx], data.y_train[idx]

        def loss_fn(params: Any) -> jax.Array:
            return common.cross_entropy(state.apply_fn({"params": params}, x), y)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    hp = gc.get_hyperparams(state.opt_state)
    print("hyperparameters in state.opt_state:", {k: f"{float(v):.3g}" for k, v in hp.items()})
    losses = []
    for step in range(steps):
        if step == drop_at and step > 0:
            lr = float(gc.get_hyperparams(state.opt_state)["learning_rate"])
            state = state.replace(
                opt_state=gc.set_hyperparams(state.opt_state, learning_rate=lr / 10)
            )
            print(f"step {step:4d}  learning rate {lr:.3g} -> {lr / 10:.3g} (set_hyperparams)")
        state, loss = train_step(state, jnp.asarray(step, jnp.int32))
        losses.append(loss)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = float(jnp.mean(jnp.stack(losses[-log_every:])))
            print(f"step {step + 1:4d}  train loss {recent:.4f}")
    logits = state.apply_fn({"params": state.params}, data.x_val)
    val_accuracy = float(common.accuracy(logits, data.y_val))
    hp = {k: float(v) for k, v in gc.get_hyperparams(state.opt_state).items()}
    print(f"validation accuracy {val_accuracy:.3f}  (chance: 0.1)")
    print(f"train step compiled {traces} time(s)")
    return dict(
        train_loss=float(jnp.mean(jnp.stack(losses[-log_every:]))),
        val_accuracy=val_accuracy,
        learning_rate=hp["learning_rate"],
        hyperparams=hp,
        traces=traces,
        state=state,
    )


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Flax Linen TrainState with gc.adamw on digits.")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="default 1e-2")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    parser.add_argument(
        "--drop-at", type=int, default=300, help="divide the lr by 10 here (0: never)"
    )
    parser.add_argument("--log-every", type=int, default=100, help="default 100")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        drop_at=args.drop_at,
        log_every=args.log_every,
        seed=args.seed,
    )
