"""Robust observation updates: heavy-tailed noise for bad ticks (``Observation(robust=...)``).

A Gaussian update moves the drift by ``K v`` for an innovation ``v`` of any size, and an
IMM's regime odds by ``exp(v^2 / 2 (1 / S_i - 1 / S_j))``: one bad tick (a 1000 bps/s
feature value) drags the drift to tens of bps/s and sets P(Crisis) to 1. A robust option
bounds both. What every filter cycle computes with ``robust`` set (the Kalman filter and
the IMM, both IMM cycles, the m-feature reduction, batch and streaming):

1. the standardised innovation ``e`` along the loadings: with the prior predictive
   innovation ``v = z - H m`` and covariance ``S = H P H^T + R`` (observed components),
   ``e^2 = (h^T S^{-1} v)^2 / (h^T S^{-1} h)``, ``h = H[:, 0]`` (the loadings; features
   observe ``mu`` only). For one feature ``e = v / sqrt(S)``; for ``m`` features it is
   the innovation of the exact reduction to one observation (``_filters/reduction.py``),
   so the reduced and the vector updates agree: a per-step gate on all the features
   together, computed per regime from that regime's prediction;
2. the update: the Kalman update with ``R / w(e)``, ``0 < w <= 1`` (the noise inflated,
   so the gain shrinks when ``|e|`` is large);
3. the likelihood: the Gaussian predictive density of ``z`` with the density of ``e``
   replaced by the option's standardised density ``f``:
   ``log p(z | past) = log N(z; H m, S) + log f(e) - log phi(e)``. The rest of ``z`` (its
   components orthogonal to ``e`` under ``S``) keeps its Gaussian density, so this is a
   proper density of ``z`` (it integrates to 1), smooth in the parameters: the
   filter's log-likelihood stays an objective for ``dj.fit``, and the option's
   parameter (a field with a declared constraint) is trained like any other.

With nothing observed the step is a pure prediction adding exactly 0, as without the
option. ``update="independent"`` with a robust option is the joint update with
``diag(R)`` (the Gaussian identity; the reduction does the same).

The two options differ in their tails, which matters for the regime probabilities:

- ``dj.Huber(threshold=c)``: ``w = min(1, c / |e|)``, ``f`` Huber's density
  ``exp(-rho(e)) / Z(c)`` (``rho = e^2 / 2`` for ``|e| <= c``, ``c |e| - c^2 / 2`` beyond,
  ``Z(c) = sqrt(2 pi) erf(c / sqrt 2) + 2 exp(-c^2 / 2) / c``). The drift's move is
  bounded (``|K_w v| <= c sqrt(S) |K|``); the log-density is linear in ``|e|`` beyond
  ``c``, so regime odds still move by ``exp(c |v| (1 / sqrt(S_i) - 1 / sqrt(S_j)))``,
  which for a big enough outlier is still a certainty for the widest regime.
- ``dj.StudentT(df=nu)``: ``w = min(1, (nu + 1) / (nu + e^2))`` (the t's
  iteratively-reweighted weight, capped at 1 so an observation is never trusted more than
  under the Gaussian), ``f`` the Student-t density with ``nu`` degrees of freedom (scale
  1). Its tail is ``|e|^-(nu + 1)``: an outlier of any size moves the drift by
  ``O(1 / |v|)`` (redescending) and the odds of regime ``j`` against ``i`` by at most
  ``(S_j / S_i)^(nu / 2)``. The option for an IMM that must not call a bad tick a crisis.

A persistent move (a cascade) is not an outlier: its innovations stay large step after
step, the regime that predicts them (wider ``S``) wins over several steps, and the
filter follows it (``tests/test_robust.py`` measures the detection latency).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core import validate as v
from .._core.types import Array, Float, Scalar
from .constraints import CONSTRAINT, Positive

__all__ = ["AbstractRobust", "Huber", "StudentT", "ROBUST_KINDS", "robust_terms"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


class AbstractRobust(eqx.Module):
    """A robust observation update: a weight ``w(e)`` and a log-density ratio.

    Concrete options (``dj.Huber``, ``dj.StudentT``) are final. Each defines, from the
    squared standardised innovation ``e^2`` (``_models/robust.py`` says how it is formed),
    ``weight(e2)`` (in ``(0, 1]``: the update uses ``R / w``) and ``log_ratio(e2)``
    (``log f(e) - log phi(e)``: what the step's log-likelihood adds to the Gaussian
    one). Both are written in ``e^2`` so they are smooth at ``e = 0``.
    """

    kind: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def weight(self, e2: Array) -> Array:
        """``w(e)`` in ``(0, 1]``."""

    @abc.abstractmethod
    def log_ratio(self, e2: Array) -> Array:
        """``log f(e) - log phi(e)``, ``phi`` the standard normal density."""

    @property
    def dtype(self):
        return jax.tree.leaves(self)[0].dtype


class Huber(AbstractRobust):
    """Huber-weighted noise: a bounded update beyond ``threshold`` standard deviations.

    ``w(e) = min(1, c / |e|)`` and Huber's density (Gaussian inside ``|e| <= c``, Laplace
    tails), ``c = threshold``; see ``_models/robust.py`` for what the filter computes.
    It bounds the drift's move; it does not keep an IMM's regime odds from a big outlier
    (use ``dj.StudentT`` for that). A huge threshold is the Gaussian update.

    Arguments:
        threshold: ``c > 0``, in standard deviations of the innovation (1.345 gives 95%
            efficiency under Gaussian noise; 2 - 3 is common for tick data).

    Example:
        >>> import drift_jax as dj, jax.numpy as jnp
        >>> obs = dj.Observation.scalar(4.0, robust=dj.Huber(threshold=3.0))
        >>> float(obs.robust.threshold), obs.robust.weight(jnp.array([4.0, 36.0])).tolist()
        (3.0, [1.0, 0.5])
    """

    threshold: Scalar = eqx.field(metadata={CONSTRAINT: Positive()})
    kind: ClassVar[str] = "huber"

    def __init__(self, threshold=1.345, *, dtype=None):
        self.threshold = v.scalar("threshold", v.positive("threshold", threshold, dtype))

    def weight(self, e2):
        c = self.threshold.astype(jnp.result_type(e2))
        outer = e2 > c * c
        abs_e = jnp.sqrt(jnp.where(outer, e2, c * c))  # no sqrt(0): a finite gradient at 0
        return jnp.where(outer, c / abs_e, 1.0)

    def log_ratio(self, e2):
        c = self.threshold.astype(jnp.result_type(e2))
        outer = e2 > c * c
        abs_e = jnp.sqrt(jnp.where(outer, e2, c * c))
        # -rho(e) + e^2 / 2: 0 inside, (|e| - c)^2 / 2 beyond (the Laplace tail's deficit).
        tail = jnp.where(outer, 0.5 * (abs_e - c) ** 2, 0.0)
        # log(Z(c) / sqrt(2 pi)) = log1p(2 phi(c) / c - erfc(c / sqrt 2)): exactly 0 for a
        # huge c (the Gaussian), accurate for a large one.
        log_z = jnp.log1p(
            2.0 * jnp.exp(-0.5 * c * c) / (c * _SQRT_2PI)
            - jax.scipy.special.erfc(c / math.sqrt(2.0))
        )
        return tail - log_z


class StudentT(AbstractRobust):
    """Student-t noise: a redescending update and bounded regime odds for outliers.

    ``w(e) = min(1, (nu + 1) / (nu + e^2))`` and the t density with ``nu = df`` degrees of
    freedom (scale 1); see ``_models/robust.py`` for what the filter computes. An outlier
    of any size moves the drift by ``O(1 / |v|)`` and an IMM's regime odds by at most
    ``(S_j / S_i)^(df / 2)``.

    Arguments:
        df: degrees of freedom ``nu > 0`` (small: heavier tails; 3 - 5 is common; large:
            close to the Gaussian).

    Example:
        >>> import drift_jax as dj, jax.numpy as jnp
        >>> obs = dj.Observation.scalar(4.0, robust=dj.StudentT(df=4.0))
        >>> [round(float(w), 4) for w in obs.robust.weight(jnp.array([1.0, 16.0]))]
        [1.0, 0.25]
    """

    df: Scalar = eqx.field(metadata={CONSTRAINT: Positive()})
    kind: ClassVar[str] = "student_t"

    def __init__(self, df=4.0, *, dtype=None):
        self.df = v.scalar("df", v.positive("df", df, dtype))

    def weight(self, e2):
        nu = self.df.astype(jnp.result_type(e2))
        return jnp.minimum(1.0, (nu + 1.0) / (nu + e2))

    def log_ratio(self, e2):
        nu = self.df.astype(jnp.result_type(e2))
        gammaln = jax.scipy.special.gammaln
        log_f = (
            gammaln(0.5 * (nu + 1.0))
            - gammaln(0.5 * nu)
            - 0.5 * jnp.log(nu * math.pi)
            - 0.5 * (nu + 1.0) * jnp.log1p(e2 / nu)
        )
        return log_f + _HALF_LOG_2PI + 0.5 * e2


#: The robust options by the ``kind`` a config file names (``[observation.robust]``).
ROBUST_KINDS = {cls.kind: cls for cls in (Huber, StudentT)}


def robust_terms(
    robust: AbstractRobust, e2: Float[Array, "..."], usable
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """``(w, log f(e) - log phi(e))`` where ``usable`` (something observed with a nonzero
    loading), ``(1, 0)`` elsewhere (a pure prediction stays exact)."""
    e2 = jnp.where(usable, e2, 0.0)
    return (
        jnp.where(usable, robust.weight(e2), 1.0),
        jnp.where(usable, robust.log_ratio(e2), 0.0),
    )


def check_robust(name: str, robust) -> AbstractRobust | None:
    """``robust`` if it is ``None`` or a robust option, else a ``TypeError`` naming it."""
    if robust is None:
        return None
    return v.instance(name, robust, AbstractRobust, "None, dj.Huber(...) or dj.StudentT(...)")
