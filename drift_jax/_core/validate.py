"""Argument validation in two layers.

Concrete values (the usual case: a model built from Python floats or NumPy arrays) are
checked eagerly and raise a ``ValueError`` that names the argument, its value and what is
allowed. Traced values (a model built inside ``jit``/``vmap``/``grad``) cannot be inspected
in Python, so the same condition is attached to the computation with ``eqx.error_if``.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def as_float_array(name: str, value, dtype=None) -> jax.Array:
    """Convert to a floating JAX array (default float dtype unless ``dtype`` is given)."""
    if isinstance(value, str) or value is None:
        raise ValueError(f"`{name}` must be a number or an array of numbers, got {value!r}.")
    arr = jnp.asarray(value)
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


def one_of(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
    return value


def _fmt(x: np.ndarray) -> str:
    with np.printoptions(precision=6, threshold=12, suppress=False):
        return np.array2string(np.asarray(x), separator=", ") if np.ndim(x) else repr(x.item())
