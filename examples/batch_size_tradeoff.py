r"""Batch size against iterations: loss per step and per example seen, on the digits MLP.

"How large a batch, and how many steps?" The two questions are one: a larger
batch gives a less noisy gradient, so each step makes more progress, but each
step also costs more examples (and, on one device, more time). This script
trains the digits MLP with Adam at several batch sizes for the same number
of steps and plots the training loss twice:

* against steps: larger batches reach a given loss in fewer steps, with
  diminishing returns once the gradient noise is small;
* against examples seen (steps x batch size): smaller batches reach a given
  loss after seeing fewer examples, since they update more often per epoch.

Each batch size gets its own learning rate: a learning-rate sweep per batch
size (``gc.sweep``, all rates and seeds in one compiled program) keeps the
one with the lowest final smoothed training loss, since a fair comparison
compares each batch size at its best (larger batches tolerate larger rates). The
printed table gives, per batch size, the chosen rate, the steps and examples
needed to bring the smoothed training loss below ``--target``, and the final
validation loss.

Run it (about a minute on 2 CPU cores)::

    python examples/batch_size_tradeoff.py --steps 400 --batch-sizes 8 32 128 512

Things to try: ``--target 0.05``; ``--steps 1500`` (the small batches catch up
in steps, never in examples); one learning rate for all, ``--learning-rates
0.003``, to see how much of the difference was the rate.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import jax
import numpy as np

import gradchain as gc

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "out"
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def ema(curves: np.ndarray, beta: float = 0.9) -> np.ndarray:
    """A debiased exponential moving average along the last axis."""
    out = np.empty(curves.shape, np.float64)
    avg = np.zeros(curves.shape[:-1])
    for t in range(curves.shape[-1]):
        avg = beta * avg + (1 - beta) * curves[..., t]
        out[..., t] = avg / (1 - beta ** (t + 1))
    return out


def first_below(curve: np.ndarray, target: float) -> int | None:
    """The first step (1-based) at which ``curve`` is below ``target``, or None."""
    below = np.flatnonzero(curve < target)
    return int(below[0]) + 1 if below.size else None


def train(
    batch_size: int, steps: int, learning_rates: Sequence[float], seeds: int
) -> dict[str, Any]:
    """Sweeps the learning rates at one batch size; keeps the best by final training loss.

    Returns:
      ``learning_rate`` (the chosen one), ``curve`` (float64[steps], the
      smoothed training loss, mean of seeds), ``val_loss``, ``seconds``.
    """
    split = common.digits()

    def loss_fn(params: common.MlpParams, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        return common.cross_entropy(common.mlp_logits(params, batch[0]), batch[1])

    def eval_fn(params: common.MlpParams) -> jax.Array:
        return loss_fn(params, (split.x_val, split.y_val))

    def batches(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        return common.shuffled_batches(key, split.x_train, split.y_train, batch_size, steps)

    result = gc.sweep(
        gc.adam(1e-3),
        loss_fn,
        common.init_mlp,
        {"learning_rate": learning_rates},
        batches=batches,
        seeds=range(seeds),
        eval_fn=eval_fn,
    )
    curves = ema(result.losses.astype(np.float64)).mean(axis=1)  # [rate, step]
    best = int(np.argmin(np.where(np.isfinite(curves[:, -1]), curves[:, -1], np.inf)))
    return {
        "learning_rate": float(result.configs["learning_rate"][best]),
        "curve": curves[best],
        "val_loss": float(result.scores("eval")[best]),
        "seconds": result.compile_seconds + result.run_seconds,
    }


def plot(runs: dict[int, dict[str, Any]], target: float, path: Path) -> Path:
    """Loss against steps (left) and against examples seen (right), one line per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_example) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (batch_size, run) in enumerate(sorted(runs.items())):
        steps = np.arange(1, len(run["curve"]) + 1)
        label = f"batch {batch_size} (lr {run['learning_rate']:g})"
        by_step.plot(steps, run["curve"], color=f"C{i}", label=label)
        by_example.plot(steps * batch_size, run["curve"], color=f"C{i}", label=label)
    for ax in (by_step, by_example):
        ax.axhline(target, color="0.5", ls=":", lw=1, label=f"target {target:g}")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    by_step.set_xlabel("steps")
    by_example.set_xlabel("examples seen (steps x batch size)")
    by_step.set_ylabel("smoothed training loss (mean of seeds)")
    by_step.set_title("against steps: larger batches need fewer")
    by_example.set_title("against examples seen: smaller batches need fewer")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(
    steps: int = 400,
    batch_sizes: Sequence[int] = (8, 32, 128, 512),
    learning_rates: Sequence[float] = LEARNING_RATES,
    seeds: int = 2,
    target: float = 0.1,
    out: str | os.PathLike[str] = DEFAULT_OUT,
) -> dict[str, Any]:
    """Trains every batch size, prints the table and writes the figure.

    Args:
      steps: updates per run, the same for every batch size.
      batch_sizes: the batch sizes compared.
      learning_rates: the rates swept per batch size.
      seeds: seeds per run.
      target: the smoothed training loss the table's "to target" columns use.
      out: the folder for the figure.

    Returns:
      ``rows``: per batch size, ``learning_rate``, ``val_loss``,
      ``steps_to_target`` and ``examples_to_target`` (None if not reached),
      ``final_loss`` (smoothed training loss at the end); ``figure``: the path.
    """
    runs = {b: train(b, steps, learning_rates, seeds) for b in batch_sizes}
    table: dict[int, dict[str, Any]] = {}
    print(
        f"{'batch':>6} {'lr':>7} {'steps to target':>16} {'examples to target':>19} "
        f"{'final loss':>11} {'val loss':>9}"
    )
    for b, run in runs.items():
        reach = first_below(run["curve"], target)
        row = {
            "learning_rate": run["learning_rate"],
            "val_loss": run["val_loss"],
            "steps_to_target": reach,
            "examples_to_target": None if reach is None else reach * b,
            "final_loss": float(run["curve"][-1]),
        }
        table[b] = row
        print(
            f"{b:>6} {row['learning_rate']:>7g} {reach or '-':>16} "
            f"{row['examples_to_target'] or '-':>19} {row['final_loss']:>11.4f} "
            f"{row['val_loss']:>9.4f}"
        )
    figure = plot(runs, target, Path(out) / "batch_size_tradeoff.png")
    return {"rows": table, "figure": figure}


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Batch size against iterations on digits.")
    parser.add_argument("--steps", type=int, default=400, help="updates per run (400)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--seeds", type=int, default=2, help="seeds per run (2)")
    parser.add_argument("--target", type=float, default=0.1, help="loss target (0.1)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="figure folder (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.steps, args.batch_sizes, args.learning_rates, args.seeds, args.target, args.out)
