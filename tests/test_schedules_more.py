"""Phase and cycle schedules against their formulas in NumPy float64, Optax, and jit/vmap/scan.

As in tests/test_schedules.py, every case is written once as ``make(lib)``: the
same call builds the gradchain schedule, the Optax one (where Optax has it) and
the NumPy reference ``Ref``, written from the papers' and Optax's documented
formulas.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

# Every step from 0 to 300 (so every boundary used below), and two far ones.
STEPS = np.concatenate([np.arange(301), [1000, 5000]]).astype(np.int32)


def _cos_weight(frac: Any) -> Any:
    """(1 + cos(pi * frac)) / 2: 1 at the start of a half-cosine transition, 0 at its end."""
    return 0.5 * (1 + np.cos(np.pi * frac))


class Ref:
    """Closed-form float64 NumPy versions, written from the formulas in the docstrings."""

    @staticmethod
    def warmup_exponential_decay_schedule(
        init_value,
        peak_value,
        warmup_steps,
        transition_steps,
        decay_rate,
        transition_begin=0,
        staircase=False,
        end_value=None,
    ):
        rate = float(np.float32(decay_rate))  # as float32 holds it: rate**p amplifies the rounding

        def f(t):
            warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
            p = (t - warmup_steps - transition_begin) / transition_steps
            p = np.floor(p) if staircase else p
            decay = np.where(p <= 0, peak_value, peak_value * rate ** np.maximum(p, 0))
            if end_value is not None:
                decay = np.maximum(decay, end_value) if rate < 1 else np.minimum(decay, end_value)
            return np.where(t < warmup_steps, warm, decay)

        return f

    @staticmethod
    def _through(knots, cosine):
        """The curve through (step, value) knots: linear, or half cosines, between neighbours."""

        def f(t):
            out = np.full(np.shape(t), float(knots[0][1]))
            for (b0, v0), (b1, v1) in itertools.pairwise(knots):
                if b1 == b0:
                    continue
                frac = np.clip((t - b0) / (b1 - b0), 0, 1)
                piece = v1 + (v0 - v1) * (_cos_weight(frac) if cosine else 1 - frac)
                out = np.where(t >= b0, piece, out)
            return np.where(t >= knots[-1][0], knots[-1][1], out)

        return f

    @staticmethod
    def piecewise_interpolate_schedule(interpolate_type, init_value, boundaries_and_scales=None):
        knots = [(0, init_value)]
        for b, s in sorted((boundaries_and_scales or {}).items()):
            knots.append((b, knots[-1][1] * s))
        return Ref._through(knots, interpolate_type == "cosine")

    @staticmethod
    def linear_onecycle_schedule(
        transition_steps,
        peak_value,
        pct_start=0.3,
        pct_final=0.85,
        div_factor=25.0,
        final_div_factor=1e4,
    ):
        t_peak, t_back = int(pct_start * transition_steps), int(pct_final * transition_steps)
        init = peak_value / div_factor
        return lambda t: np.interp(
            t,
            [0, t_peak, t_back, transition_steps],
            [init, peak_value, init, init / final_div_factor],
        )

    @staticmethod
    def cosine_onecycle_schedule(
        transition_steps, peak_value, pct_start=0.3, div_factor=25.0, final_div_factor=1e4
    ):
        t_peak = int(pct_start * transition_steps)
        init = peak_value / div_factor
        final = init / final_div_factor

        def f(t):
            up = peak_value + (init - peak_value) * _cos_weight(np.clip(t / max(t_peak, 1), 0, 1))
            frac = np.clip((t - t_peak) / (transition_steps - t_peak), 0, 1)
            down = final + (peak_value - final) * _cos_weight(frac)
            return np.where(t < t_peak, up, down)

        return f

    @staticmethod
    def _warmup_cosine(
        init_value, peak_value, warmup_steps, decay_steps, end_value=0.0, exponent=1.0
    ):
        def f(t):
            warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
            frac = np.clip((t - warmup_steps) / (decay_steps - warmup_steps), 0, 1)
            decay = end_value + (peak_value - end_value) * _cos_weight(frac) ** exponent
            return np.where(t < warmup_steps, warm, decay)

        return f

    @staticmethod
    def sgdr_schedule(cosine_kwargs):
        cycles = [(kw["decay_steps"], Ref._warmup_cosine(**kw)) for kw in cosine_kwargs]

        def f(t):
            out, start = cycles[0][1](t), 0
            for (length, _), (_, cycle) in itertools.pairwise(cycles):
                start += length
                out = np.where(t < start, out, cycle(t - start))
            return out

        return f

    @staticmethod
    def warmup_stable_decay_schedule(
        peak_value,
        total_steps,
        warmup_steps=0,
        *,
        decay_steps=None,
        decay_fraction=None,
        init_value=0.0,
        end_value=0.0,
        decay_shape="linear",
    ):
        cool = (
            decay_steps
            if decay_steps is not None
            else math.floor(decay_fraction * total_steps + 0.5)
        )
        shapes = {
            "linear": lambda d: 1 - d,
            "cosine": _cos_weight,
            "1-sqrt": lambda d: 1 - np.sqrt(d),  # Hägele et al., eq. (1-sqrt)
        }

        def f(t):
            warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
            d = np.clip((t - (total_steps - cool)) / cool, 0, 1)
            rest = end_value + (peak_value - end_value) * shapes[decay_shape](d)
            return np.where(t < warmup_steps, warm, rest)

        return f

    @staticmethod
    def cyclic_schedule(base_value, max_value, step_size, mode="triangular", gamma=1.0):
        def f(t):  # Smith (2017), section 3.1, literally
            cycle = np.floor(1 + t / (2 * step_size))
            x = np.abs(t / step_size - 2 * cycle + 1)
            scale = {
                "triangular": np.ones_like(t),
                "triangular2": 1 / 2.0 ** (cycle - 1),
                "exp_range": gamma**t,
            }[mode]
            return base_value + (max_value - base_value) * np.maximum(0, 1 - x) * scale

        return f


_SGDR_CYCLES = [
    {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 10, "decay_steps": 100},
    {"init_value": 0.1, "peak_value": 0.5, "warmup_steps": 1, "decay_steps": 50, "end_value": 0.01},
    {"init_value": 0.0, "peak_value": 0.3, "warmup_steps": 5, "decay_steps": 120, "exponent": 2.0},
]

Make = Callable[[Any], Any]
# (id, make(lib), whether Optax has it with the same numbers)
CASES: list[tuple[str, Make, bool]] = [
    ("wexp", lambda m: m.warmup_exponential_decay_schedule(0.0, 1.0, 10, 20, 0.8), True),
    (
        "wexp_stair_end",
        lambda m: m.warmup_exponential_decay_schedule(1e-4, 1e-2, 50, 30, 0.7, 20, True, 1e-3),
        True,
    ),
    (
        "wexp_growth_cap",
        lambda m: m.warmup_exponential_decay_schedule(0.5, 0.1, 5, 25, 1.05, 0, False, 0.5),
        True,
    ),
    ("wexp_no_warmup", lambda m: m.warmup_exponential_decay_schedule(0.3, 1.0, 0, 70, 0.9), True),
    (
        "pinterp_linear",
        lambda m: m.piecewise_interpolate_schedule("linear", 1.0, {40: 0.1, 100: 0.1, 250: 2.0}),
        True,
    ),
    (
        "pinterp_cosine",
        lambda m: m.piecewise_interpolate_schedule(
            "cosine", 2.0, {0: 0.5, 30: 0.1, 31: 10.0, 200: 0.0}
        ),
        True,
    ),
    ("pinterp_none", lambda m: m.piecewise_interpolate_schedule("linear", 0.5), True),
    (
        "pinterp_unsorted",
        lambda m: m.piecewise_interpolate_schedule("cosine", 1.0, {200: 0.5, 50: 0.2}),
        True,
    ),
    ("lin1c", lambda m: m.linear_onecycle_schedule(300, 1.0), True),
    ("lin1c_custom", lambda m: m.linear_onecycle_schedule(200, 3e-3, 0.25, 0.6, 10.0, 100.0), True),
    ("lin1c_no_rise", lambda m: m.linear_onecycle_schedule(100, 1.0, 0.0, 0.5), True),
    ("lin1c_phases_meet", lambda m: m.linear_onecycle_schedule(10, 1.0, 0.3, 0.35), False),
    ("cos1c", lambda m: m.cosine_onecycle_schedule(300, 1.0), True),
    ("cos1c_custom", lambda m: m.cosine_onecycle_schedule(250, 0.1, 0.1, 5.0, 50.0), True),
    ("cos1c_short", lambda m: m.cosine_onecycle_schedule(7, 2.0, 0.5), True),
    ("sgdr", lambda m: m.sgdr_schedule(_SGDR_CYCLES), True),
    ("sgdr_one", lambda m: m.sgdr_schedule(_SGDR_CYCLES[2:]), True),
    (
        "wsd_linear",
        lambda m: m.warmup_stable_decay_schedule(1.0, 300, 30, decay_steps=60),
        False,
    ),
    (
        "wsd_cosine_fraction",
        lambda m: m.warmup_stable_decay_schedule(
            3e-3, 250, 10, decay_fraction=0.2, init_value=1e-5, end_value=1e-5, decay_shape="cosine"
        ),
        False,
    ),
    (
        "wsd_1sqrt_all_cooldown",
        lambda m: m.warmup_stable_decay_schedule(1.0, 200, decay_steps=200, decay_shape="1-sqrt"),
        False,
    ),
    (
        "wsd_1sqrt_no_stable",
        lambda m: m.warmup_stable_decay_schedule(
            2.0, 100, 40, decay_steps=60, end_value=0.5, decay_shape="1-sqrt"
        ),
        False,
    ),
    ("cyclic", lambda m: m.cyclic_schedule(0.1, 1.0, 20), False),
    ("cyclic_tri2", lambda m: m.cyclic_schedule(1e-3, 6e-3, 15, "triangular2"), False),
    ("cyclic_exp", lambda m: m.cyclic_schedule(0.0, 1.0, 25, "exp_range", 0.999), False),
    ("cyclic_inverted", lambda m: m.cyclic_schedule(1.0, 0.2, 7), False),
]


def _optax_values(make: Make, steps: np.ndarray) -> np.ndarray:
    # vmap: Optax's piecewise_interpolate_schedule takes one step at a time.
    with jax.numpy_dtype_promotion("standard"):  # Optax mixes int32 steps with Python floats
        return np.asarray(jax.vmap(make(optax))(jnp.asarray(steps)))


# The four properties every schedule shares (its formula in float64, Optax at every step,
# jit/vmap/Python ints, lax.scan) run over CASES from tests/test_schedules.py.


def test_traced_values_pass_the_checks_and_can_be_swept_with_vmap() -> None:
    def build(x: Any, n: Any) -> jax.Array:
        schedules = [
            gc.warmup_exponential_decay_schedule(0.0, x, n, n, x, n, True, x / 8),
            gc.piecewise_interpolate_schedule("cosine", x, {5: x, 9: 2.0}),
            gc.linear_onecycle_schedule(20, x, div_factor=x * 10, final_div_factor=x),
            gc.cosine_onecycle_schedule(20, x, 0.2, x * 10, x),
            gc.sgdr_schedule(
                [{"init_value": 0.0, "peak_value": x, "warmup_steps": n, "decay_steps": 30}]
            ),
            gc.warmup_stable_decay_schedule(x, 4 * n, n, decay_steps=n, end_value=x / 10),
            gc.cyclic_schedule(x / 10, x, n, "exp_range", x + 0.4),
        ]
        return jnp.stack([s(7) for s in schedules])

    xs = jnp.array([0.5, 0.25])
    got = jax.jit(jax.vmap(build, in_axes=(0, None)))(xs, jnp.array(5, jnp.int32))
    want = np.stack([np.asarray(build(x, 5)) for x in (0.5, 0.25)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


# Claims about single schedules.


def test_warmup_exponential_decay_counts_transition_begin_from_the_end_of_the_warmup() -> None:
    s = gc.warmup_exponential_decay_schedule(0.0, 1.0, 4, 2, 0.5, transition_begin=3)
    assert [round(float(s(t)), 6) for t in range(4, 11)] == [
        1.0,
        1.0,
        1.0,
        1.0,
        0.707107,
        0.5,
        0.353553,
    ]


def test_piecewise_interpolate_moves_between_the_accumulated_values_not_the_scales() -> None:
    s = gc.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})
    assert [round(float(s(t)), 6) for t in (4, 6, 8)] == [0.1, 0.0505, 0.001]


def test_piecewise_interpolate_with_a_boundary_at_zero_starts_from_the_scaled_value() -> None:
    s = gc.piecewise_interpolate_schedule("linear", 1.0, {0: 0.5, 4: 0.1})
    assert [round(float(s(t)), 6) for t in (0, 2, 4)] == [0.5, 0.275, 0.05]


def test_onecycle_skips_a_phase_whose_ends_meet_where_optax_drifts() -> None:
    # int(0.3 * 10) == int(0.35 * 10) == 3: the descent back to init takes no step.
    s = gc.linear_onecycle_schedule(10, 1.0, 0.3, 0.35)
    got = np.asarray(s(jnp.arange(11)))
    np.testing.assert_allclose(got[:3], np.interp(np.arange(3), [0, 3], [0.04, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(
        got[3:], np.interp(np.arange(3, 11), [3, 10], [0.04, 4e-6]), rtol=1e-6
    )
    optax_values = _optax_values(
        lambda m: m.linear_onecycle_schedule(10, 1.0, 0.3, 0.35), np.arange(11)
    )
    assert optax_values.max() < 0.05  # Optax's dict of boundaries lost the peak


def test_sgdr_restarts_each_cycle_at_its_own_init_value() -> None:
    s = gc.sgdr_schedule(_SGDR_CYCLES)
    assert [round(float(s(t)), 6) for t in (0, 10, 100, 101, 150, 155, 270, 5000)] == [
        0.0,
        1.0,
        0.1,
        0.5,
        0.0,
        0.3,
        0.0,
        0.0,
    ]


def test_warmup_stable_decay_agrees_with_a_longer_run_until_its_own_cooldown() -> None:
    # The WSD promise: train on at the peak, and cool down from any checkpoint.
    short = gc.warmup_stable_decay_schedule(1.0, 1000, 100, decay_steps=200, decay_shape="1-sqrt")
    long = gc.warmup_stable_decay_schedule(1.0, 5000, 100, decay_steps=200, decay_shape="1-sqrt")
    t = jnp.arange(801)
    np.testing.assert_array_equal(np.asarray(short(t)), np.asarray(long(t)))
    assert float(short(1000)) == 0.0 and float(long(1000)) == 1.0


def test_warmup_stable_decay_fraction_rounds_to_the_nearest_step() -> None:
    by_fraction = gc.warmup_stable_decay_schedule(1.0, 1003, decay_fraction=0.2)  # 200.6 -> 201
    by_steps = gc.warmup_stable_decay_schedule(1.0, 1003, decay_steps=201)
    t = jnp.arange(1100)
    np.testing.assert_array_equal(np.asarray(by_fraction(t)), np.asarray(by_steps(t)))


def test_one_minus_sqrt_cooldown_keeps_float32_relative_accuracy_near_its_end() -> None:
    s = gc.warmup_stable_decay_schedule(1.0, 100_000, decay_steps=100_000, decay_shape="1-sqrt")
    steps = np.arange(99_000, 100_000)
    got = np.asarray(s(jnp.asarray(steps, jnp.int32)))
    want = 1 - np.sqrt(steps / 100_000)  # down to 5e-6, where 1 - sqrt cancels in float32
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cyclic_triangular2_halves_the_amplitude_every_cycle() -> None:
    s = gc.cyclic_schedule(0.0, 1.0, 10, "triangular2")
    peaks = [float(s(10 + 20 * k)) for k in range(6)]
    assert peaks == [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert {float(s(20 * k)) for k in range(6)} == {0.0}


def test_cyclic_exp_range_stays_accurate_over_long_runs_where_float32_gamma_drifts() -> None:
    gamma, steps = 0.99994, np.arange(0, 100_000, 997)  # gamma**t reaches 0.0025
    s = gc.cyclic_schedule(0.0, 1.0, 2000, "exp_range", gamma)
    want = Ref.cyclic_schedule(0.0, 1.0, 2000, "exp_range", gamma)(steps.astype(np.float64))
    np.testing.assert_allclose(np.asarray(s(jnp.asarray(steps))), want, rtol=2e-6, atol=0)
    naive = Ref.cyclic_schedule(0.0, 1.0, 2000, "exp_range", float(np.float32(gamma)))(steps)
    assert np.max(np.abs(naive / np.where(want > 0, want, 1) - 1)) > 1e-4  # what it avoids


# Validation: (function, the valid arguments) and (function, argument, bad value, error, shown).
_CYCLE = {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 2, "decay_steps": 10}
VALID: dict[str, dict[str, Any]] = {
    "warmup_exponential_decay_schedule": {
        "init_value": 0.0,
        "peak_value": 1.0,
        "warmup_steps": 5,
        "transition_steps": 10,
        "decay_rate": 0.5,
    },
    "piecewise_interpolate_schedule": {
        "interpolate_type": "linear",
        "init_value": 1.0,
        "boundaries_and_scales": {5: 0.1},
    },
    "linear_onecycle_schedule": {"transition_steps": 100, "peak_value": 1.0},
    "cosine_onecycle_schedule": {"transition_steps": 100, "peak_value": 1.0},
    "sgdr_schedule": {"cosine_kwargs": [_CYCLE, _CYCLE]},
    "warmup_stable_decay_schedule": {
        "peak_value": 1.0,
        "total_steps": 100,
        "warmup_steps": 10,
        "decay_fraction": 0.2,
    },
    "cyclic_schedule": {
        "base_value": 0.1,
        "max_value": 1.0,
        "step_size": 10,
        "mode": "exp_range",
        "gamma": 0.99,
    },
}
NAN, INF = math.nan, math.inf
BAD: list[tuple[str, str, Any, type[Exception], str]] = [
    ("warmup_exponential_decay_schedule", "init_value", NAN, ValueError, "nan"),
    ("warmup_exponential_decay_schedule", "peak_value", INF, ValueError, "inf"),
    ("warmup_exponential_decay_schedule", "warmup_steps", -1, ValueError, "-1"),
    ("warmup_exponential_decay_schedule", "transition_steps", 0, ValueError, "0"),
    ("warmup_exponential_decay_schedule", "transition_steps", 2.5, TypeError, "2.5"),
    ("warmup_exponential_decay_schedule", "decay_rate", 0.0, ValueError, "0.0"),
    ("warmup_exponential_decay_schedule", "decay_rate", -0.5, ValueError, "-0.5"),
    ("warmup_exponential_decay_schedule", "transition_begin", -2, ValueError, "-2"),
    ("warmup_exponential_decay_schedule", "staircase", "yes", TypeError, "'yes'"),
    ("warmup_exponential_decay_schedule", "end_value", 2.0, ValueError, "2.0"),
    ("warmup_exponential_decay_schedule", "end_value", NAN, ValueError, "nan"),
    ("piecewise_interpolate_schedule", "interpolate_type", "LINEAR", ValueError, "'LINEAR'"),
    ("piecewise_interpolate_schedule", "interpolate_type", None, TypeError, "None"),
    ("piecewise_interpolate_schedule", "init_value", NAN, ValueError, "nan"),
    (
        "piecewise_interpolate_schedule",
        "boundaries_and_scales",
        [(5, 0.1)],
        TypeError,
        "[(5, 0.1)]",
    ),
    ("piecewise_interpolate_schedule", "boundaries_and_scales", {-1: 0.1}, ValueError, "-1"),
    ("piecewise_interpolate_schedule", "boundaries_and_scales", {2.5: 0.1}, TypeError, "2.5"),
    ("piecewise_interpolate_schedule", "boundaries_and_scales[5]", {5: -0.1}, ValueError, "-0.1"),
    ("piecewise_interpolate_schedule", "boundaries_and_scales[5]", {5: INF}, ValueError, "inf"),
    ("linear_onecycle_schedule", "transition_steps", 0, ValueError, "0"),
    ("linear_onecycle_schedule", "transition_steps", 2.5, TypeError, "2.5"),
    ("linear_onecycle_schedule", "peak_value", NAN, ValueError, "nan"),
    ("linear_onecycle_schedule", "pct_start", 1.5, ValueError, "1.5"),
    ("linear_onecycle_schedule", "pct_start", -0.1, ValueError, "-0.1"),
    ("linear_onecycle_schedule", "pct_final", 1.2, ValueError, "1.2"),
    ("linear_onecycle_schedule", "pct_final", 0.2, ValueError, "0.2"),
    ("linear_onecycle_schedule", "div_factor", 0.0, ValueError, "0.0"),
    ("linear_onecycle_schedule", "final_div_factor", -1.0, ValueError, "-1.0"),
    ("cosine_onecycle_schedule", "transition_steps", -5, ValueError, "-5"),
    ("cosine_onecycle_schedule", "peak_value", "1", TypeError, "'1'"),
    ("cosine_onecycle_schedule", "pct_start", 2.0, ValueError, "2.0"),
    ("cosine_onecycle_schedule", "div_factor", 0.0, ValueError, "0.0"),
    ("cosine_onecycle_schedule", "final_div_factor", INF, ValueError, "inf"),
    ("sgdr_schedule", "cosine_kwargs", [], ValueError, "[]"),
    ("sgdr_schedule", "cosine_kwargs[0]", [3.0], TypeError, "3.0"),
    ("sgdr_schedule", "cosine_kwargs[0]", [{"init_value": 0.0}], TypeError, "'init_value'"),
    (
        "sgdr_schedule",
        "cosine_kwargs[1]",
        [_CYCLE, {**_CYCLE, "warmup_steps": 10, "decay_steps": 5}],
        ValueError,
        "`decay_steps` must be > warmup_steps=10",
    ),
    ("sgdr_schedule", "cosine_kwargs[0]", [{**_CYCLE, "peak": 1.0}], TypeError, "'peak'"),
    ("sgdr_schedule", "cosine_kwargs[0]", [{**_CYCLE, "end_value": NAN}], ValueError, "nan"),
    ("warmup_stable_decay_schedule", "peak_value", NAN, ValueError, "nan"),
    ("warmup_stable_decay_schedule", "init_value", INF, ValueError, "inf"),
    ("warmup_stable_decay_schedule", "end_value", "0", TypeError, "'0'"),
    ("warmup_stable_decay_schedule", "total_steps", 0, ValueError, "0"),
    ("warmup_stable_decay_schedule", "warmup_steps", -1, ValueError, "-1"),
    ("warmup_stable_decay_schedule", "decay_fraction", 0.0, ValueError, "0.0"),
    ("warmup_stable_decay_schedule", "decay_fraction", 1.5, ValueError, "1.5"),
    ("warmup_stable_decay_schedule", "decay_fraction", 0.001, ValueError, "0.001"),
    ("warmup_stable_decay_schedule", "decay_shape", "sqrt", ValueError, "'sqrt'"),
    ("cyclic_schedule", "base_value", NAN, ValueError, "nan"),
    ("cyclic_schedule", "max_value", INF, ValueError, "inf"),
    ("cyclic_schedule", "step_size", 0, ValueError, "0"),
    ("cyclic_schedule", "step_size", 1.5, TypeError, "1.5"),
    ("cyclic_schedule", "mode", "triangle", ValueError, "'triangle'"),
    ("cyclic_schedule", "mode", 1, TypeError, "1"),
    ("cyclic_schedule", "gamma", 0.0, ValueError, "0.0"),
    ("cyclic_schedule", "gamma", 1.5, ValueError, "1.5"),
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


@pytest.mark.parametrize("fn", sorted(VALID))
def test_valid_arguments_build_a_schedule(fn: str) -> None:
    value = getattr(gc, fn)(**VALID[fn])(3)
    assert value.dtype == jnp.result_type(float)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"decay_steps": 10, "decay_fraction": 0.1}],
    ids=["neither", "both"],
)
def test_warmup_stable_decay_needs_exactly_one_cooldown_length(kwargs: dict[str, Any]) -> None:
    with pytest.raises(
        ValueError,
        match=r"^warmup_stable_decay_schedule: give exactly one of `decay_steps` and "
        r"`decay_fraction` .*decay_fraction=0\.2 cools down over the last 20%",
    ):
        gc.warmup_stable_decay_schedule(1.0, 100, 10, **kwargs)


def test_warmup_stable_decay_refuses_phases_longer_than_the_run() -> None:
    with pytest.raises(
        ValueError,
        match=r"^warmup_stable_decay_schedule: the warmup and cooldown must fit in "
        r"total_steps=100; got warmup_steps=60 and a cooldown of 50 steps",
    ):
        gc.warmup_stable_decay_schedule(1.0, 100, 60, decay_steps=50)


def test_cyclic_schedule_refuses_a_gamma_that_its_mode_would_ignore() -> None:
    with pytest.raises(
        ValueError,
        match=r"^cyclic_schedule: `gamma` only applies to mode='exp_range'; got 0\.99 with "
        r"mode='triangular'",
    ):
        gc.cyclic_schedule(0.1, 1.0, 10, gamma=0.99)


@pytest.mark.parametrize(
    ("build", "fn", "arg"),
    [
        (
            lambda n: gc.linear_onecycle_schedule(n, 1.0),
            "linear_onecycle_schedule",
            "transition_steps",
        ),
        (
            lambda n: gc.cosine_onecycle_schedule(n, 1.0),
            "cosine_onecycle_schedule",
            "transition_steps",
        ),
        (
            lambda n: gc.sgdr_schedule([{**_CYCLE, "decay_steps": n}]),
            "sgdr_schedule",
            r"cosine_kwargs[0]['decay_steps']",
        ),
        (
            lambda n: gc.warmup_stable_decay_schedule(1.0, n, decay_fraction=0.2),
            "warmup_stable_decay_schedule",
            "total_steps",
        ),
    ],
    ids=["linear_onecycle", "cosine_onecycle", "sgdr", "wsd_fraction"],
)
def test_step_counts_that_place_boundaries_must_be_concrete(build: Any, fn: str, arg: str) -> None:
    with pytest.raises(
        TypeError, match=rf"^{fn}: `{re.escape(arg)}` must be a concrete integer .*outside jit"
    ):
        jax.jit(build)(jnp.array(100, jnp.int32))
