r"""Shampoo's blocks, stacked by shape: the layout that makes it compile in seconds.

A parameter of rank >= 2 (after dropping axes of size 1) is cut into blocks of
at most ``block_size`` along every axis, as in Anil et al. (2020): an axis of
size ``n`` gives ``n // block_size`` blocks of ``block_size`` and, when
``block_size`` does not divide ``n``, one block of the remainder. So a (5, 7)
matrix with ``block_size=3`` has rows [3, 2] and columns [3, 3, 1]: blocks
(3, 3) x 2, (3, 1), (2, 3) x 2 and (2, 1). Each block has its own Kronecker
statistics, one (n, n) matrix per axis.

Blocks of one shape, from every parameter of the tree, are stacked into one
array (a *group*, keyed by the shape, ``"3x3"``), so the statistics update is
one batched matmul per group and axis, and the inverse roots are one
``vmap``-ed coupled Newton iteration per matrix size and exponent, instead of
one loop per parameter: a 1000-leaf model compiles a handful of loops, not a
thousand.

Everything here is static bookkeeping on shapes (:class:`Plan`, built while
tracing, from shapes only) plus the batched array code that uses it.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _explicit, _linalg, _tree

_HIGHEST = jax.lax.Precision.HIGHEST

Stacks = dict[str, jax.Array]
"""Group key -> that group's data: blocks stacked on axis 0, or a flat vector."""
Factors = dict[str, tuple[jax.Array, ...]]
"""Block group key -> one stacked (count, n_d, n_d) matrix per block axis d."""
DIAGONAL = "diagonal"
"""The key of the flat group of the leaves that are not preconditioned."""


@dataclass(frozen=True)
class Region:
    """A box of a parameter whose blocks all share one shape (a grid of ``counts`` blocks)."""

    start: tuple[int, ...]  # where the box begins, in the squeezed parameter
    counts: tuple[int, ...]  # blocks along each axis
    block: tuple[int, ...]  # the blocks' shape
    key: str  # the group the blocks go to
    offset: int  # the index of the region's first block in its group


@dataclass(frozen=True)
class LeafPlan:
    """Where one leaf's entries live: blocks of block groups, or a run of a flat group."""

    index: int  # position among the tree's leaves
    shape: tuple[int, ...]  # as given
    squeezed: tuple[int, ...]  # without axes of size 1
    runs: tuple[int, ...]  # per squeezed axis, how many block runs (full, remainder)
    regions: tuple[Region, ...]  # in the order of itertools.product over the runs
    flat: tuple[str, int] | None  # (group key, offset) for a leaf that is not preconditioned


@dataclass(frozen=True)
class Group:
    """Blocks of one shape and dtype (or, for ``block == ()``, a flat vector of entries)."""

    block: tuple[int, ...]
    count: int  # blocks, or entries of a flat group
    exponent: int  # p in L^{-1/p}: 2 * rank, or the override
    dtype: Any  # the dtype of the state kept for the group (float32, float64 under x64)
    compute: Any  # the dtype of the statistics and the arithmetic (the same)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the group's stacked data."""
        return (self.count, *self.block)


@dataclass(frozen=True)
class Plan:
    """The layout of a whole tree in groups; built from shapes and dtypes only."""

    leaves: tuple[LeafPlan, ...]  # every leaf, in tree order
    groups: dict[str, Group]  # block groups and flat groups, sorted by key
    segments: dict[str, np.ndarray]  # block group -> which preconditioned leaf each block is of
    preconditioned: int  # how many leaves are cut into blocks

    @property
    def block_groups(self) -> dict[str, Group]:
        """The groups of blocks (those with Kronecker statistics)."""
        return {k: g for k, g in self.groups.items() if g.block}


def squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape without axes of size 1: what Shampoo preconditions."""
    return tuple(n for n in shape if n != 1)


def axis_parts(n: int, block_size: int) -> tuple[tuple[int, int, int], ...]:
    """(start, count, size) runs of blocks along an axis of size ``n``."""
    full, rest = divmod(n, block_size)
    parts = []
    if full:
        parts.append((0, full, block_size))
    if rest:
        parts.append((full * block_size, 1, rest))
    return tuple(parts)


def make_plan(
    leaves: list[Any], block_size: int, exponent_override: int | None, preconditioned: list[bool]
) -> Plan:
    """Cuts every leaf marked ``preconditioned`` into blocks, the others into flat groups.

    Blocks are grouped by shape (``"3x3"``), the other leaves go to one flat
    group (``"diagonal"``); every group is in the default float dtype, so the
    layout does not depend on the dtypes of the parameters or of the gradients.
    """
    counts: dict[str, int] = {}
    groups: dict[str, Group] = {}
    segments: dict[str, list[int]] = {}
    plans = []
    n_pre = 0
    for index, (leaf, chosen) in enumerate(zip(leaves, preconditioned, strict=True)):
        shape = tuple(jnp.shape(leaf))
        squeezed = squeeze_shape(shape)
        dtype = compute = jnp.dtype(_tree.compute_dtype())  # float32 (float64 under x64)
        if not chosen:
            key = DIAGONAL
            offset = counts.get(key, 0)
            counts[key] = offset + math.prod(shape)
            groups[key] = Group((), counts[key], 0, dtype, compute)
            plans.append(LeafPlan(index, shape, squeezed, (), (), (key, offset)))
            continue
        exponent = exponent_override or 2 * len(squeezed)
        parts = tuple(axis_parts(n, block_size) for n in squeezed)
        regions = []
        for combo in itertools.product(*parts):
            block = tuple(size for _, _, size in combo)
            key = "x".join(map(str, block))
            n_blocks = math.prod(count for _, count, _ in combo)
            offset = counts.get(key, 0)
            counts[key] = offset + n_blocks
            groups[key] = Group(block, counts[key], exponent, dtype, compute)
            segments.setdefault(key, []).extend([n_pre] * n_blocks)
            start = tuple(s for s, _, _ in combo)
            n_per_axis = tuple(c for _, c, _ in combo)
            regions.append(Region(start, n_per_axis, block, key, offset))
        plans.append(
            LeafPlan(index, shape, squeezed, tuple(len(p) for p in parts), tuple(regions), None)
        )
        n_pre += 1
    return Plan(
        tuple(plans),
        dict(sorted(groups.items())),
        {k: np.asarray(v, np.int32) for k, v in sorted(segments.items())},
        n_pre,
    )


def _region_blocks(x: jax.Array, region: Region) -> jax.Array:
    """The blocks of one region of ``x`` (squeezed), as (n_blocks, *block)."""
    stop = tuple(
        s + c * b for s, c, b in zip(region.start, region.counts, region.block, strict=True)
    )
    box = x[tuple(slice(s, e) for s, e in zip(region.start, stop, strict=True))]
    k = len(region.block)
    split = box.reshape(
        tuple(v for cb in zip(region.counts, region.block, strict=True) for v in cb)
    )
    order = tuple(range(0, 2 * k, 2)) + tuple(range(1, 2 * k, 2))
    return split.transpose(order).reshape((-1, *region.block))


def _region_from_blocks(blocks: jax.Array, region: Region) -> jax.Array:
    """Inverse of :func:`_region_blocks`: the box of the parameter the blocks came from."""
    k = len(region.block)
    grid = blocks.reshape((*region.counts, *region.block))
    order = tuple(v for d in range(k) for v in (d, k + d))
    box = tuple(c * b for c, b in zip(region.counts, region.block, strict=True))
    return grid.transpose(order).reshape(box)


def gather(plan: Plan, leaves: list[jax.Array]) -> Stacks:
    """The tree's leaves laid out in the plan's groups, in each group's compute dtype.

    One concatenation per group: the cost of compiling it hardly grows with
    the number of leaves, unlike per-leaf arithmetic. Under an Explicit mesh
    each leaf is gathered whole first (:func:`gradchain._explicit.replicate`):
    a block cuts across the shards, and the groups, like the state kept in
    them, are replicated; :func:`scatter` shards the results back.
    """
    pieces: dict[str, list[jax.Array]] = {k: [] for k in plan.groups}
    for lp in plan.leaves:
        x, _ = _explicit.replicate(leaves[lp.index])
        if lp.flat is not None:
            pieces[lp.flat[0]].append(x.reshape(-1).astype(plan.groups[lp.flat[0]].compute))
            continue
        x = x.reshape(lp.squeezed).astype(plan.groups[lp.regions[0].key].compute)
        for region in lp.regions:
            pieces[region.key].append(_region_blocks(x, region))
    return {k: v[0] if len(v) == 1 else jnp.concatenate(v) for k, v in pieces.items()}


def scatter(plan: Plan, stacks: Stacks, like: list[jax.Array]) -> list[jax.Array]:
    """Inverse of :func:`gather`: each leaf assembled from its groups (stacks' dtypes).

    Each leaf is sharded like its counterpart in ``like`` (the leaves given to
    :func:`gather`) where that lies on an Explicit mesh.
    """
    out = []
    for lp in plan.leaves:
        spec = _explicit.mesh_spec(like[lp.index])
        if lp.flat is not None:
            key, offset = lp.flat
            size = math.prod(lp.shape)
            leaf = stacks[key][offset : offset + size].reshape(lp.shape)
            out.append(_explicit.reshard(leaf, spec))
            continue
        boxes = []
        for region in lp.regions:
            n = math.prod(region.counts)
            blocks = stacks[region.key][region.offset : region.offset + n]
            boxes.append(_region_from_blocks(blocks, region))
        out.append(_explicit.reshard(_assemble(boxes, list(lp.runs)).reshape(lp.shape), spec))
    return out


def _assemble(boxes: list[jax.Array], runs: list[int]) -> jax.Array:
    """Concatenates boxes laid out as ``itertools.product`` of ``runs`` parts per axis."""
    if len(runs) == 1:
        return boxes[0] if len(boxes) == 1 else jnp.concatenate(boxes, axis=-1)
    axis = -len(runs)
    stride = math.prod(runs[1:])
    rows = [_assemble(boxes[i * stride : (i + 1) * stride], runs[1:]) for i in range(runs[0])]
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=axis)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _unfold(x: jax.Array, d: int) -> jax.Array:
    """(count, *block) -> (count, n_d, rest): axis d of each block first, the others flattened."""
    moved = jnp.moveaxis(x, 1 + d, 1)
    return moved.reshape((x.shape[0], x.shape[1 + d], -1))


def gram(x: jax.Array, d: int) -> jax.Array:
    """Each block's :math:`G_{(d)} G_{(d)}^T`: its axis-d statistic, (count, n_d, n_d)."""
    u = _unfold(x, d)
    return _matmul(u, jnp.swapaxes(u, 1, 2))


def apply_factors(x: jax.Array, factors: tuple[jax.Array, ...]) -> jax.Array:
    r"""Each block contracted with one matrix per axis: :math:`L X R^T` for a matrix block."""
    for d, f in enumerate(factors):
        moved = jnp.moveaxis(x, 1 + d, -1)
        flat = moved.reshape((x.shape[0], -1, moved.shape[-1]))
        out = _matmul(flat, jnp.swapaxes(f, 1, 2)).reshape(moved.shape)
        x = jnp.moveaxis(out, -1, 1 + d)
    return x


def bucket_size(n: int) -> int:
    """The size statistics of size ``n`` are padded to for the batched root: a power of 2, >= 8."""
    return max(8, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("p", "max_error"))
def _batched_roots(
    stacked: jax.Array, old: jax.Array, ridge: jax.Array, *, p: int, max_error: float
) -> jax.Array:
    """Inverse p-th roots of a stack of statistics; the old root where the iteration fails."""

    def one(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _linalg.matrix_inverse_pth_root(a, p, ridge_epsilon=ridge)  # type: ignore[arg-type]

    root, error = jax.vmap(one)(stacked)
    ok = jnp.all(jnp.isfinite(root), axis=(1, 2)) & (error <= max_error)
    return jnp.where(ok[:, None, None], root.astype(old.dtype), old)


def root_batches(plan: Plan) -> dict[tuple[int, int, Any], list[tuple[str, int]]]:
    """(padded size, exponent, dtype) -> the (group, axis) statistics inverted together.

    Sizes round up to a power of two (:func:`bucket_size`); then, from the
    smallest, a bucket joins the next larger one of its exponent when padding
    its matrices to that size costs no more than the larger bucket already
    does: every bucket is a compiled Newton loop, so fewer buckets compile
    faster, and each merge at most doubles the larger bucket's arithmetic.
    """
    buckets: dict[tuple[int, int, Any], list[tuple[str, int]]] = {}
    for key, group in plan.block_groups.items():
        for d, n in enumerate(group.block):
            bucket = (bucket_size(n), group.exponent, jnp.dtype(group.compute))
            buckets.setdefault(bucket, []).append((key, d))

    def count(members: list[tuple[str, int]]) -> int:
        return sum(plan.groups[k].count for k, _ in members)

    def order(b: tuple[int, int, Any]) -> tuple[int, int, str]:
        return b[0], b[1], str(b[2])

    for small in sorted(buckets, key=order):
        size, p, dtype = small
        larger = sorted((b for b in buckets if b[1:] == (p, dtype) and b[0] > size), key=order)
        if larger and count(buckets[small]) <= count(buckets[larger[0]]):
            buckets[larger[0]] = buckets[larger[0]] + buckets.pop(small)
    return buckets


def _pad(x: jax.Array, size: int) -> jax.Array:
    n = x.shape[-1]
    return x if n == size else jnp.pad(x, ((0, 0), (0, size - n), (0, size - n)))


def inverse_roots(
    plan: Plan, stats: Factors, roots: Factors, ridge: jax.Array, max_error: float
) -> Factors:
    r"""New inverse p-th roots of every statistic: one batched Newton iteration per bucket.

    Statistics of one exponent and dtype whose sizes round up to the same
    :func:`bucket_size` are zero-padded to it and inverted together. The
    padding is exact: the iteration keeps a block-diagonal matrix block
    diagonal, so the top-left block is the root of the statistic itself (the
    zero block only gets the damping). A root whose iteration fails (not
    finite, or :math:`\max|M - I|` above ``max_error``) keeps its previous
    value, as in Anil et al. (2020).
    """
    batches = root_batches(plan)
    new: dict[str, list[jax.Array]] = {k: list(v) for k, v in roots.items()}
    for (size, p, dtype), members in batches.items():
        mats = [_pad(stats[k][d], size) for k, d in members]
        old = [_pad(roots[k][d], size) for k, d in members]
        stacked = mats[0] if len(mats) == 1 else jnp.concatenate(mats)
        old_stacked = old[0] if len(old) == 1 else jnp.concatenate(old)
        root = _batched_roots(stacked, old_stacked, ridge.astype(dtype), p=p, max_error=max_error)
        start = 0
        for k, d in members:
            count, n = roots[k][d].shape[:2]
            new[k][d] = root[start : start + count, :n, :n]
            start += count
    return {k: tuple(v) for k, v in new.items()}


def leaf_sq_norms(plan: Plan, stacks: Stacks) -> jax.Array:
    """The squared norm of each preconditioned leaf, summed from its blocks' stacks."""
    total = jnp.zeros([plan.preconditioned], jnp.result_type(float))
    for key, segments in plan.segments.items():
        x = stacks[key]
        per_block = jnp.sum(x * x, axis=tuple(range(1, x.ndim))).astype(total.dtype)
        total = total + jax.ops.segment_sum(per_block, segments, plan.preconditioned)
    return total


def per_block(plan: Plan, key: str, per_leaf: jax.Array) -> jax.Array:
    """A per-preconditioned-leaf vector spread to the blocks of group ``key``, shaped to scale."""
    group = plan.groups[key]
    values = jnp.take(per_leaf, plan.segments[key], axis=0).astype(group.compute)
    return values.reshape((-1,) + (1,) * len(group.block))
