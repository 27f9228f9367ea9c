"""The feature model ``z = H x + eps``, ``eps ~ N(0, R)``, and the Kalman measurement update.

``m`` features load on the drift ``mu`` with loadings ``alpha``; for the extended state
``[mu, mu_dot]`` the observation matrix is ``H = [alpha, 0]`` (features observe ``mu``, not
``mu_dot``). ``R`` is a full covariance held by its Cholesky factor. NaN in ``z`` means "not
observed", component by component.

The factor of a concrete ``R`` and ``Observation.cov`` of a concrete factor are computed in
plain Python float64 (``_core/exact_arithmetic.py``), so the numbers a model holds and a config
file stores are the same on every machine (README, "Reproducibility"); traced values
(inside ``jit`` / ``grad``) use JAX's kernels.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import exact_arithmetic as xa, linalg as la, validate as v
from .._core.types import (
    Array,
    Float,
    Loadings,
    ObsMatrix,
    ObsVector,
    Scalar,
    StateMatrix,
    StateVector,
)
from .constraints import CONSTRAINT, LowerCholesky, Real
from .robust import AbstractRobust, check_robust, robust_terms

_UPDATES = ("joint", "independent")
_LOG_2PI = math.log(2.0 * math.pi)


class Observation(eqx.Module):
    """``m`` noisy features of the drift with loadings and a full noise covariance.

    Arguments:
        loadings: ``alpha``, shape ``[m]``: feature ``k`` is ``alpha_k mu + eps_k``.
        cov: noise covariance ``R``, shape ``[m, m]``, symmetric positive definite (a
            scalar or ``[m]`` vector is read as a diagonal).
        update: ``"joint"`` — one vector update with the full ``R`` (correct); or
            ``"independent"`` — ``m`` sequential scalar updates with ``R_kk`` that ignore
            the correlation (the old production behaviour, kept to study posterior
            collapse).
        feature_names: optional names of the ``m`` features, in the order of ``loadings``
            (distinct strings; static). Named data (a ``pandas.DataFrame``, a dict of
            columns, a ``dj.History``, a CSV / Parquet file through ``dj.read_history``)
            is then matched to the model by name wherever it enters (``dj.filter``,
            ``dj.fit``, the losses, the streaming estimators, the command line): reordered
            columns are put in this order, a missing or an extra column is an error. A
            config file stores them (``[observation].feature_names``).
        robust: ``None`` (Gaussian noise, the default) or a robust update for bad ticks,
            ``dj.Huber(threshold=...)`` or ``dj.StudentT(df=...)``: each step's noise is
            inflated by the standardised innovation along the loadings, and the
            likelihood is the matching heavy-tailed density (``_models/robust.py`` says
            exactly what is computed). Every filter path follows it (Kalman and IMM, the
            m-feature reduction, streaming, ``dj.Chunked``); its parameter is trained by
            ``dj.fit`` like any other; a config stores it (``[observation.robust]``).
            Not for ``dj.Associative()`` (the update is no longer linear-Gaussian).

    Example:
        >>> import drift_jax as dj
        >>> obs = dj.Observation([1.0, 0.8], [[1.0, 0.7], [0.7, 2.0]])
        >>> obs.num_features
        2
        >>> dj.Observation.scalar(4.0).cov.tolist()
        [[4.0]]
        >>> dj.Observation([1.0, 0.8], [1.0, 2.0], feature_names=["bim", "dbim"]).feature_names
        ('bim', 'dbim')
        >>> dj.Observation.scalar(4.0, robust=dj.StudentT(df=4.0)).robust.kind
        'student_t'
    """

    loadings: Loadings = eqx.field(metadata={CONSTRAINT: Real()})
    # reported by dj.standard_errors as the entries of R = L L^T (`observation.cov[i,j]`)
    cov_chol: Float[Array, "m m"] = eqx.field(
        metadata={CONSTRAINT: LowerCholesky(reported_as="cov")}
    )
    update: str = eqx.field(static=True)
    feature_names: tuple[str, ...] | None = eqx.field(static=True, default=None)
    robust: AbstractRobust | None = None

    def __init__(self, loadings, cov, update: str = "joint", feature_names=None, *, robust=None):
        alpha = v.as_float_array("loadings", loadings)
        if alpha.ndim == 0:
            alpha = alpha.reshape(1)
        if alpha.ndim != 1:
            raise ValueError(f"`loadings` must be a vector of shape [m], got shape {alpha.shape}.")
        alpha = v.check("loadings", alpha, jnp.isfinite, "finite")
        m = alpha.shape[0]
        self.loadings = alpha
        self.update = v.one_of("update", update, _UPDATES)
        self.feature_names = v.feature_names("feature_names", feature_names, m)
        robust = check_robust("robust", robust)
        if robust is not None:  # in the model's precision
            robust = jax.tree.map(lambda x: jnp.asarray(x, alpha.dtype), robust)
        self.robust = robust
        if isinstance(cov, _GivenFactor):  # from_cholesky: keep the factor as given
            self.cov_chol = _checked_factor("cov_chol", cov.value, m, alpha.dtype)
            return
        R = v.as_float_array("cov", cov, dtype=alpha.dtype)
        if R.ndim == 0:
            R = R * jnp.eye(m, dtype=alpha.dtype)
        elif R.ndim == 1:
            R = jnp.diag(R)
        if R.shape != (m, m):
            raise ValueError(
                f"`cov` must have shape [m, m] = [{m}, {m}] to match `loadings` of size {m}, "
                f"got shape {R.shape}."
            )
        self.cov_chol = _checked_cholesky("cov", R)

    @classmethod
    def scalar(cls, R, loading=1.0, feature_names=None, *, robust=None) -> Observation:
        """One feature ``z = loading * mu + eps``, ``eps ~ N(0, R)`` (``robust``: as
        ``dj.Observation``'s)."""
        R = v.as_float_array("R", R)
        alpha = v.as_float_array("loading", loading, R.dtype)
        return cls(
            jnp.reshape(alpha, (1,)),
            jnp.reshape(R, (1, 1)),
            feature_names=feature_names,
            robust=robust,
        )

    @classmethod
    def from_cholesky(
        cls, loadings, cov_chol, update: str = "joint", feature_names=None, *, robust=None
    ) -> Observation:
        """Build from a lower Cholesky factor ``L`` of ``R = L L^T`` (the fitting
        parametrisation, and what a config file's ``cov_cholesky`` holds).

        The model keeps ``L`` bit for bit (in the loadings' dtype): it is checked, not
        recomputed from ``L L^T``. The part above the diagonal is ignored; a column whose
        diagonal entry is negative is negated (the same ``R``, exactly); the diagonal must
        be nonzero and the entries finite.

        Example:
            >>> import drift_jax as dj
            >>> obs = dj.Observation.from_cholesky([1.0, 0.8], [[2.0, 0.0], [1.5, 0.5]])
            >>> obs.cov_chol.tolist(), obs.cov.tolist()
            ([[2.0, 0.0], [1.5, 0.5]], [[4.0, 3.0], [3.0, 2.5]])
        """
        return cls(loadings, _GivenFactor(cov_chol), update, feature_names, robust=robust)

    @property
    def num_features(self) -> int:
        return self.loadings.shape[0]

    def with_feature_names(self, feature_names) -> Observation:
        """The same observation with ``feature_names`` (``None``: without names).

        Example:
            >>> import drift_jax as dj
            >>> obs = dj.Observation.scalar(4.0).with_feature_names(["bim"])
            >>> obs.feature_names, obs.cov.tolist()
            (('bim',), [[4.0]])
        """
        names = v.feature_names("feature_names", feature_names, self.num_features)
        return self._replace(feature_names=names)

    def with_robust(self, robust) -> Observation:
        """The same observation with the robust update ``robust`` (``None``: Gaussian).

        Example:
            >>> import drift_jax as dj
            >>> obs = dj.Observation.scalar(4.0).with_robust(dj.Huber(2.0))
            >>> obs.robust.kind, obs.with_robust(None).robust is None
            ('huber', True)
        """
        robust = check_robust("robust", robust)
        if robust is not None:
            robust = jax.tree.map(lambda x: jnp.asarray(x, self.loadings.dtype), robust)
        return self._replace(robust=robust)

    def _replace(self, **fields) -> Observation:
        new = object.__new__(Observation)  # as equinox's unflatten builds a Module
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, fields.get(f.name, getattr(self, f.name)))
        return new

    @property
    def cov(self) -> ObsMatrix:
        """The noise covariance ``R = L L^T``.

        For a concrete factor, ``L L^T`` computed exactly and rounded once (to float64, then
        to the model's dtype): the ``cov`` a config file stores, on every machine. Traced
        (inside ``jit`` / ``grad``), JAX's matrix product.
        """
        L = self.cov_chol
        if v.is_traced(L) or jnp.ndim(L) != 2:
            return L @ L.T
        return jnp.asarray(xa.gram(np.asarray(L)).astype(L.dtype))

    def observation_matrix(self, state_dim: int, dtype=None) -> Float[Array, "m n"]:
        """``H = [alpha, 0, ...]`` of shape ``[m, state_dim]`` (in ``dtype`` if given)."""
        dtype = self.loadings.dtype if dtype is None else dtype
        H = jnp.zeros((self.num_features, state_dim), dtype)
        return H.at[:, 0].set(self.loadings.astype(dtype))

    def matrices(self, state_dim: int, dtype) -> tuple[Float[Array, "m n"], ObsMatrix]:
        """``(H, R)`` in the filter's ``dtype`` (a model's members set its precision)."""
        return self.observation_matrix(state_dim, dtype), self.cov.astype(dtype)


class _GivenFactor:
    """``Observation(loadings, _GivenFactor(L))``: the model holds ``L`` (``from_cholesky``)."""

    def __init__(self, value):
        self.value = value


def _checked_cholesky(name: str, R: Array) -> Array:
    """Cholesky factor of ``R`` after checking it is finite, symmetric and positive definite.

    Concrete ``R``: the factor of ``0.5 (R + R^T)`` in float64 by ``_exact_arithmetic.cholesky``
    (the same bits on every machine), rounded to ``R``'s dtype. Traced: ``jnp.linalg``.
    """
    tol = 1e-8
    if v.is_traced(R):
        L = jnp.linalg.cholesky(0.5 * (R + R.T))
        asym = jnp.max(jnp.abs(R - R.T)) > tol * (1.0 + jnp.max(jnp.abs(R)))
        bad = ~jnp.all(jnp.isfinite(L)) | asym
        return eqx.error_if(L, bad, f"`{name}` must be symmetric positive definite.")
    Rn = np.asarray(R, dtype=np.float64)
    if not np.all(np.isfinite(Rn)):
        raise ValueError(f"`{name}` must be finite; got {name}={Rn.tolist()}.")
    if np.max(np.abs(Rn - Rn.T)) > tol * (1.0 + np.max(np.abs(Rn))):
        raise ValueError(
            f"`{name}` must be symmetric (positive definite); got {name}={Rn.tolist()}."
        )
    S = 0.5 * (Rn + Rn.T)
    L = xa.cholesky(S)
    if L is None:
        eig = np.linalg.eigvalsh(S)  # for the message only
        raise ValueError(
            f"`{name}` must be positive definite (all eigenvalues > 0); got {name}={Rn.tolist()} "
            f"with eigenvalues {eig.tolist()}."
        )
    return jnp.asarray(L.astype(R.dtype))


def _checked_factor(name: str, L, m: int, dtype) -> Array:
    """A lower Cholesky factor as given: the lower triangle, columns signed so the diagonal
    is > 0 (negation is exact), after checking it is ``[m, m]``, finite, nonsingular."""
    L = v.as_float_array(name, L, dtype)
    if L.shape != (m, m):
        raise ValueError(
            f"`{name}` must have shape [m, m] = [{m}, {m}] to match `loadings` of size {m}, "
            f"got shape {L.shape}."
        )
    if v.is_traced(L):
        d = jnp.diagonal(L)
        bad = ~jnp.all(jnp.isfinite(jnp.tril(L))) | jnp.any(d == 0)
        L = jnp.tril(jnp.where(d[None, :] < 0, -L, L))
        return eqx.error_if(L, bad, f"`{name}` must be finite with a nonzero diagonal.")
    Ln = np.tril(np.asarray(L))
    if not np.all(np.isfinite(Ln)) or np.any(np.diagonal(Ln) == 0):
        raise ValueError(
            f"`{name}` must be a finite lower-triangular factor with a nonzero diagonal "
            f"(R = L L^T positive definite); got {name}={Ln.tolist()}."
        )
    # Negate the columns with a negative diagonal (exact), then zero the upper part again.
    Ln = np.tril(np.where(np.diagonal(Ln)[None, :] < 0, -Ln, Ln))
    return jnp.asarray(Ln)


def measurement_update(
    mean: StateVector,
    cov: StateMatrix,
    z: ObsVector,
    H: Float[Array, "m n"],
    R: ObsMatrix,
    update: str,
    robust: AbstractRobust | None = None,
) -> tuple[StateVector, StateMatrix, Scalar]:
    """Kalman measurement update with per-component missing data (NaN in ``z``).

    Returns the posterior ``(mean, cov)`` and ``log p(z_obs | past)``. Components that are
    NaN are dropped: the update uses the observed sub-vector and sub-covariance (their
    rows of ``H`` and ``R`` are masked, which is algebraically the same and keeps shapes
    static). With nothing observed the posterior is the prior and the log-likelihood 0.

    ``robust`` (a ``dj.Huber`` / ``dj.StudentT``): the robust update of
    ``_models/robust.py``, gated on the innovation along ``H[:, 0]`` (the loadings);
    ``update="independent"`` is then the joint update with ``diag(R)``. ``None``: the
    Gaussian update, unchanged.
    """
    if robust is not None:
        if update != "joint":
            R = _diagonal_only(R)
        return _robust_joint_update(mean, cov, z, H, R, robust)
    if update == "joint":
        return _joint_update(mean, cov, z, H, R)
    return _independent_update(mean, cov, z, H, R)


def _diagonal_only(R):
    """``R`` with its off-diagonal entries 0 (leading batch axes kept)."""
    m = R.shape[-1]
    return jnp.where(jnp.eye(m, dtype=bool), R, 0.0)


def mask_missing(z, H, R):
    """Drop the missing (NaN) components of ``z`` and keep the shapes static.

    Returns ``(observed, z0, H0, R0)``: the mask, ``z`` with 0 where missing, ``H`` with
    those rows 0, and ``R`` with those rows and columns replaced by the identity's. The
    observed sub-block keeps its determinant, inverse and quadratic form, and a missing
    component gets zero gain: algebraically the update with the observed sub-vector only.
    Every filter cycle masks with this (the Kalman and IMM updates, the parallel filter's
    elements, the m-feature reduction). Leading batch axes of ``z`` (``[..., m]``)
    broadcast ``H`` ``[m, n]`` and ``R`` ``[m, m]``.
    """
    observed = ~jnp.isnan(z)
    batch, m = z.shape[:-1], z.shape[-1]
    H = jnp.broadcast_to(H, batch + H.shape[-2:])
    R = jnp.broadcast_to(R, batch + (m, m))
    eye = jnp.broadcast_to(jnp.eye(m, dtype=R.dtype), batch + (m, m))
    z0 = jnp.where(observed, z, 0.0)
    H0 = jnp.where(observed[..., :, None], H, 0.0)
    both = observed[..., :, None] & observed[..., None, :]
    R0 = jnp.where(both, R, eye * jnp.where(observed, 0.0, 1.0)[..., None, :])
    return observed, z0, H0, R0


def _joint_update(mean, cov, z, H, R):
    observed, _, Hm, Rm = mask_missing(z, H, R)
    innov = jnp.where(observed, z - la.mv(H, mean), 0.0)
    PHt = la.mm(cov, la.transpose(Hm))  # [n, m]
    S = la.mm(Hm, PHt) + Rm
    L = la.cholesky(S)
    # K = P H^T S^{-1}  ->  K^T = S^{-1} H P
    K = la.transpose(la.cho_solve(L, la.transpose(PHt)))
    new_mean = mean + la.mv(K, innov)
    # Joseph form keeps the covariance symmetric positive definite in finite precision.
    n = mean.shape[-1]
    IKH = jnp.eye(n, dtype=cov.dtype) - la.mm(K, Hm)
    KRm = la.mm(K, Rm)
    new_cov = la.mm(la.mm(IKH, cov), la.transpose(IKH)) + la.mm(KRm, la.transpose(K))
    new_cov = la.symmetrise(new_cov)
    w = la.solve_lower(L, innov)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    n_obs = jnp.sum(observed, axis=-1)
    loglik = -0.5 * (n_obs * _LOG_2PI + logdet + jnp.sum(w * w, axis=-1))
    return new_mean, new_cov, loglik


def _robust_joint_update(mean, cov, z, H, R, robust: AbstractRobust):
    """The joint update with ``R / w(e)`` and the robust log-likelihood
    ``log N(z; H m, S) + log f(e) - log phi(e)`` (``_models/robust.py``), where
    ``e^2 = (h^T S^{-1} v)^2 / (h^T S^{-1} h)``, ``h = H[:, 0]``: the standardised
    innovation of the exact reduction of the features to one observation of ``mu``."""
    observed, _, Hm, Rm = mask_missing(z, H, R)
    innov = jnp.where(observed, z - la.mv(H, mean), 0.0)
    PHt = la.mm(cov, la.transpose(Hm))  # [n, m]
    HPHt = la.mm(Hm, PHt)
    L = la.cholesky(HPHt + Rm)
    w = la.solve_lower(L, innov)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    n_obs = jnp.sum(observed, axis=-1)
    gauss = -0.5 * (n_obs * _LOG_2PI + logdet + jnp.sum(w * w, axis=-1))
    wh = la.solve_lower(L, Hm[..., :, 0])  # L^{-1} h
    den = jnp.sum(wh * wh, axis=-1)  # h^T S^{-1} h
    num = jnp.sum(wh * w, axis=-1)  # h^T S^{-1} v
    usable = den > 0
    e2 = num * num / jnp.where(usable, den, 1.0)
    weight, log_ratio = robust_terms(robust, e2, usable)
    Rw = Rm / weight[..., None, None]
    Lw = la.cholesky(HPHt + Rw)
    K = la.transpose(la.cho_solve(Lw, la.transpose(PHt)))
    new_mean = mean + la.mv(K, innov)
    n = mean.shape[-1]
    IKH = jnp.eye(n, dtype=cov.dtype) - la.mm(K, Hm)
    KRw = la.mm(K, Rw)
    new_cov = la.mm(la.mm(IKH, cov), la.transpose(IKH)) + la.mm(KRw, la.transpose(K))
    return new_mean, la.symmetrise(new_cov), gauss + log_ratio


def _independent_update(mean, cov, z, H, R):
    """``m`` sequential scalar updates, feature ``k`` with variance ``R_kk`` (no correlation)."""
    n = mean.shape[-1]
    eye = jnp.eye(n, dtype=cov.dtype)
    loglik = jnp.zeros_like(mean[..., 0])
    for k in range(z.shape[-1]):
        zk = z[..., k]
        seen = ~jnp.isnan(zk)
        h = H[..., k, :]  # [n]
        r = R[..., k, k]
        Ph = la.mv(cov, h)  # [n]
        s = jnp.sum(h * Ph, axis=-1) + r
        innov = jnp.where(seen, zk - jnp.sum(h * mean, axis=-1), 0.0)
        gain = jnp.where(seen[..., None], Ph / s[..., None], 0.0)
        mean = mean + gain * innov[..., None]
        IKH = eye - gain[..., :, None] * h[..., None, :]
        cov = la.mm(la.mm(IKH, cov), la.transpose(IKH)) + r[..., None, None] * (
            gain[..., :, None] * gain[..., None, :]
        )
        cov = la.symmetrise(cov)
        ll_k = -0.5 * (_LOG_2PI + jnp.log(s) + innov * innov / s)
        loglik = loglik + jnp.where(seen, ll_k, 0.0)
    return mean, cov, loglik
