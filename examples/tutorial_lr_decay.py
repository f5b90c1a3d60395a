r"""Learning-rate decay: big steps early, small steps late, and the noise floor is gone.

Mini-batch SGD at a constant learning rate stalls on a noise floor: each
step follows a noisy gradient, and the noise moves the weights about by an
amount proportional to the learning rate, so the loss jitters above the
optimum for ever (see ``examples/tutorial_minibatch_sgd.py``). A smaller rate
lowers the floor but makes the start slow. A schedule gets both: a large rate
while the loss is far from its minimum, a small one near it.

The script fits the linear model ``y = x @ w + b`` to the diabetes training
split (``common.diabetes()``) with ``gc.sgd`` on mini-batches of 8 and three
learning rates that all start at the same ``lr0``:

* constant: ``gc.sgd(lr0)``;
* step decay: multiply the rate by ``decay_rate`` every ``decay_every``
  epochs, ``gc.exponential_decay(lr0, transition_steps=decay_every *
  steps_per_epoch, decay_rate=decay_rate, staircase=True)``. The schedule
  counts optimizer steps, not epochs, hence the product. (The tutorials
  multiply by 0.9 every 100 epochs over 1000 epochs; the default here is a
  halving every 25 epochs over 200, the same idea in a shorter run.)
* ``lr0 / (1 + sqrt(t))`` with ``t`` in epochs, the tutorials' "dynamic"
  rate: ``gc.inverse_sqrt_decay_schedule(lr0, transition_steps=steps_per_epoch)``.

A schedule is just the ``learning_rate`` argument; the rate each update used
is read back from the optimizer state with ``gc.get_hyperparams``, which is
what the right panel plots. Run it with::

    python examples/tutorial_lr_decay.py --epochs 200

Things to try: ``--epochs 1000 --decay-every 100 --decay-rate 0.9`` (the
tutorials' step decay: gentle, so its floor comes down slowly),
``--learning-rate 0.01`` (a lower floor for the constant rate, a slower
start for all), ``--batch-size 32`` (less noise, so less for decay to remove).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import gradchain as gc

Params = dict[str, jax.Array]
Carry = tuple[Params, gc.OptState]


def mse(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of the linear model ``x @ w + b`` against ``y``."""
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def least_squares_loss(x: jax.Array, y: jax.Array) -> float:
    """The smallest training MSE any ``w, b`` reach, in float64."""
    design = np.c_[np.asarray(x, np.float64), np.ones(x.shape[0])]
    target = np.asarray(y, np.float64)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.mean((design @ solution - target) ** 2))


def make_schedules(
    learning_rate: float, steps_per_epoch: int, decay_every: int, decay_rate: float
) -> dict[str, gc.ScalarOrSchedule]:
    """The three learning rates of the lesson, by the label of their curve.

    Args:
      learning_rate: ``lr0``, where every schedule starts.
      steps_per_epoch: optimizer steps per pass over the data.
      decay_every: epochs between two step-decay drops.
      decay_rate: the factor of each drop.

    Returns:
      A constant and two schedules of the step.
    """
    return {
        "constant": learning_rate,
        f"step decay (x{decay_rate:g} every {decay_every} epochs)": gc.exponential_decay(
            learning_rate,
            transition_steps=decay_every * steps_per_epoch,  # the schedule counts steps
            decay_rate=decay_rate,
            staircase=True,
        ),
        "lr0 / (1 + sqrt(epoch))": gc.inverse_sqrt_decay_schedule(
            learning_rate, transition_steps=steps_per_epoch
        ),
    }


def train(
    x: jax.Array,
    y: jax.Array,
    batch_size: int,
    learning_rate: gc.ScalarOrSchedule,
    epochs: int,
    key: jax.Array,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs mini-batch SGD from zero weights in one compiled call.

    Args:
      x: float32[n, d] training features.
      y: float32[n] training targets.
      batch_size: examples per step; each epoch drops the last ``n % batch_size``.
      learning_rate: a number or a schedule of the step.
      epochs: passes over the data.
      key: drives the shuffling.

    Returns:
      ``(losses, rates)``: float64[steps + 1], the full training MSE before
      the first step and after each step; float64[steps], the learning rate
      each step used, read from the optimizer state.
    """
    n, d = x.shape
    per_epoch = n // batch_size
    tx = gc.sgd(learning_rate)

    def step(carry: Carry, batch: tuple[jax.Array, jax.Array]) -> tuple[Carry, jax.Array]:
        params, state = carry
        rate = gc.get_hyperparams(state)["learning_rate"]  # what this update will use
        updates, state = tx.update(jax.grad(mse)(params, *batch), state, params)
        params = gc.apply_updates(params, updates)
        return (params, state), jnp.stack([mse(params, x, y), rate])

    def epoch(carry: Carry, epoch_key: jax.Array) -> tuple[Carry, jax.Array]:
        order = jax.random.permutation(epoch_key, n)[: per_epoch * batch_size]
        order = order.reshape(per_epoch, batch_size)
        return jax.lax.scan(step, carry, (x[order], y[order]))

    @jax.jit
    def run(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        params = {"w": jnp.zeros(d, jnp.float32), "b": jnp.zeros([], jnp.float32)}
        _, out = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
        out = out.reshape(-1, 2)
        return jnp.concatenate([mse(params, x, y)[None], out[:, 0]]), out[:, 1]

    losses, rates = run(key)
    return np.asarray(losses, np.float64), np.asarray(rates, np.float64)


def tail_mean(values: np.ndarray, fraction: float = 0.1) -> float:
    """The mean of the last ``fraction`` of ``values`` (at least one)."""
    return float(np.mean(values[-max(1, int(len(values) * fraction)) :]))


def plot(
    runs: dict[str, tuple[np.ndarray, np.ndarray]], per_epoch: int, best: float, path: Path
) -> None:
    """Excess loss (running mean over an epoch) and the learning rate, against steps.

    Args:
      runs: ``(losses, rates)`` of :func:`train` by label.
      per_epoch: steps per epoch, the smoothing window.
      best: the least-squares loss.
      path: the PNG to write.
    """
    fig, (loss_axis, rate_axis) = plt.subplots(1, 2, figsize=(13, 5))
    colors = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown")
    for color, (name, (losses, rates)) in zip(colors, runs.items(), strict=False):
        excess = np.maximum(losses - best, 1e-12)
        sums = np.cumsum(np.r_[0.0, excess])
        ends = np.arange(1, len(excess) + 1)
        starts = ends - np.minimum(per_epoch, 1 + ends // 4)
        mean = (sums[ends] - sums[starts]) / (ends - starts)
        steps = np.arange(len(excess))
        loss_axis.plot(steps, excess, color=color, lw=0.4, alpha=0.2)
        loss_axis.plot(
            steps, mean, color=color, lw=2, label=f"{name}: last 10% mean {tail_mean(excess):.1e}"
        )
        rate_axis.plot(np.arange(len(rates)), rates, color=color, lw=2, label=name)
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("gradient steps")
    loss_axis.set_ylabel("training MSE above the least-squares optimum")
    loss_axis.set_title("the same start; decaying rates sink below the constant rate's floor")
    loss_axis.legend(
        fontsize=8, title="faint: every step; bold: mean over an epoch", title_fontsize=8
    )
    rate_axis.set_yscale("log")
    rate_axis.set_xlabel("gradient steps")
    rate_axis.set_ylabel("learning rate (read from the optimizer state)")
    rate_axis.set_title("the learning rate each step used")
    rate_axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    epochs: int = 200,
    batch_size: int = 8,
    learning_rate: float = 0.03,
    decay_every: int = 25,
    decay_rate: float = 0.5,
    seed: int = 0,
    out: str | Path = "out",
) -> dict[str, float]:
    """Trains with each learning rate, prints the losses and draws the figure.

    Args:
      epochs: passes over the training data.
      batch_size: examples per step.
      learning_rate: ``lr0``, where all three start.
      decay_every: epochs between two step-decay drops.
      decay_rate: the factor of each drop.
      seed: seeds the shuffling (the same batches for every schedule).
      out: the folder for ``tutorial_lr_decay.png``.

    Returns:
      By curve label: the mean excess training loss over the last 10% of
      steps (above the least-squares optimum).
    """
    data = common.diabetes(seed=seed)
    x, y = data.x_train, data.y_train
    per_epoch = x.shape[0] // batch_size
    best = least_squares_loss(x, y)
    schedules = make_schedules(learning_rate, per_epoch, decay_every, decay_rate)
    key = jax.random.key(seed)
    runs = {name: train(x, y, batch_size, lr, epochs, key) for name, lr in schedules.items()}

    floors = {name: tail_mean(losses) - best for name, (losses, _) in runs.items()}
    print(
        f"batch {batch_size}, {per_epoch} steps per epoch, {epochs} epochs, lr0 {learning_rate:g}"
    )
    print(f"{'learning rate':<40} {'final rate':>10} {'above optimum (last 10%)':>25}")
    for name, (_, rates) in runs.items():
        print(f"{name:<40} {rates[-1]:>10.2e} {floors[name]:>25.2e}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tutorial_lr_decay.png"
    plot(runs, per_epoch, best, path)
    print(f"wrote {path}")
    return floors


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Constant vs decaying learning rates.")
    parser.add_argument("--epochs", type=int, default=200, help="passes (default 200)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--learning-rate", type=float, default=0.03, help="lr0 (default 0.03)")
    parser.add_argument(
        "--decay-every", type=int, default=25, help="epochs per step-decay drop (default 25)"
    )
    parser.add_argument(
        "--decay-rate", type=float, default=0.5, help="factor per drop (default 0.5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--out", default="out", help="folder for the figure (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(
        args.epochs,
        args.batch_size,
        args.learning_rate,
        args.decay_every,
        args.decay_rate,
        args.seed,
        args.out,
    )
