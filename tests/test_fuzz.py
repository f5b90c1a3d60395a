"""Fuzzing every registered transformation with hostile trees and hyperparameters.

What ``tests/test_conformance.py`` does not: trees with NamedTuple and ``None``
subtrees and the values a long run meets (NaN, +-Inf, the largest finite value of
each dtype, subnormals, signed zeros), and hyperparameters drawn inside, on and
outside their valid ranges. The claims, for every case of ``tests/registry.py``:

- ``update`` runs, or raises a documented error: a ValueError or TypeError whose
  message begins with the public transform that raised it (``_check.py``'s form);
- the updates keep the gradients' structure, shapes and dtypes, the state its own;
- finite float32 inputs with ``|x| <= 1e3`` (zeros and subnormals included) give
  finite updates and state;
- NaN and Inf entries do not crash nor change a shape or dtype. They may spread to
  the updates and the state: no transform promises to contain them, which is what
  ``apply_if_finite``, ``skip_spikes`` and ``zero_nans`` are for.

The default run fuzzes a subset of cases with the suite's hypothesis profile (4
examples, derandomized); ``--fuzz-examples N`` runs every case with N examples
per property (``python -m pytest tests/test_fuzz.py --fuzz-examples 200``).
Each case is built once per test, its update jitted once per tree structure.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from tests.registry import CASES, Case
from tests.strategies import (
    SANE,
    LeafSpec,
    Pair,
    all_finite,
    hyperparameter,
    signature,
    tree_specs,
    trees,
)
from tests.test_errors import FACTORIES, HYPERPARAMETERS

f32, bf16, f16 = jnp.float32, jnp.bfloat16, jnp.float16

# An error message begins with the public transform (or function) that raised it.
_PUBLIC = sorted((n for n in gc.__all__ if n[0].islower()), key=len, reverse=True)
DOCUMENTED = re.compile(rf"^(?:{'|'.join(_PUBLIC)})(?: \([^)]*\))?: ")

# The default run's cases: the everyday optimizers, a wrapper of each kind, the ones that
# divide by norms or values of the input (a normalizer, a trust ratio, Polyak's step).
# Every case runs with --fuzz-examples (or --slow).
DEFAULT = frozenset(
    {
        "chain",
        "adamw",
        "sgd[nesterov]",
        "adafactor",
        "lamb",
        "normalize",
        "scale_by_polyak",
        "apply_if_finite",
        "partition",
    }
)


def _fixed(dtypes: tuple[Any, ...]) -> Any:
    """One tree of every container kind (its leaves' dtypes cycle through ``dtypes``)."""
    leaves = [(2, 3), (3,), (), (0,), (1, 4, 2)]
    spec = [LeafSpec(s, dtypes[i % len(dtypes)]) for i, s in enumerate(leaves)]
    return {"w": spec[0], "layers": [Pair(spec[1], None), (spec[2], spec[3])], "t": spec[4]}


FLOAT32_TREE, MIXED_TREE = _fixed((f32,)), _fixed((f32, bf16, f16))


def _documented(err: Exception) -> bool:
    return isinstance(err, ValueError | TypeError) and bool(DOCUMENTED.match(str(err)))


@pytest.fixture
def examples(request: pytest.FixtureRequest) -> int:
    """--fuzz-examples, or the hypothesis profile's number of examples."""
    return request.config.getoption("--fuzz-examples") or hypothesis.settings().max_examples


class _Runner:
    """Builds a case once; runs init and a few jitted updates (None: a documented error)."""

    def __init__(self, case: Case) -> None:
        self.case, self.tx = case, case.build()
        self.update = jax.jit(self.tx.update)  # one trace per tree structure
        self.ran, self.refused = 0, ""

    def __call__(self, params: Any, grads: list[Any]) -> tuple[Any, Any, Any] | None:
        updates = None
        try:
            state = init = self.tx.init(params)
            for g in grads:
                updates, state = self.update(g, state, params)
                assert signature(updates) == signature(g), "updates changed shape or dtype"
                assert signature(state) == signature(init), "state changed shape or dtype"
        except (ValueError, TypeError) as err:
            if _documented(err):
                self.refused = str(err)
                return None
            raise
        self.ran += 1
        return updates, state, params

    def skip_if_never_ran(self) -> None:
        """A fixed tree refused by a documented error leaves nothing checked: say so."""
        if not self.ran:
            pytest.skip(f"{self.case.key} refuses this tree (documented): {self.refused}")


def _given(case: Case, examples: int, name: str, **strategies: Any) -> Callable[..., Any]:
    return lambda test: hypothesis.settings(max_examples=examples)(
        hypothesis.seed(zlib.crc32(f"{case.key}/{name}".encode()))(
            hypothesis.given(**strategies)(test)
        )
    )


_CASES = [
    pytest.param(c, id=c.key, marks=() if c.key in DEFAULT else pytest.mark.slow) for c in CASES
]


@pytest.mark.parametrize("case", _CASES)
def test_finite_float32_inputs_give_finite_updates_and_state(case: Case, examples: int) -> None:
    run = _Runner(case)

    @_given(case, examples, "finite", data=st.data())
    def check(data: Any) -> None:
        params = data.draw(trees(FLOAT32_TREE, finite=True), "params")
        grads = [data.draw(trees(FLOAT32_TREE, finite=True), f"grads{i}") for i in range(2)]
        out = run(params, grads)
        if out is not None:
            updates, state, _ = out
            assert all_finite(updates), f"non-finite updates from |inputs| <= {SANE}"
            assert all_finite(state), f"non-finite state from |inputs| <= {SANE}"

    check()
    run.skip_if_never_ran()


@pytest.mark.parametrize("case", _CASES)
def test_nan_inf_huge_and_subnormal_entries_do_not_crash(case: Case, examples: int) -> None:
    run = _Runner(case)

    @_given(case, examples, "hostile", data=st.data())
    def check(data: Any) -> None:
        params = data.draw(trees(MIXED_TREE, finite=False), "params")
        grads = [data.draw(trees(MIXED_TREE, finite=False), f"grads{i}") for i in range(2)]
        run(params, grads)

    check()
    run.skip_if_never_ran()


@pytest.mark.parametrize("case", _CASES)
def test_random_containers_shapes_and_values_keep_structure(case: Case, examples: int) -> None:
    run = _Runner(case)  # traced once per drawn structure: a quarter of the examples

    @_given(case, max(1, examples // 4), "structure", spec=tree_specs(), data=st.data())
    def check(spec: Any, data: Any) -> None:
        finite = data.draw(st.booleans(), "finite")
        params = data.draw(trees(spec, finite=True), "params")
        grads = [data.draw(trees(spec, finite=finite), f"grads{i}") for i in range(2)]
        out = run(params, grads)
        only_f32 = all(x.dtype == f32 for x in jax.tree.leaves(params))
        if out is not None and finite and only_f32:
            assert all_finite(out[0]) and all_finite(out[1]), f"non-finite from |x| <= {SANE}"

    check()


# Hyperparameters of the most used factories, drawn from the ranges of tests/test_errors.py.
FUZZED_FACTORIES = (
    "sgd",
    "adam",
    "adamw",
    "nadam",
    "rmsprop",
    "adagrad",
    "lion",
    "lamb",
    "adafactor",
    "adamax",
    "radam",
    "adabelief",
    "sm3",
    "scale_by_adam",
    "trace",
    "ema",
    "clip",
    "clip_by_global_norm",
    "add_decayed_weights",
)
_ROWS: dict[str, list[tuple[str, str, str]]] = {}
for _factory, _arg, _kind, _reporter in HYPERPARAMETERS:
    if _factory in FUZZED_FACTORIES:
        _ROWS.setdefault(_factory, []).append((_arg, _kind, _reporter))
PARAMS = {"w": jnp.asarray([[0.5, -1.0], [2.0, 0.25]], f32), "b": jnp.asarray([0.1, -0.3], f32)}
GRADS = {"w": jnp.asarray([[0.3, 0.7], [-1.2, 0.05]], f32), "b": jnp.asarray([-0.4, 2.0], f32)}


def test_the_fuzzed_factories_have_hyperparameter_rows() -> None:
    assert set(_ROWS) == set(FUZZED_FACTORIES), sorted(set(FUZZED_FACTORIES) - set(_ROWS))


def test_fuzzed_hyperparameters_build_and_run_or_raise_naming_the_argument(examples: int) -> None:
    @hypothesis.settings(max_examples=examples * 10)  # cheap: eager, a two-leaf tree
    @hypothesis.given(data=st.data())
    def check(data: Any) -> None:
        factory = data.draw(st.sampled_from(FUZZED_FACTORIES), "factory")
        rows = data.draw(st.lists(st.sampled_from(_ROWS[factory]), unique=True), "arguments")
        drawn = {arg: (data.draw(hyperparameter(kind), arg), rep) for arg, kind, rep in rows}
        bad = {arg: (err, rep) for arg, ((_, err), rep) in drawn.items() if isinstance(err, type)}
        make, required = FACTORIES[factory]
        kwargs = {**required, **{arg: value for arg, ((value, _), _) in drawn.items()}}
        if bad:
            with pytest.raises((ValueError, TypeError)) as info:
                make(**kwargs)
            message = str(info.value)
            named = [
                arg
                for arg, (err, rep) in bad.items()
                if type(info.value) is err and message.startswith(f"{rep}: `{arg}` must be")
            ]
            assert named, f"{factory}({kwargs}) raised {info.value!r}, naming no bad argument"
            return
        tx = make(**kwargs)
        updates, state = tx.update(GRADS, tx.init(PARAMS), PARAMS)
        updates, state = tx.update(GRADS, state, PARAMS)
        assert signature(updates) == signature(GRADS)
        if all(verdict == "ok" for (_, verdict), _ in drawn.values()):
            assert all_finite(updates) and all_finite(state), f"{factory}({kwargs}): not finite"

    check()


@pytest.mark.parametrize("value", [1e39, np.float64(-3.5e38), np.float64(1.7976931348623157e308)])
def test_a_hyperparameter_that_overflows_float32_is_refused_at_construction(value: Any) -> None:
    """Found by the fuzzer: a finite float64 passed the range check and became inf in state."""
    with pytest.raises(ValueError, match=r"^scale_by_learning_rate: `learning_rate` must be repr"):
        gc.sgd(abs(value))
    with pytest.raises(ValueError, match=r"^scale: `step_size` must be representable in float32"):
        gc.scale(value)
