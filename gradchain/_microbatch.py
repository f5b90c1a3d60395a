"""Microbatching: evaluate a function on a large batch one microbatch at a time.

``microbatch(fun, ...)`` returns a function with ``fun``'s signature that splits the
batched arguments into microbatches, calls ``fun`` on each inside one ``lax.fori_loop``
(so only one microbatch's activations are live at a time), and combines the results
as an :class:`AccumulationType` says.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer

from gradchain import _check, _tree

_FN = "microbatch"


class AccumulationType(enum.Enum):
    """How :func:`microbatch` combines the results of the microbatches (Optax's names).

    Optax reaches this class as ``optax.microbatching.AccumulationType``; gradchain has
    no submodule namespaces, so it is ``gradchain.AccumulationType``.
    """

    MEAN = 1
    """The sum of the microbatch results divided by the number of microbatches."""
    SUM = 2
    """The sum of the microbatch results."""
    RUNNING_MEAN = 3
    """The mean over the microbatches actually run (``num_real_microbatches`` of them)."""
    CONCAT = 4
    """The per-example results, joined along the output's leading axis in batch order."""


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    items = (value,) if isinstance(value, int | np.integer) else value
    is_seq = isinstance(items, Sequence) and not isinstance(items, str)
    if is_seq and all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in items):
        return tuple(int(i) for i in items)
    raise TypeError(f"{_FN}: `{name}` must be an integer or a sequence of integers; got {value!r}.")


def _str_tuple(name: str, value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if isinstance(items, Sequence) and all(isinstance(i, str) for i in items):
        return tuple(items)
    raise TypeError(f"{_FN}: `{name}` must be a string or a sequence of strings; got {value!r}.")


def _check_accumulator(accumulator: Any) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(accumulator)[0]
    for path, leaf in leaves:
        if not isinstance(leaf, AccumulationType):
            raise TypeError(
                f"{_FN}: `accumulator` entries must be gradchain.AccumulationType members "
                f"(SUM, MEAN, RUNNING_MEAN, CONCAT); got {leaf!r:.60} at {_tree.keystr(path)}."
            )


def _check_num_real(value: Any) -> None:
    if value is None or isinstance(value, Tracer):
        return
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        _check.non_negative_int(_FN, "num_real_microbatches", value)
        return
    is_int_array = isinstance(value, jax.Array | np.ndarray) and jnp.issubdtype(
        value.dtype, jnp.integer
    )
    if is_int_array and np.shape(value) == ():
        _check.non_negative_int(_FN, "num_real_microbatches", int(value))
        return
    raise TypeError(
        f"{_FN}: `num_real_microbatches` must be None, an integer or an integer scalar array; "
        f"got {type(value).__name__} {value!r:.60}."
    )


def _batch_size(batched: list[tuple[str, Any, int]]) -> int:
    """The common size of the batch axes, checked across every batched leaf."""
    seen: tuple[str, int] | None = None
    for label, tree, axis in batched:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            shape = np.shape(leaf)
            where = f"{label} at {_tree.keystr(path)}"
            if not -len(shape) <= axis < len(shape):
                raise ValueError(
                    f"{_FN}: {where} has shape {shape}, which has no batch axis {axis} "
                    f"(from `in_axes`); give every leaf of a batched argument a batch axis."
                )
            size = shape[axis]
            if seen is None:
                seen = (where, size)
            elif size != seen[1]:
                raise ValueError(
                    f"{_FN}: batched arguments disagree on the batch size: {seen[0]} has "
                    f"{seen[1]} but {where} has {size} (along axis {axis}); give every "
                    f"batched argument the same batch size."
                )
    if seen is None:
        raise ValueError(f"{_FN}: the batched arguments hold no arrays, so there is no batch.")
    return seen[1]


def _split(tree: Any, axis: int, m: int, n: int) -> Any:
    """Reshapes the batch axis into (m, n): microbatch i holds examples i, i + n, i + 2n, ..."""

    def split(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        ax = axis % x.ndim
        return x.reshape((*x.shape[:ax], m, n, *x.shape[ax + 1 :]))

    return jax.tree.map(split, tree)


def _take(tree: Any, axis: int, i: Any) -> Any:
    """Microbatch ``i`` of a tree split by :func:`_split`."""

    def take(x: jax.Array) -> jax.Array:
        ax = axis % (x.ndim - 1)  # the axis as the caller counted it, before the split
        return lax.dynamic_index_in_dim(x, i, axis=ax + 1, keepdims=False)

    return jax.tree.map(take, tree)


def _leaf_accumulators(accumulator: Any, out: Any) -> list[AccumulationType]:
    """One AccumulationType per output leaf, from an accumulator that is a prefix of ``out``."""
    acc_leaves, acc_def = jax.tree.flatten(accumulator)
    try:
        subtrees = acc_def.flatten_up_to(out)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{_FN}: `accumulator` must be one AccumulationType or a pytree prefix of fun's "
            f"output with AccumulationType leaves; accumulator is {acc_def} but fun returns "
            f"{jax.tree.structure(out)} ({err})."
        ) from None
    return [
        acc for acc, sub in zip(acc_leaves, subtrees, strict=True) for _ in jax.tree.leaves(sub)
    ]


def _carry_dtype(acc: AccumulationType, leaf: jax.ShapeDtypeStruct, path: str) -> Any:
    dtype = jnp.dtype(leaf.dtype)
    if acc is AccumulationType.CONCAT:
        return dtype
    if dtype == jnp.bool_:
        raise TypeError(
            f"{_FN}: {acc.name} of boolean output at {path} is not defined; cast it to an "
            f"integer inside fun, or use CONCAT."
        )
    if jnp.issubdtype(dtype, jnp.inexact):
        return _tree.compute_dtype(dtype)  # float16/bfloat16 sums are kept in float32
    if acc is not AccumulationType.SUM:
        raise TypeError(
            f"{_FN}: {acc.name} of output at {path} needs a floating or complex dtype; got "
            f"{dtype}. Return floats from fun, or use SUM (exact for integers) and divide."
        )
    return dtype  # integer SUM stays exact (modular, as one call on the full batch would be)


def microbatch(
    fun: Callable[..., Any],
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | jax.Array | None = None,
) -> Callable[..., Any]:
    """Evaluates ``fun`` on a batch one microbatch at a time and combines the results.

    The batched arguments (``argnums`` positions and ``argnames`` keywords) are split
    along their batch axis (``in_axes``, aligned with ``argnums + argnames``) into
    ``batch_size // microbatch_size`` microbatches; ``fun`` runs on each inside one
    ``lax.fori_loop``, so only one microbatch's intermediates are live at a time.
    Microbatch ``i`` holds examples ``i, i + n, i + 2n, ...`` (``n`` microbatches), as in
    Optax: a batch sharded along its batch axis stays evenly sharded in every microbatch.
    Without ``num_real_microbatches`` the loop has static bounds and is reverse-mode
    differentiable; with it, the loop stops early and is forward-mode only.

    Accumulation, per output leaf (``accumulator`` is one :class:`AccumulationType` or a
    pytree prefix of ``fun``'s output): SUM adds; MEAN adds and divides by the number of
    microbatches ``n`` (microbatches skipped by ``num_real_microbatches`` count as zero);
    RUNNING_MEAN divides by the number actually run; CONCAT joins per-example outputs
    along the output's leading axis in batch order (skipped microbatches give zeros);
    CONCAT of a scalar output stacks one value per microbatch, in microbatch order.

    Differences from ``optax.microbatch`` (0.2.8): float16/bfloat16 results are summed in
    float32 and cast back once (Optax sums in the output dtype: 4096 float16 microbatch
    sums of 0.1 give 256.0 there, 409.5 here); RUNNING_MEAN is a sum divided once by the
    count, not Optax's rescaled running update, so it is exact where Optax's drifts by an
    ulp; integer SUM/CONCAT stay exact; complex MEAN and RUNNING_MEAN work (Optax refuses
    them); a ``num_real_microbatches`` above ``n`` is refused (concrete) or clipped to
    ``n`` (traced), where Optax reads past the batch and returns NaN; and every misuse
    below is an error that names the argument. Optax's
    ``Accumulator`` class, ``micro_grad`` and ``micro_vmap`` are not provided, and
    gradchain has no ``microbatching`` submodule: use ``gradchain.AccumulationType``.

    Args:
      fun: the function to evaluate; called with the same arguments as the result, the
        batched ones cut to one microbatch.
      argnums: index or indices of the positional arguments that carry a batch axis.
      microbatch_size: examples per microbatch; must divide the batch size. None runs
        the whole batch as one microbatch.
      accumulator: an AccumulationType, or a pytree prefix of fun's output of them.
      argnames: name or names of keyword arguments that carry a batch axis.
      in_axes: the batch axis, one for all batched arguments or one per entry of
        ``argnums + argnames``.
      num_real_microbatches: if given (an int, or an int32 scalar that may be traced,
        so a changing value does not recompile), only the first that many microbatches
        run.

    Returns:
      A function with ``fun``'s signature returning the accumulated output.

    Raises:
      TypeError: at once, for arguments of the wrong type; at call time, for MEAN or
        RUNNING_MEAN of integer outputs and SUM/MEAN of boolean ones.
      ValueError: at once, for a non-positive ``microbatch_size``, no batched argument,
        or ``in_axes`` of the wrong length; at call time, for ``argnums`` out of range,
        an ``argnames`` entry not passed, batch sizes that disagree (naming both
        arguments), an empty batch or one that ``microbatch_size`` does not divide, a
        ``num_real_microbatches`` above the number of microbatches, or an
        ``accumulator`` that is not a prefix of the output.

    Example:
      >>> import gradchain as gc
      >>> import jax.numpy as jnp
      >>> losses = lambda w, x: (x @ w - 1.0) ** 2  # one loss per example
      >>> w, x = jnp.ones(2), jnp.arange(8.0).reshape(4, 2)
      >>> [round(float(v), 2) for v in losses(w, x)]
      [0.0, 16.0, 64.0, 144.0]
      >>> mean_loss = gc.microbatch(lambda w, x: jnp.mean(losses(w, x)), argnums=1,
      ...                           microbatch_size=2, accumulator=gc.AccumulationType.MEAN)
      >>> round(float(mean_loss(w, x)), 2)
      56.0
      >>> each = gc.microbatch(losses, 1, 2, gc.AccumulationType.CONCAT)
      >>> [round(float(v), 2) for v in each(w, x)]
      [0.0, 16.0, 64.0, 144.0]

    References:
      Huang et al., GPipe: Efficient Training of Giant Neural Networks using Pipeline
      Parallelism, 2019 (micro-batches with accumulated results).
    """
    if not callable(fun):
        raise TypeError(f"{_FN}: `fun` must be callable; got {type(fun).__name__} {fun!r:.60}.")
    nums = _int_tuple("argnums", argnums)
    names = _str_tuple("argnames", argnames)
    if not nums and not names:
        raise ValueError(
            f"{_FN}: no batched argument; name at least one in `argnums` or `argnames`."
        )
    if microbatch_size is not None:
        _check.positive_int(_FN, "microbatch_size", microbatch_size)
    axes = _int_tuple("in_axes", in_axes)
    if isinstance(in_axes, int | np.integer):
        axes = axes * (len(nums) + len(names))
    elif len(axes) != len(nums) + len(names):
        raise ValueError(
            f"{_FN}: `in_axes` must be one integer or one per batched argument "
            f"(argnums {nums} + argnames {names}: {len(nums) + len(names)}); got {len(axes)} "
            f"entries {tuple(axes)}."
        )
    _check_accumulator(accumulator)
    _check_num_real(num_real_microbatches)

    def microbatched(*args: Any, **kwargs: Any) -> Any:
        positions = []
        for i in nums:
            if not -len(args) <= i < len(args):
                raise ValueError(
                    f"{_FN}: `argnums` entry {i} is out of range for a call with {len(args)} "
                    f"positional argument(s)."
                )
            positions.append(i % len(args))
        for name in names:
            if name not in kwargs:
                raise ValueError(
                    f"{_FN}: `argnames` entry {name!r} was not passed by keyword; the call "
                    f"passed keywords {sorted(kwargs)}. Pass it as {name}=..."
                )
        batched = [(f"argument {i}", args[i], ax) for i, ax in zip(positions, axes, strict=False)]
        batched += [
            (f"argument {k!r}", kwargs[k], ax)
            for k, ax in zip(names, axes[len(nums) :], strict=True)
        ]
        size = _batch_size(batched)
        m = size if microbatch_size is None else microbatch_size
        if size == 0:
            raise ValueError(f"{_FN}: the batch is empty (batch size 0); there is nothing to run.")
        if size % m:
            raise ValueError(
                f"{_FN}: the batch size {size} is not divisible by `microbatch_size` {m}; "
                f"choose a divisor of {size} or pad the batch to {-(-size // m) * m}."
            )
        n = size // m
        split_args = list(args)
        for i, ax in zip(positions, axes, strict=False):
            split_args[i] = _split(args[i], ax, m, n)
        split_kwargs = dict(kwargs)
        for k, ax in zip(names, axes[len(nums) :], strict=True):
            split_kwargs[k] = _split(kwargs[k], ax, m, n)

        def call(i: Any) -> Any:
            a = list(split_args)
            for j, ax in zip(positions, axes, strict=False):
                a[j] = _take(split_args[j], ax, i)
            kw = dict(split_kwargs)
            for k, ax in zip(names, axes[len(nums) :], strict=True):
                kw[k] = _take(split_kwargs[k], ax, i)
            return fun(*a, **kw)

        out = jax.eval_shape(call, 0)
        accs = _leaf_accumulators(accumulator, out)
        paths_leaves, out_def = jax.tree_util.tree_flatten_with_path(out)
        dtypes = [
            _carry_dtype(acc, leaf, _tree.keystr(path))
            for acc, (path, leaf) in zip(accs, paths_leaves, strict=True)
        ]
        leaves = [leaf for _, leaf in paths_leaves]
        init = [
            jnp.zeros(((n,) if acc is AccumulationType.CONCAT else ()) + leaf.shape, dt)
            for acc, leaf, dt in zip(accs, leaves, dtypes, strict=True)
        ]

        def body(i: Any, carry: list[jax.Array]) -> list[jax.Array]:
            values = out_def.flatten_up_to(call(i))
            new = []
            for acc, c, v in zip(accs, carry, values, strict=True):
                v = jnp.asarray(v).astype(c.dtype)
                if acc is AccumulationType.CONCAT:
                    new.append(lax.dynamic_update_index_in_dim(c, v, i, axis=0))
                else:
                    new.append(c + v)
            return new

        runs: Any = n
        real = num_real_microbatches
        if real is not None and not isinstance(real, Tracer) and int(real) > n:
            raise ValueError(
                f"{_FN}: `num_real_microbatches` must be <= the number of microbatches "
                f"{n} (batch size {size} / microbatch_size {m}); got {real}."
            )
        if isinstance(num_real_microbatches, int | np.integer):
            runs = int(num_real_microbatches)  # static bounds: a scan, differentiable
        elif num_real_microbatches is not None:  # an array, maybe traced: stops early
            runs = jnp.clip(jnp.asarray(num_real_microbatches), 0, n).astype(jnp.int32)
        carry = lax.fori_loop(0, runs, body, init)

        results = []
        for acc, c, leaf in zip(accs, carry, leaves, strict=True):
            if acc is AccumulationType.MEAN:
                c = c / n
            elif acc is AccumulationType.RUNNING_MEAN:
                count = jnp.maximum(jnp.asarray(runs, jnp.int32), 1).astype(c.dtype)
                c = c / count
            elif acc is AccumulationType.CONCAT and leaf.shape:
                # carry[i, j] is example j * n + i: put the example index first, then flatten.
                c = jnp.swapaxes(c, 0, 1).reshape((n * leaf.shape[0], *leaf.shape[1:]))
            results.append(c.astype(leaf.dtype))
        return out_def.unflatten(results)

    return microbatched
