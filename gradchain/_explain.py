"""``explain``: which group each parameter gets, with counts, sizes and hyperparameters.

Works on what :func:`partition`, :func:`selective_transform` and
:func:`param_groups` build (they register how they group parameters), or on a
list of :class:`Rule`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import numpy as np

from gradchain import _hyperparams
from gradchain._partition import GroupsInfo, PartitionState, groups_info
from gradchain._rules import Rule, path_of, rule_resolver
from gradchain._wrappers import masked


class ParameterRow(NamedTuple):
    """One parameter in an :class:`Explanation`."""

    path: str
    group: Hashable
    shape: tuple[int, ...]
    dtype: str


class GroupSummary(NamedTuple):
    """One group in an :class:`Explanation`."""

    name: Hashable
    rule: str  # the patterns that chose its members ("" for label trees)
    tensors: int
    elements: int
    hyperparams: dict[str, float]  # at step 0, from the group's initial state
    scheduled: frozenset[str]  # the names among them that follow a schedule


@dataclass(frozen=True)
class Explanation:
    """Which group each parameter got, and what each group holds and is given.

    Attributes:
      parameters: one row per parameter leaf, in tree order.
      groups: one summary per group, in the transformation's order.
    """

    parameters: tuple[ParameterRow, ...]
    groups: tuple[GroupSummary, ...]

    @property
    def assignment(self) -> dict[str, Hashable]:
        """Parameter path -> group."""
        return {row.path: row.group for row in self.parameters}

    def __str__(self) -> str:
        def hp_text(g: GroupSummary) -> str:
            return " ".join(
                f"{k}={v:.4g}{'*' if k in g.scheduled else ''}"
                for k, v in sorted(g.hyperparams.items())
            )

        head = ("group", "rule", "tensors", "elements", "hyperparameters")
        rows = [
            (str(g.name), g.rule, str(g.tensors), f"{g.elements:,}", hp_text(g))
            for g in self.groups
        ]
        total = sum(g.tensors for g in self.groups), sum(g.elements for g in self.groups)
        rows.append(("total", "", str(total[0]), f"{total[1]:,}", ""))
        lines = _table(head, rows, right=(2, 3))
        if any(g.scheduled for g in self.groups):
            lines.append("* follows a schedule; the value shown is the first update's.")
        p_head = ("parameter", "shape", "dtype", "group")
        p_rows = [
            (r.path or "<root>", str(r.shape), r.dtype, str(r.group)) for r in self.parameters
        ]
        return "\n".join([*lines, "", *_table(p_head, p_rows, right=())])


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def fmt(r: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(head), *map(fmt, rows)]


def _group_hyperparams(
    info: GroupsInfo, params: Any
) -> dict[Hashable, tuple[dict[str, float], frozenset[str]]]:
    """Each group's hyperparameters, from its initial state on no leaves (nothing allocated)."""
    none = jax.tree.structure(params).unflatten([False] * len(jax.tree.leaves(params)))
    state = PartitionState({g: masked(tx, none).init(params) for g, tx in info.transforms.items()})
    out: dict[Hashable, tuple[dict[str, float], frozenset[str]]] = {
        g: ({}, frozenset()) for g in info.transforms
    }
    by_prefix = {f"{g}/": g for g in info.transforms}
    for name, (_, entry) in _hyperparams._named(state).items():
        prefix = max((p for p in by_prefix if name.startswith(p)), key=len, default=None)
        if prefix is None:
            continue
        values, scheduled = out[by_prefix[prefix]]
        short = name[len(prefix) :]
        values[short] = float(entry.value)
        if entry.attr == "scheduled":
            scheduled = scheduled | {short}
        out[by_prefix[prefix]] = (values, scheduled)
    return out


def explain(tx_or_rules: Any, params: Any, *, first_match: bool = False) -> Explanation:
    """Says which group each parameter gets, with counts, sizes and hyperparameters per group.

    The general form of nanoGPT's "num decayed parameter tensors: 26, with
    10,740,096 parameters". Works for what :func:`param_groups`,
    :func:`partition` (and ``multi_transform``) and :func:`selective_transform`
    build, or for a plain list of :class:`Rule`. It checks coverage exactly as
    ``init`` does, so it raises the same errors. Hyperparameters are read with
    the same names as :func:`get_hyperparams`, less the group prefix, from each
    group's initial state (scheduled ones at step 0).

    Args:
      tx_or_rules: a grouped transformation, or a sequence of Rules.
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``), any tree.
      first_match: for a sequence of Rules, as in :func:`param_groups`.

    Returns:
      An Explanation: print it for a table, or read ``.groups`` and
      ``.assignment``.

    Raises:
      TypeError: if ``tx_or_rules`` is neither.
      GroupCoverageError: if parameters match no rule or several.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
      >>> tx = gc.param_groups(
      ...     gc.adamw, dict(learning_rate=1e-3, weight_decay=0.1),
      ...     gc.Rule("b", name="no_decay", overrides=dict(weight_decay=0.0)),
      ...     gc.Rule("w", name="decay"))
      >>> report = gc.explain(tx, params)
      >>> [(g.name, g.tensors, g.elements, round(g.hyperparams["weight_decay"], 3))
      ...  for g in report.groups]
      [('no_decay', 1, 4, 0.0), ('decay', 1, 12, 0.1)]
      >>> report.assignment
      {'b': 'no_decay', 'w': 'decay'}
    """
    info = groups_info(tx_or_rules)
    if info is None:
        is_rules = isinstance(tx_or_rules, Sequence) and not isinstance(tx_or_rules, str)
        if not is_rules or not all(isinstance(r, Rule) for r in tx_or_rules):
            raise TypeError(
                f"explain: expected a transformation built by param_groups, partition, "
                f"multi_transform or selective_transform, or a list of gc.Rule; got "
                f"{type(tx_or_rules).__name__} {tx_or_rules!r:.60}. For a chain, pass its "
                f"grouped member."
            )
        rules: tuple[Rule, ...] = tuple(tx_or_rules)
        transforms = {r.name: r.optimizer for r in rules if r.optimizer is not None}
        info = GroupsInfo(
            rule_resolver("explain", rules, first_match),
            transforms,
            {r.name: r.describe() for r in rules},
        )
        order: list[Hashable] = [r.name for r in rules]
    else:
        order = list(info.transforms)
    found = info.resolve(params)
    rows = tuple(
        ParameterRow(
            path_of(leaf.keys),
            leaf.spec,
            tuple(np.shape(leaf.leaf)),
            str(getattr(leaf.leaf, "dtype", type(leaf.leaf).__name__)),
        )
        for leaf in found
    )
    hps = _group_hyperparams(info, params)
    groups = []
    for g in order:
        members = [r for r in rows if r.group == g]
        values, scheduled = hps.get(g, ({}, frozenset()))
        groups.append(
            GroupSummary(
                name=g,
                rule=info.describe.get(g, ""),
                tensors=len(members),
                elements=sum(math.prod(r.shape) for r in members),
                hyperparams=values,
                scheduled=scheduled,
            )
        )
    return Explanation(rows, tuple(groups))
