r"""Flax NNX's ``nnx.Optimizer`` with a gradchain optimizer, on a model with BatchNorm and Dropout.

The model (``Linear -> BatchNorm -> ReLU -> Dropout -> Linear``) learns the
bundled 8x8 digits with the standard NNX recipe, with ``gc.adamw`` where
Optax code has ``optax.adamw``::

    optimizer = nnx.Optimizer(model, gc.adamw(...), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)  # flax 0.12: the model comes first
        return loss

What to notice:

* **Not every variable is a parameter.** BatchNorm keeps running means and
  variances (``nnx.BatchStat``), Dropout a random-key stream
  (``nnx.RngState``). ``wrt=nnx.Param`` tells the optimizer to differentiate
  and update the ``nnx.Param`` leaves only: its moments ``mu`` and ``nu`` have
  exactly the parameters' paths, and ``optimizer.update`` leaves the batch
  statistics and the keys alone (the forward pass in training mode is what
  moves the statistics). The script prints the count of each kind.
* **Hyperparameters are state.** ``gc.get_hyperparams(optimizer.opt_state)``
  lists them by name. In NNX every leaf of ``opt_state`` is wrapped in an
  ``OptArray`` variable, so read a value with ``hp["learning_rate"][...]``.
  ``gc.set_hyperparams`` returns a new state with the wrappers kept; assign
  it back with ``optimizer.opt_state = ...``. The script lowers the learning
  rate that way at ``--drop-at``, and the jitted step does not recompile.
* **Train and evaluation modes.** Training uses batch statistics and drops
  units at random; evaluation uses the running statistics and keeps every
  unit: ``nnx.view(model, deterministic=True, use_running_average=True)``
  makes an evaluation view that shares the trained variables.

``tests/test_flax.py`` checks the plumbing on a bare ``nnx.Linear`` (a
scheduled AdamW, a weight-decay mask built from ``nnx.state``); this script is
the worked example with non-parameter state.

Run it (a few seconds)::

    python examples/flax_nnx_optimizer.py --steps 400

Things to try: ``--dropout 0.5`` (a stronger regulariser: the training loss
rises, the validation accuracy barely moves), ``--dropout 0`` and
``--steps 2000`` (watch the training loss go to zero), ``--drop-at 0`` (no
learning-rate drop).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import common
import jax
import jax.numpy as jnp
from flax import nnx

import gradchain as gc


class Classifier(nnx.Module):
    """``Linear -> BatchNorm -> ReLU -> Dropout -> Linear``: logits for 10 classes."""

    def __init__(
        self, features: int = 64, hidden: int = 64, dropout: float = 0.1, *, rngs: nnx.Rngs
    ):
        self.linear = nnx.Linear(features, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits of shape ``(*x.shape[:-1], 10)``."""
        x = jax.nn.relu(self.norm(self.linear(x)))
        return self.head(self.dropout(x))


def loss_fn(model: Classifier, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of the model's logits."""
    return common.cross_entropy(model(x), y)


def count_leaves(model: nnx.Module, kind: Any) -> int:
    """The number of array leaves of one variable type (``nnx.Param``, ``nnx.BatchStat``...)."""
    return len(jax.tree.leaves(nnx.state(model, kind)))


def main(
    steps: int = 400,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    dropout: float = 0.1,
    drop_at: int = 300,
    log_every: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Trains the classifier on digits with ``nnx.Optimizer`` and ``gc.adamw``.

    Args:
      steps: optimizer steps, >= 1.
      batch_size: images per step (drawn at random, with a key per step).
      learning_rate: the initial learning rate.
      weight_decay: AdamW's decoupled weight decay.
      dropout: the dropout rate, in [0, 1).
      drop_at: the step before which the learning rate is divided by 10 with
        ``gc.set_hyperparams``; 0 (or >= steps) never drops it.
      log_every: print the training loss every this many steps.
      seed: seeds the parameters, dropout, the data split and the batches.

    Returns:
      ``train_loss`` (mean over the last ``log_every`` steps),
      ``val_accuracy``, ``learning_rate`` (read back at the end),
      ``counts`` (leaves of each variable kind and of the optimizer's first
      moment), ``traces`` (compilations of the train step), and the ``model``
      and ``optimizer``.
    """
    data = common.digits(seed)
    model = Classifier(dropout=dropout, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    optimizer = nnx.Optimizer(
        model, gc.adamw(learning_rate, weight_decay=weight_decay), wrt=nnx.Param
    )
    batch_key = jax.random.key(seed + 2)
    traces = 0

    @nnx.jit(donate_argnums=(0, 1))  # the model and optimizer state updated in place
    def train_step(model: Classifier, optimizer: nnx.Optimizer, step: jax.Array) -> jax.Array:
        nonlocal traces
        traces += 1  # runs while tracing only
        idx = jax.random.choice(
            jax.random.fold_in(batch_key, step), data.x_train.shape[0], (batch_size,)
        )
        loss, grads = nnx.value_and_grad(loss_fn)(model, data.x_train[idx], data.y_train[idx])
        optimizer.update(model, grads)
        return loss

    adam_state = optimizer.opt_state[0]  # adamw = chain(scale_by_adam, decay, -lr)
    counts = {
        "param": count_leaves(model, nnx.Param),
        "batch_stat": count_leaves(model, nnx.BatchStat),
        "rng_state": count_leaves(model, nnx.RngState),
        "adam_mu": len(jax.tree.leaves(adam_state.mu)),
    }
    print(
        f"model leaves: {counts['param']} Param, {counts['batch_stat']} BatchStat, "
        f"{counts['rng_state']} RngState; Adam's first moment has {counts['adam_mu']} "
        f"(wrt=nnx.Param)"
    )
    hp = gc.get_hyperparams(optimizer.opt_state)
    print("hyperparameters in optimizer.opt_state:", {k: f"{v[...]:.3g}" for k, v in hp.items()})

    losses = []
    for step in range(steps):
        if step == drop_at and step > 0:
            lr = float(gc.get_hyperparams(optimizer.opt_state)["learning_rate"][...])
            optimizer.opt_state = gc.set_hyperparams(optimizer.opt_state, learning_rate=lr / 10)
            print(f"step {step:4d}  learning rate {lr:.3g} -> {lr / 10:.3g} (set_hyperparams)")
        losses.append(train_step(model, optimizer, jnp.asarray(step, jnp.int32)))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = float(jnp.mean(jnp.stack(losses[-log_every:])))
            print(f"step {step + 1:4d}  train loss {recent:.4f}")

    evaluation = nnx.view(model, deterministic=True, use_running_average=True)
    val_accuracy = float(common.accuracy(evaluation(data.x_val), data.y_val))
    learning_rate_now = float(gc.get_hyperparams(optimizer.opt_state)["learning_rate"][...])
    print(f"validation accuracy {val_accuracy:.3f}  (chance: 0.1)")
    print(f"train step compiled {traces} time(s)")
    return dict(
        train_loss=float(jnp.mean(jnp.stack(losses[-log_every:]))),
        val_accuracy=val_accuracy,
        learning_rate=learning_rate_now,
        counts=counts,
        traces=traces,
        model=model,
        optimizer=optimizer,
    )


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Flax NNX Optimizer with gc.adamw on digits.")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="default 1e-2")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default 0.1)")
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
        dropout=args.dropout,
        drop_at=args.drop_at,
        log_every=args.log_every,
        seed=args.seed,
    )
