r"""A learning rate x weight decay grid on the digits MLP, every run in one compiled program.

Every numeric hyperparameter of a gradchain optimizer lives in its state, so
``gc.sweep`` builds AdamW once, writes each configuration's ``learning_rate``
and ``weight_decay`` into its own copy of the state, and trains all of them
side by side with ``jax.vmap`` inside one ``jax.jit``: one trace, one
compilation, whatever the number of configurations. Each configuration runs
for several seeds (different initial weights and batch orders), and the
result holds every loss curve, the validation metrics at the end, and the
best configuration by seed-mean validation loss.

What to look for in the heatmap (``sweep_heatmap.png``): a valley along the
learning-rate axis. Too small a rate has not converged in the budget; too
large a one is unstable. Weight decay matters little here (AdamW's decay is multiplied by
the learning rate, and the training is short), except at the largest values,
where it starts to shrink the weights more than the data pulls them back.

The same sweep with a Flax NNX model (``--nnx``): ``nnx.split`` the model once
for its graph definition, let ``init_params`` build a fresh model per seed and
return its ``nnx.Param`` state, and call ``nnx.merge(graphdef, params)`` inside
the loss. gradchain itself never imports Flax.

Run it (about half a minute on 2 CPU cores)::

    python examples/sweep.py --steps 600 --seeds 2
    python examples/sweep.py --nnx

Things to try: ``--chunk-size 8`` (at most 8 runs in memory at once, the same
numbers); more seeds, to see how much of the grid's ranking is noise; a longer
``--steps``, which moves the valley to smaller learning rates.
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

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
BATCH_SIZE = 64
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "out"


def plain_jax_problem(split: common.Split, steps: int) -> dict[str, Any]:
    """The plain-JAX MLP: parameters as a list of dicts, built from a key."""

    def loss_fn(params: common.MlpParams, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        return common.cross_entropy(common.mlp_logits(params, batch[0]), batch[1])

    def eval_fn(params: common.MlpParams) -> dict[str, jax.Array]:
        logits = common.mlp_logits(params, split.x_val)
        return {
            "val_loss": common.cross_entropy(logits, split.y_val),
            "val_accuracy": common.accuracy(logits, split.y_val),
        }

    return {"loss_fn": loss_fn, "init_params": common.init_mlp, "eval_fn": eval_fn}


def nnx_problem(split: common.Split, steps: int) -> dict[str, Any]:
    """The same MLP as a Flax NNX module, swept through ``nnx.split``/``nnx.merge``."""
    from flax import nnx

    graphdef, _ = nnx.split(common.MLP(rngs=nnx.Rngs(0)))

    def init_params(key: jax.Array) -> Any:
        return nnx.state(common.MLP(rngs=nnx.Rngs(params=key)), nnx.Param)

    def logits(params: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        return common.cross_entropy(logits(params, batch[0]), batch[1])

    def eval_fn(params: Any) -> dict[str, jax.Array]:
        out = logits(params, split.x_val)
        return {
            "val_loss": common.cross_entropy(out, split.y_val),
            "val_accuracy": common.accuracy(out, split.y_val),
        }

    return {"loss_fn": loss_fn, "init_params": init_params, "eval_fn": eval_fn}


def run_sweep(
    *,
    steps: int,
    seeds: int,
    nnx: bool = False,
    chunk_size: int | None = None,
    learning_rates: Sequence[float] = LEARNING_RATES,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
) -> gc.SweepResult:
    """AdamW on the digits MLP over the grid, each configuration for ``seeds`` seeds.

    Args:
      steps: updates per run (mini-batches of 64).
      seeds: how many seeds per configuration.
      nnx: use the Flax NNX model instead of the plain-JAX one.
      chunk_size: at most this many runs vmapped at once.
      learning_rates: the grid's rates.
      weight_decays: the grid's decays.

    Returns:
      The sweep, configurations ordered learning rate major.
    """
    split = common.digits()
    problem = (nnx_problem if nnx else plain_jax_problem)(split, steps)

    def batches(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        return common.shuffled_batches(key, split.x_train, split.y_train, BATCH_SIZE, steps)

    return gc.sweep(
        gc.adamw(1e-3, weight_decay=1e-4),
        problem["loss_fn"],
        problem["init_params"],
        {"learning_rate": learning_rates, "weight_decay": weight_decays},
        batches=batches,
        seeds=range(seeds),
        eval_fn=problem["eval_fn"],
        chunk_size=chunk_size,
    )


def heatmap(result: gc.SweepResult, metric: str, path: Path) -> Path:
    """Draws the seed-mean ``metric`` over the grid and marks the best cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rates = np.unique(result.configs["learning_rate"])
    decays = np.unique(result.configs["weight_decay"])
    scores = result.scores(metric).reshape(len(rates), len(decays))
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    image = ax.imshow(np.log10(scores.T), origin="lower", cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label=f"log10 {metric} (mean of {len(result.seeds)} seeds)")
    low, high = image.get_clim()
    for i in range(len(rates)):
        for j in range(len(decays)):
            light = np.log10(scores[i, j]) < (low + high) / 2  # viridis_r is light there
            ax.text(
                i,
                j,
                f"{scores[i, j]:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if light else "white",
            )
    i, j = divmod(result.best_index(metric), len(decays))
    ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
    ax.set_yticks(range(len(decays)), [f"{d:g}" for d in decays])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("weight decay")
    ax.set_title(f"AdamW on digits: {metric} after {result.losses.shape[-1]} steps (best: red)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(
    steps: int = 600,
    seeds: int = 2,
    nnx: bool = False,
    chunk_size: int | None = None,
    out: str | os.PathLike[str] = DEFAULT_OUT,
) -> dict[str, Any]:
    """Runs the grid, prints the best configuration and writes the heatmap.

    Args:
      steps: updates per run.
      seeds: seeds per configuration.
      nnx: sweep the Flax NNX model.
      chunk_size: at most this many runs at once.
      out: the folder for the figure.

    Returns:
      ``best`` (hyperparameters), ``val_loss`` and ``val_accuracy`` of the
      best (seed means), ``runs``, ``compile_seconds``, ``run_seconds``,
      ``figure`` (the path).
    """
    result = run_sweep(steps=steps, seeds=seeds, nnx=nnx, chunk_size=chunk_size)
    best = result.best("val_loss")
    index = result.best_index("val_loss")
    runs = result.losses.shape[0] * result.losses.shape[1]
    print(
        f"{runs} runs of {steps} steps in one program: compiled in "
        f"{result.compile_seconds:.1f} s, ran in {result.run_seconds:.1f} s"
    )
    print(
        f"best by validation loss: learning_rate={best['learning_rate']:g}, "
        f"weight_decay={best['weight_decay']:g}: val loss "
        f"{result.scores('val_loss')[index]:.4f}, val accuracy "
        f"{result.scores('val_accuracy')[index]:.3f}"
    )
    name = "sweep_heatmap_nnx.png" if nnx else "sweep_heatmap.png"
    figure = heatmap(result, "val_loss", Path(out) / name)
    return {
        "best": best,
        "val_loss": float(result.scores("val_loss")[index]),
        "val_accuracy": float(result.scores("val_accuracy")[index]),
        "runs": runs,
        "compile_seconds": result.compile_seconds,
        "run_seconds": result.run_seconds,
        "figure": figure,
    }


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="AdamW lr x weight-decay grid on digits.")
    parser.add_argument("--steps", type=int, default=600, help="updates per run (default 600)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per configuration (default 2)")
    parser.add_argument("--nnx", action="store_true", help="sweep the Flax NNX model")
    parser.add_argument("--chunk-size", type=int, default=None, help="runs at once (default all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="figure folder (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.steps, args.seeds, args.nnx, args.chunk_size, args.out)
