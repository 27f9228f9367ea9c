"""Offline calibration of the feature model ``z = alpha mu + eps``, ``eps ~ N(0, R)``.

The specification's loadings and feature covariance are "estimated offline from historical
feature data, stored in config". Here each feature is regressed on a drift proxy ``y``
(usually the realised forward return, ``realised_drift``) and ``R`` is the covariance of the
residuals, optionally shrunk toward a scaled identity (Ledoit & Wolf 2004). The data come as
arrays, a ``pandas.DataFrame`` or a timestamped CSV / Parquet file (``_io/feature_table.py``).

Every statistic is specified to the bit, so a calibration written to a config reproduces on
any machine (README, "Reproducibility"): sums of products are ``math.fsum`` of the IEEE
elementwise products and means are ``fsum / n`` (``_core/exact_arithmetic.py``), never a BLAS
product or a NumPy reduction (whose summation order depends on the SIMD kernel). ``fsum``
is correctly rounded, so the results do not depend on the order of the rows either.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._core import exact_arithmetic as xa, validate as v
from .._core.optional import optional_pandas
from .._core.types import ArrayLike, Float
from .._io.feature_table import check_values, load_calibration_data
from .._models.observation import Observation

pd = optional_pandas()

__all__ = ["Calibration", "calibrate_observation", "ledoit_wolf"]


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """The fitted feature model, with the diagnostics of the fit (NumPy float64).

    Attributes:
        loadings: ``alpha`` ``[m]``: per-feature OLS slope on the drift proxy.
        cov: ``R`` ``[m, m]``: the residual covariance, after shrinkage.
        observation: ``dj.Observation(loadings, cov, update)`` (JAX's default float dtype).
        feature_names: one name per feature.
        target_name: what the drift proxy was (a column, ``"target"``, or the forward return).
        n_rows: rows with the target and every feature observed (used for ``cov``).
        n_rows_per_feature: ``[m]`` rows used by each feature's regression.
        shrinkage: the shrinkage intensity used (0 for none).
        sample_cov: ``[m, m]`` the residual covariance before shrinkage.
        residual_corr: ``[m, m]`` the correlation matrix of ``sample_cov``.
        loading_se: ``[m]`` OLS standard errors of the loadings (homoskedastic).
        r_squared: ``[m]`` per-feature R^2 (uncentred without intercept, as statsmodels).
        offsets: ``[m]`` feature intercepts (zeros unless ``intercept=True``).
    """

    loadings: Float[np.ndarray, " m"]
    cov: Float[np.ndarray, "m m"]
    observation: Observation
    feature_names: tuple[str, ...]
    target_name: str
    n_rows: int
    n_rows_per_feature: np.ndarray
    shrinkage: float
    sample_cov: Float[np.ndarray, "m m"]
    residual_corr: Float[np.ndarray, "m m"]
    loading_se: Float[np.ndarray, " m"]
    r_squared: Float[np.ndarray, " m"]
    offsets: Float[np.ndarray, " m"]

    def summary(self) -> pd.DataFrame:
        """One row per feature: loading, its standard error, offset, noise std, R^2, rows."""
        return pd.DataFrame(
            {
                "loading": self.loadings,
                "loading_se": self.loading_se,
                "offset": self.offsets,
                "noise_std": np.sqrt(np.diag(self.cov)),
                "r_squared": self.r_squared,
                "n_rows": self.n_rows_per_feature,
            },
            index=pd.Index(list(self.feature_names), name="feature"),
        )


def ledoit_wolf(
    residuals: Float[ArrayLike, "n m"] | list,
) -> tuple[Float[np.ndarray, "m m"], float]:
    """Ledoit-Wolf shrinkage of a covariance toward a scaled identity.

    With ``S = X^T X / n`` (rows of ``X`` taken as zero-mean, as the feature model's noise
    is; centre them first otherwise), ``mu = tr(S) / m`` and the normalised Frobenius norm
    ``|A|^2 = tr(A A^T) / m`` (Ledoit & Wolf 2004, "A well-conditioned estimator for
    large-dimensional covariance matrices", sec. 3.2 and Lemma 3.2):

    ``delta^2 = |S - mu I|^2``, ``b^2 = min(delta^2, sum_k |x_k x_k^T - S|^2 / n^2)``,
    ``rho = b^2 / delta^2`` and ``cov = rho mu I + (1 - rho) S``.

    The target ``mu I`` is not scale-invariant: features of very different scales are
    shrunk unevenly (standardise them first if that matters).

    Arguments:
        residuals: ``[n, m]`` zero-mean observations, finite.

    Returns:
        ``(cov, rho)``: the shrunk covariance and the intensity ``rho`` in ``[0, 1]`` (0 when
        ``S`` is already a multiple of the identity, e.g. ``m = 1``).

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> x = np.array([[2.0, 0.0], [0.0, 1.0], [-2.0, 0.0], [0.0, -1.0]])
        >>> cov, rho = dj.ledoit_wolf(x)  # S = diag(2, 0.5), rho = 17/18
        >>> round(rho * 18, 9), np.round(cov * 18, 9).tolist()
        (17.0, [[23.25, 0.0], [0.0, 21.75]])
    """
    x = np.asarray(residuals, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"`residuals` must have shape [n, m] with n, m >= 1, got {x.shape}.")
    check_values("`residuals`", x, allow_nan=False)
    S = xa.cross(x) / x.shape[0]
    rho = _ledoit_wolf_intensity(x, S)
    return _shrink(S, rho), rho


def _ledoit_wolf_intensity(x: np.ndarray, S: np.ndarray) -> float:
    """``rho`` of ``ledoit_wolf`` for residuals ``x`` with ``S = X^T X / n`` (given)."""
    n, m = x.shape
    mu = xa.fsum(np.diag(S).tolist()) / m
    delta2 = xa.fsum(((S - mu * np.eye(m)) ** 2).ravel().tolist()) / m
    x2 = x * x
    # sum_k |x_k x_k^T - S|_F^2 = sum_ij (X2^T X2)_ij - n |S|_F^2, without the n [m, m] terms.
    beta2 = xa.fsum((xa.cross(x2) / n - S * S).ravel().tolist()) / (m * n)
    beta2 = min(max(beta2, 0.0), delta2)
    return 0.0 if delta2 == 0.0 else beta2 / delta2


def _shrink(S: np.ndarray, rho: float) -> np.ndarray:
    m = S.shape[0]
    return rho * (xa.fsum(np.diag(S).tolist()) / m) * np.eye(m) + (1.0 - rho) * S


def calibrate_observation(
    features,
    target=None,
    *,
    columns=None,
    target_column: str | None = None,
    time_column: str | None = None,
    price_column: str | None = None,
    horizon: float | int | None = None,
    shrinkage: str | float | int | None = None,
    intercept: bool = False,
    update: str = "joint",
    min_rows: int = 100,
) -> Calibration:
    """Estimate the feature loadings and the full feature covariance from history.

    Each feature ``k`` is regressed on a drift proxy ``y`` (bps/s) by OLS through the origin,
    ``alpha_k = sum z_k y / sum y^2`` over the rows where both are observed (with
    ``intercept=True``, ``z_k = b_k + alpha_k y``; the filter has no offsets, so subtract
    ``offsets`` from the features before filtering). ``R`` is the covariance
    ``E^T E / n`` of the residuals ``e = z - b - alpha y`` over the ``n`` rows where the
    target and every feature are observed (so it is positive semi-definite), then optionally
    shrunk: ``cov = rho tr(R)/m I + (1 - rho) R``.

    The proxy is usually the realised forward return ``1e4 (p(t + h) / p(t) - 1) / h``
    (``price_column`` with ``horizon``, see ``dj.realised_drift``). The target at ``t``
    uses prices after ``t`` by design: it is what the features at ``t`` are meant to
    predict, and must never be fed to the filter as a feature.

    Errors in variables: a proxy ``y = mu + nu`` with noise ``nu`` (the return over ``h``
    seconds carries price noise of variance about ``sigma_price^2 / h`` in (bps/s)^2, and it
    averages the drift over ``[t, t + h]``) attenuates the loadings toward 0 by
    ``lambda = var(mu) / (var(mu) + var(nu))``, and puts ``alpha alpha^T var(mu)(1 - lambda)``
    of drift variation into ``R``. Use the least noisy proxy available, and read the
    loadings as a lower bound in magnitude.

    Arguments:
        features: ``[T, m]`` array (``[T]`` for one feature), a ``pandas.DataFrame``, or the
            path of a ``.csv`` / ``.parquet`` file (Parquet needs pyarrow). NaN is missing
            data; inf is an error.
        target: the drift proxy ``[T]`` (with an array or a table), or None with
            ``target_column`` or ``price_column``.
        columns: the feature columns of a table (default: every column that is not the
            time, target or price column); for an array, optional names of its columns.
        target_column: the table column holding the drift proxy.
        time_column: timestamps (seconds as numbers, or datetimes); must be strictly
            increasing. Needed with ``price_column``.
        price_column: prices (``> 0``); the target becomes ``realised_drift`` over
            ``horizon`` seconds.
        horizon: the forward-return horizon in seconds (``> 0``), with ``price_column``.
        shrinkage: None (none), ``"ledoit-wolf"`` (intensity from the data, ``dj.ledoit_wolf``)
            or a fixed intensity in ``[0, 1]``.
        intercept: also fit a per-feature offset ``b_k``.
        update: the ``update`` mode of the returned ``observation``.
        min_rows: fewest usable rows (after dropping NaN) per feature and for ``R``.

    Returns:
        A ``Calibration``: ``loadings``, ``cov``, ``observation`` and diagnostics
        (``.summary()`` is a ``pandas.DataFrame``).

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> rng = np.random.default_rng(0)
        >>> mu = rng.normal(0.0, 10.0, 5000)
        >>> z = np.outer(mu, [1.0, 0.5]) + rng.normal(0.0, 2.0, (5000, 2))
        >>> cal = dj.calibrate_observation(z, mu, columns=["bim", "bpg"])
        >>> np.round(cal.loadings, 1).tolist(), cal.observation.num_features
        ([1.0, 0.5], 2)
        >>> list(cal.summary().index)
        ['bim', 'bpg']
    """
    intercept = v.boolean("intercept", intercept)
    min_rows = v.int_at_least("min_rows", min_rows, 2)
    rho = _shrinkage_setting(shrinkage)
    Z, y, names, target_name = load_calibration_data(
        features, target, columns, target_column, time_column, price_column, horizon
    )
    return _fit(Z, y, names, target_name, rho, intercept, update, int(min_rows))


def _shrinkage_setting(shrinkage) -> float | str | None:
    if shrinkage is None or shrinkage == "ledoit-wolf":
        return shrinkage
    return v.probability("shrinkage", shrinkage, "None, 'ledoit-wolf' or an intensity in [0, 1]")


def _fit(Z, y, names, target_name, shrinkage, intercept, update, min_rows) -> Calibration:
    T, m = Z.shape
    y_seen = ~np.isnan(y)
    k = 2 if intercept else 1
    stats = np.zeros((5, m))  # per feature: loading, offset, se, R^2, rows
    for i, name in enumerate(names):
        rows = y_seen & ~np.isnan(Z[:, i])
        n_i = int(rows.sum())
        if n_i < max(min_rows, k + 1):
            raise ValueError(
                f"feature {name!r} has only {n_i} of {T} rows observed together with the "
                f"target (after dropping NaN); at least min_rows={min_rows} are needed."
            )
        zi, yi = Z[rows, i], y[rows]
        if np.all(zi == zi[0]):
            raise ValueError(
                f"feature {name!r} is constant (= {float(zi[0])!r} on all {n_i} rows where it and "
                "the target are observed): it carries no information; drop it."
            )
        if np.all(yi == yi[0]):
            raise ValueError(
                f"the target {target_name!r} is constant (= {float(yi[0])!r}) on the {n_i} rows "
                f"where feature {name!r} is observed: nothing to regress on."
            )
        if intercept:
            y_bar, z_bar = xa.mean(yi), xa.mean(zi)
            yc, zc = yi - y_bar, zi - z_bar
            sxx, tss = xa.dot(yc, yc), xa.dot(zc, zc)
            a = xa.dot(zc, yc) / sxx
            b = z_bar - a * y_bar
        else:
            sxx, tss = xa.dot(yi, yi), xa.dot(zi, zi)
            a, b = xa.dot(zi, yi) / sxx, 0.0
        e = zi - b - a * yi
        ssr = xa.dot(e, e)
        stats[:5, i] = a, b, math.sqrt(ssr / (n_i - k) / sxx), 1.0 - ssr / tss, n_i
    loadings, offsets = stats[0].copy(), stats[1].copy()
    complete = y_seen & ~np.any(np.isnan(Z), axis=1)
    n = int(complete.sum())
    if n < min_rows:
        raise ValueError(
            f"only {n} of {T} rows have the target and every feature observed (after "
            f"dropping NaN); at least min_rows={min_rows} are needed to estimate the "
            f"{m}x{m} covariance."
        )
    E = Z[complete] - offsets[None, :] - y[complete][:, None] * loadings[None, :]
    sample = xa.cross(E) / n
    if shrinkage is None:
        cov, rho = sample, 0.0
    elif shrinkage == "ledoit-wolf":
        rho = _ledoit_wolf_intensity(E, sample)
        cov = _shrink(sample, rho)
    else:
        cov, rho = _shrink(sample, shrinkage), shrinkage
    eig = np.linalg.eigvalsh(cov)  # a check only: the numbers returned do not use it
    if not eig[0] > 1e-12 * max(eig[-1], 0.0):
        raise ValueError(
            f"the residual covariance of features {list(names)} is singular (eigenvalues "
            f"{eig.tolist()}): some features are collinear; drop one, or pass "
            "shrinkage='ledoit-wolf'."
        )
    std = np.sqrt(np.diag(sample))
    return Calibration(
        loadings=loadings,
        cov=cov,
        observation=Observation(loadings, cov, update),
        feature_names=tuple(names),
        target_name=target_name,
        n_rows=n,
        n_rows_per_feature=stats[4].astype(np.int64),
        shrinkage=float(rho),
        sample_cov=sample,
        residual_corr=sample / np.outer(std, std),
        loading_se=stats[2].copy(),
        r_squared=stats[3].copy(),
        offsets=offsets,
    )
