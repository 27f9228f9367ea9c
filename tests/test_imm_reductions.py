"""Reductions of the IMM to the single Kalman filter, which must hold to rounding.

- one regime: the IMM is the Kalman filter;
- identical regimes: every member sees the same prior after mixing (mixing identical
  Gaussians is the identity), so each member and the mixture are the Kalman filter, and
  the likelihoods cancel in Bayes' rule: ``w_t = init_probs Pi^(t+1)``;
- ``Pi = I`` with a one-hot start: the chain never leaves regime ``k``, so the IMM is
  regime ``k``'s Kalman filter and the weights stay one-hot exactly.
"""

import equinox as eqx
import numpy as np
import pytest

import drift_jax as dj

from .conftest import correlated_cov

TOL = 1e-10
_filter = eqx.filter_jit(dj.filter)


def _data(rng, T, m, missing=0.0):
    zs = np.cumsum(rng.normal(size=(T, m)) * 0.8, axis=0) + rng.normal(size=(T, m))
    zs[rng.random((T, m)) < missing] = np.nan
    zs[T // 2] = np.nan  # one step with nothing observed
    return zs


def _assert_same_as_kalman(imm_means, imm_covs, imm_lls, kal):
    np.testing.assert_allclose(imm_means, kal.means, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(imm_covs, kal.covs, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(imm_lls, kal.log_likelihoods, rtol=TOL, atol=TOL)


CASES = [
    # dynamics, features m, irregular dt, missing fraction
    (dj.OU(0.3, 1.1), 1, False, 0.0),
    (dj.OU(0.05, 2.0, discretisation="exact"), 2, True, 0.2),
    (dj.OUAccel(0.2, 0.9, 0.7, 0.5), 3, True, 0.2),
    (dj.OUAccel(0.0, 0.6, 0.3, 0.8, discretisation="exact"), 1, False, 0.1),
]
IDS = ["OU-m1", "OU-exact-m2-missing", "OUAccel-m3-missing", "OUAccel-exact-theta0"]


def _setup(dynamics, m, irregular, missing, seed):
    rng = np.random.default_rng(seed)
    T, n = 30, dynamics.state_dim
    obs = dj.Observation(rng.uniform(0.5, 1.5, size=m), correlated_cov(np.ones(m) * 0.9, 0.5))
    dt = rng.uniform(0.1, 1.2, size=T) if irregular else 0.5
    m0, P0 = np.linspace(0.5, -0.3, n), np.diag(np.linspace(2.0, 0.5, n))
    return rng, obs, dt, m0, P0, _data(rng, T, m, missing)


@pytest.mark.parametrize("dynamics, m, irregular, missing", CASES, ids=IDS)
def test_one_regime_is_the_kalman_filter(dynamics, m, irregular, missing):
    _, obs, dt, m0, P0, zs = _setup(dynamics, m, irregular, missing, seed=1)
    kal = _filter(dj.KalmanModel(dynamics, obs, m0, P0), zs, dt)
    imm = dj.IMMModel((dynamics,), obs, [[1.0]], [1.0], m0, P0)
    res = _filter(imm, zs, dt)

    _assert_same_as_kalman(res.means, res.covs, res.log_likelihoods, kal)
    np.testing.assert_allclose(res.model_means[:, 0], kal.means, rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(res.regime_probs, np.ones((zs.shape[0], 1)))
    assert abs(float(res.log_likelihood - kal.log_likelihood)) < TOL * abs(
        float(kal.log_likelihood)
    )


@pytest.mark.parametrize("dynamics, m, irregular, missing", CASES[:3], ids=IDS[:3])
def test_identical_regimes_are_the_kalman_filter(dynamics, m, irregular, missing):
    rng, obs, dt, m0, P0, zs = _setup(dynamics, m, irregular, missing, seed=2)
    T, M = zs.shape[0], 3
    Pi = rng.dirichlet(np.ones(M), size=M)
    p0 = rng.dirichlet(np.ones(M))
    kal = _filter(dj.KalmanModel(dynamics, obs, m0, P0), zs, dt)
    res = _filter(dj.IMMModel((dynamics,) * M, obs, Pi, p0, m0, P0), zs, dt)

    _assert_same_as_kalman(res.means, res.covs, res.log_likelihoods, kal)
    for j in range(M):
        np.testing.assert_allclose(res.model_means[:, j], kal.means, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(res.model_covs[:, j], kal.covs, rtol=TOL, atol=TOL)
    # Equal likelihoods cancel: the weights follow the Markov chain alone.
    expected = np.array([p0 @ np.linalg.matrix_power(Pi, t + 1) for t in range(T)])
    np.testing.assert_allclose(res.regime_probs, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(res.predicted_regime_probs, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("extended", [False, True], ids=["scalar", "extended"])
def test_identity_transition_with_one_hot_start_is_that_regimes_kalman(k, extended):
    dynamics = dj.seed_imm(extended=extended).dynamics  # Quiet / Trending / Crisis
    rng = np.random.default_rng(3 + k)
    T, m = 30, 2
    obs = dj.Observation([1.0, 0.7], correlated_cov([1.0, 1.5], 0.6))
    n = dynamics[0].state_dim
    zs = _data(rng, T, m, missing=0.15) * 3.0
    dts = rng.uniform(0.1, 1.0, size=T)
    p0 = np.eye(3)[k]
    imm = dj.IMMModel(dynamics, obs, np.eye(3), p0, 0.4, 2.0 * np.eye(n))
    res = _filter(imm, zs, dts)
    kal = _filter(dj.KalmanModel(dynamics[k], obs, 0.4, 2.0 * np.eye(n)), zs, dts)

    np.testing.assert_array_equal(res.regime_probs, np.tile(p0, (T, 1)))
    np.testing.assert_array_equal(res.predicted_regime_probs, np.tile(p0, (T, 1)))
    _assert_same_as_kalman(res.means, res.covs, res.log_likelihoods, kal)
    np.testing.assert_allclose(res.model_means[:, k], kal.means, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(res.model_covs[:, k], kal.covs, rtol=TOL, atol=TOL)
    assert np.all(np.isfinite(res.model_means)) and np.all(np.isfinite(res.model_covs))
