"""Restoring a checkpoint into a changed optimizer, leaf by leaf, by name.

A checkpoint of an optimizer state and the state a changed program builds (a
transform added to a chain, a parameter added to the model, one group's
optimizer replaced) differ in structure, so ``flax.serialization.from_bytes``
and Orbax's restore with a target refuse them, and loading by position (as
torch's ``Optimizer.load_state_dict`` does) would put one transform's moments
into another's. :func:`restore_state` matches the leaves by a name made of
what does not move when the program changes:

- dict keys: ``named_chain`` names, group labels, parameter names,
  hyperparameter names;
- NamedTuple field names (``mu``, ``nu``, ``step``);
- for the states in a ``chain`` (a tuple, nested chains flattened: a chain of
  chains is the same chain), the state's class name and its occurrence among
  the siblings of that class (``ScaleByAdamState#0``): inserting a
  ``clip_by_global_norm`` before ``scale_by_adam`` leaves Adam's name as it was.
  In a raw checkpoint (``flax.serialization.to_state_dict``, Orbax restored
  without a target) class names are gone; the field names and the
  hyperparameter names of each state stand in for them;
- positions, for lists of arrays (parameters kept in a list).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain._hyperparams import Hyperparams

_HP_FIELDS = frozenset({"constant", "scheduled", "complement"})


class HyperparamChange(NamedTuple):
    """A constant hyperparameter whose checkpointed value differs from the template's."""

    path: str
    checkpoint: float
    template: float
    kept: str  # "template" or "checkpoint"


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore_state` matched, added and dropped, by leaf name.

    Attributes:
      matched: names of the template's leaves restored from the checkpoint.
      added: names of the template's leaves the checkpoint lacks; they keep the
        template's (fresh ``init``) values.
      dropped: names of the checkpoint's leaves the template lacks; not restored.
      hyperparams: constant hyperparameters whose values differ, and which won.
    """

    matched: tuple[str, ...]
    added: tuple[str, ...]
    dropped: tuple[str, ...]
    hyperparams: tuple[HyperparamChange, ...]

    def __str__(self) -> str:
        lines = [
            f"{len(self.matched)} leaves matched, {len(self.added)} added (fresh from the "
            f"template), {len(self.dropped)} dropped (in the checkpoint only), "
            f"{len(self.hyperparams)} hyperparameters changed."
        ]
        lines += [f"  added:   {p}" for p in self.added]
        lines += [f"  dropped: {p}" for p in self.dropped]
        lines += [
            f"  hyperparameter {h.path}: checkpoint {h.checkpoint:g}, template {h.template:g}, "
            f"kept the {h.kept}'s"
            for h in self.hyperparams
        ]
        return "\n".join(lines)


class _Leaf(NamedTuple):
    display: str
    value: Any
    keypath: tuple[Any, ...]  # jax key path in its own tree
    hp: str | None  # "constant", "scheduled", "complement" under a Hyperparams; else None


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | int | float | complex | bool)


def _is_seq_mapping(x: Any) -> bool:
    """A mapping keyed '0'..'n-1' (or 0..n-1): a tuple or list as flax writes it."""
    return (
        isinstance(x, Mapping)
        and len(x) > 0
        and sorted(str(k) for k in x) == sorted(str(i) for i in range(len(x)))
    )


def _is_seq(x: Any) -> bool:
    return (isinstance(x, tuple | list) and not _is_namedtuple(x)) or _is_seq_mapping(x)


def _seq_items(x: Any) -> list[tuple[Any, Any]]:
    if isinstance(x, Mapping):
        keys = sorted(x, key=lambda k: int(str(k)))
        return [(jax.tree_util.DictKey(k), x[k]) for k in keys]
    return [(jax.tree_util.SequenceKey(i), c) for i, c in enumerate(x)]


def _fields(x: Any) -> tuple[str, ...]:
    return tuple(x._fields) if _is_namedtuple(x) else tuple(sorted(str(k) for k in x))


def _child(x: Any, name: str) -> Any:
    if _is_namedtuple(x):
        return getattr(x, name, None)
    return x.get(name) if isinstance(x, Mapping) else None


def _hp_names(x: Any) -> tuple[str, ...]:
    hp = _child(x, "hparams")
    if hp is None:
        return ()
    names: set[str] = set()
    for attr in ("constant", "scheduled"):
        group = _child(hp, attr)
        if isinstance(group, Mapping):
            names |= {str(k) for k in group}
    return tuple(sorted(names))


def _is_hp_node(x: Any) -> bool:
    return isinstance(x, Hyperparams) or (
        isinstance(x, Mapping) and not _is_namedtuple(x) and set(map(str, x)) == _HP_FIELDS
    )


def _is_state_like(x: Any) -> bool:
    return _is_namedtuple(x) or (isinstance(x, Mapping) and not _is_seq_mapping(x))


def _array_only(x: Any) -> bool:
    return not any(_is_state_like(c) or _is_seq(c) for _, c in _seq_items(x))


def _walk(
    node: Any,
    ident: tuple[str, ...],
    display: tuple[str, ...],
    keypath: tuple[Any, ...],
    use_class: bool,
    hp: str | None,
    out: dict[tuple[str, ...], _Leaf],
) -> None:
    if node is None:
        return
    if _is_array(node) or isinstance(node, jax.ShapeDtypeStruct):
        out[ident] = _Leaf("/".join(display) or "<root>", node, keypath, hp)
        return
    if _is_seq(node):
        _walk_seq(node, ident, display, keypath, use_class, hp, out)
        return
    if _is_namedtuple(node):
        is_hp = isinstance(node, Hyperparams)
        for f in node._fields:
            sub = f if is_hp else hp  # under a Hyperparams: "constant", "scheduled"...
            kp = (*keypath, jax.tree_util.GetAttrKey(f))
            _walk(getattr(node, f), (*ident, f), (*display, f), kp, use_class, sub, out)
        return
    if isinstance(node, Mapping):
        is_hp = _is_hp_node(node)
        for k in sorted(node, key=str):
            sub = str(k) if is_hp else hp
            kp = (*keypath, jax.tree_util.DictKey(k))
            _walk(node[k], (*ident, str(k)), (*display, str(k)), kp, use_class, sub, out)
        return
    # another registered pytree node (a Flax FrozenDict, an NNX State): one level by key
    children, _ = jax.tree_util.flatten_one_level_with_keys(node)
    for k, c in children:
        name = jax.tree_util.keystr((k,)).strip("[]'.")
        _walk(c, (*ident, name), (*display, name), (*keypath, k), use_class, hp, out)


def _walk_seq(
    node: Any,
    ident: tuple[str, ...],
    display: tuple[str, ...],
    keypath: tuple[Any, ...],
    use_class: bool,
    hp: str | None,
    out: dict[tuple[str, ...], _Leaf],
) -> None:
    flat: list[tuple[tuple[Any, ...], Any]] = []

    def splice(items: list[tuple[Any, Any]], kp: tuple[Any, ...]) -> None:
        for k, c in items:
            if _is_seq(c) and not _array_only(c):
                splice(_seq_items(c), (*kp, k))  # a chain inside a chain: one chain
            else:
                flat.append(((*kp, k), c))

    splice(_seq_items(node), keypath)
    seen: Counter[str] = Counter()
    for pos, (kp, c) in enumerate(flat):
        if _is_state_like(c):
            cls = type(c).__name__ if _is_namedtuple(c) else None
            fields = _fields(c)
            if use_class and cls is not None:
                sig = cls
            else:
                sig = "{" + ",".join(sorted(fields)) + "}|" + ",".join(_hp_names(c))
            label = f"{cls or '{' + ','.join(sorted(fields)) + '}'}#{seen[sig]}"
            name = f"{sig}#{seen[sig]}"
            seen[sig] += 1
        else:
            name = label = str(pos)
        _walk(c, (*ident, name), (*display, label), kp, use_class, hp, out)


def _has_namedtuple(tree: Any) -> bool:
    found = []

    def visit(x: Any) -> Any:
        if _is_namedtuple(x) and x._fields:
            found.append(x)
        return x

    jax.tree.map(visit, tree, is_leaf=lambda x: _is_namedtuple(x) and bool(x._fields))
    return bool(found)


def _leaves(tree: Any, use_class: bool) -> dict[tuple[str, ...], _Leaf]:
    out: dict[tuple[str, ...], _Leaf] = {}
    _walk(tree, (), (), (), use_class, None, out)
    return out


def _describe(x: Any) -> str:
    return f"shape {tuple(np.shape(x))} dtype {np.dtype(x.dtype).name}"


def restore_state(
    template: Any,
    saved: Any,
    *,
    allow_added: bool = False,
    allow_dropped: bool = False,
    hyperparams: Literal["template", "checkpoint"] = "template",
) -> tuple[Any, RestoreReport]:
    """Restores a saved optimizer state into a template of a changed optimizer, by name.

    Each leaf is matched by its name (see the module's notes: ``named_chain``
    names, state class names with their occurrence among siblings, field
    names, parameter key paths), never by position. Template leaves with no
    counterpart keep the template's fresh values (*added*); checkpoint leaves
    with no counterpart are left out (*dropped*). Constant hyperparameters
    present on both sides come from the template (the new code) by default,
    or from the checkpoint with ``hyperparams="checkpoint"``; scheduled values
    always come from the checkpoint (they belong to its step, and the schedule
    recomputes them after the next update). Injected hyperparameters
    (``inject_hyperparams``'s dict) are state like any other: the checkpoint's.

    Args:
      template: the new optimizer's fresh state, ``tx.init(params)``.
      saved: the checkpointed state: a state tree, or the raw nested dict that
        ``flax.serialization.to_state_dict`` / ``msgpack_restore`` or Orbax's
        restore without a target gives.
      allow_added: accept template leaves the checkpoint lacks (a transform
        added to a chain, a parameter added to the model, a group reset).
      allow_dropped: accept checkpoint leaves the template lacks.
      hyperparams: whose constant hyperparameters win where both have them,
        ``"template"`` or ``"checkpoint"``.

    Returns:
      ``(state, report)``: the state, with the template's tree structure and
      dtypes, and a :class:`RestoreReport` of what was matched, added, dropped
      and which hyperparameters differ.

    Raises:
      ValueError: if a matched leaf differs in shape or dtype (naming both
        leaves; nothing is reshaped or cast), if leaves were added or dropped
        and that is not allowed (the message holds the whole report), or if
        ``hyperparams`` is neither ``"template"`` nor ``"checkpoint"``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones(2)}
      >>> old = gc.chain(gc.scale_by_adam(), gc.scale(-0.1))
      >>> state = old.init(params)
      >>> _, state = old.update({"w": jnp.ones(2)}, state)
      >>> new = gc.chain(gc.clip_by_global_norm(1.0), gc.scale_by_adam(), gc.scale(-0.1))
      >>> restored, report = gc.restore_state(new.init(params), state, allow_added=True)
      >>> report.added
      ('ClipByGlobalNormState#0/hparams/constant/max_norm', 'ClipByGlobalNormState#0/step')
      >>> int(restored[1].step), round(float(restored[1].mu["w"][0]), 2)
      (1, 0.1)
    """
    if hyperparams not in ("template", "checkpoint"):
        raise ValueError(
            f"restore_state: `hyperparams` must be 'template' or 'checkpoint'; got {hyperparams!r}."
        )
    use_class = _has_namedtuple(saved)
    mine = _leaves(template, use_class)
    theirs = _leaves(saved, use_class)

    conflicts = []
    for ident in mine.keys() & theirs.keys():
        t, s = mine[ident], theirs[ident]
        s_shape, s_dtype = tuple(np.shape(s.value)), np.dtype(getattr(s.value, "dtype", None))
        if tuple(np.shape(t.value)) != s_shape or np.dtype(t.value.dtype) != s_dtype:
            conflicts.append(
                f"  template {t.display}: {_describe(t.value)}; "
                f"checkpoint {s.display}: {_describe(np.asarray(s.value))}"
            )
    if conflicts:
        raise ValueError(
            "restore_state: leaves of the same name differ in shape or dtype; nothing is "
            "reshaped or cast:\n"
            + "\n".join(sorted(conflicts))
            + "\nRestore into a template built for the checkpoint's shapes and dtypes (the same "
            "parameters, `mu_dtype`...), or convert those leaves of `saved` yourself first."
        )

    changes = []
    values: dict[tuple[Any, ...], Any] = {}
    for ident, t in mine.items():
        if ident not in theirs:
            continue
        s = theirs[ident]
        value = s.value
        if t.hp in ("constant", "complement"):
            same = np.array_equal(np.asarray(t.value), np.asarray(s.value))
            if hyperparams == "template":
                value = t.value
            if not same and t.hp == "constant":
                changes.append(
                    HyperparamChange(
                        t.display,
                        float(np.asarray(s.value)),
                        float(np.asarray(t.value)),
                        hyperparams,
                    )
                )
        values[t.keypath] = jnp.asarray(value, t.value.dtype)

    report = RestoreReport(
        matched=tuple(sorted(mine[i].display for i in mine.keys() & theirs.keys())),
        added=tuple(sorted(mine[i].display for i in mine.keys() - theirs.keys())),
        dropped=tuple(sorted(theirs[i].display for i in theirs.keys() - mine.keys())),
        hyperparams=tuple(sorted(changes)),
    )
    refused = [
        what
        for what, bad in (
            ("added (pass allow_added=True to keep them fresh)", report.added and not allow_added),
            (
                "dropped (pass allow_dropped=True to leave them out)",
                report.dropped and not allow_dropped,
            ),
        )
        if bad
    ]
    if refused:
        raise ValueError(
            f"restore_state: the checkpoint and the template differ: leaves "
            f"{' and '.join(refused)}. Check that the optimizer is the one you mean to resume."
            f"\n{report}"
        )

    def pick(path: tuple[Any, ...], leaf: Any) -> Any:
        return values.get(tuple(path), leaf)

    restored = jax.tree_util.tree_map_with_path(pick, template)
    return restored, report
