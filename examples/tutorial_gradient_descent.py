r"""Gradient descent on f(x) = x**2: what the learning rate does, step by step.

The tutorials this project grew from start here: minimise ``f(x) = x**2``
from ``x0 = 10`` with ``x <- x - lr * f'(x)``. Since ``f'(x) = 2 x``, one step
multiplies ``x`` by the same factor every time::

    x_{t+1} = x_t - lr * 2 x_t = (1 - 2 lr) x_t,   so   x_t = (1 - 2 lr)**t * x0.

Everything about the learning rate on this function follows from that factor:

* ``0 < lr < 0.5``: the factor is in (0, 1); ``x`` shrinks towards 0 from one
  side. A tiny rate (0.01, factor 0.98) crawls; 0.1 (the tutorial's) is good.
* ``lr = 0.5``: the factor is 0 and one step lands on the minimum. It is
  ``1 / f''(x)``, Newton's step; on a real loss nobody knows it exactly.
* ``0.5 < lr < 1``: the factor is in (-1, 0); ``x`` overshoots the minimum and
  zig-zags across it, but still converges.
* ``lr = 1``: the factor is -1; ``x`` jumps between +10 and -10 for ever.
* ``lr > 1``: the factor's magnitude exceeds 1 and ``x`` diverges, a bigger
  overshoot every step.

So ``0 < lr < 1`` converges and ``2 / f''`` (here 1) is the edge of stability;
for a loss with many directions the largest curvature sets that edge.

The script runs ``gc.sgd(lr)`` in a hand-rolled loop (the gradient from
``jax.grad``, one jitted step), prints the iterates next to the closed form,
and draws ``|x_t|`` against ``t`` on a log scale, where a constant factor per
step is a straight line: its slope is ``log |1 - 2 lr|``. Run it with::

    python examples/tutorial_gradient_descent.py --steps 30

Things to try: ``--learning-rates 0.5`` (one step to the minimum; on the log
plot the curve drops out of sight), ``--learning-rates 0.49 0.51`` (the same
speed, from either side), ``--learning-rates 0.999 1.001`` (just inside and
just outside the stable range).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import gradchain as gc

#: The learning rates of the lesson: slow, good, fast, zig-zag, oscillating, diverging.
LEARNING_RATES = (0.01, 0.1, 0.3, 0.9, 1.0, 1.1)


def f(x: jax.Array) -> jax.Array:
    """The loss ``x**2``: its minimum is 0 at ``x = 0``, its curvature ``f'' = 2``."""
    return x**2


def regime(learning_rate: float) -> str:
    """Names what gradient descent on ``x**2`` does at this learning rate.

    Args:
      learning_rate: the step size, > 0.

    Returns:
      One of "slow", "converges", "one step", "zig-zags in", "oscillates", "diverges".
    """
    factor = 1.0 - 2.0 * learning_rate
    if factor == 0.0:
        return "one step"
    if factor == -1.0:
        return "oscillates"
    if abs(factor) > 1.0:
        return "diverges"
    if factor < 0.0:
        return "zig-zags in"
    return "slow" if factor > 0.9 else "converges"


def closed_form(learning_rate: float, x0: float, steps: int) -> np.ndarray:
    """The exact iterates ``x_t = (1 - 2 lr)**t * x0`` for ``t = 0..steps``, in float64.

    Args:
      learning_rate: the step size.
      x0: the starting point.
      steps: the number of updates.

    Returns:
      float64[steps + 1].
    """
    return (1.0 - 2.0 * learning_rate) ** np.arange(steps + 1) * x0


def descend(learning_rate: float, x0: float, steps: int) -> np.ndarray:
    """Runs ``gc.sgd(learning_rate)`` on ``f`` from ``x0`` in a plain Python loop.

    Args:
      learning_rate: the step size.
      x0: the starting point.
      steps: the number of updates.

    Returns:
      float32[steps + 1]: ``x_0, x_1, ..., x_steps``.
    """
    tx = gc.sgd(learning_rate)  # built once, closed over by the jitted step

    # The optimizer state's buffers are donated: XLA updates them in place. The iterate is
    # not, since the list below keeps every one of them.
    @functools.partial(jax.jit, donate_argnums=1)
    def step(x: jax.Array, state: gc.OptState) -> tuple[jax.Array, gc.OptState]:
        grad = jax.grad(f)(x)  # 2 x
        updates, state = tx.update(grad, state, x)  # -lr * 2 x
        return gc.apply_updates(x, updates), state

    x = jnp.asarray(x0, jnp.float32)
    state = tx.init(x)
    iterates = [x]
    for _ in range(steps):
        x, state = step(x, state)
        iterates.append(x)
    return np.asarray(jnp.stack(iterates))


def relative_error(iterates: np.ndarray, exact: np.ndarray) -> float:
    """The largest ``|x_t - exact_t| / |exact_t|`` (absolute error where ``exact_t == 0``).

    Args:
      iterates: the computed ``x_t``.
      exact: the closed form, same length.

    Returns:
      A number >= 0; float32 arithmetic keeps it near ``t * 6e-8``.
    """
    exact = np.asarray(exact, np.float64)
    error = np.abs(np.asarray(iterates, np.float64) - exact)
    return float(np.max(error / np.where(exact == 0.0, 1.0, np.abs(exact))))


def format_iterates(
    iterates: dict[float, np.ndarray], x0: float, shown: Sequence[int] = (0, 1, 2, 3, 4, 5)
) -> str:
    """A table of the first and the last iterates, one column per learning rate.

    Args:
      iterates: ``x_t`` by learning rate.
      x0: the starting point (for the closed-form row).
      shown: the steps to list before the last one.

    Returns:
      The table as text, with the largest deviation from the closed form last.
    """
    rates = list(iterates)
    last = len(next(iter(iterates.values()))) - 1
    rows = [t for t in shown if t < last] + [last]
    header = f"{'t':>4} " + " ".join(f"{'lr=' + format(lr, 'g'):>11}" for lr in rates)
    lines = [header, " " * 5 + " ".join(f"{regime(lr):>11}" for lr in rates), "-" * len(header)]
    for t in rows:
        lines.append(f"{t:>4} " + " ".join(f"{iterates[lr][t]:>11.4g}" for lr in rates))
    deviation = [relative_error(iterates[lr], closed_form(lr, x0, last)) for lr in rates]
    lines.append("largest relative deviation from the closed form (1 - 2 lr)^t x0:")
    lines.append(" " * 5 + " ".join(f"{d:>11.1e}" for d in deviation))
    return "\n".join(lines)


#: A colour per regime, so the legend reads as the lesson.
COLORS = {
    "slow": "tab:gray",
    "converges": "tab:green",
    "one step": "tab:cyan",
    "zig-zags in": "tab:blue",
    "oscillates": "tab:orange",
    "diverges": "tab:red",
}


def plot(iterates: dict[float, np.ndarray], x0: float, path: Path) -> None:
    """Draws ``|x_t|`` against ``t`` (log scale) and the first steps on the parabola.

    Args:
      iterates: ``x_t`` by learning rate.
      x0: the starting point.
      path: the PNG to write.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    steps = len(next(iter(iterates.values()))) - 1
    t = np.arange(steps + 1)
    shades: dict[str, int] = {}
    color_of, style_of = {}, {}
    for lr in iterates:
        name = regime(lr)
        shade = shades[name] = shades.get(name, -1) + 1  # darker for a second rate
        rgb = np.asarray(matplotlib.colors.to_rgb(COLORS[name]))
        color_of[lr] = tuple(rgb * 0.6**shade)
        style_of[lr] = "--" if 1 - 2 * lr < 0 else "-"  # sign flips: dashed
    for lr, xs in iterates.items():
        twins = [o for o in iterates if o < lr and np.isclose(abs(1 - 2 * o), abs(1 - 2 * lr))]
        twin = f", on top of lr={twins[0]:g}" if twins else ""
        magnitude = np.abs(xs.astype(np.float64))
        left.plot(
            t,
            np.where(magnitude > 0, magnitude, np.nan),  # x_t = 0 has no place on a log axis
            style_of[lr],
            marker="o",
            ms=3,
            color=color_of[lr],
            label=f"lr={lr:g}: {regime(lr)} (factor 1 - 2 lr = {1 - 2 * lr:+.2f}{twin})",
        )
        left.plot(t, np.abs(closed_form(lr, x0, steps)), ":", color="black", lw=0.8)
    left.plot([], [], ":", color="black", lw=0.8, label="closed form |1 - 2 lr|^t |x0|")
    left.set_yscale("log")
    left.set_xlabel("step t")
    left.set_ylabel("|x_t|  (distance to the minimum at 0)")
    left.set_title("|x_t| against t: each rate is a straight line, slope log|1 - 2 lr|")
    left.legend(fontsize=8, title="dashed: x_t changes sign each step", title_fontsize=8)

    # The first steps drawn on the loss itself: where each learning rate jumps to.
    reach = 1.6 * abs(x0)
    grid = np.linspace(-reach, reach, 200)
    right.plot(grid, grid**2, color="lightgray", lw=4, label="f(x) = x**2", zorder=0)
    right.annotate("x0", (x0, x0**2), textcoords="offset points", xytext=(6, -4), fontsize=9)
    for lr in iterates:
        if regime(lr) == "slow":
            continue  # its steps are too short to see here
        xs = iterates[lr][:5].astype(np.float64)
        xs = xs[: np.argmax(np.abs(xs) > reach)] if np.any(np.abs(xs) > reach) else xs
        right.plot(
            xs,
            xs**2,
            style_of[lr],
            marker="o",
            color=color_of[lr],
            lw=1.2,
            label=f"lr={lr:g}: steps 0-{len(xs) - 1}",
        )
    right.set_xlabel("x")
    right.set_ylabel("f(x)")
    right.set_title("the first steps on the loss: short, overshooting, bouncing, escaping")
    right.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    steps: int = 30,
    learning_rates: Sequence[float] = LEARNING_RATES,
    x0: float = 10.0,
    out: str | Path = "out",
) -> dict[float, np.ndarray]:
    """Runs gradient descent for each learning rate, prints the iterates, draws the figure.

    Args:
      steps: updates per learning rate.
      learning_rates: the step sizes to compare, each > 0.
      x0: the starting point.
      out: the folder for ``tutorial_gradient_descent.png``.

    Returns:
      The iterates ``x_0..x_steps`` (float32) by learning rate.
    """
    iterates = {float(lr): descend(float(lr), x0, steps) for lr in learning_rates}
    print(format_iterates(iterates, x0))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tutorial_gradient_descent.png"
    plot(iterates, x0, path)
    print(f"wrote {path}")
    return iterates


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gradient descent on x**2, rate by rate.")
    parser.add_argument("--steps", type=int, default=30, help="updates (default 30)")
    parser.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        default=list(LEARNING_RATES),
        help=f"step sizes (default {' '.join(map(str, LEARNING_RATES))})",
    )
    parser.add_argument("--x0", type=float, default=10.0, help="starting point (default 10)")
    parser.add_argument("--out", default="out", help="folder for the figure (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.steps, args.learning_rates, args.x0, args.out)
