r"""Rule-based parameter groups: ``param_groups`` and ``Rule``; :func:`explain` shows them.

The design, in full:

- **Paths.** Each parameter leaf has a path: its keys joined by ``"/"``
  (dict keys, sequence indices, attribute names, ``nnx.State`` keys; Flax NNX
  ``Variable`` nodes are looked through, so ``.value`` never appears), e.g.
  ``"encoder/layers/0/attn/kernel"``. A parameter that is the whole tree has the
  empty path ``""``.
- **Patterns.** A string is a glob over segments: ``*`` matches within one
  segment (``?`` one character, ``[ab]`` a class, as in :mod:`fnmatch`), and a
  segment that is exactly ``**`` matches any number of whole segments, zero
  included (``"**/bias"`` matches ``"bias"`` and ``"a/b/bias"``;
  ``"encoder/**"`` matches everything under ``encoder``). A compiled
  ``re.Pattern`` matches when ``pattern.fullmatch(path)`` does: write
  ``re.compile(r".*bias")`` to search. A rule matches a path when any of its
  patterns does.
- **Rules are ordered**, and each names one group (its ``name`` is the group's
  label). A rule gives ONE way of building its group's transformation:
  ``optimizer=`` a transformation; or ``overrides=`` of the base factory's
  keyword arguments (numbers or schedules: ``weight_decay=0.0``,
  ``learning_rate=my_schedule``); or ``multipliers=`` of them
  (``learning_rate=0.1`` times the base value; a base schedule is multiplied
  pointwise); or nothing, for the base factory with the base arguments.
  ``overrides`` and ``multipliers`` may be given together for different
  arguments; an ``optimizer`` excludes both.
- **Coverage** is checked whenever the transformation sees a tree (``init``,
  ``update``, :func:`explain`): every parameter must match exactly one rule,
  or at least one with ``first_match=True`` (the first wins). Otherwise a
  :class:`GroupCoverageError` lists every uncovered and every doubly covered
  path with the rules involved. A rule that matches nothing is fine: its group
  is empty.
- **Built on** :func:`partition`: the state is a ``PartitionState`` keyed by
  rule name, so :func:`get_hyperparams` reads ``"encoder/learning_rate"`` and
  :func:`set_hyperparams` sets it, under ``jit``, ``vmap`` and ``scan``.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from gradchain import _check
from gradchain._base import AnyTransformation, GradientTransformationExtraArgs, check_transformation
from gradchain._flat_params import refuse_flat_params
from gradchain._keypaths import Leaf, leaves_with_keys, segments
from gradchain._partition import grouped, register_groups

Pattern = str | re.Pattern[str]


def _glob_match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether the segments of ``path`` match the glob segments of ``pattern``."""
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(pattern):
                memo[i, j] = j == len(path)
            elif pattern[i] == "**":
                memo[i, j] = any(match(i + 1, k) for k in range(j, len(path) + 1))
            else:
                memo[i, j] = (
                    j < len(path)
                    and fnmatch.fnmatchcase(path[j], pattern[i])
                    and match(i + 1, j + 1)
                )
        return memo[i, j]

    return match(0, 0)


@dataclass(frozen=True, init=False, eq=False)
class Rule:
    """One rule of :func:`param_groups`: which parameters form a group, and how it is built.

    Args:
      *patterns: globs over ``"/"``-joined parameter paths (``*`` within a
        segment, ``**`` across segments) or compiled regular expressions
        (matched with ``fullmatch``); the rule matches if any pattern does.
      name: the group's label: a non-empty string without ``"/"``, unique
        among the rules. Hyperparameters read as ``"<name>/learning_rate"``.
      optimizer: a transformation for the group, instead of the base factory.
      overrides: base keyword arguments to replace (numbers or schedules).
      multipliers: base keyword arguments to multiply (by finite numbers); a
        schedule is multiplied pointwise.

    Raises:
      TypeError: for a pattern that is neither a string nor a compiled regex,
        a non-transformation ``optimizer``, or a multiplier that is not a number.
      ValueError: for no patterns, an empty or malformed glob (``**`` inside a
        segment), a bad name, or more than one way of building the group.

    Example:
      >>> import gradchain as gc
      >>> rule = gc.Rule("**/bias", name="no_decay", overrides=dict(weight_decay=0.0))
      >>> rule.matches("encoder/layers/0/bias"), rule.matches("encoder/kernel")
      (True, False)
    """

    patterns: tuple[Pattern, ...]
    name: str
    optimizer: AnyTransformation | None
    overrides: Mapping[str, Any]
    multipliers: Mapping[str, float]

    def __init__(
        self,
        *patterns: Pattern,
        name: str,
        optimizer: AnyTransformation | None = None,
        overrides: Mapping[str, Any] | None = None,
        multipliers: Mapping[str, float] | None = None,
    ) -> None:
        fn = "Rule"
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"{fn}: `name` must be a non-empty string without '/' (it prefixes the "
                f"group's hyperparameter names); got {name!r}."
            )
        where = f"{fn}({name!r})"
        if not patterns:
            raise ValueError(f'{where}: give at least one pattern, e.g. Rule("**", name=...).')
        for p in patterns:
            _check_pattern(where, p)
        overrides = dict(overrides or {})
        multipliers = dict(multipliers or {})
        if optimizer is not None:
            check_transformation(where, "`optimizer`", optimizer)
            if overrides or multipliers:
                raise ValueError(
                    f"{where}: give either `optimizer` or `overrides`/`multipliers` of the base "
                    f"optimizer's arguments, not both: an optimizer has no base arguments."
                )
        both = sorted(set(overrides) & set(multipliers))
        if both:
            raise ValueError(f"{where}: {both} are both overridden and multiplied; pick one.")
        for key, m in multipliers.items():
            _check.finite(where, f"multipliers[{key!r}]", m)
        for key in (*overrides, *multipliers):
            if not isinstance(key, str):
                raise TypeError(f"{where}: argument names must be strings; got {key!r}.")
        object.__setattr__(self, "patterns", tuple(patterns))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "overrides", types.MappingProxyType(overrides))
        object.__setattr__(self, "multipliers", types.MappingProxyType(multipliers))

    def matches(self, path: str | Sequence[str]) -> bool:
        """Whether a parameter path (a ``"/"``-joined string or its segments) matches."""
        parts = tuple(path.split("/")) if isinstance(path, str) and path else tuple(path)
        joined = "/".join(parts)
        for p in self.patterns:
            if isinstance(p, re.Pattern):
                if p.fullmatch(joined):
                    return True
            elif _glob_match(tuple(p.split("/")), parts):
                return True
        return False

    def describe(self) -> str:
        """The patterns as written, comma-separated (regexes as ``re:...``)."""
        return ", ".join(p if isinstance(p, str) else f"re:{p.pattern}" for p in self.patterns)

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={dict(v)!r}"
            for k, v in (("overrides", self.overrides), ("multipliers", self.multipliers))
            if v
        )
        opt = ", optimizer=..." if self.optimizer is not None else ""
        pats = ", ".join(map(repr, self.patterns))
        return f"Rule({pats}, name={self.name!r}{opt}{extra})"


def _check_pattern(where: str, p: Any) -> None:
    if isinstance(p, re.Pattern):
        return
    if not isinstance(p, str):
        raise TypeError(
            f"{where}: a pattern must be a glob string or a compiled re.Pattern; got "
            f"{type(p).__name__} {p!r:.60}."
        )
    parts = p.split("/")
    if not p or any(not s for s in parts):
        raise ValueError(
            f"{where}: the glob {p!r} has an empty segment; write segments joined by single "
            f"'/', without a leading or trailing '/' (use '**' for any depth)."
        )
    for s in parts:
        if "**" in s and s != "**":
            raise ValueError(
                f"{where}: in the glob {p!r}, '**' must be a whole segment ('a/**/b'); "
                f"use '*' to match within a segment."
            )


class GroupCoverageError(ValueError):
    """Raised when parameters match no rule, or several (without ``first_match``).

    Attributes:
      uncovered: the paths that no rule matches.
      overlapping: path -> names of the rules that match it, for paths matched
        more than once (always empty with ``first_match=True``).
    """

    def __init__(
        self, message: str, uncovered: tuple[str, ...], overlapping: dict[str, tuple[str, ...]]
    ) -> None:
        super().__init__(message)
        self.uncovered = uncovered
        self.overlapping = overlapping


def path_of(keys: tuple[Any, ...]) -> str:
    """The ``"/"``-joined path of a key path."""
    return "/".join(segments(keys))


def _coverage_error(
    fn: str, rules: Sequence[Rule], uncovered: list[str], overlapping: dict[str, tuple[str, ...]]
) -> GroupCoverageError:
    lines = [f"{fn}: every parameter must belong to exactly one group, but"]
    if uncovered:
        lines.append(
            f"  {len(uncovered)} parameter(s) match no rule: {', '.join(map(repr, uncovered))}"
        )
    if overlapping:
        listed = ", ".join(f"{p!r} ({', '.join(names)})" for p, names in overlapping.items())
        lines.append(f"  {len(overlapping)} parameter(s) match several rules: {listed}")
    rules_text = "; ".join(f"{r.name}: {r.describe()}" for r in rules)
    lines.append(f"The rules, in order: {rules_text}.")
    hints = []
    if uncovered:
        hints.append('add a catch-all last rule such as Rule("**", name="rest")')
    if overlapping:
        hints.append("narrow the patterns, or pass first_match=True to let the first rule win")
    lines.append(f"To fix: {'; '.join(hints)}.")
    return GroupCoverageError("\n".join(lines), tuple(uncovered), overlapping)


def rule_resolver(fn: str, rules: Sequence[Rule], first_match: bool) -> Callable[[Any], list[Leaf]]:
    def resolve(tree: Any) -> list[Leaf]:
        refuse_flat_params(fn, "each parameter's path (through its rules)", tree)
        found, uncovered, overlapping = [], [], {}
        for keys, leaf in leaves_with_keys(tree):
            parts = segments(keys)
            hits = [r.name for r in rules if r.matches(parts)]
            path = "/".join(parts)
            if not hits:
                uncovered.append(path)
            elif len(hits) > 1 and not first_match:
                overlapping[path] = tuple(hits)
            found.append(Leaf(keys, leaf, hits[0] if hits else None))
        if uncovered or overlapping:
            raise _coverage_error(fn, rules, uncovered, overlapping)
        return found

    return resolve


def _scaled(schedule: Callable[[Any], Any], factor: float) -> Callable[[Any], Any]:
    def scaled(step: Any) -> Any:
        return factor * schedule(step)

    return scaled


def _factory_args(fn: str, base: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """The base factory's parameters with defaults, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(base).parameters
    except (TypeError, ValueError):
        return {}, True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: p.default for k, p in params.items() if p.kind is not p.VAR_KEYWORD}, var_kw


def _group_transform(
    fn: str, rule: Rule, base: Callable[..., AnyTransformation] | None, base_kwargs: dict[str, Any]
) -> AnyTransformation:
    if rule.optimizer is not None:
        return rule.optimizer
    if base is None:
        raise ValueError(
            f"{fn}: rule {rule.name!r} gives no `optimizer`, and there is no base factory to "
            f"build one from. Pass a base factory (e.g. gc.adamw) or give the rule an optimizer."
        )
    base_name = getattr(base, "__name__", "base")
    known, var_kw = _factory_args(fn, base)
    kwargs = dict(base_kwargs)
    for key in (*rule.overrides, *rule.multipliers):
        if key not in known and not var_kw:
            raise TypeError(
                f"{fn}: rule {rule.name!r} sets `{key}`, which {base_name} does not take; "
                f"it takes {sorted(known)}."
            )
    kwargs.update(rule.overrides)
    for key, factor in rule.multipliers.items():
        value = kwargs.get(key, known.get(key, inspect.Parameter.empty))
        if _check.is_schedule(value):
            kwargs[key] = _scaled(value, factor)
        elif _check.concrete_value(value) is not None or isinstance(value, jax.Array):
            kwargs[key] = factor * value
        else:
            raise TypeError(
                f"{fn}: rule {rule.name!r} multiplies `{key}`, but its base value is "
                f"{value if value is not inspect.Parameter.empty else 'not given'!r}; a "
                f"multiplier needs a number or a schedule. Set `{key}` in the base arguments."
            )
    try:
        return base(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{fn}: rule {rule.name!r} builds {base_name}(...): {err}") from err


def param_groups(
    base: Callable[..., AnyTransformation] | None,
    base_kwargs: Mapping[str, Any] | Rule | None = None,
    /,
    *rules: Rule,
    first_match: bool = False,
) -> GradientTransformationExtraArgs:
    """Parameter groups by path rules: one optimizer factory, per-group arguments.

    See the module docstring of ``gradchain._rules`` (and the README) for the
    path and pattern syntax. Each rule's group gets the base factory called
    with the base keyword arguments, changed by the rule's ``overrides`` and
    ``multipliers``, or the rule's own ``optimizer``. :func:`explain` shows
    which parameter landed where.

    Args:
      base: an optimizer factory such as ``gc.adamw`` (not called), or None
        when every rule gives an ``optimizer``.
      base_kwargs: the factory's keyword arguments (may be omitted).
      *rules: the rules, in order.
      first_match: let the first matching rule win where several match;
        otherwise a parameter matched twice is an error.

    Returns:
      A GradientTransformationExtraArgs whose state is a PartitionState keyed
      by rule name.

    Raises:
      TypeError: for a base that is a transformation rather than a factory, an
        argument the factory does not take, or a multiplier of a value that is
        not a number or a schedule.
      ValueError: for no rules, duplicate rule names, or a group the factory
        refuses to build (naming the rule). At init and update: a
        GroupCoverageError listing uncovered or doubly covered paths.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"encoder": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
      ...           "head": {"kernel": jnp.ones(2)}}
      >>> tx = gc.param_groups(
      ...     gc.adamw, dict(learning_rate=0.1, weight_decay=0.1),
      ...     gc.Rule("**/bias", name="no_decay", overrides=dict(weight_decay=0.0)),
      ...     gc.Rule("encoder/**", name="encoder", multipliers=dict(learning_rate=0.5)),
      ...     gc.Rule("**", name="rest"),
      ...     first_match=True,
      ... )
      >>> hp = gc.get_hyperparams(tx.init(params))
      >>> [round(float(hp[k]), 3) for k in
      ...  ("encoder/learning_rate", "no_decay/weight_decay", "rest/weight_decay")]
      [0.05, 0.0, 0.1]
    """
    fn = "param_groups"
    if isinstance(base_kwargs, Rule):  # param_groups(factory, Rule(...), ...)
        rules, base_kwargs = (base_kwargs, *rules), None
    if base is not None and (hasattr(base, "init") or not callable(base)):
        raise TypeError(
            f"{fn}: `base` must be an optimizer factory such as gc.adamw, not called, with its "
            f"arguments in `base_kwargs`, so that rules can change them; got "
            f"{type(base).__name__} {base!r:.60}."
        )
    if base_kwargs is not None and not isinstance(base_kwargs, Mapping):
        raise TypeError(f"{fn}: `base_kwargs` must be a dict; got {type(base_kwargs).__name__}.")
    kwargs = dict(base_kwargs or {})
    if base is not None:
        known, var_kw = _factory_args(fn, base)
        unknown = sorted(k for k in kwargs if k not in known)
        if unknown and not var_kw:
            raise TypeError(
                f"{fn}: {getattr(base, '__name__', 'base')} does not take {unknown}; it takes "
                f"{sorted(known)}."
            )
    if not rules:
        raise ValueError(f'{fn}: give at least one Rule, e.g. gc.Rule("**", name="all").')
    for i, rule in enumerate(rules):
        if not isinstance(rule, Rule):
            raise TypeError(
                f"{fn}: rule {i} must be a gc.Rule(*patterns, name=...); got "
                f"{type(rule).__name__} {rule!r:.60}."
            )
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{fn}: rule names must be unique; {dupes} appear more than once.")
    transforms = {r.name: _group_transform(fn, r, base, kwargs) for r in rules}
    resolve = rule_resolver(fn, rules, first_match)
    tx = grouped(fn, transforms, resolve)
    register_groups(tx, resolve, transforms, {r.name: r.describe() for r in rules})
    return tx
