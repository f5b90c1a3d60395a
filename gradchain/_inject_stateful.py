"""inject_stateful_hyperparams: Optax's API for hyperparameters that follow stateful schedules.

A stateful schedule is an object with ``init() -> state``,
``update(state, **extra_args) -> state`` and
``__call__(state, **extra_args) -> value``: its value may depend on anything
the training loop passes to ``update`` as keyword arguments (a loss, a
validation metric), not only on the step. :class:`WrappedSchedule` turns an
ordinary schedule of the step into one.

As in :func:`inject_hyperparams`, the values are stored in float32 (or
``hyperparam_dtype``), never cast to the parameters' dtype, and the inner
transformation is rebuilt from them on every update.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Schedule,
    Updates,
    call_update,
)
from gradchain._hyperparams import injected_state
from gradchain._wrappers import _sync_hparams


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule with a state of its own (see the module docstring)."""

    def init(self) -> Any:
        """The schedule's state before the first update."""
        ...

    def update(self, state: Any, **extra_args: Any) -> Any:
        """The state after an update."""
        ...

    def __call__(self, state: Any, **extra_args: Any) -> Any:
        """The hyperparameter's value for the update about to happen."""
        ...


class WrappedScheduleState(NamedTuple):
    """State of a :class:`WrappedSchedule`: ``step``, int32[], updates seen so far."""

    step: jax.Array


class WrappedSchedule:
    """An ordinary schedule of the step, as a stateful schedule.

    Args:
      schedule_fn: a function from the step (int32) to a scalar.

    Example:
      >>> import gradchain as gc
      >>> schedule = gc.WrappedSchedule(gc.linear_schedule(1.0, 0.0, 10))
      >>> state = schedule.update(schedule.init())
      >>> round(float(schedule(state)), 3)
      0.9
    """

    def __init__(self, schedule_fn: Schedule) -> None:
        if not _check.is_schedule(schedule_fn):
            raise TypeError(
                f"WrappedSchedule: `schedule_fn` must be a function of the step; got "
                f"{type(schedule_fn).__name__} {schedule_fn!r:.60}."
            )
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        """Step 0."""
        return WrappedScheduleState(jnp.zeros([], jnp.int32))

    def update(self, state: WrappedScheduleState, **extra_args: Any) -> WrappedScheduleState:
        """One step later (saturating at the int32 maximum)."""
        del extra_args
        return WrappedScheduleState(_tree.safe_increment(state.step))

    def __call__(self, state: WrappedScheduleState, **extra_args: Any) -> Any:
        """The schedule at the state's step."""
        del extra_args
        return self.schedule_fn(state.step)


def _is_stateful(v: Any) -> bool:
    return (
        callable(v) and callable(getattr(v, "init", None)) and callable(getattr(v, "update", None))
    )


@injected_state
class InjectStatefulHyperparamsState(NamedTuple):
    """State of a transformation built by :func:`inject_stateful_hyperparams`.

    Attributes:
      step: int32[], updates seen so far (Optax's ``count``).
      hyperparams: name -> value used by the last update (at init: the
        schedules' initial values). Constants may be overwritten here.
      hyperparams_states: name -> the state of that hyperparameter's schedule.
      inner_state: the wrapped transformation's state.
    """

    step: jax.Array
    hyperparams: dict[str, jax.Array]
    hyperparams_states: dict[str, Any]
    inner_state: OptState


def inject_stateful_hyperparams(
    inner_factory: Callable[..., AnyTransformation],
    static_args: str | tuple[str, ...] = (),
    hyperparam_dtype: Any | None = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """Optax's ``inject_stateful_hyperparams``: hyperparameters from stateful schedules.

    Each numeric argument of ``inner_factory`` may be a number (stored, and
    settable in ``state.hyperparams``), a schedule of the step (wrapped in a
    :class:`WrappedSchedule`) or a stateful schedule. On every update each
    stateful schedule is called with its state and the extra keyword
    arguments given to ``update``, and its state advanced with them; the
    inner transformation receives the extra arguments too.

    Args:
      inner_factory: a function returning a transformation, e.g. ``gc.sgd``.
      static_args: names of arguments to pass as they are (callables that are
        not schedules, for instance).
      hyperparam_dtype: dtype of the stored values; float32 by default, never
        the parameters' dtype.

    Returns:
      A function with ``inner_factory``'s arguments that returns a
      GradientTransformationExtraArgs whose state is an
      InjectStatefulHyperparamsState.

    Raises:
      TypeError: if ``hyperparam_dtype`` is not a dtype; (at update) if a
        schedule returns anything but a scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> class HalveOnPlateau:  # a stateful schedule driven by the loss
      ...     def init(self):
      ...         return {"lr": jnp.array(1.0), "best": jnp.array(jnp.inf)}
      ...     def update(self, state, loss):
      ...         worse = loss >= state["best"]
      ...         lr = jnp.where(worse, state["lr"] / 2, state["lr"])
      ...         return {"lr": lr, "best": jnp.minimum(loss, state["best"])}
      ...     def __call__(self, state, **extra_args):
      ...         return state["lr"]
      >>> tx = gc.inject_stateful_hyperparams(gc.sgd)(learning_rate=HalveOnPlateau())
      >>> state = tx.init(jnp.zeros(1))
      >>> for loss in (3.0, 2.0, 2.5):
      ...     _, state = tx.update(jnp.ones(1), state, loss=jnp.array(loss))
      >>> u, state = tx.update(jnp.ones(1), state, loss=jnp.array(1.0))
      >>> float(u[0])
      -0.5
    """
    fn = "inject_stateful_hyperparams"
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    _check.dtype_or_none(fn, "hyperparam_dtype", hyperparam_dtype)
    hp_dtype = jnp.dtype(hyperparam_dtype or jnp.result_type(float))

    def as_value(name: str, v: Any) -> jax.Array:
        out = jnp.asarray(v)
        if out.shape != ():
            raise TypeError(
                f"{fn}: the schedule of `{name}` must return a scalar; got shape {out.shape}."
            )
        return out.astype(hp_dtype)

    @functools.wraps(inner_factory)
    def factory(*args: Any, **kwargs: Any) -> GradientTransformationExtraArgs:
        bound = inspect.signature(inner_factory).bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        schedules: dict[str, Any] = {}
        numeric: dict[str, Any] = {}
        other: dict[str, Any] = {}
        for k, v in arguments.items():
            if k in static or isinstance(v, bool):
                other[k] = v
            elif _is_stateful(v):
                schedules[k] = v
            elif _check.is_schedule(v):
                schedules[k] = WrappedSchedule(v)
            elif _check.concrete_value(v) is not None or (
                isinstance(v, jax.Array) and jnp.shape(v) == ()
            ):
                numeric[k] = v
            else:
                other[k] = v
        # Build once now, schedules at their initial state, so that bad values fail here.
        first = {k: as_value(k, s(s.init())) for k, s in schedules.items()}
        inner_factory(**other, **numeric, **first)

        def build(hps: dict[str, jax.Array]) -> AnyTransformation:
            return inner_factory(**other, **hps)

        def init_fn(params: Params) -> InjectStatefulHyperparamsState:
            states = {k: s.init() for k, s in schedules.items()}
            hps = {k: as_value(k, v) for k, v in numeric.items()}
            hps.update({k: as_value(k, s(states[k])) for k, s in schedules.items()})
            inner_state = build(hps).init(params)
            return InjectStatefulHyperparamsState(
                jnp.zeros([], jnp.int32), hps, states, inner_state
            )

        def update_fn(
            updates: Updates,
            state: InjectStatefulHyperparamsState,
            params: Params | None = None,
            **extra_args: Any,
        ) -> tuple[Updates, InjectStatefulHyperparamsState]:
            _tree.check_state(fn, state, InjectStatefulHyperparamsState)
            hps = {k: state.hyperparams[k] for k in numeric}
            new_states = {}
            for k, s in schedules.items():
                hps[k] = as_value(k, s(state.hyperparams_states[k], **extra_args))
                new_states[k] = s.update(state.hyperparams_states[k], **extra_args)
            inner = build(hps)
            template = updates if params is None else params
            inner_state = _sync_hparams(state.inner_state, inner.init(template))
            updates, inner_state = call_update(inner, updates, inner_state, params, extra_args)
            step = _tree.safe_increment(state.step)
            return updates, InjectStatefulHyperparamsState(step, hps, new_states, inner_state)

        return GradientTransformationExtraArgs(init_fn, update_fn)

    return factory
