"""Segmented scans along the time axis (the last axis) of ``[..., T]`` paths.

"The first step at or after ``k`` where something happens, within the current stretch"
and "the value at the most recent event" are folds that restart at marked steps. They are
written once here, as a ``lax.scan`` over time with the batch in the carry, and used by
the event metrics (``_evaluation/event_metrics.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .._core.types import Array


def segmented_scan(op: Callable, values, reset: Array, *, reverse: bool):
    """Segmented fold along the last axis.

    Forward: ``x_k = v_k if reset_k else op(x_{k-1}, v_k)``, with ``x_0 = v_0``.
    Reverse: ``x_k = v_k if reset_k else op(v_k, x_{k+1})``, with ``x_{T-1} = v_{T-1}``.
    ``values`` is a pytree of ``[..., T]`` arrays.
    """
    # A sequential lax.scan: the associative form does the same O(T) work but took 2-15 s
    # to compile on XLA:CPU here (T = 25 to 1e5, against ~1 s) and ran no faster.
    reset = reset.at[..., -1 if reverse else 0].set(True)
    xs = jax.tree.map(lambda x: jnp.moveaxis(x, -1, 0), (reset, values))

    def step(carry, x):
        r, v = x
        merged = op(v, carry) if reverse else op(carry, v)
        out = jax.tree.map(lambda a, b: jnp.where(r, a, b), v, merged)
        return out, out

    init = jax.tree.map(lambda x: x[0], xs[1])  # never used: the first step is a reset
    _, out = jax.lax.scan(step, init, xs, reverse=reverse)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), out)


def shift_right(x: Array, fill) -> Array:
    """``y_k = x_{k-1}``, ``y_0 = fill``."""
    return jnp.concatenate([jnp.full_like(x[..., :1], fill), x[..., :-1]], axis=-1)


def shift_left(x: Array, fill) -> Array:
    """``y_k = x_{k+1}``, ``y_{T-1} = fill``."""
    return jnp.concatenate([x[..., 1:], jnp.full_like(x[..., :1], fill)], axis=-1)


def time_to_event(event: Array, last: Array, dt: Array) -> Array:
    """Seconds from ``t_k`` to ``t_j``, ``j >= k`` the first step with ``event_j``.

    The search stops after the first step ``>= k`` with ``last`` (and at ``T - 1``): ``+inf``
    when no event comes before that.
    """
    last = last.at[..., -1].set(True)
    inf = jnp.asarray(jnp.inf, dt.dtype)
    vals = jnp.where(event, 0, jnp.where(last, inf, shift_left(dt, 0)))
    return segmented_scan(jnp.add, vals, event | last, reverse=True)


def first(a, b):
    return a


def fill_forward(values: Array, starts: Array) -> Array:
    """The value at the most recent ``starts`` step at or before ``k`` (``v_0`` before any)."""
    return segmented_scan(first, values, starts, reverse=False)
