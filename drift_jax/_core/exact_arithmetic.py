"""Float64 arithmetic whose results IEEE-754 alone defines: the same bits on every machine.

A number that a model, a config file or a calibration stores must not change with the CPU,
the BLAS/LAPACK kernel or the thread count (README, "Reproducibility"). Matrix products and
factorisations from NumPy/LAPACK (and XLA) order their sums by the kernel's blocking, SIMD
width and FMA use, so their last bits vary from machine to machine. The functions here use
only operations that IEEE-754 rounds correctly, in an order fixed by this code:

- exact rational arithmetic (``fractions.Fraction``; a float64 converts to it exactly)
  rounded once at the end (``float(Fraction)`` is correctly rounded in CPython): ``solve``,
  ``gram``;
- ``math.fsum`` (the correctly rounded sum of its terms, hence independent of their order;
  a zero sum is taken as +0.0, whatever the Python version does with signed zeros),
  elementwise IEEE products, ``math.sqrt`` and single divisions: ``cholesky``, ``dot``,
  ``mean``, ``cross``. Python float operations are IEEE double operations, one at a time
  (no FMA contraction); NumPy's elementwise products are correctly rounded too.

They are meant for concrete values: small matrices (a model's ``[m, m]`` and ``[M, M]``
parameters) and the offline calibration statistics. Traced values (inside ``jit`` /
``grad``) keep JAX's kernels.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = ["cholesky", "cross", "dot", "fractions", "fsum", "gram", "mean", "solve"]


def fsum(terms) -> float:
    """``math.fsum`` (correctly rounded) of a list of floats, a zero result as +0.0."""
    return math.fsum(terms) + 0.0


def fractions(a) -> list[list[Fraction]]:
    """The entries of a float64 matrix as exact ``Fraction`` values (row lists)."""
    return [[Fraction(x) for x in row] for row in np.asarray(a, dtype=np.float64).tolist()]


def solve(A: list[list[Fraction]], b: list[Fraction]) -> list[Fraction] | None:
    """The exact solution ``x`` of ``A x = b`` (``A`` is ``[r, n]`` with ``r >= n``).

    Gauss-Jordan elimination over the rationals (no rounding, so no pivoting strategy is
    needed). Returns None when the system has no unique solution (``rank A < n``, or the
    equations contradict each other).
    """
    rows = [list(r) + [c] for r, c in zip(A, b, strict=True)]
    n = len(rows[0]) - 1 if rows else 0
    for col in range(n):
        pivot = next((r for r in range(col, len(rows)) if rows[r][col] != 0), None)
        if pivot is None:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        head = rows[col]
        inv = 1 / head[col]
        head[:] = [x * inv for x in head]
        for r, row in enumerate(rows):
            f = row[col]
            if r != col and f != 0:
                row[:] = [x - f * h for x, h in zip(row, head, strict=True)]
    if any(row[n] != 0 for row in rows[n:]):
        return None
    return [rows[k][n] for k in range(n)]


def gram(L) -> np.ndarray:
    """``L @ L.T`` (float64) computed exactly and rounded once per entry; exactly symmetric."""
    F = fractions(L)
    m = len(F)
    out = np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1):
            s = sum((a * c for a, c in zip(F[i], F[j], strict=True) if a and c), Fraction(0))
            out[i, j] = out[j, i] = float(s)
    return out


def cholesky(A) -> np.ndarray | None:
    """Lower Cholesky factor of the symmetric float64 matrix ``A``, in plain Python floats.

    Row by row: ``L[i][j] = fsum(A[i][j], -L[i][k] L[j][k] for k < j) / L[j][j]`` and
    ``L[j][j] = sqrt(fsum(A[j][j], -L[j][k]^2 for k < j))``: every product, sum, division
    and square root is one correctly rounded IEEE operation. Reads the lower triangle of
    ``A`` only. Returns None when ``A`` is not positive definite (a pivot is not > 0).
    """
    a = np.asarray(A, dtype=np.float64).tolist()
    m = len(a)
    L = [[0.0] * m for _ in range(m)]
    for i in range(m):
        for j in range(i + 1):
            s = fsum([a[i][j]] + [-(L[i][k] * L[j][k]) for k in range(j)])
            if i == j:
                if not s > 0.0:
                    return None
                L[i][i] = math.sqrt(s)
            else:
                L[i][j] = s / L[j][j]
    return np.array(L, dtype=np.float64).reshape(m, m)


def dot(x, y) -> float:
    """``sum_k x_k y_k`` as the ``math.fsum`` of the IEEE products ``x_k * y_k``."""
    prod = np.asarray(x, dtype=np.float64) * np.asarray(y, dtype=np.float64)
    return fsum(prod.ravel().tolist())


def mean(x) -> float:
    """``fsum(x) / len(x)`` (one correctly rounded sum, one division)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return fsum(x.tolist()) / x.size


def cross(X) -> np.ndarray:
    """``X.T @ X`` (``[n, p]`` -> ``[p, p]``) entry by entry with ``dot``: exactly symmetric
    (each pair computed once)."""
    Xc = np.ascontiguousarray(np.asarray(X, dtype=np.float64).T)
    p = Xc.shape[0]
    out = np.zeros((p, p))
    for i in range(p):
        for j in range(i + 1):
            out[i, j] = out[j, i] = dot(Xc[i], Xc[j])
    return out
