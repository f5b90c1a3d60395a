r"""L1 and L2 regularization: regularization paths on the diabetes linear model.

Regularization adds a penalty on the weights to the loss, trading a little
training fit for a simpler model:

* L2, ``lam / 2 * ||w||_2^2``, adds ``lam * w`` to the gradient: every weight
  shrinks in proportion to its size, so all of them get smaller and none
  becomes zero. In gradchain it is ``gc.add_decayed_weights(lam)`` before
  the learning rate (weight decay; for plain SGD exactly the loss term).
* L1, ``lam * ||w||_1``, adds ``lam * sign(w)``: every weight is pushed
  towards zero by the same amount whatever its size, so a weight whose
  feature helps less than ``lam`` is switched off: a sparse model (the
  Lasso's). In gradchain it is ``gc.add_l1_penalty(lam)``.

The bias is never regularised (it only shifts the predictions): both
penalties take the mask ``{"w": True, "b": False}``.

The script fits ``y = x @ w + b`` to the diabetes training split
(``common.diabetes()``: 10 standardised features) with full-batch gradient
descent for each strength ``lam`` on a log grid, and draws the
regularization paths: each weight against ``lam``. The optimizer is built
once per penalty; the strength is a hyperparameter in its state, so
``gc.set_hyperparams(state, l1=lam)`` sets it, and ``jax.vmap`` over the
strengths trains every model in one compiled call. The learning rate decays
to zero (cosine) because an L1 subgradient step overshoots zero and
oscillates around it with an amplitude of ``lr * lam``; with the rate going
to zero those weights settle within ``ZERO_TOL`` of zero. (Exact zeros need
a proximal step, soft thresholding, which this lesson does not use.)

Read the figure: on the left, L1 paths hit zero one after another as ``lam``
grows (the last to go are the strongest features, bmi and s5); L2 paths all
shrink smoothly together and never reach zero. Below, the count of zero
weights (L1 climbs, L2 stays at 0) and the weight norm (both shrink). Run
it with::

    python examples/tutorial_regularization.py --epochs 2000

Things to try: ``--epochs 200`` (too short: the paths get ragged at small
``lam``, where the loss has a shallow direction), ``--strengths 13``
(coarser grid), ``--max-strength 10`` (L2 towards zero, slowly).
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
from sklearn.datasets import load_diabetes

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import gradchain as gc

Params = dict[str, jax.Array]
Carry = tuple[Params, gc.OptState]

#: A weight whose magnitude is below this counts as zero.
ZERO_TOL = 1e-3
#: Regularise the weights, never the bias.
WEIGHTS_ONLY = {"w": True, "b": False}
#: The penalties: (label, the factory, its strength's hyperparameter name).
PENALTIES = (("L1", gc.add_l1_penalty, "l1"), ("L2", gc.add_decayed_weights, "weight_decay"))


def mse(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of the linear model ``x @ w + b`` against ``y``."""
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def regularization_path(
    penalty: str,
    strengths: np.ndarray,
    x: jax.Array,
    y: jax.Array,
    epochs: int,
    learning_rate: float,
) -> np.ndarray:
    """Fits one model per strength with full-batch GD plus a penalty, all in one call.

    Args:
      penalty: "L1" or "L2" (see :data:`PENALTIES`).
      strengths: float[k], the values of ``lam``.
      x: float32[n, d] training features.
      y: float32[n] training targets.
      epochs: gradient steps (full batch: one per epoch).
      learning_rate: the initial rate, decayed to zero along a cosine.

    Returns:
      float64[k, d]: the fitted weights, one row per strength.
    """
    _, factory, name = next(p for p in PENALTIES if p[0] == penalty)
    tx = gc.chain(
        factory(0.0, WEIGHTS_ONLY),  # the strength is set per model below
        gc.sgd(gc.cosine_decay_schedule(learning_rate, decay_steps=epochs)),
    )
    params = {"w": jnp.zeros(x.shape[1], jnp.float32), "b": jnp.zeros([], jnp.float32)}
    state = tx.init(params)

    def fit(strength: jax.Array) -> jax.Array:
        def step(carry: Carry, _: None) -> tuple[Carry, None]:
            p, s = carry
            updates, s = tx.update(jax.grad(mse)(p, x, y), s, p)
            return (gc.apply_updates(p, updates), s), None

        start = (params, gc.set_hyperparams(state, {name: strength}))
        (fitted, _), _ = jax.lax.scan(step, start, None, length=epochs)
        return fitted["w"]

    weights = jax.jit(jax.vmap(fit))(jnp.asarray(strengths, jnp.float32))
    return np.asarray(weights, np.float64)


def plot(
    strengths: np.ndarray, paths: dict[str, np.ndarray], names: Sequence[str], path: Path
) -> None:
    """The two regularization paths, the zero count and the weight norm, against ``lam``.

    Args:
      strengths: float[k], the values of ``lam``.
      paths: float[k, d] weights by penalty label.
      names: the d feature names.
      path: the PNG to write.
    """
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    colors = plt.get_cmap("tab10")(np.arange(len(names)))
    for axis, (penalty, weights) in zip(axes[0], paths.items(), strict=True):
        for j, name in enumerate(names):
            axis.plot(strengths, weights[:, j], "o-", ms=2.5, color=colors[j], label=name)
            axis.annotate(
                name,
                (strengths[0], weights[0, j]),
                textcoords="offset points",
                xytext=(-4, 0),
                ha="right",
                va="center",
                fontsize=7,
                color=colors[j],
            )
        axis.axhline(0.0, color="black", lw=0.6)
        axis.set_xscale("log")
        axis.set_ylabel("weight")
        term = "lam * ||w||_1" if penalty == "L1" else "lam / 2 * ||w||^2"
        how = "weights hit zero one by one" if penalty == "L1" else "all weights shrink together"
        axis.set_title(f"{penalty} path (+ {term}): {how}")
    axes[0, 1].legend(fontsize=7, ncol=2, title="feature", title_fontsize=7)
    zeros, norms = axes[1]
    for penalty, weights in paths.items():
        style = {"L1": ("tab:red", "o-"), "L2": ("tab:blue", "s--")}.get(penalty, ("gray", ".-"))
        zeros.plot(
            strengths,
            (np.abs(weights) < ZERO_TOL).sum(axis=1),
            style[1],
            color=style[0],
            label=penalty,
        )
        norms.plot(
            strengths, np.linalg.norm(weights, axis=1), style[1], color=style[0], label=penalty
        )
    zeros.set_ylabel(f"weights with |w| < {ZERO_TOL:g} (of {len(names)})")
    zeros.set_title("sparsity: L1 switches features off, L2 never does")
    zeros.set_ylim(-0.5, len(names) + 0.5)
    norms.set_ylabel("||w||_2")
    norms.set_title("shrinkage: both make the weights smaller")
    for axis in axes[1]:
        axis.set_xlabel("regularization strength lam (log scale)")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    epochs: int = 2000,
    strengths: int = 25,
    min_strength: float = 1e-3,
    max_strength: float = 3.0,
    learning_rate: float = 0.2,
    seed: int = 0,
    out: str | Path = "out",
) -> dict[str, np.ndarray]:
    """Computes both regularization paths, prints a summary and draws the figure.

    Args:
      epochs: full-batch gradient steps per model.
      strengths: how many values of ``lam``, log-spaced.
      min_strength: the smallest ``lam``.
      max_strength: the largest ``lam``.
      learning_rate: the initial GD rate (below 2 / the largest curvature, 0.24).
      seed: picks the train/validation split.
      out: the folder for ``tutorial_regularization.png``.

    Returns:
      ``{"strength": float[k], "L1": float[k, d], "L2": float[k, d]}``: the
      strengths and the fitted weights for each.
    """
    data = common.diabetes(seed=seed)
    grid = np.geomspace(min_strength, max_strength, strengths)
    paths = {
        label: regularization_path(label, grid, data.x_train, data.y_train, epochs, learning_rate)
        for label, _, _ in PENALTIES
    }
    names = list(load_diabetes().feature_names)
    print(f"{'lam':>9} {'L1 zeros':>9} {'L1 ||w||':>9} {'L2 zeros':>9} {'L2 ||w||':>9}")
    for k, lam in enumerate(grid):
        cells = [
            f"{int((np.abs(paths[p][k]) < ZERO_TOL).sum()):>9} {np.linalg.norm(paths[p][k]):>9.4f}"
            for p in ("L1", "L2")
        ]
        print(f"{lam:>9.3g} " + " ".join(cells))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tutorial_regularization.png"
    plot(grid, paths, names, path)
    print(f"wrote {path}")
    return {"strength": grid, **paths}


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="L1 and L2 regularization paths.")
    parser.add_argument("--epochs", type=int, default=2000, help="GD steps (default 2000)")
    parser.add_argument("--strengths", type=int, default=25, help="grid size (default 25)")
    parser.add_argument("--min-strength", type=float, default=1e-3, help="(default 1e-3)")
    parser.add_argument("--max-strength", type=float, default=3.0, help="(default 3)")
    parser.add_argument("--learning-rate", type=float, default=0.2, help="(default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--out", default="out", help="folder for the figure (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(
        args.epochs,
        args.strengths,
        args.min_strength,
        args.max_strength,
        args.learning_rate,
        args.seed,
        args.out,
    )
