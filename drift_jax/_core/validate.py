"""Argument validation: the one home of drift_jax's argument checks.

Every public function checks its arguments with the helpers below, so an error names the
argument, the value it got and what is allowed, in one wording everywhere:

* a wrong *type* (a string where a model or a number is expected, a bool where an int is
  expected, a float where an int is expected, ...) raises :class:`ArgumentTypeError`, a
  ``TypeError`` that is also a ``ValueError`` (earlier versions raised ``ValueError`` for
  these, and code written against them keeps working);
* a value of the right type that is not allowed (``n_paths=0``, ``threshold=1.5``)
  raises a ``ValueError``.

Python settings (counts, levels, thresholds, flags, names): :func:`integer`,
:func:`int_at_least`, :func:`positive_int`, :func:`nonnegative_int`, :func:`real`,
:func:`finite_float`, :func:`positive_float`, :func:`nonnegative_float`,
:func:`probability`, :func:`boolean`, :func:`one_of`, :func:`instance`,
:func:`prng_key`.

Arrays (model parameters, data): :func:`as_float_array`, :func:`check`,
:func:`nonnegative`, :func:`positive`, :func:`scalar`. Concrete arrays (the usual case: a
model built from Python floats or NumPy arrays) are checked eagerly. Traced values (a
model built inside ``jit``/``vmap``/``grad``) cannot be inspected in Python, so the same
condition is attached to the computation with ``eqx.error_if``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a ``TypeError``, and a ``ValueError`` for code
    written against earlier versions (which raised ``ValueError`` for it)."""


def message(name: str, value, allowed: str) -> str:
    """The one wording: "`name` must be <allowed>, got name=<value>."."""
    return f"`{name}` must be {allowed}, got {name}={value!r}."


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


# --- Python settings ------------------------------------------------------------------------


def _as_int(value) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else ``None``."""
    if isinstance(value, bool | np.bool_):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def integer(name: str, value, allowed: str, ok: Callable[[int], bool] | None = None) -> int:
    """An int (Python or NumPy, not a bool) for which ``ok`` holds, as a Python int.

    ``allowed`` completes "must be ...", e.g. "an int >= 1"."""
    i = _as_int(value)
    if i is None:
        raise ArgumentTypeError(message(name, value, allowed))
    if ok is not None and not ok(i):
        raise ValueError(message(name, value, allowed))
    return i


def int_at_least(name: str, value, minimum: int, noun: str = "an int") -> int:
    """An int ``>= minimum`` ("`name` must be an int >= minimum, ...")."""
    return integer(name, value, f"{noun} >= {minimum}", lambda i: i >= minimum)


def positive_int(name: str, value, noun: str = "an int") -> int:
    """An int ``>= 1`` (a count: paths, steps, starts, a chunk size)."""
    return int_at_least(name, value, 1, noun)


def nonnegative_int(name: str, value, noun: str = "an int") -> int:
    """An int ``>= 0`` (an index, a start)."""
    return int_at_least(name, value, 0, noun)


def _as_real(value) -> float | None:
    """``value`` as a float if it is a real number (a scalar, not a bool), else ``None``."""
    if value is None or isinstance(value, bool | np.bool_ | str | bytes):
        return None
    try:
        if np.ndim(value) != 0:
            return None
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x


def real(name: str, value, allowed: str, ok: Callable[[float], bool] | None = None) -> float:
    """A real number (Python or NumPy scalar, not a bool) for which ``ok`` holds, as a float.

    ``allowed`` completes "must be ...", e.g. "in [0, 1]"."""
    x = _as_real(value)
    if x is None:
        raise ArgumentTypeError(message(name, value, allowed))
    if ok is not None and not ok(x):
        raise ValueError(message(name, value, allowed))
    return x


def finite_float(name: str, value, allowed: str = "a finite number") -> float:
    return real(name, value, allowed, math.isfinite)


def positive_float(name: str, value, allowed: str = "a number > 0") -> float:
    return real(name, value, allowed, lambda x: math.isfinite(x) and x > 0)


def nonnegative_float(name: str, value, allowed: str = "a number >= 0") -> float:
    return real(name, value, allowed, lambda x: math.isfinite(x) and x >= 0)


def probability(name: str, value, allowed: str = "in [0, 1]") -> float:
    return real(name, value, allowed, lambda x: 0.0 <= x <= 1.0)


def boolean(name: str, value, allowed: str = "True or False") -> bool:
    """``True`` or ``False`` (a Python or NumPy bool; not 0 / 1)."""
    if not isinstance(value, bool | np.bool_):
        raise ArgumentTypeError(f"`{name}` must be {allowed}, got {value!r}.")
    return bool(value)


def one_of(name: str, value, allowed: tuple, what: str | None = None):
    """One of the ``allowed`` choices (names); a value of another type is a type error.

    ``what`` replaces "one of <allowed>" in the message, e.g. "'joint' or 'independent'"."""
    what = f"one of {allowed}" if what is None else what
    text = f"`{name}` must be {what}, got {value!r}."
    types = {type(a) for a in allowed}
    if types and not isinstance(value, tuple(types)):
        raise ArgumentTypeError(text)
    if value not in allowed:
        raise ValueError(text)
    return value


def instance(name: str, value, types, what: str):
    """``value`` if it is an instance of ``types``; ``what`` names the allowed kind(s),
    e.g. "a dj.RiskModel"."""
    if not isinstance(value, types):
        raise ArgumentTypeError(f"`{name}` must be {what}, got {type(value).__name__}.")
    return value


def prng_key(name: str, value):
    """A JAX PRNG key: a typed key (``jax.random.key``) or a raw ``uint32[2]`` key."""
    ok = isinstance(value, jax.Array) and (
        jnp.issubdtype(value.dtype, jax.dtypes.prng_key)
        or (value.dtype == jnp.uint32 and value.shape == (2,))
    )
    if not ok:
        raise ArgumentTypeError(
            f"`{name}` must be a JAX PRNG key (jax.random.key(seed)), got {value!r}."
        )
    return value


def feature_names(name: str, value, m: int) -> tuple[str, ...] | None:
    """``None`` or ``m`` distinct, non-empty strings (the names of ``m`` features), as a
    tuple."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else value
    allowed = f"None or {m} distinct names (strings), one per feature"
    try:
        names = tuple(names)
    except TypeError:
        raise ArgumentTypeError(message(name, value, allowed)) from None
    if not all(isinstance(s, str) for s in names):
        raise ArgumentTypeError(message(name, value, allowed))
    if len(names) != m or len(set(names)) != m or not all(names):
        raise ValueError(message(name, value, allowed))
    return names


class DataWarning(UserWarning):
    """Data that was read or changed in a way the user should know about (rows or cells
    read as missing, a precision lowered): the message says what, how many and where."""


# --- arrays ---------------------------------------------------------------------------------


def as_float_array(name: str, value, dtype=None) -> jax.Array:
    """Convert to a floating JAX array (default float dtype unless ``dtype`` is given)."""
    if isinstance(value, str | bytes) or value is None:
        raise ArgumentTypeError(
            f"`{name}` must be a number or an array of numbers, got {value!r}."
        )
    try:
        arr = jnp.asarray(value)
    except TypeError:
        raise ArgumentTypeError(
            f"`{name}` must be a number or an array of numbers, got {type(value).__name__}."
        ) from None
    if dtype is None:
        dtype = arr.dtype if jnp.issubdtype(arr.dtype, jnp.floating) else jnp.result_type(float)
    # An explicit dtype drops JAX's weak typing, so parameters have a definite precision.
    return jnp.asarray(arr, dtype=dtype)


def check(
    name: str,
    value: jax.Array,
    ok: Callable[[jax.Array], jax.Array],
    allowed: str,
) -> jax.Array:
    """Return ``value`` after checking ``ok(value)`` holds elementwise.

    ``allowed`` completes the sentence "must be ...", e.g. "finite and >= 0".
    """
    result = ok(value)
    # Under jit even a concrete value's check is staged out (omnistaging): a tracer.
    if is_traced(value) or is_traced(result):
        return eqx.error_if(value, ~jnp.all(result), f"`{name}` must be {allowed}.")
    good = np.asarray(result)
    if not np.all(good):
        shown = np.asarray(value)
        bad = shown if shown.ndim == 0 else shown[~good.astype(bool)]
        raise ValueError(
            f"`{name}` must be {allowed}; got {name}={_fmt(shown)} (bad: {_fmt(bad)})."
        )
    return value


def nonnegative(name: str, value, dtype=None) -> jax.Array:
    arr = as_float_array(name, value, dtype)
    return check(name, arr, lambda v: jnp.isfinite(v) & (v >= 0), "finite and >= 0")


def positive(name: str, value, dtype=None) -> jax.Array:
    arr = as_float_array(name, value, dtype)
    return check(name, arr, lambda v: jnp.isfinite(v) & (v > 0), "finite and > 0")


def scalar(name: str, arr: jax.Array) -> jax.Array:
    if arr.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got an array of shape {arr.shape}.")
    return arr


def _fmt(x: np.ndarray) -> str:
    with np.printoptions(precision=6, threshold=12, suppress=False):
        return np.array2string(np.asarray(x), separator=", ") if np.ndim(x) else repr(x.item())
