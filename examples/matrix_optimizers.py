r"""Matrix optimizers side by side: AdamW, Muon, SOAP, Shampoo and Scion on the digits MLP.

Run it with::

    python examples/matrix_optimizers.py

It trains the plain-JAX MLP of ``common.init_mlp`` with sizes (64, 128, 128,
10) on the 8x8 digits (1438 training images, 359 for validation; chance is
10%) with each optimizer below, for the same steps on the same shuffled
mini-batches from the same initialisation. A weight matrix :math:`W` (in x
out) gets a gradient :math:`G`; what each optimizer makes of it:

=========================  ===================================================
AdamW                      every entry alone: momentum over the root of its own
                           squared-gradient average, plus decoupled weight decay
                           (Kingma and Ba 2015; Loshchilov and Hutter 2019).
Muon                       the whole matrix: Nesterov momentum :math:`M=U\Sigma
                           V^T` replaced by :math:`UV^T` (Newton-Schulz), so every
                           direction moves at one rate (Jordan et al. 2024).
SOAP                       Adam in a rotated basis: the eigenvectors of
                           Shampoo's :math:`L=\sum GG^T, R=\sum G^TG`, refreshed
                           every 10 steps (Vyas et al. 2024).
SOAP (matrices only)       the same SOAP on the matrices, put there by
                           ``gc.matrix_partition``; the biases go to AdamW.
Shampoo                    :math:`L^{-1/4} M R^{-1/4}`, a Kronecker-factored
                           full-matrix AdaGrad, its size grafted from Adam's step
                           (Gupta et al. 2018; Anil et al. 2020).
Scion                      the momentum's direction of steepest descent in the
                           spectral norm (:math:`UV^T`, scaled), and the weights
                           shrunk into that ball (Pethick et al. 2025).
=========================  ===================================================

Muon is Shampoo without memory: with :math:`L=GG^T` and :math:`R=G^TG` from
one gradient, :math:`L^{-1/4} G R^{-1/4} = UV^T`. Vectors (the biases) are
not matrices: Muon hands them to AdamW (its own routing, printed first as
``gc.matrix_routing`` shows it), SOAP and Shampoo give them plain Adam, Scion
their sign. "SOAP (matrices only)" shows that the router behind ``gc.muon``
takes any matrix optimizer::

    gc.matrix_partition(
        gc.chain(gc.scale_by_soap(), gc.add_decayed_weights(0.01),
                 gc.scale_by_learning_rate(lr)),
        gc.adamw(adamw_lr))

Muon and "SOAP (matrices only)" give their biases to AdamW at AdamW's own
learning rate, so only the rate of their matrices is searched.

Learning rates (``LEARNING_RATES``) come from a small measured search, which
``--search`` reruns: each optimizer trains at the defaults (1000 steps,
batch 64) with every rate of ``GRID`` (1e-4, 3e-4, ..., 0.3, 1) and seeds 0,
1 and 2, and keeps the rate whose final validation cross-entropy, averaged
over the seeds, is lowest (a run that diverged on any seed is out). The
cross-entropy and not the accuracy, because 359 validation images tie many
rates on accuracy and a tiny training loss is reached by memorising. Every
hyperparameter of a gradchain optimizer lives in its state, so the search
compiles each optimizer once and sets the rate with ``gc.set_hyperparams``.
The search as measured (mean validation cross-entropy, best starred)::

    rate                   1e-4    3e-4    1e-3    3e-3    1e-2    3e-2     0.1
    AdamW                 0.197   0.071   0.032   0.023*  0.025   0.073   0.616
    Muon                  1.811   1.256   0.159   0.022*  0.131   0.533  10.247
    SOAP                  1.736   0.473   0.016*  0.018   0.050   0.149   1.198
    SOAP (matrices only)  1.496   0.377   0.016   0.017   0.008*  0.226   1.687
    Shampoo               0.172   0.052   0.024   0.020   0.019*  0.315   0.771
    Scion (radius 10)     0.488   0.044   0.014*  0.024   0.142   1.232   3.189

(0.3 and 1 diverge or stall for all.) Scion's radius was picked beforehand from
1, 3, 10 and 30 the same way (with ``gc.sweep``): at radius 1 the output
layer's ball is too small to fit the labels (validation loss 1.9 at best),
10 and 30 tie (0.011 and 0.010).

It prints a table (final training loss on the whole training split,
validation accuracy, steps per second with compilation excluded, compile
time) and writes ``matrix_optimizers.png`` under ``--out`` (``out/`` at the
repository root by default): the training loss (log scale) and the
validation accuracy against the step. What to look for (seed 0, defaults):
at their searched rates Shampoo and SOAP on the matrices (rate 0.01) take the
training loss down fastest, to 1e-4 and 1e-8; Muon and SOAP, whose best rates
for the validation loss are small, start slowest, and Muon still passes AdamW
by step 850; the validation accuracies end within a point of each other
(98.9-100%), because this MLP memorises its training set whichever way it gets
there. The step costs differ more: SOAP and Shampoo compute eigenbases or
inverse roots every ten steps, several times AdamW's time per step on a CPU.

How it is made fast: per optimizer, one ``jax.jit`` function runs a chunk of
steps as a ``jax.lax.scan`` and evaluates at its end, its parameter and state
buffers donated, compiled ahead of time (so compilation is timed apart).

Things to try:

* ``--steps 3000``: who keeps improving, and who only memorises faster.
* ``--batch-size 16`` or ``--batch-size 512``: the matrix methods' lead at
  large batches (less noise to precondition against).
* ``--search``: rerun the search (a few minutes on 2 cores) and train with its rates.
* Send the output layer to AdamW too: ``exclude="2/w"`` in
  ``gc.matrix_partition`` and ``gc.matrix_routing`` (print the routing to
  see it move).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

import gradchain as gc

#: The default output folder: ``out/`` at the repository root (git-ignored).
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "out"
#: The MLP's layer sizes: 64 pixels, two hidden layers of 128, 10 classes.
SIZES = (64, 128, 128, 10)
#: The optimizers, in table order.
OPTIMIZERS = ("AdamW", "Muon", "SOAP", "SOAP (matrices only)", "Shampoo", "Scion")
#: The learning rates searched, half a decade apart.
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
#: Each optimizer's rate, from the search at the defaults (see the module docstring).
LEARNING_RATES = {
    "AdamW": 3e-3,
    "Muon": 3e-3,
    "SOAP": 1e-3,
    "SOAP (matrices only)": 1e-2,
    "Shampoo": 1e-2,
    "Scion": 1e-3,
}
#: Scion's radius: the norm ball each layer's weights are kept in (searched with the rate).
SCION_RADIUS = 10.0
#: The name under which ``gc.get_hyperparams`` finds each optimizer's searched rate.
RATE_NAMES = {
    "AdamW": "learning_rate",
    "Muon": "muon/learning_rate",
    "SOAP": "learning_rate",
    "SOAP (matrices only)": "matrix/learning_rate",
    "Shampoo": "learning_rate",
    "Scion": "learning_rate",
}
#: The curves get this many points (one per compiled chunk of steps).
CURVE_POINTS = 50

Params = common.MlpParams
Evaluation = tuple[jax.Array, jax.Array, jax.Array]  # train loss, val loss, val accuracy


@dataclasses.dataclass(frozen=True)
class Run:
    """What one optimizer did.

    Attributes:
      optimizer: its name (one of ``OPTIMIZERS``).
      learning_rate: its (matrix) learning rate.
      train_loss: the final cross-entropy on the whole training split.
      val_loss: the final cross-entropy on the validation split.
      val_accuracy: the final validation accuracy.
      steps_per_second: optimizer steps per second (the evaluations after each
        chunk included), compilation excluded.
      compile_seconds: time spent compiling the training function.
      steps: int64[points], the steps at which the curves were taken (0 first).
      train_curve: float64[points], the training loss at ``steps``.
      accuracy_curve: float64[points], the validation accuracy at ``steps``.
    """

    optimizer: str
    learning_rate: float
    train_loss: float
    val_loss: float
    val_accuracy: float
    steps_per_second: float
    compile_seconds: float
    steps: np.ndarray
    train_curve: np.ndarray
    accuracy_curve: np.ndarray


def make_optimizer(
    name: str, learning_rate: float, adamw_rate: float = LEARNING_RATES["AdamW"]
) -> gc.GradientTransformationExtraArgs:
    """Builds one optimizer of the table.

    Args:
      name: one of ``OPTIMIZERS``.
      learning_rate: its learning rate (of the matrices, for Muon and SOAP on
        matrices only).
      adamw_rate: the learning rate of the AdamW that Muon and "SOAP (matrices
        only)" give the biases.

    Returns:
      The transformation; its rate is ``RATE_NAMES[name]`` in its state.

    Raises:
      ValueError: for an unknown name.
    """
    if name == "AdamW":
        return gc.adamw(learning_rate)
    if name == "Muon":  # its own routing: 2-D leaves to Muon, the rest to AdamW
        return gc.muon(learning_rate, adam_learning_rate=adamw_rate)
    if name == "SOAP":
        return gc.soap(learning_rate)
    if name == "SOAP (matrices only)":  # the router takes any matrix optimizer
        return gc.matrix_partition(
            gc.chain(
                gc.scale_by_soap(),
                gc.add_decayed_weights(0.01),
                gc.scale_by_learning_rate(learning_rate),
            ),
            gc.adamw(adamw_rate),
        )
    if name == "Shampoo":
        return gc.shampoo(learning_rate)
    if name == "Scion":
        return gc.scion(learning_rate, radius=SCION_RADIUS)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def _loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return common.cross_entropy(common.mlp_logits(params, x), y)


def _evaluate(params: Params, data: common.Split) -> Evaluation:
    val_logits = common.mlp_logits(params, data.x_val)
    return (
        _loss(params, data.x_train, data.y_train),
        common.cross_entropy(val_logits, data.y_val),
        common.accuracy(val_logits, data.y_val),
    )


class Trainer:
    """One optimizer's training loop, compiled once, run from any learning rate.

    The steps are cut into chunks (``steps / CURVE_POINTS`` steps each, the last
    one ragged), each a ``jax.lax.scan`` followed by an evaluation, in one
    ahead-of-time compiled function per chunk length whose parameter and state
    buffers are donated.

    Args:
      name: one of ``OPTIMIZERS``.
      data: the digits split.
      steps: optimizer steps per run.
      batch_size: rows per mini-batch.
    """

    def __init__(self, name: str, data: common.Split, steps: int, batch_size: int):
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}.")
        self.name, self.data, self.steps, self.batch_size = name, data, steps, batch_size
        self.tx = make_optimizer(name, LEARNING_RATES[name])
        size = -(-steps // CURVE_POINTS)
        self.bounds = [*range(0, steps, size), steps]
        tx = self.tx

        def chunk(
            params: Params, state: Any, xs: jax.Array, ys: jax.Array, data: common.Split
        ) -> tuple[Params, Any, Evaluation]:
            def step(carry: tuple[Params, Any], batch: tuple[jax.Array, jax.Array]) -> Any:
                params, state = carry
                grads = jax.grad(_loss)(params, *batch)
                updates, state = tx.update(grads, state, params)
                return (gc.apply_updates(params, updates), state), None

            (params, state), _ = jax.lax.scan(step, (params, state), (xs, ys))
            return params, state, _evaluate(params, data)

        params = jax.eval_shape(lambda k: common.init_mlp(k, SIZES), jax.random.key(0))
        state = jax.eval_shape(tx.init, params)
        jitted = jax.jit(chunk, donate_argnums=(0, 1))

        def compile_for(k: int) -> Any:
            xs = jax.ShapeDtypeStruct((k, batch_size, SIZES[0]), jnp.float32)
            ys = jax.ShapeDtypeStruct((k, batch_size), jnp.int32)
            return jitted.lower(params, state, xs, ys, data).compile()

        start = time.perf_counter()
        self.compiled = {
            k: compile_for(k) for k in sorted({b - a for a, b in itertools.pairwise(self.bounds)})
        }
        self.compile_seconds = time.perf_counter() - start

    def start(self, seed: int) -> tuple[Params, tuple[jax.Array, jax.Array]]:
        """The initial parameters and mini-batches of ``seed``, the same for every optimizer."""
        init_key, data_key = jax.random.split(jax.random.key(seed))
        params = common.init_mlp(init_key, SIZES)
        batches = common.shuffled_batches(
            data_key, self.data.x_train, self.data.y_train, self.batch_size, self.steps
        )
        return params, batches

    def run(self, learning_rate: float, seed: int) -> Run:
        """Trains from ``seed``'s initialisation with ``learning_rate`` set in the state."""
        params, (xs, ys) = self.start(seed)
        state = gc.set_hyperparams(self.tx.init(params), {RATE_NAMES[self.name]: learning_rate})
        evaluations = [jax.jit(_evaluate)(params, self.data)]
        start = time.perf_counter()
        for a, b in itertools.pairwise(self.bounds):
            params, state, evaluation = self.compiled[b - a](
                params, state, xs[a:b], ys[a:b], self.data
            )
            evaluations.append(evaluation)
        jax.block_until_ready((params, state))
        seconds = time.perf_counter() - start
        train, val, acc = (np.asarray(x, np.float64) for x in zip(*evaluations, strict=True))
        return Run(
            optimizer=self.name,
            learning_rate=learning_rate,
            train_loss=float(train[-1]),
            val_loss=float(val[-1]),
            val_accuracy=float(acc[-1]),
            steps_per_second=self.steps / seconds,
            compile_seconds=self.compile_seconds,
            steps=np.asarray(self.bounds, np.int64),
            train_curve=train,
            accuracy_curve=acc,
        )


def search_learning_rates(
    trainers: dict[str, Trainer], grid: Sequence[float] = GRID, seeds: Sequence[int] = (0, 1, 2)
) -> dict[str, dict[float, float]]:
    """The mean final validation cross-entropy of every rate of ``grid`` (inf: diverged).

    Args:
      trainers: the compiled training loops, by optimizer.
      grid: the learning rates to try.
      seeds: the seeds each rate is trained with.

    Returns:
      ``scores[optimizer][rate]``; pick each optimizer's lowest.
    """
    scores: dict[str, dict[float, float]] = {}
    for name, trainer in trainers.items():
        scores[name] = {}
        for lr in grid:
            losses = [trainer.run(lr, seed).val_loss for seed in seeds]
            finite = all(np.isfinite(losses))
            scores[name][lr] = float(np.mean(losses)) if finite else float("inf")
    return scores


def format_search(scores: dict[str, dict[float, float]]) -> str:
    """The search as a table: one row per optimizer, one column per rate, the best starred."""
    rates = sorted({lr for row in scores.values() for lr in row})
    lines = [f"{'validation loss':<21}" + "".join(f"{lr:>8g}" for lr in rates)]
    for name, row in scores.items():
        best = min(row, key=row.__getitem__)
        cells = [
            f"{row[lr]:>7.3f}{'*' if lr == best else ' '}" if lr in row else " " * 8 for lr in rates
        ]
        lines.append(f"{name:<21}" + "".join(cells))
    return "\n".join(lines)


def format_table(runs: dict[str, Run]) -> str:
    """Renders one row per optimizer, with a note on what the timings include."""
    header = (
        f"{'optimizer':<21} {'lr':>6} {'train loss':>10} {'val accuracy':>12} "
        f"{'steps/s*':>9} {'compile s':>9}"
    )
    lines = [header, "-" * len(header)]
    for run in runs.values():
        lines.append(
            f"{run.optimizer:<21} {run.learning_rate:>6.2g} {run.train_loss:>10.4g} "
            f"{run.val_accuracy:>12.1%} {run.steps_per_second:>9,.0f} {run.compile_seconds:>9.2f}"
        )
    lines.append("-" * len(header))
    lines.append("train loss: cross-entropy on the whole training split after the last step")
    lines.append("*  steps per second, compilation excluded (evaluations included)")
    return "\n".join(lines)


def plot(runs: dict[str, Run], path: Path, batch_size: int) -> Path:
    """Writes the training loss (log scale) and the validation accuracy against the step.

    Args:
      runs: the runs by optimizer, from :func:`main`.
      path: the PNG to write; its folder is created.
      batch_size: rows per step, for the axis label.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
    for i, run in enumerate(runs.values()):
        style = {"color": f"C{i}", "lw": 1.8, "ls": "--" if "only" in run.optimizer else "-"}
        label = f"{run.optimizer}, lr {run.learning_rate:g}"
        loss_ax.plot(run.steps, run.train_curve, label=label, **style)
        acc_ax.plot(
            run.steps, run.accuracy_curve, label=f"{label}: {run.val_accuracy:.1%}", **style
        )
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training cross-entropy, whole training split (log scale)")
    loss_ax.set_title("Training loss")
    acc_ax.set_ylabel("validation accuracy")
    acc_ax.set_ylim(0.8, 1.0)
    acc_ax.set_title("Validation accuracy (chance: 10%; the axis starts at 80%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel(f"optimizer step ({batch_size} images per step)")
        ax.set_xlim(0, max(run.steps[-1] for run in runs.values()))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=9, loc="upper right" if ax is loss_ax else "lower right")
    fig.suptitle(f"Matrix optimizers on the digits MLP {SIZES}", fontsize=13)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(
    steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    out: str | Path = DEFAULT_OUT,
    search: bool = False,
    optimizers: Sequence[str] = OPTIMIZERS,
) -> dict[str, Run]:
    """Prints the routing, trains every optimizer, prints the table, writes the figure.

    Args:
      steps: optimizer steps, the same for every optimizer.
      batch_size: images per mini-batch.
      seed: picks the data split, the initialisation and the shuffling.
      out: the folder of the figure.
      search: rerun the learning-rate search (seeds 0, 1, 2 over ``GRID``)
        first, print it, and train with its rates.
      optimizers: which of ``OPTIMIZERS`` to run.

    Returns:
      The :class:`Run` of each optimizer, by name.
    """
    data = common.digits(seed)
    params = jax.eval_shape(lambda k: common.init_mlp(k, SIZES), jax.random.key(0))
    print("Muon's routing (gc.matrix_routing; the same for SOAP on matrices only):")
    print(gc.matrix_routing(params))
    print()
    # SOAP's eigendecompositions call LAPACK; at 128 x 128 its threads only get in each
    # other's way, and on a busy machine they spin (measured: a QR 0.6 ms alone, 150 ms so).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        trainers = {name: Trainer(name, data, steps, batch_size) for name in optimizers}
        rates = {name: LEARNING_RATES[name] for name in optimizers}
        if search:
            scores = search_learning_rates(trainers)
            print(format_search(scores))
            print()
            rates = {name: min(row, key=row.__getitem__) for name, row in scores.items()}
        runs = {name: trainer.run(rates[name], seed) for name, trainer in trainers.items()}
    print(format_table(runs))
    path = plot(runs, Path(out) / "matrix_optimizers.png", batch_size)
    print(f"wrote {path}")
    return runs


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="AdamW, Muon, SOAP, Shampoo and Scion on the digits MLP: a table and a figure."
    )
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch rows (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="split, init and shuffle (default 0)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder of the figure (default: out/)"
    )
    parser.add_argument(
        "--search", action="store_true", help="rerun the learning-rate search first"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(**vars(_parse_args(sys.argv[1:])))
