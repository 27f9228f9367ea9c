"""The IMM against filterpy's ``IMMEstimator`` (Labbe), a peer written by others.

filterpy's cycle is ``predict()`` (mix with ``omega`` from the last ``mu``, then each
member's predict) followed by ``update(z)`` (each member's update, ``mu = cbar * L``
normalised). Its ``M[i, j]`` is used as ``cbar = mu @ M``, i.e. row-stochastic with
``M[i, j] = P(next = j | now = i)`` — our ``Pi``. filterpy keeps no log-likelihood; the
step's ``log p(z_t | z_<t) = log sum_j cbar_j L_j`` is formed from its ``cbar`` read
*before* ``update`` (``update`` overwrites it with the next cycle's) and each member's
likelihood after its update (taken as ``log_likelihood`` to avoid filterpy's
``float_info.min`` floor; the data here never comes near it).

The members' ``F`` and ``Q`` are written out here from the formulas of docs/design.md
(Euler: ``F = exp(-theta dt)``, ``Q = sigma^2 dt``; extended
``F = [[1 - theta dt, dt], [0, 1 - theta_a dt]]``; a scalar member embedded in the
extended state as ``F = [[a, 0], [0, 0]]``, ``Q = diag(q, 0)``), not taken from drift_jax.
"""

import types

import equinox as eqx
import numpy as np
import pytest
from filterpy.kalman import IMMEstimator, KalmanFilter
from scipy.special import logsumexp

import drift_jax as dj

from .conftest import correlated_cov

TOL = 1e-9
_filter = eqx.filter_jit(dj.filter)


def _members(kinds, rng):
    """Random members: ``"s"`` scalar OU, ``"e"`` extended OUAccel (Euler); member ``j``'s
    ``sigma`` is spread by ``3^j`` so the regimes are distinguishable from the data."""
    out = []
    for j, kind in enumerate(kinds):
        theta, sigma = rng.uniform(0.01, 1.0), rng.uniform(0.2, 0.6) * 3.0**j
        if kind == "s":
            out.append(dj.OU(theta, sigma))
        else:
            out.append(dj.OUAccel(theta, sigma, rng.uniform(0.05, 1.5), rng.uniform(0.1, 1.5)))
    return out


def _as_numpy(res) -> types.SimpleNamespace:
    """The result's per-step arrays as NumPy (cheap to index inside the loop)."""
    fields = (
        "log_likelihoods regime_probs predicted_regime_probs means covs model_means model_covs"
    )
    return types.SimpleNamespace(**{f: np.asarray(getattr(res, f)) for f in fields.split()})


def _euler_FQ(d, dt, n):
    """``(F, Q)`` written from docs/design.md, embedded in a state of size ``n``."""
    th, sg = float(d.theta), float(d.sigma)
    F, Q = np.zeros((n, n)), np.zeros((n, n))
    if isinstance(d, dj.OU):
        F[0, 0], Q[0, 0] = np.exp(-th * dt), sg**2 * dt
    else:
        ta, sa = float(d.theta_accel), float(d.sigma_accel)
        F[:] = [[1.0 - th * dt, dt], [0.0, 1.0 - ta * dt]]
        Q[:] = np.diag([sg**2 * dt, sa**2 * dt])
    return F, Q


def _simulate_switching(dynamics, Pi, p0, H, R, dts, rng):
    """Regime-switching data: ``r_t ~ Pi[r_{t-1}]``, ``x_t = F_{r_t} x_{t-1} + w``."""
    n, m = H.shape[1], H.shape[0]
    r = rng.choice(len(dynamics), p=p0)
    x, zs = np.zeros(n), []
    for dt in dts:
        r = rng.choice(len(dynamics), p=Pi[r])
        F, Q = _euler_FQ(dynamics[r], dt, n)
        x = F @ x + rng.multivariate_normal(np.zeros(n), Q)
        zs.append(H @ x + rng.multivariate_normal(np.zeros(m), R))
    return np.array(zs)


CASES = [
    # seed, member kinds, features m, irregular dt
    (0, "sss", 1, False),
    (1, "sss", 3, True),
    (3, "eee", 1, True),
    (4, "ee", 4, False),
    (5, "ese", 2, True),  # a scalar member embedded in the extended state
    (6, "ssss", 2, True),
]


@pytest.mark.parametrize("seed, kinds, m, irregular", CASES)
def test_imm_equals_filterpy_imm_estimator(seed, kinds, m, irregular):
    rng = np.random.default_rng(seed)
    T, M = 40, len(kinds)
    dynamics = _members(kinds, rng)
    n = max(d.state_dim for d in dynamics)
    Pi = rng.dirichlet(np.full(M, 0.7), size=M) * 0.5 + np.eye(M) * 0.5
    p0 = rng.dirichlet(np.ones(M))
    loadings = rng.uniform(0.5, 1.5, size=m) * rng.choice([-1.0, 1.0], size=m)
    R = correlated_cov(rng.uniform(0.5, 2.0, size=m), 0.4)
    H = np.zeros((m, n))
    H[:, 0] = loadings
    m0 = rng.normal(size=n)
    A = rng.normal(size=(n, n))
    P0 = A @ A.T + np.eye(n)
    dts = rng.uniform(0.1, 1.5, size=T) if irregular else np.full(T, 0.4)
    zs = _simulate_switching(dynamics, Pi, p0, H, R, dts, rng)

    imm = dj.IMMModel(dynamics, dj.Observation(loadings, R), Pi, p0, m0, P0)
    out = _filter(imm, zs, dts if irregular else 0.4)
    res = _as_numpy(out)

    filters = []
    for _ in range(M):
        kf = KalmanFilter(dim_x=n, dim_z=m)
        kf.x, kf.P, kf.H, kf.R = m0.copy(), P0.copy(), H.copy(), R.copy()
        filters.append(kf)
    peer = IMMEstimator(filters, p0.copy(), Pi.copy())
    for t in range(T):
        for kf, d in zip(filters, dynamics, strict=True):
            kf.F, kf.Q = _euler_FQ(d, dts[t], n)
        peer.predict()
        cbar = peer.cbar.copy()  # before update(): the predicted mode probabilities
        peer.update(zs[t])
        step_ll = logsumexp(np.log(cbar) + np.array([kf.log_likelihood for kf in filters]))

        np.testing.assert_allclose(res.predicted_regime_probs[t], cbar, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.regime_probs[t], peer.mu, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.means[t], peer.x, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(res.covs[t], peer.P, rtol=TOL, atol=TOL)
        for j, kf in enumerate(filters):
            np.testing.assert_allclose(res.model_means[t, j], kf.x, rtol=TOL, atol=TOL)
            np.testing.assert_allclose(res.model_covs[t, j], kf.P, rtol=TOL, atol=TOL)
        assert abs(float(res.log_likelihoods[t]) - step_ll) <= TOL * max(1.0, abs(step_ll))
    # Exact: drift and drift_var are views of the same result arrays.
    np.testing.assert_array_equal(out.drift, res.means[:, 0])
    np.testing.assert_array_equal(out.drift_var, res.covs[:, 0, 0])
    # The likelihoods really moved the weights: the comparison exercised the Bayes step.
    assert np.max(np.abs(res.regime_probs - res.predicted_regime_probs)) > 0.05


def test_filterpy_falls_back_to_the_prior_on_a_huge_outlier_we_do_not():
    """What the issue means by "no fallback to the prior as filterpy does": with every
    member's likelihood below ``float_info.min`` filterpy floors them all to the same
    number and its ``mu`` becomes ``cbar``; ours stays ordered by which member explains
    the outlier best (the widest predictive, Crisis)."""
    imm = dj.seed_imm(dj.Observation.scalar(1.0))
    zs = np.array([0.1, -0.2, 1e8])
    res = dj.filter(imm, zs, 0.5)

    filters = []
    for d in imm.dynamics:
        kf = KalmanFilter(dim_x=1, dim_z=1)
        kf.x, kf.P, kf.H, kf.R = np.zeros(1), np.eye(1), np.eye(1), np.eye(1)
        kf.F, kf.Q = _euler_FQ(d, 0.5, 1)
        filters.append(kf)
    peer = IMMEstimator(filters, np.asarray(imm.init_probs), np.asarray(imm.transition))
    for z in zs:
        peer.predict()
        cbar = peer.cbar.copy()
        peer.update(np.array([z]))
    np.testing.assert_allclose(peer.mu, cbar, rtol=1e-12)  # filterpy: back to the prior
    np.testing.assert_allclose(res.regime_probs[-1], [0.0, 0.0, 1.0], atol=1e-300)
