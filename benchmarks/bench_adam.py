"""Adam and AdamW step cost: gradchain beside Optax, in the same process.

Two parameter trees of float32 (by default 10M parameters in all): one leaf,
and 1000 equal leaves. For each tree, optimizer (``adam``, ``adamw``) and
library, the jitted step ``update`` + ``apply_updates`` is measured twice:

* first call: a fresh ``jax.jit`` of a fresh closure, timed from the call to
  ``block_until_ready`` of its result, so trace, lowering, compilation and
  the first execution; the median over ``--compile-rounds`` fresh jits.
* step: the median over ``--rounds`` further calls of the last of those
  compiled steps, with parameters and optimizer state donated, each call
  timed to ``block_until_ready``: no compilation in the timed region.

The two libraries run interleaved (first-call rounds and step rounds
alternate which library goes first), so machine noise lands on both. Both
start from the same parameters and gradients, and their first updates are
checked to agree before timing. The report gives the absolute medians and
the ratio gradchain / Optax: lower is better for gradchain, 1.0 is a tie.

Optax 0.2.8 does not trace under ``jax_numpy_dtype_promotion="strict"`` (it
raises a TypePromotionError); when the ambient mode is strict its steps are
traced under ``"standard"``, which changes no compiled arithmetic here.

Run ``python benchmarks/bench_adam.py`` (about 2 minutes on 2 CPU cores), or
``--quick`` for a seconds-long smoke run at tiny sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import gradchain

LIBRARIES: dict[str, Any] = {"gradchain": gradchain, "optax": optax}
OPTIMIZERS = ("adam", "adamw")
Tree = Any
Step = Callable[[Tree, Any, Tree], tuple[Tree, Any]]


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the report.

    Attributes:
      optimizer: ``"adam"`` or ``"adamw"``.
      tree: a description of the parameter tree.
      metric: ``"first call"`` or ``"step"``.
      gradchain_s: gradchain's median time, in seconds.
      optax_s: Optax's median time, in seconds.
      round_ratios: the quartiles (25%, 50%, 75%) of the per-round ratios
        gradchain / Optax, each from two runs made back to back.
    """

    optimizer: str
    tree: str
    metric: str
    gradchain_s: float
    optax_s: float
    round_ratios: tuple[float, float, float]

    @classmethod
    def from_times(
        cls, optimizer: str, tree: str, metric: str, times: dict[str, list[float]]
    ) -> Row:
        """Summarises paired timings.

        Args:
          optimizer: ``"adam"`` or ``"adamw"``.
          tree: a description of the parameter tree.
          metric: ``"first call"`` or ``"step"``.
          times: seconds by library, one entry per round, rounds in the same order.

        Returns:
          The row.
        """
        g, o = times["gradchain"], times["optax"]
        ratios = [a / b for a, b in zip(g, o, strict=True)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        quartiles = (q[0], statistics.median(ratios), q[2])
        return cls(optimizer, tree, metric, statistics.median(g), statistics.median(o), quartiles)

    @property
    def ratio(self) -> float:
        """The ratio of the medians, gradchain / Optax: below 1, gradchain is faster."""
        return self.gradchain_s / self.optax_s


def optax_needs_standard_promotion() -> bool:
    """Whether Optax's Adam fails to trace under the ambient dtype promotion mode.

    Returns:
      True if an Optax ``adamw`` update raises a TypePromotionError as is.
    """
    tx = optax.adamw(1e-3)
    params = jnp.ones(2, jnp.float32)
    try:
        jax.eval_shape(lambda p: tx.update(p, tx.init(p), p), params)
    except jax.dtypes.TypePromotionError:
        return True
    return False


def promotion(library: str, standard_for_optax: bool) -> contextlib.AbstractContextManager[Any]:
    """The dtype promotion context a library's code is traced under.

    Args:
      library: ``"gradchain"`` or ``"optax"``.
      standard_for_optax: whether Optax needs ``"standard"`` promotion.

    Returns:
      A context manager.
    """
    if library == "optax" and standard_for_optax:
        return jax.numpy_dtype_promotion("standard")
    return contextlib.nullcontext()


def make_tree(size: int, leaves: int, seed: int) -> Tree:
    """A float32 tree of ``size`` normal values: one array, or a dict of ``leaves`` arrays.

    Args:
      size: the total number of elements.
      leaves: the number of leaves; the first takes the remainder of the split.
      seed: the PRNG seed.

    Returns:
      An array when ``leaves == 1``, else ``{"leaf_0000": ..., ...}``.
    """
    key = jax.random.key(seed)
    if leaves == 1:
        return jax.random.normal(key, (size,), jnp.float32)
    base, extra = divmod(size, leaves)
    keys = jax.random.split(key, leaves)
    return {
        f"leaf_{i:04d}": jax.random.normal(k, (base + (extra if i == 0 else 0),), jnp.float32)
        for i, k in enumerate(keys)
    }


def make_optimizer(library: str, name: str) -> Any:
    """The same optimizer from either library.

    Args:
      library: ``"gradchain"`` or ``"optax"``.
      name: ``"adam"`` or ``"adamw"``.

    Returns:
      A gradient transformation.
    """
    lib = LIBRARIES[library]
    if name == "adam":
        return lib.adam(1e-3)
    return lib.adamw(1e-3, weight_decay=1e-4)


def make_step(library: str, tx: Any, standard_for_optax: bool) -> Step:
    """A fresh jitted ``update`` + ``apply_updates``, donating params and state.

    Each call builds a new closure, so its first call traces and compiles anew.

    Args:
      library: ``"gradchain"`` or ``"optax"``.
      tx: that library's optimizer, built once.
      standard_for_optax: whether Optax needs ``"standard"`` promotion.

    Returns:
      ``step(params, state, grads) -> (params, state)``.
    """
    apply_updates = LIBRARIES[library].apply_updates

    def step(params: Tree, state: Any, grads: Tree) -> tuple[Tree, Any]:
        with promotion(library, standard_for_optax):
            updates, state = tx.update(grads, state, params)
            return apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def fresh_state(library: str, tx: Any, params: Tree, standard_for_optax: bool) -> tuple[Tree, Any]:
    """A private copy of ``params`` and a new optimizer state, on device and ready.

    Args:
      library: ``"gradchain"`` or ``"optax"``.
      tx: the optimizer.
      params: the starting parameters (not donated; copied).
      standard_for_optax: whether Optax needs ``"standard"`` promotion.

    Returns:
      ``(params, state)``, safe to donate.
    """
    params = jax.tree.map(jnp.copy, params)
    with promotion(library, standard_for_optax):
        state = tx.init(params)
    return jax.block_until_ready((params, state))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Runs ``fn`` and waits for its result.

    Args:
      fn: a function returning arrays.

    Returns:
      ``(seconds, result)``.
    """
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def alternating(rounds: int) -> Iterator[tuple[str, str]]:
    """The library order of each round: gradchain first on even rounds, Optax on odd.

    Args:
      rounds: the number of rounds.

    Yields:
      A pair of library names per round.
    """
    for r in range(rounds):
        yield ("gradchain", "optax") if r % 2 == 0 else ("optax", "gradchain")


def max_abs_diff(a: Tree, b: Tree) -> float:
    """The largest elementwise difference between two trees of one structure.

    Args:
      a: a tree of arrays.
      b: a tree of arrays of the same structure.

    Returns:
      ``max |a - b|`` over all leaves.
    """
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))
    return float(max(diffs))


def bench_case(
    optimizer: str,
    params: Tree,
    grads: Tree,
    rounds: int,
    compile_rounds: int,
    standard_for_optax: bool,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Times one optimizer on one tree in both libraries.

    Args:
      optimizer: ``"adam"`` or ``"adamw"``.
      params: the starting parameters.
      grads: the gradients fed at every step.
      rounds: step rounds.
      compile_rounds: first-call rounds (fresh jits).
      standard_for_optax: whether Optax needs ``"standard"`` promotion.

    Returns:
      The first-call and the step times, in seconds, by library, one per round.

    Raises:
      AssertionError: if the two libraries' first updates disagree.
    """
    txs = {lib: make_optimizer(lib, optimizer) for lib in LIBRARIES}
    first: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    steps: dict[str, Step] = {}
    carry: dict[str, tuple[Tree, Any]] = {}
    for order in alternating(compile_rounds):
        for lib in order:
            p, s = fresh_state(lib, txs[lib], params, standard_for_optax)
            steps[lib] = make_step(lib, txs[lib], standard_for_optax)
            seconds, carry[lib] = timed(lambda lib=lib, p=p, s=s: steps[lib](p, s, grads))
            first[lib].append(seconds)
    # The last fresh jits, compiled and one step in, go on to the timed steps.
    diff = max_abs_diff(carry["gradchain"][0], carry["optax"][0])
    assert diff < 1e-6, f"{optimizer}: gradchain and Optax disagree after one step by {diff}"

    step_times: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    for order in alternating(rounds):
        for lib in order:
            p, s = carry[lib]
            seconds, carry[lib] = timed(lambda lib=lib, p=p, s=s: steps[lib](p, s, grads))
            step_times[lib].append(seconds)
    return first, step_times


def run(size: int, leaves: Sequence[int], rounds: int, compile_rounds: int) -> list[Row]:
    """Benchmarks every optimizer on every tree.

    Args:
      size: parameters per tree.
      leaves: the leaf counts of the trees.
      rounds: step rounds per case.
      compile_rounds: first-call rounds per case.

    Returns:
      Two rows (first call, step) per optimizer and tree.
    """
    standard_for_optax = optax_needs_standard_promotion()
    rows = []
    for count in leaves:
        params = make_tree(size, count, seed=0)
        grads = make_tree(size, count, seed=1)
        tree = f"{count} leaf" if count == 1 else f"{count} leaves"
        for optimizer in OPTIMIZERS:
            first, step = bench_case(
                optimizer, params, grads, rounds, compile_rounds, standard_for_optax
            )
            rows.append(Row.from_times(optimizer, tree, "first call", first))
            rows.append(Row.from_times(optimizer, tree, "step", step))
        del params, grads
    return rows


def _seconds(t: float) -> str:
    return f"{t:.3f} s" if t >= 1 else f"{t * 1e3:.2f} ms"


def format_report(rows: Sequence[Row], size: int, rounds: int, compile_rounds: int) -> str:
    """The header and the table of medians and ratios, as Markdown.

    Args:
      rows: the results.
      size: parameters per tree.
      rounds: step rounds per case.
      compile_rounds: first-call rounds per case.

    Returns:
      The report.
    """
    device = jax.devices()[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = (
        f"{datetime.date.today()}, JAX {jax.__version__}, Optax {optax.__version__}, "
        f"gradchain {gradchain.__version__}, {device.platform} ({os.cpu_count()} cores, "
        f"load average {load} at the end); {size:,} float32 parameters per tree; "
        f"medians of {compile_rounds} first calls and {rounds} steps.\n"
    )
    lines = [
        header,
        "| optimizer | tree | metric | gradchain | Optax | gradchain / Optax "
        "| per-round ratio, quartiles |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        q1, q2, q3 = r.round_ratios
        lines.append(
            f"| {r.optimizer} | {r.tree} | {r.metric} | {_seconds(r.gradchain_s)} "
            f"| {_seconds(r.optax_s)} | {r.ratio:.2f} | {q1:.2f} / {q2:.2f} / {q3:.2f} |"
        )
    return "\n".join(lines)


def main(
    size: int = 10_000_000,
    leaves: Sequence[int] = (1, 1000),
    rounds: int = 50,
    compile_rounds: int = 3,
    quick: bool = False,
) -> list[Row]:
    """Runs the benchmark and prints the report.

    Args:
      size: parameters per tree.
      leaves: the leaf counts of the trees.
      rounds: step rounds per case.
      compile_rounds: first-call rounds per case.
      quick: a smoke run instead: 10,000 parameters, 1 and 10 leaves, 5
        rounds, 1 first call (the other arguments are ignored).

    Returns:
      The rows of the report.
    """
    if quick:
        size, leaves, rounds, compile_rounds = 10_000, (1, 10), 5, 1
    rows = run(size, leaves, rounds, compile_rounds)
    print(format_report(rows, size, rounds, compile_rounds))
    return rows


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Adam and AdamW step cost: gradchain beside Optax, as ratios."
    )
    parser.add_argument("--size", type=int, default=10_000_000, help="parameters per tree")
    parser.add_argument(
        "--leaves", type=int, nargs="+", default=[1, 1000], help="leaf counts (default 1 1000)"
    )
    parser.add_argument("--rounds", type=int, default=50, help="step rounds (default 50)")
    parser.add_argument(
        "--compile-rounds", type=int, default=3, help="first-call rounds (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.size, tuple(args.leaves), args.rounds, args.compile_rounds, args.quick)
