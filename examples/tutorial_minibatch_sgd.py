r"""Mini-batch SGD: the batch size trades cheap noisy steps for expensive exact ones.

Gradient descent computes the gradient on the whole training set before each
step. Stochastic gradient descent estimates it from a random mini-batch of
``B`` examples: an unbiased but noisy estimate whose variance shrinks like
``1 / B``. One pass over the ``n`` examples (an epoch) then buys ``n // B``
steps instead of one.

The script fits the linear model ``y = x @ w + b`` to the diabetes training
split (``common.diabetes()``: 354 patients, 10 standardised features) with
``gc.sgd`` at one fixed learning rate and batch sizes 1, 8, 32 and all 354,
reshuffling every epoch with an explicit JAX key. It records the full
training loss after every step and plots how far it is above the
least-squares optimum (NumPy ``lstsq``), twice:

* against epochs (examples seen): small batches take many more steps per
  epoch, so they race ahead early; full-batch GD creeps;
* against gradient steps: per step, the exact gradient is the better one,
  and full-batch GD keeps going down;
* both show the noise floor: at a constant learning rate, a small batch
  stops improving at a loss that jitters above the optimum (the gradient
  noise never averages out), higher and more jittery the smaller the batch.
  Full-batch GD has no floor; it only needs enough steps.

Decaying the learning rate removes the floor: see
``examples/tutorial_lr_decay.py``. Run this one with::

    python examples/tutorial_minibatch_sgd.py --epochs 200

Things to try: ``--learning-rate 0.01`` (every floor drops, roughly in
proportion, and everything is slower), ``--learning-rate 0.1`` (batch 1
blows up: one example's curvature is much larger than the average's),
``--batch-sizes 2 4 16 64 128``.
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

#: The batch sizes of the lesson; 0 stands for the full batch.
BATCH_SIZES = (1, 8, 32, 0)


def mse(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of the linear model ``x @ w + b`` against ``y``."""
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def least_squares_loss(x: jax.Array, y: jax.Array) -> float:
    """The smallest training MSE any ``w, b`` reach (the optimum SGD heads for), in float64."""
    design = np.c_[np.asarray(x, np.float64), np.ones(x.shape[0])]
    target = np.asarray(y, np.float64)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.mean((design @ solution - target) ** 2))


def train(
    x: jax.Array, y: jax.Array, batch_size: int, learning_rate: float, epochs: int, key: jax.Array
) -> np.ndarray:
    """Runs mini-batch SGD from zero weights in one compiled call.

    Args:
      x: float32[n, d] training features.
      y: float32[n] training targets.
      batch_size: examples per step, in ``[1, n]``; each epoch drops the last
        ``n % batch_size`` examples of a fresh permutation.
      learning_rate: the constant step size.
      epochs: passes over the data.
      key: drives the shuffling.

    Returns:
      float64[1 + epochs * (n // batch_size)]: the full training MSE before
      the first step and after every step.
    """
    n, d = x.shape
    per_epoch = n // batch_size
    tx = gc.sgd(learning_rate)

    def step(carry: Carry, batch: tuple[jax.Array, jax.Array]) -> tuple[Carry, jax.Array]:
        params, state = carry
        grads = jax.grad(mse)(params, *batch)  # the gradient on this mini-batch only
        updates, state = tx.update(grads, state, params)
        params = gc.apply_updates(params, updates)
        return (params, state), mse(params, x, y)  # the loss on all the data, to plot

    def epoch(carry: Carry, epoch_key: jax.Array) -> tuple[Carry, jax.Array]:
        order = jax.random.permutation(epoch_key, n)[: per_epoch * batch_size]
        order = order.reshape(per_epoch, batch_size)
        return jax.lax.scan(step, carry, (x[order], y[order]))

    @jax.jit
    def run(key: jax.Array) -> jax.Array:
        params = {"w": jnp.zeros(d, jnp.float32), "b": jnp.zeros([], jnp.float32)}
        _, losses = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
        return jnp.concatenate([mse(params, x, y)[None], losses.reshape(-1)])

    return np.asarray(run(key), np.float64)


def noise(losses: np.ndarray) -> float:
    """The jitter of a loss curve over its last 10% of steps (at least 3).

    Second differences ``l[t+1] - 2 l[t] + l[t-1]`` cancel a steady descent
    and keep the wiggle; for independent noise of standard deviation ``s``
    their RMS is ``sqrt(6) s``, so this estimates ``s``.
    """
    tail = losses[-max(3, len(losses) // 10) :]
    return float(np.sqrt(np.mean(np.diff(tail, n=2) ** 2) / 6.0))


def label(batch_size: int, n: int) -> str:
    """``"batch 8"``, or ``"full batch (354)"`` for ``n``."""
    return f"full batch ({n})" if batch_size == n else f"batch {batch_size}"


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """The running mean of ``values`` over the last ``window`` entries.

    Near the start the window is a quarter of the steps so far, so the mean
    does not lag behind a fast early descent.
    """
    sums = np.cumsum(np.r_[0.0, values])
    ends = np.arange(1, len(values) + 1)
    starts = ends - np.minimum(window, 1 + ends // 4)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot(curves: dict[int, np.ndarray], n: int, best: float, path: Path) -> None:
    """Excess loss against epochs and against steps, one curve per batch size.

    Each curve is drawn twice: faint, the loss after every step; bold, its
    running mean over one epoch, which shows the floor the noise sits on.

    Args:
      curves: the losses of :func:`train` by batch size.
      n: the number of training examples.
      best: the least-squares loss.
      path: the PNG to write.
    """
    fig, (by_epoch, by_step) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colors = plt.get_cmap("plasma")(np.linspace(0.0, 0.8, len(curves)))
    for color, (batch, losses) in zip(colors, curves.items(), strict=True):
        excess = np.maximum(losses - best, 1e-12)
        steps = np.arange(len(losses))
        per_epoch = n // batch
        mean = smooth(excess, per_epoch)
        name = f"{label(batch, n)}: {per_epoch} step{'s' if per_epoch > 1 else ''}/epoch"
        for axis, x in ((by_epoch, steps / per_epoch), (by_step, np.maximum(steps, 0.8))):
            if per_epoch > 1:
                axis.plot(x, excess, color=color, lw=0.4, alpha=0.25)
            axis.plot(x, mean, color=color, lw=2, label=name)
    by_epoch.set_xlabel(f"epochs (passes over the {n} training examples)")
    by_epoch.set_ylabel("training MSE above the least-squares optimum")
    by_epoch.set_yscale("log")
    by_epoch.set_title("per epoch: small batches race ahead,\nthen stall on a noise floor")
    by_epoch.legend(
        fontsize=8, title="faint: every step; bold: mean over an epoch", title_fontsize=8
    )
    by_step.set_xscale("log")
    by_step.set_xlabel("gradient steps (log scale)")
    by_step.set_title(
        "per step: the exact gradient goes furthest;\nthe smaller the batch, the higher its floor"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    epochs: int = 200,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    learning_rate: float = 0.03,
    seed: int = 0,
    out: str | Path = "out",
) -> dict[str, dict[int, float]]:
    """Trains one model per batch size, prints a table and draws the figure.

    Args:
      epochs: passes over the training data, the same for every batch size.
      batch_sizes: examples per step; 0 means the full training set.
      learning_rate: the constant step size of every run.
      seed: seeds the shuffling.
      out: the folder for ``tutorial_minibatch_sgd.png``.

    Returns:
      ``{"floor": ..., "noise": ..., "steps": ...}``, each by batch size (the
      full batch under its size, 354): the mean excess loss over the last
      10% of steps, the jitter of the loss there (:func:`noise`), and the
      number of steps taken.
    """
    data = common.diabetes(seed=seed)
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    best = least_squares_loss(x, y)
    sizes = [n if b == 0 else b for b in batch_sizes]
    key = jax.random.key(seed)
    curves = {b: train(x, y, b, learning_rate, epochs, key) for b in sizes}

    floor = {b: float(np.mean(c[-max(1, len(c) // 10) :]) - best) for b, c in curves.items()}
    jitter = {b: noise(c) for b, c in curves.items()}
    steps = {b: len(c) - 1 for b, c in curves.items()}
    print(f"least-squares training MSE: {best:.5f}; learning rate {learning_rate:g}")
    print(f"{'batch':>16} {'steps':>7} {'final MSE':>10} {'above optimum':>14} {'jitter':>9}")
    for b, c in curves.items():
        print(f"{label(b, n):>16} {steps[b]:>7} {c[-1]:>10.5f} {floor[b]:>14.2e} {jitter[b]:>9.1e}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tutorial_minibatch_sgd.png"
    plot(curves, n, best, path)
    print(f"wrote {path}")
    return {"floor": floor, "noise": jitter, "steps": steps}


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Mini-batch SGD at several batch sizes.")
    parser.add_argument("--epochs", type=int, default=200, help="passes (default 200)")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=list(BATCH_SIZES),
        help="examples per step, 0 for the full batch (default 1 8 32 0)",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=0.03, help="step size (default 0.03)"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--out", default="out", help="folder for the figure (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.epochs, args.batch_sizes, args.learning_rate, args.seed, args.out)
