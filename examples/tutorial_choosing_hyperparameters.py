r"""How to choose the learning rate, the batch size and the number of iterations.

The tutorials answer "by trial and error" and "it depends"; this script does
the trials and lets the numbers answer. It fits the linear model
``y = x @ w + b`` to the diabetes data (``common.diabetes()``: a training
split of 354 patients and a validation split of 88) with mini-batch SGD and
runs three experiments, one per panel of the figure:

1. The learning rate. Train for a fixed number of epochs at learning rates
   about 3x apart, from much too small to much too large, and watch the
   training loss (the thing the learning rate controls). Too small: the loss
   creeps down. Too large: it blows up (above ``2 /`` the largest curvature
   of the loss every step overshoots, as in
   ``examples/tutorial_gradient_descent.py``). The best rate is the one that
   gets close to the lowest loss first, usually a little below the smallest
   rate that blows up. The optimizer is built once; the learning rate is a
   hyperparameter in its state, so ``gc.set_hyperparams(state,
   learning_rate=lr)`` and ``jax.vmap`` train every rate in one compiled call.
2. The batch size, at a fixed budget of examples seen (the same compute on
   one core, where cost is examples) and the chosen rate. A small batch takes
   many noisy steps and stalls on a noise floor, a large one few exact steps
   and runs out of budget; the best trade lies in between (see
   ``examples/tutorial_minibatch_sgd.py``). On hardware that processes a
   batch in parallel, cost is steps rather than examples, which favours
   larger batches.
3. The number of iterations. Follow the loss at the chosen rate and batch
   size and find where it flattens: the epoch by which it has made 99% of
   all the improvement it will make. The rest costs time for little gain,
   and on a model that can overfit, the validation loss (drawn too) turns
   up. Stop there, or decay the learning rate (``examples/tutorial_lr_decay.py``)
   to go further.

The advice printed at the end is computed from the measurements, so it
changes when the flags change. Run it with::

    python examples/tutorial_choosing_hyperparameters.py --epochs 100

Things to try: ``--batch-size 8`` (a noisier panel 1, a smaller stable
range), ``--budget-epochs 5`` (a tiny budget, where large batches have too
few steps), ``--seed 1`` (another split: the same advice?).
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

#: Learning rates a factor of about 3 apart, from too small to too large.
LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Batch sizes for the fixed-budget experiment; 0 stands for the full batch.
BATCH_SIZES = (1, 4, 16, 64, 0)
#: Iterations are enough once the training loss has made this share of its improvement.
FLAT_SHARE = 0.99


def mse(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of the linear model ``x @ w + b`` against ``y``."""
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def train(
    data: common.Split,
    batch_size: int,
    learning_rates: Sequence[float],
    epochs: int,
    key: jax.Array,
) -> tuple[np.ndarray, np.ndarray]:
    """Trains one model per learning rate with mini-batch SGD, all in one compiled call.

    Every model sees the same batches (the shuffling depends on ``key`` only).

    Args:
      data: the training and validation splits.
      batch_size: examples per step; each epoch drops the last ``n % batch_size``.
      learning_rates: the constant step sizes, one model each.
      epochs: passes over the training data.
      key: drives the shuffling.

    Returns:
      ``(train, validation)``: float64[len(learning_rates), epochs + 1] each,
      the MSE on each split before training and after every epoch (inf where
      it overflowed).
    """
    x, y = data.x_train, data.y_train
    n, d = x.shape
    per_epoch = n // batch_size
    tx = gc.sgd(learning_rate=1.0)  # a placeholder: each model sets its own below
    params = {"w": jnp.zeros(d, jnp.float32), "b": jnp.zeros([], jnp.float32)}

    def losses(p: Params) -> jax.Array:
        return jnp.stack([mse(p, x, y), mse(p, data.x_val, data.y_val)])

    def step(carry: Carry, batch: tuple[jax.Array, jax.Array]) -> tuple[Carry, None]:
        p, s = carry
        updates, s = tx.update(jax.grad(mse)(p, *batch), s, p)
        return (gc.apply_updates(p, updates), s), None

    def epoch(carry: Carry, epoch_key: jax.Array) -> tuple[Carry, jax.Array]:
        order = jax.random.permutation(epoch_key, n)[: per_epoch * batch_size]
        order = order.reshape(per_epoch, batch_size)
        carry, _ = jax.lax.scan(step, carry, (x[order], y[order]))
        return carry, losses(carry[0])

    def run(learning_rate: jax.Array) -> jax.Array:
        state = gc.set_hyperparams(tx.init(params), learning_rate=learning_rate)
        _, history = jax.lax.scan(epoch, (params, state), jax.random.split(key, epochs))
        return jnp.concatenate([losses(params)[None], history])  # [epochs + 1, 2]

    history = jax.jit(jax.vmap(run))(jnp.asarray(learning_rates, jnp.float32))
    history = np.asarray(history, np.float64)
    history = np.where(np.isfinite(history), history, np.inf)
    return history[..., 0], history[..., 1]


def diverged(curve: np.ndarray) -> bool:
    """Whether a loss curve ended above where it started (or overflowed)."""
    return not np.isfinite(curve[-1]) or curve[-1] > curve[0]


def flat_epoch(curve: np.ndarray, share: float = FLAT_SHARE) -> int:
    """The first epoch by which ``curve`` made ``share`` of its total improvement.

    Args:
      curve: a loss per epoch, the first entry before training.
      share: the fraction of ``curve[0] - min(curve)`` that counts as enough.

    Returns:
      An index into ``curve``.
    """
    best = float(np.min(curve))
    target = curve[0] - share * (curve[0] - best)
    return int(np.argmax(curve <= target))


def tail_mean(curve: np.ndarray, fraction: float = 0.1) -> float:
    """The mean of the last ``fraction`` of a loss curve (at least one entry)."""
    return float(np.mean(curve[-max(1, int(len(curve) * fraction)) :]))


def sweep_learning_rate(
    data: common.Split, rates: Sequence[float], batch_size: int, epochs: int, key: jax.Array
) -> dict[str, object]:
    """Experiment 1: the loss at each learning rate, and the verdicts.

    The verdicts use the training loss, which is what the learning rate
    controls. The best rate ends lowest (mean over the last 10% of epochs).
    A smaller rate is too small if it needs more than twice as many epochs
    to get near that loss (within 1% of the whole improvement); a larger
    stable rate is too noisy if it ends above it by more than 0.5% of the
    improvement (its noise floor); a rate whose loss grows has diverged.

    Returns:
      ``rates``; ``train``/``val`` histories [k, epochs + 1]; ``epochs_to_near``
      (per rate, the first epoch near the lowest loss, or None); ``best``;
      ``diverged``; ``too_small``; ``too_noisy``.
    """
    train_loss, val_loss = train(data, batch_size, rates, epochs, key)
    stable = [not diverged(c) for c in train_loss]
    tails = [tail_mean(c) if ok else np.inf for c, ok in zip(train_loss, stable, strict=True)]
    best = int(np.argmin(tails))
    improvement = train_loss[best, 0] - tails[best]
    near = tails[best] + 0.01 * improvement
    reach: list[int | None] = [
        int(np.argmax(c <= near)) if ok and np.any(c <= near) else None
        for c, ok in zip(train_loss, stable, strict=True)
    ]
    limit = 2 * (reach[best] or 0)
    slow = [
        r
        for k, r in enumerate(rates)
        if k < best and stable[k] and (reach[k] is None or reach[k] > limit)  # type: ignore[operator]
    ]
    noisy = [
        r
        for k, r in enumerate(rates)
        if k > best and stable[k] and tails[k] > tails[best] + 0.005 * improvement
    ]
    return {
        "rates": list(rates),
        "train": train_loss,
        "val": val_loss,
        "epochs_to_near": reach,
        "best": rates[best],
        "diverged": [r for r, ok in zip(rates, stable, strict=True) if not ok],
        "too_small": slow,
        "too_noisy": noisy,
    }


def sweep_batch_size(
    data: common.Split,
    batch_sizes: Sequence[int],
    learning_rate: float,
    budget_epochs: int,
    key: jax.Array,
) -> dict[int, np.ndarray]:
    """Experiment 2: training loss per epoch for each batch size, same examples seen.

    Returns:
      float64[budget_epochs + 1] training losses by batch size.
    """
    return {b: train(data, b, [learning_rate], budget_epochs, key)[0][0] for b in batch_sizes}


def advice(
    lr_sweep: dict[str, object],
    batches: dict[int, np.ndarray],
    n: int,
    batch_size: int,
    budget_epochs: int,
) -> list[str]:
    """Turns the measurements into sentences; nothing in them is fixed in advance.

    Returns:
      Lines of advice, a paragraph per question.
    """
    rates: list[float] = lr_sweep["rates"]  # type: ignore[assignment]
    best = float(lr_sweep["best"])  # type: ignore[arg-type]
    train_loss = np.asarray(lr_sweep["train"])
    val = np.asarray(lr_sweep["val"])
    reach: list[int | None] = lr_sweep["epochs_to_near"]  # type: ignore[assignment]
    k = rates.index(best)
    blown: list[float] = lr_sweep["diverged"]  # type: ignore[assignment]
    slow: list[float] = lr_sweep["too_small"]  # type: ignore[assignment]
    epochs = train_loss.shape[1] - 1
    noisy: list[float] = lr_sweep["too_noisy"]  # type: ignore[assignment]
    lines = [
        f"learning rate: at batch {batch_size}, {best:g} ended lowest (training MSE "
        f"{tail_mean(train_loss[k]):.4f} over the last 10% of {epochs} epochs; near it by "
        f"epoch {reach[k]})."
    ]
    if noisy:
        floors = ", ".join(f"{tail_mean(train_loss[rates.index(r)]):.4f}" for r in noisy)
        lines.append(
            f"  {', '.join(f'{r:g}' for r in noisy)} too noisy: fast at first, then stuck on a "
            f"higher floor ({floors})."
        )
    if blown:
        stable = [r for r in rates if r not in blown]
        lines.append(
            f"  {', '.join(f'{r:g}' for r in blown)} diverged: the stable range ends between "
            f"{max(stable):g} and {min(blown):g}, and the best rate is "
            f"{min(blown) / best:.3g}x below the first that blew up."
        )
    if slow:
        worst = rates.index(min(slow))
        when = reach[worst]
        lines.append(
            f"  {', '.join(f'{r:g}' for r in slow)} too small: {min(slow):g} "
            + (
                f"needed {when} epochs"
                if when is not None
                else f"never got close in {epochs} epochs"
            )
            + f" to get near it ({best:g} needed {reach[k]})."
        )
    lines.append(
        "  So: start high, divide by 3 until the loss stops blowing up and its floor stops "
        "dropping."
    )
    finals = {b: tail_mean(c) for b, c in batches.items()}
    winner = min(finals, key=lambda b: finals[b])
    name = {b: "the full batch" if b == n else f"batch {b}" for b in finals}
    smallest, largest = min(finals), max(finals)
    lines.append(
        f"batch size: at lr {best:g} with a budget of {budget_epochs} epochs "
        f"({budget_epochs * n} examples), {name[winner]} ended lowest (training MSE "
        f"{finals[winner]:.4f}, {budget_epochs * (n // winner)} steps); {name[smallest]} "
        f"({budget_epochs * (n // smallest)} noisy steps) ended at {finals[smallest]:.4g}, "
        f"{name[largest]} ({budget_epochs * (n // largest)} exact steps) at {finals[largest]:.4g}."
    )
    curve = train_loss[k]
    flat = flat_epoch(curve)
    rest = curve[flat] - curve.min()
    lowest_val = int(np.argmin(val[k]))
    lines.append(
        f"iterations: at lr {best:g}, batch {batch_size}, the training MSE made "
        f"{FLAT_SHARE:.0%} of its improvement by epoch {flat} ({flat * (n // batch_size)} "
        f"steps); the other {epochs - flat} epochs gained {rest:.4f} more. The validation MSE "
        f"was lowest at epoch {lowest_val} ({val[k, lowest_val]:.4f}) and ended at "
        f"{val[k, -1]:.4f}. Train about {flat} epochs; to go lower, decay the learning rate."
    )
    return lines


def least_squares_loss(data: common.Split) -> float:
    """The smallest training MSE any ``w, b`` reach, in float64."""
    design = np.c_[np.asarray(data.x_train, np.float64), np.ones(data.x_train.shape[0])]
    target = np.asarray(data.y_train, np.float64)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.mean((design @ solution - target) ** 2))


def plot(
    lr_sweep: dict[str, object],
    batches: dict[int, np.ndarray],
    n: int,
    batch_size: int,
    optimum: float,
    path: Path,
) -> None:
    """The three panels: learning rates, batch sizes at a fixed budget, iterations.

    Args:
      lr_sweep: the result of :func:`sweep_learning_rate`.
      batches: the result of :func:`sweep_batch_size`.
      n: the number of training examples.
      batch_size: the batch size of the learning-rate sweep.
      optimum: the least-squares training MSE (panels 1 and 2 show the excess over it).
      path: the PNG to write.
    """
    fig, (by_rate, by_batch, by_iteration) = plt.subplots(1, 3, figsize=(18, 5.4))
    rates: list[float] = lr_sweep["rates"]  # type: ignore[assignment]
    train_loss = np.asarray(lr_sweep["train"])
    val = np.asarray(lr_sweep["val"])
    best = float(lr_sweep["best"])  # type: ignore[arg-type]
    verdicts = {"diverged": "tab:red", "too_small": "tab:blue", "too_noisy": "tab:orange"}
    epochs = np.arange(train_loss.shape[1])
    top = 3.0 * (train_loss[:, 0].max() - optimum)
    shade: dict[str, int] = {}
    for rate, curve in zip(rates, train_loss, strict=True):
        kind = next((v for v in verdicts if rate in lr_sweep[v]), "")  # type: ignore[operator]
        color = "tab:green" if rate == best else verdicts.get(kind, "tab:gray")
        shade[color] = shade.get(color, -1) + 1
        color = tuple(np.asarray(matplotlib.colors.to_rgb(color)) * 0.7 ** shade[color])
        excess = np.maximum(curve - optimum, 1e-6)
        shown = np.where(excess < top, excess, np.nan)  # a diverged run leaves the plot
        if kind == "diverged":
            shown[int(np.argmax(~(excess < top)))] = top  # drawn leaving through the top
        verdict = "best" if rate == best else kind.replace("_", " ")
        by_rate.plot(
            epochs,
            shown,
            color=color,
            lw=3 if rate == best else 1.5,
            ls=":" if kind == "diverged" else "-",
            label=f"lr={rate:g}" + (f" ({verdict})" if verdict else ""),
        )
    by_rate.set_yscale("log")
    by_rate.set_ylim(top=top)
    by_rate.set_xlabel("epochs")
    by_rate.set_ylabel("training MSE above the least-squares optimum")
    by_rate.set_title(
        f"1. learning rate (batch {batch_size}): too small creeps,\n"
        "too large stalls on noise or blows up"
    )
    by_rate.legend(fontsize=8)

    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(batches)))
    for color, (b, curve) in zip(colors, batches.items(), strict=True):
        seen = np.arange(len(curve)) * (n // b) * b
        name = "full batch" if b == n else f"batch {b}"
        by_batch.plot(
            seen,
            np.maximum(curve - optimum, 1e-6),
            "o-",
            ms=2.5,
            color=color,
            lw=1.8,
            label=f"{name}: {(len(curve) - 1) * (n // b)} steps",
        )
    by_batch.set_yscale("log")
    by_batch.set_xlabel("examples seen (the budget)")
    by_batch.set_ylabel("training MSE above the least-squares optimum")
    by_batch.set_title(
        f"2. batch size at lr={best:g} and a fixed budget:\nmany noisy steps, or few exact ones"
    )
    by_batch.legend(fontsize=8)

    k = rates.index(best)
    curve = train_loss[k]
    flat = flat_epoch(curve)
    by_iteration.plot(epochs, curve, color="tab:blue", lw=2, label="training MSE")
    by_iteration.plot(epochs, val[k], color="tab:orange", lw=1.5, label="validation MSE")
    by_iteration.axvline(
        flat, color="tab:red", ls="--", label=f"{FLAT_SHARE:.0%} of the improvement by epoch {flat}"
    )
    by_iteration.axvspan(flat, epochs[-1], color="tab:red", alpha=0.07)
    by_iteration.set_xlabel("epochs")
    by_iteration.set_ylabel("MSE")
    by_iteration.set_title(
        f"3. iterations at lr={best:g}, batch {batch_size}:\n"
        "once the curve is flat, more steps buy little"
    )
    by_iteration.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    epochs: int = 100,
    learning_rates: Sequence[float] = LEARNING_RATES,
    batch_size: int = 32,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    budget_epochs: int = 20,
    seed: int = 0,
    out: str | Path = "out",
) -> dict[str, object]:
    """Runs the three experiments, prints the advice and draws the figure.

    Args:
      epochs: passes over the data for experiments 1 and 3.
      learning_rates: the rates of experiment 1 (increasing).
      batch_size: the batch size of experiments 1 and 3.
      batch_sizes: the batch sizes of experiment 2; 0 means the full batch.
      budget_epochs: experiment 2's budget, in passes over the data.
      seed: picks the split and the shuffling.
      out: the folder for ``tutorial_choosing_hyperparameters.png``.

    Returns:
      ``{"learning_rate": <the sweep, see sweep_learning_rate>,
      "batch_size": {batch: training losses}, "flat_epoch": int,
      "advice": [lines]}``.
    """
    data = common.diabetes(seed=seed)
    n = data.x_train.shape[0]
    key = jax.random.key(seed)
    lr_sweep = sweep_learning_rate(data, learning_rates, batch_size, epochs, key)
    best = float(lr_sweep["best"])  # type: ignore[arg-type]
    sizes = [n if b == 0 else b for b in batch_sizes]
    batches = sweep_batch_size(data, sizes, best, budget_epochs, key)
    train_curve = np.asarray(lr_sweep["train"])[list(learning_rates).index(best)]
    lines = advice(lr_sweep, batches, n, batch_size, budget_epochs)
    print("\n".join(lines))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tutorial_choosing_hyperparameters.png"
    plot(lr_sweep, batches, n, batch_size, least_squares_loss(data), path)
    print(f"wrote {path}")
    return {
        "learning_rate": lr_sweep,
        "batch_size": batches,
        "flat_epoch": flat_epoch(train_curve),
        "advice": lines,
    }


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Choosing the learning rate, batch and steps.")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (default 100)")
    parser.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        default=list(LEARNING_RATES),
        help="rates to compare, increasing",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="(default 32)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES), help="0: full batch"
    )
    parser.add_argument(
        "--budget-epochs", type=int, default=20, help="batch-size budget (default 20)"
    )
    parser.add_argument("--seed", type=int, default=0, help="split and shuffling seed")
    parser.add_argument("--out", default="out", help="folder for the figure (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(
        args.epochs,
        args.learning_rates,
        args.batch_size,
        args.batch_sizes,
        args.budget_epochs,
        args.seed,
        args.out,
    )
