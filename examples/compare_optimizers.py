r"""Six optimizers, two Flax NNX models: the losses side by side in a table and a figure.

This is the first thing to run::

    python -m pip install -e ".[examples]" && python examples/compare_optimizers.py

It trains two small models on data that ships with scikit-learn (no download):

* a linear regressor (``common.LinearRegressor``) on the diabetes data,
  mean squared error (MSE), standardised so that predicting the mean scores
  about 1.0 and least squares 0.45 to 0.47 on the training split;
* a multi-layer perceptron (``common.MLP``, one hidden layer of 64) on the
  8x8 digits, softmax cross-entropy, judged by validation accuracy (chance is
  10%),

each with the optimizers the field starts from, all built from gradchain:

=================  =========================================================
GD (full batch)    ``gc.sgd(lr)``, every step on the whole training split
SGD                ``gc.sgd(lr)`` on shuffled mini-batches
SGD + momentum     ``gc.sgd(lr, momentum=0.9)``
RMSprop            ``gc.rmsprop(lr)``
Adam               ``gc.adam(lr)``
AdamW + schedule   ``gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(schedule,
                   weight_decay=1e-4))``, ``schedule`` a
                   ``gc.warmup_cosine_decay_schedule(0.0, lr, steps // 20,
                   steps)``: 5% warmup, then a cosine down to 0
=================  =========================================================

Every optimizer takes the same number of steps (``--steps``). All but the
first see mini-batches of ``--batch-size`` rows, reshuffled every epoch from
an explicit key (epoch ``e`` is a ``jax.random.permutation`` under
``jax.random.fold_in(key, e)``, its last partial batch dropped), so an SGD
step is much cheaper than a GD step but noisier.

It prints a table (final training loss on the whole training split,
validation MSE or accuracy, steps per second without compilation, wall time
with it) and writes one figure, ``compare_optimizers.png`` under ``--out``
(``out/`` at the repository root by default), one panel per model. What to
look for in it:

* Diabetes (the training MSE above the least-squares optimum, so that curves
  within 0.1% of each other come apart): full-batch GD converges linearly, a
  straight line on the log scale. Every mini-batch method stalls at a noise
  floor, about 1e-3 above the optimum, set by its learning rate and batch
  size; only AdamW, whose schedule takes its rate to zero, gets under it.
* Digits (training loss solid, validation loss dotted): the training losses
  keep falling, to 1e-4 for Adam, while the validation losses flatten out
  between 0.01 and 0.04 by step 1000. Past that point the MLP
  memorises its training set; the accuracies in the legend barely move.
* The table's steps per second: a full-batch GD step on digits reads 45 times
  more rows than a mini-batch step and costs as much as 10 to 40 of them
  (2 CPU cores), which is why SGD exists.

Learning rates. Each optimizer has its own rate per model (``LEARNING_RATES``),
picked at the defaults (2000 steps, batch 32) from the grid 1e-4, 3e-4, 1e-3,
..., 1, 3: a sweep of the whole grid with seed 0, then of the best rates'
neighbours with seeds 0, 1 and 2, keeping the rate with the best mean over
the three seeds (a rate that diverged on any seed is out). "Best" is the
lowest final training MSE on diabetes (what the figure shows; a linear model
barely overfits) and the lowest validation cross-entropy on digits (an MLP can
memorise its 1438 training images, so its training loss alone rewards rates
on the edge of divergence). Plain gradient steps follow the loss's curvature:
0.1 is just below GD's stability limit on diabetes (0.3 diverges), 1.0 on the
digits MLP. Adaptive steps are set by the rate almost alone, so theirs are
small (3e-3 to 0.1). The ``--learning-rate`` flag *overrides* them all with one
value, an experiment in itself: ``--learning-rate 0.01`` puts SGD and Adam on
equal terms and shows why they are never tuned alike.

How it is made fast. Flax users write ``nnx.Optimizer(model, tx,
wrt=nnx.Param)`` and ``optimizer.update(model, grads)``; this script does too,
but inside Flax's functional API: ``nnx.split`` once into a graph definition
and a state (a pytree of arrays), then one ``jax.jit``-compiled function
(compiled ahead of time, so compilation is timed apart) that ``nnx.merge``-s
the state in a ``jax.lax.scan`` over a chunk of steps, updates, and returns
the new state, its input buffers donated. Only the first chunk waits for the
compiler; the progress bar and the curves are refreshed after each chunk
(``steps / 100`` steps). Measured on 2 CPU cores for the digits MLP with
Adam, 1000 steps (steps per second, compile excluded):

============================================  ==========
``jax.lax.scan`` over ``nnx.split`` state      ~10,000
``nnx.scan`` inside ``nnx.jit``                ~6,700
``jax.jit`` per step over ``nnx.split`` state  ~3,000
``nnx.cached_partial`` of an ``nnx.jit`` step  ~2,400
``nnx.jit`` per step (the tutorial loop)       ~830
============================================  ==========

The first is what this script does. At these sizes a step costs micro-seconds
and compilation dominates the wall time (about 0.6 s per optimizer).

Things to try:

* ``--learning-rate 0.01``: one rate for all. On digits GD and SGD crawl (a
  training loss of 0.34 after 2000 steps) where RMSprop and Adam reach 1e-3.
* ``--batch-size 8`` against ``--batch-size 256``: noisier or smoother SGD
  curves (GD is the limit of a batch as large as the data).
* ``--steps 200`` against ``--steps 10000``: who is quick off the mark and who
  gets there in the end; the AdamW schedule stretches to fit.
* ``--seed 1``: another split, another initialisation, another shuffle.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import gradchain as gc

#: The default output folder: ``out/`` at the repository root (git-ignored).
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "out"
#: The optimizers, in table order.
OPTIMIZERS = ("GD (full batch)", "SGD", "SGD + momentum", "RMSprop", "Adam", "AdamW + schedule")
#: Each model's learning rate per optimizer, tuned at the defaults (see the module docstring).
LEARNING_RATES = {
    "diabetes": {
        "GD (full batch)": 0.1,
        "SGD": 0.01,
        "SGD + momentum": 0.003,
        "RMSprop": 0.003,
        "Adam": 0.01,
        "AdamW + schedule": 0.1,
    },
    "digits": {
        "GD (full batch)": 1.0,
        "SGD": 1.0,
        "SGD + momentum": 0.1,
        "RMSprop": 0.003,
        "Adam": 0.03,
        "AdamW + schedule": 0.03,
    },
}
#: The progress bar and the curves are refreshed this many times per run.
CURVE_POINTS = 100

Evaluation = tuple[jax.Array, jax.Array, jax.Array]  # (train loss, val loss, val metric)


@dataclasses.dataclass(frozen=True)
class Task:
    """A model, its data and how it is judged.

    Attributes:
      name: ``"diabetes"`` or ``"digits"``.
      data: the training and validation splits.
      make_model: builds a freshly initialised Flax NNX model.
      loss: ``loss(model, x, y)``, the scalar to minimise.
      metric: ``metric(model, x, y)``, what the validation column reports.
      metric_name: how the table and the figure label ``metric``.
      optimum: the lowest training loss the model can reach, where it is known
        (least squares, for the linear regressor), else None.
    """

    name: str
    data: common.Split
    make_model: Callable[[nnx.Rngs], nnx.Module]
    loss: Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]
    metric: Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]
    metric_name: str
    optimum: float | None = None

    def evaluate(self, model: nnx.Module, data: common.Split) -> Evaluation:
        """Training loss, validation loss and validation metric of ``model``."""
        return (
            self.loss(model, data.x_train, data.y_train),
            self.loss(model, data.x_val, data.y_val),
            self.metric(model, data.x_val, data.y_val),
        )


@dataclasses.dataclass(frozen=True)
class Run:
    """What one optimizer did on one model.

    Attributes:
      model: the task's name.
      optimizer: the optimizer's name (one of ``OPTIMIZERS``).
      learning_rate: its (peak) learning rate.
      train_loss: the final loss on the whole training split.
      val_loss: the final loss on the validation split.
      val_metric: the final validation MSE (diabetes) or accuracy (digits).
      metric_name: ``"MSE"`` or ``"accuracy"``, of the validation split.
      batch_size: rows per step (the whole training split for full-batch GD).
      optimum: the task's lowest reachable training loss, where known, else None.
      steps_per_second: optimizer steps per second, compilation excluded.
      compile_seconds: time spent compiling.
      wall_seconds: the whole run: building, compiling, training.
      steps: int64[points], the steps at which the curves were taken (0 first).
      train_curve: float64[points], the training loss at ``steps``.
      val_curve: float64[points], the validation loss at ``steps``.
    """

    model: str
    optimizer: str
    learning_rate: float
    train_loss: float
    val_loss: float
    val_metric: float
    metric_name: str
    batch_size: int
    optimum: float | None
    steps_per_second: float
    compile_seconds: float
    wall_seconds: float
    steps: np.ndarray
    train_curve: np.ndarray
    val_curve: np.ndarray


def _mse(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def _cross_entropy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return common.cross_entropy(model(x), y)


def _accuracy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return common.accuracy(model(x), y)


def least_squares_mse(data: common.Split) -> float:
    """The training MSE of the least-squares fit (float64): no linear model does better."""
    x = np.c_[np.asarray(data.x_train, np.float64), np.ones(data.x_train.shape[0])]
    y = np.asarray(data.y_train, np.float64)
    solution, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(np.mean((x @ solution - y) ** 2))


def make_tasks(seed: int) -> list[Task]:
    """The diabetes regression and the digits classification, split by ``seed``."""
    diabetes = common.diabetes(seed)
    return [
        Task(
            "diabetes",
            diabetes,
            lambda rngs: common.LinearRegressor(10, rngs=rngs),
            _mse,
            _mse,
            "MSE",
            optimum=least_squares_mse(diabetes),
        ),
        Task(
            "digits",
            common.digits(seed),
            lambda rngs: common.MLP(rngs=rngs),
            _cross_entropy,
            _accuracy,
            "accuracy",
        ),
    ]


def make_optimizer(
    name: str, learning_rate: float, steps: int
) -> gc.GradientTransformationExtraArgs:
    """Builds one optimizer of the table, once.

    Args:
      name: one of ``OPTIMIZERS``.
      learning_rate: the learning rate (AdamW: the schedule's peak).
      steps: the length of training, which the AdamW schedule spans.

    Returns:
      The transformation.
    """
    lr = learning_rate
    if name in ("GD (full batch)", "SGD"):
        return gc.sgd(lr)
    if name == "SGD + momentum":
        return gc.sgd(lr, momentum=0.9)
    if name == "RMSprop":
        return gc.rmsprop(lr)
    if name == "Adam":
        return gc.adam(lr)
    if name == "AdamW + schedule":
        # 5% linear warmup from 0, then a cosine down to 0 at the last step.
        schedule = gc.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps)
        return gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(schedule, weight_decay=1e-4))
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def batch_rows(key: jax.Array, num_examples: int, batch_size: int, steps: int) -> jax.Array:
    """The training rows of every mini-batch: a fresh permutation each epoch.

    Args:
      key: drives the shuffling; epoch ``e`` uses ``jax.random.fold_in(key, e)``.
      num_examples: the size of the training split.
      batch_size: rows per step; the last partial batch of an epoch is dropped.
      steps: the number of mini-batches wanted.

    Returns:
      int32[steps, batch_size] row indices.

    Raises:
      ValueError: if ``batch_size`` is not in ``[1, num_examples]``.
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be in [1, {num_examples}]; got {batch_size}.")
    per_epoch = num_examples // batch_size
    epochs = -(-steps // per_epoch)

    def epoch(e: jax.Array) -> jax.Array:
        order = jax.random.permutation(jax.random.fold_in(key, e), num_examples)
        return order[: per_epoch * batch_size].reshape(per_epoch, batch_size)

    rows = jax.vmap(epoch)(jnp.arange(epochs))
    return rows.reshape(epochs * per_epoch, batch_size)[:steps].astype(jnp.int32)


def train(
    task: Task,
    optimizer: str,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    bar: tqdm | None = None,
) -> Run:
    """Trains a fresh model of ``task`` with one optimizer and records its curves.

    Args:
      task: the model and data.
      optimizer: one of ``OPTIMIZERS``.
      steps: optimizer steps, >= 1.
      batch_size: rows per mini-batch (ignored by full-batch GD).
      learning_rate: the optimizer's (peak) learning rate.
      seed: initialises the model and shuffles the mini-batches.
      bar: a progress bar to advance by one per step, or None.

    Returns:
      The run's numbers and curves.
    """
    start = time.perf_counter()
    data = task.data
    model = task.make_model(nnx.Rngs(seed))
    tx = make_optimizer(optimizer, learning_rate, steps)
    # Flax annotates `tx` as Optax's class; gradchain's has the same fields and methods.
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)  # pyright: ignore[reportArgumentType]
    initial = task.evaluate(model, data)  # at step 0, before the buffers are donated
    graphdef, state = nnx.split((model, opt))
    full_batch = optimizer == "GD (full batch)"

    def step(state: nnx.State, rows: jax.Array | None, data: common.Split) -> nnx.State:
        model, opt = nnx.merge(graphdef, state)
        x, y = (
            (data.x_train, data.y_train)
            if rows is None
            else (data.x_train[rows], data.y_train[rows])
        )
        grads = nnx.grad(task.loss)(model, x, y)
        opt.update(model, grads)
        return nnx.state((model, opt))

    def chunk(
        state: nnx.State, rows: jax.Array, data: common.Split
    ) -> tuple[nnx.State, Evaluation]:
        # rows: int32[k, batch]; full-batch GD passes int32[k, 0] and ignores it.
        def body(state: nnx.State, rows: jax.Array) -> tuple[nnx.State, None]:
            return step(state, None if full_batch else rows, data), None

        state, _ = jax.lax.scan(body, state, rows)
        model, _ = nnx.merge(graphdef, state)
        return state, task.evaluate(model, data)

    if full_batch:
        rows = jnp.zeros((steps, 0), jnp.int32)
    else:
        rows = batch_rows(jax.random.key(seed), data.x_train.shape[0], batch_size, steps)
    size = -(-steps // CURVE_POINTS)  # steps per chunk
    bounds = [*range(0, steps, size), steps]
    jitted = jax.jit(chunk, donate_argnums=0)
    compile_start = time.perf_counter()
    compiled = {
        k: jitted.lower(state, rows[:k], data).compile()
        for k in sorted({b - a for a, b in itertools.pairwise(bounds)})
    }
    compile_seconds = time.perf_counter() - compile_start
    run_start = time.perf_counter()
    evaluations = []
    for a, b in itertools.pairwise(bounds):
        state, evaluation = compiled[b - a](state, rows[a:b], data)
        evaluations.append(evaluation)
        if bar is not None and not bar.disable:
            bar.update(b - a)
            bar.set_postfix(loss=f"{float(evaluation[0]):.4f}", refresh=False)
    jax.block_until_ready(state)
    run_seconds = time.perf_counter() - run_start
    nnx.update((model, opt), state)  # the Python objects now hold the trained values

    curves = np.asarray(jax.device_get([initial, *evaluations]), np.float64)  # [points, 3]
    return Run(
        model=task.name,
        optimizer=optimizer,
        learning_rate=learning_rate,
        train_loss=float(curves[-1, 0]),
        val_loss=float(curves[-1, 1]),
        val_metric=float(curves[-1, 2]),
        metric_name=task.metric_name,
        batch_size=data.x_train.shape[0] if full_batch else batch_size,
        optimum=task.optimum,
        steps_per_second=steps / run_seconds,
        compile_seconds=compile_seconds,
        wall_seconds=time.perf_counter() - start,
        steps=np.asarray(bounds, np.int64),
        train_curve=curves[:, 0],
        val_curve=curves[:, 1],
    )


def run_all(
    tasks: Sequence[Task],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float | None,
    seed: int,
    progress: bool,
) -> dict[str, dict[str, Run]]:
    """Trains every optimizer on every task, one progress bar per task.

    Args:
      tasks: the models and data.
      steps: optimizer steps per run.
      batch_size: rows per mini-batch.
      learning_rate: one rate for every optimizer, or None for ``LEARNING_RATES``.
      seed: initialises the models and shuffles the mini-batches.
      progress: whether to show progress bars (never when stderr is not a terminal).

    Returns:
      ``results[task][optimizer]``.
    """
    results: dict[str, dict[str, Run]] = {}
    for task in tasks:
        # disable=None: tqdm stays silent when stderr is not a terminal (logs, tests).
        with tqdm(
            total=steps * len(OPTIMIZERS),
            disable=None if progress else True,
            unit="step",
            dynamic_ncols=True,
        ) as bar:
            results[task.name] = {}
            for name in OPTIMIZERS:
                bar.set_description(f"{task.name}: {name}")
                lr = LEARNING_RATES[task.name][name] if learning_rate is None else learning_rate
                results[task.name][name] = train(
                    task,
                    name,
                    steps=steps,
                    batch_size=batch_size,
                    learning_rate=lr,
                    seed=seed,
                    bar=bar,
                )
            bar.set_description(task.name)
    return results


def format_metric(run: Run) -> str:
    """``"accuracy 97.5%"`` or ``"MSE 0.5123"``."""
    if run.metric_name == "accuracy":
        return f"accuracy {run.val_metric:.1%}"
    return f"{run.metric_name} {run.val_metric:.4f}"


def format_table(results: dict[str, dict[str, Run]]) -> str:
    """Renders one row per model and optimizer.

    Args:
      results: ``results[task][optimizer]`` from :func:`run_all`.

    Returns:
      The table as text, with a note on what the timings include.
    """
    header = (
        f"{'model':<9} {'optimizer':<17} {'lr':>6} {'train loss':>10} {'validation':>15} "
        f"{'steps/s*':>9} {'wall s**':>8}"
    )
    lines = [header, "-" * len(header)]
    for runs in results.values():
        for run in runs.values():
            val = format_metric(run)
            lines.append(
                f"{run.model:<9} {run.optimizer:<17} {run.learning_rate:>6.2g} "
                f"{run.train_loss:>10.4g} {val:>15} {run.steps_per_second:>9,.0f} "
                f"{run.wall_seconds:>8.2f}"
            )
    lines.append("-" * len(header))
    lines.append("train loss: MSE (diabetes) or cross-entropy (digits) on the whole training split")
    lines.append("*  steps per second, compilation excluded")
    lines.append("** wall time of the run: building the model, compiling and training")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Run]], path: Path) -> Path:
    """Writes one panel per model of the training loss per step (log scale).

    Where the model's optimum is known (least squares, for the linear
    regressor), the panel shows the training loss above it, which separates
    curves that would otherwise overlap within 0.1% of it. Elsewhere the
    validation loss is drawn dotted beside the training loss. The legend gives
    each optimizer's learning rate and final validation metric.

    Args:
      results: ``results[task][optimizer]`` from :func:`run_all`.
      path: the PNG to write; its folder is created.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(results), figsize=(14, 5.6), layout="constrained")
    for ax, (name, runs) in zip(np.atleast_1d(axes), results.items(), strict=True):
        optimum = next(iter(runs.values())).optimum
        for i, run in enumerate(runs.values()):
            color = f"C{i}"
            label = f"{run.optimizer}, lr {run.learning_rate:g}: val {format_metric(run)}"
            if optimum is None:
                ax.plot(run.steps, run.train_curve, color=color, lw=1.8, label=label)
                ax.plot(run.steps, run.val_curve, color=color, lw=1.0, ls=":")
            else:  # float32 resolves the loss to about 1e-7
                gap = np.maximum(run.train_curve - optimum, 1e-7)
                ax.plot(run.steps, gap, color=color, lw=1.8, label=label)
        handles, _ = ax.get_legend_handles_labels()
        if optimum is None:
            ax.set_title(f"{name}: MLP, cross-entropy")
            ax.set_ylabel("loss (log scale)")
            handles += [
                Line2D([], [], color="grey", lw=1.8, label="training loss"),
                Line2D([], [], color="grey", lw=1.0, ls=":", label="validation loss"),
            ]
        else:
            ax.set_title(f"{name}: linear regression, MSE (least squares reaches {optimum:.4f})")
            ax.set_ylabel("training MSE minus the least-squares MSE (log scale)")
        ax.set_yscale("log")
        batches = sorted({run.batch_size for run in runs.values()})
        ax.set_xlabel(f"optimizer step (rows per step: {' or '.join(map(str, batches))})")
        ax.set_xlim(0, max(run.steps[-1] for run in runs.values()))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(handles=handles, fontsize=8.5, loc="upper right", framealpha=0.9)
    fig.suptitle("Six gradchain optimizers training Flax NNX models", fontsize=13)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(
    steps: int = 2000,
    batch_size: int = 32,
    learning_rate: float | None = None,
    seed: int = 0,
    out: str | Path = DEFAULT_OUT,
    progress: bool = True,
) -> dict[str, dict[str, Run]]:
    """Trains both models with every optimizer, prints the table, writes the figure.

    Args:
      steps: optimizer steps per run, the same for every optimizer.
      batch_size: rows per mini-batch (every optimizer but full-batch GD).
      learning_rate: one rate for every optimizer, overriding the tuned
        ``LEARNING_RATES``; None keeps them.
      seed: picks the data split, the initialisation and the shuffling.
      out: the folder of the figure.
      progress: show progress bars (only ever on a terminal).

    Returns:
      ``results[model][optimizer]``, a :class:`Run` each.

    Raises:
      ValueError: if ``steps`` is not positive.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}.")
    results = run_all(
        make_tasks(seed),
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
    )
    print(format_table(results))
    path = plot(results, Path(out) / "compare_optimizers.png")
    print(f"wrote {path}")
    return results


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Six optimizers on two Flax NNX models: a table and a figure of losses."
    )
    parser.add_argument("--steps", type=int, default=2000, help="steps per run (default 2000)")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch rows (default 32)")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="one learning rate for every optimizer (default: each one's tuned rate)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split, init and shuffle (default 0)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder of the figure (default: out/)"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bars"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(**vars(_parse_args(sys.argv[1:])))
