"""Monitoring without side effects: measurements kept in the state, read with one call.

:func:`snapshot`, :func:`monitor` and :func:`measure_with_ema` are Optax's:
they store a measurement of the updates at their place in a chain.
:func:`telemetry` wraps a transformation and stores, after every step, what a
training loop usually logs: the gradient norm before the transformation
(before clipping), the norm of its update, the update-to-parameter norm ratio
and whether the step was skipped (an all-zero update). Nothing leaves the
compiled step: the values are arrays in the state, so logging them from a
jitted loop costs no callback and no host sync until you read them.

:func:`get_telemetry` returns every measurement in a state (telemetry,
snapshots and monitors, at any depth) as a flat dict, named like
:func:`get_hyperparams` names hyperparameters.

Unlike Optax, a measurement's state entry has its final structure, shape and
dtype from ``init`` on (zeros until the first update, from
``jax.eval_shape`` of the measure on the parameters; the state's ``step`` is
0 until then), so the state is a stable ``lax.scan`` carry and ``init``
accepts ``jax.ShapeDtypeStruct``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values

Measure = Callable[[Updates], Any]
"""A function from the updates to a measurement (a scalar, or any tree of arrays)."""


def _storage(x: jax.ShapeDtypeStruct) -> jax.Array:
    """Zeros in which to keep a measurement: floats in at least float32."""
    dtype = jnp.dtype(x.dtype)
    if jnp.issubdtype(dtype, jnp.inexact):
        dtype = _tree.compute_dtype(dtype)
    return jnp.zeros(x.shape, dtype)


def _blank(fn: str, name: str, measure: Callable[[Params], Any], params: Params) -> Any:
    """The zeros a measurement starts as, shaped by tracing ``measure`` on the parameters."""
    try:
        shape = jax.eval_shape(measure, params)
    except Exception as err:  # any failure of the user's function, reported with context
        raise TypeError(
            f"{fn}: measuring {name!r} on the parameters at init failed ({err}). init traces "
            f"each measure once on the parameters (nothing is computed) to learn the "
            f"measurement's shape and dtype; give a measure that accepts a tree like them."
        ) from err
    return jax.tree.map(_storage, shape)


def _store(fn: str, name: str, value: Any, blank: Any) -> Any:
    """``value`` in the structure, shapes and dtypes of ``blank``, or an error saying why not."""
    _tree.check_same_structure(f"{fn} ({name!r})", "measurement", value, "state", blank)
    _tree.check_same_shapes(f"{fn} ({name!r})", "measurement", value, "state", blank)
    return jax.tree.map(lambda v, b: jnp.asarray(v).astype(b.dtype), value, blank)


class SnapshotState(NamedTuple):
    """State of :func:`snapshot`.

    Attributes:
      measurement: the name -> the last measurement (zeros before the first update).
      step: int32[], updates seen so far; 0 means nothing was measured yet.
    """

    measurement: dict[str, Any]
    step: jax.Array


def snapshot(measure_name: str, measure: Measure) -> GradientTransformationExtraArgs:
    """Stores ``measure(updates)`` in the state under ``measure_name``; updates pass unchanged.

    Args:
      measure_name: the name to store it under (and :func:`get_telemetry` reports).
      measure: a function of the updates at this point of the chain, e.g.
        ``gc.global_norm``.

    Returns:
      A GradientTransformationExtraArgs whose state is a SnapshotState.

    Raises:
      TypeError: if ``measure_name`` is not a string or ``measure`` not callable.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.chain(gc.snapshot("raw_norm", gc.global_norm), gc.clip_by_global_norm(1.0))
      >>> state = tx.init(jnp.zeros(2))
      >>> _, state = tx.update(jnp.array([3.0, 4.0]), state)
      >>> float(gc.get_telemetry(state)["raw_norm"])
      5.0
    """
    fn = "snapshot"
    _check_measure(fn, measure_name, measure)

    def init_fn(params: Params) -> SnapshotState:
        blank = _blank(fn, measure_name, measure, params)
        return SnapshotState({measure_name: blank}, jnp.zeros([], jnp.int32))

    def update_fn(
        updates: Updates, state: SnapshotState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, SnapshotState]:
        del params, extra_args
        _tree.check_state(fn, state, SnapshotState)
        _tree.check_no_float0(fn, "updates", updates)
        _check_names(fn, state.measurement, [measure_name])
        blank = state.measurement[measure_name]
        value = _store(fn, measure_name, measure(updates), blank)
        return updates, SnapshotState({measure_name: value}, _tree.safe_increment(state.step))

    return GradientTransformationExtraArgs(init_fn, update_fn)


def _check_names(fn: str, stored: dict[str, Any], names: list[str]) -> None:
    if sorted(stored) != sorted(names):
        raise TypeError(
            f"{fn}: the state holds the measurements {sorted(stored)}, this transformation "
            f"takes {sorted(names)}. Pass the state from this transformation's own init."
        )


def _check_measure(fn: str, name: Any, measure: Any, allow_transformation: bool = False) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{fn}: a measurement name must be a string; got {name!r:.60}.")
    if not (callable(measure) or (allow_transformation and _is_transformation(measure))):
        raise TypeError(
            f"{fn}: the measure {name!r} must be a function of the updates (or, for monitor, "
            f"a transformation such as measure_with_ema); got {type(measure).__name__}."
        )


class MonitorState(NamedTuple):
    """State of :func:`monitor`.

    Attributes:
      measurements: name -> the last measurement.
      measure_states: name -> the state of a stateful measure (an EmptyState-like
        ``()`` for plain functions).
      step: int32[], updates seen so far; 0 means nothing was measured yet.
    """

    measurements: dict[str, Any]
    measure_states: dict[str, OptState]
    step: jax.Array


def _is_transformation(x: Any) -> bool:
    return hasattr(x, "init") and hasattr(x, "update")


def monitor(measures: Mapping[str, Measure | AnyTransformation]) -> GradientTransformationExtraArgs:
    """Stores several measurements of the updates, some of them stateful; updates pass.

    Args:
      measures: name -> a function of the updates (stateless), or a
        transformation whose ``update(updates, state, params, **extra_args)``
        returns ``(measurement, state)``, such as :func:`measure_with_ema`.

    Returns:
      A GradientTransformationExtraArgs whose state is a MonitorState.

    Raises:
      TypeError: if ``measures`` is not a mapping of names to measures.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.monitor({
      ...     "norm": gc.global_norm,
      ...     "big": gc.measure_with_ema(lambda u: gc.global_norm(u) > 4.0, decay=0.5),
      ... })
      >>> state = tx.init(jnp.zeros(2))
      >>> for g in ([3.0, 4.0], [0.0, 1.0]):
      ...     _, state = tx.update(jnp.array(g), state)
      >>> {k: round(float(v), 3) for k, v in gc.get_telemetry(state).items()}
      {'norm': 1.0, 'big': 0.333}
    """
    fn = "monitor"
    if not isinstance(measures, Mapping):
        raise TypeError(
            f"{fn}: `measures` must be a dict of name -> measure; got {measures!r:.60}."
        )
    for name, m in measures.items():
        _check_measure(fn, name, m, allow_transformation=True)
    stateful: dict[str, AnyTransformation] = {
        k: cast(AnyTransformation, m) for k, m in measures.items() if _is_transformation(m)
    }
    plain: dict[str, Measure] = {
        k: cast(Measure, m) for k, m in measures.items() if k not in stateful
    }

    def measure_at_init(name: str, params: Params) -> Any:
        if name in plain:
            return _blank(fn, name, plain[name], params)
        tx = stateful[name]
        return _blank(fn, name, lambda p: tx.update(p, tx.init(p), p)[0], params)

    def init_fn(params: Params) -> MonitorState:
        measurements = {k: measure_at_init(k, params) for k in measures}
        states = {k: stateful[k].init(params) if k in stateful else () for k in measures}
        return MonitorState(measurements, states, jnp.zeros([], jnp.int32))

    def update_fn(
        updates: Updates, state: MonitorState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MonitorState]:
        _tree.check_state(fn, state, MonitorState)
        _tree.check_no_float0(fn, "updates", updates)
        _check_names(fn, state.measurements, list(measures))
        measurements, states = {}, {}
        for name in measures:
            if name in stateful:
                value, states[name] = call_update(
                    stateful[name], updates, state.measure_states[name], params, extra_args
                )
            else:
                value, states[name] = plain[name](updates), state.measure_states[name]
            measurements[name] = _store(fn, name, value, state.measurements[name])
        return updates, MonitorState(measurements, states, _tree.safe_increment(state.step))

    return GradientTransformationExtraArgs(init_fn, update_fn)


class MeasureWithEmaState(NamedTuple):
    """State of :func:`measure_with_ema`.

    Attributes:
      step: int32[], measurements seen so far.
      ema: the (not debiased) moving average of the measurement.
      hparams: ``decay``.
    """

    step: jax.Array
    ema: Any
    hparams: Hyperparams


def measure_with_ema(
    measure: Measure,
    decay: ScalarOrSchedule,
    debias: bool = True,
    accumulator_dtype: Any | None = None,
) -> GradientTransformationExtraArgs:
    r"""A stateful measure for :func:`monitor`: the moving average of ``measure(updates)``.

    Its ``update`` returns ``(average, state)``, not updates, so use it inside
    :func:`monitor`. Boolean and integer measurements are averaged as floats
    (the EMA of ``norm > threshold`` is how often it held lately).

    Args:
      measure: a function of the updates returning a tree of arrays.
      decay: :math:`\beta` in [0, 1), or a schedule.
      debias: whether to divide by :math:`1 - \beta^t`.
      accumulator_dtype: dtype of the average; by default the measurement's
        (float32 for booleans and integers, at least float32 for floats).

    Returns:
      A GradientTransformationExtraArgs whose state is a MeasureWithEmaState.

    Raises:
      ValueError: if ``decay`` is a number outside [0, 1).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.monitor({"norm_ema": gc.measure_with_ema(gc.global_norm, decay=0.9)})
      >>> state = tx.init(jnp.zeros(1))
      >>> _, state = tx.update(jnp.array([2.0]), state)
      >>> round(float(gc.get_telemetry(state)["norm_ema"]), 4)  # debiased: the first value
      2.0
    """
    fn = "measure_with_ema"
    _check_measure(fn, "measure", measure)
    _check.decay_rate(fn, "decay", decay, schedule_ok=True)
    acc_dtype = _check.dtype_or_none(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, dict(decay=decay), rates=("decay",))

    def accumulator(blank: jax.Array) -> jax.Array:
        if acc_dtype is not None:
            return blank.astype(acc_dtype)
        if jnp.issubdtype(blank.dtype, jnp.inexact):
            return blank  # already at least float32
        return blank.astype(jnp.result_type(float))  # averages of booleans and counts

    def init_fn(params: Params) -> MeasureWithEmaState:
        ema = jax.tree.map(accumulator, _blank(fn, "measure", measure, params))
        return MeasureWithEmaState(jnp.zeros([], jnp.int32), ema, spec.init())

    def update_fn(
        updates: Updates,
        state: MeasureWithEmaState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Any, MeasureWithEmaState]:
        del params, extra_args
        _tree.check_state(fn, state, MeasureWithEmaState)
        _tree.check_no_float0(fn, "updates", updates)
        value = measure(updates)
        _tree.check_same_structure(fn, "measurement", value, "state.ema", state.ema)
        _tree.check_same_shapes(fn, "measurement", value, "state.ema", state.ema)
        beta = values(state.hparams)["decay"]
        one_minus_beta = state.hparams.complement["decay"]
        step = _tree.safe_increment(state.step)
        correction = _tree.debias(beta, step)

        def leaf(m: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
            mc, ec, b, omb, c = _tree.upcast(
                jnp.asarray(m).astype(e.dtype), e, beta, one_minus_beta, correction
            )
            new_e = omb * mc + b * ec
            out = new_e / c if debias else new_e
            return out.astype(e.dtype), new_e.astype(e.dtype)

        out, new_ema = _tree.map_leaves(leaf, 2, value, state.ema)
        return out, MeasureWithEmaState(step, new_ema, spec.advance(state.hparams, step))

    return GradientTransformationExtraArgs(init_fn, update_fn)


class TelemetryState(NamedTuple):
    """State of :func:`telemetry`: what the last step did, as float32 and bool scalars.

    Attributes:
      inner_state: the wrapped transformation's state.
      grad_norm: global norm of the updates given to the wrapper (before the
        inner transformation, so before any clipping in it).
      update_norm: global norm of the updates the inner transformation returned.
      update_param_ratio: ``update_norm / global_norm(params)`` (``inf`` when the
        parameters are all zero and the update is not; NaN when ``update`` was
        called without ``params``).
      skipped: whether every update was exactly zero (a masked or skipped step).
    """

    inner_state: OptState
    grad_norm: jax.Array
    update_norm: jax.Array
    update_param_ratio: jax.Array
    skipped: jax.Array


def telemetry(inner: AnyTransformation) -> GradientTransformationExtraArgs:
    """Wraps ``inner`` and keeps norms of its input and output in the state, for logging.

    Read them with :func:`get_telemetry` (anywhere in a state) or as the
    fields of the TelemetryState. Norms are accumulated in float32 (or wider).

    Args:
      inner: the transformation to observe, e.g. a whole optimizer.

    Returns:
      A GradientTransformationExtraArgs whose state is a TelemetryState.

    Raises:
      TypeError: if ``inner`` is not a transformation.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.telemetry(gc.chain(gc.clip_by_global_norm(1.0), gc.sgd(0.1)))
      >>> params = jnp.array([1.0, 0.0])
      >>> state = tx.init(params)
      >>> _, state = tx.update(jnp.array([3.0, 4.0]), state, params)
      >>> {k: round(float(v), 3) for k, v in gc.get_telemetry(state).items()}
      {'grad_norm': 5.0, 'update_norm': 0.1, 'update_param_ratio': 0.1, 'skipped': 0.0}
    """
    fn = "telemetry"
    check_transformation(fn, "`inner`", inner)
    f32 = jnp.result_type(float)

    def init_fn(params: Params) -> TelemetryState:
        def zero() -> jax.Array:  # a buffer per field: a state can be donated
            return jnp.zeros([], f32)

        return TelemetryState(inner.init(params), zero(), zero(), zero(), jnp.zeros([], jnp.bool_))

    def update_fn(
        updates: Updates, state: TelemetryState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, TelemetryState]:
        _tree.check_state(fn, state, TelemetryState)
        _tree.check_no_float0(fn, "updates", updates)
        grad_norm = _tree.global_norm(updates).astype(f32)
        new_updates, inner_state = call_update(
            inner, updates, state.inner_state, params, extra_args
        )
        update_norm = _tree.global_norm(new_updates).astype(f32)
        if params is None:
            ratio = jnp.full([], jnp.nan, f32)
        else:
            param_norm = _tree.global_norm(params).astype(f32)
            safe = jnp.where(param_norm > 0, param_norm, jnp.ones_like(param_norm))
            ratio = jnp.where(
                param_norm > 0,
                update_norm / safe,
                jnp.where(update_norm > 0, jnp.inf, 0.0).astype(f32),
            )
        leaves = jax.tree.leaves(new_updates)
        skipped = (
            jnp.all(jnp.stack([jnp.all(u == 0) for u in leaves])) if leaves else jnp.array(True)
        )
        return new_updates, TelemetryState(inner_state, grad_norm, update_norm, ratio, skipped)

    return GradientTransformationExtraArgs(init_fn, update_fn)


_TELEMETRY_FIELDS = ("grad_norm", "update_norm", "update_param_ratio", "skipped")


def _measurements(state: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str, Any]]:
    """(key path, name, value) of every measurement in ``state``, outermost first."""

    def is_node(x: Any) -> bool:
        return isinstance(x, TelemetryState | SnapshotState | MonitorState)

    out = []
    flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_node)[0]
    for sub, node in flat:
        where = (*path, *sub)
        if isinstance(node, TelemetryState):
            out.extend((where, k, getattr(node, k)) for k in _TELEMETRY_FIELDS)
            inner_key = jax.tree_util.GetAttrKey("inner_state")
            out.extend(_measurements(node.inner_state, (*where, inner_key)))
        elif isinstance(node, SnapshotState):
            out.extend((where, k, v) for k, v in node.measurement.items())
        elif isinstance(node, MonitorState):
            out.extend((where, k, v) for k, v in node.measurements.items())
    return out


def _spellings(path: tuple[Any, ...], name: str) -> list[str]:
    """The names a measurement may go by, shortest first: given names, positions, full path."""
    named, positional, full = [], [], []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            for parts in (named, positional, full):
                parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            positional.append(str(key.idx))
            full.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            full.append(key.name)
    return ["/".join((*parts, name)) for parts in (named, positional, full)]


def get_telemetry(state: OptState) -> dict[str, Any]:
    """Every measurement in an optimizer state, by name: telemetry, snapshots, monitors.

    Names are the measurement names (:func:`telemetry`'s ``grad_norm``,
    ``update_norm``, ``update_param_ratio``, ``skipped``; the names given to
    :func:`snapshot` and :func:`monitor`), prefixed like
    :func:`get_hyperparams` does: with the :func:`named_chain` names and
    parameter-group labels on the way, then chain positions where two would
    share a name. Works under ``jit``: return the dict from the jitted step.

    Args:
      state: the state of any gradchain transformation.

    Returns:
      A dict from name to the array (or tree) the last update stored.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.named_chain(
      ...     ("clip", gc.chain(gc.snapshot("norm", gc.global_norm), gc.clip(1.0))),
      ...     ("opt", gc.telemetry(gc.sgd(0.1))),
      ... )
      >>> sorted(gc.get_telemetry(tx.init(jnp.zeros(2))))
      ['clip/norm', 'opt/grad_norm', 'opt/skipped', 'opt/update_norm', 'opt/update_param_ratio']
    """
    found = _measurements(state)
    spellings = [_spellings(path, name) for path, name, _ in found]
    out = {}
    for (_, _, value), mine in zip(found, spellings, strict=True):
        unique = [
            s
            for level, s in enumerate(mine)
            if all(other[level] != s for other in spellings if other is not mine)
        ]
        out[unique[0] if unique else mine[-1]] = value
    return out
