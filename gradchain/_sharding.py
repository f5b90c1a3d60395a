r"""Shardings of an optimizer state, derived from the shardings of the parameters.

A state is laid out before any array exists: ``jax.eval_shape(tx.init, params)``
gives its leaves, and :func:`state_shardings` gives each a sharding, so that
``jax.jit(tx.init, out_shardings=...)`` builds the state in place.

The rules, in the order they apply to each leaf of the state:

1. **Declared rules.** A transform's state class may declare, per field, how
   the state kept for one parameter is laid out
   (:func:`register_state_sharding_rule`); gradchain declares Adafactor's
   factored moments (``v_row`` and ``v_col`` take the parameter's
   ``PartitionSpec`` with the entry of the averaged axis removed) and SM3's
   per-axis accumulators (each takes the entry of its axis).
2. **Parameter-shaped leaves.** A subtree of the state with the parameters'
   tree structure (moments, traces, accumulators; masked-out entries of
   ``masked`` and ``partition`` states count as present) is paired leaf by
   leaf with the parameters. A leaf of its parameter's shape takes its
   parameter's sharding.
3. **Everything else is replicated**: step counters, hyperparameters, per-leaf
   scalars, placeholders, and any leaf whose shape cannot be matched to one
   parameter unambiguously. gradchain never guesses: a replicated leaf is
   always correct, only larger. In particular Shampoo's whole state (its
   moments too: it keeps them in blocks stacked across the tree, which record
   no parameter), SOAP's per-axis ``(batch, d, d)`` factors and eigenbases,
   GaLore's projectors and projected moments, and Adam-mini's per-block
   second moments are replicated: every device holds them whole. For ZeRO-1,
   :func:`zero1_shardings` splits them too.

Plain ``tx.init(params)`` on placed parameters lays out the parameter-shaped
and the per-axis leaves the same way (zeros like their parameter, or along its
axes); the rest is replicated under ``jax.set_mesh``. On a mesh with Explicit axes
(``jax.make_mesh``'s default) a sharding is part of an array's type, and every
gradchain update keeps the type of every state leaf, so a state can be a
``lax.scan`` carry; the operations that must state their output's sharding
there live in ``gradchain/_explicit.py``.

For ZeRO-1 (state sharded along the data-parallel axis while the parameters
stay replicated) see :func:`zero1_shardings`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from gradchain import _tree
from gradchain._base import AnyTransformation, Params
from gradchain._factored import FactoredState, factored_axes
from gradchain._lbfgs import ScaleByLBFGSState
from gradchain._quantize import QuantizedArray
from gradchain._sm3 import ScaleBySM3State
from gradchain._wrappers import MaskedNode

StateShardingRule = Callable[[jax.ShapeDtypeStruct, PartitionSpec, Any], Any]
"""``rule(param, spec, state) -> specs``: the layout of the state kept for one parameter.

``param`` is the parameter's ``ShapeDtypeStruct``, ``spec`` its ``PartitionSpec``
with one entry per axis, ``state`` the subtree of the state field at that
parameter's position (``ShapeDtypeStruct`` leaves). It returns a tree of
``PartitionSpec`` of ``state``'s structure, or None to leave the subtree to
the generic rules.
"""

_RULES: dict[type, dict[str, StateShardingRule]] = {}
_FN = "state_shardings"


def register_state_sharding_rule(state_type: type, field: str, rule: StateShardingRule) -> None:
    """Declares how a state field kept per parameter is sharded, given the parameter's spec.

    Use it for a state whose leaves are not shaped like the parameters but
    follow them in a known way (factored moments, per-axis accumulators);
    :func:`state_shardings` then applies ``rule`` wherever a ``state_type``
    appears in a state, to each parameter's entry of ``state_type.field``.

    Args:
      state_type: the NamedTuple class of the transform's state.
      field: the name of one of its fields, holding a tree with the parameters'
        structure as a prefix (one subtree per parameter).
      rule: see :data:`StateShardingRule`.

    Raises:
      TypeError: if ``state_type`` has no field ``field`` or ``rule`` is not callable.

    Example:
      >>> from typing import NamedTuple
      >>> import jax, jax.numpy as jnp
      >>> import gradchain as gc
      >>> from jax.sharding import PartitionSpec as P
      >>> class RowState(NamedTuple):
      ...     rows: dict  # per parameter: the mean over its last axis
      >>> def row_rule(param, spec, state):
      ...     return P(*spec[:-1])  # the parameter's spec without its last axis
      >>> gc.register_state_sharding_rule(RowState, "rows", row_rule)
    """
    fields = getattr(state_type, "_fields", None)
    if not isinstance(state_type, type) or fields is None or field not in fields:
        raise TypeError(
            f"register_state_sharding_rule: `state_type` must be a NamedTuple class with a "
            f"field {field!r}; got {state_type!r} with fields {fields}."
        )
    if not callable(rule):
        raise TypeError(
            f"register_state_sharding_rule: `rule` must be a function of (param, spec, state); "
            f"got {type(rule).__name__}."
        )
    _RULES.setdefault(state_type, {})[field] = rule


def full_spec(spec: PartitionSpec, ndim: int) -> tuple[Any, ...]:
    """A ``PartitionSpec``'s entries padded with None to one per axis."""
    entries = tuple(spec)
    return entries + (None,) * (ndim - len(entries))


def _factored_rule(drop: int) -> StateShardingRule:
    """Adafactor's v_row (drop = 1: the largest axis d0) or v_col (drop = 0: d1) rule."""

    def rule(param: jax.ShapeDtypeStruct, spec: PartitionSpec, state: Any) -> Any:
        shape = tuple(param.shape)
        axes = factored_axes(shape, True, 1)
        if axes is None or not hasattr(state, "shape"):
            return None
        axis = axes[drop]
        if tuple(state.shape) != shape[:axis] + shape[axis + 1 :]:
            return None  # an unfactored leaf's (1,) placeholder: replicated
        entries = full_spec(spec, len(shape))
        return PartitionSpec(*(entries[:axis] + entries[axis + 1 :]))

    return rule


def _sm3_rule(param: jax.ShapeDtypeStruct, spec: PartitionSpec, state: Any) -> Any:
    """SM3's accumulators: one vector per axis of a matrix, or one of the leaf's shape."""
    shape = tuple(param.shape)
    if not isinstance(state, list):
        return None
    if len(shape) <= 1:
        return [spec] if [tuple(s.shape) for s in state] == [shape] else None
    if [tuple(s.shape) for s in state] != [(n,) for n in shape]:
        return None
    return [PartitionSpec(entry) for entry in full_spec(spec, len(shape))]


def _stacked_rule(param: jax.ShapeDtypeStruct, spec: PartitionSpec, state: Any) -> Any:
    """L-BFGS's memory: a leading history axis, then the parameter's axes."""
    shape = tuple(param.shape)
    if not hasattr(state, "shape") or tuple(state.shape)[1:] != shape:
        return None
    return PartitionSpec(None, *full_spec(spec, len(shape)))


register_state_sharding_rule(ScaleByLBFGSState, "diff_params_memory", _stacked_rule)
register_state_sharding_rule(ScaleByLBFGSState, "diff_updates_memory", _stacked_rule)
register_state_sharding_rule(FactoredState, "v_row", _factored_rule(1))
register_state_sharding_rule(FactoredState, "v_col", _factored_rule(0))
register_state_sharding_rule(ScaleBySM3State, "mu", _sm3_rule)


def _is_masked(x: Any) -> bool:
    return isinstance(x, MaskedNode)


def _is_param_leaf(x: Any) -> bool:
    """A node standing for one parameter's state leaf: masked, or 8-bit (``quantize_state``)."""
    return isinstance(x, MaskedNode | QuantizedArray)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


class _Planner:
    """Walks an abstract state, giving each leaf (by key path) a PartitionSpec."""

    def __init__(self, params: Any, specs: list[PartitionSpec]) -> None:
        self.treedef = jax.tree.structure(params)
        self.params = jax.tree.leaves(params)
        self.specs = specs
        self.out: dict[str, PartitionSpec] = {}

    def aligned(self, node: Any) -> bool:
        return jax.tree.structure(node, is_leaf=_is_param_leaf) == self.treedef

    def walk(self, node: Any, path: tuple[Any, ...]) -> None:
        if node is None or _is_masked(node):
            return
        if self.aligned(node):
            self.pair(node, path)
            return
        kids = _tree._children(node)
        if kids is None:
            self.out[_tree.keystr(path)] = PartitionSpec()
            return
        own = _RULES.get(type(node), {})
        for key, child in kids[1]:
            name = getattr(key, "name", None)
            rule = own.get(name) if isinstance(name, str) else None
            if rule is not None and self.apply(rule, child, (*path, key)):
                continue
            self.walk(child, (*path, key))

    def pair(self, node: Any, path: tuple[Any, ...]) -> None:
        flat = jax.tree_util.tree_flatten_with_path(node, is_leaf=_is_param_leaf)[0]
        for (sub, leaf), param, spec in zip(flat, self.params, self.specs, strict=True):
            if _is_masked(leaf):
                continue
            if isinstance(leaf, QuantizedArray):  # the codes follow, the block scales replicate
                for field in leaf._fields:
                    key = jax.tree_util.GetAttrKey(field)
                    x = getattr(leaf, field)
                    same = field == "codes" and tuple(x.shape) == tuple(param.shape)
                    self.out[_tree.keystr((*path, *sub, key))] = spec if same else PartitionSpec()
                continue
            same = tuple(leaf.shape) == tuple(param.shape)
            self.out[_tree.keystr((*path, *sub))] = spec if same else PartitionSpec()

    def apply(self, rule: StateShardingRule, node: Any, path: tuple[Any, ...]) -> bool:
        """Applies a declared rule per parameter; False if ``node`` is not laid out by parameter.

        Where the rule returns None for a parameter, that parameter's subtree
        follows the generic rule: a leaf of the parameter's shape takes its
        spec, anything else is replicated.
        """
        try:
            subtrees = self.treedef.flatten_up_to(node)
        except (ValueError, TypeError):
            return False
        for sub, param, spec in zip(subtrees, self.params, self.specs, strict=True):
            if sub is None or _is_masked(sub):
                continue
            leaves = jax.tree_util.tree_flatten_with_path(sub)[0]
            specs = rule(param, spec, sub)
            if specs is None:
                same = [tuple(x.shape) == tuple(param.shape) for _, x in leaves]
                spec_leaves = [spec if s else PartitionSpec() for s in same]
            else:
                spec_leaves = jax.tree.leaves(specs, is_leaf=_is_spec)
            if len(spec_leaves) != len(leaves) or not all(map(_is_spec, spec_leaves)):
                raise TypeError(
                    f"{_FN}: the sharding rule {rule!r} returned {specs!r} for a state of "
                    f"{len(leaves)} leaves; it must return one PartitionSpec per state leaf."
                )
            base = (*path, *self._prefix_path(node, sub))
            for (sub_path, _), s in zip(leaves, spec_leaves, strict=True):
                self.out[_tree.keystr((*base, *sub_path))] = s
        return True

    def _prefix_path(self, node: Any, sub: Any) -> tuple[Any, ...]:
        for path, leaf in jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is sub)[0]:
            if leaf is sub:
                return path
        raise AssertionError("unreachable: the subtree comes from this node")


def _param_shardings(fn: str, params: Any, param_shardings: Any) -> list[Sharding]:
    if param_shardings is None:
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        out = []
        for path, p in flat:
            sharding = getattr(p, "sharding", None)
            if sharding is None:
                raise ValueError(
                    f"{fn}: the parameter at {_tree.keystr(path)} carries no sharding. Pass "
                    f"arrays placed on devices, `jax.ShapeDtypeStruct(shape, dtype, "
                    f"sharding=...)`, or the shardings themselves as `param_shardings=`."
                )
            out.append(sharding)
        return out
    _tree.check_same_structure(fn, "params", params, "param_shardings", param_shardings)
    return jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, Sharding))


def _mesh_of(fn: str, shardings: list[Sharding]) -> Any:
    meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding)}
    others = [s for s in shardings if not isinstance(s, NamedSharding)]
    if len(meshes) > 1:
        raise ValueError(
            f"{fn}: the parameters are placed on {len(meshes)} different meshes; place them "
            f"all on one mesh (the state can only follow one)."
        )
    if others and (meshes or len({s for s in others}) > 1):
        raise TypeError(
            f"{fn}: every parameter needs a NamedSharding on one mesh (or all one "
            f"SingleDeviceSharding); got {sorted({type(s).__name__ for s in shardings})}. "
            f"Place the parameters with `jax.device_put(p, NamedSharding(mesh, spec))`."
        )
    return meshes.pop() if meshes else others[0] if others else None


def state_partition_specs(tx: AnyTransformation, params: Params, specs: Any) -> tuple[Any, Any]:
    """The abstract state of ``tx`` for ``params`` and a ``PartitionSpec`` per state leaf.

    The engine behind :func:`state_shardings`; ``specs`` is a tree of
    ``PartitionSpec`` of the parameters' structure.

    Returns:
      ``(abstract_state, specs)``: the state from ``jax.eval_shape(tx.init, ...)``
      and a tree of its structure whose leaves are PartitionSpecs.
    """
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(jax.numpy.shape(p), p.dtype), params)
    state = jax.eval_shape(tx.init, abstract)
    spec_leaves = [
        PartitionSpec(*full_spec(s, len(p.shape)))
        for s, p in zip(
            jax.tree.leaves(specs, is_leaf=_is_spec), jax.tree.leaves(abstract), strict=True
        )
    ]
    planner = _Planner(abstract, spec_leaves)
    planner.walk(state, ())
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    out = [planner.out.get(_tree.keystr(path), PartitionSpec()) for path, _ in flat]
    return state, treedef.unflatten(out)


def state_shardings(tx: AnyTransformation, params: Params, *, param_shardings: Any = None) -> Any:
    """A sharding for every leaf of ``tx.init(params)``, following the parameters' shardings.

    Moments, traces and accumulators take their parameter's sharding;
    Adafactor's factored moments and SM3's accumulators take it restricted to
    the axes they keep; counters, hyperparameters, per-leaf scalars and
    matrix preconditioners are replicated (the module docstring gives the
    rules, and :func:`register_state_sharding_rule` adds one for a new state).

    Args:
      tx: the transformation.
      params: the parameters: arrays placed on devices, or
        ``jax.ShapeDtypeStruct`` with a ``sharding``; nothing is computed.
      param_shardings: a tree of the parameters' structure of
        ``NamedSharding`` (on one mesh); by default each leaf's own ``sharding``.

    Returns:
      A tree of the state's structure whose leaves are ``NamedSharding`` on the
      parameters' mesh (``SingleDeviceSharding`` if every parameter has that one
      sharding): pass it as ``out_shardings`` of a jitted ``tx.init``.

    Raises:
      ValueError: if a parameter carries no sharding, or they lie on several meshes.
      TypeError: for a sharding that is neither of these kinds.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import gradchain as gc
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((4, 2), ("data", "model"))
      >>> w = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=NamedSharding(mesh, P("data")))
      >>> tx = gc.chain(gc.scale_by_factored_rms(), gc.trace(0.9))
      >>> shardings = gc.state_shardings(tx, {"w": w})
      >>> shardings[0].v_row["w"].spec, shardings[0].v_col["w"].spec, shardings[1].trace["w"].spec
      (P(None,), P('data',), P('data', None))
      >>> state = jax.jit(tx.init, out_shardings=shardings)({"w": w})
      >>> state[1].trace["w"].sharding.spec
      P('data', None)
    """
    shardings = _param_shardings(_FN, params, param_shardings)
    mesh = _mesh_of(_FN, shardings)
    if not isinstance(mesh, jax.sharding.Mesh | jax.sharding.AbstractMesh):
        state = jax.eval_shape(tx.init, params)
        return jax.tree.map(lambda _: mesh, state)
    specs = jax.tree.structure(params).unflatten([s.spec for s in shardings])  # type: ignore[attr-defined]
    _, state_specs = state_partition_specs(tx, params, specs)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs, is_leaf=_is_spec)
