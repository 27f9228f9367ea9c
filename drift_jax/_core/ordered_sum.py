"""A sum along one axis whose order of additions is fixed by the axis length alone.

XLA's ``reduce`` may add in an order chosen from the layout of the whole array, so a
per-path sum over time (``jnp.sum(x, axis=-1)`` of a ``[B, T]`` batch) can change in its
last bits with the batch size ``B``, i.e. with the chunk size, the device count or the
number of processes a Monte Carlo run is split into. Here the sum is pairwise halving
written out as elementwise additions, which XLA evaluates exactly as written (it does not
reassociate floating-point additions), so a path's sum has the same bits whatever batch
it is computed in. It costs the same additions as ``jnp.sum`` and is as accurate
(pairwise summation: error ``O(log T)`` ulps).
"""

from __future__ import annotations

import jax.numpy as jnp


def ordered_sum(x, axis: int = -1):
    """``jnp.sum(x, axis)`` with the additions in one order fixed by ``x.shape[axis]``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(ordered_sum(jnp.arange(5.0)))
        10.0
        >>> ordered_sum(jnp.ones((2, 3, 4)), axis=1).shape
        (2, 4)
    """
    x = jnp.moveaxis(jnp.asarray(x), axis, -1)
    n = x.shape[-1]
    if n == 0:
        return jnp.zeros(x.shape[:-1], x.dtype)
    while n > 1:
        half = n // 2
        pairs = x[..., :half] + x[..., half : 2 * half]
        x = jnp.concatenate([pairs, x[..., 2 * half :]], axis=-1) if n % 2 else pairs
        n = x.shape[-1]
    return x[..., 0]
