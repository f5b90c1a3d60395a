"""K configurations in one vmapped program against K runs one after another.

The digits MLP (64-64-10, plain JAX, cross-entropy) trained with Adam on
mini-batches of 64 for ``--steps`` steps, at K learning rates log-spaced in
[1e-4, 1e-1], the same initial parameters and batches for every run. Three
ways to do the same K runs:

* vmapped: one :func:`gradchain.sweep` over the K rates, one program.
* sequential, compiled once: the best a loop can do, since the learning rate
  is data in the optimizer state: one compilation, then K runs of it. Timed
  as the first single-rate sweep's compilation plus K single-rate run times.
* sequential, compiled per run: what a loop that rebuilds the optimizer with
  a Python float per configuration pays: K compilations and K runs.

Every time is to ``block_until_ready``; "run" excludes compilation, "total"
includes it. Ratios are sequential / vmapped: above 1 the vmapped sweep is
faster. Each measurement is the median of ``--repeats`` (compilation timed
once per program).

Run ``python benchmarks/bench_sweep.py`` (about a minute on 2 CPU cores), or
``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import common

import gradchain as gc


@dataclasses.dataclass(frozen=True)
class Row:
    """One K: seconds for each way, and the ratios sequential / vmapped."""

    k: int
    vmapped_compile: float
    vmapped_run: float
    single_compile: float
    single_run: float
    per_run_compiles: float

    @property
    def run_ratio(self) -> float:
        """K single runs over one vmapped run, compilation excluded."""
        return self.k * self.single_run / self.vmapped_run

    @property
    def total_ratio(self) -> float:
        """One compilation + K single runs over the vmapped compile + run."""
        return (self.single_compile + self.k * self.single_run) / (
            self.vmapped_compile + self.vmapped_run
        )

    @property
    def naive_ratio(self) -> float:
        """K compilations + K runs over the vmapped compile + run."""
        return (self.per_run_compiles + self.k * self.single_run) / (
            self.vmapped_compile + self.vmapped_run
        )


def _problem(steps: int, batch_size: int) -> tuple:
    split = common.digits()
    n = split.x_train.shape[0]
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    keys = jax.random.split(jax.random.key(0), epochs)
    order = jax.vmap(lambda k: jax.random.permutation(k, n)[: per_epoch * batch_size])(keys)
    order = order.reshape(-1, batch_size)[:steps]
    batches = (split.x_train[order], split.y_train[order])

    def loss_fn(params: common.MlpParams, batch: tuple) -> jax.Array:
        return common.cross_entropy(common.mlp_logits(params, batch[0]), batch[1])

    return loss_fn, common.init_mlp(jax.random.key(1)), batches


def measure(k: int, steps: int, repeats: int, batch_size: int = 64) -> Row:
    """Times the three ways for one K.

    Args:
      k: the number of configurations.
      steps: updates per run.
      repeats: runs per measurement (the median is kept).
      batch_size: examples per step.

    Returns:
      The Row.
    """
    loss_fn, params, batches = _problem(steps, batch_size)
    rates = np.geomspace(1e-4, 1e-1, k)
    tx = gc.adam(1e-3)

    def go(values: Sequence[float]) -> gc.SweepResult:
        return gc.sweep(tx, loss_fn, params, {"learning_rate": values}, batches=batches)

    vmapped = [go(rates) for _ in range(repeats)]
    singles = [go(rates[i : i + 1]) for i in range(k)]
    # Each single sweep compiles its own program: K compilations, as a naive loop.
    # The same work: the first steps agree to float rounding (later, training
    # amplifies one-ulp differences between batched and unbatched matmuls).
    for a, b in zip(vmapped[0].losses[:, 0], (s.losses[0, 0] for s in singles), strict=True):
        np.testing.assert_allclose(a[:10], b[:10], rtol=1e-4)
    run_times = [s.run_seconds for s in singles] + [
        go(rates[:1]).run_seconds for _ in range(repeats - 1)
    ]
    return Row(
        k=k,
        vmapped_compile=vmapped[0].compile_seconds,
        vmapped_run=statistics.median(r.run_seconds for r in vmapped),
        single_compile=singles[0].compile_seconds,
        single_run=statistics.median(run_times),
        per_run_compiles=sum(s.compile_seconds for s in singles),
    )


def report(rows: Sequence[Row], steps: int) -> str:
    """The rows as a Markdown table."""
    lines = [
        f"digits MLP, Adam, {steps} steps of batch 64, {jax.devices()[0].platform}",
        "",
        "| K | vmapped compile s | vmapped run s | single compile s | single run s "
        "| run ratio | total ratio (1 compile) | total ratio (K compiles) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.k} | {r.vmapped_compile:.2f} | {r.vmapped_run:.3f} | {r.single_compile:.2f} "
            f"| {r.single_run:.4f} | {r.run_ratio:.2f} | {r.total_ratio:.2f} "
            f"| {r.naive_ratio:.2f} |"
        )
    return "\n".join(lines)


def main(
    ks: Sequence[int] = (8, 32), steps: int = 500, repeats: int = 3, quick: bool = False
) -> list[Row]:
    """Measures every K and prints the table.

    Args:
      ks: the numbers of configurations.
      steps: updates per run.
      repeats: runs per measurement.
      quick: tiny sizes, for a smoke test.

    Returns:
      One Row per K.
    """
    if quick:
        ks, steps, repeats = (2,), 5, 1
    rows = [measure(k, steps, repeats) for k in ks]
    print(report(rows, steps))
    return rows


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.ks, args.steps, args.repeats, args.quick)
