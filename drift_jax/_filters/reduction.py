"""Many features of one drift, reduced exactly to one scalar observation per step.

Every feature observes the same scalar drift: ``z = a mu + eps``, ``eps ~ N(0, R)``
(``H = a`` has rank one). Then the generalised-least-squares combination

    y = b^T z / c,   b = R^{-1} a,   c = a^T R^{-1} a,

is a sufficient statistic for ``mu``: ``y = mu + e`` with ``e ~ N(0, 1 / c)``, and the
likelihood factorises as ``N(z; a mu, R) = N(y; mu, 1/c) g(z)`` where ``g`` does not
depend on ``mu`` — so not on the regime either. An IMM (or Kalman) filter fed ``y`` with
noise variance ``1/c`` has the same posterior and the same mode probabilities as the
joint ``m``-feature update, and its log-likelihood differs by ``sum_t log g(z_t)``:

    log g(z) = log N(z; 0, R) - log N(y; 0, 1/c)      (both at mu = 0).

Per step the reduction uses only the observed features (their sub-block of ``R``), so
``c_t`` and ``log g_t`` vary with the missing-data pattern; with nothing observed (or
only zero loadings), ``y_t`` is NaN and the step is a pure prediction. The ``independent``
update (sequential scalar updates ignoring the correlations) is the joint update with
``diag(R)``, so it reduces the same way with ``R`` replaced by its diagonal.

The ``m x m`` algebra is done once for all steps before the filter's scan (vectorised over
``T``), so the scan itself runs the scalar cycle: for 4 features about as fast as one.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from .._core import linalg as la
from .._core.types import Array, Float
from .._models.observation import Observation, mask_missing

_LOG_2PI = math.log(2.0 * math.pi)


def reduce_to_scalar(
    observation: Observation, zs: Float[Array, "T m"]
) -> tuple[Float[Array, " T"], Float[Array, " T"], Float[Array, " T"]]:
    """``(y, r, log_g)`` per step: the scalar observation, its noise variance ``1/c`` and
    the log-likelihood term the reduction leaves out (0 at steps with nothing usable)."""
    dtype = zs.dtype
    a, R = observation.loadings.astype(dtype), observation.cov.astype(dtype)
    return reduce_features(a, R, observation.update, zs)


def reduce_features(
    a: Float[Array, " m"], R: Float[Array, "m m"], update: str, zs: Float[Array, "T m"]
) -> tuple[Float[Array, " T"], Float[Array, " T"], Float[Array, " T"]]:
    """``reduce_to_scalar`` for features ``z = a mu + eps``, ``eps ~ N(0, R)`` and an update
    mode (``"independent"``: ``R`` replaced by its diagonal), in ``zs``'s dtype."""
    if update == "independent":
        R = jnp.diag(jnp.diagonal(R))
    # Unobserved rows/columns become the identity (as in the joint update): the observed
    # sub-block's determinant and inverse, with zero weight on the unobserved features.
    observed, z0, a0, Rm = mask_missing(zs, a[:, None], R)  # [T, m], [T, m], [T, m, 1], ...
    a0 = a0[..., 0]
    L = la.cholesky(Rm)
    wz = la.solve_lower(L, z0)  # L^{-1} z
    wa = la.solve_lower(L, a0)  # L^{-1} a
    c = jnp.sum(wa * wa, axis=-1)  # a^T R^{-1} a
    bz = jnp.sum(wa * wz, axis=-1)  # a^T R^{-1} z
    usable = c > 0
    safe_c = jnp.where(usable, c, 1.0)
    y = jnp.where(usable, bz / safe_c, jnp.nan)
    r = 1.0 / safe_c
    k = jnp.sum(observed, axis=-1)
    # log g = log N(z; 0, R_obs) - log N(y; 0, 1/c)
    #       = -1/2 [(k - 1) log 2 pi + log(c det R_obs) + z'R^-1 z - bz^2 / c],
    # with det R_obs = prod(diag L)^2: one log per step instead of m + 1 (a float64 log
    # is a scalar libm call on CPU, the costliest operation here).
    diag = jnp.diagonal(L, axis1=-2, axis2=-1)
    det = jnp.prod(diag * diag, axis=-1)
    quad = jnp.sum(wz * wz, axis=-1)
    log_g = -0.5 * ((k - 1) * _LOG_2PI + jnp.log(det * safe_c) + quad - bz * bz / safe_c)
    # With observed features but no usable loading, the step's whole likelihood is g.
    log_full = -0.5 * (k * _LOG_2PI + jnp.log(det) + quad)
    log_g = jnp.where(usable, log_g, jnp.where(k > 0, log_full, 0.0))
    return y, r, log_g
