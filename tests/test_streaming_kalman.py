"""The streaming dj.KalmanDriftEstimator equals dj.filter step by step."""

import numpy as np
import pytest

import drift_jax as dj

from .conftest import correlated_cov

T = 15


def _stream(est, zs, dts):
    drifts, variances, lls = [], [], []
    for z, dt in zip(zs, dts, strict=True):
        est = est.update_observation(z, dt)
        drifts.append(float(est.drift_rate_per_sec()))
        variances.append(float(est.drift_variance()))
        lls.append(float(est.log_likelihood))
    return est, np.array(drifts), np.array(variances), np.array(lls)


@pytest.mark.parametrize(
    "dynamics, loadings, update",
    [
        (dj.OU(0.02, 1.0), [1.0], "joint"),
        (dj.OU(0.5, 0.8, "exact"), [1.0, 0.7, 1.3], "joint"),
        (dj.OUAccel(0.3, 0.9, 0.6, 0.4), [1.0, -0.5, 0.9], "independent"),
    ],
    ids=["OU-scalar", "OU-vector", "OUAccel-vector-indep"],
)
def test_step_by_step_equals_filter(dynamics, loadings, update):
    rng = np.random.default_rng(4)
    m = len(loadings)
    R = correlated_cov(np.linspace(0.8, 1.5, m), 0.6)
    model = dj.KalmanModel(dynamics, dj.Observation(loadings, R, update), 0.1, 2.0)
    zs = rng.normal(scale=2.0, size=(T, m))
    zs[3] = np.nan
    zs[rng.random((T, m)) < 0.2] = np.nan
    dts = rng.uniform(0.05, 0.9, size=T)

    res = dj.filter(model, zs if m > 1 else zs[:, 0], dts)
    est, drifts, variances, lls = _stream(
        dj.KalmanDriftEstimator(model), zs if m > 1 else zs[:, 0], dts
    )
    np.testing.assert_allclose(drifts, res.drift, rtol=0, atol=1e-12)
    np.testing.assert_allclose(variances, res.drift_var, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lls, np.cumsum(res.log_likelihoods), rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.state.mean, res.means[-1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.state.cov, res.covs[-1], rtol=0, atol=1e-12)
    assert int(est.num_updates) == T
    if dynamics.state_dim == 2:
        np.testing.assert_allclose(est.drift_acceleration(), res.means[-1, 1], atol=1e-12)
    else:
        assert float(est.drift_acceleration()) == 0.0


@pytest.mark.parametrize("update", ["joint", "independent"])
def test_update_vector_equals_filter_with_that_observation(update):
    rng = np.random.default_rng(6)
    h = np.array([1.0, 0.6, 1.2, 0.8])
    R = correlated_cov([0.9, 1.1, 1.4, 0.7], 0.7)
    dynamics = dj.OU(0.1, 0.7)
    # The estimator's own observation model is irrelevant to update_vector.
    est = dj.KalmanDriftEstimator(dj.KalmanModel(dynamics, dj.Observation.scalar(9.0), 0.0, 1.0))
    zs = rng.normal(size=(T, 4))
    zs[5, 1] = np.nan
    dts = rng.uniform(0.1, 0.5, size=T)
    res = dj.filter(dj.KalmanModel(dynamics, dj.Observation(h, R, update), 0.0, 1.0), zs, dts)
    for t in range(T):
        est = est.update_vector(zs[t], h, R, dts[t], update=update)
        np.testing.assert_allclose(est.drift_rate_per_sec(), res.drift[t], rtol=0, atol=1e-12)
        np.testing.assert_allclose(est.drift_variance(), res.drift_var[t], rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.log_likelihood, res.log_likelihood, rtol=0, atol=1e-12)


def test_drift_rate_and_variance_values():
    # One cycle from the prior N(m0, P0), scalar OU, by hand:
    # predict a = exp(-theta dt), P- = a^2 P0 + sigma^2 dt; K = P- / (P- + R).
    theta, sigma, R, m0, P0, dt, z = 0.02, 1.0, 4.0, 1.5, 2.0, 0.5, -3.0
    model = dj.KalmanModel(dj.OU(theta, sigma), dj.Observation.scalar(R), m0, P0)
    est = dj.KalmanDriftEstimator(model).update_observation(z, dt)
    a = np.exp(-theta * dt)
    m_pred, P_pred = a * m0, a**2 * P0 + sigma**2 * dt
    K = P_pred / (P_pred + R)
    np.testing.assert_allclose(est.drift_rate_per_sec(), m_pred + K * (z - m_pred), rtol=1e-14)
    np.testing.assert_allclose(est.drift_variance(), (1 - K) * P_pred, rtol=1e-14)
    S = P_pred + R
    ll = -0.5 * (np.log(2 * np.pi * S) + (z - m_pred) ** 2 / S)
    np.testing.assert_allclose(est.log_likelihood, ll, rtol=1e-14)
    # Before any update the estimator reports its prior.
    prior = dj.KalmanDriftEstimator(model)
    assert float(prior.drift_rate_per_sec()) == m0
    assert float(prior.drift_variance()) == P0
    assert float(prior.log_likelihood) == 0.0


def test_predict_is_an_update_with_nothing_observed():
    model = dj.KalmanModel(dj.OUAccel(0.2, 0.8, 0.5, 0.3), dj.Observation([1.0, 0.5], np.eye(2)))
    est = dj.KalmanDriftEstimator(model).update_observation([0.4, 0.9], 0.3)
    predicted = est.predict(0.7)
    res = dj.filter(model, np.array([[0.4, 0.9], [np.nan, np.nan]]), np.array([0.3, 0.7]))
    np.testing.assert_allclose(predicted.state.mean, res.means[1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(predicted.state.cov, res.covs[1], rtol=0, atol=1e-14)
    assert float(predicted.log_likelihood) == float(est.log_likelihood)
    assert float(predicted.drift_variance()) > float(est.drift_variance())


def test_estimator_is_immutable():
    model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
    est0 = dj.KalmanDriftEstimator(model)
    est1 = est0.update_observation(2.0, 0.5)
    assert float(est0.drift_rate_per_sec()) == 0.0
    assert int(est0.num_updates) == 0 and int(est1.num_updates) == 1
    # Replaying the same input from the same state gives the same numbers.
    again = est0.update_observation(2.0, 0.5)
    assert float(again.drift_rate_per_sec()) == float(est1.drift_rate_per_sec())


def test_streaming_rejects_nonpositive_dt():
    est = dj.KalmanDriftEstimator(
        dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
    )
    with pytest.raises(
        ValueError,
        match=r"`dt` must be finite and >= 0 "
        r"\(seconds; .*\), got dt=-0\.5",
    ):
        est.update_observation(1.0, -0.5)


def test_streaming_rejects_infinite_observation():
    est = dj.KalmanDriftEstimator(
        dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation([1.0, 1.0], np.eye(2)), 0.0, 1.0)
    )
    with pytest.raises(ValueError, match=r"`z` must not contain \+-inf"):
        est.update_observation([1.0, np.inf], 0.5)


def test_streaming_rejects_wrong_width():
    est = dj.KalmanDriftEstimator(
        dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation([1.0, 1.0], np.eye(2)), 0.0, 1.0)
    )
    with pytest.raises(ValueError, match=r"`z` must hold 2 feature value\(s\)"):
        est.update_observation([1.0, 2.0, 3.0], 0.5)


def test_update_vector_rejects_covariance_not_spd():
    est = dj.KalmanDriftEstimator(
        dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
    )
    with pytest.raises(ValueError, match=r"`r_mat` must be symmetric positive definite"):
        est.update_vector([1.0, 2.0], [1.0, 1.0], [[1.0, 2.0], [2.0, 1.0]], 0.5)
