"""Small dense linear algebra written so that XLA fuses it.

State (``n <= 2``) and feature (``m`` of a few) dimensions are static and tiny. A batched
``matmul``/``cholesky`` on 1x1 to 4x4 matrices costs a library call per step; the same
algebra written as broadcast-multiply-reduce and an unrolled Cholesky is plain elementwise
arithmetic, which XLA fuses across a ``vmap`` batch (docs/design.md, performance principles).
All functions accept leading batch axes.
"""

from __future__ import annotations

import jax.numpy as jnp

from .types import Array

# Beyond this size an unrolled Cholesky stops paying for itself.
_UNROLL_MAX = 8


def mm(a: Array, b: Array) -> Array:
    """``a @ b`` for ``[..., i, k] x [..., k, j]`` as a fused multiply-reduce."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def mv(a: Array, x: Array) -> Array:
    """``a @ x`` for ``[..., i, k] x [..., k]``."""
    return jnp.sum(a * x[..., None, :], axis=-1)


def transpose(a: Array) -> Array:
    return jnp.swapaxes(a, -1, -2)


def symmetrise(a: Array) -> Array:
    return 0.5 * (a + transpose(a))


def cholesky(s: Array) -> Array:
    """Lower Cholesky factor of SPD ``s`` (unrolled Cholesky-Banachiewicz for small sizes)."""
    m = s.shape[-1]
    if m > _UNROLL_MAX:
        return jnp.linalg.cholesky(s)
    L = [[None] * m for _ in range(m)]
    zero = jnp.zeros_like(s[..., 0, 0])
    for i in range(m):
        for j in range(i + 1):
            acc = s[..., i, j]
            for k in range(j):
                acc = acc - L[i][k] * L[j][k]
            L[i][j] = jnp.sqrt(acc) if i == j else acc / L[j][j]
    rows = [jnp.stack([L[i][j] if j <= i else zero for j in range(m)], axis=-1) for i in range(m)]
    return jnp.stack(rows, axis=-2)


def solve_lower(L: Array, b: Array) -> Array:
    """Solve ``L x = b`` for lower-triangular ``L``; ``b`` is ``[..., m]`` or ``[..., m, k]``."""
    m = L.shape[-1]
    vector = b.ndim == L.ndim - 1
    bb = b[..., None] if vector else b
    if m > _UNROLL_MAX:
        import jax.scipy.linalg as jsl

        x = jsl.solve_triangular(L, bb, lower=True)
        return x[..., 0] if vector else x
    xs = []
    for i in range(m):
        acc = bb[..., i, :]
        for k in range(i):
            acc = acc - L[..., i, k, None] * xs[k]
        xs.append(acc / L[..., i, i, None])
    x = jnp.stack(xs, axis=-2)
    return x[..., 0] if vector else x


def solve_upper_transpose(L: Array, b: Array) -> Array:
    """Solve ``L^T x = b`` for lower-triangular ``L``; ``b`` is ``[..., m]`` or ``[..., m, k]``."""
    m = L.shape[-1]
    vector = b.ndim == L.ndim - 1
    bb = b[..., None] if vector else b
    if m > _UNROLL_MAX:
        import jax.scipy.linalg as jsl

        x = jsl.solve_triangular(L, bb, lower=True, trans=1)
        return x[..., 0] if vector else x
    xs = [None] * m
    for i in reversed(range(m)):
        acc = bb[..., i, :]
        for k in range(i + 1, m):
            acc = acc - L[..., k, i, None] * xs[k]
        xs[i] = acc / L[..., i, i, None]
    x = jnp.stack(xs, axis=-2)
    return x[..., 0] if vector else x


def cho_solve(L: Array, b: Array) -> Array:
    """Solve ``(L L^T) x = b``."""
    return solve_upper_transpose(L, solve_lower(L, b))


def solve(a: Array, b: Array) -> Array:
    """Solve ``a x = b`` for a small square, non-singular ``a``; ``b`` is ``[..., n(, k)]``.

    ``n <= 2`` is written out (Cramer's rule), so a batch of solves is elementwise
    arithmetic instead of one LAPACK call per matrix.
    """
    n = a.shape[-1]
    vector = b.ndim == a.ndim - 1
    bb = b[..., None] if vector else b
    if n == 1:
        x = bb / a[..., :, :1]
    elif n == 2:
        a00, a01 = a[..., 0, 0, None], a[..., 0, 1, None]
        a10, a11 = a[..., 1, 0, None], a[..., 1, 1, None]
        det = a00 * a11 - a01 * a10
        b0, b1 = bb[..., 0, :], bb[..., 1, :]
        x = jnp.stack([(a11 * b0 - a01 * b1) / det, (a00 * b1 - a10 * b0) / det], axis=-2)
    else:
        x = jnp.linalg.solve(a, bb)
    return x[..., 0] if vector else x
