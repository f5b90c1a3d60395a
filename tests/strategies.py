"""Hypothesis strategies for fuzzing: pytrees with hostile values, and hyperparameters.

The conformance suite's trees (``tests/test_conformance.py``) explore shapes,
dtypes and nesting with normal values; these add the containers it leaves out
(NamedTuples, ``None`` subtrees) and the values a real run meets: NaN, +-Inf,
the largest finite numbers of each dtype, subnormals, signed zeros. Hyperparameters
are drawn per valid range of ``tests/ranges.py``: inside, on the boundary, outside,
and of the wrong type.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from tests.ranges import (
    AT_LEAST_ONE,
    BAD_NUMBERS,
    BAD_TYPES,
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    RATE,
    UNIT,
)

SHAPES = ((), (0,), (3,), (2, 3), (1, 4, 2))
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
F32_MAX = float(np.finfo(np.float32).max)
SANE = 1e3  # "finite inputs": |x| <= SANE, where every registered transform must stay finite


class Pair(NamedTuple):
    """A NamedTuple container, as Flax and Equinox models nest them."""

    first: Any
    second: Any


class LeafSpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: Any


def tree_specs(dtypes: tuple[Any, ...] = DTYPES) -> st.SearchStrategy[Any]:
    """Nested dicts, lists, tuples, NamedTuples and None subtrees of leaf specs."""
    leaf = st.builds(LeafSpec, st.sampled_from(SHAPES), st.sampled_from(dtypes))

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        items = st.lists(children, min_size=1, max_size=3)
        return st.one_of(
            st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
            items,
            items.map(tuple),
            st.builds(Pair, children, children | st.none()),
        )

    # A None subtree only next to real leaves: a tree of Nones has nothing to optimise.
    return st.recursive(leaf, extend, max_leaves=5).filter(lambda s: bool(_leaf_specs(s)))


def _leaf_specs(spec: Any) -> list[LeafSpec]:
    return jax.tree.leaves(spec, is_leaf=lambda x: isinstance(x, LeafSpec))


def elements(dtype: Any, *, finite: bool) -> st.SearchStrategy[float]:
    """Scalars for one dtype: |x| <= SANE if ``finite``, else anything it can hold.

    Hypothesis favours the edges: zeros of both signs, subnormals, the largest
    finite values, NaN and +-Inf. bfloat16 takes float32 draws rounded.
    """
    width = 16 if jnp.dtype(dtype) == jnp.float16 else 32
    if finite:
        return st.floats(-SANE, SANE, width=width)
    return st.floats(width=width)


@st.composite
def trees(draw: Any, spec: Any, *, finite: bool) -> Any:
    """Arrays for every leaf of ``spec`` (a tree of LeafSpecs), values drawn."""

    def build(s: Any) -> Any:
        if isinstance(s, LeafSpec):
            host = np.float16 if jnp.dtype(s.dtype) == jnp.float16 else np.float32
            values = draw(hnp.arrays(host, s.shape, elements=elements(s.dtype, finite=finite)))
            return jnp.asarray(values, s.dtype)
        if s is None:
            return None
        if isinstance(s, dict):
            return {k: build(v) for k, v in s.items()}
        children = [build(v) for v in s]
        if isinstance(s, Pair):
            return Pair(*children)
        return tuple(children) if isinstance(s, tuple) else children

    return build(spec)


def signature(tree: Any) -> Any:
    """Structure, shapes and dtypes of a tree: what must stay put."""
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def all_finite(tree: Any) -> bool:
    return all(
        bool(jnp.all(jnp.isfinite(x)))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    )


# Hyperparameters. Each draw is (value, verdict): "ok" (must build, run, and stay finite
# on finite inputs), "edge" (must build and run: a boundary such as a learning rate of
# 1e30 may overflow, as the math does), ValueError or TypeError (must be refused).
_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    # kind: (lo, hi, lo_open, hi_open)
    RATE: (0.0, 1.0, False, True),
    NON_NEGATIVE: (0.0, math.inf, False, True),
    POSITIVE: (0.0, math.inf, True, True),
    FINITE: (-math.inf, math.inf, True, True),
    UNIT: (0.0, 1.0, True, False),
    AT_LEAST_ONE: (1.0, math.inf, False, True),
    PROBABILITY: (0.0, 1.0, False, False),
}
_MODERATE = 1e3  # within this magnitude (and 1e-3 from an open bound), a value is "ok"


def _inside(kind: str, x: float) -> bool:
    lo, hi, lo_open, hi_open = _BOUNDS[kind]
    above = x > lo if lo_open else x >= lo
    below = x < hi if hi_open else x <= hi
    return not math.isnan(x) and above and below


def _moderate(kind: str, x: float) -> bool:
    lo, hi, lo_open, hi_open = _BOUNDS[kind]
    if abs(x) > _MODERATE or (x != 0 and abs(x) < 1e-30):
        return False
    return not ((lo_open and x - lo < 1e-3) or (hi_open and hi - x < 1e-3))


def hyperparameter(kind: str) -> st.SearchStrategy[tuple[Any, Any]]:
    """A value for an argument of range ``kind``, with what building must do."""
    lo, hi, _, _ = _BOUNDS[kind]
    edges = (lo, hi, math.nextafter(lo, math.inf), math.nextafter(hi, -math.inf))
    numbers = st.one_of(
        st.floats(max(lo, -1e6), min(hi, 1e6)),
        st.sampled_from([v for v in edges if math.isfinite(v)]),
        st.floats(),  # anything: mostly outside a bounded range, NaN and +-inf included
    )

    def verdict(value: Any) -> tuple[Any, Any]:
        x = float(value)  # the value as given: a float32 cast may round 1 - 1e-9 up to 1
        if not _inside(kind, x) or abs(x) > F32_MAX:  # inf in float32, the state's dtype
            return value, ValueError
        return value, "ok" if _moderate(kind, x) else "edge"

    casts = st.sampled_from([float, np.float32, np.float64, jnp.asarray])

    def cast(t: tuple[float, Any]) -> Any:
        with np.errstate(over="ignore"):  # 1e39 as float32 is inf: refused, as it should be
            return t[1](t[0])

    drawn = st.tuples(numbers, casts).map(lambda t: verdict(cast(t)))
    bad_numbers = st.sampled_from(BAD_NUMBERS[kind]).map(lambda v: (v, ValueError))
    bad_types = st.sampled_from([v for v in BAD_TYPES if v is not None]).map(
        lambda v: (v, TypeError)
    )
    return st.one_of(drawn, bad_numbers, bad_types)
