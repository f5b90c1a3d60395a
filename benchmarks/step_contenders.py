"""The contenders of ``bench_step.py``: one optimizer step each, built the same way.

A contender is a named entry whose ``build(tree)`` returns a :class:`Built`:
``init(params) -> state`` and a step ``step(params, state, grads) -> (params,
state)``, jitted afresh on every ``build`` with parameters and state donated
(torch's steps run eagerly, in place). Each contender may keep the parameters
in its own layout (one flat buffer, torch tensors): ``to_native`` makes a
private copy of a JAX tree in that layout, ``to_leaves`` reads the parameters
back as NumPy leaves for the agreement check.

Every contender computes AdamW with the same hyperparameters (``LR``, ``B1``,
``B2``, ``EPS``, ``WD``), or the 5-link chain
``clip_by_global_norm -> scale_by_adam -> add_decayed_weights ->
scale_by_schedule(cosine) -> scale(-1)``. The roofline is AdamW written as
one elementwise expression over one flat buffer of all the parameters: it
reads parameters, gradients and both moments and writes parameters and both
moments (7 array passes, the least any Adam step can move), with nothing per
leaf. It is the bound for the chain as well. XLA:CPU has no multi-output loop
fusion, so it compiles to three loop kernels (the moments, then the
parameters, which read the new moments again: 10 passes); it is the best one
XLA program does, and a hand-written single-pass kernel (torch's fused AdamW
is one) can beat it.

Optax 0.2.8 does not trace under ``jax_numpy_dtype_promotion="strict"``; when
that mode is on (the test suite sets it) Optax's init and step are traced
under ``"standard"``, which changes no compiled arithmetic here.

Contenders that depend on something optional (torch; gradchain's
``flatten_params`` layout, one flat buffer per dtype kept between steps) are
listed by :func:`contenders`, which also returns the reasons for those it
leaves out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradchain as gc

# torch's OpenMP threads spin while they wait by default; on a machine with more runnable
# threads than cores that spinning makes a 10k-element step 100x slower. Set before torch
# loads; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

Tree = Any
LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 1e-2
CLIP_NORM, DECAY_STEPS = 1.0, 10_000


class Built(NamedTuple):
    """One contender built for one tree.

    Attributes:
      init: ``init(native_params) -> state``.
      step: ``step(native_params, state, grads) -> (native_params, state)``;
        for JAX contenders a fresh ``jax.jit`` donating params and state.
      to_native: a private copy of a JAX tree in the contender's layout.
      grads_native: the gradients in the contender's layout (not donated: the
        same gradients feed every step).
      to_leaves: the contender's parameters as a list of NumPy arrays, in
        ``jax.tree.leaves`` order of the original tree.
      block: waits until a step's result is computed.
      state_bytes: the bytes held by a state.
      jitted: whether ``step`` is a JAX jit (its compiled HLO can be read).
    """

    init: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]
    to_native: Callable[[Tree], Any]
    grads_native: Callable[[Tree], Any]
    to_leaves: Callable[[Any], list[np.ndarray]]
    block: Callable[[Any], Any]
    state_bytes: Callable[[Any], int]
    jitted: bool


@dataclasses.dataclass(frozen=True)
class Contender:
    """A named way of running one optimizer step.

    Attributes:
      name: the row label, e.g. ``"optax adamw"``.
      optimizer: ``"adamw"`` or ``"chain5"``: the Optax contender it is
        compared with (``"optax adamw"`` or ``"optax chain5"``).
      build: ``build(tree) -> Built``; a fresh closure and jit on every call.
    """

    name: str
    optimizer: str
    build: Callable[[Tree], Built]

    @property
    def library(self) -> str:
        """The first word of the name: roofline, optax, gradchain or torch."""
        return self.name.split()[0]


# -- helpers ---------------------------------------------------------------------------


def strict_promotion() -> bool:
    """Whether Optax's AdamW fails to trace under the ambient dtype promotion mode.

    Returns:
      True if an Optax ``adamw`` update raises a TypePromotionError as is.
    """
    tx = optax.adamw(1e-3)
    x = jnp.ones(2, jnp.float32)
    try:
        jax.eval_shape(lambda p: tx.update(p, tx.init(p), p), x)
    except jax.dtypes.TypePromotionError:
        return True
    return False


def _optax_promotion() -> contextlib.AbstractContextManager[Any]:
    if strict_promotion():
        return jax.numpy_dtype_promotion("standard")
    return contextlib.nullcontext()


def _copy(tree: Tree) -> Tree:
    return jax.tree.map(jnp.copy, tree)


def _leaves(tree: Tree) -> list[np.ndarray]:
    # np.array copies: a view of a JAX buffer would change when the buffer is donated.
    return [np.array(x, copy=True) for x in jax.tree.leaves(tree)]


def _tree_bytes(tree: Tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _jax_built(
    init: Callable[[Any], Any],
    update: Callable[[Any, Any, Any], tuple[Any, Any]],
    to_native: Callable[[Tree], Any] = _copy,
    grads_native: Callable[[Tree], Any] = lambda tree: tree,
    to_leaves: Callable[[Any], list[np.ndarray]] = _leaves,
) -> Built:
    """A Built around a fresh ``jax.jit`` of ``update``, donating params and state."""

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        return update(params, state, grads)

    return Built(
        init=init,
        step=jax.jit(step, donate_argnums=(0, 1)),
        to_native=to_native,
        grads_native=grads_native,
        to_leaves=to_leaves,
        block=jax.block_until_ready,
        state_bytes=_tree_bytes,
        jitted=True,
    )


# -- the roofline --------------------------------------------------------------------


class RooflineState(NamedTuple):
    """Moments and step count of the roofline kernel."""

    step: jax.Array
    mu: jax.Array
    nu: jax.Array


def roofline_adamw(
    p: jax.Array, state: RooflineState, g: jax.Array
) -> tuple[jax.Array, RooflineState]:
    """AdamW as one elementwise expression over one flat buffer (7 array passes).

    Args:
      p: the parameters, one 1-D float32 buffer.
      state: the moments and the step count.
      g: the gradients, like ``p``.

    Returns:
      The new parameters and state.
    """
    t = state.step + 1
    tf = t.astype(jnp.float32)
    bc1 = 1.0 - jnp.power(jnp.float32(B1), tf)
    bc2 = 1.0 - jnp.power(jnp.float32(B2), tf)
    mu = B1 * state.mu + (1.0 - B1) * g
    nu = B2 * state.nu + (1.0 - B2) * (g * g)
    p = p - LR * ((mu / bc1) / (jnp.sqrt(nu / bc2) + EPS) + WD * p)
    return p, RooflineState(t, mu, nu)


def _build_roofline(tree: Tree) -> Built:
    shapes = [(x.shape, x.size) for x in jax.tree.leaves(tree)]
    splits = np.cumsum([size for _, size in shapes])[:-1].tolist()

    def to_native(t: Tree) -> jax.Array:
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(t)])

    def to_leaves(flat: jax.Array) -> list[np.ndarray]:
        parts = np.split(np.array(flat, copy=True), splits)
        return [part.reshape(shape) for part, (shape, _) in zip(parts, shapes, strict=True)]

    def init(flat: jax.Array) -> RooflineState:
        zeros = jnp.zeros_like(flat)
        return RooflineState(jnp.zeros([], jnp.int32), zeros, jnp.copy(zeros))

    return _jax_built(init, roofline_adamw, to_native, to_native, to_leaves)


# -- Optax and gradchain -------------------------------------------------------------


def _adamw(lib: Any) -> Any:
    return lib.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)


def _chain5(lib: Any) -> Any:
    return lib.chain(
        lib.clip_by_global_norm(CLIP_NORM),
        lib.scale_by_adam(b1=B1, b2=B2, eps=EPS),
        lib.add_decayed_weights(WD),
        lib.scale_by_schedule(lib.cosine_decay_schedule(LR, DECAY_STEPS)),
        lib.scale(-1.0),
    )


def _build_tx(lib: Any, make: Callable[[Any], Any], promotion: bool, tree: Tree) -> Built:
    del tree
    tx = make(lib)  # built once; the jitted step closes over it

    def ctx() -> contextlib.AbstractContextManager[Any]:
        return _optax_promotion() if promotion else contextlib.nullcontext()

    def init(params: Tree) -> Any:
        with ctx():
            return tx.init(params)

    def update(params: Tree, state: Any, grads: Tree) -> tuple[Tree, Any]:
        with ctx():
            updates, state = tx.update(grads, state, params)
            return lib.apply_updates(params, updates), state

    return _jax_built(init, update)


def _build_flat(make: Callable[[Any], Any], flatten: Callable[[Tree], Any], tree: Tree) -> Built:
    """A gradchain optimizer on ``gc.flatten_params``' buffers: one per dtype, kept flat."""
    del tree
    tx = make(gc)

    def update(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    def to_leaves(flat: Any) -> list[np.ndarray]:
        return _leaves(flat.unflatten())

    def to_native(t: Tree) -> Any:
        flat = flatten(t)  # a concatenation: new buffers, unless one was passed through
        sources = {id(x) for x in jax.tree.leaves(t)}
        shared = any(id(x) in sources for x in jax.tree.leaves(flat))
        return _copy(flat) if shared else flat

    return _jax_built(tx.init, update, to_native, flatten, to_leaves)


# -- torch ---------------------------------------------------------------------------


def _build_torch(kind: str, tree: Tree) -> Built:
    import torch

    del tree

    def to_native(t: Tree) -> list[Any]:
        return [torch.nn.Parameter(torch.from_numpy(np.array(x, copy=True))) for x in _leaves(t)]

    def to_leaves(params: list[Any]) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in params]

    def init(params: list[Any]) -> Any:
        flags = {"fused": True} if kind == "fused" else {"foreach": True}
        return torch.optim.AdamW(params, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, **flags)

    def step(params: list[Any], opt: Any, grads: list[Any]) -> tuple[list[Any], Any]:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        return params, opt

    def state_bytes(opt: Any) -> int:
        return sum(
            v.numel() * v.element_size()
            for s in opt.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor)
        )

    def grads_native(t: Tree) -> list[Any]:
        return [torch.from_numpy(x) for x in _leaves(t)]

    return Built(
        init, step, to_native, grads_native, to_leaves, lambda out: out, state_bytes, jitted=False
    )


# -- the table ---------------------------------------------------------------------


def contenders(torch: bool = True) -> tuple[list[Contender], list[str]]:
    """Every contender that can run here, and why each missing one cannot.

    Args:
      torch: whether to try torch's (importing torch takes seconds).

    Returns:
      ``(contenders, skipped)``: the table, and one line per contender left out.
    """
    strict = strict_promotion()
    table = [
        Contender("roofline", "adamw", _build_roofline),
        Contender("optax adamw", "adamw", functools.partial(_build_tx, optax, _adamw, strict)),
        Contender("optax chain5", "chain5", functools.partial(_build_tx, optax, _chain5, strict)),
        Contender("gradchain adamw", "adamw", functools.partial(_build_tx, gc, _adamw, False)),
        Contender("gradchain chain5", "chain5", functools.partial(_build_tx, gc, _chain5, False)),
    ]
    skipped = []
    flatten = getattr(gc, "flatten_params", None)
    if flatten is not None:
        for name, make in (("adamw", _adamw), ("chain5", _chain5)):
            build = functools.partial(_build_flat, make, flatten)
            table.append(Contender(f"gradchain {name} flat", name, build))
    else:
        skipped.append("gradchain flat: this gradchain has no `flatten_params`")
    try:
        if not torch:
            raise ImportError("not asked for")
        import torch as _  # noqa: F401
    except ImportError as err:
        skipped.append(f"torch AdamW: `import torch` failed ({err})")
    else:
        table.append(
            Contender("torch AdamW fused", "adamw", functools.partial(_build_torch, "fused"))
        )
        table.append(
            Contender("torch AdamW foreach", "adamw", functools.partial(_build_torch, "foreach"))
        )
    return table, skipped


def select(table: Sequence[Contender], names: Sequence[str] | None) -> list[Contender]:
    """The contenders whose names contain one of ``names`` (all when None).

    The roofline and the two Optax contenders are always kept: every ratio needs them.

    Args:
      table: the contenders.
      names: substrings to match, or None.

    Returns:
      The selected contenders, in table order.
    """
    if not names:
        return list(table)
    keep = {"roofline", "optax adamw", "optax chain5"}
    return [c for c in table if c.name in keep or any(n in c.name for n in names)]
