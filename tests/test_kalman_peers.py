"""The Kalman filter against filters that others wrote: statsmodels, dynamax, filterpy."""

import functools

import dynamax.linear_gaussian_ssm.inference as dynamax_lgssm
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import statsmodels.api as sm
from dynamax.linear_gaussian_ssm.inference import lgssm_filter, make_lgssm_params
from dynamax.utils.utils import psd_solve
from filterpy.kalman import KalmanFilter

import drift_jax as dj

from .conftest import correlated_cov


def _simulate(F_seq, Q_seq, H, R, x0, rng):
    """Draw ``z_t = H x_t + eps_t`` with ``x_t = F_t x_{t-1} + w_t`` (NumPy)."""
    T, n = len(F_seq), len(x0)
    x, zs = np.asarray(x0, float), []
    for t in range(T):
        x = F_seq[t] @ x + rng.multivariate_normal(np.zeros(n), Q_seq[t])
        zs.append(H @ x + rng.multivariate_normal(np.zeros(R.shape[0]), R))
    return np.array(zs)


def _transitions(dynamics, dts):
    Fs, Qs = jax.vmap(dynamics.transition)(jnp.asarray(dts))
    return np.asarray(Fs), np.asarray(Qs)


# --- statsmodels SARIMAX(1, 0, 0) + measurement error ----------------------------------------

SARIMAX_CASES = [
    # seed, theta, sigma, R, dt, discretisation, missing fraction
    (0, 0.1, 0.5, 1.0, 0.5, "euler", 0.0),
    (1, 1.3, 2.0, 0.3, 0.2, "euler", 0.0),
    (2, 0.02, 1.0, 4.0, 1.0, "euler", 0.0),
    (3, 0.7, 0.9, 2.5, 0.3, "exact", 0.0),
    (4, 0.25, 1.5, 0.8, 0.8, "exact", 0.1),
    (5, 2.0, 0.4, 0.05, 0.1, "euler", 0.2),
]


@pytest.mark.parametrize("seed, theta, sigma, R, dt, disc, missing", SARIMAX_CASES)
def test_log_likelihood_equals_statsmodels_sarimax(seed, theta, sigma, R, dt, disc, missing):
    rng = np.random.default_rng(seed)
    T = 150
    dynamics = dj.OU(theta, sigma, discretisation=disc)
    F, Q = (float(np.asarray(a)[0, 0]) for a in dynamics.transition(dt))
    stationary_var = Q / (1.0 - F**2)
    zs = _simulate(
        np.full((T, 1, 1), F),
        np.full((T, 1, 1), Q),
        np.ones((1, 1)),
        np.array([[R]]),
        [rng.normal() * np.sqrt(stationary_var)],
        rng,
    )[:, 0]
    zs[rng.random(T) < missing] = np.nan

    sarimax = sm.tsa.SARIMAX(
        zs, order=(1, 0, 0), measurement_error=True, trend="n", initialization="stationary"
    )
    # statsmodels stops updating the covariance once it looks converged (steady state,
    # `tolerance` 1e-19 on the determinant), which shifts its answer by ~1e-8; switch that
    # approximation off so both filters compute the same quantity.
    sarimax.ssm.tolerance = 0.0
    assert sarimax.param_names == ["ar.L1", "var.measurement_error", "sigma2"]
    params = np.array([F, R, Q])
    ll_sm = sarimax.loglike(params)
    filtered = sarimax.filter(params)

    # The stationary prior is invariant under the prediction, so starting the
    # predict-then-update cycle from it gives statsmodels' first prediction.
    model = dj.KalmanModel(dynamics, dj.Observation.scalar(R), 0.0, stationary_var)
    res = dj.filter(model, zs, dt)
    assert abs(float(res.log_likelihood) - ll_sm) < 1e-8
    np.testing.assert_allclose(res.drift, filtered.filtered_state[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        res.drift_var, filtered.filtered_state_cov[0, 0], rtol=1e-10, atol=1e-12
    )


# --- dynamax lgssm_filter: 4 correlated features, full covariance ------------------------


@pytest.fixture
def exact_dynamax(monkeypatch):
    """dynamax adds ``1e-9 I`` to ``S`` when it solves for the gain (``psd_solve``), which
    moves its answer by ~1e-9 per step; compare against its filter without that jitter."""
    monkeypatch.setattr(
        dynamax_lgssm, "psd_solve", functools.partial(psd_solve, diagonal_boost=0.0)
    )


def _dynamax_filter(F_seq, Q_seq, H, R, m0, P0, zs):
    """dynamax updates first; our cycle predicts first, so its prior is our first prediction.

    Its time-varying dynamics use entry ``t`` for the transition into step ``t`` (entry 0
    ignored), which is our indexing of ``F_t``.
    """
    m1 = F_seq[0] @ m0
    P1 = F_seq[0] @ P0 @ F_seq[0].T + Q_seq[0]
    params = make_lgssm_params(
        initial_mean=jnp.asarray(m1),
        initial_cov=jnp.asarray(P1),
        dynamics_weights=jnp.asarray(F_seq),
        dynamics_cov=jnp.asarray(Q_seq),
        emissions_weights=jnp.asarray(H),
        emissions_cov=jnp.asarray(R),
    )
    return lgssm_filter(params, jnp.asarray(zs))


@pytest.mark.parametrize(
    "dynamics",
    [dj.OU(0.3, 1.2), dj.OUAccel(0.0, 0.6, 0.3, 0.9, discretisation="exact")],
    ids=["OU-euler", "OUAccel-exact"],
)
def test_equals_dynamax_on_four_correlated_features(dynamics, exact_dynamax):
    rng = np.random.default_rng(11)
    T, m, n = 120, 4, dynamics.state_dim
    loadings = np.array([1.0, 0.8, -0.5, 1.6])
    # A full covariance: unequal scales, unequal and partly negative correlations.
    corr = np.array(
        [[1.0, 0.7, 0.5, -0.2], [0.7, 1.0, 0.6, 0.1], [0.5, 0.6, 1.0, 0.3], [-0.2, 0.1, 0.3, 1.0]]
    )
    scales = np.array([0.9, 1.4, 0.6, 2.0])
    R = corr * np.outer(scales, scales)
    dts = rng.uniform(0.05, 1.0, size=T)  # irregular sampling
    F_seq, Q_seq = _transitions(dynamics, dts)
    H = np.zeros((m, n))
    H[:, 0] = loadings
    m0 = np.array([0.5, -0.2][:n])
    P0 = np.diag([2.0, 0.5][:n])
    zs = _simulate(F_seq, Q_seq, H, R, m0, rng)

    model = dj.KalmanModel(dynamics, dj.Observation(loadings, R), m0, P0)
    res = dj.filter(model, zs, dts)
    post = _dynamax_filter(F_seq, Q_seq, H, R, m0, P0, zs)

    assert abs(float(res.log_likelihood) - float(post.marginal_loglik)) < 1e-8
    np.testing.assert_allclose(res.means, post.filtered_means, rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.covs, post.filtered_covariances, rtol=0, atol=1e-8)


# --- filterpy KalmanFilter on the extended [mu, mu_dot] state ----------------------------


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("discretisation", ["euler", "exact"])
def test_extended_state_equals_filterpy(m, discretisation):
    rng = np.random.default_rng(100 + m)
    T = 100
    dynamics = dj.OUAccel(0.3, 0.9, 0.8, 0.4, discretisation=discretisation)
    loadings = np.array([1.0, 0.6, 1.4])[:m]
    R = correlated_cov([0.7, 1.2, 0.9][:m], 0.5)
    dts = rng.uniform(0.1, 0.9, size=T)
    F_seq, Q_seq = _transitions(dynamics, dts)
    H = np.zeros((m, 2))
    H[:, 0] = loadings
    m0, P0 = np.array([0.3, 0.0]), np.array([[1.0, 0.2], [0.2, 0.5]])
    zs = _simulate(F_seq, Q_seq, H, R, m0, rng)

    kf = KalmanFilter(dim_x=2, dim_z=m)
    kf.x, kf.P, kf.H, kf.R = m0.copy(), P0.copy(), H, R
    ll, means, covs = 0.0, [], []
    for t in range(T):
        kf.F, kf.Q = F_seq[t], Q_seq[t]
        kf.predict()
        kf.update(zs[t])
        ll += kf.log_likelihood
        means.append(kf.x.copy())
        covs.append(kf.P.copy())

    model = dj.KalmanModel(dynamics, dj.Observation(loadings, R), m0, P0)
    res = dj.filter(model, zs if m > 1 else zs[:, 0], dts)
    assert abs(float(res.log_likelihood) - ll) < 1e-9
    np.testing.assert_allclose(res.means, np.array(means), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.covs, np.array(covs), rtol=0, atol=1e-9)
