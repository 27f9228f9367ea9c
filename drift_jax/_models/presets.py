"""The specification's three regimes (Quiet / Trending / Crisis) and their transition matrix.

Public as ``dj.REGIME_NAMES``, ``dj.SEED_REGIMES``, ``dj.SEED_TRANSITION`` (read-only: the
dict is a ``MappingProxyType``, the array has ``writeable=False``) and ``dj.seed_imm``,
which builds the IMM from them.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from .._filters.imm import IMMModel, stationary_distribution
from .dynamics import OU, OUAccel
from .observation import Observation

#: The seed regimes' names, in the order of ``dj.seed_imm``'s members and of
#: ``SEED_TRANSITION``'s rows (also the labels of ``dj.scenarios``' true regimes).
REGIME_NAMES = ("Quiet", "Trending", "Crisis")

#: ``{name: (theta [1/s], sigma [bps/s per sqrt(s)])}`` of the seed regimes' OU drifts:
#: half-lives of 7 s, 35 s and 140 s (read-only).
SEED_REGIMES = MappingProxyType(
    {"Quiet": (0.10, 0.3), "Trending": (0.02, 1.0), "Crisis": (0.005, 5.0)}
)

#: The seed's per-cycle ``[3, 3]`` transition matrix, ``Pi[i, j] = P(next = j | now = i)``
#: in ``REGIME_NAMES`` order (float64, read-only; ``.copy()`` it to edit).
SEED_TRANSITION = np.array(
    [
        [0.95, 0.04, 0.01],
        [0.05, 0.90, 0.05],
        [0.02, 0.08, 0.90],
    ]
)
SEED_TRANSITION.setflags(write=False)


def seed_imm(
    observation: Observation | None = None,
    *,
    discretisation: str = "euler",
    extended: bool = False,
    theta_accel: float = 0.5,
    sigma_accel: float = 0.5,
    init_probs=None,
    init_mean=0.0,
    init_cov=1.0,
    dtype=None,
) -> IMMModel:
    """The specification's 3-regime IMM preset.

    Quiet (theta 0.10, sigma 0.3), Trending (theta 0.02, sigma 1.0), Crisis (theta 0.005,
    sigma 5.0) with the transition matrix ``SEED_TRANSITION``: the numbers of
    ``dj.SEED_REGIMES`` and ``dj.SEED_TRANSITION``, regimes named ``dj.REGIME_NAMES``.

    Arguments:
        observation: the feature model (default: one feature, ``z = mu + eps``,
            ``eps ~ N(0, 1)``).
        discretisation: ``"euler"`` (the production filter's) or ``"exact"``.
        extended: members with state ``[mu, mu_dot]`` (``dj.OUAccel`` with
            ``theta_accel``, ``sigma_accel``) instead of ``[mu]``.
        init_probs: regime probabilities before the first cycle (default: the
            stationary distribution of the transition matrix, 0.435 / 0.348 / 0.217).
        init_mean, init_cov: the shared state prior.
        dtype: parameter dtype (default: JAX's default float).

    Example:
        >>> import drift_jax as dj
        >>> imm = dj.seed_imm(dj.Observation.scalar(4.0))
        >>> imm.regime_names
        ('Quiet', 'Trending', 'Crisis')
    """
    import jax.numpy as jnp

    dtype = jnp.result_type(float) if dtype is None else dtype
    observation = Observation.scalar(1.0) if observation is None else observation
    members = []
    for name in REGIME_NAMES:
        theta, sigma = (np.asarray(x, dtype=dtype) for x in SEED_REGIMES[name])
        if extended:
            members.append(
                OUAccel(
                    theta,
                    sigma,
                    np.asarray(theta_accel, dtype),
                    np.asarray(sigma_accel, dtype),
                    discretisation,
                )
            )
        else:
            members.append(OU(theta, sigma, discretisation))
    if init_probs is None:
        init_probs = stationary_distribution(SEED_TRANSITION)
    return IMMModel(
        tuple(members),
        observation,
        jnp.asarray(SEED_TRANSITION, dtype),
        jnp.asarray(init_probs, dtype),
        init_mean,
        init_cov,
        regime_names=REGIME_NAMES,
        crisis_regime="Crisis",
    )
