"""The default feature set and the liquidation cascade's closed-form drift profile.

Public as ``dj.scenarios.DEFAULT_FEATURE_NAMES``, ``default_loadings``,
``default_feature_cov``, ``default_observation`` and ``cascade_profile``: the four
hot-tier features every scenario, example and benchmark observes the drift through
(``z_t = alpha * mu_t + eps_t``, ``eps_t ~ N(0, R)`` with a full, cross-correlated ``R``),
and the NumPy form of ``dj.scenarios.liquidation_cascade``'s script.
"""

from __future__ import annotations

import numpy as np

from .._core.types import ArrayLike, Float, ScalarLike
from .._models.observation import Observation

__all__ = [
    "DEFAULT_FEATURE_NAMES",
    "cascade_profile",
    "default_feature_cov",
    "default_loadings",
    "default_observation",
]

#: Names of the specification's four hot-tier features, in the order of
#: ``default_loadings()`` and ``default_feature_cov()``: BIM and dBIM are strongly
#: correlated, BPG moderately, the sweep signal not at all.
DEFAULT_FEATURE_NAMES = ("bim", "dbim", "bpg", "sweep")
_DEFAULT_LOADINGS = (1.0, 0.8, 0.5, 1.2)
_DEFAULT_NOISE_STD = (8.0, 7.0, 5.0, 12.0)  # bps/s
_DEFAULT_CORR = (
    (1.0, 0.7, 0.6, 0.0),
    (0.7, 1.0, 0.65, 0.0),
    (0.6, 0.65, 1.0, 0.0),
    (0.0, 0.0, 0.0, 1.0),
)


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


def default_observation(update: str = "joint", dtype=None) -> Observation:
    """The four default features as a ``dj.Observation`` (what every scenario observes).

    ``Observation(default_loadings(), default_feature_cov(), update)``.

    Arguments:
        update: ``"joint"`` (one vector update with the full ``R``, default) or
            ``"independent"`` (four scalar updates that ignore the correlations).
        dtype: float dtype of the loadings and ``R`` (default: JAX's default float).

    Example:
        >>> import drift_jax as dj
        >>> obs = dj.scenarios.default_observation()
        >>> obs.num_features, dj.scenarios.DEFAULT_FEATURE_NAMES[0]
        (4, 'bim')
    """
    import jax.numpy as jnp

    alpha, R = default_loadings(), default_feature_cov()
    if dtype is not None:
        alpha, R = jnp.asarray(alpha, dtype), jnp.asarray(R, dtype)
    return Observation(alpha, R, update=update)


def cascade_profile(
    t: Float[ArrayLike, "..."],
    cascade_start: ScalarLike,
    cascade_level: ScalarLike,
    fall_time: ScalarLike,
    hold_time: ScalarLike,
    recovery_time: ScalarLike,
) -> np.ndarray:
    """The liquidation cascade's drift script at times ``t`` (bps/s), NumPy.

    0 until ``cascade_start``, a linear fall to ``cascade_level`` over ``fall_time`` (0: a
    jump), ``cascade_level`` for ``hold_time``, a linear recovery to 0 over
    ``recovery_time`` (0: a jump), then 0: ``dj.scenarios.liquidation_cascade``'s drift
    without its background (its ``start``, ``level``, ... are these arguments). Add it to
    a scenario's drift (and ``loadings * profile`` to its features) to compose moves.

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> t = np.array([59.0, 61.0, 80.0, 200.0])
        >>> dj.scenarios.cascade_profile(t, 60.0, -50.0, 2.0, 40.0, 30.0)
        array([  0., -25., -50.,   0.])
    """
    t = np.asarray(t, dtype=float)
    s = t - cascade_start
    fall = np.clip(s / fall_time, 0.0, 1.0) if fall_time > 0 else (s >= 0).astype(float)
    r = s - fall_time - hold_time
    recover = np.clip(r / recovery_time, 0.0, 1.0) if recovery_time > 0 else (r >= 0) * 1.0
    return cascade_level * fall * (1.0 - recover) + 0.0  # + 0.0: no -0.0 before the fall
