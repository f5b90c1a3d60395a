"""A parallel learning-rate range test: K rates trained side by side, one suggestion.

The classic range test (Smith 2017; fastai's and Lightning's ``lr_find``)
raises the learning rate along one run, so each rate is seen for a step or
two from a different point of training, and the suggestion it reads off the
steepest slope of a noisy curve moves from run to run. Here every candidate
rate trains for the same number of steps from the same initial parameters,
all at once in one vmapped program (:func:`sweep`), for several seeds. The
suggestion is the valley of the smoothed final loss against the rate: the
rate that reached the lowest loss in the budget, refined between grid points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gradchain._base import GradientTransformation, GradientTransformationExtraArgs, Params
from gradchain._sweeps import Factory, LossFn, SweepResult, sweep


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """What :func:`find_learning_rate` measured and suggests.

    Attributes:
      rates: float64[K], the candidate learning rates, increasing.
      losses: float32[K, S, T], the raw training loss of each rate and seed.
      smoothed: float64[K, S, T], the losses smoothed by a debiased EMA.
      final: float64[K, S], the smoothed loss at the last step; inf where a
        run diverged (a non-finite loss, or ending above where it started),
        which never wins.
      suggestion: the suggested learning rate, from the seed-mean of ``final``.
      per_seed: float64[S], the same rule applied to each seed alone.
      sweep: the underlying :class:`SweepResult`.
    """

    rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    final: np.ndarray
    suggestion: float
    per_seed: np.ndarray
    sweep: SweepResult

    def plot(self, ax: Any) -> Any:
        """Draws the final smoothed loss against the rate, and the suggestion, on ``ax``.

        gradchain does not import matplotlib: pass an axes you made, e.g.
        ``fig, ax = plt.subplots(); result.plot(ax)``.

        Args:
          ax: a matplotlib ``Axes``.

        Returns:
          ``ax``.
        """
        finite = np.where(np.isfinite(self.final), self.final, np.nan)
        for s in range(finite.shape[1]):
            ax.plot(
                self.rates,
                finite[:, s],
                color="0.6",
                lw=1,
                marker=".",
                label="each seed" if s == 0 else None,
            )
        mean = np.where(np.isfinite(self.final).all(axis=1), self.final.mean(axis=1), np.nan)
        ax.plot(self.rates, mean, color="C0", lw=2, label="mean of seeds")
        ax.axvline(self.suggestion, color="C3", ls="--", label=f"suggestion {self.suggestion:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"smoothed loss after {self.losses.shape[-1]} steps")
        ax.legend()
        return ax


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    """A debiased exponential moving average along the last axis.

    Args:
      losses: any array; the last axis is time.
      beta: the decay in [0, 1); 0 returns the losses unchanged.

    Returns:
      float64 array of the same shape.
    """
    out = np.empty(losses.shape, np.float64)
    avg = np.zeros(losses.shape[:-1], np.float64)
    for t in range(losses.shape[-1]):
        avg = beta * avg + (1 - beta) * losses[..., t]
        out[..., t] = avg / (1 - beta ** (t + 1))
    return out


def _valley(log_rates: np.ndarray, scores: np.ndarray) -> float:
    """The rate of lowest score, refined by a parabola through it and its neighbours."""
    if not np.isfinite(scores).any():
        return float("nan")
    k = int(np.argmin(scores))
    x = log_rates[k]
    if 0 < k < len(scores) - 1 and np.isfinite(scores[k - 1 : k + 2]).all():
        a, b, _ = np.polyfit(log_rates[k - 1 : k + 2], np.log(scores[k - 1 : k + 2]), 2)
        if a > 0:
            half = (log_rates[k + 1] - log_rates[k - 1]) / 4
            x = float(np.clip(-b / (2 * a), x - half, x + half))
    return float(np.exp(x))


def find_learning_rate(
    optimizer: GradientTransformation | GradientTransformationExtraArgs | Factory,
    loss_fn: LossFn,
    init_params: Params | Callable[[Any], Params],
    *,
    data: Any = None,
    batches: Any = None,
    steps: int | None = None,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    num_rates: int = 16,
    seeds: Sequence[int] = (0, 1, 2),
    name: str = "learning_rate",
    smoothing: float = 0.9,
    chunk_size: int | None = None,
) -> LRFinderResult:
    """Trains ``num_rates`` log-spaced learning rates at once and suggests one.

    Every rate trains for ``steps`` updates from the same initial parameters
    (per seed), in one vmapped program. Each loss curve is smoothed (a
    debiased EMA); its last value scores the rate. A run diverged if its loss
    turned non-finite or ended above its first value; it scores inf for that
    seed. The suggestion is the rate of lowest
    seed-mean score, refined by a parabola in log-rate through it and its two
    neighbours (at most a quarter of the grid's span either side).

    Args:
      optimizer: a transformation holding ``name`` as a constant
        hyperparameter, or a factory taking ``name`` (see :func:`sweep`).
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      init_params: the initial parameters, or a function of a PRNG key.
      data: a full batch used every step (needs ``steps``).
      batches: one batch per step along the leading axis, or a function of
        a key returning them.
      steps: updates per rate; a few hundred is typical.
      min_lr: the smallest candidate rate, > 0.
      max_lr: the largest candidate rate, > ``min_lr``.
      num_rates: how many rates, log-spaced, >= 3.
      seeds: seeds; several make the suggestion robust.
      name: the hyperparameter swept (``"opt/learning_rate"`` in a named chain).
      smoothing: the EMA decay for the curves, in [0, 1).
      chunk_size: at most this many runs vmapped at once (see :func:`sweep`).

    Returns:
      An :class:`LRFinderResult`.

    Raises:
      ValueError: for a bad range, ``num_rates < 3`` or ``smoothing``
        outside [0, 1); the errors of :func:`sweep`.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> def loss(params, batch):
      ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
      >>> data = {"x": jnp.arange(1.0, 5.0), "y": 2 * jnp.arange(1.0, 5.0)}
      >>> found = gc.find_learning_rate(gc.sgd(0.1), loss, {"w": jnp.zeros([])}, data=data,
      ...                               steps=5, min_lr=1e-3, max_lr=1.0, num_rates=10,
      ...                               seeds=(0,))
      >>> round(found.suggestion, 3)  # the best step is 1 / curvature = 0.067
      0.055
      >>> bool(found.final[-1, 0] == float("inf"))  # 1.0 > 2 / curvature: diverged
      True
    """
    fn = "find_learning_rate"
    if not 0 < min_lr < max_lr:
        raise ValueError(f"{fn}: need 0 < min_lr < max_lr; got min_lr={min_lr}, max_lr={max_lr}.")
    if num_rates < 3:
        raise ValueError(f"{fn}: `num_rates` must be at least 3; got {num_rates}.")
    if not 0 <= smoothing < 1:
        raise ValueError(f"{fn}: `smoothing` must be in [0, 1); got {smoothing}.")
    rates = np.geomspace(min_lr, max_lr, num_rates)
    result = sweep(
        optimizer,
        loss_fn,
        init_params,
        {name: rates},
        data=data,
        batches=batches,
        steps=steps,
        seeds=seeds,
        chunk_size=chunk_size,
    )
    losses = result.losses
    with np.errstate(invalid="ignore", over="ignore"):
        smoothed = smooth(losses.astype(np.float64), smoothing)
        diverged = ~np.isfinite(smoothed).all(axis=-1) | (smoothed[..., -1] > smoothed[..., 0])
    final = np.where(diverged, np.inf, smoothed[..., -1])
    log_rates = np.log(rates)
    per_seed = np.array([_valley(log_rates, final[:, s]) for s in range(final.shape[1])])
    mean = np.where(np.isfinite(final).all(axis=1), final.mean(axis=1), np.inf)
    suggestion = _valley(log_rates, mean)
    if not np.isfinite(suggestion):
        raise ValueError(
            f"{fn}: every rate in [{min_lr:g}, {max_lr:g}] diverged on some seed; lower `min_lr`."
        )
    return LRFinderResult(rates, losses, smoothed, final, suggestion, per_seed, result)
