"""Checking and shaping of the time series a filter consumes: observations and step lengths."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import validate as v
from .types import Array, DtLike, Float, ObsLike


def prepare_observations(zs: ObsLike, num_features: int, dtype) -> Float[Array, "T m"]:
    """Return ``zs`` as ``[T, m]`` in ``dtype``; NaN is kept (missing), ``+-inf`` is an error."""
    arr = jnp.asarray(zs)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(dtype)
    arr = arr.astype(dtype)
    if arr.ndim == 1:
        if num_features != 1:
            raise ValueError(
                f"`zs` has shape {arr.shape} (one feature per step) but the observation model "
                f"has m={num_features} features; pass `zs` of shape [T, {num_features}]."
            )
        arr = arr[:, None]
    elif arr.ndim != 2 or arr.shape[1] != num_features:
        raise ValueError(
            f"`zs` must have shape [T] or [T, m] with m={num_features} features (the width of "
            f"the observation model), got shape {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise ValueError("`zs` must hold at least one time step, got T=0.")
    return check_no_inf("zs", arr)


def check_no_inf(name: str, arr: Array) -> Array:
    if v.is_traced(arr):
        # The check rides on a scalar zero added to the array: attached to the array itself
        # it makes XLA copy the array (~10 ms per 4096 x 1000 batch, ~10% of an IMM filter).
        zero = eqx.error_if(
            jnp.zeros((), arr.dtype),
            jnp.any(jnp.isinf(arr)),
            f"`{name}` must not contain +-inf (NaN marks missing).",
        )
        return arr + zero
    a = np.asarray(arr)
    if np.any(np.isinf(a)):
        where = np.argwhere(np.isinf(a))[:5].tolist()
        raise ValueError(
            f"`{name}` must not contain +-inf (NaN marks missing data); found inf at "
            f"indices {where}."
        )
    return arr


def prepare_dt(dt: DtLike, num_steps: int, dtype) -> Float[Array, "..."]:
    """Return ``dt`` as a scalar or ``[T]`` array; each step length must be finite and > 0."""
    arr = jnp.asarray(dt)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(dtype)
    arr = arr.astype(dtype)
    if arr.ndim not in (0, 1) or (arr.ndim == 1 and arr.shape[0] != num_steps):
        raise ValueError(
            f"`dt` must be a scalar or have shape [T] = [{num_steps}], got shape {arr.shape}."
        )
    return v.check("dt", arr, lambda d: jnp.isfinite(d) & (d > 0), "finite and > 0 (seconds)")
