"""A per-cycle transition matrix read as continuous-time rates (the matrix logarithm).

``dj.IMMModel(..., rates=Q)`` switches regimes as a continuous-time Markov chain with
generator ``Q`` (rates per second): a step of ``dt`` seconds uses ``Pi = expm(Q dt)``. A
per-cycle ``Pi`` (the specification's, ``dj.SEED_TRANSITION``) says what happens over one
cycle of ``cycle_seconds``; if it is the chain sampled every ``cycle_seconds``, its rates
are ``Q = logm(Pi) / cycle_seconds``. Not every stochastic matrix is such a sample (the
"embedding problem", Kingman 1962): then the principal logarithm is complex or has a
negative off-diagonal entry, and ``rates_from_transition`` says so.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from .._core import validate as v

__all__ = ["rates_from_transition"]

#: Off-diagonal rates of ``logm(Pi) / cycle`` above ``-NEGATIVE_TOL * max|Q|`` count as 0.
NEGATIVE_TOL = 1e-10


def rates_from_transition(transition, cycle_seconds) -> np.ndarray:
    """The generator ``Q`` (rates per second) of a chain whose per-cycle matrix is ``Pi``.

    ``Q = logm(Pi) / cycle_seconds`` (the principal matrix logarithm, ``scipy.linalg.logm``),
    so that ``expm(Q cycle_seconds) = Pi``: the continuous-time chain that, sampled every
    ``cycle_seconds``, switches as ``Pi`` does. Pass it to ``dj.IMMModel(..., rates=Q)``;
    at any other step length ``dt`` the model then switches with ``expm(Q dt)`` instead of
    applying ``Pi`` once per step whatever its length. Off-diagonal rates that rounding
    leaves slightly below 0 (within ``1e-10 x max|Q|``) are set to 0, and each diagonal
    entry is minus the correctly rounded sum of its row's other entries (rows sum to 0).

    The logarithm is computed by LAPACK (a Schur decomposition): the result agrees across
    machines to rounding, not bit for bit (README, "Reproducibility"); write the model
    with ``dj.save_config`` and ship the file.

    Arguments:
        transition: ``Pi`` ``[M, M]``, row-stochastic (finite, >= 0, rows summing to 1
            within 1e-9), ``Pi[i, j] = P(next = j | now = i)`` per cycle.
        cycle_seconds: the length of one cycle in seconds (> 0), e.g. 0.1 for 10 Hz, or 1.0
            to read ``Pi`` as the chain over one second.

    Returns:
        ``Q`` ``[M, M]``, NumPy float64: off-diagonals ``>= 0``, rows summing to 0.

    Raises:
        ValueError: when ``Pi`` has no valid generator: an eigenvalue that is 0 or a
            negative real number (no real logarithm: e.g. a chain that alternates
            regimes), a complex principal logarithm, or negative off-diagonal rates (the
            chain cannot be a continuous-time chain sampled every ``cycle_seconds``;
            e.g. a cyclic ``0 -> 1 -> 2 -> 0`` chain with no direct way back).

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> Q = dj.rates_from_transition([[0.9, 0.1], [0.2, 0.8]], cycle_seconds=0.1)
        >>> np.round(Q, 4).tolist()  # per second
        [[-1.1889, 1.1889], [2.3778, -2.3778]]
        >>> imm = dj.IMMModel((dj.OU(0.1, 0.3), dj.OU(0.01, 2.0)), dj.Observation.scalar(1.0),
        ...                   rates=Q)
        >>> bool(np.allclose(imm.transition_matrix(0.1), [[0.9, 0.1], [0.2, 0.8]], atol=1e-6))
        True
    """
    if isinstance(transition, str | bytes) or transition is None:
        raise v.ArgumentTypeError(f"`transition` must be a matrix of numbers, got {transition!r}.")
    try:
        P = np.asarray(transition, dtype=np.float64)
    except (TypeError, ValueError):
        raise v.ArgumentTypeError(
            f"`transition` must be a matrix of numbers, got {type(transition).__name__}."
        ) from None
    cycle = v.positive_float("cycle_seconds", cycle_seconds, "a number of seconds > 0")
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] == 0:
        raise ValueError(f"`transition` must be a square matrix [M, M], got shape {P.shape}.")
    M = P.shape[0]
    sums = [math.fsum(r) for r in P.tolist()]
    if not (np.all(np.isfinite(P)) and np.all(P >= 0) and all(abs(s - 1) <= 1e-9 for s in sums)):
        raise ValueError(
            f"`transition` must be row-stochastic: finite, >= 0, each row summing to 1 within "
            f"1e-09; got transition={P.tolist()} with row sums {sums}."
        )
    eig = np.linalg.eigvals(P)
    bad = [complex(x) for x in eig if abs(x) <= 1e-12 or (abs(x.imag) <= 1e-12 and x.real < 0)]
    if bad:
        shown = ", ".join(f"{0.0 if abs(z) <= 1e-12 else z.real:.6g}" for z in bad)
        raise ValueError(
            f"`transition` has no valid generator: it has the eigenvalue(s) {shown} (0 or "
            "negative), so no real matrix logarithm exists and no continuous-time chain "
            f"sampled every {cycle:g} s switches as it does (e.g. a chain that alternates "
            f"regimes every cycle); got transition={P.tolist()}. Use it per cycle "
            "(`transition=`), or choose rates directly."
        )
    L = scipy.linalg.logm(P)
    if np.iscomplexobj(L):
        if np.max(np.abs(L.imag)) > 1e-9 * max(1.0, float(np.max(np.abs(L.real)))):
            raise ValueError(
                f"`transition` has no valid generator: its principal matrix logarithm is "
                f"complex (Pi has complex eigenvalues {np.round(eig, 6).tolist()} of a "
                f"rotation no continuous-time chain makes); got transition={P.tolist()}. "
                "Use it per cycle (`transition=`), or choose rates directly."
            )
        L = L.real
    Q = np.asarray(L, dtype=np.float64) / cycle
    off = ~np.eye(M, dtype=bool)
    floor = -NEGATIVE_TOL * max(float(np.max(np.abs(Q))), 1e-300)
    negative = [(i, j) for i in range(M) for j in range(M) if off[i, j] and Q[i, j] < floor]
    if negative:
        values = ", ".join(f"Q[{i},{j}] = {Q[i, j]:.6g}" for i, j in negative)
        raise ValueError(
            f"`transition` has no valid generator: logm(Pi) / cycle_seconds has negative "
            f"off-diagonal rates ({values} per second), so Pi is not a continuous-time chain "
            f"sampled every {cycle:g} s (the embedding problem); got transition={P.tolist()}. "
            "Use it per cycle (`transition=`), or choose rates directly."
        )
    Q = np.where(off, np.maximum(Q, 0.0), 0.0)
    for i in range(M):
        Q[i, i] = -math.fsum(Q[i, j] for j in range(M) if j != i)
    return Q
