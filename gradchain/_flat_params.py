"""FlatParams: parameters kept between steps as one 1-D buffer per dtype.

A model of a thousand leaves costs an elementwise optimizer a thousand sets of
kernels per step: XLA emits (at least) one loop per leaf and per moment, and its
compile time grows with their number. Kept as a :class:`FlatParams`, the same
parameters are a handful of leaves (one per dtype), so ``adam`` compiles and runs
as for a single array: three loops in all, whatever the number of leaves.

The model still sees its own tree: :meth:`FlatParams.unflatten` returns it as
views of the buffers (slices and reshapes, which XLA folds into their users), so
``jax.grad(lambda f: loss(f.unflatten()))(flat)`` returns the gradient as a
FlatParams too (the transpose of the slices is one concatenation, which XLA fuses
with the gradients' last kernels).

Only transforms that treat every element alike give the same numbers on the
buffers as on the tree. Those whose result depends on a leaf's shape or path
(masks, parameter groups, matrix and factored optimizers, per-leaf or per-block
norms, trust ratios) refuse a FlatParams with an error naming them; see
:func:`refuse_flat_params`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """Where each leaf of a tree lives in the buffers of a :class:`FlatParams`.

    Hashable and static: it is the FlatParams' pytree auxiliary data, so it
    never reaches a compiled program and two FlatParams of one model share it.

    Attributes:
      treedef: the structure of the model's tree.
      shapes: each leaf's shape, in tree order.
      dtypes: each leaf's dtype, in tree order.
      buffer_dtypes: the dtype of each buffer, in order of first appearance.
      buffer_of: for each leaf, the index of its buffer.
      offsets: for each leaf, where it starts in its buffer.
      sizes: the length of each buffer.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> flat = gc.flatten_params({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)})
      >>> flat.layout.offsets, flat.layout.sizes  # leaves in key order: b, then w
      ((0, 3), (9,))
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    buffer_dtypes: tuple[np.dtype, ...]
    buffer_of: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, leaves: list[Any], treedef: Any) -> FlatLayout:
        """The layout of ``leaves`` (arrays or ShapeDtypeStructs) of a tree ``treedef``."""
        shapes = tuple(tuple(int(d) for d in jnp.shape(x)) for x in leaves)
        dtypes = tuple(np.dtype(x.dtype) for x in leaves)
        buffer_dtypes: list[np.dtype] = []
        buffer_of, offsets, sizes = [], [], []
        for shape, dt in zip(shapes, dtypes, strict=True):
            if dt not in buffer_dtypes:
                buffer_dtypes.append(dt)
                sizes.append(0)
            b = buffer_dtypes.index(dt)
            buffer_of.append(b)
            offsets.append(sizes[b])
            sizes[b] += math.prod(shape)
        return cls(
            treedef,
            shapes,
            dtypes,
            tuple(buffer_dtypes),
            tuple(buffer_of),
            tuple(offsets),
            tuple(sizes),
        )


def _buffer_name(dtype: np.dtype) -> str:
    return jnp.dtype(dtype).name


class FlatParams:
    """A tree of parameters stored as one 1-D buffer per dtype; a pytree of those buffers.

    Build one with :func:`flatten_params` and keep it between steps: its pytree
    children are the buffers (``float32``, ``bfloat16``...), its static data the
    :class:`FlatLayout`. ``jax.tree.map`` over a FlatParams maps the buffers, so
    an optimizer state built by ``tx.init(flat)`` holds FlatParams of moments.
    Key paths name the buffers by dtype (``['float32']``); :func:`flax.serialization`
    stores them under those names.

    Attributes:
      buffers: the buffers, one per dtype in ``layout.buffer_dtypes``.
      layout: where each leaf of the model's tree lives in them.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
      >>> flat = gc.flatten_params(params)
      >>> [x.shape for x in jax.tree.leaves(flat)]
      [(6,)]
      >>> grads = jax.grad(lambda f: jnp.sum(f.unflatten()["w"] ** 2))(flat)
      >>> [float(x) for x in grads.buffers[0]]  # b's two zeros, then 2 w
      [0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    """

    __slots__ = ("buffers", "layout")

    buffers: tuple[Any, ...]
    layout: FlatLayout

    def __init__(self, buffers: tuple[Any, ...], layout: FlatLayout) -> None:
        # JAX rebuilds pytrees with arbitrary children (None, bools, tracers, object()),
        # so nothing here looks at the buffers.
        self.buffers = tuple(buffers)
        self.layout = layout
        _register_with_flax()

    def unflatten(self) -> Any:
        """Returns the model's tree: each leaf a slice of its buffer, reshaped.

        Inside ``jit`` the slices are views that XLA folds into their users;
        outside, each leaf is a new array. Buffers given as
        ``jax.ShapeDtypeStruct`` give a tree of ShapeDtypeStructs.

        Raises:
          TypeError: if the buffers are not arrays (say a FlatParams of bools
            made by ``jax.tree.map``).
        """
        lay = self.layout
        leaves: list[Any] = [None] * len(lay.shapes)
        for b, buf in enumerate(self.buffers):
            mine = [i for i, k in enumerate(lay.buffer_of) if k == b]  # in offset order
            if isinstance(buf, jax.ShapeDtypeStruct):
                for i in mine:
                    leaves[i] = jax.ShapeDtypeStruct(lay.shapes[i], lay.dtypes[i])
                continue
            if not hasattr(buf, "shape"):
                raise TypeError(
                    f"FlatParams.unflatten: buffer {b} is a {type(buf).__name__}, not an "
                    f"array; only a FlatParams of arrays (parameters, gradients, moments) "
                    f"unflattens into the model's tree."
                )
            # One split, not a slice per leaf: its transpose is one concatenation, so the
            # gradient of a loss of the tree is the flat buffer directly. (The transpose of
            # each slice would be a pad to the whole buffer, summed over the leaves.)
            pieces = jax.lax.split(buf, [math.prod(lay.shapes[i]) for i in mine])
            for i, piece in zip(mine, pieces, strict=True):
                leaves[i] = jnp.reshape(piece, lay.shapes[i])
        return lay.treedef.unflatten(leaves)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{_buffer_name(dt)}[{n}]"
            for dt, n in zip(self.layout.buffer_dtypes, self.layout.sizes, strict=True)
        )
        return f"FlatParams({len(self.layout.shapes)} leaves in {parts or 'no buffers'})"


def _flatten_with_keys(
    flat: FlatParams,
) -> tuple[list[tuple[Any, Any]], FlatLayout]:
    names = [_buffer_name(dt) for dt in flat.layout.buffer_dtypes]
    keys = [jax.tree_util.DictKey(n) for n in names]
    return list(zip(keys, flat.buffers, strict=True)), flat.layout


def _flatten(flat: FlatParams) -> tuple[tuple[Any, ...], FlatLayout]:
    return flat.buffers, flat.layout


def _unflatten(layout: FlatLayout, buffers: Any) -> FlatParams:
    return FlatParams(tuple(buffers), layout)


jax.tree_util.register_pytree_with_keys(FlatParams, _flatten_with_keys, _unflatten, _flatten)


_FLAX_REGISTERED = False


def _register_with_flax() -> None:
    """Teaches ``flax.serialization`` to store a FlatParams as ``{dtype name: buffer}``.

    gradchain never imports Flax: this registers only once Flax's serialization
    module is loaded (checked whenever a FlatParams is built, a dict lookup).
    """
    global _FLAX_REGISTERED
    if _FLAX_REGISTERED:
        return
    serialization = sys.modules.get("flax.serialization")
    if serialization is None:
        return
    _FLAX_REGISTERED = True

    def to_state_dict(flat: FlatParams) -> dict[str, Any]:
        names = [_buffer_name(dt) for dt in flat.layout.buffer_dtypes]
        return {n: serialization.to_state_dict(b) for n, b in zip(names, flat.buffers, strict=True)}

    def from_state_dict(target: FlatParams, state: dict[str, Any]) -> FlatParams:
        names = [_buffer_name(dt) for dt in target.layout.buffer_dtypes]
        if sorted(state) != sorted(names):
            raise ValueError(
                f"FlatParams: the state dict has buffers {sorted(state)}, but the target's "
                f"layout has {sorted(names)}. Restore into a FlatParams of the same model."
            )
        buffers = tuple(
            serialization.from_state_dict(b, state[n], name=n)
            for n, b in zip(names, target.buffers, strict=True)
        )
        return FlatParams(buffers, target.layout)

    serialization.register_serialization_state(
        FlatParams, to_state_dict, from_state_dict, override=True
    )


def flatten_params(params: Any) -> FlatParams:
    """Packs a tree of parameters into one 1-D buffer per dtype, to keep between steps.

    Leaves of one dtype are concatenated in tree order (``jax.tree.leaves``);
    each keeps its dtype. Call this once, before training, and train the
    FlatParams: elementwise optimizers (``adam``, ``adamw``, ``sgd``,
    ``clip_by_global_norm``, ``add_decayed_weights`` without a mask, schedules,
    chains of them) then run a few kernels per step instead of a few per leaf,
    and compile as for a single array. The model reads ``flat.unflatten()``.

    Measured on a 2-core CPU (10M float32 parameters in 1000 leaves, AdamW
    jitted with donated buffers, medians of interleaved rounds): the optimizer
    step alone compiles in 0.19 s against Optax's 8.1 s on the tree and runs
    in 0.47 of Optax's time. But in a whole training step of a model that
    computes each leaf's gradient apart (forward, backward and update of an
    elementwise 1000-leaf model), gathering the gradients into the buffer
    cost more than the update saved: compile 1.4 and step 1.1 times Optax's on
    the tree. Measure your own model; on a single large leaf nothing is gained.

    The buffers are not sharded like the leaves were: keep FlatParams for
    replicated (single-device or data-parallel) parameters.

    Args:
      params: a tree of arrays or ``jax.ShapeDtypeStruct`` (for abstract
        initialisation; a FlatParams of ShapeDtypeStructs comes back).

    Returns:
      A FlatParams; ``flatten_params(p).unflatten()`` equals ``p``.

    Raises:
      TypeError: if a leaf is not an array, a number or a ShapeDtypeStruct, or
        if ``params`` is already a FlatParams.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.full((2, 2), 1.0), "b": jnp.zeros(2, jnp.bfloat16)}
      >>> flat = gc.flatten_params(params)
      >>> flat
      FlatParams(2 leaves in bfloat16[2], float32[4])
      >>> tx = gc.adamw(0.1, weight_decay=0.0)
      >>> state = tx.init(flat)
      >>> grads = jax.tree.map(jnp.ones_like, flat)
      >>> updates, state = tx.update(grads, state, flat)
      >>> flat = gc.apply_updates(flat, updates)
      >>> round(float(flat.unflatten()["w"][0, 0]), 4)  # Adam's first step: -lr * sign(g)
      0.9
    """
    if isinstance(params, FlatParams):
        raise TypeError(
            "flatten_params: `params` is already a FlatParams; flatten the model's tree "
            "once and keep the FlatParams between steps."
        )
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    checked = []
    for path, x in with_paths:
        if isinstance(x, jax.ShapeDtypeStruct):
            checked.append(x)
            continue
        try:
            checked.append(jnp.asarray(x))
        except TypeError as err:
            raise TypeError(
                f"flatten_params: the leaf at {jax.tree_util.keystr(path) or '<root>'} is a "
                f"{type(x).__name__}, not an array; parameters must be arrays or numbers."
            ) from err
    layout = FlatLayout.of(checked, treedef)
    buffers = []
    for b, (dt, size) in enumerate(zip(layout.buffer_dtypes, layout.sizes, strict=True)):
        members = [x for x, k in zip(checked, layout.buffer_of, strict=True) if k == b]
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in members):
            buffers.append(jax.ShapeDtypeStruct((size,), dt))
        else:
            buffers.append(jnp.concatenate([jnp.ravel(x) for x in members]))
    return FlatParams(tuple(buffers), layout)


def has_flat_params(*trees: Any) -> bool:
    """Whether any of ``trees`` is, or holds, a :class:`FlatParams`."""

    def is_flat(x: Any) -> bool:
        return isinstance(x, FlatParams)

    return any(is_flat(x) for t in trees for x in jax.tree.leaves(t, is_leaf=is_flat))


def refuse_flat_params(fn: str, why: str, *trees: Any) -> None:
    """Raises a ValueError naming ``fn`` when a tree holds a :class:`FlatParams`.

    For transforms whose result depends on each leaf's shape or path, which
    the flat buffers lose: on them the transform would run, on 1-D buffers of
    every leaf together, and silently compute something else.

    Args:
      fn: the public transform, named in the error.
      why: what it needs from the tree (``"each matrix's shape"``...).
      *trees: the updates, parameters, masks or labels it received.

    Raises:
      ValueError: if a tree holds a FlatParams.
    """
    if not has_flat_params(*trees):
        return
    raise ValueError(
        f"{fn}: got a gc.FlatParams, but {fn} depends on {why}, which its flat per-dtype "
        f"buffers do not keep; on them it would compute something else. Run it on the "
        f"model's tree (`flat.unflatten()`), or keep FlatParams for elementwise optimizers "
        f"(adam, adamw, sgd, clip_by_global_norm, add_decayed_weights without a mask...)."
    )
