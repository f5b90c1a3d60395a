r"""A parallel learning-rate range test, checked against a full grid, on two problems.

``gc.find_learning_rate`` trains K log-spaced learning rates for a short
budget (a few hundred steps), all from the same initial parameters and side
by side in one compiled program, for several seeds. It smooths each loss
curve and suggests the rate whose smoothed loss ended lowest (refined between
grid points). The usual range test (fastai, Lightning) instead raises the
rate along a single run and reads the steepest slope of one noisy curve, so
its suggestion moves from run to run; here the per-seed suggestions are
printed, so you can see how stable this one is.

Is a rate found in a short budget good for the long run? For each problem
this script also trains every grid rate for the full budget (``--full-steps``)
and the suggested rate too, and reports the gap between the suggestion's
final loss and the grid's best:

* ``digits``: the 64-64-10 MLP, Adam, mini-batches of 64.
* ``diabetes``: the linear model, plain SGD, mini-batches of 32. Its loss is
  a quadratic, so there is a hard edge: past 2 / (largest curvature) SGD
  diverges, and the finder must stay below it.

Figures (``lr_finder_<problem>.png``): left, the smoothed loss curves of every
rate during the finder's budget; right, the finder's final smoothed loss
against the rate (each seed, their mean and the suggestion) beside the full
grid's final loss and its best rate.

Run it (about three minutes on 2 CPU cores)::

    python examples/lr_finder.py --finder-steps 200 --full-steps 2000

Things to try: ``--seeds 1`` (a single seed's suggestion), ``--finder-steps
50`` (too short a budget favours larger rates), ``--num-rates 32``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

import gradchain as gc

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "out"


def problem(name: str) -> dict[str, Any]:
    """The optimizer, loss, init, batch maker and rate range of one problem."""
    if name == "digits":
        split = common.digits()

        def loss_fn(params: common.MlpParams, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
            return common.cross_entropy(common.mlp_logits(params, batch[0]), batch[1])

        def eval_fn(params: common.MlpParams) -> jax.Array:
            return loss_fn(params, (split.x_val, split.y_val))

        return {
            "optimizer": gc.adam(1e-3),
            "loss_fn": loss_fn,
            "eval_fn": eval_fn,
            "init_params": common.init_mlp,
            "split": split,
            "batch_size": 64,
            "range": (1e-4, 3.0),
        }
    if name == "diabetes":
        split = common.diabetes()

        def mse(params: dict[str, jax.Array], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
            return jnp.mean((batch[0] @ params["w"] + params["b"] - batch[1]) ** 2)

        def init(key: jax.Array) -> dict[str, jax.Array]:
            del key  # zero weights: the seeds differ by their batch orders only
            return {"w": jnp.zeros(10, jnp.float32), "b": jnp.zeros([], jnp.float32)}

        def eval_fn(params: dict[str, jax.Array]) -> jax.Array:
            return mse(params, (split.x_val, split.y_val))

        return {
            "optimizer": gc.sgd(1e-2),
            "loss_fn": mse,
            "eval_fn": eval_fn,
            "init_params": init,
            "split": split,
            "batch_size": 32,
            "range": (1e-4, 3.0),
        }
    raise ValueError(f"unknown problem {name!r}; choose 'digits' or 'diabetes'")


def batch_maker(p: dict[str, Any], steps: int) -> Callable[[jax.Array], Any]:
    """A function of a key returning ``steps`` shuffled mini-batches."""
    split = p["split"]

    def batches(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        return common.shuffled_batches(key, split.x_train, split.y_train, p["batch_size"], steps)

    return batches


def final_loss(p: dict[str, Any], result: gc.SweepResult) -> np.ndarray:
    """float64[C]: the seed-mean of the last tenth of each run's training losses."""
    tail = max(1, result.losses.shape[-1] // 10)
    mean = result.losses[..., -tail:].astype(np.float64).mean(axis=(1, 2))
    return np.where(np.isfinite(mean), mean, np.inf)


def compare(
    name: str, *, finder_steps: int, full_steps: int, num_rates: int, seeds: int
) -> dict[str, Any]:
    """Runs the finder, the full grid over the same rates, and the suggestion for full length.

    Returns:
      The finder's result, the grid's result, the suggestion's full-length
      result, and the numbers: ``suggestion``, ``per_seed``, ``grid_best``,
      ``suggestion_loss``, ``grid_best_loss``, ``gap`` (relative excess of the
      suggestion's final training loss over the grid best's), and on the
      validation split ``suggestion_val_loss``, ``grid_best_val_loss`` (the
      lowest over the grid) and its rate ``grid_best_val_rate``.
    """
    p = problem(name)
    low, high = p["range"]
    common_args = dict(loss_fn=p["loss_fn"], init_params=p["init_params"], seeds=range(seeds))
    found = gc.find_learning_rate(
        p["optimizer"],
        batches=batch_maker(p, finder_steps),
        min_lr=low,
        max_lr=high,
        num_rates=num_rates,
        **common_args,
    )
    full = batch_maker(p, full_steps)
    grid = gc.sweep(
        p["optimizer"],
        hyperparams={"learning_rate": found.rates},
        batches=full,
        eval_fn=p["eval_fn"],
        **common_args,
    )
    chosen = gc.sweep(
        p["optimizer"],
        hyperparams={"learning_rate": [found.suggestion]},
        batches=full,
        eval_fn=p["eval_fn"],
        **common_args,
    )
    grid_losses = final_loss(p, grid)
    best = int(np.argmin(grid_losses))
    suggestion_loss = float(final_loss(p, chosen)[0])
    return {
        "found": found,
        "grid": grid,
        "grid_losses": grid_losses,
        "suggestion": found.suggestion,
        "per_seed": [float(x) for x in found.per_seed],
        "grid_best": float(found.rates[best]),
        "suggestion_loss": suggestion_loss,
        "grid_best_loss": float(grid_losses[best]),
        "gap": suggestion_loss / float(grid_losses[best]) - 1.0,
        "suggestion_val_loss": float(chosen.scores("eval")[0]),
        "grid_best_val_loss": float(grid.scores("eval").min()),
        "grid_best_val_rate": float(found.rates[grid.best_index("eval")]),
    }


def plot(name: str, outcome: dict[str, Any], path: Path) -> Path:
    """Two panels: the finder's smoothed curves, and loss against rate with both answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found: gc.LRFinderResult = outcome["found"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.get_cmap("viridis")(np.linspace(0, 1, len(found.rates)))
    curves = found.smoothed.mean(axis=1)
    for k, rate in enumerate(found.rates):
        curve = np.where(np.isfinite(curves[k]), curves[k], np.nan)
        left.plot(curve, color=colors[k], lw=1, label=f"{rate:.2g}" if k % 3 == 0 else None)
    left.set_yscale("log")
    start, lowest = (
        float(curves[0, 0]),
        float(np.min(curves, where=np.isfinite(curves), initial=np.inf)),
    )
    left.set_ylim(0.8 * lowest, 3 * start)
    left.set_xlabel("step")
    left.set_ylabel("smoothed training loss (mean of seeds)")
    left.set_title(f"{name}: the finder's {found.losses.shape[-1]} steps, one curve per rate")
    left.legend(title="learning rate", fontsize=7, ncol=2)
    found.plot(right)
    full_steps = outcome["grid"].losses.shape[-1]
    right.plot(
        found.rates,
        np.where(np.isfinite(outcome["grid_losses"]), outcome["grid_losses"], np.nan),
        color="C2",
        marker="s",
        ms=3,
        label=f"full grid, {full_steps} steps",
    )
    right.axvline(
        outcome["grid_best"], color="C2", ls=":", label=f"grid best {outcome['grid_best']:.3g}"
    )
    right.set_ylabel("final loss")
    right.set_title(
        f"final training loss: suggestion {outcome['suggestion_loss']:.3g}, "
        f"grid best {outcome['grid_best_loss']:.3g}"
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(
    finder_steps: int = 200,
    full_steps: int = 2000,
    num_rates: int = 16,
    seeds: int = 3,
    problems: Sequence[str] = ("digits", "diabetes"),
    out: str | os.PathLike[str] = DEFAULT_OUT,
) -> dict[str, dict[str, Any]]:
    """Runs the comparison on each problem, prints it and writes the figures.

    Args:
      finder_steps: the finder's budget per rate.
      full_steps: the full training length of the grid and of the suggestion.
      num_rates: the candidate rates (the same for the grid).
      seeds: seeds for the finder, the grid and the suggestion.
      problems: a subset of ``("digits", "diabetes")``.
      out: the folder for the figures.

    Returns:
      Per problem: ``suggestion``, ``per_seed``, ``grid_best``,
      ``suggestion_loss``, ``grid_best_loss``, ``gap``, ``suggestion_val_loss``,
      ``grid_best_val_loss``, ``grid_best_val_rate`` (see :func:`compare`), ``figure``.
    """
    results = {}
    for name in problems:
        outcome = compare(
            name, finder_steps=finder_steps, full_steps=full_steps, num_rates=num_rates, seeds=seeds
        )
        figure = plot(name, outcome, Path(out) / f"lr_finder_{name}.png")
        per_seed = ", ".join(f"{x:.3g}" for x in outcome["per_seed"])
        print(
            f"{name}: suggestion {outcome['suggestion']:.3g} (seeds: {per_seed}); grid best "
            f"{outcome['grid_best']:.3g}. Final loss after {full_steps} steps: suggestion "
            f"{outcome['suggestion_loss']:.4g}, grid best {outcome['grid_best_loss']:.4g} "
            f"({outcome['gap']:+.1%}). Validation loss: suggestion "
            f"{outcome['suggestion_val_loss']:.4g}, grid best {outcome['grid_best_val_loss']:.4g} "
            f"(at {outcome['grid_best_val_rate']:.3g})"
        )
        keep = (
            "suggestion",
            "per_seed",
            "grid_best",
            "suggestion_loss",
            "grid_best_loss",
            "gap",
            "suggestion_val_loss",
            "grid_best_val_loss",
            "grid_best_val_rate",
        )
        results[name] = {k: outcome[k] for k in keep} | {"figure": figure}
    return results


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A parallel learning-rate finder vs a grid.")
    parser.add_argument("--finder-steps", type=int, default=200, help="finder budget (200)")
    parser.add_argument("--full-steps", type=int, default=2000, help="full training (2000)")
    parser.add_argument("--num-rates", type=int, default=16, help="candidate rates (16)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds (3)")
    parser.add_argument("--problems", nargs="+", default=["digits", "diabetes"])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="figure folder (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.finder_steps, args.full_steps, args.num_rates, args.seeds, args.problems, args.out)
