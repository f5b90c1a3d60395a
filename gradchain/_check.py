"""Construction-time checks of hyperparameters.

Each check names the function, the argument and the value. Python numbers and
concrete (untraced) scalar arrays are checked; traced values pass through, so a
hyperparameter computed inside ``jit`` or swept under ``vmap`` is never refused.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer


def concrete_value(value: Any) -> float | None:
    """The Python float of a concrete real scalar, or None for traced values and schedules."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, Tracer):
        return None
    is_scalar_array = isinstance(value, np.ndarray | jax.Array) and np.shape(value) == ()
    if is_scalar_array and any(jnp.issubdtype(value.dtype, k) for k in (jnp.integer, jnp.floating)):
        return float(value)
    return None


def number(fn: str, name: str, value: Any, *, schedule_ok: bool = False) -> None:
    """Raises TypeError unless ``value`` is a real scalar (or, if allowed, a schedule)."""
    if schedule_ok and callable(value) and not isinstance(value, jax.Array):
        return
    if isinstance(value, Tracer):
        if getattr(value, "shape", None) not in ((), None):
            raise ValueError(
                f"{fn}: `{name}` must be a scalar; got a traced array of shape {value.shape}."
            )
        return
    if concrete_value(value) is not None:
        return
    kind = "a number or a schedule (a function of the step)" if schedule_ok else "a number"
    shape = f" of shape {np.shape(value)}" if isinstance(value, np.ndarray | jax.Array) else ""
    raise TypeError(
        f"{fn}: `{name}` must be {kind}; got {type(value).__name__}{shape} {value!r:.80}."
    )


def _bound_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def in_range(
    fn: str,
    name: str,
    value: Any,
    lo: float | None,
    hi: float | None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    schedule_ok: bool = False,
    hint: str = "",
) -> None:
    """Raises unless ``value`` is a number within the bounds (traced values pass).

    Raises:
      TypeError: if ``value`` is not a number (nor a schedule where one is allowed).
      ValueError: if it is NaN, infinite where a bound is finite, or out of range.
    """
    number(fn, name, value, schedule_ok=schedule_ok)
    x = concrete_value(value)
    if x is None:
        return
    bad = math.isnan(x)
    if lo is not None:
        bad = bad or (x <= lo if lo_open else x < lo)
    if hi is not None:
        bad = bad or (x >= hi if hi_open else x > hi)
    top = float(jnp.finfo(jnp.result_type(float)).max)
    if not bad and math.isfinite(x) and abs(x) > top:  # a float64 that is inf in float32
        raise ValueError(
            f"{fn}: `{name}` must be representable in {jnp.result_type(float)} "
            f"(|x| <= {top:.4g}), the dtype hyperparameters are kept in; got {value!r}."
        )
    if bad:
        extra = f" {hint}" if hint else ""
        raise ValueError(
            f"{fn}: `{name}` must be {_bound_text(lo, hi, lo_open, hi_open)}; got {value!r}.{extra}"
        )


def non_negative(fn: str, name: str, value: Any, *, schedule_ok: bool = False) -> None:
    """Raises unless ``value`` is a finite number >= 0 (traced values and schedules pass)."""
    in_range(fn, name, value, 0.0, math.inf, hi_open=True, schedule_ok=schedule_ok)


def positive(fn: str, name: str, value: Any, *, schedule_ok: bool = False) -> None:
    """Raises unless ``value`` is a finite number > 0 (traced values and schedules pass)."""
    in_range(fn, name, value, 0.0, math.inf, lo_open=True, hi_open=True, schedule_ok=schedule_ok)


def finite(fn: str, name: str, value: Any, *, schedule_ok: bool = False) -> None:
    """Raises unless ``value`` is a finite number (traced values and schedules pass)."""
    in_range(
        fn, name, value, -math.inf, math.inf, lo_open=True, hi_open=True, schedule_ok=schedule_ok
    )


def decay_rate(fn: str, name: str, value: Any, *, schedule_ok: bool = False) -> None:
    """Raises unless ``value`` lies in [0, 1) (a moving-average decay or beta)."""
    in_range(fn, name, value, 0.0, 1.0, hi_open=True, schedule_ok=schedule_ok)


def positive_int(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a Python integer > 0."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{fn}: `{name}` must be an integer; got {type(value).__name__} {value!r}.")
    if value <= 0:
        raise ValueError(f"{fn}: `{name}` must be > 0; got {value!r}.")


def non_negative_int(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a Python integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{fn}: `{name}` must be an integer; got {type(value).__name__} {value!r}.")
    if value < 0:
        raise ValueError(f"{fn}: `{name}` must be >= 0; got {value!r}.")


def is_schedule(value: Any) -> bool:
    """Whether a hyperparameter is given as a schedule (a callable) rather than a value."""
    return callable(value) and not isinstance(value, jax.Array)


def dtype_or_none(fn: str, name: str, value: Any) -> Any:
    """Returns ``value`` as a floating dtype (or None); raises for anything else."""
    if value is None:
        return None
    try:
        dt = np.dtype(value)
    except TypeError as err:
        raise TypeError(f"{fn}: `{name}` must be a dtype or None; got {value!r}.") from err
    if not jnp.issubdtype(dt, jnp.inexact):
        raise ValueError(f"{fn}: `{name}` must be a floating dtype; got {dt}.")
    return dt


def prng_key(fn: str, name: str, key: Any) -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or a raw ``PRNGKey``; raises otherwise.

    Args:
      fn: the public function, named in the error.
      name: the argument's name.
      key: an int (or a scalar integer array) seed, a single typed key, or a
        ``uint32[2]`` raw ``jax.random.PRNGKey``.

    Raises:
      TypeError: for anything else (a bool, several keys, a float).
    """
    if isinstance(key, bool):
        raise TypeError(
            f"{fn}: `{name}` must be an int seed or a jax.random key; got bool {key!r}."
        )
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array | np.ndarray):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return jnp.asarray(key)
        if jnp.issubdtype(key.dtype, jnp.integer) and key.shape == ():
            return jax.random.key(key)
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(jnp.asarray(key))  # a PRNGKey (Optax refuses it)
    shape = f" of shape {np.shape(key)}" if hasattr(key, "shape") else ""
    raise TypeError(
        f"{fn}: `{name}` must be an int seed or a single jax.random key; got "
        f"{type(key).__name__}{shape} {key!r:.60}. For several keys, vmap over the seeds."
    )
