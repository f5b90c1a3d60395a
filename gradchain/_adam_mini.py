r"""Adam-mini (Zhang et al., 2024): one second-moment value per block of parameters.

.. math::
  m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
  v_{b,t} = \beta_2 v_{b,t-1} + (1-\beta_2)\, \mathrm{mean}(g_{b,t} \odot g_{b,t}), \\
  u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_{b,t} / (1-\beta_2^t)} + \epsilon}
  \quad \text{on each block } b,

the paper's Algorithm 1: Adam whose second moment is shared inside each block,
so the state holds the first moment plus one number per block, about half of
Adam's.

Blocks. A block spec says which axes of a parameter index its blocks (one
second-moment value per index along the kept axes; the mean runs over the
others). The presets, for Flax's layouts (kernels ``(in, out)``, convolution
kernels ``(..., in, out)``, ``nnx.MultiHeadAttention``'s query and key kernels
``(in, heads, head_dim)``, embedding tables ``(vocab, features)``):

- ``"neuron"``: one value per output unit, the last axis (the paper's rule
  for value, attention-output and MLP matrices, and for the output layer,
  whose output units are the tokens);
- ``"heads"``: one per attention head, axis -2 of a 3-D kernel (the paper's
  rule for queries and keys);
- ``"token"``: one per row, axis 0 (the paper's rule for embeddings);
- ``"tensor"``: one for the whole tensor (norm scales, biases);
- ``"coordinate"``: one per entry, Adam itself (the authors' code uses it for
  embeddings and the output layer);
- :class:`AdamMiniBlocks` for anything else, e.g. a fused ``(in, heads *
  head_dim)`` query kernel: ``AdamMiniBlocks(num_heads=8)``.

The default, without rules: ``"token"`` for a 2-D leaf named ``embedding``
(Flax's Embed), ``"heads"`` for a 3-D ``query/kernel`` or ``key/kernel``
(Flax's attention), ``"neuron"`` for any other leaf of 2 or more dimensions,
``"tensor"`` for vectors and scalars. ``blocks`` adds rules in front of it:
``(pattern, spec)`` pairs, patterns as in :class:`Rule` (globs over
``"/"``-joined parameter paths, or compiled regexes), the first match wins.
:func:`adam_mini_blocks` lists each parameter's spec and state shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _check, _explicit, _tree
from gradchain._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._combine import chain
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._keypaths import leaves_with_keys, segments
from gradchain._regularizing import add_decayed_weights
from gradchain._rules import Pattern, Rule, _check_pattern
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn

Preset = Literal["neuron", "heads", "token", "tensor", "coordinate"]
_PRESETS = ("neuron", "heads", "token", "tensor", "coordinate")


class AdamMiniBlocks(NamedTuple):
    """Adam-mini's blocks of one parameter: one second-moment value per index of ``keep_axes``.

    With ``num_heads``, the last axis is first split into ``num_heads`` equal
    contiguous chunks (a fused ``(in, heads * head_dim)`` kernel), and each
    chunk is a block, per index of the other kept axes.
    """

    keep_axes: tuple[int, ...] = ()
    num_heads: int | None = None


BlockSpec = Preset | AdamMiniBlocks
Blocks = Sequence[tuple[Pattern, BlockSpec]] | Mapping[Pattern, BlockSpec] | None


class _View(NamedTuple):
    work_shape: tuple[int, ...]  # the leaf's shape, last axis split into heads if asked
    keep: tuple[int, ...]  # kept axes of work_shape, ascending
    state_shape: tuple[int, ...]  # the second moment's shape


def _check_spec(fn: str, where: str, spec: Any) -> BlockSpec:
    if isinstance(spec, str) and spec in _PRESETS:
        return cast(Preset, spec)
    if isinstance(spec, AdamMiniBlocks):
        axes = spec.keep_axes
        if not isinstance(axes, tuple) or not all(
            isinstance(a, int | np.integer) and not isinstance(a, bool) for a in axes
        ):
            raise TypeError(f"{fn}: {where} keeps axes {axes!r}; give a tuple of ints, e.g. (-1,).")
        if spec.num_heads is not None:
            _check.positive_int(fn, f"{where}.num_heads", spec.num_heads)
        return spec
    raise TypeError(
        f"{fn}: {where} must be one of {list(_PRESETS)} or a gc.AdamMiniBlocks(keep_axes, "
        f"num_heads); got {type(spec).__name__} {spec!r:.60}."
    )


def _default_spec(parts: tuple[str, ...], ndim: int) -> Preset:
    if ndim == 2 and parts[-1:] == ("embedding",):
        return "token"
    if ndim == 3 and parts[-2:] in (("query", "kernel"), ("key", "kernel")):
        return "heads"
    return "neuron" if ndim >= 2 else "tensor"


def _view(fn: str, where: str, shape: tuple[int, ...], spec: BlockSpec) -> _View:
    """The blocks of a leaf of ``shape`` under ``spec``, checked."""
    nd = len(shape)
    if spec == "coordinate":
        return _View(shape, tuple(range(nd)), shape)
    presets: dict[str, tuple[int, ...]] = {"neuron": (-1,), "heads": (-2,), "token": (0,)}
    if isinstance(spec, AdamMiniBlocks):
        keep, heads = spec.keep_axes, spec.num_heads
    else:
        keep, heads = presets.get(spec, ()), None
        if spec == "heads" and nd != 3:
            raise ValueError(
                f'{fn}: the parameter at {where} has shape {shape}; "heads" wants a 3-D '
                f"(in, heads, head_dim) kernel. For a fused (in, heads * head_dim) kernel give "
                f"gc.AdamMiniBlocks(num_heads=...)."
            )
    for a in keep:
        if not -nd <= a < nd:
            raise ValueError(
                f"{fn}: the blocks of the parameter at {where} keep axis {a}, but it has shape "
                f"{shape}. Give axes in [-{nd}, {nd}), or another spec for this path."
            )
    kept = sorted({int(a) % nd for a in keep})
    work = tuple(shape)
    if heads is not None:
        if nd == 0 or shape[-1] % heads:
            raise ValueError(
                f"{fn}: the parameter at {where} has shape {shape}; its last axis cannot be "
                f"split into num_heads={heads} equal chunks."
            )
        if nd - 1 in kept:
            raise ValueError(
                f"{fn}: the blocks at {where} both keep the last axis and split it into "
                f"num_heads={heads}; keep one or the other."
            )
        work = (*shape[:-1], heads, shape[-1] // heads)
        kept.append(nd - 1)
    return _View(work, tuple(kept), tuple(work[a] for a in kept))


def _block_resolver(fn: str, blocks: Blocks) -> Any:
    """A function from a tree to each leaf's (path, view), given the user's rules."""
    items = list(blocks.items()) if isinstance(blocks, Mapping) else list(blocks or ())
    rules: list[tuple[Rule, BlockSpec]] = []
    for i, item in enumerate(items):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(
                f"{fn}: `blocks` entry {i} must be a (pattern, spec) pair, e.g. "
                f'("**/query/kernel", "heads"); got {type(item).__name__} {item!r:.60}.'
            )
        pattern, spec = item
        _check_pattern(f"{fn}: `blocks` entry {i}", pattern)
        rules.append((Rule(pattern, name=f"blocks{i}"), _check_spec(fn, f"blocks[{i}]", spec)))

    def resolve(tree: Any) -> list[tuple[str, tuple[int, ...], BlockSpec, _View]]:
        out = []
        for keys, leaf in leaves_with_keys(tree):
            parts = segments(keys)
            shape = tuple(jnp.shape(leaf))
            found: BlockSpec | None = next((s for r, s in rules if r.matches(parts)), None)
            spec = _default_spec(parts, len(shape)) if found is None else found
            where = "/".join(parts) or "<root>"
            out.append((where, shape, spec, _view(fn, where, shape, spec)))
        return out

    return resolve


def _describe(spec: BlockSpec) -> str:
    return spec if isinstance(spec, str) else repr(spec)


class AdamMiniBlockRow(NamedTuple):
    """One row of :func:`adam_mini_blocks`."""

    path: str
    shape: tuple[int, ...]
    blocks: str  # the preset's name, or the AdamMiniBlocks
    state_shape: tuple[int, ...]  # the shape of this parameter's second moment


def adam_mini_blocks(params: Any, blocks: Blocks = None) -> tuple[AdamMiniBlockRow, ...]:
    """How :func:`scale_by_adam_mini` splits each parameter into blocks.

    Args:
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      blocks: the rules, as given to :func:`scale_by_adam_mini`.

    Returns:
      One :class:`AdamMiniBlockRow` per leaf, in tree order.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> [(r.path, r.blocks, r.state_shape) for r in gc.adam_mini_blocks(params)]
      [('b', 'tensor', ()), ('w', 'neuron', (3,))]
    """
    resolve = _block_resolver("adam_mini_blocks", blocks)
    return tuple(
        AdamMiniBlockRow(where, shape, _describe(spec), view.state_shape)
        for where, shape, spec, view in resolve(params)
    )


class ScaleByAdamMiniState(NamedTuple):
    """State of :func:`scale_by_adam_mini`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates, like the params, in mu_dtype
    nu: Updates  # EMA of the block means of the squares: one leaf per param, its blocks' shape
    hparams: Hyperparams  # b1, b2 (with complements), eps


def scale_by_adam_mini(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    mu_dtype: Any | None = None,
    *,
    blocks: Blocks = None,
) -> GradientTransformation:
    r"""Adam-mini's scaling: Adam with one second-moment value per block (see the module).

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the block second moments, in [0, 1).
      eps: added to the root of the second moment, >= 0.
      mu_dtype: dtype of the first moment; the parameters' by default.
      blocks: rules in front of the default partition: ``(pattern, spec)``
        pairs (or a dict), a spec being a preset name or an
        :class:`AdamMiniBlocks`; the first matching rule wins.

    Returns:
      A GradientTransformation whose state is a ScaleByAdamMiniState; the
      second moment of each leaf has the shape its blocks give (``(out,)`` for
      an ``(in, out)`` kernel, ``()`` for a vector).

    Raises:
      TypeError: for a malformed rule or spec.
      ValueError: for a number out of range; at init or trace time, a spec
        that does not fit a parameter, naming its path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_adam_mini()
      >>> g = jnp.array([[3.0, 1.0], [4.0, 0.0]])
      >>> u, state = tx.update(g, tx.init(g))
      >>> state.nu.shape  # one value per output unit (column)
      (2,)
      >>> [[round(float(x), 3) for x in row] for row in u]  # g / sqrt(mean(g**2)) per column
      [[0.849, 1.414], [1.131, 0.0]]

    References:
      Zhang, Chen, Li, Ding, Wu, Kingma, Ye, Luo and Sun, Adam-mini: Use Fewer
      Learning Rates To Gain More, ICLR 2025 (arXiv:2406.16793), Algorithms 1 and 3.
    """
    fn = "scale_by_adam_mini"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    resolve = _block_resolver(fn, blocks)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByAdamMiniState:
        refuse_flat_params(
            "scale_by_adam_mini", "each leaf's shape and path (one second moment per block)", params
        )
        views = [view for _, _, _, view in resolve(params)]
        leaves, treedef = jax.tree.flatten(params)
        nu = treedef.unflatten(
            [jnp.zeros(v.state_shape, p.dtype) for p, v in zip(leaves, views, strict=True)]
        )
        return ScaleByAdamMiniState(
            jnp.zeros([], jnp.int32), _tree.accumulator_like(params, mu_dt), nu, spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByAdamMiniState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamMiniState]:
        del params  # the blocks follow the updates' paths and shapes
        _tree.check_state(fn, state, ScaleByAdamMiniState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_same_structure(fn, "updates", updates, "state.nu", state.nu)
        found = resolve(updates)
        for (where, _, blocks_spec, view), v in zip(found, jax.tree.leaves(state.nu), strict=True):
            if tuple(v.shape) != view.state_shape:
                raise ValueError(
                    f"{fn}: state.nu at {where} has shape {tuple(v.shape)}, but the blocks "
                    f"{_describe(blocks_spec)!r} of an update of this shape need "
                    f"{view.state_shape}. Pass the state from this transformation's own init."
                )
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"])
        corrections = (_tree.debias(hp["b1"], step), _tree.debias(hp["b2"], step))

        def leaf(g: jax.Array, m: jax.Array, v: jax.Array, view: _View) -> tuple[jax.Array, ...]:
            gc, mc, vc, b1_, b2_, omb1, omb2, eps_, c1, c2 = _tree.upcast(
                g, m, v, *scalars, *corrections
            )
            reduce = tuple(a for a in range(len(view.work_shape)) if a not in view.keep)
            count = math.prod(view.work_shape[a] for a in reduce)
            sq = _tree.abs_sq(gc).real.reshape(view.work_shape)
            block_mean = jnp.sum(sq, axis=reduce) / max(count, 1)
            new_v = omb2 * block_mean.reshape(view.state_shape) + b2_ * vc
            new_m = omb1 * gc + b1_ * mc
            kept_dims = [n if a in view.keep else 1 for a, n in enumerate(view.work_shape)]
            denom = jnp.sqrt(new_v / c2) + eps_
            m_hat = (new_m / c1).reshape(view.work_shape)
            out = (m_hat / denom.reshape(kept_dims)).reshape(g.shape)
            # The block moments keep their type (replicated, as init builds them) on an
            # Explicit mesh, where the block mean of a sharded leaf comes out sharded.
            new_v = _explicit.reshard(new_v.astype(v.dtype), _explicit.mesh_spec(v))
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v

        treedef = jax.tree.structure(updates)
        outs = [
            leaf(g, m, v, view)
            for g, m, v, (_, _, _, view) in zip(
                jax.tree.leaves(updates),
                jax.tree.leaves(state.mu),
                jax.tree.leaves(state.nu),
                found,
                strict=True,
            )
        ]
        new_updates, mu, nu = (treedef.unflatten([o[i] for o in outs]) for i in range(3))
        return new_updates, ScaleByAdamMiniState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


def adam_mini(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn | None = None,
    *,
    blocks: Blocks = None,
) -> GradientTransformationExtraArgs:
    r"""Adam-mini with decoupled weight decay: AdamW with one learning rate per block.

    ``chain(scale_by_adam_mini(b1, b2, eps, mu_dtype, blocks=blocks),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``,
    with :func:`adamw`'s defaults. See the module docstring for the blocks and
    :func:`adam_mini_blocks` for how a model is split.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
      >>> state = gc.adam_mini(1e-3).init(params)
      >>> {k: v.shape for k, v in state[0].nu.items()}  # Adam's nu would be (10,), (64, 10)
      {'b': (), 'w': (10,)}

    References:
      Zhang et al., Adam-mini: Use Fewer Learning Rates To Gain More, ICLR 2025.
    """
    return chain(
        scale_by_adam_mini(b1, b2, eps, mu_dtype, blocks=blocks),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
