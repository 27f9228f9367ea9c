"""A small built-in synthetic drift series: a quiet OU drift hit by a liquidation cascade.

The true drift is a quiet Ornstein-Uhlenbeck path plus a deterministic cascade profile: at
``cascade_start`` the drift falls linearly to ``cascade_level`` (about -50 bps/s) within
``fall_time`` seconds, stays there for ``hold_time`` seconds, then recovers linearly to 0
over ``recovery_time`` seconds. ``m`` features observe it, ``z_t = alpha * mu_t + eps_t``
with ``eps_t ~ N(0, R)`` and a full (cross-correlated) ``R``.

This is NumPy only and seeded, for the demo, the notebooks and tests. A full simulator of
regime switches will live elsewhere; this stays small on purpose.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._types import ArrayLike, Float, ScalarLike

__all__ = [
    "DEFAULT_FEATURE_NAMES",
    "CascadeSeries",
    "cascade_profile",
    "default_feature_cov",
    "default_loadings",
    "liquidation_cascade",
]

# The specification's four hot-tier features: BIM and dBIM are strongly correlated, BPG
# moderately, the sweep signal not at all.
DEFAULT_FEATURE_NAMES = ("bim", "dbim", "bpg", "sweep")
_DEFAULT_LOADINGS = (1.0, 0.8, 0.5, 1.2)
_DEFAULT_NOISE_STD = (8.0, 7.0, 5.0, 12.0)  # bps/s
_DEFAULT_CORR = (
    (1.0, 0.7, 0.6, 0.0),
    (0.7, 1.0, 0.65, 0.0),
    (0.6, 0.65, 1.0, 0.0),
    (0.0, 0.0, 0.0, 1.0),
)


class CascadeSeries(NamedTuple):
    """A synthetic series; step ``k`` covers ``(t[k] - dt[k], t[k]]``.

    Attributes:
        t: ``[T]`` time in seconds at the end of each step (``t[k] = (k + 1) dt``),
            i.e. the time of observation ``features[k]``; the filter's prior sits at 0.
        dt: ``[T]`` step lengths in seconds (pass it to ``dj.filter`` as ``dt``).
        drift: ``[T]`` true drift ``mu`` at ``t`` (bps/s).
        features: ``[T, m]`` observed features ``alpha * drift + eps``.
        loadings: ``[m]`` the ``alpha`` used.
        cov: ``[m, m]`` the noise covariance ``R`` used.
        cascade_start: time the fall begins (s).
        cascade_level: the level the cascade falls to (bps/s, before the quiet OU part).
    """

    t: np.ndarray
    dt: np.ndarray
    drift: np.ndarray
    features: np.ndarray
    loadings: np.ndarray
    cov: np.ndarray
    cascade_start: float
    cascade_level: float


def default_loadings() -> np.ndarray:
    """Loadings ``alpha`` of the four default features (``DEFAULT_FEATURE_NAMES``)."""
    return np.array(_DEFAULT_LOADINGS)


def default_feature_cov() -> np.ndarray:
    """Noise covariance of the four default features.

    Standard deviations 8, 7, 5, 12 bps/s; correlations 0.7 (bim, dbim), 0.6 (bim, bpg),
    0.65 (dbim, bpg); the sweep feature is uncorrelated with the others.
    """
    corr = np.array(_DEFAULT_CORR)
    std = np.array(_DEFAULT_NOISE_STD)
    return corr * np.outer(std, std)


def cascade_profile(
    t: Float[ArrayLike, "..."],
    cascade_start: ScalarLike,
    cascade_level: ScalarLike,
    fall_time: ScalarLike,
    hold_time: ScalarLike,
    recovery_time: ScalarLike,
) -> np.ndarray:
    """The deterministic part of the drift at times ``t`` (bps/s); see ``liquidation_cascade``."""
    t = np.asarray(t, dtype=float)
    s = t - cascade_start
    fall = np.clip(s / fall_time, 0.0, 1.0) if fall_time > 0 else (s >= 0).astype(float)
    r = s - fall_time - hold_time
    recover = np.clip(r / recovery_time, 0.0, 1.0) if recovery_time > 0 else (r >= 0) * 1.0
    return cascade_level * fall * (1.0 - recover) + 0.0  # + 0.0: no -0.0 before the fall


def liquidation_cascade(
    num_steps: int = 2000,
    dt: ScalarLike = 0.1,
    *,
    seed: int = 0,
    cascade_start: ScalarLike = 60.0,
    cascade_level: ScalarLike = -50.0,
    fall_time: ScalarLike = 2.0,
    hold_time: ScalarLike = 40.0,
    recovery_time: ScalarLike = 30.0,
    quiet_theta: ScalarLike = 0.1,
    quiet_sigma: ScalarLike = 0.3,
    loadings=None,
    cov=None,
) -> CascadeSeries:
    """Simulate a quiet OU drift hit by a liquidation cascade, seen through ``m`` features.

    ``drift(t) = x(t) + c(t)``: ``x`` is a quiet OU path ``dx = -quiet_theta x dt +
    quiet_sigma dW`` (simulated exactly, started from its stationary law), and ``c`` is 0
    until ``cascade_start``, falls linearly to ``cascade_level`` over ``fall_time``, holds
    for ``hold_time``, then returns linearly to 0 over ``recovery_time``. The features are
    ``features[k] = loadings * drift[k] + eps_k`` with ``eps_k ~ N(0, cov)`` independent
    over ``k``.

    Arguments:
        num_steps: number of steps ``T`` (``>= 1``).
        dt: step length in seconds (``> 0``); the series spans ``num_steps * dt`` seconds.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same series.
        cascade_start: time the fall begins (s, ``>= 0``). A cascade that starts after the
            end of the series is allowed (the series is then quiet).
        cascade_level: drift reached by the fall (bps/s, finite); default -50.
        fall_time: seconds from the start of the fall to ``cascade_level`` (``>= 0``;
            0 is a jump). Default 2.
        hold_time: seconds the drift stays at ``cascade_level`` (``>= 0``).
        recovery_time: seconds of the linear recovery back to 0 (``>= 0``).
        quiet_theta: mean reversion of the quiet drift (1/s, ``>= 0``; 0 is a random walk
            started at 0). Default 0.1 (the specification's Quiet regime).
        quiet_sigma: diffusion of the quiet drift (bps/s per sqrt(s), ``>= 0``). Default 0.3.
        loadings: ``[m]`` feature loadings ``alpha``; default ``default_loadings()``.
        cov: ``[m, m]`` symmetric positive definite noise covariance; default
            ``default_feature_cov()`` (needs ``m = 4``; pass ``cov`` with other loadings).

    Returns:
        A ``CascadeSeries`` (``t``, ``dt``, ``drift``, ``features``, ``loadings``, ``cov``,
        ``cascade_start``, ``cascade_level``) of NumPy float64 arrays.

    Example:
        >>> from drift_jax._synthetic import liquidation_cascade
        >>> s = liquidation_cascade(num_steps=1000, dt=0.1, seed=1)
        >>> s.features.shape, s.cascade_level, -55 < float(s.drift[700]) < -45
        ((1000, 4), -50.0, True)
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be an int >= 1, got num_steps={num_steps}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"`seed` must be an int (the numpy default_rng seed), got {seed!r}.")
    _positive("dt", dt)
    _finite("cascade_level", cascade_level)
    for name, value in (
        ("cascade_start", cascade_start),
        ("fall_time", fall_time),
        ("hold_time", hold_time),
        ("recovery_time", recovery_time),
        ("quiet_theta", quiet_theta),
        ("quiet_sigma", quiet_sigma),
    ):
        _nonnegative(name, value)
    alpha, R = _check_observation(loadings, cov)

    rng = np.random.default_rng(seed)
    dts = np.full(num_steps, float(dt))
    t = float(dt) * np.arange(1, num_steps + 1)
    quiet = _ou_path(rng, num_steps, float(dt), float(quiet_theta), float(quiet_sigma))
    drift = quiet + cascade_profile(
        t, cascade_start, cascade_level, fall_time, hold_time, recovery_time
    )
    noise = rng.standard_normal((num_steps, alpha.size)) @ np.linalg.cholesky(R).T
    features = drift[:, None] * alpha[None, :] + noise
    return CascadeSeries(
        t, dts, drift, features, alpha, R, float(cascade_start), float(cascade_level)
    )


def _ou_path(rng, num_steps: int, dt: float, theta: float, sigma: float) -> np.ndarray:
    """Exact OU path at times ``dt, 2 dt, ...``, started from its stationary law (or 0)."""
    a = math.exp(-theta * dt)
    if theta > 0:
        step_var = sigma**2 * -math.expm1(-2.0 * theta * dt) / (2.0 * theta)
        x = rng.normal(0.0, sigma / math.sqrt(2.0 * theta))
    else:
        step_var = sigma**2 * dt
        x = 0.0
    eps = rng.standard_normal(num_steps) * math.sqrt(step_var)
    out = np.empty(num_steps)
    for k in range(num_steps):
        x = a * x + eps[k]
        out[k] = x
    return out


def _check_observation(loadings, cov) -> tuple[np.ndarray, np.ndarray]:
    alpha = default_loadings() if loadings is None else np.asarray(loadings, dtype=float)
    if alpha.ndim != 1 or alpha.size == 0:
        raise ValueError(
            f"`loadings` must be a non-empty vector of shape [m], got shape {alpha.shape}."
        )
    if not np.all(np.isfinite(alpha)):
        raise ValueError(f"`loadings` must be finite, got loadings={alpha.tolist()}.")
    m = alpha.size
    if cov is None:
        if m != 4:
            raise ValueError(
                f"the default `cov` is for the 4 default features; `loadings` has m={m}, "
                f"so pass `cov` of shape [{m}, {m}] too."
            )
        R = default_feature_cov()
    else:
        R = np.asarray(cov, dtype=float)
    if R.shape != (m, m):
        raise ValueError(
            f"`cov` must have shape [m, m] = [{m}, {m}] to match `loadings`, got {R.shape}."
        )
    if not np.all(np.isfinite(R)) or not np.allclose(R, R.T, rtol=0.0, atol=1e-12):
        raise ValueError(f"`cov` must be finite and symmetric, got cov={R.tolist()}.")
    eig = np.linalg.eigvalsh(R)
    if eig.min() <= 0:
        raise ValueError(
            f"`cov` must be positive definite (all eigenvalues > 0), got eigenvalues "
            f"{eig.tolist()}."
        )
    return alpha, R


def _finite(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.") from None
    if not math.isfinite(x):
        raise ValueError(f"`{name}` must be a finite number, got {name}={x}.")
    return x


def _positive(name: str, value) -> float:
    x = _finite(name, value)
    if x <= 0:
        raise ValueError(f"`{name}` must be finite and > 0, got {name}={x}.")
    return x


def _nonnegative(name: str, value) -> float:
    x = _finite(name, value)
    if x < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {name}={x}.")
    return x
