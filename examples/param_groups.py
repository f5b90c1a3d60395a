r"""Parameter groups: no weight decay on biases and norms, a slower block, printed by ``explain``.

The model is a small residual network for the bundled 8x8 digits, in Flax
NNX: an input layer, two blocks (``LayerNorm -> Linear -> ReLU``, added back to
their input) and a head. Its 12 parameter tensors have paths such as
``embed/kernel``, ``blocks/0/norm/scale`` and ``blocks/1/linear/bias``.

Two common wishes, in every training recipe since BERT and GPT-2:

1. **No weight decay on biases and normalisation parameters.** Decay pulls a
   weight towards zero; for a bias or a LayerNorm scale, zero is not a
   sensible prior (a zero scale switches the layer off), and they are few.
2. **A smaller learning rate for part of the model**, here ``blocks/0``
   (0.1x), as one does for a pretrained body under a new head.

``gc.param_groups`` writes that as ordered rules over the parameter paths,
each naming a group and saying how its optimizer differs from the base
``gc.adamw(learning_rate, weight_decay)``::

    tx = gc.param_groups(
        gc.adamw, dict(learning_rate=lr, weight_decay=wd),
        gc.Rule("blocks/0/**/bias", "blocks/0/**/scale", name="slow_no_decay",
                overrides=dict(weight_decay=0.0), multipliers=dict(learning_rate=0.1)),
        gc.Rule("blocks/0/**", name="slow", multipliers=dict(learning_rate=0.1)),
        gc.Rule("**/bias", "**/scale", name="no_decay", overrides=dict(weight_decay=0.0)),
        gc.Rule("**", name="decay"),
        first_match=True,
    )

Each parameter belongs to exactly one group (with ``first_match=True`` the
first matching rule wins), so the two wishes do not combine by themselves: a
bias of ``blocks/0`` needs its own rule, ``slow_no_decay``, saying both. Put
it after ``no_decay`` and those biases would learn at the full rate, silently;
``gc.explain(tx, params)`` is how to check, and the script prints its table:
one row per group (its rule, tensor and element counts, hyperparameters),
then every parameter with its group. Each group's hyperparameters are in the
state under the group's name (``gc.get_hyperparams(state)["slow/learning_rate"]``).

Then the script shows that the groups behave as stated, twice:

* **One probe step** from a fresh optimizer state with zero gradients: Adam's
  part is zero, so the update is AdamW's decay alone, ``-lr * wd * p``. Per
  group, the ratio ``update / (-lr * wd * p)`` is 1 for ``decay``, 0.1 for
  ``slow`` (AdamW multiplies its decay by the learning rate), and exactly 0
  for the two no-decay groups.
* **Training** for ``--steps`` steps on digits: the printed table gives each
  group's root-mean-square distance travelled per element, ``rms |p - p0|``,
  and its norm before and after. Adam's steps are about the learning rate in
  size whatever the gradient's scale, so the slow groups travel roughly a
  tenth as far as their full-rate counterparts (measured with the defaults:
  0.010 and 0.015 against 0.110 and 0.104).

Run it (a few seconds)::

    python examples/param_groups.py --steps 300

Things to try: ``--weight-decay 1.0`` (strong decay: watch the decayed
kernels shrink while the biases and norm scales do not), ``--slow 1.0``
(the slow block is no longer slow), or move the ``slow_no_decay`` rule after
``no_decay`` in :func:`make_optimizer` and print ``explain`` again.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gradchain as gc


class Block(nnx.Module):
    """A residual block: ``x + relu(linear(layer_norm(x)))``."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.linear = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The block's output, of the same shape as ``x``."""
        return x + jax.nn.relu(self.linear(self.norm(x)))


class ResidualMLP(nnx.Module):
    """``embed -> blocks/0 -> blocks/1 -> head``: logits for 10 classes."""

    def __init__(self, features: int = 64, width: int = 64, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(features, width, rngs=rngs)
        self.blocks = nnx.List([Block(width, rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits of shape ``(*x.shape[:-1], 10)``."""
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


#: The groups, in rule order, and the decay and learning-rate factors each should get.
EXPECTED = {
    "slow_no_decay": dict(decay=0.0, lr=0.1),
    "slow": dict(decay=1.0, lr=0.1),
    "no_decay": dict(decay=0.0, lr=1.0),
    "decay": dict(decay=1.0, lr=1.0),
}


def make_optimizer(
    learning_rate: float, weight_decay: float, slow: float = 0.1
) -> gc.GradientTransformationExtraArgs:
    """AdamW in four groups: (slow or not) x (decayed or not).

    Args:
      learning_rate: the base learning rate.
      weight_decay: the base decoupled weight decay.
      slow: the learning-rate multiplier of ``blocks/0``.

    Returns:
      The grouped transformation; its state is keyed by group name.
    """
    no_decay = dict(weight_decay=0.0)
    return gc.param_groups(
        gc.adamw,
        dict(learning_rate=learning_rate, weight_decay=weight_decay),
        gc.Rule(
            "blocks/0/**/bias",
            "blocks/0/**/scale",
            name="slow_no_decay",
            overrides=no_decay,
            multipliers=dict(learning_rate=slow),
        ),
        gc.Rule("blocks/0/**", name="slow", multipliers=dict(learning_rate=slow)),
        gc.Rule("**/bias", "**/scale", name="no_decay", overrides=no_decay),
        gc.Rule("**", name="decay"),
        first_match=True,
    )


def _flat(tree: Any) -> list[np.ndarray]:
    return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def decay_probe(
    tx: gc.GradientTransformationExtraArgs,
    params: Any,
    assignment: dict[str, Any],
    learning_rate: float,
    weight_decay: float,
) -> dict[str, float]:
    """Each group's decay, relative to the base ``lr * wd``, from one zero-gradient step.

    Args:
      tx: the grouped AdamW.
      params: the parameters (``nnx.State`` of ``nnx.Param``).
      assignment: parameter path -> group, from ``gc.explain``.
      learning_rate: the base learning rate.
      weight_decay: the base weight decay.

    Returns:
      Group -> ``sum(update * p) / sum(-lr * wd * p * p)``: 1 where the base
      decay applies, 0 where none does.
    """
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for group, u, p in zip(assignment.values(), _flat(updates), _flat(params), strict=True):
        num[group] = num.get(group, 0.0) + float(np.sum(u * p))
        den[group] = den.get(group, 0.0) + float(np.sum(-learning_rate * weight_decay * p * p))
    return {g: num[g] / den[g] + 0.0 for g in num}  # + 0.0: no "-0.000"


def main(
    steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    weight_decay: float = 0.1,
    slow: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Prints the groups, probes their decay, trains on digits and reports per group.

    Args:
      steps: optimizer steps, >= 1.
      batch_size: images per step.
      learning_rate: the base learning rate.
      weight_decay: the base weight decay.
      slow: the learning-rate multiplier of ``blocks/0``.
      seed: seeds the parameters, the data split and the batches.

    Returns:
      ``explanation`` (the ``gc.Explanation``), ``table`` (its text),
      ``hyperparams`` (name -> float, from the optimizer state), ``probe``
      (group -> relative decay), ``moved`` (group -> ``rms |p - p0|`` per
      element after training), ``norms`` (group -> ``(|p0|, |p|)``),
      ``val_accuracy`` and ``train_loss`` (last step).
    """
    data = common.digits(seed)
    model = ResidualMLP(rngs=nnx.Rngs(seed))
    tx = make_optimizer(learning_rate, weight_decay, slow)
    params0 = nnx.state(model, nnx.Param)
    explanation = gc.explain(tx, params0)
    table = str(explanation)
    print(table)

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    hyperparams = {
        k: float(v[...]) for k, v in sorted(gc.get_hyperparams(optimizer.opt_state).items())
    }
    print("\ngroup learning rates and decays in optimizer.opt_state:")
    for group in EXPECTED:
        lr, wd = hyperparams[f"{group}/learning_rate"], hyperparams[f"{group}/weight_decay"]
        print(f"  {group:<14} learning_rate={lr:.3g}  weight_decay={wd:.3g}")

    probe = decay_probe(tx, params0, explanation.assignment, learning_rate, weight_decay)
    print("\none zero-gradient step: decay applied / base lr*wd decay")
    for group, ratio in probe.items():
        print(f"  {group:<14} {ratio:.3f}")

    start = _flat(params0)
    batch_key = jax.random.key(seed + 1)

    @nnx.jit(donate_argnums=(0, 1))  # the model and optimizer state updated in place
    def train_step(model: ResidualMLP, optimizer: nnx.Optimizer, step: jax.Array) -> jax.Array:
        idx = jax.random.choice(
            jax.random.fold_in(batch_key, step), data.x_train.shape[0], (batch_size,)
        )
        x, y = data.x_train[idx], data.y_train[idx]
        loss, grads = nnx.value_and_grad(lambda m: common.cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    loss = jnp.zeros([], jnp.float32)
    for step in range(steps):
        loss = train_step(model, optimizer, jnp.asarray(step, jnp.int32))
    end = _flat(nnx.state(model, nnx.Param))
    sums: dict[str, np.ndarray] = {}  # group -> [sum (p-p0)^2, sum p0^2, sum p^2, elements]
    groups = [str(g) for g in explanation.assignment.values()]
    for group, a, b in zip(groups, start, end, strict=True):
        add = np.array([np.sum((b - a) ** 2), np.sum(a**2), np.sum(b**2), a.size])
        sums[group] = sums.get(group, np.zeros(4)) + add
    moved = {g: float(np.sqrt(s[0] / s[3])) for g, s in sums.items()}
    norms = {g: (float(np.sqrt(s[1])), float(np.sqrt(s[2]))) for g, s in sums.items()}
    val_accuracy = float(common.accuracy(model(data.x_val), data.y_val))
    print(f"\nafter {steps} steps, per group:")
    print(f"  {'group':<14} {'rms |p - p0|':>12} {'|p0|':>8} {'|p|':>8}")
    for group, distance in moved.items():
        print(f"  {group:<14} {distance:>12.4f} {norms[group][0]:>8.3f} {norms[group][1]:>8.3f}")
    print(f"train loss {float(loss):.4f}  validation accuracy {val_accuracy:.3f}")
    return dict(
        explanation=explanation,
        table=table,
        hyperparams=hyperparams,
        probe=probe,
        moved=moved,
        norms=norms,
        val_accuracy=val_accuracy,
        train_loss=float(loss),
    )


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Parameter groups with gc.param_groups.")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="default 1e-2")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="default 0.1")
    parser.add_argument("--slow", type=float, default=0.1, help="blocks/0 lr factor (0.1)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        slow=args.slow,
        seed=args.seed,
    )
