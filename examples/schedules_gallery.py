r"""A gallery of every schedule gradchain exports, one small panel each.

A schedule is a function from the step (an int32 count of updates) to a
number, usually a learning rate: pass it where a number would go, as in
``gc.adam(gc.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000))``, and the
optimizer evaluates it at every update (``gc.get_hyperparams(state)`` shows
the current value). This script draws each public schedule factory of
gradchain over its steps, titled with the very call that made it, so the
figure doubles as a cheat sheet: find the shape you want, copy the title.

The last panels show the schedule-like helpers users meet:

* ``gc.WrappedSchedule(schedule)``: the same values, as a stateful schedule
  (``init``/``update``/``__call__``) for ``gc.inject_stateful_hyperparams``;
* ``gc.reduce_on_plateau(...)``: not a function of the step but of the loss.
  Its scale (which multiplies the updates) is drawn for a made-up loss that
  improves and then plateaus, so each drop comes ``patience`` steps into a
  plateau.

``gc.inject_hyperparams`` and ``gc.scale_by_schedule`` take schedules but are
not schedules, so they are not drawn. Run it with::

    python examples/schedules_gallery.py

Things to try: change an entry of :func:`gallery` (say the ``exponent`` of
``cosine_decay_schedule``) and rerun; ``--steps 200`` to see the first steps
of every schedule up close.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import gradchain as gc


class Call:
    """A schedule and the source text of the call that made it.

    ``Call("linear_schedule", 1.0, 0.0, 100)`` calls ``gc.linear_schedule(1.0,
    0.0, 100)`` and remembers ``"linear_schedule(1.0, 0.0, 100)"``; a Call
    passed as an argument to another Call prints as its own source text, so
    nested calls (``join_schedules``) read as written.

    Attributes:
      name: the factory's name in ``gradchain``.
      arguments: the positional and keyword arguments' values.
      schedule: what the factory returned.
      source: the call, as text.
    """

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.arguments = [*args, *kwargs.values()]
        self.schedule = getattr(gc, name)(*_unwrap(args), **_unwrap(kwargs))
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        self.source = f"{name}({', '.join(parts)})"

    def __repr__(self) -> str:
        return self.source


def _unwrap(value: Any) -> Any:
    """Replaces every Call inside lists, tuples and dicts by its schedule."""
    if isinstance(value, Call):
        return value.schedule
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_unwrap(v) for v in value)
    return value


def gallery(steps: int = 1000) -> list[Call]:
    """One call of every public schedule factory, with arguments that show its shape.

    Args:
      steps: the length of the x axis; the calls scale to it (to at least 100).

    Returns:
      The calls, in the order of the panels.
    """
    s = max(steps, 100)  # the calls divide it; keep every step count >= 1
    return [
        Call("constant_schedule", 0.5),
        Call("linear_schedule", 1.0, 0.1, s // 2, transition_begin=s // 4),
        Call("polynomial_schedule", 1.0, 0.0, 2.0, s),
        Call("exponential_decay", 1.0, s // 10, 0.7),
        Call("exponential_decay", 1.0, s // 10, 0.7, staircase=True),
        Call("inverse_time_decay_schedule", 1.0, 2.0, s // 10),
        Call("inverse_sqrt_decay_schedule", 1.0, 1.0, s // 100),
        Call("cosine_decay_schedule", 1.0, s, alpha=0.1),
        Call("piecewise_constant_schedule", 1.0, {s // 4: 0.5, s // 2: 0.5, 3 * s // 4: 0.2}),
        Call(
            "piecewise_interpolate_schedule",
            "cosine",
            1.0,
            {s // 4: 0.5, s // 2: 2.0, 3 * s // 4: 0.1},
        ),
        Call("warmup_constant_schedule", 0.0, 1.0, s // 10),
        Call("warmup_cosine_decay_schedule", 0.0, 1.0, s // 10, s),
        Call("warmup_exponential_decay_schedule", 0.0, 1.0, s // 10, s // 10, 0.6),
        Call("warmup_stable_decay_schedule", 1.0, s, s // 10, decay_fraction=0.2),
        Call("cosine_onecycle_schedule", s, 1.0),
        Call("linear_onecycle_schedule", s, 1.0),
        Call("cyclic_schedule", 0.1, 1.0, s // 8),
        Call("cyclic_schedule", 0.1, 1.0, s // 8, mode="triangular2"),
        Call(
            "sgdr_schedule",
            [
                {
                    "init_value": 0.0,
                    "peak_value": 1.0,
                    "warmup_steps": s // 20,
                    "decay_steps": 2 * s // 5,
                },
                {
                    "init_value": 0.0,
                    "peak_value": 0.6,
                    "warmup_steps": s // 20,
                    "decay_steps": 3 * s // 5,
                },
            ],
        ),
        Call(
            "join_schedules",
            [
                Call("linear_schedule", 0.0, 1.0, s // 5),
                Call("cosine_decay_schedule", 1.0, 4 * s // 5),
            ],
            [s // 5],
        ),
    ]


def schedule_names(calls: Sequence[Call]) -> set[str]:
    """The names of the gradchain factories in ``calls``, nested calls included."""
    names: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, Call):
            names.add(value.name)
            visit(value.arguments)
        elif isinstance(value, dict):
            visit(list(value.values()))
        elif isinstance(value, list | tuple):
            for v in value:
                visit(v)

    visit(list(calls))
    return names


def evaluate(schedule: Callable[[jax.Array], Any], steps: int) -> np.ndarray:
    """The schedule at steps ``0..steps - 1``, as float64."""
    return np.asarray(jax.vmap(schedule)(jnp.arange(steps, dtype=jnp.int32)), np.float64)


def wrapped_schedule_values(steps: int) -> tuple[str, np.ndarray]:
    """``WrappedSchedule`` stepped through ``init``/``update``/``__call__``."""
    inner = Call("cosine_decay_schedule", 1.0, steps)
    wrapped = gc.WrappedSchedule(inner.schedule)

    def step(state: Any, _: None) -> tuple[Any, jax.Array]:
        return wrapped.update(state), wrapped(state)

    _, values = jax.lax.scan(step, wrapped.init(), None, length=steps)
    return f"WrappedSchedule({inner.source})", np.asarray(values, np.float64)


def plateau_losses(steps: int) -> np.ndarray:
    """A made-up loss: it falls, plateaus, falls again, plateaus again (values in (0, 1])."""
    t = np.arange(steps) / steps
    falling = np.clip(t / 0.3, 0.0, 1.0) * 0.4 + np.clip((t - 0.6) / 0.1, 0.0, 1.0) * 0.3
    return (1.0 - falling).astype(np.float32)


def reduce_on_plateau_values(steps: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The scale of ``reduce_on_plateau`` driven by :func:`plateau_losses`."""
    patience = max(1, steps // 10)
    source = f"reduce_on_plateau(factor=0.5, patience={patience})"
    tx = gc.reduce_on_plateau(factor=0.5, patience=patience)
    losses = plateau_losses(steps)
    params = jnp.zeros([], jnp.float32)

    def step(state: Any, loss: jax.Array) -> tuple[Any, jax.Array]:
        _, state = tx.update(params, state, params, value=loss)
        return state, state.scale

    _, scales = jax.lax.scan(step, tx.init(params), jnp.asarray(losses))
    return source, np.asarray(scales, np.float64), losses.astype(np.float64)


def plot(
    panels: list[tuple[str, np.ndarray]], extra: tuple[str, np.ndarray, np.ndarray], path: Path
) -> None:
    """Draws one small panel per schedule, then the plateau helper with its loss.

    Args:
      panels: (title, values) per schedule.
      extra: the reduce_on_plateau title, scales and the loss that drove them.
      path: the PNG to write.
    """
    count = len(panels) + 1
    columns = 4
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows))
    flat = axes.ravel()
    for axis, (title, values) in zip(flat, panels, strict=False):
        axis.plot(np.arange(len(values)), values, color="tab:blue", lw=1.6)
        axis.set_title(_wrap(title), fontsize=9, family="monospace")
        axis.set_ylim(bottom=min(0.0, values.min()) - 0.05, top=max(values.max(), 1.0) * 1.08)
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=7)
    axis = flat[len(panels)]
    title, scales, losses = extra
    axis.plot(np.arange(len(scales)), scales, color="tab:blue", lw=1.6, label="scale")
    axis.plot(
        np.arange(len(losses)),
        losses,
        color="tab:gray",
        lw=1,
        ls="--",
        label="the loss passed as value=",
    )
    axis.set_ylim(bottom=-0.05, top=1.08)
    axis.set_title(_wrap(title), fontsize=9, family="monospace")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    axis.tick_params(labelsize=7)
    for axis in flat[count:]:
        axis.set_visible(False)
    for axis in flat[:count]:
        axis.set_xlabel("step", fontsize=7)
    fig.suptitle(
        "gradchain schedules: value against step, titled with the call that made it", fontsize=12
    )
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _wrap(text: str, width: int = 50) -> str:
    """Breaks a call's text after commas so that it fits over a small panel."""
    lines, line = [], ""
    for piece in text.split(", "):
        candidate = f"{line}, {piece}" if line else piece
        if len(candidate) > width and line:
            lines.append(line + ",")
            line = piece
        else:
            line = candidate
    return "\n".join([*lines, line])


def main(steps: int = 1000, out: str | Path = "out") -> dict[str, np.ndarray]:
    """Evaluates every schedule of the gallery, prints a summary and draws the figure.

    Args:
      steps: how many steps each schedule is drawn over.
      out: the folder for ``schedules_gallery.png``.

    Returns:
      The values over ``0..steps - 1`` by panel title (the call's text).
    """
    panels = [(call.source, evaluate(call.schedule, steps)) for call in gallery(steps)]
    panels.append(wrapped_schedule_values(steps))
    extra = reduce_on_plateau_values(steps)
    for title, values in [*panels, extra[:2]]:
        print(f"{values[0]:>8.4f} -> {values[-1]:>8.4f}  (max {values.max():.4f})  {title}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "schedules_gallery.png"
    plot(panels, extra, path)
    print(f"wrote {path}")
    return {title: values for title, values in [*panels, extra[:2]]}


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Every gradchain schedule, one panel each.")
    parser.add_argument("--steps", type=int, default=1000, help="x-axis length (default 1000)")
    parser.add_argument("--out", default="out", help="folder for the figure (default out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.steps, args.out)
