"""Schedules against their formulas in NumPy float64, against Optax, and under jit/vmap/scan.

Every case is written once as ``make(lib)``: the same call builds the gradchain
schedule, the Optax one and the NumPy reference (``Ref``, whose functions share
the names and arguments), which also shows that Optax calls port unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from tests.test_schedules_more import CASES as MORE_CASES
from tests.test_schedules_more import Ref as MoreRef
from tests.test_schedules_more import _optax_values

# Every step from 0 to 300 (so every boundary used below), and two far ones.
STEPS = np.concatenate([np.arange(301), [1000, 5000]]).astype(np.int32)


class Ref:
    """Closed-form float64 NumPy versions of the schedules, written from the formulas."""

    @staticmethod
    def constant_schedule(value):
        return lambda t: np.full(np.shape(t), value, np.float64)

    @staticmethod
    def linear_schedule(init_value, end_value, transition_steps, transition_begin=0):
        def f(t):
            done = np.clip(t - transition_begin, 0, transition_steps)
            return init_value + (end_value - init_value) * done / transition_steps

        return f

    @staticmethod
    def polynomial_schedule(init_value, end_value, power, transition_steps, transition_begin=0):
        def f(t):
            done = np.clip(t - transition_begin, 0, transition_steps)
            return (init_value - end_value) * (1 - done / transition_steps) ** power + end_value

        return f

    @staticmethod
    def exponential_decay(
        init_value,
        transition_steps,
        decay_rate,
        transition_begin=0,
        staircase=False,
        end_value=None,
    ):
        decay_rate = float(np.float32(decay_rate))  # as float32 holds it: 0.9**50 amplifies 50x

        def f(t):
            p = (t - transition_begin) / transition_steps
            p = np.floor(p) if staircase else p
            v = np.where(t <= transition_begin, init_value, init_value * decay_rate**p)
            if end_value is None:
                return v
            return np.maximum(v, end_value) if decay_rate < 1 else np.minimum(v, end_value)

        return f

    @staticmethod
    def inverse_time_decay_schedule(init_value, decay_rate, transition_steps=1, staircase=False):
        def f(t):
            x = t / transition_steps
            return init_value / (1 + decay_rate * (np.floor(x) if staircase else x))

        return f

    @staticmethod
    def inverse_sqrt_decay_schedule(init_value, decay_rate=1.0, transition_steps=1):
        return lambda t: init_value / (1 + decay_rate * np.sqrt(t / transition_steps))

    @staticmethod
    def cosine_decay_schedule(init_value, decay_steps, alpha=0.0, exponent=1.0):
        def f(t):
            c = 0.5 * (1 + np.cos(np.pi * np.minimum(t, decay_steps) / decay_steps))
            return init_value * ((1 - alpha) * c**exponent + alpha)

        return f

    @staticmethod
    def warmup_cosine_decay_schedule(
        init_value, peak_value, warmup_steps, decay_steps, end_value=0.0, exponent=1.0
    ):
        def f(t):
            warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
            done = np.clip(t - warmup_steps, 0, decay_steps - warmup_steps)
            c = 0.5 * (1 + np.cos(np.pi * done / (decay_steps - warmup_steps)))
            return np.where(
                t < warmup_steps, warm, end_value + (peak_value - end_value) * c**exponent
            )

        return f

    @staticmethod
    def warmup_constant_schedule(init_value, peak_value, warmup_steps):
        def f(t):
            warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
            return np.where(t < warmup_steps, warm, peak_value)

        return f

    @staticmethod
    def piecewise_constant_schedule(init_value, boundaries_and_scales=None):
        def f(t):
            v = np.full(np.shape(t), init_value, np.float64)
            for b, s in (boundaries_and_scales or {}).items():
                v = v * np.where(t >= b, s, 1.0)
            return v

        return f

    @staticmethod
    def join_schedules(schedules, boundaries):
        def f(t):
            with np.errstate(all="ignore"):  # later members also see steps before their start
                v = schedules[0](t)
                for b, s in zip(boundaries, schedules[1:], strict=True):
                    v = np.where(t < b, v, s(t - b))
            return v

        return f


def _join_warmup_cosine(lib: Any) -> Any:
    return lib.join_schedules(
        [lib.linear_schedule(0.0, 1.0, 10), lib.cosine_decay_schedule(1.0, 90, 0.1)], [10]
    )


def _join_three(lib: Any) -> Any:
    members = [
        lib.constant_schedule(0.5),
        lib.exponential_decay(1.0, 10, 0.5, staircase=True),
        lib.linear_schedule(0.2, 0.01, 20),
    ]
    return lib.join_schedules(members, [5, 40])


def _join_equal_boundaries(lib: Any) -> Any:
    members = [lib.constant_schedule(1.0), lib.constant_schedule(2.0), lib.constant_schedule(3.0)]
    return lib.join_schedules(members, [10, 10])


Make = Callable[[Any], Any]
# (id, make(lib), whether Optax has it with the same numbers)
CASES: list[tuple[str, Make, bool]] = [
    ("constant", lambda m: m.constant_schedule(0.3), True),
    ("constant_int", lambda m: m.constant_schedule(-2), True),
    ("linear_decay", lambda m: m.linear_schedule(1.0, 0.01, 100), True),
    ("linear_warmup_late", lambda m: m.linear_schedule(0.0, 3e-4, 50, 20), True),
    ("linear_one_step", lambda m: m.linear_schedule(2.0, 5.0, 1), True),
    ("linear_odd", lambda m: m.linear_schedule(0.5, 2.0, 7, 3), True),
    ("poly_square", lambda m: m.polynomial_schedule(1.0, 0.0, 2, 100), True),
    ("poly_sqrt_up", lambda m: m.polynomial_schedule(0.0, 1.0, 0.5, 64, 30), True),
    ("poly_cubic", lambda m: m.polynomial_schedule(1e-3, 1e-5, 3.0, 250, 5), True),
    ("exp_smooth", lambda m: m.exponential_decay(1.0, 100, 0.9), True),
    ("exp_staircase", lambda m: m.exponential_decay(1.0, 100, 0.9, staircase=True), True),
    ("exp_stair_end", lambda m: m.exponential_decay(0.1, 30, 0.5, 20, True, 0.01), True),
    ("exp_growth_cap", lambda m: m.exponential_decay(1e-3, 50, 1.1, 10, False, 5e-3), True),
    ("exp_floor", lambda m: m.exponential_decay(2.0, 7, 0.7, 3, end_value=0.05), True),
    ("inv_time", lambda m: m.inverse_time_decay_schedule(1.0, 0.5, 10), False),
    ("inv_time_unit", lambda m: m.inverse_time_decay_schedule(0.1, 2.0), False),
    ("inv_time_stair", lambda m: m.inverse_time_decay_schedule(0.3, 0.1, 25, True), False),
    ("inv_sqrt", lambda m: m.inverse_sqrt_decay_schedule(0.1), False),
    ("inv_sqrt_slow", lambda m: m.inverse_sqrt_decay_schedule(1.0, 0.3, 20), False),
    ("cosine", lambda m: m.cosine_decay_schedule(1.0, 100), True),
    ("cosine_alpha_exp", lambda m: m.cosine_decay_schedule(0.5, 250, 0.1, 2.0), True),
    ("cosine_short", lambda m: m.cosine_decay_schedule(1e-3, 7, 0.0, 0.5), True),
    ("wcos", lambda m: m.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100), True),
    ("wcos_end", lambda m: m.warmup_cosine_decay_schedule(1e-4, 3e-3, 50, 250, 1e-5), True),
    ("wcos_no_warmup", lambda m: m.warmup_cosine_decay_schedule(0.5, 1.0, 0, 200, 0.1, 2.0), True),
    ("wcos_tiny", lambda m: m.warmup_cosine_decay_schedule(0.2, 0.1, 1, 2, 0.05), True),
    ("wconst", lambda m: m.warmup_constant_schedule(0.0, 1.0, 10), True),
    ("wconst_down", lambda m: m.warmup_constant_schedule(0.1, 0.05, 100), True),
    ("wconst_one", lambda m: m.warmup_constant_schedule(0.3, 2.0, 1), True),
    ("wconst_none", lambda m: m.warmup_constant_schedule(0.3, 2.0, 0), False),
    ("piecewise_none", lambda m: m.piecewise_constant_schedule(1.0), True),
    ("piecewise_empty", lambda m: m.piecewise_constant_schedule(0.1, {}), True),
    ("piecewise", lambda m: m.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.1}), True),
    ("piecewise_0", lambda m: m.piecewise_constant_schedule(0.3, {0: 0.5, 7: 2.0, 250: 0.0}), True),
    ("join_one", lambda m: m.join_schedules([m.constant_schedule(1.0)], []), True),
    ("join_warmup_cosine", _join_warmup_cosine, True),
    ("join_three", _join_three, True),
    ("join_equal_boundaries", _join_equal_boundaries, True),
]


class AllRef(Ref, MoreRef):
    """This module's references and tests/test_schedules_more.py's, in one namespace."""


# The shared properties below run over the schedules of both modules.
ALL_CASES = [*CASES, *MORE_CASES]
ALL_IDS = [c[0] for c in ALL_CASES]
ALL_MAKES = [c[1] for c in ALL_CASES]
OPTAX_MAKES = [pytest.param(c[1], id=c[0]) for c in ALL_CASES if c[2]]


@pytest.mark.parametrize("make", ALL_MAKES, ids=ALL_IDS)
def test_schedule_matches_its_formula_in_float64(make: Make) -> None:
    got = np.asarray(make(gc)(jnp.asarray(STEPS)))
    np.testing.assert_allclose(got, make(AllRef)(STEPS.astype(np.float64)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("make", OPTAX_MAKES)
def test_schedule_matches_optax_at_every_step(make: Make) -> None:
    got, want = np.asarray(make(gc)(jnp.asarray(STEPS))), _optax_values(make, STEPS)
    # atol relative to the schedule's scale: near 0, Optax's 1 - t/T and 1 + cos round.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.max(np.abs(want)))


@pytest.mark.parametrize("make", ALL_MAKES, ids=ALL_IDS)
def test_schedule_gives_the_same_values_under_jit_vmap_and_for_python_ints(make: Make) -> None:
    schedule = make(gc)
    eager = np.asarray(schedule(jnp.asarray(STEPS)))
    batched = jax.jit(jax.vmap(schedule))(jnp.asarray(STEPS))
    assert batched.dtype == jnp.result_type(float) and batched.shape == STEPS.shape
    np.testing.assert_allclose(np.asarray(batched), eager, rtol=1e-6, atol=1e-7)
    for t in (0, 10, 100, 5000):
        value = schedule(t)
        assert value.dtype == jnp.result_type(float) and value.shape == ()
        assert float(value) == pytest.approx(eager[list(STEPS).index(t)], rel=1e-6, abs=1e-7)


def test_schedules_run_inside_lax_scan_with_an_int32_counter() -> None:
    schedules = [make(gc) for make in ALL_MAKES]

    def body(step: jax.Array, _: None) -> tuple[jax.Array, jax.Array]:
        return step + 1, jnp.stack([s(step) for s in schedules])

    _, scanned = jax.jit(lambda: jax.lax.scan(body, jnp.zeros([], jnp.int32), length=301))()
    direct = np.stack([np.asarray(s(jnp.arange(301, dtype=jnp.int32))) for s in schedules], 1)
    np.testing.assert_allclose(np.asarray(scanned), direct, rtol=1e-6, atol=1e-7)


def test_traced_hyperparameters_pass_the_checks_and_can_be_swept_with_vmap() -> None:
    def build(x: Any, n: Any) -> jax.Array:
        schedules = [
            gc.constant_schedule(x),
            gc.linear_schedule(x, 0.0, n, n),
            gc.polynomial_schedule(x, 0.0, x + 1, n),
            gc.exponential_decay(x, n, x, n, True, x / 4),
            gc.inverse_time_decay_schedule(x, x, n),
            gc.inverse_sqrt_decay_schedule(x, x, n),
            gc.cosine_decay_schedule(x, n, x, x),
            gc.warmup_cosine_decay_schedule(0.0, x, n, 3 * n, x / 10, x),
            gc.warmup_constant_schedule(0.0, x, n),
            gc.piecewise_constant_schedule(x, {5: x}),
        ]
        return jnp.stack([s(7) for s in schedules])

    xs = jnp.array([0.5, 0.25])
    got = jax.jit(jax.vmap(build, in_axes=(0, None)))(xs, jnp.array(10, jnp.int32))
    want = np.stack([np.asarray(build(x, 10)) for x in (0.5, 0.25)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_concrete_integer_arrays_are_accepted_as_step_counts() -> None:
    s = gc.linear_schedule(1.0, 0.0, jnp.array(4), np.int64(2))
    assert float(s(4)) == 0.5


def test_exponential_decay_staircase_multiplies_by_rate_every_transition() -> None:
    s = gc.exponential_decay(1.0, transition_steps=100, decay_rate=0.9, staircase=True)
    values = np.asarray(jax.vmap(s)(jnp.arange(1000, dtype=jnp.int32)))
    np.testing.assert_allclose(values, 0.9 ** (np.arange(1000) // 100), rtol=1e-6)


def test_exponential_decay_is_constant_at_init_before_transition_begin() -> None:
    s = gc.exponential_decay(0.5, 10, 0.1, transition_begin=20)
    assert {float(s(t)) for t in range(21)} == {0.5}
    assert float(s(30)) == pytest.approx(0.05, rel=1e-6)


def test_inverse_sqrt_decay_defaults_give_the_tutorial_decay() -> None:
    t = np.arange(1000)
    got = np.asarray(gc.inverse_sqrt_decay_schedule(0.1)(jnp.asarray(t, jnp.int32)))
    np.testing.assert_allclose(got, 0.1 / (1 + np.sqrt(t)), rtol=1e-6)


def test_cosine_decay_keeps_float32_relative_accuracy_near_its_end() -> None:
    steps = np.arange(99_000, 100_001)
    got = np.asarray(gc.cosine_decay_schedule(1.0, 100_000)(jnp.asarray(steps, jnp.int32)))
    want = Ref.cosine_decay_schedule(1.0, 100_000)(steps.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-6)  # Optax's 1 + cos is 0 at step 99_999


def test_linear_warmup_from_zero_keeps_relative_accuracy_on_its_first_steps() -> None:
    got = np.asarray(gc.linear_schedule(0.0, 1.0, 100_000)(jnp.arange(1, 100, dtype=jnp.int32)))
    np.testing.assert_allclose(got, np.arange(1, 100) / 100_000, rtol=1e-6)


def test_warmup_constant_with_no_warmup_is_peak_from_step_zero() -> None:
    s = gc.warmup_constant_schedule(0.0, 1.0, warmup_steps=0)
    assert [float(s(t)) for t in (0, 1, 100)] == [1.0, 1.0, 1.0]


def test_warmup_cosine_decays_to_end_value_even_from_a_zero_peak() -> None:
    s = gc.warmup_cosine_decay_schedule(0.0, 0.0, warmup_steps=2, decay_steps=12, end_value=0.1)
    assert float(s(7)) == pytest.approx(0.05, rel=1e-6)
    assert float(s(12)) == pytest.approx(0.1, rel=1e-6)


def test_piecewise_constant_applies_each_scale_from_its_boundary_on() -> None:
    s = gc.piecewise_constant_schedule(2.0, {3: 0.5, 6: 0.1})
    got = [round(float(s(t)), 6) for t in range(8)]
    assert got == [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.1, 0.1]


def test_piecewise_constant_ignores_the_order_of_its_dict_keys() -> None:
    forward = gc.piecewise_constant_schedule(2.0, {3: 0.5, 6: 0.1})
    backward = gc.piecewise_constant_schedule(2.0, {6: 0.1, 3: 0.5})
    assert [float(forward(t)) for t in range(8)] == [float(backward(t)) for t in range(8)]


def test_join_schedules_restarts_each_member_count_at_its_boundary() -> None:
    seen: list[int] = []

    def record(step: Any) -> jax.Array:
        seen.append(int(step))
        return jnp.asarray(step).astype(jnp.float32)

    s = gc.join_schedules([record, record], [10])
    assert float(s(13)) == 3.0
    assert seen == [13, 3]


# Validation: (function, the valid arguments) and (function, argument, bad value, error, shown).
VALID: dict[str, dict[str, Any]] = {
    "constant_schedule": {"value": 1.0},
    "linear_schedule": {"init_value": 1.0, "end_value": 0.0, "transition_steps": 10},
    "polynomial_schedule": {
        "init_value": 1.0,
        "end_value": 0.0,
        "power": 2.0,
        "transition_steps": 10,
    },
    "exponential_decay": {"init_value": 1.0, "transition_steps": 10, "decay_rate": 0.5},
    "inverse_time_decay_schedule": {"init_value": 1.0, "decay_rate": 0.5},
    "inverse_sqrt_decay_schedule": {"init_value": 1.0},
    "cosine_decay_schedule": {"init_value": 1.0, "decay_steps": 10},
    "warmup_cosine_decay_schedule": {
        "init_value": 0.0,
        "peak_value": 1.0,
        "warmup_steps": 5,
        "decay_steps": 20,
    },
    "warmup_constant_schedule": {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 5},
    "piecewise_constant_schedule": {"init_value": 1.0, "boundaries_and_scales": {5: 0.1}},
    "join_schedules": {"schedules": [gc.constant_schedule(1.0)] * 2, "boundaries": [5]},
}
NAN, INF = math.nan, math.inf
BAD: list[tuple[str, str, Any, type[Exception], str]] = [
    ("constant_schedule", "value", NAN, ValueError, "nan"),
    ("constant_schedule", "value", None, TypeError, "None"),
    ("constant_schedule", "value", "0.1", TypeError, "'0.1'"),
    ("linear_schedule", "transition_steps", 0, ValueError, "0"),
    ("linear_schedule", "transition_steps", -3, ValueError, "-3"),
    ("linear_schedule", "transition_steps", 2.5, TypeError, "2.5"),
    ("linear_schedule", "transition_begin", -1, ValueError, "-1"),
    ("linear_schedule", "init_value", INF, ValueError, "inf"),
    ("linear_schedule", "end_value", [0.1], TypeError, "[0.1]"),
    ("linear_schedule", "init_value", np.ones(3), TypeError, "(3,)"),
    ("polynomial_schedule", "power", 0.0, ValueError, "0.0"),
    ("polynomial_schedule", "power", -1, ValueError, "-1"),
    ("polynomial_schedule", "transition_steps", 0, ValueError, "0"),
    ("polynomial_schedule", "transition_begin", -5, ValueError, "-5"),
    ("exponential_decay", "transition_steps", 0, ValueError, "0"),
    ("exponential_decay", "transition_begin", -1, ValueError, "-1"),
    ("exponential_decay", "decay_rate", 0.0, ValueError, "0.0"),
    ("exponential_decay", "decay_rate", -0.5, ValueError, "-0.5"),
    ("exponential_decay", "decay_rate", NAN, ValueError, "nan"),
    ("exponential_decay", "end_value", 2.0, ValueError, "2.0"),
    ("exponential_decay", "end_value", INF, ValueError, "inf"),
    ("exponential_decay", "staircase", "yes", TypeError, "'yes'"),
    ("inverse_time_decay_schedule", "decay_rate", -0.1, ValueError, "-0.1"),
    ("inverse_time_decay_schedule", "transition_steps", 0, ValueError, "0"),
    ("inverse_time_decay_schedule", "staircase", 1, TypeError, "1"),
    ("inverse_sqrt_decay_schedule", "decay_rate", -1.0, ValueError, "-1.0"),
    ("inverse_sqrt_decay_schedule", "transition_steps", -2, ValueError, "-2"),
    ("inverse_sqrt_decay_schedule", "init_value", NAN, ValueError, "nan"),
    ("cosine_decay_schedule", "decay_steps", 0, ValueError, "0"),
    ("cosine_decay_schedule", "alpha", NAN, ValueError, "nan"),
    ("cosine_decay_schedule", "exponent", 0.0, ValueError, "0.0"),
    ("warmup_cosine_decay_schedule", "warmup_steps", -1, ValueError, "-1"),
    ("warmup_cosine_decay_schedule", "decay_steps", 4, ValueError, "4"),
    ("warmup_cosine_decay_schedule", "decay_steps", 5, ValueError, "5"),
    ("warmup_cosine_decay_schedule", "decay_steps", 0, ValueError, "0"),
    ("warmup_cosine_decay_schedule", "peak_value", INF, ValueError, "inf"),
    ("warmup_cosine_decay_schedule", "end_value", "0", TypeError, "'0'"),
    ("warmup_constant_schedule", "warmup_steps", -1, ValueError, "-1"),
    ("warmup_constant_schedule", "peak_value", NAN, ValueError, "nan"),
    ("piecewise_constant_schedule", "init_value", NAN, ValueError, "nan"),
    ("piecewise_constant_schedule", "boundaries_and_scales", [(5, 0.1)], TypeError, "[(5, 0.1)]"),
    ("piecewise_constant_schedule", "boundaries_and_scales", {-1: 0.1}, ValueError, "-1"),
    ("piecewise_constant_schedule", "boundaries_and_scales", {1.5: 0.1}, TypeError, "1.5"),
    ("piecewise_constant_schedule", "boundaries_and_scales[5]", {5: -0.1}, ValueError, "-0.1"),
    ("piecewise_constant_schedule", "boundaries_and_scales[5]", {5: INF}, ValueError, "inf"),
    ("join_schedules", "boundaries", [10, 5], ValueError, "[10, 5]"),
    ("join_schedules", "boundaries", [-5], ValueError, "-5"),
    ("join_schedules", "boundaries", [5.0], TypeError, "5.0"),
    ("join_schedules", "boundaries", [5, 10], ValueError, "[5, 10]"),
    ("join_schedules", "boundaries", [], ValueError, "[]"),
    ("join_schedules", "schedules[1]", [gc.constant_schedule(1.0), 3.0], TypeError, "3.0"),
    (
        "join_schedules",
        "schedules[0]",
        [jnp.ones(()), gc.constant_schedule(1.0)],
        TypeError,
        "Array(1",
    ),
]


@pytest.mark.parametrize(
    ("fn", "arg", "value", "error", "shown"),
    BAD,
    ids=[f"{fn}-{arg}={shown}" for fn, arg, _, _, shown in BAD],
)
def test_bad_arguments_raise_naming_function_argument_and_value(
    fn: str, arg: str, value: Any, error: type[Exception], shown: str
) -> None:
    key = arg.split("[")[0]
    kwargs = {**VALID[fn], key: value}
    with pytest.raises(error, match=rf"^{fn}: `{re.escape(arg)}` .*{re.escape(shown)}"):
        getattr(gc, fn)(**kwargs)


def test_join_schedules_needs_at_least_one_schedule() -> None:
    with pytest.raises(ValueError, match=r"^join_schedules: `boundaries` .*one or more schedules"):
        gc.join_schedules([], [])


@pytest.mark.parametrize("fn", sorted(VALID))
def test_valid_arguments_build_a_schedule(fn: str) -> None:
    value = getattr(gc, fn)(**VALID[fn])(3)
    assert value.dtype == jnp.result_type(float)
