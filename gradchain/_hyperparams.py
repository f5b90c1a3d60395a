"""Hyperparameters as state: every numeric hyperparameter is an array in its transform's state.

A transformation built with ``learning_rate=0.1`` keeps ``0.1`` as a float32
scalar in its state and reads it from there on every update. So a user can
read any hyperparameter with :func:`get_hyperparams` and change a constant one
with :func:`set_hyperparams` between steps, under ``jit``, ``vmap`` and
``lax.scan``, without recompiling: the compiled update takes the value as data.

A hyperparameter given as a schedule stays a function of the transform's step;
the state holds its value for the next update, recomputed after every update,
and :func:`set_hyperparams` refuses to overwrite it.

Decay rates close to 1 (Adam's ``b2 = 0.999``) lose most of ``1 - b2`` when
stored in float32: ``1 - float32(0.999)`` is off by 1.3e-5 relative. So for
rates the state also keeps the complement ``1 - b``, computed in float64 on the
host from a Python number, and the transforms use it for the ``(1 - b) g``
term. :func:`set_hyperparams` keeps the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Schedule, Updates


class Hyperparams(NamedTuple):
    """The numeric hyperparameters of one transformation, held in its state.

    Attributes:
      constant: name -> scalar array; used as stored, changeable with
        :func:`set_hyperparams`.
      scheduled: name -> scalar array; the schedule's value for the next
        update, recomputed from the schedule after every update.
      complement: rate name -> ``1 - rate``, kept exactly for rates near 1.
    """

    constant: dict[str, jax.Array]
    scheduled: dict[str, jax.Array]
    complement: dict[str, jax.Array]


def _float_dtype() -> Any:
    return jnp.result_type(float)  # float32, or float64 under jax_enable_x64


def complement_of(value: Any, stored: jax.Array) -> jax.Array:
    """``1 - value`` in float64 on the host for a concrete number, else in the stored dtype."""
    exact = _check.concrete_value(value)
    if exact is not None:
        return jnp.asarray(1.0 - exact, stored.dtype)
    return (1 - stored).astype(stored.dtype)


def _as_scalar(fn: str, name: str, value: Any) -> jax.Array:
    out = jnp.array(value)  # a copy: a state never shares a buffer with the caller's array
    if out.shape != ():
        raise ValueError(
            f"{fn}: hyperparameter `{name}` must be a scalar; got shape {out.shape}. "
            f"To try several values at once, vmap over the state instead."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        out = out.astype(_float_dtype())
    return out.astype(_float_dtype())


class HyperparamSpec:
    """The hyperparameters a transformation was built with: values and schedules.

    Transformations create one at construction, store :meth:`init` in their
    state, read :meth:`values` in ``update`` and store :meth:`advance`.
    """

    def __init__(
        self, fn: str, hyperparams: dict[str, ScalarOrSchedule], rates: tuple[str, ...] = ()
    ) -> None:
        self.fn = fn
        self.rates = rates
        self.constant = {k: v for k, v in hyperparams.items() if not _check.is_schedule(v)}
        self.schedules: dict[str, Schedule] = {
            k: v for k, v in hyperparams.items() if callable(v) and _check.is_schedule(v)
        }

    def _scheduled_at(self, step: jax.Array) -> dict[str, jax.Array]:
        return {k: _as_scalar(self.fn, k, s(step)) for k, s in self.schedules.items()}

    def _complements(
        self, constant: dict[str, jax.Array], scheduled: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        out = {k: complement_of(self.constant[k], constant[k]) for k in self.rates if k in constant}
        out.update({k: complement_of(None, scheduled[k]) for k in self.rates if k in scheduled})
        return out

    def init(self) -> Hyperparams:
        """The state entry before the first update (schedules at step 0)."""
        constant = {k: _as_scalar(self.fn, k, v) for k, v in self.constant.items()}
        scheduled = self._scheduled_at(jnp.zeros([], jnp.int32))
        return Hyperparams(constant, scheduled, self._complements(constant, scheduled))

    def advance(self, hp: Hyperparams, step: jax.Array) -> Hyperparams:
        """The state entry after an update: scheduled values recomputed at ``step``.

        Raises:
          TypeError: if ``hp`` holds other hyperparameters, or other schedules,
            than this transformation (a state from another optimizer).
        """
        if set(hp.constant) != set(self.constant) or set(hp.scheduled) != set(self.schedules):
            raise TypeError(
                f"{self.fn}: update received a state whose hyperparameters are "
                f"{sorted(hp.constant)} constant and {sorted(hp.scheduled)} scheduled, but this "
                f"transformation's are {sorted(self.constant)} constant and "
                f"{sorted(self.schedules)} scheduled. Pass the state from this transformation's "
                f"own init, not another optimizer's (nor one built with other schedules)."
            )
        if not self.schedules:
            return hp
        scheduled = self._scheduled_at(step)
        complement = {
            **hp.complement,
            **{k: 1 - scheduled[k] for k in self.rates if k in scheduled},
        }
        return Hyperparams(hp.constant, scheduled, complement)


class _Values(dict):
    """The values of one state's hyperparameters; a missing name says the state is foreign."""

    def __missing__(self, name: str) -> Any:
        raise KeyError(
            f"this state has no hyperparameter {name!r}, only {sorted(self)}: it comes from "
            f"another transformation. Pass the state from this transformation's own init."
        )


def values(hp: Hyperparams) -> dict[str, jax.Array]:
    """The hyperparameter values an update uses: constants and scheduled values."""
    return _Values({**hp.constant, **hp.scheduled})


def hyperparam_transform(
    fn: str,
    state_type: type[Any],
    hyperparams: dict[str, ScalarOrSchedule],
    apply: Callable[[Updates, Params | None, dict[str, jax.Array]], Updates],
) -> GradientTransformation:
    """A transform whose state is ``state_type(step, hparams)`` and whose update is ``apply``.

    ``state_type`` is a NamedTuple of exactly those two fields; each family
    has its own, so a state passed to the wrong transform is refused.

    ``apply(updates, params, values)`` gets the hyperparameter values for this
    step; the step counter and the schedules advance around it.
    """
    spec = HyperparamSpec(fn, hyperparams)

    def init_fn(params: Params) -> Any:
        del params
        return state_type(jnp.zeros([], jnp.int32), spec.init())

    def update_fn(
        updates: Updates, state: Any, params: Params | None = None
    ) -> tuple[Updates, Any]:
        _tree.check_state(fn, state, state_type)
        _tree.check_array_leaves(fn, "updates", updates)
        new_updates = apply(updates, params, values(state.hparams))
        step = _tree.safe_increment(state.step)
        return new_updates, state_type(step, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class _Entry(NamedTuple):
    full: tuple[str, ...]  # every key on the way, attribute names included
    positional: tuple[str, ...]  # names a user gave and positions in chains
    named: tuple[str, ...]  # only the names a user gave (named_chain, dict labels)
    attr: str  # "constant" or "scheduled", or "inject" for inject_hyperparams
    name: str
    value: jax.Array
    complement_path: tuple[Any, ...] | None  # where 1 - value is kept, for rates


_INJECT_STATE_TYPES: list[type] = []


def injected_state(cls: type) -> type:
    """Registers a state type whose ``hyperparams`` dict holds injected hyperparameters.

    :func:`get_hyperparams` and :func:`set_hyperparams` then read that dict
    (Optax's ``inject_hyperparams`` layout) instead of looking inside
    ``inner_state``, whose hyperparameters are rebuilt from it on every update.
    """
    _INJECT_STATE_TYPES.append(cls)
    return cls


def _is_inject_state(x: Any) -> bool:
    return isinstance(x, tuple(_INJECT_STATE_TYPES))


def _entries(state: Any) -> list[tuple[tuple[Any, ...], _Entry]]:
    """Every hyperparameter in a state, with the key path of its array."""
    out = []
    flat = jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda x: isinstance(x, Hyperparams) or _is_inject_state(x)
    )[0]
    for path, node in flat:
        full, positional, named = [], [], []
        for key in path:
            if isinstance(key, jax.tree_util.DictKey):
                full.append(str(key.key))
                positional.append(str(key.key))
                named.append(str(key.key))
            elif isinstance(key, jax.tree_util.SequenceKey):
                full.append(str(key.idx))
                positional.append(str(key.idx))
            elif isinstance(key, jax.tree_util.GetAttrKey):
                full.append(key.name)
        where = (tuple(full), tuple(positional), tuple(named))
        if isinstance(node, Hyperparams):
            for attr in ("constant", "scheduled"):
                for name, value in getattr(node, attr).items():
                    key_path = (*path, jax.tree_util.GetAttrKey(attr), jax.tree_util.DictKey(name))
                    comp = (
                        (*path, jax.tree_util.GetAttrKey("complement"), jax.tree_util.DictKey(name))
                        if name in node.complement
                        else None
                    )
                    entry = _Entry(*where, attr, name, value, comp)
                    out.append((key_path, entry))
        elif _is_inject_state(node):
            for name, value in node.hyperparams.items():
                key_path = (
                    *path,
                    jax.tree_util.GetAttrKey("hyperparams"),
                    jax.tree_util.DictKey(name),
                )
                entry = _Entry(*where, "inject", name, value, None)
                out.append((key_path, entry))
    return out


def _named(state: Any) -> dict[str, tuple[tuple[Any, ...], _Entry]]:
    """Hyperparameters by user-facing name: given names, then positions, then attributes.

    Each entry takes the shortest of the three spellings that no other entry shares.
    """
    entries = _entries(state)
    spellings = [
        ["/".join((*parts, e.name)) for parts in (e.named, e.positional, e.full)]
        for _, e in entries
    ]
    out = {}
    for (path, entry), mine in zip(entries, spellings, strict=True):
        unique = [
            spelling
            for level, spelling in enumerate(mine)
            if all(other[level] != spelling for other in spellings if other is not mine)
        ]
        out[unique[0] if unique else mine[-1]] = (path, entry)
    return out


def get_hyperparams(state: Any) -> dict[str, jax.Array]:
    """Returns every numeric hyperparameter in an optimizer state, by name.

    Names are the hyperparameters' argument names (``learning_rate``, ``b1``,
    ``weight_decay``...), prefixed with the names a user gave along the way
    (:func:`named_chain` names, labels of parameter groups), joined by ``/``.
    Where two entries would share a name (say a chain of two
    ``add_decayed_weights``), their positions in the chain are added
    (``0/weight_decay``, ``1/weight_decay``).

    A scheduled hyperparameter is reported at the step the next update takes.

    Args:
      state: the state of any gradchain transformation.

    Returns:
      A dict from name to scalar array.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adamw(gc.linear_schedule(1.0, 0.0, 10), weight_decay=0.1)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> hp = gc.get_hyperparams(state)
      >>> sorted(hp)
      ['b1', 'b2', 'eps', 'eps_root', 'learning_rate', 'weight_decay']
      >>> round(float(hp["learning_rate"]), 3), round(float(hp["b2"]), 3)
      (1.0, 0.999)
    """
    return {name: entry.value for name, (_, entry) in _named(state).items()}


def set_hyperparams(state: Any, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
    """Returns a copy of ``state`` with some constant hyperparameters changed.

    Works under ``jit``, ``vmap`` and ``lax.scan``: the values are data in the
    state, so changing them never recompiles the update. Each value is stored
    in the dtype the state already holds it in.

    Args:
      state: the state of any gradchain transformation.
      values: a mapping from the names :func:`get_hyperparams` reports to new
        scalar values.
      **kwargs: more names and values, for names that are Python identifiers.

    Returns:
      The new state, with the same structure, shapes and dtypes.

    Raises:
      KeyError: if a name is not a hyperparameter of this state (the message
        lists the names it has).
      TypeError: if a value is not a real number (a string, a bool, a complex).
      ValueError: if a name follows a schedule, or a value is not a scalar, or
        is NaN or infinite.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.sgd(learning_rate=0.1)
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> state = gc.set_hyperparams(state, learning_rate=0.01)
      >>> updates, _ = tx.update({"w": jnp.ones(2)}, state)
      >>> round(float(updates["w"][0]), 4)
      -0.01
    """
    new_values = {**(values or {}), **kwargs}
    named = _named(state)
    replace: dict[tuple[Any, ...], jax.Array] = {}
    for name, value in new_values.items():
        if name not in named:
            raise KeyError(
                f"set_hyperparams: this state has no hyperparameter {name!r}; "
                f"it has {sorted(named)}."
            )
        path, entry = named[name]
        if entry.attr == "scheduled":
            raise ValueError(
                f"set_hyperparams: {name!r} follows a schedule, so its value is recomputed "
                f"from the step on every update. Build the transformation with a constant "
                f"`{entry.name}` to set it by hand, or with another schedule."
            )
        try:
            new = jnp.asarray(value)
        except (TypeError, ValueError):
            new = None
        real = (jnp.integer, jnp.floating)
        if new is None or not any(jnp.issubdtype(new.dtype, k) for k in real):
            raise TypeError(
                f"set_hyperparams: {name!r} must be a real number; got "
                f"{type(value).__name__} {value!r:.80}."
            )
        if new.shape != ():
            raise ValueError(
                f"set_hyperparams: {name!r} must be a scalar; got shape {new.shape}. "
                f"To try several values at once, vmap a function that calls set_hyperparams."
            )
        exact = _check.concrete_value(new)  # None when traced
        if exact is not None and not math.isfinite(exact):
            raise ValueError(f"set_hyperparams: {name!r} must be finite; got {value!r}.")
        replace[path] = new.astype(entry.value.dtype)
        if entry.complement_path is not None:
            replace[entry.complement_path] = complement_of(value, replace[path])

    done: set[tuple[Any, ...]] = set()

    def swap(path: tuple[Any, ...], leaf: Any) -> Any:
        # A wrapper node around the scalar (a Flax NNX Variable, as in nnx.Optimizer's
        # opt_state) adds its own keys below the hyperparameter's path: match the prefix.
        for n in range(len(path), 0, -1):
            if path[:n] in replace:
                done.add(path[:n])
                return replace[path[:n]]
        return leaf

    out = jax.tree_util.tree_map_with_path(swap, state)
    if len(done) != len(replace):  # never a silent no-op
        raise AssertionError(f"set_hyperparams: no leaf found at {sorted(set(replace) - done)}.")
    return out
